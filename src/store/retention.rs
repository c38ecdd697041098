//! Forgetting what is older than `[relay] remember_days`: which event mirrors which
//! message, the WhatsApp names last seen and who spoke under which name, poll votes, and the reaction digests of
//! messages no longer remembered. Counters (the yearly report) and dead letters
//! (the record of what was given up on) are kept.

use rusqlite::params;

use super::{Store, StoreError};

/// How many rows of each kind were forgotten.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Forgotten {
    pub links: usize,
    pub names: usize,
    pub poll_votes: usize,
    pub digests: usize,
}

impl Store {
    /// Forgets, in one transaction, the links created and the names last seen before
    /// `cutoff_secs` (Unix seconds), the votes of polls nobody voted in since, and
    /// the reaction digests of messages no longer linked (`annotation_prefix` is
    /// the key prefix of the digests behind the bot's own reactions, whose target is
    /// the rest of the key).
    pub fn forget_before(
        &self,
        cutoff_secs: i64,
        annotation_prefix: &str,
    ) -> Result<Forgotten, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let links = tx.execute(
            "DELETE FROM message_links WHERE created_at < ?1",
            [cutoff_secs],
        )?;
        let names = tx.execute(
            "DELETE FROM whatsapp_names WHERE updated_at < ?1",
            [cutoff_secs],
        )? + tx.execute("DELETE FROM speakers WHERE seen_at < ?1", [cutoff_secs])?;
        // Set-aside items keep what was said: forgotten like the rest.
        tx.execute(
            "DELETE FROM dead_letters WHERE payload IS NOT NULL AND discarded_at < ?1",
            [cutoff_secs],
        )?;
        // The ids of what was sent long ago: an echo comes within minutes, and a
        // message still queued keeps its id.
        tx.execute(
            "DELETE FROM sent_whatsapp_ids WHERE queued_at < ?1
                 AND NOT EXISTS (SELECT 1 FROM outbox WHERE direction = 'whatsapp'
                                 AND outbox.group_jid = sent_whatsapp_ids.group_jid
                                 AND outbox.target_id = sent_whatsapp_ids.wa_id)",
            [cutoff_secs],
        )?;
        let poll_votes = tx.execute(
            "DELETE FROM poll_votes WHERE (group_jid, poll_id) IN (
                 SELECT group_jid, poll_id FROM poll_votes
                 GROUP BY group_jid, poll_id HAVING MAX(voted_at) < ?1)",
            [cutoff_secs.saturating_mul(1000)],
        )?;
        let orphan = "NOT EXISTS (SELECT 1 FROM message_links AS link
                          WHERE link.group_jid = {table}.group_jid
                            AND (link.wa_id = {table}.target
                                 OR ?1 || link.wa_id = {table}.target))";
        tx.execute(
            &format!(
                "DELETE FROM reaction_digest_entries WHERE {}",
                orphan.replace("{table}", "reaction_digest_entries")
            ),
            params![annotation_prefix],
        )?;
        let digests = tx.execute(
            &format!(
                "DELETE FROM reaction_digests WHERE {}",
                orphan.replace("{table}", "reaction_digests")
            ),
            params![annotation_prefix],
        )?;
        tx.commit()?;
        Ok(Forgotten {
            links,
            names,
            poll_votes,
            digests,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Digest, DigestEntry, Direction, MessageLink, PollVote};

    fn link(wa_id: &str, created_at: i64) -> MessageLink {
        MessageLink {
            group_jid: "g".into(),
            wa_id: wa_id.into(),
            room_id: "!r".into(),
            event_id: format!("${wa_id}"),
            origin: Direction::ToMatrix,
            created_at,
            sender: "336".into(),
        }
    }

    #[test]
    fn what_is_older_than_the_cutoff_is_forgotten_and_the_rest_kept() {
        let store = Store::open_in_memory().unwrap();
        store.record_link(&link("OLD", 100)).unwrap();
        store.record_link(&link("NEW", 300)).unwrap();
        store.remember_name("33611111111", "Bob", 100).unwrap();
        store.remember_name("33622222222", "Carol", 300).unwrap();
        let vote = |voter: &str, at_secs: i64| PollVote {
            voter: voter.into(),
            choices: vec!["Samedi".into()],
            voted_at_ms: at_secs * 1000,
        };
        // A poll with a recent vote keeps its old ones; a quiet poll goes.
        store
            .record_poll_vote("g", "P1", &vote("336", 100))
            .unwrap();
        store
            .record_poll_vote("g", "P1", &vote("337", 300))
            .unwrap();
        store
            .record_poll_vote("g", "P2", &vote("336", 100))
            .unwrap();
        let digest = Digest {
            reply_id: "R".into(),
            reply_sent_at: 100,
            entries: vec![DigestEntry {
                reaction_event: "$r".into(),
                user: "@a:x".into(),
                emoji: "👍".into(),
            }],
        };
        for target in ["OLD", "NEW", "ann:OLD", "ann:NEW"] {
            store.save_digest("g", target, &digest).unwrap();
        }

        let forgotten = store.forget_before(200, "ann:").unwrap();
        assert_eq!(
            forgotten,
            Forgotten {
                links: 1,
                names: 1,
                poll_votes: 1,
                digests: 2
            }
        );
        assert!(store.link_for_wa("g", "OLD").unwrap().is_none());
        assert!(store.link_for_wa("g", "NEW").unwrap().is_some());
        assert_eq!(store.known_name("33611111111").unwrap(), None);
        assert_eq!(
            store.known_name("33622222222").unwrap().as_deref(),
            Some("Carol")
        );
        assert_eq!(store.poll_votes("g", "P1").unwrap().len(), 2);
        assert!(store.poll_votes("g", "P2").unwrap().is_empty());
        assert_eq!(store.digest("g", "OLD").unwrap(), Digest::default());
        assert_eq!(store.digest("g", "ann:OLD").unwrap(), Digest::default());
        assert_eq!(store.digest("g", "NEW").unwrap(), digest);
        assert_eq!(store.digest("g", "ann:NEW").unwrap(), digest);
        // Nothing left to forget.
        assert_eq!(
            store.forget_before(200, "ann:").unwrap(),
            Forgotten::default()
        );
    }
}
