//! The one error type of the bridge database, `StoreError`.

use std::path::PathBuf;

/// Everything that can go wrong in `src/store/`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Creating, opening or chmod-ing the database file failed.
    #[error("cannot prepare database file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An SQLite error (open, query, constraint, corrupt value).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),

    /// The file was written by a newer passerelle (schema version above what we know).
    #[error("database schema version {found} is newer than this passerelle supports ({supported}); upgrade passerelle")]
    SchemaTooNew { found: i64, supported: i64 },

    /// A migration failed; the database is left at version `from` (nothing applied).
    #[error(
        "database migration to version {to} failed (database left at version {from}): {source}"
    )]
    Migration {
        from: i64,
        to: i64,
        #[source]
        source: rusqlite::Error,
    },

    /// `set_group_room` with a room that is already mapped to another group.
    #[error("Matrix room {room_id} is already mapped to WhatsApp group {other_group}")]
    RoomInUse {
        room_id: String,
        other_group: String,
    },

    /// `retry_later` on an outbox row that does not exist (already completed or discarded).
    #[error("outbox item {0} is not queued")]
    NotQueued(i64),

    /// A day string that is not `YYYY-MM-DD`.
    #[error("invalid day {0:?}, expected YYYY-MM-DD")]
    InvalidDay(String),
}
