//! The body of a send request (`POST /members/{phone}/messages`,
//! `POST /groups/{jid}/messages`), checked: exactly one kind of message (text,
//! one media, location, contact, poll, vote, edit, revoke, reaction, or an event
//! invitation, a kind the bridge does not relay) with the
//! options that make
//! sense for it, or a clear error for a 400. The member turns the result into a
//! waproto `Message` (see `members.rs`), since replies and reactions need what
//! it received.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;

use crate::control::valid_phone;

/// Fields of a send body, besides the address (`from` / `to`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fields {
    text: Option<String>,
    image: Option<String>,
    video: Option<String>,
    audio: Option<String>,
    document: Option<String>,
    sticker: Option<String>,
    mime: Option<String>,
    ptt: Option<bool>,
    /// Video: a GIF (played looping, without sound).
    gif: Option<bool>,
    /// Audio: the waveform phones draw (one byte per bar, 0 to 100).
    waveform: Option<Vec<u8>>,
    seconds: Option<u32>,
    file_name: Option<String>,
    location: Option<LocationFields>,
    contact: Option<ContactFields>,
    poll: Option<PollFields>,
    view_once: Option<bool>,
    reply_to: Option<Value>,
    mentions: Option<Vec<String>>,
    edit_of: Option<String>,
    revoke: Option<String>,
    reaction: Option<ReactionFields>,
    vote: Option<VoteFields>,
    event: Option<EventFields>,
    /// Send as a modified client may (Baileys, whatsmeow scripts): without the
    /// checks an official client makes first (for now: editing someone else's
    /// message). The server never sees inside the message to check.
    modified_client: Option<bool>,
    /// Any `waE2E.Message` as proto3 JSON, sent as it is (a modified client).
    message: Option<Value>,
    /// The stanza id to send under, instead of a fresh one (any kind).
    id: Option<String>,
    /// With `message`: protobuf bytes (base64) appended to its encoding.
    extra_wire: Option<String>,
    /// With `message`: a file uploaded first; its upload fills the media
    /// fields the JSON leaves out.
    upload: Option<UploadFields>,
}

/// A file for a raw `message`, uploaded as media type `r#type`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadFields {
    r#type: String,
    data: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LocationFields {
    lat: f64,
    lon: f64,
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContactFields {
    name: String,
    vcard: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PollFields {
    question: String,
    options: Vec<String>,
}

/// An event invitation (`eventMessage`): WhatsApp's "create event" in a group.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventFields {
    name: String,
    /// When it starts (seconds since the epoch).
    start: Option<i64>,
}

/// A vote in a poll: the options picked (none: the vote is taken back).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VoteFields {
    poll: String,
    options: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReactionFields {
    to: String,
    emoji: String,
    sender: Option<String>,
}

/// A message a member is asked to send.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub body: Body,
    /// The message it replies to (`contextInfo.stanzaId` + `participant`).
    pub reply_to: Option<Target>,
    /// Phone numbers mentioned (`contextInfo.mentionedJid`); the text carries
    /// `@phone` for each.
    pub mentions: Vec<String>,
    /// The message id to send under (a fresh one when `None`).
    pub id: Option<String>,
}

/// A message referred to by id; its sender is looked up in the member's log
/// when not given (phone number or JID).
#[derive(Clone, Debug)]
pub struct Target {
    pub id: String,
    pub sender: Option<String>,
}

/// The kind of message, with what it needs.
#[derive(Clone, Debug)]
pub enum Body {
    Text(String),
    Media(MediaFile),
    Location {
        lat: f64,
        lon: f64,
        name: Option<String>,
    },
    /// A shared contact card.
    Contact {
        name: String,
        vcard: String,
    },
    /// A poll (`pollCreationMessageV3`, one choice).
    Poll {
        question: String,
        options: Vec<String>,
    },
    Edit {
        of: String,
        text: String,
        /// Sent even if `of` is not the member's (a modified client).
        forged: bool,
    },
    Revoke {
        of: String,
    },
    Reaction {
        to: Target,
        emoji: String,
    },
    /// An event invitation (`eventMessage`), starting at `start`.
    Event {
        name: String,
        start: Option<i64>,
    },
    /// A vote in poll `poll` (a message the member received or sent), sent
    /// with whatsapp-rust's `polls().vote`; no options takes the vote back.
    Vote {
        poll: String,
        options: Vec<String>,
    },
    /// Any message, as a modified client sends it: `message` in proto3 JSON,
    /// `extra_wire` appended to its encoding; `upload` is uploaded first and
    /// fills the media fields of its kind's message that `message` leaves out.
    Raw {
        message: Value,
        extra_wire: Vec<u8>,
        upload: Option<(MediaKind, Vec<u8>)>,
    },
}

/// Which media message (and media type for the upload).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaKind {
    Image,
    Video,
    Audio,
    Document,
    Sticker,
}

impl MediaKind {
    pub fn name(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Video => "video",
            MediaKind::Audio => "audio",
            MediaKind::Document => "document",
            MediaKind::Sticker => "sticker",
        }
    }
}

/// A file to upload and send; `caption` only for image, video and document.
#[derive(Clone, Debug)]
pub struct MediaFile {
    pub kind: MediaKind,
    pub data: Vec<u8>,
    pub mime: Option<String>,
    pub caption: Option<String>,
    pub ptt: bool,
    /// Video sent as a GIF (`gifPlayback`).
    pub gif: bool,
    /// Audio: its waveform.
    pub waveform: Option<Vec<u8>>,
    pub seconds: Option<u32>,
    pub file_name: Option<String>,
    /// Image or video that can be opened once only.
    pub view_once: bool,
}

impl Outgoing {
    /// A plain text.
    pub fn text(text: impl Into<String>) -> Self {
        Outgoing {
            body: Body::Text(text.into()),
            reply_to: None,
            mentions: Vec::new(),
            id: None,
        }
    }

    /// Checks a send body (a JSON object without its `from` / `to`).
    pub fn from_json(fields: Value) -> Result<Self, String> {
        let raw = fields.get("message").is_some();
        if raw
            && let Some(other) = fields.as_object().and_then(|o| {
                o.keys()
                    .find(|k| !["message", "extra_wire", "upload", "id"].contains(&k.as_str()))
            })
        {
            return Err(format!(
                "message is the whole message: {other} does not go with it \
                 (only extra_wire, upload and id)"
            ));
        }
        let f: Fields = serde_json::from_value(fields).map_err(|e| format!("{e}"))?;
        if raw {
            return raw_message(f);
        }
        if f.extra_wire.is_some() || f.upload.is_some() {
            return Err("extra_wire and upload only go with message".into());
        }
        let media_fields = [
            (MediaKind::Image, &f.image),
            (MediaKind::Video, &f.video),
            (MediaKind::Audio, &f.audio),
            (MediaKind::Document, &f.document),
            (MediaKind::Sticker, &f.sticker),
        ];
        let mut kinds: Vec<&str> = media_fields
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| k.name())
            .collect();
        for (name, set) in [
            ("location", f.location.is_some()),
            ("contact", f.contact.is_some()),
            ("poll", f.poll.is_some()),
            ("edit_of", f.edit_of.is_some()),
            ("revoke", f.revoke.is_some()),
            ("reaction", f.reaction.is_some()),
            ("vote", f.vote.is_some()),
            ("event", f.event.is_some()),
        ] {
            if set {
                kinds.push(name);
            }
        }
        if kinds.len() > 1 {
            return Err(format!(
                "one kind of message per request: got {}",
                kinds.join(" and ")
            ));
        }
        let kind = kinds.first().copied();
        let media = media_fields
            .iter()
            .find_map(|(k, v)| v.as_ref().map(|v| (*k, v.clone())));

        // Options that only make sense for one kind.
        let only = |field: &str, set: bool, allowed: &[&str]| -> Result<(), String> {
            if set && !kind.is_some_and(|k| allowed.contains(&k)) {
                return Err(format!("{field} only goes with {}", allowed.join(" or ")));
            }
            Ok(())
        };
        only(
            "mime",
            f.mime.is_some(),
            &["image", "video", "audio", "document", "sticker"],
        )?;
        only("ptt", f.ptt.is_some(), &["audio"])?;
        only("gif", f.gif.is_some(), &["video"])?;
        only("waveform", f.waveform.is_some(), &["audio"])?;
        only("seconds", f.seconds.is_some(), &["audio", "video"])?;
        only("file_name", f.file_name.is_some(), &["document"])?;
        only("view_once", f.view_once.is_some(), &["image", "video"])?;
        only("modified_client", f.modified_client.is_some(), &["edit_of"])?;
        if let Some(k @ ("revoke" | "reaction" | "vote")) = kind
            && (f.text.is_some() || f.reply_to.is_some() || f.mentions.is_some())
        {
            return Err(format!("{k} takes no text, reply_to or mentions"));
        }
        if let Some(k @ ("audio" | "sticker" | "location" | "contact" | "poll" | "event")) = kind
            && f.text.is_some()
        {
            return Err(format!("{k} takes no text (no caption)"));
        }
        if kind == Some("vote") && f.id.is_some() {
            return Err("a vote is sent by whatsapp-rust's polls().vote: no id".into());
        }
        if kind == Some("edit_of") && f.reply_to.is_some() {
            return Err("an edit takes no reply_to".into());
        }

        let reply_to = f.reply_to.as_ref().map(target_of).transpose()?;
        let mut mentions = f.mentions.unwrap_or_default();
        if let Some(bad) = mentions.iter().find(|p| !valid_phone(p)) {
            return Err(format!(
                "mentions are phone numbers (5 to 15 digits): {bad:?}"
            ));
        }
        let mut seen = std::collections::HashSet::new();
        mentions.retain(|p| seen.insert(p.clone()));
        let mut text = f.text;
        if !mentions.is_empty() {
            let Some(t) = text.as_mut() else {
                return Err("mentions need a text (or a caption)".into());
            };
            for p in &mentions {
                if !t.contains(&format!("@{p}")) {
                    if !t.is_empty() {
                        t.push(' ');
                    }
                    t.push('@');
                    t.push_str(p);
                }
            }
        }

        let body = if let Some((kind, b64)) = media {
            let data = base64::prelude::BASE64_STANDARD
                .decode(b64.trim())
                .map_err(|e| format!("{} is not base64: {e}", kind.name()))?;
            if data.is_empty() {
                return Err(format!("{} is empty", kind.name()));
            }
            if let Some(m) = &f.mime
                && !m.contains('/')
            {
                return Err(format!("mime {m:?} is not a MIME type"));
            }
            Body::Media(MediaFile {
                kind,
                data,
                mime: f.mime,
                caption: text,
                ptt: f.ptt.unwrap_or(false),
                gif: f.gif.unwrap_or(false),
                waveform: f.waveform,
                seconds: f.seconds,
                file_name: f.file_name,
                view_once: f.view_once.unwrap_or(false),
            })
        } else if let Some(c) = f.contact {
            Body::Contact {
                name: c.name,
                vcard: c.vcard,
            }
        } else if let Some(p) = f.poll {
            if p.options.len() < 2 {
                return Err("a poll needs at least two options".into());
            }
            Body::Poll {
                question: p.question,
                options: p.options,
            }
        } else if let Some(l) = f.location {
            if !(-90.0..=90.0).contains(&l.lat) || !(-180.0..=180.0).contains(&l.lon) {
                return Err(format!(
                    "location out of range: lat {} lon {} (-90..90, -180..180)",
                    l.lat, l.lon
                ));
            }
            Body::Location {
                lat: l.lat,
                lon: l.lon,
                name: l.name,
            }
        } else if let Some(e) = f.event {
            Body::Event {
                name: e.name,
                start: e.start,
            }
        } else if let Some(of) = f.edit_of {
            let text = text.ok_or("edit_of needs the new text")?;
            Body::Edit {
                of: non_empty_id("edit_of", of)?,
                text,
                forged: f.modified_client.unwrap_or(false),
            }
        } else if let Some(of) = f.revoke {
            Body::Revoke {
                of: non_empty_id("revoke", of)?,
            }
        } else if let Some(v) = f.vote {
            Body::Vote {
                poll: non_empty_id("vote.poll", v.poll)?,
                options: v.options,
            }
        } else if let Some(r) = f.reaction {
            Body::Reaction {
                to: Target {
                    id: non_empty_id("reaction.to", r.to)?,
                    sender: r.sender,
                },
                emoji: r.emoji,
            }
        } else {
            Body::Text(text.ok_or(
                "need text, a media (image, video, audio, document, sticker), location, \
                 contact, poll, event, vote, edit_of, revoke or reaction",
            )?)
        };
        Ok(Outgoing {
            body,
            reply_to,
            mentions,
            id: f.id.map(|id| non_empty_id("id", id)).transpose()?,
        })
    }
}

/// A raw `message`: nothing else but its `extra_wire` and `upload`.
fn raw_message(f: Fields) -> Result<Outgoing, String> {
    let Fields {
        message: Some(message),
        extra_wire,
        upload,
        id,
        ..
    } = f
    else {
        unreachable!("called for a body with a message");
    };
    let extra_wire = match extra_wire {
        Some(b64) => base64::prelude::BASE64_STANDARD
            .decode(b64.trim())
            .map_err(|e| format!("extra_wire is not base64: {e}"))?,
        None => Vec::new(),
    };
    let upload = upload
        .map(|u| {
            let kind = [
                MediaKind::Image,
                MediaKind::Video,
                MediaKind::Audio,
                MediaKind::Document,
                MediaKind::Sticker,
            ]
            .into_iter()
            .find(|k| k.name() == u.r#type)
            .ok_or_else(|| {
                format!(
                    "upload.type is one of image, video, audio, document, sticker: {:?}",
                    u.r#type
                )
            })?;
            let data = base64::prelude::BASE64_STANDARD
                .decode(u.data.trim())
                .map_err(|e| format!("upload.data is not base64: {e}"))?;
            Ok::<_, String>((kind, data))
        })
        .transpose()?;
    // Checked now, so that a malformed message is a 400 before any upload.
    crate::raw::message(&message, &extra_wire)?;
    Ok(Outgoing {
        body: Body::Raw {
            message,
            extra_wire,
            upload,
        },
        reply_to: None,
        mentions: Vec::new(),
        id: id.map(|id| non_empty_id("id", id)).transpose()?,
    })
}

fn non_empty_id(field: &str, id: String) -> Result<String, String> {
    if id.trim().is_empty() {
        return Err(format!("{field} must be a message id"));
    }
    Ok(id)
}

/// `"ID"` or `{"id": "ID", "sender": "336..."}`.
fn target_of(v: &Value) -> Result<Target, String> {
    const SHAPE: &str = r#"reply_to must be a message id or {"id": "...", "sender": "..."}"#;
    match v {
        Value::String(id) => Ok(Target {
            id: non_empty_id("reply_to", id.clone())?,
            sender: None,
        }),
        Value::Object(o) => {
            if o.keys().any(|k| k != "id" && k != "sender") {
                return Err(SHAPE.into());
            }
            let id = o.get("id").and_then(Value::as_str).ok_or(SHAPE)?;
            let sender = match o.get("sender") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return Err(SHAPE.into()),
            };
            Ok(Target {
                id: non_empty_id("reply_to.id", id.to_string())?,
                sender,
            })
        }
        _ => Err(SHAPE.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> String {
        Outgoing::from_json(v).unwrap_err()
    }

    #[test]
    fn contradictions_are_refused() {
        assert!(err(json!({"image": "AA==", "video": "AA=="})).contains("image and video"));
        assert!(err(json!({"revoke": "X", "text": "t"})).contains("revoke takes no"));
        assert!(
            err(json!({"reaction": {"to": "X", "emoji": "x"}, "edit_of": "Y"}))
                .contains("edit_of and reaction")
        );
        assert!(err(json!({"audio": "AA==", "text": "t"})).contains("no caption"));
        assert!(err(json!({"text": "t", "ptt": true})).contains("ptt only goes with audio"));
        assert!(err(json!({"edit_of": "X"})).contains("new text"));
        assert!(err(json!({"text": "t", "mentions": ["+33"]})).contains("phone numbers"));
        assert!(err(json!({"text": "t", "reply_to": 3})).contains("reply_to must be"));
        assert!(err(json!({"txt": "t"})).contains("unknown field"));
        assert!(err(json!({"location": {"lat": 91, "lon": 0}})).contains("out of range"));
        assert!(err(json!({})).contains("need text"));
        assert!(
            err(json!({"message": {"conversation": "x"}, "text": "t"}))
                .contains("text does not go with it")
        );
        assert!(err(json!({"message": {"conversashun": "x"}})).contains("proto3 JSON"));
        assert!(
            err(json!({"text": "t", "upload": {"type": "image", "data": ""}}))
                .contains("only go with message")
        );
        assert!(
            err(json!({"message": {}, "upload": {"type": "gif", "data": ""}}))
                .contains("upload.type")
        );
        assert!(
            err(json!({"vote": {"poll": "P", "options": []}, "text": "t"}))
                .contains("vote takes no")
        );
    }

    #[test]
    fn mentions_are_written_in_the_text() {
        let o = Outgoing::from_json(
            json!({"text": "salut @33622222222", "mentions": ["33622222222", "33633333333"]}),
        )
        .unwrap();
        match o.body {
            Body::Text(t) => assert_eq!(t, "salut @33622222222 @33633333333"),
            b => panic!("{b:?}"),
        }
    }
}
