//! Syntax checks for the identifiers found in configuration: Matrix user ids, room ids and
//! aliases, server names, WhatsApp group ids, alias local parts and user patterns.

use std::fmt;

/// Why an identifier was refused.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("invalid Matrix user id `{id}`: {reason} (expected e.g. `@alice:example.org`)")]
    User { id: String, reason: &'static str },
    #[error(
        "invalid Matrix room `{id}`: {reason} (expected a room id like `!AbC123:example.org` \
         or an alias like `#famille:example.org`)"
    )]
    Room { id: String, reason: &'static str },
    #[error(
        "invalid WhatsApp group id `{id}`: {reason} (expected e.g. `120363041234567890@g.us`)"
    )]
    GroupJid { id: String, reason: &'static str },
    #[error(
        "invalid user pattern `{pattern}`: {reason} (expected `@alice:example.org`, \
         `@*:example.org` or `*`)"
    )]
    Pattern {
        pattern: String,
        reason: &'static str,
    },
    #[error(
        "invalid room alias local part `{value}`: {reason} (use only lowercase letters a-z, \
         digits and `.`, `_`, `-`, `=`)"
    )]
    AliasLocalpart { value: String, reason: &'static str },
}

/// Checks a Matrix server name: `host`, `host:port`, IPv4, or `[IPv6]` with optional port.
pub fn check_server_name(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("empty server name");
    }
    if s.len() > 255 {
        return Err("server name longer than 255 characters");
    }
    let port = if let Some(rest) = s.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err("unclosed `[` in server name");
        };
        if inside.is_empty()
            || !inside
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err("malformed IPv6 address in server name");
        }
        if after.is_empty() {
            None
        } else if let Some(port) = after.strip_prefix(':') {
            Some(port)
        } else {
            return Err("unexpected text after `]` in server name");
        }
    } else {
        let (host, port) = match s.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        };
        if host.is_empty() {
            return Err("empty host in server name");
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err("server name may only contain letters, digits, `-` and `.`");
        }
        port
    };
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.len() <= 5
            && port.chars().all(|c| c.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
        if !valid {
            return Err("invalid port in server name");
        }
    }
    Ok(())
}

/// Printable ASCII other than `:`, the historical Matrix local part alphabet.
fn historical_localpart_char(c: char) -> bool {
    c.is_ascii_graphic() && c != ':'
}

/// Checks a full Matrix user id such as `@alice:example.org`.
pub fn check_user_id(id: &str) -> Result<(), IdError> {
    let err = |reason| IdError::User {
        id: id.to_owned(),
        reason,
    };
    let Some(rest) = id.strip_prefix('@') else {
        return Err(err("must start with `@`"));
    };
    let Some((local, server)) = rest.split_once(':') else {
        return Err(err("missing `:server` part"));
    };
    if local.is_empty() {
        return Err(err("empty local part"));
    }
    if !local.chars().all(historical_localpart_char) {
        return Err(err(
            "local part may not contain spaces or non-ASCII characters",
        ));
    }
    if id.len() > 255 {
        return Err(err("longer than 255 bytes"));
    }
    check_server_name(server).map_err(err)
}

/// Checks a room id: `!opaque:server`, or `!opaque` (room version 12 ids have no server).
pub fn check_room_id(id: &str) -> Result<(), IdError> {
    let err = |reason| IdError::Room {
        id: id.to_owned(),
        reason,
    };
    let Some(rest) = id.strip_prefix('!') else {
        return Err(err("a room id must start with `!`"));
    };
    let (opaque, server) = match rest.split_once(':') {
        Some((opaque, server)) => (opaque, Some(server)),
        None => (rest, None),
    };
    if opaque.is_empty() {
        return Err(err("empty room id"));
    }
    if !opaque.chars().all(historical_localpart_char) {
        return Err(err(
            "room id may not contain spaces or non-ASCII characters",
        ));
    }
    if let Some(server) = server {
        check_server_name(server).map_err(err)?;
    }
    Ok(())
}

/// Checks a room alias: `#localpart:server`.
pub fn check_room_alias(alias: &str) -> Result<(), IdError> {
    let err = |reason| IdError::Room {
        id: alias.to_owned(),
        reason,
    };
    let Some(rest) = alias.strip_prefix('#') else {
        return Err(err("a room alias must start with `#`"));
    };
    let Some((local, server)) = rest.split_once(':') else {
        return Err(err("missing `:server` part in alias"));
    };
    if local.is_empty() {
        return Err(err("empty alias"));
    }
    if local.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err("alias may not contain spaces"));
    }
    if alias.len() > 255 {
        return Err(err("longer than 255 bytes"));
    }
    check_server_name(server).map_err(err)
}

/// Checks a WhatsApp group id: `120363041234567890@g.us` or old style
/// `33612345678-1591234567@g.us`.
pub fn check_group_jid(jid: &str) -> Result<(), IdError> {
    let err = |reason| IdError::GroupJid {
        id: jid.to_owned(),
        reason,
    };
    let Some((user, server)) = jid.split_once('@') else {
        return Err(err("missing `@g.us` suffix"));
    };
    if server == "s.whatsapp.net" || server == "c.us" || server == "lid" {
        return Err(err(
            "this is a person's id, not a group's: group ids end in `@g.us`",
        ));
    }
    if server != "g.us" {
        return Err(err("group ids end in `@g.us`"));
    }
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    let valid = match user.split_once('-') {
        Some((creator, time)) => digits(creator) && digits(time),
        None => digits(user),
    };
    if !valid {
        return Err(err(
            "the part before `@g.us` must be digits (optionally `digits-digits`)",
        ));
    }
    Ok(())
}

/// Checks a room alias local part (or its prefix, which may be empty when `allow_empty`).
pub fn check_alias_localpart(value: &str, allow_empty: bool) -> Result<(), IdError> {
    let err = |reason| IdError::AliasLocalpart {
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() && !allow_empty {
        return Err(err("empty"));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-=".contains(c))
    {
        return Err(err("contains a character that is not allowed"));
    }
    Ok(())
}

/// A room named in a group file.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RoomRef {
    /// `!opaque:server` or `!opaque` (room version 12).
    Id(String),
    /// `#alias:server`.
    Alias(String),
}

impl RoomRef {
    /// Parses `!…` as a room id and `#…` as an alias.
    pub fn parse(s: &str) -> Result<RoomRef, IdError> {
        if s.starts_with('!') {
            check_room_id(s)?;
            Ok(RoomRef::Id(s.to_owned()))
        } else if s.starts_with('#') {
            check_room_alias(s)?;
            Ok(RoomRef::Alias(s.to_owned()))
        } else {
            Err(IdError::Room {
                id: s.to_owned(),
                reason: "must start with `!` (room id) or `#` (alias)",
            })
        }
    }

    /// The id or alias as written.
    pub fn as_str(&self) -> &str {
        match self {
            RoomRef::Id(s) | RoomRef::Alias(s) => s,
        }
    }
}

impl fmt::Display for RoomRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who may speak: `@alice:example.org` (that user), `@*:example.org` (anyone on that
/// server) or `*` (anybody).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UserPattern(Pattern);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Pattern {
    Any,
    Server(String),
    User(String),
}

impl UserPattern {
    /// Parses a pattern; see the type documentation for the accepted forms.
    pub fn parse(s: &str) -> Result<UserPattern, IdError> {
        let err = |reason| IdError::Pattern {
            pattern: s.to_owned(),
            reason,
        };
        if s == "*" {
            return Ok(UserPattern(Pattern::Any));
        }
        if let Some(server) = s.strip_prefix("@*:") {
            check_server_name(server).map_err(err)?;
            return Ok(UserPattern(Pattern::Server(server.to_owned())));
        }
        if !s.starts_with('@') {
            return Err(err("must start with `@` or be `*`"));
        }
        if s.contains('*') {
            return Err(err(
                "`*` may only stand for a whole local part (`@*:server`)",
            ));
        }
        check_user_id(s).map_err(|e| match e {
            IdError::User { reason, .. } => err(reason),
            other => other,
        })?;
        Ok(UserPattern(Pattern::User(s.to_owned())))
    }

    /// Whether `user_id` (a full Matrix id) matches. Server names compare case-insensitively.
    pub fn matches(&self, user_id: &str) -> bool {
        match &self.0 {
            Pattern::Any => true,
            Pattern::User(id) => id == user_id,
            Pattern::Server(server) => user_id
                .strip_prefix('@')
                .and_then(|rest| rest.split_once(':'))
                .is_some_and(|(local, s)| !local.is_empty() && s.eq_ignore_ascii_case(server)),
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for UserPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Pattern::Any => f.write_str("*"),
            Pattern::Server(server) => write!(f, "@*:{server}"),
            Pattern::User(id) => f.write_str(id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        for ok in [
            "example.org",
            "matrix.example.org:8448",
            "127.0.0.1",
            "[::1]:8008",
            "localhost",
        ] {
            assert_eq!(check_server_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "exa mple.org",
            "example.org:",
            "example.org:99999",
            "[::1",
            "[]",
            "[::1]x",
            ":80",
            "é.org",
        ] {
            assert!(check_server_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn user_ids() {
        assert_eq!(check_user_id("@bot:example.org"), Ok(()));
        assert_eq!(check_user_id("@Old_Style+x:example.org:8448"), Ok(()));
        let e = check_user_id("bot:example.org").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid Matrix user id `bot:example.org`: must start with `@` (expected e.g. `@alice:example.org`)"
        );
        for bad in [
            "@bot",
            "@:example.org",
            "@b ot:example.org",
            "@bot:",
            "@bot:exa mple",
        ] {
            assert!(check_user_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rooms() {
        assert_eq!(
            RoomRef::parse("!abc:example.org"),
            Ok(RoomRef::Id("!abc:example.org".into()))
        );
        let v12 = "!31hneApxJ_1o-63DmFrpeqnkFfWppnzWso1JvH3ogLM";
        assert_eq!(RoomRef::parse(v12), Ok(RoomRef::Id(v12.into())));
        assert_eq!(
            RoomRef::parse("#famille:example.org"),
            Ok(RoomRef::Alias("#famille:example.org".into()))
        );
        for bad in [
            "famille",
            "#famille",
            "#:example.org",
            "!",
            "!a b",
            "#a b:example.org",
            "!abc:",
        ] {
            assert!(RoomRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn group_jids() {
        assert_eq!(check_group_jid("120363041234567890@g.us"), Ok(()));
        assert_eq!(check_group_jid("33612345678-1591234567@g.us"), Ok(()));
        for bad in [
            "120363041234567890",
            "33612345678@s.whatsapp.net",
            "12a@g.us",
            "-1@g.us",
            "1-@g.us",
            "@g.us",
            "1@g.usx",
        ] {
            assert!(check_group_jid(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn alias_localparts() {
        assert_eq!(check_alias_localpart("wa_famille-2.0=x", false), Ok(()));
        assert_eq!(check_alias_localpart("", true), Ok(()));
        assert!(check_alias_localpart("", false).is_err());
        assert!(check_alias_localpart("Famille", false).is_err());
        assert!(check_alias_localpart("fa mille", false).is_err());
    }

    #[test]
    fn user_patterns() {
        let any = UserPattern::parse("*").unwrap();
        let server = UserPattern::parse("@*:example.org").unwrap();
        let alice = UserPattern::parse("@alice:example.org").unwrap();
        assert!(any.matches("@x:y.org"));
        assert!(server.matches("@bob:example.org"));
        assert!(server.matches("@bob:EXAMPLE.org"));
        assert!(!server.matches("@bob:example.org.evil"));
        assert!(!server.matches("@:example.org"));
        assert!(!server.matches("bob:example.org"));
        assert!(alice.matches("@alice:example.org"));
        assert!(!alice.matches("@alice:example.net"));
        assert_eq!(server.to_string(), "@*:example.org");
        assert_eq!(alice.as_str(), "@alice:example.org");
        for bad in ["alice", "@al*:example.org", "@*:", "@alice", "**"] {
            assert!(UserPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
