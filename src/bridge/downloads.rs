//! Files fetched in the background for outbox items, one side's downloads each: at
//! most a few at once, and an item waits for its file without counting an attempt,
//! so a slow file delays only its own group (the worker goes on with the others).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use tokio::sync::Notify;

use super::{now_ms, Bridge};
use crate::store::OutboxItem;

/// Files fetched at the same time from one side, for different items.
pub(super) const MAX_PARALLEL_DOWNLOADS: usize = 4;

/// How long an item waiting for its download is left before it is looked at again,
/// should the download's own wake-up be missed (downloads are bounded in time).
const DOWNLOAD_WAIT_MS: i64 = 60_000;

/// A download's outcome: the file, or why there is none.
type Fetched<E> = Result<Vec<u8>, E>;

/// The downloads of one side, by item (seq): `None` while one runs, then its outcome
/// until the item takes it.
pub(super) struct Downloads<E> {
    running: Mutex<HashMap<i64, Option<Fetched<E>>>>,
}

impl<E> Default for Downloads<E> {
    fn default() -> Self {
        Downloads {
            running: Mutex::default(),
        }
    }
}

impl<E> Downloads<E> {
    /// Forgets the item's download (it was set aside: its file is not needed).
    pub(super) fn forget(&self, seq: i64) {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&seq);
    }
}

impl Bridge {
    /// The outcome of `item`'s download once it is done, else `None`: the download
    /// (`fetch`) is started, at most [`MAX_PARALLEL_DOWNLOADS`] at once, and the item
    /// postponed without counting an attempt; when it ends, the item is due again
    /// and its worker (`wake`) woken. `downloads` picks the side's downloads.
    pub(super) fn in_background<E, Fut>(
        &self,
        item: &OutboxItem,
        downloads: fn(&Bridge) -> &Downloads<E>,
        wake: fn(&Bridge) -> &Notify,
        fetch: impl FnOnce() -> Fut,
    ) -> Option<Fetched<E>>
    where
        E: Send + 'static,
        Fut: Future<Output = Fetched<E>> + Send + 'static,
    {
        let mut running = downloads(self)
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match running.remove(&item.seq) {
            Some(Some(done)) => return Some(done),
            Some(None) => {
                running.insert(item.seq, None);
                drop(running);
                self.wait_for_download(item);
                return None;
            }
            None => {}
        }
        if running.values().filter(|d| d.is_none()).count() >= MAX_PARALLEL_DOWNLOADS {
            drop(running);
            self.wait_for_side(item, "other downloads first");
            return None;
        }
        running.insert(item.seq, None);
        drop(running);
        self.wait_for_download(item);
        let seq = item.seq;
        let download = fetch();
        self.spawn_with_self(move |bridge| async move {
            let outcome = download.await;
            downloads(&bridge)
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

    /// The item waits for its download, which makes it due again when done (the
    /// delay is only a safety net).
    fn wait_for_download(&self, item: &OutboxItem) {
        if let Err(error) = self.store.postpone(item.seq, now_ms() + DOWNLOAD_WAIT_MS) {
            tracing::error!("store: {error}");
        }
    }
}
