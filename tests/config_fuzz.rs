//! Property tests of the configuration parsers: no input, however broken, makes them
//! panic, and every problem they report names its file and, when it has one, a line
//! that exists in the input.

use std::path::Path;

use passerelle::config::{Config, GroupFile};
use proptest::prelude::*;

const VALID_CONFIG: &str = r#"[matrix]
homeserver = "https://matrix.example.org"
user = "@passerelle:example.org"
password = "secret"
admins = ["@admin:example.org"]

[paths]
state_dir = "/var/lib/passerelle"
groups_dir = "groups.d"

[whatsapp]
messages_per_minute = 40

[templates]
to_whatsapp = "*{name}*: {text}"

[logging]
level = "info"
"#;

const VALID_GROUP: &str = r##"whatsapp = "120363041234567890@g.us"
room = "#famille:example.org"
invite = ["@alice:example.org"]
allow = ["@*:example.org"]
"##;

/// A valid file with a few bytes replaced, inserted or removed.
fn mutated(base: &'static str) -> impl Strategy<Value = String> {
    let len = base.len();
    prop::collection::vec((0..len, any::<u8>(), 0u8..3), 1..8).prop_map(move |edits| {
        let mut bytes = base.as_bytes().to_vec();
        for (at, byte, kind) in edits {
            let at = at.min(bytes.len().saturating_sub(1));
            match kind {
                0 => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ => {
                    bytes.remove(at);
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn check_problems_point_into(text: &str, problems: &passerelle::config::Problems, path: &Path) {
    let lines = text.lines().count().max(1) + 1;
    for problem in &problems.0 {
        assert_eq!(problem.path, path);
        assert!(!problem.message.is_empty());
        if let Some(line) = problem.line {
            assert!(
                line >= 1 && line <= lines,
                "line {line} of {lines}: {problem}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn config_parser_never_panics_on_mutations(text in mutated(VALID_CONFIG)) {
        let path = Path::new("/etc/passerelle/config.toml");
        if let Err(problems) = Config::parse(path, &text) {
            check_problems_point_into(&text, &problems, path);
        }
    }

    #[test]
    fn group_parser_never_panics_on_mutations(text in mutated(VALID_GROUP)) {
        let path = Path::new("/etc/passerelle/groups.d/famille.toml");
        if let Err(problems) = GroupFile::parse(path, &text) {
            check_problems_point_into(&text, &problems, path);
        }
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_text(text in "\\PC{0,300}") {
        let _ = Config::parse(Path::new("c.toml"), &text);
        let _ = GroupFile::parse(Path::new("g.toml"), &text);
    }
}

#[test]
fn the_unmutated_files_are_valid() {
    Config::parse(Path::new("c.toml"), VALID_CONFIG).unwrap();
    GroupFile::parse(Path::new("famille.toml"), VALID_GROUP).unwrap();
}
