//! Matrix senders whose messages wait long to reach WhatsApp: who is told (once per
//! wait: until none of theirs waits long any more), and in which words. Telling
//! changes nothing of the delivery, which still happens.

use std::collections::{BTreeMap, BTreeSet};

/// Why messages for WhatsApp wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WhyWaiting {
    /// WhatsApp is not connected (`state` in words); `needs_admin`: it will not come
    /// back by itself, and the admins have been told.
    WhatsAppAway { state: String, needs_admin: bool },
    /// WhatsApp has not accepted the message yet; the bridge keeps trying.
    Retrying,
    /// The number sends at most `per_minute` messages a minute: it waits its turn.
    Paced { per_minute: u32 },
}

/// One sender's messages waiting long in one room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LongWait {
    pub room_id: String,
    pub sender: String,
    pub group_jid: String,
    /// The oldest waiting message's event (the notice is known by it).
    pub event_id: String,
    /// Unix seconds the oldest one was queued.
    pub since: i64,
    pub count: usize,
}

impl LongWait {
    /// The key a told wait is remembered by.
    pub fn key(&self) -> String {
        format!("{} {}", self.room_id, self.sender)
    }
}

/// One queued message: room, sender, group, event, when it was queued (unix s).
pub struct Queued<'a> {
    pub room_id: &'a str,
    pub sender: &'a str,
    pub group_jid: &'a str,
    pub event_id: &'a str,
    pub queued_at: i64,
}

/// The waits among messages waiting longer than the threshold (oldest first): one
/// per room and sender, in the order of their oldest message. Messages without a
/// Matrix sender (the bridge's own) are nobody's wait.
pub fn long_waits<'a>(queued: impl IntoIterator<Item = Queued<'a>>) -> Vec<LongWait> {
    let mut waits: Vec<LongWait> = Vec::new();
    let mut index: BTreeMap<(String, String), usize> = BTreeMap::new();
    for item in queued {
        if item.sender.is_empty() {
            continue;
        }
        let key = (item.room_id.to_owned(), item.sender.to_owned());
        match index.get(&key) {
            Some(&at) => waits[at].count += 1,
            None => {
                index.insert(key, waits.len());
                waits.push(LongWait {
                    room_id: item.room_id.to_owned(),
                    sender: item.sender.to_owned(),
                    group_jid: item.group_jid.to_owned(),
                    event_id: item.event_id.to_owned(),
                    since: item.queued_at,
                    count: 1,
                });
            }
        }
    }
    waits
}

/// The waits to tell now (those not told yet), and the told keys to remember: the
/// told waits that still go on and those told now. A wait that ended is forgotten,
/// so a later one is told again.
pub fn to_tell<'a>(
    waits: &'a [LongWait],
    told: &BTreeSet<String>,
) -> (Vec<&'a LongWait>, BTreeSet<String>) {
    let tell = waits.iter().filter(|w| !told.contains(&w.key())).collect();
    let remembered = waits.iter().map(LongWait::key).collect();
    (tell, remembered)
}

/// What the sender of `wait` reads, `now` being unix seconds.
pub fn waiting_notice(wait: &LongWait, why: &WhyWaiting, now: i64) -> String {
    let minutes = (now.saturating_sub(wait.since) / 60).max(1);
    let what = if wait.count == 1 {
        format!("your message has been waiting {minutes} min to reach WhatsApp")
    } else {
        format!(
            "your {} messages have been waiting up to {minutes} min to reach WhatsApp",
            wait.count
        )
    };
    let (why, then) = match why {
        WhyWaiting::WhatsAppAway {
            state,
            needs_admin: true,
        } => (
            format!("WhatsApp is not connected ({state})"),
            "it will be sent once an administrator has fixed it (they have been told)",
        ),
        WhyWaiting::WhatsAppAway {
            state,
            needs_admin: false,
        } => (
            format!("WhatsApp is not connected ({state})"),
            "it will be sent when the bridge is connected again",
        ),
        WhyWaiting::Retrying => (
            "WhatsApp has not accepted it yet".to_owned(),
            "the bridge keeps trying",
        ),
        WhyWaiting::Paced { per_minute } => (
            format!("the bridge sends at most {per_minute} messages a minute to WhatsApp"),
            "it will be sent in turn",
        ),
    };
    format!(
        "{}: {what}: {why}; {then}. Nothing to do, and no need to send it again.",
        wait.sender
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued<'a>(room: &'a str, sender: &'a str, event: &'a str, at: i64) -> Queued<'a> {
        Queued {
            room_id: room,
            sender,
            group_jid: "g@g.us",
            event_id: event,
            queued_at: at,
        }
    }

    #[test]
    fn one_wait_per_room_and_sender_from_their_oldest_message() {
        let waits = long_waits([
            queued("!a", "@alice:x", "$1", 10),
            queued("!a", "@bob:x", "$2", 11),
            queued("!a", "@alice:x", "$3", 12),
            queued("!b", "@alice:x", "$4", 13),
            queued("!a", "", "$5", 14),
        ]);
        let seen: Vec<_> = waits
            .iter()
            .map(|w| {
                (
                    w.room_id.as_str(),
                    w.sender.as_str(),
                    w.event_id.as_str(),
                    w.count,
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("!a", "@alice:x", "$1", 2),
                ("!a", "@bob:x", "$2", 1),
                ("!b", "@alice:x", "$4", 1)
            ]
        );
    }

    #[test]
    fn each_wait_is_told_once_and_a_new_wait_again() {
        let first = long_waits([queued("!a", "@alice:x", "$1", 10)]);
        let (tell, told) = to_tell(&first, &BTreeSet::new());
        assert_eq!(tell.len(), 1);
        // Still waiting (and more of theirs): not told again.
        let later = long_waits([
            queued("!a", "@alice:x", "$1", 10),
            queued("!a", "@alice:x", "$2", 20),
        ]);
        let (tell, told) = to_tell(&later, &told);
        assert!(tell.is_empty());
        // Delivered: forgotten; waiting again later is a new wait.
        let (tell, told) = to_tell(&[], &told);
        assert!(tell.is_empty() && told.is_empty());
        let again = long_waits([queued("!a", "@alice:x", "$9", 90)]);
        assert_eq!(to_tell(&again, &told).0.len(), 1);
    }

    #[test]
    fn the_notice_says_how_long_why_and_that_it_will_be_sent() {
        let wait = &long_waits([
            queued("!a", "@alice:x", "$1", 0),
            queued("!a", "@alice:x", "$2", 60),
        ])[0];
        let away = WhyWaiting::WhatsAppAway {
            state: "disconnected: network".into(),
            needs_admin: false,
        };
        assert_eq!(
            waiting_notice(wait, &away, 300),
            "@alice:x: your 2 messages have been waiting up to 5 min to reach WhatsApp: \
             WhatsApp is not connected (disconnected: network); it will be sent when the \
             bridge is connected again. Nothing to do, and no need to send it again."
        );
        let single = &long_waits([queued("!a", "@alice:x", "$1", 0)])[0];
        let paced = waiting_notice(single, &WhyWaiting::Paced { per_minute: 6 }, 30);
        assert!(
            paced.contains("your message has been waiting 1 min"),
            "{paced}"
        );
        assert!(paced.contains("at most 6 messages a minute"), "{paced}");
        let stopped = WhyWaiting::WhatsAppAway {
            state: "logged out".into(),
            needs_admin: true,
        };
        assert!(waiting_notice(single, &stopped, 600).contains("an administrator"));
        assert!(waiting_notice(single, &WhyWaiting::Retrying, 600).contains("keeps trying"));
    }
}
