//! Tells Matrix senders whose messages wait long for WhatsApp that they wait, and
//! why, once per wait: a sweep over the queue every little while; `relay::waiting`
//! decides whom and says it. The told waits are remembered across restarts.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::{now_ms, Bridge};
use crate::relay::waiting::{self, Queued, WhyWaiting};
use crate::relay::WhatsAppPost;
use crate::store::{Direction, OutboxItem};
use crate::whatsapp::ConnectionState;

/// Meta key of the told waits (a JSON list of `LongWait::key`s).
const TOLD_KEY: &str = "waiting.told";
/// The most waiting items one sweep reads (the oldest).
const MOST_ITEMS_LOOKED_AT: usize = 10_000;

impl Bridge {
    /// Looks for long waits every half `[relay] tell_waiting_after_secs` (at most
    /// every 30 s), as long as the service runs.
    pub(super) async fn tell_long_waits(self: Arc<Self>) {
        loop {
            let after = self.active().config.relay.tell_waiting_after;
            tokio::time::sleep((after / 2).clamp(Duration::from_secs(1), Duration::from_secs(30)))
                .await;
            self.tell_long_waits_now(after);
        }
    }

    /// Tells the senders of the messages queued for WhatsApp longer than `after`
    /// who were not told yet in this wait.
    fn tell_long_waits_now(&self, after: Duration) {
        let now = now_ms() / 1000;
        let before = now.saturating_sub(i64::try_from(after.as_secs()).unwrap_or(i64::MAX));
        let items =
            match self
                .store
                .queued_before(Direction::ToWhatsApp, before, MOST_ITEMS_LOOKED_AT)
            {
                Ok(items) => items,
                Err(error) => {
                    tracing::warn!("store: {error}");
                    return;
                }
            };
        let senders: Vec<String> = items.iter().map(sender_of).collect();
        let waits = waiting::long_waits(items.iter().zip(&senders).map(|(item, sender)| Queued {
            room_id: &item.room_id,
            sender,
            group_jid: &item.group_jid,
            event_id: &item.source_id,
            queued_at: item.enqueued_at,
        }));
        let told = self.told_waits();
        let (tell, mut remembered) = waiting::to_tell(&waits, &told);
        for wait in tell {
            let why = self.why_waiting(&wait.group_jid, &items);
            let notice = waiting::waiting_notice(wait, &why, now);
            let about = format!("{}#waiting", wait.event_id);
            match self.queue_notice(&wait.group_jid, &wait.room_id, &wait.sender, &about, notice) {
                Ok(()) => {
                    tracing::info!(room = %wait.room_id, count = wait.count, "a Matrix sender was told their messages wait for WhatsApp")
                }
                Err(error) => {
                    tracing::warn!("{error}; the sender will be told later");
                    remembered.remove(&wait.key());
                }
            }
        }
        if remembered != told {
            let list: Vec<&String> = remembered.iter().collect();
            let saved = serde_json::to_string(&list)
                .map_err(|e| e.to_string())
                .and_then(|json| {
                    self.store
                        .set_meta(TOLD_KEY, &json)
                        .map_err(|e| e.to_string())
                });
            if let Err(error) = saved {
                tracing::warn!("store: {error}");
            }
        }
    }

    fn told_waits(&self) -> BTreeSet<String> {
        match self.store.get_meta(TOLD_KEY) {
            Ok(Some(json)) => serde_json::from_str(&json).unwrap_or_default(),
            Ok(None) => BTreeSet::new(),
            Err(error) => {
                tracing::warn!("store: {error}");
                BTreeSet::new()
            }
        }
    }

    /// Why what waits for `group_jid` waits: WhatsApp away, a send it refused for
    /// now (the group's waiting items carry an error), or the pacing.
    fn why_waiting(&self, group_jid: &str, items: &[OutboxItem]) -> WhyWaiting {
        let state = self
            .whatsapp_state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if state != ConnectionState::Connected {
            return WhyWaiting::WhatsAppAway {
                state: state.in_words(),
                needs_admin: state.needs_admin(),
            };
        }
        let failed = items
            .iter()
            .any(|item| item.group_jid == group_jid && item.last_error.is_some());
        if failed {
            return WhyWaiting::Retrying;
        }
        let active = self.active();
        let per_minute = active
            .groups
            .get(group_jid)
            .and_then(|group| group.messages_per_minute)
            .unwrap_or(active.config.whatsapp.messages_per_minute);
        WhyWaiting::Paced { per_minute }
    }
}

/// The Matrix sender of a queued post (empty when it has none or cannot be read).
fn sender_of(item: &OutboxItem) -> String {
    serde_json::from_str::<WhatsAppPost>(&item.payload)
        .map(|post| post.sender)
        .unwrap_or_default()
}
