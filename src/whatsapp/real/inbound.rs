//! WhatsApp -> the bridge: each incoming group message read into the domain form
//! `relay` judges (texts, replies, edits, deletions, reactions, files, shared things,
//! poll votes read with the poll's secret, member and setting notifications, calls),
//! and handed to the sink before whatsapp-rust acknowledges it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use whatsapp_rust::client::Client;
use whatsapp_rust::types::events::{GroupUpdate, InboundMessage};
use whatsapp_rust::types::message::MessageInfo;
use whatsapp_rust::wacore::poll::{compute_option_hash, PollVoteCiphertext};
use whatsapp_rust::wacore::proto_helpers::MessageExt;
use whatsapp_rust::wacore::time::now_millis;
use whatsapp_rust::wacore::types::call::{CallAction, IncomingCall};
use whatsapp_rust::waproto::whatsapp as wa;
use whatsapp_rust::waproto::whatsapp::message::protocol_message::Type as ProtocolType;
use whatsapp_rust::{InboundDurabilityHook, Jid, Server};

use super::outbound::GroupRules;
use crate::relay::location::Location;
use crate::relay::{
    GroupSetting, MemberChange, Mention, PollBallot, Shared, WhatsAppRelation, WhatsAppText,
};
use crate::whatsapp::store::{PollRecord, SqliteBackend};
use crate::whatsapp::{InboundSink, SinkError};
use whatsapp_rust::wacore::stanza::groups::GroupNotificationAction;

/// The inbound durability hook: hands each group text of a batch to the sink, in
/// order, before whatsapp-rust acknowledges the batch to WhatsApp. If the sink fails
/// the hook fails, so the batch is not acknowledged and WhatsApp delivers it again
/// (the sink therefore sees some messages twice and must ignore repeats).
pub(super) struct SinkHook {
    pub(super) sink: Arc<dyn InboundSink>,
    /// The key store, where the polls seen are kept to read their votes.
    pub(super) polls: Arc<SqliteBackend>,
    /// The groups' metadata, to know who deletes as an admin.
    pub(super) rules: GroupRules,
}

#[async_trait]
impl InboundDurabilityHook for SinkHook {
    async fn on_messages(
        &self,
        client: Arc<Client>,
        batch: &[InboundMessage],
    ) -> anyhow::Result<()> {
        let mut texts = Vec::with_capacity(batch.len());
        for inbound in batch {
            let polls = polls_if_bridged(self.sink.as_ref(), &self.polls, inbound);
            if let Some(mut text) = group_text(&client, polls, inbound).await {
                mark_admin_deletion(&client, &self.rules, inbound, &mut text).await;
                texts.push(text);
            }
        }
        if texts.is_empty() {
            return Ok(());
        }
        // The sink writes to disk: keep that off the async worker threads.
        let sink = Arc::clone(&self.sink);
        tokio::task::spawn_blocking(move || deliver(sink.as_ref(), texts))
            .await
            .map_err(|error| anyhow::anyhow!("inbound sink task failed: {error}"))??;
        Ok(())
    }
}

/// The poll store, for a message of a bridged group only: nothing of other groups'
/// polls is kept.
pub(super) fn polls_if_bridged<'a>(
    sink: &dyn InboundSink,
    polls: &'a SqliteBackend,
    inbound: &InboundMessage,
) -> Option<&'a SqliteBackend> {
    sink.bridges(&inbound.info.source.chat.to_string())
        .then_some(polls)
}

/// How long the admins of a group may take to be read for a deletion; past it the
/// deleter counts as no admin (the safe side: nothing is redacted).
const ADMINS_TIMEOUT: Duration = Duration::from_secs(10);

/// For a deletion in a bridged group, whether its sender is an admin of the group
/// now: WhatsApp lets admins delete anyone's message, and `relay` needs to know it
/// to refuse everyone else's. Read from the group's metadata, kept until the group
/// changes (a promotion or demotion forgets it).
pub(super) async fn mark_admin_deletion(
    client: &Client,
    rules: &GroupRules,
    inbound: &InboundMessage,
    text: &mut WhatsAppText,
) {
    if !matches!(text.relation, Some(WhatsAppRelation::Revoke { .. })) {
        return;
    }
    let group = &inbound.info.source.chat;
    text.sender_is_admin = match tokio::time::timeout(ADMINS_TIMEOUT, rules.of(client, group)).await
    {
        Ok(Ok(known)) => known.is_admin(&inbound.info.source.sender),
        Ok(Err(error)) => {
            tracing::warn!("could not read a group's admins for a deletion: {error}");
            false
        }
        Err(_) => {
            tracing::warn!("reading a group's admins for a deletion timed out");
            false
        }
    };
}

pub(super) fn deliver(sink: &dyn InboundSink, texts: Vec<WhatsAppText>) -> Result<(), SinkError> {
    for text in texts {
        sink.message(text)?;
    }
    Ok(())
}

/// The domain form of an incoming message, if it is something a person said in a
/// group (a text, a reply, an edit, a deletion, a reaction, or a kind that is
/// announced as not relayed yet).
pub(super) async fn group_text(
    client: &Client,
    polls: Option<&SqliteBackend>,
    inbound: &InboundMessage,
) -> Option<WhatsAppText> {
    let info = &inbound.info;
    if info.source.chat.server != Server::Group {
        tracing::debug!("skipping WhatsApp message outside a group");
        return None;
    }
    // Edits arrive wrapped (editedMessage); this unwraps them to the protocol message.
    let base = inbound.message.get_base_message();
    let mut said = what_was_said(client, polls, inbound, base).await?;
    if let Some(context) = context_info(base) {
        if said.relation.is_none() {
            said.relation = reply_in(context);
        }
        said.mentions = mentions_in(client, context).await;
    }
    let push_name = Some(info.push_name.as_str())
        .filter(|name| !name.is_empty())
        .map(str::to_owned);
    Some(WhatsAppText {
        group_jid: info.source.chat.to_string(),
        message_id: info.id.clone(),
        sender_phone: sender_phone(client, info).await,
        push_name,
        from_me: info.source.is_from_me,
        ..said
    })
}

/// What a message says, one small function per kind; `None` for protocol plumbing
/// nobody said. A kind this version cannot read becomes the "not relayed yet" kind.
async fn what_was_said(
    client: &Client,
    polls: Option<&SqliteBackend>,
    inbound: &InboundMessage,
    base: &wa::Message,
) -> Option<WhatsAppText> {
    match read_message(polls, inbound, base) {
        Reading::Said(said) => Some(*said),
        Reading::Vote(update) => Some(vote_in(client, polls, &inbound.info, update).await),
        Reading::Plumbing => None,
    }
}

/// A message read without asking WhatsApp anything: what it says, a poll vote (read
/// with the poll's secret, which may take a lookup), or plumbing nobody said.
enum Reading<'a> {
    Said(Box<WhatsAppText>),
    Vote(&'a wa::message::PollUpdateMessage),
    Plumbing,
}

impl From<Option<WhatsAppText>> for Reading<'_> {
    fn from(said: Option<WhatsAppText>) -> Self {
        said.map_or(Reading::Plumbing, |said| Reading::Said(Box::new(said)))
    }
}

/// See [`Reading`]: one small function per kind, checked in this order.
fn read_message<'a>(
    polls: Option<&SqliteBackend>,
    inbound: &InboundMessage,
    base: &'a wa::Message,
) -> Reading<'a> {
    if let Some(protocol) = base.protocol_message.as_option() {
        return Reading::from(protocol_change(protocol));
    }
    if let Some(reaction) = base.reaction_message.as_option() {
        return Reading::from(reaction_in(reaction));
    }
    if let Some(update) = base.poll_update_message.as_option() {
        return Reading::Vote(update);
    }
    if let Some(found) = shared_of(&inbound.message, base) {
        return Reading::Said(Box::new(shared_thing(polls, inbound, base, found)));
    }
    if let Some((media, caption)) = crate::whatsapp::media::media_of(base) {
        return Reading::from(Some(WhatsAppText {
            text: caption,
            media: Some(media),
            ..WhatsAppText::default()
        }));
    }
    if let Some((location, comment)) = location_of(base) {
        return Reading::from(Some(WhatsAppText {
            text: comment,
            location: Some(location),
            ..WhatsAppText::default()
        }));
    }
    if let Some(text) = base.text_content() {
        return Reading::from(Some(WhatsAppText {
            text: text.to_owned(),
            ..WhatsAppText::default()
        }));
    }
    Reading::from(not_relayed_yet(base))
}

/// A deletion or an edit; other protocol messages are plumbing.
fn protocol_change(protocol: &wa::message::ProtocolMessage) -> Option<WhatsAppText> {
    let target = protocol.key.as_option().and_then(|key| key.id.clone());
    match (protocol.r#type, target) {
        (Some(ProtocolType::REVOKE), Some(id)) => Some(WhatsAppText {
            relation: Some(WhatsAppRelation::Revoke { id }),
            ..WhatsAppText::default()
        }),
        (Some(ProtocolType::MESSAGE_EDIT), Some(id)) => {
            let edited = protocol.edited_message.as_option()?;
            let text = edited
                .text_content()
                .or_else(|| edited.get_caption())
                .unwrap_or_default()
                .to_owned();
            Some(WhatsAppText {
                text,
                relation: Some(WhatsAppRelation::Edit { id }),
                ..WhatsAppText::default()
            })
        }
        _ => {
            tracing::debug!(kind = "protocol", "skipping WhatsApp group message");
            None
        }
    }
}

/// A reaction (an empty emoji takes it back).
fn reaction_in(reaction: &wa::message::ReactionMessage) -> Option<WhatsAppText> {
    let id = reaction.key.as_option().and_then(|key| key.id.clone())?;
    Some(WhatsAppText {
        relation: Some(WhatsAppRelation::Reaction {
            id,
            emoji: reaction.text.clone().unwrap_or_default(),
        }),
        ..WhatsAppText::default()
    })
}

/// A vote in a poll, read with the poll's secret when the bridge kept it (bridged
/// groups only).
async fn vote_in(
    client: &Client,
    polls: Option<&SqliteBackend>,
    info: &MessageInfo,
    update: &wa::message::PollUpdateMessage,
) -> WhatsAppText {
    let ballot = match polls {
        Some(polls) => read_vote(client, polls, info, update).await,
        None => None,
    };
    WhatsAppText {
        shared: Some(Shared::PollVote(ballot.map(Box::new))),
        ..WhatsAppText::default()
    }
}

/// A contact, poll or view-once file: a poll is kept to read its votes, a contact
/// also crosses as its card (a `.vcf` file).
fn shared_thing(
    polls: Option<&SqliteBackend>,
    inbound: &InboundMessage,
    base: &wa::Message,
    found: Shared,
) -> WhatsAppText {
    if let (Shared::Poll { question, options }, Some(polls)) = (&found, polls) {
        remember_poll(
            polls,
            &inbound.info,
            &inbound.message,
            base,
            question,
            options,
        );
    }
    WhatsAppText {
        media: crate::whatsapp::media::contact_card(base),
        shared: Some(found),
        ..WhatsAppText::default()
    }
}

/// Something a person sent that cannot be relayed yet, known by name or not (an
/// event, a pin, a list, a field this version cannot read): said in Matrix. Protocol
/// plumbing (keys, history, placeholders) is nothing anybody said.
fn not_relayed_yet(base: &wa::Message) -> Option<WhatsAppText> {
    if carries_only_plumbing(base) {
        tracing::debug!("skipping WhatsApp protocol plumbing");
        return None;
    }
    let kind = match message_kind(base) {
        "sender key distribution" => "other",
        kind => kind,
    };
    Some(WhatsAppText {
        unsupported: Some(kind.to_owned()),
        ..WhatsAppText::default()
    })
}

/// The message a reply quotes, with the quoted text WhatsApp carried along.
fn reply_in(context: &wa::ContextInfo) -> Option<WhatsAppRelation> {
    let id = context.stanza_id.clone().filter(|id| !id.is_empty())?;
    let quoted = context
        .quoted_message
        .as_option()
        .and_then(|quoted| quoted.text_content().or_else(|| quoted.get_caption()))
        .filter(|text| !text.is_empty())
        .map(str::to_owned);
    Some(WhatsAppRelation::Reply { id, quoted })
}

/// The people a message mentions.
async fn mentions_in(client: &Client, context: &wa::ContextInfo) -> Vec<Mention> {
    let mut mentions = Vec::new();
    for jid in &context.mentioned_jid {
        if let Ok(jid) = jid.parse::<Jid>() {
            mentions.push(Mention {
                phone: phone_of(client, &jid).await,
                name: None,
            });
        }
    }
    mentions
}

/// A group notification about members, as a message for the room: people added or
/// removed (or joining, leaving), promoted or demoted. Its id is derived from the
/// notification's, so a notification seen twice is told once.
pub(super) fn member_change(update: &GroupUpdate) -> Option<WhatsAppText> {
    let (change, participants) = match &update.action {
        GroupNotificationAction::Add { participants, .. } => (MemberChange::Added, participants),
        GroupNotificationAction::Remove { participants, .. } => {
            (MemberChange::Removed, participants)
        }
        GroupNotificationAction::Promote { participants } => (MemberChange::Promoted, participants),
        GroupNotificationAction::Demote { participants } => (MemberChange::Demoted, participants),
        _ => return None,
    };
    let people = participants
        .iter()
        .map(|person| Mention {
            phone: phone_or_lid(&person.jid, person.phone_number.as_ref()),
            name: person.display_name.clone().filter(|name| !name.is_empty()),
        })
        .collect();
    let by = actor_phone(update).map(|phone| Mention { phone, name: None });
    Some(WhatsAppText {
        group_jid: update.group_jid.to_string(),
        message_id: notification_message_id(update),
        sender_phone: by.as_ref().map(|by| by.phone.clone()).unwrap_or_default(),
        shared: Some(Shared::Members { change, people, by }),
        ..WhatsAppText::default()
    })
}

/// A group notification about a setting the room should know of: disappearing
/// messages, announcement mode. Told once, like member changes.
pub(super) fn setting_change(update: &GroupUpdate) -> Option<WhatsAppText> {
    let setting = match &update.action {
        GroupNotificationAction::Ephemeral { expiration, .. } => {
            GroupSetting::Disappearing(*expiration)
        }
        GroupNotificationAction::Announce => GroupSetting::OnlyAdminsSend(true),
        GroupNotificationAction::NotAnnounce => GroupSetting::OnlyAdminsSend(false),
        _ => return None,
    };
    Some(WhatsAppText {
        group_jid: update.group_jid.to_string(),
        message_id: notification_message_id(update),
        sender_phone: actor_phone(update).unwrap_or_default(),
        shared: Some(Shared::Setting(setting)),
        ..WhatsAppText::default()
    })
}

/// A group call someone started, as a line for the room (calls do not cross: the
/// line says where to join). Its id is derived from the call's, so an offer seen
/// twice (offline, then live) is told once. Calls to the number itself are no
/// group's business and are left alone.
pub(super) fn group_call(call: &IncomingCall) -> Option<WhatsAppText> {
    let CallAction::Offer {
        call_id,
        call_creator,
        caller_pn,
        is_video,
        group_jid: Some(group),
        ..
    } = &call.action
    else {
        return None;
    };
    Some(WhatsAppText {
        group_jid: group.to_string(),
        message_id: format!("call.{call_id}"),
        sender_phone: phone_or_lid(call_creator, caller_pn.as_ref()),
        push_name: call.notify.clone().filter(|name| !name.is_empty()),
        shared: Some(Shared::Call { video: *is_video }),
        ..WhatsAppText::default()
    })
}

/// The id a group notification's line gets in the room: derived from the
/// notification's, so a notification seen twice is told once.
fn notification_message_id(update: &GroupUpdate) -> String {
    format!(
        "gp2.{}.{}",
        update
            .notification_id
            .clone()
            .unwrap_or_else(|| update.timestamp.timestamp_millis().to_string()),
        update.action_index
    )
}

/// The phone number of who made a group change, when WhatsApp said.
fn actor_phone(update: &GroupUpdate) -> Option<String> {
    let actor = update.participant.as_ref()?;
    Some(phone_or_lid(actor, update.participant_pn.as_ref()))
}

/// A person's phone number, from their phone-number JID when WhatsApp gave one.
fn phone_or_lid(jid: &Jid, pn: Option<&Jid>) -> String {
    pn.unwrap_or(jid).user_base().to_owned()
}

/// A contact, poll, vote or view-once message. View-once comes first: its file is
/// never fetched, so it cannot outlive its one viewing in a Matrix room.
fn shared_of(outer: &wa::Message, base: &wa::Message) -> Option<Shared> {
    if outer.is_view_once() {
        let kind = if base.video_message.is_set() {
            "video"
        } else if base.audio_message.is_set() {
            "voice message"
        } else {
            "photo"
        };
        return Some(Shared::ViewOnce {
            kind: kind.to_owned(),
        });
    }
    if let Some(contact) = base.contact_message.as_option() {
        return Some(Shared::Contact {
            name: contact.display_name.clone().unwrap_or_default(),
            phones: vcard_phones(contact.vcard.as_deref().unwrap_or_default()),
        });
    }
    if let Some(array) = base.contacts_array_message.as_option() {
        let names: Vec<String> = array
            .contacts
            .iter()
            .filter_map(|contact| contact.display_name.clone())
            .collect();
        return Some(Shared::Contact {
            name: names.join(", "),
            phones: array
                .contacts
                .iter()
                .flat_map(|contact| vcard_phones(contact.vcard.as_deref().unwrap_or_default()))
                .collect(),
        });
    }
    let poll = [
        &base.poll_creation_message,
        &base.poll_creation_message_v2,
        &base.poll_creation_message_v3,
    ]
    .into_iter()
    .find_map(|poll| poll.as_option());
    if let Some(poll) = poll {
        return Some(Shared::Poll {
            question: poll.name.clone().unwrap_or_default(),
            options: poll
                .options
                .iter()
                .filter_map(|option| option.option_name.clone())
                .collect(),
        });
    }
    None
}

/// Keeps what it takes to read a poll's votes later: its secret (which phones put in
/// the poll's `messageContextInfo`), creator and options.
fn remember_poll(
    polls: &SqliteBackend,
    info: &MessageInfo,
    outer: &wa::Message,
    base: &wa::Message,
    question: &str,
    options: &[String],
) {
    let secret = [outer, base].into_iter().find_map(|message| {
        message
            .message_context_info
            .as_option()
            .and_then(|context| context.message_secret.clone())
    });
    let Some(secret) = secret else {
        tracing::debug!("poll without a secret: its votes cannot be read");
        return;
    };
    let record = PollRecord {
        chat: info.source.chat.to_string(),
        poll_id: info.id.clone(),
        creator: info.source.sender.to_non_ad().to_string(),
        secret,
        question: question.to_owned(),
        options: options.to_vec(),
    };
    if let Err(error) = polls.remember_poll(&record, now_millis() / 1000) {
        tracing::warn!("could not keep a poll to read its votes: {error}");
    }
}

/// Reads a vote: which options of which poll the voter picks now. `None` when the
/// poll was never seen here (sent before the number was linked) or the vote cannot
/// be decrypted; the room is then told that a vote was cast.
async fn read_vote(
    client: &Client,
    polls: &SqliteBackend,
    info: &MessageInfo,
    update: &wa::message::PollUpdateMessage,
) -> Option<PollBallot> {
    let poll_id = update
        .poll_creation_message_key
        .as_option()
        .and_then(|key| key.id.clone())?;
    let poll = match polls.poll(&info.source.chat.to_string(), &poll_id) {
        Ok(Some(poll)) => poll,
        Ok(None) => {
            tracing::debug!("vote in a poll this bridge never saw");
            return None;
        }
        Err(error) => {
            tracing::warn!("could not look a poll up to read a vote: {error}");
            return None;
        }
    };
    let vote = update.vote.as_option()?;
    let ciphertext = PollVoteCiphertext {
        enc_payload: vote.enc_payload.as_deref()?,
        enc_iv: vote.enc_iv.as_deref()?,
    };
    let creator: Jid = poll.creator.parse().ok()?;
    let hashes = match client
        .polls()
        .decrypt_vote(
            ciphertext,
            &poll.secret,
            &poll_id,
            &creator,
            &info.source.sender,
        )
        .await
    {
        Ok(hashes) => hashes,
        Err(error) => {
            tracing::warn!("could not read a vote in a poll: {error}");
            return None;
        }
    };
    let choices = poll
        .options
        .iter()
        .filter(|option| {
            let hash = compute_option_hash(option);
            hashes.iter().any(|picked| picked.as_slice() == hash)
        })
        .cloned()
        .collect();
    Some(PollBallot {
        poll_id,
        question: poll.question,
        options: poll.options,
        creator_phone: phone_of(client, &creator).await,
        choices,
        voted_at_ms: update
            .sender_timestamp_ms
            .unwrap_or_else(|| info.timestamp.timestamp_millis()),
        creator_name: None,
        tally: Vec::new(),
        asked_in_matrix: false,
    })
}

/// The phone numbers of a vCard (its `TEL` lines).
fn vcard_phones(vcard: &str) -> Vec<String> {
    vcard
        .lines()
        .filter(|line| line.trim_start().to_ascii_uppercase().starts_with("TEL"))
        .filter_map(|line| line.rsplit(':').next())
        .map(|number| number.trim().to_owned())
        .filter(|number| !number.is_empty())
        .collect()
}

/// The point of a location or live location message, and its comment.
fn location_of(message: &wa::Message) -> Option<(Location, String)> {
    if let Some(shared) = message.location_message.as_option() {
        let name = [shared.name.as_deref(), shared.address.as_deref()]
            .into_iter()
            .flatten()
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>()
            .join(", ");
        let point = Location::new(
            shared.degrees_latitude?,
            shared.degrees_longitude?,
            Some(name),
        )?;
        return Some((point, shared.comment.clone().unwrap_or_default()));
    }
    let live = message.live_location_message.as_option()?;
    let point = Location::new(live.degrees_latitude?, live.degrees_longitude?, None)?;
    let caption = live.caption.clone().unwrap_or_default();
    Some((point, format!("live location {caption}").trim().to_owned()))
}

/// The context (quote, mentions) of a text or media message.
fn context_info(message: &wa::Message) -> Option<&wa::ContextInfo> {
    let contexts = [
        message
            .extended_text_message
            .as_option()
            .and_then(|m| m.context_info.as_option()),
        message
            .image_message
            .as_option()
            .and_then(|m| m.context_info.as_option()),
        message
            .video_message
            .as_option()
            .and_then(|m| m.context_info.as_option()),
        message
            .audio_message
            .as_option()
            .and_then(|m| m.context_info.as_option()),
        message
            .document_message
            .as_option()
            .and_then(|m| m.context_info.as_option()),
        message
            .sticker_message
            .as_option()
            .and_then(|m| m.context_info.as_option()),
    ];
    contexts.into_iter().flatten().next()
}

/// The phone number (user part) of a person's JID; a LID is resolved when known.
async fn phone_of(client: &Client, jid: &Jid) -> String {
    if jid.server.is_lid_family() {
        match client.get_lid_pn_entry(jid).await {
            Ok(Some(entry)) => return entry.phone_number.to_string(),
            Ok(None) => {}
            Err(error) => tracing::debug!("LID to phone number lookup failed: {error}"),
        }
    }
    jid.user_base().to_owned()
}

/// The sender's phone number (user part); for a LID sender whose number is unknown,
/// the LID user part.
async fn sender_phone(client: &Client, info: &MessageInfo) -> String {
    let sender = &info.source.sender;
    if sender.server.is_pn_family() {
        return sender.user_base().to_owned();
    }
    if let Some(alt) = &info.source.sender_alt {
        if alt.server.is_pn_family() {
            return alt.user_base().to_owned();
        }
    }
    if sender.server.is_lid_family() {
        match client.get_lid_pn_entry(sender).await {
            Ok(Some(entry)) => return entry.phone_number.to_string(),
            Ok(None) => {}
            Err(error) => tracing::debug!("LID to phone number lookup failed: {error}"),
        }
    }
    sender.user_base().to_owned()
}

/// Whether a message holds nothing a person sent: only the protocol's own fields
/// (sender keys, the message secret, history and key shares, placeholders). Any other
/// field set, named or unknown to this version of waproto, is something said.
fn carries_only_plumbing(message: &wa::Message) -> bool {
    let mut rest = message.clone();
    rest.sender_key_distribution_message = Default::default();
    rest.fast_ratchet_key_sender_key_distribution_message = Default::default();
    rest.message_context_info = Default::default();
    rest.sticker_sync_rmr_message = Default::default();
    rest.message_history_bundle = Default::default();
    rest.message_history_notice = Default::default();
    rest.placeholder_message = Default::default();
    rest.group_root_key_share = Default::default();
    rest.root_secret_distribute_message = Default::default();
    whatsapp_rust::waproto::buffa::Message::encoded_len(&rest) == 0
}

/// A short name for the kind of a message, for logs (never its content).
fn message_kind(message: &wa::Message) -> &'static str {
    if let Some(media) = whatsapp_rust::wacore::send::media_type_from_message(message) {
        return media;
    }
    if message.reaction_message.is_set() {
        "reaction"
    } else if message.protocol_message.is_set() {
        "protocol"
    } else if message.sender_key_distribution_message.is_set() {
        "sender key distribution"
    } else if message.location_message.is_set() || message.live_location_message.is_set() {
        "location"
    } else if message.contact_message.is_set() || message.contacts_array_message.is_set() {
        "contact"
    } else if message.poll_creation_message.is_set()
        || message.poll_creation_message_v2.is_set()
        || message.poll_creation_message_v3.is_set()
        || message.poll_update_message.is_set()
    {
        "poll"
    } else {
        "other"
    }
}

#[cfg(test)]
mod arbitrary_messages {
    //! Any `waE2E.Message` a modified client can send, through the inbound reading
    //! and `relay`: nothing panics, and each one becomes something said (relayed or
    //! a notice) or the plumbing `carries_only_plumbing` documents.
    use std::sync::Arc;

    use proptest::prelude::*;
    use whatsapp_rust::types::events::InboundMessage;
    use whatsapp_rust::types::message::MessageInfo;
    use whatsapp_rust::wacore::proto_helpers::MessageExt;
    use whatsapp_rust::waproto::buffa::{Message as _, MessageField};
    use whatsapp_rust::waproto::whatsapp as wa;

    use super::{read_message, Reading};
    use crate::config::{GroupFile, RelayConfig, Templates};
    use crate::relay::Relay;

    /// Set one time in four, so that messages with a single kind (or none) come often.
    fn text() -> impl Strategy<Value = Option<String>> {
        proptest::option::weighted(0.25, proptest::string::string_regex(".{0,40}").unwrap())
    }

    fn bytes() -> impl Strategy<Value = Option<Vec<u8>>> {
        proptest::option::weighted(0.25, proptest::collection::vec(any::<u8>(), 0..40))
    }

    /// A field this version of waproto may not know: a varint under any number.
    fn unknown_field() -> impl Strategy<Value = Vec<u8>> {
        proptest::option::weighted(0.3, (100u64..20_000, any::<u64>())).prop_map(|field| {
            let mut out = Vec::new();
            if let Some((number, value)) = field {
                varint(&mut out, number << 3);
                varint(&mut out, value);
            }
            out
        })
    }

    fn varint(out: &mut Vec<u8>, mut n: u64) {
        loop {
            let low = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(low);
                return;
            }
            out.push(low | 0x80);
        }
    }

    fn key() -> impl Strategy<Value = MessageField<wa::MessageKey>> {
        proptest::option::of((text(), proptest::option::of(any::<bool>()), text(), text()))
            .prop_map(|key| match key {
                Some((remote_jid, from_me, id, participant)) => {
                    MessageField::some(wa::MessageKey {
                        remote_jid,
                        from_me,
                        id,
                        participant,
                    })
                }
                None => MessageField::none(),
            })
    }

    /// A message with any of the kinds people send set, several at once, with
    /// arbitrary contents; then arbitrary protobuf bytes appended (unknown fields,
    /// or a second value of a known one).
    fn message() -> impl Strategy<Value = wa::Message> {
        (
            (
                text(),
                text(),
                text(),
                bytes(),
                proptest::option::of(any::<u64>()),
            ),
            (
                text(),
                text(),
                proptest::option::weighted(0.2, any::<i32>()),
                key(),
            ),
            (
                key(),
                text(),
                proptest::option::weighted(0.2, (any::<f64>(), any::<f64>())),
                text(),
            ),
            (text(), proptest::collection::vec(text(), 0..3), text()),
            unknown_field(),
        )
            .prop_map(|(media, protocol, other, shared, extra)| {
                let (caption, mime, file_name, media_key, length) = media;
                let (conversation, edited, protocol_type, protocol_key) = protocol;
                let (reaction_key, emoji, point, location_name) = other;
                let (vcard, options, event) = shared;
                let mut m = wa::Message {
                    conversation,
                    ..Default::default()
                };
                if media_key.is_some() {
                    let kind = length.unwrap_or(0) % 5;
                    let direct_path = Some("/v/t62/x".to_owned());
                    match kind {
                        0 => {
                            m.image_message = MessageField::some(wa::message::ImageMessage {
                                caption: caption.clone(),
                                mimetype: mime.clone(),
                                media_key: media_key.clone(),
                                file_length: length,
                                direct_path,
                                ..Default::default()
                            })
                        }
                        1 => {
                            m.video_message = MessageField::some(wa::message::VideoMessage {
                                caption: caption.clone(),
                                mimetype: mime.clone(),
                                media_key: media_key.clone(),
                                file_length: length,
                                direct_path,
                                ..Default::default()
                            })
                        }
                        2 => {
                            m.audio_message = MessageField::some(wa::message::AudioMessage {
                                mimetype: mime.clone(),
                                media_key: media_key.clone(),
                                file_length: length,
                                ptt: Some(length.unwrap_or(0) % 2 == 0),
                                direct_path,
                                ..Default::default()
                            })
                        }
                        3 => {
                            m.document_message = MessageField::some(wa::message::DocumentMessage {
                                caption: caption.clone(),
                                mimetype: mime.clone(),
                                file_name: file_name.clone(),
                                media_key: media_key.clone(),
                                file_length: length,
                                direct_path,
                                ..Default::default()
                            })
                        }
                        _ => {
                            m.sticker_message = MessageField::some(wa::message::StickerMessage {
                                mimetype: mime.clone(),
                                media_key: media_key.clone(),
                                file_length: length,
                                direct_path,
                                ..Default::default()
                            })
                        }
                    }
                }
                if let Some(number) = protocol_type {
                    let mut bytes = wa::message::ProtocolMessage {
                        key: protocol_key,
                        edited_message: match edited {
                            Some(text) => MessageField::some(wa::Message {
                                conversation: Some(text),
                                ..Default::default()
                            }),
                            None => MessageField::none(),
                        },
                        ..Default::default()
                    }
                    .encode_to_vec();
                    // Field 2, `type`: any number, known to waproto or not.
                    bytes.push(0x10);
                    varint(&mut bytes, u64::from(number as u32));
                    if let Ok(protocol) = wa::message::ProtocolMessage::decode_from_slice(&bytes) {
                        m.protocol_message = MessageField::some(protocol);
                    }
                }
                if emoji.is_some() {
                    m.reaction_message = MessageField::some(wa::message::ReactionMessage {
                        key: reaction_key,
                        text: emoji,
                        ..Default::default()
                    });
                }
                if let Some((lat, lon)) = point {
                    m.location_message = MessageField::some(wa::message::LocationMessage {
                        degrees_latitude: Some(lat),
                        degrees_longitude: Some(lon),
                        name: location_name,
                        ..Default::default()
                    });
                }
                if vcard.is_some() {
                    m.contact_message = MessageField::some(wa::message::ContactMessage {
                        display_name: caption,
                        vcard,
                        ..Default::default()
                    });
                }
                if options.iter().any(Option::is_some) {
                    m.poll_creation_message_v3 =
                        MessageField::some(wa::message::PollCreationMessage {
                            name: file_name,
                            options: options
                                .into_iter()
                                .map(|option_name| wa::message::poll_creation_message::Option {
                                    option_name,
                                    ..Default::default()
                                })
                                .collect(),
                            ..Default::default()
                        });
                }
                if event.is_some() {
                    m.event_message = MessageField::some(wa::message::EventMessage {
                        name: event,
                        ..Default::default()
                    });
                }
                let mut bytes = m.encode_to_vec();
                bytes.extend_from_slice(&extra);
                wa::Message::decode_from_slice(&bytes).unwrap_or(m)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn every_message_is_said_or_documented_plumbing(message in message()) {
            let info = MessageInfo::default();
            let inbound = InboundMessage::builder()
                .message(Arc::new(message.clone()))
                .info(Arc::new(info))
                .build();
            let base = inbound.message.get_base_message();
            match read_message(None, &inbound, base) {
                Reading::Said(said) => {
                    let relay = Relay::new("@bot:example.org", Templates::default(), RelayConfig::default());
                    let group = GroupFile {
                        name: "famille".into(),
                        path: "groups.d/famille.toml".into(),
                        whatsapp: "g@g.us".into(),
                        room: None,
                        invite: vec![],
                        moderators: vec![],
                        allow: None,
                        messages_per_minute: None,
                    };
                    let mut said = *said;
                    said.group_jid = "g@g.us".into();
                    said.message_id = "ID".into();
                    said.sender_phone = "33611111111".into();
                    // Relayed, or skipped for a documented reason: never a panic.
                    let _ = relay.from_whatsapp(Some(&group), &said, false);
                }
                Reading::Vote(_) => prop_assert!(base.poll_update_message.is_set()),
                Reading::Plumbing => prop_assert!(
                    super::carries_only_plumbing(base) || base.protocol_message.is_set()
                        || base.reaction_message.is_set(),
                    "dropped without being plumbing: {base:?}"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn vcards_give_their_phone_numbers() {
        let vcard = "BEGIN:VCARD\nVERSION:3.0\nFN:Marie\nTEL;type=CELL;waid=33612345678:+33 6 12 34 56 78\ntel:0102030405\nEND:VCARD";
        assert_eq!(
            super::vcard_phones(vcard),
            vec!["+33 6 12 34 56 78".to_string(), "0102030405".to_string()]
        );
        assert!(super::vcard_phones("garbage").is_empty());
    }

    #[test]
    fn only_protocol_fields_are_plumbing() {
        use whatsapp_rust::waproto::buffa::MessageField;
        use whatsapp_rust::waproto::whatsapp as wa;
        let keys = wa::Message {
            sender_key_distribution_message: MessageField::some(Default::default()),
            message_context_info: MessageField::some(wa::MessageContextInfo {
                message_secret: Some(vec![7; 32]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(super::carries_only_plumbing(&keys));
        assert!(super::carries_only_plumbing(&wa::Message::default()));
        // The first message of a member to a group carries its sender key too.
        let event_with_keys = wa::Message {
            event_message: MessageField::some(wa::message::EventMessage {
                name: Some("Pique-nique".into()),
                ..Default::default()
            }),
            ..keys
        };
        assert!(!super::carries_only_plumbing(&event_with_keys));
        assert_eq!(
            super::message_kind(&event_with_keys),
            "sender key distribution"
        );
    }
}
