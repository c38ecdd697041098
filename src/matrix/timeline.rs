//! Reads room timelines in order and without gaps: each sync batch is handed over
//! event by event; a batch cut short by the server (`limited`) is back-filled first;
//! after a restart, what arrived since the last handled event is caught up. A
//! per-room marker (the last handled event) in the bridge database tells where to
//! stop; handing an event over twice is harmless (the outbox de-duplicates by id).
//! An event the bot cannot decrypt is kept aside (`undecrypted`) and the room goes on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use matrix_sdk::deserialized_responses::TimelineEvent;
use matrix_sdk::room::{MessagesOptions, Room};
use matrix_sdk::ruma::UserId;
use matrix_sdk::sync::JoinedRoomUpdate;

use super::events::to_matrix_text;
use super::{undecrypted, MatrixEvents, NotQueued};
use crate::store::Store;

/// How far back a gap is filled at most (events), so a room with years of history
/// and a lost marker cannot stall the bridge.
const MAX_BACKFILL_EVENTS: usize = 2000;
/// Events per /messages request while back-filling.
const PAGE_SIZE: u32 = 100;

fn marker_key(room: &Room) -> String {
    format!("matrix.last_event.{}", room.room_id())
}

/// The rooms with an event the bridge could not queue, and the first such event:
/// their marker stays before it, and they are read again from there (after each
/// sync) until all is queued. The event tells where to start in a room that has no
/// marker yet (its first events could not be queued).
pub(super) type RoomsBehind = Mutex<HashMap<String, String>>;

/// Hands the events of one joined room's sync update to the bridge, in order.
pub(super) async fn handle_update(
    room: &Room,
    update: &JoinedRoomUpdate,
    store: &Store,
    bot: &UserId,
    events: &Arc<dyn MatrixEvents>,
    behind: &RoomsBehind,
) {
    if is_behind(room, behind) {
        // Read again from the marker after this sync: that covers these events too.
        return;
    }
    if update.timeline.limited {
        tracing::debug!(room = %room.room_id(), "sync timeline was limited: back-filling");
        let older =
            events_since_marker(room, store, update.timeline.prev_batch.clone(), None).await;
        if !hand_over(room, &older, store, bot, events, behind).await {
            return;
        }
    }
    let fresh = after_marker(room, store, &update.timeline.events);
    hand_over(room, fresh, store, bot, events, behind).await;
}

/// The events of `timeline` after the room's marker, all of them when the marker is
/// not among them. A new login's first sync repeats what the room last held.
fn after_marker<'a>(
    room: &Room,
    store: &Store,
    timeline: &'a [TimelineEvent],
) -> &'a [TimelineEvent] {
    let Ok(Some(marker)) = store.get_meta(&marker_key(room)) else {
        return timeline;
    };
    match timeline
        .iter()
        .position(|event| event.event_id().is_some_and(|id| id.as_str() == marker))
    {
        Some(at) => &timeline[at + 1..],
        None => timeline,
    }
}

/// After a restart, or for a room behind: hands over what the room received after
/// its marker.
pub(super) async fn catch_up(
    room: &Room,
    store: &Store,
    bot: &UserId,
    events: &Arc<dyn MatrixEvents>,
    behind: &RoomsBehind,
) {
    let first_not_queued = behind
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(room.room_id().as_str())
        .cloned();
    let missed = events_since_marker(room, store, None, first_not_queued.as_deref()).await;
    if !missed.is_empty() {
        tracing::info!(room = %room.room_id(), count = missed.len(), "catching up on Matrix events");
    }
    if hand_over(room, &missed, store, bot, events, behind).await {
        let caught_up = behind
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(room.room_id().as_str())
            .is_some();
        if caught_up {
            tracing::info!(room = %room.room_id(), "every Matrix event of the room is queued again");
        }
    }
}

/// Whether the room has an event the bridge could not queue yet.
fn is_behind(room: &Room, behind: &RoomsBehind) -> bool {
    behind
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(room.room_id().as_str())
}

/// Pages backwards from `from` (None: the newest event) to the room's marker and
/// returns the events after the marker, oldest first. Without a marker, to
/// `first_not_queued` (included) when the room has one; else the room was never
/// read, and there is nothing to catch up.
async fn events_since_marker(
    room: &Room,
    store: &Store,
    from: Option<String>,
    first_not_queued: Option<&str>,
) -> Vec<TimelineEvent> {
    let (stop_at, included) = match (store.get_meta(&marker_key(room)), first_not_queued) {
        (Ok(Some(marker)), _) => (marker, false),
        (Ok(None), Some(first)) => (first.to_owned(), true),
        (Ok(None), None) => return Vec::new(),
        (Err(error), _) => {
            tracing::error!("store: {error}");
            return Vec::new();
        }
    };
    let mut collected: Vec<TimelineEvent> = Vec::new();
    let mut token = from;
    loop {
        let mut options = MessagesOptions::backward().from(token.as_deref());
        options.limit = PAGE_SIZE.into();
        let page = match room.messages(options).await {
            Ok(page) => page,
            Err(error) => {
                tracing::warn!(room = %room.room_id(), "back-fill failed: {error}");
                break;
            }
        };
        let mut reached_marker = false;
        for event in page.chunk {
            if event.event_id().is_some_and(|id| id.as_str() == stop_at) {
                reached_marker = true;
                if included {
                    collected.push(event);
                }
                break;
            }
            collected.push(event);
        }
        if reached_marker || collected.len() >= MAX_BACKFILL_EVENTS {
            break;
        }
        match page.end {
            Some(end) if token.as_deref() != Some(end.as_str()) => token = Some(end),
            _ => break, // start of the visible history
        }
    }
    collected.reverse();
    collected
}

/// Hands `timeline`'s events to the bridge in order and moves the room's marker
/// past those it took. An event it could not queue stops the hand-over: the marker
/// stays before it, the room is marked behind, and `false` is returned.
async fn hand_over(
    room: &Room,
    timeline: &[TimelineEvent],
    store: &Store,
    bot: &UserId,
    events: &Arc<dyn MatrixEvents>,
    behind: &RoomsBehind,
) -> bool {
    let mut last = None;
    let mut all_queued = true;
    for event in timeline {
        // An event the bot cannot decrypt waits for its key on the side
        // (`undecrypted`): the room goes on.
        let message = if undecrypted::is_undecrypted(event) {
            undecrypted::keep(room, event, store, bot)
                .await
                .map_err(|error| NotQueued(error.to_string()))
        } else {
            Ok(to_matrix_text(room, event, bot).await)
        };
        let queued = match message {
            Ok(Some(message)) => events.message(message).await,
            Ok(None) => Ok(()),
            Err(error) => Err(error),
        };
        if let Err(error) = queued {
            tracing::error!(room = %room.room_id(), "{error}; the room will be read again from there");
            if let Some(id) = event.event_id() {
                behind
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(room.room_id().to_string())
                    .or_insert_with(|| id.to_string());
            }
            all_queued = false;
            break;
        }
        if let Some(id) = event.event_id() {
            last = Some(id);
        }
    }
    if let Some(last) = last {
        if let Err(error) = store.set_meta(&marker_key(room), last.as_str()) {
            tracing::error!("store: {error}");
        }
    }
    all_queued
}
