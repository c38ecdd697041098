//! Matrix -> WhatsApp: whether a Matrix event crosses to its group, and what the
//! association's number sends for it (`*Alice*: text` through the templates, files,
//! locations, polls, and the changes to earlier messages).

use super::format;
use super::media::{self, Media};
use super::{
    single_line, MatrixKind, MatrixRelation, MatrixText, Relay, Skip, WhatsAppChange, WhatsAppPost,
    WHATSAPP_MAX_TEXT_CHARS,
};
use crate::config::template;
use crate::config::{GroupFile, ReactionsToWhatsApp};

impl Relay {
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
        let group = group.ok_or(Skip::UnbridgedRoom)?;
        self.matrix_may_cross(group, message, sent_by_bridge)?;
        let name = matrix_display_name(&message.sender, message.sender_display_name.as_deref());
        let name = if message.namesakes.is_empty() {
            name
        } else {
            super::namesakes::matrix_told_apart(&name, &message.sender)
        };
        let sender_line = |what: &str| {
            for_whatsapp(
                &self.templates.to_whatsapp_emote,
                &name,
                &message.sender,
                what,
            )
        };
        let change = |change: WhatsAppChange| WhatsAppPost {
            change: Some(change),
            ..WhatsAppPost::default()
        };
        let post = match (&message.relation, &message.poll, &message.location) {
            (MatrixRelation::Reaction { .. }, _, _)
                if self.settings.reactions_to_whatsapp == ReactionsToWhatsApp::Ignore =>
            {
                return Err(Skip::ReactionIgnored);
            }
            (MatrixRelation::Reaction { to, key }, _, _) => change(WhatsAppChange::React {
                to: to.clone(),
                emoji: key.clone(),
            }),
            (MatrixRelation::Redaction { of }, _, _) => {
                change(WhatsAppChange::Revoke { of: of.clone() })
            }
            // Poll votes and ends are lines answering the number's poll: the number
            // has one vote, which is nobody's to cast.
            (MatrixRelation::PollVote { poll }, _, _) => WhatsAppPost {
                text: sender_line(&vote_words(&message.body)),
                ..change(WhatsAppChange::AnswerPoll { poll: poll.clone() })
            },
            (MatrixRelation::PollEnd { poll }, _, _) => WhatsAppPost {
                text: sender_line("ended the poll"),
                ..change(WhatsAppChange::AnswerPoll { poll: poll.clone() })
            },
            (_, Some(poll), _) if !poll.fits_whatsapp() => return Err(Skip::PollDoesNotFit),
            (_, Some(poll), _) => WhatsAppPost {
                text: sender_line("started a poll"),
                sender_name: name.clone(),
                poll: Some(poll.clone()),
                ..WhatsAppPost::default()
            },
            (_, _, Some(location)) => WhatsAppPost {
                text: sender_line("shared a location"),
                sender_name: name.clone(),
                location: Some(location.clone()),
                ..WhatsAppPost::default()
            },
            _ => self.matrix_said(message, &name)?,
        };
        Ok(WhatsAppPost {
            sender: message.sender.clone(),
            ..post
        })
    }

    /// Whether a Matrix event may cross at all: not the bot's own, from a sender the
    /// group file allows (asked first: someone who may not speak hears only that),
    /// not a notice, a message type the bridge relays.
    fn matrix_may_cross(
        &self,
        group: &GroupFile,
        message: &MatrixText,
        sent_by_bridge: bool,
    ) -> Result<(), Skip> {
        if message.sender == self.bot_user || sent_by_bridge {
            return Err(Skip::OwnEcho);
        }
        if let Some(allow) = &group.allow {
            if !allow.iter().any(|pattern| pattern.matches(&message.sender)) {
                return Err(Skip::NotAllowed);
            }
        }
        match message.kind {
            MatrixKind::Notice => Err(Skip::Notice),
            MatrixKind::Other => Err(Skip::Unsupported),
            MatrixKind::Unreadable => Err(Skip::Undecryptable),
            MatrixKind::Text | MatrixKind::Emote => Ok(()),
        }
    }

    /// A text, an emote or a file (an edit of a file's caption is a text): through
    /// the templates, within WhatsApp's length, a reply or an edit kept as one.
    fn matrix_said(&self, message: &MatrixText, name: &str) -> Result<WhatsAppPost, Skip> {
        let body =
            format::matrix_to_whatsapp(&message.body, message.html.as_deref(), message.is_reply);
        if let Some(media) = message
            .media
            .as_ref()
            .filter(|_| !matches!(message.relation, MatrixRelation::Replace { .. }))
        {
            return Ok(self.matrix_media_for_whatsapp(message, media, name, &body));
        }
        if body.trim().is_empty() {
            return Err(Skip::Empty);
        }
        let template = match message.kind {
            MatrixKind::Emote => &self.templates.to_whatsapp_emote,
            _ => &self.templates.to_whatsapp,
        };
        let text = for_whatsapp(template, name, &message.sender, &body);
        if text.chars().count() > WHATSAPP_MAX_TEXT_CHARS {
            return Err(Skip::TooLong);
        }
        let mut post = WhatsAppPost {
            text,
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
            let what = media.with_article();
            render(&self.templates.to_whatsapp_emote, format!("sent {what}"))
        } else {
            render(&self.templates.to_whatsapp, caption.to_owned())
        };
        post.text = text;
        post.media = Some(media.clone());
        post
    }
}

/// What a Matrix poll vote says in WhatsApp: the options picked (comma-separated in
/// the event's body), or that the vote was taken back.
fn vote_words(body: &str) -> String {
    let picked = single_line(body);
    if picked.is_empty() {
        "took back their vote".to_owned()
    } else {
        format!("voted: {picked}")
    }
}

/// A Matrix -> WhatsApp template filled in: `{name}`, `{user}` (the Matrix id) and
/// `{text}`.
fn for_whatsapp(template: &template::Template, name: &str, user: &str, text: &str) -> String {
    let text = without_forged_sender_lines(text);
    template.render(|key| match key {
        "name" => Some(name.to_owned()),
        "user" => Some(user.to_owned()),
        "text" => Some(text.clone()),
        _ => None,
    })
}

/// `text` with each of its later lines that would read in WhatsApp as the number's
/// line for another person (`*Bob*: ...`, `* _Bob_ ...`) quoted (`> `): it then
/// reads as part of its sender's message, not as someone else's.
fn without_forged_sender_lines(text: &str) -> String {
    let mut lines = text.split('\n');
    let mut out = lines.next().unwrap_or_default().to_owned();
    for line in lines {
        out.push('\n');
        if looks_like_a_sender_line(line) {
            out.push_str("> ");
        }
        out.push_str(line);
    }
    out
}

/// Whether `line` starts like a relayed line: a bold name and a colon, or an emote.
fn looks_like_a_sender_line(line: &str) -> bool {
    let line = line.trim_start();
    if let Some(rest) = line.strip_prefix("* _") {
        return rest.contains('_');
    }
    let Some(rest) = line.strip_prefix('*') else {
        return false;
    };
    match rest.find('*') {
        Some(end) if end > 0 => rest[end + 1..].trim_start().starts_with(':'),
        _ => false,
    }
}

/// The name Matrix people get in WhatsApp: room display name, else the localpart.
/// WhatsApp markup characters are removed so a nickname cannot break the bold prefix.
pub fn matrix_display_name(user_id: &str, display_name: Option<&str>) -> String {
    let cleaned = display_name
        .map(|name| super::shown_name(name).replace(['*', '_', '~', '`'], ""))
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

/// How long WhatsApp lets a sender edit a message.
pub const WHATSAPP_EDIT_WINDOW_SECS: i64 = 15 * 60;
/// How long WhatsApp lets a sender delete a message for everyone (about 2.5 days).
pub const WHATSAPP_REVOKE_WINDOW_SECS: i64 = 60 * 3600;

/// What the bridge knows of the earlier message a Matrix change is about, from its
/// link (the store's record of what crossed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linked {
    /// The WhatsApp message id.
    pub wa_id: String,
    /// Who wrote it: a Matrix user id for what came from Matrix, else a phone number.
    pub sender: String,
    /// Whether it came from Matrix (the number's message) rather than from WhatsApp.
    pub from_matrix: bool,
    /// How long ago it crossed.
    pub age_secs: i64,
}

/// A Matrix change the number does not make: with a notice for the sender when they
/// should know why, without one when there is nothing to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub Option<String>);

impl Refused {
    /// Nothing to change, nobody to tell (e.g. a message that never crossed).
    pub fn silently() -> Refused {
        Refused(None)
    }

    fn saying(notice: String) -> Refused {
        Refused(Some(notice))
    }
}

/// What happens to the digest reply listing reactions to one WhatsApp message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DigestReply {
    /// A new reply (or this item's own reply, sent again under the same id).
    New,
    /// The reply with this id is edited to the new list.
    Edit(String),
    /// Nobody's reaction is left: the reply with this id is deleted.
    Revoke(String),
    /// Nothing to send: no reply to take back, or too late to take it back.
    Nothing,
}

/// Where a reaction digest stands, as the store keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestState<'a> {
    /// The WhatsApp id of the reply sent for it (empty: none yet).
    pub reply_id: &'a str,
    /// When that reply was sent (seconds since the epoch).
    pub reply_sent_at: i64,
    /// Whether nobody reacted before this change.
    pub was_empty: bool,
    /// Whether nobody reacts after it.
    pub is_empty: bool,
}

impl Relay {
    /// Whether Matrix reactions reach WhatsApp gathered in one digest reply.
    pub fn reactions_in_digest(&self) -> bool {
        self.settings.reactions_to_whatsapp == ReactionsToWhatsApp::Digest
    }

    /// A Matrix edit of `original`: the number's WhatsApp message to edit. Only the
    /// author edits, only within WhatsApp's edit window; the bridge's mirrors of
    /// WhatsApp messages are not the number's to edit.
    pub fn edit_target(
        &self,
        post: &WhatsAppPost,
        original: Option<Linked>,
    ) -> Result<String, Refused> {
        let original = original
            .filter(|original| original.from_matrix)
            .ok_or_else(Refused::silently)?;
        if original.sender != post.sender {
            return Err(Refused::saying(format!(
                "{}: only the author of a message can edit it; the edit was not relayed to WhatsApp.",
                post.sender
            )));
        }
        if original.age_secs > WHATSAPP_EDIT_WINDOW_SECS {
            return Err(Refused::saying(format!(
                "{}: WhatsApp allows edits for {} minutes only; the edit was not relayed.",
                post.sender,
                WHATSAPP_EDIT_WINDOW_SECS / 60
            )));
        }
        Ok(original.wa_id)
    }

    /// A Matrix redaction of `original` (not a reaction's): the number's WhatsApp
    /// message to delete for everyone. Its author may, and so may whoever may redact
    /// others' events in the room (`moderator`), within WhatsApp's window. Mirrors of
    /// WhatsApp messages are Matrix-side copies: deleting one deletes nothing there.
    pub fn revoke_target(
        &self,
        post: &WhatsAppPost,
        original: Option<Linked>,
        moderator: bool,
    ) -> Result<String, Refused> {
        let original = original
            .filter(|original| original.from_matrix)
            .ok_or_else(Refused::silently)?;
        if Self::revoke_needs_moderator(post, &original) && !moderator {
            return Err(Refused::silently());
        }
        if original.age_secs > WHATSAPP_REVOKE_WINDOW_SECS {
            return Err(Refused::saying(format!(
                "{}: WhatsApp allows deleting a message for everyone for {} hours only; it stays in the WhatsApp group.",
                post.sender,
                WHATSAPP_REVOKE_WINDOW_SECS / 3600
            )));
        }
        Ok(original.wa_id)
    }

    /// Whether a redaction takes back a reaction that crossed (by `reactor`): only
    /// the reactor's own. A moderator removing someone's reaction in Matrix does not
    /// speak for them, and the number's reaction stays.
    pub fn may_take_back_reaction(post: &WhatsAppPost, reactor: &str) -> bool {
        post.sender == reactor
    }

    /// Whether deleting `original` takes a room moderator: it is a message of the
    /// number's written by someone other than the redaction's sender. The bridge asks
    /// the room's power levels only then.
    pub fn revoke_needs_moderator(post: &WhatsAppPost, original: &Linked) -> bool {
        original.from_matrix && original.sender != post.sender
    }

    /// The notice a Matrix sender gets for a message that does not cross, when they
    /// should know (`None`: nothing to say, e.g. a notice or the bot's own echo).
    pub fn skip_notice(&self, skip: Skip, message: &MatrixText) -> Option<String> {
        let sender = &message.sender;
        match skip {
            Skip::NotAllowed => Some(format!(
                "{sender}: your messages are not relayed to WhatsApp (not allowed by this group's settings; ask the administrator)."
            )),
            Skip::Unsupported => Some(format!(
                "{sender}: {} messages are not relayed to WhatsApp yet; texts, files, stickers, locations and polls are.",
                message.body.trim_start_matches("m.")
            )),
            Skip::PollDoesNotFit => Some(format!(
                "{sender}: WhatsApp polls have 2 to {} different options; this poll was not relayed.",
                super::MatrixPoll::MAX_OPTIONS
            )),
            Skip::Undecryptable => Some(format!(
                "{sender}: the bridge could not decrypt one of your messages (its key never reached the bridge), so it did not reach WhatsApp. Please send it again."
            )),
            Skip::TooLong => Some(format!(
                "{sender}: your message is too long for WhatsApp (over {WHATSAPP_MAX_TEXT_CHARS} characters) and was not relayed."
            )),
            Skip::UnapprovedGroup
            | Skip::UnbridgedRoom
            | Skip::OwnEcho
            | Skip::Notice
            | Skip::Empty
            | Skip::ReactionIgnored
            | Skip::MemberNoticeOff
            | Skip::ForgedId => None,
        }
    }
}

/// The most characters of a quote phones are sent (they show two or three lines).
const QUOTE_PREVIEW_CHARS: usize = 200;

/// What phones show in the quote of a reply to the message read as `body` in
/// Matrix: its text on one line, without the `Name: ` the bridge put before a
/// WhatsApp message (`from_whatsapp`; phones name its sender above the quote),
/// cut at [`QUOTE_PREVIEW_CHARS`].
pub fn quote_preview(body: &str, from_whatsapp: bool) -> String {
    let text = match body.split_once(": ") {
        Some((name, rest))
            if from_whatsapp && !name.contains('\n') && name.chars().count() <= 80 =>
        {
            rest
        }
        _ => body,
    };
    let line = single_line(text);
    if line.chars().count() <= QUOTE_PREVIEW_CHARS {
        return line;
    }
    let cut: String = line.chars().take(QUOTE_PREVIEW_CHARS - 1).collect();
    format!("{}…", cut.trim_end())
}

/// Reaction digest mode: what the number sends after a change to the reactions to
/// one message, sent as item `item_id` at `now`. A new reply while none stands (or
/// the old one is too old to edit), an edit of the reply, or its deletion when
/// nobody's reaction is left and WhatsApp still allows it.
pub fn digest_reply(state: DigestState<'_>, item_id: &str, now: i64) -> DigestReply {
    let age = now - state.reply_sent_at;
    let has_reply = !state.reply_id.is_empty();
    if state.reply_id == item_id
        || (!state.is_empty && (state.was_empty || !has_reply || age > WHATSAPP_EDIT_WINDOW_SECS))
    {
        DigestReply::New
    } else if state.is_empty {
        if !has_reply || age > WHATSAPP_REVOKE_WINDOW_SECS {
            DigestReply::Nothing
        } else {
            DigestReply::Revoke(state.reply_id.to_owned())
        }
    } else {
        DigestReply::Edit(state.reply_id.to_owned())
    }
}

/// The digest reply's text: `👍 Alice, Bob · ❤️ Carol`, each emoji once in the
/// order they came, with who reacted so (names as the room shows them).
pub fn digest_text(reactions: &[(String, String)]) -> String {
    let mut by_emoji: Vec<(&str, Vec<&str>)> = Vec::new();
    for (emoji, name) in reactions {
        match by_emoji.iter_mut().find(|(known, _)| known == emoji) {
            Some((_, names)) if names.contains(&name.as_str()) => {}
            Some((_, names)) => names.push(name),
            None => by_emoji.push((emoji, vec![name])),
        }
    }
    by_emoji
        .iter()
        .map(|(emoji, names)| format!("{} {}", single_line(emoji), names.join(", ")))
        .collect::<Vec<_>>()
        .join(" · ")
}

/// Whether the sender's line (`* _Alice_ shared a location`) goes to WhatsApp
/// before the message itself: for what WhatsApp shows without a caption (a location,
/// a poll, a file of a kind without captions, when the file is sent).
pub fn sender_line_first(post: &WhatsAppPost, file_sent: bool) -> bool {
    post.location.is_some()
        || post.poll.is_some()
        || (file_sent
            && post
                .media
                .as_ref()
                .is_some_and(|media| !media.kind.has_whatsapp_caption()))
}

/// The notice for a Matrix message WhatsApp refused for good.
pub fn refused_by_whatsapp(reason: &str) -> String {
    format!("This message could not be sent to WhatsApp: {reason}")
}

/// The line sent in place of a Matrix file that could not be fetched.
pub fn matrix_file_unavailable(text: &str, media: &Media) -> String {
    format!(
        "{text}\n_({} could not be fetched from Matrix: see it there)_",
        media.kind.with_article()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RelayConfig, Templates};

    fn relay() -> Relay {
        Relay::new(
            "@bot:example.org",
            Templates::default(),
            RelayConfig::default(),
        )
    }

    fn by(sender: &str) -> WhatsAppPost {
        WhatsAppPost {
            sender: sender.to_owned(),
            ..WhatsAppPost::default()
        }
    }

    fn alices(age_secs: i64) -> Option<Linked> {
        Some(Linked {
            wa_id: "3EB0BE01".into(),
            sender: "@alice:example.org".into(),
            from_matrix: true,
            age_secs,
        })
    }

    #[test]
    fn only_the_author_edits_and_only_within_whatsapps_window() {
        let relay = relay();
        let alice = by("@alice:example.org");
        assert_eq!(relay.edit_target(&alice, alices(60)), Ok("3EB0BE01".into()));
        let refused = relay.edit_target(&by("@mallory:example.org"), alices(60));
        assert!(
            matches!(refused, Err(Refused(Some(notice))) if notice.contains("only the author"))
        );
        let late = relay.edit_target(&alice, alices(WHATSAPP_EDIT_WINDOW_SECS + 1));
        assert!(matches!(late, Err(Refused(Some(notice))) if notice.contains("15 minutes")));
        // A mirror of a WhatsApp message, or one that never crossed: nothing to say.
        let mirror = alices(60).map(|linked| Linked {
            from_matrix: false,
            ..linked
        });
        assert_eq!(relay.edit_target(&alice, mirror), Err(Refused(None)));
        assert_eq!(relay.edit_target(&alice, None), Err(Refused(None)));
    }

    #[test]
    fn the_author_or_a_moderator_deletes_within_whatsapps_window() {
        let relay = relay();
        let alice = by("@alice:example.org");
        let mallory = by("@mallory:example.org");
        assert_eq!(
            relay.revoke_target(&alice, alices(60), false),
            Ok("3EB0BE01".into())
        );
        assert_eq!(
            relay.revoke_target(&mallory, alices(60), true),
            Ok("3EB0BE01".into())
        );
        assert_eq!(
            relay.revoke_target(&mallory, alices(60), false),
            Err(Refused(None))
        );
        let late = relay.revoke_target(&alice, alices(WHATSAPP_REVOKE_WINDOW_SECS + 1), false);
        assert!(matches!(late, Err(Refused(Some(notice))) if notice.contains("60 hours")));
    }

    #[test]
    fn the_digest_reply_is_new_edited_or_deleted_as_whatsapp_allows() {
        let state = |reply_id, sent_at, was_empty, is_empty| DigestState {
            reply_id,
            reply_sent_at: sent_at,
            was_empty,
            is_empty,
        };
        let now = 1_000_000;
        assert_eq!(
            digest_reply(state("", 0, true, false), "B", now),
            DigestReply::New
        );
        assert_eq!(
            digest_reply(state("A", now - 60, false, false), "B", now),
            DigestReply::Edit("A".into())
        );
        // Too old to edit: a new reply.
        let old = now - WHATSAPP_EDIT_WINDOW_SECS - 1;
        assert_eq!(
            digest_reply(state("A", old, false, false), "B", now),
            DigestReply::New
        );
        // A retry of the item that sent the reply sends it again under its id.
        assert_eq!(
            digest_reply(state("B", now, false, false), "B", now),
            DigestReply::New
        );
        assert_eq!(
            digest_reply(state("A", now - 60, false, true), "B", now),
            DigestReply::Revoke("A".into())
        );
        let too_late = now - WHATSAPP_REVOKE_WINDOW_SECS - 1;
        assert_eq!(
            digest_reply(state("A", too_late, false, true), "B", now),
            DigestReply::Nothing
        );
        assert_eq!(
            digest_reply(state("", 0, true, true), "B", now),
            DigestReply::Nothing
        );
    }

    #[test]
    fn the_digest_text_lists_each_emoji_once_with_who() {
        let reactions = [
            ("👍".to_owned(), "Alice".to_owned()),
            ("❤️".to_owned(), "Carol".to_owned()),
            ("👍".to_owned(), "Bob".to_owned()),
            ("👍".to_owned(), "Alice".to_owned()),
        ];
        assert_eq!(digest_text(&reactions), "👍 Alice, Bob · ❤️ Carol");
    }

    #[test]
    fn a_quote_shows_the_text_without_the_bridges_name_line_and_short() {
        assert_eq!(quote_preview("Bob: à demain", true), "à demain");
        // A Matrix person's text is theirs as it is.
        assert_eq!(quote_preview("Note: à demain", false), "Note: à demain");
        assert_eq!(quote_preview("Bob: une\n  deux", true), "une deux");
        let long = format!("Bob: {}", "mot ".repeat(100));
        let preview = quote_preview(&long, true);
        assert!(preview.chars().count() <= QUOTE_PREVIEW_CHARS && preview.ends_with('…'));
        assert_eq!(quote_preview("", true), "");
    }

    #[test]
    fn senders_are_told_why_their_message_did_not_cross_and_bots_are_not() {
        let relay = relay();
        let message = crate::relay::tests::mx(
            "@alice:example.org",
            None,
            MatrixKind::Other,
            "m.video.call",
        );
        let told = |skip| relay.skip_notice(skip, &message);
        assert!(told(Skip::Unsupported)
            .unwrap()
            .contains("video.call messages are not relayed"));
        assert!(told(Skip::NotAllowed).unwrap().contains("not allowed"));
        assert!(told(Skip::TooLong).unwrap().contains("65536 characters"));
        assert!(told(Skip::PollDoesNotFit).unwrap().contains("2 to 12"));
        assert!(told(Skip::Undecryptable)
            .unwrap()
            .contains("could not decrypt one of your messages"));
        assert_eq!(told(Skip::Notice), None);
        assert_eq!(told(Skip::OwnEcho), None);
    }

    #[test]
    fn what_whatsapp_shows_without_a_caption_gets_the_senders_line_first() {
        let file = |kind| WhatsAppPost {
            media: Some(Media {
                kind,
                source: "mxc://example.org/f".into(),
                mime: "application/octet-stream".into(),
                file_name: None,
                size: Some(10),
                seconds: None,
                gif: false,
                waveform: Vec::new(),
            }),
            ..WhatsAppPost::default()
        };
        use crate::relay::media::MediaKind;
        assert!(sender_line_first(&file(MediaKind::Voice), true));
        assert!(sender_line_first(&file(MediaKind::Sticker), true));
        assert!(!sender_line_first(&file(MediaKind::Image), true));
        // The file could not be fetched: the line says so, in one message.
        assert!(!sender_line_first(&file(MediaKind::Voice), false));
        let poll = WhatsAppPost {
            poll: Some(crate::relay::MatrixPoll {
                question: "?".into(),
                options: vec!["a".into(), "b".into()],
                max_selections: 1,
            }),
            ..WhatsAppPost::default()
        };
        assert!(sender_line_first(&poll, false));
        assert!(!sender_line_first(&WhatsAppPost::default(), false));
        assert!(relay().file_fits(RelayConfig::default().max_file_bytes));
        assert!(!relay().file_fits(RelayConfig::default().max_file_bytes + 1));
    }
}
