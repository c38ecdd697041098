//! Reaction digests (`[relay] reactions_to_whatsapp = "digest"`): for each WhatsApp
//! message Matrix people reacted to, the number's one reply listing the reactions,
//! and who reacted with what (Matrix user ids and emoji; names are looked up when
//! the digest is written).

use rusqlite::{params, OptionalExtension};

use super::{Store, StoreError};

/// One Matrix reaction counted in a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestEntry {
    /// The Matrix reaction event (its redaction takes the entry out).
    pub reaction_event: String,
    pub user: String,
    pub emoji: String,
}

/// The digest of one WhatsApp message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Digest {
    /// The number's reply that shows the digest; empty before it was first sent.
    pub reply_id: String,
    /// Unix seconds when that reply was sent (edits are allowed for a while only).
    pub reply_sent_at: i64,
    /// In the order the reactions came.
    pub entries: Vec<DigestEntry>,
}

impl Store {
    /// The digest of WhatsApp message `target` in `group_jid` (empty when none).
    pub fn digest(&self, group_jid: &str, target: &str) -> Result<Digest, StoreError> {
        let conn = self.lock();
        let head = conn
            .query_row(
                "SELECT reply_id, reply_sent_at FROM reaction_digests
                 WHERE group_jid = ?1 AND target = ?2",
                params![group_jid, target],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        let Some((reply_id, reply_sent_at)) = head else {
            return Ok(Digest::default());
        };
        let mut statement = conn.prepare(
            "SELECT reaction_event, user, emoji FROM reaction_digest_entries
             WHERE group_jid = ?1 AND target = ?2 ORDER BY position",
        )?;
        let entries = statement
            .query_map(params![group_jid, target], |row| {
                Ok(DigestEntry {
                    reaction_event: row.get(0)?,
                    user: row.get(1)?,
                    emoji: row.get(2)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Digest {
            reply_id,
            reply_sent_at,
            entries,
        })
    }

    /// Replaces the digest of `target` with `digest`, in one transaction.
    pub fn save_digest(
        &self,
        group_jid: &str,
        target: &str,
        digest: &Digest,
    ) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO reaction_digests (group_jid, target, reply_id, reply_sent_at)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (group_jid, target) DO UPDATE
                SET reply_id = excluded.reply_id, reply_sent_at = excluded.reply_sent_at",
            params![group_jid, target, digest.reply_id, digest.reply_sent_at],
        )?;
        tx.execute(
            "DELETE FROM reaction_digest_entries WHERE group_jid = ?1 AND target = ?2",
            params![group_jid, target],
        )?;
        for (position, entry) in digest.entries.iter().enumerate() {
            tx.execute(
                "INSERT INTO reaction_digest_entries
                     (group_jid, target, position, reaction_event, user, emoji)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    group_jid,
                    target,
                    position as i64,
                    entry.reaction_event,
                    entry.user,
                    entry.emoji
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_is_saved_replaced_and_read_back_in_order() {
        let store = Store::open_in_memory().unwrap();
        assert_eq!(store.digest("g", "m1").unwrap(), Digest::default());
        let entry = |event: &str, user: &str, emoji: &str| DigestEntry {
            reaction_event: event.into(),
            user: user.into(),
            emoji: emoji.into(),
        };
        let mut digest = Digest {
            reply_id: "3EB0AA".into(),
            reply_sent_at: 10,
            entries: vec![entry("$b", "@bob:x", "👍"), entry("$a", "@alice:x", "❤️")],
        };
        store.save_digest("g", "m1", &digest).unwrap();
        assert_eq!(store.digest("g", "m1").unwrap(), digest);
        digest.entries.remove(0);
        store.save_digest("g", "m1", &digest).unwrap();
        assert_eq!(store.digest("g", "m1").unwrap(), digest);
        assert_eq!(store.digest("g", "m2").unwrap(), Digest::default());
    }
}
