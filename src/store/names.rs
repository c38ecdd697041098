//! The WhatsApp names last seen per sender: WhatsApp sends a sender's push name with
//! some messages only, so the last one seen names the sender in the others.

use rusqlite::OptionalExtension;

use super::{Direction, Store, StoreError};

impl Store {
    /// Remembers `push_name` for `sender` (a phone number or LID user part). Returns
    /// whether it changed.
    pub fn remember_name(
        &self,
        sender: &str,
        push_name: &str,
        now_unix: i64,
    ) -> Result<bool, StoreError> {
        let changed = self.lock().execute(
            "INSERT INTO whatsapp_names (sender, push_name, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (sender) DO UPDATE
                SET push_name = excluded.push_name, updated_at = excluded.updated_at
                WHERE push_name <> excluded.push_name",
            rusqlite::params![sender, push_name, now_unix],
        )?;
        Ok(changed > 0)
    }

    /// The people the bridge has relayed in `group_jid` (as far as its message map
    /// still remembers) whose name it knows: `(sender, name)`.
    pub fn names_in_group(&self, group_jid: &str) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.lock();
        let mut statement = conn.prepare(
            "SELECT sender, push_name FROM whatsapp_names WHERE sender IN
                 (SELECT DISTINCT sender FROM message_links
                  WHERE group_jid = ?1 AND origin = ?2 AND sender <> '')
             ORDER BY sender",
        )?;
        let people = statement
            .query_map(rusqlite::params![group_jid, Direction::ToMatrix], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(people)
    }

    /// The name last seen for `sender`.
    pub fn known_name(&self, sender: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT push_name FROM whatsapp_names WHERE sender = ?1",
                [sender],
                |row| row.get(0),
            )
            .optional()?)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::Store;

    #[test]
    fn the_latest_name_is_remembered_and_repeats_write_nothing() {
        let store = Store::open_in_memory().unwrap();
        assert_eq!(store.known_name("33611111111").unwrap(), None);
        assert!(store.remember_name("33611111111", "Bob", 1).unwrap());
        assert!(!store.remember_name("33611111111", "Bob", 2).unwrap());
        assert!(store.remember_name("33611111111", "Bobby", 3).unwrap());
        assert_eq!(
            store.known_name("33611111111").unwrap().as_deref(),
            Some("Bobby")
        );
        assert_eq!(store.known_name("33622222222").unwrap(), None);
    }

    #[test]
    fn the_names_of_a_group_are_those_of_people_relayed_from_it() {
        use crate::store::{Direction, MessageLink};
        let store = Store::open_in_memory().unwrap();
        store.remember_name("33611111111", "Bob", 1).unwrap();
        store.remember_name("33622222222", "Carol", 1).unwrap();
        let link = |group: &str, wa_id: &str, sender: &str, origin| MessageLink {
            group_jid: group.into(),
            wa_id: wa_id.into(),
            room_id: "!room".into(),
            event_id: format!("${wa_id}"),
            origin,
            created_at: 1,
            sender: sender.into(),
        };
        store
            .record_link(&link("g1", "a", "33611111111", Direction::ToMatrix))
            .unwrap();
        store
            .record_link(&link("g2", "b", "33622222222", Direction::ToMatrix))
            .unwrap();
        store
            .record_link(&link(
                "g1",
                "c",
                "@alice:example.org",
                Direction::ToWhatsApp,
            ))
            .unwrap();
        let names = store.names_in_group("g1").unwrap();
        assert_eq!(names.len(), 1, "{names:?}");
        assert_eq!(
            (names[0].0.as_str(), names[0].1.as_str()),
            ("33611111111", "Bob")
        );
    }
}
