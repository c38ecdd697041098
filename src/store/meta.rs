//! A small key/value table for service state (e.g. `"whatsapp.last_error"`).

use rusqlite::OptionalExtension;

use super::{Store, StoreError};

impl Store {
    /// The value stored under `key`.
    pub fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .lock()
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()?)
    }

    /// Stores `value` under `key`, replacing any previous value.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [key, value],
        )?;
        Ok(())
    }

    /// Removes `key`; returns whether it was there.
    pub fn delete_meta(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .execute("DELETE FROM meta WHERE key = ?1", [key])?
            > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_replace_delete() {
        let store = Store::open_in_memory().unwrap();
        assert_eq!(store.get_meta("whatsapp.last_error").unwrap(), None);
        store.set_meta("whatsapp.last_error", "logged out").unwrap();
        store
            .set_meta("whatsapp.last_error", "stream error")
            .unwrap();
        assert_eq!(
            store.get_meta("whatsapp.last_error").unwrap().as_deref(),
            Some("stream error")
        );
        assert!(store.delete_meta("whatsapp.last_error").unwrap());
        assert!(!store.delete_meta("whatsapp.last_error").unwrap());
        assert_eq!(store.get_meta("whatsapp.last_error").unwrap(), None);
    }
}
