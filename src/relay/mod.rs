//! The core of the bridge: what a message is on each side, whether it may cross, and
//! how it reads once it has crossed. Knows nothing of either SDK.

pub mod format;
pub mod location;
pub mod media;
pub mod mentions;
pub mod pacing;
pub mod template;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{GroupFile, ReactionsToMatrix, ReactionsToWhatsApp, RelayConfig, Templates};
use format::escape_html;
use location::Location;
use media::Media;

/// How a WhatsApp message refers to an earlier one (by WhatsApp message id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WhatsAppRelation {
    /// A reply to `id`; `quoted` is the quoted text WhatsApp carried along, shown
    /// when the bridge never saw `id`.
    Reply { id: String, quoted: Option<String> },
    /// A new text for `id` (the sender edited it).
    Edit { id: String },
    /// `id` was deleted for everyone.
    Revoke { id: String },
    /// A reaction to `id`; an empty `emoji` removes the sender's reaction.
    Reaction { id: String, emoji: String },
}

/// A WhatsApp person mentioned in a text (which holds `@<phone>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mention {
    pub phone: String,
    /// Their WhatsApp name, when the bridge knows it.
    pub name: Option<String>,
}

/// Something shared in WhatsApp that Matrix gets as a readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shared {
    /// A contact card: the name shown and the phone numbers it lists.
    Contact { name: String, phones: Vec<String> },
    /// A new poll, with its options.
    Poll {
        question: String,
        options: Vec<String>,
    },
    /// A vote in a poll: what it says when the bridge saw the poll and could read
    /// the vote (votes are encrypted with the poll's secret), else nothing.
    PollVote(Option<Box<PollBallot>>),
    /// A photo, video or voice note that can be opened once, on a phone only: its
    /// file is never fetched.
    ViewOnce { kind: String },
    /// People joined, left, were added, removed, promoted or demoted; `by` is who
    /// did it, when WhatsApp said.
    Members {
        change: MemberChange,
        people: Vec<Mention>,
        by: Option<Mention>,
    },
    /// A setting of the group changed (by the message's sender, when known).
    Setting(GroupSetting),
    /// The sender started a group call (voice, or video).
    Call { video: bool },
}

/// A vote read from a poll the bridge saw, with the poll it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollBallot {
    pub poll_id: String,
    pub question: String,
    pub options: Vec<String>,
    /// Phone number of who started the poll.
    pub creator_phone: String,
    /// The options the voter picks now (none: they took their vote back).
    pub choices: Vec<String>,
    /// When the voter voted (ms since the epoch): a voter's latest vote counts.
    pub voted_at_ms: i64,
    /// Filled in by the service from what it recorded before the relay reads the
    /// ballot: the poll creator's name, every voter's current vote, and whether the
    /// poll was asked in Matrix (its tally is then a reply line of the bot's, since
    /// the poll's event is not the bot's to edit).
    pub creator_name: Option<String>,
    pub tally: Vec<PollVoter>,
    pub asked_in_matrix: bool,
}

/// One voter's current vote, as the poll's tally shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollVoter {
    pub name: String,
    /// Empty when they took their vote back.
    pub choices: Vec<String>,
}

/// A group setting that changes what the room can expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupSetting {
    /// New messages disappear after this many seconds (0: they stay).
    Disappearing(u32),
    /// Only admins may send messages (announcement mode), or everyone again.
    OnlyAdminsSend(bool),
}

/// What happened to members of a WhatsApp group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    Added,
    Removed,
    Promoted,
    Demoted,
}

/// A text message received in a WhatsApp group, as the adapter saw it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WhatsAppText {
    pub group_jid: String,
    pub message_id: String,
    /// Phone number of the sender (digits only, no `+`), when known.
    pub sender_phone: String,
    /// The sender's WhatsApp push name, when the message carried one.
    pub push_name: Option<String>,
    pub text: String,
    /// Sent from the association's own number (the phone or this bridge).
    pub from_me: bool,
    /// The kind of message (`image`, `poll`...) when it is not a text the bridge can
    /// relay yet; `text` is then empty and Matrix is told what it missed.
    pub unsupported: Option<String>,
    /// What earlier message this one replies to, edits, deletes or reacts to.
    pub relation: Option<WhatsAppRelation>,
    /// People mentioned in `text`.
    pub mentions: Vec<Mention>,
    /// The file a media message carries; `text` is then its caption (maybe empty).
    pub media: Option<Media>,
    /// A shared location; `text` is then its comment (maybe empty).
    pub location: Option<Location>,
    /// A contact, poll, vote or view-once message, shown as a readable line.
    pub shared: Option<Shared>,
}

/// What kind of Matrix message event arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatrixKind {
    Text,
    Emote,
    Notice,
    /// Any other message type (its `msgtype` is in the body): not relayed yet.
    Other,
}

/// How a Matrix event refers to an earlier one (by event id).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum MatrixRelation {
    #[default]
    None,
    /// A reply to `to`.
    Reply { to: String },
    /// An edit (`m.replace`) of `of`; the event's body is the new text.
    Replace { of: String },
    /// A redaction of `of`.
    Redaction { of: String },
    /// A reaction (`m.annotation`) with `key` to `to`.
    Reaction { to: String, key: String },
    /// A vote in the Matrix poll `poll`; the event's body is the options picked
    /// (comma-separated; empty when the vote was taken back).
    PollVote { poll: String },
    /// The Matrix poll `poll` was ended.
    PollEnd { poll: String },
}

/// A poll started in Matrix (MSC3381 `poll.start`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatrixPoll {
    pub question: String,
    pub options: Vec<String>,
    /// How many options one may pick (at least 1).
    pub max_selections: u32,
}

impl MatrixPoll {
    /// The most options a WhatsApp poll has.
    pub const MAX_OPTIONS: usize = 12;

    /// Whether WhatsApp can hold this poll: 2 to 12 options, all different, with
    /// a question.
    pub fn fits_whatsapp(&self) -> bool {
        let mut seen = std::collections::HashSet::new();
        (2..=Self::MAX_OPTIONS).contains(&self.options.len())
            && self.options.iter().all(|option| seen.insert(option.trim()))
            && self.options.iter().all(|option| !option.trim().is_empty())
            && !self.question.trim().is_empty()
    }
}

/// A text message event received in a bridged Matrix room.
#[derive(Debug, Clone, PartialEq)]
pub struct MatrixText {
    pub room_id: String,
    pub event_id: String,
    pub sender: String,
    /// The sender's display name in that room, when set.
    pub sender_display_name: Option<String>,
    pub kind: MatrixKind,
    pub body: String,
    /// The HTML formatted body (`org.matrix.custom.html`), when the client sent one.
    pub html: Option<String>,
    /// Whether the event is a reply (its body may start with a quoted fallback).
    pub is_reply: bool,
    pub relation: MatrixRelation,
    /// The file of an `m.image`, `m.video`, `m.audio` or `m.file`; `body` and `html`
    /// are then its caption, empty when the event has none.
    pub media: Option<Media>,
    /// The point of an `m.location` (`body` is then empty).
    pub location: Option<Location>,
    /// A poll started (`body` is then empty).
    pub poll: Option<MatrixPoll>,
}

/// What a Matrix post does besides posting a new message. Targets are WhatsApp
/// message ids: the Matrix events they map to are looked up when the post is sent,
/// after everything queued before it in the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum MatrixChange {
    /// Replace the text of the event mirroring `of`.
    Edit { of: String },
    /// Redact the event mirroring `of`.
    Redact { of: String },
    /// A line of the bot (the post's text) about `to`, found again by `key`: posted
    /// as a reply, edited when it changes, redacted when `removed`. One per message
    /// and sender for reactions shown as lines; one per poll for the WhatsApp votes
    /// in a poll asked in Matrix.
    #[serde(rename = "reaction")]
    ReplyLine {
        to: String,
        key: String,
        removed: bool,
    },
    /// `reactor` now reacts `emoji` (empty: no longer) to `to`, shown as the bot's
    /// own reaction on the mirrored event, one per emoji whoever reacted so.
    Annotation {
        to: String,
        reactor: String,
        emoji: String,
    },
}

/// What the bot posts in a Matrix room (stored in the outbox as JSON; fields added
/// later default, so rows queued by an older version still read).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MatrixPost {
    pub body: String,
    pub html: String,
    /// The WhatsApp message this one replies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// The quoted text, shown as a quote when `reply_to` was never bridged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quoted: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<MatrixChange>,
    /// Who wrote the WhatsApp message (their number), recorded with the link.
    #[serde(default)]
    pub sender: String,
    /// A file to post, `body`/`html` being its caption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<Media>,
    /// The sender's name as shown, for a notice in place of the file if it cannot be
    /// posted after all.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sender_name: String,
    /// A location to post (as `m.location`, `body` being its text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
}

/// What a WhatsApp post does besides sending a new message. Targets are Matrix event
/// ids, looked up when the post is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum WhatsAppChange {
    /// Edit the bridge's WhatsApp message mirroring `of`.
    Edit { of: String },
    /// Delete for everyone the bridge's WhatsApp message mirroring `of`.
    Revoke { of: String },
    /// React with `emoji` to the WhatsApp message mirrored by `to`.
    React { to: String, emoji: String },
    /// A line (the post's text) answering the number's WhatsApp poll that mirrors
    /// the Matrix poll `poll`: a vote or the poll's end. Not sent when that poll
    /// never crossed (there is nothing to answer).
    AnswerPoll { poll: String },
}

/// What the shared number posts in a WhatsApp group (stored in the outbox as JSON;
/// fields added later default).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WhatsAppPost {
    pub text: String,
    /// The Matrix event this one replies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<WhatsAppChange>,
    /// Who wrote the Matrix event (their user id): recorded with the link, and
    /// checked against the original's author for edits and deletions.
    #[serde(default)]
    pub sender: String,
    /// A file to send. `text` is its caption when WhatsApp shows captions for its
    /// kind, else a line of its own sent just before it (so the sender is named).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<Media>,
    /// The sender's name as shown, for a line in place of the file if it cannot be
    /// sent after all.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sender_name: String,
    /// A location to send; `text` is then a line of its own sent just before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// A poll to send; `text` is then a line of its own sent just before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll: Option<MatrixPoll>,
}

/// Why a message was not relayed. Logged at debug level only (never with content).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The WhatsApp group has no group file.
    UnapprovedGroup,
    /// The Matrix room is not the room of an approved group.
    UnbridgedRoom,
    /// A message the bridge itself sent, seen again.
    OwnEcho,
    /// The Matrix sender is not allowed to speak by the group file.
    NotAllowed,
    /// m.notice events are never relayed (bots talk in notices).
    Notice,
    /// Nothing to say (empty text).
    Empty,
    /// Longer than WhatsApp accepts in one message.
    TooLong,
    /// A message type the bridge does not relay (yet): the sender is told.
    Unsupported,
    /// A reaction, with `[relay]` set to ignore reactions this way.
    ReactionIgnored,
    /// A member change, with `[relay] member_notices = false`.
    MemberNoticeOff,
    /// A Matrix poll WhatsApp cannot hold (not 2 to 12 different options): the
    /// sender is told.
    PollDoesNotFit,
}

/// The longest text WhatsApp accepts in one message (characters).
pub const WHATSAPP_MAX_TEXT_CHARS: usize = 65_536;

/// Decides and formats messages crossing the bridge.
#[derive(Debug, Clone)]
pub struct Relay {
    bot_user: String,
    templates: Templates,
    settings: RelayConfig,
}

impl Relay {
    pub fn new(bot_user: impl Into<String>, templates: Templates, settings: RelayConfig) -> Self {
        Relay {
            bot_user: bot_user.into(),
            templates,
            settings,
        }
    }

    /// WhatsApp -> Matrix. `group` is the group file approving the chat, if any;
    /// `sent_by_bridge` tells whether the store knows this id as one the bridge sent.
    pub fn from_whatsapp(
        &self,
        group: Option<&GroupFile>,
        message: &WhatsAppText,
        sent_by_bridge: bool,
    ) -> Result<MatrixPost, Skip> {
        if group.is_none() {
            return Err(Skip::UnapprovedGroup);
        }
        if sent_by_bridge || (message.from_me && looks_like_bridge_id(&message.message_id)) {
            return Err(Skip::OwnEcho);
        }
        // The bridge's own edits and deletions, seen again from its number.
        if let Some(WhatsAppRelation::Edit { id } | WhatsAppRelation::Revoke { id }) =
            &message.relation
        {
            if message.from_me && looks_like_bridge_id(id) {
                return Err(Skip::OwnEcho);
            }
        }
        let name = whatsapp_display_name(message);
        match &message.relation {
            Some(WhatsAppRelation::Revoke { id }) => {
                return Ok(MatrixPost {
                    change: Some(MatrixChange::Redact { of: id.clone() }),
                    sender: message.sender_phone.clone(),
                    ..MatrixPost::default()
                });
            }
            Some(WhatsAppRelation::Reaction { .. })
                if self.settings.reactions_to_matrix == ReactionsToMatrix::Ignore =>
            {
                return Err(Skip::ReactionIgnored);
            }
            Some(WhatsAppRelation::Reaction { id, emoji })
                if self.settings.reactions_to_matrix == ReactionsToMatrix::Reaction =>
            {
                return Ok(MatrixPost {
                    change: Some(MatrixChange::Annotation {
                        to: id.clone(),
                        reactor: message.sender_phone.clone(),
                        emoji: single_line(emoji),
                    }),
                    sender: message.sender_phone.clone(),
                    ..MatrixPost::default()
                });
            }
            Some(WhatsAppRelation::Reaction { id, emoji }) => {
                let emoji = single_line(emoji);
                return Ok(MatrixPost {
                    body: format!("{name} reacted {emoji}"),
                    html: format!(
                        "<strong>{}</strong> reacted {}",
                        escape_html(&name),
                        escape_html(&emoji)
                    ),
                    reply_to: Some(id.clone()),
                    quoted: None,
                    change: Some(MatrixChange::ReplyLine {
                        to: id.clone(),
                        key: reaction_key(id, &message.sender_phone),
                        removed: emoji.is_empty(),
                    }),
                    sender: message.sender_phone.clone(),
                    ..MatrixPost::default()
                });
            }
            _ => {}
        }
        if let Some(kind) = &message.unsupported {
            let what = match kind.as_str() {
                "other" => "a kind of message".to_owned(),
                kind => with_article(kind),
            };
            let note =
                format!("sent {what} that passerelle does not relay yet: see it in WhatsApp");
            return Ok(MatrixPost {
                body: format!("{name} {note}."),
                html: format!("<em>{} {}.</em>", escape_html(&name), escape_html(&note)),
                sender: message.sender_phone.clone(),
                ..MatrixPost::default()
            });
        }
        if let Some(Shared::PollVote(Some(ballot))) = &message.shared {
            if ballot.asked_in_matrix {
                let (body, html) = tally_lines(&ballot.options, &ballot.tally);
                return Ok(MatrixPost {
                    body,
                    html,
                    change: Some(MatrixChange::ReplyLine {
                        to: ballot.poll_id.clone(),
                        key: format!("poll-tally:{}", ballot.poll_id),
                        removed: false,
                    }),
                    sender: message.sender_phone.clone(),
                    ..MatrixPost::default()
                });
            }
            // The poll's line shows the tally: the vote edits it.
            let creator = match ballot.creator_name.as_deref().map(single_line) {
                Some(name) if !name.is_empty() => name,
                _ => format!("+{}", ballot.creator_phone),
            };
            let (body, html) = poll_lines(
                &creator,
                &ballot.question,
                &ballot.options,
                Some(&ballot.tally),
            );
            return Ok(MatrixPost {
                body,
                html,
                change: Some(MatrixChange::Edit {
                    of: ballot.poll_id.clone(),
                }),
                sender: message.sender_phone.clone(),
                ..MatrixPost::default()
            });
        }
        if let Some(shared) = &message.shared {
            if matches!(shared, Shared::Members { .. }) && !self.settings.member_notices {
                return Err(Skip::MemberNoticeOff);
            }
            let (body, html) = shared_for_matrix(shared, &name);
            // A contact's card comes along as a file, the line as its caption.
            let card = match shared {
                Shared::Contact { .. } => message.media.clone(),
                _ => None,
            };
            return Ok(MatrixPost {
                body,
                html,
                sender: message.sender_phone.clone(),
                sender_name: if card.is_some() {
                    name.clone()
                } else {
                    String::new()
                },
                media: card,
                ..MatrixPost::default()
            });
        }
        if let Some(location) = &message.location {
            let comment = single_line(&message.text);
            let mut body = format!("{name} shared a location: {}", location.describe());
            let mut html = format!(
                "<strong>{}</strong> shared a location: {}",
                escape_html(&name),
                location_html(location)
            );
            if !comment.is_empty() {
                body.push_str(&format!(" ({comment})"));
                html.push_str(&format!(" ({})", escape_html(&comment)));
            }
            return Ok(MatrixPost {
                body,
                html,
                sender: message.sender_phone.clone(),
                reply_to: match &message.relation {
                    Some(WhatsAppRelation::Reply { id, .. }) => Some(id.clone()),
                    _ => None,
                },
                location: Some(location.clone()),
                ..MatrixPost::default()
            });
        }
        if let Some(media) = &message.media {
            if let Some((body, html)) = self.too_large(media, &name, "WhatsApp") {
                return Ok(MatrixPost {
                    body,
                    html,
                    sender: message.sender_phone.clone(),
                    ..MatrixPost::default()
                });
            }
        }
        let (body, html) = match &message.media {
            // No caption: the caption names the sender, so nobody wonders who sent it.
            Some(media) if message.text.trim().is_empty() => {
                let what = media.kind.with_article();
                (
                    format!("{name} sent {what}"),
                    format!("<strong>{}</strong> sent {what}", escape_html(&name)),
                )
            }
            _ if message.text.trim().is_empty() => return Err(Skip::Empty),
            _ => self.whatsapp_text_for_matrix(message, &name),
        };
        let mut post = MatrixPost {
            body,
            html,
            sender: message.sender_phone.clone(),
            sender_name: if message.media.is_some() {
                name.clone()
            } else {
                String::new()
            },
            media: message.media.clone(),
            ..MatrixPost::default()
        };
        match &message.relation {
            Some(WhatsAppRelation::Reply { id, quoted }) => {
                post.reply_to = Some(id.clone());
                post.quoted = quoted.clone();
            }
            Some(WhatsAppRelation::Edit { id }) => {
                post.change = Some(MatrixChange::Edit { of: id.clone() });
            }
            _ => {}
        }
        Ok(post)
    }

    /// The Matrix body and HTML of a WhatsApp text (or caption), through the templates.
    fn whatsapp_text_for_matrix(&self, message: &WhatsAppText, name: &str) -> (String, String) {
        let phone = if message.sender_phone.is_empty() {
            String::new()
        } else {
            format!("+{}", message.sender_phone)
        };
        let (text, text_html) = with_mentions(&message.text, &message.mentions);
        let body = self.templates.to_matrix.render(|key| match key {
            "name" => Some(name.to_owned()),
            "phone" => Some(phone.clone()),
            "text" => Some(text.clone()),
            _ => None,
        });
        let html = self.templates.to_matrix_html.render(|key| match key {
            "name" => Some(escape_html(name)),
            "phone" => Some(escape_html(&phone)),
            "text" => Some(text_html.clone()),
            _ => None,
        });
        (body, html)
    }

    /// The notice that replaces a WhatsApp file whose announced size is over
    /// `[relay] max_file_mb`: `(body, html)`.
    fn too_large(&self, media: &Media, name: &str, seen_in: &str) -> Option<(String, String)> {
        let size = media
            .size
            .filter(|size| *size > self.settings.max_file_bytes)?;
        Some(self.whatsapp_file_too_large(media, name, seen_in, size))
    }

    /// The Matrix notice that stands for a WhatsApp file of `size` bytes over the
    /// limit: `(body, html)` naming the sender, the file, its size and where to see it.
    pub fn whatsapp_file_too_large(
        &self,
        media: &Media,
        name: &str,
        seen_in: &str,
        size: u64,
    ) -> (String, String) {
        let limit = media::human_size(self.settings.max_file_bytes);
        let what = media.describe(size);
        let note = format!("is larger than the bridge relays ({limit}): see it in {seen_in}");
        (
            format!("{name} sent {what}, which {note}."),
            format!(
                "<em>{} sent {}, which {}.</em>",
                escape_html(name),
                escape_html(&what),
                escape_html(&note)
            ),
        )
    }

    /// The WhatsApp line that stands for a Matrix file of `size` bytes over the limit.
    pub fn matrix_file_too_large(&self, post: &WhatsAppPost, media: &Media, size: u64) -> String {
        let limit = media::human_size(self.settings.max_file_bytes);
        let text = format!(
            "sent {}, which is larger than the bridge relays ({limit}): see it in Matrix",
            media.describe(size)
        );
        for_whatsapp(
            &self.templates.to_whatsapp_emote,
            &post.sender_name,
            &post.sender,
            &text,
        )
    }

    /// Matrix -> WhatsApp. `group` is the group bridged to the room, if any;
    /// `sent_by_bridge` tells whether the store knows this event as one the bot sent.
    pub fn from_matrix(
        &self,
        group: Option<&GroupFile>,
        message: &MatrixText,
        sent_by_bridge: bool,
    ) -> Result<WhatsAppPost, Skip> {
        let Some(group) = group else {
            return Err(Skip::UnbridgedRoom);
        };
        if message.sender == self.bot_user || sent_by_bridge {
            return Err(Skip::OwnEcho);
        }
        if message.kind == MatrixKind::Notice {
            return Err(Skip::Notice);
        }
        if message.kind == MatrixKind::Other {
            return Err(Skip::Unsupported);
        }
        if let Some(allow) = &group.allow {
            if !allow.iter().any(|pattern| pattern.matches(&message.sender)) {
                return Err(Skip::NotAllowed);
            }
        }
        if let MatrixRelation::Reaction { to, key } = &message.relation {
            if self.settings.reactions_to_whatsapp == ReactionsToWhatsApp::Ignore {
                return Err(Skip::ReactionIgnored);
            }
            return Ok(WhatsAppPost {
                change: Some(WhatsAppChange::React {
                    to: to.clone(),
                    emoji: key.clone(),
                }),
                sender: message.sender.clone(),
                ..WhatsAppPost::default()
            });
        }
        if let MatrixRelation::Redaction { of } = &message.relation {
            return Ok(WhatsAppPost {
                change: Some(WhatsAppChange::Revoke { of: of.clone() }),
                sender: message.sender.clone(),
                ..WhatsAppPost::default()
            });
        }
        let body =
            format::matrix_to_whatsapp(&message.body, message.html.as_deref(), message.is_reply);
        let name = matrix_display_name(&message.sender, message.sender_display_name.as_deref());
        let sender_line = |what: &str| {
            for_whatsapp(
                &self.templates.to_whatsapp_emote,
                &name,
                &message.sender,
                what,
            )
        };
        // Poll votes and ends are lines answering the number's poll: the number
        // has one vote, which is nobody's to cast.
        match &message.relation {
            MatrixRelation::PollVote { poll } => {
                let picked = single_line(&message.body);
                let what = if picked.is_empty() {
                    "took back their vote".to_owned()
                } else {
                    format!("voted: {picked}")
                };
                return Ok(WhatsAppPost {
                    text: sender_line(&what),
                    change: Some(WhatsAppChange::AnswerPoll { poll: poll.clone() }),
                    sender: message.sender.clone(),
                    ..WhatsAppPost::default()
                });
            }
            MatrixRelation::PollEnd { poll } => {
                return Ok(WhatsAppPost {
                    text: sender_line("ended the poll"),
                    change: Some(WhatsAppChange::AnswerPoll { poll: poll.clone() }),
                    sender: message.sender.clone(),
                    ..WhatsAppPost::default()
                });
            }
            _ => {}
        }
        if let Some(poll) = &message.poll {
            if !poll.fits_whatsapp() {
                return Err(Skip::PollDoesNotFit);
            }
            return Ok(WhatsAppPost {
                text: sender_line("started a poll"),
                sender: message.sender.clone(),
                sender_name: name,
                poll: Some(poll.clone()),
                ..WhatsAppPost::default()
            });
        }
        if let Some(location) = &message.location {
            let text = sender_line("shared a location");
            return Ok(WhatsAppPost {
                text,
                sender: message.sender.clone(),
                sender_name: name,
                location: Some(location.clone()),
                ..WhatsAppPost::default()
            });
        }
        if let Some(media) = message
            .media
            .as_ref()
            .filter(|_| !matches!(message.relation, MatrixRelation::Replace { .. }))
        {
            return Ok(self.matrix_media_for_whatsapp(message, media, &name, &body));
        }
        if body.trim().is_empty() {
            return Err(Skip::Empty);
        }
        let template = match message.kind {
            MatrixKind::Emote => &self.templates.to_whatsapp_emote,
            _ => &self.templates.to_whatsapp,
        };
        let text = for_whatsapp(template, &name, &message.sender, &body);
        if text.chars().count() > WHATSAPP_MAX_TEXT_CHARS {
            return Err(Skip::TooLong);
        }
        let mut post = WhatsAppPost {
            text,
            sender: message.sender.clone(),
            ..WhatsAppPost::default()
        };
        match &message.relation {
            MatrixRelation::Reply { to } => post.reply_to = Some(to.clone()),
            MatrixRelation::Replace { of } => {
                post.change = Some(WhatsAppChange::Edit { of: of.clone() })
            }
            MatrixRelation::None
            | MatrixRelation::Redaction { .. }
            | MatrixRelation::Reaction { .. }
            | MatrixRelation::PollVote { .. }
            | MatrixRelation::PollEnd { .. } => {}
        }
        Ok(post)
    }

    /// A Matrix file for WhatsApp: the file with its caption (`*Alice*: caption`, or
    /// `* _Alice_ sent a photo` without one), or, over `[relay] max_file_mb`, a line
    /// saying what could not cross.
    fn matrix_media_for_whatsapp(
        &self,
        message: &MatrixText,
        media: &Media,
        name: &str,
        caption: &str,
    ) -> WhatsAppPost {
        let render = |template: &template::Template, text: String| {
            for_whatsapp(template, name, &message.sender, &text)
        };
        let reply_to = match &message.relation {
            MatrixRelation::Reply { to } => Some(to.clone()),
            _ => None,
        };
        let mut post = WhatsAppPost {
            reply_to,
            sender: message.sender.clone(),
            sender_name: name.to_owned(),
            ..WhatsAppPost::default()
        };
        if let Some(size) = media
            .size
            .filter(|size| *size > self.settings.max_file_bytes)
        {
            post.text = self.matrix_file_too_large(&post, media, size);
            return post;
        }
        let text = if caption.trim().is_empty() {
            let what = media.kind.with_article();
            render(&self.templates.to_whatsapp_emote, format!("sent {what}"))
        } else {
            render(&self.templates.to_whatsapp, caption.to_owned())
        };
        post.text = text;
        post.media = Some(media.clone());
        post
    }
}

/// A Matrix -> WhatsApp template filled in: `{name}`, `{user}` (the Matrix id) and
/// `{text}`.
fn for_whatsapp(template: &template::Template, name: &str, user: &str, text: &str) -> String {
    template.render(|key| match key {
        "name" => Some(name.to_owned()),
        "user" => Some(user.to_owned()),
        "text" => Some(text.to_owned()),
        _ => None,
    })
}

/// A contact, poll, vote or view-once message as a Matrix body and HTML.
fn shared_for_matrix(shared: &Shared, name: &str) -> (String, String) {
    let who = escape_html(name);
    match shared {
        Shared::Contact {
            name: contact,
            phones,
        } => {
            let contact = single_line(contact);
            let numbers = if phones.is_empty() {
                String::new()
            } else {
                format!(": {}", phones.join(", "))
            };
            (
                format!("{name} shared a contact, {contact}{numbers}"),
                format!(
                    "<strong>{who}</strong> shared a contact, {}{}",
                    escape_html(&contact),
                    escape_html(&numbers)
                ),
            )
        }
        Shared::Poll { question, options } => poll_lines(name, question, options, None),
        Shared::PollVote(_) => (
            format!("{name} voted in a poll: the results are in WhatsApp."),
            format!(
                "<em><strong>{who}</strong> voted in a poll: the results are in WhatsApp.</em>"
            ),
        ),
        Shared::Members { change, people, by } => {
            let person = |mention: &Mention| match mention.name.as_deref().map(single_line) {
                Some(name) if !name.is_empty() => name,
                _ => format!("+{}", mention.phone),
            };
            let names: Vec<String> = people.iter().map(person).collect();
            let names = match names.as_slice() {
                [] => "someone".to_owned(),
                [one] => one.clone(),
                [first @ .., last] => format!("{} and {last}", first.join(", ")),
            };
            // Someone acting on themselves joined or left.
            let by = by
                .as_ref()
                .filter(|by| !people.iter().any(|p| p.phone == by.phone))
                .map(person);
            let (one, several) = if people.len() > 1 {
                ("are", "admins")
            } else {
                ("is", "an admin")
            };
            let body = match (change, by) {
                (MemberChange::Added, Some(by)) => format!("{by} added {names} to the group."),
                (MemberChange::Added, None) => format!("{names} joined the group."),
                (MemberChange::Removed, Some(by)) => {
                    format!("{by} removed {names} from the group.")
                }
                (MemberChange::Removed, None) => format!("{names} left the group."),
                (MemberChange::Promoted, _) => format!("{names} {one} now {several} of the group."),
                (MemberChange::Demoted, _) => {
                    format!("{names} {one} no longer {several} of the group.")
                }
            };
            let html = format!("<em>{}</em>", escape_html(&body));
            (body, html)
        }
        Shared::Call { video } => {
            let what = if *video {
                "a group video call"
            } else {
                "a group call"
            };
            (
                format!("{name} started {what} in WhatsApp: join it on a phone."),
                format!(
                    "<em><strong>{who}</strong> started {what} in WhatsApp: join it on a phone.</em>"
                ),
            )
        }
        Shared::Setting(setting) => {
            let body = setting_line(*setting, name);
            let html = format!("<em>{}</em>", escape_html(&body));
            (body, html)
        }
        Shared::ViewOnce { kind } => {
            let what = with_article(&format!("view-once {kind}"));
            (
                format!("{name} sent {what}: it can only be opened once, on a phone."),
                format!(
                    "<em><strong>{who}</strong> sent {}: it can only be opened once, on a phone.</em>",
                    escape_html(&what)
                ),
            )
        }
    }
}

/// A poll's line: its question and options, and once votes came, how many people
/// picked each option and who (`tally`: every voter's current vote).
fn poll_lines(
    name: &str,
    question: &str,
    options: &[String],
    tally: Option<&[PollVoter]>,
) -> (String, String) {
    let question = single_line(question);
    let mut body = format!("{name} started a poll: {question}");
    let mut html = format!(
        "<strong>{}</strong> started a poll: {}<ol>",
        escape_html(name),
        escape_html(&question)
    );
    let (items, items_html) = option_lines(options, tally);
    body.push_str(&items);
    html.push_str(&items_html);
    let footer = match tally.map(|tally| tally.iter().filter(|v| !v.choices.is_empty()).count()) {
        None => "Vote in WhatsApp.".to_owned(),
        Some(0) => "Vote in WhatsApp: nobody has voted.".to_owned(),
        Some(1) => "Vote in WhatsApp: 1 person voted.".to_owned(),
        Some(voters) => format!("Vote in WhatsApp: {voters} people voted."),
    };
    body.push_str(&format!("\n({footer})"));
    html.push_str(&format!("</ol><em>{}</em>", escape_html(&footer)));
    (body, html)
}

/// A poll's options as numbered lines (`\n1. Samedi (2: Carol, Bob)`) and HTML list
/// items, with how many people picked each and who when `tally` is given.
fn option_lines(options: &[String], tally: Option<&[PollVoter]>) -> (String, String) {
    let (mut body, mut html) = (String::new(), String::new());
    for (number, option) in options.iter().enumerate() {
        let option_text = single_line(option);
        body.push_str(&format!("\n{}. {option_text}", number + 1));
        html.push_str(&format!("<li>{}", escape_html(&option_text)));
        if let Some(tally) = tally {
            let voters: Vec<String> = tally
                .iter()
                .filter(|voter| voter.choices.contains(option))
                .map(|voter| single_line(&voter.name))
                .collect();
            let count = if voters.is_empty() {
                "(0)".to_owned()
            } else {
                format!("({}: {})", voters.len(), voters.join(", "))
            };
            body.push_str(&format!(" {count}"));
            html.push_str(&format!(" <em>{}</em>", escape_html(&count)));
        }
        html.push_str("</li>");
    }
    (body, html)
}

/// The bot's reply to a poll asked in Matrix: how WhatsApp voted in it (Matrix
/// votes are the poll's own, shown by Matrix clients).
fn tally_lines(options: &[String], tally: &[PollVoter]) -> (String, String) {
    let (items, items_html) = option_lines(options, Some(tally));
    (
        format!("Votes in WhatsApp:{items}"),
        format!("<em>Votes in WhatsApp:</em><ol>{items_html}</ol>"),
    )
}

/// The room's line about a group setting `who` changed. Disappearing messages are
/// told with what they mean here: the room keeps its copies (the bridge does not
/// delete Matrix history).
fn setting_line(setting: GroupSetting, who: &str) -> String {
    match setting {
        GroupSetting::Disappearing(0) => format!("{who} turned off disappearing messages."),
        GroupSetting::Disappearing(seconds) => format!(
            "{who} turned on disappearing messages: new messages disappear from WhatsApp after {}. Their copies in this room stay.",
            duration_words(seconds)
        ),
        GroupSetting::OnlyAdminsSend(true) => format!(
            "{who} changed the group's settings: only admins can send messages now. Messages from this room reach WhatsApp only if the bridge's number is an admin."
        ),
        GroupSetting::OnlyAdminsSend(false) => {
            format!("{who} changed the group's settings: everyone can send messages again.")
        }
    }
}

/// `604800` -> `7 days`, `86400` -> `24 hours`, in the largest unit that divides.
fn duration_words(seconds: u32) -> String {
    let plural = |n: u32, unit: &str| {
        if n == 1 {
            format!("1 {unit}")
        } else {
            format!("{n} {unit}s")
        }
    };
    match seconds {
        s if s % 86_400 == 0 && s > 86_400 => plural(s / 86_400, "day"),
        s if s % 3_600 == 0 => plural(s / 3_600, "hour"),
        s if s % 60 == 0 => plural(s / 60, "minute"),
        s => plural(s, "second"),
    }
}

/// A location in HTML: its name (if any) linked to the map.
fn location_html(location: &Location) -> String {
    let text = location
        .name
        .clone()
        .unwrap_or_else(|| "see the map".to_owned());
    format!(
        "<a href=\"{}\">{}</a>",
        escape_html(&location.map_link()),
        escape_html(&text)
    )
}

/// The key under which the reaction line of one sender to one message is found again.
pub fn reaction_key(message_id: &str, sender_phone: &str) -> String {
    format!("reaction:{message_id}:{sender_phone}")
}

/// The text with each `@<phone>` of a mentioned person replaced by `@Name` (their
/// number when the name is unknown), and its HTML with those names in bold. No
/// Matrix pill: WhatsApp people have no Matrix account.
fn with_mentions(text: &str, mentions: &[Mention]) -> (String, String) {
    let mut plain = text.to_string();
    let mut names = Vec::new();
    for mention in mentions {
        let token = format!("@{}", mention.phone);
        if mention.phone.is_empty() || !plain.contains(&token) {
            continue;
        }
        let name = match mention.name.as_deref().map(single_line) {
            Some(name) if !name.is_empty() => name,
            _ => format!("+{}", mention.phone),
        };
        plain = plain.replace(&token, &format!("@{name}"));
        names.push(name);
    }
    let mut html = format::whatsapp_to_html(&plain);
    names.sort_by_key(|name| std::cmp::Reverse(name.len()));
    names.dedup();
    for name in names {
        let escaped = format!("@{}", escape_html(&name));
        html = html.replace(&escaped, &format!("<strong>{escaped}</strong>"));
    }
    (plain, html)
}

/// "an image", "a poll": a kind of message in a sentence.
fn with_article(kind: &str) -> String {
    let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {kind}")
}

/// The name WhatsApp people get in Matrix: their push name, else their number.
pub fn whatsapp_display_name(message: &WhatsAppText) -> String {
    match message.push_name.as_deref().map(single_line) {
        Some(name) if !name.is_empty() => name,
        _ if !message.sender_phone.is_empty() => format!("+{}", message.sender_phone),
        _ => "WhatsApp".to_string(),
    }
}

/// The name Matrix people get in WhatsApp: room display name, else the localpart.
/// WhatsApp markup characters are removed so a nickname cannot break the bold prefix.
pub fn matrix_display_name(user_id: &str, display_name: Option<&str>) -> String {
    let cleaned = display_name
        .map(|name| single_line(name).replace(['*', '_', '~', '`'], ""))
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty());
    cleaned.unwrap_or_else(|| {
        user_id
            .trim_start_matches('@')
            .split(':')
            .next()
            .unwrap_or(user_id)
            .to_string()
    })
}

pub fn single_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The WhatsApp message id the bridge uses for a Matrix event: derived from the event
/// id, so a retry after a crash reuses it and WhatsApp never shows the message twice.
/// The shape follows WhatsApp Web ids (`3EB0` + hex); our prefix `3EB0BE` marks
/// messages of this bridge.
pub fn whatsapp_id_for_event(event_id: &str) -> String {
    let digest = Sha256::digest(event_id.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02X}")).collect();
    format!("{BRIDGE_ID_PREFIX}{hex}")
}

const BRIDGE_ID_PREFIX: &str = "3EB0BE";

fn looks_like_bridge_id(message_id: &str) -> bool {
    message_id.len() == BRIDGE_ID_PREFIX.len() + 16 && message_id.starts_with(BRIDGE_ID_PREFIX)
}

/// The Matrix transaction id the bot uses for a WhatsApp message: derived from the
/// message id, so a retry returns the already-sent event instead of a second copy.
pub fn matrix_txn_for_whatsapp(group_jid: &str, message_id: &str) -> String {
    let digest = Sha256::digest(format!("{group_jid}/{message_id}").as_bytes());
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("wa.{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{GroupFile, UserPattern};
    use crate::relay::template::Template;

    fn templates() -> Templates {
        Templates {
            to_matrix: Template::parse("{name}: {text}", &["name", "phone", "text"], &["text"])
                .unwrap(),
            to_matrix_html: Template::parse(
                "<strong>{name}</strong>: {text}",
                &["name", "phone", "text"],
                &["text"],
            )
            .unwrap(),
            to_whatsapp: Template::parse("*{name}*: {text}", &["name", "user", "text"], &["text"])
                .unwrap(),
            to_whatsapp_emote: Template::parse(
                "* _{name}_ {text}",
                &["name", "user", "text"],
                &["text"],
            )
            .unwrap(),
        }
    }

    fn group(allow: Option<Vec<&str>>) -> GroupFile {
        GroupFile {
            name: "famille".into(),
            path: "groups.d/famille.toml".into(),
            whatsapp: "120363041234567890@g.us".into(),
            room: None,
            invite: vec![],
            allow: allow.map(|list| {
                list.into_iter()
                    .map(|p| UserPattern::parse(p).unwrap())
                    .collect()
            }),
            messages_per_minute: None,
        }
    }

    fn wa(text: &str, push_name: Option<&str>) -> WhatsAppText {
        WhatsAppText {
            group_jid: "120363041234567890@g.us".into(),
            message_id: "3EB0AAAA".into(),
            sender_phone: "33611111111".into(),
            push_name: push_name.map(Into::into),
            text: text.into(),
            ..WhatsAppText::default()
        }
    }

    fn mx(sender: &str, display: Option<&str>, kind: MatrixKind, body: &str) -> MatrixText {
        MatrixText {
            room_id: "!room".into(),
            event_id: "$ev".into(),
            sender: sender.into(),
            sender_display_name: display.map(Into::into),
            kind,
            body: body.into(),
            html: None,
            is_reply: false,
            relation: MatrixRelation::None,
            media: None,
            location: None,
            poll: None,
        }
    }

    #[test]
    fn matrix_polls_votes_and_ends_cross_as_the_numbers_poll_and_lines() {
        let relay = relay();
        let group = group(None);
        let mut message = mx("@alice:x", Some("Alice"), MatrixKind::Text, "");
        let poll = MatrixPoll {
            question: "Quel jour ?".into(),
            options: vec!["Samedi".into(), "Dimanche".into()],
            max_selections: 1,
        };
        message.poll = Some(poll.clone());
        let post = relay.from_matrix(Some(&group), &message, false).unwrap();
        assert_eq!(post.text, "* _Alice_ started a poll");
        assert_eq!(post.poll, Some(poll.clone()));
        // WhatsApp polls have 2 to 12 different options.
        let thirteen: Vec<String> = (0..13).map(|n| n.to_string()).collect();
        for options in [
            vec!["Oui".to_owned()],
            vec!["Oui".into(), "Oui".into()],
            thirteen,
        ] {
            let mut misfit = poll.clone();
            misfit.options = options;
            message.poll = Some(misfit);
            assert_eq!(
                relay.from_matrix(Some(&group), &message, false),
                Err(Skip::PollDoesNotFit)
            );
        }
        message.poll = None;
        message.body = "Samedi".into();
        message.relation = MatrixRelation::PollVote {
            poll: "$poll".into(),
        };
        let post = relay.from_matrix(Some(&group), &message, false).unwrap();
        assert_eq!(post.text, "* _Alice_ voted: Samedi");
        let answers_the_poll = Some(WhatsAppChange::AnswerPoll {
            poll: "$poll".into(),
        });
        assert_eq!(post.change, answers_the_poll);
        message.body = String::new();
        let post = relay.from_matrix(Some(&group), &message, false).unwrap();
        assert_eq!(post.text, "* _Alice_ took back their vote");
        message.relation = MatrixRelation::PollEnd {
            poll: "$poll".into(),
        };
        let post = relay.from_matrix(Some(&group), &message, false).unwrap();
        assert_eq!(post.text, "* _Alice_ ended the poll");
        assert_eq!(post.change, answers_the_poll);
    }

    #[test]
    fn group_settings_read_as_lines_saying_what_they_mean_here() {
        let relay = relay();
        let mut message = wa("", Some("Bob"));
        let mut line = |setting: GroupSetting| {
            message.shared = Some(Shared::Setting(setting));
            relay
                .from_whatsapp(Some(&group(None)), &message, false)
                .unwrap()
                .body
        };
        assert_eq!(
            line(GroupSetting::Disappearing(604_800)),
            "Bob turned on disappearing messages: new messages disappear from WhatsApp after 7 days. Their copies in this room stay."
        );
        assert!(line(GroupSetting::Disappearing(86_400)).contains("after 24 hours."));
        assert!(line(GroupSetting::Disappearing(7_776_000)).contains("after 90 days."));
        assert_eq!(
            line(GroupSetting::Disappearing(0)),
            "Bob turned off disappearing messages."
        );
        assert!(line(GroupSetting::OnlyAdminsSend(true))
            .starts_with("Bob changed the group's settings: only admins can send messages now."));
        assert_eq!(
            line(GroupSetting::OnlyAdminsSend(false)),
            "Bob changed the group's settings: everyone can send messages again."
        );
        message.shared = Some(Shared::Call { video: true });
        assert_eq!(
            relay
                .from_whatsapp(Some(&group(None)), &message, false)
                .unwrap()
                .body,
            "Bob started a group video call in WhatsApp: join it on a phone."
        );
        assert_eq!(duration_words(90), "90 seconds");
        assert_eq!(duration_words(3_600), "1 hour");
        assert_eq!(duration_words(120), "2 minutes");
    }

    #[test]
    fn contacts_polls_votes_and_view_once_read_as_lines() {
        let relay = relay();
        let mut message = wa("", Some("Bob"));
        let mut line = |shared: Shared| {
            message.shared = Some(shared);
            relay
                .from_whatsapp(Some(&group(None)), &message, false)
                .unwrap()
        };
        let post = line(Shared::Contact {
            name: "Marie Dupont".into(),
            phones: vec!["+33 6 12 34 56 78".into()],
        });
        assert_eq!(
            post.body,
            "Bob shared a contact, Marie Dupont: +33 6 12 34 56 78"
        );
        let post = line(Shared::Poll {
            question: "Quel jour ?".into(),
            options: vec!["Samedi".into(), "Dimanche".into()],
        });
        assert_eq!(
            post.body,
            "Bob started a poll: Quel jour ?\n1. Samedi\n2. Dimanche\n(Vote in WhatsApp.)"
        );
        assert!(post
            .html
            .contains("<ol><li>Samedi</li><li>Dimanche</li></ol>"));
        let post = line(Shared::ViewOnce {
            kind: "photo".into(),
        });
        assert_eq!(
            post.body,
            "Bob sent a view-once photo: it can only be opened once, on a phone."
        );
        assert_eq!(post.media, None);
        let carol = Mention {
            phone: "33622222222".into(),
            name: Some("Carol".into()),
        };
        let bob = Mention {
            phone: "33611111111".into(),
            name: None,
        };
        let post = line(Shared::Members {
            change: MemberChange::Added,
            people: vec![carol.clone()],
            by: Some(bob.clone()),
        });
        assert_eq!(post.body, "+33611111111 added Carol to the group.");
        let post = line(Shared::Members {
            change: MemberChange::Removed,
            people: vec![carol.clone()],
            by: Some(carol.clone()),
        });
        assert_eq!(post.body, "Carol left the group.");
        let post = line(Shared::Members {
            change: MemberChange::Promoted,
            people: vec![carol, bob],
            by: None,
        });
        assert_eq!(
            post.body,
            "Carol and +33611111111 are now admins of the group."
        );
        // A vote in a poll the bridge never saw (or could not read) is still told.
        let post = line(Shared::PollVote(None));
        assert_eq!(
            post.body,
            "Bob voted in a poll: the results are in WhatsApp."
        );
        assert_eq!(post.change, None);
    }

    #[test]
    fn a_vote_edits_the_polls_line_with_its_tally() {
        let relay = relay();
        let voter = |name: &str, choices: &[&str]| PollVoter {
            name: name.into(),
            choices: choices.iter().map(|c| c.to_string()).collect(),
        };
        let mut ballot = PollBallot {
            poll_id: "3EB0POLL".into(),
            question: "Quel jour ?".into(),
            options: vec!["Samedi".into(), "Dimanche".into(), "Lundi <3".into()],
            creator_phone: "33611111111".into(),
            choices: vec!["Samedi".into()],
            voted_at_ms: 1,
            creator_name: Some("Bob".into()),
            asked_in_matrix: false,
            tally: vec![
                voter("Carol", &["Samedi"]),
                voter("Dan", &[]),
                voter("Eve", &["Samedi", "Lundi <3"]),
            ],
        };
        let mut message = wa("", Some("Carol"));
        message.shared = Some(Shared::PollVote(Some(Box::new(ballot.clone()))));
        let post = relay
            .from_whatsapp(Some(&group(None)), &message, false)
            .unwrap();
        assert_eq!(
            post.change,
            Some(MatrixChange::Edit {
                of: "3EB0POLL".into()
            })
        );
        assert_eq!(
            post.body,
            "Bob started a poll: Quel jour ?\n1. Samedi (2: Carol, Eve)\n2. Dimanche (0)\n\
             3. Lundi <3 (1: Eve)\n(Vote in WhatsApp: 2 people voted.)"
        );
        assert_eq!(
            post.html,
            "<strong>Bob</strong> started a poll: Quel jour ?<ol>\
             <li>Samedi <em>(2: Carol, Eve)</em></li><li>Dimanche <em>(0)</em></li>\
             <li>Lundi &lt;3 <em>(1: Eve)</em></li></ol>\
             <em>Vote in WhatsApp: 2 people voted.</em>"
        );
        // Everyone took their vote back; the creator's name is unknown.
        ballot.creator_name = None;
        ballot.tally = vec![voter("Carol", &[])];
        message.shared = Some(Shared::PollVote(Some(Box::new(ballot.clone()))));
        let post = relay
            .from_whatsapp(Some(&group(None)), &message, false)
            .unwrap();
        assert!(
            post.body.starts_with("+33611111111 started a poll"),
            "{}",
            post.body
        );
        assert!(post.body.ends_with("(Vote in WhatsApp: nobody has voted.)"));
        // A poll asked in Matrix: the tally is the bot's reply line, one per poll.
        ballot.asked_in_matrix = true;
        ballot.tally = vec![voter("Carol", &["Dimanche"])];
        message.shared = Some(Shared::PollVote(Some(Box::new(ballot))));
        let post = relay
            .from_whatsapp(Some(&group(None)), &message, false)
            .unwrap();
        assert_eq!(
            post.body,
            "Votes in WhatsApp:\n1. Samedi (0)\n2. Dimanche (1: Carol)\n3. Lundi <3 (0)"
        );
        assert_eq!(
            post.change,
            Some(MatrixChange::ReplyLine {
                to: "3EB0POLL".into(),
                key: "poll-tally:3EB0POLL".into(),
                removed: false
            })
        );
    }

    #[test]
    fn locations_cross_as_a_map_link_and_a_point() {
        let relay = relay();
        let mut shared = wa("on arrive", Some("Bob"));
        shared.location = Location::new(45.5, -0.25, Some("Mairie".into()));
        let post = relay
            .from_whatsapp(Some(&group(None)), &shared, false)
            .unwrap();
        assert_eq!(post.location, shared.location);
        assert_eq!(
            post.body,
            "Bob shared a location: Mairie (https://www.openstreetmap.org/?mlat=45.500000&mlon=-0.250000#map=17/45.500000/-0.250000) (on arrive)"
        );
        let mut point = mx("@alice:example.org", Some("Alice"), MatrixKind::Text, "");
        point.location = Location::new(48.85, 2.35, None);
        let post = relay
            .from_matrix(Some(&group(None)), &point, false)
            .unwrap();
        assert_eq!(post.text, "* _Alice_ shared a location");
        assert_eq!(post.location, point.location);
    }

    fn file(kind: media::MediaKind, size: u64) -> Media {
        Media {
            kind,
            source: "ref".into(),
            mime: "application/octet-stream".into(),
            file_name: None,
            size: Some(size),
            seconds: None,
        }
    }

    #[test]
    fn whatsapp_files_keep_their_caption_or_name_their_sender() {
        let relay = relay();
        let mut photo = wa("les enfants", Some("Bob"));
        photo.media = Some(file(media::MediaKind::Image, 70_000));
        let post = relay
            .from_whatsapp(Some(&group(None)), &photo, false)
            .unwrap();
        assert_eq!(post.body, "Bob: les enfants");
        assert_eq!(post.media, photo.media);
        let mut voice = wa("", Some("Bob"));
        voice.media = Some(file(media::MediaKind::Voice, 9_000));
        let post = relay
            .from_whatsapp(Some(&group(None)), &voice, false)
            .unwrap();
        assert_eq!(post.body, "Bob sent a voice message");
        assert_eq!(post.html, "<strong>Bob</strong> sent a voice message");
        assert_eq!(post.sender_name, "Bob");
    }

    #[test]
    fn files_over_the_limit_become_notices_on_the_side_that_misses_them() {
        let relay = relay();
        let mut film = wa("", Some("Bob"));
        film.media = Some(file(media::MediaKind::Video, 120_000_000));
        let post = relay
            .from_whatsapp(Some(&group(None)), &film, false)
            .unwrap();
        assert_eq!(post.media, None);
        assert_eq!(
            post.body,
            "Bob sent a video, 120.0 MB, which is larger than the bridge relays (50.0 MB): see it in WhatsApp."
        );
        let mut report = mx("@alice:example.org", Some("Alice"), MatrixKind::Text, "");
        let mut big = file(media::MediaKind::File, 60_000_000);
        big.file_name = Some("report.pdf".into());
        report.media = Some(big);
        let post = relay
            .from_matrix(Some(&group(None)), &report, false)
            .unwrap();
        assert_eq!(post.media, None);
        assert_eq!(
            post.text,
            "* _Alice_ sent report.pdf, 60.0 MB, which is larger than the bridge relays (50.0 MB): see it in Matrix"
        );
    }

    #[test]
    fn matrix_files_carry_the_sender_in_their_caption() {
        let relay = relay();
        let mut photo = mx(
            "@alice:example.org",
            Some("Alice"),
            MatrixKind::Text,
            "le jardin",
        );
        photo.media = Some(file(media::MediaKind::Image, 50_000));
        let post = relay
            .from_matrix(Some(&group(None)), &photo, false)
            .unwrap();
        assert_eq!(post.text, "*Alice*: le jardin");
        assert_eq!(post.media, photo.media);
        let mut voice = mx("@alice:example.org", Some("Alice"), MatrixKind::Text, "");
        voice.media = Some(file(media::MediaKind::Voice, 5_000));
        let post = relay
            .from_matrix(Some(&group(None)), &voice, false)
            .unwrap();
        assert_eq!(post.text, "* _Alice_ sent a voice message");
        assert!(post.media.is_some());
    }

    fn relay() -> Relay {
        Relay::new("@bot:example.org", templates(), RelayConfig::default())
    }

    #[test]
    fn whatsapp_text_gets_name_prefix_and_bold_html() {
        let post = relay()
            .from_whatsapp(Some(&group(None)), &wa("hello <you>", Some("Bob")), false)
            .unwrap();
        assert_eq!(post.body, "Bob: hello <you>");
        assert_eq!(post.html, "<strong>Bob</strong>: hello &lt;you&gt;");
    }

    #[test]
    fn formatting_crosses_both_ways() {
        let post = relay()
            .from_whatsapp(
                Some(&group(None)),
                &wa("*gras* et _ital_", Some("Bob")),
                false,
            )
            .unwrap();
        assert_eq!(post.body, "Bob: *gras* et _ital_");
        assert_eq!(
            post.html,
            "<strong>Bob</strong>: <strong>gras</strong> et <em>ital</em>"
        );
        let mut message = mx(
            "@alice:example.org",
            Some("Alice"),
            MatrixKind::Text,
            "fort doux",
        );
        message.html = Some("<strong>fort</strong> <em>doux</em>".into());
        let post = relay()
            .from_matrix(Some(&group(None)), &message, false)
            .unwrap();
        assert_eq!(post.text, "*Alice*: *fort* _doux_");
    }

    #[test]
    fn unsupported_kinds_are_announced_not_dropped() {
        let mut image = wa("", Some("Bob"));
        image.unsupported = Some("image".into());
        let post = relay()
            .from_whatsapp(Some(&group(None)), &image, false)
            .unwrap();
        assert_eq!(
            post.body,
            "Bob sent an image that passerelle does not relay yet: see it in WhatsApp."
        );
        let message = mx("@a:example.org", None, MatrixKind::Other, "m.file");
        assert_eq!(
            relay().from_matrix(Some(&group(None)), &message, false),
            Err(Skip::Unsupported)
        );
    }

    #[test]
    fn whatsapp_sender_without_push_name_shows_number() {
        let post = relay()
            .from_whatsapp(Some(&group(None)), &wa("hi", None), false)
            .unwrap();
        assert_eq!(post.body, "+33611111111: hi");
    }

    #[test]
    fn whatsapp_unapproved_group_and_echo_are_skipped() {
        let relay = relay();
        assert_eq!(
            relay.from_whatsapp(None, &wa("hi", None), false),
            Err(Skip::UnapprovedGroup)
        );
        assert_eq!(
            relay.from_whatsapp(Some(&group(None)), &wa("hi", None), true),
            Err(Skip::OwnEcho)
        );
        let mut own = wa("hi", None);
        own.from_me = true;
        own.message_id = whatsapp_id_for_event("$x");
        assert_eq!(
            relay.from_whatsapp(Some(&group(None)), &own, false),
            Err(Skip::OwnEcho)
        );
        // The association's phone typing in the group is a person, not an echo.
        own.message_id = "3EB0C0FFEE".into();
        assert!(relay.from_whatsapp(Some(&group(None)), &own, false).is_ok());
    }

    #[test]
    fn matrix_text_and_emote_get_nickname_prefix() {
        let relay = relay();
        let g = group(None);
        let post = relay
            .from_matrix(
                Some(&g),
                &mx("@alice:example.org", Some("Alice"), MatrixKind::Text, "hi"),
                false,
            )
            .unwrap();
        assert_eq!(post.text, "*Alice*: hi");
        let post = relay
            .from_matrix(
                Some(&g),
                &mx("@alice:example.org", None, MatrixKind::Emote, "waves"),
                false,
            )
            .unwrap();
        assert_eq!(post.text, "* _alice_ waves");
    }

    #[test]
    fn matrix_nickname_cannot_break_markup() {
        assert_eq!(matrix_display_name("@a:x", Some("*Bo*b_\n")), "Bob");
        assert_eq!(matrix_display_name("@a:x", Some(" ** ")), "a");
    }

    #[test]
    fn matrix_skips_bot_notice_unbridged_and_not_allowed() {
        let relay = relay();
        let g = group(Some(vec!["@*:example.org"]));
        assert_eq!(
            relay.from_matrix(
                None,
                &mx("@a:example.org", None, MatrixKind::Text, "x"),
                false
            ),
            Err(Skip::UnbridgedRoom)
        );
        assert_eq!(
            relay.from_matrix(
                Some(&g),
                &mx("@bot:example.org", None, MatrixKind::Text, "x"),
                false
            ),
            Err(Skip::OwnEcho)
        );
        assert_eq!(
            relay.from_matrix(
                Some(&g),
                &mx("@a:example.org", None, MatrixKind::Notice, "x"),
                false
            ),
            Err(Skip::Notice)
        );
        assert_eq!(
            relay.from_matrix(
                Some(&g),
                &mx("@eve:evil.org", None, MatrixKind::Text, "x"),
                false
            ),
            Err(Skip::NotAllowed)
        );
        assert!(relay
            .from_matrix(
                Some(&g),
                &mx("@a:example.org", None, MatrixKind::Text, "x"),
                false
            )
            .is_ok());
    }

    #[test]
    fn matrix_text_too_long_for_whatsapp_is_refused() {
        let long = "x".repeat(WHATSAPP_MAX_TEXT_CHARS);
        assert_eq!(
            relay().from_matrix(
                Some(&group(None)),
                &mx("@a:x", None, MatrixKind::Text, &long),
                false
            ),
            Err(Skip::TooLong)
        );
    }

    #[test]
    fn whatsapp_relations_become_matrix_changes() {
        let relay = relay();
        let g = group(None);
        let mut reaction = wa("", Some("Bob"));
        reaction.relation = Some(WhatsAppRelation::Reaction {
            id: "M1".into(),
            emoji: "👍".into(),
        });
        let post = relay.from_whatsapp(Some(&g), &reaction, false).unwrap();
        assert_eq!(post.body, "Bob reacted 👍");
        assert_eq!(post.reply_to.as_deref(), Some("M1"));
        assert_eq!(
            post.change,
            Some(MatrixChange::ReplyLine {
                to: "M1".into(),
                key: reaction_key("M1", "33611111111"),
                removed: false
            })
        );

        let mut revoke = wa("", None);
        revoke.relation = Some(WhatsAppRelation::Revoke { id: "M1".into() });
        let post = relay.from_whatsapp(Some(&g), &revoke, false).unwrap();
        assert_eq!(post.change, Some(MatrixChange::Redact { of: "M1".into() }));
        assert!(post.body.is_empty());

        // The bridge's own edit seen again from its number is an echo.
        let mut own_edit = wa("x", None);
        own_edit.from_me = true;
        own_edit.relation = Some(WhatsAppRelation::Edit {
            id: whatsapp_id_for_event("$e"),
        });
        assert_eq!(
            relay.from_whatsapp(Some(&g), &own_edit, false),
            Err(Skip::OwnEcho)
        );
    }

    #[test]
    fn mentions_name_the_person_or_show_the_number() {
        let mentions = [
            Mention {
                phone: "33611111111".into(),
                name: Some("Bob <b>".into()),
            },
            Mention {
                phone: "33622222222".into(),
                name: None,
            },
            Mention {
                phone: "33633333333".into(),
                name: Some("Absent".into()),
            },
        ];
        let (plain, html) = with_mentions("@33611111111 et @33622222222 *ok*", &mentions);
        assert_eq!(plain, "@Bob <b> et @+33622222222 *ok*");
        assert_eq!(
            html,
            "<strong>@Bob &lt;b&gt;</strong> et <strong>@+33622222222</strong> <strong>ok</strong>"
        );
    }

    #[test]
    fn matrix_redaction_and_edit_become_whatsapp_changes() {
        let relay = relay();
        let g = group(None);
        let mut redaction = mx("@alice:example.org", None, MatrixKind::Text, "");
        redaction.relation = MatrixRelation::Redaction { of: "$m".into() };
        let post = relay.from_matrix(Some(&g), &redaction, false).unwrap();
        assert_eq!(
            post.change,
            Some(WhatsAppChange::Revoke { of: "$m".into() })
        );
        assert_eq!(post.sender, "@alice:example.org");
        let mut edit = mx("@alice:example.org", Some("Alice"), MatrixKind::Text, "new");
        edit.relation = MatrixRelation::Replace { of: "$m".into() };
        let post = relay.from_matrix(Some(&g), &edit, false).unwrap();
        assert_eq!(post.text, "*Alice*: new");
        assert_eq!(post.change, Some(WhatsAppChange::Edit { of: "$m".into() }));
    }

    #[test]
    fn posts_queued_by_an_older_version_still_read() {
        let post: MatrixPost = serde_json::from_str(r#"{"body":"b","html":"h"}"#).unwrap();
        assert_eq!(post.change, None);
        let post: WhatsAppPost = serde_json::from_str(r#"{"text":"t"}"#).unwrap();
        assert_eq!(post.reply_to, None);
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        assert_eq!(whatsapp_id_for_event("$a"), whatsapp_id_for_event("$a"));
        assert_ne!(whatsapp_id_for_event("$a"), whatsapp_id_for_event("$b"));
        assert!(looks_like_bridge_id(&whatsapp_id_for_event("$a")));
        assert_eq!(
            matrix_txn_for_whatsapp("g@g.us", "A"),
            matrix_txn_for_whatsapp("g@g.us", "A")
        );
        assert_ne!(
            matrix_txn_for_whatsapp("g@g.us", "A"),
            matrix_txn_for_whatsapp("h@g.us", "A")
        );
    }
}
