//! Reads and validates `config.toml` and `groups.d/*.toml`, reporting every problem as
//! `path:line: message`.

mod groups;
mod ids;
mod source;
pub mod template;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use template::Template;

pub use groups::{load_groups, load_groups_with_problems, GroupFile};
pub use ids::{
    check_alias_localpart, check_group_jid, check_room_alias, check_room_id, check_server_name,
    check_user_id, IdError, RoomRef, UserPattern,
};
use source::Source;

/// Placeholders of the templates for messages going to Matrix.
pub const TO_MATRIX_PLACEHOLDERS: &[&str] = &["name", "phone", "text"];
/// Placeholders of the templates for messages going to WhatsApp.
pub const TO_WHATSAPP_PLACEHOLDERS: &[&str] = &["name", "user", "text"];
/// Placeholders every template must contain.
pub const REQUIRED_PLACEHOLDERS: &[&str] = &["text"];

/// Default template: WhatsApp -> Matrix, plain text body.
pub const DEFAULT_TO_MATRIX: &str = "{name}: {text}";
/// Default template: WhatsApp -> Matrix, HTML body.
pub const DEFAULT_TO_MATRIX_HTML: &str = "<strong>{name}</strong>: {text}";
/// Default template: Matrix -> WhatsApp.
pub const DEFAULT_TO_WHATSAPP: &str = "*{name}*: {text}";
/// Default template: Matrix emote (`/me`) -> WhatsApp.
pub const DEFAULT_TO_WHATSAPP_EMOTE: &str = "* _{name}_ {text}";

const DEFAULT_STATE_DIR: &str = "/var/lib/passerelle";
const DEFAULT_GROUPS_DIR: &str = "groups.d";
const DEFAULT_DEVICE_NAME: &str = "passerelle";
const DEFAULT_LOG_LEVEL: &str = "info";

/// One problem in one file, with its 1-based line when it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.path.display(), line, self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

/// Every problem found; displayed one per line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", display_lines(.0))]
pub struct Problems(pub Vec<Problem>);

fn display_lines(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl From<Problem> for Problems {
    fn from(problem: Problem) -> Self {
        Problems(vec![problem])
    }
}

/// The whole `config.toml`.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub matrix: MatrixConfig,
    pub paths: PathsConfig,
    pub whatsapp: WhatsAppConfig,
    pub templates: Templates,
    pub logging: LoggingConfig,
    pub relay: RelayConfig,
    pub metrics: MetricsConfig,
}

/// `[metrics]`: a Prometheus text endpoint (`GET /metrics`), off unless `listen` is set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    pub listen: Option<std::net::SocketAddr>,
}

/// How Matrix reactions reach WhatsApp.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReactionsToWhatsApp {
    /// As the shared number's own reaction (WhatsApp keeps one per number and
    /// message: the latest Matrix reaction wins).
    #[default]
    Reaction,
    /// One reply of the number per reacted message, edited as reactions come and go
    /// (`👍 Alice, Bob · ❤️ Carol`): who reacted stays visible.
    Digest,
    /// Not relayed.
    Ignore,
}

/// How WhatsApp reactions reach Matrix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReactionsToMatrix {
    /// A short line `Name reacted 👍` replying to the message (edited when the emoji
    /// changes, removed with the reaction): who reacted stays visible.
    #[default]
    Line,
    /// The bot's own reaction on the mirrored message, one per emoji (Matrix shows
    /// the count, not who): compact, but who reacted is only seen in WhatsApp.
    Reaction,
    /// Not relayed.
    Ignore,
}

/// `[relay]`: what crosses besides words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    pub reactions_to_whatsapp: ReactionsToWhatsApp,
    pub reactions_to_matrix: ReactionsToMatrix,
    /// Largest file relayed either way, in bytes; larger ones are replaced by a notice.
    pub max_file_bytes: u64,
    /// Whether WhatsApp member changes (joined, left, added, removed, admins) are
    /// told in the room.
    pub member_notices: bool,
    /// How many days the bridge remembers which event mirrors which message (and
    /// names, poll votes, kept polls); 0: forever.
    pub remember_days: u32,
    /// How long a Matrix message waits for WhatsApp before its sender is told that
    /// (and why) it waits.
    pub tell_waiting_after: std::time::Duration,
}

/// Default `[relay] tell_waiting_after_secs`: a few minutes, past any pacing of
/// a normal conversation.
pub const DEFAULT_TELL_WAITING_AFTER_SECS: u64 = 300;

/// Default `[relay] remember_days`: a year, enough for any reply or late vote.
pub const DEFAULT_REMEMBER_DAYS: u32 = 365;

/// Default `[relay] max_file_mb`: Synapse's default upload limit.
pub const DEFAULT_MAX_FILE_MB: u32 = 50;

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            reactions_to_whatsapp: ReactionsToWhatsApp::default(),
            reactions_to_matrix: ReactionsToMatrix::default(),
            max_file_bytes: u64::from(DEFAULT_MAX_FILE_MB) * 1_000_000,
            member_notices: true,
            remember_days: DEFAULT_REMEMBER_DAYS,
            tell_waiting_after: std::time::Duration::from_secs(DEFAULT_TELL_WAITING_AFTER_SECS),
        }
    }
}

/// `[matrix]`: the bot account.
#[derive(Clone, PartialEq)]
pub struct MatrixConfig {
    /// Client-server API base URL (http or https).
    pub homeserver: url::Url,
    /// Full user id of the bot, e.g. `@passerelle:example.org`.
    pub user: String,
    /// At most one of `password` / `password_file` is set; neither is fine once a session exists.
    pub password: Option<String>,
    /// Resolved against the directory of `config.toml` when relative.
    pub password_file: Option<PathBuf>,
    /// Matrix users allowed to administer the bridge.
    pub admins: Vec<String>,
    pub device_name: String,
    /// Room alias local part = `alias_prefix` + group file stem.
    pub alias_prefix: String,
    /// Whether rooms the bridge creates are end-to-end encrypted (default: yes).
    pub encrypt_new_rooms: bool,
    /// How long an event the bot cannot decrypt waits for its key before its
    /// sender is told it did not cross.
    pub wait_for_keys: std::time::Duration,
}

/// Default `[matrix] wait_for_keys_secs`: keys late by federation or a client
/// that was offline usually come within minutes.
pub const DEFAULT_WAIT_FOR_KEYS_SECS: u64 = 600;

impl fmt::Debug for MatrixConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MatrixConfig")
            .field("homeserver", &self.homeserver.as_str())
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .field("admins", &self.admins)
            .field("device_name", &self.device_name)
            .field("alias_prefix", &self.alias_prefix)
            .field("encrypt_new_rooms", &self.encrypt_new_rooms)
            .field("wait_for_keys", &self.wait_for_keys)
            .finish()
    }
}

impl MatrixConfig {
    /// The server part of the bot's user id (`example.org` for `@bot:example.org`).
    pub fn server_name(&self) -> &str {
        self.user.split_once(':').map_or("", |(_, server)| server)
    }

    /// Whether a password (or a password file) is configured to log in with.
    pub fn has_password(&self) -> bool {
        self.password.is_some() || self.password_file.is_some()
    }

    /// The password, or the contents of `password_file` without its trailing newline.
    pub fn read_password(&self) -> std::io::Result<Option<String>> {
        if let Some(password) = &self.password {
            return Ok(Some(password.clone()));
        }
        match &self.password_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)?;
                Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()))
            }
            None => Ok(None),
        }
    }

    /// Whether `user_id` is one of the configured admins.
    pub fn is_admin(&self, user_id: &str) -> bool {
        self.admins.iter().any(|a| a == user_id)
    }
}

/// `[paths]`, resolved against the directory of `config.toml`.
#[derive(Clone, Debug, PartialEq)]
pub struct PathsConfig {
    pub state_dir: PathBuf,
    pub groups_dir: PathBuf,
}

/// `[whatsapp]`.
#[derive(Clone, Debug, PartialEq)]
pub struct WhatsAppConfig {
    /// WebSocket URL override (`ws://` or `wss://`), for tests against a simulator.
    /// `None` means the real WhatsApp servers.
    pub url: Option<String>,
    /// Pacing of what the shared number sends, all groups together: sustained rate.
    pub messages_per_minute: u32,
    /// How many messages may go out at once before the rate applies.
    pub burst: u32,
}

/// Default sustained rate of messages sent by the shared number, all groups together.
pub const DEFAULT_MESSAGES_PER_MINUTE: u32 = 40;
/// Default burst of messages sent at once by the shared number.
pub const DEFAULT_BURST: u32 = 10;

impl Default for WhatsAppConfig {
    fn default() -> Self {
        WhatsAppConfig {
            url: None,
            messages_per_minute: DEFAULT_MESSAGES_PER_MINUTE,
            burst: DEFAULT_BURST,
        }
    }
}

/// `[templates]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Templates {
    /// WhatsApp -> Matrix plain body; `{name}` `{phone}` `{text}`.
    pub to_matrix: Template,
    /// WhatsApp -> Matrix HTML body; same placeholders, values are HTML-escaped by the caller.
    pub to_matrix_html: Template,
    /// Matrix -> WhatsApp; `{name}` `{user}` (full Matrix id) `{text}`.
    pub to_whatsapp: Template,
    /// Matrix emote -> WhatsApp; same placeholders.
    pub to_whatsapp_emote: Template,
}

impl Default for Templates {
    fn default() -> Self {
        // The built-in texts are valid (a unit test checks it); never panic anyway.
        let make = |source: &str, allowed: &[&str]| {
            Template::parse(source, allowed, REQUIRED_PLACEHOLDERS)
                .unwrap_or_else(|_| Template::literal(source))
        };
        Templates {
            to_matrix: make(DEFAULT_TO_MATRIX, TO_MATRIX_PLACEHOLDERS),
            to_matrix_html: make(DEFAULT_TO_MATRIX_HTML, TO_MATRIX_PLACEHOLDERS),
            to_whatsapp: make(DEFAULT_TO_WHATSAPP, TO_WHATSAPP_PLACEHOLDERS),
            to_whatsapp_emote: make(DEFAULT_TO_WHATSAPP_EMOTE, TO_WHATSAPP_PLACEHOLDERS),
        }
    }
}

/// `[logging]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LoggingConfig {
    /// `info`, or EnvFilter directives such as `info,passerelle=debug`.
    pub level: String,
}

// ---- raw TOML shapes -------------------------------------------------------------------

type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    matrix: Option<S<RawMatrix>>,
    paths: Option<RawPaths>,
    whatsapp: Option<RawWhatsApp>,
    templates: Option<RawTemplates>,
    logging: Option<RawLogging>,
    relay: Option<RawRelay>,
    metrics: Option<RawMetrics>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    reactions_to_whatsapp: Option<S<String>>,
    reactions_to_matrix: Option<S<String>>,
    max_file_mb: Option<S<i64>>,
    member_notices: Option<S<bool>>,
    remember_days: Option<S<i64>>,
    tell_waiting_after_secs: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatrix {
    homeserver: Option<S<String>>,
    user: Option<S<String>>,
    password: Option<S<String>>,
    password_file: Option<S<String>>,
    admins: Option<Vec<S<String>>>,
    device_name: Option<S<String>>,
    alias_prefix: Option<S<String>>,
    encrypt_new_rooms: Option<S<bool>>,
    wait_for_keys_secs: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPaths {
    state_dir: Option<S<String>>,
    groups_dir: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWhatsApp {
    /// `url` was its name before the `simulator` build existed.
    #[serde(alias = "url")]
    server_url: Option<S<String>>,
    messages_per_minute: Option<S<i64>>,
    burst: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplates {
    to_matrix: Option<S<String>>,
    to_matrix_html: Option<S<String>>,
    to_whatsapp: Option<S<String>>,
    to_whatsapp_emote: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogging {
    level: Option<S<String>>,
}

// ---- validation ------------------------------------------------------------------------

/// What could be read from a config file, even when it has problems.
struct Partial {
    config: Option<Config>,
    /// Known as soon as `[paths]` is readable, so groups can be checked too.
    groups_dir: Option<PathBuf>,
    problems: Vec<Problem>,
}

impl Config {
    /// Reads and validates `config.toml` only.
    pub fn load(path: &Path) -> Result<Config, Problems> {
        let partial = load_partial(path);
        match partial.config {
            Some(config) if partial.problems.is_empty() => Ok(config),
            _ => Err(Problems(partial.problems)),
        }
    }

    /// Validates config text; `path` names it in problems and anchors relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Config, Problems> {
        let partial = parse_partial(path, text);
        match partial.config {
            Some(config) if partial.problems.is_empty() => Ok(config),
            _ => Err(Problems(partial.problems)),
        }
    }
}

fn load_partial(path: &Path) -> Partial {
    match source::read_text(path) {
        Ok(text) => parse_partial(path, &text),
        Err(problem) => Partial {
            config: None,
            groups_dir: None,
            problems: vec![problem],
        },
    }
}

fn parse_partial(path: &Path, text: &str) -> Partial {
    let mut src = Source::new(path, text);
    let Some(raw) = src.deserialize::<RawConfig>() else {
        return Partial {
            config: None,
            groups_dir: None,
            problems: src.problems,
        };
    };
    let base = path.parent().unwrap_or(Path::new(""));

    let paths = check_paths(&mut src, raw.paths, base);
    let groups_dir = paths.as_ref().map(|p| p.groups_dir.clone());
    let matrix = check_matrix(&mut src, raw.matrix, base);
    let whatsapp = check_whatsapp(&mut src, raw.whatsapp);
    let templates = check_templates(&mut src, raw.templates);
    let logging = check_logging(&mut src, raw.logging);
    let relay = check_relay(&mut src, raw.relay);
    let metrics = check_metrics(&mut src, raw.metrics);

    let config = match (matrix, paths, whatsapp, templates, logging, relay, metrics) {
        (
            Some(matrix),
            Some(paths),
            Some(whatsapp),
            Some(templates),
            Some(logging),
            Some(relay),
            Some(metrics),
        ) => Some(Config {
            matrix,
            paths,
            whatsapp,
            templates,
            logging,
            relay,
            metrics,
        }),
        _ => None,
    };
    Partial {
        config,
        groups_dir,
        problems: src.problems,
    }
}

/// A non-empty path from the file, resolved against `base` when relative.
fn check_path(src: &mut Source, value: &S<String>, key: &str, base: &Path) -> Option<PathBuf> {
    if value.get_ref().trim().is_empty() {
        src.at(value, format!("`{key}` is empty"));
        return None;
    }
    Some(base.join(value.get_ref()))
}

fn check_paths(src: &mut Source, raw: Option<RawPaths>, base: &Path) -> Option<PathsConfig> {
    let raw = raw.unwrap_or(RawPaths {
        state_dir: None,
        groups_dir: None,
    });
    let state_dir = match &raw.state_dir {
        Some(v) => check_path(src, v, "state_dir", base),
        None => Some(base.join(DEFAULT_STATE_DIR)),
    };
    let groups_dir = match &raw.groups_dir {
        Some(v) => check_path(src, v, "groups_dir", base),
        None => Some(base.join(DEFAULT_GROUPS_DIR)),
    };
    Some(PathsConfig {
        state_dir: state_dir?,
        groups_dir: groups_dir?,
    })
}

fn check_matrix(src: &mut Source, raw: Option<S<RawMatrix>>, base: &Path) -> Option<MatrixConfig> {
    let Some(raw) = raw else {
        src.whole("missing section `[matrix]` (with at least `homeserver` and `user`)");
        return None;
    };
    let header_line = src.line_at(raw.span().start);
    let raw = raw.into_inner();
    let mut ok = true;
    let missing = |src: &mut Source, key: &str, example: &str| {
        src.problems.push(Problem {
            path: src.path.to_path_buf(),
            line: Some(header_line),
            message: format!("missing key `{key}` in `[matrix]` (e.g. `{key} = \"{example}\"`)"),
        });
    };

    let homeserver = match &raw.homeserver {
        None => {
            missing(src, "homeserver", "https://matrix.example.org");
            None
        }
        Some(v) => match url::Url::parse(v.get_ref()) {
            Err(err) => {
                src.at(
                    v,
                    format!("invalid `homeserver` URL `{}`: {err}", v.get_ref()),
                );
                None
            }
            Ok(url) if url.scheme() != "http" && url.scheme() != "https" => {
                src.at(
                    v,
                    format!(
                        "`homeserver` must be an http:// or https:// URL, not `{}`",
                        v.get_ref()
                    ),
                );
                None
            }
            Ok(url) if url.host().is_none() => {
                src.at(v, format!("`homeserver` URL `{}` has no host", v.get_ref()));
                None
            }
            Ok(url) => Some(url),
        },
    };

    let user = match &raw.user {
        None => {
            missing(src, "user", "@passerelle:example.org");
            None
        }
        Some(v) => match check_user_id(v.get_ref()) {
            Ok(()) => Some(v.get_ref().clone()),
            Err(err) => {
                src.at(v, format!("`user`: {err}"));
                None
            }
        },
    };

    if let (Some(_), Some(file)) = (&raw.password, &raw.password_file) {
        src.at(file, "set either `password` or `password_file`, not both");
        ok = false;
    }
    if let Some(v) = &raw.password {
        if v.get_ref().is_empty() {
            src.at(
                v,
                "`password` is empty (remove it if a session already exists)",
            );
            ok = false;
        }
    }
    let password_file = match &raw.password_file {
        Some(v) => {
            let path = check_path(src, v, "password_file", base);
            ok &= path.is_some();
            path
        }
        None => None,
    };

    let admins = groups::user_ids(src, "admins", raw.admins.as_deref(), &mut ok);

    let device_name = match &raw.device_name {
        Some(v) if v.get_ref().trim().is_empty() => {
            src.at(v, "`device_name` is empty");
            ok = false;
            String::new()
        }
        Some(v) => v.get_ref().clone(),
        None => DEFAULT_DEVICE_NAME.to_owned(),
    };

    let alias_prefix = match &raw.alias_prefix {
        Some(v) => match check_alias_localpart(v.get_ref(), true) {
            Ok(()) => v.get_ref().clone(),
            Err(err) => {
                src.at(v, format!("`alias_prefix`: {err}"));
                ok = false;
                String::new()
            }
        },
        None => String::new(),
    };

    let wait_for_keys_secs = match &raw.wait_for_keys_secs {
        None => DEFAULT_WAIT_FOR_KEYS_SECS,
        Some(v) => match u64::try_from(*v.get_ref()) {
            Ok(secs) if (1..=86_400).contains(&secs) => secs,
            _ => {
                src.at(
                    v,
                    format!(
                        "`wait_for_keys_secs` must be a whole number of seconds from 1 to 86400 (a day), not {}",
                        v.get_ref()
                    ),
                );
                ok = false;
                0
            }
        },
    };

    if !ok {
        return None;
    }
    Some(MatrixConfig {
        homeserver: homeserver?,
        user: user?,
        password: raw.password.map(Spanned::into_inner),
        password_file,
        admins,
        device_name,
        alias_prefix,
        encrypt_new_rooms: raw.encrypt_new_rooms.is_none_or(|v| *v.get_ref()),
        wait_for_keys: std::time::Duration::from_secs(wait_for_keys_secs),
    })
}

fn check_whatsapp(src: &mut Source, raw: Option<RawWhatsApp>) -> Option<WhatsAppConfig> {
    let Some(raw) = raw else {
        return Some(WhatsAppConfig::default());
    };
    let messages_per_minute = check_rate(
        src,
        "messages_per_minute",
        raw.messages_per_minute.as_ref(),
        DEFAULT_MESSAGES_PER_MINUTE,
    );
    let burst = check_rate(src, "burst", raw.burst.as_ref(), DEFAULT_BURST);
    let url = match raw.server_url {
        None => Some(None),
        Some(v) if !crate::build_kind::SIMULATOR_BUILD => {
            src.at(&v, crate::build_kind::URL_IN_NORMAL_BUILD.to_string());
            None
        }
        Some(v) => match url::Url::parse(v.get_ref()) {
            Err(err) => {
                src.at(&v, format!("invalid `server_url` `{}`: {err}", v.get_ref()));
                None
            }
            Ok(url) if url.scheme() != "ws" && url.scheme() != "wss" => {
                src.at(
                    &v,
                    format!(
                        "`server_url` must be a ws:// or wss:// URL, not `{}`",
                        v.get_ref()
                    ),
                );
                None
            }
            Ok(url) if url.host().is_none() => {
                src.at(&v, format!("`server_url` `{}` has no host", v.get_ref()));
                None
            }
            Ok(_) => Some(Some(v.into_inner())),
        },
    };
    Some(WhatsAppConfig {
        url: url?,
        messages_per_minute: messages_per_minute?,
        burst: burst?,
    })
}

/// A positive message count (rate or burst), at most 10 000.
pub(crate) fn check_rate(
    src: &mut Source,
    key: &str,
    value: Option<&S<i64>>,
    default: u32,
) -> Option<u32> {
    let Some(value) = value else {
        return Some(default);
    };
    match u32::try_from(*value.get_ref()) {
        Ok(n) if (1..=10_000).contains(&n) => Some(n),
        _ => {
            src.at(
                value,
                format!(
                    "`{key}` must be a whole number from 1 to 10000, not {}",
                    value.get_ref()
                ),
            );
            None
        }
    }
}

fn check_templates(src: &mut Source, raw: Option<RawTemplates>) -> Option<Templates> {
    let raw = raw.unwrap_or(RawTemplates {
        to_matrix: None,
        to_matrix_html: None,
        to_whatsapp: None,
        to_whatsapp_emote: None,
    });
    let mut one = |value: Option<S<String>>, key: &str, default: &str, allowed: &[&str]| {
        let Some(value) = value else {
            return Template::parse(default, allowed, REQUIRED_PLACEHOLDERS).ok();
        };
        match Template::parse(value.get_ref(), allowed, REQUIRED_PLACEHOLDERS) {
            Ok(template) => Some(template),
            Err(err) => {
                src.at(&value, format!("template `{key}`: {err}"));
                None
            }
        }
    };
    let to_matrix = one(
        raw.to_matrix,
        "to_matrix",
        DEFAULT_TO_MATRIX,
        TO_MATRIX_PLACEHOLDERS,
    );
    let to_matrix_html = one(
        raw.to_matrix_html,
        "to_matrix_html",
        DEFAULT_TO_MATRIX_HTML,
        TO_MATRIX_PLACEHOLDERS,
    );
    let to_whatsapp = one(
        raw.to_whatsapp,
        "to_whatsapp",
        DEFAULT_TO_WHATSAPP,
        TO_WHATSAPP_PLACEHOLDERS,
    );
    let to_whatsapp_emote = one(
        raw.to_whatsapp_emote,
        "to_whatsapp_emote",
        DEFAULT_TO_WHATSAPP_EMOTE,
        TO_WHATSAPP_PLACEHOLDERS,
    );
    Some(Templates {
        to_matrix: to_matrix?,
        to_matrix_html: to_matrix_html?,
        to_whatsapp: to_whatsapp?,
        to_whatsapp_emote: to_whatsapp_emote?,
    })
}

const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

fn is_level(s: &str) -> bool {
    LEVELS.iter().any(|l| l.eq_ignore_ascii_case(s))
        || matches!(s, "0" | "1" | "2" | "3" | "4" | "5")
}

/// Accepts a level or comma-separated EnvFilter directives (`info,passerelle=debug`).
pub fn check_log_level(level: &str) -> Result<(), String> {
    let directives: Vec<&str> = level.split(',').map(str::trim).collect();
    if directives.iter().all(|d| d.is_empty()) {
        return Err("empty log level".to_owned());
    }
    for directive in directives.into_iter().filter(|d| !d.is_empty()) {
        let valid = match directive.rsplit_once('=') {
            Some((target, lvl)) => !target.trim().is_empty() && is_level(lvl.trim()),
            None => is_level(directive),
        };
        if !valid {
            return Err(format!(
                "invalid log level `{directive}`: expected one of {} or directives like \
                 `info,passerelle=debug`",
                LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

fn check_logging(src: &mut Source, raw: Option<RawLogging>) -> Option<LoggingConfig> {
    let Some(v) = raw.and_then(|r| r.level) else {
        return Some(LoggingConfig {
            level: DEFAULT_LOG_LEVEL.to_owned(),
        });
    };
    match check_log_level(v.get_ref()) {
        Ok(()) => Some(LoggingConfig {
            level: v.into_inner(),
        }),
        Err(message) => {
            src.at(&v, message);
            None
        }
    }
}

fn check_metrics(src: &mut Source, raw: Option<RawMetrics>) -> Option<MetricsConfig> {
    let Some(listen) = raw.and_then(|raw| raw.listen) else {
        return Some(MetricsConfig::default());
    };
    match listen.get_ref().parse::<std::net::SocketAddr>() {
        Ok(addr) => Some(MetricsConfig { listen: Some(addr) }),
        Err(_) => {
            src.at(
                &listen,
                format!(
                    "`listen` must be an address and port such as \"127.0.0.1:9464\", not \"{}\"",
                    listen.get_ref()
                ),
            );
            None
        }
    }
}

fn check_relay(src: &mut Source, raw: Option<RawRelay>) -> Option<RelayConfig> {
    let Some(raw) = raw else {
        return Some(RelayConfig::default());
    };
    let mut ok = true;
    let mut choose = |key: &str, value: Option<S<String>>, choices: &[&str]| -> usize {
        let Some(value) = value else { return 0 };
        match choices.iter().position(|choice| choice == value.get_ref()) {
            Some(index) => index,
            None => {
                let expected: Vec<String> = choices.iter().map(|c| format!("\"{c}\"")).collect();
                src.at(
                    &value,
                    format!(
                        "`{key}` must be one of {}, not \"{}\"",
                        expected.join(", "),
                        value.get_ref()
                    ),
                );
                ok = false;
                0
            }
        }
    };
    let to_whatsapp = match choose(
        "reactions_to_whatsapp",
        raw.reactions_to_whatsapp,
        &["reaction", "digest", "ignore"],
    ) {
        0 => ReactionsToWhatsApp::Reaction,
        1 => ReactionsToWhatsApp::Digest,
        _ => ReactionsToWhatsApp::Ignore,
    };
    let to_matrix = match choose(
        "reactions_to_matrix",
        raw.reactions_to_matrix,
        &["line", "reaction", "ignore"],
    ) {
        0 => ReactionsToMatrix::Line,
        1 => ReactionsToMatrix::Reaction,
        _ => ReactionsToMatrix::Ignore,
    };
    let max_file_mb = match raw.max_file_mb {
        None => Some(DEFAULT_MAX_FILE_MB),
        Some(value) => match u32::try_from(*value.get_ref()) {
            Ok(mb) if (1..=2_000).contains(&mb) => Some(mb),
            _ => {
                src.at(
                    &value,
                    format!(
                        "`max_file_mb` must be a whole number of megabytes from 1 to 2000, not {}",
                        value.get_ref()
                    ),
                );
                None
            }
        },
    };
    let remember_days = match raw.remember_days {
        None => Some(DEFAULT_REMEMBER_DAYS),
        Some(value) => match u32::try_from(*value.get_ref()) {
            Ok(days) if days <= 36_500 => Some(days),
            _ => {
                src.at(
                    &value,
                    format!(
                        "`remember_days` must be a whole number of days from 0 (forever) to 36500, not {}",
                        value.get_ref()
                    ),
                );
                None
            }
        },
    };
    let tell_waiting_after_secs = match raw.tell_waiting_after_secs {
        None => Some(DEFAULT_TELL_WAITING_AFTER_SECS),
        Some(value) => match u64::try_from(*value.get_ref()) {
            Ok(secs) if (1..=86_400).contains(&secs) => Some(secs),
            _ => {
                src.at(
                    &value,
                    format!(
                        "`tell_waiting_after_secs` must be a whole number of seconds from 1 to 86400 (a day), not {}",
                        value.get_ref()
                    ),
                );
                None
            }
        },
    };
    ok.then_some(RelayConfig {
        reactions_to_whatsapp: to_whatsapp,
        reactions_to_matrix: to_matrix,
        max_file_bytes: u64::from(max_file_mb?) * 1_000_000,
        member_notices: raw.member_notices.is_none_or(|v| *v.get_ref()),
        remember_days: remember_days?,
        tell_waiting_after: std::time::Duration::from_secs(tell_waiting_after_secs?),
    })
}

/// Reads `config.toml`, then every group file in its `groups_dir`. Collects all problems
/// (config problems plus group problems) rather than stopping at the first file.
pub fn load_all(config_path: &Path) -> Result<(Config, Vec<GroupFile>), Problems> {
    let partial = load_partial(config_path);
    let mut problems = partial.problems;
    let groups = match &partial.groups_dir {
        Some(dir) => match load_groups(dir) {
            Ok(groups) => Some(groups),
            Err(more) => {
                problems.extend(more.0);
                None
            }
        },
        None => None,
    };
    match (partial.config, groups) {
        (Some(config), Some(groups)) if problems.is_empty() => Ok((config, groups)),
        _ => Err(Problems(problems)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/etc/passerelle/config.toml";
    const MINIMAL: &str = "[matrix]\nhomeserver = \"https://matrix.example.org\"\nuser = \"@passerelle:example.org\"\n";

    fn parse(text: &str) -> Result<Config, Problems> {
        Config::parse(Path::new(PATH), text)
    }

    /// The single problem of `text`, as (line, message).
    fn problem(text: &str) -> (Option<usize>, String) {
        let problems = parse(text).expect_err("should fail").0;
        assert_eq!(problems.len(), 1, "{problems:?}");
        let p = &problems[0];
        assert_eq!(p.path, Path::new(PATH));
        (p.line, p.message.clone())
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.matrix.homeserver.as_str(), "https://matrix.example.org/");
        assert_eq!(c.matrix.user, "@passerelle:example.org");
        assert_eq!(c.matrix.server_name(), "example.org");
        assert_eq!(c.matrix.password, None);
        assert_eq!(c.matrix.password_file, None);
        assert!(c.matrix.admins.is_empty());
        assert_eq!(c.matrix.device_name, "passerelle");
        assert_eq!(c.matrix.alias_prefix, "");
        assert_eq!(c.paths.state_dir, Path::new("/var/lib/passerelle"));
        assert_eq!(c.paths.groups_dir, Path::new("/etc/passerelle/groups.d"));
        assert_eq!(c.whatsapp.url, None);
        assert_eq!(c.templates, Templates::default());
        assert_eq!(c.templates.to_matrix.source(), DEFAULT_TO_MATRIX);
        assert_eq!(c.templates.to_matrix_html.source(), DEFAULT_TO_MATRIX_HTML);
        assert_eq!(c.templates.to_whatsapp.source(), DEFAULT_TO_WHATSAPP);
        assert_eq!(
            c.templates.to_whatsapp_emote.source(),
            DEFAULT_TO_WHATSAPP_EMOTE
        );
        assert_eq!(c.logging.level, "info");
    }

    #[test]
    fn shipped_example_is_valid() {
        let text = include_str!("../../config.toml.example");
        let c = parse(text).unwrap();
        assert_eq!(c.matrix.alias_prefix, "whatsapp_");
        assert_eq!(c.paths.groups_dir, Path::new("/etc/passerelle/groups.d"));
    }

    #[test]
    fn default_templates_are_real_templates() {
        for (source, allowed) in [
            (DEFAULT_TO_MATRIX, TO_MATRIX_PLACEHOLDERS),
            (DEFAULT_TO_MATRIX_HTML, TO_MATRIX_PLACEHOLDERS),
            (DEFAULT_TO_WHATSAPP, TO_WHATSAPP_PLACEHOLDERS),
            (DEFAULT_TO_WHATSAPP_EMOTE, TO_WHATSAPP_PLACEHOLDERS),
        ] {
            assert!(Template::parse(source, allowed, REQUIRED_PLACEHOLDERS).is_ok());
        }
        let t = Templates::default();
        let v = |n: &str| Some(format!("<{n}>"));
        assert_eq!(t.to_whatsapp_emote.render(v), "* _<name>_ <text>");
    }

    #[test]
    fn full_config() {
        let text = r#"
[matrix]
homeserver = "http://127.0.0.1:8008"
user = "@relais:example.org"
password_file = "secrets/password"
admins = ["@alice:example.org", "@bob:example.net"]
device_name = "passerelle-prod"
alias_prefix = "wa_"

[paths]
state_dir = "state"
groups_dir = "/srv/groups"

[whatsapp]
url = "ws://127.0.0.1:9000/ws/chat"

[templates]
to_matrix = "{name} ({phone}): {text}"
to_matrix_html = "<b>{name}</b> {{WA}}: {text}"
to_whatsapp = "{name} [{user}]: {text}"
to_whatsapp_emote = "* {name} {text}"

[logging]
level = "info,passerelle=debug,matrix_sdk=warn"
"#;
        let c = parse(text).unwrap();
        assert_eq!(
            c.matrix.password_file.as_deref(),
            Some(Path::new("/etc/passerelle/secrets/password"))
        );
        assert_eq!(c.matrix.admins, ["@alice:example.org", "@bob:example.net"]);
        assert!(c.matrix.is_admin("@bob:example.net"));
        assert_eq!(c.matrix.alias_prefix, "wa_");
        assert_eq!(c.paths.state_dir, Path::new("/etc/passerelle/state"));
        assert_eq!(c.paths.groups_dir, Path::new("/srv/groups"));
        assert_eq!(
            c.whatsapp.url.as_deref(),
            Some("ws://127.0.0.1:9000/ws/chat")
        );
        let v = |n: &str| (n != "phone").then(|| n.to_uppercase());
        assert_eq!(
            c.templates.to_matrix_html.render(v),
            "<b>NAME</b> {WA}: TEXT"
        );
        assert_eq!(c.logging.level, "info,passerelle=debug,matrix_sdk=warn");
        // The password never shows in debug output.
        let with_pw = parse(&format!("{MINIMAL}password = \"hunter2\"\n")).unwrap();
        assert!(!format!("{with_pw:?}").contains("hunter2"));
    }

    #[test]
    fn relative_config_path_keeps_relative_paths() {
        let c = Config::parse(Path::new("config.toml"), MINIMAL).unwrap();
        assert_eq!(c.paths.groups_dir, Path::new("groups.d"));
    }

    #[test]
    fn syntax_error() {
        let (line, message) = problem(&format!("{MINIMAL}device_name = \"oops\n"));
        assert_eq!(line, Some(4));
        assert!(message.contains("string"), "{message}");
    }

    #[test]
    fn unknown_key() {
        let (line, message) = problem(&format!("{MINIMAL}\n\npasword = \"x\"\n"));
        assert_eq!(line, Some(6));
        assert!(
            message.starts_with("unknown key `pasword` (did you mean `password`?); valid keys here: `homeserver`, `user`, `password`,"),
            "{message}"
        );
        let (line, message) = problem(&format!("{MINIMAL}[matrx]\n"));
        assert_eq!(line, Some(4));
        assert!(message.contains("did you mean `matrix`?"), "{message}");
    }

    #[test]
    fn wrong_type() {
        let (line, message) = problem(&format!("{MINIMAL}admins = \"@alice:example.org\"\n"));
        assert_eq!(line, Some(4));
        assert!(
            message.starts_with("`admins`: invalid type: string"),
            "{message}"
        );
        let (line, message) = problem(&format!(
            "{MINIMAL}admins = [\n  \"@a:example.org\",\n  42,\n]\n"
        ));
        assert_eq!(line, Some(6));
        assert_eq!(message, "invalid type: integer `42`, expected a string");
    }

    #[test]
    fn duplicate_key() {
        let (line, message) = problem(&format!("{MINIMAL}user = \"@other:example.org\"\n"));
        assert_eq!(line, Some(4));
        assert_eq!(message, "duplicate key `user`");
    }

    #[test]
    fn missing_matrix_section() {
        let (line, message) = problem("[logging]\nlevel = \"debug\"\n");
        assert_eq!(line, None);
        assert!(
            message.starts_with("missing section `[matrix]`"),
            "{message}"
        );
    }

    #[test]
    fn missing_required_keys() {
        let problems = parse("# bot\n\n[matrix]\ndevice_name = \"x\"\n")
            .unwrap_err()
            .0;
        assert_eq!(problems.len(), 2);
        assert_eq!(problems[0].line, Some(3));
        assert_eq!(
            problems[0].message,
            "missing key `homeserver` in `[matrix]` (e.g. `homeserver = \"https://matrix.example.org\"`)"
        );
        assert_eq!(problems[1].line, Some(3));
        assert!(problems[1].message.starts_with("missing key `user`"));
    }

    #[test]
    fn bad_homeserver() {
        let text =
            "[matrix]\nuser = \"@passerelle:example.org\"\nhomeserver = \"ftp://example.org\"\n";
        let (line, message) = problem(text);
        assert_eq!(line, Some(3));
        assert_eq!(
            message,
            "`homeserver` must be an http:// or https:// URL, not `ftp://example.org`"
        );
        let text =
            "[matrix]\nuser = \"@passerelle:example.org\"\nhomeserver = \"matrix.example.org\"\n";
        let (line, message) = problem(text);
        assert_eq!(line, Some(3));
        assert!(message.starts_with("invalid `homeserver` URL"), "{message}");
    }

    #[test]
    fn bad_user_id() {
        let text = "[matrix]\nhomeserver = \"https://example.org\"\n\nuser = \"passerelle\"\n";
        let (line, message) = problem(text);
        assert_eq!(line, Some(4));
        assert_eq!(
            message,
            "`user`: invalid Matrix user id `passerelle`: must start with `@` (expected e.g. `@alice:example.org`)"
        );
    }

    #[test]
    fn password_and_password_file() {
        let text = format!("{MINIMAL}password = \"x\"\npassword_file = \"/run/secret\"\n");
        let (line, message) = problem(&text);
        assert_eq!(line, Some(5));
        assert_eq!(
            message,
            "set either `password` or `password_file`, not both"
        );
        let (line, message) = problem(&format!("{MINIMAL}password = \"\"\n"));
        assert_eq!(line, Some(4));
        assert!(message.starts_with("`password` is empty"));
    }

    #[test]
    fn wait_for_keys() {
        assert_eq!(
            parse(MINIMAL).unwrap().matrix.wait_for_keys,
            std::time::Duration::from_secs(600)
        );
        let config = parse(&format!("{MINIMAL}wait_for_keys_secs = 30\n")).unwrap();
        assert_eq!(
            config.matrix.wait_for_keys,
            std::time::Duration::from_secs(30)
        );
        for bad in ["0", "-5", "100000"] {
            let (line, message) = problem(&format!("{MINIMAL}wait_for_keys_secs = {bad}\n"));
            assert_eq!(line, Some(4), "{bad}");
            assert_eq!(
                message,
                format!(
                    "`wait_for_keys_secs` must be a whole number of seconds from 1 to 86400 (a day), not {bad}"
                )
            );
        }
    }

    #[test]
    fn file_size_limit() {
        assert_eq!(parse(MINIMAL).unwrap().relay.max_file_bytes, 50_000_000);
        let config = parse(&format!("{MINIMAL}[relay]\nmax_file_mb = 16\n")).unwrap();
        assert_eq!(config.relay.max_file_bytes, 16_000_000);
        assert!(config.relay.member_notices);
        let config = parse(&format!("{MINIMAL}[relay]\nmember_notices = false\n")).unwrap();
        assert!(!config.relay.member_notices);
        assert_eq!(config.relay.remember_days, 365);
        assert_eq!(
            config.relay.tell_waiting_after,
            std::time::Duration::from_secs(300)
        );
        let config = parse(&format!("{MINIMAL}[relay]\ntell_waiting_after_secs = 20\n")).unwrap();
        assert_eq!(
            config.relay.tell_waiting_after,
            std::time::Duration::from_secs(20)
        );
        let (line, message) = problem(&format!("{MINIMAL}[relay]\ntell_waiting_after_secs = 0\n"));
        assert_eq!(line, Some(5));
        assert!(
            message.starts_with("`tell_waiting_after_secs` must be"),
            "{message}"
        );
        let config = parse(&format!("{MINIMAL}[relay]\nremember_days = 0\n")).unwrap();
        assert_eq!(config.relay.remember_days, 0);
        for bad in ["-1", "40000"] {
            let (line, message) = problem(&format!("{MINIMAL}[relay]\nremember_days = {bad}\n"));
            assert_eq!(line, Some(5), "{bad}");
            assert_eq!(
                message,
                format!(
                    "`remember_days` must be a whole number of days from 0 (forever) to 36500, not {bad}"
                )
            );
        }
        for bad in ["0", "-3", "5000"] {
            let (line, message) = problem(&format!("{MINIMAL}[relay]\nmax_file_mb = {bad}\n"));
            assert_eq!(line, Some(5), "{bad}");
            assert_eq!(
                message,
                format!(
                    "`max_file_mb` must be a whole number of megabytes from 1 to 2000, not {bad}"
                )
            );
        }
    }

    #[test]
    fn reaction_settings() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.relay, RelayConfig::default());
        let config = parse(&format!(
            "{MINIMAL}[relay]\nreactions_to_whatsapp = \"ignore\"\nreactions_to_matrix = \"ignore\"\n"
        ))
        .unwrap();
        assert_eq!(
            config.relay.reactions_to_whatsapp,
            ReactionsToWhatsApp::Ignore
        );
        assert_eq!(config.relay.reactions_to_matrix, ReactionsToMatrix::Ignore);
        let config = parse(&format!(
            "{MINIMAL}[relay]\nreactions_to_whatsapp = \"digest\"\nreactions_to_matrix = \"reaction\"\n"
        ))
        .unwrap();
        assert_eq!(
            config.relay.reactions_to_whatsapp,
            ReactionsToWhatsApp::Digest
        );
        assert_eq!(
            config.relay.reactions_to_matrix,
            ReactionsToMatrix::Reaction
        );
        let (line, message) = problem(&format!(
            "{MINIMAL}[relay]\nreactions_to_matrix = \"emoji\"\n"
        ));
        assert_eq!(line, Some(5));
        assert_eq!(
            message,
            "`reactions_to_matrix` must be one of \"line\", \"reaction\", \"ignore\", not \"emoji\""
        );
    }

    #[test]
    fn metrics_address() {
        assert_eq!(parse(MINIMAL).unwrap().metrics.listen, None);
        let config = parse(&format!(
            "{MINIMAL}[metrics]\nlisten = \"127.0.0.1:9464\"\n"
        ))
        .unwrap();
        assert_eq!(
            config.metrics.listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        let (line, message) = problem(&format!("{MINIMAL}[metrics]\nlisten = \"localhost\"\n"));
        assert_eq!(line, Some(5));
        assert!(
            message.starts_with("`listen` must be an address and port"),
            "{message}"
        );
    }

    #[test]
    fn bad_admin() {
        let text =
            format!("{MINIMAL}admins = [\n  \"@alice:example.org\",\n  \"bob@example.org\",\n]\n");
        let (line, message) = problem(&text);
        assert_eq!(line, Some(6));
        assert!(message.starts_with("`admins`: invalid Matrix user id `bob@example.org`"));
    }

    #[test]
    fn bad_device_name_and_alias_prefix() {
        let (line, message) = problem(&format!("{MINIMAL}device_name = \" \"\n"));
        assert_eq!(
            (line, message.as_str()),
            (Some(4), "`device_name` is empty")
        );
        let (line, message) = problem(&format!("{MINIMAL}alias_prefix = \"WA \"\n"));
        assert_eq!(line, Some(4));
        assert!(message.starts_with("`alias_prefix`: invalid room alias local part `WA `"));
    }

    #[test]
    fn empty_path() {
        let (line, message) = problem(&format!("{MINIMAL}[paths]\nstate_dir = \"\"\n"));
        assert_eq!((line, message.as_str()), (Some(5), "`state_dir` is empty"));
    }

    #[test]
    fn bad_whatsapp_url() {
        let (line, message) = problem(&format!(
            "{MINIMAL}[whatsapp]\nserver_url = \"http://127.0.0.1:9000\"\n"
        ));
        assert_eq!(line, Some(5));
        assert_eq!(
            message,
            "`server_url` must be a ws:// or wss:// URL, not `http://127.0.0.1:9000`"
        );
        let (line, _) = problem(&format!("{MINIMAL}[whatsapp]\nurl = \"not a url\"\n"));
        assert_eq!(line, Some(5));
    }

    #[test]
    fn bad_templates() {
        let text = format!(
            "{MINIMAL}[templates]\nto_matrix = \"{{nom}}: {{text}}\"\nto_whatsapp = \"\"\"\n*{{name}}*\n{{text\"\"\"\nto_whatsapp_emote = \"{{name}}\"\n"
        );
        let problems = parse(&text).unwrap_err().0;
        let got: Vec<_> = problems
            .iter()
            .map(|p| (p.line, p.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    Some(5),
                    "template `to_matrix`: unknown placeholder `{nom}`; allowed: {name}, {phone}, {text}"
                ),
                (
                    Some(6),
                    "template `to_whatsapp`: unclosed `{` at character 10 (write `{{` for a literal brace)"
                ),
                (
                    Some(9),
                    "template `to_whatsapp_emote`: missing placeholder `{text}`: this template must contain it"
                ),
            ]
        );
        let (line, message) = problem(&format!(
            "{MINIMAL}[templates]\nto_matrix_html = \"{{text}} }}\"\n"
        ));
        assert_eq!(line, Some(5));
        assert!(message.starts_with("template `to_matrix_html`: unmatched `}`"));
        // {user} is a Matrix-side placeholder: not allowed towards Matrix.
        let (line, message) = problem(&format!(
            "{MINIMAL}[templates]\nto_matrix = \"{{user}}: {{text}}\"\n"
        ));
        assert_eq!(line, Some(5));
        assert!(message.contains("unknown placeholder `{user}`"));
    }

    #[test]
    fn log_levels() {
        for ok in [
            "info",
            "DEBUG",
            "warn,passerelle=trace",
            "passerelle[span{a=b}]=debug",
            "off",
            "info,",
        ] {
            assert_eq!(check_log_level(ok), Ok(()), "{ok}");
        }
        for bad in ["", "verbose", "passerelle=loud", "=debug", " , "] {
            assert!(check_log_level(bad).is_err(), "{bad}");
        }
        let (line, message) = problem(&format!("{MINIMAL}\n[logging]\nlevel = \"verbose\"\n"));
        assert_eq!(line, Some(6));
        assert!(message.starts_with("invalid log level `verbose`: expected one of trace, debug"));
    }

    #[test]
    fn several_problems_are_all_reported() {
        let text =
            "[matrix]\nhomeserver = \"gopher://x\"\nuser = \"bot\"\n[logging]\nlevel = \"loud\"\n";
        let problems = parse(text).unwrap_err();
        let lines: Vec<_> = problems.0.iter().map(|p| p.line).collect();
        assert_eq!(lines, [Some(2), Some(3), Some(5)]);
        let shown = problems.to_string();
        assert_eq!(shown.lines().count(), 3);
        assert!(shown.starts_with("/etc/passerelle/config.toml:2: `homeserver` must be"));
    }

    #[test]
    fn invalid_utf8_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let mut bytes = MINIMAL.as_bytes().to_vec();
        bytes.extend_from_slice(b"device_name = \"caf\xe9\"\n");
        std::fs::write(&path, bytes).unwrap();
        let problems = Config::load(&path).unwrap_err().0;
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].line, Some(4));
        assert_eq!(
            problems[0].message,
            "file is not valid UTF-8 (save it as UTF-8)"
        );
    }

    #[test]
    fn byte_order_mark_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, format!("\u{feff}{MINIMAL}")).unwrap();
        assert!(Config::load(&path).is_ok());
    }

    #[test]
    fn unreadable_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.toml");
        let problems = Config::load(&path).unwrap_err();
        assert_eq!(problems.0.len(), 1);
        assert_eq!(problems.0[0].line, None);
        let shown = problems.to_string();
        assert!(
            shown.starts_with(&format!("{}: cannot read file: ", path.display())),
            "{shown}"
        );
    }

    #[test]
    fn read_password_from_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "s3cret \n\r\n").unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, format!("{MINIMAL}password_file = \"pw\"\n")).unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(
            config.matrix.read_password().unwrap().as_deref(),
            Some("s3cret ")
        );
        let inline = parse(&format!("{MINIMAL}password = \"p\"\n")).unwrap();
        assert_eq!(inline.matrix.read_password().unwrap().as_deref(), Some("p"));
        assert_eq!(
            parse(MINIMAL).unwrap().matrix.read_password().unwrap(),
            None
        );
        std::fs::remove_file(dir.path().join("pw")).unwrap();
        assert!(config.matrix.read_password().is_err());
    }

    #[test]
    fn problem_display() {
        let p = Problem {
            path: "g/a.toml".into(),
            line: Some(3),
            message: "bad".into(),
        };
        assert_eq!(p.to_string(), "g/a.toml:3: bad");
        let q = Problem {
            line: None,
            ..p.clone()
        };
        assert_eq!(q.to_string(), "g/a.toml: bad");
        assert_eq!(
            Problems(vec![p, q]).to_string(),
            "g/a.toml:3: bad\ng/a.toml: bad"
        );
    }

    #[test]
    fn load_all_collects_config_and_group_problems() {
        let dir = tempfile::tempdir().unwrap();
        let groups = dir.path().join("groups.d");
        std::fs::create_dir(&groups).unwrap();
        std::fs::write(
            groups.join("famille.toml"),
            "whatsapp = \"120363041234567890@g.us\"\n",
        )
        .unwrap();
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, MINIMAL).unwrap();
        let (config, loaded) = load_all(&config_path).unwrap();
        assert_eq!(config.paths.groups_dir, groups);
        assert_eq!(loaded.len(), 1);
        assert_eq!(
            loaded[0].default_alias(&config.matrix),
            "#famille:example.org"
        );

        std::fs::write(groups.join("voisins.toml"), "whatsapp = \"nope\"\n").unwrap();
        std::fs::write(
            &config_path,
            format!("{MINIMAL}[logging]\nlevel = \"loud\"\n"),
        )
        .unwrap();
        let problems = load_all(&config_path).unwrap_err().0;
        let got: Vec<_> = problems.iter().map(|p| (p.path.clone(), p.line)).collect();
        assert_eq!(
            got,
            [
                (config_path.clone(), Some(5)),
                (groups.join("voisins.toml"), Some(1))
            ]
        );

        std::fs::remove_dir_all(&groups).unwrap();
        std::fs::write(&config_path, MINIMAL).unwrap();
        let problems = load_all(&config_path).unwrap_err().0;
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, groups);
        assert_eq!(problems[0].line, None);
        assert!(problems[0]
            .message
            .starts_with("cannot read groups directory"));
    }
}
