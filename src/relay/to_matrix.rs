//! WhatsApp -> Matrix: whether a WhatsApp message crosses to its room, and what the
//! bot posts for it (text through the templates, files, shared things, notices).

use super::format::{self, escape_html};
use super::ids::{self, reaction_key};
use super::location::Location;
use super::media::{self, Media};
use super::namesakes;
use super::{
    single_line, GroupSetting, MatrixChange, MatrixPost, MemberChange, Mention, PollBallot,
    PollVoter, Relay, Shared, Skip, WhatsAppRelation, WhatsAppText,
};
use crate::config::{GroupFile, ReactionsToMatrix};

impl Relay {
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
        // Known by the ids it sent, never by their shape: WhatsApp Web and Desktop
        // make ids of the same shape for the number's own messages.
        if sent_by_bridge {
            return Err(Skip::OwnEcho);
        }
        if !ids_are_whatsapp_ids(message) {
            return Err(Skip::ForgedId);
        }
        let name = whatsapp_display_name(message);
        let post = match WhatsAppKind::of(message) {
            WhatsAppKind::Revoke { id } => MatrixPost {
                change: Some(MatrixChange::Redact {
                    of: id.to_owned(),
                    by_admin: message.sender_is_admin,
                }),
                ..MatrixPost::default()
            },
            WhatsAppKind::Reaction { id, emoji } => {
                self.whatsapp_reaction(message, &name, id, emoji)?
            }
            WhatsAppKind::Unsupported(kind) => not_relayed_yet(&name, kind),
            WhatsAppKind::Vote(ballot) => vote(ballot),
            WhatsAppKind::Shared(shared) => self.whatsapp_shared(message, &name, shared)?,
            WhatsAppKind::Location(location) => located(message, &name, location),
            WhatsAppKind::Said => self.whatsapp_said(message, &name)?,
        };
        Ok(MatrixPost {
            sender: message.sender_phone.clone(),
            ..post
        })
    }

    /// A reaction: ignored, the bot's own reaction, or a line answering the message,
    /// as `[relay] reactions_to_matrix` says.
    fn whatsapp_reaction(
        &self,
        message: &WhatsAppText,
        name: &str,
        id: &str,
        emoji: &str,
    ) -> Result<MatrixPost, Skip> {
        let emoji = single_line(emoji);
        match self.settings.reactions_to_matrix {
            ReactionsToMatrix::Ignore => Err(Skip::ReactionIgnored),
            ReactionsToMatrix::Reaction => Ok(MatrixPost {
                change: Some(MatrixChange::Annotation {
                    to: id.to_owned(),
                    reactor: message.sender_phone.clone(),
                    emoji,
                }),
                ..MatrixPost::default()
            }),
            ReactionsToMatrix::Line => Ok(MatrixPost {
                body: format!("{name} reacted {emoji}"),
                html: format!(
                    "<strong>{}</strong> reacted {}",
                    escape_html(name),
                    escape_html(&emoji)
                ),
                reply_to: Some(id.to_owned()),
                change: Some(MatrixChange::ReplyLine {
                    to: id.to_owned(),
                    key: reaction_key(id, &message.sender_phone),
                    removed: emoji.is_empty(),
                }),
                ..MatrixPost::default()
            }),
        }
    }

    /// A contact, a poll, a member change, a setting, a call or a view-once file, as a
    /// readable line (a contact's card comes along as a file, the line its caption).
    fn whatsapp_shared(
        &self,
        message: &WhatsAppText,
        name: &str,
        shared: &Shared,
    ) -> Result<MatrixPost, Skip> {
        if matches!(shared, Shared::Members { .. }) && !self.settings.member_notices {
            return Err(Skip::MemberNoticeOff);
        }
        let (body, html) = shared_for_matrix(shared, name);
        let card = match shared {
            Shared::Contact { .. } => message.media.clone(),
            _ => None,
        };
        Ok(MatrixPost {
            body,
            html,
            sender_name: if card.is_some() {
                name.to_owned()
            } else {
                String::new()
            },
            media: card,
            ..MatrixPost::default()
        })
    }

    /// A text, a caption, or a file: through the templates, a file over the limit
    /// replaced by a notice, a reply or an edit kept as one.
    fn whatsapp_said(&self, message: &WhatsAppText, name: &str) -> Result<MatrixPost, Skip> {
        if let Some(media) = &message.media {
            if let Some((body, html)) = self.too_large(media, name, "WhatsApp") {
                return Ok(MatrixPost {
                    body,
                    html,
                    ..MatrixPost::default()
                });
            }
        }
        let mut more_parts = Vec::new();
        let (body, html) = match &message.media {
            // No caption: the caption names the sender, so nobody wonders who sent it.
            Some(media) if message.text.trim().is_empty() => {
                let what = media.with_article();
                (
                    format!("{name} sent {what}"),
                    format!("<strong>{}</strong> sent {what}", escape_html(name)),
                )
            }
            _ if message.text.trim().is_empty() => return Err(Skip::Empty),
            _ => {
                let (body, html, more) = self.whatsapp_text_for_matrix(message, name);
                more_parts = more;
                (body, html)
            }
        };
        let mut post = MatrixPost {
            body,
            html,
            more_parts,
            sender_name: if message.media.is_some() {
                name.to_owned()
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
                post.change = Some(MatrixChange::Edit {
                    of: id.clone(),
                    tally: false,
                });
                // Named in the notice if the edit turns out not to be theirs to make.
                post.sender_name = name.to_owned();
            }
            _ => {}
        }
        Ok(post)
    }

    /// `text` (all or part of the message's) through the templates.
    pub(super) fn render_whatsapp_text(
        &self,
        message: &WhatsAppText,
        text: &str,
        name: &str,
    ) -> (String, String) {
        let phone = if message.sender_phone.is_empty() {
            String::new()
        } else {
            format!("+{}", message.sender_phone)
        };
        let (text, text_html) = with_mentions(text, &message.mentions);
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
}

/// Attempts at downloading a WhatsApp file that keeps failing (network errors,
/// timeouts; not while WhatsApp is away) before the room is told it could not be
/// had: with the outbox's growing delays (up to a minute), a few minutes.
pub const MAX_DOWNLOAD_ATTEMPTS: u32 = 8;

/// What a WhatsApp message is, for `from_whatsapp` to pick one function per kind.
/// Checked in this order: a deletion or reaction says nothing of its own, and a kind
/// the adapter could not read is told before anything else it carries.
enum WhatsAppKind<'a> {
    Revoke {
        id: &'a str,
    },
    Reaction {
        id: &'a str,
        emoji: &'a str,
    },
    /// A kind the bridge does not relay yet (its name, or "other").
    Unsupported(&'a str),
    /// A vote read from a poll the bridge saw: it updates the poll's tally.
    Vote(&'a PollBallot),
    Shared(&'a Shared),
    Location(&'a Location),
    /// A text, a caption, a file; a reply or an edit of one.
    Said,
}

impl<'a> WhatsAppKind<'a> {
    fn of(message: &'a WhatsAppText) -> Self {
        match (&message.relation, &message.unsupported, &message.shared) {
            (Some(WhatsAppRelation::Revoke { id }), _, _) => WhatsAppKind::Revoke { id },
            (Some(WhatsAppRelation::Reaction { id, emoji }), _, _) => {
                WhatsAppKind::Reaction { id, emoji }
            }
            (_, Some(kind), _) => WhatsAppKind::Unsupported(kind),
            (_, _, Some(Shared::PollVote(Some(ballot)))) => WhatsAppKind::Vote(ballot),
            (_, _, Some(shared)) => WhatsAppKind::Shared(shared),
            _ => match &message.location {
                Some(location) => WhatsAppKind::Location(location),
                None => WhatsAppKind::Said,
            },
        }
    }
}

/// The notice for a kind the bridge does not relay yet.
fn not_relayed_yet(name: &str, kind: &str) -> MatrixPost {
    let what = match kind {
        "other" => "a kind of message".to_owned(),
        kind => with_article(kind),
    };
    let note = format!("sent {what} that passerelle does not relay yet: see it in WhatsApp");
    MatrixPost {
        body: format!("{name} {note}."),
        html: format!("<em>{} {}.</em>", escape_html(name), escape_html(&note)),
        ..MatrixPost::default()
    }
}

/// A vote in a poll the bridge saw: the poll's line is edited with its tally, or,
/// for a poll asked in Matrix (not the bot's event to edit), the bot's reply line.
fn vote(ballot: &PollBallot) -> MatrixPost {
    if ballot.asked_in_matrix {
        let (body, html) = tally_lines(&ballot.options, &ballot.tally);
        return MatrixPost {
            body,
            html,
            change: Some(MatrixChange::ReplyLine {
                to: ballot.poll_id.clone(),
                key: format!("poll-tally:{}", ballot.poll_id),
                removed: false,
            }),
            ..MatrixPost::default()
        };
    }
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
    MatrixPost {
        body,
        html,
        change: Some(MatrixChange::Edit {
            of: ballot.poll_id.clone(),
            tally: true,
        }),
        ..MatrixPost::default()
    }
}

/// A location: a map link and the point, with the sender's comment.
fn located(message: &WhatsAppText, name: &str, location: &Location) -> MatrixPost {
    let comment = single_line(&message.text);
    let mut body = format!("{name} shared a location: {}", location.describe());
    let mut html = format!(
        "<strong>{}</strong> shared a location: {}",
        escape_html(name),
        location_html(location)
    );
    if !comment.is_empty() {
        body.push_str(&format!(" ({comment})"));
        html.push_str(&format!(" ({})", escape_html(&comment)));
    }
    MatrixPost {
        body,
        html,
        reply_to: match &message.relation {
            Some(WhatsAppRelation::Reply { id, .. }) => Some(id.clone()),
            _ => None,
        },
        location: Some(location.clone()),
        ..MatrixPost::default()
    }
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
        Shared::Members { change, people, by } => member_line(change, people, by),
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

/// The room's line about people who joined, left, were added, removed, promoted or
/// demoted (`by`: who did it, when WhatsApp said).
fn member_line(
    change: &MemberChange,
    people: &[Mention],
    by: &Option<Mention>,
) -> (String, String) {
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
pub(super) fn duration_words(seconds: u32) -> String {
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

/// The text with each `@<phone>` of a mentioned person replaced by `@Name` (their
/// number when the name is unknown), and its HTML with those names in bold. No
/// Matrix pill: WhatsApp people have no Matrix account.
pub(super) fn with_mentions(text: &str, mentions: &[Mention]) -> (String, String) {
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

/// The name WhatsApp people get in Matrix: their push name, else their number, told
/// apart from others of the group who show the same name.
pub fn whatsapp_display_name(message: &WhatsAppText) -> String {
    let name = whatsapp_own_name(message);
    if message.namesakes.is_empty() {
        name
    } else {
        namesakes::whatsapp_told_apart(&name, &message.sender_phone, &message.namesakes)
    }
}

/// The sender's name as they chose it (their push name, else their number), before
/// it is told apart from namesakes.
pub fn whatsapp_own_name(message: &WhatsAppText) -> String {
    match message.push_name.as_deref().map(super::shown_name) {
        Some(name) if !name.is_empty() => name,
        _ if !message.sender_phone.is_empty() => format!("+{}", message.sender_phone),
        _ => "WhatsApp".to_string(),
    }
}

/// Whether the message's id and the id it refers to are ids a WhatsApp app makes
/// (see [`ids::is_whatsapp_message_id`]). The notices the bridge makes of group
/// notifications and calls carry ids of its own making (`gp2.…`, `call.…`): their
/// dot keeps them apart from any id that passes here.
fn ids_are_whatsapp_ids(message: &WhatsAppText) -> bool {
    let own_id_made_by_bridge = matches!(
        message.shared,
        Some(Shared::Members { .. } | Shared::Setting(_) | Shared::Call { .. })
    );
    let referred = match &message.relation {
        None => None,
        Some(
            WhatsAppRelation::Reply { id, .. }
            | WhatsAppRelation::Edit { id }
            | WhatsAppRelation::Revoke { id }
            | WhatsAppRelation::Reaction { id, .. },
        ) => Some(id),
    };
    std::iter::once(&message.message_id)
        .filter(|_| !own_id_made_by_bridge)
        .chain(referred)
        .all(|id| ids::is_whatsapp_message_id(id))
}

/// Bot's-own-reaction mode (`reactions_to_matrix = "reaction"`): a reactor's emoji
/// changed from `before` to `now` (empty: no reaction). The bot shows each emoji
/// once while anyone reacts so: the emoji whose bot reaction is taken back, when
/// nobody in `still_reacted` (the emojis reacted after the change) reacts so any more.
pub fn annotation_taken_back<'a>(
    before: Option<&'a str>,
    now: &str,
    still_reacted: &[&str],
) -> Option<&'a str> {
    before.filter(|before| *before != now && !still_reacted.contains(before))
}

/// Whether a WhatsApp edit may change the copy of a message by `original_author`:
/// Who a WhatsApp reply notifies in Matrix: the author of the replied message when
/// it came from Matrix (the number sent it for them: `replied_author` is a Matrix
/// user id), so that they hear of the answer; nobody for a WhatsApp message.
pub fn notified_by_reply(replied_came_from_matrix: bool, replied_author: &str) -> Vec<String> {
    if replied_came_from_matrix && replied_author.starts_with('@') {
        vec![replied_author.to_owned()]
    } else {
        Vec::new()
    }
}

/// WhatsApp lets only the author edit, and its server never checks what a modified
/// client claims inside the encrypted message, so the bridge does. Messages that came
/// from Matrix (their author a Matrix user) are nobody's to edit from WhatsApp.
pub fn edit_is_authors(original_author: &str, editor: &str) -> bool {
    !editor.is_empty() && original_author == editor
}

/// Whether a WhatsApp deletion for everyone may redact the copy of a message by
/// `original_author`: its author may, and so may a group admin (WhatsApp's admin
/// delete), since WhatsApp lets them; anyone else's is a modified client's forgery.
/// A message from Matrix (its author a Matrix user, sent by the number) is never
/// redacted from WhatsApp: its Matrix author's event is theirs alone.
pub fn deletion_is_allowed(original_author: &str, deleter: &str, by_admin: bool) -> bool {
    let from_matrix = original_author.starts_with('@');
    !from_matrix && (by_admin || edit_is_authors(original_author, deleter))
}

/// What the room is told instead of an edit its sender was not entitled to make.
pub fn forged_edit_notice(editor_name: &str) -> MatrixPost {
    let body = format!(
        "{editor_name} sent an edit of a message that is not theirs: only its author can edit it, so it is not shown here."
    );
    let html = format!("<em>{}</em>", escape_html(&body));
    MatrixPost {
        body,
        html,
        ..MatrixPost::default()
    }
}

/// The notice posted when the homeserver refused a relayed WhatsApp message for good.
pub const REFUSED_BY_HOMESERVER: &str =
    "A WhatsApp message could not be posted here (refused by the homeserver).";

/// The notice posted in a room whose group file the administrator removed.
pub const NO_LONGER_BRIDGED: &str =
    "This room is no longer bridged to WhatsApp: its group file was removed by the administrator.";

/// The notice that stands for a WhatsApp file that could not be fetched:
/// `(body, html)`.
pub fn whatsapp_file_unavailable(sender_name: &str, media: &Media) -> (String, String) {
    let body = format!(
        "{sender_name} sent {} that could not be fetched from WhatsApp: see it there.",
        media.kind.with_article()
    );
    let html = format!("<em>{}</em>", escape_html(&body));
    (body, html)
}

/// What the room reads for a WhatsApp file longer than its message said (a modified
/// client's): cut off where it passed its declared size, never relayed.
pub fn whatsapp_file_not_as_declared(sender_name: &str, media: &Media) -> (String, String) {
    let declared = media::human_size(media.size.unwrap_or(0));
    let what = match media.file_name.as_deref().map(media::clean_file_name) {
        Some(name) if !name.is_empty() => name,
        _ => media.kind.with_article().to_owned(),
    };
    let body = format!(
        "{sender_name} sent {what}, which is larger than its message said ({declared}): \
         not relayed, see it in WhatsApp."
    );
    let html = format!("<em>{}</em>", escape_html(&body));
    (body, html)
}

/// `post` preceded by a quote of `quoted` (its first line, shortened): a reply to
/// a message the bridge never saw still reads as one.
pub fn with_quote(post: &MatrixPost, quoted: &str) -> MatrixPost {
    let first_line = quoted.lines().next().unwrap_or_default();
    let mut short: String = first_line.chars().take(100).collect();
    if short.len() < quoted.len() {
        short.push('…');
    }
    MatrixPost {
        body: format!("> {short}\n\n{}", post.body),
        html: format!(
            "<blockquote>{}</blockquote>{}",
            escape_html(&short),
            post.html
        ),
        ..post.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::{annotation_taken_back, notified_by_reply};

    #[test]
    fn a_reply_notifies_the_matrix_author_of_what_it_answers_and_nobody_else() {
        assert_eq!(
            notified_by_reply(true, "@alice:example.org"),
            ["@alice:example.org"]
        );
        assert!(notified_by_reply(false, "33611111111").is_empty());
        assert!(notified_by_reply(true, "").is_empty());
    }

    #[test]
    fn only_the_author_or_an_admin_deletes_from_whatsapp() {
        use super::deletion_is_allowed;
        assert!(deletion_is_allowed("33611111111", "33611111111", false));
        assert!(deletion_is_allowed("33611111111", "33622222222", true));
        assert!(!deletion_is_allowed("33611111111", "33622222222", false));
        assert!(!deletion_is_allowed("", "", false));
        // A Matrix user's message, sent by the number: nobody's to delete from WhatsApp.
        assert!(!deletion_is_allowed(
            "@alice:example.org",
            "33699999999",
            false
        ));
        assert!(!deletion_is_allowed(
            "@alice:example.org",
            "33622222222",
            true
        ));
    }

    #[test]
    fn only_the_author_edits_from_whatsapp() {
        use super::edit_is_authors;
        assert!(edit_is_authors("33611111111", "33611111111"));
        assert!(!edit_is_authors("33622222222", "33611111111"));
        // A Matrix user's message, sent by the number.
        assert!(!edit_is_authors("@alice:example.org", "33611111111"));
        assert!(!edit_is_authors("", ""));
    }

    #[test]
    fn the_bots_reaction_goes_when_nobody_reacts_so_any_more() {
        // Bob went from 👍 to ❤️ and nobody else reacts 👍: the bot's 👍 goes.
        assert_eq!(annotation_taken_back(Some("👍"), "❤️", &["❤️"]), Some("👍"));
        // Carol still reacts 👍: it stays.
        assert_eq!(annotation_taken_back(Some("👍"), "❤️", &["❤️", "👍"]), None);
        // Bob took his reaction back, alone with it.
        assert_eq!(annotation_taken_back(Some("👍"), "", &[]), Some("👍"));
        // The same reaction again, or a first one: nothing to take back.
        assert_eq!(annotation_taken_back(Some("👍"), "👍", &["👍"]), None);
        assert_eq!(annotation_taken_back(None, "👍", &["👍"]), None);
    }
}
