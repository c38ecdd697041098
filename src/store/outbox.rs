//! The outboxes: one persistent send queue per direction, FIFO per (direction, group)
//! by insertion sequence, with retry times, dedup against what was already queued or
//! relayed, and dead letters (ids and reason, never payload) for what was given up.

use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use super::links::{insert_link, MessageLink};
use super::{now_unix_ms, Direction, Store, StoreError};

/// Longest error/reason text kept (bytes); longer text is cut at a char boundary.
const MAX_REASON_BYTES: usize = 2000;

/// A queued message.
#[derive(Clone, PartialEq, Eq)]
pub struct OutboxItem {
    /// Insertion sequence; never reused.
    pub seq: i64,
    pub direction: Direction,
    /// The WhatsApp message id (`ToMatrix`) or Matrix event id (`ToWhatsApp`) relayed.
    pub source_id: String,
    /// The id used on the other side, derived from the source: Matrix transaction id
    /// (`ToMatrix`) or WhatsApp message id (`ToWhatsApp`).
    pub target_id: String,
    pub group_jid: String,
    pub room_id: String,
    /// JSON, opaque to the store. Deleted with the row once sent.
    pub payload: String,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Unix seconds.
    pub enqueued_at: i64,
    /// Unix milliseconds; the item is not due before.
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
}

/// Message content stays out of logs: `Debug` shows the payload's length only.
impl std::fmt::Debug for OutboxItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxItem")
            .field("seq", &self.seq)
            .field("direction", &self.direction)
            .field("source_id", &self.source_id)
            .field("target_id", &self.target_id)
            .field("group_jid", &self.group_jid)
            .field("room_id", &self.room_id)
            .field("payload_len", &self.payload.len())
            .field("attempts", &self.attempts)
            .field("enqueued_at", &self.enqueued_at)
            .field("next_attempt_at", &self.next_attempt_at)
            .field("last_error", &self.last_error)
            .finish()
    }
}

/// A message to queue (see `Store::enqueue`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NewOutboxItem<'a> {
    pub direction: Direction,
    pub source_id: &'a str,
    pub target_id: &'a str,
    pub group_jid: &'a str,
    pub room_id: &'a str,
    pub payload: &'a str,
}

impl std::fmt::Debug for NewOutboxItem<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewOutboxItem")
            .field("direction", &self.direction)
            .field("source_id", &self.source_id)
            .field("target_id", &self.target_id)
            .field("group_jid", &self.group_jid)
            .field("room_id", &self.room_id)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// An outbox item that was discarded: ids and why, not the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub seq: i64,
    pub direction: Direction,
    pub source_id: String,
    pub target_id: String,
    pub group_jid: String,
    pub room_id: String,
    pub attempts: u32,
    /// Unix seconds.
    pub enqueued_at: i64,
    pub last_error: Option<String>,
    pub reason: String,
    /// Unix seconds.
    pub discarded_at: i64,
}

const ITEM_COLUMNS: &str = "seq, direction, source_id, target_id, group_jid, room_id, payload, \
                            attempts, enqueued_at, next_attempt_at, last_error";

/// The `seq`s of the head (oldest row) of each group's queue in direction `?1`.
const HEADS: &str = "SELECT MIN(seq) FROM outbox WHERE direction = ?1 GROUP BY group_jid";

fn item_from_row(row: &Row<'_>) -> rusqlite::Result<OutboxItem> {
    Ok(OutboxItem {
        seq: row.get(0)?,
        direction: row.get(1)?,
        source_id: row.get(2)?,
        target_id: row.get(3)?,
        group_jid: row.get(4)?,
        room_id: row.get(5)?,
        payload: row.get(6)?,
        attempts: row.get(7)?,
        enqueued_at: row.get(8)?,
        next_attempt_at: row.get(9)?,
        last_error: row.get(10)?,
    })
}

/// `text` cut to at most `MAX_REASON_BYTES` bytes, at a char boundary.
fn clip(text: &str) -> &str {
    if text.len() <= MAX_REASON_BYTES {
        return text;
    }
    let mut end = MAX_REASON_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Whether the source of a would-be item was already relayed (a link exists on its
/// source side).
fn already_linked(conn: &Connection, item: &NewOutboxItem<'_>) -> rusqlite::Result<bool> {
    let sql = match item.direction {
        Direction::ToMatrix => {
            "SELECT EXISTS (SELECT 1 FROM message_links WHERE group_jid = ?1 AND wa_id = ?2)"
        }
        Direction::ToWhatsApp => {
            "SELECT EXISTS (SELECT 1 FROM message_links WHERE room_id = ?1 AND event_id = ?2)"
        }
    };
    let scope = match item.direction {
        Direction::ToMatrix => item.group_jid,
        Direction::ToWhatsApp => item.room_id,
    };
    conn.query_row(sql, [scope, item.source_id], |row| row.get(0))
}

impl Store {
    /// Queues `item`, due now. Atomically: returns `Ok(false)` and writes nothing if
    /// this source is already queued (same direction and source id) or already relayed
    /// (a link exists on its source side: `(group_jid, wa_id = source_id)` for
    /// `ToMatrix`, `(room_id, event_id = source_id)` for `ToWhatsApp`); else inserts it
    /// and returns `Ok(true)`.
    pub fn enqueue(&self, item: &NewOutboxItem<'_>) -> Result<bool, StoreError> {
        self.enqueue_at(item, now_unix_ms())
    }

    /// `enqueue` with an explicit clock: `enqueued_at = now_unix_ms / 1000`, due at
    /// `now_unix_ms`.
    pub fn enqueue_at(
        &self,
        item: &NewOutboxItem<'_>,
        now_unix_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if already_linked(&tx, item)? {
            return Ok(false);
        }
        let inserted = tx.execute(
            "INSERT INTO outbox (direction, source_id, target_id, group_jid, room_id, payload,
                                 attempts, enqueued_at, next_attempt_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8)
             ON CONFLICT (direction, source_id) DO NOTHING",
            params![
                item.direction,
                item.source_id,
                item.target_id,
                item.group_jid,
                item.room_id,
                item.payload,
                now_unix_ms.div_euclid(1000),
                now_unix_ms
            ],
        )?;
        if item.direction == Direction::ToWhatsApp {
            tx.execute(
                "INSERT OR IGNORE INTO sent_whatsapp_ids (group_jid, wa_id, queued_at)
                 VALUES (?1, ?2, ?3)",
                params![item.group_jid, item.target_id, now_unix_ms.div_euclid(1000)],
            )?;
        }
        tx.commit()?;
        Ok(inserted == 1)
    }

    /// The oldest due item (`next_attempt_at <= now_unix_ms`) of `direction` that heads
    /// its group's queue: an item is never returned while an older item of the same
    /// (direction, group) is still queued, even if that older one is not due yet.
    pub fn next_due(
        &self,
        direction: Direction,
        now_unix_ms: i64,
    ) -> Result<Option<OutboxItem>, StoreError> {
        let sql = format!(
            "SELECT {ITEM_COLUMNS} FROM outbox
             WHERE direction = ?1 AND next_attempt_at <= ?2 AND seq IN ({HEADS})
             ORDER BY seq LIMIT 1"
        );
        Ok(self
            .lock()
            .query_row(&sql, params![direction, now_unix_ms], item_from_row)
            .optional()?)
    }

    /// Sent: deletes row `seq` and records `link`, in one transaction. The link is
    /// recorded even if the row was already gone (the message was sent all the same).
    pub fn complete(&self, seq: i64, link: &MessageLink) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let deleted = tx.execute("DELETE FROM outbox WHERE seq = ?1", [seq])?;
        if deleted == 0 {
            tracing::warn!(seq, "completed an outbox item that was no longer queued");
        }
        insert_link(&tx, link)?;
        tx.commit()?;
        Ok(())
    }

    /// Done with row `seq`, with nothing to link (e.g. a deletion of a message the
    /// bridge never mirrored).
    pub fn complete_unlinked(&self, seq: i64) -> Result<(), StoreError> {
        self.lock()
            .execute("DELETE FROM outbox WHERE seq = ?1", [seq])?;
        Ok(())
    }

    /// Gives up on row `seq` without a link: moves its ids, attempts, last error and
    /// `reason` (not the payload) to the dead letters. Returns whether a row was removed.
    pub fn discard(&self, seq: i64, reason: &str) -> Result<bool, StoreError> {
        self.move_to_dead_letters(seq, reason, false)
    }

    /// Moves row `seq` to the dead letters with `reason` (clipped), its payload too
    /// when `keep_payload` (a set-aside item, to be sent again). Returns whether a
    /// row was removed.
    pub(super) fn move_to_dead_letters(
        &self,
        seq: i64,
        reason: &str,
        keep_payload: bool,
    ) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT OR REPLACE INTO dead_letters
                 (seq, direction, source_id, target_id, group_jid, room_id, attempts,
                  enqueued_at, last_error, reason, discarded_at, payload)
             SELECT seq, direction, source_id, target_id, group_jid, room_id, attempts,
                    enqueued_at, last_error, ?2, ?3, CASE WHEN ?4 THEN payload END
             FROM outbox WHERE seq = ?1",
            params![
                seq,
                clip(reason),
                now_unix_ms().div_euclid(1000),
                keep_payload
            ],
        )?;
        let deleted = tx.execute("DELETE FROM outbox WHERE seq = ?1", [seq])?;
        tx.commit()?;
        Ok(deleted > 0)
    }

    /// A failed attempt: counts it, keeps `error` and makes row `seq` due again at
    /// `next_attempt_at_ms`. Returns the attempts so far; `StoreError::NotQueued` if the
    /// row is gone.
    pub fn retry_later(
        &self,
        seq: i64,
        error: &str,
        next_attempt_at_ms: i64,
    ) -> Result<u32, StoreError> {
        self.lock()
            .query_row(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, next_attempt_at = ?3
                 WHERE seq = ?1 RETURNING attempts",
                params![seq, clip(error), next_attempt_at_ms],
                |row| row.get(0),
            )
            .optional()?
            .ok_or(StoreError::NotQueued(seq))
    }

    /// Makes row `seq` due at `next_attempt_at_ms` without counting an attempt (the
    /// item was not tried: e.g. its group is paced). Returns whether the row exists.
    pub fn postpone(&self, seq: i64, next_attempt_at_ms: i64) -> Result<bool, StoreError> {
        let changed = self.lock().execute(
            "UPDATE outbox SET next_attempt_at = ?2 WHERE seq = ?1",
            params![seq, next_attempt_at_ms],
        )?;
        Ok(changed > 0)
    }

    /// Sends what waits for room `old` to room `new` instead (the room was
    /// upgraded); returns how many items.
    pub fn move_room_items(&self, old: &str, new: &str) -> Result<usize, StoreError> {
        Ok(self.lock().execute(
            "UPDATE outbox SET room_id = ?2 WHERE room_id = ?1",
            params![old, new],
        )?)
    }

    /// Makes every item of `group_jid` due at `now_ms` (what kept it waiting is
    /// over: the bot is back in its room); returns how many.
    pub fn due_now_for_group(&self, group_jid: &str, now_ms: i64) -> Result<usize, StoreError> {
        Ok(self.lock().execute(
            "UPDATE outbox SET next_attempt_at = ?2 WHERE group_jid = ?1 AND next_attempt_at > ?2",
            params![group_jid, now_ms],
        )?)
    }

    /// When (unix ms) the next item of `direction` becomes due, counting only items that
    /// `next_due` may return (group heads); `None` when the queue is empty.
    pub fn earliest_due(&self, direction: Direction) -> Result<Option<i64>, StoreError> {
        let sql = format!("SELECT MIN(next_attempt_at) FROM outbox WHERE seq IN ({HEADS})");
        Ok(self.lock().query_row(&sql, [direction], |row| row.get(0))?)
    }

    /// The items of `direction` queued before `before_unix_secs`, oldest first, at
    /// most `limit` of them.
    pub fn queued_before(
        &self,
        direction: Direction,
        before_unix_secs: i64,
        limit: usize,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let sql = format!(
            "SELECT {ITEM_COLUMNS} FROM outbox
             WHERE direction = ?1 AND enqueued_at < ?2 ORDER BY seq LIMIT ?3"
        );
        let conn = self.lock();
        let mut statement = conn.prepare(&sql)?;
        let items = statement
            .query_map(
                params![
                    direction,
                    before_unix_secs,
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
                item_from_row,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(items)
    }

    /// Number of queued items of `direction` and the oldest one's `enqueued_at` (unix s).
    pub fn queue_stats(&self, direction: Direction) -> Result<(u64, Option<i64>), StoreError> {
        let (count, oldest): (i64, Option<i64>) = self.lock().query_row(
            "SELECT COUNT(*), MIN(enqueued_at) FROM outbox WHERE direction = ?1",
            [direction],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        Ok((u64::try_from(count).unwrap_or(0), oldest))
    }

    /// The `limit` most recently discarded items, newest first.
    pub fn recent_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT seq, direction, source_id, target_id, group_jid, room_id, attempts,
                    enqueued_at, last_error, reason, discarded_at
             FROM dead_letters ORDER BY discarded_at DESC, seq DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |row| {
            Ok(DeadLetter {
                seq: row.get(0)?,
                direction: row.get(1)?,
                source_id: row.get(2)?,
                target_id: row.get(3)?,
                group_jid: row.get(4)?,
                room_id: row.get(5)?,
                attempts: row.get(6)?,
                enqueued_at: row.get(7)?,
                last_error: row.get(8)?,
                reason: row.get(9)?,
                discarded_at: row.get(10)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes dead letters discarded before `older_than_unix` (seconds); returns how many.
    pub fn prune_dead_letters(&self, older_than_unix: i64) -> Result<usize, StoreError> {
        Ok(self.lock().execute(
            "DELETE FROM dead_letters WHERE discarded_at < ?1",
            [older_than_unix],
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G1: &str = "g1@g.us";
    const G2: &str = "g2@g.us";
    const R1: &str = "!r1:x";
    const R2: &str = "!r2:x";

    fn to_matrix<'a>(source: &'a str, group: &'a str, room: &'a str) -> NewOutboxItem<'a> {
        NewOutboxItem {
            direction: Direction::ToMatrix,
            source_id: source,
            target_id: "txn",
            group_jid: group,
            room_id: room,
            payload: "{\"text\":\"hi\"}",
        }
    }

    fn to_wa<'a>(source: &'a str, target: &'a str) -> NewOutboxItem<'a> {
        NewOutboxItem {
            direction: Direction::ToWhatsApp,
            source_id: source,
            target_id: target,
            group_jid: G1,
            room_id: R1,
            payload: "{}",
        }
    }

    fn link_for(item: &OutboxItem, other_id: &str) -> MessageLink {
        let (wa_id, event_id) = match item.direction {
            Direction::ToMatrix => (item.source_id.clone(), other_id.to_string()),
            Direction::ToWhatsApp => (item.target_id.clone(), item.source_id.clone()),
        };
        MessageLink {
            group_jid: item.group_jid.clone(),
            wa_id,
            room_id: item.room_id.clone(),
            event_id,
            origin: item.direction,
            created_at: 1,
            sender: String::new(),
        }
    }

    #[test]
    fn enqueue_dedups_while_queued_and_after_complete() {
        let store = Store::open_in_memory().unwrap();
        assert!(store.enqueue_at(&to_matrix("W1", G1, R1), 1000).unwrap());
        assert!(!store.enqueue_at(&to_matrix("W1", G1, R1), 2000).unwrap());
        // Same id in the other direction is a different source.
        assert!(store.enqueue_at(&to_wa("W1", "T1"), 2000).unwrap());
        assert_eq!(
            store.queue_stats(Direction::ToMatrix).unwrap(),
            (1, Some(1))
        );

        let item = store.next_due(Direction::ToMatrix, 1000).unwrap().unwrap();
        assert_eq!(item.source_id, "W1");
        assert_eq!(item.payload, "{\"text\":\"hi\"}");
        assert_eq!(
            (item.attempts, item.enqueued_at, item.next_attempt_at),
            (0, 1, 1000)
        );
        store.complete(item.seq, &link_for(&item, "$e1")).unwrap();
        // Relayed: a redelivery is not queued again.
        assert!(!store.enqueue_at(&to_matrix("W1", G1, R1), 3000).unwrap());
        assert_eq!(store.queue_stats(Direction::ToMatrix).unwrap(), (0, None));

        // ToWhatsApp dedups on (room, event id).
        let item = store
            .next_due(Direction::ToWhatsApp, 5000)
            .unwrap()
            .unwrap();
        store.complete(item.seq, &link_for(&item, "")).unwrap();
        assert!(!store.enqueue_at(&to_wa("W1", "T1"), 6000).unwrap());
        // ... scoped to its room.
        let elsewhere = NewOutboxItem {
            room_id: R2,
            ..to_wa("W1", "T1")
        };
        assert!(store.enqueue_at(&elsewhere, 6000).unwrap());
    }

    #[test]
    fn items_queued_before_a_time_come_oldest_first_and_bounded() {
        let store = Store::open_in_memory().unwrap();
        store.enqueue_at(&to_wa("E1", "T1"), 10_000).unwrap();
        store.enqueue_at(&to_wa("E2", "T2"), 20_000).unwrap();
        store.enqueue_at(&to_matrix("W1", G1, R1), 5_000).unwrap();
        let sources = |before, limit| -> Vec<String> {
            store
                .queued_before(Direction::ToWhatsApp, before, limit)
                .unwrap()
                .into_iter()
                .map(|item| item.source_id)
                .collect()
        };
        assert_eq!(sources(15, 10), ["E1"]);
        assert_eq!(sources(25, 10), ["E1", "E2"]);
        assert_eq!(sources(25, 1), ["E1"]);
        assert!(sources(10, 10).is_empty());
    }

    #[test]
    fn per_group_fifo_head_blocks_only_its_group() {
        let store = Store::open_in_memory().unwrap();
        for (src, group, room) in [
            ("a1", G1, R1),
            ("b1", G2, R2),
            ("a2", G1, R1),
            ("b2", G2, R2),
        ] {
            assert!(store
                .enqueue_at(&to_matrix(src, group, room), 1000)
                .unwrap());
        }
        let a1 = store.next_due(Direction::ToMatrix, 1000).unwrap().unwrap();
        assert_eq!(a1.source_id, "a1");
        // a1 fails and is pushed back: a2 (due) must wait, group 2 goes on.
        assert_eq!(store.retry_later(a1.seq, "timeout", 5000).unwrap(), 1);
        let b1 = store.next_due(Direction::ToMatrix, 1000).unwrap().unwrap();
        assert_eq!(b1.source_id, "b1");
        store.complete(b1.seq, &link_for(&b1, "$b1")).unwrap();
        let b2 = store.next_due(Direction::ToMatrix, 1000).unwrap().unwrap();
        assert_eq!(b2.source_id, "b2");
        store.complete(b2.seq, &link_for(&b2, "$b2")).unwrap();
        assert_eq!(store.next_due(Direction::ToMatrix, 4999).unwrap(), None);
        // Sleep target is the blocked head's time, not a2's (already past) time.
        assert_eq!(store.earliest_due(Direction::ToMatrix).unwrap(), Some(5000));
        // Other direction is independent.
        assert_eq!(
            store.next_due(Direction::ToWhatsApp, i64::MAX).unwrap(),
            None
        );
        assert_eq!(store.earliest_due(Direction::ToWhatsApp).unwrap(), None);

        let a1 = store.next_due(Direction::ToMatrix, 5000).unwrap().unwrap();
        assert_eq!((a1.source_id.as_str(), a1.attempts), ("a1", 1));
        assert_eq!(a1.last_error.as_deref(), Some("timeout"));
        store.complete(a1.seq, &link_for(&a1, "$a1")).unwrap();
        let a2 = store.next_due(Direction::ToMatrix, 5000).unwrap().unwrap();
        assert_eq!(a2.source_id, "a2");
    }

    #[test]
    fn complete_removes_row_and_links_atomically() {
        let store = Store::open_in_memory().unwrap();
        store.enqueue_at(&to_wa("$m1", "WA-OUT-1"), 0).unwrap();
        let item = store.next_due(Direction::ToWhatsApp, 0).unwrap().unwrap();
        store.complete(item.seq, &link_for(&item, "")).unwrap();
        assert_eq!(store.queue_stats(Direction::ToWhatsApp).unwrap(), (0, None));
        assert_eq!(
            store.wa_for_event(R1, "$m1").unwrap(),
            Some((G1.to_string(), "WA-OUT-1".to_string()))
        );
        // Completing again is harmless (link already there, no row).
        store.complete(item.seq, &link_for(&item, "")).unwrap();
    }

    #[test]
    fn complete_rolls_back_when_the_link_cannot_be_written() {
        let store = Store::open_in_memory().unwrap();
        store.enqueue_at(&to_matrix("W1", G1, R1), 0).unwrap();
        let item = store.next_due(Direction::ToMatrix, 0).unwrap().unwrap();
        // Make the link insert fail after the delete succeeded.
        store
            .lock()
            .execute_batch(
                "CREATE TRIGGER no_links BEFORE INSERT ON message_links
                 BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
            )
            .unwrap();
        assert!(store.complete(item.seq, &link_for(&item, "$e1")).is_err());
        // Neither half happened.
        assert_eq!(store.queue_stats(Direction::ToMatrix).unwrap().0, 1);
        assert_eq!(store.event_for_wa(G1, "W1").unwrap(), None);
    }

    #[test]
    fn retry_later_counts_attempts() {
        let store = Store::open_in_memory().unwrap();
        store.enqueue_at(&to_matrix("W1", G1, R1), 0).unwrap();
        let seq = store.next_due(Direction::ToMatrix, 0).unwrap().unwrap().seq;
        assert_eq!(store.retry_later(seq, "e1", 10).unwrap(), 1);
        assert_eq!(store.retry_later(seq, "e2", 20).unwrap(), 2);
        assert_eq!(store.retry_later(seq, &"é".repeat(5000), 30).unwrap(), 3);
        let item = store.next_due(Direction::ToMatrix, 30).unwrap().unwrap();
        assert_eq!(item.attempts, 3);
        assert!(item.last_error.unwrap().len() <= MAX_REASON_BYTES);
        assert!(matches!(
            store.retry_later(seq + 100, "x", 0),
            Err(StoreError::NotQueued(_))
        ));
    }

    #[test]
    fn discard_keeps_ids_not_payload() {
        let store = Store::open_in_memory().unwrap();
        store.enqueue_at(&to_matrix("W1", G1, R1), 0).unwrap();
        store.enqueue_at(&to_matrix("W2", G1, R1), 0).unwrap();
        let head = store.next_due(Direction::ToMatrix, 0).unwrap().unwrap();
        store.retry_later(head.seq, "403", 0).unwrap();
        assert!(store.discard(head.seq, "forbidden").unwrap());
        assert!(!store.discard(head.seq, "again").unwrap());
        // The group moves on.
        assert_eq!(
            store
                .next_due(Direction::ToMatrix, 0)
                .unwrap()
                .unwrap()
                .source_id,
            "W2"
        );
        let dead = store.recent_dead_letters(10).unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].seq, head.seq);
        assert_eq!(dead[0].source_id, "W1");
        assert_eq!(dead[0].attempts, 1);
        assert_eq!(dead[0].last_error.as_deref(), Some("403"));
        assert_eq!(dead[0].reason, "forbidden");
        let payload: Option<String> = store
            .lock()
            .query_row(
                "SELECT payload FROM dead_letters WHERE seq = ?1",
                [head.seq],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(payload, None, "a refused item keeps no content");
        // No link was written, so the source could be queued again.
        assert_eq!(store.event_for_wa(G1, "W1").unwrap(), None);
        assert_eq!(store.prune_dead_letters(i64::MAX).unwrap(), 1);
        assert!(store.recent_dead_letters(10).unwrap().is_empty());
    }

    #[test]
    fn bridge_wa_message_while_queued_and_after_sending() {
        let store = Store::open_in_memory().unwrap();
        store.enqueue_at(&to_wa("$m1", "WA-OUT-1"), 0).unwrap();
        // Queued (WhatsApp may echo before we hear back from the send).
        assert!(store.is_bridge_wa_message(G1, "WA-OUT-1").unwrap());
        assert!(!store.is_bridge_wa_message(G2, "WA-OUT-1").unwrap());
        assert!(!store.is_bridge_wa_message(G1, "$m1").unwrap());
        let item = store.next_due(Direction::ToWhatsApp, 0).unwrap().unwrap();
        store.complete(item.seq, &link_for(&item, "")).unwrap();
        // Sent.
        assert!(store.is_bridge_wa_message(G1, "WA-OUT-1").unwrap());
        // A ToMatrix row's target (a txn id) is not a WhatsApp message of ours.
        store.enqueue_at(&to_matrix("W5", G1, R1), 0).unwrap();
        assert!(!store.is_bridge_wa_message(G1, "txn").unwrap());

        // Matrix side: known once the send returned and complete() linked it.
        let item = store.next_due(Direction::ToMatrix, 0).unwrap().unwrap();
        assert!(!store.is_bridge_event(R1, "$bot1").unwrap());
        store.complete(item.seq, &link_for(&item, "$bot1")).unwrap();
        assert!(store.is_bridge_event(R1, "$bot1").unwrap());
        assert!(!store.is_bridge_event(R1, "$m1").unwrap());
    }

    #[test]
    fn queue_persists_across_reopen_and_seq_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passerelle.db");
        let first;
        {
            let store = Store::open(&path).unwrap();
            store.enqueue_at(&to_matrix("W1", G1, R1), 7000).unwrap();
            first = store.next_due(Direction::ToMatrix, 7000).unwrap().unwrap();
            store.retry_later(first.seq, "offline", 9000).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.queue_stats(Direction::ToMatrix).unwrap(),
            (1, Some(7))
        );
        let item = store.next_due(Direction::ToMatrix, 9000).unwrap().unwrap();
        assert_eq!((item.seq, item.attempts), (first.seq, 1));
        assert_eq!(item.payload, first.payload);
        store.discard(item.seq, "test").unwrap();
        store.enqueue_at(&to_matrix("W2", G1, R1), 9000).unwrap();
        let next = store.next_due(Direction::ToMatrix, 9000).unwrap().unwrap();
        assert!(next.seq > first.seq);
    }

    #[test]
    fn debug_hides_payload() {
        let new = NewOutboxItem {
            payload: "secret words",
            ..to_matrix("W1", G1, R1)
        };
        assert!(!format!("{new:?}").contains("secret"));
        let store = Store::open_in_memory().unwrap();
        store.enqueue_at(&new, 0).unwrap();
        let item = store.next_due(Direction::ToMatrix, 0).unwrap().unwrap();
        assert_eq!(item.payload, "secret words");
        assert!(!format!("{item:?}").contains("secret"));
    }
}
