//! The persistent WhatsApp key store: whatsapp-rust's storage `Backend` (device
//! identity, Signal sessions and keys, app-state sync keys and versions, LID<->PN
//! mappings, the inbound durability buffer, message secrets, ...) on our own rusqlite
//! connection, in `whatsapp.db` (mode 0600) under the state directory.
//!
//! whatsapp-rust's own SQLite store links another `libsqlite3-sys` than matrix-sdk,
//! hence this one. Its semantics follow `wacore::store::InMemoryBackend`, the
//! reference implementation, which the tests below compare it against.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use serde::de::DeserializeOwned;
use serde::Serialize;
use whatsapp_rust::bytes::Bytes;
use whatsapp_rust::wacore::appstate::hash::HashState;
use whatsapp_rust::wacore::appstate::processor::AppStateMutationMAC;
use whatsapp_rust::wacore::stats::StorageResourceReport;
use whatsapp_rust::wacore::store::error::{Result as StoreResult, StoreError};
use whatsapp_rust::wacore::store::traits::{
    merge_msg_secret_expiry, merge_msg_secret_message_ts, AppStateSyncKey, AppSyncStore,
    DeviceListRecord, DeviceStore, LidPnMappingEntry, MsgSecretEntry, MsgSecretStore,
    PendingInboundKey, PendingInboundRow, ProtocolStore, SignalStore, TcTokenEntry,
};
use whatsapp_rust::wacore::store::Device;

/// How long a statement waits for another connection's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Most sent messages kept for retry receipts (the reference store's cap).
const MAX_SENT_MESSAGES: i64 = 4096;

/// `meta` key of the most recently set app-state sync key id.
const META_LATEST_SYNC_KEY_ID: &str = "latest_sync_key_id";
/// `meta` key of the next id `DeviceStore::create` hands out.
const META_NEXT_DEVICE_ID: &str = "next_device_id";

/// Schema migrations; entry `i` takes the database from `user_version` `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    "
    CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
    -- The one device of this store (id is always 1); `data` is the serde JSON of
    -- wacore's Device.
    CREATE TABLE device (id INTEGER PRIMARY KEY CHECK (id = 1), data TEXT NOT NULL);

    CREATE TABLE identities (address TEXT PRIMARY KEY, key BLOB NOT NULL);
    CREATE TABLE sessions (address TEXT PRIMARY KEY, record BLOB NOT NULL);
    CREATE TABLE prekeys (
        id INTEGER PRIMARY KEY,
        record BLOB NOT NULL,
        uploaded INTEGER NOT NULL
    );
    CREATE TABLE signed_prekeys (id INTEGER PRIMARY KEY, record BLOB NOT NULL);
    CREATE TABLE sender_keys (address TEXT PRIMARY KEY, record BLOB NOT NULL);

    CREATE TABLE app_sync_keys (key_id BLOB PRIMARY KEY, data TEXT NOT NULL);
    CREATE TABLE app_state_versions (name TEXT PRIMARY KEY, data TEXT NOT NULL);
    CREATE TABLE mutation_macs (
        name TEXT NOT NULL,
        index_mac BLOB NOT NULL,
        version INTEGER NOT NULL,
        value_mac BLOB NOT NULL,
        PRIMARY KEY (name, index_mac)
    ) WITHOUT ROWID;

    CREATE TABLE sender_key_devices (
        group_jid TEXT NOT NULL,
        device_jid TEXT NOT NULL,
        has_key INTEGER NOT NULL,
        PRIMARY KEY (group_jid, device_jid)
    ) WITHOUT ROWID;
    CREATE INDEX sender_key_devices_by_device ON sender_key_devices (device_jid);
    CREATE TABLE lid_mappings (
        lid TEXT PRIMARY KEY,
        phone_number TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        learning_source TEXT NOT NULL
    );
    -- Reverse index phone -> most recently stored LID (as in the reference store).
    CREATE TABLE pn_to_lid (phone_number TEXT PRIMARY KEY, lid TEXT NOT NULL);
    CREATE TABLE base_keys (
        address TEXT NOT NULL,
        message_id TEXT NOT NULL,
        base_key BLOB NOT NULL,
        PRIMARY KEY (address, message_id)
    ) WITHOUT ROWID;
    CREATE TABLE device_lists (user TEXT PRIMARY KEY, data TEXT NOT NULL);
    CREATE TABLE group_metadata (group_jid TEXT PRIMARY KEY, data BLOB NOT NULL);
    CREATE TABLE tc_tokens (
        jid TEXT PRIMARY KEY,
        token BLOB NOT NULL,
        token_timestamp INTEGER NOT NULL,
        sender_timestamp INTEGER
    );
    CREATE TABLE sent_messages (
        chat_jid TEXT NOT NULL,
        message_id TEXT NOT NULL,
        payload BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (chat_jid, message_id)
    );
    CREATE INDEX sent_messages_by_time ON sent_messages (created_at);
    CREATE TABLE pending_inbound (
        chat TEXT NOT NULL,
        sender TEXT NOT NULL,
        id TEXT NOT NULL,
        message BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (chat, sender, id)
    );
    CREATE INDEX pending_inbound_by_time ON pending_inbound (created_at);

    CREATE TABLE msg_secrets (
        chat TEXT NOT NULL,
        sender TEXT NOT NULL,
        msg_id TEXT NOT NULL,
        secret BLOB NOT NULL,
        expires_at INTEGER NOT NULL,
        message_ts INTEGER NOT NULL,
        PRIMARY KEY (chat, sender, msg_id)
    );
    CREATE INDEX msg_secrets_by_expiry ON msg_secrets (expires_at) WHERE expires_at != 0;
    ",
    // 2: passerelle's own: the polls seen in groups, to read their votes (each vote
    // is encrypted with its poll's secret). `options` is a JSON array of names.
    "
    CREATE TABLE polls (
        chat TEXT NOT NULL,
        poll_id TEXT NOT NULL,
        creator TEXT NOT NULL,
        secret BLOB NOT NULL,
        question TEXT NOT NULL,
        options TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (chat, poll_id)
    );
    ",
];

/// A poll seen in a group, kept to read its votes: WhatsApp encrypts each vote with
/// a key derived from the poll's secret, its id, its creator and the voter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollRecord {
    /// The group's JID.
    pub chat: String,
    pub poll_id: String,
    /// The creator's JID, as WhatsApp addressed them (phone number or LID).
    pub creator: String,
    pub secret: Vec<u8>,
    pub question: String,
    pub options: Vec<String>,
}

/// Everything that can go wrong in the WhatsApp key store. At the `Backend` boundary
/// it becomes wacore's `StoreError`.
#[derive(Debug, thiserror::Error)]
pub enum WaStoreError {
    /// Creating, opening, chmod-ing or writing a file of the store failed.
    #[error("cannot prepare WhatsApp key store file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An SQLite error (open, query, constraint).
    #[error("WhatsApp key store database error: {0}")]
    Sqlite(#[from] rusqlite::Error),

    /// The file was written by a newer passerelle (schema version above what we know).
    #[error("WhatsApp key store schema version {found} is newer than this passerelle supports ({supported}); upgrade passerelle")]
    SchemaTooNew { found: i64, supported: i64 },

    /// A migration failed; the database is left at version `from` (nothing applied).
    #[error(
        "WhatsApp key store migration to version {to} failed (left at version {from}): {source}"
    )]
    Migration {
        from: i64,
        to: i64,
        #[source]
        source: rusqlite::Error,
    },

    /// A value could not be encoded to or decoded from its serde JSON column.
    #[error("WhatsApp key store: cannot encode or decode {what}: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    /// A stored or given value does not have the shape the store needs.
    #[error("WhatsApp key store: invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
}

impl From<WaStoreError> for StoreError {
    fn from(error: WaStoreError) -> Self {
        match error {
            WaStoreError::File { source, .. } => StoreError::Io(source),
            WaStoreError::Sqlite(source) => StoreError::Database(Box::new(source)),
            WaStoreError::Json { .. } => StoreError::Serialization(Box::new(error)),
            WaStoreError::SchemaTooNew { .. } | WaStoreError::Migration { .. } => {
                StoreError::Migration(Box::new(error))
            }
            WaStoreError::Invalid { .. } => StoreError::Validation(error.to_string()),
        }
    }
}

type WaResult<T> = Result<T, WaStoreError>;

/// whatsapp-rust's storage `Backend` on one SQLite connection (`Send + Sync`; hand it
/// to `Bot::builder().with_backend(..)`).
///
/// The async methods run their SQLite work inline under a `std::sync::Mutex`, never
/// holding it across an `.await`: a statement or a batch transaction takes well under
/// a millisecond (about 0.3 ms per fsync'd commit measured on this disk), which does
/// not warrant `spawn_blocking` and its per-call copies of every argument.
pub struct SqliteBackend {
    conn: Mutex<Connection>,
    /// The database file; `None` for an in-memory store.
    path: Option<PathBuf>,
}

impl std::fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBackend")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteBackend {
    /// Opens (creating it if needed, mode 0600) the key store at `path` and brings its
    /// schema up to date. An existing file readable by others is tightened to 0600.
    pub fn open(path: &Path) -> Result<SqliteBackend, WaStoreError> {
        prepare_private_file(path)?;
        let conn = Connection::open(path)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), %mode, "WhatsApp key store is not in WAL mode");
        }
        SqliteBackend::setup(conn, Some(path.to_path_buf()))
    }

    /// The phone number (digits) of the device linked in the key store at `path`, read
    /// without writing anything (safe while the service holds the store open);
    /// `None` when the file does not exist or no device is linked.
    pub fn linked_number_at(path: &Path) -> Result<Option<String>, WaStoreError> {
        if !path.exists() {
            return Ok(None);
        }
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let data: Option<String> = match conn
            .query_row("SELECT data FROM device WHERE id = 1", [], |row| row.get(0))
            .optional()
        {
            Ok(data) => data,
            // A store created by a newer or unfinished run may lack the table yet.
            Err(rusqlite::Error::SqliteFailure(_, Some(message)))
                if message.starts_with("no such table") =>
            {
                None
            }
            Err(error) => return Err(error.into()),
        };
        let Some(data) = data else { return Ok(None) };
        let device: Device = from_json("device", &data)?;
        if !device.is_registered() {
            return Ok(None);
        }
        Ok(device.pn.map(|pn| pn.user.to_string()))
    }

    /// A private in-memory store with the full schema (tests, throw-away sessions).
    pub fn open_in_memory() -> Result<SqliteBackend, WaStoreError> {
        SqliteBackend::setup(Connection::open_in_memory()?, None)
    }

    fn setup(mut conn: Connection, path: Option<PathBuf>) -> WaResult<SqliteBackend> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Signal ratchets and the inbound durability buffer must survive a power cut
        // once written: a lost commit means undecryptable or lost messages.
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Used prekeys and old ratchet states are key material: zero freed pages.
        conn.pragma_update(None, "secure_delete", true)?;
        migrate(&mut conn)?;
        Ok(SqliteBackend {
            conn: Mutex::new(conn),
            path,
        })
    }

    /// The connection. A panic while it was held cannot leave a half-done write (an
    /// open `Transaction` rolls back on drop), so a poisoned lock is simply taken over.
    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the connection (no explicit transaction: single statements).
    fn with<T>(&self, f: impl FnOnce(&Connection) -> WaResult<T>) -> StoreResult<T> {
        let conn = self.lock();
        f(&conn).map_err(StoreError::from)
    }

    /// Runs `f` in one immediate transaction, committed if `f` succeeds.
    fn tx<T>(&self, f: impl FnOnce(&Transaction<'_>) -> WaResult<T>) -> StoreResult<T> {
        let mut conn = self.lock();
        let run = |conn: &mut Connection| -> WaResult<T> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        };
        run(&mut conn).map_err(StoreError::from)
    }
}

/// Polls, passerelle's own table in this file (the secrets are key material).
impl SqliteBackend {
    /// Keeps a poll (a poll seen again keeps its first record).
    pub fn remember_poll(&self, poll: &PollRecord, now_secs: i64) -> Result<(), WaStoreError> {
        let options = to_json("poll options", &poll.options)?;
        self.lock().execute(
            "INSERT OR IGNORE INTO polls
                 (chat, poll_id, creator, secret, question, options, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                poll.chat,
                poll.poll_id,
                poll.creator,
                poll.secret,
                poll.question,
                options,
                now_secs
            ],
        )?;
        Ok(())
    }

    /// Forgets the polls kept since before `cutoff_secs` (Unix seconds); returns how
    /// many.
    pub fn forget_polls_before(&self, cutoff_secs: i64) -> Result<usize, WaStoreError> {
        Ok(self
            .lock()
            .execute("DELETE FROM polls WHERE created_at < ?1", [cutoff_secs])?)
    }

    /// The poll `poll_id` of group `chat`, if it was seen.
    pub fn poll(&self, chat: &str, poll_id: &str) -> Result<Option<PollRecord>, WaStoreError> {
        let row = self
            .lock()
            .query_row(
                "SELECT creator, secret, question, options FROM polls
                 WHERE chat = ?1 AND poll_id = ?2",
                params![chat, poll_id],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, Vec<u8>>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                    ))
                },
            )
            .optional()?;
        let Some((creator, secret, question, options)) = row else {
            return Ok(None);
        };
        Ok(Some(PollRecord {
            chat: chat.to_owned(),
            poll_id: poll_id.to_owned(),
            creator,
            secret,
            question,
            options: from_json("poll options", &options)?,
        }))
    }
}

/// Creates `path` owner-only (0600) and tightens leftover sidecar files: see
/// [`crate::secret_file::prepare_private_sqlite_file`].
fn prepare_private_file(path: &Path) -> WaResult<()> {
    crate::secret_file::prepare_private_sqlite_file(path)
        .map_err(|(path, source)| WaStoreError::File { path, source })
}

/// Applies the missing migrations, each in its own transaction with its version bump.
fn migrate(conn: &mut Connection) -> WaResult<()> {
    let supported = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    let found: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if found > supported {
        return Err(WaStoreError::SchemaTooNew { found, supported });
    }
    for (to, sql) in (1_i64..)
        .zip(MIGRATIONS.iter())
        .skip_while(|(to, _)| *to <= found)
    {
        let from = to - 1;
        let apply = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", to)?;
            tx.commit()
        };
        apply(conn).map_err(|source| WaStoreError::Migration { from, to, source })?;
        tracing::debug!(to, "WhatsApp key store migrated");
    }
    Ok(())
}

fn to_json<T: Serialize + ?Sized>(what: &'static str, value: &T) -> WaResult<String> {
    serde_json::to_string(value).map_err(|source| WaStoreError::Json { what, source })
}

fn from_json<T: DeserializeOwned>(what: &'static str, text: &str) -> WaResult<T> {
    serde_json::from_str(text).map_err(|source| WaStoreError::Json { what, source })
}

fn invalid(what: &'static str, detail: impl Into<String>) -> WaStoreError {
    WaStoreError::Invalid {
        what,
        detail: detail.into(),
    }
}

fn u64_to_i64(what: &'static str, value: u64) -> WaResult<i64> {
    i64::try_from(value).map_err(|_| invalid(what, format!("{value} does not fit in i64")))
}

fn count_u32(count: usize) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

fn now_secs() -> i64 {
    whatsapp_rust::wacore::time::now_secs()
}

fn meta_get(conn: &Connection, key: &str) -> WaResult<Option<Vec<u8>>> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
            row.get(0)
        })
        .optional()?)
}

fn meta_set(conn: &Connection, key: &str, value: &[u8]) -> WaResult<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

fn put_blob(conn: &Connection, table_sql: &str, key: &str, value: &[u8]) -> WaResult<()> {
    conn.prepare_cached(table_sql)?
        .execute(params![key, value])?;
    Ok(())
}

const UPSERT_IDENTITY: &str = "INSERT INTO identities (address, key) VALUES (?1, ?2)
     ON CONFLICT (address) DO UPDATE SET key = excluded.key";
const UPSERT_SESSION: &str = "INSERT INTO sessions (address, record) VALUES (?1, ?2)
     ON CONFLICT (address) DO UPDATE SET record = excluded.record";
const UPSERT_SENDER_KEY: &str = "INSERT INTO sender_keys (address, record) VALUES (?1, ?2)
     ON CONFLICT (address) DO UPDATE SET record = excluded.record";
const UPSERT_PREKEY: &str = "INSERT INTO prekeys (id, record, uploaded) VALUES (?1, ?2, ?3)
     ON CONFLICT (id) DO UPDATE SET record = excluded.record, uploaded = excluded.uploaded";

fn put_lid_mapping_in(conn: &Connection, entry: &LidPnMappingEntry) -> WaResult<()> {
    let old_phone: Option<String> = conn
        .prepare_cached("SELECT phone_number FROM lid_mappings WHERE lid = ?1")?
        .query_row([&entry.lid], |row| row.get(0))
        .optional()?;
    // As the reference store: the LID moved to another number, so its old number's
    // reverse entry goes (even if another LID claimed that number in between; kept
    // for parity with `InMemoryBackend`, which the tests compare against).
    if let Some(old_phone) = old_phone.filter(|old| *old != entry.phone_number) {
        conn.prepare_cached("DELETE FROM pn_to_lid WHERE phone_number = ?1")?
            .execute([old_phone])?;
    }
    conn.prepare_cached(
        "INSERT INTO pn_to_lid (phone_number, lid) VALUES (?1, ?2)
         ON CONFLICT (phone_number) DO UPDATE SET lid = excluded.lid",
    )?
    .execute(params![entry.phone_number, entry.lid])?;
    conn.prepare_cached(
        "INSERT INTO lid_mappings (lid, phone_number, created_at, updated_at, learning_source)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (lid) DO UPDATE SET phone_number = excluded.phone_number,
             created_at = excluded.created_at, updated_at = excluded.updated_at,
             learning_source = excluded.learning_source",
    )?
    .execute(params![
        entry.lid,
        entry.phone_number,
        entry.created_at,
        entry.updated_at,
        entry.learning_source
    ])?;
    Ok(())
}

fn lid_mapping_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<LidPnMappingEntry> {
    Ok(LidPnMappingEntry {
        lid: row.get(0)?,
        phone_number: row.get(1)?,
        created_at: row.get(2)?,
        updated_at: row.get(3)?,
        learning_source: row.get(4)?,
    })
}

fn update_device_list_in(conn: &Connection, record: &DeviceListRecord) -> WaResult<()> {
    let data = to_json("device list", record)?;
    conn.prepare_cached(
        "INSERT INTO device_lists (user, data) VALUES (?1, ?2)
         ON CONFLICT (user) DO UPDATE SET data = excluded.data",
    )?
    .execute(params![record.user, data])?;
    Ok(())
}

fn get_tc_token_in(conn: &Connection, jid: &str) -> WaResult<Option<TcTokenEntry>> {
    Ok(conn
        .prepare_cached(
            "SELECT token, token_timestamp, sender_timestamp FROM tc_tokens WHERE jid = ?1",
        )?
        .query_row([jid], |row| {
            Ok(TcTokenEntry {
                token: row.get(0)?,
                token_timestamp: row.get(1)?,
                sender_timestamp: row.get(2)?,
            })
        })
        .optional()?)
}

fn put_tc_token_in(conn: &Connection, jid: &str, entry: &TcTokenEntry) -> WaResult<()> {
    conn.prepare_cached(
        "INSERT INTO tc_tokens (jid, token, token_timestamp, sender_timestamp)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (jid) DO UPDATE SET token = excluded.token,
             token_timestamp = excluded.token_timestamp,
             sender_timestamp = excluded.sender_timestamp",
    )?
    .execute(params![
        jid,
        entry.token,
        entry.token_timestamp,
        entry.sender_timestamp
    ])?;
    Ok(())
}

fn store_pending_inbound_in(
    conn: &Connection,
    chat: &str,
    sender: &str,
    id: &str,
    message: &[u8],
    now: i64,
) -> WaResult<()> {
    conn.prepare_cached(
        "INSERT INTO pending_inbound (chat, sender, id, message, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (chat, sender, id) DO UPDATE SET message = excluded.message,
             created_at = excluded.created_at",
    )?
    .execute(params![chat, sender, id, message, now])?;
    Ok(())
}

fn delete_pending_inbound_in(
    conn: &Connection,
    chat: &str,
    sender: &str,
    id: &str,
) -> WaResult<()> {
    conn.prepare_cached("DELETE FROM pending_inbound WHERE chat = ?1 AND sender = ?2 AND id = ?3")?
        .execute(params![chat, sender, id])?;
    Ok(())
}

fn identity_key(blob: Vec<u8>) -> WaResult<[u8; 32]> {
    <[u8; 32]>::try_from(blob.as_slice())
        .map_err(|_| invalid("identity key", format!("{} bytes, expected 32", blob.len())))
}

#[async_trait]
impl SignalStore for SqliteBackend {
    async fn put_identity(&self, address: &str, key: [u8; 32]) -> StoreResult<()> {
        self.with(|c| put_blob(c, UPSERT_IDENTITY, address, &key))
    }

    async fn put_identities_batch(&self, identities: &[(Arc<str>, [u8; 32])]) -> StoreResult<()> {
        self.tx(|tx| {
            for (address, key) in identities {
                put_blob(tx, UPSERT_IDENTITY, address, key)?;
            }
            Ok(())
        })
    }

    async fn load_identity(&self, address: &str) -> StoreResult<Option<[u8; 32]>> {
        self.with(|c| {
            let blob: Option<Vec<u8>> = c
                .prepare_cached("SELECT key FROM identities WHERE address = ?1")?
                .query_row([address], |row| row.get(0))
                .optional()?;
            blob.map(identity_key).transpose()
        })
    }

    async fn delete_identity(&self, address: &str) -> StoreResult<()> {
        self.with(|c| {
            c.execute("DELETE FROM identities WHERE address = ?1", [address])?;
            Ok(())
        })
    }

    async fn get_session(&self, address: &str) -> StoreResult<Option<Bytes>> {
        self.with(|c| {
            let blob: Option<Vec<u8>> = c
                .prepare_cached("SELECT record FROM sessions WHERE address = ?1")?
                .query_row([address], |row| row.get(0))
                .optional()?;
            Ok(blob.map(Bytes::from))
        })
    }

    async fn put_session(&self, address: &str, session: &[u8]) -> StoreResult<()> {
        self.with(|c| put_blob(c, UPSERT_SESSION, address, session))
    }

    async fn put_sessions_batch(&self, sessions: &[(Arc<str>, Bytes)]) -> StoreResult<()> {
        self.tx(|tx| {
            for (address, session) in sessions {
                put_blob(tx, UPSERT_SESSION, address, session)?;
            }
            Ok(())
        })
    }

    async fn delete_session(&self, address: &str) -> StoreResult<()> {
        self.with(|c| {
            c.execute("DELETE FROM sessions WHERE address = ?1", [address])?;
            Ok(())
        })
    }

    async fn has_session(&self, address: &str) -> StoreResult<bool> {
        self.with(|c| {
            Ok(
                c.prepare_cached("SELECT EXISTS (SELECT 1 FROM sessions WHERE address = ?1)")?
                    .query_row([address], |row| row.get(0))?,
            )
        })
    }

    async fn has_signal_state_for_user(&self, user: &str) -> StoreResult<bool> {
        // Addresses are `user@server` or `user:device@server`: the character right
        // after `user` must be '@' or ':'. The range keeps the primary-key index
        // usable (':' < '@' < 'A'); the `substr` test makes it exact.
        macro_rules! user_match {
            () => {
                "address >= ?1 || ':' AND address < ?1 || 'A'
                 AND substr(address, length(?1) + 1, 1) IN (':', '@')"
            };
        }
        const SQL: &str = concat!(
            "SELECT EXISTS (SELECT 1 FROM sessions WHERE ",
            user_match!(),
            ") OR EXISTS (SELECT 1 FROM identities WHERE ",
            user_match!(),
            ")"
        );
        self.with(|c| Ok(c.prepare_cached(SQL)?.query_row([user], |row| row.get(0))?))
    }

    async fn store_prekey(&self, id: u32, record: &[u8], uploaded: bool) -> StoreResult<()> {
        self.with(|c| {
            c.prepare_cached(UPSERT_PREKEY)?
                .execute(params![id, record, uploaded])?;
            Ok(())
        })
    }

    async fn store_prekeys_batch(&self, keys: &[(u32, Bytes)], uploaded: bool) -> StoreResult<()> {
        self.tx(|tx| {
            let mut stmt = tx.prepare_cached(UPSERT_PREKEY)?;
            for (id, record) in keys {
                stmt.execute(params![id, record.as_ref(), uploaded])?;
            }
            Ok(())
        })
    }

    async fn load_prekey(&self, id: u32) -> StoreResult<Option<Bytes>> {
        self.with(|c| {
            let blob: Option<Vec<u8>> = c
                .prepare_cached("SELECT record FROM prekeys WHERE id = ?1")?
                .query_row([id], |row| row.get(0))
                .optional()?;
            Ok(blob.map(Bytes::from))
        })
    }

    async fn load_prekeys_batch(&self, ids: &[u32]) -> StoreResult<Vec<(u32, Bytes)>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached("SELECT record FROM prekeys WHERE id = ?1")?;
            let mut found = Vec::with_capacity(ids.len());
            for &id in ids {
                let blob: Option<Vec<u8>> = stmt.query_row([id], |row| row.get(0)).optional()?;
                if let Some(blob) = blob {
                    found.push((id, Bytes::from(blob)));
                }
            }
            Ok(found)
        })
    }

    async fn mark_prekeys_uploaded(&self, ids: &[u32]) -> StoreResult<()> {
        // UPDATE only: a key consumed in the meantime must stay deleted.
        self.tx(|tx| {
            let mut stmt = tx.prepare_cached("UPDATE prekeys SET uploaded = 1 WHERE id = ?1")?;
            for &id in ids {
                stmt.execute([id])?;
            }
            Ok(())
        })
    }

    async fn remove_prekey(&self, id: u32) -> StoreResult<()> {
        self.with(|c| {
            c.execute("DELETE FROM prekeys WHERE id = ?1", [id])?;
            Ok(())
        })
    }

    async fn get_max_prekey_id(&self) -> StoreResult<u32> {
        self.with(|c| {
            Ok(
                c.query_row("SELECT COALESCE(MAX(id), 0) FROM prekeys", [], |row| {
                    row.get(0)
                })?,
            )
        })
    }

    async fn store_signed_prekey(&self, id: u32, record: &[u8]) -> StoreResult<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO signed_prekeys (id, record) VALUES (?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET record = excluded.record",
                params![id, record],
            )?;
            Ok(())
        })
    }

    async fn load_signed_prekey(&self, id: u32) -> StoreResult<Option<Vec<u8>>> {
        self.with(|c| {
            Ok(
                c.prepare_cached("SELECT record FROM signed_prekeys WHERE id = ?1")?
                    .query_row([id], |row| row.get(0))
                    .optional()?,
            )
        })
    }

    async fn load_all_signed_prekeys(&self) -> StoreResult<Vec<(u32, Vec<u8>)>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached("SELECT id, record FROM signed_prekeys ORDER BY id")?;
            let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    async fn remove_signed_prekey(&self, id: u32) -> StoreResult<()> {
        self.with(|c| {
            c.execute("DELETE FROM signed_prekeys WHERE id = ?1", [id])?;
            Ok(())
        })
    }

    async fn put_sender_key(&self, address: &str, record: &[u8]) -> StoreResult<()> {
        self.with(|c| put_blob(c, UPSERT_SENDER_KEY, address, record))
    }

    async fn put_sender_keys_batch(&self, sender_keys: &[(Arc<str>, Bytes)]) -> StoreResult<()> {
        self.tx(|tx| {
            for (address, record) in sender_keys {
                put_blob(tx, UPSERT_SENDER_KEY, address, record)?;
            }
            Ok(())
        })
    }

    async fn get_sender_key(&self, address: &str) -> StoreResult<Option<Vec<u8>>> {
        self.with(|c| {
            Ok(
                c.prepare_cached("SELECT record FROM sender_keys WHERE address = ?1")?
                    .query_row([address], |row| row.get(0))
                    .optional()?,
            )
        })
    }

    async fn delete_sender_key(&self, address: &str) -> StoreResult<()> {
        self.with(|c| {
            c.execute("DELETE FROM sender_keys WHERE address = ?1", [address])?;
            Ok(())
        })
    }
}

#[async_trait]
impl AppSyncStore for SqliteBackend {
    async fn get_sync_key(&self, key_id: &[u8]) -> StoreResult<Option<AppStateSyncKey>> {
        self.with(|c| {
            let data: Option<String> = c
                .prepare_cached("SELECT data FROM app_sync_keys WHERE key_id = ?1")?
                .query_row([key_id], |row| row.get(0))
                .optional()?;
            data.map(|data| from_json("app-state sync key", &data))
                .transpose()
        })
    }

    async fn set_sync_key(&self, key_id: &[u8], key: AppStateSyncKey) -> StoreResult<()> {
        self.tx(|tx| {
            let data = to_json("app-state sync key", &key)?;
            tx.execute(
                "INSERT INTO app_sync_keys (key_id, data) VALUES (?1, ?2)
                 ON CONFLICT (key_id) DO UPDATE SET data = excluded.data",
                params![key_id, data],
            )?;
            meta_set(tx, META_LATEST_SYNC_KEY_ID, key_id)
        })
    }

    async fn get_version(&self, name: &str) -> StoreResult<HashState> {
        self.with(|c| {
            let data: Option<String> = c
                .prepare_cached("SELECT data FROM app_state_versions WHERE name = ?1")?
                .query_row([name], |row| row.get(0))
                .optional()?;
            match data {
                Some(data) => from_json("app-state version", &data),
                None => Ok(HashState::default()),
            }
        })
    }

    async fn set_version(&self, name: &str, state: HashState) -> StoreResult<()> {
        self.with(|c| {
            let data = to_json("app-state version", &state)?;
            c.execute(
                "INSERT INTO app_state_versions (name, data) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET data = excluded.data",
                params![name, data],
            )?;
            Ok(())
        })
    }

    async fn put_mutation_macs(
        &self,
        name: &str,
        version: u64,
        mutations: &[AppStateMutationMAC],
    ) -> StoreResult<()> {
        self.tx(|tx| {
            let version = u64_to_i64("app-state version number", version)?;
            let mut stmt = tx.prepare_cached(
                "INSERT INTO mutation_macs (name, index_mac, version, value_mac)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name, index_mac) DO UPDATE SET version = excluded.version,
                     value_mac = excluded.value_mac",
            )?;
            for m in mutations {
                stmt.execute(params![name, m.index_mac, version, m.value_mac])?;
            }
            Ok(())
        })
    }

    async fn get_mutation_mac(&self, name: &str, index_mac: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        self.with(|c| {
            Ok(c.prepare_cached(
                "SELECT value_mac FROM mutation_macs WHERE name = ?1 AND index_mac = ?2",
            )?
            .query_row(params![name, index_mac], |row| row.get(0))
            .optional()?)
        })
    }

    async fn get_mutation_macs(
        &self,
        name: &str,
        index_macs: &[[u8; 32]],
    ) -> StoreResult<HashMap<[u8; 32], Vec<u8>>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT value_mac FROM mutation_macs WHERE name = ?1 AND index_mac = ?2",
            )?;
            let mut found = HashMap::with_capacity(index_macs.len());
            for index_mac in index_macs {
                let value: Option<Vec<u8>> = stmt
                    .query_row(params![name, index_mac.as_slice()], |row| row.get(0))
                    .optional()?;
                if let Some(value) = value {
                    found.insert(*index_mac, value);
                }
            }
            Ok(found)
        })
    }

    async fn delete_mutation_macs(&self, name: &str, index_macs: &[Vec<u8>]) -> StoreResult<()> {
        self.tx(|tx| {
            let mut stmt =
                tx.prepare_cached("DELETE FROM mutation_macs WHERE name = ?1 AND index_mac = ?2")?;
            for index_mac in index_macs {
                stmt.execute(params![name, index_mac])?;
            }
            Ok(())
        })
    }

    async fn clear_mutation_macs(&self, name: &str) -> StoreResult<()> {
        self.with(|c| {
            c.execute("DELETE FROM mutation_macs WHERE name = ?1", [name])?;
            Ok(())
        })
    }

    async fn get_latest_sync_key_id(&self) -> StoreResult<Option<Vec<u8>>> {
        self.with(|c| meta_get(c, META_LATEST_SYNC_KEY_ID))
    }
}

#[async_trait]
impl ProtocolStore for SqliteBackend {
    async fn get_sender_key_devices(&self, group_jid: &str) -> StoreResult<Vec<(String, bool)>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT device_jid, has_key FROM sender_key_devices WHERE group_jid = ?1
                 ORDER BY device_jid",
            )?;
            let rows = stmt.query_map([group_jid], |row| Ok((row.get(0)?, row.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    async fn set_sender_key_status(
        &self,
        group_jid: &str,
        entries: &[(&str, bool)],
    ) -> StoreResult<()> {
        self.tx(|tx| {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO sender_key_devices (group_jid, device_jid, has_key) VALUES (?1, ?2, ?3)
                 ON CONFLICT (group_jid, device_jid) DO UPDATE SET has_key = excluded.has_key",
            )?;
            for (device_jid, has_key) in entries {
                stmt.execute(params![group_jid, device_jid, has_key])?;
            }
            Ok(())
        })
    }

    async fn clear_sender_key_devices(&self, group_jid: &str) -> StoreResult<()> {
        self.with(|c| {
            c.execute(
                "DELETE FROM sender_key_devices WHERE group_jid = ?1",
                [group_jid],
            )?;
            Ok(())
        })
    }

    async fn delete_sender_key_device_rows(&self, device_jids: &[&str]) -> StoreResult<()> {
        self.tx(|tx| {
            let mut stmt =
                tx.prepare_cached("DELETE FROM sender_key_devices WHERE device_jid = ?1")?;
            for device_jid in device_jids {
                stmt.execute([device_jid])?;
            }
            Ok(())
        })
    }

    async fn clear_all_sender_key_devices(&self) -> StoreResult<()> {
        self.with(|c| {
            c.execute("DELETE FROM sender_key_devices", [])?;
            Ok(())
        })
    }

    async fn get_lid_mapping(&self, lid: &str) -> StoreResult<Option<LidPnMappingEntry>> {
        self.with(|c| {
            Ok(c.prepare_cached(
                "SELECT lid, phone_number, created_at, updated_at, learning_source
                 FROM lid_mappings WHERE lid = ?1",
            )?
            .query_row([lid], lid_mapping_from_row)
            .optional()?)
        })
    }

    async fn get_pn_mapping(&self, phone: &str) -> StoreResult<Option<LidPnMappingEntry>> {
        self.with(|c| {
            Ok(c.prepare_cached(
                "SELECT m.lid, m.phone_number, m.created_at, m.updated_at, m.learning_source
                 FROM pn_to_lid p JOIN lid_mappings m ON m.lid = p.lid
                 WHERE p.phone_number = ?1",
            )?
            .query_row([phone], lid_mapping_from_row)
            .optional()?)
        })
    }

    async fn put_lid_mapping(&self, entry: &LidPnMappingEntry) -> StoreResult<()> {
        self.tx(|tx| put_lid_mapping_in(tx, entry))
    }

    async fn put_lid_mappings(&self, entries: &[LidPnMappingEntry]) -> StoreResult<()> {
        self.tx(|tx| {
            for entry in entries {
                put_lid_mapping_in(tx, entry)?;
            }
            Ok(())
        })
    }

    async fn get_all_lid_mappings(&self) -> StoreResult<Vec<LidPnMappingEntry>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT lid, phone_number, created_at, updated_at, learning_source
                 FROM lid_mappings ORDER BY lid",
            )?;
            let rows = stmt.query_map([], lid_mapping_from_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    async fn save_base_key(
        &self,
        address: &str,
        message_id: &str,
        base_key: &[u8],
    ) -> StoreResult<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO base_keys (address, message_id, base_key) VALUES (?1, ?2, ?3)
                 ON CONFLICT (address, message_id) DO UPDATE SET base_key = excluded.base_key",
                params![address, message_id, base_key],
            )?;
            Ok(())
        })
    }

    async fn has_same_base_key(
        &self,
        address: &str,
        message_id: &str,
        current_base_key: &[u8],
    ) -> StoreResult<bool> {
        self.with(|c| {
            let stored: Option<Vec<u8>> = c
                .prepare_cached(
                    "SELECT base_key FROM base_keys WHERE address = ?1 AND message_id = ?2",
                )?
                .query_row(params![address, message_id], |row| row.get(0))
                .optional()?;
            Ok(stored.is_some_and(|stored| stored == current_base_key))
        })
    }

    async fn delete_base_key(&self, address: &str, message_id: &str) -> StoreResult<()> {
        self.with(|c| {
            c.execute(
                "DELETE FROM base_keys WHERE address = ?1 AND message_id = ?2",
                params![address, message_id],
            )?;
            Ok(())
        })
    }

    async fn update_device_list(&self, record: DeviceListRecord) -> StoreResult<()> {
        self.with(|c| update_device_list_in(c, &record))
    }

    async fn update_device_lists(&self, records: Vec<DeviceListRecord>) -> StoreResult<()> {
        self.tx(|tx| {
            for record in &records {
                update_device_list_in(tx, record)?;
            }
            Ok(())
        })
    }

    async fn get_devices(&self, user: &str) -> StoreResult<Option<DeviceListRecord>> {
        self.with(|c| {
            let data: Option<String> = c
                .prepare_cached("SELECT data FROM device_lists WHERE user = ?1")?
                .query_row([user], |row| row.get(0))
                .optional()?;
            data.map(|data| from_json("device list", &data)).transpose()
        })
    }

    async fn delete_devices(&self, user: &str) -> StoreResult<()> {
        self.with(|c| {
            c.execute("DELETE FROM device_lists WHERE user = ?1", [user])?;
            Ok(())
        })
    }

    async fn get_group_metadata(&self, group_jid: &str) -> StoreResult<Option<Vec<u8>>> {
        self.with(|c| {
            Ok(
                c.prepare_cached("SELECT data FROM group_metadata WHERE group_jid = ?1")?
                    .query_row([group_jid], |row| row.get(0))
                    .optional()?,
            )
        })
    }

    async fn put_group_metadata(&self, group_jid: &str, blob: &[u8]) -> StoreResult<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO group_metadata (group_jid, data) VALUES (?1, ?2)
                 ON CONFLICT (group_jid) DO UPDATE SET data = excluded.data",
                params![group_jid, blob],
            )?;
            Ok(())
        })
    }

    async fn delete_group_metadata(&self, group_jid: &str) -> StoreResult<()> {
        self.with(|c| {
            c.execute(
                "DELETE FROM group_metadata WHERE group_jid = ?1",
                [group_jid],
            )?;
            Ok(())
        })
    }

    async fn get_tc_token(&self, jid: &str) -> StoreResult<Option<TcTokenEntry>> {
        self.with(|c| get_tc_token_in(c, jid))
    }

    async fn put_tc_token(&self, jid: &str, entry: &TcTokenEntry) -> StoreResult<()> {
        self.with(|c| put_tc_token_in(c, jid, entry))
    }

    async fn delete_tc_token(&self, jid: &str) -> StoreResult<()> {
        self.with(|c| {
            c.execute("DELETE FROM tc_tokens WHERE jid = ?1", [jid])?;
            Ok(())
        })
    }

    async fn get_all_tc_token_jids(&self) -> StoreResult<Vec<String>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached("SELECT jid FROM tc_tokens ORDER BY jid")?;
            let rows = stmt.query_map([], |row| row.get(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    async fn delete_expired_tc_tokens(
        &self,
        token_cutoff: i64,
        sender_cutoff: i64,
    ) -> StoreResult<u32> {
        // A row stays while its received token or its sender bucket is still live.
        self.with(|c| {
            let deleted = c.execute(
                "DELETE FROM tc_tokens WHERE NOT (
                     (length(token) > 0 AND token_timestamp >= ?1)
                     OR (sender_timestamp IS NOT NULL AND sender_timestamp >= ?2))",
                params![token_cutoff, sender_cutoff],
            )?;
            Ok(count_u32(deleted))
        })
    }

    async fn touch_tc_token_sender_timestamp(
        &self,
        jid: &str,
        sender_timestamp: i64,
    ) -> StoreResult<()> {
        self.tx(|tx| {
            let entry = match get_tc_token_in(tx, jid)? {
                Some(existing) => TcTokenEntry {
                    sender_timestamp: Some(
                        existing
                            .sender_timestamp
                            .map_or(sender_timestamp, |e| e.max(sender_timestamp)),
                    ),
                    ..existing
                },
                None => TcTokenEntry {
                    token: Vec::new(),
                    token_timestamp: sender_timestamp,
                    sender_timestamp: Some(sender_timestamp),
                },
            };
            put_tc_token_in(tx, jid, &entry)
        })
    }

    async fn store_received_tc_token(
        &self,
        jid: &str,
        token: &[u8],
        token_timestamp: i64,
    ) -> StoreResult<()> {
        self.tx(|tx| {
            let existing = get_tc_token_in(tx, jid)?;
            // Newer wins; a byte-less placeholder never blocks the first real token.
            if let Some(existing) = &existing {
                if !existing.token.is_empty() && token_timestamp < existing.token_timestamp {
                    return Ok(());
                }
            }
            let entry = TcTokenEntry {
                token: token.to_vec(),
                token_timestamp,
                sender_timestamp: existing.and_then(|existing| existing.sender_timestamp),
            };
            put_tc_token_in(tx, jid, &entry)
        })
    }

    async fn store_sent_message(
        &self,
        chat_jid: &str,
        message_id: &str,
        payload: &[u8],
    ) -> StoreResult<()> {
        let now = now_secs();
        self.tx(|c| {
            // Size bound as in the reference store: at the cap, drop the oldest rows
            // down to 3/4 of it. Time-based pruning is the client's keepalive sweep.
            let count: i64 =
                c.query_row("SELECT COUNT(*) FROM sent_messages", [], |row| row.get(0))?;
            if count >= MAX_SENT_MESSAGES {
                c.execute(
                    "DELETE FROM sent_messages WHERE rowid IN (
                         SELECT rowid FROM sent_messages ORDER BY created_at, rowid LIMIT ?1)",
                    [count - MAX_SENT_MESSAGES * 3 / 4],
                )?;
            }
            c.prepare_cached(
                "INSERT INTO sent_messages (chat_jid, message_id, payload, created_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (chat_jid, message_id) DO UPDATE SET payload = excluded.payload,
                     created_at = excluded.created_at",
            )?
            .execute(params![chat_jid, message_id, payload, now])?;
            Ok(())
        })
    }

    async fn take_sent_message(
        &self,
        chat_jid: &str,
        message_id: &str,
    ) -> StoreResult<Option<Vec<u8>>> {
        // One statement: the row is read and removed atomically.
        self.with(|c| {
            Ok(c.prepare_cached(
                "DELETE FROM sent_messages WHERE chat_jid = ?1 AND message_id = ?2
                 RETURNING payload",
            )?
            .query_row(params![chat_jid, message_id], |row| row.get(0))
            .optional()?)
        })
    }

    async fn delete_expired_sent_messages(&self, cutoff_timestamp: i64) -> StoreResult<u32> {
        self.with(|c| {
            let deleted = c.execute(
                "DELETE FROM sent_messages WHERE created_at < ?1",
                [cutoff_timestamp],
            )?;
            Ok(count_u32(deleted))
        })
    }

    async fn store_pending_inbound(
        &self,
        chat: &str,
        sender: &str,
        id: &str,
        message: &[u8],
    ) -> StoreResult<()> {
        let now = now_secs();
        self.with(|c| store_pending_inbound_in(c, chat, sender, id, message, now))
    }

    async fn get_pending_inbound(
        &self,
        chat: &str,
        sender: &str,
        id: &str,
    ) -> StoreResult<Option<Vec<u8>>> {
        self.with(|c| {
            Ok(c.prepare_cached(
                "SELECT message FROM pending_inbound WHERE chat = ?1 AND sender = ?2 AND id = ?3",
            )?
            .query_row(params![chat, sender, id], |row| row.get(0))
            .optional()?)
        })
    }

    async fn delete_pending_inbound(&self, chat: &str, sender: &str, id: &str) -> StoreResult<()> {
        self.with(|c| delete_pending_inbound_in(c, chat, sender, id))
    }

    async fn delete_expired_pending_inbound(&self, cutoff_timestamp: i64) -> StoreResult<u32> {
        self.with(|c| {
            let deleted = c.execute(
                "DELETE FROM pending_inbound WHERE created_at < ?1",
                [cutoff_timestamp],
            )?;
            Ok(count_u32(deleted))
        })
    }

    async fn store_pending_inbound_batch(&self, rows: &[PendingInboundRow<'_>]) -> StoreResult<()> {
        let now = now_secs();
        self.tx(|tx| {
            for row in rows {
                store_pending_inbound_in(tx, row.chat, row.sender, row.id, row.message, now)?;
            }
            Ok(())
        })
    }

    async fn delete_pending_inbound_batch(
        &self,
        keys: &[PendingInboundKey<'_>],
    ) -> StoreResult<()> {
        self.tx(|tx| {
            for key in keys {
                delete_pending_inbound_in(tx, key.chat, key.sender, key.id)?;
            }
            Ok(())
        })
    }
}

#[async_trait]
impl MsgSecretStore for SqliteBackend {
    async fn put_msg_secrets(&self, entries: Vec<MsgSecretEntry>) -> StoreResult<usize> {
        self.tx(|tx| {
            let mut select = tx.prepare_cached(
                "SELECT expires_at, message_ts FROM msg_secrets
                 WHERE chat = ?1 AND sender = ?2 AND msg_id = ?3",
            )?;
            let mut upsert = tx.prepare_cached(
                "INSERT INTO msg_secrets (chat, sender, msg_id, secret, expires_at, message_ts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (chat, sender, msg_id) DO UPDATE SET secret = excluded.secret,
                     expires_at = excluded.expires_at, message_ts = excluded.message_ts",
            )?;
            for entry in &entries {
                let key = params![&*entry.chat, &*entry.sender, &*entry.msg_id];
                let existing: Option<(i64, i64)> = select
                    .query_row(key, |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()?;
                let (expires_at, message_ts) = match existing {
                    Some((expires_at, message_ts)) => (
                        merge_msg_secret_expiry(expires_at, entry.expires_at),
                        merge_msg_secret_message_ts(message_ts, entry.message_ts),
                    ),
                    None => (entry.expires_at, entry.message_ts),
                };
                upsert.execute(params![
                    &*entry.chat,
                    &*entry.sender,
                    &*entry.msg_id,
                    entry.secret.as_slice(),
                    expires_at,
                    message_ts
                ])?;
            }
            Ok(entries.len())
        })
    }

    async fn get_msg_secret(
        &self,
        chat: &str,
        sender: &str,
        msg_id: &str,
    ) -> StoreResult<Option<Vec<u8>>> {
        Ok(self
            .get_msg_secret_with_ts(chat, sender, msg_id)
            .await?
            .map(|(secret, _)| secret))
    }

    async fn get_msg_secret_with_ts(
        &self,
        chat: &str,
        sender: &str,
        msg_id: &str,
    ) -> StoreResult<Option<(Vec<u8>, i64)>> {
        self.with(|c| {
            Ok(c.prepare_cached(
                "SELECT secret, message_ts FROM msg_secrets
                 WHERE chat = ?1 AND sender = ?2 AND msg_id = ?3",
            )?
            .query_row(params![chat, sender, msg_id], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()?)
        })
    }

    async fn delete_expired_msg_secrets(&self, cutoff_timestamp: i64) -> StoreResult<u32> {
        // `expires_at = 0` means never.
        self.with(|c| {
            let deleted = c.execute(
                "DELETE FROM msg_secrets WHERE expires_at != 0 AND expires_at <= ?1",
                [cutoff_timestamp],
            )?;
            Ok(count_u32(deleted))
        })
    }
}

#[async_trait]
impl DeviceStore for SqliteBackend {
    async fn save(&self, device: &Device) -> StoreResult<()> {
        self.with(|c| {
            let data = to_json("device", device)?;
            c.execute(
                "INSERT INTO device (id, data) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET data = excluded.data",
                [data],
            )?;
            Ok(())
        })
    }

    async fn load(&self) -> StoreResult<Option<Device>> {
        self.with(|c| {
            let data: Option<String> = c
                .query_row("SELECT data FROM device WHERE id = 1", [], |row| row.get(0))
                .optional()?;
            data.map(|data| from_json("device", &data)).transpose()
        })
    }

    async fn exists(&self) -> StoreResult<bool> {
        self.with(
            |c| Ok(c.query_row("SELECT EXISTS (SELECT 1 FROM device)", [], |row| row.get(0))?),
        )
    }

    async fn create(&self) -> StoreResult<i32> {
        // As the reference store: hand out the next id and make sure a device exists
        // (fresh keys, persisted at once so they cannot change under a later load).
        self.tx(|tx| {
            let id = match meta_get(tx, META_NEXT_DEVICE_ID)? {
                Some(bytes) => {
                    let bytes = <[u8; 4]>::try_from(bytes.as_slice()).map_err(|_| {
                        invalid(
                            "next device id",
                            format!("{} bytes, expected 4", bytes.len()),
                        )
                    })?;
                    i32::from_be_bytes(bytes)
                }
                None => 1,
            };
            meta_set(tx, META_NEXT_DEVICE_ID, &id.saturating_add(1).to_be_bytes())?;
            let exists: bool =
                tx.query_row("SELECT EXISTS (SELECT 1 FROM device)", [], |row| row.get(0))?;
            if !exists {
                let data = to_json("device", &Device::new())?;
                tx.execute("INSERT INTO device (id, data) VALUES (1, ?1)", [data])?;
            }
            Ok(id)
        })
    }

    async fn snapshot_db(&self, name: &str, extra_content: Option<&[u8]>) -> StoreResult<()> {
        // A consistent copy next to the database (mode 0600, like the original), for
        // debugging crypto-state problems. Nothing to copy for an in-memory store.
        let Some(path) = &self.path else {
            return Ok(());
        };
        let label: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        let mut target = path.as_os_str().to_owned();
        target.push(format!(".snapshot-{label}-{}", now_secs()));
        let target = PathBuf::from(target);
        let file_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| WaStoreError::File { path, source }
        };
        let create_private = |path: &Path| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(file_err(path))
        };
        let result = (|| -> WaResult<()> {
            let target_str = target
                .to_str()
                .ok_or_else(|| invalid("snapshot path", "not UTF-8"))?;
            create_private(&target)?;
            self.lock().execute("VACUUM INTO ?1", [target_str])?;
            if let Some(extra) = extra_content {
                let mut extra_path = target.as_os_str().to_owned();
                extra_path.push(".extra");
                let extra_path = PathBuf::from(extra_path);
                create_private(&extra_path)?
                    .write_all(extra)
                    .map_err(file_err(&extra_path))?;
            }
            Ok(())
        })();
        result.map_err(StoreError::from)
    }

    async fn resource_report(&self) -> StorageResourceReport {
        let pages = self.with(|c| {
            let pages: i64 = c.query_row("PRAGMA page_count", [], |row| row.get(0))?;
            Ok(pages)
        });
        StorageResourceReport {
            pages: pages.ok().and_then(|p| u64::try_from(p).ok()),
            ..StorageResourceReport::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::fmt::Debug;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use whatsapp_rust::wacore::store::traits::{Backend, DeviceInfo};
    use whatsapp_rust::wacore::store::{CachedNoiseCert, CachedServerCertChain, InMemoryBackend};
    use whatsapp_rust::waproto::whatsapp::ADVSignedDeviceIdentity;

    /// splitmix64: a tiny deterministic generator, so a failing seed replays exactly.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % u64::try_from(n).unwrap()).unwrap()
        }
        fn bool(&mut self) -> bool {
            self.next() & 1 == 1
        }
        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[self.below(items.len())]
        }
        fn small(&mut self, n: usize) -> i64 {
            i64::try_from(self.below(n)).unwrap()
        }
        fn id(&mut self) -> u32 {
            u32::try_from(self.below(6)).unwrap()
        }
        /// 0..3 bytes from a 3-value alphabet: equal values happen often.
        fn bytes(&mut self) -> Vec<u8> {
            (0..self.below(4))
                .map(|_| self.pick(&[0u8, 1, 255]))
                .collect()
        }
        fn key32(&mut self) -> [u8; 32] {
            [self.pick(&[1u8, 2, 3]); 32]
        }
        fn some<T>(&mut self, mut f: impl FnMut(&mut Rng) -> T) -> Vec<T> {
            (0..self.below(4)).map(|_| f(self)).collect()
        }
    }

    const ADDRESSES: &[&str] = &[
        "111@s.whatsapp.net",
        "111:2@s.whatsapp.net",
        "1111@lid",
        "222:1@s.whatsapp.net",
        "11@s.whatsapp.net",
    ];
    const USERS: &[&str] = &["111", "11", "1111", "222", "", "1", "111:2"];
    const NAMES: &[&str] = &["regular", "regular_low", "critical_block"];
    const GROUPS: &[&str] = &["1203@g.us", "1204@g.us"];
    const LIDS: &[&str] = &["L1", "L2", "L3"];
    const PHONES: &[&str] = &["P1", "P2", "P3"];
    const CHATS: &[&str] = &["c1@g.us", "c2@s.whatsapp.net"];
    const MSG_IDS: &[&str] = &["M1", "M2", "M3"];
    const TIMES: &[i64] = &[0, 100, 200, 300];

    fn show<T: Debug>(result: StoreResult<T>) -> String {
        format!("{result:?}")
    }

    fn sorted<T: Ord + Debug>(result: StoreResult<Vec<T>>) -> String {
        show(result.map(|mut v| {
            v.sort();
            v
        }))
    }

    fn show_hash_state(result: StoreResult<HashState>) -> String {
        show(result.map(|s| {
            let map: BTreeMap<_, _> = s.index_value_map.into_iter().collect();
            (s.version, s.hash.to_vec(), map, s.mac_mismatch_fatal)
        }))
    }

    /// Devices from `create` carry random keys (different in each backend), so only
    /// their presence is compared; saved fixtures are compared in full.
    fn show_device(result: StoreResult<Option<Device>>) -> String {
        show(result.map(|device| {
            device.map(|d| {
                if d.push_name.starts_with("fixture") {
                    serde_json::to_string(&d).unwrap()
                } else {
                    "created".to_string()
                }
            })
        }))
    }

    fn lid_entry(rng: &mut Rng) -> LidPnMappingEntry {
        LidPnMappingEntry {
            lid: rng.pick(LIDS).to_string(),
            phone_number: rng.pick(PHONES).to_string(),
            created_at: rng.small(3),
            updated_at: rng.small(3),
            learning_source: rng.pick(&["usync", "peer_pn_message"]).to_string(),
        }
    }

    fn device_list(rng: &mut Rng) -> DeviceListRecord {
        DeviceListRecord {
            user: rng.pick(USERS).to_string(),
            devices: rng
                .some(|r| DeviceInfo::new(r.id(), r.bool().then(|| r.id())).with_hosting(r.bool())),
            timestamp: rng.small(3),
            phash: rng.bool().then(|| "2:abc".to_string()),
            raw_id: rng.bool().then(|| rng.id()),
        }
    }

    fn hash_state(rng: &mut Rng) -> HashState {
        HashState {
            version: u64::try_from(rng.below(5)).unwrap(),
            hash: [rng.pick(&[0u8, 7]); 128],
            index_value_map: rng
                .some(|r| (r.pick(&["a", "b", "c"]).to_string(), r.bytes()))
                .into_iter()
                .collect(),
            mac_mismatch_fatal: rng.bool(),
        }
    }

    fn msg_secret(rng: &mut Rng) -> MsgSecretEntry {
        MsgSecretEntry {
            chat: Arc::from(rng.pick(CHATS)),
            sender: Arc::from(rng.pick(ADDRESSES)),
            msg_id: Arc::from(rng.pick(MSG_IDS)),
            secret: rng.key32(),
            expires_at: rng.pick(TIMES),
            message_ts: rng.pick(&[0, 10, 20]),
        }
    }

    fn mac(rng: &mut Rng) -> AppStateMutationMAC {
        AppStateMutationMAC {
            index_mac: rng.key32().to_vec(),
            value_mac: rng.bytes(),
        }
    }

    /// Cutoffs for the sweeps keyed on "now": far before or far after any write.
    fn time_cutoff(rng: &mut Rng) -> i64 {
        now_secs() + rng.pick(&[-3600, 3600, i64::MIN / 2])
    }

    struct Fixtures {
        devices: Vec<Device>,
    }

    impl Fixtures {
        fn new() -> Fixtures {
            let devices = (0..2)
                .map(|i| {
                    let mut device = Device::new();
                    device.push_name = format!("fixture-{i}");
                    device.registration_id = 4242 + i;
                    device.next_pre_key_id = 17 * i;
                    if i == 1 {
                        // What a paired device carries on top of a fresh one.
                        device.pn = Some("559980000001:3@s.whatsapp.net".parse().unwrap());
                        device.lid = Some("100000012345678:3@lid".parse().unwrap());
                        device.account = Some(Arc::new(ADVSignedDeviceIdentity {
                            details: Some(vec![1, 2, 3]),
                            account_signature_key: Some(vec![4; 32]),
                            account_signature: Some(vec![5; 64]),
                            device_signature: Some(vec![6; 64]),
                        }));
                        let cert = CachedNoiseCert {
                            key: [7; 32],
                            not_before: 1,
                            not_after: 2,
                        };
                        device.server_cert_chain = Some(CachedServerCertChain {
                            intermediate: cert.clone(),
                            leaf: cert,
                        });
                        device.edge_routing_info = Some(vec![8, 9]);
                        device.props_hash = Some("hash".to_string());
                        device.nct_salt = Some(vec![10]);
                        device.login_counter = 3;
                        device.lid_migrated = true;
                    }
                    device
                })
                .collect();
            Fixtures { devices }
        }
    }

    /// Number of operations `apply` knows: every method of the five traits except
    /// `snapshot_db` and `resource_report`, whose reference versions are defaults.
    const OPS: usize = 80;

    /// Runs operation `op` with arguments drawn from `rng` and renders its result.
    async fn apply<B: Backend>(b: &B, op: usize, rng: &mut Rng, fx: &Fixtures) -> String {
        let a = rng.pick(ADDRESSES);
        let out = match op {
            0 => show(b.put_identity(a, rng.key32()).await),
            1 => {
                let batch = rng.some(|r| (Arc::from(r.pick(ADDRESSES)), r.key32()));
                show(b.put_identities_batch(&batch).await)
            }
            2 => show(b.load_identity(a).await),
            3 => show(b.delete_identity(a).await),
            4 => show(b.get_session(a).await),
            5 => show(b.put_session(a, &rng.bytes()).await),
            6 => {
                let batch = rng.some(|r| (Arc::from(r.pick(ADDRESSES)), Bytes::from(r.bytes())));
                show(b.put_sessions_batch(&batch).await)
            }
            7 => show(b.delete_session(a).await),
            8 => show(b.has_session(a).await),
            9 => show(b.has_signal_state_for_user(rng.pick(USERS)).await),
            10 => show(b.store_prekey(rng.id(), &rng.bytes(), rng.bool()).await),
            11 => {
                let batch = rng.some(|r| (r.id(), Bytes::from(r.bytes())));
                show(b.store_prekeys_batch(&batch, rng.bool()).await)
            }
            12 => show(b.load_prekey(rng.id()).await),
            13 => show(b.load_prekeys_batch(&rng.some(Rng::id)).await),
            14 => show(b.mark_prekeys_uploaded(&rng.some(Rng::id)).await),
            15 => show(b.remove_prekey(rng.id()).await),
            16 => show(b.get_max_prekey_id().await),
            17 => show(b.store_signed_prekey(rng.id(), &rng.bytes()).await),
            18 => show(b.load_signed_prekey(rng.id()).await),
            19 => sorted(b.load_all_signed_prekeys().await),
            20 => show(b.remove_signed_prekey(rng.id()).await),
            21 => show(b.put_sender_key(a, &rng.bytes()).await),
            22 => {
                let batch = rng.some(|r| (Arc::from(r.pick(ADDRESSES)), Bytes::from(r.bytes())));
                show(b.put_sender_keys_batch(&batch).await)
            }
            23 => show(b.get_sender_key(a).await),
            24 => show(b.delete_sender_key(a).await),
            25 => show(b.get_sync_key(&rng.bytes()).await),
            26 => {
                let key = AppStateSyncKey {
                    key_data: rng.bytes(),
                    fingerprint: rng.bytes(),
                    timestamp: rng.small(3),
                };
                show(b.set_sync_key(&rng.bytes(), key).await)
            }
            27 => show_hash_state(b.get_version(rng.pick(NAMES)).await),
            28 => show(b.set_version(rng.pick(NAMES), hash_state(rng)).await),
            29 => {
                let macs = rng.some(mac);
                show(b.put_mutation_macs(rng.pick(NAMES), 7, &macs).await)
            }
            30 => show(b.get_mutation_mac(rng.pick(NAMES), &rng.key32()).await),
            31 => {
                let keys = rng.some(Rng::key32);
                let found = b.get_mutation_macs(rng.pick(NAMES), &keys).await;
                show(found.map(|m| m.into_iter().collect::<BTreeMap<_, _>>()))
            }
            32 => {
                let keys = rng.some(|r| r.key32().to_vec());
                show(b.delete_mutation_macs(rng.pick(NAMES), &keys).await)
            }
            33 => show(b.clear_mutation_macs(rng.pick(NAMES)).await),
            34 => show(b.get_latest_sync_key_id().await),
            35 => sorted(b.get_sender_key_devices(rng.pick(GROUPS)).await),
            36 => {
                let entries = rng.some(|r| (r.pick(ADDRESSES), r.bool()));
                show(b.set_sender_key_status(rng.pick(GROUPS), &entries).await)
            }
            37 => show(b.clear_sender_key_devices(rng.pick(GROUPS)).await),
            38 => show(
                b.delete_sender_key_device_rows(&rng.some(|r| r.pick(ADDRESSES)))
                    .await,
            ),
            39 => show(b.clear_all_sender_key_devices().await),
            40 => show(b.get_lid_mapping(rng.pick(LIDS)).await),
            41 => show(b.get_pn_mapping(rng.pick(PHONES)).await),
            42 => show(b.put_lid_mapping(&lid_entry(rng)).await),
            43 => show(b.put_lid_mappings(&rng.some(lid_entry)).await),
            44 => show(b.get_all_lid_mappings().await.map(|mut all| {
                all.sort_by(|x, y| x.lid.cmp(&y.lid));
                all
            })),
            45 => show(b.save_base_key(a, rng.pick(MSG_IDS), &rng.bytes()).await),
            46 => show(
                b.has_same_base_key(a, rng.pick(MSG_IDS), &rng.bytes())
                    .await,
            ),
            47 => show(b.delete_base_key(a, rng.pick(MSG_IDS)).await),
            48 => show(b.update_device_list(device_list(rng)).await),
            49 => show(b.update_device_lists(rng.some(device_list)).await),
            50 => show(b.get_devices(rng.pick(USERS)).await),
            51 => show(b.delete_devices(rng.pick(USERS)).await),
            52 => show(b.get_group_metadata(rng.pick(GROUPS)).await),
            53 => show(b.put_group_metadata(rng.pick(GROUPS), &rng.bytes()).await),
            54 => show(b.delete_group_metadata(rng.pick(GROUPS)).await),
            55 => show(b.get_tc_token(a).await),
            56 => {
                let entry = TcTokenEntry {
                    token: rng.bytes(),
                    token_timestamp: rng.pick(TIMES),
                    sender_timestamp: rng.bool().then(|| rng.pick(TIMES)),
                };
                show(b.put_tc_token(a, &entry).await)
            }
            57 => show(b.delete_tc_token(a).await),
            58 => sorted(b.get_all_tc_token_jids().await),
            59 => show(
                b.delete_expired_tc_tokens(rng.pick(TIMES), rng.pick(TIMES))
                    .await,
            ),
            60 => show(b.touch_tc_token_sender_timestamp(a, rng.pick(TIMES)).await),
            61 => show(
                b.store_received_tc_token(a, &rng.bytes(), rng.pick(TIMES))
                    .await,
            ),
            62 => show(
                b.store_sent_message(rng.pick(CHATS), rng.pick(MSG_IDS), &rng.bytes())
                    .await,
            ),
            63 => show(
                b.take_sent_message(rng.pick(CHATS), rng.pick(MSG_IDS))
                    .await,
            ),
            64 => show(b.delete_expired_sent_messages(time_cutoff(rng)).await),
            65 => {
                let (chat, id) = (rng.pick(CHATS), rng.pick(MSG_IDS));
                show(b.store_pending_inbound(chat, a, id, &rng.bytes()).await)
            }
            66 => show(
                b.get_pending_inbound(rng.pick(CHATS), a, rng.pick(MSG_IDS))
                    .await,
            ),
            67 => show(
                b.delete_pending_inbound(rng.pick(CHATS), a, rng.pick(MSG_IDS))
                    .await,
            ),
            68 => show(b.delete_expired_pending_inbound(time_cutoff(rng)).await),
            69 => {
                let rows =
                    rng.some(|r| (r.pick(CHATS), r.pick(ADDRESSES), r.pick(MSG_IDS), r.bytes()));
                let rows: Vec<_> = rows
                    .iter()
                    .map(|(chat, sender, id, message)| PendingInboundRow {
                        chat,
                        sender,
                        id,
                        message,
                    })
                    .collect();
                show(b.store_pending_inbound_batch(&rows).await)
            }
            70 => {
                let keys = rng.some(|r| PendingInboundKey {
                    chat: r.pick(CHATS),
                    sender: r.pick(ADDRESSES),
                    id: r.pick(MSG_IDS),
                });
                show(b.delete_pending_inbound_batch(&keys).await)
            }
            71 => {
                let (chat, id) = (rng.pick(CHATS), rng.pick(MSG_IDS));
                show(b.put_msg_secret(chat, a, id, &rng.key32()).await)
            }
            72 => show(b.put_msg_secrets(rng.some(msg_secret)).await),
            73 => show(
                b.get_msg_secret(rng.pick(CHATS), a, rng.pick(MSG_IDS))
                    .await,
            ),
            74 => show(
                b.get_msg_secret_with_ts(rng.pick(CHATS), a, rng.pick(MSG_IDS))
                    .await,
            ),
            75 => show(
                b.delete_expired_msg_secrets(rng.pick(&[0, 100, 150, 200, 300]))
                    .await,
            ),
            76 => show(b.save(&fx.devices[rng.below(fx.devices.len())]).await),
            77 => show_device(b.load().await),
            78 => show(b.exists().await),
            79 => show(b.create().await),
            _ => unreachable!("operation {op} out of range"),
        };
        format!("op {op}: {out}")
    }

    /// Every readable piece of state over the whole key domain, rendered.
    async fn dump<B: Backend>(b: &B) -> Vec<String> {
        let mut out = Vec::new();
        for a in ADDRESSES {
            out.push(show(b.load_identity(a).await));
            out.push(show(b.get_session(a).await));
            out.push(show(b.get_sender_key(a).await));
            out.push(show(b.get_tc_token(a).await));
            for chat in CHATS {
                for id in MSG_IDS {
                    out.push(show(b.get_pending_inbound(chat, a, id).await));
                    out.push(show(b.get_msg_secret_with_ts(chat, a, id).await));
                }
            }
            for id in MSG_IDS {
                out.push(show(b.has_same_base_key(a, id, &[]).await));
            }
        }
        for user in USERS {
            out.push(show(b.has_signal_state_for_user(user).await));
            out.push(show(b.get_devices(user).await));
        }
        for id in 0..6 {
            out.push(show(b.load_prekey(id).await));
        }
        out.push(show(b.get_max_prekey_id().await));
        out.push(sorted(b.load_all_signed_prekeys().await));
        for name in NAMES {
            out.push(show_hash_state(b.get_version(name).await));
            for k in 1..=3u8 {
                out.push(show(b.get_mutation_mac(name, &[k; 32]).await));
            }
        }
        out.push(show(b.get_latest_sync_key_id().await));
        for group in GROUPS {
            out.push(sorted(b.get_sender_key_devices(group).await));
            out.push(show(b.get_group_metadata(group).await));
        }
        for lid in LIDS {
            out.push(show(b.get_lid_mapping(lid).await));
        }
        for phone in PHONES {
            out.push(show(b.get_pn_mapping(phone).await));
        }
        out.push(sorted(b.get_all_tc_token_jids().await));
        out.push(show_device(b.load().await));
        out.push(show(b.exists().await));
        out
    }

    /// Random operation sequences against SqliteBackend and the reference store, every
    /// result compared; file-backed runs close and reopen the database on the way.
    async fn differential(seed: u64, steps: usize, file: bool, hits: &mut [usize]) {
        let fx = Fixtures::new();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("whatsapp.db");
        let open = || {
            if file {
                SqliteBackend::open(&path).unwrap()
            } else {
                SqliteBackend::open_in_memory().unwrap()
            }
        };
        let mut sql = open();
        let mem = InMemoryBackend::new();
        let mut rng = Rng(seed);
        for step in 0..steps {
            let op = rng.below(OPS);
            let arg_seed = rng.next();
            hits[op] += 1;
            let got = apply(&sql, op, &mut Rng(arg_seed), &fx).await;
            let want = apply(&mem, op, &mut Rng(arg_seed), &fx).await;
            assert_eq!(got, want, "seed {seed}, step {step}");
            if file && step % 61 == 60 {
                drop(sql);
                sql = open();
            }
        }
        assert_eq!(
            dump(&sql).await,
            dump(&mem).await,
            "final state, seed {seed}"
        );
    }

    #[test]
    fn is_a_whatsapp_rust_backend() {
        fn backend<T: Backend + 'static>() {}
        backend::<SqliteBackend>();
    }

    #[tokio::test]
    async fn differential_against_in_memory_reference() {
        let mut hits = vec![0; OPS];
        for seed in 0..24 {
            differential(seed, 400, false, &mut hits).await;
        }
        for seed in 100..104 {
            differential(seed, 400, true, &mut hits).await;
        }
        let missed: Vec<_> = (0..OPS).filter(|&op| hits[op] < 20).collect();
        assert!(missed.is_empty(), "operations hardly exercised: {missed:?}");
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn sibling(path: &Path, suffix: &str) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    }

    #[tokio::test]
    async fn everything_survives_close_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("whatsapp.db");
        let fx = Fixtures::new();
        let device = &fx.devices[1];
        let mut state = HashState {
            version: 42,
            hash: [9; 128],
            ..HashState::default()
        };
        state
            .index_value_map
            .insert("idx".to_string(), vec![1, 2, 3]);
        let mapping = LidPnMappingEntry {
            lid: "100000012345678".to_string(),
            phone_number: "559980000001".to_string(),
            created_at: 10,
            updated_at: 20,
            learning_source: "usync".to_string(),
        };
        let secret = MsgSecretEntry {
            chat: Arc::from("c1@g.us"),
            sender: Arc::from("111@s.whatsapp.net"),
            msg_id: Arc::from("M1"),
            secret: [5; 32],
            expires_at: 0,
            message_ts: 1234,
        };
        let before = {
            let b = SqliteBackend::open(&path).unwrap();
            b.save(device).await.unwrap();
            b.put_session("111:2@s.whatsapp.net", b"session")
                .await
                .unwrap();
            b.put_identity("111:2@s.whatsapp.net", [7; 32])
                .await
                .unwrap();
            b.store_prekeys_batch(
                &[
                    (1, Bytes::from_static(b"pk1")),
                    (5, Bytes::from_static(b"pk5")),
                ],
                false,
            )
            .await
            .unwrap();
            b.mark_prekeys_uploaded(&[1, 2]).await.unwrap();
            b.store_signed_prekey(3, b"spk").await.unwrap();
            b.put_sender_key("1203@g.us::111::2", b"sk").await.unwrap();
            let sync_key = AppStateSyncKey {
                key_data: vec![1; 32],
                fingerprint: vec![2; 4],
                timestamp: 99,
            };
            b.set_sync_key(b"kid", sync_key).await.unwrap();
            b.set_version("regular", state.clone()).await.unwrap();
            let macs = [AppStateMutationMAC {
                index_mac: vec![3; 32],
                value_mac: vec![4; 32],
            }];
            b.put_mutation_macs("regular", 42, &macs).await.unwrap();
            b.put_lid_mapping(&mapping).await.unwrap();
            b.store_pending_inbound("c1@g.us", "111@s.whatsapp.net", "M9", b"plain")
                .await
                .unwrap();
            b.put_msg_secrets(vec![secret.clone()]).await.unwrap();
            b.store_sent_message("c1@g.us", "S1", b"sent")
                .await
                .unwrap();
            b.set_sender_key_status("1203@g.us", &[("111:2@s.whatsapp.net", true)])
                .await
                .unwrap();
            b.put_tc_token(
                "111@s.whatsapp.net",
                &TcTokenEntry {
                    token: vec![8],
                    token_timestamp: 100,
                    sender_timestamp: Some(200),
                },
            )
            .await
            .unwrap();
            dump(&b).await
        };

        let b = SqliteBackend::open(&path).unwrap();
        assert_eq!(dump(&b).await, before);
        let loaded = b.load().await.unwrap().expect("device persisted");
        assert_eq!(
            serde_json::to_value(&loaded).unwrap(),
            serde_json::to_value(device).unwrap()
        );
        assert_eq!(
            loaded.identity_key.public_key,
            device.identity_key.public_key
        );
        assert_eq!(loaded.pn, device.pn);
        assert_eq!(loaded.lid, device.lid);
        assert_eq!(
            loaded.account.as_ref().and_then(|a| a.details.clone()),
            Some(vec![1, 2, 3])
        );
        assert_eq!(
            b.get_session("111:2@s.whatsapp.net")
                .await
                .unwrap()
                .as_deref(),
            Some(&b"session"[..])
        );
        assert_eq!(
            b.load_identity("111:2@s.whatsapp.net").await.unwrap(),
            Some([7; 32])
        );
        assert_eq!(
            b.load_prekey(5).await.unwrap().as_deref(),
            Some(&b"pk5"[..])
        );
        assert_eq!(b.get_max_prekey_id().await.unwrap(), 5);
        assert_eq!(
            b.load_all_signed_prekeys().await.unwrap(),
            vec![(3, b"spk".to_vec())]
        );
        assert_eq!(
            b.get_sender_key("1203@g.us::111::2").await.unwrap(),
            Some(b"sk".to_vec())
        );
        let key = b
            .get_sync_key(b"kid")
            .await
            .unwrap()
            .expect("sync key persisted");
        assert_eq!(
            (key.key_data, key.fingerprint, key.timestamp),
            (vec![1; 32], vec![2; 4], 99)
        );
        assert_eq!(
            b.get_latest_sync_key_id().await.unwrap(),
            Some(b"kid".to_vec())
        );
        assert_eq!(
            show_hash_state(b.get_version("regular").await),
            show_hash_state(Ok(state))
        );
        assert_eq!(
            b.get_mutation_macs("regular", &[[3; 32], [4; 32]])
                .await
                .unwrap(),
            HashMap::from([([3; 32], vec![4; 32])])
        );
        let by_lid = b.get_lid_mapping(&mapping.lid).await.unwrap();
        let by_pn = b.get_pn_mapping(&mapping.phone_number).await.unwrap();
        assert_eq!(format!("{by_lid:?}"), format!("{:?}", Some(&mapping)));
        assert_eq!(format!("{by_pn:?}"), format!("{:?}", Some(&mapping)));
        assert_eq!(
            b.get_pending_inbound("c1@g.us", "111@s.whatsapp.net", "M9")
                .await
                .unwrap(),
            Some(b"plain".to_vec())
        );
        assert_eq!(
            b.get_msg_secret_with_ts("c1@g.us", "111@s.whatsapp.net", "M1")
                .await
                .unwrap(),
            Some((vec![5; 32], 1234))
        );
        assert_eq!(
            b.take_sent_message("c1@g.us", "S1").await.unwrap(),
            Some(b"sent".to_vec())
        );
        assert_eq!(b.take_sent_message("c1@g.us", "S1").await.unwrap(), None);
        let uploaded: Vec<(u32, bool)> = {
            let conn = b.lock();
            let mut stmt = conn
                .prepare("SELECT id, uploaded FROM prekeys ORDER BY id")
                .unwrap();
            let rows = stmt
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                .unwrap();
            rows.collect::<rusqlite::Result<_>>().unwrap()
        };
        assert_eq!(
            uploaded,
            vec![(1, true), (5, false)],
            "no resurrection of id 2"
        );
    }

    #[tokio::test]
    async fn new_file_is_created_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("whatsapp.db");
        let b = SqliteBackend::open(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        b.put_session("a@s.whatsapp.net", b"x").await.unwrap();
        let wal = sibling(&path, "-wal");
        assert!(wal.exists(), "WAL mode");
        assert_eq!(mode(&wal), 0o600);
        assert_eq!(mode(&sibling(&path, "-shm")), 0o600);
    }

    #[tokio::test]
    async fn existing_loose_file_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("whatsapp.db");
        drop(SqliteBackend::open(&path).unwrap());
        let wal = sibling(&path, "-wal");
        fs::write(&wal, b"").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(&wal, fs::Permissions::from_mode(0o666)).unwrap();
        let b = SqliteBackend::open(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&wal), 0o600);
        assert!(!b.exists().await.unwrap());
    }

    #[test]
    fn unreadable_location_is_a_file_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("whatsapp.db");
        let err = SqliteBackend::open(&path).unwrap_err();
        assert!(matches!(err, WaStoreError::File { .. }), "{err:?}");
    }

    #[test]
    fn schema_is_versioned_and_newer_schemas_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("whatsapp.db");
        drop(SqliteBackend::open(&path).unwrap());
        let b = SqliteBackend::open(&path).unwrap();
        let version: i64 = b
            .lock()
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, i64::try_from(MIGRATIONS.len()).unwrap());
        b.lock().pragma_update(None, "user_version", 99).unwrap();
        drop(b);
        let err = SqliteBackend::open(&path).unwrap_err();
        assert!(
            matches!(err, WaStoreError::SchemaTooNew { found: 99, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn polls_survive_a_reopen_and_a_store_of_the_first_schema_gains_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("whatsapp.db");
        // A key store written before polls were kept (schema version 1).
        {
            let mut conn = Connection::open(&path).unwrap();
            let tx = conn.transaction().unwrap();
            tx.execute_batch(MIGRATIONS[0]).unwrap();
            tx.pragma_update(None, "user_version", 1).unwrap();
            tx.commit().unwrap();
        }
        let poll = PollRecord {
            chat: "120363000000000001@g.us".into(),
            poll_id: "3EB0POLL".into(),
            creator: "33611111111@s.whatsapp.net".into(),
            secret: vec![7; 32],
            question: "Quel jour ?".into(),
            options: vec!["Samedi".into(), "Dimanche".into()],
        };
        let b = SqliteBackend::open(&path).unwrap();
        assert_eq!(b.poll(&poll.chat, &poll.poll_id).unwrap(), None);
        b.remember_poll(&poll, 1).unwrap();
        // Seen again (redelivered): the first record stays.
        let mut again = poll.clone();
        again.secret = vec![9; 32];
        b.remember_poll(&again, 2).unwrap();
        drop(b);
        let b = SqliteBackend::open(&path).unwrap();
        assert_eq!(
            b.poll(&poll.chat, &poll.poll_id).unwrap(),
            Some(poll.clone())
        );
        assert_eq!(b.poll("other@g.us", &poll.poll_id).unwrap(), None);
        // Kept at 1: forgotten with what is older than 2, not before.
        assert_eq!(b.forget_polls_before(1).unwrap(), 0);
        assert_eq!(b.forget_polls_before(2).unwrap(), 1);
        assert_eq!(b.poll(&poll.chat, &poll.poll_id).unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn take_sent_message_is_an_atomic_take() {
        let dir = tempfile::tempdir().unwrap();
        let b = Arc::new(SqliteBackend::open(&dir.path().join("whatsapp.db")).unwrap());
        for round in 0..20 {
            let id = format!("S{round}");
            b.store_sent_message("c@g.us", &id, b"payload")
                .await
                .unwrap();
            let takers: Vec<_> = (0..8)
                .map(|_| {
                    let (b, id) = (Arc::clone(&b), id.clone());
                    tokio::spawn(async move { b.take_sent_message("c@g.us", &id).await })
                })
                .collect();
            let mut taken = 0;
            for taker in takers {
                if taker.await.unwrap().unwrap().is_some() {
                    taken += 1;
                }
            }
            assert_eq!(taken, 1, "round {round}");
        }
    }

    /// The differential test can only sweep "everything" or "nothing" (the reference
    /// store stamps rows with its own clock); here rows get chosen ages.
    #[tokio::test]
    async fn sweeps_remove_exactly_the_rows_older_than_the_cutoff() {
        let b = SqliteBackend::open_in_memory().unwrap();
        for (i, id) in ["A", "B", "C"].iter().enumerate() {
            b.store_sent_message("c@g.us", id, b"p").await.unwrap();
            b.store_pending_inbound("c@g.us", "s@s.whatsapp.net", id, b"m")
                .await
                .unwrap();
            let age = 100 * i64::try_from(i).unwrap();
            let conn = b.lock();
            conn.execute(
                "UPDATE sent_messages SET created_at = ?1 WHERE message_id = ?2",
                params![age, id],
            )
            .unwrap();
            conn.execute(
                "UPDATE pending_inbound SET created_at = ?1 WHERE id = ?2",
                params![age, id],
            )
            .unwrap();
        }
        // Rows at exactly the cutoff stay (reference: keep `timestamp >= cutoff`).
        assert_eq!(b.delete_expired_sent_messages(100).await.unwrap(), 1);
        assert_eq!(b.delete_expired_pending_inbound(100).await.unwrap(), 1);
        assert_eq!(b.take_sent_message("c@g.us", "A").await.unwrap(), None);
        assert!(b.take_sent_message("c@g.us", "B").await.unwrap().is_some());
        assert!(b
            .get_pending_inbound("c@g.us", "s@s.whatsapp.net", "C")
            .await
            .unwrap()
            .is_some());
        assert_eq!(b.delete_expired_pending_inbound(1000).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn create_persists_a_device_once_and_counts_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("whatsapp.db");
        let first_key = {
            let b = SqliteBackend::open(&path).unwrap();
            assert!(!b.exists().await.unwrap());
            assert_eq!(b.create().await.unwrap(), 1);
            assert!(b.exists().await.unwrap());
            b.load().await.unwrap().unwrap().identity_key.public_key
        };
        let b = SqliteBackend::open(&path).unwrap();
        assert_eq!(b.create().await.unwrap(), 2);
        let again = b.load().await.unwrap().unwrap().identity_key.public_key;
        assert_eq!(
            again, first_key,
            "create must not replace an existing device"
        );
    }

    #[tokio::test]
    async fn the_linked_number_is_read_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("whatsapp.db");
        assert_eq!(SqliteBackend::linked_number_at(&path).unwrap(), None);
        assert!(!path.exists(), "reading must not create the store");
        let b = SqliteBackend::open(&path).unwrap();
        b.create().await.unwrap();
        assert_eq!(SqliteBackend::linked_number_at(&path).unwrap(), None);
        let mut device = b.load().await.unwrap().unwrap();
        device.pn = Some("33700000001:5@s.whatsapp.net".parse().unwrap());
        b.save(&device).await.unwrap();
        // Read while the service's connection is open.
        assert_eq!(
            SqliteBackend::linked_number_at(&path).unwrap().as_deref(),
            Some("33700000001")
        );
    }

    #[tokio::test]
    async fn snapshot_is_a_private_consistent_copy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("whatsapp.db");
        let b = SqliteBackend::open(&path).unwrap();
        b.put_session("a@s.whatsapp.net", b"ratchet").await.unwrap();
        b.snapshot_db("pre_pkmsg_3EB0/../x", Some(b"stanza"))
            .await
            .unwrap();
        let snapshots: Vec<PathBuf> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.to_string_lossy()
                    .contains(".snapshot-pre_pkmsg_3EB0____x-")
            })
            .collect();
        assert_eq!(snapshots.len(), 2, "{snapshots:?}");
        for file in &snapshots {
            assert_eq!(mode(file), 0o600, "{}", file.display());
        }
        let db = snapshots
            .iter()
            .find(|p| !p.to_string_lossy().ends_with(".extra"))
            .unwrap();
        let extra = snapshots
            .iter()
            .find(|p| p.to_string_lossy().ends_with(".extra"))
            .unwrap();
        assert_eq!(fs::read(extra).unwrap(), b"stanza");
        let copy = SqliteBackend::open(db).unwrap();
        assert_eq!(
            copy.get_session("a@s.whatsapp.net")
                .await
                .unwrap()
                .as_deref(),
            Some(&b"ratchet"[..])
        );
        let memory = SqliteBackend::open_in_memory().unwrap();
        memory.snapshot_db("x", None).await.unwrap();
    }

    #[tokio::test]
    async fn resource_report_counts_pages() {
        let b = SqliteBackend::open_in_memory().unwrap();
        let report = b.resource_report().await;
        assert!(report.pages.is_some_and(|p| p > 0), "{report:?}");
    }

    #[tokio::test]
    async fn corrupt_rows_are_errors_not_panics() {
        let b = SqliteBackend::open_in_memory().unwrap();
        {
            let conn = b.lock();
            conn.execute("INSERT INTO identities VALUES ('a@lid', x'0102')", [])
                .unwrap();
            conn.execute("INSERT INTO device VALUES (1, '{not json')", [])
                .unwrap();
            conn.execute("INSERT INTO prekeys VALUES (-1, x'00', 0)", [])
                .unwrap();
        }
        let err = b.load_identity("a@lid").await.unwrap_err();
        assert!(matches!(err, StoreError::Validation(_)), "{err:?}");
        let err = b.load().await.err().expect("bad JSON is an error");
        assert!(matches!(err, StoreError::Serialization(_)), "{err:?}");
        let err = b.get_max_prekey_id().await.unwrap_err();
        assert!(matches!(err, StoreError::Database(_)), "{err:?}");
    }

    #[tokio::test]
    async fn sent_messages_are_capped_like_the_reference_oldest_first() {
        let b = SqliteBackend::open_in_memory().unwrap();
        let mem = InMemoryBackend::new();
        let n = 4097;
        for i in 0..n {
            let id = format!("M{i}");
            b.store_sent_message("c@g.us", &id, b"p").await.unwrap();
            mem.store_sent_message("c@g.us", &id, b"p").await.unwrap();
        }
        assert!(b
            .take_sent_message("c@g.us", "M1023")
            .await
            .unwrap()
            .is_none());
        assert!(b
            .take_sent_message("c@g.us", "M1024")
            .await
            .unwrap()
            .is_some());
        assert!(mem
            .take_sent_message("c@g.us", "M4096")
            .await
            .unwrap()
            .is_some());
        assert!(b
            .take_sent_message("c@g.us", "M4096")
            .await
            .unwrap()
            .is_some());
        let far = now_secs() + 3600;
        assert_eq!(
            b.delete_expired_sent_messages(far).await.unwrap(),
            mem.delete_expired_sent_messages(far).await.unwrap() - 1,
            "same number kept (M1024 taken from SqliteBackend only)"
        );
    }
}
