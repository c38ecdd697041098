//! Upkeep around the two directions: the heartbeat `passerelle status` reads, daily
//! retention, what the admins are told about WhatsApp's connection, the metrics
//! figures and the admin control socket.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{now_ms, Bridge};
use crate::control::{self, ControlHandler};
use crate::matrix::{self, SessionChange};
use crate::metrics;
use crate::relay::ids;
use crate::status;
use crate::store::Direction;
use crate::whatsapp::ConnectionState;

impl Bridge {
    /// Tells `passerelle status` the service is alive.
    pub(super) async fn heartbeat(self: Arc<Self>) {
        loop {
            let now = (now_ms() / 1000).to_string();
            if let Err(error) = self.store.set_meta(status::keys::HEARTBEAT, &now) {
                tracing::warn!("store: {error}");
            }
            tokio::time::sleep(Duration::from_secs(status::HEARTBEAT_SECS)).await;
        }
    }

    /// Forgets what is older than `[relay] remember_days`, at start and then once a
    /// day (the setting as last reloaded).
    pub(super) async fn forget_old_daily(self: Arc<Self>) {
        loop {
            self.forget_old().await;
            tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
        }
    }

    async fn forget_old(&self) {
        let days = self.active().config.relay.remember_days;
        if days == 0 {
            return;
        }
        let cutoff = now_ms() / 1000 - i64::from(days) * 24 * 3600;
        match self.store.forget_before(cutoff, ids::WHATSAPP_ANNOTATIONS) {
            Ok(forgotten) => tracing::info!(
                days,
                links = forgotten.links,
                names = forgotten.names,
                poll_votes = forgotten.poll_votes,
                digests = forgotten.digests,
                "forgot what is older than the retention period"
            ),
            Err(error) => tracing::warn!("store: could not forget old links: {error}"),
        }
        if let Some(client) = self.whatsapp() {
            match client.forget_before(cutoff).await {
                Ok(polls) => tracing::info!(polls, "forgot polls older than the retention period"),
                Err(error) => tracing::warn!("could not forget old polls: {error}"),
            }
        }
    }

    /// Tells the admins, in their direct rooms, when WhatsApp needs one of them, and
    /// when it is connected again after that. Each state is told once, also across
    /// restarts.
    fn tell_admins_about(&self, state: &ConnectionState, words: &str) {
        let told = match self.store.get_meta(status::keys::WHATSAPP_TOLD) {
            Ok(told) => told,
            Err(error) => {
                tracing::warn!("store: {error}");
                return;
            }
        };
        let (text, update) = if state.needs_admin() {
            if told.as_deref() == Some(words) {
                return;
            }
            (
                format!("WhatsApp needs an administrator: {words}."),
                self.store.set_meta(status::keys::WHATSAPP_TOLD, words),
            )
        } else if *state == ConnectionState::Connected && told.is_some() {
            (
                "WhatsApp is connected again; relaying resumes.".to_string(),
                self.store
                    .delete_meta(status::keys::WHATSAPP_TOLD)
                    .map(|_| ()),
            )
        } else {
            return;
        };
        if let Err(error) = update {
            tracing::warn!("store: {error}");
        }
        self.tell_admins(text, "about WhatsApp");
    }

    /// Tells every `[matrix] admins` `text` in their direct room with the bot, in the
    /// background; `about` says what, in the log line of a notice that failed.
    pub(super) fn tell_admins(&self, text: String, about: &'static str) {
        let admins = self.active().config.matrix.admins.clone();
        if admins.is_empty() {
            tracing::warn!("no Matrix admins configured to tell: {text}");
            return;
        }
        self.spawn_with_self(move |bridge| async move {
            for admin in &admins {
                if let Err(error) = bridge.matrix.notify_admin(admin, &text).await {
                    tracing::warn!("could not tell an admin {about}: {error}");
                }
            }
        });
    }

    /// WhatsApp's connection changed: told in the logs, `status`, and to the admins.
    pub(super) fn connection_changed(&self, state: ConnectionState) {
        tracing::info!(?state, "WhatsApp connection");
        let connected = state == ConnectionState::Connected;
        *self
            .whatsapp_state
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = state.clone();
        let words = state.in_words();
        if state.needs_admin() {
            tracing::error!("WhatsApp: {words}");
            self.note_error(&format!("WhatsApp {words}"));
        }
        self.tell_admins_about(&state, &words);
        let since = (now_ms() / 1000).to_string();
        if let Err(error) = self
            .store
            .set_meta(status::keys::WHATSAPP_STATE, &words)
            .and_then(|()| self.store.set_meta(status::keys::WHATSAPP_SINCE, &since))
        {
            tracing::warn!("store: {error}");
        }
        if connected {
            self.wake_to_whatsapp.notify_one();
            // Rooms set up while WhatsApp was away were named after their file.
            self.spawn_with_self(|bridge| async move { bridge.sync_room_names().await });
        }
    }
}

impl Bridge {
    /// The bot's Matrix session changed: told in the logs, `status`, the metrics,
    /// and to the admins once the bot can speak again; given up, the service stops
    /// with an error so that its manager shows the failure.
    pub(super) fn matrix_session_changed(&self, change: SessionChange) {
        let now = now_ms() / 1000;
        let state = match &change {
            SessionChange::Lost {
                can_log_in_again: true,
            } => "session ended by the homeserver; logging in again".to_string(),
            SessionChange::Lost {
                can_log_in_again: false,
            } => format!(
                "session ended by the homeserver; no password configured to log in again \
                 (set matrix.password_file); stopping in {} s",
                matrix::SESSION_GIVE_UP_AFTER.as_secs()
            ),
            SessionChange::LoginRefused { why } => {
                format!("session ended by the homeserver; cannot log in again: {why}")
            }
            SessionChange::GivenUp { why } => {
                format!("session ended by the homeserver; stopped, cannot log in again: {why}")
            }
            SessionChange::Renewed { .. } => String::new(),
        };
        if let SessionChange::Renewed { device_id } = &change {
            let lost_since = self
                .store
                .get_meta(status::keys::MATRIX_SINCE)
                .ok()
                .flatten()
                .and_then(|since| since.parse::<i64>().ok());
            for key in [status::keys::MATRIX_STATE, status::keys::MATRIX_SINCE] {
                if let Err(error) = self.store.delete_meta(key) {
                    tracing::warn!("store: {error}");
                }
            }
            let waited = lost_since
                .map(|since| format!(" after {} s without one", (now - since).max(0)))
                .unwrap_or_default();
            let text = format!(
                "The homeserver ended the bot's Matrix session; it logged in again as a new \
                 device ({device_id}){waited}. Messages that waited are being delivered."
            );
            self.wake_to_matrix.notify_one();
            self.wake_to_whatsapp.notify_one();
            self.tell_admins(text, "about the Matrix session");
            return;
        }
        tracing::error!("Matrix: {state}");
        self.note_error(&format!("Matrix {state}"));
        let first_since = matches!(change, SessionChange::Lost { .. });
        let result = self
            .store
            .set_meta(status::keys::MATRIX_STATE, &state)
            .and_then(|()| {
                if first_since {
                    self.store
                        .set_meta(status::keys::MATRIX_SINCE, &now.to_string())
                } else {
                    Ok(())
                }
            });
        if let Err(error) = result {
            tracing::warn!("store: {error}");
        }
        if let SessionChange::GivenUp { why } = change {
            self.fail(format!(
                "the Matrix session was ended and cannot be renewed: {why}"
            ));
        }
    }
}

impl metrics::FigureSource for Bridge {
    fn figures(&self) -> metrics::Figures {
        // One read of the day counters serves both directions.
        let counters = self
            .store
            .counters("0001-01-01", "9999-12-31")
            .unwrap_or_default();
        let queue = |direction: Direction| {
            let (waiting, oldest) = self.store.queue_stats(direction).unwrap_or((0, None));
            let oldest_age_secs = oldest
                .map(|since| u64::try_from(now_ms() / 1000 - since).unwrap_or(0))
                .unwrap_or(0);
            let relayed_total = counters
                .iter()
                .filter(|(_, _, d, _)| *d == direction)
                .map(|(_, _, _, count)| count)
                .sum();
            metrics::QueueFigures {
                waiting,
                oldest_age_secs: if waiting == 0 { 0 } else { oldest_age_secs },
                relayed_total,
            }
        };
        let matrix_logged_in = matches!(self.store.get_meta(status::keys::MATRIX_STATE), Ok(None));
        let whatsapp_connected = matches!(
            self.store.get_meta(status::keys::WHATSAPP_STATE),
            Ok(Some(state)) if state == "connected"
        );
        metrics::Figures {
            to_matrix: queue(Direction::ToMatrix),
            to_whatsapp: queue(Direction::ToWhatsApp),
            set_aside: self
                .store
                .recent_dead_letters(10_000)
                .map(|letters| letters.len() as u64)
                .unwrap_or(0),
            whatsapp_connected,
            matrix_logged_in,
            forgeries_refused: self
                .forgeries_refused
                .load(std::sync::atomic::Ordering::Relaxed),
            groups_approved: self.active().groups.len() as u64,
            groups_bridged: self
                .rooms_ready
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len() as u64,
        }
    }
}

#[async_trait]
impl ControlHandler for Bridge {
    async fn handle(&self, request: control::Request) -> control::Reply {
        use control::{Reply, Request};
        let Some(client) = self.whatsapp() else {
            return Reply::Error {
                message: "WhatsApp is not started yet".into(),
            };
        };
        let answer = match request {
            Request::Groups => client.groups().await.map(|groups| Reply::Groups { groups }),
            Request::Join { invite } => {
                let outcome = client.join(&invite).await;
                if outcome.is_ok() {
                    tracing::info!("joined a WhatsApp group by invite link (admin request)");
                }
                outcome.map(|outcome| Reply::Join { outcome })
            }
        };
        answer.unwrap_or_else(|error| Reply::Error {
            message: error.to_string(),
        })
    }
}
