//! Outbox items set aside after too many attempts or too long a wait: kept whole
//! (their payload too) among the dead letters, so that an admin can list them, send
//! them again or drop them (`passerelle outbox`), until `remember_days` forgets them.

use rusqlite::{params, TransactionBehavior};

use super::{now_unix_ms, Direction, Store, StoreError};

/// A set-aside item as `passerelle outbox` lists it: ids, counts and why, never its
/// content (only its size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    pub seq: i64,
    pub direction: Direction,
    pub group_jid: String,
    pub attempts: u32,
    /// Unix seconds.
    pub enqueued_at: i64,
    /// Unix seconds.
    pub set_aside_at: i64,
    pub reason: String,
    pub last_error: Option<String>,
    pub payload_bytes: u64,
}

impl Store {
    /// Moves row `seq` out of the queue, whole, with `reason`: the items behind it
    /// go on. Returns whether a row was moved.
    pub fn set_aside(&self, seq: i64, reason: &str) -> Result<bool, StoreError> {
        self.move_to_dead_letters(seq, reason, true)
    }

    /// The items set aside (those that can be sent again), oldest first.
    pub fn set_aside_items(&self) -> Result<Vec<SetAside>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT seq, direction, group_jid, attempts, enqueued_at, discarded_at, reason,
                    last_error, length(payload)
             FROM dead_letters WHERE payload IS NOT NULL ORDER BY seq",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok(SetAside {
                seq: row.get(0)?,
                direction: row.get(1)?,
                group_jid: row.get(2)?,
                attempts: row.get(3)?,
                enqueued_at: row.get(4)?,
                set_aside_at: row.get(5)?,
                reason: row.get(6)?,
                last_error: row.get(7)?,
                payload_bytes: row.get::<_, i64>(8)?.try_into().unwrap_or(0),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Puts set-aside item `seq` back in its queue at its old place, due now, its
    /// attempts counted from zero. `false` when there is no such item (or the same
    /// message is queued again already).
    pub fn requeue_set_aside(&self, seq: i64) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO outbox
                 (seq, direction, source_id, target_id, group_jid, room_id, payload,
                  attempts, enqueued_at, next_attempt_at, last_error)
             SELECT seq, direction, source_id, target_id, group_jid, room_id, payload,
                    0, enqueued_at, ?2, last_error
             FROM dead_letters WHERE seq = ?1 AND payload IS NOT NULL",
            params![seq, now_unix_ms()],
        )?;
        if inserted > 0 {
            tx.execute("DELETE FROM dead_letters WHERE seq = ?1", [seq])?;
        }
        tx.commit()?;
        Ok(inserted > 0)
    }

    /// Forgets set-aside item `seq` for good. Returns whether there was one.
    pub fn drop_set_aside(&self, seq: i64) -> Result<bool, StoreError> {
        Ok(self.lock().execute(
            "DELETE FROM dead_letters WHERE seq = ?1 AND payload IS NOT NULL",
            [seq],
        )? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewOutboxItem;

    fn queue(store: &Store, source: &str) {
        store
            .enqueue(&NewOutboxItem {
                direction: Direction::ToMatrix,
                source_id: source,
                target_id: &format!("t-{source}"),
                group_jid: "g@g.us",
                room_id: "!r:x",
                payload: "{\"body\":\"secret\"}",
            })
            .unwrap();
    }

    #[test]
    fn a_set_aside_item_lets_the_queue_move_and_can_come_back_at_its_place() {
        let store = Store::open_in_memory().unwrap();
        queue(&store, "W1");
        queue(&store, "W2");
        let head = store
            .next_due(Direction::ToMatrix, i64::MAX)
            .unwrap()
            .unwrap();
        assert_eq!(head.source_id, "W1");
        assert!(store.set_aside(head.seq, "8 attempts").unwrap());
        let next = store
            .next_due(Direction::ToMatrix, i64::MAX)
            .unwrap()
            .unwrap();
        assert_eq!(next.source_id, "W2", "the queue moves on");

        let listed = store.set_aside_items().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].seq, head.seq);
        assert_eq!(listed[0].reason, "8 attempts");
        assert_eq!(listed[0].payload_bytes, 17);

        assert!(store.requeue_set_aside(head.seq).unwrap());
        assert!(store.set_aside_items().unwrap().is_empty());
        let again = store
            .next_due(Direction::ToMatrix, i64::MAX)
            .unwrap()
            .unwrap();
        assert_eq!(again.source_id, "W1", "back at its place, ahead of W2");
        assert_eq!(again.payload, "{\"body\":\"secret\"}");
        assert_eq!(again.attempts, 0);
        assert!(!store.requeue_set_aside(head.seq).unwrap(), "only once");

        assert!(store.set_aside(again.seq, "too old").unwrap());
        assert!(store.drop_set_aside(again.seq).unwrap());
        assert!(!store.drop_set_aside(again.seq).unwrap());
        assert!(store.set_aside_items().unwrap().is_empty());
    }

    #[test]
    fn items_refused_for_good_are_not_listed_nor_sent_again() {
        let store = Store::open_in_memory().unwrap();
        queue(&store, "W1");
        let head = store
            .next_due(Direction::ToMatrix, i64::MAX)
            .unwrap()
            .unwrap();
        store.discard(head.seq, "refused").unwrap();
        assert!(store.set_aside_items().unwrap().is_empty());
        assert!(!store.requeue_set_aside(head.seq).unwrap());
    }
}
