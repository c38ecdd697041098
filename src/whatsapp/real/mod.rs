//! The real WhatsApp side: runs the whatsapp-rust client for the linked device and
//! translates between it and the adapter boundary of [`super`]. This file holds its
//! lifecycle (start, shutdown) and the dispatch of whatsapp-rust's events; incoming
//! messages are read in `inbound.rs` (and reach the [`InboundSink`] before WhatsApp is
//! acknowledged, so nothing is lost on a crash or a failed write), what is sent and
//! asked is built in `outbound.rs`, and server acks are awaited in `acks.rs`. Nothing
//! else of whatsapp-rust leaks out of this folder.

mod acks;
mod inbound;
mod outbound;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use whatsapp_rust::bot::{Bot, BotBuilderError, BotHandle};
use whatsapp_rust::client::Client;
use whatsapp_rust::store::error::StoreError;
use whatsapp_rust::store::traits::DeviceStore as _;
use whatsapp_rust::types::events::{Event, EventHandler, EventInterest, EventKind, InboundMessage};
use whatsapp_rust::Server;

use super::store::SqliteBackend;
use super::{ConnectionState, GroupChange, InboundSink, WhatsAppError};
use acks::{RecentIds, ServerAcks};
use inbound::{
    deliver, group_call, group_text, mark_admin_deletion, member_change, polls_if_bridged,
    setting_change, SinkHook,
};
use outbound::GroupRules;
use whatsapp_rust::wacore::stanza::groups::GroupNotificationAction;

/// WhatsApp Web version announced to the server: the one whatsapp-rust 0.7.0 ships as
/// its device default. Fixed so that the client never fetches it from WhatsApp Web.
pub(super) const WHATSAPP_WEB_VERSION: (u32, u32, u32) = (2, 3000, 1_042_742_319);

/// Push name of the linked device (shown to the phone in "Linked devices").
pub(super) const PUSH_NAME: &str = "passerelle";

/// How long `shutdown` waits for the client to flush and stop before aborting it.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

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
                rules: rules.clone(),
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
}

/// The store holding the device identity and Signal keys.
/// The device identity and Signal keys: `whatsapp.db` in the state directory (0600).
fn open_backend(state_dir: &Path) -> Result<Arc<SqliteBackend>, RealError> {
    let backend =
        SqliteBackend::open(&state_dir.join("whatsapp.db")).map_err(RealError::KeyStore)?;
    Ok(Arc::new(backend))
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
        let rules = self.rules.clone();
        runtime.spawn(async move {
            let mut texts = Vec::with_capacity(inbound.len());
            for message in &inbound {
                let polls = polls_if_bridged(sink.as_ref(), &polls, message);
                if let Some(mut text) = group_text(&client, polls, message).await {
                    mark_admin_deletion(&client, &rules, message, &mut text).await;
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
