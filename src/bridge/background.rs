//! Slow transfers of outbox items run in the background (files fetched from either
//! side, files uploaded to the homeserver): at most a few of a kind at once, and an
//! item waits for its transfer without counting an attempt, so a slow file delays
//! only its own group (the worker goes on with the others).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use tokio::sync::Notify;

use super::{now_ms, Bridge};
use crate::store::OutboxItem;

/// Transfers of one kind at the same time, for different items.
pub(super) const MAX_PARALLEL: usize = 4;

/// How long an item waiting for its transfer is left before it is looked at again,
/// should the transfer's own wake-up be missed (transfers are bounded in time).
const DOWNLOAD_WAIT_MS: i64 = 60_000;

/// The transfers of one kind, by item (seq): `None` while one runs, then its
/// outcome `T` until the item takes it.
pub(super) struct InBackground<T> {
    running: Mutex<HashMap<i64, Option<T>>>,
}

impl<T> Default for InBackground<T> {
    fn default() -> Self {
        InBackground {
            running: Mutex::default(),
        }
    }
}

impl<T> InBackground<T> {
    /// Forgets the item's transfer (it was set aside: it is not needed).
    pub(super) fn forget(&self, seq: i64) {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&seq);
    }

    /// Whether the item has a transfer running or done and not taken yet.
    pub(super) fn has(&self, seq: i64) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&seq)
    }
}

impl Bridge {
    /// The outcome of `item`'s transfer once it is done, else `None`: the transfer
    /// (`transfer`, called only to start it) is started, at most [`MAX_PARALLEL`] of
    /// its kind at once, and the item postponed without counting an attempt; when
    /// it ends, the item is due again and its worker (`wake`) woken. `kind` picks
    /// the transfers of its kind.
    pub(super) fn in_background<T, Fut>(
        &self,
        item: &OutboxItem,
        kind: fn(&Bridge) -> &InBackground<T>,
        wake: fn(&Bridge) -> &Notify,
        transfer: impl FnOnce() -> Fut,
    ) -> Option<T>
    where
        T: Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let mut running = kind(self).running.lock().unwrap_or_else(|e| e.into_inner());
        match running.remove(&item.seq) {
            Some(Some(done)) => return Some(done),
            Some(None) => {
                running.insert(item.seq, None);
                drop(running);
                self.wait_for_transfer(item);
                return None;
            }
            None => {}
        }
        if running.values().filter(|d| d.is_none()).count() >= MAX_PARALLEL {
            drop(running);
            self.wait_for_side(item, "other transfers first");
            return None;
        }
        running.insert(item.seq, None);
        drop(running);
        self.wait_for_transfer(item);
        let seq = item.seq;
        let work = transfer();
        self.spawn_with_self(move |bridge| async move {
            let outcome = work.await;
            kind(&bridge)
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(seq, Some(outcome));
            if let Err(error) = bridge.store.postpone(seq, now_ms()) {
                tracing::error!("store: {error}");
            }
            wake(&bridge).notify_one();
        });
        None
    }

    /// The item waits for its transfer, which makes it due again when done (the
    /// delay is only a safety net).
    fn wait_for_transfer(&self, item: &OutboxItem) {
        if let Err(error) = self.store.postpone(item.seq, now_ms() + DOWNLOAD_WAIT_MS) {
            tracing::error!("store: {error}");
        }
    }
}
