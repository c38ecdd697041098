//! Simulated members: phone numbers whose device is a real whatsapp-rust client
//! run inside the simulator (linked by QR like any device), with a log of what
//! each one received and decrypted, and a way to make it send.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use sha2::Digest as _;
use tokio::sync::mpsc;
use waproto::buffa::MessageField;
use waproto::whatsapp as wa;
use waproto::whatsapp::message::protocol_message::Type as ProtocolType;
use whatsapp_rust::bot::{Bot, BotHandle};
use whatsapp_rust::download::MediaType;
use whatsapp_rust::media;
use whatsapp_rust::prelude::{MessageBuilderExt, MessageExt};
use whatsapp_rust::send::SendOptions;
use whatsapp_rust::transport::TokioWebSocketTransportFactory;
use whatsapp_rust::types::events::Event;
use whatsapp_rust::upload::UploadOptions;
use whatsapp_rust::wacore::store::InMemoryBackend;
use whatsapp_rust::wacore::types::message::EditAttribute;
use whatsapp_rust::{Client, Jid};

use crate::compose::{Body, MediaFile, MediaKind, Outgoing, Target};
use crate::pairing::{Linked, ScanError};
use crate::readback::{self, Described};
use crate::state::World;

/// Version the member clients announce (fixed: nothing is fetched from WhatsApp).
pub const CLIENT_VERSION: (u32, u32, u32) = (2, 3000, 1_000_000_000);
const QR_TIMEOUT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(45);

/// One message a member's client received and decrypted (or sent through the
/// control API: `from_me`). Fields that do not apply are `None` (JSON `null`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Received {
    pub id: String,
    /// Chat JID: the other user (direct) or the group.
    pub chat: String,
    /// Sender JID without device (user part is the phone number, or a LID).
    pub sender: String,
    pub from_me: bool,
    /// `text`, `image`, `video`, `audio`, `ptt`, `document`, `sticker`,
    /// `location`, `poll`, `poll_vote`, `reaction`, `edit`, `revoke` or `other`.
    pub kind: String,
    /// Text, caption of a media message, or the new text of an edit.
    pub text: Option<String>,
    pub timestamp: i64,
    /// Media: MIME type, and hex SHA-256 of the file the member downloaded and
    /// decrypted (`None` until the download finished, or if it failed).
    pub mime: Option<String>,
    pub media_sha256: Option<String>,
    /// Reply: id and sender JID (without device) of the quoted message.
    pub quoted_id: Option<String>,
    pub quoted_sender: Option<String>,
    /// The text a reply carries of the message it quotes (`""`: an empty one).
    pub quoted_text: Option<String>,
    /// Mentioned users (phone numbers in PN chats).
    pub mentions: Vec<String>,
    /// Disappearing-message timer set on the message (seconds).
    pub expiration: Option<u32>,
    /// Edit: id of the edited message (`text` is the new text).
    pub edit_of: Option<String>,
    /// The stanza's `edit` attribute when set: `1` edit, `7` sender revoke
    /// (or reaction removal), `8` admin revoke.
    pub edit_attr: Option<String>,
    /// Revoke (delete for everyone): id of the deleted message.
    pub revoke_of: Option<String>,
    /// Reaction: id of the message reacted to, and the emoji (`""` = removed).
    pub reaction_to: Option<String>,
    pub emoji: Option<String>,
    /// Document file name.
    pub file_name: Option<String>,
    /// Audio: voice note or not.
    pub ptt: Option<bool>,
    /// Video: sent as a GIF (`gifPlayback`).
    pub gif: Option<bool>,
    /// Audio: its waveform (one byte per bar, 0 to 100).
    pub waveform: Option<Vec<u8>>,
    /// Audio or video duration.
    pub seconds: Option<u32>,
    /// Location.
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub name: Option<String>,
    /// Poll: its options (`text` is the question) and how many one may pick.
    pub options: Vec<String>,
    pub selectable: Option<u32>,
}

impl Received {
    fn new(
        id: String,
        chat: String,
        sender: String,
        from_me: bool,
        timestamp: i64,
        d: &Described,
    ) -> Self {
        Received {
            id,
            chat,
            sender,
            from_me,
            kind: d.kind.to_string(),
            text: d.text.clone(),
            timestamp,
            mime: d.mime.clone(),
            media_sha256: None,
            quoted_id: d.quoted_id.clone(),
            quoted_sender: d.quoted_sender.clone(),
            quoted_text: d.quoted_text.clone(),
            mentions: d.mentions.clone(),
            expiration: d.expiration,
            edit_of: d.edit_of.clone(),
            edit_attr: None,
            revoke_of: d.revoke_of.clone(),
            reaction_to: d.reaction_to.clone(),
            emoji: d.emoji.clone(),
            file_name: d.file_name.clone(),
            ptt: d.ptt,
            gif: d.gif,
            waveform: d.waveform.clone(),
            seconds: d.seconds,
            lat: d.lat,
            lon: d.lon,
            name: d.name.clone(),
            options: d.options.clone(),
            selectable: d.selectable,
        }
    }
}

/// A member's log: entries in order, and the decrypted messages by id (to
/// quote them in replies).
#[derive(Default)]
struct Log {
    entries: Vec<Received>,
    messages: HashMap<String, Arc<wa::Message>>,
}

type SharedLog = Arc<Mutex<Log>>;

/// A log entry and the message it was read from.
type Logged = (Received, Option<Arc<wa::Message>>);

fn lock(log: &SharedLog) -> std::sync::MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether `message` is the primary phone's app-state sync key share.
fn is_key_share(message: &wa::Message) -> bool {
    message
        .protocol_message
        .as_option()
        .is_some_and(|p| p.app_state_sync_key_share.is_set())
}

/// Adds a message to the log; media is downloaded and hashed in the background
/// unless its hash is already known (messages the member sent itself).
#[allow(clippy::too_many_arguments)]
fn record(
    log: &SharedLog,
    client: &Arc<Client>,
    id: String,
    chat: String,
    sender: String,
    from_me: bool,
    timestamp: i64,
    message: Arc<wa::Message>,
    edit_attr: &EditAttribute,
    media_sha256: Option<String>,
) {
    let d = readback::describe(&message);
    let mut entry = Received::new(id.clone(), chat, sender, from_me, timestamp, &d);
    entry.media_sha256 = media_sha256.clone();
    entry.edit_attr = Some(edit_attr.to_string_val().to_string()).filter(|a| !a.is_empty());
    {
        let mut l = lock(log);
        l.entries.push(entry);
        l.messages.insert(id.clone(), message);
    }
    let Some(media) = d.media.filter(|_| media_sha256.is_none()) else {
        return;
    };
    let client = client.clone();
    let log = log.clone();
    tokio::spawn(async move {
        match client.download(media.downloadable()).await {
            Ok(bytes) => {
                let digest = hex(&sha2::Sha256::digest(&bytes));
                let mut l = lock(&log);
                if let Some(e) = l.entries.iter_mut().rev().find(|e| e.id == id) {
                    e.media_sha256 = Some(digest);
                }
            }
            Err(e) => log::warn!("member could not download media {id}: {e:#}"),
        }
    });
}

/// Why a member did not send.
#[derive(Debug)]
pub enum SendFailure {
    /// The request does not fit what the member knows (400).
    BadRequest(String),
    /// The client failed (502).
    Failed(String),
}

impl std::fmt::Display for SendFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendFailure::BadRequest(e) | SendFailure::Failed(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for SendFailure {}

/// A notable non-message event a member's client reported (group changes).
#[derive(Clone, Debug, serde::Serialize)]
pub struct MemberEvent {
    /// `group_update`
    pub kind: String,
    pub chat: String,
    /// Who made the change, when known.
    pub actor: Option<String>,
    /// The action's name (`add`, `remove`, `subject`, `description`, ...).
    pub action: String,
    /// whatsapp-rust's debug rendering of the action (participants, texts).
    pub detail: String,
}

/// A running member.
pub struct Member {
    pub phone: String,
    pub name: String,
    pub linked: Linked,
    client: Arc<Client>,
    handle: BotHandle,
    log: SharedLog,
    events: Arc<Mutex<Vec<MemberEvent>>>,
}

impl Member {
    /// Group changes the member's client was told about, in order.
    pub fn events(&self) -> Vec<MemberEvent> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What the member received (and sent through the control API), optionally
    /// only in `chat` (compared on the user part too, so `336...@s.whatsapp.net`
    /// matches either addressing).
    pub fn received(&self, chat: Option<&str>) -> Vec<Received> {
        lock(&self.log)
            .entries
            .iter()
            .filter(|r| chat.is_none_or(|c| same_chat(&r.chat, c)))
            .cloned()
            .collect()
    }

    /// Uploads `data` and sends it as an image (with an optional caption).
    pub async fn send_image(
        &self,
        to: &str,
        data: Vec<u8>,
        mime: Option<String>,
        caption: Option<String>,
    ) -> Result<String> {
        let out = Outgoing {
            body: Body::Media(MediaFile {
                kind: MediaKind::Image,
                data,
                mime,
                caption,
                ptt: false,
                gif: false,
                waveform: None,
                seconds: None,
                file_name: None,
                view_once: false,
            }),
            reply_to: None,
            mentions: Vec::new(),
            id: None,
        };
        Ok(self.send(to, out).await?)
    }

    /// Sends a text from this member's client to `to` (phone number or JID).
    pub async fn send_text(&self, to: &str, text: &str) -> Result<String> {
        Ok(self.send(to, Outgoing::text(text)).await?)
    }

    /// Builds the waproto message for `out` (uploading media first), sends it
    /// to `to` (phone number or JID) and logs it as `from_me`; returns its id.
    pub async fn send(&self, to: &str, out: Outgoing) -> Result<String, SendFailure> {
        let chat = to_jid(to).map_err(|e| SendFailure::BadRequest(format!("{e:#}")))?;
        let chat_str = chat.to_string();
        let group = chat_str.ends_with("@g.us");
        let me = self.own_jid();
        let context = self.context(&chat_str, out.reply_to.as_ref(), &out.mentions)?;
        let mut media_sha256 = None;
        let message = match out.body {
            Body::Text(text) => text_message(text, context),
            Body::Media(m) => {
                media_sha256 = Some(hex(&sha2::Sha256::digest(&m.data)));
                self.media_message(m, context).await?
            }
            Body::Location { lat, lon, name } => wa::Message {
                location_message: MessageField::some(wa::message::LocationMessage {
                    degrees_latitude: Some(lat),
                    degrees_longitude: Some(lon),
                    name,
                    context_info: context.map(MessageField::some).unwrap_or_default(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Body::Event { name, start } => wa::Message {
                event_message: MessageField::some(wa::message::EventMessage {
                    name: Some(name),
                    start_time: start,
                    context_info: context.map(MessageField::some).unwrap_or_default(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Body::Contact { name, vcard } => wa::Message {
                contact_message: MessageField::some(wa::message::ContactMessage {
                    display_name: Some(name),
                    vcard: Some(vcard),
                    context_info: context.map(MessageField::some).unwrap_or_default(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Body::Poll { question, options } => wa::Message {
                // whatsapp-rust's `polls().create` shape: the poll's secret rides
                // in messageContextInfo; voters derive their vote keys from it.
                message_context_info: MessageField::some(wa::MessageContextInfo {
                    message_secret: Some(poll_secret()),
                    ..Default::default()
                }),
                poll_creation_message_v3: MessageField::some(wa::message::PollCreationMessage {
                    name: Some(question),
                    options: options
                        .into_iter()
                        .map(|option| wa::message::poll_creation_message::Option {
                            option_name: Some(option),
                            ..Default::default()
                        })
                        .collect(),
                    selectable_options_count: Some(1),
                    context_info: context.map(MessageField::some).unwrap_or_default(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Body::Edit { of, text, forged } => {
                if !forged
                    && let Some(t) = self.lookup(&of, &chat_str)?
                    && !t.0.from_me
                {
                    return Err(SendFailure::BadRequest(format!(
                        "edit_of: message {of} was sent by {}, not by this member",
                        t.0.sender
                    )));
                }
                // whatsapp-rust's `Client::edit_message` shape (WA Web's): a
                // top-level protocolMessage MESSAGE_EDIT keyed on the original,
                // `participant` = the editor in groups; the send path sets the
                // stanza's `edit="1"` from it.
                wa::Message {
                    protocol_message: MessageField::some(wa::message::ProtocolMessage {
                        key: MessageField::some(wa::MessageKey {
                            remote_jid: Some(chat_str.clone()),
                            from_me: Some(true),
                            id: Some(of),
                            participant: group.then(|| me.clone()),
                        }),
                        r#type: Some(ProtocolType::MESSAGE_EDIT),
                        edited_message: MessageField::some(text_message(text, context)),
                        timestamp_ms: Some(now_ms()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            }
            Body::Revoke { of } => {
                // whatsapp-rust's `Client::revoke_message` shapes: the sender's
                // own (from_me, no participant) or, in groups, an admin's
                // (from_me false, participant = the author).
                let key = match self.lookup(&of, &chat_str)? {
                    Some((t, _)) if !t.from_me => {
                        if !group {
                            return Err(SendFailure::BadRequest(format!(
                                "revoke: message {of} is not this member's and a \
                                 direct chat has no admin"
                            )));
                        }
                        wa::MessageKey {
                            remote_jid: Some(chat_str.clone()),
                            from_me: Some(false),
                            id: Some(of),
                            participant: Some(t.sender),
                        }
                    }
                    _ => wa::MessageKey {
                        remote_jid: Some(chat_str.clone()),
                        from_me: Some(true),
                        id: Some(of),
                        participant: None,
                    },
                };
                wa::Message {
                    protocol_message: MessageField::some(wa::message::ProtocolMessage {
                        key: MessageField::some(key),
                        r#type: Some(ProtocolType::REVOKE),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            }
            Body::Reaction { to, emoji } => {
                let (sender, from_me, _) = self.resolve(&to, &chat_str, "reaction")?;
                // `MessageContext::message_key`'s shape: participant = the
                // target's author in groups.
                let key = wa::MessageKey {
                    remote_jid: Some(chat_str.clone()),
                    from_me: Some(from_me),
                    id: Some(to.id.clone()),
                    participant: group.then_some(sender),
                };
                whatsapp_rust::wacore::proto_helpers::build_reaction_message(key, emoji, now_ms())
            }
            Body::Vote { poll, options } => {
                return self.vote(chat, &chat_str, &poll, options).await;
            }
            Body::Raw {
                mut message,
                extra_wire,
                upload,
            } => {
                if let Some((kind, data)) = upload {
                    media_sha256 = Some(hex(&sha2::Sha256::digest(&data)));
                    self.fill_upload(&mut message, kind, data).await?;
                }
                crate::raw::message(&message, &extra_wire).map_err(SendFailure::BadRequest)?
            }
        };
        let options = match out.id {
            Some(id) => SendOptions::default().with_message_id(id),
            None => SendOptions::default(),
        };
        let sent = self
            .client
            .send_message_with_options(chat, message.clone(), options)
            .await
            .map_err(|e| SendFailure::Failed(format!("send failed: {e}")))?;
        let id = sent.message_id.to_string();
        // What whatsapp-rust's send path put on the stanza.
        let edit_attr = EditAttribute::infer_from_message(&message).unwrap_or_default();
        record(
            &self.log,
            &self.client,
            id.clone(),
            chat_str,
            me,
            true,
            now_ms() / 1000,
            Arc::new(message),
            &edit_attr,
            media_sha256,
        );
        Ok(id)
    }

    /// Votes in poll `poll` with whatsapp-rust's own `polls().vote` (the
    /// choice encrypted with the poll's secret, as phones do) and logs the vote
    /// by the poll it answers (the log keeps no ciphertext: nobody reads it back).
    async fn vote(
        &self,
        chat: Jid,
        chat_str: &str,
        poll: &str,
        options: Vec<String>,
    ) -> Result<String, SendFailure> {
        let bad = |e: String| SendFailure::BadRequest(format!("vote: {e}"));
        let Some((entry, Some(message))) = self.lookup(poll, chat_str)? else {
            return Err(bad(format!("this member has no message {poll}")));
        };
        let base = readback::unwrap(&message);
        let creation = [
            &base.poll_creation_message,
            &base.poll_creation_message_v2,
            &base.poll_creation_message_v3,
        ]
        .into_iter()
        .find_map(|p| p.as_option())
        .ok_or_else(|| bad(format!("message {poll} is not a poll")))?;
        if let Some(unknown) = options.iter().find(|o| {
            !creation
                .options
                .iter()
                .any(|c| c.option_name.as_deref() == Some(o.as_str()))
        }) {
            return Err(bad(format!("poll {poll} has no option {unknown:?}")));
        }
        let secret = [&message.message_context_info, &base.message_context_info]
            .into_iter()
            .find_map(|c| c.as_option().and_then(|c| c.message_secret.clone()))
            .ok_or_else(|| bad(format!("poll {poll} carries no message secret")))?;
        let creator: Jid = entry
            .sender
            .parse()
            .map_err(|e| bad(format!("poll sender {}: {e}", entry.sender)))?;
        let sent = self
            .client
            .polls()
            .vote(chat, poll, &creator, &secret, &options)
            .await
            .map_err(|e| SendFailure::Failed(format!("vote failed: {e}")))?;
        let id = sent.message_id.to_string();
        let logged = wa::Message {
            poll_update_message: MessageField::some(wa::message::PollUpdateMessage {
                poll_creation_message_key: MessageField::some(wa::MessageKey {
                    remote_jid: Some(chat_str.to_owned()),
                    id: Some(poll.to_owned()),
                    participant: Some(entry.sender.clone()),
                    from_me: Some(entry.from_me),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        record(
            &self.log,
            &self.client,
            id.clone(),
            chat_str.to_owned(),
            self.own_jid(),
            true,
            now_ms() / 1000,
            Arc::new(logged),
            &EditAttribute::default(),
            None,
        );
        Ok(id)
    }

    fn own_jid(&self) -> String {
        format!("{}@s.whatsapp.net", self.phone)
    }

    /// The logged message `id` (and its content), checked to be in `chat`.
    fn lookup(&self, id: &str, chat: &str) -> Result<Option<Logged>, SendFailure> {
        let l = lock(&self.log);
        let Some(entry) = l.entries.iter().rev().find(|e| e.id == id) else {
            return Ok(None);
        };
        if !same_chat(&entry.chat, chat) {
            return Err(SendFailure::BadRequest(format!(
                "message {id} is in chat {}, not {chat}",
                entry.chat
            )));
        }
        Ok(Some((entry.clone(), l.messages.get(id).cloned())))
    }

    /// Sender JID, from-me flag and content of a target message: from the log,
    /// or from the request's `sender` for a message the member never saw.
    fn resolve(
        &self,
        target: &Target,
        chat: &str,
        field: &str,
    ) -> Result<(String, bool, Option<Arc<wa::Message>>), SendFailure> {
        let given = match &target.sender {
            Some(s) if crate::control::valid_phone(s) => Some(format!("{s}@s.whatsapp.net")),
            Some(s) if s.contains('@') => Some(readback::without_device(s)),
            Some(s) => {
                return Err(SendFailure::BadRequest(format!(
                    "{field}: sender {s:?} is neither a phone number nor a JID"
                )));
            }
            None => None,
        };
        match (self.lookup(&target.id, chat)?, given) {
            (Some((entry, message)), given) => {
                let sender = given.unwrap_or(entry.sender);
                Ok((sender, entry.from_me, message))
            }
            (None, Some(sender)) => {
                let from_me = sender == self.own_jid();
                Ok((sender, from_me, None))
            }
            (None, None) => Err(SendFailure::BadRequest(format!(
                "{field}: this member has no message {}; give its sender",
                target.id
            ))),
        }
    }

    /// `contextInfo` for a reply and/or mentions.
    fn context(
        &self,
        chat: &str,
        reply_to: Option<&Target>,
        mentions: &[String],
    ) -> Result<Option<wa::ContextInfo>, SendFailure> {
        if reply_to.is_none() && mentions.is_empty() {
            return Ok(None);
        }
        let mut ctx = wa::ContextInfo {
            mentioned_jid: mentions
                .iter()
                .map(|p| format!("{p}@s.whatsapp.net"))
                .collect(),
            ..Default::default()
        };
        if let Some(target) = reply_to {
            let (sender, _, quoted) = self.resolve(target, chat, "reply_to")?;
            ctx.stanza_id = Some(target.id.clone());
            ctx.participant = Some(sender);
            if let Some(q) = quoted {
                ctx.quoted_message = MessageField::some(*readback::unwrap(&q).prepare_for_quote());
            }
        }
        Ok(Some(ctx))
    }

    /// Uploads the file (encrypted, to the simulator's media store) and builds
    /// the message with whatsapp-rust's media builders (sticker by hand).
    /// Uploads `data` and writes what the upload gives (URL, path, keys,
    /// hashes, length) into `message`'s media message of `kind`, for the fields
    /// it does not set itself (a forged key or length stays as given).
    async fn fill_upload(
        &self,
        message: &mut serde_json::Value,
        kind: MediaKind,
        data: Vec<u8>,
    ) -> Result<(), SendFailure> {
        use base64::Engine as _;
        let upload = self
            .client
            .upload(data, media_type_of(kind), UploadOptions::default())
            .await
            .map_err(|e| SendFailure::Failed(format!("uploading the {}: {e:#}", kind.name())))?;
        let b64 = |bytes: &[u8]| base64::prelude::BASE64_STANDARD.encode(bytes);
        let field = format!("{}Message", kind.name());
        let Some(media) = message
            .as_object_mut()
            .map(|m| {
                m.entry(field.clone())
                    .or_insert_with(|| serde_json::json!({}))
            })
            .and_then(serde_json::Value::as_object_mut)
        else {
            return Err(SendFailure::BadRequest(format!(
                "message.{field} must be an object to take the upload"
            )));
        };
        for (name, value) in [
            ("url", serde_json::Value::from(upload.url)),
            ("directPath", upload.direct_path.into()),
            ("mediaKey", b64(&upload.media_key).into()),
            ("fileSha256", b64(&upload.file_sha256).into()),
            ("fileEncSha256", b64(&upload.file_enc_sha256).into()),
            ("fileLength", upload.file_length.to_string().into()),
            (
                "mediaKeyTimestamp",
                upload.media_key_timestamp.to_string().into(),
            ),
        ] {
            media.entry(name).or_insert(value);
        }
        Ok(())
    }

    async fn media_message(
        &self,
        m: MediaFile,
        context: Option<wa::ContextInfo>,
    ) -> Result<wa::Message, SendFailure> {
        let upload = self
            .client
            .upload(m.data, media_type_of(m.kind), UploadOptions::default())
            .await
            .map_err(|e| SendFailure::Failed(format!("uploading the {}: {e:#}", m.kind.name())))?;
        let context_info = context.map(Box::new);
        Ok(match m.kind {
            MediaKind::Image => {
                let mut message = media::image_message(
                    upload,
                    media::ImageOptions {
                        caption: m.caption,
                        mimetype: m.mime,
                        context_info,
                        ..Default::default()
                    },
                );
                if m.view_once
                    && let Some(image) = message.image_message.as_option_mut()
                {
                    image.view_once = Some(true);
                }
                message
            }
            MediaKind::Video => {
                let mut message = media::video_message(
                    upload,
                    media::VideoOptions {
                        caption: m.caption,
                        mimetype: m.mime,
                        duration_seconds: m.seconds,
                        context_info,
                        ..Default::default()
                    },
                );
                if let Some(video) = message.video_message.as_option_mut() {
                    if m.view_once {
                        video.view_once = Some(true);
                    }
                    if m.gif {
                        video.gif_playback = Some(true);
                    }
                }
                message
            }
            MediaKind::Audio => media::audio_message(
                upload,
                media::AudioOptions {
                    mimetype: m.mime,
                    duration_seconds: m.seconds,
                    ptt: Some(m.ptt),
                    waveform: m.waveform,
                    context_info,
                },
            ),
            MediaKind::Document => media::document_message(
                upload,
                media::DocumentOptions {
                    mimetype: m.mime,
                    file_name: m.file_name,
                    caption: m.caption,
                    context_info,
                    ..Default::default()
                },
            ),
            MediaKind::Sticker => wa::Message {
                sticker_message: MessageField::some(wa::message::StickerMessage {
                    url: Some(upload.url),
                    direct_path: Some(upload.direct_path),
                    media_key: Some(upload.media_key.to_vec()),
                    file_sha256: Some(upload.file_sha256.to_vec()),
                    file_enc_sha256: Some(upload.file_enc_sha256.to_vec()),
                    file_length: Some(upload.file_length),
                    media_key_timestamp: Some(upload.media_key_timestamp),
                    mimetype: Some(m.mime.unwrap_or_else(|| "image/webp".into())),
                    context_info: context_info
                        .map(|c| MessageField::some(*c))
                        .unwrap_or_default(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        })
    }
}

fn media_type_of(kind: MediaKind) -> MediaType {
    match kind {
        MediaKind::Image => MediaType::Image,
        MediaKind::Video => MediaType::Video,
        MediaKind::Audio => MediaType::Audio,
        MediaKind::Document => MediaType::Document,
        MediaKind::Sticker => MediaType::Sticker,
    }
}

/// `conversation`, or `extendedTextMessage` when there is a `contextInfo`.
fn text_message(text: String, context: Option<wa::ContextInfo>) -> wa::Message {
    match context {
        None => wa::Message::text(text),
        Some(c) => wa::Message::text_with_context(text, c),
    }
}

/// A fresh 32-byte poll secret (what `polls().create` draws).
fn poll_secret() -> Vec<u8> {
    use rand::Rng as _;
    let mut secret = vec![0u8; 32];
    rand::make_rng::<rand::rngs::StdRng>().fill_bytes(&mut secret);
    secret
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn same_chat(a: &str, b: &str) -> bool {
    a == b || a.split('@').next() == b.split('@').next()
}

/// `33611111111`, `33611111111@s.whatsapp.net` or `...@g.us` as a JID.
pub fn to_jid(to: &str) -> Result<Jid> {
    let full = if to.contains('@') {
        to.to_string()
    } else {
        format!("{to}@s.whatsapp.net")
    };
    full.parse::<Jid>()
        .map_err(|e| anyhow!("bad JID {full:?}: {e}"))
}

/// Why a member could not be created.
#[derive(Debug)]
pub enum MemberError {
    Exists,
    Failed(String),
}

impl std::fmt::Display for MemberError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemberError::Exists => write!(f, "member already exists"),
            MemberError::Failed(e) => write!(f, "member did not come up: {e}"),
        }
    }
}

impl std::error::Error for MemberError {}

/// All members of one simulator.
#[derive(Default)]
pub struct Members {
    by_phone: Mutex<HashMap<String, Arc<Member>>>,
    /// Phones being created, to refuse a concurrent duplicate.
    pending: Mutex<Vec<String>>,
}

impl Members {
    pub fn get(&self, phone: &str) -> Option<Arc<Member>> {
        self.by_phone
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(phone)
            .cloned()
    }

    /// Starts a whatsapp-rust client for `phone`, links it by QR and waits until
    /// it is `Connected` (about 0.1 s: the phone shares its app-state key).
    pub async fn create(
        &self,
        world: &Arc<World>,
        ws_url: &str,
        addr: std::net::SocketAddr,
        phone: &str,
        name: &str,
    ) -> Result<Arc<Member>, MemberError> {
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if self.get(phone).is_some() || pending.iter().any(|p| p == phone) {
                return Err(MemberError::Exists);
            }
            pending.push(phone.to_string());
        }
        let result = start_member(world, ws_url, addr, phone, name).await;
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|p| p != phone);
        let member = Arc::new(result.map_err(|e| MemberError::Failed(format!("{e:#}")))?);
        self.by_phone
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(phone.to_string(), member.clone());
        Ok(member)
    }

    /// Stops every member client at once (the simulator is going away).
    pub fn abort_all(&self) {
        for m in self
            .by_phone
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            m.handle.abort();
        }
    }
}

enum Lifecycle {
    Qr(String),
    Connected,
}

async fn start_member(
    world: &Arc<World>,
    ws_url: &str,
    world_addr: std::net::SocketAddr,
    phone: &str,
    name: &str,
) -> Result<Member> {
    let shared_log: SharedLog = Arc::default();
    let (tx, mut rx) = mpsc::unbounded_channel::<Lifecycle>();
    let log = shared_log.clone();
    let events: Arc<Mutex<Vec<MemberEvent>>> = Arc::default();
    let event_log = events.clone();
    let bot = Bot::builder()
        .with_backend(InMemoryBackend::new())
        .with_transport_factory(TokioWebSocketTransportFactory::new().with_url(ws_url))
        .with_http_client(crate::media::SimHttpClient { addr: world_addr })
        .with_version(CLIENT_VERSION)
        .with_push_name(name)
        .skip_history_sync()
        .on_event(move |event, client| {
            match &*event {
                Event::PairingQrCode(q) => {
                    let _ = tx.send(Lifecycle::Qr(q.code.clone()));
                }
                Event::Connected(_) => {
                    let _ = tx.send(Lifecycle::Connected);
                }
                Event::Messages(batch) => {
                    // The phone's app-state key share is no message anyone wrote.
                    for m in batch.messages.iter().filter(|m| !is_key_share(&m.message)) {
                        record(
                            &log,
                            &client,
                            m.info.id.to_string(),
                            m.info.source.chat.to_string(),
                            m.info.source.sender.to_non_ad().to_string(),
                            m.info.source.is_from_me,
                            m.info.timestamp.timestamp(),
                            m.message.clone(),
                            &m.info.edit,
                            None,
                        );
                    }
                }
                Event::GroupUpdate(u) => {
                    let detail = format!("{:?}", u.action);
                    let action = detail
                        .split([' ', '{', '('])
                        .next()
                        .unwrap_or_default()
                        .to_lowercase();
                    event_log
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(MemberEvent {
                            kind: "group_update".into(),
                            chat: u.group_jid.to_string(),
                            actor: u.participant.as_ref().map(|j| j.to_string()),
                            action,
                            detail,
                        });
                }
                _ => {}
            }
            async {}
        })
        .build()
        .await
        .context("building the member's client")?;
    let handle = bot.spawn();
    let client = handle.client();

    let qr = loop {
        match tokio::time::timeout(QR_TIMEOUT, rx.recv()).await {
            Ok(Some(Lifecycle::Qr(qr))) => break qr,
            Ok(Some(Lifecycle::Connected)) => continue,
            Ok(None) | Err(_) => {
                handle.abort();
                return Err(anyhow!("the client showed no QR code"));
            }
        }
    };
    let linked = match crate::pairing::scan(world, phone, &qr).await {
        Ok(l) => l,
        Err(e @ (ScanError::InvalidQr(_) | ScanError::UnknownRef | ScanError::Failed(_))) => {
            handle.abort();
            return Err(anyhow!("{e}"));
        }
    };
    loop {
        match tokio::time::timeout(CONNECT_TIMEOUT, rx.recv()).await {
            Ok(Some(Lifecycle::Connected)) => break,
            Ok(Some(Lifecycle::Qr(_))) => continue,
            Ok(None) | Err(_) => {
                handle.abort();
                return Err(anyhow!("the client did not reach Connected"));
            }
        }
    }
    log::info!("member {phone} ({name}) is up as {}", linked.jid);
    Ok(Member {
        phone: phone.to_string(),
        name: name.to_string(),
        linked,
        client,
        handle,
        log: shared_log,
        events,
    })
}
