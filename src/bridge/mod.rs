//! The bridge between one WhatsApp number and one Matrix bot: the configuration in
//! force (swapped whole on reload), the rooms ready to relay, and the outbox steps
//! both directions share (wait, retry, finish). Each direction's worker lives in its
//! own file; `relay` decides, the bridge looks up, stores, sends and retries.

mod background;
mod rooms;
mod to_matrix;
mod to_whatsapp;
mod upkeep;
mod waits;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use background::InBackground;
use tokio::task::JoinHandle;

use crate::config::{self, Config, GroupFile, Problems};
use crate::matrix::{MatrixError, MatrixSide};
use crate::relay::pacing::Pacer;
use crate::relay::{self, Relay, Skip};
use crate::status;
use crate::store::{Direction, MessageLink, OutboxItem, Store};
use crate::whatsapp::{ConnectionState, WhatsAppClient, WhatsAppError};

/// Longest wait between two retries of one outbox item.
/// How soon an item waiting for its side (WhatsApp away, room not ready) is asked
/// again.
const SIDE_AWAY_DELAY_MS: i64 = 5_000;

const MAX_RETRY_DELAY_MS: i64 = 60_000;

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

/// One running bridge: both sides, the store, the configuration in force.
pub(crate) struct Bridge {
    config_path: PathBuf,
    pub(crate) store: Arc<Store>,
    pub(crate) matrix: MatrixSide,
    whatsapp: OnceLock<Arc<dyn WhatsAppClient>>,
    active: RwLock<Arc<Active>>,
    wake_to_matrix: Notify,
    wake_to_whatsapp: Notify,
    /// Groups whose room is set up (by jid), so relaying can start.
    rooms_ready: Mutex<HashSet<String>>,
    /// (room, user) pairs already told they may not speak, to tell each only once.
    refused_senders: Mutex<HashSet<(String, String)>>,
    /// How many notices Matrix senders may still get (`relay::notices`).
    notice_budget: Mutex<relay::notices::NoticeBudget>,
    pacer: Mutex<Pacer>,
    /// WhatsApp's connection as last reported.
    whatsapp_state: Mutex<ConnectionState>,
    /// WhatsApp edits and deletions refused since the start because their sender
    /// may not make them (a modified client's forgeries), for the metrics.
    forgeries_refused: std::sync::atomic::AtomicU64,
    /// A send to the homeserver failed because it was away, and none went through
    /// since (for the log to say it once).
    homeserver_away: std::sync::atomic::AtomicBool,
    /// WhatsApp files being fetched for to-Matrix items.
    whatsapp_downloads: InBackground<Result<Vec<u8>, WhatsAppError>>,
    /// Files being uploaded to the homeserver and posted, for to-Matrix items (the
    /// event id).
    matrix_uploads: InBackground<Result<String, MatrixError>>,
    /// Matrix files being fetched for to-WhatsApp items.
    matrix_downloads: InBackground<Result<Vec<u8>, MatrixError>>,
    /// Why the service must stop with an error (set once), and its wake-up.
    failure: Mutex<Option<String>>,
    failure_told: Notify,
    /// A weak handle on itself, for tasks spawned from `&self` callbacks.
    me: OnceLock<std::sync::Weak<Bridge>>,
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Bridge {
    /// A bridge on this configuration, not yet attached to WhatsApp.
    pub(crate) fn new(
        config_path: &Path,
        store: Arc<Store>,
        matrix: MatrixSide,
        config: Config,
        groups: Vec<GroupFile>,
    ) -> Arc<Bridge> {
        let pacer = Pacer::new(
            config.whatsapp.messages_per_minute,
            config.whatsapp.burst,
            now_ms(),
        );
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
            notice_budget: Mutex::default(),
            pacer: Mutex::new(pacer),
            whatsapp_state: Mutex::new(ConnectionState::Connecting),
            forgeries_refused: Default::default(),
            homeserver_away: Default::default(),
            whatsapp_downloads: InBackground::default(),
            matrix_uploads: InBackground::default(),
            matrix_downloads: InBackground::default(),
            failure: Mutex::default(),
            failure_told: Notify::new(),
            me: OnceLock::new(),
        });
        let _ = bridge.me.set(Arc::downgrade(&bridge));
        bridge
    }

    /// The WhatsApp side it sends through, once started.
    pub(crate) fn attach_whatsapp(&self, client: Arc<dyn WhatsAppClient>) {
        let _ = self.whatsapp.set(client);
    }

    /// Sets up the room of every approved group (what fails is retried later);
    /// returns how many groups are approved.
    pub(crate) async fn set_up_all_rooms(&self) -> usize {
        let groups: Vec<GroupFile> = self.active().groups.values().cloned().collect();
        for group in &groups {
            self.setup_group(group).await;
        }
        groups.len()
    }

    /// Starts the two outbox workers and the upkeep tasks.
    pub(crate) fn spawn_workers(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        vec![
            tokio::spawn(self.clone().outbox_worker(Direction::ToMatrix)),
            tokio::spawn(self.clone().outbox_worker(Direction::ToWhatsApp)),
            tokio::spawn(self.clone().room_setup_retries()),
            tokio::spawn(self.clone().heartbeat()),
            tokio::spawn(self.clone().forget_old_daily()),
            tokio::spawn(self.clone().tell_long_waits()),
        ]
    }

    fn active(&self) -> Arc<Active> {
        self.active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn whatsapp(&self) -> Option<&Arc<dyn WhatsAppClient>> {
        self.whatsapp.get()
    }

    /// The service cannot go on (what waits stays queued): `failed` returns `why`.
    fn fail(&self, why: String) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if failure.is_none() {
            *failure = Some(why);
            self.failure_told.notify_one();
        }
    }

    /// Returns once the service cannot go on, with why.
    pub(crate) async fn failed(&self) -> String {
        loop {
            if let Some(why) = self
                .failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
            {
                return why;
            }
            self.failure_told.notified().await;
        }
    }

    /// Remembers an error for `passerelle status` (no message content, no numbers).
    fn note_error(&self, text: &str) {
        let value = format!("{}|{text}", now_ms() / 1000);
        if let Err(error) = self.store.set_meta(status::keys::LAST_ERROR, &value) {
            tracing::warn!("store: {error}");
        }
    }

    /// Re-reads config.toml and groups.d and applies them; on any problem the running
    /// configuration stays exactly as it was.
    pub(crate) async fn reload(&self) -> Result<ReloadOutcome, Problems> {
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
        // A password added (or changed) lets the bot log in again without a restart.
        self.matrix.set_login_config(&new.config.matrix);
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
                if let Err(error) = self
                    .matrix
                    .send_notice(&room, relay::to_matrix::NO_LONGER_BRIDGED)
                    .await
                {
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
                    if old_group.moderators != group.moderators && group.room.is_none() {
                        if let Ok(Some(room)) = self.store.room_for_group(jid) {
                            let admins = &new.config.matrix.admins;
                            if let Err(error) = self
                                .matrix
                                .keep_room_policy(&room, admins, &group.moderators)
                                .await
                            {
                                tracing::warn!(group = %group.name, "could not give the moderators their power: {error}");
                            }
                            let newly: Vec<String> = group
                                .moderators
                                .iter()
                                .filter(|m| {
                                    !old_group.moderators.contains(m)
                                        && !old_group.invite.contains(m)
                                })
                                .cloned()
                                .collect();
                            self.matrix.invite(&room, &newly).await;
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

    /// One direction's worker: delivers the items of its outbox one at a time, in
    /// order, as they fall due (see `to_matrix.rs`, `to_whatsapp.rs`).
    async fn outbox_worker(self: Arc<Self>, direction: Direction) {
        loop {
            match self.store.next_due(direction, now_ms()) {
                Ok(Some(item)) if self.set_aside_if_given_up(&item, item.attempts) => {}
                Ok(Some(item)) if !self.active().groups.contains_key(&item.group_jid) => {
                    self.set_aside_unapproved(&item)
                }
                Ok(Some(item)) => match direction {
                    Direction::ToMatrix => self.deliver_to_matrix(item).await,
                    Direction::ToWhatsApp => self.deliver_to_whatsapp(item).await,
                },
                Ok(None) => self.wait_for_work(direction).await,
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

    /// A failed attempt of the item's own: tried again later, with a growing
    /// delay, until it has failed too often (then it is set aside).
    fn retry(&self, item: &OutboxItem, error: &str) {
        let delay = (1000i64 << item.attempts.min(6)).min(MAX_RETRY_DELAY_MS);
        if let Err(store_error) = self.store.retry_later(item.seq, error, now_ms() + delay) {
            tracing::error!("store: {store_error}");
            return;
        }
        self.set_aside_if_given_up(item, item.attempts + 1);
    }

    /// A download of the item's file from `side` failed in a way that may pass:
    /// said, and tried again like any failed attempt.
    fn retry_download(&self, item: &OutboxItem, side: &str, error: &dyn std::fmt::Display) {
        tracing::warn!(
            seq = item.seq,
            attempts = item.attempts,
            "{side} media download failed, will retry: {error}"
        );
        self.retry(item, &error.to_string());
    }

    /// The item cannot be tried yet for a reason that is not its own (WhatsApp
    /// away, its room being set up): asked again in a few seconds, its attempts
    /// not counted.
    fn wait_for_side(&self, item: &OutboxItem, why: &str) {
        tracing::debug!(seq = item.seq, "outbox item waits: {why}");
        if let Err(error) = self.store.postpone(item.seq, now_ms() + SIDE_AWAY_DELAY_MS) {
            tracing::error!("store: {error}");
        }
    }

    /// The homeserver is away (unreachable, down, or rate-limiting) or ended the
    /// bot's session: the item waits without its attempts counted, as for WhatsApp
    /// away; said once in the log until a send goes through again (a lost session
    /// is said by the Matrix side, which logs in again).
    fn homeserver_away(&self, item: &OutboxItem, error: &crate::matrix::MatrixError) {
        if !error.is_session_lost()
            && !self
                .homeserver_away
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!("homeserver unreachable, messages wait for it: {error}");
        }
        self.wait_for_side(item, &error.to_string());
    }

    /// A send to the homeserver went through.
    fn homeserver_back(&self) {
        if self
            .homeserver_away
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::info!("homeserver reachable again");
        }
    }

    /// Sets the item aside when it has failed `attempts` times or waited too long
    /// (`relay::give_up`), telling the room that misses it and the admins. Returns
    /// whether it was set aside.
    fn set_aside_if_given_up(&self, item: &OutboxItem, attempts: u32) -> bool {
        let age_secs = now_ms() / 1000 - item.enqueued_at;
        let Some(reason) = relay::give_up::set_aside_reason(attempts, age_secs) else {
            return false;
        };
        match self.store.set_aside(item.seq, &reason) {
            Ok(true) => {
                // A file fetched for it is not needed any more.
                self.whatsapp_downloads.forget(item.seq);
                self.matrix_uploads.forget(item.seq);
                self.matrix_downloads.forget(item.seq);
            }
            Ok(false) => return false,
            Err(error) => {
                tracing::error!("store: {error}");
                return false;
            }
        }
        tracing::warn!(seq = item.seq, direction = ?item.direction, "outbox item set aside: {reason}");
        self.note_error(&format!(
            "a message was set aside ({reason}); `passerelle outbox` lists it"
        ));
        let notice = match item.direction {
            Direction::ToMatrix => relay::give_up::set_aside_in_matrix(item.seq),
            Direction::ToWhatsApp => relay::give_up::set_aside_for_whatsapp(item.seq),
        };
        let room = item.room_id.clone();
        self.spawn_with_self(move |bridge| async move {
            let room = match room.is_empty() {
                false => Some(room),
                true => None,
            };
            if let Some(room) = room {
                if let Err(error) = bridge.matrix.send_notice(&room, &notice).await {
                    tracing::warn!("could not tell the room a message was set aside: {error}");
                }
            }
        });
        true
    }

    /// The item's group is no longer approved (its file was removed while the item
    /// waited): it is not delivered, but kept aside like a message that kept failing
    /// (`passerelle outbox retry` sends it once the group is approved again). The
    /// room was told the group is no longer bridged; only the log and status say it.
    fn set_aside_unapproved(&self, item: &OutboxItem) {
        let reason = relay::give_up::GROUP_NO_LONGER_APPROVED;
        match self.store.set_aside(item.seq, reason) {
            Ok(_) => {
                tracing::info!(seq = item.seq, direction = ?item.direction, "outbox item set aside: {reason}");
                self.note_error(&format!(
                    "a message was set aside ({reason}); `passerelle outbox` lists it"
                ));
            }
            Err(error) => {
                tracing::error!("store: {error}");
                self.wait_for_side(item, "store failed");
            }
        }
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

    /// The others of `group_jid` who spoke under the same name as `speaker` now
    /// shows (`shown`), and the name key to note the speaker under once the message
    /// is queued. A store failure shows the name as it is.
    fn namesakes(&self, group_jid: &str, speaker: &str, shown: &str) -> (Vec<String>, String) {
        let key = relay::namesakes::name_key(shown);
        let others = self
            .store
            .namesakes(group_jid, speaker, &key)
            .unwrap_or_else(|error| {
                tracing::warn!("store: namesakes: {error}");
                Vec::new()
            });
        (others, key)
    }

    /// Notes that `speaker` spoke in `group_jid` under `name_key`.
    fn note_speaker(&self, group_jid: &str, speaker: &str, name_key: &str) {
        if let Err(error) = self
            .store
            .note_speaker(group_jid, speaker, name_key, now_ms() / 1000)
        {
            tracing::warn!("store: speakers: {error}");
        }
    }

    fn log_skip(skip: Skip, direction: &str) {
        tracing::debug!(?skip, direction, "not relayed");
    }

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
