//! The real WhatsApp side: runs the whatsapp-rust client for the linked device and
//! translates between it and the adapter boundary of [`super`]. Incoming group texts
//! go to the [`InboundSink`] before WhatsApp is acknowledged (so nothing is lost on a
//! crash or a failed write); outgoing texts and group queries go through
//! [`WhatsAppClient`]. Nothing else of whatsapp-rust leaks out of this file.

use std::collections::{HashMap, HashSet, VecDeque};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;
use tokio::sync::oneshot;

use async_trait::async_trait;
use whatsapp_rust::bot::{Bot, BotBuilderError, BotHandle};
use whatsapp_rust::client::Client;
use whatsapp_rust::features::{GroupError, JoinGroupResult};
use whatsapp_rust::send::{SendError, SendOptions};
use whatsapp_rust::store::error::StoreError;
use whatsapp_rust::store::traits::DeviceStore as _;
use whatsapp_rust::types::events::{
    Event, EventHandler, EventInterest, EventKind, GroupUpdate, InboundMessage,
};
use whatsapp_rust::types::message::{AddressingMode, MessageInfo};
use whatsapp_rust::wacore::poll::{compute_option_hash, PollVoteCiphertext};
use whatsapp_rust::wacore::proto_helpers::{build_reaction_message, MessageBuilderExt, MessageExt};
use whatsapp_rust::wacore::time::now_millis;
use whatsapp_rust::wacore::types::call::{CallAction, IncomingCall};
use whatsapp_rust::waproto::buffa::MessageField;
use whatsapp_rust::waproto::whatsapp as wa;
use whatsapp_rust::waproto::whatsapp::message::protocol_message::Type as ProtocolType;
use whatsapp_rust::{InboundDurabilityHook, Jid, Server};

use super::store::{PollRecord, SqliteBackend};
use super::{
    ConnectionState, GroupChange, GroupPicture, GroupSummary, InboundSink, JoinOutcome, Outgoing,
    Quoted, SinkError, WhatsAppClient, WhatsAppError,
};
use crate::relay::location::Location;
use crate::relay::media::Media;
use crate::relay::{
    GroupSetting, MemberChange, Mention, PollBallot, Shared, WhatsAppRelation, WhatsAppText,
};
use whatsapp_rust::http::{HttpClient as _, HttpRequest};
use whatsapp_rust::wacore::stanza::groups::GroupNotificationAction;

/// WhatsApp Web version announced to the server: the one whatsapp-rust 0.7.0 ships as
/// its device default. Fixed so that the client never fetches it from WhatsApp Web.
pub(super) const WHATSAPP_WEB_VERSION: (u32, u32, u32) = (2, 3000, 1_042_742_319);

/// Push name of the linked device (shown to the phone in "Linked devices").
pub(super) const PUSH_NAME: &str = "passerelle";

/// How long `shutdown` waits for the client to flush and stop before aborting it.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Group pictures are small JPEGs (640 px); anything far larger is not one.
const MAX_GROUP_PICTURE_BYTES: usize = 5 * 1024 * 1024;

/// How many of our recently sent message ids are remembered, so that a retried send
/// of an id that already went out is not sent a second time.
const RECENT_SENT_IDS: usize = 1024;

/// Where the real adapter connects and keeps its state.
#[derive(Debug, Clone)]
pub struct RealOptions {
    /// WebSocket URL override (e.g. `ws://127.0.0.1:PORT/ws/chat` for the simulator);
    /// `None` uses WhatsApp's own server.
    pub url: Option<String>,
    /// The service's state directory.
    pub state_dir: PathBuf,
}

/// Why the real adapter could not start.
#[derive(Debug, thiserror::Error)]
pub enum RealError {
    #[error("could not read the WhatsApp device store: {0}")]
    Store(#[source] StoreError),
    #[error("could not build the WhatsApp client: {0}")]
    Build(#[source] BotBuilderError),
    #[error("could not open the WhatsApp key store: {0}")]
    KeyStore(#[source] super::store::WaStoreError),
    #[error(transparent)]
    Server(#[from] super::server::ServerError),
}

/// The WhatsApp adapter on whatsapp-rust. Without a linked device it stays idle and
/// every request fails with [`WhatsAppError::NotLinked`].
pub struct RealWhatsApp {
    /// `None` when no device is linked: no client exists, nothing connects.
    client: Option<Arc<Client>>,
    /// The running bot, taken by `shutdown`.
    handle: tokio::sync::Mutex<Option<BotHandle>>,
    /// Set when WhatsApp logged the device out: a new `passerelle login` is needed.
    logged_out: Arc<AtomicBool>,
    sent_ids: Mutex<RecentIds>,
    /// Sends waiting for WhatsApp's server ack, by message id.
    acks: ServerAcks,
    /// What each group lets the number send, as last read.
    rules: GroupRules,
    /// WhatsApp's HTTP client, for group pictures.
    http: super::server::MediaHttp,
    /// The key store, where the number's polls are kept with their secret.
    polls: Arc<SqliteBackend>,
}

impl RealWhatsApp {
    /// Opens the device store and, when a device is linked, starts the client in the
    /// background (it reconnects by itself). Without a linked device nothing is
    /// contacted: the sink is told [`ConnectionState::NotLinked`].
    pub async fn start(
        options: RealOptions,
        sink: Arc<dyn InboundSink>,
    ) -> Result<Arc<RealWhatsApp>, RealError> {
        let backend = open_backend(&options.state_dir)?;
        Self::start_with_backend(options, backend, sink).await
    }

    /// [`RealWhatsApp::start`] on a given device store instead of the one under
    /// `options.state_dir` (which is then unused): for tests that link a device
    /// first.
    pub async fn start_with_backend(
        options: RealOptions,
        backend: Arc<SqliteBackend>,
        sink: Arc<dyn InboundSink>,
    ) -> Result<Arc<RealWhatsApp>, RealError> {
        let transport = super::server::transport_for(options.url.as_deref())?;
        let linked = backend
            .load()
            .await
            .map_err(RealError::Store)?
            .is_some_and(|device| device.is_registered());
        let logged_out = Arc::new(AtomicBool::new(false));
        if !linked {
            tracing::info!("no WhatsApp device is linked; not connecting");
            sink.connection(ConnectionState::NotLinked);
            return Ok(Arc::new(RealWhatsApp {
                client: None,
                handle: tokio::sync::Mutex::new(None),
                logged_out,
                sent_ids: Mutex::new(RecentIds::default()),
                acks: ServerAcks::default(),
                rules: GroupRules::default(),
                http: super::server::media_http_for(options.url.as_deref()),
                polls: backend,
            }));
        }

        let acks = ServerAcks::default();
        let rules = GroupRules::default();
        let events = Events {
            sink: Arc::clone(&sink),
            logged_out: Arc::clone(&logged_out),
            client: Arc::new(OnceLock::new()),
            acks: acks.clone(),
            rules: rules.clone(),
            polls: Arc::clone(&backend),
        };
        let events_client = Arc::clone(&events.client);
        let polls = Arc::clone(&backend);
        let own_polls = Arc::clone(&backend);
        let mut builder = Bot::builder()
            .with_backend_arc(backend)
            .with_version(WHATSAPP_WEB_VERSION)
            .with_push_name(PUSH_NAME)
            .skip_history_sync()
            .with_inbound_durability_hook(SinkHook {
                sink: Arc::clone(&sink),
                polls,
            })
            .with_event_handler(events)
            .with_http_client(super::server::media_http_for(options.url.as_deref()));
        if let Some(transport) = transport {
            builder = builder.with_transport_factory(transport);
        }
        let bot = builder.build().await.map_err(RealError::Build)?;
        let _ = events_client.set(Arc::downgrade(&bot.client()));
        sink.connection(ConnectionState::Connecting);
        let handle = bot.spawn();
        tracing::info!("WhatsApp client started");
        Ok(Arc::new(RealWhatsApp {
            client: Some(handle.client()),
            handle: tokio::sync::Mutex::new(Some(handle)),
            logged_out,
            sent_ids: Mutex::new(RecentIds::default()),
            acks,
            rules,
            http: super::server::media_http_for(options.url.as_deref()),
            polls: own_polls,
        }))
    }

    /// Disconnects (flushing the client's state) and stops the client. Idempotent.
    pub async fn shutdown(&self) {
        let Some(handle) = self.handle.lock().await.take() else {
            return;
        };
        // On timeout the handle is dropped, which aborts the client task.
        if tokio::time::timeout(SHUTDOWN_TIMEOUT, handle.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("WhatsApp client did not stop in time; aborted it");
        }
    }

    /// The client, if it may be used right now.
    fn usable_client(&self) -> Result<&Arc<Client>, WhatsAppError> {
        let client = self.client.as_ref().ok_or(WhatsAppError::NotLinked)?;
        if self.logged_out.load(Ordering::Acquire) {
            return Err(WhatsAppError::NotLinked);
        }
        if !client.is_connected() || !client.is_logged_in() {
            return Err(WhatsAppError::NotConnected);
        }
        Ok(client)
    }

    /// A new message (not an edit, deletion or reaction): refused here when only
    /// admins may send and the number is not one (WhatsApp would refuse it), and
    /// carrying the group's disappearing timer, so that the number's messages
    /// disappear like everyone else's.
    async fn send_new(
        &self,
        client: &Client,
        group: Jid,
        mut message: wa::Message,
        message_id: &str,
    ) -> Result<(), WhatsAppError> {
        let rules = self.rules.of(client, &group).await?;
        if rules.admins_only && !rules.number_is_admin {
            return Err(WhatsAppError::Rejected(
                "only admins can send messages in this WhatsApp group".to_owned(),
            ));
        }
        let mut options = SendOptions::default();
        if rules.disappear_after > 0 {
            // A bare text has no context to carry the timer: send it as the
            // extended form, which does.
            if let Some(text) = message.conversation.take() {
                message.extended_text_message =
                    MessageField::some(wa::message::ExtendedTextMessage {
                        text: Some(text),
                        ..Default::default()
                    });
            }
            options.ephemeral_expiration = Some(rules.disappear_after);
        }
        self.send_confirmed(client, group, message, message_id, options)
            .await
    }

    /// Sends `message` under `message_id` and returns once WhatsApp's server
    /// acknowledged it (see [`ServerAcks`]).
    async fn send_confirmed(
        &self,
        client: &Client,
        group: Jid,
        message: wa::Message,
        message_id: &str,
        options: SendOptions,
    ) -> Result<(), WhatsAppError> {
        let ack = self.acks.expect(message_id);
        let options = options.with_message_id(message_id);
        if let Err(error) = client
            .send_message_with_options(group, message, options)
            .await
        {
            self.acks.forget(message_id);
            return Err(send_error(&error));
        }
        self.acks.wait(message_id, ack).await
    }

    /// The secret of the number's poll `message_id`: the one kept from a first
    /// attempt (a retry must send the same poll), else a new random one, kept before
    /// the poll goes out so that no vote arrives unreadable.
    async fn poll_secret(
        &self,
        client: &Client,
        group: &Jid,
        message_id: &str,
        question: &str,
        options: &[String],
    ) -> Result<Vec<u8>, WhatsAppError> {
        let store_error =
            |error: super::store::WaStoreError| WhatsAppError::Transient(error.to_string());
        let chat = group.to_string();
        if let Some(kept) = self.polls.poll(&chat, message_id).map_err(store_error)? {
            return Ok(kept.secret);
        }
        let mut secret = vec![0u8; 32];
        rand::Rng::fill_bytes(&mut rand::rng(), &mut secret);
        let record = PollRecord {
            chat,
            poll_id: message_id.to_owned(),
            creator: own_jid_in(client, group).await?,
            secret: secret.clone(),
            question: question.to_owned(),
            options: options.to_vec(),
        };
        self.polls
            .remember_poll(&record, now_millis() / 1000)
            .map_err(store_error)?;
        Ok(secret)
    }

    fn already_sent(&self, message_id: &str) -> bool {
        self.sent_ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(message_id)
    }

    fn remember_sent(&self, message_id: &str) {
        self.sent_ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(message_id);
    }
}

#[async_trait]
impl WhatsAppClient for RealWhatsApp {
    async fn send(
        &self,
        group_jid: &str,
        message_id: &str,
        outgoing: &Outgoing,
    ) -> Result<(), WhatsAppError> {
        let group = parse_group_jid(group_jid)?;
        if message_id.is_empty() {
            return Err(WhatsAppError::Rejected("empty message id".to_string()));
        }
        if self.already_sent(message_id) {
            tracing::debug!(
                message_id,
                "WhatsApp message already sent; not sending again"
            );
            return Ok(());
        }
        let client = self.usable_client()?;
        // What to send, and whether it is a new message of the number's (what the
        // group's rules apply to) or a change to one (an edit, a deletion, a
        // reaction), which is sent as it is.
        let (message, new) = match outgoing {
            Outgoing::Media {
                media,
                data,
                caption,
                reply_to,
            } => {
                let context = match reply_to {
                    Some(quoted) => Some(reply_context(client, quoted)?),
                    None => None,
                };
                let message = super::media::message_for(
                    client,
                    media,
                    data.clone(),
                    caption.clone(),
                    context,
                )
                .await?;
                (message, true)
            }
            Outgoing::Location { location } => {
                let message = wa::Message {
                    location_message: MessageField::some(wa::message::LocationMessage {
                        degrees_latitude: Some(location.latitude),
                        degrees_longitude: Some(location.longitude),
                        name: location.name.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                (message, true)
            }
            Outgoing::Poll {
                question,
                options,
                max_selections,
            } => {
                let secret = self
                    .poll_secret(client, &group, message_id, question, options)
                    .await?;
                let message = poll_message(question, options, *max_selections, secret);
                (message, true)
            }
            Outgoing::Text {
                text,
                reply_to,
                mentions,
            } => {
                let message = match (reply_to, mentions.is_empty()) {
                    (None, true) => wa::Message::text(text),
                    _ => text_with_context(client, text, reply_to.as_ref(), mentions)?,
                };
                (message, true)
            }
            // Edits, revokes and reactions are built here rather than through
            // whatsapp-rust's `edit_message` / `revoke_message` / `send_reaction`,
            // which pick their own stanza ids: under the id derived from the Matrix
            // event they wait for the server ack like any message, and a retry
            // after a crash is recognised by WhatsApp as the same stanza.
            Outgoing::Edit { target, text } => {
                let message = edit_message(&group, target, own_jid_in(client, &group).await?, text);
                (message, false)
            }
            Outgoing::Revoke { target } => {
                let message = revoke_message(&group, target);
                (message, false)
            }
            // One reaction per number and message: a repeat replaces it with itself.
            Outgoing::React { target, emoji } => {
                let key = wa::MessageKey {
                    remote_jid: Some(group.to_string()),
                    from_me: Some(target.sender_phone.is_none()),
                    id: Some(target.id.clone()),
                    participant: Some(participant_of(client, target)?),
                };
                let message = build_reaction_message(key, emoji.as_str(), now_millis());
                (message, false)
            }
        };
        if new {
            self.send_new(client, group, message, message_id).await?;
        } else {
            self.send_confirmed(client, group, message, message_id, SendOptions::default())
                .await?;
        }
        self.remember_sent(message_id);
        Ok(())
    }

    async fn group_subject(&self, group_jid: &str) -> Result<String, WhatsAppError> {
        let group = parse_group_jid(group_jid)?;
        let client = self.usable_client()?;
        let metadata = client
            .groups()
            .get_metadata(&group)
            .await
            .map_err(|error| group_error(&error))?;
        Ok(metadata.subject)
    }

    async fn group_picture(&self, group_jid: &str) -> Result<Option<GroupPicture>, WhatsAppError> {
        let group = parse_group_jid(group_jid)?;
        let client = self.usable_client()?;
        let picture = client
            .contacts()
            .get_profile_picture(&group, false)
            .await
            .map_err(|error| WhatsAppError::Transient(format!("group picture: {error}")))?;
        let Some(picture) = picture else {
            return Ok(None);
        };
        let response = self
            .http
            .execute(HttpRequest::get(picture.url.clone()))
            .await
            .map_err(|error| WhatsAppError::Transient(format!("group picture: {error:#}")))?;
        match response.status_code {
            200 if response.body.len() <= MAX_GROUP_PICTURE_BYTES => Ok(Some(GroupPicture {
                id: picture.id,
                data: response.body,
            })),
            200 => Err(WhatsAppError::Rejected(
                "the group picture is larger than expected".to_owned(),
            )),
            404 | 410 => Ok(None),
            status => Err(WhatsAppError::Transient(format!(
                "group picture: HTTP {status}"
            ))),
        }
    }

    async fn groups(&self) -> Result<Vec<GroupSummary>, WhatsAppError> {
        let client = self.usable_client()?;
        let groups = client
            .groups()
            .get_participating()
            .await
            .map_err(|error| group_error(&error))?;
        let mut summaries: Vec<GroupSummary> = groups
            .into_iter()
            .map(|(jid, metadata)| GroupSummary {
                jid: jid.to_string(),
                participants: metadata
                    .size
                    .map(|size| size as usize)
                    .unwrap_or(metadata.participants.len()),
                subject: metadata.subject,
            })
            .collect();
        summaries.sort_by(|a, b| a.subject.cmp(&b.subject).then(a.jid.cmp(&b.jid)));
        Ok(summaries)
    }

    async fn join(&self, invite: &str) -> Result<JoinOutcome, WhatsAppError> {
        let client = self.usable_client()?;
        let joined = client
            .groups()
            .join_with_invite_code(invite)
            .await
            .map_err(|error| group_error(&error))?;
        match joined {
            JoinGroupResult::Joined(jid) => {
                let subject = match client.groups().get_metadata(&jid).await {
                    Ok(metadata) => metadata.subject,
                    Err(error) => {
                        tracing::debug!("subject of the joined group unknown: {error}");
                        String::new()
                    }
                };
                Ok(JoinOutcome::Joined {
                    jid: jid.to_string(),
                    subject,
                })
            }
            JoinGroupResult::PendingApproval(jid) => Ok(JoinOutcome::PendingApproval {
                jid: jid.to_string(),
            }),
        }
    }

    async fn forget_before(&self, cutoff_secs: i64) -> Result<usize, WhatsAppError> {
        self.polls
            .forget_polls_before(cutoff_secs)
            .map_err(|error| WhatsAppError::Transient(error.to_string()))
    }

    async fn download(&self, media: &Media) -> Result<Vec<u8>, WhatsAppError> {
        let client = self.usable_client()?;
        super::media::download(client, media).await
    }
}

fn group_error(error: &GroupError) -> WhatsAppError {
    match error {
        GroupError::InvalidRequest(reason) => WhatsAppError::Rejected(reason.clone()),
        other => chain_error(other),
    }
}

/// A text replying to `quoted` and/or mentioning numbers: WhatsApp clients find the
/// quoted message by its id and sender (the participant), so no copy of its
/// content is needed; a mention is `@<number>` in the text plus the number's JID.
fn text_with_context(
    client: &Client,
    text: &str,
    quoted: Option<&Quoted>,
    mentions: &[String],
) -> Result<wa::Message, WhatsAppError> {
    let mut context = match quoted {
        Some(quoted) => reply_context(client, quoted)?,
        None => wa::ContextInfo::default(),
    };
    context.mentioned_jid = mentions
        .iter()
        .map(|phone| Jid::pn(phone.as_str()).to_string())
        .collect();
    Ok(wa::Message {
        extended_text_message: wa::message::ExtendedTextMessage {
            text: Some(text.to_string()),
            context_info: context.into(),
            ..Default::default()
        }
        .into(),
        ..Default::default()
    })
}

/// The context that makes a message a reply to `quoted`.
fn reply_context(client: &Client, quoted: &Quoted) -> Result<wa::ContextInfo, WhatsAppError> {
    Ok(wa::ContextInfo {
        stanza_id: Some(quoted.id.clone()),
        participant: Some(participant_of(client, quoted)?),
        quoted_message: wa::Message::text("").into(),
        ..Default::default()
    })
}

/// The number's own address in `group`, as the group addresses its members (the
/// LID in LID-addressed groups): edits name their author with it.
async fn own_jid_in(client: &Client, group: &Jid) -> Result<String, WhatsAppError> {
    let own_pn = client.pn().ok_or(WhatsAppError::NotLinked)?;
    let lid_addressed = match client.groups().query_info(group).await {
        Ok(info) => info.addressing_mode == AddressingMode::Lid,
        Err(error) => return Err(group_error(&error)),
    };
    let own = match client.lid() {
        Some(lid) if lid_addressed => lid,
        _ => own_pn,
    };
    Ok(own.to_non_ad().to_string())
}

/// The number's poll (whatsapp-rust's `polls().create` shape, under our own id):
/// single-choice polls as `pollCreationMessageV3`, others as the first version, as
/// WhatsApp Web sends them; the secret voters derive their keys from rides in
/// `messageContextInfo`.
fn poll_message(
    question: &str,
    options: &[String],
    max_selections: u32,
    secret: Vec<u8>,
) -> wa::Message {
    let poll = wa::message::PollCreationMessage {
        name: Some(question.to_owned()),
        options: options
            .iter()
            .map(|option| wa::message::poll_creation_message::Option {
                option_name: Some(option.clone()),
                option_hash: None,
            })
            .collect(),
        selectable_options_count: Some(max_selections.clamp(1, options.len() as u32)),
        poll_content_type: Some(wa::message::PollContentType::TEXT),
        ..Default::default()
    };
    let single = max_selections <= 1;
    wa::Message {
        poll_creation_message_v3: if single {
            MessageField::some(poll.clone())
        } else {
            MessageField::none()
        },
        poll_creation_message: if single {
            MessageField::none()
        } else {
            MessageField::some(poll)
        },
        message_context_info: MessageField::some(wa::MessageContextInfo {
            message_secret: Some(secret),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An edit of the number's message `target` in `group` (WhatsApp's wire form: a
/// protocol message of type MESSAGE_EDIT carrying the new text).
fn edit_message(group: &Jid, target: &str, own_jid: String, text: &str) -> wa::Message {
    wa::Message {
        protocol_message: MessageField::some(wa::message::ProtocolMessage {
            key: MessageField::some(wa::MessageKey {
                remote_jid: Some(group.to_string()),
                from_me: Some(true),
                id: Some(target.to_owned()),
                participant: Some(own_jid),
            }),
            r#type: Some(ProtocolType::MESSAGE_EDIT),
            edited_message: MessageField::some(wa::Message::text(text)),
            timestamp_ms: Some(now_millis()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A "delete for everyone" of the number's own message `target` in `group`.
fn revoke_message(group: &Jid, target: &str) -> wa::Message {
    wa::Message {
        protocol_message: MessageField::some(wa::message::ProtocolMessage {
            key: MessageField::some(wa::MessageKey {
                remote_jid: Some(group.to_string()),
                from_me: Some(true),
                id: Some(target.to_owned()),
                participant: None,
            }),
            r#type: Some(ProtocolType::REVOKE),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The author of a quoted message as WhatsApp addresses it in a group.
fn participant_of(client: &Client, quoted: &Quoted) -> Result<String, WhatsAppError> {
    match &quoted.sender_phone {
        Some(phone) => Ok(Jid::pn(phone.as_str()).to_string()),
        None => client
            .pn()
            .map(|own| own.to_non_ad().to_string())
            .ok_or(WhatsAppError::NotLinked),
    }
}

/// The store holding the device identity and Signal keys.
/// The device identity and Signal keys: `whatsapp.db` in the state directory (0600).
fn open_backend(state_dir: &Path) -> Result<Arc<SqliteBackend>, RealError> {
    let backend =
        SqliteBackend::open(&state_dir.join("whatsapp.db")).map_err(RealError::KeyStore)?;
    Ok(Arc::new(backend))
}

fn parse_group_jid(group_jid: &str) -> Result<Jid, WhatsAppError> {
    match group_jid.parse::<Jid>() {
        Ok(jid) if jid.server == Server::Group => Ok(jid),
        _ => Err(WhatsAppError::Rejected(format!(
            "not a WhatsApp group id: {group_jid}"
        ))),
    }
}

fn send_error(error: &SendError) -> WhatsAppError {
    match error {
        SendError::NotLoggedIn => WhatsAppError::NotLinked,
        SendError::InvalidRequest(reason) => WhatsAppError::Rejected(reason.clone()),
        other => chain_error(other),
    }
}

/// Classifies a whatsapp-rust error by what its source chain says: the connection
/// being gone, a definite refusal by the server, or anything else (worth a retry).
fn chain_error(error: &(dyn std::error::Error + 'static)) -> WhatsAppError {
    // Imported here only: its `as_dyn_error` clashes with thiserror's derive.
    use whatsapp_rust::ErrorChainExt;

    if error.is_transport_unavailable() {
        return WhatsAppError::NotConnected;
    }
    if let Some(rejection) = error.server_rejection() {
        let temporary = rejection.error_type == Some("wait")
            || matches!(rejection.code, 408 | 429)
            || !(400..500).contains(&rejection.code);
        if !temporary {
            return WhatsAppError::Rejected(format!("{} {}", rejection.code, rejection.text));
        }
    }
    WhatsAppError::Transient(error.to_string())
}

/// The inbound durability hook: hands each group text of a batch to the sink, in
/// order, before whatsapp-rust acknowledges the batch to WhatsApp. If the sink fails
/// the hook fails, so the batch is not acknowledged and WhatsApp delivers it again
/// (the sink therefore sees some messages twice and must ignore repeats).
struct SinkHook {
    sink: Arc<dyn InboundSink>,
    /// The key store, where the polls seen are kept to read their votes.
    polls: Arc<SqliteBackend>,
}

#[async_trait]
impl InboundDurabilityHook for SinkHook {
    async fn on_messages(
        &self,
        client: Arc<Client>,
        batch: &[InboundMessage],
    ) -> anyhow::Result<()> {
        let mut texts = Vec::with_capacity(batch.len());
        for inbound in batch {
            let polls = polls_if_bridged(self.sink.as_ref(), &self.polls, inbound);
            if let Some(text) = group_text(&client, polls, inbound).await {
                texts.push(text);
            }
        }
        if texts.is_empty() {
            return Ok(());
        }
        // The sink writes to disk: keep that off the async worker threads.
        let sink = Arc::clone(&self.sink);
        tokio::task::spawn_blocking(move || deliver(sink.as_ref(), texts))
            .await
            .map_err(|error| anyhow::anyhow!("inbound sink task failed: {error}"))??;
        Ok(())
    }
}

/// The poll store, for a message of a bridged group only: nothing of other groups'
/// polls is kept.
fn polls_if_bridged<'a>(
    sink: &dyn InboundSink,
    polls: &'a SqliteBackend,
    inbound: &InboundMessage,
) -> Option<&'a SqliteBackend> {
    sink.bridges(&inbound.info.source.chat.to_string())
        .then_some(polls)
}

fn deliver(sink: &dyn InboundSink, texts: Vec<WhatsAppText>) -> Result<(), SinkError> {
    for text in texts {
        sink.message(text)?;
    }
    Ok(())
}

/// The domain form of an incoming message, if it is something a person said in a
/// group (a text, a reply, an edit, a deletion, a reaction, or a kind that is
/// announced as not relayed yet).
async fn group_text(
    client: &Client,
    polls: Option<&SqliteBackend>,
    inbound: &InboundMessage,
) -> Option<WhatsAppText> {
    let info = &inbound.info;
    if info.source.chat.server != Server::Group {
        tracing::debug!("skipping WhatsApp message outside a group");
        return None;
    }
    // Edits arrive wrapped (editedMessage); this unwraps them to the protocol message.
    let base = inbound.message.get_base_message();
    let mut relation = None;
    let mut media = None;
    let mut location = None;
    let mut shared = None;
    let (text, unsupported) = if let Some(protocol) = base.protocol_message.as_option() {
        let target = protocol.key.as_option().and_then(|key| key.id.clone());
        match (protocol.r#type, target) {
            (Some(ProtocolType::REVOKE), Some(id)) => {
                relation = Some(WhatsAppRelation::Revoke { id });
                (String::new(), None)
            }
            (Some(ProtocolType::MESSAGE_EDIT), Some(id)) => {
                let edited = protocol.edited_message.as_option()?;
                let text = edited
                    .text_content()
                    .or_else(|| edited.get_caption())
                    .unwrap_or_default()
                    .to_owned();
                relation = Some(WhatsAppRelation::Edit { id });
                (text, None)
            }
            _ => {
                tracing::debug!(kind = "protocol", "skipping WhatsApp group message");
                return None;
            }
        }
    } else if let Some(reaction) = base.reaction_message.as_option() {
        let id = reaction.key.as_option().and_then(|key| key.id.clone())?;
        relation = Some(WhatsAppRelation::Reaction {
            id,
            emoji: reaction.text.clone().unwrap_or_default(),
        });
        (String::new(), None)
    } else if let Some(update) = base.poll_update_message.as_option() {
        let ballot = match polls {
            Some(polls) => read_vote(client, polls, info, update).await,
            None => None,
        };
        shared = Some(Shared::PollVote(ballot.map(Box::new)));
        (String::new(), None)
    } else if let Some(found) = shared_of(&inbound.message, base) {
        if let (Shared::Poll { question, options }, Some(polls)) = (&found, polls) {
            remember_poll(polls, info, &inbound.message, base, question, options);
        }
        // A contact also crosses as its card, a `.vcf` file.
        media = super::media::contact_card(base);
        shared = Some(found);
        (String::new(), None)
    } else if let Some((found, caption)) = super::media::media_of(base) {
        media = Some(found);
        (caption, None)
    } else if let Some((found, comment)) = location_of(base) {
        location = Some(found);
        (comment, None)
    } else {
        match base.text_content() {
            Some(text) => (text.to_owned(), None),
            // Protocol plumbing (keys, history, placeholders): nobody said anything.
            None if carries_only_plumbing(base) => {
                tracing::debug!("skipping WhatsApp protocol plumbing");
                return None;
            }
            // Something a person sent that cannot be relayed yet, known by name or
            // not (an event, a pin, a list, a field this version cannot read): say so
            // in Matrix.
            None => match message_kind(base) {
                "sender key distribution" => (String::new(), Some("other".to_owned())),
                kind => (String::new(), Some(kind.to_owned())),
            },
        }
    };
    let mut mentions = Vec::new();
    if let Some(context) = context_info(base) {
        if relation.is_none() {
            if let Some(id) = context.stanza_id.clone().filter(|id| !id.is_empty()) {
                let quoted = context
                    .quoted_message
                    .as_option()
                    .and_then(|quoted| quoted.text_content().or_else(|| quoted.get_caption()))
                    .filter(|text| !text.is_empty())
                    .map(str::to_owned);
                relation = Some(WhatsAppRelation::Reply { id, quoted });
            }
        }
        for jid in &context.mentioned_jid {
            if let Ok(jid) = jid.parse::<Jid>() {
                mentions.push(Mention {
                    phone: phone_of(client, &jid).await,
                    name: None,
                });
            }
        }
    }
    let push_name = Some(info.push_name.as_str())
        .filter(|name| !name.is_empty())
        .map(str::to_owned);
    Some(WhatsAppText {
        group_jid: info.source.chat.to_string(),
        message_id: info.id.clone(),
        sender_phone: sender_phone(client, info).await,
        push_name,
        text,
        from_me: info.source.is_from_me,
        unsupported,
        relation,
        mentions,
        media,
        location,
        shared,
    })
}

/// A group notification about members, as a message for the room: people added or
/// removed (or joining, leaving), promoted or demoted. Its id is derived from the
/// notification's, so a notification seen twice is told once.
fn member_change(update: &GroupUpdate) -> Option<WhatsAppText> {
    let (change, participants) = match &update.action {
        GroupNotificationAction::Add { participants, .. } => (MemberChange::Added, participants),
        GroupNotificationAction::Remove { participants, .. } => {
            (MemberChange::Removed, participants)
        }
        GroupNotificationAction::Promote { participants } => (MemberChange::Promoted, participants),
        GroupNotificationAction::Demote { participants } => (MemberChange::Demoted, participants),
        _ => return None,
    };
    let people = participants
        .iter()
        .map(|person| Mention {
            phone: phone_or_lid(&person.jid, person.phone_number.as_ref()),
            name: person.display_name.clone().filter(|name| !name.is_empty()),
        })
        .collect();
    let by = actor_phone(update).map(|phone| Mention { phone, name: None });
    Some(WhatsAppText {
        group_jid: update.group_jid.to_string(),
        message_id: notification_message_id(update),
        sender_phone: by.as_ref().map(|by| by.phone.clone()).unwrap_or_default(),
        shared: Some(Shared::Members { change, people, by }),
        ..WhatsAppText::default()
    })
}

/// A group notification about a setting the room should know of: disappearing
/// messages, announcement mode. Told once, like member changes.
fn setting_change(update: &GroupUpdate) -> Option<WhatsAppText> {
    let setting = match &update.action {
        GroupNotificationAction::Ephemeral { expiration, .. } => {
            GroupSetting::Disappearing(*expiration)
        }
        GroupNotificationAction::Announce => GroupSetting::OnlyAdminsSend(true),
        GroupNotificationAction::NotAnnounce => GroupSetting::OnlyAdminsSend(false),
        _ => return None,
    };
    Some(WhatsAppText {
        group_jid: update.group_jid.to_string(),
        message_id: notification_message_id(update),
        sender_phone: actor_phone(update).unwrap_or_default(),
        shared: Some(Shared::Setting(setting)),
        ..WhatsAppText::default()
    })
}

/// A group call someone started, as a line for the room (calls do not cross: the
/// line says where to join). Its id is derived from the call's, so an offer seen
/// twice (offline, then live) is told once. Calls to the number itself are no
/// group's business and are left alone.
fn group_call(call: &IncomingCall) -> Option<WhatsAppText> {
    let CallAction::Offer {
        call_id,
        call_creator,
        caller_pn,
        is_video,
        group_jid: Some(group),
        ..
    } = &call.action
    else {
        return None;
    };
    Some(WhatsAppText {
        group_jid: group.to_string(),
        message_id: format!("call.{call_id}"),
        sender_phone: phone_or_lid(call_creator, caller_pn.as_ref()),
        push_name: call.notify.clone().filter(|name| !name.is_empty()),
        shared: Some(Shared::Call { video: *is_video }),
        ..WhatsAppText::default()
    })
}

/// The id a group notification's line gets in the room: derived from the
/// notification's, so a notification seen twice is told once.
fn notification_message_id(update: &GroupUpdate) -> String {
    format!(
        "gp2.{}.{}",
        update
            .notification_id
            .clone()
            .unwrap_or_else(|| update.timestamp.timestamp_millis().to_string()),
        update.action_index
    )
}

/// The phone number of who made a group change, when WhatsApp said.
fn actor_phone(update: &GroupUpdate) -> Option<String> {
    let actor = update.participant.as_ref()?;
    Some(phone_or_lid(actor, update.participant_pn.as_ref()))
}

/// A person's phone number, from their phone-number JID when WhatsApp gave one.
fn phone_or_lid(jid: &Jid, pn: Option<&Jid>) -> String {
    pn.unwrap_or(jid).user_base().to_owned()
}

/// A contact, poll, vote or view-once message. View-once comes first: its file is
/// never fetched, so it cannot outlive its one viewing in a Matrix room.
fn shared_of(outer: &wa::Message, base: &wa::Message) -> Option<Shared> {
    if outer.is_view_once() {
        let kind = if base.video_message.is_set() {
            "video"
        } else if base.audio_message.is_set() {
            "voice message"
        } else {
            "photo"
        };
        return Some(Shared::ViewOnce {
            kind: kind.to_owned(),
        });
    }
    if let Some(contact) = base.contact_message.as_option() {
        return Some(Shared::Contact {
            name: contact.display_name.clone().unwrap_or_default(),
            phones: vcard_phones(contact.vcard.as_deref().unwrap_or_default()),
        });
    }
    if let Some(array) = base.contacts_array_message.as_option() {
        let names: Vec<String> = array
            .contacts
            .iter()
            .filter_map(|contact| contact.display_name.clone())
            .collect();
        return Some(Shared::Contact {
            name: names.join(", "),
            phones: array
                .contacts
                .iter()
                .flat_map(|contact| vcard_phones(contact.vcard.as_deref().unwrap_or_default()))
                .collect(),
        });
    }
    let poll = [
        &base.poll_creation_message,
        &base.poll_creation_message_v2,
        &base.poll_creation_message_v3,
    ]
    .into_iter()
    .find_map(|poll| poll.as_option());
    if let Some(poll) = poll {
        return Some(Shared::Poll {
            question: poll.name.clone().unwrap_or_default(),
            options: poll
                .options
                .iter()
                .filter_map(|option| option.option_name.clone())
                .collect(),
        });
    }
    None
}

/// Keeps what it takes to read a poll's votes later: its secret (which phones put in
/// the poll's `messageContextInfo`), creator and options.
fn remember_poll(
    polls: &SqliteBackend,
    info: &MessageInfo,
    outer: &wa::Message,
    base: &wa::Message,
    question: &str,
    options: &[String],
) {
    let secret = [outer, base].into_iter().find_map(|message| {
        message
            .message_context_info
            .as_option()
            .and_then(|context| context.message_secret.clone())
    });
    let Some(secret) = secret else {
        tracing::debug!("poll without a secret: its votes cannot be read");
        return;
    };
    let record = PollRecord {
        chat: info.source.chat.to_string(),
        poll_id: info.id.clone(),
        creator: info.source.sender.to_non_ad().to_string(),
        secret,
        question: question.to_owned(),
        options: options.to_vec(),
    };
    if let Err(error) = polls.remember_poll(&record, now_millis() / 1000) {
        tracing::warn!("could not keep a poll to read its votes: {error}");
    }
}

/// Reads a vote: which options of which poll the voter picks now. `None` when the
/// poll was never seen here (sent before the number was linked) or the vote cannot
/// be decrypted; the room is then told that a vote was cast.
async fn read_vote(
    client: &Client,
    polls: &SqliteBackend,
    info: &MessageInfo,
    update: &wa::message::PollUpdateMessage,
) -> Option<PollBallot> {
    let poll_id = update
        .poll_creation_message_key
        .as_option()
        .and_then(|key| key.id.clone())?;
    let poll = match polls.poll(&info.source.chat.to_string(), &poll_id) {
        Ok(Some(poll)) => poll,
        Ok(None) => {
            tracing::debug!("vote in a poll this bridge never saw");
            return None;
        }
        Err(error) => {
            tracing::warn!("could not look a poll up to read a vote: {error}");
            return None;
        }
    };
    let vote = update.vote.as_option()?;
    let ciphertext = PollVoteCiphertext {
        enc_payload: vote.enc_payload.as_deref()?,
        enc_iv: vote.enc_iv.as_deref()?,
    };
    let creator: Jid = poll.creator.parse().ok()?;
    let hashes = match client
        .polls()
        .decrypt_vote(
            ciphertext,
            &poll.secret,
            &poll_id,
            &creator,
            &info.source.sender,
        )
        .await
    {
        Ok(hashes) => hashes,
        Err(error) => {
            tracing::warn!("could not read a vote in a poll: {error}");
            return None;
        }
    };
    let choices = poll
        .options
        .iter()
        .filter(|option| {
            let hash = compute_option_hash(option);
            hashes.iter().any(|picked| picked.as_slice() == hash)
        })
        .cloned()
        .collect();
    Some(PollBallot {
        poll_id,
        question: poll.question,
        options: poll.options,
        creator_phone: phone_of(client, &creator).await,
        choices,
        voted_at_ms: update
            .sender_timestamp_ms
            .unwrap_or_else(|| info.timestamp.timestamp_millis()),
        creator_name: None,
        tally: Vec::new(),
        asked_in_matrix: false,
    })
}

/// The phone numbers of a vCard (its `TEL` lines).
fn vcard_phones(vcard: &str) -> Vec<String> {
    vcard
        .lines()
        .filter(|line| line.trim_start().to_ascii_uppercase().starts_with("TEL"))
        .filter_map(|line| line.rsplit(':').next())
        .map(|number| number.trim().to_owned())
        .filter(|number| !number.is_empty())
        .collect()
}

/// The point of a location or live location message, and its comment.
fn location_of(message: &wa::Message) -> Option<(Location, String)> {
    if let Some(shared) = message.location_message.as_option() {
        let name = [shared.name.as_deref(), shared.address.as_deref()]
            .into_iter()
            .flatten()
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>()
            .join(", ");
        let point = Location::new(
            shared.degrees_latitude?,
            shared.degrees_longitude?,
            Some(name),
        )?;
        return Some((point, shared.comment.clone().unwrap_or_default()));
    }
    let live = message.live_location_message.as_option()?;
    let point = Location::new(live.degrees_latitude?, live.degrees_longitude?, None)?;
    let caption = live.caption.clone().unwrap_or_default();
    Some((point, format!("live location {caption}").trim().to_owned()))
}

/// The context (quote, mentions) of a text or media message.
fn context_info(message: &wa::Message) -> Option<&wa::ContextInfo> {
    let contexts = [
        message
            .extended_text_message
            .as_option()
            .and_then(|m| m.context_info.as_option()),
        message
            .image_message
            .as_option()
            .and_then(|m| m.context_info.as_option()),
        message
            .video_message
            .as_option()
            .and_then(|m| m.context_info.as_option()),
        message
            .audio_message
            .as_option()
            .and_then(|m| m.context_info.as_option()),
        message
            .document_message
            .as_option()
            .and_then(|m| m.context_info.as_option()),
        message
            .sticker_message
            .as_option()
            .and_then(|m| m.context_info.as_option()),
    ];
    contexts.into_iter().flatten().next()
}

/// The phone number (user part) of a person's JID; a LID is resolved when known.
async fn phone_of(client: &Client, jid: &Jid) -> String {
    if jid.server.is_lid_family() {
        match client.get_lid_pn_entry(jid).await {
            Ok(Some(entry)) => return entry.phone_number.to_string(),
            Ok(None) => {}
            Err(error) => tracing::debug!("LID to phone number lookup failed: {error}"),
        }
    }
    jid.user_base().to_owned()
}

/// The sender's phone number (user part); for a LID sender whose number is unknown,
/// the LID user part.
async fn sender_phone(client: &Client, info: &MessageInfo) -> String {
    let sender = &info.source.sender;
    if sender.server.is_pn_family() {
        return sender.user_base().to_owned();
    }
    if let Some(alt) = &info.source.sender_alt {
        if alt.server.is_pn_family() {
            return alt.user_base().to_owned();
        }
    }
    if sender.server.is_lid_family() {
        match client.get_lid_pn_entry(sender).await {
            Ok(Some(entry)) => return entry.phone_number.to_string(),
            Ok(None) => {}
            Err(error) => tracing::debug!("LID to phone number lookup failed: {error}"),
        }
    }
    sender.user_base().to_owned()
}

/// Whether a message holds nothing a person sent: only the protocol's own fields
/// (sender keys, the message secret, history and key shares, placeholders). Any other
/// field set, named or unknown to this version of waproto, is something said.
fn carries_only_plumbing(message: &wa::Message) -> bool {
    let mut rest = message.clone();
    rest.sender_key_distribution_message = Default::default();
    rest.fast_ratchet_key_sender_key_distribution_message = Default::default();
    rest.message_context_info = Default::default();
    rest.sticker_sync_rmr_message = Default::default();
    rest.message_history_bundle = Default::default();
    rest.message_history_notice = Default::default();
    rest.placeholder_message = Default::default();
    rest.group_root_key_share = Default::default();
    rest.root_secret_distribute_message = Default::default();
    whatsapp_rust::waproto::buffa::Message::encoded_len(&rest) == 0
}

/// A short name for the kind of a message, for logs (never its content).
fn message_kind(message: &wa::Message) -> &'static str {
    if let Some(media) = whatsapp_rust::wacore::send::media_type_from_message(message) {
        return media;
    }
    if message.reaction_message.is_set() {
        "reaction"
    } else if message.protocol_message.is_set() {
        "protocol"
    } else if message.sender_key_distribution_message.is_set() {
        "sender key distribution"
    } else if message.location_message.is_set() || message.live_location_message.is_set() {
        "location"
    } else if message.contact_message.is_set() || message.contacts_array_message.is_set() {
        "contact"
    } else if message.poll_creation_message.is_set()
        || message.poll_creation_message_v2.is_set()
        || message.poll_creation_message_v3.is_set()
        || message.poll_update_message.is_set()
    {
        "poll"
    } else {
        "other"
    }
}

/// Forwards connection changes to the sink, and the few messages that whatsapp-rust
/// delivers without the durability hook. Runs inline on whatsapp-rust's event
/// dispatch, which keeps the connection states in order.
struct Events {
    sink: Arc<dyn InboundSink>,
    logged_out: Arc<AtomicBool>,
    /// Set once the client is built (the handler is registered before).
    client: Arc<OnceLock<Weak<Client>>>,
    acks: ServerAcks,
    rules: GroupRules,
    /// The key store, where polls are kept (see [`SinkHook`]).
    polls: Arc<SqliteBackend>,
}

impl Events {
    /// Messages that bypassed the hook: placeholder resends recovered from the phone
    /// after a failed decryption. whatsapp-rust has acknowledged them already, so
    /// this is best effort: a sink error is logged, the message cannot come again.
    fn unhooked_messages(&self, inbound: Vec<InboundMessage>) {
        let Some(client) = self.client.get().and_then(Weak::upgrade) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let sink = Arc::clone(&self.sink);
        let polls = Arc::clone(&self.polls);
        runtime.spawn(async move {
            let mut texts = Vec::with_capacity(inbound.len());
            for message in &inbound {
                let polls = polls_if_bridged(sink.as_ref(), &polls, message);
                if let Some(text) = group_text(&client, polls, message).await {
                    texts.push(text);
                }
            }
            if texts.is_empty() {
                return;
            }
            match tokio::task::spawn_blocking(move || deliver(sink.as_ref(), texts)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!("recovered WhatsApp message lost: {error}"),
                Err(error) => tracing::error!("recovered WhatsApp message lost: {error}"),
            }
        });
    }
}

impl EventHandler for Events {
    fn handle_event(&self, event: Arc<Event>) {
        let state = match &*event {
            Event::Messages(batch) => {
                if !batch.hook_committed {
                    self.unhooked_messages(batch.iter().cloned().collect());
                }
                return;
            }
            Event::GroupUpdate(update) => {
                self.rules.forget(&update.group_jid.to_string());
                if let Some(message) = member_change(update).or_else(|| setting_change(update)) {
                    if let Err(error) = self.sink.message(message) {
                        tracing::error!("group member change not stored: {error}");
                    }
                    return;
                }
                let change = match &update.action {
                    GroupNotificationAction::Subject { subject, .. } => {
                        GroupChange::Subject(subject.clone())
                    }
                    GroupNotificationAction::Description { description, .. } => {
                        GroupChange::Description(description.clone())
                    }
                    _ => return,
                };
                self.sink
                    .group_changed(&update.group_jid.to_string(), change);
                return;
            }
            Event::IncomingCall(call) => {
                if let Some(message) = group_call(call) {
                    if let Err(error) = self.sink.message(message) {
                        tracing::error!("group call notice not stored: {error}");
                    }
                }
                return;
            }
            Event::PictureUpdate(update) if update.jid.server == Server::Group => {
                self.sink
                    .group_changed(&update.jid.to_string(), GroupChange::Picture);
                return;
            }
            Event::Connected(_) => {
                self.logged_out.store(false, Ordering::Release);
                // Changes made while away come as notifications, but a group the
                // number was away from long enough may only be read again.
                self.rules.forget_all();
                ConnectionState::Connected
            }
            Event::Disconnected(disconnected) => {
                // An ack cannot come over a connection that is gone.
                self.acks.abandon_all();
                ConnectionState::Disconnected(disconnected.reason.to_string())
            }
            Event::ServerAck(ack) => {
                if ack.class.as_deref() == Some("message") {
                    self.acks.resolve(&ack.id, ack.error.clone());
                }
                return;
            }
            Event::LoggedOut(logged_out) => {
                self.logged_out.store(true, Ordering::Release);
                ConnectionState::LoggedOut(format!(
                    "WhatsApp logged this device out ({:?}); run `passerelle login` again",
                    logged_out.reason
                ))
            }
            Event::StreamReplaced(_) => ConnectionState::Stopped(
                "replaced by another connection of the same device (is a second passerelle \
                 running?); not reconnecting until restarted"
                    .to_string(),
            ),
            Event::TemporaryBan(ban) => ConnectionState::Stopped(format!(
                "temporarily banned by WhatsApp ({}) for {} s; not reconnecting until restarted",
                ban.code,
                ban.expire.num_seconds()
            )),
            Event::ClientOutdated(_) => ConnectionState::Stopped(
                "WhatsApp refused this client version as outdated; passerelle needs an update"
                    .to_string(),
            ),
            Event::ConnectFailure(failure) if failure.reason.should_reconnect() => {
                ConnectionState::Disconnected(format!(
                    "WhatsApp refused the connection ({:?}); retrying",
                    failure.reason
                ))
            }
            Event::ConnectFailure(failure) => ConnectionState::Stopped(format!(
                "WhatsApp refused the connection ({:?}); not reconnecting until restarted",
                failure.reason
            )),
            _ => return,
        };
        self.sink.connection(state);
    }

    fn interest(&self) -> EventInterest {
        EventInterest::of(&[
            EventKind::Messages,
            EventKind::Connected,
            EventKind::Disconnected,
            EventKind::LoggedOut,
            EventKind::StreamReplaced,
            EventKind::TemporaryBan,
            EventKind::ClientOutdated,
            EventKind::ConnectFailure,
            EventKind::GroupUpdate,
            EventKind::PictureUpdate,
            EventKind::IncomingCall,
            EventKind::ServerAck,
        ])
    }
}

/// What a group lets the number send, from its metadata.
#[derive(Debug, Clone, Copy)]
struct SendRules {
    /// Announcement mode: only admins may send messages.
    admins_only: bool,
    number_is_admin: bool,
    /// The group's disappearing-message timer in seconds (0 = off).
    disappear_after: u32,
}

/// [`SendRules`] per group, read from WhatsApp when first needed and forgotten
/// whenever the group changes (the next send reads them again).
#[derive(Clone, Default)]
struct GroupRules {
    known: Arc<Mutex<HashMap<String, SendRules>>>,
}

impl GroupRules {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SendRules>> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn of(&self, client: &Client, group: &Jid) -> Result<SendRules, WhatsAppError> {
        let key = group.to_string();
        if let Some(rules) = self.lock().get(&key) {
            return Ok(*rules);
        }
        let metadata = client
            .groups()
            .get_metadata(group)
            .await
            .map_err(|error| group_error(&error))?;
        let own = [client.pn(), client.lid()];
        let is_own = |jid: &Jid| {
            own.iter()
                .flatten()
                .any(|mine| mine.user_base() == jid.user_base() && mine.server == jid.server)
        };
        let rules = SendRules {
            admins_only: metadata.is_announcement,
            number_is_admin: metadata.participants.iter().any(|person| {
                person.is_admin()
                    && (is_own(&person.jid) || person.phone_number.as_ref().is_some_and(is_own))
            }),
            disappear_after: metadata
                .ephemeral
                .and_then(|settings| settings.expiration)
                .unwrap_or(0),
        };
        self.lock().insert(key, rules);
        Ok(rules)
    }

    fn forget(&self, group: &str) {
        self.lock().remove(group);
    }

    fn forget_all(&self) {
        self.lock().clear();
    }
}

/// How long a sent message may wait for WhatsApp's server ack before the send
/// counts as failed (and is retried under the same id).
const SERVER_ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends waiting for the server's `<ack class="message">`: whatsapp-rust returns once
/// the stanza is written to the socket, which is not yet "WhatsApp has it". A
/// connection cut in between would otherwise lose the message after its outbox row
/// was completed.
#[derive(Clone, Default)]
struct ServerAcks {
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Option<String>>>>>,
}

impl ServerAcks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Option<String>>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts waiting for the ack of `id` (before the stanza goes out: the ack may
    /// come back before the send returns). The receiver gets the nack code, if any.
    fn expect(&self, id: &str) -> oneshot::Receiver<Option<String>> {
        let (sender, receiver) = oneshot::channel();
        self.lock().insert(id.to_owned(), sender);
        receiver
    }

    fn resolve(&self, id: &str, error: Option<String>) {
        if let Some(waiter) = self.lock().remove(id) {
            let _ = waiter.send(error);
        }
    }

    fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    fn abandon_all(&self) {
        self.lock().clear();
    }

    /// Waits for the ack of a sent message: `Ok` once WhatsApp has it.
    async fn wait(
        &self,
        id: &str,
        receiver: oneshot::Receiver<Option<String>>,
    ) -> Result<(), WhatsAppError> {
        let outcome = tokio::time::timeout(SERVER_ACK_TIMEOUT, receiver).await;
        self.forget(id);
        match outcome {
            Ok(Ok(None)) => Ok(()),
            // 4xx: this message is refused (not a member, too large...); others pass.
            Ok(Ok(Some(code))) if code.starts_with('4') && code != "408" && code != "429" => Err(
                WhatsAppError::Rejected(format!("WhatsApp refused it (error {code})")),
            ),
            Ok(Ok(Some(code))) => Err(WhatsAppError::Transient(format!(
                "WhatsApp did not take the message (error {code})"
            ))),
            Ok(Err(_)) => Err(WhatsAppError::NotConnected),
            Err(_) => Err(WhatsAppError::Transient(
                "no answer from WhatsApp for a sent message".to_owned(),
            )),
        }
    }
}

/// A bounded set of the most recent ids, oldest evicted first.
#[derive(Default)]
struct RecentIds {
    order: VecDeque<String>,
    ids: HashSet<String>,
}

impl RecentIds {
    fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    fn insert(&mut self, id: &str) {
        if !self.ids.insert(id.to_owned()) {
            return;
        }
        self.order.push_back(id.to_owned());
        if self.order.len() > RECENT_SENT_IDS {
            if let Some(oldest) = self.order.pop_front() {
                self.ids.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn vcards_give_their_phone_numbers() {
        let vcard = "BEGIN:VCARD\nVERSION:3.0\nFN:Marie\nTEL;type=CELL;waid=33612345678:+33 6 12 34 56 78\ntel:0102030405\nEND:VCARD";
        assert_eq!(
            super::vcard_phones(vcard),
            vec!["+33 6 12 34 56 78".to_string(), "0102030405".to_string()]
        );
        assert!(super::vcard_phones("garbage").is_empty());
    }

    #[test]
    fn only_protocol_fields_are_plumbing() {
        use whatsapp_rust::waproto::buffa::MessageField;
        use whatsapp_rust::waproto::whatsapp as wa;
        let keys = wa::Message {
            sender_key_distribution_message: MessageField::some(Default::default()),
            message_context_info: MessageField::some(wa::MessageContextInfo {
                message_secret: Some(vec![7; 32]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(super::carries_only_plumbing(&keys));
        assert!(super::carries_only_plumbing(&wa::Message::default()));
        // The first message of a member to a group carries its sender key too.
        let event_with_keys = wa::Message {
            event_message: MessageField::some(wa::message::EventMessage {
                name: Some("Pique-nique".into()),
                ..Default::default()
            }),
            ..keys
        };
        assert!(!super::carries_only_plumbing(&event_with_keys));
        assert_eq!(
            super::message_kind(&event_with_keys),
            "sender key distribution"
        );
    }
}
