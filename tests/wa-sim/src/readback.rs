//! Read-back of one decrypted message for a member's log
//! (`GET /members/{phone}/messages`): its kind and the fields tests check
//! (text or caption, reply, mentions, edit/revoke/reaction target, media
//! metadata, location), whichever common wrapper it came in (device-sent,
//! ephemeral, view-once, document-with-caption, the legacy edited-message
//! wrapper). The media itself is downloaded by the member (see `members.rs`).

use waproto::whatsapp as wa;
use waproto::whatsapp::message::protocol_message::Type as ProtocolType;
use whatsapp_rust::download::Downloadable;

/// What a message says, in the log's terms.
#[derive(Debug, Default)]
pub struct Described {
    /// text, image, video, audio, ptt, document, sticker, location, reaction,
    /// edit, revoke or other.
    pub kind: &'static str,
    /// Text, caption, or the new text of an edit.
    pub text: Option<String>,
    pub mime: Option<String>,
    pub quoted_id: Option<String>,
    pub quoted_sender: Option<String>,
    /// The text a reply carries of the message it quotes (what phones show;
    /// `Some("")` when it carries an empty one, `None` when none).
    pub quoted_text: Option<String>,
    /// Mentioned users (user part of each JID: the phone number in PN chats).
    pub mentions: Vec<String>,
    /// Disappearing-message timer the sender set on the message (seconds).
    pub expiration: Option<u32>,
    pub edit_of: Option<String>,
    pub revoke_of: Option<String>,
    pub reaction_to: Option<String>,
    pub emoji: Option<String>,
    pub file_name: Option<String>,
    pub ptt: Option<bool>,
    pub gif: Option<bool>,
    pub waveform: Option<Vec<u8>>,
    pub seconds: Option<u32>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub name: Option<String>,
    /// Poll: its options (`text` is the question) and how many one may pick.
    pub options: Vec<String>,
    pub selectable: Option<u32>,
    /// The media to download, if any.
    pub media: Option<Media>,
}

/// A downloadable media payload.
#[derive(Clone, Debug)]
pub enum Media {
    Image(wa::message::ImageMessage),
    Video(wa::message::VideoMessage),
    Audio(wa::message::AudioMessage),
    Document(wa::message::DocumentMessage),
    Sticker(wa::message::StickerMessage),
}

impl Media {
    pub fn downloadable(&self) -> &dyn Downloadable {
        match self {
            Media::Image(m) => m,
            Media::Video(m) => m,
            Media::Audio(m) => m,
            Media::Document(m) => m,
            Media::Sticker(m) => m,
        }
    }
}

/// The message inside every wrapper WhatsApp clients put around content.
pub fn unwrap(mut m: &wa::Message) -> &wa::Message {
    loop {
        let inner = m
            .device_sent_message
            .as_option()
            .and_then(|w| w.message.as_option())
            .or_else(|| future_proof(&m.ephemeral_message))
            .or_else(|| future_proof(&m.view_once_message))
            .or_else(|| future_proof(&m.view_once_message_v2))
            .or_else(|| future_proof(&m.view_once_message_v2_extension))
            .or_else(|| future_proof(&m.document_with_caption_message))
            .or_else(|| future_proof(&m.edited_message))
            .or_else(|| future_proof(&m.group_mentioned_message));
        match inner {
            Some(i) => m = i,
            None => return m,
        }
    }
}

fn future_proof(
    w: &waproto::buffa::MessageField<wa::message::FutureProofMessage>,
) -> Option<&wa::Message> {
    w.as_option().and_then(|w| w.message.as_option())
}

/// The `contextInfo` of the message's content, whichever kind carries it.
pub fn context_info(m: &wa::Message) -> Option<&wa::ContextInfo> {
    macro_rules! first {
        ($($field:ident),+) => {
            None$(.or_else(|| m.$field.as_option().and_then(|x| x.context_info.as_option())))+
        };
    }
    first!(
        extended_text_message,
        image_message,
        video_message,
        audio_message,
        document_message,
        sticker_message,
        location_message,
        live_location_message,
        contact_message,
        ptv_message
    )
}

/// Text or caption of (unwrapped) content.
fn text_of(m: &wa::Message) -> Option<String> {
    m.conversation
        .clone()
        .filter(|t| !t.is_empty())
        .or_else(|| {
            m.extended_text_message
                .as_option()
                .and_then(|x| x.text.clone())
        })
        .or_else(|| m.image_message.as_option().and_then(|x| x.caption.clone()))
        .or_else(|| m.video_message.as_option().and_then(|x| x.caption.clone()))
        .or_else(|| {
            m.document_message
                .as_option()
                .and_then(|x| x.caption.clone())
        })
}

/// User part of a JID (`33611111111` of `33611111111:3@s.whatsapp.net`).
fn user_of(jid: &str) -> String {
    jid.split(['@', ':']).next().unwrap_or(jid).to_string()
}

/// `user@server` without the device part.
pub fn without_device(jid: &str) -> String {
    match jid.split_once('@') {
        Some((user, server)) => format!("{}@{server}", user_of(user)),
        None => jid.to_string(),
    }
}

/// Reads `message` (as decrypted, wrappers included).
pub fn describe(message: &wa::Message) -> Described {
    let m = unwrap(message);
    let mut d = Described {
        kind: "other",
        text: text_of(m),
        ..Default::default()
    };
    if let Some(ctx) = context_info(m) {
        d.quoted_id = ctx.stanza_id.clone();
        d.quoted_sender = ctx.participant.as_deref().map(without_device);
        d.quoted_text = ctx
            .quoted_message
            .as_option()
            .map(|quoted| text_of(quoted).unwrap_or_default());
        d.mentions = ctx.mentioned_jid.iter().map(|j| user_of(j)).collect();
        d.expiration = ctx.expiration.filter(|seconds| *seconds > 0);
    }
    if let Some(pm) = m.protocol_message.as_option() {
        let target = pm.key.as_option().and_then(|k| k.id.clone());
        match pm.r#type {
            Some(ProtocolType::REVOKE) => {
                d.kind = "revoke";
                d.revoke_of = target;
            }
            Some(ProtocolType::MESSAGE_EDIT) => {
                d.kind = "edit";
                d.edit_of = target;
                if let Some(new) = pm.edited_message.as_option().map(unwrap) {
                    d.text = text_of(new);
                    d.mentions = context_info(new)
                        .map(|c| c.mentioned_jid.iter().map(|j| user_of(j)).collect())
                        .unwrap_or_default();
                }
            }
            _ => {}
        }
    } else if let Some(r) = m.reaction_message.as_option() {
        d.kind = "reaction";
        d.reaction_to = r.key.as_option().and_then(|k| k.id.clone());
        d.emoji = Some(r.text.clone().unwrap_or_default());
    } else if let Some(x) = m.image_message.as_option() {
        d.kind = "image";
        d.mime = x.mimetype.clone();
        d.media = Some(Media::Image(x.clone()));
    } else if let Some(x) = m.video_message.as_option().or(m.ptv_message.as_option()) {
        d.kind = "video";
        d.mime = x.mimetype.clone();
        d.seconds = x.seconds;
        d.gif = x.gif_playback;
        d.media = Some(Media::Video(x.clone()));
    } else if let Some(x) = m.audio_message.as_option() {
        let ptt = x.ptt.unwrap_or(false);
        d.kind = if ptt { "ptt" } else { "audio" };
        d.ptt = Some(ptt);
        d.waveform = x.waveform.clone().filter(|w| !w.is_empty());
        d.mime = x.mimetype.clone();
        d.seconds = x.seconds;
        d.media = Some(Media::Audio(x.clone()));
    } else if let Some(x) = m.document_message.as_option() {
        d.kind = "document";
        d.mime = x.mimetype.clone();
        d.file_name = x.file_name.clone();
        d.media = Some(Media::Document(x.clone()));
    } else if let Some(x) = m.sticker_message.as_option() {
        d.kind = "sticker";
        d.mime = x.mimetype.clone();
        d.media = Some(Media::Sticker(x.clone()));
    } else if let Some(x) = m.location_message.as_option() {
        d.kind = "location";
        d.lat = x.degrees_latitude;
        d.lon = x.degrees_longitude;
        d.name = x.name.clone();
    } else if let Some(x) = m.live_location_message.as_option() {
        d.kind = "location";
        d.lat = x.degrees_latitude;
        d.lon = x.degrees_longitude;
    } else if let Some(p) = [
        &m.poll_creation_message,
        &m.poll_creation_message_v2,
        &m.poll_creation_message_v3,
    ]
    .into_iter()
    .find_map(|p| p.as_option())
    {
        d.kind = "poll";
        d.text = p.name.clone();
        d.options = p
            .options
            .iter()
            .filter_map(|o| o.option_name.clone())
            .collect();
        d.selectable = p.selectable_options_count;
    } else if m.poll_update_message.is_set() {
        d.kind = "poll_vote";
    } else if d.text.is_some() {
        d.kind = "text";
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use waproto::buffa::MessageField;

    fn text(t: &str) -> wa::Message {
        wa::Message {
            conversation: Some(t.into()),
            ..Default::default()
        }
    }

    #[test]
    fn legacy_edit_wrapper_and_ephemeral_are_unwrapped() {
        let edit = wa::Message {
            protocol_message: MessageField::some(wa::message::ProtocolMessage {
                key: MessageField::some(wa::MessageKey {
                    id: Some("ORIG".into()),
                    from_me: Some(true),
                    ..Default::default()
                }),
                r#type: Some(ProtocolType::MESSAGE_EDIT),
                edited_message: MessageField::some(text("new")),
                ..Default::default()
            }),
            ..Default::default()
        };
        let wrapped = wa::Message {
            ephemeral_message: MessageField::some(wa::message::FutureProofMessage {
                message: MessageField::some(wa::Message {
                    edited_message: MessageField::some(wa::message::FutureProofMessage {
                        message: MessageField::some(edit),
                    }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let d = describe(&wrapped);
        assert_eq!(d.kind, "edit");
        assert_eq!(d.edit_of.as_deref(), Some("ORIG"));
        assert_eq!(d.text.as_deref(), Some("new"));
    }

    #[test]
    fn reply_with_mentions() {
        let m = wa::Message {
            extended_text_message: MessageField::some(wa::message::ExtendedTextMessage {
                text: Some("hi @33622222222".into()),
                context_info: MessageField::some(wa::ContextInfo {
                    stanza_id: Some("Q1".into()),
                    participant: Some("33611111111:2@s.whatsapp.net".into()),
                    mentioned_jid: vec!["33622222222@s.whatsapp.net".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let d = describe(&m);
        assert_eq!(d.kind, "text");
        assert_eq!(d.quoted_id.as_deref(), Some("Q1"));
        assert_eq!(
            d.quoted_sender.as_deref(),
            Some("33611111111@s.whatsapp.net")
        );
        assert_eq!(d.mentions, vec!["33622222222".to_string()]);
    }
}
