//! The bot's Matrix session: the first login, restoring it at each start, and
//! logging in again when the homeserver ends it (an admin reset the bot's sessions,
//! its password changed). A new login is a new device with a new store: the old
//! device's keys were deleted with it on the server, so its store is of no more use.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::encryption::export_secrets_bundle_from_store;
use matrix_sdk::ruma::api::client::uiaa;
use matrix_sdk::ruma::UserId;
use matrix_sdk::store::RoomLoadSettings;
use matrix_sdk::{Client, SessionChange};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, Notify};

use super::{MatrixError, MatrixEvents, MatrixSide};
use crate::config::MatrixConfig;
use crate::secret_file;

/// The store directory of a session stored before stores were named per login.
const FIRST_STORE: &str = "matrix";

/// The key every store is encrypted with, in the state directory.
const STORE_KEY_FILE: &str = "matrix-store-key";

/// How long the bridge keeps going without a Matrix session it cannot renew (no
/// password, or the password refused) before it stops with an error, so that the
/// service manager shows the failure. Everything waiting stays queued.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// The session file: the SDK's session and the store directory that goes with it.
#[derive(Serialize, Deserialize)]
struct StoredSession {
    #[serde(flatten)]
    session: MatrixSession,
    /// Directory of the matrix-sdk store, in the state directory.
    #[serde(default = "first_store")]
    store: String,
}

fn first_store() -> String {
    FIRST_STORE.to_string()
}

/// A client whose session is active, and the channel that says when it ends.
pub(super) struct Opened {
    pub client: Client,
    pub changes: broadcast::Receiver<SessionChange>,
}

/// Where the session file and the stores are.
fn session_path(state_dir: &Path) -> PathBuf {
    state_dir.join("matrix-session.json")
}

/// Restores the stored session, or logs in with the configured password the first
/// time and stores the session (mode 0600) for the next runs.
pub(super) async fn open(config: &MatrixConfig, state_dir: &Path) -> Result<Opened, MatrixError> {
    let path = session_path(state_dir);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let stored: StoredSession =
                serde_json::from_slice(&bytes).map_err(|source| MatrixError::Session {
                    path: path.clone(),
                    source,
                })?;
            let client = build_client(config, state_dir, &stored.store).await?;
            let changes = client.subscribe_to_session_changes();
            client
                .matrix_auth()
                .restore_session(stored.session, RoomLoadSettings::default())
                .await?;
            tracing::info!("Matrix session restored");
            remove_unused_stores(state_dir, &stored.store);
            Ok(Opened { client, changes })
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            log_in(config, state_dir, FIRST_STORE, None).await
        }
        Err(source) => Err(MatrixError::Io { path, source }),
    }
}

/// Logs in again as a new device with a new store, after the homeserver ended the
/// session; the old store is removed once the new session is stored.
pub(super) async fn log_in_again(
    config: &MatrixConfig,
    state_dir: &Path,
) -> Result<Opened, MatrixError> {
    let old_store = std::fs::read(session_path(state_dir))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<StoredSession>(&bytes).ok())
        .map(|stored| stored.store);
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let new_store = format!("{FIRST_STORE}-{}", since_epoch.as_millis());
    // The old store goes once the new session is stored (`remove_unused_stores`).
    log_in(config, state_dir, &new_store, old_store.as_deref()).await
}

/// Gives the new device a cross-signing identity, so that other people's clients
/// see the bot's messages as coming from a verified device: the identity of the old
/// device when there was one (nobody who verified the bot sees it change), else a
/// new one, uploaded with the password as the homeserver's authentication. Failing
/// that only costs clients' warnings, so it is logged, not fatal.
async fn give_identity(
    client: &Client,
    state_dir: &Path,
    bot: &UserId,
    password: &str,
    old_store: Option<&str>,
) {
    if let Some(old_store) = old_store {
        if carry_identity(client, state_dir, old_store).await {
            return;
        }
    }
    let encryption = client.encryption();
    let result = match encryption.bootstrap_cross_signing(None).await {
        Err(error) => match error.as_uiaa_response() {
            Some(response) => {
                let identifier =
                    uiaa::UserIdentifier::Matrix(uiaa::MatrixUserIdentifier::new(bot.to_string()));
                let mut auth = uiaa::Password::new(identifier, password.to_owned());
                auth.session = response.session.clone();
                encryption
                    .bootstrap_cross_signing(Some(uiaa::AuthData::Password(auth)))
                    .await
            }
            None => Err(error),
        },
        done => done,
    };
    match result {
        Ok(()) => tracing::info!("cross-signing set up for the bot's device"),
        Err(error) => tracing::warn!("could not set up cross-signing for the bot: {error}"),
    }
}

/// Carries the bot's cross-signing identity (and key backup secret) from the old
/// device's store `old_store` over to the new device, right after its login;
/// whether it did.
async fn carry_identity(client: &Client, state_dir: &Path, old_store: &str) -> bool {
    let Ok(key) = secret_file::read_or_create(&state_dir.join(STORE_KEY_FILE)) else {
        return false;
    };
    // The store's directory: matrix-sdk finds its crypto database in it.
    let store_dir = state_dir.join(old_store);
    let bundle = match export_secrets_bundle_from_store(&store_dir, Some(&key)).await {
        Ok(Some((_, bundle))) => bundle,
        Ok(None) => return false,
        Err(error) => {
            tracing::info!(
                "the old device's cross-signing identity cannot be carried over: {error}"
            );
            return false;
        }
    };
    match client.encryption().import_secrets_bundle(&bundle).await {
        Ok(()) => {
            tracing::info!("the bot's cross-signing identity is carried over to its new device");
            true
        }
        Err(error) => {
            tracing::warn!("could not carry the cross-signing identity over: {error}");
            false
        }
    }
}

/// Logs in with the configured password into a client on store `store_name`, gives
/// the device its cross-signing identity (from `old_store`, the old device's, if
/// it can) and stores the session.
async fn log_in(
    config: &MatrixConfig,
    state_dir: &Path,
    store_name: &str,
    old_store: Option<&str>,
) -> Result<Opened, MatrixError> {
    let path = session_path(state_dir);
    let bot = UserId::parse(config.user.as_str())
        .map_err(|_| MatrixError::InvalidId(config.user.clone()))?;
    let password = config
        .read_password()
        .map_err(|source| MatrixError::Io {
            path: config.password_file.clone().unwrap_or_default(),
            source,
        })?
        .ok_or(MatrixError::NoPassword)?;
    let store_dir = state_dir.join(store_name);
    // No session names the store a login starts in: one there is left by a login
    // that did not finish, and its device (never used) would not match the new one.
    if store_dir.exists() {
        tracing::info!(store = %store_dir.display(), "removing a Matrix store no session uses");
        if let Err(error) = std::fs::remove_dir_all(&store_dir) {
            tracing::warn!(store = %store_dir.display(), "could not remove it: {error}");
        }
    }
    let client = build_client(config, state_dir, store_name).await?;
    let changes = client.subscribe_to_session_changes();
    client
        .matrix_auth()
        .login_username(&bot, &password)
        .initial_device_display_name(&config.device_name)
        .send()
        .await?;
    give_identity(&client, state_dir, &bot, &password, old_store).await;
    let session = client
        .matrix_auth()
        .session()
        .ok_or(MatrixError::NoPassword)?;
    let stored = StoredSession {
        session,
        store: store_name.to_string(),
    };
    let bytes = serde_json::to_vec(&stored).map_err(|source| MatrixError::Session {
        path: path.clone(),
        source,
    })?;
    secret_file::write_private(&path, &bytes).map_err(|source| MatrixError::Io {
        path: path.clone(),
        source,
    })?;
    tracing::info!("Matrix login done, session stored");
    remove_unused_stores(state_dir, store_name);
    Ok(Opened { client, changes })
}

/// Removes the store directories of the state directory other than `in_use` (a
/// login interrupted before its session was stored leaves one behind): no session
/// names them, and their devices are of no use.
fn remove_unused_stores(state_dir: &Path, in_use: &str) {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let is_store = name == FIRST_STORE
            || name
                .strip_prefix("matrix-")
                .is_some_and(|ms| !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()));
        if !is_store || name == in_use || !entry.path().is_dir() {
            continue;
        }
        tracing::info!(store = name, "removing a Matrix store no session uses");
        if let Err(error) = std::fs::remove_dir_all(entry.path()) {
            tracing::warn!(store = name, "could not remove it: {error}");
        }
    }
}

/// A client on the store `store_name` of the state directory (created 0700,
/// encrypted with the state directory's store key).
async fn build_client(
    config: &MatrixConfig,
    state_dir: &Path,
    store_name: &str,
) -> Result<Client, MatrixError> {
    let store_key_path = state_dir.join(STORE_KEY_FILE);
    let store_key =
        secret_file::read_or_create(&store_key_path).map_err(|source| MatrixError::Io {
            path: store_key_path.clone(),
            source,
        })?;
    let store_dir = state_dir.join(store_name);
    secret_file::create_private_dir(&store_dir).map_err(|source| MatrixError::Io {
        path: store_dir.clone(),
        source,
    })?;
    Ok(Client::builder()
        .homeserver_url(config.homeserver.as_str())
        // The configured address is the one used, also after a login whose answer
        // names another (the public URL): a bridge beside its homeserver talks to
        // it on the address the admin chose, not through the Internet's way round.
        .respect_login_well_known(false)
        .sqlite_store(&store_dir, Some(&store_key))
        .build()
        .await?)
}

/// Whether a login failed because of the credentials (the password refused, none
/// configured), which only an admin can mend, rather than the homeserver being away.
pub(super) fn needs_admin(error: &MatrixError) -> bool {
    !error.is_homeserver_away()
}

/// Watches the session in force and logs in again when the homeserver ends it.
pub(super) struct Keeper {
    config: std::sync::RwLock<MatrixConfig>,
    state_dir: PathBuf,
    changes: std::sync::Mutex<Option<broadcast::Receiver<SessionChange>>>,
    lost: AtomicBool,
    renewed: Notify,
}

impl Keeper {
    pub(super) fn new(
        config: MatrixConfig,
        state_dir: &Path,
        changes: broadcast::Receiver<SessionChange>,
    ) -> Keeper {
        Keeper {
            config: std::sync::RwLock::new(config),
            state_dir: state_dir.to_path_buf(),
            changes: std::sync::Mutex::new(Some(changes)),
            lost: AtomicBool::new(false),
            renewed: Notify::new(),
        }
    }

    /// Whether the homeserver ended the session and no new one is in force yet.
    pub(super) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Waits until a new session is in force, or `at_most`.
    pub(super) async fn renewed_or(&self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.renewed.notified()).await;
    }

    /// The configuration to log in again with (its password file is read then).
    pub(super) fn set_config(&self, config: &MatrixConfig) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config.clone();
    }

    fn config(&self) -> MatrixConfig {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl MatrixSide {
    /// Runs for the life of the service: when a request of the session in force
    /// meets `M_UNKNOWN_TOKEN`, logs in again (retrying while the homeserver is
    /// away), puts the new client in force and tells `events`; gives up after
    /// [`GIVE_UP_AFTER`] when only an admin can mend it.
    pub(super) async fn keep_session(self, events: Arc<dyn MatrixEvents>) {
        let taken = self
            .session
            .changes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(mut changes) = taken else { return };
        loop {
            match changes.recv().await {
                Ok(SessionChange::UnknownToken(data)) => {
                    tracing::error!(
                        soft_logout = data.soft_logout,
                        "the homeserver ended the bot's Matrix session"
                    );
                }
                Ok(SessionChange::TokensRefreshed) => continue,
                // Missed changes: a request still failing says so again.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            }
            self.session.lost.store(true, Ordering::Relaxed);
            let can_log_in_again = self.session.config().has_password();
            events.session_changed(super::SessionChange::Lost { can_log_in_again });
            match self.log_in_again_until_done(&events).await {
                Some(opened) => changes = opened,
                None => return,
            }
        }
    }

    /// Logs in again until it works; `None` once given up (told to `events`).
    async fn log_in_again_until_done(
        &self,
        events: &Arc<dyn MatrixEvents>,
    ) -> Option<broadcast::Receiver<SessionChange>> {
        let lost_at = tokio::time::Instant::now();
        let mut delay = Duration::from_secs(1);
        let mut last_refusal = None;
        loop {
            match log_in_again(&self.session.config(), &self.session.state_dir).await {
                Ok(opened) => {
                    let device_id = opened
                        .client
                        .device_id()
                        .map(|id| id.to_string())
                        .unwrap_or_default();
                    self.put_in_force(opened.client, events);
                    self.session.lost.store(false, Ordering::Relaxed);
                    self.session.renewed.notify_waiters();
                    tracing::info!(device = %device_id, "logged in to Matrix again as a new device");
                    events.session_changed(super::SessionChange::Renewed { device_id });
                    return Some(opened.changes);
                }
                Err(error) if needs_admin(&error) => {
                    let why = error.to_string();
                    if lost_at.elapsed() >= GIVE_UP_AFTER {
                        events.session_changed(super::SessionChange::GivenUp { why });
                        return None;
                    }
                    if last_refusal.as_ref() != Some(&why) {
                        tracing::error!("cannot log in to Matrix again: {why}");
                        events.session_changed(super::SessionChange::LoginRefused {
                            why: why.clone(),
                        });
                        last_refusal = Some(why);
                    }
                }
                Err(error) => {
                    tracing::warn!("logging in to Matrix again failed, will retry: {error}");
                }
            }
            // Not past the give-up time by more than a second or two.
            let left = GIVE_UP_AFTER.saturating_sub(lost_at.elapsed());
            tokio::time::sleep(delay.min(left.max(Duration::from_millis(100)))).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }

    /// Makes `client` the one every request goes through, its handlers moved over
    /// from the old one.
    fn put_in_force(&self, client: Client, events: &Arc<dyn MatrixEvents>) {
        let old = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(|e| e.into_inner()),
            client.clone(),
        );
        let handles: Vec<_> =
            std::mem::take(&mut *self.handlers.lock().unwrap_or_else(|e| e.into_inner()));
        for handle in handles {
            old.remove_event_handler(handle);
        }
        self.add_handlers(&client, events);
    }

    /// The configuration to log in again with, as last reloaded.
    pub fn set_login_config(&self, config: &MatrixConfig) {
        self.session.set_config(config);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_store_in_use_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        for store in ["matrix", "matrix-1700000000000", "matrix-1800000000000"] {
            std::fs::create_dir(dir.path().join(store)).unwrap();
        }
        for file in ["matrix-store-key", "matrix-session.json"] {
            std::fs::write(dir.path().join(file), b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join("matrix-notes")).unwrap();
        remove_unused_stores(dir.path(), "matrix-1800000000000");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "matrix-1800000000000",
                "matrix-notes",
                "matrix-session.json",
                "matrix-store-key"
            ]
        );
    }
}
