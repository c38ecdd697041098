//! The WhatsApp names last seen per sender: WhatsApp sends a sender's push name with
//! some messages only, so the last one seen names the sender in the others.

use rusqlite::OptionalExtension;

use super::{Store, StoreError};

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
}
