//! Matrix -> WhatsApp: takes the bot's room events (MatrixEvents), has `relay` decide
//! what the number sends, queues it in the outbox, and its worker sends each item
//! through the association's number: paced, files fetched from the homeserver,
//! replies, edits, deletions and reactions found again through the message links, and
//! reactions gathered in one digest reply when so configured.

use std::time::Duration;

use async_trait::async_trait;

use super::{now_ms, Bridge};
use crate::matrix::{BotRemoved, MatrixEvents, NotQueued, SessionChange};
use crate::relay::ids::{self, CrossedReaction};
use crate::relay::mentions::KnownPerson;
use crate::relay::pacing::Wait;
use crate::relay::to_whatsapp::{self, DigestReply, DigestState, Linked, Refused};
use crate::relay::{self, MatrixPost, MatrixText, Relay, Skip, WhatsAppChange, WhatsAppPost};
use crate::store::{Digest, DigestEntry, Direction, MessageLink, NewOutboxItem, OutboxItem};
use crate::whatsapp::{Outgoing, Quoted, WhatsAppError};

#[async_trait]
impl MatrixEvents for Bridge {
    async fn message(&self, mut message: MatrixText) -> Result<(), NotQueued> {
        let group = self.group_for_room(&message.room_id);
        let name_key = group
            .as_ref()
            .filter(|_| message.shows_sender_name())
            .map(|group| {
                let shown = to_whatsapp::matrix_display_name(
                    &message.sender,
                    message.sender_display_name.as_deref(),
                );
                let (others, key) = self.namesakes(&group.whatsapp, &message.sender, &shown);
                message.namesakes = others;
                key
            });
        let own = match self
            .store
            .is_bridge_event(&message.room_id, &message.event_id)
        {
            Ok(own) => own,
            Err(error) => return Err(NotQueued(error.to_string())),
        };
        let active = self.active();
        let post = match active.relay.from_matrix(group.as_ref(), &message, own) {
            Ok(post) => post,
            Err(skip) => {
                Self::log_skip(skip, "to whatsapp");
                // A sender who may not speak is told once per room, not per message.
                let tell = skip != Skip::NotAllowed
                    || self
                        .refused_senders
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert((message.room_id.clone(), message.sender.clone()));
                if let (Some(notice), Some(group)) = (
                    active.relay.skip_notice(skip, &message).filter(|_| tell),
                    &group,
                ) {
                    self.tell_sender(&group.whatsapp, &message, notice)?;
                }
                return Ok(());
            }
        };
        let Some(group) = group else { return Ok(()) };
        let payload = match serde_json::to_string(&post) {
            Ok(payload) => payload,
            Err(error) => {
                // A bug, not a passing fault: reading the event again would not help.
                tracing::error!("serialising a message: {error}");
                return Ok(());
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
            Ok(true) => {
                if let Some(key) = &name_key {
                    self.note_speaker(&group.whatsapp, &message.sender, key);
                }
                self.wake_to_whatsapp.notify_one();
            }
            Ok(false) => tracing::debug!("Matrix event seen again: already relayed"),
            Err(error) => return Err(NotQueued(error.to_string())),
        }
        Ok(())
    }

    async fn accept_invite(&self, room_id: &str, inviter: &str) -> bool {
        self.should_accept_invite(room_id, inviter).await
    }

    fn session_changed(&self, change: SessionChange) {
        self.matrix_session_changed(change);
    }

    fn bot_removed(&self, removed: BotRemoved) {
        self.bot_removed_from(removed);
    }

    fn bot_joined(&self, room_id: &str) {
        self.bot_back_in(room_id);
        self.successor_joined(room_id);
    }

    fn room_replaced(&self, old: &str, new: &str) {
        self.follow_upgrade(old, new);
    }
}

impl Bridge {
    /// Tells a Matrix sender, in the room, why their message did not cross: within
    /// the notice budget (`relay::notices`), queued like any message for Matrix
    /// (once per event, whatever the retries), so a flood of such events costs the
    /// other rooms nothing.
    fn tell_sender(
        &self,
        group_jid: &str,
        message: &MatrixText,
        notice: String,
    ) -> Result<(), NotQueued> {
        self.queue_notice(
            group_jid,
            &message.room_id,
            &message.sender,
            &message.event_id,
            notice,
        )
    }

    /// Queues `notice` for `sender` in `room_id` about event `about` (once per
    /// event), within the sender's and the room's notice budget.
    pub(super) fn queue_notice(
        &self,
        group_jid: &str,
        room_id: &str,
        sender: &str,
        about: &str,
        notice: String,
    ) -> Result<(), NotQueued> {
        let allowed = self
            .notice_budget
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allow(room_id, sender, now_ms());
        if !allowed {
            tracing::debug!(room = %room_id, "notice to a sender left out: over its budget");
            return Ok(());
        }
        let post = MatrixPost {
            body: notice,
            notice: true,
            ..MatrixPost::default()
        };
        let payload = serde_json::to_string(&post).map_err(|e| NotQueued(e.to_string()))?;
        let source_id = ids::notice_source_id(about);
        let queued = self
            .store
            .enqueue(&NewOutboxItem {
                direction: Direction::ToMatrix,
                target_id: &relay::matrix_txn_for_whatsapp(group_jid, &source_id),
                source_id: &source_id,
                group_jid,
                room_id,
                payload: &payload,
            })
            .map_err(|e| NotQueued(e.to_string()))?;
        if queued {
            self.wake_to_matrix.notify_one();
        }
        Ok(())
    }

    /// Sends one Matrix post through the number: what it is looked up and decided,
    /// its file fetched, its turn taken under the pacing, the sender's line first for
    /// kinds without a caption, then the message itself.
    pub(super) async fn deliver_to_whatsapp(&self, item: OutboxItem) {
        let Some(client) = self.whatsapp() else {
            self.wait_for_side(&item, "WhatsApp not started");
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
            Err(Refused(notice)) => {
                self.finish(&item, None);
                if let Some(text) = notice {
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
        if !self.take_turn(&item).await {
            return;
        }
        // Kinds WhatsApp shows without a caption: the sender's line goes first, under
        // an id of its own derived from the event (a retry sends it once).
        let file_sent = matches!(outgoing, Outgoing::Media { .. });
        if to_whatsapp::sender_line_first(&post, file_sent) {
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
            Ok(()) => self.sent(&item, &post, &outgoing),
            Err(error) => self.send_failed(&item, error).await,
        }
    }

    /// Whether the item may be sent now under the pacing. When not, the worker
    /// waits (everything is over the overall rate) or the item is postponed (its
    /// group is over its own rate: other groups may go ahead, this one keeps order).
    async fn take_turn(&self, item: &OutboxItem) -> bool {
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
            Ok(()) => true,
            Err(Wait::Overall(ms)) => {
                tokio::time::sleep(Duration::from_millis(ms.clamp(1, 60_000) as u64)).await;
                false
            }
            Err(Wait::Group(ms)) => {
                if let Err(error) = self.store.postpone(item.seq, now_ms() + ms) {
                    tracing::error!("store: {error}");
                }
                false
            }
        }
    }

    /// WhatsApp has the message: the link is recorded and the item done.
    fn sent(&self, item: &OutboxItem, post: &WhatsAppPost, outgoing: &Outgoing) {
        let wa_id = match (outgoing, &post.change) {
            // A reaction is found again by its target when it is removed.
            (Outgoing::React { target, .. }, _) => {
                ids::matrix_reaction_link(&target.id, &item.target_id)
            }
            // A reaction counted in a digest: found again by its target when it is
            // removed.
            (_, Some(WhatsAppChange::React { to, .. })) => {
                let target = self
                    .store
                    .link_for_event(&item.room_id, to)
                    .ok()
                    .flatten()
                    .map(|link| link.wa_id)
                    .unwrap_or_default();
                ids::matrix_digest_link(&target, &item.target_id)
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
        self.finish(item, Some(&link));
    }

    /// The send failed: retried later, or, refused for good, set aside and the
    /// sender told.
    async fn send_failed(&self, item: &OutboxItem, error: WhatsAppError) {
        if matches!(
            error,
            WhatsAppError::NotConnected | WhatsAppError::NotLinked
        ) {
            self.wait_for_side(item, &error.to_string());
            return;
        }
        if error.is_retryable() {
            tracing::warn!(
                seq = item.seq,
                attempts = item.attempts,
                "WhatsApp send failed, will retry: {error}"
            );
            self.retry(item, &error.to_string());
            return;
        }
        tracing::error!(
            seq = item.seq,
            "WhatsApp refused a relayed message: {error}"
        );
        let _ = self.store.discard(item.seq, &error.to_string());
        let _ = self
            .matrix
            .send_notice(
                &item.room_id,
                &to_whatsapp::refused_by_whatsapp(&error.reason()),
            )
            .await;
    }

    /// For a Matrix file: fetches it from the homeserver (in the background, see
    /// `background.rs`) and turns the text into the file with its caption (or, for kinds WhatsApp shows without one, the file
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
        let relay = &self.active().relay;
        let matrix = self.matrix.clone();
        let wanted = media.clone();
        let downloaded = self.in_background(
            item,
            |bridge| &bridge.matrix_downloads,
            |bridge| &bridge.wake_to_whatsapp,
            move || async move { matrix.download_media(&wanted).await },
        )?;
        let text = match downloaded {
            Ok(data) if relay.file_fits(data.len() as u64) => {
                let caption = media.kind.has_whatsapp_caption().then(|| text.clone());
                return Some(Outgoing::Media {
                    media: media.clone(),
                    data,
                    caption,
                    reply_to: reply_to.clone(),
                });
            }
            Ok(data) => relay.matrix_file_too_large(post, media, data.len() as u64),
            Err(error) if error.is_homeserver_away() || error.is_session_lost() => {
                self.homeserver_away(item, &error);
                return None;
            }
            Err(error) if error.is_retryable() => {
                self.retry_download(item, "Matrix", &error);
                return None;
            }
            Err(error) => {
                tracing::warn!(seq = item.seq, "Matrix media unavailable: {error}");
                to_whatsapp::matrix_file_unavailable(text, media)
            }
        };
        Some(Outgoing::Text {
            text,
            reply_to: reply_to.clone(),
            mentions: Vec::new(),
        })
    }

    /// The message a reply answers, with the text phones show in its quote: the
    /// Matrix event it was mirrored as or came from, read again from the homeserver
    /// (the bridge keeps no message text), as `relay` shortens it.
    async fn quoted_with_text(&self, item: &OutboxItem, link: MessageLink) -> Quoted {
        let body = self
            .matrix
            .event_body(&item.room_id, &link.event_id)
            .await
            .unwrap_or_default();
        let from_whatsapp = link.origin == Direction::ToMatrix;
        Quoted {
            text: to_whatsapp::quote_preview(&body, from_whatsapp),
            ..quoted(link)
        }
    }

    /// What the number sends for a Matrix post, once the messages it refers to are
    /// looked up. `Err` when nothing is sent, with the notice `relay` words for the
    /// sender when there is one (someone else's message, too late for WhatsApp).
    async fn outgoing_for(
        &self,
        item: &OutboxItem,
        post: &WhatsAppPost,
    ) -> Result<Outgoing, Refused> {
        let link_of = |event_id: &str| self.link_of(item, event_id);
        let relay = &self.active().relay;
        match &post.change {
            None => {
                let reply_to = match post.reply_to.as_deref().and_then(link_of) {
                    Some(link) => Some(self.quoted_with_text(item, link).await),
                    None => None,
                };
                // `@Name` of a person known in the group becomes a WhatsApp mention;
                // not in a caption or a location's line, which carry no mentions.
                let (text, mentions) = if post.media.is_none() && post.location.is_none() {
                    let known: Vec<KnownPerson> = self
                        .store
                        .names_in_group(&item.group_jid)
                        .unwrap_or_else(|error| {
                            tracing::warn!("store: names: {error}");
                            Vec::new()
                        })
                        .into_iter()
                        .map(|(phone, name)| KnownPerson { phone, name })
                        .collect();
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
                    return Err(Refused::silently());
                };
                Ok(Outgoing::Text {
                    text: post.text.clone(),
                    reply_to: Some(quoted(poll)),
                    mentions: Vec::new(),
                })
            }
            Some(WhatsAppChange::Edit { of }) => {
                let target = relay.edit_target(post, link_of(of).map(linked))?;
                Ok(Outgoing::Edit {
                    target,
                    text: post.text.clone(),
                })
            }
            Some(WhatsAppChange::React { to, emoji }) => {
                let target = link_of(to).ok_or_else(Refused::silently)?;
                if relay.reactions_in_digest() {
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
            Some(WhatsAppChange::Revoke { of }) => self.revoke_outgoing(item, post, of).await,
        }
    }

    /// A Matrix redaction: a reaction that crossed is taken back (or leaves the
    /// digest); a message that crossed is deleted for everyone when `relay` allows.
    async fn revoke_outgoing(
        &self,
        item: &OutboxItem,
        post: &WhatsAppPost,
        of: &str,
    ) -> Result<Outgoing, Refused> {
        let link = self.link_of(item, of);
        // A removed Matrix reaction: the digest says so, or the number's
        // reaction goes away.
        let crossed = link
            .as_ref()
            .filter(|link| link.origin == Direction::ToWhatsApp)
            .and_then(|link| ids::crossed_reaction(&link.wa_id));
        if let Some(crossed) = crossed {
            let reactor = link.as_ref().map_or("", |link| link.sender.as_str());
            if !Relay::may_take_back_reaction(post, reactor) {
                tracing::info!(
                    seq = item.seq,
                    "a redaction of someone else's reaction is not relayed"
                );
                return Err(Refused::silently());
            }
            let (CrossedReaction::Digest { target } | CrossedReaction::Reaction { target }) =
                crossed;
            let target = match self.store.link_for_wa(&item.group_jid, target) {
                Ok(Some(target)) => quoted(target),
                // The message it reacted to is not known: nothing to undo.
                _ => return Err(Refused::silently()),
            };
            return match crossed {
                CrossedReaction::Digest { .. } => {
                    self.digest_outgoing(item, target, DigestChange::Remove(of.to_owned()))
                        .await
                }
                CrossedReaction::Reaction { .. } => Ok(Outgoing::React {
                    target,
                    emoji: String::new(),
                }),
            };
        }
        let original = link.map(linked);
        let moderator = match &original {
            Some(original) if Relay::revoke_needs_moderator(post, original) => {
                self.matrix
                    .can_redact_others(&item.room_id, &post.sender)
                    .await
            }
            _ => false,
        };
        let target = self
            .active()
            .relay
            .revoke_target(post, original, moderator)?;
        Ok(Outgoing::Revoke { target })
    }

    /// The link of Matrix event `event_id` in the item's room (a store error is
    /// logged and counts as no link).
    fn link_of(&self, item: &OutboxItem, event_id: &str) -> Option<MessageLink> {
        match self.store.link_for_event(&item.room_id, event_id) {
            Ok(link) => link,
            Err(error) => {
                tracing::error!("store: {error}");
                None
            }
        }
    }

    /// Reaction digest mode: applies `change` to the digest of `target`, and answers
    /// what the number sends, as `relay` decides: a new reply to `target` listing the
    /// reactions, an edit of the reply, or its deletion when nothing is left. The
    /// digest is saved first: a retry of the item computes the same send.
    async fn digest_outgoing(
        &self,
        item: &OutboxItem,
        target: Quoted,
        change: DigestChange,
    ) -> Result<Outgoing, Refused> {
        let store_error = |error: crate::store::StoreError| {
            tracing::error!("store: {error}");
            Refused::silently()
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
        let state = DigestState {
            reply_id: &digest.reply_id,
            reply_sent_at: digest.reply_sent_at,
            was_empty,
            is_empty: digest.entries.is_empty(),
        };
        let outgoing = match to_whatsapp::digest_reply(state, &item.target_id, now) {
            DigestReply::New => {
                digest.reply_id = item.target_id.clone();
                digest.reply_sent_at = now;
                Some(Outgoing::Text {
                    text: self.digest_text(&item.room_id, &digest).await,
                    reply_to: Some(target.clone()),
                    mentions: Vec::new(),
                })
            }
            DigestReply::Edit(reply) => Some(Outgoing::Edit {
                target: reply,
                text: self.digest_text(&item.room_id, &digest).await,
            }),
            // Deleting twice (on a retry) changes nothing.
            DigestReply::Revoke(reply) => Some(Outgoing::Revoke { target: reply }),
            DigestReply::Nothing => None,
        };
        self.store
            .save_digest(&item.group_jid, &target.id, &digest)
            .map_err(store_error)?;
        outgoing.ok_or_else(Refused::silently)
    }

    /// The digest's text, with the names the room shows for each reactor.
    async fn digest_text(&self, room_id: &str, digest: &Digest) -> String {
        let mut reactions = Vec::with_capacity(digest.entries.len());
        for entry in &digest.entries {
            let name = self.matrix.display_name(room_id, &entry.user).await;
            reactions.push((entry.emoji.clone(), name));
        }
        to_whatsapp::digest_text(&reactions)
    }
}

/// A WhatsApp message as a quote or reaction target: its id and author (the WhatsApp
/// person, or the bridge's own number for what came from Matrix).
fn quoted(link: MessageLink) -> Quoted {
    Quoted {
        sender_phone: (link.origin == Direction::ToMatrix).then_some(link.sender),
        id: link.wa_id,
        text: String::new(),
    }
}

/// What `relay` is told of an earlier message from its link.
fn linked(link: MessageLink) -> Linked {
    Linked {
        from_matrix: link.origin == Direction::ToWhatsApp,
        age_secs: now_ms() / 1000 - link.created_at,
        sender: link.sender,
        wa_id: link.wa_id,
    }
}

/// What happens to a reaction digest.
enum DigestChange {
    /// A Matrix reaction is counted in.
    Add(DigestEntry),
    /// The Matrix reaction with this event id was redacted.
    Remove(String),
}
