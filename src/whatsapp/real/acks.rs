//! Bookkeeping of what was sent: sends waiting for WhatsApp's server ack, and the
//! recent ids already sent (a retried send of an id that went out is not sent twice).

use std::collections::{HashMap, HashSet, VecDeque};

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::oneshot;

use super::WhatsAppError;

/// How many of our recently sent message ids are remembered, so that a retried send
/// of an id that already went out is not sent a second time.
pub(super) const RECENT_SENT_IDS: usize = 1024;

/// How long a sent message may wait for WhatsApp's server ack before the send
/// counts as failed (and is retried under the same id).
const SERVER_ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends waiting for the server's `<ack class="message">`: whatsapp-rust returns once
/// the stanza is written to the socket, which is not yet "WhatsApp has it". A
/// connection cut in between would otherwise lose the message after its outbox row
/// was completed.
#[derive(Clone, Default)]
pub(super) struct ServerAcks {
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Option<String>>>>>,
}

impl ServerAcks {
    pub(super) fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Option<String>>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts waiting for the ack of `id` (before the stanza goes out: the ack may
    /// come back before the send returns). The receiver gets the nack code, if any.
    pub(super) fn expect(&self, id: &str) -> oneshot::Receiver<Option<String>> {
        let (sender, receiver) = oneshot::channel();
        self.lock().insert(id.to_owned(), sender);
        receiver
    }

    pub(super) fn resolve(&self, id: &str, error: Option<String>) {
        if let Some(waiter) = self.lock().remove(id) {
            let _ = waiter.send(error);
        }
    }

    pub(super) fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    pub(super) fn abandon_all(&self) {
        self.lock().clear();
    }

    /// Waits for the ack of a sent message: `Ok` once WhatsApp has it.
    pub(super) async fn wait(
        &self,
        id: &str,
        receiver: oneshot::Receiver<Option<String>>,
    ) -> Result<(), WhatsAppError> {
        let outcome = tokio::time::timeout(SERVER_ACK_TIMEOUT, receiver).await;
        self.forget(id);
        match outcome {
            Ok(Ok(None)) => Ok(()),
            // 4xx: this message is refused (not a member, too large...); others pass.
            Ok(Ok(Some(code))) if code.starts_with('4') && code != "408" && code != "429" => Err(
                WhatsAppError::Rejected(format!("WhatsApp refused it (error {code})")),
            ),
            Ok(Ok(Some(code))) => Err(WhatsAppError::Transient(format!(
                "WhatsApp did not take the message (error {code})"
            ))),
            Ok(Err(_)) => Err(WhatsAppError::NotConnected),
            Err(_) => Err(WhatsAppError::Transient(
                "no answer from WhatsApp for a sent message".to_owned(),
            )),
        }
    }
}

/// A bounded set of the most recent ids, oldest evicted first.
#[derive(Default)]
pub(super) struct RecentIds {
    order: VecDeque<String>,
    ids: HashSet<String>,
}

impl RecentIds {
    pub(super) fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    pub(super) fn insert(&mut self, id: &str) {
        if !self.ids.insert(id.to_owned()) {
            return;
        }
        self.order.push_back(id.to_owned());
        if self.order.len() > RECENT_SENT_IDS {
            if let Some(oldest) = self.order.pop_front() {
                self.ids.remove(&oldest);
            }
        }
    }
}
