//! WhatsApp -> Matrix: takes what the WhatsApp side receives (InboundSink), has
//! `relay` decide what the room gets, queues it in the outbox, and its worker posts
//! each item to Matrix: the file fetched from WhatsApp, replies, edits, deletions and
//! reactions found again through the message links.

use super::{now_ms, Bridge};
use crate::relay::media::Media;
use crate::relay::{
    self, ids, to_matrix, MatrixChange, MatrixPost, Mention, PollVoter, Shared, Skip, WhatsAppText,
};
use crate::store::{DigestEntry, Direction, MessageLink, NewOutboxItem, OutboxItem, PollVote};
use crate::whatsapp::{ConnectionState, GroupChange, InboundSink, SinkError, WhatsAppError};

impl InboundSink for Bridge {
    fn message(&self, mut message: WhatsAppText) -> Result<(), SinkError> {
        let active = self.active();
        let group = active.groups.get(&message.group_jid);
        let mut name_key = None;
        if group.is_some() {
            self.resolve_sender_name(&mut message);
            self.count_vote(&mut message)
                .map_err(|e| SinkError(e.to_string()))?;
            if !message.sender_phone.is_empty() {
                let shown = to_matrix::whatsapp_own_name(&message);
                let (others, key) =
                    self.namesakes(&message.group_jid, &message.sender_phone, &shown);
                message.namesakes = others;
                name_key = Some(key);
            }
        }
        let own = self
            .store
            .is_bridge_wa_message(&message.group_jid, &message.message_id)
            .map_err(|e| SinkError(e.to_string()))?;
        let post = match active.relay.from_whatsapp(group, &message, own) {
            Ok(post) => post,
            Err(Skip::ForgedId) => {
                tracing::info!("refused a WhatsApp message whose id no WhatsApp app makes");
                self.count_forgery();
                return Ok(());
            }
            Err(skip) => {
                Self::log_skip(skip, "to matrix");
                return Ok(());
            }
        };
        let payload = serde_json::to_string(&post).map_err(|e| SinkError(e.to_string()))?;
        let room_id = self
            .store
            .room_for_group(&message.group_jid)
            .map_err(|e| SinkError(e.to_string()))?
            .unwrap_or_default();
        let target_id = relay::matrix_txn_for_whatsapp(&message.group_jid, &message.message_id);
        let queued = self
            .store
            .enqueue(&NewOutboxItem {
                direction: Direction::ToMatrix,
                source_id: &message.message_id,
                target_id: &target_id,
                group_jid: &message.group_jid,
                room_id: &room_id,
                payload: &payload,
            })
            .map_err(|e| SinkError(e.to_string()))?;
        if let Some(key) = &name_key {
            self.note_speaker(&message.group_jid, &message.sender_phone, key);
        }
        if queued {
            self.wake_to_matrix.notify_one();
        } else {
            tracing::debug!("WhatsApp message delivered again: already relayed");
        }
        Ok(())
    }

    fn bridges(&self, group_jid: &str) -> bool {
        self.active().groups.contains_key(group_jid)
    }

    fn group_changed(&self, group_jid: &str, change: GroupChange) {
        self.mirror_group_change(group_jid, change);
    }

    fn connection(&self, state: ConnectionState) {
        self.connection_changed(state);
    }
}

/// What became of a post sent to Matrix.
enum Sent {
    /// Sent: WhatsApp message `wa_id` is mirrored by `event_id`, written by `sender`.
    Linked {
        wa_id: String,
        event_id: String,
        sender: String,
    },
    /// Done, with nothing to link.
    Unlinked,
    /// Its file is being uploaded; the item is due again when that is done.
    Waiting,
}

impl Bridge {
    pub(super) async fn deliver_to_matrix(&self, item: OutboxItem) {
        let room_id = if item.room_id.is_empty() {
            self.store.room_for_group(&item.group_jid).ok().flatten()
        } else {
            Some(item.room_id.clone())
        };
        let Some(room_id) = room_id else {
            self.wait_for_side(&item, "room not set up yet");
            return;
        };
        let post: MatrixPost = match serde_json::from_str(&item.payload) {
            Ok(post) => post,
            Err(error) => {
                tracing::error!(seq = item.seq, "unreadable outbox item discarded: {error}");
                let _ = self.store.discard(item.seq, "unreadable payload");
                return;
            }
        };
        // A file already with its upload is not fetched again (the upload has it).
        let fetched = if self.matrix_uploads.has(item.seq) {
            Some((post, Some(Vec::new())))
        } else {
            self.fetch_whatsapp_file(&item, post).await
        };
        let Some((post, file)) = fetched else {
            return;
        };
        let sent = self.send_to_matrix(&item, &room_id, post, file).await;
        if sent.is_ok() {
            self.homeserver_back();
        }
        match sent {
            Ok(Sent::Waiting) => {}
            Ok(Sent::Linked {
                wa_id,
                event_id,
                sender,
            }) => {
                let link = MessageLink {
                    group_jid: item.group_jid.clone(),
                    wa_id,
                    room_id,
                    event_id,
                    origin: Direction::ToMatrix,
                    created_at: now_ms() / 1000,
                    sender,
                };
                self.finish(&item, Some(&link));
            }
            Ok(Sent::Unlinked) => self.finish(&item, None),
            Err(error) if error.is_homeserver_away() || error.is_session_lost() => {
                self.homeserver_away(&item, &error)
            }
            Err(error) if error.is_retryable() => {
                tracing::warn!(
                    seq = item.seq,
                    attempts = item.attempts,
                    "Matrix send failed, will retry: {error}"
                );
                self.retry(&item, &error.to_string());
            }
            Err(error) => {
                tracing::error!(seq = item.seq, "Matrix refused a relayed message: {error}");
                self.note_error(&format!("Matrix refused a relayed message: {error}"));
                let _ = self.store.discard(item.seq, &error.to_string());
                let _ = self
                    .matrix
                    .send_notice(&room_id, to_matrix::REFUSED_BY_HOMESERVER)
                    .await;
            }
        }
    }

    /// The bytes of a WhatsApp post's file, fetched from WhatsApp in the background
    /// ([`Self::background_download`]): `None` while the item waits for it (or for
    /// WhatsApp), and the worker goes on with other groups. A file that cannot be
    /// had, or turns out larger than announced and over the limit, becomes a notice
    /// in the post's place: said, never dropped.
    async fn fetch_whatsapp_file(
        &self,
        item: &OutboxItem,
        mut post: MatrixPost,
    ) -> Option<(MatrixPost, Option<Vec<u8>>)> {
        let Some(media) = post.media.clone().filter(|_| post.change.is_none()) else {
            return Some((post, None));
        };
        let relay = &self.active().relay;
        let fetched = self.background_download(item, &media, relay.max_file_bytes())?;
        let (body, html) = match fetched {
            Ok(data) => return Some((post, Some(data))),
            // Larger than it said, or than the bridge relays: cut off, and said.
            Err(WhatsAppError::TooLarge { received_over })
                if received_over < relay.max_file_bytes() =>
            {
                to_matrix::whatsapp_file_not_as_declared(&post.sender_name, &media)
            }
            Err(WhatsAppError::TooLarge { received_over }) => relay.whatsapp_file_too_large(
                &media,
                &post.sender_name,
                "WhatsApp",
                received_over + 1,
            ),
            Err(error @ WhatsAppError::Transient(_))
                if item.attempts + 1 >= to_matrix::MAX_DOWNLOAD_ATTEMPTS =>
            {
                tracing::warn!(
                    seq = item.seq,
                    attempts = item.attempts,
                    "WhatsApp media download given up: {error}"
                );
                to_matrix::whatsapp_file_unavailable(&post.sender_name, &media)
            }
            Err(error @ (WhatsAppError::NotConnected | WhatsAppError::NotLinked)) => {
                self.wait_for_side(item, &error.to_string());
                return None;
            }
            Err(error) if error.is_retryable() => {
                self.retry_download(item, "WhatsApp", &error);
                return None;
            }
            Err(error) => {
                tracing::warn!(seq = item.seq, "WhatsApp media unavailable: {error}");
                to_matrix::whatsapp_file_unavailable(&post.sender_name, &media)
            }
        };
        post.body = body;
        post.html = html;
        post.media = None;
        Some((post, None))
    }

    /// The outcome of item `item`'s download once it is done, else `None` (it runs
    /// in the background: see `background.rs`).
    fn background_download(
        &self,
        item: &OutboxItem,
        media: &Media,
        max_bytes: u64,
    ) -> Option<Result<Vec<u8>, WhatsAppError>> {
        let Some(client) = self.whatsapp().cloned() else {
            self.wait_for_side(item, "WhatsApp not started");
            return None;
        };
        let media = media.clone();
        self.in_background(
            item,
            |bridge| &bridge.whatsapp_downloads,
            |bridge| &bridge.wake_to_matrix,
            move || async move { client.download(&media, max_bytes).await },
        )
    }

    /// Counts a WhatsApp edit, deletion or id refused because its sender may not make
    /// it.
    fn count_forgery(&self) {
        self.forgeries_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The link of WhatsApp message `wa_id` of the item's group (its Matrix event and
    /// author).
    fn mirrored_link(&self, item: &OutboxItem, wa_id: &str) -> Option<MessageLink> {
        match self.store.link_for_wa(&item.group_jid, wa_id) {
            Ok(link) => link,
            Err(error) => {
                tracing::error!("store: {error}");
                None
            }
        }
    }

    /// The Matrix event mirroring WhatsApp message `wa_id` of the item's group.
    fn mirrored_event(&self, item: &OutboxItem, wa_id: &str) -> Option<String> {
        self.mirrored_link(item, wa_id).map(|link| link.event_id)
    }

    /// Sends one WhatsApp post to Matrix (a file is uploaded and posted in the
    /// background: see `background.rs`). Says what to link, that there is nothing
    /// to link (a deletion or reaction about a message the bridge never
    /// mirrored), or that the item waits for its upload.
    async fn send_to_matrix(
        &self,
        item: &OutboxItem,
        room_id: &str,
        post: MatrixPost,
        file: Option<Vec<u8>>,
    ) -> Result<Sent, crate::matrix::MatrixError> {
        let txn = item.target_id.as_str();
        let linked = |event_id: String| Sent::Linked {
            wa_id: item.source_id.clone(),
            event_id,
            sender: post.sender.clone(),
        };
        match &post.change {
            None => {
                let replied = post
                    .reply_to
                    .as_deref()
                    .and_then(|id| self.mirrored_link(item, id));
                let reply_event = replied.as_ref().map(|link| link.event_id.clone());
                let mut shown = match (&post.reply_to, &reply_event, &post.quoted) {
                    // Replying to a message the bridge never saw: quote what WhatsApp
                    // quoted, so the reply still reads as one.
                    (Some(_), None, Some(quoted)) => to_matrix::with_quote(&post, quoted),
                    _ => post.clone(),
                };
                if let Some(link) = &replied {
                    shown.mentions = to_matrix::notified_by_reply(
                        link.origin == Direction::ToWhatsApp,
                        &link.sender,
                    );
                }
                let event_id = match (&post.media, file) {
                    (Some(media), Some(data)) => {
                        let matrix = self.matrix.clone();
                        let (room, txn, media) =
                            (room_id.to_owned(), txn.to_owned(), media.clone());
                        let upload = move || async move {
                            matrix
                                .send_media(
                                    &room,
                                    &txn,
                                    &shown,
                                    &media,
                                    data,
                                    reply_event.as_deref(),
                                )
                                .await
                        };
                        match self.in_background(
                            item,
                            |bridge| &bridge.matrix_uploads,
                            |bridge| &bridge.wake_to_matrix,
                            upload,
                        ) {
                            Some(posted) => posted?,
                            None => return Ok(Sent::Waiting),
                        }
                    }
                    _ => {
                        self.matrix
                            .send_post(room_id, txn, &shown, reply_event.as_deref())
                            .await?
                    }
                };
                self.send_more_parts(room_id, txn, &post).await?;
                Ok(linked(event_id))
            }
            Some(MatrixChange::Edit { of, tally }) => match self.mirrored_link(item, of) {
                Some(original)
                    if *tally || to_matrix::edit_is_authors(&original.sender, &post.sender) =>
                {
                    let event_id = self
                        .matrix
                        .edit_post(room_id, txn, &original.event_id, &post)
                        .await?;
                    self.send_more_parts(room_id, txn, &post).await?;
                    Ok(linked(event_id))
                }
                // A modified client's edit of someone else's message: said, not applied.
                Some(_) => {
                    tracing::warn!(
                        seq = item.seq,
                        "a WhatsApp edit by someone other than the author was not applied"
                    );
                    self.count_forgery();
                    let notice = to_matrix::forged_edit_notice(&post.sender_name);
                    self.matrix.send_post(room_id, txn, &notice, None).await?;
                    Ok(Sent::Unlinked)
                }
                // The original never crossed: the new text is still worth reading.
                None => {
                    let event_id = self.matrix.send_post(room_id, txn, &post, None).await?;
                    self.send_more_parts(room_id, txn, &post).await?;
                    Ok(linked(event_id))
                }
            },
            Some(MatrixChange::Redact { of, by_admin }) => match self.mirrored_link(item, of) {
                Some(original)
                    if to_matrix::deletion_is_allowed(
                        &original.sender,
                        &post.sender,
                        *by_admin,
                    ) =>
                {
                    let event_id = self.matrix.redact(room_id, txn, &original.event_id).await?;
                    Ok(linked(event_id))
                }
                // A modified client's deletion of a message that is not its sender's.
                Some(_) => {
                    tracing::debug!(
                        seq = item.seq,
                        "a WhatsApp deletion by someone who may not delete was ignored"
                    );
                    self.count_forgery();
                    Ok(Sent::Unlinked)
                }
                None => Ok(Sent::Unlinked),
            },
            Some(MatrixChange::Annotation { to, reactor, emoji }) => {
                self.annotate(item, room_id, to, reactor, emoji).await?;
                Ok(Sent::Unlinked)
            }
            Some(MatrixChange::ReplyLine { to, key, removed }) => {
                self.reply_line(item, room_id, &post, to, key, *removed)
                    .await
            }
        }
    }

    /// The further parts of a text too long for one event, in order, each under a
    /// transaction id of its own derived from the item's: a retry after a failure
    /// half-way sends none twice.
    async fn send_more_parts(
        &self,
        room_id: &str,
        txn: &str,
        post: &MatrixPost,
    ) -> Result<(), crate::matrix::MatrixError> {
        for (index, part) in post.more_parts.iter().enumerate() {
            let shown = MatrixPost {
                body: part.body.clone(),
                html: part.html.clone(),
                ..MatrixPost::default()
            };
            let part_txn = format!("{txn}.{}", index + 2);
            self.matrix
                .send_post(room_id, &part_txn, &shown, None)
                .await?;
        }
        Ok(())
    }

    /// A line of the bot about WhatsApp message `to` (a reaction, a poll's tally),
    /// found again by `key`: posted as a reply, edited when it changes, redacted
    /// when `removed`.
    async fn reply_line(
        &self,
        item: &OutboxItem,
        room_id: &str,
        post: &MatrixPost,
        to: &str,
        key: &str,
        removed: bool,
    ) -> Result<Sent, crate::matrix::MatrixError> {
        let txn = item.target_id.as_str();
        match (self.mirrored_event(item, key), removed) {
            (Some(line), true) => {
                self.matrix.redact(room_id, txn, &line).await?;
                if let Err(error) = self.store.forget_link(&item.group_jid, key) {
                    tracing::error!("store: {error}");
                }
                Ok(Sent::Unlinked)
            }
            (Some(line), false) => {
                self.matrix.edit_post(room_id, txn, &line, post).await?;
                Ok(Sent::Unlinked)
            }
            (None, true) => Ok(Sent::Unlinked),
            (None, false) => match self.mirrored_event(item, to) {
                Some(target) => {
                    let event_id = self
                        .matrix
                        .send_post(room_id, txn, post, Some(&target))
                        .await?;
                    Ok(Sent::Linked {
                        wa_id: key.to_owned(),
                        event_id,
                        sender: post.sender.clone(),
                    })
                }
                // A reaction to something never mirrored has no context.
                None => Ok(Sent::Unlinked),
            },
        }
    }

    /// Reactions shown as the bot's own (`reactions_to_matrix = "reaction"`):
    /// `reactor` now reacts `emoji` (empty: no longer) to WhatsApp message `to`. The
    /// bot reacts once per emoji while anyone still reacts so, and takes its reaction
    /// back when nobody does. Who reacts how is kept like a digest; it is saved
    /// after the sends, so a retry decides the same (and the transaction ids make
    /// the sends idempotent).
    async fn annotate(
        &self,
        item: &OutboxItem,
        room_id: &str,
        to: &str,
        reactor: &str,
        emoji: &str,
    ) -> Result<(), crate::matrix::MatrixError> {
        let Some(target_event) = self.mirrored_event(item, to) else {
            return Ok(()); // never mirrored: nothing to react to
        };
        let digest_key = ids::annotations_digest_key(to);
        let store_error =
            |error: crate::store::StoreError| crate::matrix::MatrixError::Store(error.to_string());
        let mut digest = self
            .store
            .digest(&item.group_jid, &digest_key)
            .map_err(store_error)?;
        let before = digest
            .entries
            .iter()
            .find(|entry| entry.user == reactor)
            .map(|entry| entry.emoji.clone());
        digest.entries.retain(|entry| entry.user != reactor);
        if !emoji.is_empty() {
            digest.entries.push(DigestEntry {
                reaction_event: item.source_id.clone(),
                user: reactor.to_owned(),
                emoji: emoji.to_owned(),
            });
        }
        let link_of = |emoji: &str| ids::annotation_link(to, emoji);
        let still_reacted: Vec<&str> = digest.entries.iter().map(|e| e.emoji.as_str()).collect();
        if let Some(gone) =
            to_matrix::annotation_taken_back(before.as_deref(), emoji, &still_reacted)
        {
            if let Some(annotation) = self.mirrored_event(item, &link_of(gone)) {
                let txn = format!("{}.undo", item.target_id);
                self.matrix.redact(room_id, &txn, &annotation).await?;
                if let Err(error) = self.store.forget_link(&item.group_jid, &link_of(gone)) {
                    tracing::error!("store: {error}");
                }
            }
        }
        if !emoji.is_empty() && self.mirrored_event(item, &link_of(emoji)).is_none() {
            let annotation = self
                .matrix
                .annotate(room_id, &item.target_id, &target_event, emoji)
                .await?;
            let link = MessageLink {
                group_jid: item.group_jid.clone(),
                wa_id: link_of(emoji),
                room_id: room_id.to_owned(),
                event_id: annotation,
                origin: Direction::ToMatrix,
                created_at: now_ms() / 1000,
                sender: String::new(),
            };
            if let Err(error) = self.store.record_link(&link) {
                tracing::error!("store: {error}");
            }
        }
        self.store
            .save_digest(&item.group_jid, &digest_key, &digest)
            .map_err(store_error)
    }

    /// Fills in the sender's name from the last one seen when WhatsApp sent none, and
    /// remembers a new one. Only for approved groups: nobody else's name is kept.
    fn resolve_sender_name(&self, message: &mut WhatsAppText) {
        let named_in_notice: Vec<&mut Mention> = match &mut message.shared {
            Some(Shared::Members { people, by, .. }) => people.iter_mut().chain(by).collect(),
            _ => Vec::new(),
        };
        for mention in message.mentions.iter_mut().chain(named_in_notice) {
            if mention.name.is_none() {
                mention.name = self.store.known_name(&mention.phone).ok().flatten();
            }
        }
        if message.from_me {
            return;
        }
        let result = match &message.push_name {
            Some(name) => self
                .store
                .remember_name(&message.sender_phone, name, now_ms() / 1000)
                .map(|_| ()),
            None => self
                .store
                .known_name(&message.sender_phone)
                .map(|known| message.push_name = known),
        };
        if let Err(error) = result {
            tracing::warn!("store: sender names: {error}");
        }
    }

    /// A vote read from a poll: records it (a voter's latest vote counts) and fills
    /// the ballot in with everyone's current vote and the names to show, for the
    /// poll's line to be edited with its tally.
    fn count_vote(&self, message: &mut WhatsAppText) -> Result<(), crate::store::StoreError> {
        let Some(Shared::PollVote(Some(ballot))) = &mut message.shared else {
            return Ok(());
        };
        self.store.record_poll_vote(
            &message.group_jid,
            &ballot.poll_id,
            &PollVote {
                voter: message.sender_phone.clone(),
                choices: ballot.choices.clone(),
                voted_at_ms: ballot.voted_at_ms,
            },
        )?;
        let name_of = |phone: &str| -> Result<String, crate::store::StoreError> {
            Ok(self
                .store
                .known_name(phone)?
                .unwrap_or_else(|| format!("+{phone}")))
        };
        ballot.creator_name = self.store.known_name(&ballot.creator_phone)?;
        ballot.asked_in_matrix = self
            .store
            .is_bridge_wa_message(&message.group_jid, &ballot.poll_id)?;
        ballot.tally = self
            .store
            .poll_votes(&message.group_jid, &ballot.poll_id)?
            .into_iter()
            .map(|vote| {
                Ok(PollVoter {
                    name: name_of(&vote.voter)?,
                    choices: vote.choices,
                })
            })
            .collect::<Result<_, crate::store::StoreError>>()?;
        Ok(())
    }
}
