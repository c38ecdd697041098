//! WhatsApp texts too long for one Matrix event (WhatsApp takes 65,536 characters, an
//! event holds 64 KiB in all): cut into parts that each fit, in order, and that
//! joined are the whole text.

use super::{PostPart, Relay, WhatsAppText};

impl Relay {
    /// The Matrix body and HTML of a WhatsApp text (or caption), through the
    /// templates, and the further parts when it is too long for one event:
    /// WhatsApp takes texts of 65,536 characters, a Matrix event holds 64 KiB in
    /// all. Each part names the sender and says which part it is (`(2/3)`); joined
    /// in order, the parts' texts are the whole text.
    pub(super) fn whatsapp_text_for_matrix(
        &self,
        message: &WhatsAppText,
        name: &str,
    ) -> (String, String, Vec<PostPart>) {
        let (body, html) = self.render_whatsapp_text(message, &message.text, name);
        if event_bytes(&body, &html) <= MAX_MATRIX_TEXT_BYTES {
            return (body, html, Vec::new());
        }
        let mut pieces = Vec::new();
        let mut rest = message.text.as_str();
        while !rest.is_empty() {
            let last_allowed = pieces.len() + 1 == MAX_MATRIX_PARTS;
            let (taken, body, html) = self.fitting_piece(message, rest, name, last_allowed);
            pieces.push((body, html));
            rest = &rest[taken..];
            if last_allowed {
                break;
            }
        }
        let count = pieces.len();
        let mut parts = pieces
            .into_iter()
            .enumerate()
            .map(|(index, (body, html))| PostPart {
                body: format!("{body} ({}/{count})", index + 1),
                html: format!("{html} <em>({}/{count})</em>", index + 1),
            });
        let first = parts.next().unwrap_or_default();
        (first.body, first.html, parts.collect())
    }

    /// The longest beginning of `rest` whose rendering fits one event with room for
    /// its part marker, cut after a line break or a space when one is near the end:
    /// `(bytes taken, body, html)`. The `last` part allowed takes what fits and says
    /// the rest is in WhatsApp (only a modified client sends that much).
    fn fitting_piece(
        &self,
        message: &WhatsAppText,
        rest: &str,
        name: &str,
        last: bool,
    ) -> (usize, String, String) {
        let limit = MAX_MATRIX_TEXT_BYTES - PART_MARKER_ROOM;
        let mut cut = rest.len();
        loop {
            let piece = &rest[..cut];
            let (body, html) = if last && cut < rest.len() {
                let shortened = format!("{piece}…");
                let (body, html) = self.render_whatsapp_text(message, &shortened, name);
                (
                    format!("{body}\n({TOO_LONG_FOR_MATRIX})"),
                    format!("{html}<br><em>({TOO_LONG_FOR_MATRIX})</em>"),
                )
            } else {
                self.render_whatsapp_text(message, piece, name)
            };
            let size = event_bytes(&body, &html);
            let smallest = first_char_len(rest);
            if size <= limit || cut <= smallest {
                return (cut, body, html);
            }
            // Shrink in proportion (escapes make some texts larger), then back to a
            // character boundary and, if one is near, a line break or a space.
            let mut next = (cut as u128 * limit as u128 / size as u128) as usize;
            next = next.min(cut.saturating_sub(1));
            while !rest.is_char_boundary(next) {
                next -= 1;
            }
            let mut near_start = next - next / 8;
            while !rest.is_char_boundary(near_start) {
                near_start += 1;
            }
            let near = &rest[near_start..next];
            if let Some(at) = near.rfind('\n').or_else(|| near.rfind(' ')) {
                next = near_start + at + 1;
            }
            cut = next.max(smallest);
        }
    }
}

/// Most bytes of body and HTML together, as JSON, in one Matrix event: the homeserver
/// refuses events over 64 KiB, and the event's other fields need room.
const MAX_MATRIX_TEXT_BYTES: usize = 56 * 1024;

/// How many bytes a body and its HTML take in the event's JSON (escapes included).
fn event_bytes(body: &str, html: &str) -> usize {
    let json = |text: &str| serde_json::to_string(text).map_or(usize::MAX / 2, |json| json.len());
    json(body) + json(html)
}

/// What ends the last part of a text cut short (more than [`MAX_MATRIX_PARTS`]).
const TOO_LONG_FOR_MATRIX: &str = "too long for Matrix: the rest is in WhatsApp";

/// Most events one WhatsApp text becomes: WhatsApp's longest text (65,536
/// characters, at worst 4 bytes each and escaped) takes about ten; only a modified
/// client sends more, and its text stops there.
const MAX_MATRIX_PARTS: usize = 16;

/// Bytes kept free in each part for its marker (` (12/16)`, in body and HTML).
const PART_MARKER_ROOM: usize = 64;

/// Bytes of the first character of `text` (0 when empty): a part takes at least one.
fn first_char_len(text: &str) -> usize {
    text.chars().next().map_or(0, char::len_utf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_too_long_for_one_matrix_event_crosses_whole_in_parts() {
        use crate::config::{RelayConfig, Templates};
        use crate::relay::{PostPart, Relay, WhatsAppText};
        let relay = Relay::new(
            "@bot:example.org",
            Templates::default(),
            RelayConfig::default(),
        );
        // WhatsApp's longest text, all of it markup-heavy: HTML escaping makes `&`
        // five bytes.
        let text = "a & b é\n".repeat(65_536 / 8);
        let message = WhatsAppText {
            group_jid: "g@g.us".into(),
            message_id: "ABC".into(),
            sender_phone: "33611111111".into(),
            push_name: Some("Bob".into()),
            text: text.clone(),
            ..WhatsAppText::default()
        };
        let parts = |message: &WhatsAppText| {
            let (body, html, more) = relay.whatsapp_text_for_matrix(message, "Bob");
            let mut all = vec![PostPart { body, html }];
            all.extend(more);
            for part in &all {
                let size = event_bytes(&part.body, &part.html);
                assert!(size <= MAX_MATRIX_TEXT_BYTES, "{size}");
            }
            all
        };
        // Each part: the sender, a piece, which part it is; the pieces are the text.
        let whole = |all: &[PostPart]| {
            let count = all.len();
            all.iter()
                .enumerate()
                .map(|(i, part)| {
                    part.body
                        .strip_prefix("Bob: ")
                        .and_then(|b| b.strip_suffix(&format!(" ({}/{count})", i + 1)))
                        .unwrap_or_else(|| panic!("part {i}: {}", &part.body[..20]))
                        .to_owned()
                })
                .collect::<String>()
        };
        let all = parts(&message);
        assert!((2..=4).contains(&all.len()), "{} parts", all.len());
        assert_eq!(whole(&all), text);
        assert!(
            all[1].html.starts_with("<strong>Bob</strong>"),
            "{}",
            &all[1].html[..40]
        );
        // Cut after a line break, not inside a word.
        assert!(all[0].body.ends_with("é\n (1/") || all[0].body.contains("é\n (1/"));
        // A text that fits is left whole, in one event.
        let short = WhatsAppText {
            text: "salut".into(),
            ..message
        };
        assert_eq!(
            relay.whatsapp_text_for_matrix(&short, "Bob"),
            (
                "Bob: salut".into(),
                "<strong>Bob</strong>: salut".into(),
                vec![]
            )
        );
        // Backslashes and quotes take two bytes each in the event's JSON; no space
        // to cut at.
        let escaped = WhatsAppText {
            text: "\\\"".repeat(30_000),
            ..short.clone()
        };
        assert_eq!(whole(&parts(&escaped)), escaped.text);
        // A modified client's text beyond any WhatsApp text stops after the most
        // parts, and says so.
        let huge = WhatsAppText {
            text: "x".repeat(1_000_000),
            ..short
        };
        let all = parts(&huge);
        assert_eq!(all.len(), MAX_MATRIX_PARTS);
        assert!(
            all.last().unwrap().body.contains("the rest is in WhatsApp"),
            "{}",
            &all.last().unwrap().body
        );
    }
}
