//! An in-process fake WhatsApp network for tests of the core: groups, members posting
//! texts, an offline queue while the bridge is away, and a log of what the bridge sent.
//! It stands in for WhatsApp behind the same boundary the real adapter implements.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::{
    ConnectionState, GroupChange, GroupProfile, GroupSummary, InboundSink, JoinOutcome, Outgoing,
    Quoted, WhatsAppClient, WhatsAppError,
};
use crate::relay::media::Media;
use crate::relay::{Mention, WhatsAppRelation, WhatsAppText};

/// The phone number of the association in the fake network.
pub const BRIDGE_PHONE: &str = "33700000000";

/// One message as stored in a fake group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeMessage {
    pub id: String,
    pub sender_phone: String,
    pub text: String,
    /// What earlier message it replies to, edits, deletes or reacts to.
    pub relation: Option<WhatsAppRelation>,
    /// The file it carries (`text` is then its caption), with its bytes.
    pub media: Option<(Media, Vec<u8>)>,
    /// When the message reached the group.
    pub at: std::time::Instant,
}

struct FakeGroup {
    subject: String,
    log: Vec<FakeMessage>,
    /// Whether the bridge's number is a member (else it can only join by invite).
    bridge_member: bool,
    invite_code: String,
}

#[derive(Default)]
struct FakeState {
    groups: HashMap<String, FakeGroup>,
    sink: Option<Arc<dyn InboundSink>>,
    /// Files members posted, by the `source` of their [`Media`].
    files: HashMap<String, Vec<u8>>,
    /// Messages for the bridge while it was not attached, delivered on attach.
    offline: Vec<WhatsAppText>,
    connected: bool,
    echo_own_messages: bool,
    next_id: u64,
}

/// The fake network. Share it as `Arc<FakeNetwork>`.
#[derive(Default)]
pub struct FakeNetwork {
    state: Mutex<FakeState>,
}

impl FakeNetwork {
    pub fn new() -> Arc<Self> {
        Arc::new(FakeNetwork::default())
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        // A test that panicked while holding the lock already failed; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates a group the bridge's number is a member of; returns its jid.
    pub fn create_group(&self, subject: &str) -> String {
        self.add_group(subject, true).0
    }

    /// Creates a group the bridge's number is not in yet; returns its jid and the
    /// invite link with which it can join.
    pub fn create_group_to_join(&self, subject: &str) -> (String, String) {
        let (jid, code) = self.add_group(subject, false);
        (jid, format!("https://chat.whatsapp.com/{code}"))
    }

    fn add_group(&self, subject: &str, bridge_member: bool) -> (String, String) {
        let mut state = self.lock();
        state.next_id += 1;
        let jid = format!("1203630{:011}@g.us", state.next_id);
        let invite_code = format!("FAKEINVITE{:06}", state.next_id);
        state.groups.insert(
            jid.clone(),
            FakeGroup {
                subject: subject.to_string(),
                log: Vec::new(),
                bridge_member,
                invite_code: invite_code.clone(),
            },
        );
        (jid, invite_code)
    }

    /// A member renames the group (`Subject`) or changes its description.
    pub fn change_group(&self, group_jid: &str, change: GroupChange) {
        let sink = {
            let mut state = self.lock();
            if let (Some(group), GroupChange::Subject(subject)) =
                (state.groups.get_mut(group_jid), &change)
            {
                group.subject = subject.clone();
            }
            state.sink.clone().filter(|_| state.connected)
        };
        if let Some(sink) = sink {
            sink.group_changed(group_jid, change);
        }
    }

    /// WhatsApp logs the bridge's device out: it disconnects for good.
    pub fn log_out(&self, reason: &str) {
        let sink = {
            let mut state = self.lock();
            state.connected = false;
            state.sink.clone()
        };
        if let Some(sink) = sink {
            sink.connection(ConnectionState::LoggedOut(reason.to_string()));
        }
    }

    /// A member posts a text; the bridge receives it now if attached, else on attach.
    pub fn post(
        &self,
        group_jid: &str,
        phone: &str,
        push_name: Option<&str>,
        text: &str,
    ) -> String {
        self.post_related(group_jid, phone, push_name, text, None, &[])
    }

    /// A member posts something the bridge cannot relay as text (`kind`: "image"...).
    pub fn post_unsupported(
        &self,
        group_jid: &str,
        phone: &str,
        push_name: Option<&str>,
        kind: &str,
    ) -> String {
        self.post_message(WhatsAppText {
            group_jid: group_jid.to_string(),
            sender_phone: phone.to_string(),
            push_name: push_name.map(str::to_string),
            unsupported: Some(kind.to_string()),
            ..WhatsAppText::default()
        })
    }

    /// A member posts a file (`media.source` is filled in) with a caption.
    pub fn post_media(
        &self,
        group_jid: &str,
        phone: &str,
        push_name: Option<&str>,
        mut media: Media,
        data: Vec<u8>,
        caption: &str,
    ) -> String {
        {
            let mut state = self.lock();
            state.next_id += 1;
            media.source = format!("fake-file-{}", state.next_id);
            media.size = Some(data.len() as u64);
            state.files.insert(media.source.clone(), data);
        }
        self.post_message(WhatsAppText {
            group_jid: group_jid.to_string(),
            sender_phone: phone.to_string(),
            push_name: push_name.map(str::to_string),
            text: caption.to_string(),
            media: Some(media),
            ..WhatsAppText::default()
        })
    }

    /// A member posts a text that replies to, edits, deletes or reacts to an earlier
    /// message (`relation`), and may mention people (`@<phone>` in `text`).
    pub fn post_related(
        &self,
        group_jid: &str,
        phone: &str,
        push_name: Option<&str>,
        text: &str,
        relation: Option<WhatsAppRelation>,
        mentioned_phones: &[&str],
    ) -> String {
        self.post_message(WhatsAppText {
            group_jid: group_jid.to_string(),
            sender_phone: phone.to_string(),
            push_name: push_name.map(str::to_string),
            text: text.to_string(),
            relation,
            mentions: mentioned_phones
                .iter()
                .map(|phone| Mention {
                    phone: phone.to_string(),
                    name: None,
                })
                .collect(),
            ..WhatsAppText::default()
        })
    }

    /// Gives `message` an id, logs it in its group and delivers it to the bridge.
    fn post_message(&self, mut message: WhatsAppText) -> String {
        let sink = {
            let mut state = self.lock();
            state.next_id += 1;
            message.message_id = format!("FAKE{:012X}", state.next_id);
            let mut bridge_member = true;
            if let Some(group) = state.groups.get_mut(&message.group_jid) {
                group.log.push(FakeMessage {
                    id: message.message_id.clone(),
                    sender_phone: message.sender_phone.clone(),
                    text: message.text.clone(),
                    relation: message.relation.clone(),
                    media: None,
                    at: std::time::Instant::now(),
                });
                bridge_member = group.bridge_member;
            }
            match (&state.sink, state.connected) {
                _ if !bridge_member => return message.message_id,
                (Some(sink), true) => Some(sink.clone()),
                _ => {
                    state.offline.push(message.clone());
                    None
                }
            }
        };
        let id = message.message_id.clone();
        if let Some(sink) = sink {
            if sink.message(message.clone()).is_err() {
                // Not acknowledged: WhatsApp would deliver it again later.
                self.lock().offline.push(message);
            }
        }
        id
    }

    /// Attaches the bridge and delivers what waited while it was away.
    pub fn attach(&self, sink: Arc<dyn InboundSink>) {
        let pending = {
            let mut state = self.lock();
            state.sink = Some(sink.clone());
            state.connected = true;
            std::mem::take(&mut state.offline)
        };
        sink.connection(ConnectionState::Connected);
        for (index, message) in pending.iter().enumerate() {
            if sink.message(message.clone()).is_err() {
                self.lock().offline.extend(pending[index..].iter().cloned());
                break;
            }
        }
    }

    /// Detaches the bridge (as if passerelle stopped).
    pub fn detach(&self) {
        let mut state = self.lock();
        state.sink = None;
        state.connected = false;
    }

    /// When on, the bridge's own sent messages come back to it (as WhatsApp may do
    /// with messages of one's own number), to prove the bridge never loops.
    pub fn set_echo_own_messages(&self, on: bool) {
        self.lock().echo_own_messages = on;
    }

    /// Everything posted in a group, by members and by the bridge, in order.
    pub fn messages(&self, group_jid: &str) -> Vec<FakeMessage> {
        self.lock()
            .groups
            .get(group_jid)
            .map(|g| g.log.clone())
            .unwrap_or_default()
    }

    /// The texts of the new messages (replies included, not edits or deletions) the
    /// bridge posted in a group, in order.
    pub fn bridge_texts(&self, group_jid: &str) -> Vec<String> {
        self.messages(group_jid)
            .into_iter()
            .filter(|m| m.sender_phone == BRIDGE_PHONE)
            .filter(|m| matches!(m.relation, None | Some(WhatsAppRelation::Reply { .. })))
            .map(|m| m.text)
            .collect()
    }

    /// A client for the bridge to send with.
    pub fn client(self: &Arc<Self>) -> Arc<dyn WhatsAppClient> {
        Arc::new(FakeClient {
            network: self.clone(),
        })
    }
}

struct FakeClient {
    network: Arc<FakeNetwork>,
}

#[async_trait]
impl WhatsAppClient for FakeClient {
    async fn send(
        &self,
        group_jid: &str,
        message_id: &str,
        outgoing: &Outgoing,
    ) -> Result<(), WhatsAppError> {
        let mut file = None;
        let reply = |reply_to: &Option<Quoted>| {
            reply_to.as_ref().map(|quoted| WhatsAppRelation::Reply {
                id: quoted.id.clone(),
                quoted: None,
            })
        };
        let (text, relation) = match outgoing {
            Outgoing::Text { text, reply_to, .. } => (text.clone(), reply(reply_to)),
            Outgoing::Location { location } => (location.describe(), None),
            Outgoing::Poll {
                question, options, ..
            } => (format!("{question}: {}", options.join(" / ")), None),
            Outgoing::Media {
                media,
                data,
                caption,
                reply_to,
            } => {
                file = Some((media.clone(), data.clone()));
                (caption.clone().unwrap_or_default(), reply(reply_to))
            }
            Outgoing::Edit { target, text } => (
                text.clone(),
                Some(WhatsAppRelation::Edit { id: target.clone() }),
            ),
            Outgoing::Revoke { target } => (
                String::new(),
                Some(WhatsAppRelation::Revoke { id: target.clone() }),
            ),
            Outgoing::React { target, emoji } => (
                String::new(),
                Some(WhatsAppRelation::Reaction {
                    id: target.id.clone(),
                    emoji: emoji.clone(),
                }),
            ),
        };
        let echo = {
            let mut state = self.network.lock();
            if !state.connected {
                return Err(WhatsAppError::NotConnected);
            }
            let echo_on = state.echo_own_messages;
            let sink = state.sink.clone();
            let group = state
                .groups
                .get_mut(group_jid)
                .filter(|group| group.bridge_member)
                .ok_or_else(|| WhatsAppError::Rejected("not a member of this group".into()))?;
            if group.log.iter().any(|m| m.id == message_id) {
                return Ok(()); // same id: WhatsApp keeps one message
            }
            if let Some(WhatsAppRelation::Edit { id } | WhatsAppRelation::Revoke { id }) = &relation
            {
                // WhatsApp lets a sender change only their own messages.
                let own = group
                    .log
                    .iter()
                    .any(|m| &m.id == id && m.sender_phone == BRIDGE_PHONE);
                if !own {
                    return Err(WhatsAppError::Rejected(
                        "not a message of this number".into(),
                    ));
                }
            }
            group.log.push(FakeMessage {
                id: message_id.to_string(),
                sender_phone: BRIDGE_PHONE.to_string(),
                text: text.clone(),
                relation: relation.clone(),
                media: file,
                at: std::time::Instant::now(),
            });
            sink.filter(|_| echo_on)
        };
        if let Some(sink) = echo {
            let _ = sink.message(WhatsAppText {
                group_jid: group_jid.to_string(),
                message_id: message_id.to_string(),
                sender_phone: BRIDGE_PHONE.to_string(),
                text,
                from_me: true,
                relation,
                ..WhatsAppText::default()
            });
        }
        Ok(())
    }

    async fn group_profile(&self, group_jid: &str) -> Result<GroupProfile, WhatsAppError> {
        let state = self.network.lock();
        if !state.connected {
            return Err(WhatsAppError::NotConnected);
        }
        state
            .groups
            .get(group_jid)
            .filter(|group| group.bridge_member)
            .map(|g| GroupProfile {
                subject: g.subject.clone(),
                description: None,
            })
            .ok_or_else(|| WhatsAppError::Rejected("not a member of this group".into()))
    }

    async fn groups(&self) -> Result<Vec<GroupSummary>, WhatsAppError> {
        let state = self.network.lock();
        if !state.connected {
            return Err(WhatsAppError::NotConnected);
        }
        let mut groups: Vec<GroupSummary> = state
            .groups
            .iter()
            .filter(|(_, group)| group.bridge_member)
            .map(|(jid, group)| {
                // The fake keeps no member list: everyone who posted, and the bridge.
                let mut people: Vec<&str> =
                    group.log.iter().map(|m| m.sender_phone.as_str()).collect();
                people.push(BRIDGE_PHONE);
                people.sort_unstable();
                people.dedup();
                GroupSummary {
                    jid: jid.clone(),
                    subject: group.subject.clone(),
                    participants: people.len(),
                }
            })
            .collect();
        groups.sort_by(|a, b| a.jid.cmp(&b.jid));
        Ok(groups)
    }

    async fn join(&self, invite: &str) -> Result<JoinOutcome, WhatsAppError> {
        let code = invite.trim().rsplit('/').next().unwrap_or_default();
        let mut state = self.network.lock();
        if !state.connected {
            return Err(WhatsAppError::NotConnected);
        }
        let (jid, group) = state
            .groups
            .iter_mut()
            .find(|(_, group)| !code.is_empty() && group.invite_code == code)
            .ok_or_else(|| WhatsAppError::Rejected("this invite link is not valid".into()))?;
        group.bridge_member = true;
        Ok(JoinOutcome::Joined {
            jid: jid.clone(),
            subject: group.subject.clone(),
        })
    }

    async fn download(&self, media: &Media, max_bytes: u64) -> Result<Vec<u8>, WhatsAppError> {
        let state = self.network.lock();
        if !state.connected {
            return Err(WhatsAppError::NotConnected);
        }
        let file = state
            .files
            .get(&media.source)
            .ok_or_else(|| WhatsAppError::Rejected("no such file".into()))?;
        if file.len() as u64 > max_bytes {
            return Err(WhatsAppError::TooLarge {
                received_over: max_bytes,
            });
        }
        Ok(file.clone())
    }
}
