//! Matrix -> WhatsApp: takes the bot's room events (MatrixEvents), has `relay` decide
//! what the number sends, queues it in the outbox, and its worker sends each item
//! through the association's number: paced, files fetched from the homeserver,
//! replies, edits, deletions and reactions found again through the message links, and
//! reactions gathered in one digest reply when so configured.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{now_ms, Bridge};
use crate::config::ReactionsToWhatsApp;
use crate::matrix::MatrixEvents;
use crate::relay::pacing::Wait;
use crate::relay::{self, MatrixText, Skip, WhatsAppChange, WhatsAppPost};
use crate::store::{Digest, DigestEntry, Direction, MessageLink, NewOutboxItem, OutboxItem};
use crate::whatsapp::{Outgoing, Quoted, WhatsAppError};

/// How long WhatsApp lets a sender edit a message.
const WHATSAPP_EDIT_WINDOW_SECS: i64 = 15 * 60;
/// How long WhatsApp lets a sender delete a message for everyone (about 2.5 days).
const WHATSAPP_REVOKE_WINDOW_SECS: i64 = 60 * 3600;

/// Prefix of the link of a Matrix reaction relayed as the number's reaction:
/// `mx-reaction:<target WhatsApp id>:<reaction id>`.
const MATRIX_REACTION_LINK: &str = "mx-reaction:";

/// Prefix of the link a Matrix reaction counted in a digest gets, followed by the
/// WhatsApp message it reacts to and the outbox item's id.
const MATRIX_DIGEST_LINK: &str = "mx-digest:";

#[async_trait]
impl MatrixEvents for Bridge {
    async fn message(&self, message: MatrixText) {
        let group = self.group_for_room(&message.room_id);
        let own = match self
            .store
            .is_bridge_event(&message.room_id, &message.event_id)
        {
            Ok(own) => own,
            Err(error) => {
                tracing::error!("store: {error}");
                return;
            }
        };
        let active = self.active();
        let post = match active.relay.from_matrix(group.as_ref(), &message, own) {
            Ok(post) => post,
            Err(Skip::NotAllowed) => {
                let first_time = self
                    .refused_senders
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert((message.room_id.clone(), message.sender.clone()));
                if first_time {
                    let notice = format!(
                        "{}: your messages are not relayed to WhatsApp (not allowed by this group's settings; ask the administrator).",
                        message.sender
                    );
                    let _ = self.matrix.send_notice(&message.room_id, &notice).await;
                }
                return;
            }
            Err(Skip::Unsupported) => {
                let notice = format!(
                    "{}: {} messages are not relayed to WhatsApp yet; texts, files, stickers, locations and polls are.",
                    message.sender,
                    message.body.trim_start_matches("m.")
                );
                let _ = self.matrix.send_notice(&message.room_id, &notice).await;
                return;
            }
            Err(Skip::PollDoesNotFit) => {
                let notice = format!(
                    "{}: WhatsApp polls have 2 to {} different options; this poll was not relayed.",
                    message.sender,
                    relay::MatrixPoll::MAX_OPTIONS
                );
                let _ = self.matrix.send_notice(&message.room_id, &notice).await;
                return;
            }
            Err(Skip::TooLong) => {
                let notice = format!(
                    "{}: your message is too long for WhatsApp (over {} characters) and was not relayed.",
                    message.sender,
                    relay::WHATSAPP_MAX_TEXT_CHARS
                );
                let _ = self.matrix.send_notice(&message.room_id, &notice).await;
                return;
            }
            Err(skip) => {
                Self::log_skip(skip, "to whatsapp");
                return;
            }
        };
        let Some(group) = group else { return };
        let payload = match serde_json::to_string(&post) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!("serialising a message: {error}");
                return;
            }
        };
        let target_id = relay::whatsapp_id_for_event(&message.event_id);
        match self.store.enqueue(&NewOutboxItem {
            direction: Direction::ToWhatsApp,
            source_id: &message.event_id,
            target_id: &target_id,
            group_jid: &group.whatsapp,
            room_id: &message.room_id,
            payload: &payload,
        }) {
            Ok(true) => self.wake_to_whatsapp.notify_one(),
            Ok(false) => tracing::debug!("Matrix event seen again: already relayed"),
            Err(error) => tracing::error!("store: could not queue a Matrix message: {error}"),
        }
    }

    async fn accept_invite(&self, room_id: &str, inviter: &str) -> bool {
        self.should_accept_invite(room_id, inviter).await
    }
}

impl Bridge {
    pub(super) async fn to_whatsapp_worker(self: Arc<Self>) {
        loop {
            match self.store.next_due(Direction::ToWhatsApp, now_ms()) {
                Ok(Some(item)) => self.deliver_to_whatsapp(item).await,
                Ok(None) => self.wait_for_work(Direction::ToWhatsApp).await,
                Err(error) => {
                    tracing::error!("store: {error}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn deliver_to_whatsapp(&self, item: OutboxItem) {
        let Some(client) = self.whatsapp() else {
            self.retry(&item, "WhatsApp not started");
            return;
        };
        let post: WhatsAppPost = match serde_json::from_str(&item.payload) {
            Ok(post) => post,
            Err(error) => {
                tracing::error!(seq = item.seq, "unreadable outbox item discarded: {error}");
                let _ = self.store.discard(item.seq, "unreadable payload");
                return;
            }
        };
        let outgoing = match self.outgoing_for(&item, &post).await {
            Ok(outgoing) => outgoing,
            Err(refusal) => {
                self.finish(&item, None);
                if let Some(text) = refusal {
                    let _ = self.matrix.send_notice(&item.room_id, &text).await;
                }
                return;
            }
        };
        let Some(outgoing) = self.attach_matrix_file(&item, &post, outgoing).await else {
            return;
        };
        let outgoing = match (&post.location, &post.poll, outgoing) {
            (Some(location), _, Outgoing::Text { .. }) => Outgoing::Location {
                location: location.clone(),
            },
            (_, Some(poll), Outgoing::Text { .. }) => Outgoing::Poll {
                question: poll.question.clone(),
                options: poll.options.clone(),
                max_selections: poll.max_selections,
            },
            (_, _, outgoing) => outgoing,
        };
        let group_rate = self
            .active()
            .groups
            .get(&item.group_jid)
            .and_then(|group| group.messages_per_minute);
        let paced = self
            .pacer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_send(&item.group_jid, group_rate, now_ms());
        match paced {
            Ok(()) => {}
            Err(Wait::Overall(ms)) => {
                tokio::time::sleep(Duration::from_millis(ms.clamp(1, 60_000) as u64)).await;
                return;
            }
            Err(Wait::Group(ms)) => {
                // Other groups may go ahead meanwhile; this one keeps its order.
                if let Err(error) = self.store.postpone(item.seq, now_ms() + ms) {
                    tracing::error!("store: {error}");
                }
                return;
            }
        }
        // Kinds WhatsApp shows without a caption: the sender's line goes first, under
        // an id of its own derived from the event (a retry sends it once).
        if matches!(
            outgoing,
            Outgoing::Media { caption: None, .. }
                | Outgoing::Location { .. }
                | Outgoing::Poll { .. }
        ) {
            let line = Outgoing::Text {
                text: post.text.clone(),
                reply_to: None,
                mentions: Vec::new(),
            };
            let line_id = relay::whatsapp_id_for_event(&format!("{}#sender", item.source_id));
            if let Err(error) = client.send(&item.group_jid, &line_id, &line).await {
                tracing::warn!(seq = item.seq, "WhatsApp send failed, will retry: {error}");
                self.retry(&item, &error.to_string());
                return;
            }
        }
        match client
            .send(&item.group_jid, &item.target_id, &outgoing)
            .await
        {
            Ok(()) => {
                // A reaction is found again by its target when it is removed.
                let wa_id = match (&outgoing, &post.change) {
                    (Outgoing::React { target, .. }, _) => {
                        format!("{MATRIX_REACTION_LINK}{}:{}", target.id, item.target_id)
                    }
                    // A reaction counted in a digest: found again by its target when
                    // it is removed.
                    (_, Some(WhatsAppChange::React { to, .. })) => {
                        let target = self
                            .store
                            .link_for_event(&item.room_id, to)
                            .ok()
                            .flatten()
                            .map(|link| link.wa_id)
                            .unwrap_or_default();
                        format!("{MATRIX_DIGEST_LINK}{target}:{}", item.target_id)
                    }
                    _ => item.target_id.clone(),
                };
                let link = MessageLink {
                    group_jid: item.group_jid.clone(),
                    wa_id,
                    room_id: item.room_id.clone(),
                    event_id: item.source_id.clone(),
                    origin: Direction::ToWhatsApp,
                    created_at: now_ms() / 1000,
                    sender: post.sender.clone(),
                };
                self.finish(&item, Some(&link));
            }
            Err(error) if error.is_retryable() => {
                if item.attempts == 0
                    || !matches!(
                        error,
                        WhatsAppError::NotConnected | WhatsAppError::NotLinked
                    )
                {
                    tracing::warn!(
                        seq = item.seq,
                        attempts = item.attempts,
                        "WhatsApp send failed, will retry: {error}"
                    );
                }
                self.retry(&item, &error.to_string());
            }
            Err(error) => {
                tracing::error!(
                    seq = item.seq,
                    "WhatsApp refused a relayed message: {error}"
                );
                let _ = self.store.discard(item.seq, &error.to_string());
                let _ = self
                    .matrix
                    .send_notice(
                        &item.room_id,
                        &format!(
                            "This message could not be sent to WhatsApp: {}",
                            error.reason()
                        ),
                    )
                    .await;
            }
        }
    }

    /// For a Matrix file: fetches it from the homeserver and turns the text into the
    /// file with its caption (or, for kinds WhatsApp shows without one, the file
    /// alone: the caller sends the text as its own line first). `None` when the item
    /// must wait (a retry is scheduled). A file that cannot be had becomes a line
    /// saying so: said, never dropped.
    async fn attach_matrix_file(
        &self,
        item: &OutboxItem,
        post: &WhatsAppPost,
        outgoing: Outgoing,
    ) -> Option<Outgoing> {
        let (Some(media), Outgoing::Text { text, reply_to, .. }) = (&post.media, &outgoing) else {
            return Some(outgoing);
        };
        let limit = self.active().config.relay.max_file_bytes;
        let text = match self.matrix.download_media(media).await {
            Ok(data) if (data.len() as u64) <= limit => {
                let caption = media.kind.has_whatsapp_caption().then(|| text.clone());
                return Some(Outgoing::Media {
                    media: media.clone(),
                    data,
                    caption,
                    reply_to: reply_to.clone(),
                });
            }
            Ok(data) => self
                .active()
                .relay
                .matrix_file_too_large(post, media, data.len() as u64),
            Err(error) if error.is_retryable() => {
                tracing::warn!(
                    seq = item.seq,
                    attempts = item.attempts,
                    "Matrix media download failed, will retry: {error}"
                );
                self.retry(item, &error.to_string());
                return None;
            }
            Err(error) => {
                tracing::warn!(seq = item.seq, "Matrix media unavailable: {error}");
                format!(
                    "{text}\n_({} could not be fetched from Matrix: see it there)_",
                    media.kind.with_article()
                )
            }
        };
        Some(Outgoing::Text {
            text,
            reply_to: reply_to.clone(),
            mentions: Vec::new(),
        })
    }

    /// What the number sends for a Matrix post, once the messages it refers to are
    /// looked up. `Err` when nothing is sent: with a notice for the sender when the
    /// change is refused (someone else's message, too late for WhatsApp), without
    /// one when there is nothing to change (a message that never crossed).
    async fn outgoing_for(
        &self,
        item: &OutboxItem,
        post: &WhatsAppPost,
    ) -> Result<Outgoing, Option<String>> {
        let link_of = |event_id: &str| match self.store.link_for_event(&item.room_id, event_id) {
            Ok(link) => link,
            Err(error) => {
                tracing::error!("store: {error}");
                None
            }
        };
        let age_secs = |link: &MessageLink| now_ms() / 1000 - link.created_at;
        // A WhatsApp message as a quote or reaction target: its id and author (the
        // WhatsApp person, or the bridge's own number for what came from Matrix).
        let quoted = |link: MessageLink| Quoted {
            sender_phone: (link.origin == Direction::ToMatrix).then_some(link.sender),
            id: link.wa_id,
        };
        match &post.change {
            None => {
                let reply_to = post.reply_to.as_deref().and_then(link_of).map(quoted);
                // `@Name` of a person known in the group becomes a WhatsApp mention;
                // not in a caption or a location's line, which carry no mentions.
                let (text, mentions) = if post.media.is_none() && post.location.is_none() {
                    let known =
                        self.store
                            .names_in_group(&item.group_jid)
                            .unwrap_or_else(|error| {
                                tracing::warn!("store: names: {error}");
                                Vec::new()
                            });
                    relay::mentions::whatsapp_mentions(&post.text, &known)
                } else {
                    (post.text.clone(), Vec::new())
                };
                Ok(Outgoing::Text {
                    text,
                    reply_to,
                    mentions,
                })
            }
            Some(WhatsAppChange::AnswerPoll { poll }) => {
                // Only a Matrix poll that crossed has a WhatsApp poll to answer.
                let Some(poll) = link_of(poll).filter(|link| link.origin == Direction::ToWhatsApp)
                else {
                    tracing::debug!("answer to a Matrix poll that never crossed: not relayed");
                    return Err(None);
                };
                Ok(Outgoing::Text {
                    text: post.text.clone(),
                    reply_to: Some(quoted(poll)),
                    mentions: Vec::new(),
                })
            }
            Some(WhatsAppChange::Edit { of }) => {
                let link = link_of(of)
                    .filter(|link| link.origin == Direction::ToWhatsApp)
                    .ok_or(None)?;
                if link.sender != post.sender {
                    return Err(Some(format!(
                        "{}: only the author of a message can edit it; the edit was not relayed to WhatsApp.",
                        post.sender
                    )));
                }
                if age_secs(&link) > WHATSAPP_EDIT_WINDOW_SECS {
                    return Err(Some(format!(
                        "{}: WhatsApp allows edits for {} minutes only; the edit was not relayed.",
                        post.sender,
                        WHATSAPP_EDIT_WINDOW_SECS / 60
                    )));
                }
                Ok(Outgoing::Edit {
                    target: link.wa_id,
                    text: post.text.clone(),
                })
            }
            Some(WhatsAppChange::React { to, emoji }) => {
                let target = link_of(to).ok_or(None)?;
                if self.active().config.relay.reactions_to_whatsapp == ReactionsToWhatsApp::Digest {
                    let entry = DigestEntry {
                        reaction_event: item.source_id.clone(),
                        user: post.sender.clone(),
                        emoji: emoji.clone(),
                    };
                    return self
                        .digest_outgoing(item, quoted(target), DigestChange::Add(entry))
                        .await;
                }
                Ok(Outgoing::React {
                    target: quoted(target),
                    emoji: emoji.clone(),
                })
            }
            Some(WhatsAppChange::Revoke { of }) => {
                // Only messages that came from Matrix: the bot's mirrors of WhatsApp
                // messages are Matrix-side copies, deleting them deletes nothing there.
                let link = link_of(of)
                    .filter(|link| link.origin == Direction::ToWhatsApp)
                    .ok_or(None)?;
                // When `link` is a Matrix reaction's (`<prefix><target>:<item>`): the
                // WhatsApp message it reacted to (none known: nothing to undo).
                let reacted_to = |prefix: &str| {
                    let (target, _) = link.wa_id.strip_prefix(prefix)?.rsplit_once(':')?;
                    let target = self.store.link_for_wa(&item.group_jid, target);
                    Some(target.ok().flatten().map(quoted).ok_or(None))
                };
                // A removed Matrix reaction counted in a digest: the digest says so.
                if let Some(target) = reacted_to(MATRIX_DIGEST_LINK) {
                    return self
                        .digest_outgoing(item, target?, DigestChange::Remove(of.clone()))
                        .await;
                }
                // A removed Matrix reaction: the number's reaction goes away.
                if let Some(target) = reacted_to(MATRIX_REACTION_LINK) {
                    return Ok(Outgoing::React {
                        target: target?,
                        emoji: String::new(),
                    });
                }
                let allowed = link.sender == post.sender
                    || self
                        .matrix
                        .can_redact_others(&item.room_id, &post.sender)
                        .await;
                if !allowed {
                    return Err(None);
                }
                if age_secs(&link) > WHATSAPP_REVOKE_WINDOW_SECS {
                    return Err(Some(format!(
                        "{}: WhatsApp allows deleting a message for everyone for {} hours only; it stays in the WhatsApp group.",
                        post.sender,
                        WHATSAPP_REVOKE_WINDOW_SECS / 3600
                    )));
                }
                Ok(Outgoing::Revoke { target: link.wa_id })
            }
        }
    }

    /// Reaction digest mode: applies `change` to the digest of `target`, and answers
    /// what the number sends: a new reply to `target` listing the reactions, an edit
    /// of the reply while WhatsApp allows edits, or its deletion when nothing is
    /// left. The digest is saved first: a retry of the item computes the same send.
    async fn digest_outgoing(
        &self,
        item: &OutboxItem,
        target: Quoted,
        change: DigestChange,
    ) -> Result<Outgoing, Option<String>> {
        let store_error = |error: crate::store::StoreError| {
            tracing::error!("store: {error}");
            None
        };
        let mut digest = self
            .store
            .digest(&item.group_jid, &target.id)
            .map_err(store_error)?;
        let was_empty = digest.entries.is_empty();
        match change {
            DigestChange::Add(entry) => {
                if !digest
                    .entries
                    .iter()
                    .any(|known| known.reaction_event == entry.reaction_event)
                {
                    digest.entries.push(entry);
                }
            }
            DigestChange::Remove(reaction_event) => digest
                .entries
                .retain(|known| known.reaction_event != reaction_event),
        }
        let now = now_ms() / 1000;
        let age = now - digest.reply_sent_at;
        let has_reply = !digest.reply_id.is_empty();
        let outgoing = if digest.reply_id == item.target_id
            || (!digest.entries.is_empty()
                && (was_empty || !has_reply || age > WHATSAPP_EDIT_WINDOW_SECS))
        {
            // A new reply (or this item's own, sent again under the same id).
            digest.reply_id = item.target_id.clone();
            digest.reply_sent_at = now;
            Outgoing::Text {
                text: self.digest_text(&item.room_id, &digest).await,
                reply_to: Some(target.clone()),
                mentions: Vec::new(),
            }
        } else if digest.entries.is_empty() {
            // Nobody's reaction is left: the reply goes (again, on a retry: deleting
            // twice changes nothing), as long as WhatsApp allows.
            if !has_reply || age > WHATSAPP_REVOKE_WINDOW_SECS {
                self.store
                    .save_digest(&item.group_jid, &target.id, &digest)
                    .map_err(store_error)?;
                return Err(None);
            }
            Outgoing::Revoke {
                target: digest.reply_id.clone(),
            }
        } else {
            Outgoing::Edit {
                target: digest.reply_id.clone(),
                text: self.digest_text(&item.room_id, &digest).await,
            }
        };
        self.store
            .save_digest(&item.group_jid, &target.id, &digest)
            .map_err(store_error)?;
        Ok(outgoing)
    }

    /// `👍 Alice, Bob · ❤️ Carol`: each emoji once, in the order they came, with who
    /// reacted so.
    async fn digest_text(&self, room_id: &str, digest: &Digest) -> String {
        let mut by_emoji: Vec<(String, Vec<String>)> = Vec::new();
        for entry in &digest.entries {
            let name = self.matrix.display_name(room_id, &entry.user).await;
            match by_emoji.iter_mut().find(|(emoji, _)| *emoji == entry.emoji) {
                Some((_, names)) if names.contains(&name) => {}
                Some((_, names)) => names.push(name),
                None => by_emoji.push((entry.emoji.clone(), vec![name])),
            }
        }
        by_emoji
            .iter()
            .map(|(emoji, names)| format!("{} {}", relay::single_line(emoji), names.join(", ")))
            .collect::<Vec<_>>()
            .join(" · ")
    }
}

/// What happens to a reaction digest.
enum DigestChange {
    /// A Matrix reaction is counted in.
    Add(DigestEntry),
    /// The Matrix reaction with this event id was redacted.
    Remove(String),
}
