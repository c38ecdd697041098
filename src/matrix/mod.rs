//! The matrix-sdk adapter: the bot's client kept in sync (its session in
//! `session.rs`), room events handed to the bridge (`timeline.rs`, `events.rs`,
//! `undecrypted.rs`), and what the bridge asks sent; rooms are set up in `rooms.rs`.
//! Decisions are the bridge's, not this module's.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::event_handler::EventHandlerHandle;
use matrix_sdk::room::Room;
use matrix_sdk::ruma::api::client::filter::{FilterDefinition, RoomEventFilter, RoomFilter};
use matrix_sdk::ruma::api::client::room::create_room;
use matrix_sdk::ruma::api::client::room::Visibility;
use matrix_sdk::ruma::api::client::sync::sync_events::v3::Filter;
use matrix_sdk::ruma::api::error::ErrorKind;
use matrix_sdk::ruma::events::reaction::ReactionEventContent;
use matrix_sdk::ruma::events::relation::{Annotation, Reply};
use matrix_sdk::ruma::events::room::member::{
    MembershipState, StrippedRoomMemberEvent, SyncRoomMemberEvent,
};
use matrix_sdk::ruma::events::room::message::{
    LocationMessageEventContent, MessageType, Relation, ReplacementMetadata,
    RoomMessageEventContent,
};
use matrix_sdk::ruma::events::room::tombstone::OriginalSyncRoomTombstoneEvent;
use matrix_sdk::ruma::events::Mentions;
use matrix_sdk::ruma::{EventId, OwnedRoomId, OwnedTransactionId, OwnedUserId, RoomId, UserId};
use matrix_sdk::{Client, RoomState};

mod events;
mod media;
mod rooms;
pub use rooms::{AliasTaken, RoomSetup, SetUpRoom};
mod session;
pub use session::GIVE_UP_AFTER as SESSION_GIVE_UP_AFTER;
mod timeline;
mod undecrypted;

use crate::config::MatrixConfig;
use crate::relay::{MatrixPost, MatrixText};
use crate::store::Store;
use matrix_sdk::LoopCtrl;

/// Timeline events per room per sync; above Synapse's default of 10 so a burst between
/// two syncs is not cut short (see notes on `limited` timelines).
const SYNC_TIMELINE_LIMIT: u32 = 100;

/// Why a Matrix operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    #[error("no password configured to log in to Matrix with (set matrix.password_file)")]
    NoPassword,
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("stored Matrix session {path} is unreadable: {source}")]
    Session {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("invalid Matrix identifier {0:?}")]
    InvalidId(String),
    #[error("the bot is not in room {0}")]
    NotInRoom(String),
    #[error("Matrix: {0}")]
    Sdk(#[from] matrix_sdk::Error),
    #[error("Matrix: {0}")]
    Http(#[from] matrix_sdk::HttpError),
    #[error("Matrix client: {0}")]
    Build(Box<matrix_sdk::ClientBuildError>),
    #[error("bridge database: {0}")]
    Store(String),
    #[error("room power levels: {0}")]
    PowerLevels(String),
    #[error("timed out {0}")]
    TimedOut(&'static str),
}

impl From<matrix_sdk::ClientBuildError> for MatrixError {
    fn from(error: matrix_sdk::ClientBuildError) -> Self {
        MatrixError::Build(Box::new(error))
    }
}

impl MatrixError {
    /// Whether the homeserver could not be reached, was down behind its proxy, or
    /// asked to slow down: nothing about the request itself, so a message waiting
    /// for it has not failed (its attempts are not counted).
    pub fn is_homeserver_away(&self) -> bool {
        let http = match self {
            MatrixError::Sdk(matrix_sdk::Error::Http(http)) => http.as_ref(),
            MatrixError::Http(http) => http,
            _ => return false,
        };
        if matches!(http, matrix_sdk::HttpError::Reqwest(_)) {
            return true; // refused, reset, timed out
        }
        match http.as_client_api_error() {
            Some(error) if matches!(error.error_kind(), Some(ErrorKind::LimitExceeded { .. })) => {
                true
            }
            Some(error) => matches!(error.status_code.as_u16(), 502..=504),
            None => false,
        }
    }

    /// Whether the homeserver ended the bot's session: nothing about the request
    /// either; it waits for the bot to log in again.
    pub fn is_session_lost(&self) -> bool {
        let http = match self {
            MatrixError::Sdk(matrix_sdk::Error::Http(http)) => http.as_ref(),
            MatrixError::Http(http) => http,
            _ => return false,
        };
        matches!(
            http.client_api_error_kind(),
            Some(ErrorKind::UnknownToken { .. })
        )
    }

    /// Whether the same request may succeed later (server down, rate limited), as
    /// opposed to a refusal (forbidden, too large, unknown room).
    pub fn is_retryable(&self) -> bool {
        let http = match self {
            MatrixError::Sdk(matrix_sdk::Error::Http(http)) => http.as_ref(),
            MatrixError::Http(http) => http,
            MatrixError::NotInRoom(_) | MatrixError::TimedOut(_) => return true,
            _ => return false,
        };
        match http.client_api_error_kind() {
            Some(ErrorKind::LimitExceeded { .. }) => true,
            // Not in the room (kicked, banned) or not allowed to post there: it may
            // change (invited back, power given); the message waits, its attempts
            // counted, and is set aside when it lasts, never dropped.
            Some(ErrorKind::Forbidden) => true,
            Some(_) => false,
            None => true, // transport errors, 5xx without a Matrix error body
        }
    }
}

/// A Matrix event the bridge could not queue safely (its database failed).
#[derive(Debug, thiserror::Error)]
#[error("could not queue a Matrix event: {0}")]
pub struct NotQueued(pub String);

/// What the bridge must decide or receive from the Matrix side.
#[async_trait]
pub trait MatrixEvents: Send + Sync {
    /// A text-like message in a joined room (not yet filtered: the bridge decides).
    /// `Ok` once it is durably queued or deliberately skipped; `Err` when it could
    /// not be queued (the room's marker then stays before it, and it comes again).
    async fn message(&self, message: MatrixText) -> Result<(), NotQueued>;
    /// Whether to accept an invite of the bot into `room_id` sent by `inviter`.
    async fn accept_invite(&self, room_id: &str, inviter: &str) -> bool;
    /// The bot's session changed: ended by the homeserver, renewed, or given up.
    fn session_changed(&self, change: SessionChange);
    /// Someone removed (kicked or banned) the bot from a room.
    fn bot_removed(&self, removed: BotRemoved);
    /// The bot is in a room (joined, or seen joined at start).
    fn bot_joined(&self, room_id: &str);
    /// Room `old` was upgraded (`m.room.tombstone`): its successor is `new`.
    fn room_replaced(&self, old: &str, new: &str);
}

/// The bot was removed from a room by someone else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotRemoved {
    pub room_id: String,
    /// The membership event: the same removal seen again is known by it.
    pub event_id: String,
    pub by: String,
    pub banned: bool,
}

/// What becomes of the bot's Matrix session when the homeserver ends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// The homeserver ended the session (`M_UNKNOWN_TOKEN`). `can_log_in_again`:
    /// a password is configured to log in again with.
    Lost { can_log_in_again: bool },
    /// Logging in again failed in a way only an admin can mend (no password, the
    /// password refused); the bridge keeps trying until it gives up.
    LoginRefused { why: String },
    /// Logged in again as a new device; everything waiting can go.
    Renewed { device_id: String },
    /// No session for [`session::GIVE_UP_AFTER`] and no way to get one: the service
    /// should stop with an error (what waits stays queued).
    GivenUp { why: String },
}

/// The bot's Matrix client.
#[derive(Clone)]
pub struct MatrixSide {
    current: Arc<std::sync::RwLock<Client>>,
    session: Arc<session::Keeper>,
    store: Arc<Store>,
    bot: OwnedUserId,
    server_name: String,
    handlers: Arc<Mutex<Vec<EventHandlerHandle>>>,
    admin_rooms: Arc<tokio::sync::Mutex<()>>,
    rooms_behind: Arc<timeline::RoomsBehind>,
    /// `[matrix] wait_for_keys_secs` (read at start).
    wait_for_keys: Duration,
}

impl MatrixSide {
    /// Restores the stored session, or logs in with the configured password the first
    /// time and stores the session (mode 0600) for the next runs.
    pub async fn connect(
        config: &MatrixConfig,
        state_dir: &Path,
        store: Arc<Store>,
    ) -> Result<Self, MatrixError> {
        let bot = UserId::parse(config.user.as_str())
            .map_err(|_| MatrixError::InvalidId(config.user.clone()))?;
        let opened = session::open(config, state_dir).await?;
        Ok(MatrixSide {
            current: Arc::new(std::sync::RwLock::new(opened.client)),
            session: Arc::new(session::Keeper::new(
                config.clone(),
                state_dir,
                opened.changes,
            )),
            store,
            handlers: Arc::default(),
            rooms_behind: Arc::default(),
            admin_rooms: Arc::default(),
            wait_for_keys: config.wait_for_keys,
            server_name: bot.server_name().to_string(),
            bot,
        })
    }

    pub fn bot_user(&self) -> &str {
        self.bot.as_str()
    }

    /// The client of the session in force (replaced when the bot logs in again).
    pub fn client(&self) -> Client {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn sync_settings() -> SyncSettings {
        let mut timeline = RoomEventFilter::default();
        timeline.limit = Some(SYNC_TIMELINE_LIMIT.into());
        let mut room = RoomFilter::default();
        room.timeline = timeline;
        let mut filter = FilterDefinition::default();
        filter.room = room;
        SyncSettings::default()
            .filter(Filter::FilterDefinition(filter))
            .timeout(Duration::from_secs(30))
    }

    /// One sync without handlers, to learn the current state without relaying history
    /// (used on the very first start, when no sync token is stored yet).
    pub async fn initial_sync(&self) -> Result<(), MatrixError> {
        self.client().sync_once(Self::sync_settings()).await?;
        Ok(())
    }

    /// Catches up on what bridged rooms received while the bridge was stopped, then
    /// syncs forever (retrying after errors), handing room messages to `events` in
    /// order and answering invites; and logs in again when the homeserver ends the
    /// session (see `session.rs`), and tries again the events it could not decrypt
    /// (see `undecrypted.rs`). Returns the tasks.
    pub fn start_sync(&self, events: Arc<dyn MatrixEvents>) -> Vec<tokio::task::JoinHandle<()>> {
        self.add_handlers(&self.client(), &events);
        let keeper = tokio::spawn(self.clone().keep_session(events.clone()));
        let undecrypted = tokio::spawn(undecrypted::keep_trying(
            self.clone(),
            events.clone(),
            self.wait_for_keys,
        ));
        let side = self.clone();
        let sync = tokio::spawn(async move {
            for room in side.client().joined_rooms() {
                timeline::catch_up(&room, &side.store, &side.bot, &events, &side.rooms_behind)
                    .await;
            }
            loop {
                let result = side
                    .client()
                    .sync_with_result_callback(Self::sync_settings(), |response| {
                        let side = side.clone();
                        let events = events.clone();
                        async move {
                            let response = response?;
                            for (room_id, update) in &response.rooms.joined {
                                if let Some(room) = side.client().get_room(room_id) {
                                    timeline::handle_update(
                                        &room,
                                        update,
                                        &side.store,
                                        &side.bot,
                                        &events,
                                        &side.rooms_behind,
                                    )
                                    .await;
                                }
                            }
                            side.read_rooms_behind_again(&events).await;
                            Ok(LoopCtrl::Continue)
                        }
                    })
                    .await;
                match result {
                    Ok(()) => return,
                    Err(error) if side.session.is_lost() => {
                        // Said by the keeper; syncing again waits for its new login.
                        tracing::debug!("Matrix sync failed while the session is lost: {error}");
                        side.session.renewed_or(Duration::from_secs(5)).await;
                    }
                    Err(error) => {
                        tracing::warn!("Matrix sync failed, retrying in 5 s: {error}");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            }
        });
        vec![sync, keeper, undecrypted]
    }

    /// Registers the event handlers (invites of the bot) on `client`.
    fn add_handlers(&self, client: &Client, events: &Arc<dyn MatrixEvents>) {
        let bot = self.bot.clone();
        let invite_events = events.clone();
        let invite_handler =
            client.add_event_handler(move |event: StrippedRoomMemberEvent, room: Room| {
                let events = invite_events.clone();
                let bot = bot.clone();
                async move {
                    if event.state_key != bot || event.content.membership != MembershipState::Invite
                    {
                        return;
                    }
                    let room_id = room.room_id().to_string();
                    if events.accept_invite(&room_id, event.sender.as_str()).await {
                        tokio::spawn(join_with_retries(room));
                    } else {
                        tracing::info!(room = %room_id, "rejecting invite from a non-admin");
                        if let Err(error) = room.leave().await {
                            tracing::warn!(room = %room_id, "could not reject invite: {error}");
                        }
                    }
                }
            });
        let membership_events = events.clone();
        let bot = self.bot.clone();
        let membership_handler =
            client.add_event_handler(move |event: SyncRoomMemberEvent, room: Room| {
                let events = membership_events.clone();
                let bot = bot.clone();
                async move {
                    let SyncRoomMemberEvent::Original(event) = event else {
                        return;
                    };
                    if event.state_key != bot {
                        return;
                    }
                    let room_id = room.room_id().as_str();
                    match event.content.membership {
                        MembershipState::Leave | MembershipState::Ban if event.sender != bot => {
                            events.bot_removed(BotRemoved {
                                room_id: room_id.to_owned(),
                                event_id: event.event_id.to_string(),
                                by: event.sender.to_string(),
                                banned: event.content.membership == MembershipState::Ban,
                            });
                        }
                        MembershipState::Join => events.bot_joined(room_id),
                        _ => {}
                    }
                }
            });
        let upgrade_events = events.clone();
        let upgrade_handler =
            client.add_event_handler(move |event: OriginalSyncRoomTombstoneEvent, room: Room| {
                let events = upgrade_events.clone();
                async move {
                    events.room_replaced(
                        room.room_id().as_str(),
                        event.content.replacement_room.as_str(),
                    );
                }
            });
        self.handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend([invite_handler, membership_handler, upgrade_handler]);
    }

    /// Joins `room_id` (nothing to do when the bot is in it).
    pub async fn join(&self, room_id: &str) -> Result<(), MatrixError> {
        self.ensure_joined(&parse_room_id(room_id)?).await
    }

    /// Reads again, from their marker, the rooms with an event not queued yet (at
    /// most every sync, so every 30 s when nothing else happens).
    async fn read_rooms_behind_again(&self, events: &Arc<dyn MatrixEvents>) {
        let behind: Vec<String> = self
            .rooms_behind
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        for room_id in behind {
            let room = RoomId::parse(&room_id)
                .ok()
                .and_then(|id| self.client().get_room(&id));
            match room {
                Some(room) => {
                    timeline::catch_up(&room, &self.store, &self.bot, events, &self.rooms_behind)
                        .await
                }
                None => {
                    self.rooms_behind
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&room_id);
                }
            }
        }
    }

    /// Removes the event handlers (they hold the bridge; this breaks the cycle).
    pub fn stop(&self) {
        let handles: Vec<EventHandlerHandle> =
            std::mem::take(&mut *self.handlers.lock().unwrap_or_else(|e| e.into_inner()));
        for handle in handles {
            self.client().remove_event_handler(handle);
        }
    }

    /// How `user_id` is named in WhatsApp lines: their display name in the room, else
    /// their localpart.
    pub async fn display_name(&self, room_id: &str, user_id: &str) -> String {
        let shown = match (self.joined_room(room_id), UserId::parse(user_id)) {
            (Ok(room), Ok(user)) => events::display_name_in(&room, &user).await,
            _ => None,
        };
        crate::relay::matrix_display_name(user_id, shown.as_deref())
    }

    /// Posts a relayed message with a transaction id derived from its source, so a
    /// retry returns the event already sent instead of posting it twice. `reply_to`
    /// makes it a reply to that event.
    pub async fn send_post(
        &self,
        room_id: &str,
        txn_id: &str,
        post: &MatrixPost,
        reply_to: Option<&str>,
    ) -> Result<String, MatrixError> {
        let room = self.joined_room(room_id)?;
        let mut content = match &post.location {
            Some(location) => RoomMessageEventContent::new(MessageType::Location(
                LocationMessageEventContent::new(post.body.clone(), location.geo_uri()),
            )),
            None if post.notice => RoomMessageEventContent::notice_plain(post.body.clone()),
            None => RoomMessageEventContent::text_html(post.body.clone(), post.html.clone()),
        };
        if let Some(event_id) = reply_to {
            let event_id = EventId::parse(event_id)
                .map_err(|_| MatrixError::InvalidId(event_id.to_string()))?;
            content.relates_to = Some(Relation::Reply(Reply::with_event_id(event_id)));
        }
        let notified: Vec<OwnedUserId> = post
            .mentions
            .iter()
            .filter_map(|user| UserId::parse(user.as_str()).ok())
            .collect();
        if !notified.is_empty() {
            content.mentions = Some(Mentions::with_user_ids(notified));
        }
        let response = room
            .send(content)
            .with_transaction_id(OwnedTransactionId::from(txn_id))
            .await?;
        Ok(response.response.event_id.to_string())
    }

    /// Posts a file (`data`, described by `media`) with the post's text as caption.
    pub async fn send_media(
        &self,
        room_id: &str,
        txn_id: &str,
        post: &MatrixPost,
        media: &crate::relay::media::Media,
        data: Vec<u8>,
        reply_to: Option<&str>,
    ) -> Result<String, MatrixError> {
        let room = self.joined_room(room_id)?;
        tokio::time::timeout(
            media::UPLOAD_TIMEOUT,
            media::send(&room, txn_id, post, media, data, reply_to),
        )
        .await
        .map_err(|_| MatrixError::TimedOut("uploading a file to the homeserver"))?
    }

    /// Fetches the file of a Matrix media event from the homeserver.
    pub async fn download_media(
        &self,
        media: &crate::relay::media::Media,
    ) -> Result<Vec<u8>, MatrixError> {
        media::download(&self.client(), media).await
    }

    /// The bot's reaction `key` to event `to`, idempotently under `txn_id`.
    pub async fn annotate(
        &self,
        room_id: &str,
        txn_id: &str,
        to: &str,
        key: &str,
    ) -> Result<String, MatrixError> {
        let room = self.joined_room(room_id)?;
        let to = EventId::parse(to).map_err(|_| MatrixError::InvalidId(to.to_string()))?;
        let content = ReactionEventContent::new(Annotation::new(to, key.to_owned()));
        let response = room
            .send(content)
            .with_transaction_id(OwnedTransactionId::from(txn_id))
            .await?;
        Ok(response.response.event_id.to_string())
    }

    /// Replaces the text of the bot's event `of` (an `m.replace` edit).
    pub async fn edit_post(
        &self,
        room_id: &str,
        txn_id: &str,
        of: &str,
        post: &MatrixPost,
    ) -> Result<String, MatrixError> {
        let room = self.joined_room(room_id)?;
        let of = EventId::parse(of).map_err(|_| MatrixError::InvalidId(of.to_string()))?;
        let content = RoomMessageEventContent::text_html(post.body.clone(), post.html.clone())
            .make_replacement(ReplacementMetadata::new(of, None));
        let response = room
            .send(content)
            .with_transaction_id(OwnedTransactionId::from(txn_id))
            .await?;
        Ok(response.response.event_id.to_string())
    }

    /// Redacts event `of` (the bot's own, or another's where it has the power).
    pub async fn redact(
        &self,
        room_id: &str,
        txn_id: &str,
        of: &str,
    ) -> Result<String, MatrixError> {
        let room = self.joined_room(room_id)?;
        let of = EventId::parse(of).map_err(|_| MatrixError::InvalidId(of.to_string()))?;
        let response = room
            .redact(&of, None, Some(OwnedTransactionId::from(txn_id)))
            .await?;
        Ok(response.event_id.to_string())
    }

    /// The body of event `event_id` of the room (decrypted where it must be), or
    /// `None` when it cannot be read (gone, redacted, not a message).
    pub async fn event_body(&self, room_id: &str, event_id: &str) -> Option<String> {
        let room = self.joined_room(room_id).ok()?;
        let event_id = EventId::parse(event_id).ok()?;
        let event = match tokio::time::timeout(
            Duration::from_secs(20),
            room.load_or_fetch_event(&event_id, None),
        )
        .await
        {
            Ok(Ok(event)) => event,
            Ok(Err(error)) => {
                tracing::debug!(room = %room_id, "the replied event cannot be read: {error}");
                return None;
            }
            Err(_) => {
                tracing::debug!(room = %room_id, "reading the replied event timed out");
                return None;
            }
        };
        let content = event
            .raw()
            .get_field::<serde_json::Value>("content")
            .ok()??;
        content["body"].as_str().map(str::to_owned)
    }

    /// Whether `user` may redact other people's events in the room (a moderator).
    pub async fn can_redact_others(&self, room_id: &str, user: &str) -> bool {
        let (Ok(room), Ok(user)) = (self.joined_room(room_id), UserId::parse(user)) else {
            return false;
        };
        match room.power_levels().await {
            Ok(levels) => levels.user_can_redact_event_of_other(&user),
            Err(error) => {
                tracing::warn!(room = %room_id, "power levels unknown: {error}");
                false
            }
        }
    }

    /// Posts a notice from the bridge itself (never relayed back).
    pub async fn send_notice(&self, room_id: &str, text: &str) -> Result<String, MatrixError> {
        let room = self.joined_room(room_id)?;
        let response = room
            .send(RoomMessageEventContent::notice_plain(text))
            .await?;
        Ok(response.response.event_id.to_string())
    }

    /// Tells an admin something in the direct room the bot keeps with them: created on
    /// first use (and again if the admin left it), remembered in the store.
    pub async fn notify_admin(&self, admin: &str, text: &str) -> Result<(), MatrixError> {
        let admin_id =
            UserId::parse(admin).map_err(|_| MatrixError::InvalidId(admin.to_string()))?;
        // One at a time: two notices in a row must not create two rooms.
        let _guard = self.admin_rooms.lock().await;
        let key = format!("matrix.admin_room.{admin}");
        let known = self.store.get_meta(&key).map_err(store_error)?;
        if let Some(room) = known.and_then(|room_id| self.joined_room(&room_id).ok()) {
            // A member not synced yet (just invited) counts as present.
            let gone = matches!(
                room.get_member_no_sync(&admin_id).await,
                Ok(Some(member))
                    if matches!(member.membership(), MembershipState::Leave | MembershipState::Ban)
            );
            if !gone {
                room.send(RoomMessageEventContent::notice_plain(text))
                    .await?;
                return Ok(());
            }
        }
        let mut request = create_room::v3::Request::new();
        request.name = Some("passerelle".to_string());
        request.topic = Some("Notices of the WhatsApp bridge for its administrators".to_string());
        request.is_direct = true;
        request.visibility = Visibility::Private;
        request.preset = Some(create_room::v3::RoomPreset::TrustedPrivateChat);
        request.invite = vec![admin_id];
        let room = self.client().create_room(request).await?;
        tracing::info!(room = %room.room_id(), "created a direct room with an admin");
        self.store
            .set_meta(&key, room.room_id().as_str())
            .map_err(store_error)?;
        room.send(RoomMessageEventContent::notice_plain(text))
            .await?;
        Ok(())
    }

    fn joined_room(&self, room_id: &str) -> Result<Room, MatrixError> {
        let id = parse_room_id(room_id)?;
        match self.client().get_room(&id) {
            Some(room) if room.state() == RoomState::Joined => Ok(room),
            _ => Err(MatrixError::NotInRoom(room_id.to_string())),
        }
    }
}

fn store_error(error: crate::store::StoreError) -> MatrixError {
    MatrixError::Store(error.to_string())
}

fn parse_room_id(room_id: &str) -> Result<OwnedRoomId, MatrixError> {
    RoomId::parse(room_id).map_err(|_| MatrixError::InvalidId(room_id.to_string()))
}

/// Joining right after an invite can race the invite's federation/propagation; retry.
async fn join_with_retries(room: Room) {
    let mut delay = Duration::from_millis(500);
    for _ in 0..6 {
        match room.join().await {
            Ok(()) => {
                tracing::info!(room = %room.room_id(), "joined on an admin's invite");
                return;
            }
            Err(error) => {
                tracing::debug!(room = %room.room_id(), "join failed, retrying: {error}");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    tracing::warn!(room = %room.room_id(), "could not join after an admin's invite");
}
