//! Turns a room event into the relay's `MatrixText`: messages, edits and replies,
//! reactions, redactions, stickers, locations and polls; `None` for what the
//! bridge does not relay (its own events, state).

use matrix_sdk::deserialized_responses::TimelineEvent;
use matrix_sdk::room::Room;
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
use matrix_sdk::RoomState;

use crate::relay::location::Location;
use crate::relay::media::MediaKind;
use crate::relay::{MatrixKind, MatrixPoll, MatrixRelation, MatrixText};

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
        media: media.map(|mut media| {
            media.gif = media.kind == MediaKind::Video && played_as_gif(event);
            if matches!(media.kind, MediaKind::Voice | MediaKind::Audio) {
                media.waveform = waveform_of(event);
            }
            media
        }),
        location,
        poll: None,
        namesakes: Vec::new(),
    })
}

/// Whether a video event asks to be played as a GIF (the `fi.mau.gif` or
/// `fi.mau.loop` hint in its info, which ruma's types do not keep).
fn played_as_gif(event: &TimelineEvent) -> bool {
    let Ok(Some(content)) = event.raw().get_field::<serde_json::Value>("content") else {
        return false;
    };
    let info = &content["info"];
    info["fi.mau.gif"] == true || info["fi.mau.loop"] == true
}

/// The most bars of a waveform sent to WhatsApp (its voice notes have 64).
const MAX_WAVEFORM_BARS: usize = 64;

/// A voice message's waveform (MSC1767/MSC3246: up to 1024 per bar) as WhatsApp
/// draws it: at most [`MAX_WAVEFORM_BARS`] bars of 0 to 100. Empty without one.
fn waveform_of(event: &TimelineEvent) -> Vec<u8> {
    let Ok(Some(content)) = event.raw().get_field::<serde_json::Value>("content") else {
        return Vec::new();
    };
    let Some(bars) = content["org.matrix.msc1767.audio"]["waveform"].as_array() else {
        return Vec::new();
    };
    let values: Vec<u64> = bars.iter().filter_map(serde_json::Value::as_u64).collect();
    if values.is_empty() {
        return Vec::new();
    }
    let per_bar = values.len().div_ceil(MAX_WAVEFORM_BARS);
    values
        .chunks(per_bar)
        .map(|chunk| {
            let loudest = chunk.iter().copied().max().unwrap_or(0).min(1024);
            u8::try_from(loudest * 100 / 1024).unwrap_or(100)
        })
        .collect()
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
        ..MatrixText::default()
    }
}
