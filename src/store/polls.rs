//! Votes in WhatsApp polls: each voter's latest choice per poll, from which the
//! poll's line in Matrix shows its tally. A voter's later vote replaces an earlier
//! one, whatever order WhatsApp delivers them in.

use rusqlite::{params, types::Type};

use super::{Store, StoreError};

/// One voter's current choice in a poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollVote {
    /// The voter's phone number.
    pub voter: String,
    /// The options picked; empty when the vote was taken back.
    pub choices: Vec<String>,
    /// When they voted (ms since the epoch, the voter's clock).
    pub voted_at_ms: i64,
}

impl Store {
    /// Records `vote` in poll `poll_id` of `group_jid`, unless the voter's vote on
    /// record is newer (a vote delivered late does not undo a later one).
    pub fn record_poll_vote(
        &self,
        group_jid: &str,
        poll_id: &str,
        vote: &PollVote,
    ) -> Result<(), StoreError> {
        let choices = serde_json::to_string(&vote.choices)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        self.lock().execute(
            "INSERT INTO poll_votes (group_jid, poll_id, voter, choices, voted_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (group_jid, poll_id, voter) DO UPDATE
                SET choices = excluded.choices, voted_at = excluded.voted_at
                WHERE excluded.voted_at >= poll_votes.voted_at",
            params![group_jid, poll_id, vote.voter, choices, vote.voted_at_ms],
        )?;
        Ok(())
    }

    /// Everyone's current vote in poll `poll_id`, earliest voter first (votes taken
    /// back included, with no choices).
    pub fn poll_votes(&self, group_jid: &str, poll_id: &str) -> Result<Vec<PollVote>, StoreError> {
        let conn = self.lock();
        let mut statement = conn.prepare(
            "SELECT voter, choices, voted_at FROM poll_votes
             WHERE group_jid = ?1 AND poll_id = ?2 ORDER BY voted_at, voter",
        )?;
        let votes = statement
            .query_map(params![group_jid, poll_id], |row| {
                let choices: String = row.get(1)?;
                Ok(PollVote {
                    voter: row.get(0)?,
                    choices: serde_json::from_str(&choices).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(1, Type::Text, Box::new(e))
                    })?,
                    voted_at_ms: row.get(2)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(votes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vote(voter: &str, choices: &[&str], at: i64) -> PollVote {
        PollVote {
            voter: voter.into(),
            choices: choices.iter().map(|c| c.to_string()).collect(),
            voted_at_ms: at,
        }
    }

    #[test]
    fn the_latest_vote_of_each_voter_counts_whatever_the_delivery_order() {
        let store = Store::open_in_memory().unwrap();
        assert!(store.poll_votes("g", "p").unwrap().is_empty());
        store
            .record_poll_vote("g", "p", &vote("336", &["Samedi"], 10))
            .unwrap();
        store
            .record_poll_vote("g", "p", &vote("337", &["Dimanche"], 5))
            .unwrap();
        // Bob changes his mind; then his first vote is delivered again, late.
        store
            .record_poll_vote("g", "p", &vote("336", &["Dimanche"], 20))
            .unwrap();
        store
            .record_poll_vote("g", "p", &vote("336", &["Samedi"], 10))
            .unwrap();
        assert_eq!(
            store.poll_votes("g", "p").unwrap(),
            vec![
                vote("337", &["Dimanche"], 5),
                vote("336", &["Dimanche"], 20)
            ]
        );
        // Taken back: kept as no choice, so the old vote cannot come back.
        store
            .record_poll_vote("g", "p", &vote("337", &[], 30))
            .unwrap();
        store
            .record_poll_vote("g", "p", &vote("337", &["Dimanche"], 5))
            .unwrap();
        assert_eq!(
            store.poll_votes("g", "p").unwrap(),
            vec![vote("336", &["Dimanche"], 20), vote("337", &[], 30)]
        );
        assert!(store.poll_votes("g", "other").unwrap().is_empty());
        assert!(store.poll_votes("other", "p").unwrap().is_empty());
    }
}
