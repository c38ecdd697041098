//! When the bridge stops trying to relay one message, and what it says then: an item
//! that keeps failing, or has waited too long, is set aside (kept for `passerelle
//! outbox`), so that the messages behind it in its group move on.

/// Failed attempts at one item before it is set aside. Only failures of the item
/// count: waiting while WhatsApp or the homeserver is away (unreachable, down behind
/// its proxy, rate-limiting) or a room is being set up does not. With
/// the outbox's delays (doubling up to a minute), about an hour and a half.
pub const MAX_ATTEMPTS: u32 = 100;

/// Longest an item may wait for its turn, whatever the cause (seconds): a week.
pub const MAX_AGE_SECS: i64 = 7 * 24 * 3600;

/// Why an item is set aside whose group's file was removed while it waited: the
/// bridge relays only approved groups, whatever was queued before.
pub const GROUP_NO_LONGER_APPROVED: &str = "its group is no longer approved (its file was removed)";

/// Why an item `age_secs` old is set aside after `attempts` failed attempts, or
/// `None` while it may still be tried.
pub fn set_aside_reason(attempts: u32, age_secs: i64) -> Option<String> {
    if attempts >= MAX_ATTEMPTS {
        Some(format!("failed {attempts} times"))
    } else if age_secs > MAX_AGE_SECS {
        Some(format!("waited more than {} days", MAX_AGE_SECS / 86_400))
    } else {
        None
    }
}

/// What the Matrix room reads when a WhatsApp message for it is set aside.
pub fn set_aside_in_matrix(seq: i64) -> String {
    format!(
        "A WhatsApp message could not be relayed here (it kept failing); it is kept, \
         and an admin can send it again: passerelle outbox retry {seq}."
    )
}

/// What the Matrix room (where its sender wrote it) reads when a message for
/// WhatsApp is set aside.
pub fn set_aside_for_whatsapp(seq: i64) -> String {
    format!(
        "A message from this room could not be sent to WhatsApp (it kept failing); it \
         is kept, and an admin can send it again: passerelle outbox retry {seq}."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_is_set_aside_after_its_attempts_or_its_age() {
        assert_eq!(set_aside_reason(0, 0), None);
        assert_eq!(set_aside_reason(MAX_ATTEMPTS - 1, MAX_AGE_SECS), None);
        assert_eq!(
            set_aside_reason(MAX_ATTEMPTS, 10).as_deref(),
            Some("failed 100 times")
        );
        assert_eq!(
            set_aside_reason(3, MAX_AGE_SECS + 1).as_deref(),
            Some("waited more than 7 days")
        );
        assert!(set_aside_in_matrix(42).ends_with("passerelle outbox retry 42."));
    }
}
