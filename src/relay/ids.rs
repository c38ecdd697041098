//! The ids the bridge derives and the keys it finds things again by: WhatsApp ids for
//! Matrix events, Matrix transaction ids for WhatsApp messages, and the keys of the
//! links that are not one message to one event (reaction lines, digests).

use sha2::{Digest, Sha256};

/// The longest WhatsApp message id the bridge takes (WhatsApp's own are 16 to 32
/// characters).
const MAX_WHATSAPP_ID_CHARS: usize = 128;

/// Whether `id`, a WhatsApp message id read from the wire, is one a WhatsApp app
/// makes: letters, digits, `-` or `_`, at most 128. The ids are the sender's choice
/// (a modified client sends any string), and the bridge keys its own links with `:`
/// (`reaction:…`, `wa-annotation:…`), so an id that passes can never stand for one
/// of them.
pub fn is_whatsapp_message_id(id: &str) -> bool {
    (1..=MAX_WHATSAPP_ID_CHARS).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The key under which the reaction line of one sender to one message is found again.
pub fn reaction_key(message_id: &str, sender_phone: &str) -> String {
    format!("reaction:{message_id}:{sender_phone}")
}

/// The WhatsApp message id the bridge uses for a Matrix event: derived from the event
/// id, so a retry after a crash reuses it and WhatsApp never shows the message twice.
/// The shape follows WhatsApp Web ids (`3EB0` + hex), so WhatsApp shows nothing
/// unusual; it marks nothing: WhatsApp Web can make the same shape, so the bridge
/// knows its own messages by the ids it stored (`sent_whatsapp_ids`).
pub fn whatsapp_id_for_event(event_id: &str) -> String {
    let digest = Sha256::digest(event_id.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02X}")).collect();
    format!("{BRIDGE_ID_PREFIX}{hex}")
}

const BRIDGE_ID_PREFIX: &str = "3EB0BE";

/// The Matrix transaction id the bot uses for a WhatsApp message: derived from the
/// message id, so a retry returns the already-sent event instead of a second copy.
pub fn matrix_txn_for_whatsapp(group_jid: &str, message_id: &str) -> String {
    let digest = Sha256::digest(format!("{group_jid}/{message_id}").as_bytes());
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("wa.{hex}")
}

/// The outbox source of the notice telling a Matrix sender why event `event_id`
/// did not cross: one per event. No WhatsApp message id has this shape.
pub fn notice_source_id(event_id: &str) -> String {
    format!("notice:{event_id}")
}

/// Prefix of the link of a Matrix reaction relayed as the number's reaction:
/// `mx-reaction:<target WhatsApp id>:<reaction id>`.
const MATRIX_REACTION_LINK: &str = "mx-reaction:";

/// Prefix of the link a Matrix reaction counted in a digest gets, followed by the
/// WhatsApp message it reacts to and the outbox item's id.
const MATRIX_DIGEST_LINK: &str = "mx-digest:";

/// Prefix of the links of the bot's reactions standing for WhatsApp reactions
/// (followed by the WhatsApp message and the emoji), and of the digest keeping who
/// reacts how (followed by the message).
pub const WHATSAPP_ANNOTATIONS: &str = "wa-annotation:";

/// The link key of a Matrix reaction the number sent as its own reaction to `target`.
pub fn matrix_reaction_link(target: &str, sent_id: &str) -> String {
    format!("{MATRIX_REACTION_LINK}{target}:{sent_id}")
}

/// The link key of a Matrix reaction to `target` counted in the digest reply.
pub fn matrix_digest_link(target: &str, item_id: &str) -> String {
    format!("{MATRIX_DIGEST_LINK}{target}:{item_id}")
}

/// How a Matrix reaction crossed, read back from its link key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrossedReaction<'a> {
    /// As the number's own reaction to this WhatsApp message.
    Reaction { target: &'a str },
    /// Counted in the digest reply to this WhatsApp message.
    Digest { target: &'a str },
}

/// The reaction a link key stands for, if it is a Matrix reaction's.
pub fn crossed_reaction(link_key: &str) -> Option<CrossedReaction<'_>> {
    if let Some(rest) = link_key.strip_prefix(MATRIX_DIGEST_LINK) {
        let (target, _) = rest.rsplit_once(':')?;
        return Some(CrossedReaction::Digest { target });
    }
    let rest = link_key.strip_prefix(MATRIX_REACTION_LINK)?;
    let (target, _) = rest.rsplit_once(':')?;
    Some(CrossedReaction::Reaction { target })
}

/// The key of the digest of who reacts how to WhatsApp message `to`, in the
/// bot's-own-reaction mode.
pub fn annotations_digest_key(to: &str) -> String {
    format!("{WHATSAPP_ANNOTATIONS}{to}")
}

/// The link key of the bot's reaction `emoji` standing for WhatsApp reactions to `to`.
pub fn annotation_link(to: &str, emoji: &str) -> String {
    format!("{WHATSAPP_ANNOTATIONS}{to}:{emoji}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_those_whatsapp_apps_make() {
        for id in [
            "3EB0C767D26A8A0A2A5B",
            "BAE5F3A1B2C3D4E5",
            "3A1B2C-x_y",
            "A",
        ] {
            assert!(is_whatsapp_message_id(id), "{id}");
        }
        let too_long = "A".repeat(129);
        for id in [
            "",
            too_long.as_str(),
            "wa-annotation:3EB0AA:👍",
            "reaction:M1:33611111111",
            "mx-reaction:M1:3EB0BE01",
            "M1 ",
            "M1\n",
            "É1",
        ] {
            assert!(!is_whatsapp_message_id(id), "{id:?}");
        }
        // Every key the bridge derives is one no WhatsApp id can be.
        for key in [
            reaction_key("M1", "33611111111"),
            annotation_link("M1", "x"),
            annotations_digest_key("M1"),
            matrix_reaction_link("M1", "S"),
            matrix_digest_link("M1", "S"),
        ] {
            assert!(!is_whatsapp_message_id(&key), "{key}");
        }
    }

    #[test]
    fn crossed_reactions_are_read_back_from_their_link_keys() {
        let digest = matrix_digest_link("ABC", "3EB0BE01");
        let reaction = matrix_reaction_link("ABC", "3EB0BE02");
        assert_eq!(
            crossed_reaction(&digest),
            Some(CrossedReaction::Digest { target: "ABC" })
        );
        assert_eq!(
            crossed_reaction(&reaction),
            Some(CrossedReaction::Reaction { target: "ABC" })
        );
        assert_eq!(crossed_reaction("3EB0BE0123"), None);
        assert_eq!(crossed_reaction("mx-digest:no-separator"), None);
    }
}
