//! Turns a file on disk into checked text and TOML errors into `path:line: message` problems.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::Spanned;

use super::Problem;

/// The text of one configuration file and the problems found in it so far.
pub(crate) struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
    pub problems: Vec<Problem>,
}

impl<'a> Source<'a> {
    pub fn new(path: &'a Path, text: &'a str) -> Self {
        Source {
            path,
            text,
            problems: Vec::new(),
        }
    }

    /// Deserializes the whole text; a syntax or shape error becomes a problem.
    pub fn deserialize<T: DeserializeOwned>(&mut self) -> Option<T> {
        match toml::from_str::<T>(self.text) {
            Ok(value) => Some(value),
            Err(err) => {
                let problem = toml_problem(self.path, self.text, &err);
                self.problems.push(problem);
                None
            }
        }
    }

    /// 1-based line of a byte offset in the text.
    pub fn line_at(&self, offset: usize) -> usize {
        line_at(self.text, offset)
    }

    /// Records a problem on the line where `value` starts.
    pub fn at<T>(&mut self, value: &Spanned<T>, message: impl Into<String>) {
        let line = self.line_at(value.span().start);
        self.problems.push(Problem {
            path: self.path.to_path_buf(),
            line: Some(line),
            message: message.into(),
        });
    }

    /// Records a problem that has no particular line.
    pub fn whole(&mut self, message: impl Into<String>) {
        self.problems.push(Problem {
            path: self.path.to_path_buf(),
            line: None,
            message: message.into(),
        });
    }
}

/// Reads a file as UTF-8 text (a leading byte order mark is dropped).
pub(crate) fn read_text(path: &Path) -> Result<String, Problem> {
    let bytes = std::fs::read(path).map_err(|err| Problem {
        path: path.to_path_buf(),
        line: None,
        message: format!("cannot read file: {err}"),
    })?;
    match String::from_utf8(bytes) {
        Ok(mut text) => {
            if text.starts_with('\u{feff}') {
                text.drain(..'\u{feff}'.len_utf8());
            }
            Ok(text)
        }
        Err(err) => {
            let good = err.utf8_error().valid_up_to();
            let bytes = err.as_bytes();
            let line = bytes.iter().take(good).filter(|&&b| b == b'\n').count() + 1;
            Err(Problem {
                path: path.to_path_buf(),
                line: Some(line),
                message: "file is not valid UTF-8 (save it as UTF-8)".to_owned(),
            })
        }
    }
}

/// 1-based line of a byte offset in `text` (offsets past the end give the last line).
pub(crate) fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset)
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Converts a TOML parse/deserialize error into a problem with a line and a clearer message.
pub(crate) fn toml_problem(path: &Path, text: &str, err: &toml::de::Error) -> Problem {
    let span = err.span();
    let line = span.as_ref().map(|s| line_at(text, s.start));
    let raw = err.message().trim_end();
    let message = if raw == "duplicate key" {
        match span.as_ref().and_then(|s| text.get(s.clone())) {
            Some(key) if !key.is_empty() => format!("duplicate key `{key}`"),
            _ => raw.to_owned(),
        }
    } else if let Some(rest) = raw.strip_prefix("unknown field ") {
        unknown_key_message(rest)
    } else if raw.starts_with("invalid type")
        || raw.starts_with("invalid value")
        || raw.starts_with("invalid length")
    {
        match span.as_ref().and_then(|s| key_before(text, s.start)) {
            Some(key) => format!("`{key}`: {raw}"),
            None => raw.to_owned(),
        }
    } else {
        raw.to_owned()
    };
    Problem {
        path: PathBuf::from(path),
        line,
        message,
    }
}

/// `rest` is serde's "`key`, expected one of `a`, `b`" (or "expected `a` or `b`").
fn unknown_key_message(rest: &str) -> String {
    let mut pieces = rest.split('`');
    let _ = pieces.next();
    let key = pieces.next().unwrap_or("");
    let valid: Vec<&str> = pieces.skip(1).step_by(2).collect();
    let mut message = format!("unknown key `{key}`");
    if valid.is_empty() {
        message.push_str("; no keys are allowed here");
        return message;
    }
    let best = valid
        .iter()
        .map(|v| (edit_distance(key, v), *v))
        .min_by_key(|(d, _)| *d);
    if let Some((distance, candidate)) = best {
        if distance <= 2 && distance < key.chars().count() {
            message.push_str(&format!(" (did you mean `{candidate}`?)"));
        }
    }
    let list = valid
        .iter()
        .map(|v| format!("`{v}`"))
        .collect::<Vec<_>>()
        .join(", ");
    message.push_str(&format!("; valid keys here: {list}"));
    message
}

/// Levenshtein distance, on characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            let best = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
            cur.push(best);
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

/// The key whose value starts at `offset`, when it is written on the same line
/// (`key = value`, `a.b = [x, value]`, `t = { key = value }`).
fn key_before(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?;
    let line = before.rsplit('\n').next().unwrap_or(before);
    // Find the last `=` outside quotes.
    let mut last_eq = None;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match quote {
            Some('"') if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '=' => last_eq = Some(i),
            None => {}
        }
    }
    let head = line.get(..last_eq?)?.trim_end();
    let start = head
        .char_indices()
        .rev()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || "_-.\"'".contains(c)))
        .map_or(0, |(i, c)| i + c.len_utf8());
    let key = head.get(start..)?.trim_matches(|c| c == '"' || c == '\'');
    (!key.is_empty()).then(|| key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_one_based() {
        assert_eq!(line_at("a\nb\nc", 0), 1);
        assert_eq!(line_at("a\nb\nc", 2), 2);
        assert_eq!(line_at("a\nb\nc", 4), 3);
        assert_eq!(line_at("a\nb\nc", 999), 3);
    }

    #[test]
    fn finds_the_key_of_a_value() {
        let t = "x = 1\nuser = 3\n";
        assert_eq!(key_before(t, 13).as_deref(), Some("user"));
        let t = "admins = [\"a=b\", 3]";
        assert_eq!(key_before(t, 17).as_deref(), Some("admins"));
        let t = "m = { \"user\" = 3 }";
        assert_eq!(key_before(t, 15).as_deref(), Some("user"));
        assert_eq!(key_before("  3,", 2), None);
    }

    #[test]
    fn suggests_close_keys() {
        assert_eq!(edit_distance("pasword", "password"), 1);
        assert_eq!(edit_distance("", "ab"), 2);
        let m = unknown_key_message("`pasword`, expected `user` or `password`");
        assert_eq!(
            m,
            "unknown key `pasword` (did you mean `password`?); valid keys here: `user`, `password`"
        );
    }
}
