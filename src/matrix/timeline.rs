//! Reads room timelines in order and without gaps: each sync batch is handed over
//! event by event; a batch cut short by the server (`limited`) is back-filled first;
//! after a restart, what arrived since the last handled event is caught up. A
//! per-room marker (the last handled event) in the bridge database tells where to
//! stop; handing an event over twice is harmless (the outbox de-duplicates by id).
//! An event the bot cannot decrypt is kept aside (`undecrypted`) and the room goes on.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use matrix_sdk::deserialized_responses::TimelineEvent;
use matrix_sdk::room::{MessagesOptions, Room};
use matrix_sdk::ruma::events::message::TextContentBlock;
use matrix_sdk::ruma::events::poll::unstable_start::UnstablePollStartEventContent;
use matrix_sdk::ruma::events::reaction::SyncReactionEvent;
use matrix_sdk::ruma::events::room::message::{
    FormattedBody, MessageFormat, MessageType, Relation, SyncRoomMessageEvent,
};
use matrix_sdk::ruma::events::room::redaction::SyncRoomRedactionEvent;
use matrix_sdk::ruma::events::sticker::SyncStickerEvent;
use matrix_sdk::ruma::events::{
    AnySyncMessageLikeEvent, AnySyncTimelineEvent, SyncMessageLikeEvent,
};
use matrix_sdk::ruma::{EventId, UserId};
use matrix_sdk::sync::JoinedRoomUpdate;
use matrix_sdk::RoomState;

use super::{undecrypted, MatrixEvents, NotQueued};
use crate::relay::location::Location;
use crate::relay::{MatrixKind, MatrixPoll, MatrixRelation, MatrixText};
use crate::store::Store;

/// How far back a gap is filled at most (events), so a room with years of history
/// and a lost marker cannot stall the bridge.
const MAX_BACKFILL_EVENTS: usize = 2000;
/// Events per /messages request while back-filling.
const PAGE_SIZE: u32 = 100;

fn marker_key(room: &Room) -> String {
    format!("matrix.last_event.{}", room.room_id())
}

/// The rooms with an event the bridge could not queue: their marker stays before
/// it, and they are read again from there (after each sync) until all is queued.
pub(super) type RoomsBehind = Mutex<HashSet<String>>;

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
        let older = events_since_marker(room, store, update.timeline.prev_batch.clone()).await;
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
    let missed = events_since_marker(room, store, None).await;
    if !missed.is_empty() {
        tracing::info!(room = %room.room_id(), count = missed.len(), "catching up on Matrix events");
    }
    if hand_over(room, &missed, store, bot, events, behind).await {
        let caught_up = behind
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(room.room_id().as_str());
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
        .contains(room.room_id().as_str())
}

/// Pages backwards from `from` (None: the newest event) to the room's marker and
/// returns the events after the marker, oldest first. Without a marker the room was
/// never read, and there is nothing to catch up.
async fn events_since_marker(
    room: &Room,
    store: &Store,
    from: Option<String>,
) -> Vec<TimelineEvent> {
    let marker = match store.get_meta(&marker_key(room)) {
        Ok(Some(marker)) => marker,
        Ok(None) => return Vec::new(),
        Err(error) => {
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
            if event.event_id().is_some_and(|id| id.as_str() == marker) {
                reached_marker = true;
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
            behind
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(room.room_id().to_string());
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

/// Turns a timeline event into the relay's type; `None` for events the bridge does
/// not relay (own events, state, kinds handled elsewhere). Redactions come as a
/// `MatrixText` with an empty body and a `Redaction` relation.
pub(super) async fn to_matrix_text(
    room: &Room,
    event: &TimelineEvent,
    bot: &UserId,
) -> Option<MatrixText> {
    if room.state() != RoomState::Joined {
        return None;
    }
    let parsed = match event.raw().deserialize() {
        Ok(parsed) => parsed,
        Err(error) => {
            tracing::warn!(room = %room.room_id(), "malformed event ignored: {error}");
            return None;
        }
    };
    let message = match parsed {
        AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomMessage(
            SyncRoomMessageEvent::Original(message),
        )) => message,
        AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomRedaction(
            SyncRoomRedactionEvent::Original(redaction),
        )) => {
            if redaction.sender == bot {
                return None;
            }
            let of = redaction
                .content
                .redacts
                .clone()
                .or_else(|| redaction.redacts.clone())?;
            return Some(MatrixText {
                relation: MatrixRelation::Redaction { of: of.to_string() },
                ..without_text(room, redaction.event_id.as_str(), redaction.sender.as_str())
            });
        }
        AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::Reaction(
            SyncReactionEvent::Original(reaction),
        )) => {
            if reaction.sender == bot {
                return None;
            }
            return Some(MatrixText {
                sender_display_name: display_name_in(room, &reaction.sender).await,
                relation: MatrixRelation::Reaction {
                    to: reaction.content.relates_to.event_id.to_string(),
                    key: reaction.content.relates_to.key.clone(),
                },
                ..without_text(room, reaction.event_id.as_str(), reaction.sender.as_str())
            });
        }
        AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::Sticker(
            SyncStickerEvent::Original(sticker),
        )) => {
            if sticker.sender == bot {
                return None;
            }
            return Some(MatrixText {
                sender_display_name: display_name_in(room, &sticker.sender).await,
                media: super::media::sticker_media(&sticker.content),
                ..without_text(room, sticker.event_id.as_str(), sticker.sender.as_str())
            });
        }
        AnySyncTimelineEvent::MessageLike(event) => return poll_event(room, &event, bot).await,
        _ => return None,
    };
    if message.sender == bot {
        return None;
    }
    let (msgtype, relation) = match &message.content.relates_to {
        // An edit: its new text is in `m.new_content` (the body is a fallback).
        Some(Relation::Replacement(replacement)) => (
            &replacement.new_content.msgtype,
            MatrixRelation::Replace {
                of: replacement.event_id.to_string(),
            },
        ),
        Some(Relation::Reply(reply)) => (
            &message.content.msgtype,
            MatrixRelation::Reply {
                to: reply.in_reply_to.event_id.to_string(),
            },
        ),
        _ => (&message.content.msgtype, MatrixRelation::None),
    };
    let html_of = |formatted: &Option<FormattedBody>| {
        formatted
            .as_ref()
            .filter(|f| f.format == MessageFormat::Html)
            .map(|f| f.body.clone())
    };
    let location = match msgtype {
        MessageType::Location(shared) => Location::from_geo_uri(&shared.geo_uri, None),
        _ => None,
    };
    let (kind, body, html, media) = match msgtype {
        // A point without valid coordinates falls through to "not relayed".
        MessageType::Location(_) if location.is_some() => {
            (MatrixKind::Text, String::new(), None, None)
        }
        MessageType::Text(text) => (
            MatrixKind::Text,
            text.body.clone(),
            html_of(&text.formatted),
            None,
        ),
        MessageType::Emote(emote) => (
            MatrixKind::Emote,
            emote.body.clone(),
            html_of(&emote.formatted),
            None,
        ),
        MessageType::Notice(notice) => (
            MatrixKind::Notice,
            notice.body.clone(),
            html_of(&notice.formatted),
            None,
        ),
        other => match super::media::media_of(other) {
            Some((media, caption, html)) => (MatrixKind::Text, caption, html, Some(media)),
            None => (MatrixKind::Other, other.msgtype().to_string(), None, None),
        },
    };
    Some(MatrixText {
        room_id: room.room_id().to_string(),
        event_id: message.event_id.to_string(),
        sender: message.sender.to_string(),
        sender_display_name: display_name_in(room, &message.sender).await,
        kind,
        body,
        html,
        is_reply: matches!(relation, MatrixRelation::Reply { .. }),
        relation,
        media,
        location,
        poll: None,
        namesakes: Vec::new(),
    })
}

/// An MSC3381 poll event (the unstable `org.matrix.msc3381.poll.*` Element sends, or
/// the stable `m.poll.*`): a poll started, a vote (with the options picked by
/// name), or the end of a poll. `None` for other events.
async fn poll_event(
    room: &Room,
    event: &AnySyncMessageLikeEvent,
    bot: &UserId,
) -> Option<MatrixText> {
    if event.sender() == bot {
        return None;
    }
    let mut text = without_text(room, event.event_id().as_str(), event.sender().as_str());
    match event {
        AnySyncMessageLikeEvent::UnstablePollStart(SyncMessageLikeEvent::Original(start)) => {
            match &start.content {
                UnstablePollStartEventContent::New(new) => {
                    let block = &new.poll_start;
                    text.poll = Some(MatrixPoll {
                        question: block.question.text.clone(),
                        options: block.answers.iter().map(|a| a.text.clone()).collect(),
                        max_selections: u32::try_from(block.max_selections).unwrap_or(1),
                    });
                }
                // A replacement (or a form this version does not know).
                _ => edited_poll(&mut text),
            }
        }
        AnySyncMessageLikeEvent::PollStart(SyncMessageLikeEvent::Original(start)) => {
            if start.content.relates_to.is_some() {
                edited_poll(&mut text);
            } else {
                let block = &start.content.poll;
                let plain = |t: &TextContentBlock| t.find_plain().unwrap_or_default().to_owned();
                text.poll = Some(MatrixPoll {
                    question: plain(&block.question.text),
                    options: block.answers.iter().map(|a| plain(&a.text)).collect(),
                    max_selections: u32::try_from(block.max_selections).unwrap_or(1),
                });
            }
        }
        AnySyncMessageLikeEvent::UnstablePollResponse(SyncMessageLikeEvent::Original(vote)) => {
            let poll = vote.content.relates_to.event_id.clone();
            text.body = picked_options(room, &poll, &vote.content.poll_response.answers).await;
            text.relation = MatrixRelation::PollVote {
                poll: poll.to_string(),
            };
        }
        AnySyncMessageLikeEvent::PollResponse(SyncMessageLikeEvent::Original(vote)) => {
            let poll = vote.content.relates_to.event_id.clone();
            text.body = picked_options(room, &poll, &vote.content.selections).await;
            text.relation = MatrixRelation::PollVote {
                poll: poll.to_string(),
            };
        }
        AnySyncMessageLikeEvent::UnstablePollEnd(SyncMessageLikeEvent::Original(end)) => {
            text.relation = MatrixRelation::PollEnd {
                poll: end.content.relates_to.event_id.to_string(),
            };
        }
        AnySyncMessageLikeEvent::PollEnd(SyncMessageLikeEvent::Original(end)) => {
            text.relation = MatrixRelation::PollEnd {
                poll: end.content.relates_to.event_id.to_string(),
            };
        }
        _ => return None,
    }
    text.sender_display_name = display_name_in(room, event.sender()).await;
    Some(text)
}

/// An edited poll: WhatsApp polls cannot change, so the sender is told it did not
/// cross.
fn edited_poll(text: &mut MatrixText) {
    text.kind = MatrixKind::Other;
    text.body = "edited poll".to_owned();
}

/// The names of the options `picked` (answer ids) of the poll `poll`, read from the
/// poll's event; comma-separated, empty for none.
async fn picked_options(room: &Room, poll: &EventId, picked: &[String]) -> String {
    if picked.is_empty() {
        return String::new();
    }
    let answers: Vec<(String, String)> = match room.load_or_fetch_event(poll, None).await {
        Ok(event) => match event.raw().deserialize() {
            Ok(AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::UnstablePollStart(
                SyncMessageLikeEvent::Original(start),
            ))) => start
                .content
                .poll_start()
                .answers
                .iter()
                .map(|a| (a.id.clone(), a.text.clone()))
                .collect(),
            Ok(AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::PollStart(
                SyncMessageLikeEvent::Original(start),
            ))) => start
                .content
                .poll
                .answers
                .iter()
                .map(|a| {
                    (
                        a.id.clone(),
                        a.text.find_plain().unwrap_or_default().to_owned(),
                    )
                })
                .collect(),
            _ => Vec::new(),
        },
        Err(error) => {
            tracing::warn!(room = %room.room_id(), "could not read a poll's options: {error}");
            Vec::new()
        }
    };
    picked
        .iter()
        .map(|id| {
            answers
                .iter()
                .find(|(answer, _)| answer == id)
                .map(|(_, name)| name.clone())
                // An option the poll does not list (or an unreadable poll).
                .unwrap_or_else(|| "an option".to_owned())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `sender`'s display name in `room`, as the bot's store knows it.
pub(super) async fn display_name_in(room: &Room, sender: &UserId) -> Option<String> {
    match room.get_member_no_sync(sender).await {
        Ok(Some(member)) => member.display_name().map(str::to_string),
        _ => None,
    }
}

/// An event of `sender` that carries no text (a redaction, a reaction, a sticker):
/// the caller sets what it does carry.
pub(super) fn without_text(room: &Room, event_id: &str, sender: &str) -> MatrixText {
    MatrixText {
        room_id: room.room_id().to_string(),
        event_id: event_id.to_owned(),
        sender: sender.to_owned(),
        sender_display_name: None,
        kind: MatrixKind::Text,
        body: String::new(),
        html: None,
        is_reply: false,
        relation: MatrixRelation::None,
        media: None,
        location: None,
        poll: None,
        namesakes: Vec::new(),
    }
}
