//! The core of the bridge: what a message is on each side, whether it may cross, and
//! how it reads once it has crossed. Knows nothing of either SDK.

pub mod format;
pub mod give_up;
pub mod ids;
pub mod location;
mod long_text;
pub mod media;
pub mod mentions;
pub mod namesakes;
pub mod notices;
pub mod pacing;
pub mod to_matrix;
pub mod to_whatsapp;
pub mod waiting;

use serde::{Deserialize, Serialize};

use crate::config::{RelayConfig, Templates};

pub use ids::{matrix_txn_for_whatsapp, reaction_key, whatsapp_id_for_event};
use location::Location;
use media::Media;
pub use to_matrix::whatsapp_display_name;
pub use to_whatsapp::matrix_display_name;

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
    /// The sender is an admin of the group now (read for deletions only: an admin
    /// may delete anyone's message).
    pub sender_is_admin: bool,
    /// The others who spoke in this group under the same name (see
    /// [`namesakes::name_key`]): their phone numbers or Matrix ids, filled in by the
    /// service. The sender's name then tells them apart.
    pub namesakes: Vec<String>,
}

/// What kind of Matrix message event arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatrixKind {
    #[default]
    Text,
    Emote,
    Notice,
    /// Any other message type (its `msgtype` is in the body): not relayed yet.
    Other,
    /// An encrypted event whose key never reached the bot: nothing of it is known
    /// but its sender.
    Unreadable,
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

impl MatrixText {
    /// Whether the number shows the sender's name for this event: not for a
    /// redaction or a reaction (which carry no display name either).
    pub fn shows_sender_name(&self) -> bool {
        !matches!(
            self.relation,
            MatrixRelation::Redaction { .. } | MatrixRelation::Reaction { .. }
        )
    }
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
#[derive(Debug, Clone, PartialEq, Default)]
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
    /// The others who spoke in this group under the same name, filled in by the
    /// service (as in [`WhatsAppText::namesakes`]).
    pub namesakes: Vec<String>,
}

/// What a Matrix post does besides posting a new message. Targets are WhatsApp
/// message ids: the Matrix events they map to are looked up when the post is sent,
/// after everything queued before it in the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum MatrixChange {
    /// Replace the text of the event mirroring `of`: an edit by its author, or
    /// (`tally`) the bridge's own update of a poll's line with its votes.
    Edit {
        of: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        tally: bool,
    },
    /// Redact the event mirroring `of`: a deletion for everyone, by its author or
    /// (`by_admin`) by someone WhatsApp said was an admin of the group when it came.
    Redact {
        of: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        by_admin: bool,
    },
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

/// A further part of a WhatsApp text too long for one Matrix event, posted after
/// the first part (the post itself), in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PostPart {
    pub body: String,
    pub html: String,
}

/// What the bot posts in a Matrix room (stored in the outbox as JSON; fields added
/// later default, so rows queued by an older version still read).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MatrixPost {
    pub body: String,
    pub html: String,
    /// The rest of a text too long for one event, each part its own event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_parts: Vec<PostPart>,
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
    /// The bot's own word (`m.notice`, `body` only), e.g. why a message did not cross.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub notice: bool,
    /// Matrix users the post notifies (`m.mentions`), decided when it is sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<String>,
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
    /// A Matrix event the bot never could decrypt (its key did not come within
    /// `[matrix] wait_for_keys_secs`): the sender is told.
    Undecryptable,
    /// A Matrix poll WhatsApp cannot hold (not 2 to 12 different options): the
    /// sender is told.
    PollDoesNotFit,
    /// A WhatsApp message whose id, or the id it refers to, is no id a WhatsApp app
    /// makes (a modified client's): refused and counted, as forged edits are.
    ForgedId,
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

    /// Whether a file of `size` bytes crosses (`[relay] max_file_mb`); a larger one
    /// is replaced by a notice on the side that misses it.
    pub fn file_fits(&self, size: u64) -> bool {
        size <= self.settings.max_file_bytes
    }

    /// The largest file relayed (`[relay] max_file_mb`), in bytes.
    pub fn max_file_bytes(&self) -> u64 {
        self.settings.max_file_bytes
    }
}

/// Text on one line, runs of whitespace made one space.
pub fn single_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A person's name as the other side shows it: on one line, without control
/// characters or the invisible ones that reorder or hide text (bidi overrides and
/// isolates, zero-width characters), so a name cannot fake a line break or show
/// as another.
pub fn shown_name(name: &str) -> String {
    let visible: String = name
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .filter(|c| !is_invisible_format(*c))
        .collect();
    single_line(&visible)
}

/// Bidi marks, embeddings, overrides and isolates, and zero-width characters.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}'
            | '\u{061C}'
            | '\u{FEFF}'
            | '\u{180E}'
    )
}

#[cfg(test)]
mod tests {
    use super::to_matrix::{duration_words, with_mentions};
    use super::*;
    use crate::config::template::Template;
    use crate::config::{GroupFile, UserPattern};

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
            moderators: vec![],
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

    pub(super) fn mx(
        sender: &str,
        display: Option<&str>,
        kind: MatrixKind,
        body: &str,
    ) -> MatrixText {
        MatrixText {
            room_id: "!room".into(),
            event_id: "$ev".into(),
            sender: sender.into(),
            sender_display_name: display.map(Into::into),
            kind,
            body: body.into(),
            ..MatrixText::default()
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
                of: "3EB0POLL".into(),
                tally: true,
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
            gif: false,
            waveform: Vec::new(),
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
        // The association's phone (or its WhatsApp Web) typing in the group is a
        // person, not an echo, even under an id shaped like the bridge's.
        let mut own = wa("hi", None);
        own.from_me = true;
        own.message_id = whatsapp_id_for_event("$x");
        assert!(relay.from_whatsapp(Some(&group(None)), &own, false).is_ok());
    }

    #[test]
    fn names_show_on_one_line_without_invisible_characters() {
        assert_eq!(shown_name("Bob\n*Alice*: hi"), "Bob *Alice*: hi");
        assert_eq!(shown_name("\u{202E}ecilA\u{202C} \u{200B}"), "ecilA");
        assert_eq!(shown_name("Zoé\u{2066}\t\u{0007}Martin"), "Zoé Martin");
        let mut message = wa("hi", Some("\u{202E}boB"));
        message.push_name = Some("\u{202E}boB\r\n".into());
        assert_eq!(to_matrix::whatsapp_display_name(&message), "boB");
        assert_eq!(
            matrix_display_name("@a:x", Some("Al\u{200D}ice\u{2067}")),
            "Alice"
        );
    }

    #[test]
    fn a_matrix_message_cannot_fake_another_persons_line_in_whatsapp() {
        let relay = relay();
        let g = group(None);
        let post = relay
            .from_matrix(
                Some(&g),
                &mx(
                    "@alice:example.org",
                    Some("Alice"),
                    MatrixKind::Text,
                    "d'accord\n*Bob*: je te dois 100 €\n  * _Bob_ rit\n*gras* normal",
                ),
                false,
            )
            .unwrap();
        assert_eq!(
            post.text,
            "*Alice*: d'accord\n> *Bob*: je te dois 100 €\n>   * _Bob_ rit\n*gras* normal"
        );
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
        // Someone who may not speak hears only that, even of what could not be read.
        assert_eq!(
            relay.from_matrix(
                Some(&g),
                &mx("@eve:evil.org", None, MatrixKind::Unreadable, ""),
                false
            ),
            Err(Skip::NotAllowed)
        );
        assert_eq!(
            relay.from_matrix(
                Some(&g),
                &mx("@a:example.org", None, MatrixKind::Unreadable, ""),
                false
            ),
            Err(Skip::Undecryptable)
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
    fn ids_no_whatsapp_app_makes_are_refused_but_the_bridges_notice_ids_pass() {
        let relay = relay();
        let g = group(None);
        let mut squatter = wa("hi", Some("Carol"));
        squatter.message_id = "wa-annotation:M1:👍".into();
        assert_eq!(
            relay.from_whatsapp(Some(&g), &squatter, false),
            Err(Skip::ForgedId)
        );
        // Named like the bridge's notice ids: a message's id has no dot.
        squatter.message_id = "gp2.1234.0".into();
        assert_eq!(
            relay.from_whatsapp(Some(&g), &squatter, false),
            Err(Skip::ForgedId)
        );
        let mut reaction = wa("", Some("Carol"));
        reaction.relation = Some(WhatsAppRelation::Reaction {
            id: "reaction:M1:33611111111".into(),
            emoji: "👍".into(),
        });
        assert_eq!(
            relay.from_whatsapp(Some(&g), &reaction, false),
            Err(Skip::ForgedId)
        );
        let mut notice = wa("", None);
        notice.message_id = "gp2.1234.0".into();
        notice.shared = Some(Shared::Members {
            change: MemberChange::Added,
            people: Vec::new(),
            by: None,
        });
        assert!(relay.from_whatsapp(Some(&g), &notice, false).is_ok());
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
        assert_eq!(
            post.change,
            Some(MatrixChange::Redact {
                of: "M1".into(),
                by_admin: false
            })
        );
        assert!(post.body.is_empty());

        // The bridge's own edit seen again from its number is an echo (the store
        // knows its id).
        let mut own_edit = wa("x", None);
        own_edit.from_me = true;
        own_edit.relation = Some(WhatsAppRelation::Edit {
            id: whatsapp_id_for_event("$e"),
        });
        assert_eq!(
            relay.from_whatsapp(Some(&g), &own_edit, true),
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
