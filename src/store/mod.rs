//! The bridge database `passerelle.db`: opening it safely (mode 0600, WAL, migrations)
//! and the shared `Store` handle. What is stored lives in the submodules: `groups`
//! (group<->room map), `links` (message id map), `outbox` (persistent send queues and
//! dead letters), `meta` (service key/value state), `counters` (yearly report),
//! `names` (WhatsApp names), `digests` (reaction digests), `polls` (votes in polls),
//! `undecrypted` (Matrix events waiting for their keys), `retention` (forgetting what
//! is older than `[relay] remember_days`).
//!
//! `Store` is `Send + Sync` (one SQLite connection behind a mutex) and meant to be
//! shared as `Arc<Store>`. Every method is a short synchronous query, fine to call from
//! async code directly.

mod counters;
mod digests;
mod error;
mod groups;
mod links;
mod meta;
mod names;
mod outbox;
mod polls;
mod retention;
mod schema;
mod set_aside;
mod speakers;
mod undecrypted;

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::Connection;

pub use digests::{Digest, DigestEntry};
pub use error::StoreError;
pub use links::MessageLink;
pub use outbox::{DeadLetter, NewOutboxItem, OutboxItem};
pub use polls::PollVote;
pub use retention::Forgotten;
pub use schema::schema_version;
pub use set_aside::SetAside;
pub use undecrypted::UndecryptedEvent;

/// How long a query waits for a lock held by another connection (e.g. the `status`
/// CLI reading while the service writes) before failing with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Which way a message travels. Stored as the name of the side it goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// WhatsApp -> Matrix (stored as `'matrix'`).
    ToMatrix,
    /// Matrix -> WhatsApp (stored as `'whatsapp'`).
    ToWhatsApp,
}

impl Direction {
    /// The stored text: `"matrix"` or `"whatsapp"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ToMatrix => "matrix",
            Direction::ToWhatsApp => "whatsapp",
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ToSql for Direction {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for Direction {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value.as_str()? {
            "matrix" => Ok(Direction::ToMatrix),
            "whatsapp" => Ok(Direction::ToWhatsApp),
            other => Err(FromSqlError::Other(
                format!("unknown direction {other:?}").into(),
            )),
        }
    }
}

/// Handle on `passerelle.db`.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating if needed) the database at `path`: the file is owner-only (0600,
    /// tightened if it was looser), journal in WAL mode, foreign keys on, and pending
    /// migrations applied. The parent directory must exist.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        prepare_private_file(path)?;
        let conn = Connection::open(path)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "bridge database is not in WAL mode");
        }
        // Full fsync on commit: an acknowledged enqueue must survive a power loss.
        conn.pragma_update(None, "synchronous", "FULL")?;
        Store::setup(conn)
    }

    /// Opens an existing database for reading only (for `passerelle status`): creates
    /// nothing, migrates nothing, so an admin running it as another user cannot leave
    /// files the service could not write.
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        let flags =
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let found = schema::schema_version(&conn)?;
        let supported = schema::MIGRATIONS.len() as i64;
        if found > supported {
            return Err(StoreError::SchemaTooNew { found, supported });
        }
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    /// A private in-memory database with the full schema, for tests.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Store::setup(Connection::open_in_memory()?)
    }

    fn setup(mut conn: Connection) -> Result<Store, StoreError> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "foreign_keys", true)?;
        schema::migrate(&mut conn, schema::MIGRATIONS)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    /// The connection. A panic while it was held cannot leave a half-done write (an
    /// open `Transaction` rolls back on drop), so a poisoned lock is simply taken over.
    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Creates `path` owner-only (0600) and tightens leftover sidecar files: see
/// [`crate::secret_file::prepare_private_sqlite_file`].
fn prepare_private_file(path: &Path) -> Result<(), StoreError> {
    crate::secret_file::prepare_private_sqlite_file(path)
        .map_err(|(path, source)| StoreError::File { path, source })
}

/// Now, in milliseconds since the Unix epoch (0 if the clock is before 1970).
pub(crate) fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn store_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Store>();
        check::<Arc<Store>>();
    }

    #[test]
    fn new_file_is_private_and_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passerelle.db");
        let store = Store::open(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        store.set_meta("k", "v").unwrap();
        let conn = store.lock();
        let journal: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
        let fk: i64 = conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
        // SQLite gives the WAL file the database file's mode.
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        assert_eq!(mode(Path::new(&wal)), 0o600);
    }

    #[test]
    fn loose_existing_file_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passerelle.db");
        drop(Store::open(&path).unwrap());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(mode(&path), 0o644);
        drop(Store::open(&path).unwrap());
        assert_eq!(mode(&path), 0o600);
        // An empty loose file (e.g. touched by an admin) is tightened and initialised.
        let other = dir.path().join("touched.db");
        fs::write(&other, b"").unwrap();
        fs::set_permissions(&other, fs::Permissions::from_mode(0o666)).unwrap();
        let store = Store::open(&other).unwrap();
        assert_eq!(mode(&other), 0o600);
        assert_eq!(
            schema_version(&store.lock()).unwrap(),
            schema::MIGRATIONS.len() as i64
        );
    }

    #[test]
    fn missing_parent_dir_is_a_file_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Store::open(&dir.path().join("nope/passerelle.db")).unwrap_err();
        assert!(matches!(err, StoreError::File { .. }), "{err}");
    }

    #[test]
    fn direction_round_trips_and_rejects_unknown() {
        let store = Store::open_in_memory().unwrap();
        let conn = store.lock();
        for d in [Direction::ToMatrix, Direction::ToWhatsApp] {
            let back: Direction = conn.query_row("SELECT ?1", [d], |r| r.get(0)).unwrap();
            assert_eq!(back, d);
        }
        let bad: rusqlite::Result<Direction> = conn.query_row("SELECT 'sms'", [], |r| r.get(0));
        assert!(bad.is_err());
    }

    #[test]
    fn shared_across_threads() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for i in 0..25 {
                        store
                            .bump_counter("2025-03-01", &format!("g{t}"), Direction::ToMatrix, i)
                            .unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let rows = store.counters("2025-03-01", "2025-03-01").unwrap();
        assert_eq!(rows.len(), 4);
        assert!(rows.iter().all(|r| r.3 == (0..25).sum::<u64>()));
    }
}
