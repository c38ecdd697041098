//! Wiring: loads the configuration, connects both sides, runs the two outbox workers,
//! and applies reloads (SIGHUP) and shutdown. The bridge decides nothing itself: it
//! asks `relay` and moves messages through the store.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::config::{self, Config, GroupFile, Problems, ReactionsToWhatsApp};
use crate::control::{self, ControlError, ControlHandler};
use crate::matrix::{MatrixEvents, MatrixSide, RoomSetup};
use crate::metrics;
use crate::relay::pacing::{Pacer, Wait};
use crate::relay::{
    self, MatrixChange, MatrixPost, MatrixText, Mention, PollVoter, Relay, Shared, Skip,
    WhatsAppChange, WhatsAppPost, WhatsAppText,
};
use crate::secret_file;
use crate::status;
use crate::store::{
    Digest, DigestEntry, Direction, MessageLink, NewOutboxItem, OutboxItem, PollVote, Store,
};
use crate::whatsapp::fake::FakeNetwork;
use crate::whatsapp::real::{RealOptions, RealWhatsApp};
use crate::whatsapp::{
    ConnectionState, GroupChange, InboundSink, Outgoing, Quoted, SinkError, WhatsAppClient,
    WhatsAppError,
};

/// How long WhatsApp lets a sender edit a message.
const WHATSAPP_EDIT_WINDOW_SECS: i64 = 15 * 60;
/// How long WhatsApp lets a sender delete a message for everyone (about 2.5 days).
const WHATSAPP_REVOKE_WINDOW_SECS: i64 = 60 * 3600;

/// Prefix of the link of a Matrix reaction relayed as the number's reaction:
/// `mx-reaction:<target WhatsApp id>:<reaction id>`.
const MATRIX_REACTION_LINK: &str = "mx-reaction:";

/// Prefix of the link a Matrix reaction counted in a digest gets, followed by the
/// WhatsApp message it reacts to and the outbox item's id.
const MATRIX_DIGEST_LINK: &str = "mx-digest:";

/// Prefix of the links of the bot's reactions standing for WhatsApp reactions
/// (followed by the WhatsApp message and the emoji), and of the digest keeping who
/// reacts how (followed by the message).
const WHATSAPP_ANNOTATIONS: &str = "wa-annotation:";

/// Longest wait between two retries of one outbox item.
const MAX_RETRY_DELAY_MS: i64 = 60_000;
/// How often groups whose room could not be set up are tried again.
const ROOM_SETUP_RETRY: Duration = Duration::from_secs(30);

/// Why the service could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Config(#[from] Problems),
    #[error("state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Matrix(#[from] crate::matrix::MatrixError),
    #[error("WhatsApp: {0}")]
    WhatsApp(String),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Which WhatsApp network the service talks to.
pub enum WhatsAppNetwork {
    /// whatsapp-rust, the real protocol (production).
    Real,
    /// The in-process fake network (tests of the core).
    Fake(Arc<FakeNetwork>),
}

/// The configuration in force: swapped as a whole on a valid reload.
struct Active {
    config: Config,
    relay: Relay,
    /// Approved groups by WhatsApp jid.
    groups: HashMap<String, GroupFile>,
}

impl Active {
    fn new(config: Config, groups: Vec<GroupFile>) -> Self {
        let relay = Relay::new(
            config.matrix.user.clone(),
            config.templates.clone(),
            config.relay,
        );
        let groups = groups
            .into_iter()
            .map(|group| (group.whatsapp.clone(), group))
            .collect();
        Active {
            config,
            relay,
            groups,
        }
    }
}

/// What a reload changed, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadOutcome {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

struct Bridge {
    config_path: PathBuf,
    store: Arc<Store>,
    matrix: MatrixSide,
    whatsapp: OnceLock<Arc<dyn WhatsAppClient>>,
    active: RwLock<Arc<Active>>,
    wake_to_matrix: Notify,
    wake_to_whatsapp: Notify,
    /// Groups whose room is set up (by jid), so relaying can start.
    rooms_ready: Mutex<HashSet<String>>,
    /// (room, user) pairs already told they may not speak, to tell each only once.
    refused_senders: Mutex<HashSet<(String, String)>>,
    pacer: Mutex<Pacer>,
    /// A weak handle on itself, for tasks spawned from `&self` callbacks.
    me: OnceLock<std::sync::Weak<Bridge>>,
}

/// A running passerelle.
pub struct Service {
    bridge: Arc<Bridge>,
    control_socket: PathBuf,
    tasks: Vec<JoinHandle<()>>,
    real_whatsapp: Option<Arc<RealWhatsApp>>,
    fake_whatsapp: Option<Arc<FakeNetwork>>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Service {
    /// Loads the configuration, connects to Matrix and WhatsApp and starts relaying.
    pub async fn start(
        config_path: &Path,
        network: WhatsAppNetwork,
    ) -> Result<Service, ServiceError> {
        let (config, groups) = config::load_all(config_path)?;
        let state_dir = config.paths.state_dir.clone();
        secret_file::create_private_dir(&state_dir).map_err(|source| ServiceError::StateDir {
            path: state_dir.clone(),
            source,
        })?;
        // Before anything connects: a second service on this state directory would
        // replace the first one's WhatsApp connection.
        let control_listener = control::bind(&state_dir)?;
        let metrics_listener = match config.metrics.listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServiceError::Metrics { addr, source })?,
            ),
            None => None,
        };
        let store = Arc::new(Store::open(&state_dir.join("passerelle.db"))?);
        store.delete_meta(status::keys::STOPPED)?;
        let pacer = Pacer::new(
            config.whatsapp.messages_per_minute,
            config.whatsapp.burst,
            now_ms(),
        );
        let matrix = MatrixSide::connect(&config.matrix, &state_dir, store.clone()).await?;
        let bridge = Arc::new(Bridge {
            config_path: config_path.to_path_buf(),
            store,
            matrix,
            whatsapp: OnceLock::new(),
            active: RwLock::new(Arc::new(Active::new(config, groups))),
            wake_to_matrix: Notify::new(),
            wake_to_whatsapp: Notify::new(),
            rooms_ready: Mutex::new(HashSet::new()),
            refused_senders: Mutex::new(HashSet::new()),
            pacer: Mutex::new(pacer),
            me: OnceLock::new(),
        });
        let _ = bridge.me.set(Arc::downgrade(&bridge));

        let sink: Arc<dyn InboundSink> = bridge.clone();
        let (client, real_whatsapp, fake_whatsapp) = match network {
            WhatsAppNetwork::Fake(network) => {
                let client = network.client();
                (client, None, Some(network))
            }
            WhatsAppNetwork::Real => {
                let options = RealOptions {
                    url: bridge.active().config.whatsapp.url.clone(),
                    state_dir: state_dir.clone(),
                };
                let real = RealWhatsApp::start(options, sink.clone())
                    .await
                    .map_err(|e| ServiceError::WhatsApp(e.to_string()))?;
                let client: Arc<dyn WhatsAppClient> = real.clone();
                (client, Some(real), None)
            }
        };
        let _ = bridge.whatsapp.set(client);

        // First start: learn the rooms' current state without relaying their history.
        if bridge.store.get_meta("matrix.synced")?.is_none() {
            bridge.matrix.initial_sync().await?;
            bridge.store.set_meta("matrix.synced", "1")?;
        }
        let groups: Vec<GroupFile> = bridge.active().groups.values().cloned().collect();
        for group in &groups {
            bridge.setup_group(group).await;
        }

        let events: Arc<dyn MatrixEvents> = bridge.clone();
        let mut tasks = vec![bridge.matrix.start_sync(events)];
        tasks.push(tokio::spawn(bridge.clone().to_matrix_worker()));
        tasks.push(tokio::spawn(bridge.clone().to_whatsapp_worker()));
        tasks.push(tokio::spawn(bridge.clone().room_setup_retries()));
        tasks.push(tokio::spawn(bridge.clone().heartbeat()));
        tasks.push(tokio::spawn(bridge.clone().forget_old_daily()));
        let handler: Arc<dyn ControlHandler> = bridge.clone();
        tasks.push(tokio::spawn(control::serve(control_listener, handler)));
        if let Some(listener) = metrics_listener {
            let source: Arc<dyn metrics::FigureSource> = bridge.clone();
            tasks.push(tokio::spawn(metrics::serve(listener, source)));
        }
        if let Some(network) = &fake_whatsapp {
            network.attach(sink);
        }
        tracing::info!(groups = groups.len(), "passerelle started");
        Ok(Service {
            bridge,
            control_socket: control::socket_path(&state_dir),
            tasks,
            real_whatsapp,
            fake_whatsapp,
        })
    }

    /// Re-reads config.toml and groups.d. On any problem the running configuration
    /// stays exactly as it was and the problems are returned (and logged).
    pub async fn reload(&self) -> Result<ReloadOutcome, Problems> {
        self.bridge.reload().await
    }

    /// The Matrix room bridged to a group, once set up.
    pub fn room_for_group(&self, group_jid: &str) -> Option<String> {
        self.bridge.store.room_for_group(group_jid).ok().flatten()
    }

    /// Messages waiting in each outbox: (to Matrix, to WhatsApp).
    pub fn pending(&self) -> (u64, u64) {
        let count = |direction| {
            self.bridge
                .store
                .queue_stats(direction)
                .map(|(count, _)| count)
                .unwrap_or(0)
        };
        (count(Direction::ToMatrix), count(Direction::ToWhatsApp))
    }

    /// Stops relaying; what is queued stays queued for the next start.
    pub async fn shutdown(self) {
        if let Some(network) = &self.fake_whatsapp {
            network.detach();
        }
        if let Some(real) = &self.real_whatsapp {
            real.shutdown().await;
        }
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
        self.bridge.matrix.stop();
        if let Err(error) = std::fs::remove_file(&self.control_socket) {
            tracing::debug!("control socket: {error}");
        }
        let now = (now_ms() / 1000).to_string();
        if let Err(error) = self.bridge.store.set_meta(status::keys::STOPPED, &now) {
            tracing::warn!("store: {error}");
        }
    }

    /// Runs until SIGTERM or SIGINT; SIGHUP reloads. `signals` are installed before
    /// the service starts, so a reload requested during start-up is applied after it
    /// rather than killing the process (SIGHUP's default action).
    pub async fn run_until_signalled(self, mut signals: Signals) {
        loop {
            tokio::select! {
                _ = signals.hangup.recv() => {
                    tracing::info!("SIGHUP: reloading configuration");
                    let _ = self.reload().await;
                }
                _ = signals.terminate.recv() => break,
                _ = signals.interrupt.recv() => break,
            }
        }
        tracing::info!("stopping");
        self.shutdown().await;
    }
}

/// The signals the service obeys, installed early (see `run_until_signalled`).
pub struct Signals {
    hangup: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            hangup: signal(SignalKind::hangup())?,
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }
}

impl Bridge {
    fn active(&self) -> Arc<Active> {
        self.active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn whatsapp(&self) -> Option<&Arc<dyn WhatsAppClient>> {
        self.whatsapp.get()
    }

    /// Finds or creates the room of a group and remembers it. Failures are logged and
    /// retried by `room_setup_retries`.
    async fn setup_group(&self, group: &GroupFile) {
        let known_room = match self.store.room_for_group(&group.whatsapp) {
            Ok(room) => room,
            Err(error) => {
                tracing::error!(group = %group.name, "store: {error}");
                return;
            }
        };
        let name = match (&known_room, self.whatsapp()) {
            (None, Some(client)) => client
                .group_subject(&group.whatsapp)
                .await
                .unwrap_or_else(|_| group.name.clone()),
            _ => group.name.clone(),
        };
        let active = self.active();
        let setup = RoomSetup {
            group_jid: group.whatsapp.clone(),
            alias_localpart: format!("{}{}", active.config.matrix.alias_prefix, group.name),
            name,
            invite: group.invite.clone(),
            admins: active.config.matrix.admins.clone(),
            existing: group.room.clone(),
            known_room,
        };
        match self.matrix.ensure_room(&setup).await {
            Ok(room_id) => {
                if let Err(error) = self.store.set_group_room(&group.whatsapp, room_id.as_str()) {
                    tracing::error!(group = %group.name, "store: {error}");
                    return;
                }
                self.rooms_ready
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(group.whatsapp.clone());
                tracing::info!(group = %group.name, room = %room_id, "group bridged");
                if group.room.is_none() {
                    self.sync_avatar(group, room_id.as_str()).await;
                }
                self.wake_to_matrix.notify_one();
            }
            Err(error) => {
                tracing::warn!(group = %group.name, "room setup failed, will retry: {error}");
                self.note_error(&format!(
                    "room of group {} could not be set up: {error}",
                    group.name
                ));
            }
        }
    }

    /// Names each created room after its WhatsApp group's subject. Rooms named in a
    /// group file (`room = ...`) belong to their owners and are left as they are.
    async fn sync_room_names(&self) {
        let Some(client) = self.whatsapp() else {
            return;
        };
        let groups: Vec<GroupFile> = self.active().groups.values().cloned().collect();
        for group in groups.iter().filter(|group| group.room.is_none()) {
            let Ok(Some(room_id)) = self.store.room_for_group(&group.whatsapp) else {
                continue;
            };
            match client.group_subject(&group.whatsapp).await {
                Ok(subject) => {
                    tracing::debug!(group = %group.name, "naming the room after the group");
                    if let Err(error) = self.matrix.set_room_name(&room_id, &subject).await {
                        tracing::warn!(group = %group.name, "could not rename the room: {error}");
                    }
                }
                Err(error) => {
                    tracing::debug!(group = %group.name, "no subject: {error}");
                }
            }
            self.sync_avatar(group, &room_id).await;
        }
    }

    /// Gives a created room its group's picture as avatar, when the picture changed
    /// since the bridge last set it (WhatsApp's picture id, kept in the store, tells).
    async fn sync_avatar(&self, group: &GroupFile, room_id: &str) {
        let Some(client) = self.whatsapp() else {
            return;
        };
        let picture = match client.group_picture(&group.whatsapp).await {
            Ok(picture) => picture,
            Err(error) => {
                tracing::debug!(group = %group.name, "group picture not read: {error}");
                return;
            }
        };
        let key = format!("group_picture:{}", group.whatsapp);
        let known = self.store.get_meta(&key).ok().flatten();
        let current = picture.as_ref().map(|picture| picture.id.clone());
        if known == current {
            return;
        }
        let image = picture.map(|picture| picture.data);
        if let Err(error) = self.matrix.set_room_avatar(room_id, image).await {
            tracing::warn!(group = %group.name, "could not set the room avatar: {error}");
            return;
        }
        let stored = match &current {
            Some(id) => self.store.set_meta(&key, id),
            None => self.store.delete_meta(&key).map(|_| ()),
        };
        if let Err(error) = stored {
            tracing::warn!("store: {error}");
        }
        tracing::debug!(group = %group.name, "room avatar follows the group picture");
    }

    /// Tells `passerelle status` the service is alive.
    async fn heartbeat(self: Arc<Self>) {
        loop {
            let now = (now_ms() / 1000).to_string();
            if let Err(error) = self.store.set_meta(status::keys::HEARTBEAT, &now) {
                tracing::warn!("store: {error}");
            }
            tokio::time::sleep(Duration::from_secs(status::HEARTBEAT_SECS)).await;
        }
    }

    /// Forgets what is older than `[relay] remember_days`, at start and then once a
    /// day (the setting as last reloaded).
    async fn forget_old_daily(self: Arc<Self>) {
        loop {
            self.forget_old().await;
            tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
        }
    }

    async fn forget_old(&self) {
        let days = self.active().config.relay.remember_days;
        if days == 0 {
            return;
        }
        let cutoff = now_ms() / 1000 - i64::from(days) * 24 * 3600;
        match self.store.forget_before(cutoff, WHATSAPP_ANNOTATIONS) {
            Ok(forgotten) => tracing::info!(
                days,
                links = forgotten.links,
                names = forgotten.names,
                poll_votes = forgotten.poll_votes,
                digests = forgotten.digests,
                "forgot what is older than the retention period"
            ),
            Err(error) => tracing::warn!("store: could not forget old links: {error}"),
        }
        if let Some(client) = self.whatsapp() {
            match client.forget_before(cutoff).await {
                Ok(polls) => tracing::info!(polls, "forgot polls older than the retention period"),
                Err(error) => tracing::warn!("could not forget old polls: {error}"),
            }
        }
    }

    /// Remembers an error for `passerelle status` (no message content, no numbers).
    fn note_error(&self, text: &str) {
        let value = format!("{}|{text}", now_ms() / 1000);
        if let Err(error) = self.store.set_meta(status::keys::LAST_ERROR, &value) {
            tracing::warn!("store: {error}");
        }
    }

    async fn room_setup_retries(self: Arc<Self>) {
        loop {
            tokio::time::sleep(ROOM_SETUP_RETRY).await;
            let pending: Vec<GroupFile> = {
                let ready = self
                    .rooms_ready
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                self.active()
                    .groups
                    .values()
                    .filter(|group| !ready.contains(&group.whatsapp))
                    .cloned()
                    .collect()
            };
            for group in pending {
                self.setup_group(&group).await;
            }
        }
    }

    async fn reload(&self) -> Result<ReloadOutcome, Problems> {
        let (config, groups) = match config::load_all(&self.config_path) {
            Ok(loaded) => loaded,
            Err(problems) => {
                for problem in &problems.0 {
                    tracing::error!("reload refused: {problem}");
                }
                tracing::error!("reload refused: the running configuration is unchanged");
                return Err(problems);
            }
        };
        let old = self.active();
        if config.matrix.homeserver != old.config.matrix.homeserver
            || config.matrix.user != old.config.matrix.user
            || config.paths.state_dir != old.config.paths.state_dir
            || config.whatsapp.url != old.config.whatsapp.url
        {
            tracing::warn!(
                "homeserver, bot user, state directory and WhatsApp URL apply on restart only"
            );
        }
        let new = Arc::new(Active::new(config, groups));
        let mut outcome = ReloadOutcome::default();
        for (jid, group) in &old.groups {
            match new.groups.get(jid) {
                None => outcome.removed.push(group.name.clone()),
                Some(new_group) if new_group != group => {
                    outcome.changed.push(new_group.name.clone())
                }
                Some(_) => {}
            }
        }
        for (jid, group) in &new.groups {
            if !old.groups.contains_key(jid) {
                outcome.added.push(group.name.clone());
            }
        }
        *self.active.write().unwrap_or_else(|e| e.into_inner()) = new.clone();
        self.pacer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reconfigure(
                new.config.whatsapp.messages_per_minute,
                new.config.whatsapp.burst,
            );

        for (jid, group) in &old.groups {
            if new.groups.contains_key(jid) {
                continue;
            }
            self.rooms_ready
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(jid);
            if let Ok(Some(room)) = self.store.room_for_group(jid) {
                let notice = "This room is no longer bridged to WhatsApp: its group file was removed by the administrator.";
                if let Err(error) = self.matrix.send_notice(&room, notice).await {
                    tracing::warn!(group = %group.name, "could not post the unbridge notice: {error}");
                }
            }
        }
        for (jid, group) in &new.groups {
            match old.groups.get(jid) {
                None => self.setup_group(group).await,
                Some(old_group) => {
                    let newly_invited: Vec<String> = group
                        .invite
                        .iter()
                        .filter(|user| !old_group.invite.contains(user))
                        .cloned()
                        .collect();
                    if !newly_invited.is_empty() {
                        if let Ok(Some(room)) = self.store.room_for_group(jid) {
                            self.matrix.invite(&room, &newly_invited).await;
                        }
                    }
                    if old_group.room != group.room {
                        tracing::warn!(group = %group.name, "a changed `room` applies to new groups only; the existing room is kept");
                    }
                }
            }
        }
        tracing::info!(
            added = outcome.added.len(),
            removed = outcome.removed.len(),
            changed = outcome.changed.len(),
            "configuration reloaded"
        );
        Ok(outcome)
    }

    fn group_for_room(&self, room_id: &str) -> Option<GroupFile> {
        let jid = self.store.group_for_room(room_id).ok().flatten()?;
        let ready = self
            .rooms_ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&jid);
        if !ready {
            return None;
        }
        self.active().groups.get(&jid).cloned()
    }

    async fn to_matrix_worker(self: Arc<Self>) {
        loop {
            match self.store.next_due(Direction::ToMatrix, now_ms()) {
                Ok(Some(item)) => self.deliver_to_matrix(item).await,
                Ok(None) => self.wait_for_work(Direction::ToMatrix).await,
                Err(error) => {
                    tracing::error!("store: {error}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn to_whatsapp_worker(self: Arc<Self>) {
        loop {
            match self.store.next_due(Direction::ToWhatsApp, now_ms()) {
                Ok(Some(item)) => self.deliver_to_whatsapp(item).await,
                Ok(None) => self.wait_for_work(Direction::ToWhatsApp).await,
                Err(error) => {
                    tracing::error!("store: {error}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Sleeps until woken by a new item or until the earliest retry is due.
    async fn wait_for_work(&self, direction: Direction) {
        let notify = match direction {
            Direction::ToMatrix => &self.wake_to_matrix,
            Direction::ToWhatsApp => &self.wake_to_whatsapp,
        };
        let wait = match self.store.earliest_due(direction) {
            Ok(Some(due)) => Duration::from_millis((due - now_ms()).clamp(10, 60_000) as u64),
            _ => Duration::from_secs(60),
        };
        let _ = tokio::time::timeout(wait, notify.notified()).await;
    }

    fn retry(&self, item: &OutboxItem, error: &str) {
        let delay = (1000i64 << item.attempts.min(6)).min(MAX_RETRY_DELAY_MS);
        if let Err(store_error) = self.store.retry_later(item.seq, error, now_ms() + delay) {
            tracing::error!("store: {store_error}");
        }
    }

    async fn deliver_to_matrix(&self, item: OutboxItem) {
        let room_id = if item.room_id.is_empty() {
            self.store.room_for_group(&item.group_jid).ok().flatten()
        } else {
            Some(item.room_id.clone())
        };
        let Some(room_id) = room_id else {
            self.retry(&item, "room not set up yet");
            return;
        };
        let post: MatrixPost = match serde_json::from_str(&item.payload) {
            Ok(post) => post,
            Err(error) => {
                tracing::error!(seq = item.seq, "unreadable outbox item discarded: {error}");
                let _ = self.store.discard(item.seq, "unreadable payload");
                return;
            }
        };
        let Some((post, file)) = self.fetch_whatsapp_file(&item, post).await else {
            return;
        };
        match self.send_to_matrix(&item, &room_id, post, file).await {
            Ok(Some((wa_id, event_id, sender))) => {
                let link = MessageLink {
                    group_jid: item.group_jid.clone(),
                    wa_id,
                    room_id,
                    event_id,
                    origin: Direction::ToMatrix,
                    created_at: now_ms() / 1000,
                    sender,
                };
                self.finish(&item, Some(&link));
            }
            Ok(None) => self.finish(&item, None),
            Err(error) if error.is_retryable() => {
                tracing::warn!(
                    seq = item.seq,
                    attempts = item.attempts,
                    "Matrix send failed, will retry: {error}"
                );
                self.retry(&item, &error.to_string());
            }
            Err(error) => {
                tracing::error!(seq = item.seq, "Matrix refused a relayed message: {error}");
                self.note_error(&format!("Matrix refused a relayed message: {error}"));
                let _ = self.store.discard(item.seq, &error.to_string());
                let _ = self
                    .matrix
                    .send_notice(
                        &room_id,
                        "A WhatsApp message could not be posted here (refused by the homeserver).",
                    )
                    .await;
            }
        }
    }

    /// The bytes of a WhatsApp post's file, fetched from WhatsApp. `None` when the
    /// item must wait (WhatsApp away: a retry is scheduled). A file that cannot be
    /// had, or turns out larger than announced and over the limit, becomes a notice
    /// in the post's place: said, never dropped.
    async fn fetch_whatsapp_file(
        &self,
        item: &OutboxItem,
        mut post: MatrixPost,
    ) -> Option<(MatrixPost, Option<Vec<u8>>)> {
        let Some(media) = post.media.clone().filter(|_| post.change.is_none()) else {
            return Some((post, None));
        };
        let Some(client) = self.whatsapp() else {
            self.retry(item, "WhatsApp not started");
            return None;
        };
        let limit = self.active().config.relay.max_file_bytes;
        let (body, html) = match client.download(&media).await {
            Ok(data) if (data.len() as u64) <= limit => return Some((post, Some(data))),
            Ok(data) => self.active().relay.whatsapp_file_too_large(
                &media,
                &post.sender_name,
                "WhatsApp",
                data.len() as u64,
            ),
            Err(error) if error.is_retryable() => {
                tracing::warn!(
                    seq = item.seq,
                    attempts = item.attempts,
                    "WhatsApp media download failed, will retry: {error}"
                );
                self.retry(item, &error.to_string());
                return None;
            }
            Err(error) => {
                tracing::warn!(seq = item.seq, "WhatsApp media unavailable: {error}");
                let body = format!(
                    "{} sent {} that could not be fetched from WhatsApp: see it there.",
                    post.sender_name,
                    media.kind.with_article()
                );
                let html = format!("<em>{}</em>", crate::relay::format::escape_html(&body));
                (body, html)
            }
        };
        post.body = body;
        post.html = html;
        post.media = None;
        Some((post, None))
    }

    /// The Matrix event mirroring WhatsApp message `wa_id` of the item's group.
    fn mirrored_event(&self, item: &OutboxItem, wa_id: &str) -> Option<String> {
        match self.store.event_for_wa(&item.group_jid, wa_id) {
            Ok(event) => event,
            Err(error) => {
                tracing::error!("store: {error}");
                None
            }
        }
    }

    /// Sends one WhatsApp post to Matrix. Returns what to link (WhatsApp id, Matrix
    /// event, author), or `None` when there is nothing to link (a deletion or
    /// reaction about a message the bridge never mirrored).
    async fn send_to_matrix(
        &self,
        item: &OutboxItem,
        room_id: &str,
        post: MatrixPost,
        file: Option<Vec<u8>>,
    ) -> Result<Option<(String, String, String)>, crate::matrix::MatrixError> {
        let txn = item.target_id.as_str();
        let linked =
            |event_id: String| Some((item.source_id.clone(), event_id, post.sender.clone()));
        match &post.change {
            None => {
                let reply_event = post
                    .reply_to
                    .as_deref()
                    .and_then(|id| self.mirrored_event(item, id));
                let shown = match (&post.reply_to, &reply_event, &post.quoted) {
                    // Replying to a message the bridge never saw: quote what WhatsApp
                    // quoted, so the reply still reads as one.
                    (Some(_), None, Some(quoted)) => with_quote(&post, quoted),
                    _ => post.clone(),
                };
                let event_id = match (&post.media, file) {
                    (Some(media), Some(data)) => {
                        self.matrix
                            .send_media(room_id, txn, &shown, media, data, reply_event.as_deref())
                            .await?
                    }
                    _ => {
                        self.matrix
                            .send_post(room_id, txn, &shown, reply_event.as_deref())
                            .await?
                    }
                };
                Ok(linked(event_id))
            }
            Some(MatrixChange::Edit { of }) => match self.mirrored_event(item, of) {
                Some(original) => {
                    let event_id = self
                        .matrix
                        .edit_post(room_id, txn, &original, &post)
                        .await?;
                    Ok(linked(event_id))
                }
                // The original never crossed: the new text is still worth reading.
                None => {
                    let event_id = self.matrix.send_post(room_id, txn, &post, None).await?;
                    Ok(linked(event_id))
                }
            },
            Some(MatrixChange::Redact { of }) => match self.mirrored_event(item, of) {
                Some(original) => {
                    let event_id = self.matrix.redact(room_id, txn, &original).await?;
                    Ok(linked(event_id))
                }
                None => Ok(None),
            },
            Some(MatrixChange::Annotation { to, reactor, emoji }) => {
                self.annotate(item, room_id, to, reactor, emoji).await?;
                Ok(None)
            }
            Some(MatrixChange::ReplyLine { to, key, removed }) => {
                match (self.mirrored_event(item, key), removed) {
                    (Some(line), true) => {
                        self.matrix.redact(room_id, txn, &line).await?;
                        if let Err(error) = self.store.forget_link(&item.group_jid, key) {
                            tracing::error!("store: {error}");
                        }
                        Ok(None)
                    }
                    (Some(line), false) => {
                        self.matrix.edit_post(room_id, txn, &line, &post).await?;
                        Ok(None)
                    }
                    (None, true) => Ok(None),
                    (None, false) => match self.mirrored_event(item, to) {
                        Some(target) => {
                            let event_id = self
                                .matrix
                                .send_post(room_id, txn, &post, Some(&target))
                                .await?;
                            Ok(Some((key.clone(), event_id, post.sender.clone())))
                        }
                        // A reaction to something never mirrored has no context.
                        None => Ok(None),
                    },
                }
            }
        }
    }

    /// Reactions shown as the bot's own (`reactions_to_matrix = "reaction"`):
    /// `reactor` now reacts `emoji` (empty: no longer) to WhatsApp message `to`. The
    /// bot reacts once per emoji while anyone still reacts so, and takes its reaction
    /// back when nobody does. Who reacts how is kept like a digest; it is saved
    /// after the sends, so a retry decides the same (and the transaction ids make
    /// the sends idempotent).
    async fn annotate(
        &self,
        item: &OutboxItem,
        room_id: &str,
        to: &str,
        reactor: &str,
        emoji: &str,
    ) -> Result<(), crate::matrix::MatrixError> {
        let Some(target_event) = self.mirrored_event(item, to) else {
            return Ok(()); // never mirrored: nothing to react to
        };
        let digest_key = format!("{WHATSAPP_ANNOTATIONS}{to}");
        let store_error =
            |error: crate::store::StoreError| crate::matrix::MatrixError::Store(error.to_string());
        let mut digest = self
            .store
            .digest(&item.group_jid, &digest_key)
            .map_err(store_error)?;
        let before = digest
            .entries
            .iter()
            .find(|entry| entry.user == reactor)
            .map(|entry| entry.emoji.clone());
        digest.entries.retain(|entry| entry.user != reactor);
        if !emoji.is_empty() {
            digest.entries.push(DigestEntry {
                reaction_event: item.source_id.clone(),
                user: reactor.to_owned(),
                emoji: emoji.to_owned(),
            });
        }
        let link_of = |emoji: &str| format!("{WHATSAPP_ANNOTATIONS}{to}:{emoji}");
        if let Some(before) = before.filter(|before| before != emoji) {
            if !digest.entries.iter().any(|entry| entry.emoji == before) {
                if let Some(annotation) = self.mirrored_event(item, &link_of(&before)) {
                    let txn = format!("{}.undo", item.target_id);
                    self.matrix.redact(room_id, &txn, &annotation).await?;
                    if let Err(error) = self.store.forget_link(&item.group_jid, &link_of(&before)) {
                        tracing::error!("store: {error}");
                    }
                }
            }
        }
        if !emoji.is_empty() && self.mirrored_event(item, &link_of(emoji)).is_none() {
            let annotation = self
                .matrix
                .annotate(room_id, &item.target_id, &target_event, emoji)
                .await?;
            let link = MessageLink {
                group_jid: item.group_jid.clone(),
                wa_id: link_of(emoji),
                room_id: room_id.to_owned(),
                event_id: annotation,
                origin: Direction::ToMatrix,
                created_at: now_ms() / 1000,
                sender: String::new(),
            };
            if let Err(error) = self.store.record_link(&link) {
                tracing::error!("store: {error}");
            }
        }
        self.store
            .save_digest(&item.group_jid, &digest_key, &digest)
            .map_err(store_error)
    }

    async fn deliver_to_whatsapp(&self, item: OutboxItem) {
        let Some(client) = self.whatsapp() else {
            self.retry(&item, "WhatsApp not started");
            return;
        };
        let post: WhatsAppPost = match serde_json::from_str(&item.payload) {
            Ok(post) => post,
            Err(error) => {
                tracing::error!(seq = item.seq, "unreadable outbox item discarded: {error}");
                let _ = self.store.discard(item.seq, "unreadable payload");
                return;
            }
        };
        let outgoing = match self.outgoing_for(&item, &post).await {
            Ok(outgoing) => outgoing,
            Err(refusal) => {
                self.finish(&item, None);
                if let Some(text) = refusal {
                    let _ = self.matrix.send_notice(&item.room_id, &text).await;
                }
                return;
            }
        };
        let Some(outgoing) = self.attach_matrix_file(&item, &post, outgoing).await else {
            return;
        };
        let outgoing = match (&post.location, &post.poll, outgoing) {
            (Some(location), _, Outgoing::Text { .. }) => Outgoing::Location {
                location: location.clone(),
            },
            (_, Some(poll), Outgoing::Text { .. }) => Outgoing::Poll {
                question: poll.question.clone(),
                options: poll.options.clone(),
                max_selections: poll.max_selections,
            },
            (_, _, outgoing) => outgoing,
        };
        let group_rate = self
            .active()
            .groups
            .get(&item.group_jid)
            .and_then(|group| group.messages_per_minute);
        let paced = self
            .pacer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_send(&item.group_jid, group_rate, now_ms());
        match paced {
            Ok(()) => {}
            Err(Wait::Overall(ms)) => {
                tokio::time::sleep(Duration::from_millis(ms.clamp(1, 60_000) as u64)).await;
                return;
            }
            Err(Wait::Group(ms)) => {
                // Other groups may go ahead meanwhile; this one keeps its order.
                if let Err(error) = self.store.postpone(item.seq, now_ms() + ms) {
                    tracing::error!("store: {error}");
                }
                return;
            }
        }
        // Kinds WhatsApp shows without a caption: the sender's line goes first, under
        // an id of its own derived from the event (a retry sends it once).
        if matches!(
            outgoing,
            Outgoing::Media { caption: None, .. }
                | Outgoing::Location { .. }
                | Outgoing::Poll { .. }
        ) {
            let line = Outgoing::Text {
                text: post.text.clone(),
                reply_to: None,
                mentions: Vec::new(),
            };
            let line_id = relay::whatsapp_id_for_event(&format!("{}#sender", item.source_id));
            if let Err(error) = client.send(&item.group_jid, &line_id, &line).await {
                tracing::warn!(seq = item.seq, "WhatsApp send failed, will retry: {error}");
                self.retry(&item, &error.to_string());
                return;
            }
        }
        match client
            .send(&item.group_jid, &item.target_id, &outgoing)
            .await
        {
            Ok(()) => {
                // A reaction is found again by its target when it is removed.
                let wa_id = match (&outgoing, &post.change) {
                    (Outgoing::React { target, .. }, _) => {
                        format!("{MATRIX_REACTION_LINK}{}:{}", target.id, item.target_id)
                    }
                    // A reaction counted in a digest: found again by its target when
                    // it is removed.
                    (_, Some(WhatsAppChange::React { to, .. })) => {
                        let target = self
                            .store
                            .link_for_event(&item.room_id, to)
                            .ok()
                            .flatten()
                            .map(|link| link.wa_id)
                            .unwrap_or_default();
                        format!("{MATRIX_DIGEST_LINK}{target}:{}", item.target_id)
                    }
                    _ => item.target_id.clone(),
                };
                let link = MessageLink {
                    group_jid: item.group_jid.clone(),
                    wa_id,
                    room_id: item.room_id.clone(),
                    event_id: item.source_id.clone(),
                    origin: Direction::ToWhatsApp,
                    created_at: now_ms() / 1000,
                    sender: post.sender.clone(),
                };
                self.finish(&item, Some(&link));
            }
            Err(error) if error.is_retryable() => {
                if item.attempts == 0
                    || !matches!(
                        error,
                        WhatsAppError::NotConnected | WhatsAppError::NotLinked
                    )
                {
                    tracing::warn!(
                        seq = item.seq,
                        attempts = item.attempts,
                        "WhatsApp send failed, will retry: {error}"
                    );
                }
                self.retry(&item, &error.to_string());
            }
            Err(error) => {
                tracing::error!(
                    seq = item.seq,
                    "WhatsApp refused a relayed message: {error}"
                );
                let _ = self.store.discard(item.seq, &error.to_string());
                let _ = self
                    .matrix
                    .send_notice(
                        &item.room_id,
                        &format!(
                            "This message could not be sent to WhatsApp: {}",
                            error.reason()
                        ),
                    )
                    .await;
            }
        }
    }

    /// For a Matrix file: fetches it from the homeserver and turns the text into the
    /// file with its caption (or, for kinds WhatsApp shows without one, the file
    /// alone: the caller sends the text as its own line first). `None` when the item
    /// must wait (a retry is scheduled). A file that cannot be had becomes a line
    /// saying so: said, never dropped.
    async fn attach_matrix_file(
        &self,
        item: &OutboxItem,
        post: &WhatsAppPost,
        outgoing: Outgoing,
    ) -> Option<Outgoing> {
        let (Some(media), Outgoing::Text { text, reply_to, .. }) = (&post.media, &outgoing) else {
            return Some(outgoing);
        };
        let limit = self.active().config.relay.max_file_bytes;
        let text = match self.matrix.download_media(media).await {
            Ok(data) if (data.len() as u64) <= limit => {
                let caption = media.kind.has_whatsapp_caption().then(|| text.clone());
                return Some(Outgoing::Media {
                    media: media.clone(),
                    data,
                    caption,
                    reply_to: reply_to.clone(),
                });
            }
            Ok(data) => self
                .active()
                .relay
                .matrix_file_too_large(post, media, data.len() as u64),
            Err(error) if error.is_retryable() => {
                tracing::warn!(
                    seq = item.seq,
                    attempts = item.attempts,
                    "Matrix media download failed, will retry: {error}"
                );
                self.retry(item, &error.to_string());
                return None;
            }
            Err(error) => {
                tracing::warn!(seq = item.seq, "Matrix media unavailable: {error}");
                format!(
                    "{text}\n_({} could not be fetched from Matrix: see it there)_",
                    media.kind.with_article()
                )
            }
        };
        Some(Outgoing::Text {
            text,
            reply_to: reply_to.clone(),
            mentions: Vec::new(),
        })
    }

    /// What the number sends for a Matrix post, once the messages it refers to are
    /// looked up. `Err` when nothing is sent: with a notice for the sender when the
    /// change is refused (someone else's message, too late for WhatsApp), without
    /// one when there is nothing to change (a message that never crossed).
    async fn outgoing_for(
        &self,
        item: &OutboxItem,
        post: &WhatsAppPost,
    ) -> Result<Outgoing, Option<String>> {
        let link_of = |event_id: &str| match self.store.link_for_event(&item.room_id, event_id) {
            Ok(link) => link,
            Err(error) => {
                tracing::error!("store: {error}");
                None
            }
        };
        let age_secs = |link: &MessageLink| now_ms() / 1000 - link.created_at;
        // A WhatsApp message as a quote or reaction target: its id and author (the
        // WhatsApp person, or the bridge's own number for what came from Matrix).
        let quoted = |link: MessageLink| Quoted {
            sender_phone: (link.origin == Direction::ToMatrix).then_some(link.sender),
            id: link.wa_id,
        };
        match &post.change {
            None => {
                let reply_to = post.reply_to.as_deref().and_then(link_of).map(quoted);
                // `@Name` of a person known in the group becomes a WhatsApp mention;
                // not in a caption or a location's line, which carry no mentions.
                let (text, mentions) = if post.media.is_none() && post.location.is_none() {
                    let known =
                        self.store
                            .names_in_group(&item.group_jid)
                            .unwrap_or_else(|error| {
                                tracing::warn!("store: names: {error}");
                                Vec::new()
                            });
                    relay::mentions::whatsapp_mentions(&post.text, &known)
                } else {
                    (post.text.clone(), Vec::new())
                };
                Ok(Outgoing::Text {
                    text,
                    reply_to,
                    mentions,
                })
            }
            Some(WhatsAppChange::AnswerPoll { poll }) => {
                // Only a Matrix poll that crossed has a WhatsApp poll to answer.
                let Some(poll) = link_of(poll).filter(|link| link.origin == Direction::ToWhatsApp)
                else {
                    tracing::debug!("answer to a Matrix poll that never crossed: not relayed");
                    return Err(None);
                };
                Ok(Outgoing::Text {
                    text: post.text.clone(),
                    reply_to: Some(quoted(poll)),
                    mentions: Vec::new(),
                })
            }
            Some(WhatsAppChange::Edit { of }) => {
                let link = link_of(of)
                    .filter(|link| link.origin == Direction::ToWhatsApp)
                    .ok_or(None)?;
                if link.sender != post.sender {
                    return Err(Some(format!(
                        "{}: only the author of a message can edit it; the edit was not relayed to WhatsApp.",
                        post.sender
                    )));
                }
                if age_secs(&link) > WHATSAPP_EDIT_WINDOW_SECS {
                    return Err(Some(format!(
                        "{}: WhatsApp allows edits for {} minutes only; the edit was not relayed.",
                        post.sender,
                        WHATSAPP_EDIT_WINDOW_SECS / 60
                    )));
                }
                Ok(Outgoing::Edit {
                    target: link.wa_id,
                    text: post.text.clone(),
                })
            }
            Some(WhatsAppChange::React { to, emoji }) => {
                let target = link_of(to).ok_or(None)?;
                if self.active().config.relay.reactions_to_whatsapp == ReactionsToWhatsApp::Digest {
                    let entry = DigestEntry {
                        reaction_event: item.source_id.clone(),
                        user: post.sender.clone(),
                        emoji: emoji.clone(),
                    };
                    return self
                        .digest_outgoing(item, quoted(target), DigestChange::Add(entry))
                        .await;
                }
                Ok(Outgoing::React {
                    target: quoted(target),
                    emoji: emoji.clone(),
                })
            }
            Some(WhatsAppChange::Revoke { of }) => {
                // Only messages that came from Matrix: the bot's mirrors of WhatsApp
                // messages are Matrix-side copies, deleting them deletes nothing there.
                let link = link_of(of)
                    .filter(|link| link.origin == Direction::ToWhatsApp)
                    .ok_or(None)?;
                // When `link` is a Matrix reaction's (`<prefix><target>:<item>`): the
                // WhatsApp message it reacted to (none known: nothing to undo).
                let reacted_to = |prefix: &str| {
                    let (target, _) = link.wa_id.strip_prefix(prefix)?.rsplit_once(':')?;
                    let target = self.store.link_for_wa(&item.group_jid, target);
                    Some(target.ok().flatten().map(quoted).ok_or(None))
                };
                // A removed Matrix reaction counted in a digest: the digest says so.
                if let Some(target) = reacted_to(MATRIX_DIGEST_LINK) {
                    return self
                        .digest_outgoing(item, target?, DigestChange::Remove(of.clone()))
                        .await;
                }
                // A removed Matrix reaction: the number's reaction goes away.
                if let Some(target) = reacted_to(MATRIX_REACTION_LINK) {
                    return Ok(Outgoing::React {
                        target: target?,
                        emoji: String::new(),
                    });
                }
                let allowed = link.sender == post.sender
                    || self
                        .matrix
                        .can_redact_others(&item.room_id, &post.sender)
                        .await;
                if !allowed {
                    return Err(None);
                }
                if age_secs(&link) > WHATSAPP_REVOKE_WINDOW_SECS {
                    return Err(Some(format!(
                        "{}: WhatsApp allows deleting a message for everyone for {} hours only; it stays in the WhatsApp group.",
                        post.sender,
                        WHATSAPP_REVOKE_WINDOW_SECS / 3600
                    )));
                }
                Ok(Outgoing::Revoke { target: link.wa_id })
            }
        }
    }

    /// Reaction digest mode: applies `change` to the digest of `target`, and answers
    /// what the number sends: a new reply to `target` listing the reactions, an edit
    /// of the reply while WhatsApp allows edits, or its deletion when nothing is
    /// left. The digest is saved first: a retry of the item computes the same send.
    async fn digest_outgoing(
        &self,
        item: &OutboxItem,
        target: Quoted,
        change: DigestChange,
    ) -> Result<Outgoing, Option<String>> {
        let store_error = |error: crate::store::StoreError| {
            tracing::error!("store: {error}");
            None
        };
        let mut digest = self
            .store
            .digest(&item.group_jid, &target.id)
            .map_err(store_error)?;
        let was_empty = digest.entries.is_empty();
        match change {
            DigestChange::Add(entry) => {
                if !digest
                    .entries
                    .iter()
                    .any(|known| known.reaction_event == entry.reaction_event)
                {
                    digest.entries.push(entry);
                }
            }
            DigestChange::Remove(reaction_event) => digest
                .entries
                .retain(|known| known.reaction_event != reaction_event),
        }
        let now = now_ms() / 1000;
        let age = now - digest.reply_sent_at;
        let has_reply = !digest.reply_id.is_empty();
        let outgoing = if digest.reply_id == item.target_id
            || (!digest.entries.is_empty()
                && (was_empty || !has_reply || age > WHATSAPP_EDIT_WINDOW_SECS))
        {
            // A new reply (or this item's own, sent again under the same id).
            digest.reply_id = item.target_id.clone();
            digest.reply_sent_at = now;
            Outgoing::Text {
                text: self.digest_text(&item.room_id, &digest).await,
                reply_to: Some(target.clone()),
                mentions: Vec::new(),
            }
        } else if digest.entries.is_empty() {
            // Nobody's reaction is left: the reply goes (again, on a retry: deleting
            // twice changes nothing), as long as WhatsApp allows.
            if !has_reply || age > WHATSAPP_REVOKE_WINDOW_SECS {
                self.store
                    .save_digest(&item.group_jid, &target.id, &digest)
                    .map_err(store_error)?;
                return Err(None);
            }
            Outgoing::Revoke {
                target: digest.reply_id.clone(),
            }
        } else {
            Outgoing::Edit {
                target: digest.reply_id.clone(),
                text: self.digest_text(&item.room_id, &digest).await,
            }
        };
        self.store
            .save_digest(&item.group_jid, &target.id, &digest)
            .map_err(store_error)?;
        Ok(outgoing)
    }

    /// `👍 Alice, Bob · ❤️ Carol`: each emoji once, in the order they came, with who
    /// reacted so.
    async fn digest_text(&self, room_id: &str, digest: &Digest) -> String {
        let mut by_emoji: Vec<(String, Vec<String>)> = Vec::new();
        for entry in &digest.entries {
            let name = self.matrix.display_name(room_id, &entry.user).await;
            match by_emoji.iter_mut().find(|(emoji, _)| *emoji == entry.emoji) {
                Some((_, names)) if names.contains(&name) => {}
                Some((_, names)) => names.push(name),
                None => by_emoji.push((entry.emoji.clone(), vec![name])),
            }
        }
        by_emoji
            .iter()
            .map(|(emoji, names)| format!("{} {}", relay::single_line(emoji), names.join(", ")))
            .collect::<Vec<_>>()
            .join(" · ")
    }

    fn finish(&self, item: &OutboxItem, link: Option<&MessageLink>) {
        let done = match link {
            Some(link) => self.store.complete(item.seq, link),
            None => self.store.complete_unlinked(item.seq),
        };
        if let Err(error) = done {
            tracing::error!(seq = item.seq, "store: {error}");
            return;
        }
        let day = today();
        if let Err(error) = self
            .store
            .bump_counter(&day, &item.group_jid, item.direction, 1)
        {
            tracing::warn!("store: {error}");
        }
    }

    fn log_skip(skip: Skip, direction: &str) {
        tracing::debug!(?skip, direction, "not relayed");
    }
}

/// What happens to a reaction digest.
enum DigestChange {
    /// A Matrix reaction is counted in.
    Add(DigestEntry),
    /// The Matrix reaction with this event id was redacted.
    Remove(String),
}

/// `post` preceded by a quote of `quoted` (its first line, shortened).
fn with_quote(post: &MatrixPost, quoted: &str) -> MatrixPost {
    let first_line = quoted.lines().next().unwrap_or_default();
    let mut short: String = first_line.chars().take(100).collect();
    if short.len() < quoted.len() {
        short.push('…');
    }
    MatrixPost {
        body: format!("> {short}\n\n{}", post.body),
        html: format!(
            "<blockquote>{}</blockquote>{}",
            relay::format::escape_html(&short),
            post.html
        ),
        ..post.clone()
    }
}

/// Today's date (UTC) as YYYY-MM-DD, for the daily counters.
fn today() -> String {
    let days = now_ms() / 86_400_000;
    // Civil-from-days (Howard Hinnant's algorithm), to avoid a date dependency.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

impl Bridge {
    /// Fills in the sender's name from the last one seen when WhatsApp sent none, and
    /// remembers a new one. Only for approved groups: nobody else's name is kept.
    fn resolve_sender_name(&self, message: &mut WhatsAppText) {
        let named_in_notice: Vec<&mut Mention> = match &mut message.shared {
            Some(Shared::Members { people, by, .. }) => people.iter_mut().chain(by).collect(),
            _ => Vec::new(),
        };
        for mention in message.mentions.iter_mut().chain(named_in_notice) {
            if mention.name.is_none() {
                mention.name = self.store.known_name(&mention.phone).ok().flatten();
            }
        }
        if message.from_me {
            return;
        }
        let result = match &message.push_name {
            Some(name) => self
                .store
                .remember_name(&message.sender_phone, name, now_ms() / 1000)
                .map(|_| ()),
            None => self
                .store
                .known_name(&message.sender_phone)
                .map(|known| message.push_name = known),
        };
        if let Err(error) = result {
            tracing::warn!("store: sender names: {error}");
        }
    }
}

impl Bridge {
    /// A vote read from a poll: records it (a voter's latest vote counts) and fills
    /// the ballot in with everyone's current vote and the names to show, for the
    /// poll's line to be edited with its tally.
    fn count_vote(&self, message: &mut WhatsAppText) -> Result<(), crate::store::StoreError> {
        let Some(Shared::PollVote(Some(ballot))) = &mut message.shared else {
            return Ok(());
        };
        self.store.record_poll_vote(
            &message.group_jid,
            &ballot.poll_id,
            &PollVote {
                voter: message.sender_phone.clone(),
                choices: ballot.choices.clone(),
                voted_at_ms: ballot.voted_at_ms,
            },
        )?;
        let name_of = |phone: &str| -> Result<String, crate::store::StoreError> {
            Ok(self
                .store
                .known_name(phone)?
                .unwrap_or_else(|| format!("+{phone}")))
        };
        ballot.creator_name = self.store.known_name(&ballot.creator_phone)?;
        ballot.asked_in_matrix = self
            .store
            .is_bridge_wa_message(&message.group_jid, &ballot.poll_id)?;
        ballot.tally = self
            .store
            .poll_votes(&message.group_jid, &ballot.poll_id)?
            .into_iter()
            .map(|vote| {
                Ok(PollVoter {
                    name: name_of(&vote.voter)?,
                    choices: vote.choices,
                })
            })
            .collect::<Result<_, crate::store::StoreError>>()?;
        Ok(())
    }
}

impl Bridge {
    /// Runs `work` on the runtime with a strong handle on the bridge, for callbacks
    /// that only have `&self`; does nothing outside a runtime or once it is gone.
    fn spawn_with_self<F, Fut>(&self, work: F)
    where
        F: FnOnce(Arc<Bridge>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        if let (Some(bridge), Ok(runtime)) = (
            self.me.get().and_then(std::sync::Weak::upgrade),
            tokio::runtime::Handle::try_current(),
        ) {
            runtime.spawn(work(bridge));
        }
    }

    /// Tells the admins, in their direct rooms, when WhatsApp needs one of them, and
    /// when it is connected again after that. Each state is told once, also across
    /// restarts.
    fn tell_admins_about(&self, state: &ConnectionState, words: &str) {
        let told = match self.store.get_meta(status::keys::WHATSAPP_TOLD) {
            Ok(told) => told,
            Err(error) => {
                tracing::warn!("store: {error}");
                return;
            }
        };
        let (text, update) = if state.needs_admin() {
            if told.as_deref() == Some(words) {
                return;
            }
            (
                format!("WhatsApp needs an administrator: {words}."),
                self.store.set_meta(status::keys::WHATSAPP_TOLD, words),
            )
        } else if *state == ConnectionState::Connected && told.is_some() {
            (
                "WhatsApp is connected again; relaying resumes.".to_string(),
                self.store
                    .delete_meta(status::keys::WHATSAPP_TOLD)
                    .map(|_| ()),
            )
        } else {
            return;
        };
        if let Err(error) = update {
            tracing::warn!("store: {error}");
        }
        let admins = self.active().config.matrix.admins.clone();
        if admins.is_empty() {
            tracing::warn!("no Matrix admins configured to tell: {text}");
            return;
        }
        self.spawn_with_self(|bridge| async move {
            for admin in &admins {
                if let Err(error) = bridge.matrix.notify_admin(admin, &text).await {
                    tracing::warn!("could not tell an admin about WhatsApp: {error}");
                }
            }
        });
    }
}

impl InboundSink for Bridge {
    fn message(&self, mut message: WhatsAppText) -> Result<(), SinkError> {
        let active = self.active();
        let group = active.groups.get(&message.group_jid);
        if group.is_some() {
            self.resolve_sender_name(&mut message);
            self.count_vote(&mut message)
                .map_err(|e| SinkError(e.to_string()))?;
        }
        let own = self
            .store
            .is_bridge_wa_message(&message.group_jid, &message.message_id)
            .map_err(|e| SinkError(e.to_string()))?;
        let post = match active.relay.from_whatsapp(group, &message, own) {
            Ok(post) => post,
            Err(skip) => {
                Self::log_skip(skip, "to matrix");
                return Ok(());
            }
        };
        let payload = serde_json::to_string(&post).map_err(|e| SinkError(e.to_string()))?;
        let room_id = self
            .store
            .room_for_group(&message.group_jid)
            .map_err(|e| SinkError(e.to_string()))?
            .unwrap_or_default();
        let target_id = relay::matrix_txn_for_whatsapp(&message.group_jid, &message.message_id);
        let queued = self
            .store
            .enqueue(&NewOutboxItem {
                direction: Direction::ToMatrix,
                source_id: &message.message_id,
                target_id: &target_id,
                group_jid: &message.group_jid,
                room_id: &room_id,
                payload: &payload,
            })
            .map_err(|e| SinkError(e.to_string()))?;
        if queued {
            self.wake_to_matrix.notify_one();
        } else {
            tracing::debug!("WhatsApp message delivered again: already relayed");
        }
        Ok(())
    }

    fn bridges(&self, group_jid: &str) -> bool {
        self.active().groups.contains_key(group_jid)
    }

    fn group_changed(&self, group_jid: &str, change: GroupChange) {
        // Only rooms the bridge created follow the group: a room named in a group
        // file belongs to its owners.
        let Some(group) = self.active().groups.get(group_jid).cloned() else {
            return;
        };
        if group.room.is_some() {
            return;
        }
        let Ok(Some(room_id)) = self.store.room_for_group(group_jid) else {
            return;
        };
        tracing::debug!(group = %group.name, ?change, "group changed in WhatsApp");
        self.spawn_with_self(|bridge| async move {
            if change == GroupChange::Picture {
                bridge.sync_avatar(&group, &room_id).await;
                return;
            }
            let result = match &change {
                GroupChange::Subject(subject) => {
                    bridge.matrix.set_room_name(&room_id, subject).await
                }
                GroupChange::Description(description) => {
                    bridge
                        .matrix
                        .set_room_topic(&room_id, description.as_deref().unwrap_or_default())
                        .await
                }
                GroupChange::Picture => Ok(()),
            };
            match result {
                Ok(()) => tracing::debug!(group = %group.name, ?change, "group change mirrored"),
                Err(error) => {
                    tracing::warn!(group = %group.name, "could not mirror a group change: {error}")
                }
            }
        });
    }

    fn connection(&self, state: ConnectionState) {
        tracing::info!(?state, "WhatsApp connection");
        let connected = state == ConnectionState::Connected;
        let words = match &state {
            ConnectionState::NotLinked => "not linked (run `passerelle login`)".to_string(),
            ConnectionState::Connecting => "connecting".to_string(),
            ConnectionState::Connected => "connected".to_string(),
            ConnectionState::Disconnected(reason) => format!("disconnected: {reason}"),
            ConnectionState::Stopped(reason) => format!("stopped: {reason}"),
            ConnectionState::LoggedOut(reason) => format!("logged out: {reason}"),
        };
        if state.needs_admin() {
            tracing::error!("WhatsApp: {words}");
            self.note_error(&format!("WhatsApp {words}"));
        }
        self.tell_admins_about(&state, &words);
        let since = (now_ms() / 1000).to_string();
        if let Err(error) = self
            .store
            .set_meta(status::keys::WHATSAPP_STATE, &words)
            .and_then(|()| self.store.set_meta(status::keys::WHATSAPP_SINCE, &since))
        {
            tracing::warn!("store: {error}");
        }
        if connected {
            self.wake_to_whatsapp.notify_one();
            // Rooms set up while WhatsApp was away were named after their file.
            self.spawn_with_self(|bridge| async move { bridge.sync_room_names().await });
        }
    }
}

impl metrics::FigureSource for Bridge {
    fn figures(&self) -> metrics::Figures {
        // One read of the day counters serves both directions.
        let counters = self
            .store
            .counters("0001-01-01", "9999-12-31")
            .unwrap_or_default();
        let queue = |direction: Direction| {
            let (waiting, oldest) = self.store.queue_stats(direction).unwrap_or((0, None));
            let oldest_age_secs = oldest
                .map(|since| u64::try_from(now_ms() / 1000 - since).unwrap_or(0))
                .unwrap_or(0);
            let relayed_total = counters
                .iter()
                .filter(|(_, _, d, _)| *d == direction)
                .map(|(_, _, _, count)| count)
                .sum();
            metrics::QueueFigures {
                waiting,
                oldest_age_secs: if waiting == 0 { 0 } else { oldest_age_secs },
                relayed_total,
            }
        };
        let whatsapp_connected = matches!(
            self.store.get_meta(status::keys::WHATSAPP_STATE),
            Ok(Some(state)) if state == "connected"
        );
        metrics::Figures {
            to_matrix: queue(Direction::ToMatrix),
            to_whatsapp: queue(Direction::ToWhatsApp),
            set_aside: self
                .store
                .recent_dead_letters(10_000)
                .map(|letters| letters.len() as u64)
                .unwrap_or(0),
            whatsapp_connected,
            groups_approved: self.active().groups.len() as u64,
            groups_bridged: self
                .rooms_ready
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len() as u64,
        }
    }
}

#[async_trait]
impl ControlHandler for Bridge {
    async fn handle(&self, request: control::Request) -> control::Reply {
        use control::{Reply, Request};
        let Some(client) = self.whatsapp() else {
            return Reply::Error {
                message: "WhatsApp is not started yet".into(),
            };
        };
        let answer = match request {
            Request::Groups => client.groups().await.map(|groups| Reply::Groups { groups }),
            Request::Join { invite } => {
                let outcome = client.join(&invite).await;
                if outcome.is_ok() {
                    tracing::info!("joined a WhatsApp group by invite link (admin request)");
                }
                outcome.map(|outcome| Reply::Join { outcome })
            }
        };
        answer.unwrap_or_else(|error| Reply::Error {
            message: error.to_string(),
        })
    }
}

#[async_trait]
impl MatrixEvents for Bridge {
    async fn message(&self, message: MatrixText) {
        let group = self.group_for_room(&message.room_id);
        let own = match self
            .store
            .is_bridge_event(&message.room_id, &message.event_id)
        {
            Ok(own) => own,
            Err(error) => {
                tracing::error!("store: {error}");
                return;
            }
        };
        let active = self.active();
        let post = match active.relay.from_matrix(group.as_ref(), &message, own) {
            Ok(post) => post,
            Err(Skip::NotAllowed) => {
                let first_time = self
                    .refused_senders
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert((message.room_id.clone(), message.sender.clone()));
                if first_time {
                    let notice = format!(
                        "{}: your messages are not relayed to WhatsApp (not allowed by this group's settings; ask the administrator).",
                        message.sender
                    );
                    let _ = self.matrix.send_notice(&message.room_id, &notice).await;
                }
                return;
            }
            Err(Skip::Unsupported) => {
                let notice = format!(
                    "{}: {} messages are not relayed to WhatsApp yet; texts, files, stickers, locations and polls are.",
                    message.sender,
                    message.body.trim_start_matches("m.")
                );
                let _ = self.matrix.send_notice(&message.room_id, &notice).await;
                return;
            }
            Err(Skip::PollDoesNotFit) => {
                let notice = format!(
                    "{}: WhatsApp polls have 2 to {} different options; this poll was not relayed.",
                    message.sender,
                    relay::MatrixPoll::MAX_OPTIONS
                );
                let _ = self.matrix.send_notice(&message.room_id, &notice).await;
                return;
            }
            Err(Skip::TooLong) => {
                let notice = format!(
                    "{}: your message is too long for WhatsApp (over {} characters) and was not relayed.",
                    message.sender,
                    relay::WHATSAPP_MAX_TEXT_CHARS
                );
                let _ = self.matrix.send_notice(&message.room_id, &notice).await;
                return;
            }
            Err(skip) => {
                Self::log_skip(skip, "to whatsapp");
                return;
            }
        };
        let Some(group) = group else { return };
        let payload = match serde_json::to_string(&post) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!("serialising a message: {error}");
                return;
            }
        };
        let target_id = relay::whatsapp_id_for_event(&message.event_id);
        match self.store.enqueue(&NewOutboxItem {
            direction: Direction::ToWhatsApp,
            source_id: &message.event_id,
            target_id: &target_id,
            group_jid: &group.whatsapp,
            room_id: &message.room_id,
            payload: &payload,
        }) {
            Ok(true) => self.wake_to_whatsapp.notify_one(),
            Ok(false) => tracing::debug!("Matrix event seen again: already relayed"),
            Err(error) => tracing::error!("store: could not queue a Matrix message: {error}"),
        }
    }

    async fn accept_invite(&self, room_id: &str, inviter: &str) -> bool {
        let active = self.active();
        if active
            .config
            .matrix
            .admins
            .iter()
            .any(|admin| admin == inviter)
        {
            return true;
        }
        if matches!(self.store.group_for_room(room_id), Ok(Some(jid)) if active.groups.contains_key(&jid))
        {
            return true;
        }
        for group in active.groups.values() {
            let configured = match &group.room {
                Some(config::RoomRef::Id(id)) => id == room_id,
                Some(config::RoomRef::Alias(alias)) => {
                    self.matrix.resolve_alias(alias).await.as_deref() == Some(room_id)
                }
                None => false,
            };
            if configured {
                // The bot could not join this group's room before: set it up now.
                let group = group.clone();
                self.spawn_with_self(|bridge| async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    bridge.setup_group(&group).await;
                });
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::today;

    #[test]
    fn today_is_a_plausible_date() {
        let day = today();
        assert_eq!(day.len(), 10);
        assert!(day.as_str() >= "2024-01-01", "{day}");
    }
}
