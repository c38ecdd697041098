//! Message templates: parse a text with `{placeholder}`s once, then fill it in for each message.
//!
//! Syntax: `{name}` is replaced by the value of `name`; `{{` and `}}` stand for literal
//! braces. Any other brace is an error, reported when the template is parsed (at startup
//! or reload), never when a message is rendered.

use std::fmt;

/// A parsed template: literal pieces and placeholders, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Placeholder(String),
}

/// Why a template text was refused.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    /// A `{name}` whose name is not in the allowed list.
    #[error("unknown placeholder `{{{name}}}`; allowed: {}", braced(.allowed))]
    UnknownPlaceholder { name: String, allowed: Vec<String> },
    /// A `{` with no `}` after it.
    #[error("unclosed `{{` at character {column} (write `{{{{` for a literal brace)")]
    UnclosedBrace {
        /// 1-based position of the `{`, counted in characters.
        column: usize,
    },
    /// A `}` that closes nothing.
    #[error("unmatched `}}` at character {column} (write `}}}}` for a literal brace)")]
    UnmatchedBrace {
        /// 1-based position of the `}`, counted in characters.
        column: usize,
    },
    /// A required placeholder does not appear.
    #[error("missing placeholder `{{{name}}}`: this template must contain it")]
    MissingPlaceholder { name: String },
}

/// `["a", "b"]` -> "{a}, {b}" (or "none" for an empty list).
fn braced(names: &[String]) -> String {
    if names.is_empty() {
        return "none".to_owned();
    }
    names
        .iter()
        .map(|n| format!("{{{n}}}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Template {
    /// Parses `source`. `allowed`: placeholder names accepted; `required`: names that must
    /// appear. `{{` and `}}` are literal braces.
    pub fn parse(
        source: &str,
        allowed: &[&str],
        required: &[&str],
    ) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = source.chars().enumerate().peekable();
        while let Some((index, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|&(_, n)| n) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|&(_, n)| n) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => return Err(TemplateError::UnmatchedBrace { column: index + 1 }),
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for (_, n) in chars.by_ref() {
                        if n == '}' {
                            closed = true;
                            break;
                        }
                        if n == '{' {
                            break;
                        }
                        name.push(n);
                    }
                    if !closed {
                        return Err(TemplateError::UnclosedBrace { column: index + 1 });
                    }
                    if !allowed.contains(&name.as_str()) {
                        return Err(TemplateError::UnknownPlaceholder {
                            name,
                            allowed: allowed.iter().map(|s| (*s).to_owned()).collect(),
                        });
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Placeholder(name));
                }
                _ => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        for name in required {
            let present = parts
                .iter()
                .any(|p| matches!(p, Part::Placeholder(n) if n == name));
            if !present {
                return Err(TemplateError::MissingPlaceholder {
                    name: (*name).to_owned(),
                });
            }
        }
        Ok(Template {
            source: source.to_owned(),
            parts,
        })
    }

    /// A template that renders `text` as is (braces included), with no placeholders.
    pub fn literal(text: &str) -> Template {
        let parts = if text.is_empty() {
            Vec::new()
        } else {
            vec![Part::Literal(text.to_owned())]
        };
        Template {
            source: text.replace('{', "{{").replace('}', "}}"),
            parts,
        }
    }

    /// Substitutes each placeholder with `value(name)` (an unknown name gives the empty
    /// string). No escaping here: the caller escapes values (e.g. HTML) beforehand.
    pub fn render(&self, value: impl Fn(&str) -> Option<String>) -> String {
        let mut out = String::with_capacity(self.source.len() + 64);
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Placeholder(name) => {
                    if let Some(v) = value(name) {
                        out.push_str(&v);
                    }
                }
            }
        }
        out
    }

    /// The text the template was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether `{name}` appears in the template (lets callers skip computing a value).
    pub fn uses(&self, name: &str) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Placeholder(n) if n == name))
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOWED: &[&str] = &["name", "phone", "text"];

    fn vals(name: &str) -> Option<String> {
        match name {
            "name" => Some("Alice".to_owned()),
            "text" => Some("hi {there}".to_owned()),
            _ => None,
        }
    }

    #[test]
    fn renders_placeholders_and_literal_braces() {
        let t = Template::parse("{{{name}}} <{phone}>: {text}", ALLOWED, &["text"]).unwrap();
        assert_eq!(t.render(vals), "{Alice} <>: hi {there}");
        assert_eq!(t.source(), "{{{name}}} <{phone}>: {text}");
        assert!(t.uses("phone"));
        assert!(!t.uses("user"));
    }

    #[test]
    fn empty_and_plain_templates() {
        let t = Template::parse("", ALLOWED, &[]).unwrap();
        assert_eq!(t.render(vals), "");
        let t = Template::parse("é only text ✓", ALLOWED, &[]).unwrap();
        assert_eq!(t.render(vals), "é only text ✓");
    }

    #[test]
    fn unknown_placeholder() {
        let err = Template::parse("{nom}: {text}", ALLOWED, &["text"]).unwrap_err();
        assert_eq!(
            err,
            TemplateError::UnknownPlaceholder {
                name: "nom".into(),
                allowed: vec!["name".into(), "phone".into(), "text".into()],
            }
        );
        assert_eq!(
            err.to_string(),
            "unknown placeholder `{nom}`; allowed: {name}, {phone}, {text}"
        );
        let err = Template::parse("{}", ALLOWED, &[]).unwrap_err();
        assert!(
            matches!(err, TemplateError::UnknownPlaceholder { ref name, .. } if name.is_empty())
        );
    }

    #[test]
    fn unclosed_brace() {
        let err = Template::parse("é {name: {text}", ALLOWED, &[]).unwrap_err();
        assert_eq!(err, TemplateError::UnclosedBrace { column: 3 });
        assert_eq!(
            err.to_string(),
            "unclosed `{` at character 3 (write `{{` for a literal brace)"
        );
        assert_eq!(
            Template::parse("{text", ALLOWED, &[]).unwrap_err(),
            TemplateError::UnclosedBrace { column: 1 }
        );
    }

    #[test]
    fn unmatched_closing_brace() {
        let err = Template::parse("{text} }", ALLOWED, &[]).unwrap_err();
        assert_eq!(err, TemplateError::UnmatchedBrace { column: 8 });
        assert_eq!(
            err.to_string(),
            "unmatched `}` at character 8 (write `}}` for a literal brace)"
        );
    }

    #[test]
    fn missing_required_placeholder() {
        let err = Template::parse("{name} said something", ALLOWED, &["text"]).unwrap_err();
        assert_eq!(
            err,
            TemplateError::MissingPlaceholder {
                name: "text".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "missing placeholder `{text}`: this template must contain it"
        );
        // An escaped brace does not count as the placeholder.
        assert!(Template::parse("{{text}}", ALLOWED, &["text"]).is_err());
    }
}
