//! Reads `groups.d/*.toml`: one file approves one WhatsApp group and names its Matrix room.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::ids::{check_alias_localpart, check_group_jid, check_user_id, RoomRef, UserPattern};
use super::source::{self, Source};
use super::{MatrixConfig, Problem, Problems};

/// One approved group, from one file.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupFile {
    /// File stem (`famille` for `groups.d/famille.toml`), a valid alias local part.
    pub name: String,
    pub path: PathBuf,
    /// WhatsApp group id, e.g. `120363041234567890@g.us`.
    pub whatsapp: String,
    /// The Matrix room; `None`: the bridge creates one with alias `alias_prefix + name`.
    pub room: Option<RoomRef>,
    /// Matrix users invited to the room.
    pub invite: Vec<String>,
    /// Matrix users who moderate a room the bridge creates (power 50: they may
    /// invite, kick and redact), besides the bot and `[matrix] admins` (100).
    pub moderators: Vec<String>,
    /// Who may speak from Matrix; `None`: any member of the room.
    pub allow: Option<Vec<UserPattern>>,
    /// Pacing of what the shared number sends to this group (messages per minute);
    /// `None`: only the overall pacing of `[whatsapp]` applies.
    pub messages_per_minute: Option<u32>,
}

impl GroupFile {
    /// Validates the text of one group file; the name comes from the file stem of `path`.
    pub fn parse(path: &Path, text: &str) -> Result<GroupFile, Problems> {
        let parsed = parse_group(path, text);
        match parsed.group {
            Some(group) if parsed.problems.is_empty() => Ok(group),
            _ => Err(Problems(parsed.problems)),
        }
    }

    /// The local part of the room alias the bridge uses when `room` is not set.
    pub fn alias_localpart(&self, alias_prefix: &str) -> String {
        format!("{alias_prefix}{}", self.name)
    }

    /// The full alias the bridge uses when `room` is not set: `#prefix+name:server`.
    pub fn default_alias(&self, matrix: &MatrixConfig) -> String {
        format!(
            "#{}:{}",
            self.alias_localpart(&matrix.alias_prefix),
            matrix.server_name()
        )
    }

    /// Whether a Matrix user (already a room member) may have messages relayed.
    pub fn may_speak(&self, user_id: &str) -> bool {
        match &self.allow {
            None => true,
            Some(patterns) => patterns.iter().any(|p| p.matches(user_id)),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    whatsapp: Option<Spanned<String>>,
    room: Option<Spanned<String>>,
    invite: Option<Vec<Spanned<String>>>,
    moderators: Option<Vec<Spanned<String>>>,
    allow: Option<Vec<Spanned<String>>>,
    messages_per_minute: Option<Spanned<i64>>,
}

/// The valid Matrix user ids of list `key`; each invalid one is a problem at its
/// line (and clears `ok`).
pub(super) fn user_ids(
    src: &mut Source,
    key: &str,
    users: Option<&[Spanned<String>]>,
    ok: &mut bool,
) -> Vec<String> {
    let mut valid = Vec::new();
    for user in users.unwrap_or_default() {
        match check_user_id(user.get_ref()) {
            Ok(()) => valid.push(user.get_ref().clone()),
            Err(err) => {
                src.at(user, format!("`{key}`: {err}"));
                *ok = false;
            }
        }
    }
    valid
}

struct Parsed {
    group: Option<GroupFile>,
    whatsapp_line: Option<usize>,
    room_line: Option<usize>,
    problems: Vec<Problem>,
}

fn parse_group(path: &Path, text: &str) -> Parsed {
    let mut src = Source::new(path, text);
    let mut ok = true;

    let name = match path.file_stem().map(OsStr::to_str) {
        Some(Some(stem)) => match check_alias_localpart(stem, false) {
            Ok(()) => Some(stem.to_owned()),
            Err(err) => {
                src.whole(format!("bad file name: {err}"));
                None
            }
        },
        _ => {
            src.whole("bad file name: not valid UTF-8");
            None
        }
    };

    let Some(raw) = src.deserialize::<RawGroup>() else {
        return Parsed {
            group: None,
            whatsapp_line: None,
            room_line: None,
            problems: src.problems,
        };
    };

    let whatsapp_line = raw.whatsapp.as_ref().map(|v| src.line_at(v.span().start));
    let room_line = raw.room.as_ref().map(|v| src.line_at(v.span().start));

    let whatsapp = match &raw.whatsapp {
        None => {
            src.whole(
                "missing key `whatsapp` (the WhatsApp group id, e.g. \
                 `whatsapp = \"120363041234567890@g.us\"`)",
            );
            None
        }
        Some(v) => match check_group_jid(v.get_ref()) {
            Ok(()) => Some(v.get_ref().clone()),
            Err(err) => {
                src.at(v, format!("`whatsapp`: {err}"));
                None
            }
        },
    };

    let room = match &raw.room {
        None => None,
        Some(v) => match RoomRef::parse(v.get_ref()) {
            Ok(room) => Some(room),
            Err(err) => {
                src.at(v, format!("`room`: {err}"));
                ok = false;
                None
            }
        },
    };

    let invite = user_ids(&mut src, "invite", raw.invite.as_deref(), &mut ok);
    let moderators = user_ids(&mut src, "moderators", raw.moderators.as_deref(), &mut ok);

    let allow = raw.allow.as_ref().map(|patterns| {
        let mut parsed = Vec::new();
        for pattern in patterns {
            match UserPattern::parse(pattern.get_ref()) {
                Ok(p) => parsed.push(p),
                Err(err) => {
                    src.at(pattern, format!("`allow`: {err}"));
                    ok = false;
                }
            }
        }
        parsed
    });

    let messages_per_minute = match raw.messages_per_minute.as_ref() {
        None => None,
        Some(value) => {
            let checked = super::check_rate(&mut src, "messages_per_minute", Some(value), 0);
            ok &= checked.is_some();
            checked
        }
    };

    let group = match (name, whatsapp) {
        (Some(name), Some(whatsapp)) if ok => Some(GroupFile {
            name,
            path: path.to_path_buf(),
            whatsapp,
            room,
            invite,
            moderators,
            allow,
            messages_per_minute,
        }),
        _ => None,
    };
    Parsed {
        group,
        whatsapp_line,
        room_line,
        problems: src.problems,
    }
}

/// Reads every `*.toml` in `dir` (sorted by name; other files and dotfiles ignored),
/// validates each, then checks cross-file rules: the same WhatsApp group or the same
/// Matrix room in two files is an error on the second file, naming the first.
pub fn load_groups(dir: &Path) -> Result<Vec<GroupFile>, Problems> {
    let (groups, problems) = load_groups_with_problems(dir);
    if problems.is_empty() {
        Ok(groups)
    } else {
        Err(Problems(problems))
    }
}

/// [`load_groups`] that also returns the valid files when others have problems
/// (for admin commands that only read them; the service refuses any problem).
pub fn load_groups_with_problems(dir: &Path) -> (Vec<GroupFile>, Vec<Problem>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) => {
            let problem = Problem {
                path: dir.to_path_buf(),
                line: None,
                message: format!("cannot read groups directory: {err}"),
            };
            return (Vec::new(), vec![problem]);
        }
    };
    let mut problems = Vec::new();
    let mut paths = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => {
                let file_name = entry.file_name();
                let path = entry.path();
                let hidden = file_name.as_encoded_bytes().starts_with(b".");
                if !hidden && path.extension() == Some(OsStr::new("toml")) {
                    paths.push((file_name, path));
                }
            }
            Err(err) => problems.push(Problem {
                path: dir.to_path_buf(),
                line: None,
                message: format!("cannot list groups directory: {err}"),
            }),
        }
    }
    paths.sort();

    let mut groups = Vec::new();
    let mut by_jid: HashMap<String, PathBuf> = HashMap::new();
    let mut by_room: HashMap<String, PathBuf> = HashMap::new();
    for (_, path) in paths {
        let text = match source::read_text(&path) {
            Ok(text) => text,
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        let parsed = parse_group(&path, &text);
        problems.extend(parsed.problems);
        let Some(group) = parsed.group else { continue };
        let mut unique = true;
        if let Some(first) = by_jid.get(&group.whatsapp) {
            problems.push(Problem {
                path: path.clone(),
                line: parsed.whatsapp_line,
                message: format!(
                    "WhatsApp group `{}` is already bridged by {}",
                    group.whatsapp,
                    first.display()
                ),
            });
            unique = false;
        }
        if let Some(room) = &group.room {
            if let Some(first) = by_room.get(room.as_str()) {
                problems.push(Problem {
                    path: path.clone(),
                    line: parsed.room_line,
                    message: format!("room `{room}` is already used by {}", first.display()),
                });
                unique = false;
            }
        }
        if unique {
            by_jid.insert(group.whatsapp.clone(), path.clone());
            if let Some(room) = &group.room {
                by_room.insert(room.as_str().to_owned(), path.clone());
            }
            groups.push(group);
        }
    }
    (groups, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    const JID: &str = "120363041234567890@g.us";

    fn problem(name: &str, text: &str) -> (Option<usize>, String) {
        let path = PathBuf::from(format!("/etc/passerelle/groups.d/{name}"));
        let problems = GroupFile::parse(&path, text).expect_err("should fail").0;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].path, path);
        (problems[0].line, problems[0].message.clone())
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn full_group_file() {
        let text = format!(
            "whatsapp = \"{JID}\"\nroom = \"#famille:example.org\"\ninvite = [\"@alice:example.org\"]\nallow = [\"@*:example.org\", \"@bob:example.net\"]\n"
        );
        let path = Path::new("groups.d/famille.toml");
        let g = GroupFile::parse(path, &text).unwrap();
        assert_eq!(g.name, "famille");
        assert_eq!(g.path, path);
        assert_eq!(g.whatsapp, JID);
        assert_eq!(g.room, Some(RoomRef::Alias("#famille:example.org".into())));
        assert_eq!(g.invite, ["@alice:example.org"]);
        assert_eq!(g.allow.as_ref().map(Vec::len), Some(2));
        assert!(g.may_speak("@carol:example.org"));
        assert!(g.may_speak("@bob:example.net"));
        assert!(!g.may_speak("@eve:example.net"));
        assert_eq!(g.alias_localpart("wa_"), "wa_famille");
    }

    #[test]
    fn shipped_sample_is_valid() {
        let text = include_str!("../../groups.d/example.toml.sample");
        let g = GroupFile::parse(Path::new("jardin.toml"), text).unwrap();
        assert_eq!(g.room, None);
        let with_room = text.replace("# room =", "room =");
        assert!(GroupFile::parse(Path::new("jardin.toml"), &with_room)
            .unwrap()
            .room
            .is_some());
    }

    #[test]
    fn minimal_group_file() {
        let g =
            GroupFile::parse(Path::new("a.b-c.toml"), &format!("whatsapp = \"{JID}\"")).unwrap();
        assert_eq!(g.name, "a.b-c");
        assert_eq!((g.room, g.invite.len(), g.allow), (None, 0, None));
        assert!(GroupFile::parse(
            Path::new("x.toml"),
            &format!("whatsapp = \"{JID}\"\nallow = []\n")
        )
        .unwrap()
        .allow
        .is_some_and(|a| a.is_empty()));
    }

    #[test]
    fn missing_whatsapp() {
        let (line, message) = problem("famille.toml", "room = \"#f:example.org\"\n");
        assert_eq!(line, None);
        assert!(message.starts_with("missing key `whatsapp`"), "{message}");
    }

    #[test]
    fn bad_group_jid() {
        let (line, message) = problem(
            "famille.toml",
            "\nwhatsapp = \"33612345678@s.whatsapp.net\"\n",
        );
        assert_eq!(line, Some(2));
        assert_eq!(
            message,
            "`whatsapp`: invalid WhatsApp group id `33612345678@s.whatsapp.net`: this is a person's id, \
             not a group's: group ids end in `@g.us` (expected e.g. `120363041234567890@g.us`)"
        );
    }

    #[test]
    fn bad_room() {
        let (line, message) = problem(
            "f.toml",
            &format!("whatsapp = \"{JID}\"\nroom = \"famille\"\n"),
        );
        assert_eq!(line, Some(2));
        assert!(message.starts_with("`room`: invalid Matrix room `famille`: must start with `!`"));
    }

    #[test]
    fn bad_invite() {
        let text =
            format!("whatsapp = \"{JID}\"\ninvite = [\n  \"@a:example.org\",\n  \"@b\",\n]\n");
        let (line, message) = problem("f.toml", &text);
        assert_eq!(line, Some(4));
        assert!(
            message.starts_with("`invite`: invalid Matrix user id `@b`: missing `:server` part")
        );
    }

    #[test]
    fn bad_allow_pattern() {
        let text = format!("whatsapp = \"{JID}\"\n\nallow = [\"@al*:example.org\"]\n");
        let (line, message) = problem("f.toml", &text);
        assert_eq!(line, Some(3));
        assert!(message.starts_with("`allow`: invalid user pattern `@al*:example.org`"));
    }

    #[test]
    fn unknown_key_and_wrong_type() {
        let (line, message) = problem("f.toml", &format!("whatsapp = \"{JID}\"\nrooms = \"x\"\n"));
        assert_eq!(line, Some(2));
        assert_eq!(
            message,
            "unknown key `rooms` (did you mean `room`?); valid keys here: `whatsapp`, `room`, `invite`, `moderators`, `allow`, `messages_per_minute`"
        );
        let (line, message) = problem(
            "f.toml",
            &format!("whatsapp = \"{JID}\"\ninvite = \"@a:b.org\"\n"),
        );
        assert_eq!(line, Some(2));
        assert!(message.starts_with("`invite`: invalid type: string"));
    }

    #[test]
    fn bad_file_name() {
        let (line, message) = problem("Famille.toml", &format!("whatsapp = \"{JID}\""));
        assert_eq!(line, None);
        assert!(message.starts_with("bad file name: invalid room alias local part `Famille`"));
    }

    #[test]
    fn loads_sorted_and_ignores_other_files() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "voisins.toml", "whatsapp = \"1@g.us\"\n");
        write(dir.path(), "amis.toml", "whatsapp = \"2@g.us\"\n");
        write(dir.path(), ".cache.toml", "garbage");
        write(dir.path(), "example.toml.sample", "garbage");
        write(dir.path(), "README.md", "garbage");
        let groups = load_groups(dir.path()).unwrap();
        let names: Vec<_> = groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["amis", "voisins"]);
        assert!(load_groups(&dir.path().join("empty-missing")).is_err());
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(load_groups(empty.path()), Ok(vec![]));
    }

    #[test]
    fn duplicate_group_across_files() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.toml", &format!("whatsapp = \"{JID}\"\n"));
        write(
            dir.path(),
            "b.toml",
            &format!("# same group\nwhatsapp = \"{JID}\"\n"),
        );
        let problems = load_groups(dir.path()).unwrap_err().0;
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, dir.path().join("b.toml"));
        assert_eq!(problems[0].line, Some(2));
        assert_eq!(
            problems[0].message,
            format!(
                "WhatsApp group `{JID}` is already bridged by {}",
                dir.path().join("a.toml").display()
            )
        );
    }

    #[test]
    fn duplicate_room_across_files() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.toml",
            "whatsapp = \"1@g.us\"\nroom = \"!r:example.org\"\n",
        );
        write(
            dir.path(),
            "b.toml",
            "whatsapp = \"2@g.us\"\n\nroom = \"!r:example.org\"\n",
        );
        let problems = load_groups(dir.path()).unwrap_err().0;
        assert_eq!(problems.len(), 1);
        assert_eq!(
            (problems[0].line, problems[0].path.clone()),
            (Some(3), dir.path().join("b.toml"))
        );
        assert!(problems[0]
            .message
            .starts_with("room `!r:example.org` is already used by "));
    }

    #[test]
    fn unreadable_and_non_utf8_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("dir.toml")).unwrap();
        std::fs::write(
            dir.path().join("latin1.toml"),
            b"# \xe9t\xe9\nwhatsapp = \"1@g.us\"\n",
        )
        .unwrap();
        write(dir.path(), "ok.toml", "whatsapp = \"2@g.us\"\n");
        let problems = load_groups(dir.path()).unwrap_err().0;
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].path, dir.path().join("dir.toml"));
        assert_eq!(problems[0].line, None);
        assert!(problems[0].message.starts_with("cannot read file"));
        assert_eq!(problems[1].path, dir.path().join("latin1.toml"));
        assert_eq!(problems[1].line, Some(1));
    }

    #[test]
    fn missing_groups_dir() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("groups.d");
        let problems = load_groups(&missing).unwrap_err().0;
        assert_eq!(problems.len(), 1);
        assert_eq!(
            (problems[0].path.clone(), problems[0].line),
            (missing, None)
        );
    }
}
