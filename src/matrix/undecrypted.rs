//! Events the bot could not decrypt: kept when a timeline brings them, tried again
//! whenever room keys arrive (and every little while), handed to the bridge once
//! they decrypt, or as unreadable once the wait for their key is over, so their
//! sender hears that the message did not cross. Nothing is dropped unseen.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use matrix_sdk::deserialized_responses::{TimelineEvent, TimelineEventKind};
use matrix_sdk::room::Room;
use matrix_sdk::ruma::events::room::encrypted::OriginalSyncRoomEncryptedEvent;
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::RoomId;
use matrix_sdk::Client;

use super::{events, MatrixEvents, MatrixSide};
use crate::relay::{MatrixKind, MatrixText};
use crate::store::{now_unix_ms, Store, StoreError, UndecryptedEvent};

/// The most events kept waiting for their keys; past it, one more is said
/// unreadable at once (a flood of undecryptable events cannot fill the disk).
const MAX_WAITING: usize = 1000;
/// How often the waiting events are tried again when no room key arrives.
const TRY_AGAIN_EVERY: Duration = Duration::from_secs(30);

/// What to hand the bridge for an event the timeline brought that the bot could not
/// decrypt: nothing while it waits for its key (it is kept), an unreadable message
/// when no more can wait. `None` too for the bot's own events (a device logged in
/// again cannot read what the earlier one sent, and need not).
pub(super) async fn keep(
    room: &Room,
    event: &TimelineEvent,
    store: &Store,
    bot: &matrix_sdk::ruma::UserId,
) -> Result<Option<MatrixText>, StoreError> {
    let (Some(event_id), Some(sender)) = (
        event.event_id(),
        event.raw().get_field::<String>("sender").ok().flatten(),
    ) else {
        return Ok(None);
    };
    if sender == bot.as_str() {
        return Ok(None);
    }
    let kept = UndecryptedEvent {
        room_id: room.room_id().to_string(),
        event_id: event_id.to_string(),
        sender,
        event: event.raw().json().get().to_owned(),
        seen_at_ms: now_unix_ms(),
    };
    if store.keep_undecrypted(&kept, MAX_WAITING)? {
        tracing::info!(room = %room.room_id(), event = %event_id, "an event could not be decrypted yet: waiting for its key");
        Ok(None)
    } else {
        tracing::warn!(room = %room.room_id(), event = %event_id, "an event could not be decrypted and {MAX_WAITING} already wait for their keys: said unreadable at once");
        Ok(Some(unreadable(room, &kept).await))
    }
}

/// Whether the SDK could not decrypt `event`.
pub(super) fn is_undecrypted(event: &TimelineEvent) -> bool {
    matches!(event.kind, TimelineEventKind::UnableToDecrypt { .. })
}

/// Tries the waiting events again at start, after each login, whenever room keys
/// arrive and every [`TRY_AGAIN_EVERY`] (sooner when the wait is shorter); runs
/// until the service stops.
pub(super) async fn keep_trying(side: MatrixSide, events: Arc<dyn MatrixEvents>, wait: Duration) {
    let pause = TRY_AGAIN_EVERY.min(wait / 2).max(Duration::from_secs(1));
    loop {
        let client = side.client();
        let device = client.device_id().map(ToOwned::to_owned);
        let mut keys = client.encryption().room_keys_received_stream().await;
        try_again(&side, &client, &events, wait).await;
        loop {
            match keys.as_mut() {
                Some(keys) => {
                    tokio::select! {
                        received = keys.next() => if received.is_none() { break },
                        () = tokio::time::sleep(pause) => {}
                    }
                }
                None => tokio::time::sleep(pause).await,
            }
            if side.client().device_id().map(ToOwned::to_owned) != device {
                break; // logged in again: listen to the new device's keys
            }
            try_again(&side, &client, &events, wait).await;
        }
    }
}

/// Tries to decrypt every waiting event; hands over those that decrypt, and as
/// unreadable those waiting for longer than `wait`. An event the bridge could not
/// queue stays and is tried again next time.
async fn try_again(
    side: &MatrixSide,
    client: &Client,
    events: &Arc<dyn MatrixEvents>,
    wait: Duration,
) {
    let waiting = match side.store.undecrypted_events() {
        Ok(waiting) => waiting,
        Err(error) => {
            tracing::error!("store: {error}");
            return;
        }
    };
    let now = now_unix_ms();
    let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
    for kept in waiting {
        let waited_enough = now.saturating_sub(kept.seen_at_ms) >= wait_ms;
        let room = RoomId::parse(&kept.room_id)
            .ok()
            .and_then(|id| client.get_room(&id));
        let message = match room {
            Some(room) => match decrypt(&room, &kept).await {
                Some(event) => events::to_matrix_text(&room, &event, &side.bot).await,
                None if waited_enough => Some(unreadable(&room, &kept).await),
                None => continue,
            },
            // A room the bot is not in (any more): nobody to tell.
            None if waited_enough => None,
            None => continue,
        };
        if let Some(message) = message {
            if let Err(error) = events.message(message).await {
                tracing::error!(room = %kept.room_id, "{error}; the event will be tried again");
                continue;
            }
        }
        tracing::info!(room = %kept.room_id, event = %kept.event_id, decrypted = !waited_enough, "an event that waited for its key was handed over");
        if let Err(error) = side.store.forget_undecrypted(&kept.event_id) {
            tracing::error!("store: {error}");
        }
    }
}

/// `kept` decrypted, or `None` while its key is still missing.
async fn decrypt(room: &Room, kept: &UndecryptedEvent) -> Option<TimelineEvent> {
    let raw: Raw<OriginalSyncRoomEncryptedEvent> = match Raw::from_json_string(kept.event.clone()) {
        Ok(raw) => raw,
        Err(error) => {
            tracing::warn!(room = %kept.room_id, "a kept encrypted event cannot be read back: {error}");
            return None;
        }
    };
    match room.decrypt_event(&raw, None).await {
        Ok(event) if !is_undecrypted(&event) => Some(event),
        Ok(_) => None,
        Err(error) => {
            tracing::debug!(room = %kept.room_id, "decryption failed: {error}");
            None
        }
    }
}

/// The message the bridge gets for an event it never could decrypt: who sent it,
/// nothing of what it said.
async fn unreadable(room: &Room, kept: &UndecryptedEvent) -> MatrixText {
    let sender = matrix_sdk::ruma::UserId::parse(&kept.sender).ok();
    let display_name = match &sender {
        Some(sender) => events::display_name_in(room, sender).await,
        None => None,
    };
    MatrixText {
        kind: MatrixKind::Unreadable,
        sender_display_name: display_name,
        ..events::without_text(room, &kept.event_id, &kept.sender)
    }
}
