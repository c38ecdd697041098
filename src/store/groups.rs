//! The WhatsApp group <-> Matrix room map. Rows are kept when a group file is removed,
//! so that approving the group again reuses its room.

use rusqlite::{OptionalExtension, TransactionBehavior};

use super::{Store, StoreError};

impl Store {
    /// The room mirroring `group_jid`, if one was ever set.
    pub fn room_for_group(&self, group_jid: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT room_id FROM group_rooms WHERE group_jid = ?1",
                [group_jid],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// The group mirrored into `room_id`, if any.
    pub fn group_for_room(&self, room_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT group_jid FROM group_rooms WHERE room_id = ?1",
                [room_id],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// Maps `group_jid` to `room_id`, replacing the group's previous room. A room maps
    /// to at most one group: if `room_id` belongs to another group this fails with
    /// `StoreError::RoomInUse` and changes nothing (see `forget_group`).
    pub fn set_group_room(&self, group_jid: &str, room_id: &str) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let other: Option<String> = tx
            .query_row(
                "SELECT group_jid FROM group_rooms WHERE room_id = ?1 AND group_jid <> ?2",
                [room_id, group_jid],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(other_group) = other {
            return Err(StoreError::RoomInUse {
                room_id: room_id.to_string(),
                other_group,
            });
        }
        tx.execute(
            "INSERT INTO group_rooms (group_jid, room_id) VALUES (?1, ?2)
             ON CONFLICT (group_jid) DO UPDATE SET room_id = excluded.room_id",
            [group_jid, room_id],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Removes the mapping of `group_jid` (e.g. to give its room to another group).
    /// Returns whether there was one.
    pub fn forget_group(&self, group_jid: &str) -> Result<bool, StoreError> {
        let n = self
            .lock()
            .execute("DELETE FROM group_rooms WHERE group_jid = ?1", [group_jid])?;
        Ok(n > 0)
    }

    /// All mappings as `(group_jid, room_id)`, sorted by group.
    pub fn group_rooms(&self) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT group_jid, room_id FROM group_rooms ORDER BY group_jid")?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_both_ways_and_upsert() {
        let store = Store::open_in_memory().unwrap();
        assert_eq!(store.room_for_group("g1@g.us").unwrap(), None);
        store.set_group_room("g1@g.us", "!a:x").unwrap();
        store.set_group_room("g1@g.us", "!a:x").unwrap(); // idempotent
        assert_eq!(
            store.room_for_group("g1@g.us").unwrap().as_deref(),
            Some("!a:x")
        );
        assert_eq!(
            store.group_for_room("!a:x").unwrap().as_deref(),
            Some("g1@g.us")
        );
        store.set_group_room("g1@g.us", "!b:x").unwrap();
        assert_eq!(
            store.room_for_group("g1@g.us").unwrap().as_deref(),
            Some("!b:x")
        );
        assert_eq!(store.group_for_room("!a:x").unwrap(), None);
    }

    #[test]
    fn room_belongs_to_one_group() {
        let store = Store::open_in_memory().unwrap();
        store.set_group_room("g1@g.us", "!a:x").unwrap();
        let err = store.set_group_room("g2@g.us", "!a:x").unwrap_err();
        assert!(
            matches!(err, StoreError::RoomInUse { ref other_group, .. } if other_group == "g1@g.us")
        );
        assert_eq!(store.room_for_group("g2@g.us").unwrap(), None);
        assert!(store.forget_group("g1@g.us").unwrap());
        assert!(!store.forget_group("g1@g.us").unwrap());
        store.set_group_room("g2@g.us", "!a:x").unwrap();
        assert_eq!(
            store.group_rooms().unwrap(),
            vec![("g2@g.us".to_string(), "!a:x".to_string())]
        );
    }
}
