//! What the admin commands `passerelle groups`, `passerelle join` and `passerelle
//! outbox` print: the running service's answers (over the control socket) put next
//! to the group files on disk, a ready-to-save group file for a newly joined group,
//! and the messages set aside (ids, counts and reasons: never what they say).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::config::GroupFile;
use crate::store::{Direction, SetAside};
use crate::whatsapp::{GroupSummary, JoinOutcome};

/// The table of `passerelle outbox`: one line per set-aside message, its group
/// named by the file that approves it (or its id), at `now_secs`.
pub fn set_aside_table(items: &[SetAside], files: &[GroupFile], now_secs: i64) -> String {
    if items.is_empty() {
        return "no message set aside\n".to_owned();
    }
    let names: HashMap<&str, String> = files
        .iter()
        .map(|file| (file.whatsapp.as_str(), file.name.clone()))
        .collect();
    let mut out = String::from("seq\tto\tgroup\tattempts\tqueued\tsize\twhy\n");
    for item in items {
        let to = match item.direction {
            Direction::ToMatrix => "matrix",
            Direction::ToWhatsApp => "whatsapp",
        };
        let group = names
            .get(item.group_jid.as_str())
            .cloned()
            .unwrap_or_else(|| item.group_jid.clone());
        let hours = (now_secs - item.enqueued_at).max(0) / 3600;
        let _ = writeln!(
            out,
            "{}\t{to}\t{group}\t{}\t{hours} h ago\t{} B\t{}{}",
            item.seq,
            item.attempts,
            item.payload_bytes,
            item.reason,
            item.last_error
                .as_deref()
                .map(|error| format!(" (last error: {error})"))
                .unwrap_or_default()
        );
    }
    out
}

/// One line of `passerelle groups`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupLine {
    pub jid: String,
    pub subject: String,
    pub participants: usize,
    /// The group file approving this group, if any.
    pub approved_by: Option<PathBuf>,
}

/// Puts each group next to the file that approves it.
pub fn group_lines(groups: &[GroupSummary], files: &[GroupFile]) -> Vec<GroupLine> {
    let approvals: HashMap<&str, &Path> = files
        .iter()
        .map(|file| (file.whatsapp.as_str(), file.path.as_path()))
        .collect();
    groups
        .iter()
        .map(|group| GroupLine {
            jid: group.jid.clone(),
            subject: group.subject.clone(),
            participants: group.participants,
            approved_by: approvals.get(group.jid.as_str()).map(|p| p.to_path_buf()),
        })
        .collect()
}

/// The table printed by `passerelle groups` (subject last: it may hold spaces).
pub fn render_groups(lines: &[GroupLine]) -> String {
    if lines.is_empty() {
        return "The linked number is not in any WhatsApp group.\n".to_string();
    }
    let approved_by = |line: &GroupLine| {
        line.approved_by
            .as_ref()
            .and_then(|path| path.file_name())
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "-".to_string())
    };
    let id_width = lines.iter().map(|l| l.jid.len()).max().unwrap_or(0).max(2);
    let file_width = lines
        .iter()
        .map(|l| approved_by(l).len())
        .max()
        .unwrap_or(0)
        .max(11);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<id_width$}  {:>7}  {:<file_width$}  SUBJECT",
        "ID", "MEMBERS", "APPROVED BY"
    );
    for line in lines {
        let _ = writeln!(
            out,
            "{:<id_width$}  {:>7}  {:<file_width$}  {}",
            line.jid,
            line.participants,
            approved_by(line),
            one_line(&line.subject)
        );
    }
    let approved = lines.iter().filter(|l| l.approved_by.is_some()).count();
    let _ = writeln!(
        out,
        "{} group{}, {approved} approved.",
        lines.len(),
        if lines.len() == 1 { "" } else { "s" }
    );
    out
}

/// What `passerelle join` prints: the outcome and a group file to save.
pub fn render_join(outcome: &JoinOutcome, groups_dir: &Path, files: &[GroupFile]) -> String {
    let (jid, subject) = match outcome {
        JoinOutcome::Joined { jid, subject } => (jid, subject.as_str()),
        JoinOutcome::PendingApproval { jid } => (jid, ""),
    };
    let mut out = String::new();
    match outcome {
        JoinOutcome::Joined { .. } if subject.is_empty() => {
            let _ = writeln!(out, "Joined the WhatsApp group {jid}.");
        }
        JoinOutcome::Joined { .. } => {
            let _ = writeln!(
                out,
                "Joined the WhatsApp group {jid} (\"{}\").",
                one_line(subject)
            );
        }
        JoinOutcome::PendingApproval { .. } => {
            let _ = writeln!(
                out,
                "Asked to join the WhatsApp group {jid}: a group admin must approve the request \
                 (`passerelle groups` lists it once accepted)."
            );
        }
    }
    if let Some(file) = files.iter().find(|file| &file.whatsapp == jid) {
        let _ = writeln!(out, "It is already approved by {}.", file.path.display());
        return out;
    }
    let stem = free_stem(&file_stem_for(subject, jid), files, groups_dir);
    let path = groups_dir.join(format!("{stem}.toml"));
    let _ = writeln!(
        out,
        "To bridge it, save the lines below as {} and reload (systemctl reload passerelle):\n",
        path.display()
    );
    let _ = writeln!(out, "whatsapp = \"{jid}\"");
    let _ = writeln!(
        out,
        "# invite = [\"@someone:example.org\"]   # Matrix users to invite to the room"
    );
    let _ = writeln!(
        out,
        "# allow = [\"@*:example.org\"]          # who may speak from Matrix (default: anyone in the room)"
    );
    out
}

/// A group file name (a valid alias local part) derived from the group's subject:
/// lower-case ASCII letters and digits, accents dropped, everything else a dash.
pub fn file_stem_for(subject: &str, jid: &str) -> String {
    let mut stem = String::new();
    for c in subject.chars().flat_map(char::to_lowercase) {
        let plain = match c {
            'a'..='z' | '0'..='9' => Some(c.to_string()),
            'à' | 'á' | 'â' | 'ä' | 'ã' | 'å' => Some("a".into()),
            'ç' => Some("c".into()),
            'é' | 'è' | 'ê' | 'ë' => Some("e".into()),
            'î' | 'ï' | 'í' | 'ì' => Some("i".into()),
            'ñ' => Some("n".into()),
            'ô' | 'ö' | 'ó' | 'ò' | 'õ' => Some("o".into()),
            'ù' | 'û' | 'ü' | 'ú' => Some("u".into()),
            'ÿ' => Some("y".into()),
            'œ' => Some("oe".into()),
            'æ' => Some("ae".into()),
            _ => None,
        };
        match plain {
            Some(text) => stem.push_str(&text),
            None if !stem.is_empty() && !stem.ends_with('-') => stem.push('-'),
            None => {}
        }
    }
    let mut stem = stem.trim_end_matches('-').to_string();
    stem.truncate(40);
    let stem = stem.trim_end_matches('-').to_string();
    if stem.is_empty() {
        let digits: String = jid.chars().take_while(char::is_ascii_digit).collect();
        let tail = &digits[digits.len().saturating_sub(6)..];
        return format!("group-{tail}");
    }
    stem
}

/// `stem`, or `stem-2`, `stem-3`... if a group file of that name exists.
fn free_stem(stem: &str, files: &[GroupFile], groups_dir: &Path) -> String {
    let taken = |candidate: &str| {
        files.iter().any(|file| file.name == candidate)
            || groups_dir.join(format!("{candidate}.toml")).exists()
    };
    if !taken(stem) {
        return stem.to_string();
    }
    (2..)
        .map(|n| format!("{stem}-{n}"))
        .find(|candidate| !taken(candidate))
        .unwrap_or_else(|| stem.to_string())
}

/// Subjects are one line in a table.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::check_alias_localpart;

    fn file(name: &str, jid: &str) -> GroupFile {
        GroupFile::parse(
            Path::new(&format!("/etc/passerelle/groups.d/{name}.toml")),
            &format!("whatsapp = \"{jid}\"\n"),
        )
        .unwrap()
    }

    #[test]
    fn groups_are_listed_with_the_file_that_approves_them() {
        let groups = vec![
            GroupSummary {
                jid: "120363000000000001@g.us".into(),
                subject: "Famille\nDupont".into(),
                participants: 5,
            },
            GroupSummary {
                jid: "120363000000000002@g.us".into(),
                subject: "Club".into(),
                participants: 12,
            },
        ];
        let lines = group_lines(&groups, &[file("famille", "120363000000000001@g.us")]);
        let table = render_groups(&lines);
        let rows: Vec<&str> = table.lines().collect();
        assert_eq!(rows.len(), 4, "{table}");
        assert!(rows[0].starts_with("ID"), "{table}");
        assert!(
            rows[1].starts_with("120363000000000001@g.us")
                && rows[1].contains("  5  famille.toml")
                && rows[1].ends_with("Famille Dupont"),
            "{table}"
        );
        assert!(
            rows[2].contains(" 12  -") && rows[2].ends_with("Club"),
            "{table}"
        );
        assert_eq!(rows[3], "2 groups, 1 approved.");
        assert_eq!(
            render_groups(&[]),
            "The linked number is not in any WhatsApp group.\n"
        );
    }

    #[test]
    fn file_stems_are_valid_alias_localparts() {
        assert_eq!(file_stem_for("Famille Dupont", "1@g.us"), "famille-dupont");
        assert_eq!(
            file_stem_for("Jardin partagé — été 2026 !", "1@g.us"),
            "jardin-partage-ete-2026"
        );
        assert_eq!(file_stem_for("Chœur", "1@g.us"), "choeur");
        assert_eq!(
            file_stem_for("👨‍👩‍👧", "120363041234567890@g.us"),
            "group-567890"
        );
        for subject in ["", "  ", "A", "ÀÉÎ", "x".repeat(100).as_str(), "a--b__c"] {
            let stem = file_stem_for(subject, "120363041234567890@g.us");
            assert!(check_alias_localpart(&stem, false).is_ok(), "{stem:?}");
            assert!(stem.len() <= 40);
        }
    }

    #[test]
    fn join_prints_a_group_file_that_parses_and_never_reuses_a_name() {
        let dir = tempfile::tempdir().unwrap();
        let existing = file("famille", "120363000000000009@g.us");
        let outcome = JoinOutcome::Joined {
            jid: "120363000000000001@g.us".into(),
            subject: "Famille".into(),
        };
        let text = render_join(&outcome, dir.path(), std::slice::from_ref(&existing));
        assert!(
            text.starts_with("Joined the WhatsApp group 120363000000000001@g.us (\"Famille\")."),
            "{text}"
        );
        let path = dir.path().join("famille-2.toml");
        assert!(text.contains(&path.display().to_string()), "{text}");
        let body = text.split("\n\n").nth(1).unwrap();
        let parsed = GroupFile::parse(&path, body).unwrap();
        assert_eq!(parsed.whatsapp, "120363000000000001@g.us");

        let pending = JoinOutcome::PendingApproval {
            jid: "120363000000000002@g.us".into(),
        };
        let text = render_join(&pending, dir.path(), &[]);
        assert!(text.contains("must approve"), "{text}");
        assert!(text.contains("group-000002.toml"), "{text}");

        let approved = JoinOutcome::Joined {
            jid: "120363000000000009@g.us".into(),
            subject: "Famille".into(),
        };
        let text = render_join(&approved, dir.path(), &[existing]);
        assert!(text.contains("already approved by"), "{text}");
        assert!(!text.contains("whatsapp ="), "{text}");
    }
}
