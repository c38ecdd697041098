//! How often the bot may tell Matrix senders why their message did not cross: a
//! budget per sender in a room and one per room, so that a flood of events that
//! cannot cross never turns into a flood of the bot's notices (nor into the
//! homeserver's rate limit, which every room shares).

use std::collections::HashMap;

use super::pacing::Bucket;

/// Per sender in a room: 3 notices at once, then one a minute.
pub const PER_SENDER_BURST: u32 = 3;
const PER_SENDER_PER_MINUTE: u32 = 1;
/// Per room, whoever the senders: 10 at once, then 2 a minute.
pub const PER_ROOM_BURST: u32 = 10;
const PER_ROOM_PER_MINUTE: u32 = 2;
/// Budgets remembered at most: beyond it, those full again (idle) are forgotten,
/// as good as new; should all be in use, all are (memory stays bounded).
const MAX_REMEMBERED: usize = 10_000;

/// The notice budgets of every room and sender.
#[derive(Debug, Default)]
pub struct NoticeBudget {
    senders: HashMap<(String, String), Bucket>,
    rooms: HashMap<String, Bucket>,
}

impl NoticeBudget {
    /// Whether a notice to `sender` in `room` may be posted now; counted when so.
    pub fn allow(&mut self, room: &str, sender: &str, now_ms: i64) -> bool {
        if self.senders.len() + self.rooms.len() >= MAX_REMEMBERED {
            self.senders.retain(|_, bucket| !bucket.is_full(now_ms));
            self.rooms.retain(|_, bucket| !bucket.is_full(now_ms));
            if self.senders.len() + self.rooms.len() >= MAX_REMEMBERED {
                self.senders.clear();
                self.rooms.clear();
            }
        }
        let sender_budget = self
            .senders
            .entry((room.to_owned(), sender.to_owned()))
            .or_insert_with(|| Bucket::new(PER_SENDER_PER_MINUTE, PER_SENDER_BURST, now_ms));
        if sender_budget.wait_ms(now_ms) > 0 {
            return false;
        }
        let room_budget = self
            .rooms
            .entry(room.to_owned())
            .or_insert_with(|| Bucket::new(PER_ROOM_PER_MINUTE, PER_ROOM_BURST, now_ms));
        if room_budget.wait_ms(now_ms) > 0 {
            return false;
        }
        sender_budget.take();
        room_budget.take();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sender_gets_a_few_notices_then_one_a_minute() {
        let mut budget = NoticeBudget::default();
        let allowed = (0..20)
            .filter(|_| budget.allow("!r", "@a:x", 1_000))
            .count();
        assert_eq!(allowed, PER_SENDER_BURST as usize);
        assert!(!budget.allow("!r", "@a:x", 30_000));
        assert!(budget.allow("!r", "@a:x", 61_000));
        // Another room is another budget.
        assert!(budget.allow("!other", "@a:x", 61_000));
    }

    #[test]
    fn many_senders_in_one_room_share_its_budget() {
        let mut budget = NoticeBudget::default();
        let allowed = (0..50)
            .filter(|n| budget.allow("!r", &format!("@u{n}:x"), 0))
            .count();
        assert_eq!(allowed, PER_ROOM_BURST as usize);
    }

    #[test]
    fn memory_stays_bounded() {
        let mut budget = NoticeBudget::default();
        for n in 0..3 * MAX_REMEMBERED {
            budget.allow(&format!("!r{n}"), "@a:x", 0);
        }
        assert!(budget.senders.len() + budget.rooms.len() <= MAX_REMEMBERED + 2);
    }
}
