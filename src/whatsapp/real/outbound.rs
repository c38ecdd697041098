//! What passerelle sends and asks through whatsapp-rust: texts, files, polls, edits,
//! deletions and reactions built here and sent under the bridge's own ids (each
//! waiting for the server's ack), the send rules of each group, and group queries
//! (subjects, pictures, the number's groups, joining by invite).

use std::collections::{HashMap, HashSet};

use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use whatsapp_rust::client::Client;
use whatsapp_rust::features::{GroupError, JoinGroupResult};
use whatsapp_rust::send::{SendError, SendOptions};
use whatsapp_rust::types::message::AddressingMode;
use whatsapp_rust::wacore::proto_helpers::{build_reaction_message, MessageBuilderExt};
use whatsapp_rust::wacore::time::now_millis;
use whatsapp_rust::waproto::buffa::MessageField;
use whatsapp_rust::waproto::whatsapp as wa;
use whatsapp_rust::waproto::whatsapp::message::protocol_message::Type as ProtocolType;
use whatsapp_rust::{Jid, Server};

use super::RealWhatsApp;
use crate::relay::media::Media;
use crate::whatsapp::store::PollRecord;
use crate::whatsapp::{
    GroupPicture, GroupProfile, GroupSummary, JoinOutcome, Outgoing, Quoted, WhatsAppClient,
    WhatsAppError,
};
use whatsapp_rust::http::{HttpClient as _, HttpRequest};

/// A location pin.
fn location_message(location: &crate::relay::location::Location) -> wa::Message {
    wa::Message {
        location_message: MessageField::some(wa::message::LocationMessage {
            degrees_latitude: Some(location.latitude),
            degrees_longitude: Some(location.longitude),
            name: location.name.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The number's reaction to `target` (one per number and message: a repeat replaces
/// it with itself; an empty emoji takes it back).
fn reaction_message(
    client: &Client,
    group: &Jid,
    target: &Quoted,
    emoji: &str,
) -> Result<wa::Message, WhatsAppError> {
    let key = wa::MessageKey {
        remote_jid: Some(group.to_string()),
        from_me: Some(target.sender_phone.is_none()),
        id: Some(target.id.clone()),
        participant: Some(participant_of(client, target)?),
    };
    Ok(build_reaction_message(key, emoji, now_millis()))
}

/// Group pictures are small JPEGs (640 px); anything far larger is not one.
const MAX_GROUP_PICTURE_BYTES: usize = 5 * 1024 * 1024;

impl RealWhatsApp {
    /// A new message (not an edit, deletion or reaction): refused here when only
    /// admins may send and the number is not one (WhatsApp would refuse it), and
    /// carrying the group's disappearing timer, so that the number's messages
    /// disappear like everyone else's.
    async fn send_new(
        &self,
        client: &Client,
        group: Jid,
        mut message: wa::Message,
        message_id: &str,
    ) -> Result<(), WhatsAppError> {
        let rules = self.rules.of(client, &group).await?;
        if rules.admins_only && !rules.number_is_admin {
            return Err(WhatsAppError::Rejected(
                "only admins can send messages in this WhatsApp group".to_owned(),
            ));
        }
        let mut options = SendOptions::default();
        if rules.disappear_after > 0 {
            // A bare text has no context to carry the timer: send it as the
            // extended form, which does.
            if let Some(text) = message.conversation.take() {
                message.extended_text_message =
                    MessageField::some(wa::message::ExtendedTextMessage {
                        text: Some(text),
                        ..Default::default()
                    });
            }
            options.ephemeral_expiration = Some(rules.disappear_after);
        }
        self.send_confirmed(client, group, message, message_id, options)
            .await
    }

    /// Sends `message` under `message_id` and returns once WhatsApp's server
    /// acknowledged it (see [`ServerAcks`]).
    async fn send_confirmed(
        &self,
        client: &Client,
        group: Jid,
        message: wa::Message,
        message_id: &str,
        options: SendOptions,
    ) -> Result<(), WhatsAppError> {
        let ack = self.acks.expect(message_id);
        let options = options.with_message_id(message_id);
        if let Err(error) = client
            .send_message_with_options(group, message, options)
            .await
        {
            self.acks.forget(message_id);
            return Err(send_error(&error));
        }
        self.acks.wait(message_id, ack).await
    }

    /// The secret of the number's poll `message_id`: the one kept from a first
    /// attempt (a retry must send the same poll), else a new random one, kept before
    /// the poll goes out so that no vote arrives unreadable.
    async fn poll_secret(
        &self,
        client: &Client,
        group: &Jid,
        message_id: &str,
        question: &str,
        options: &[String],
    ) -> Result<Vec<u8>, WhatsAppError> {
        let store_error = |error: crate::whatsapp::store::WaStoreError| {
            WhatsAppError::Transient(error.to_string())
        };
        let chat = group.to_string();
        if let Some(kept) = self.polls.poll(&chat, message_id).map_err(store_error)? {
            return Ok(kept.secret);
        }
        let mut secret = vec![0u8; 32];
        rand::Rng::fill_bytes(&mut rand::rng(), &mut secret);
        let record = PollRecord {
            chat,
            poll_id: message_id.to_owned(),
            creator: own_jid_in(client, group).await?,
            secret: secret.clone(),
            question: question.to_owned(),
            options: options.to_vec(),
        };
        self.polls
            .remember_poll(&record, now_millis() / 1000)
            .map_err(store_error)?;
        Ok(secret)
    }

    fn already_sent(&self, message_id: &str) -> bool {
        self.sent_ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(message_id)
    }

    fn remember_sent(&self, message_id: &str) {
        self.sent_ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(message_id);
    }

    /// What to send for `outgoing`, and whether it is a new message of the number's
    /// (what the group's rules apply to) or a change to one (an edit, a deletion, a
    /// reaction), which is sent as it is.
    async fn message_for(
        &self,
        client: &Client,
        group: &Jid,
        message_id: &str,
        outgoing: &Outgoing,
    ) -> Result<(wa::Message, bool), WhatsAppError> {
        Ok(match outgoing {
            Outgoing::Media {
                media,
                data,
                caption,
                reply_to,
            } => {
                let context = match reply_to {
                    Some(quoted) => Some(reply_context(client, quoted)?),
                    None => None,
                };
                let message = crate::whatsapp::media::message_for(
                    client,
                    media,
                    data.clone(),
                    caption.clone(),
                    context,
                )
                .await?;
                (message, true)
            }
            Outgoing::Location { location } => (location_message(location), true),
            Outgoing::Poll {
                question,
                options,
                max_selections,
            } => {
                let secret = self
                    .poll_secret(client, group, message_id, question, options)
                    .await?;
                let message = poll_message(question, options, *max_selections, secret);
                (message, true)
            }
            Outgoing::Text {
                text,
                reply_to,
                mentions,
            } => {
                let message = match (reply_to, mentions.is_empty()) {
                    (None, true) => wa::Message::text(text),
                    _ => text_with_context(client, text, reply_to.as_ref(), mentions)?,
                };
                (message, true)
            }
            // Edits, revokes and reactions are built here rather than through
            // whatsapp-rust's `edit_message` / `revoke_message` / `send_reaction`,
            // which pick their own stanza ids: under the id derived from the Matrix
            // event they wait for the server ack like any message, and a retry
            // after a crash is recognised by WhatsApp as the same stanza.
            Outgoing::Edit { target, text } => {
                let message = edit_message(group, target, own_jid_in(client, group).await?, text);
                (message, false)
            }
            Outgoing::Revoke { target } => {
                let message = revoke_message(group, target);
                (message, false)
            }
            // One reaction per number and message: a repeat replaces it with itself.
            Outgoing::React { target, emoji } => {
                (reaction_message(client, group, target, emoji)?, false)
            }
        })
    }
}

#[async_trait]
impl WhatsAppClient for RealWhatsApp {
    async fn send(
        &self,
        group_jid: &str,
        message_id: &str,
        outgoing: &Outgoing,
    ) -> Result<(), WhatsAppError> {
        let group = parse_group_jid(group_jid)?;
        if message_id.is_empty() {
            return Err(WhatsAppError::Rejected("empty message id".to_string()));
        }
        if self.already_sent(message_id) {
            tracing::debug!(
                message_id,
                "WhatsApp message already sent; not sending again"
            );
            return Ok(());
        }
        let client = self.usable_client()?;
        let (message, new) = self
            .message_for(client, &group, message_id, outgoing)
            .await?;
        if new {
            self.send_new(client, group, message, message_id).await?;
        } else {
            self.send_confirmed(client, group, message, message_id, SendOptions::default())
                .await?;
        }
        self.remember_sent(message_id);
        Ok(())
    }

    async fn group_profile(&self, group_jid: &str) -> Result<GroupProfile, WhatsAppError> {
        let group = parse_group_jid(group_jid)?;
        let client = self.usable_client()?;
        let metadata = client
            .groups()
            .get_metadata(&group)
            .await
            .map_err(|error| group_error(&error))?;
        Ok(GroupProfile {
            subject: metadata.subject,
            description: metadata.description.filter(|d| !d.trim().is_empty()),
        })
    }

    async fn group_picture(&self, group_jid: &str) -> Result<Option<GroupPicture>, WhatsAppError> {
        let group = parse_group_jid(group_jid)?;
        let client = self.usable_client()?;
        let picture = client
            .contacts()
            .get_profile_picture(&group, false)
            .await
            .map_err(|error| WhatsAppError::Transient(format!("group picture: {error}")))?;
        let Some(picture) = picture else {
            return Ok(None);
        };
        let response = self
            .http
            .execute(HttpRequest::get(picture.url.clone()))
            .await
            .map_err(|error| WhatsAppError::Transient(format!("group picture: {error:#}")))?;
        match response.status_code {
            200 if response.body.len() <= MAX_GROUP_PICTURE_BYTES => Ok(Some(GroupPicture {
                id: picture.id,
                data: response.body,
            })),
            200 => Err(WhatsAppError::Rejected(
                "the group picture is larger than expected".to_owned(),
            )),
            404 | 410 => Ok(None),
            status => Err(WhatsAppError::Transient(format!(
                "group picture: HTTP {status}"
            ))),
        }
    }

    async fn groups(&self) -> Result<Vec<GroupSummary>, WhatsAppError> {
        let client = self.usable_client()?;
        let groups = client
            .groups()
            .get_participating()
            .await
            .map_err(|error| group_error(&error))?;
        let mut summaries: Vec<GroupSummary> = groups
            .into_iter()
            .map(|(jid, metadata)| GroupSummary {
                jid: jid.to_string(),
                participants: metadata
                    .size
                    .map(|size| size as usize)
                    .unwrap_or(metadata.participants.len()),
                subject: metadata.subject,
            })
            .collect();
        summaries.sort_by(|a, b| a.subject.cmp(&b.subject).then(a.jid.cmp(&b.jid)));
        Ok(summaries)
    }

    async fn join(&self, invite: &str) -> Result<JoinOutcome, WhatsAppError> {
        let client = self.usable_client()?;
        let joined = client
            .groups()
            .join_with_invite_code(invite)
            .await
            .map_err(|error| group_error(&error))?;
        match joined {
            JoinGroupResult::Joined(jid) => {
                let subject = match client.groups().get_metadata(&jid).await {
                    Ok(metadata) => metadata.subject,
                    Err(error) => {
                        tracing::debug!("subject of the joined group unknown: {error}");
                        String::new()
                    }
                };
                Ok(JoinOutcome::Joined {
                    jid: jid.to_string(),
                    subject,
                })
            }
            JoinGroupResult::PendingApproval(jid) => Ok(JoinOutcome::PendingApproval {
                jid: jid.to_string(),
            }),
        }
    }

    async fn forget_before(&self, cutoff_secs: i64) -> Result<usize, WhatsAppError> {
        self.polls
            .forget_polls_before(cutoff_secs)
            .map_err(|error| WhatsAppError::Transient(error.to_string()))
    }

    async fn download(&self, media: &Media, max_bytes: u64) -> Result<Vec<u8>, WhatsAppError> {
        let client = self.usable_client()?;
        crate::whatsapp::media::download(client, media, max_bytes).await
    }
}

fn group_error(error: &GroupError) -> WhatsAppError {
    match error {
        GroupError::InvalidRequest(reason) => WhatsAppError::Rejected(reason.clone()),
        other => chain_error(other),
    }
}

/// A text replying to `quoted` and/or mentioning numbers: WhatsApp clients find the
/// quoted message by its id and sender (the participant), so no copy of its
/// content is needed; a mention is `@<number>` in the text plus the number's JID.
fn text_with_context(
    client: &Client,
    text: &str,
    quoted: Option<&Quoted>,
    mentions: &[String],
) -> Result<wa::Message, WhatsAppError> {
    let mut context = match quoted {
        Some(quoted) => reply_context(client, quoted)?,
        None => wa::ContextInfo::default(),
    };
    context.mentioned_jid = mentions
        .iter()
        .map(|phone| Jid::pn(phone.as_str()).to_string())
        .collect();
    Ok(wa::Message {
        extended_text_message: wa::message::ExtendedTextMessage {
            text: Some(text.to_string()),
            context_info: context.into(),
            ..Default::default()
        }
        .into(),
        ..Default::default()
    })
}

/// The context that makes a message a reply to `quoted`.
fn reply_context(client: &Client, quoted: &Quoted) -> Result<wa::ContextInfo, WhatsAppError> {
    Ok(wa::ContextInfo {
        stanza_id: Some(quoted.id.clone()),
        participant: Some(participant_of(client, quoted)?),
        quoted_message: wa::Message::text(&quoted.text).into(),
        ..Default::default()
    })
}

/// The number's own address in `group`, as the group addresses its members (the
/// LID in LID-addressed groups): edits name their author with it.
async fn own_jid_in(client: &Client, group: &Jid) -> Result<String, WhatsAppError> {
    let own_pn = client.pn().ok_or(WhatsAppError::NotLinked)?;
    let lid_addressed = match client.groups().query_info(group).await {
        Ok(info) => info.addressing_mode == AddressingMode::Lid,
        Err(error) => return Err(group_error(&error)),
    };
    let own = match client.lid() {
        Some(lid) if lid_addressed => lid,
        _ => own_pn,
    };
    Ok(own.to_non_ad().to_string())
}

/// The number's poll (whatsapp-rust's `polls().create` shape, under our own id):
/// single-choice polls as `pollCreationMessageV3`, others as the first version, as
/// WhatsApp Web sends them; the secret voters derive their keys from rides in
/// `messageContextInfo`.
fn poll_message(
    question: &str,
    options: &[String],
    max_selections: u32,
    secret: Vec<u8>,
) -> wa::Message {
    let poll = wa::message::PollCreationMessage {
        name: Some(question.to_owned()),
        options: options
            .iter()
            .map(|option| wa::message::poll_creation_message::Option {
                option_name: Some(option.clone()),
                option_hash: None,
            })
            .collect(),
        selectable_options_count: Some(max_selections.clamp(1, options.len() as u32)),
        poll_content_type: Some(wa::message::PollContentType::TEXT),
        ..Default::default()
    };
    let single = max_selections <= 1;
    wa::Message {
        poll_creation_message_v3: if single {
            MessageField::some(poll.clone())
        } else {
            MessageField::none()
        },
        poll_creation_message: if single {
            MessageField::none()
        } else {
            MessageField::some(poll)
        },
        message_context_info: MessageField::some(wa::MessageContextInfo {
            message_secret: Some(secret),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An edit of the number's message `target` in `group` (WhatsApp's wire form: a
/// protocol message of type MESSAGE_EDIT carrying the new text).
fn edit_message(group: &Jid, target: &str, own_jid: String, text: &str) -> wa::Message {
    wa::Message {
        protocol_message: MessageField::some(wa::message::ProtocolMessage {
            key: MessageField::some(wa::MessageKey {
                remote_jid: Some(group.to_string()),
                from_me: Some(true),
                id: Some(target.to_owned()),
                participant: Some(own_jid),
            }),
            r#type: Some(ProtocolType::MESSAGE_EDIT),
            edited_message: MessageField::some(wa::Message::text(text)),
            timestamp_ms: Some(now_millis()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A "delete for everyone" of the number's own message `target` in `group`.
fn revoke_message(group: &Jid, target: &str) -> wa::Message {
    wa::Message {
        protocol_message: MessageField::some(wa::message::ProtocolMessage {
            key: MessageField::some(wa::MessageKey {
                remote_jid: Some(group.to_string()),
                from_me: Some(true),
                id: Some(target.to_owned()),
                participant: None,
            }),
            r#type: Some(ProtocolType::REVOKE),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The author of a quoted message as WhatsApp addresses it in a group.
fn participant_of(client: &Client, quoted: &Quoted) -> Result<String, WhatsAppError> {
    match &quoted.sender_phone {
        Some(phone) => Ok(Jid::pn(phone.as_str()).to_string()),
        None => client
            .pn()
            .map(|own| own.to_non_ad().to_string())
            .ok_or(WhatsAppError::NotLinked),
    }
}

fn parse_group_jid(group_jid: &str) -> Result<Jid, WhatsAppError> {
    match group_jid.parse::<Jid>() {
        Ok(jid) if jid.server == Server::Group => Ok(jid),
        _ => Err(WhatsAppError::Rejected(format!(
            "not a WhatsApp group id: {group_jid}"
        ))),
    }
}

fn send_error(error: &SendError) -> WhatsAppError {
    match error {
        SendError::NotLoggedIn => WhatsAppError::NotLinked,
        SendError::InvalidRequest(reason) => WhatsAppError::Rejected(reason.clone()),
        other => chain_error(other),
    }
}

/// Classifies a whatsapp-rust error by what its source chain says: the connection
/// being gone, a definite refusal by the server, or anything else (worth a retry).
fn chain_error(error: &(dyn std::error::Error + 'static)) -> WhatsAppError {
    // Imported here only: its `as_dyn_error` clashes with thiserror's derive.
    use whatsapp_rust::ErrorChainExt;

    if error.is_transport_unavailable() {
        return WhatsAppError::NotConnected;
    }
    if let Some(rejection) = error.server_rejection() {
        let temporary = rejection.error_type == Some("wait")
            || matches!(rejection.code, 408 | 429)
            || !(400..500).contains(&rejection.code);
        if !temporary {
            return WhatsAppError::Rejected(format!("{} {}", rejection.code, rejection.text));
        }
    }
    WhatsAppError::Transient(error.to_string())
}

/// What a group lets the number send, and who may act as its admin, from its
/// metadata.
#[derive(Debug, Clone)]
pub(super) struct SendRules {
    /// Announcement mode: only admins may send messages.
    admins_only: bool,
    number_is_admin: bool,
    /// The group's disappearing-message timer in seconds (0 = off).
    disappear_after: u32,
    /// The user parts of the admins' JIDs (LID and phone number where known).
    admins: Arc<HashSet<String>>,
}

impl SendRules {
    /// Whether `person` (a participant's JID, LID or phone number) is an admin.
    pub(super) fn is_admin(&self, person: &Jid) -> bool {
        self.admins.contains(person.user_base())
    }
}

/// [`SendRules`] per group, read from WhatsApp when first needed and forgotten
/// whenever the group changes (the next send reads them again).
#[derive(Clone, Default)]
pub(super) struct GroupRules {
    known: Arc<Mutex<HashMap<String, SendRules>>>,
}

impl GroupRules {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SendRules>> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) async fn of(
        &self,
        client: &Client,
        group: &Jid,
    ) -> Result<SendRules, WhatsAppError> {
        let key = group.to_string();
        if let Some(rules) = self.lock().get(&key) {
            return Ok(rules.clone());
        }
        let metadata = client
            .groups()
            .get_metadata(group)
            .await
            .map_err(|error| group_error(&error))?;
        let own = [client.pn(), client.lid()];
        let is_own = |jid: &Jid| {
            own.iter()
                .flatten()
                .any(|mine| mine.user_base() == jid.user_base() && mine.server == jid.server)
        };
        let rules = SendRules {
            admins_only: metadata.is_announcement,
            number_is_admin: metadata.participants.iter().any(|person| {
                person.is_admin()
                    && (is_own(&person.jid) || person.phone_number.as_ref().is_some_and(is_own))
            }),
            disappear_after: metadata
                .ephemeral
                .and_then(|settings| settings.expiration)
                .unwrap_or(0),
            admins: Arc::new(
                metadata
                    .participants
                    .iter()
                    .filter(|person| person.is_admin())
                    .flat_map(|person| [Some(&person.jid), person.phone_number.as_ref()])
                    .flatten()
                    .map(|jid| jid.user_base().to_owned())
                    .collect(),
            ),
        };
        self.lock().insert(key, rules.clone());
        Ok(rules)
    }

    pub(super) fn forget(&self, group: &str) {
        self.lock().remove(group);
    }

    pub(super) fn forget_all(&self) {
        self.lock().clear();
    }
}
