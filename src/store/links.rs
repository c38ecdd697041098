//! The message id map: which Matrix event is which WhatsApp message, one row per relayed
//! message, with who wrote it. Ids only, never content. Also answers "is this our own
//! echo?".

use rusqlite::{params, Connection, OptionalExtension};

use super::{Direction, Store, StoreError};

/// One relayed message, seen from both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageLink {
    pub group_jid: String,
    pub wa_id: String,
    pub room_id: String,
    pub event_id: String,
    /// Where it was first written: `ToMatrix` means it came from WhatsApp and the bot
    /// wrote `event_id`; `ToWhatsApp` means it came from Matrix and the bridge's number
    /// wrote `wa_id`.
    pub origin: Direction,
    /// Unix seconds; `forget_before` goes by this (`[relay] remember_days`).
    pub created_at: i64,
    /// Who wrote it: the WhatsApp sender's number (origin `ToMatrix`) or the Matrix
    /// user id (origin `ToWhatsApp`); empty when unknown (links of older versions).
    pub sender: String,
}

/// Inserts `link`; a link that is already there (either side) is kept as it is, so
/// recording the same pair twice is fine. Used by `record_link` and `complete`.
pub(super) fn insert_link(conn: &Connection, link: &MessageLink) -> rusqlite::Result<()> {
    let inserted = conn.execute(
        "INSERT INTO message_links
             (group_jid, wa_id, room_id, event_id, origin, created_at, sender)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
        params![
            link.group_jid,
            link.wa_id,
            link.room_id,
            link.event_id,
            link.origin,
            link.created_at,
            link.sender
        ],
    )?;
    if inserted == 0 {
        let same: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM message_links WHERE group_jid = ?1 AND wa_id = ?2
                            AND room_id = ?3 AND event_id = ?4)",
            params![link.group_jid, link.wa_id, link.room_id, link.event_id],
            |row| row.get(0),
        )?;
        if !same {
            tracing::warn!(
                group = %link.group_jid,
                wa_id = %link.wa_id,
                room = %link.room_id,
                event_id = %link.event_id,
                "one side of this message is already linked to another id; keeping the first link"
            );
        }
    }
    Ok(())
}

const SELECT_LINK: &str = "SELECT group_jid, wa_id, room_id, event_id, origin, created_at, sender
     FROM message_links";

fn link_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<MessageLink> {
    Ok(MessageLink {
        group_jid: row.get(0)?,
        wa_id: row.get(1)?,
        room_id: row.get(2)?,
        event_id: row.get(3)?,
        origin: row.get(4)?,
        created_at: row.get(5)?,
        sender: row.get(6)?,
    })
}

impl Store {
    /// Records a relayed message. Idempotent: the same pair twice is fine. If either id
    /// is already linked to a different id, the first link wins (logged as a warning).
    pub fn record_link(&self, link: &MessageLink) -> Result<(), StoreError> {
        Ok(insert_link(&self.lock(), link)?)
    }

    /// The Matrix event of WhatsApp message `wa_id` in `group_jid`.
    pub fn event_for_wa(&self, group_jid: &str, wa_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT event_id FROM message_links WHERE group_jid = ?1 AND wa_id = ?2",
                [group_jid, wa_id],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// The `(group_jid, wa_id)` of Matrix event `event_id` in `room_id`.
    pub fn wa_for_event(
        &self,
        room_id: &str,
        event_id: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT group_jid, wa_id FROM message_links WHERE room_id = ?1 AND event_id = ?2",
                [room_id, event_id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?)
    }

    /// The link of WhatsApp message `wa_id` in `group_jid`.
    pub fn link_for_wa(
        &self,
        group_jid: &str,
        wa_id: &str,
    ) -> Result<Option<MessageLink>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                &format!("{SELECT_LINK} WHERE group_jid = ?1 AND wa_id = ?2"),
                [group_jid, wa_id],
                link_from_row,
            )
            .optional()?)
    }

    /// The link of Matrix event `event_id` in `room_id`.
    pub fn link_for_event(
        &self,
        room_id: &str,
        event_id: &str,
    ) -> Result<Option<MessageLink>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                &format!("{SELECT_LINK} WHERE room_id = ?1 AND event_id = ?2"),
                [room_id, event_id],
                link_from_row,
            )
            .optional()?)
    }

    /// Forgets the link of `wa_id` in `group_jid` (its Matrix event was redacted).
    pub fn forget_link(&self, group_jid: &str, wa_id: &str) -> Result<bool, StoreError> {
        Ok(self.lock().execute(
            "DELETE FROM message_links WHERE group_jid = ?1 AND wa_id = ?2",
            [group_jid, wa_id],
        )? > 0)
    }

    /// True when `wa_id` is a WhatsApp message (or edit, deletion, reaction) the
    /// bridge itself sends or sent in `group_jid`: every id is recorded when its
    /// outbox item is queued. Drop it if WhatsApp shows it again from the number.
    pub fn is_bridge_wa_message(&self, group_jid: &str, wa_id: &str) -> Result<bool, StoreError> {
        Ok(self.lock().query_row(
            "SELECT EXISTS (SELECT 1 FROM sent_whatsapp_ids WHERE group_jid = ?1 AND wa_id = ?2)",
            params![group_jid, wa_id],
            |row| row.get(0),
        )?)
    }

    /// True when `event_id` in `room_id` is one the bot sent (a link with origin
    /// `ToMatrix`). The event id is only known once the send returned, so callers should
    /// also drop events whose sender is the bot itself.
    pub fn is_bridge_event(&self, room_id: &str, event_id: &str) -> Result<bool, StoreError> {
        Ok(self.lock().query_row(
            "SELECT EXISTS (SELECT 1 FROM message_links WHERE room_id = ?1 AND event_id = ?2
                                                         AND origin = ?3)",
            params![room_id, event_id, Direction::ToMatrix],
            |row| row.get(0),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(wa: &str, ev: &str, origin: Direction, at: i64) -> MessageLink {
        MessageLink {
            group_jid: "g@g.us".into(),
            wa_id: wa.into(),
            room_id: "!r:x".into(),
            event_id: ev.into(),
            origin,
            created_at: at,
            sender: "33611111111".into(),
        }
    }

    #[test]
    fn whole_links_are_found_from_either_side() {
        let store = Store::open_in_memory().unwrap();
        let l = link("W1", "$e1", Direction::ToWhatsApp, 100);
        store.record_link(&l).unwrap();
        assert_eq!(store.link_for_wa("g@g.us", "W1").unwrap(), Some(l.clone()));
        assert_eq!(store.link_for_event("!r:x", "$e1").unwrap(), Some(l));
        assert_eq!(store.link_for_wa("other@g.us", "W1").unwrap(), None);
        assert_eq!(store.link_for_event("!r:x", "$nope").unwrap(), None);
        assert!(store.forget_link("g@g.us", "W1").unwrap());
        assert_eq!(store.link_for_wa("g@g.us", "W1").unwrap(), None);
        assert!(!store.forget_link("g@g.us", "W1").unwrap());
    }

    #[test]
    fn lookup_both_ways_and_idempotent() {
        let store = Store::open_in_memory().unwrap();
        let l = link("W1", "$e1", Direction::ToMatrix, 100);
        store.record_link(&l).unwrap();
        store.record_link(&l).unwrap();
        assert_eq!(
            store.event_for_wa("g@g.us", "W1").unwrap().as_deref(),
            Some("$e1")
        );
        assert_eq!(
            store.wa_for_event("!r:x", "$e1").unwrap(),
            Some(("g@g.us".to_string(), "W1".to_string()))
        );
        assert_eq!(store.event_for_wa("other@g.us", "W1").unwrap(), None);
        assert_eq!(store.wa_for_event("!other:x", "$e1").unwrap(), None);
    }

    #[test]
    fn conflicting_link_keeps_the_first() {
        let store = Store::open_in_memory().unwrap();
        store
            .record_link(&link("W1", "$e1", Direction::ToMatrix, 1))
            .unwrap();
        store
            .record_link(&link("W1", "$e2", Direction::ToMatrix, 2))
            .unwrap();
        store
            .record_link(&link("W2", "$e1", Direction::ToMatrix, 2))
            .unwrap();
        assert_eq!(
            store.event_for_wa("g@g.us", "W1").unwrap().as_deref(),
            Some("$e1")
        );
        assert_eq!(store.event_for_wa("g@g.us", "W2").unwrap(), None);
        assert_eq!(store.wa_for_event("!r:x", "$e2").unwrap(), None);
    }

    #[test]
    fn bridge_echoes_by_origin() {
        let store = Store::open_in_memory().unwrap();
        // Came from WhatsApp: the bot wrote the event; the WA message is not ours.
        store
            .record_link(&link("W1", "$e1", Direction::ToMatrix, 1))
            .unwrap();
        // Came from Matrix: the bridge number writes the WA message (its id is known
        // from the moment it is queued, and stays known once sent, whatever the
        // link says: a reaction's link is keyed by its target); the event is not ours.
        fn queued<'a>(source: &'a str, target: &'a str) -> crate::store::NewOutboxItem<'a> {
            crate::store::NewOutboxItem {
                direction: Direction::ToWhatsApp,
                source_id: source,
                target_id: target,
                group_jid: "g@g.us",
                room_id: "!r:x",
                payload: "{}",
            }
        }
        store.enqueue(&queued("$e2", "W2")).unwrap();
        store.enqueue(&queued("$e3", "W3")).unwrap();
        assert!(store.is_bridge_wa_message("g@g.us", "W2").unwrap());
        let item = store
            .next_due(Direction::ToWhatsApp, i64::MAX)
            .unwrap()
            .unwrap();
        store
            .complete(
                item.seq,
                &link("mx-reaction:W1:W2", "$e2", Direction::ToWhatsApp, 1),
            )
            .unwrap();
        let item = store
            .next_due(Direction::ToWhatsApp, i64::MAX)
            .unwrap()
            .unwrap();
        store.complete_unlinked(item.seq).unwrap();
        assert!(store.is_bridge_wa_message("g@g.us", "W3").unwrap());
        assert!(store.is_bridge_event("!r:x", "$e1").unwrap());
        assert!(!store.is_bridge_event("!r:x", "$e2").unwrap());
        assert!(!store.is_bridge_event("!other:x", "$e1").unwrap());
        assert!(!store.is_bridge_wa_message("g@g.us", "W1").unwrap());
        assert!(store.is_bridge_wa_message("g@g.us", "W2").unwrap());
        assert!(!store.is_bridge_wa_message("other@g.us", "W2").unwrap());
        assert!(!store.is_bridge_wa_message("g@g.us", "W9").unwrap());
    }

    #[test]
    fn links_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passerelle.db");
        {
            let store = Store::open(&path).unwrap();
            store
                .record_link(&link("W1", "$e1", Direction::ToMatrix, 1))
                .unwrap();
            store.set_group_room("g@g.us", "!r:x").unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.event_for_wa("g@g.us", "W1").unwrap().as_deref(),
            Some("$e1")
        );
        assert_eq!(
            store.room_for_group("g@g.us").unwrap().as_deref(),
            Some("!r:x")
        );
    }
}
