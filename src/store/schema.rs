//! Schema migrations of `passerelle.db`, tracked with `PRAGMA user_version`.
//!
//! `MIGRATIONS[i]` takes the database from version `i` to `i + 1`. Each one runs in its
//! own transaction together with the `user_version` bump, so a failed migration leaves
//! the database exactly at the previous version. Never edit a released migration: append
//! a new one.

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

/// Version 1: group<->room map, message id map, outbox, meta.
const V1: &str = "
CREATE TABLE group_rooms (
    group_jid TEXT PRIMARY KEY NOT NULL,
    room_id   TEXT NOT NULL UNIQUE
);

-- One row per relayed message: ids only, never content.
CREATE TABLE message_links (
    group_jid  TEXT NOT NULL,
    wa_id      TEXT NOT NULL,
    room_id    TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    origin     TEXT NOT NULL CHECK (origin IN ('matrix', 'whatsapp')),
    created_at INTEGER NOT NULL,
    PRIMARY KEY (group_jid, wa_id)
);
CREATE UNIQUE INDEX message_links_event ON message_links (room_id, event_id);
CREATE INDEX message_links_created ON message_links (created_at);

-- Pending sends. AUTOINCREMENT: a seq is never reused, so a stale seq can never
-- complete or discard a newer row.
CREATE TABLE outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    direction       TEXT NOT NULL CHECK (direction IN ('matrix', 'whatsapp')),
    source_id       TEXT NOT NULL,
    target_id       TEXT NOT NULL,
    group_jid       TEXT NOT NULL,
    room_id         TEXT NOT NULL,
    payload         TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    enqueued_at     INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    UNIQUE (direction, source_id)
);
CREATE INDEX outbox_group_order ON outbox (direction, group_jid, seq);
CREATE INDEX outbox_target ON outbox (direction, group_jid, target_id);

CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
";

/// Version 2: dead letters and the per-day counters for the yearly report.
const V2: &str = "
-- Outbox rows that were given up on: ids and reason, never the payload.
CREATE TABLE dead_letters (
    seq          INTEGER PRIMARY KEY NOT NULL,
    direction    TEXT NOT NULL CHECK (direction IN ('matrix', 'whatsapp')),
    source_id    TEXT NOT NULL,
    target_id    TEXT NOT NULL,
    group_jid    TEXT NOT NULL,
    room_id      TEXT NOT NULL,
    attempts     INTEGER NOT NULL,
    enqueued_at  INTEGER NOT NULL,
    last_error   TEXT,
    reason       TEXT NOT NULL,
    discarded_at INTEGER NOT NULL
);
CREATE INDEX dead_letters_discarded ON dead_letters (discarded_at);

-- Message counts per day, group and direction: no content, no sender ids.
CREATE TABLE counters (
    day       TEXT NOT NULL,
    group_jid TEXT NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('matrix', 'whatsapp')),
    count     INTEGER NOT NULL,
    PRIMARY KEY (day, group_jid, direction)
) WITHOUT ROWID;
";

/// Version 3: the WhatsApp names last seen per sender, for messages that come
/// without one (WhatsApp sends the push name only with some messages).
const V3: &str = "
CREATE TABLE whatsapp_names (
    sender     TEXT PRIMARY KEY NOT NULL,
    push_name  TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
";

/// Version 4: who wrote each linked message (a WhatsApp sender's number, or a Matrix
/// user id), to address replies and to check who may edit or delete it.
const V4: &str = "
ALTER TABLE message_links ADD COLUMN sender TEXT NOT NULL DEFAULT '';
";

/// Version 5: reaction digests (`reactions_to_whatsapp = "digest"`): the number's
/// reply listing the Matrix reactions to a WhatsApp message, and who reacted how.
const V5: &str = "
CREATE TABLE reaction_digests (
    group_jid     TEXT NOT NULL,
    target        TEXT NOT NULL,
    reply_id      TEXT NOT NULL,
    reply_sent_at INTEGER NOT NULL,
    PRIMARY KEY (group_jid, target)
) WITHOUT ROWID;
CREATE TABLE reaction_digest_entries (
    group_jid      TEXT NOT NULL,
    target         TEXT NOT NULL,
    position       INTEGER NOT NULL,
    reaction_event TEXT NOT NULL,
    user           TEXT NOT NULL,
    emoji          TEXT NOT NULL,
    PRIMARY KEY (group_jid, target, position)
) WITHOUT ROWID;
";

/// Version 6: votes in WhatsApp polls (each voter's latest choice, a JSON array of
/// option names; empty when they took their vote back), for the poll's tally line.
const V6: &str = "
CREATE TABLE poll_votes (
    group_jid TEXT NOT NULL,
    poll_id   TEXT NOT NULL,
    voter     TEXT NOT NULL,
    choices   TEXT NOT NULL,
    voted_at  INTEGER NOT NULL,
    PRIMARY KEY (group_jid, poll_id, voter)
) WITHOUT ROWID;
";

/// Version 7: the WhatsApp ids of everything the bridge sends, recorded when it is
/// queued, so that its own messages seen again from the number are known by id (not
/// by the shape of the id, which WhatsApp Web's own ids can share). Filled from the
/// links of what was sent before.
const V7: &str = "
CREATE TABLE sent_whatsapp_ids (
    group_jid TEXT NOT NULL,
    wa_id     TEXT NOT NULL,
    queued_at INTEGER NOT NULL,
    PRIMARY KEY (group_jid, wa_id)
) WITHOUT ROWID;
INSERT OR IGNORE INTO sent_whatsapp_ids (group_jid, wa_id, queued_at)
    SELECT group_jid, wa_id, created_at FROM message_links WHERE origin = 'whatsapp';
INSERT OR IGNORE INTO sent_whatsapp_ids (group_jid, wa_id, queued_at)
    SELECT group_jid, target_id, enqueued_at FROM outbox WHERE direction = 'whatsapp';
";

/// Version 8: items set aside after too many attempts keep their payload among the
/// dead letters (so they can be sent again); other dead letters keep none.
const V8: &str = "
ALTER TABLE dead_letters ADD COLUMN payload TEXT;
";

/// Version 9: who spoke in each group under which name key (see
/// `relay::namesakes`), to tell apart two people showing the same name.
const V9: &str = "
CREATE TABLE speakers (
    group_jid TEXT NOT NULL,
    speaker   TEXT NOT NULL,
    name_key  TEXT NOT NULL,
    seen_at   INTEGER NOT NULL,
    PRIMARY KEY (group_jid, speaker)
) WITHOUT ROWID;
CREATE INDEX speakers_by_name ON speakers (group_jid, name_key);
CREATE INDEX speakers_seen ON speakers (seen_at);
";

/// Version 10: Matrix events the bot could not decrypt yet, kept (still encrypted)
/// until their key arrives or the wait for it is over.
const V10: &str = "
CREATE TABLE undecrypted_events (
    event_id TEXT PRIMARY KEY NOT NULL,
    room_id  TEXT NOT NULL,
    sender   TEXT NOT NULL,
    event    TEXT NOT NULL,
    seen_at  INTEGER NOT NULL
) WITHOUT ROWID;
";

/// All migrations, in order. The schema version of a fully migrated database is
/// `MIGRATIONS.len()`.
pub(crate) const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5, V6, V7, V8, V9, V10];

/// The current schema version.
pub fn schema_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("PRAGMA user_version", [], |row| row.get(0))?)
}

/// Applies the pending ones of `migrations` to `conn`, each in its own transaction.
pub(crate) fn migrate(conn: &mut Connection, migrations: &[&str]) -> Result<(), StoreError> {
    let supported = i64::try_from(migrations.len()).unwrap_or(i64::MAX);
    let found = schema_version(conn)?;
    // A negative version is not one we wrote either: refuse it the same way.
    let done = match usize::try_from(found) {
        Ok(done) if found <= supported => done,
        _ => return Err(StoreError::SchemaTooNew { found, supported }),
    };
    for (from, sql) in (found..).zip(migrations.iter().skip(done)) {
        let to = from + 1;
        let apply = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", to)?;
            tx.commit()
        };
        apply(conn).map_err(|source| StoreError::Migration { from, to, source })?;
        tracing::info!(from, to, "migrated bridge database");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Direction, MessageLink, Store};

    #[test]
    fn fresh_database_reaches_latest_version() {
        let store = Store::open_in_memory().unwrap();
        let conn = store.lock();
        assert_eq!(schema_version(&conn).unwrap(), MIGRATIONS.len() as i64);
    }

    #[test]
    fn v1_database_is_migrated_and_reopen_is_noop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passerelle.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            migrate(&mut conn, &MIGRATIONS[..1]).unwrap();
            assert_eq!(schema_version(&conn).unwrap(), 1);
            conn.execute(
                "INSERT INTO message_links VALUES ('g@g.us', 'W1', '!r:x', '$e1', 'matrix', 5)",
                [],
            )
            .unwrap();
            // v2 tables do not exist yet
            assert!(conn.execute("SELECT * FROM counters", []).is_err());
        }
        {
            let store = Store::open(&path).unwrap();
            assert_eq!(
                schema_version(&store.lock()).unwrap(),
                MIGRATIONS.len() as i64
            );
            // v1 data survived, v2 tables work
            assert_eq!(
                store.event_for_wa("g@g.us", "W1").unwrap().as_deref(),
                Some("$e1")
            );
            store
                .bump_counter("2025-01-01", "g@g.us", Direction::ToMatrix, 1)
                .unwrap();
        }
        // Reopening: nothing to apply, data unchanged.
        let store = Store::open(&path).unwrap();
        assert_eq!(
            schema_version(&store.lock()).unwrap(),
            MIGRATIONS.len() as i64
        );
        assert_eq!(store.counters("2025-01-01", "2025-01-01").unwrap().len(), 1);
        store
            .record_link(&MessageLink {
                group_jid: "g@g.us".into(),
                wa_id: "W2".into(),
                room_id: "!r:x".into(),
                event_id: "$e2".into(),
                origin: Direction::ToWhatsApp,
                created_at: 6,
                sender: String::new(),
            })
            .unwrap();
    }

    #[test]
    fn failed_migration_is_rolled_back() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, &MIGRATIONS[..1]).unwrap();
        let broken = [MIGRATIONS[0], "CREATE TABLE half (x); THIS IS NOT SQL;"];
        let err = migrate(&mut conn, &broken).unwrap_err();
        assert!(matches!(err, StoreError::Migration { from: 1, to: 2, .. }));
        assert_eq!(schema_version(&conn).unwrap(), 1);
        assert!(conn.execute("SELECT * FROM half", []).is_err());
    }

    #[test]
    fn newer_schema_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        let err = migrate(&mut conn, MIGRATIONS).unwrap_err();
        assert!(matches!(err, StoreError::SchemaTooNew { found: 99, .. }));
    }
}
