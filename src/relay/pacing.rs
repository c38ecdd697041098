//! Pacing of what the shared WhatsApp number sends: token buckets, one for all groups
//! and one per group that asks for it, so a burst from Matrix is delayed, never
//! dropped, and the association's number never floods WhatsApp.

use std::collections::HashMap;

/// A token bucket refilled continuously at `per_minute`, holding at most `capacity`.
#[derive(Debug, Clone)]
pub(super) struct Bucket {
    capacity: f64,
    per_minute: u32,
    tokens: f64,
    updated_ms: i64,
}

impl Bucket {
    pub(super) fn new(per_minute: u32, capacity: u32, now_ms: i64) -> Self {
        Bucket {
            capacity: f64::from(capacity.max(1)),
            per_minute: per_minute.max(1),
            tokens: f64::from(capacity.max(1)),
            updated_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: i64) {
        let elapsed = (now_ms - self.updated_ms).max(0) as f64;
        let per_ms = f64::from(self.per_minute) / 60_000.0;
        self.tokens = (self.tokens + elapsed * per_ms).min(self.capacity);
        self.updated_ms = now_ms;
    }

    /// Whether the bucket is full again (nothing taken lately).
    pub(super) fn is_full(&mut self, now_ms: i64) -> bool {
        self.refill(now_ms);
        self.tokens >= self.capacity
    }

    /// Milliseconds until one token is available (0: now).
    pub(super) fn wait_ms(&mut self, now_ms: i64) -> i64 {
        self.refill(now_ms);
        if self.tokens >= 1.0 {
            0
        } else {
            let per_ms = f64::from(self.per_minute) / 60_000.0;
            ((1.0 - self.tokens) / per_ms).ceil() as i64
        }
    }

    pub(super) fn take(&mut self) {
        self.tokens -= 1.0;
    }
}

/// Why a message must wait, and for how long (milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The number as a whole is at its rate: everything waits.
    Overall(i64),
    /// This group is at its own rate: other groups may go ahead.
    Group(i64),
}

/// The pacing state of the shared number.
#[derive(Debug, Clone)]
pub struct Pacer {
    overall: Bucket,
    groups: HashMap<String, Bucket>,
}

impl Pacer {
    pub fn new(per_minute: u32, burst: u32, now_ms: i64) -> Self {
        Pacer {
            overall: Bucket::new(per_minute, burst, now_ms),
            groups: HashMap::new(),
        }
    }

    /// Applies new settings (after a reload), keeping the tokens already earned.
    pub fn reconfigure(&mut self, per_minute: u32, burst: u32) {
        self.overall.per_minute = per_minute.max(1);
        self.overall.capacity = f64::from(burst.max(1));
        self.overall.tokens = self.overall.tokens.min(self.overall.capacity);
    }

    /// Takes a token for one message to `group` if both its bucket (when the group
    /// has a rate) and the overall bucket allow it now; else says how long to wait.
    pub fn try_send(
        &mut self,
        group: &str,
        group_per_minute: Option<u32>,
        now_ms: i64,
    ) -> Result<(), Wait> {
        let burst = self.overall.capacity as u32;
        let group_bucket = match group_per_minute {
            Some(per_minute) => {
                let bucket = self
                    .groups
                    .entry(group.to_string())
                    .or_insert_with(|| Bucket::new(per_minute, burst.min(per_minute), now_ms));
                bucket.per_minute = per_minute.max(1);
                let wait = bucket.wait_ms(now_ms);
                if wait > 0 {
                    return Err(Wait::Group(wait));
                }
                Some(group.to_string())
            }
            None => {
                self.groups.remove(group);
                None
            }
        };
        let wait = self.overall.wait_ms(now_ms);
        if wait > 0 {
            return Err(Wait::Overall(wait));
        }
        self.overall.take();
        if let Some(bucket) = group_bucket.and_then(|g| self.groups.get_mut(&g)) {
            bucket.take();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let mut pacer = Pacer::new(60, 3, 0);
        for _ in 0..3 {
            assert_eq!(pacer.try_send("g", None, 0), Ok(()));
        }
        assert_eq!(pacer.try_send("g", None, 0), Err(Wait::Overall(1000)));
        assert_eq!(pacer.try_send("g", None, 400), Err(Wait::Overall(600)));
        assert_eq!(pacer.try_send("g", None, 1000), Ok(()));
        assert_eq!(pacer.try_send("g", None, 1000), Err(Wait::Overall(1000)));
    }

    #[test]
    fn a_slow_group_does_not_hold_back_the_others() {
        let mut pacer = Pacer::new(600, 10, 0);
        assert_eq!(pacer.try_send("slow", Some(6), 0), Ok(()));
        assert_eq!(pacer.try_send("slow", Some(6), 0), Ok(()));
        // Burst of the slow group is capped at its own per-minute count (6).
        for _ in 0..4 {
            assert_eq!(pacer.try_send("slow", Some(6), 0), Ok(()));
        }
        assert_eq!(pacer.try_send("slow", Some(6), 0), Err(Wait::Group(10_000)));
        assert_eq!(pacer.try_send("fast", None, 0), Ok(()));
        assert_eq!(pacer.try_send("slow", Some(6), 10_000), Ok(()));
    }

    #[test]
    fn a_refused_send_takes_no_token() {
        let mut pacer = Pacer::new(60, 1, 0);
        assert_eq!(pacer.try_send("a", Some(60), 0), Ok(()));
        assert!(pacer.try_send("b", Some(60), 0).is_err());
        // "b" was refused by the overall bucket: its own bucket is still full.
        assert_eq!(pacer.try_send("b", Some(60), 1000), Ok(()));
    }

    #[test]
    fn reconfigure_applies_new_rate() {
        let mut pacer = Pacer::new(60, 1, 0);
        assert_eq!(pacer.try_send("a", None, 0), Ok(()));
        pacer.reconfigure(600, 1);
        assert_eq!(pacer.try_send("a", None, 0), Err(Wait::Overall(100)));
    }
}
