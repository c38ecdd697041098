//! The WhatsApp side of the bridge, behind one small boundary: a client to send with
//! and a sink that receives. The core never sees whatsapp-rust types, so it can be
//! driven by the in-process fake network as well as by the real adapter.

pub mod fake;
pub mod link;
mod media;
pub mod real;
pub mod server;
pub mod store;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::relay::location::Location;
use crate::relay::media::Media;
use crate::relay::WhatsAppText;

/// Why a WhatsApp operation failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum WhatsAppError {
    /// No device is linked yet: `passerelle login` has not been run.
    #[error("WhatsApp is not linked (run `passerelle login`)")]
    NotLinked,
    /// Linked but not connected right now; retry later.
    #[error("WhatsApp is not connected")]
    NotConnected,
    /// WhatsApp refused this request for good (e.g. not a member of the group).
    #[error("WhatsApp refused: {0}")]
    Rejected(String),
    /// A failure that may go away (network, timeout).
    #[error("WhatsApp error: {0}")]
    Transient(String),
    /// A file grew past what the bridge keeps (`[relay] max_file_mb`) or past the
    /// size its message declared: cut off after `received_over` bytes.
    #[error("the WhatsApp file is larger than {received_over} bytes")]
    TooLarge { received_over: u64 },
}

impl WhatsAppError {
    /// Whether retrying the same request later can succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            WhatsAppError::Rejected(_) | WhatsAppError::TooLarge { .. }
        )
    }

    /// Why, in words for the people whose message it was: a refusal's own reason
    /// (without "WhatsApp refused:"), else the whole error.
    pub fn reason(&self) -> String {
        match self {
            WhatsAppError::Rejected(reason) => reason.clone(),
            other => other.to_string(),
        }
    }
}

/// The connection state of the linked device, as shown by `status` and to admins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    NotLinked,
    Connecting,
    Connected,
    /// Gone for a while; whatsapp-rust reconnects by itself.
    Disconnected(String),
    /// Gone until the service is restarted (banned, outdated, replaced).
    Stopped(String),
    /// The phone unlinked this device: `passerelle login` is needed.
    LoggedOut(String),
}

impl ConnectionState {
    /// Whether an admin must act (as opposed to waiting for a reconnect).
    pub fn needs_admin(&self) -> bool {
        matches!(
            self,
            ConnectionState::Stopped(_) | ConnectionState::LoggedOut(_)
        )
    }

    /// The state as `status` and the admins read it.
    pub fn in_words(&self) -> String {
        match self {
            ConnectionState::NotLinked => "not linked (run `passerelle login`)".to_string(),
            ConnectionState::Connecting => "connecting".to_string(),
            ConnectionState::Connected => "connected".to_string(),
            ConnectionState::Disconnected(reason) => format!("disconnected: {reason}"),
            ConnectionState::Stopped(reason) => format!("stopped: {reason}"),
            ConnectionState::LoggedOut(reason) => format!("logged out: {reason}"),
        }
    }
}

/// What a group says about itself: its subject and, when it has one, its
/// description.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupProfile {
    pub subject: String,
    pub description: Option<String>,
}

/// A group the linked number is a member of, as `passerelle groups` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSummary {
    pub jid: String,
    pub subject: String,
    pub participants: usize,
}

/// What joining a group by invite link did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum JoinOutcome {
    /// The number is now a member of the group.
    Joined { jid: String, subject: String },
    /// The group requires an admin's approval; the request is waiting for it.
    PendingApproval { jid: String },
}

/// A message an outgoing reply quotes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quoted {
    pub id: String,
    /// Its sender's number; `None` when the bridge's own number sent it.
    pub sender_phone: Option<String>,
    /// What phones show of it in a reply's quote (they show none without it);
    /// empty where no quote is shown (reactions).
    pub text: String,
}

/// What the bridge's number sends to a group.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// A text, maybe as a reply.
    Text {
        text: String,
        reply_to: Option<Quoted>,
        /// Phone numbers mentioned (`@<number>` in `text`).
        mentions: Vec<String>,
    },
    /// A new text for the number's own message `target`.
    Edit { target: String, text: String },
    /// Deletes the number's own message `target` for everyone.
    Revoke { target: String },
    /// The number's reaction to `target`; an empty `emoji` removes it.
    React { target: Quoted, emoji: String },
    /// A point on the map.
    Location { location: Location },
    /// A poll of the number's: `question`, 2 to 12 `options`, of which one may pick
    /// up to `max_selections`. Its votes come back readable (the poll's secret is
    /// kept).
    Poll {
        question: String,
        options: Vec<String>,
        max_selections: u32,
    },
    /// A file (`data`, described by `media`), with a caption where WhatsApp shows
    /// one for its kind, maybe as a reply.
    Media {
        media: Media,
        data: Vec<u8>,
        caption: Option<String>,
        reply_to: Option<Quoted>,
    },
}

/// Sending side of the boundary.
#[async_trait]
pub trait WhatsAppClient: Send + Sync {
    /// Sends `outgoing` to the group with the given message id. Sending the same id
    /// twice must not produce a second message (the bridge derives ids from Matrix
    /// events).
    async fn send(
        &self,
        group_jid: &str,
        message_id: &str,
        outgoing: &Outgoing,
    ) -> Result<(), WhatsAppError>;

    /// The group's subject (its name) and description, for the Matrix room's name
    /// and topic.
    async fn group_profile(&self, group_jid: &str) -> Result<GroupProfile, WhatsAppError>;

    /// The group's current picture, `None` when it has none. Adapters without
    /// pictures have none.
    async fn group_picture(&self, group_jid: &str) -> Result<Option<GroupPicture>, WhatsAppError> {
        let _ = group_jid;
        Ok(None)
    }

    /// The groups the linked number is a member of.
    async fn groups(&self) -> Result<Vec<GroupSummary>, WhatsAppError>;

    /// Joins a group by its invite link (`https://chat.whatsapp.com/CODE`) or code.
    async fn join(&self, invite: &str) -> Result<JoinOutcome, WhatsAppError>;

    /// Downloads the file of an incoming media message (`media` as this side
    /// described it), keeping at most `max_bytes` ([`WhatsAppError::TooLarge`]).
    async fn download(&self, media: &Media, max_bytes: u64) -> Result<Vec<u8>, WhatsAppError>;

    /// Forgets what this side keeps about messages older than `cutoff_secs` (Unix
    /// seconds): the polls kept to read their votes. Returns how many. Adapters
    /// that keep nothing forget nothing.
    async fn forget_before(&self, _cutoff_secs: i64) -> Result<usize, WhatsAppError> {
        Ok(0)
    }
}

/// Error returned by the sink when a message could not be stored: the adapter must
/// then not acknowledge it to WhatsApp, so it is delivered again.
#[derive(Debug, thiserror::Error)]
#[error("could not store incoming WhatsApp message: {0}")]
pub struct SinkError(pub String);

/// A change of a group's own state made in WhatsApp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupChange {
    /// The group's name.
    Subject(String),
    /// The group's description; `None` when it was removed.
    Description(Option<String>),
    /// The group's picture was set, changed or removed (read it with
    /// [`WhatsAppClient::group_picture`]).
    Picture,
}

/// A group's picture: WhatsApp's id for it (it changes with the picture) and the
/// image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPicture {
    pub id: String,
    pub data: Vec<u8>,
}

/// Receiving side of the boundary: implemented by the bridge.
pub trait InboundSink: Send + Sync {
    /// Called for each incoming group text; returns once the message is durably
    /// queued (or deliberately skipped). Only then may the adapter acknowledge it.
    fn message(&self, message: WhatsAppText) -> Result<(), SinkError>;
    /// Called when the connection state changes.
    fn connection(&self, state: ConnectionState);
    /// Called when a group's name or description changed in WhatsApp.
    fn group_changed(&self, group_jid: &str, change: GroupChange);
    /// Whether group `group_jid` is bridged: the adapter keeps nothing of the
    /// others' messages (such as their polls).
    fn bridges(&self, _group_jid: &str) -> bool {
        true
    }
}
