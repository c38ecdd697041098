//! Who spoke in each group under which name (its look-alike key only, never the
//! name itself), so that two people showing the same name are told apart.

use rusqlite::params;

use super::{Store, StoreError};

impl Store {
    /// The others who spoke in `group_jid` under `name_key` (phone numbers or
    /// Matrix ids), `speaker` left out.
    pub fn namesakes(
        &self,
        group_jid: &str,
        speaker: &str,
        name_key: &str,
    ) -> Result<Vec<String>, StoreError> {
        let conn = self.lock();
        let mut statement = conn.prepare_cached(
            "SELECT speaker FROM speakers
             WHERE group_jid = ?1 AND name_key = ?2 AND speaker <> ?3
             ORDER BY speaker",
        )?;
        let others = statement
            .query_map(params![group_jid, name_key, speaker], |row| row.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(others)
    }

    /// Records that `speaker` spoke in `group_jid` under `name_key` now (their
    /// earlier name is forgotten).
    pub fn note_speaker(
        &self,
        group_jid: &str,
        speaker: &str,
        name_key: &str,
        now_unix: i64,
    ) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO speakers (group_jid, speaker, name_key, seen_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (group_jid, speaker) DO UPDATE
                SET name_key = excluded.name_key, seen_at = excluded.seen_at",
            params![group_jid, speaker, name_key, now_unix],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::store::Store;

    #[test]
    fn namesakes_are_the_others_of_the_group_under_the_same_key() {
        let store = Store::open_in_memory().unwrap();
        store.note_speaker("g1", "33611111111", "alice", 1).unwrap();
        store
            .note_speaker("g1", "@alice:example.org", "alice", 2)
            .unwrap();
        store.note_speaker("g1", "33622222222", "bob", 3).unwrap();
        store.note_speaker("g2", "33633333333", "alice", 4).unwrap();
        assert_eq!(
            store.namesakes("g1", "33611111111", "alice").unwrap(),
            vec!["@alice:example.org".to_string()]
        );
        assert!(store
            .namesakes("g1", "33622222222", "bob")
            .unwrap()
            .is_empty());
        // A new name replaces the old one.
        store
            .note_speaker("g1", "@alice:example.org", "alicia", 5)
            .unwrap();
        assert!(store
            .namesakes("g1", "33611111111", "alice")
            .unwrap()
            .is_empty());
    }
}
