//! Matrix events the bot could not decrypt yet: kept (as the homeserver gave them,
//! still encrypted) until their keys arrive or the wait is over, so that a late
//! key still lets the message cross and a key that never comes is told, once.

use rusqlite::{params, OptionalExtension};

use super::{Store, StoreError};

/// One encrypted event waiting for its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndecryptedEvent {
    pub room_id: String,
    pub event_id: String,
    pub sender: String,
    /// The event as received (JSON, its content encrypted).
    pub event: String,
    /// When the bridge first saw it (ms since the epoch).
    pub seen_at_ms: i64,
}

impl Store {
    /// Keeps `event` until it is decrypted or given up on, unless `limit` events
    /// already wait (then `false`: the caller gives this one up at once). Keeping
    /// the same event again changes nothing and is `true`.
    pub fn keep_undecrypted(
        &self,
        event: &UndecryptedEvent,
        limit: usize,
    ) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let known = tx
            .query_row(
                "SELECT 1 FROM undecrypted_events WHERE event_id = ?1",
                [&event.event_id],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if known {
            return Ok(true);
        }
        let waiting: i64 = tx.query_row("SELECT COUNT(*) FROM undecrypted_events", [], |row| {
            row.get(0)
        })?;
        if usize::try_from(waiting).unwrap_or(usize::MAX) >= limit {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO undecrypted_events (event_id, room_id, sender, event, seen_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                event.event_id,
                event.room_id,
                event.sender,
                event.event,
                event.seen_at_ms
            ],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Every event waiting for its key, first seen first.
    pub fn undecrypted_events(&self) -> Result<Vec<UndecryptedEvent>, StoreError> {
        let conn = self.lock();
        let mut statement = conn.prepare(
            "SELECT room_id, event_id, sender, event, seen_at FROM undecrypted_events
             ORDER BY seen_at, event_id",
        )?;
        let events = statement
            .query_map([], |row| {
                Ok(UndecryptedEvent {
                    room_id: row.get(0)?,
                    event_id: row.get(1)?,
                    sender: row.get(2)?,
                    event: row.get(3)?,
                    seen_at_ms: row.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(events)
    }

    /// How many events wait for their key (none in a database the service has not
    /// migrated yet, which `status` may read).
    pub fn undecrypted_count(&self) -> Result<u64, StoreError> {
        let conn = self.lock();
        let has_table = conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'undecrypted_events'",
                [],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !has_table {
            return Ok(0);
        }
        let count: i64 = conn.query_row("SELECT COUNT(*) FROM undecrypted_events", [], |row| {
            row.get(0)
        })?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Forgets `event_id` (decrypted and handed over, or given up on).
    pub fn forget_undecrypted(&self, event_id: &str) -> Result<(), StoreError> {
        self.lock().execute(
            "DELETE FROM undecrypted_events WHERE event_id = ?1",
            [event_id],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, seen_at_ms: i64) -> UndecryptedEvent {
        UndecryptedEvent {
            room_id: "!r:x".into(),
            event_id: id.into(),
            sender: "@a:x".into(),
            event: "{}".into(),
            seen_at_ms,
        }
    }

    #[test]
    fn events_wait_in_order_up_to_the_limit_and_once_each() {
        let store = Store::open_in_memory().unwrap();
        assert!(store.keep_undecrypted(&event("$b", 20), 2).unwrap());
        assert!(store.keep_undecrypted(&event("$a", 10), 2).unwrap());
        // Seen again (a back-fill): still one, and not refused for the limit.
        assert!(store.keep_undecrypted(&event("$a", 30), 2).unwrap());
        assert!(!store.keep_undecrypted(&event("$c", 40), 2).unwrap());
        let waiting: Vec<_> = store
            .undecrypted_events()
            .unwrap()
            .into_iter()
            .map(|e| (e.event_id, e.seen_at_ms))
            .collect();
        assert_eq!(waiting, [("$a".into(), 10), ("$b".into(), 20)]);
        store.forget_undecrypted("$a").unwrap();
        assert_eq!(store.undecrypted_count().unwrap(), 1);
        assert!(store.keep_undecrypted(&event("$c", 40), 2).unwrap());
    }
}
