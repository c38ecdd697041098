//! A passerelle under test: a temporary config directory, its own bot account on the
//! test Synapse, the in-process fake WhatsApp network, and start/restart/reload.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use passerelle::service::{Service, WhatsAppNetwork};
use passerelle::whatsapp::fake::FakeNetwork;

use super::synapse::Synapse;

/// A name unique to this test run, usable as a Matrix localpart and an alias.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}{}x{n}x{nanos:x}", std::process::id())
}

pub struct TestBridge {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub groups_dir: PathBuf,
    pub network: Arc<FakeNetwork>,
    pub bot_user: String,
    service: Option<Service>,
}

impl TestBridge {
    /// A configured (not started) bridge with a fresh bot account; `admins` are
    /// Matrix ids allowed to invite the bot anywhere.
    pub fn new(synapse: &Synapse, admins: &[&str]) -> TestBridge {
        let dir = tempfile::tempdir().unwrap();
        let bot_local = unique("bot");
        let bot_password = "bot-password";
        let bot_user = synapse.register(&bot_local, bot_password, false);
        let groups_dir = dir.path().join("groups.d");
        std::fs::create_dir(&groups_dir).unwrap();
        let password_file = dir.path().join("matrix-password");
        std::fs::write(&password_file, format!("{bot_password}\n")).unwrap();
        let admins: Vec<String> = admins.iter().map(|a| format!("{a:?}")).collect();
        let config = format!(
            r#"
[matrix]
homeserver = "{url}"
user = "{bot_user}"
password_file = "{password_file}"
admins = [{admins}]
# Most tests read events over plain HTTP; encrypted created rooms have their own tests.
encrypt_new_rooms = false

[paths]
state_dir = "{state}"
groups_dir = "groups.d"

[logging]
level = "info"
"#,
            url = synapse.url,
            password_file = password_file.display(),
            admins = admins.join(", "),
            state = dir.path().join("state").display(),
        );
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).unwrap();
        TestBridge {
            dir,
            config_path,
            groups_dir,
            network: FakeNetwork::new(),
            bot_user,
            service: None,
        }
    }

    /// Appends TOML to config.toml (e.g. a `[whatsapp]` section).
    pub fn append_config(&self, text: &str) {
        let old = std::fs::read_to_string(&self.config_path).unwrap();
        std::fs::write(&self.config_path, format!("{old}\n{text}\n")).unwrap();
    }

    /// Writes `groups.d/<stem>.toml` approving `jid`, plus extra TOML lines.
    pub fn write_group(&self, stem: &str, jid: &str, extra: &str) {
        let text = format!("whatsapp = \"{jid}\"\n{extra}\n");
        std::fs::write(self.groups_dir.join(format!("{stem}.toml")), text).unwrap();
    }

    /// Replaces `from` by `to` in the only group file (as an admin edits it); the
    /// change applies at the next reload.
    pub fn edit_group(&self, from: &str, to: &str) {
        let mut files = std::fs::read_dir(&self.groups_dir).unwrap();
        let path = files.next().unwrap().unwrap().path();
        assert!(files.next().is_none(), "more than one group file");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{from:?} is not in {}", path.display());
        std::fs::write(&path, text.replace(from, to)).unwrap();
    }

    pub fn remove_group(&self, stem: &str) {
        std::fs::remove_file(self.groups_dir.join(format!("{stem}.toml"))).unwrap();
    }

    pub async fn start(&mut self) {
        assert!(self.service.is_none(), "already started");
        let service = Service::start(
            &self.config_path,
            WhatsAppNetwork::Fake(self.network.clone()),
        )
        .await
        .expect("passerelle starts");
        self.service = Some(service);
    }

    /// Starts with the real WhatsApp adapter (whatsapp-rust, pointed at wa-sim by
    /// the `[whatsapp] server_url` of the config).
    pub async fn start_real(&mut self) {
        assert!(self.service.is_none(), "already started");
        let service = Service::start(&self.config_path, WhatsAppNetwork::Real)
            .await
            .expect("passerelle starts");
        self.service = Some(service);
    }

    pub async fn stop(&mut self) {
        if let Some(service) = self.service.take() {
            service.shutdown().await;
        }
    }

    pub fn service(&self) -> &Service {
        self.service.as_ref().expect("started")
    }

    /// Waits until the group's room is set up and returns its id.
    pub async fn wait_room(&self, jid: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(room) = self.service().room_for_group(jid) {
                return room;
            }
            assert!(tokio::time::Instant::now() < deadline, "no room for {jid}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the bridge posted `text` in the fake WhatsApp group.
    pub async fn wait_whatsapp_text(&self, jid: &str, text: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if self.network.bridge_texts(jid).iter().any(|t| t == text) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "WhatsApp group {jid} never got {text:?}; got {:?}",
                self.network.bridge_texts(jid)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A bridge on the fake network with one group approved by a file inviting a new
/// user `alice`, started; returns (bridge, alice, jid, room).
pub async fn bridged_group(
    stem_prefix: &str,
    extra: &str,
) -> (TestBridge, super::matrix_user::MatrixUser, String, String) {
    let synapse = Synapse::shared();
    let alice = super::matrix_user::MatrixUser::new(synapse, &unique("alice"), Some("Alice")).await;
    let mut bridge = TestBridge::new(synapse, &[]);
    let jid = bridge.network.create_group("Famille Martin");
    let stem = unique(stem_prefix);
    bridge.write_group(
        &stem,
        &jid,
        &format!("invite = [\"{}\"]\n{extra}", alice.user_id),
    );
    bridge.start().await;
    let room = bridge.wait_room(&jid).await;
    alice.wait_joined(&room).await;
    (bridge, alice, jid, room)
}
