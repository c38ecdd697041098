//! `passerelle status`: what an admin needs to know at a glance, read from the state
//! files (the running service writes its heartbeat, connection state and last error
//! into the bridge database), so it works whether or not the service runs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::{self, Problems};
use crate::store::{Direction, Store, StoreError};

/// Meta keys the service writes and `status` reads.
pub mod keys {
    /// Unix seconds of the running service's last heartbeat.
    pub const HEARTBEAT: &str = "service.heartbeat";
    /// Unix seconds of the service's last clean stop (removed at start).
    pub const STOPPED: &str = "service.stopped";
    /// The WhatsApp connection state, in words.
    pub const WHATSAPP_STATE: &str = "whatsapp.state";
    /// Unix seconds since the WhatsApp state holds.
    pub const WHATSAPP_SINCE: &str = "whatsapp.since";
    /// The WhatsApp state the admins were last told about (so each is told once).
    pub const WHATSAPP_TOLD: &str = "whatsapp.told_admins";
    /// The bot's Matrix session when it is not simply logged in, in words (absent:
    /// logged in).
    pub const MATRIX_STATE: &str = "matrix.state";
    /// Unix seconds since the Matrix state holds.
    pub const MATRIX_SINCE: &str = "matrix.since";
    /// The meta key holding `<alias>|<room>` when the alias of group `jid`'s room
    /// was held by a room the bridge did not make.
    pub fn alias_taken(jid: &str) -> String {
        format!("room.alias_taken.{jid}")
    }
    /// The meta key holding the membership event that last removed the bot from
    /// room `room_id` (`|back` appended once it is back), so the admins are told
    /// once per removal and once per return.
    pub fn bot_removed(room_id: &str) -> String {
        format!("room.bot_removed.{room_id}")
    }
    /// The meta key holding the group whose upgraded room `room_id` succeeds,
    /// until the bot is in it and the group moved.
    pub fn successor(room_id: &str) -> String {
        format!("room.successor.{room_id}")
    }
    /// `<unix seconds>|<message>` of the last error worth an admin's attention.
    pub const LAST_ERROR: &str = "service.last_error";
}

/// How often the running service writes its heartbeat; older than three of these
/// means it is not running.
pub const HEARTBEAT_SECS: u64 = 20;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("{0}")]
    Config(#[from] Problems),
    #[error("bridge database: {0}")]
    Store(#[from] StoreError),
    #[error("WhatsApp key store: {0}")]
    KeyStore(#[from] crate::whatsapp::store::WaStoreError),
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GroupStatus {
    pub name: String,
    pub whatsapp: String,
    pub room: Option<String>,
    /// The alias its room could not have, held by a room the bridge did not make,
    /// and that room: `(alias, room)`.
    pub alias_taken: Option<(String, String)>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct QueueStatus {
    pub waiting: u64,
    /// Age in seconds of the oldest waiting message.
    pub oldest_age_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub config: PathBuf,
    pub state_dir: PathBuf,
    /// Seconds since the service's last heartbeat; `None` if it never ran.
    pub heartbeat_age_secs: Option<u64>,
    pub running: bool,
    pub matrix_user: String,
    /// The bot's device when a session is stored (login done).
    pub matrix_device: Option<String>,
    /// The bot's session: "logged in", "not logged in yet", or what went wrong.
    pub matrix: String,
    pub matrix_since_secs: Option<u64>,
    /// The linked WhatsApp number (digits), from the key store.
    pub whatsapp_number: Option<String>,
    pub whatsapp: String,
    pub whatsapp_since_secs: Option<u64>,
    pub groups_approved: usize,
    pub groups_bridged: usize,
    pub groups: Vec<GroupStatus>,
    pub to_matrix: QueueStatus,
    pub to_whatsapp: QueueStatus,
    pub set_aside: usize,
    /// Matrix events the bot could not decrypt yet, waiting for their keys.
    pub undecrypted: u64,
    pub last_error: Option<(u64, String)>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn age(then: Option<i64>) -> Option<u64> {
    then.map(|then| now_secs().saturating_sub(u64::try_from(then).unwrap_or(0)))
}

/// Reads the configuration and the state directory.
pub fn gather(config_path: &Path) -> Result<StatusReport, StatusError> {
    let (config, groups) = config::load_all(config_path)?;
    let state_dir = config.paths.state_dir.clone();
    let db_path = state_dir.join("passerelle.db");
    let store = if db_path.exists() {
        Some(Store::open_read_only(&db_path)?)
    } else {
        None
    };
    let meta = |key: &str| -> Result<Option<String>, StoreError> {
        match &store {
            Some(store) => store.get_meta(key),
            None => Ok(None),
        }
    };
    let heartbeat_age_secs = age(meta(keys::HEARTBEAT)?.and_then(|v| v.parse().ok()));
    let stopped = meta(keys::STOPPED)?.is_some();
    let running = !stopped && heartbeat_age_secs.is_some_and(|age| age <= 3 * HEARTBEAT_SECS);
    let matrix_device = std::fs::read(state_dir.join("matrix-session.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|session| {
            let meta = session.get("meta").unwrap_or(&session);
            meta.get("device_id")?.as_str().map(str::to_string)
        });
    let matrix = match (meta(keys::MATRIX_STATE)?, &matrix_device) {
        (Some(state), _) => state,
        (None, Some(_)) => "logged in".into(),
        (None, None) => "not logged in yet".into(),
    };
    let matrix_since_secs = age(meta(keys::MATRIX_SINCE)?.and_then(|v| v.parse().ok()));
    let whatsapp_number =
        crate::whatsapp::store::SqliteBackend::linked_number_at(&state_dir.join("whatsapp.db"))?;
    let whatsapp = match (meta(keys::WHATSAPP_STATE)?, &whatsapp_number) {
        (Some(state), _) => state,
        (None, Some(_)) => "never connected".into(),
        (None, None) => "not linked (run `passerelle login`)".into(),
    };
    let whatsapp_since_secs = age(meta(keys::WHATSAPP_SINCE)?.and_then(|v| v.parse().ok()));
    let mut group_status = Vec::new();
    for group in &groups {
        let room = match &store {
            Some(store) => store.room_for_group(&group.whatsapp)?,
            None => None,
        };
        let alias_taken = meta(&keys::alias_taken(&group.whatsapp))?.and_then(|value| {
            let (alias, room) = value.split_once('|')?;
            Some((alias.to_string(), room.to_string()))
        });
        group_status.push(GroupStatus {
            name: group.name.clone(),
            whatsapp: group.whatsapp.clone(),
            room,
            alias_taken,
        });
    }
    let queue = |direction| -> Result<QueueStatus, StoreError> {
        let (waiting, oldest) = match &store {
            Some(store) => store.queue_stats(direction)?,
            None => (0, None),
        };
        Ok(QueueStatus {
            waiting,
            oldest_age_secs: age(oldest),
        })
    };
    let set_aside = match &store {
        Some(store) => store.recent_dead_letters(1000)?.len(),
        None => 0,
    };
    let undecrypted = match &store {
        Some(store) => store.undecrypted_count()?,
        None => 0,
    };
    let last_error = meta(keys::LAST_ERROR)?.and_then(|value| {
        let (when, text) = value.split_once('|')?;
        Some((age(when.parse().ok())?, text.to_string()))
    });
    Ok(StatusReport {
        config: config_path.to_path_buf(),
        state_dir,
        heartbeat_age_secs,
        running,
        matrix_user: config.matrix.user.clone(),
        matrix_device,
        matrix,
        matrix_since_secs,
        whatsapp_number,
        whatsapp,
        whatsapp_since_secs,
        groups_approved: groups.len(),
        groups_bridged: group_status.iter().filter(|g| g.room.is_some()).count(),
        groups: group_status,
        to_matrix: queue(Direction::ToMatrix)?,
        to_whatsapp: queue(Direction::ToWhatsApp)?,
        set_aside,
        undecrypted,
        last_error,
    })
}

/// "3 min", "2 h": ages for humans.
fn human(secs: u64) -> String {
    match secs {
        0..=89 => format!("{secs} s"),
        90..=5399 => format!("{} min", secs / 60),
        5400..=172_799 => format!("{} h", secs / 3600),
        _ => format!("{} days", secs / 86_400),
    }
}

impl fmt::Display for QueueStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} waiting", self.waiting)?;
        if let Some(age) = self.oldest_age_secs.filter(|_| self.waiting > 0) {
            write!(f, " (oldest {})", human(age))?;
        }
        Ok(())
    }
}

impl fmt::Display for StatusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "config:     {}", self.config.display())?;
        let service = match (self.running, self.heartbeat_age_secs) {
            (true, Some(age)) => format!("running (heartbeat {} ago)", human(age)),
            (false, Some(age)) => format!("not running (last seen {} ago)", human(age)),
            _ => "never started".to_string(),
        };
        writeln!(f, "service:    {service}")?;
        write!(f, "matrix:     {}", self.matrix_user)?;
        if let Some(device) = &self.matrix_device {
            write!(f, " (device {device})")?;
        }
        match self.matrix_since_secs {
            Some(age) => writeln!(f, ", {} (for {})", self.matrix, human(age))?,
            None => writeln!(f, ", {}", self.matrix)?,
        }
        if let Some(number) = &self.whatsapp_number {
            write!(f, "whatsapp:   +{number}, ")?;
        } else {
            write!(f, "whatsapp:   ")?;
        }
        match self.whatsapp_since_secs {
            Some(age) => writeln!(f, "{} (for {})", self.whatsapp, human(age))?,
            None => writeln!(f, "{}", self.whatsapp)?,
        }
        writeln!(
            f,
            "groups:     {} approved, {} bridged",
            self.groups_approved, self.groups_bridged
        )?;
        for group in &self.groups {
            writeln!(
                f,
                "  {:<20} {:<32} {}",
                group.name,
                group.whatsapp,
                group.room.as_deref().unwrap_or("(no room yet)")
            )?;
            if let Some((alias, room)) = &group.alias_taken {
                writeln!(
                    f,
                    "  {:<20} alias {alias} is held by {room}, a room the bridge did not make",
                    ""
                )?;
            }
        }
        writeln!(f, "to matrix:  {}", self.to_matrix)?;
        writeln!(f, "to whatsapp: {}", self.to_whatsapp)?;
        if self.set_aside > 0 {
            writeln!(
                f,
                "set aside:  {} message(s) refused for good",
                self.set_aside
            )?;
        }
        if self.undecrypted > 0 {
            writeln!(
                f,
                "undecrypted: {} Matrix message(s) waiting for their keys",
                self.undecrypted
            )?;
        }
        match &self.last_error {
            Some((age, text)) => write!(f, "last error: {text} ({} ago)", human(*age)),
            None => write!(f, "last error: none"),
        }
    }
}
