//! End to end with the real WhatsApp code path: passerelle's whatsapp-rust client
//! talks to wa-sim (the protocol simulator on loopback) where the group members are
//! themselves whatsapp-rust clients, and the Matrix side is a real Synapse.
//! Covers `passerelle login` by QR, relaying both ways, the admin commands `groups`
//! and `join`, messages sent while the service was stopped, media, relations, and
//! the fault tests that involve WhatsApp (homeserver outage and rate limit during a
//! WhatsApp burst, SIGKILL, dropped connections, lost stanzas), polls, formatting,
//! reaction modes, relay safety, and rooms with Matrix end-to-end encryption (keys
//! that come late or never).
#![recursion_limit = "256"]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::bridge::{unique, TestBridge};
use common::late_keys::LateKeyDevice;
use common::matrix_user::{MatrixUser, Seen};
use common::slow_proxy::SlowProxy;
use common::synapse::{http_json, Synapse};
use serde_json::json;

const BRIDGE_PHONE: &str = "33700000001";
const BOB: &str = "33611111111";
const CAROL: &str = "33622222222";

fn passerelle() -> Command {
    Command::new(env!("CARGO_BIN_EXE_passerelle"))
}

/// Blocking control-API call from async code.
async fn control(method: &str, url: String, body: serde_json::Value) -> (u16, serde_json::Value) {
    let method = method.to_string();
    tokio::task::spawn_blocking(move || http_json(&method, &url, None, Some(&body)))
        .await
        .unwrap()
}

/// Creates simulated member `phone` (a whatsapp-rust client) named `name`.
async fn create_member(sim: &wa_sim::Simulator, phone: &str, name: &str) {
    let (status, body) = control(
        "POST",
        format!("{}members", sim.http_url()),
        json!({"phone": phone, "name": name}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

/// Creates member `phone` (push name `name`) and adds them to group `jid`.
async fn add_member(sim: &wa_sim::Simulator, jid: &str, phone: &str, name: &str) {
    create_member(sim, phone, name).await;
    let (status, body) = control(
        "POST",
        format!("{}groups/{jid}/participants", sim.http_url()),
        json!({"add": [phone]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// Creates the member Bob and a group `subject` of Bob and the association's
/// number in the simulator; returns the group's jid.
async fn bob_and_group(sim: &wa_sim::Simulator, subject: &str) -> String {
    create_member(sim, BOB, "Bob").await;
    let (status, group) = control(
        "POST",
        format!("{}groups", sim.http_url()),
        json!({"subject": subject, "creator": BOB, "members": [BOB, BRIDGE_PHONE]}),
    )
    .await;
    assert_eq!(status, 201, "{group}");
    group["jid"].as_str().unwrap().to_string()
}

/// Bob's client sends `text` to the group (really encrypted, with sender keys).
async fn bob_says(sim: &wa_sim::Simulator, jid: &str, text: &str) {
    let (status, body) = control(
        "POST",
        format!("{}groups/{jid}/messages", sim.http_url()),
        json!({"from": BOB, "text": text}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// Runs `passerelle login --raw` and scans its first QR code with the phone of
/// `phone` in the simulator; returns the command's stdout.
async fn login_by_qr(sim: &wa_sim::Simulator, config: &std::path::Path, phone: &str) -> String {
    run_login(config, &["--raw"], |qr| async move {
        sim.scan(phone, &qr)
            .await
            .expect("the phone links the device");
    })
    .await
}

/// Runs `passerelle login` with `args`, hands its first line of output (the QR
/// payload or the pair code) to `respond`, and waits for it to succeed; returns
/// its stdout.
async fn run_login<F, Fut>(config: &std::path::Path, args: &[&str], respond: F) -> String
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut child = passerelle()
        .arg("login")
        .args(args)
        .arg("-c")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let first = tokio::time::timeout(Duration::from_secs(60), lines_rx.recv())
        .await
        .expect("a prompt within a minute")
        .expect("login printed a prompt");
    respond(first.clone()).await;
    let mut output = vec![first];
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        while let Ok(line) = lines_rx.try_recv() {
            output.push(line);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "login did not finish: {output:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    while let Ok(line) = lines_rx.try_recv() {
        output.push(line);
    }
    assert!(status.success(), "login failed: {output:?}");
    output.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_with_a_pair_code_typed_on_the_phone() {
    let synapse = Synapse::shared();
    let sim = wa_sim::Simulator::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let bridge = TestBridge::new(synapse, &[]);
    bridge.append_config(&format!("[whatsapp]\nserver_url = \"{}\"", sim.ws_url()));
    let phone = "33700000002";
    let output = run_login(
        &bridge.config_path,
        &["--phone", &format!("+{phone}")],
        |prompt| {
            let sim = &sim;
            async move {
                let code = prompt
                    .strip_prefix("Pair code: ")
                    .unwrap_or_else(|| panic!("not a pair code prompt: {prompt}"))
                    .to_string();
                sim.enter_pair_code(phone, &code)
                    .await
                    .expect("the phone accepts the code");
            }
        },
    )
    .await;
    assert!(output.contains(&format!("linked to +{phone}")), "{output}");
    let status = admin_command(&bridge.config_path, &["status"]).await;
    assert!(
        status.contains(&format!("whatsapp:   +{phone}")),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_by_qr_then_relay_both_ways_and_join_a_group_through_whatsapp_rust() {
    let synapse = Synapse::shared();
    let sim = wa_sim::Simulator::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let alice = MatrixUser::new(synapse, &unique("alice"), Some("Alice")).await;
    let mut bridge = TestBridge::new(synapse, &[]);
    bridge.append_config(&format!("[whatsapp]\nserver_url = \"{}\"", sim.ws_url()));

    // Link the association's number.
    let output = login_by_qr(&sim, &bridge.config_path, BRIDGE_PHONE).await;
    assert!(
        output.contains(&format!("linked to +{BRIDGE_PHONE}")),
        "{output}"
    );
    let again = passerelle()
        .args(["login", "--raw", "-c"])
        .arg(&bridge.config_path)
        .output()
        .unwrap();
    let again_text = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success());
    assert!(again_text.contains("already linked"), "{again_text}");

    // A member and a group with the association's number in it.
    let jid = bob_and_group(&sim, "Famille Dupont").await;
    bridge.write_group(
        &unique("dupont"),
        &jid,
        &format!("invite = [\"{}\"]", alice.user_id),
    );

    bridge.start_real().await;
    let room = bridge.wait_room(&jid).await;
    alice.wait_joined(&room).await;

    // WhatsApp -> Matrix, through Signal sender keys and the durability hook.
    bob_says(&sim, &jid, "bonjour *tout le monde*").await;
    let seen = alice
        .wait_for(&room, "Bob's message", |s| s.body.contains("bonjour"))
        .await;
    assert_eq!(seen.body, "Bob: bonjour *tout le monde*");
    assert_eq!(seen.sender, bridge.bot_user);

    // Matrix -> WhatsApp: Bob's client decrypts what the association's number sent.
    alice.send_text(&room, "salut Bob").await;
    let text = wait_member_text(&sim, BOB, &jid, "*Alice*: salut Bob").await;
    assert_eq!(
        text["sender"].as_str().unwrap().split('@').next(),
        Some(BRIDGE_PHONE)
    );

    // The admin commands ask the running service: the number's groups...
    let listed = admin_command(&bridge.config_path, &["groups"]).await;
    let row = listed
        .lines()
        .find(|line| line.starts_with(&jid))
        .unwrap_or_else(|| panic!("{jid} not listed:\n{listed}"));
    assert!(row.contains("      2  dupont"), "{listed}");
    assert!(row.ends_with("Famille Dupont"), "{listed}");

    // ... and joining a group by its invite link, which prints the group file to save.
    let subject = format!("Club {}", unique("lecture"));
    let (status, club) = control(
        "POST",
        format!("{}groups", sim.http_url()),
        json!({"subject": subject, "creator": BOB, "members": [BOB]}),
    )
    .await;
    assert_eq!(status, 201, "{club}");
    let club_jid = club["jid"].as_str().unwrap().to_string();
    let joined = admin_command(
        &bridge.config_path,
        &["join", club["invite"].as_str().unwrap()],
    )
    .await;
    assert!(
        joined.starts_with(&format!(
            "Joined the WhatsApp group {club_jid} (\"{subject}\")."
        )),
        "{joined}"
    );
    let saved_as = joined
        .split("save the lines below as ")
        .nth(1)
        .and_then(|rest| rest.split(" and reload").next())
        .unwrap_or_else(|| panic!("no file name in:\n{joined}"));
    let file = joined.split("\n\n").nth(1).unwrap();
    assert!(
        file.starts_with(&format!("whatsapp = \"{club_jid}\"")),
        "{joined}"
    );
    std::fs::write(
        saved_as,
        format!("{file}invite = [\"{}\"]\n", alice.user_id),
    )
    .unwrap();
    bridge.service().reload().await.unwrap();
    let club_room = bridge.wait_room(&club_jid).await;
    alice.wait_joined(&club_room).await;
    bob_says(&sim, &club_jid, "bienvenue au club").await;
    alice
        .wait_for(&club_room, "Bob in the joined group", |s| {
            s.body == "Bob: bienvenue au club"
        })
        .await;
    let listed = admin_command(&bridge.config_path, &["groups"]).await;
    assert!(listed.ends_with("2 groups, 2 approved.\n"), "{listed}");

    // While passerelle is stopped, Bob writes; it arrives once after the restart.
    bridge.stop().await;
    bob_says(&sim, &jid, "pendant ton absence").await;
    bridge.start_real().await;
    alice
        .wait_for(&room, "the offline message", |s| {
            s.body == "Bob: pendant ton absence"
        })
        .await;
    alice.send_text(&room, "barrier").await;
    wait_member_text(&sim, BOB, &jid, "*Alice*: barrier").await;
    let from_bot: Vec<String> = alice.history_from(&room, &bridge.bot_user).await;
    assert_eq!(
        from_bot,
        vec!["Bob: bonjour *tout le monde*", "Bob: pendant ton absence"]
    );
    bridge.stop().await;
}

/// A simulator, Alice on Matrix, and a bridge (not started) whose number is linked
/// by QR and is in a group `subject` with Bob, approved by a file inviting Alice.
struct Scene {
    sim: wa_sim::Simulator,
    alice: MatrixUser,
    bridge: TestBridge,
    jid: String,
}

/// Sets up a [`Scene`]; `whatsapp_extra` is appended to `[whatsapp]` (after `server_url`).
async fn linked_scene(
    synapse: &Synapse,
    subject: &str,
    alice_is_admin: bool,
    whatsapp_extra: &str,
) -> Scene {
    let sim = wa_sim::Simulator::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let alice = MatrixUser::new(synapse, &unique("alice"), Some("Alice")).await;
    let admins: Vec<&str> = if alice_is_admin {
        vec![alice.user_id.as_str()]
    } else {
        Vec::new()
    };
    let bridge = TestBridge::new(synapse, &admins);
    bridge.append_config(&format!(
        "[whatsapp]\nserver_url = \"{}\"\n{whatsapp_extra}",
        sim.ws_url()
    ));
    login_by_qr(&sim, &bridge.config_path, BRIDGE_PHONE).await;
    let jid = bob_and_group(&sim, subject).await;
    bridge.write_group(
        &unique("scene"),
        &jid,
        &format!("invite = [\"{}\"]", alice.user_id),
    );
    Scene {
        sim,
        alice,
        bridge,
        jid,
    }
}

impl Scene {
    /// A second group `subject` of Bob and the number, approved with Alice invited;
    /// returns its jid.
    async fn second_group(&self, subject: &str) -> String {
        let (status, other) = control(
            "POST",
            format!("{}groups", self.sim.http_url()),
            json!({"subject": subject, "creator": BOB, "members": [BOB, BRIDGE_PHONE]}),
        )
        .await;
        assert_eq!(status, 201, "{other}");
        let jid = other["jid"].as_str().unwrap().to_string();
        self.bridge.write_group(
            &unique(&subject.to_lowercase()),
            &jid,
            &format!("invite = [\"{}\"]", self.alice.user_id),
        );
        jid
    }

    /// The room of group `jid` once Alice is in it.
    async fn room_joined(&self, jid: &str) -> String {
        let room = self.bridge.wait_room(jid).await;
        self.alice.wait_joined(&room).await;
        room
    }

    /// Starts the bridge in process; returns the group's room once Alice is in it.
    async fn start(&mut self) -> String {
        self.bridge.start_real().await;
        let room = self.bridge.wait_room(&self.jid).await;
        self.alice.wait_joined(&room).await;
        room
    }

    /// Runs the real binary (`passerelle run`).
    fn spawn_run(&self) -> std::process::Child {
        passerelle()
            .args(["run", "-c"])
            .arg(&self.bridge.config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    }

    /// Runs the real binary until it is bridged and connected; returns it and the room.
    async fn run_until_bridged(&self) -> (std::process::Child, String) {
        let child = self.spawn_run();
        wait_status(&self.bridge.config_path, "bridged and connected", |r| {
            r["groups_bridged"] == 1
                && r["whatsapp"] == "connected"
                && r["whatsapp_number"] == BRIDGE_PHONE
        })
        .await;
        let room = loop {
            if let Some(room) = self.alice.client.joined_rooms().first() {
                break room.room_id().to_string();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        (child, room)
    }
}

/// The service's logs in the test output, at the level `TEST_LOG` says (e.g.
/// `TEST_LOG=passerelle=debug`; off by default). Not `RUST_LOG`: the `passerelle`
/// commands the tests run would inherit it and print logs where output is parsed.
fn init_test_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("TEST_LOG").unwrap_or_else(|_| "off".into()),
        ))
        .with_test_writer()
        .try_init();
}

/// Runs an admin command (`groups`, `join ...`) that must succeed; returns stdout.
async fn admin_command(config: &std::path::Path, args: &[&str]) -> String {
    let mut command = passerelle();
    command.args(args).arg("-c").arg(config);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "passerelle {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Waits until member `phone` received `text` in `chat`; returns that message.
async fn wait_member_text(
    sim: &wa_sim::Simulator,
    phone: &str,
    chat: &str,
    text: &str,
) -> serde_json::Value {
    wait_member_message(sim, phone, chat, text, |m| m["text"] == text).await
}

/// Waits until `passerelle status --json` satisfies `ready`.
async fn wait_status(
    config: &std::path::Path,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let output = passerelle()
            .args(["status", "--json", "-c"])
            .arg(config)
            .output()
            .unwrap();
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
        if ready(&report) {
            return;
        }
        assert!(Instant::now() < deadline, "never {what}: {report}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_received_before_a_kill_9_is_relayed_once_after_restart() {
    let mut synapse = Synapse::start();
    let scene = linked_scene(&synapse, "Crash", false, "").await;
    let (sim, alice, bridge, jid) = (&scene.sim, &scene.alice, &scene.bridge, &scene.jid);
    let (mut child, room) = scene.run_until_bridged().await;
    let status = admin_command(&bridge.config_path, &["status"]).await;
    assert!(
        status.contains(&format!("whatsapp:   +{BRIDGE_PHONE}, connected")),
        "{status}"
    );

    // The homeserver goes away: the message is received, stored and acknowledged to
    // WhatsApp, but cannot be relayed yet. Then passerelle is killed outright.
    tokio::task::block_in_place(|| synapse.stop());
    bob_says(sim, jid, "avant le crash").await;
    wait_status(&bridge.config_path, "queued the message", |r| {
        r["to_matrix"]["waiting"] == 1
    })
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    tokio::task::block_in_place(|| synapse.restart());
    let mut child = scene.spawn_run();
    let deadline = Instant::now() + Duration::from_secs(90);
    let relayed = loop {
        let relayed: Vec<String> = alice.history_from(&room, &bridge.bot_user).await;
        if !relayed.is_empty() || Instant::now() > deadline {
            break relayed;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Give a duplicate every chance to show up before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let relayed_later: Vec<String> = alice.history_from(&room, &bridge.bot_user).await;
    assert_eq!(relayed, vec!["Bob: avant le crash"]);
    assert_eq!(relayed_later, relayed, "relayed exactly once");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Bob's client sends `body` (the control API's send fields) to the group; returns
/// the WhatsApp message id.
async fn bob_sends(sim: &wa_sim::Simulator, jid: &str, body: serde_json::Value) -> String {
    member_sends(sim, BOB, jid, body).await
}

/// Waits until member `phone`'s client received a message matching `found` in `chat`
/// (a file's `media_sha256` stays null until the member's download finished).
async fn wait_member_message(
    sim: &wa_sim::Simulator,
    phone: &str,
    chat: &str,
    what: &str,
    found: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let url = format!(
        "{}members/{phone}/messages?chat={}",
        sim.http_url(),
        chat.replace('@', "%40")
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let url2 = url.clone();
        let (status, body) =
            tokio::task::spawn_blocking(move || http_json("GET", &url2, None, None))
                .await
                .unwrap();
        assert_eq!(status, 200, "{body}");
        if let Some(message) = body["messages"]
            .as_array()
            .and_then(|m| m.iter().find(|m| found(m)))
        {
            return message.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{phone} never received {what:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replies_edits_deletions_reactions_and_mentions_cross_through_whatsapp_rust() {
    init_test_logs();
    use matrix_sdk::ruma::events::relation::Reply;
    use matrix_sdk::ruma::events::room::message::{
        Relation, ReplacementMetadata, RoomMessageEventContent,
    };
    use matrix_sdk::ruma::EventId;

    let synapse = Synapse::shared();
    let mut scene = linked_scene(synapse, "Relations", true, "").await;
    let room = scene.start().await;
    let (sim, alice, bridge, jid) = (&scene.sim, &scene.alice, &mut scene.bridge, &scene.jid);

    // WhatsApp -> Matrix.
    let hello = bob_sends(sim, jid, json!({"text": "hello"})).await;
    let mirrored = alice
        .wait_for(&room, "Bob's message", |s| s.body == "Bob: hello")
        .await;
    bob_sends(sim, jid, json!({"edit_of": hello, "text": "hello all"})).await;
    let edit = alice
        .wait_for(&room, "Bob's edit", |s| s.body == "Bob: hello all")
        .await;
    assert_eq!(
        edit.relation,
        Some(("replace".into(), mirrored.event_id.clone()))
    );
    bob_sends(sim, jid, json!({"reaction": {"to": hello, "emoji": "🎉"}})).await;
    let line = alice
        .wait_for(&room, "Bob's reaction", |s| s.body == "Bob reacted 🎉")
        .await;
    assert_eq!(
        line.relation,
        Some(("reply".into(), mirrored.event_id.clone()))
    );
    bob_sends(
        sim,
        jid,
        json!({"text": format!("@{BOB} parle de lui"), "mentions": [BOB]}),
    )
    .await;
    alice
        .wait_for(&room, "the mention by name", |s| {
            s.body == "Bob: @Bob parle de lui"
        })
        .await;
    // Alice names Bob: a real WhatsApp mention of his number (his phone shows his
    // name); a name the bridge does not know stays as typed.
    alice.send_text(&room, "merci @bob, et @Zoé").await;
    let mention = wait_member_text(sim, BOB, jid, "*Alice*: merci @33611111111, et @Zoé").await;
    assert_eq!(mention["mentions"], json!([BOB]), "{mention}");

    // Matrix -> WhatsApp: a reply quoting Bob's message, edited, then deleted.
    let mut content = RoomMessageEventContent::text_plain("bien reçu");
    content.relates_to = Some(Relation::Reply(Reply::with_event_id(
        EventId::parse(&mirrored.event_id).unwrap(),
    )));
    let answer = alice.send(&room, content).await;
    let relayed = wait_member_text(sim, BOB, jid, "*Alice*: bien reçu").await;
    assert_eq!(relayed["quoted_id"], json!(hello), "{relayed}");
    // Phones show the quote only when the reply carries its text.
    assert_eq!(relayed["quoted_text"], "hello", "{relayed}");
    let relayed_id = relayed["id"].as_str().unwrap().to_string();
    // A modified client's edit of a message that is not its sender's (Alice's, sent
    // by the number): WhatsApp's server never checks it, the bridge does. Told in the
    // room, never applied.
    bob_sends(
        sim,
        jid,
        json!({"edit_of": relayed_id, "text": "forged", "modified_client": true}),
    )
    .await;
    alice
        .wait_for(&room, "the notice for Bob's forged edit", |s| {
            s.body
                == "Bob sent an edit of a message that is not theirs: only its author can edit it, so it is not shown here."
        })
        .await;
    assert!(
        !alice
            .seen_in(&room)
            .iter()
            .any(|s| s.relation == Some(("replace".into(), answer.clone()))),
        "the forged edit reached Alice's message: {:?}",
        alice.seen_in(&room)
    );
    let edit = RoomMessageEventContent::text_plain("bien reçu, merci").make_replacement(
        ReplacementMetadata::new(EventId::parse(&answer).unwrap(), None),
    );
    alice.send(&room, edit).await;
    let edited = wait_member_message(sim, BOB, jid, "the edit", |m| {
        m["kind"] == "edit" && m["from_me"] == false
    })
    .await;
    assert_eq!(edited["edit_of"], json!(relayed_id), "{edited}");
    assert_eq!(edited["text"], "*Alice*: bien reçu, merci", "{edited}");
    alice
        .wait_joined(&room)
        .await
        .redact(&EventId::parse(&answer).unwrap(), None, None)
        .await
        .unwrap();
    let revoked = wait_member_message(sim, BOB, jid, "the deletion", |m| {
        m["kind"] == "revoke" && m["from_me"] == false
    })
    .await;
    assert_eq!(revoked["revoke_of"], json!(relayed_id), "{revoked}");

    // Bob answers the bridge's message, then deletes his first one.
    bob_sends(
        sim,
        jid,
        json!({"text": "de rien", "reply_to": {"id": relayed_id, "sender": BRIDGE_PHONE}}),
    )
    .await;
    let reply = alice
        .wait_for(&room, "Bob's reply", |s| s.body == "Bob: de rien")
        .await;
    assert_eq!(reply.relation, Some(("reply".into(), answer.clone())));
    // Alice wrote what Bob answers: the reply notifies her.
    let raw = alice.raw_event(synapse, &room, &reply.event_id).await;
    assert_eq!(
        raw["content"]["m.mentions"]["user_ids"],
        json!([alice.user_id]),
        "{raw}"
    );
    bob_sends(sim, jid, json!({"revoke": hello})).await;
    alice
        .wait_redacted(synapse, &room, &mirrored.event_id)
        .await;

    // Alice's reaction to Bob's reply is the number's reaction in WhatsApp.
    alice
        .wait_joined(&room)
        .await
        .send(
            matrix_sdk::ruma::events::reaction::ReactionEventContent::new(
                matrix_sdk::ruma::events::relation::Annotation::new(
                    EventId::parse(&reply.event_id).unwrap(),
                    "❤️".into(),
                ),
            ),
        )
        .await
        .unwrap();
    let reaction = wait_member_message(sim, BOB, jid, "the reaction", |m| {
        m["kind"] == "reaction" && m["from_me"] == false
    })
    .await;
    assert_eq!(reaction["emoji"], "❤️", "{reaction}");
    assert_eq!(
        reaction["sender"].as_str().unwrap().split('@').next(),
        Some(BRIDGE_PHONE)
    );

    // Bob renames the group and describes it: the room follows.
    let (status, body) = control(
        "PUT",
        format!("{}groups/{jid}", sim.http_url()),
        json!({"subject": "Relations (2)", "description": "Pour tout se dire"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    alice
        .wait_state(synapse, &room, "m.room.name", "name", "Relations (2)")
        .await;
    alice
        .wait_state(synapse, &room, "m.room.topic", "topic", "Pour tout se dire")
        .await;

    // Bob gives the group a picture: it becomes the room's avatar, byte for byte;
    // removing it removes the avatar.
    let picture = one_pixel_png();
    let picture_url = format!("{}groups/{jid}/picture", sim.http_url());
    let upload = (picture_url.clone(), picture.clone());
    let (status, _) = tokio::task::spawn_blocking(move || {
        common::synapse::http_request("PUT", &upload.0, None, Some("image/png"), &upload.1).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(status, 200);
    let avatar = alice
        .wait_state_matching(synapse, &room, "m.room.avatar", "a picture", |c| {
            c["url"].is_string()
        })
        .await;
    assert_eq!(avatar["info"]["mimetype"], "image/png", "{avatar}");
    let shown = matrix_media(synapse, alice, avatar["url"].as_str().unwrap()).await;
    assert_eq!(shown, picture);
    let (status, body) = control("DELETE", picture_url, json!({})).await;
    assert_eq!(status, 200, "{body}");
    alice
        .wait_state_matching(synapse, &room, "m.room.avatar", "no picture", |c| {
            c["url"].is_null()
        })
        .await;

    // The phone unlinks the bridge: Alice, an admin, hears it in a direct room, and
    // status says so.
    let (status, body) = control(
        "POST",
        format!("{}phones/{BRIDGE_PHONE}/devices/1/logout", sim.http_url()),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let notice = alice
        .wait_anywhere("the logged-out notice", |s| {
            s.body
                .starts_with("WhatsApp needs an administrator: logged out")
        })
        .await;
    assert_ne!(notice.room_id, room, "told in a direct room");
    assert_eq!(notice.msgtype, "m.notice");
    wait_status(&bridge.config_path, "logged out", |r| {
        r["whatsapp"]
            .as_str()
            .is_some_and(|state| state.starts_with("logged out"))
    })
    .await;
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bursts_both_ways_survive_repeated_connection_drops_and_malformed_stanzas() {
    init_test_logs();
    let synapse = Synapse::shared();
    let mut scene = linked_scene(
        synapse,
        "Chaos",
        false,
        "messages_per_minute = 600\nburst = 50",
    )
    .await;
    let room = scene.start().await;
    let (sim, alice, bridge, jid) = (&scene.sim, &scene.alice, &mut scene.bridge, &scene.jid);

    // wa-sim cuts the bridge's connection every 6 stanzas routed to it and slips a
    // malformed stanza before every 4th message.
    let (status, body) = control(
        "PUT",
        format!("{}phones/{BRIDGE_PHONE}/devices/1/faults", sim.http_url()),
        json!({"drop_every": 6, "malformed_every": 4}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    const BURST: usize = 30;
    let from_bob: Vec<String> = (1..=BURST).map(|n| format!("bob {n:02}")).collect();
    let from_alice: Vec<String> = (1..=BURST).map(|n| format!("alice {n:02}")).collect();
    for (bob, alice_text) in from_bob.iter().zip(&from_alice) {
        bob_says(sim, jid, bob).await;
        alice.send_text(&room, alice_text).await;
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    let expected_in_matrix: Vec<String> = from_bob.iter().map(|t| format!("Bob: {t}")).collect();
    loop {
        let seen: Vec<String> = alice.history_from(&room, &bridge.bot_user).await;
        if seen.len() >= BURST || Instant::now() > deadline {
            assert_eq!(
                seen, expected_in_matrix,
                "WhatsApp -> Matrix: all, once, in order"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let expected_in_whatsapp: Vec<String> =
        from_alice.iter().map(|t| format!("*Alice*: {t}")).collect();
    let last = expected_in_whatsapp.last().unwrap().clone();
    wait_member_text(sim, BOB, jid, &last).await;
    // Each exactly once, in order: the order WhatsApp's server routed them, which is
    // the order phones show (a redelivery after a dropped connection may reach the
    // member's client after later messages; wa-sim lists them in server order).
    let deadline = Instant::now() + Duration::from_secs(60);
    let received: Vec<String> = loop {
        let received: Vec<String> = member_messages(sim, BOB, jid)
            .await
            .iter()
            .filter(|m| m["from_me"] == false)
            .filter_map(|m| m["text"].as_str().map(str::to_owned))
            .collect();
        if received.len() >= BURST || Instant::now() > deadline {
            break received;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        received, expected_in_whatsapp,
        "Matrix -> WhatsApp: all, once, in order"
    );
    let (_, faults) = control(
        "GET",
        format!("{}phones/{BRIDGE_PHONE}/devices/1/faults", sim.http_url()),
        json!({}),
    )
    .await;
    assert!(faults["drops"].as_u64().unwrap() >= 1, "{faults}");
    assert!(faults["malformed_sent"].as_u64().unwrap() >= 1, "{faults}");
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_in_the_middle_of_bursts_both_ways_loses_and_doubles_nothing() {
    const BURST: usize = 200;
    let synapse = Synapse::shared();
    let scene = linked_scene(
        synapse,
        "Kill",
        false,
        "messages_per_minute = 10000\nburst = 1000",
    )
    .await;
    let (mut child, room) = scene.run_until_bridged().await;
    let (sim, alice, bridge, jid) = (&scene.sim, &scene.alice, &scene.bridge, &scene.jid);

    let from_bob: Vec<String> = (1..=BURST).map(|n| format!("bob {n:03}")).collect();
    let from_alice: Vec<String> = (1..=BURST).map(|n| format!("alice {n:03}")).collect();
    // Half of each burst while passerelle runs, SIGKILL, the other half while it is
    // down, then a restart.
    let half = BURST / 2;
    for (bob, alice_text) in from_bob[..half].iter().zip(&from_alice[..half]) {
        bob_says(sim, jid, bob).await;
        alice.send_text(&room, alice_text).await;
    }
    child.kill().unwrap(); // SIGKILL, mid-flight
    child.wait().unwrap();
    for (bob, alice_text) in from_bob[half..].iter().zip(&from_alice[half..]) {
        bob_says(sim, jid, bob).await;
        alice.send_text(&room, alice_text).await;
    }
    let mut child = scene.spawn_run();

    let expected_in_matrix: Vec<String> = from_bob.iter().map(|t| format!("Bob: {t}")).collect();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let seen: Vec<String> = alice.history_from(&room, &bridge.bot_user).await;
        if seen.len() >= BURST || Instant::now() > deadline {
            // A duplicate would show up right behind: give it the chance.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let seen: Vec<String> = alice.history_from(&room, &bridge.bot_user).await;
            assert_eq!(
                seen, expected_in_matrix,
                "WhatsApp -> Matrix: all, once, in order"
            );
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let expected_in_whatsapp: Vec<String> =
        from_alice.iter().map(|t| format!("*Alice*: {t}")).collect();
    let deadline = Instant::now() + Duration::from_secs(240);
    let received = loop {
        let received: Vec<String> = member_messages(sim, BOB, jid)
            .await
            .iter()
            .filter(|m| m["from_me"] == false)
            .filter_map(|m| m["text"].as_str().map(str::to_owned))
            .collect();
        if received.len() >= BURST || Instant::now() > deadline {
            break received;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(
        received, expected_in_whatsapp,
        "Matrix -> WhatsApp: all, once, in order"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Polls the room's server-side history until the bot posted `count` messages (or
/// `timeout` passed); returns the bodies.
async fn wait_bot_history(
    alice: &MatrixUser,
    room: &str,
    bot: &str,
    count: usize,
    timeout: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let bodies: Vec<String> = alice.history_from(room, bot).await;
        if bodies.len() >= count || Instant::now() > deadline {
            return bodies;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn homeserver_outage_during_a_whatsapp_burst_loses_and_doubles_nothing() {
    const BURST: usize = 200;
    init_test_logs();
    let mut synapse = Synapse::start();
    let mut scene = linked_scene(&synapse, "Panne", false, "").await;
    let room = scene.start().await;
    let (sim, alice, jid) = (&scene.sim, &scene.alice, &scene.jid);

    let from_bob: Vec<String> = (1..=BURST).map(|n| format!("bob {n:03}")).collect();
    for text in &from_bob[..BURST / 2] {
        bob_says(sim, jid, text).await;
    }
    synapse.stop();
    for text in &from_bob[BURST / 2..] {
        bob_says(sim, jid, text).await;
    }
    // WhatsApp handed everything over: it waits in the outbox, and `passerelle
    // status` shows the queue and how long its oldest message waits.
    wait_status(&scene.bridge.config_path, "the queue shown", |r| {
        r["to_matrix"]["waiting"].as_u64() > Some(0)
            && r["to_matrix"]["oldest_age_secs"].as_u64() >= Some(2)
    })
    .await;
    // Waiting for the homeserver is no failure of the messages': none of them is
    // any closer to being set aside (the first retries would be due by now).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let db =
        rusqlite::Connection::open(scene.bridge.dir.path().join("state/passerelle.db")).unwrap();
    let most_attempts: i64 = db
        .query_row(
            "SELECT COALESCE(MAX(attempts), 0) FROM outbox WHERE direction = 'matrix'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(most_attempts, 0, "an outage counted as failed attempts");
    drop(db);
    tokio::task::block_in_place(|| synapse.restart());

    let seen = wait_bot_history(
        alice,
        &room,
        &scene.bridge.bot_user,
        BURST,
        Duration::from_secs(180),
    )
    .await;
    // A duplicate would show up right behind: give it the chance.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen_after = alice.history_from(&room, &scene.bridge.bot_user).await;
    let expected: Vec<String> = from_bob.iter().map(|t| format!("Bob: {t}")).collect();
    assert_eq!(seen, expected, "all, once, in order");
    assert_eq!(seen_after, expected, "nothing doubled afterwards");
    assert_eq!(scene.bridge.service().pending(), (0, 0));
    scene.bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_matrix_message_that_could_not_be_queued_crosses_once_the_database_is_back() {
    init_test_logs();
    let synapse = Synapse::shared();
    let mut scene = linked_scene(synapse, "Disque", false, "").await;
    let room = scene.start().await;
    let (sim, alice, jid) = (&scene.sim, &scene.alice, scene.jid.clone());
    alice.send_text(&room, "avant la panne").await;
    wait_member_text(sim, BOB, &jid, "*Alice*: avant la panne").await;

    // Another process holds the bridge database's write lock: queueing fails (after
    // the store's 5 s wait) while the message comes in.
    let db =
        rusqlite::Connection::open(scene.bridge.dir.path().join("state/passerelle.db")).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    alice.send_text(&room, "pendant la panne").await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    db.execute_batch("ROLLBACK").unwrap();
    drop(db);

    wait_member_text(sim, BOB, &jid, "*Alice*: pendant la panne").await;

    // Again in a room with no marker yet (the bridge never read it): read again
    // from the first message it could not queue.
    let db =
        rusqlite::Connection::open(scene.bridge.dir.path().join("state/passerelle.db")).unwrap();
    db.execute("DELETE FROM meta WHERE key LIKE 'matrix.last_event.%'", [])
        .unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    alice.send_text(&room, "sans repère").await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    db.execute_batch("ROLLBACK").unwrap();
    drop(db);
    wait_member_text(sim, BOB, &jid, "*Alice*: sans repère").await;

    alice.send_text(&room, "après la panne").await;
    wait_member_text(sim, BOB, &jid, "*Alice*: après la panne").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let texts: Vec<String> = member_messages(sim, BOB, &jid)
        .await
        .iter()
        .filter_map(|m| m["text"].as_str().map(str::to_owned))
        .filter(|t| t.starts_with("*Alice*"))
        .collect();
    assert_eq!(
        texts,
        [
            "*Alice*: avant la panne",
            "*Alice*: pendant la panne",
            "*Alice*: sans repère",
            "*Alice*: après la panne"
        ],
        "all, once, in order"
    );
    scene.bridge.stop().await;
}

/// A `passerelle run` child killed when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The bot's stored Matrix session (`matrix-session.json`).
fn bot_session(bridge: &TestBridge) -> serde_json::Value {
    let path = bridge.dir.path().join("state/matrix-session.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The bot's cross-signing as other clients see it: its master key, and whether
/// the bot's current device is signed by its self-signing key (waits up to 30 s
/// for both to be there).
async fn bot_cross_signing(
    synapse: &Synapse,
    bridge: &TestBridge,
    asker: &MatrixUser,
) -> (String, bool) {
    let bot = bridge.bot_user.clone();
    let device = bot_session(bridge)["device_id"]
        .as_str()
        .unwrap()
        .to_string();
    let url = synapse.api("/_matrix/client/v3/keys/query");
    let token = asker.client.access_token().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (url, token, bot2) = (url.clone(), token.clone(), bot.clone());
        let (status, keys) = tokio::task::spawn_blocking(move || {
            http_json(
                "POST",
                &url,
                Some(&token),
                Some(&json!({"device_keys": {bot2: []}})),
            )
        })
        .await
        .unwrap();
        assert_eq!(status, 200, "{keys}");
        let first_key = |kind: &str| {
            keys[kind][&bot]["keys"]
                .as_object()
                .and_then(|keys| keys.keys().next().cloned())
        };
        if let (Some(master), Some(self_signing)) =
            (first_key("master_keys"), first_key("self_signing_keys"))
        {
            let signed = keys["device_keys"][&bot][&device]["signatures"][&bot]
                .get(&self_signing)
                .is_some();
            if signed || Instant::now() > deadline {
                return (master, signed);
            }
        }
        assert!(Instant::now() < deadline, "no cross-signing keys: {keys}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Ends every session of the bot on the homeserver, as an admin resetting them (or
/// a password change) does; returns the device that was in use.
async fn log_the_bot_out(synapse: &Synapse, bridge: &TestBridge) -> String {
    let session = bot_session(bridge);
    let token = session["access_token"].as_str().unwrap().to_string();
    let url = synapse.api("/_matrix/client/v3/logout/all");
    let (status, body) = tokio::task::spawn_blocking(move || {
        http_json("POST", &url, Some(&token), Some(&json!({})))
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    session["device_id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bot_logged_out_under_the_bridge_logs_in_again_and_loses_nothing() {
    init_test_logs();
    let synapse = Synapse::shared();
    let mut scene = linked_scene(synapse, "Jeton", true, "").await;
    let room = scene.start().await;
    let (sim, alice, jid) = (&scene.sim, &scene.alice, scene.jid.clone());
    let bot = scene.bridge.bot_user.clone();
    bob_says(sim, &jid, "avant").await;
    assert_eq!(
        wait_bot_history(alice, &room, &bot, 1, Duration::from_secs(30)).await,
        ["Bob: avant"]
    );

    // Its first login set up cross-signing: its device is signed, and Element shows
    // no unverified-device warning on its messages.
    let (master, signed) = bot_cross_signing(synapse, &scene.bridge, alice).await;
    assert!(signed, "the bot's device is not cross-signed");

    let old_device = log_the_bot_out(synapse, &scene.bridge).await;
    for text in ["un", "deux", "trois"] {
        bob_says(sim, &jid, text).await;
    }
    let expected = ["Bob: avant", "Bob: un", "Bob: deux", "Bob: trois"];
    let seen = wait_bot_history(alice, &room, &bot, 4, Duration::from_secs(90)).await;
    assert_eq!(seen, expected, "all, once, in order");
    let new_device = bot_session(&scene.bridge)["device_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new_device, old_device, "a new device logged in");
    // The identity is carried over: same master key, the new device signed by it.
    let (master_after, signed) = bot_cross_signing(synapse, &scene.bridge, alice).await;
    assert_eq!(
        master_after, master,
        "the bot's cross-signing identity changed"
    );
    assert!(signed, "the new device is not cross-signed");
    let stores: Vec<String> = std::fs::read_dir(scene.bridge.dir.path().join("state"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| {
            name.starts_with("matrix") && !name.contains('.') && name != "matrix-store-key"
        })
        .collect();
    assert_eq!(
        stores.len(),
        1,
        "the old device's store is left: {stores:?}"
    );
    // The admin is told, and the sync of the new session relays Matrix again.
    alice
        .wait_anywhere("the new login told", |s| {
            s.body.contains("logged in again") && s.body.contains(&new_device)
        })
        .await;
    alice.send_text(&room, "de retour").await;
    wait_member_text(sim, BOB, &jid, "*Alice*: de retour").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        alice.history_from(&room, &bot).await,
        expected,
        "nothing doubled afterwards"
    );
    assert_eq!(scene.bridge.service().pending(), (0, 0));
    scene.bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_room_the_bridge_creates_is_encrypted_by_default_and_relays_both_ways() {
    init_test_logs();
    let synapse = Synapse::shared();
    let mut scene = linked_scene(synapse, "Chiffrée", false, "").await;
    // The defaults, not the suite's plain rooms.
    let config = std::fs::read_to_string(&scene.bridge.config_path).unwrap();
    let config: String = config
        .lines()
        .filter(|line| !line.starts_with("encrypt_new_rooms"))
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(&scene.bridge.config_path, config).unwrap();
    let room = scene.start().await;
    let (sim, alice, jid) = (&scene.sim, &scene.alice, scene.jid.clone());
    let encryption = alice
        .wait_state_matching(synapse, &room, "m.room.encryption", "encryption", |c| {
            c["algorithm"].is_string()
        })
        .await;
    assert_eq!(
        encryption["algorithm"], "m.megolm.v1.aes-sha2",
        "{encryption}"
    );
    bob_says(sim, &jid, "en secret").await;
    let seen = alice
        .wait_for(&room, "Bob's text, decrypted", |s| {
            s.body == "Bob: en secret"
        })
        .await;
    let raw = alice.raw_event(synapse, &room, &seen.event_id).await;
    assert_eq!(raw["type"], "m.room.encrypted", "the homeserver saw: {raw}");
    alice.send_text(&room, "bien reçu").await;
    wait_member_text(sim, BOB, &jid, "*Alice*: bien reçu").await;
    scene.bridge.stop().await;
}

/// How long the bridge waits for a late key in the tests that wait for one.
const TEST_WAIT_FOR_KEYS_SECS: u64 = 15;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_whose_key_comes_late_crosses_and_one_whose_key_never_comes_is_told() {
    init_test_logs();
    let synapse = Synapse::shared();
    let mut scene = linked_scene(synapse, "Clés en retard", false, "").await;
    // An encrypted room (the default), and a short wait for keys.
    let config = std::fs::read_to_string(&scene.bridge.config_path).unwrap();
    let config: String = config
        .lines()
        .filter(|line| !line.starts_with("encrypt_new_rooms"))
        .map(|line| match line {
            "[matrix]" => format!("[matrix]\nwait_for_keys_secs = {TEST_WAIT_FOR_KEYS_SECS}\n"),
            _ => format!("{line}\n"),
        })
        .collect();
    std::fs::write(&scene.bridge.config_path, config).unwrap();
    let room = scene.start().await;
    let (sim, alice, jid) = (&scene.sim, &scene.alice, scene.jid.clone());
    let bot = scene.bridge.bot_user.clone();
    alice
        .wait_state_matching(synapse, &room, "m.room.encryption", "encryption", |c| {
            c["algorithm"].is_string()
        })
        .await;

    // Alice's other device sends one message and keeps its key; a modified client
    // sends one whose key does not exist.
    let localpart = alice.user_id[1..].split(':').next().unwrap().to_owned();
    let late = LateKeyDevice::login(synapse, &alice.user_id, &format!("pw-{localpart}")).await;
    let (_, held) = late
        .send_keeping_the_key(&room, &[bot.as_str()], "la clé arrive")
        .await;
    alice
        .send_raw_event(
            &room,
            "m.room.encrypted",
            json!({
                "algorithm": "m.megolm.v1.aes-sha2",
                "ciphertext": "AwgAEnACgAkLmt6qF84IK++J7UDH2Za1YVchHyprqTqsg2yyOwAtHaZTwyNg37afzg8f3r9IsN9rH4RNFg07LBDIbg0hPGM1jbYMNqkbHDPFwNDNIe+ntvsmR6yzW19acoDrajSvmk+dOmh6LbLr3BLUpUHgHE9jOkaCUgs9iSUNtvVlQSnnQYcNPgNVJW6AkZJPJHV5ZPtAIpnFEmkKmNcTvWLeW6Zw/Y0YUNaSmM8GqsTbqLGG3IGLaUCMmPnlhGaFZtOQ3YBzP4kzVxpfiJcdvwLuGWxhNw4FVCWU3p1XX7p0Ff6YVB2uzXqZu5yQIJyL3FL8RO3yQo7N3yPMGxGQhk4grA4Blhnj6PFxhWG0q1Lq8MiR27nITrlgnCsN/uLbY1kcP/LB/L2rJ3dvVDf+AJPoJXlyGjQlUhQ",
                "device_id": "MODIFIED",
                "sender_key": "c3BhcnJvd2hhd2tkb3Zlc3BhcnJvd2hhd2tkb3ZlMTI",
                "session_id": "a-session-nobody-ever-shared",
            }),
        )
        .await;
    wait_status(&scene.bridge.config_path, "both events kept", |r| {
        r["undecrypted"].as_u64() == Some(2)
    })
    .await;
    assert!(
        member_messages(sim, BOB, &jid).await.is_empty(),
        "nothing crossed before its key"
    );

    // The key comes: the message crosses, once.
    late.give_keys(held).await;
    wait_member_text(sim, BOB, &jid, "*Alice*: la clé arrive").await;
    // The other never decrypts: once the wait is over, Alice hears it, once.
    let told = alice
        .wait_for(&room, "the notice of an unreadable message", |s| {
            s.sender == bot && s.body.contains("could not decrypt one of your messages")
        })
        .await;
    assert!(told.body.contains(&alice.user_id), "{told:?}");
    wait_status(&scene.bridge.config_path, "nothing left waiting", |r| {
        r["undecrypted"].as_u64() == Some(0)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(TEST_WAIT_FOR_KEYS_SECS)).await;
    let texts: Vec<String> = member_messages(sim, BOB, &jid)
        .await
        .iter()
        .filter_map(|m| m["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        texts,
        ["*Alice*: la clé arrive"],
        "crossed once, nothing else"
    );
    let notices = alice
        .seen_in(&room)
        .into_iter()
        .filter(|s| s.sender == bot && s.body.contains("could not decrypt"))
        .count();
    assert_eq!(notices, 1, "told once: {:#?}", alice.seen_in(&room));
    scene.bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_password_a_lost_session_keeps_every_message_and_stops_the_service() {
    init_test_logs();
    let synapse = Synapse::shared();
    let scene = linked_scene(synapse, "Sans mot de passe", false, "").await;
    let (sim, alice, jid) = (&scene.sim, &scene.alice, scene.jid.clone());
    let bot = scene.bridge.bot_user.clone();
    let (child, room) = scene.run_until_bridged().await;
    let mut child = KillOnDrop(child);
    bob_says(sim, &jid, "avant").await;
    wait_bot_history(alice, &room, &bot, 1, Duration::from_secs(30)).await;

    // The password is taken out of the configuration (reloaded), then the session ends.
    let config_path = scene.bridge.config_path.clone();
    let with_password = std::fs::read_to_string(&config_path).unwrap();
    let without: String = with_password
        .lines()
        .filter(|line| !line.starts_with("password_file"))
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(&config_path, &without).unwrap();
    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_secs(2)).await;
    log_the_bot_out(synapse, &scene.bridge).await;
    bob_says(sim, &jid, "pendant 1").await;
    bob_says(sim, &jid, "pendant 2").await;

    wait_status(&config_path, "the lost session shown", |r| {
        r["matrix"]
            .as_str()
            .is_some_and(|m| m.contains("no password configured"))
            && r["to_matrix"]["waiting"].as_u64() == Some(2)
    })
    .await;
    // It stops with an error within the bound, and keeps what waits.
    let deadline =
        Instant::now() + passerelle::matrix::SESSION_GIVE_UP_AFTER + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the service never stopped");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(!status.success(), "stopped with an error: {status}");
    let report = admin_command(&config_path, &["status", "--json"]).await;
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["to_matrix"]["waiting"], 2, "{report}");
    assert!(
        report["matrix"].as_str().unwrap().contains("stopped"),
        "{report}"
    );

    // The admin puts the password back: the next start logs in and delivers.
    std::fs::write(&config_path, &with_password).unwrap();
    let _child = KillOnDrop(scene.spawn_run());
    let seen = wait_bot_history(alice, &room, &bot, 3, Duration::from_secs(90)).await;
    assert_eq!(seen, ["Bob: avant", "Bob: pendant 1", "Bob: pendant 2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_moderator_removing_someone_elses_reaction_does_not_take_it_back_in_whatsapp() {
    use matrix_sdk::ruma::events::reaction::ReactionEventContent;
    use matrix_sdk::ruma::events::relation::Annotation;
    use matrix_sdk::ruma::EventId;
    init_test_logs();
    let synapse = Synapse::shared();
    // Alice is an admin of the bridge: a moderator (power 100) of the room it makes.
    let mut scene = linked_scene(synapse, "Réactions", true, "").await;
    let room = scene.start().await;
    let (sim, alice, jid) = (&scene.sim, &scene.alice, scene.jid.clone());
    let carol = MatrixUser::new(synapse, &unique("carol"), Some("Carol")).await;
    let room_id = matrix_sdk::ruma::RoomId::parse(&room).unwrap();
    alice
        .wait_joined(&room)
        .await
        .invite_user_by_id(carol.client.user_id().unwrap())
        .await
        .unwrap();
    carol.client.join_room_by_id(&room_id).await.unwrap();
    let carol_room = carol.wait_joined(&room).await;

    bob_says(sim, &jid, "photo de groupe").await;
    let mirrored = carol
        .wait_for(&room, "Bob's text", |s| s.body == "Bob: photo de groupe")
        .await;
    let thumbs = carol_room
        .send(ReactionEventContent::new(Annotation::new(
            EventId::parse(&mirrored.event_id).unwrap(),
            "👍".into(),
        )))
        .await
        .unwrap()
        .response
        .event_id;
    let reactions = |messages: &[serde_json::Value]| -> Vec<String> {
        messages
            .iter()
            .filter(|m| m["kind"] == "reaction" && m["from_me"] == false)
            .map(|m| m["emoji"].as_str().unwrap_or("?").to_string())
            .collect()
    };
    wait_member_message(sim, BOB, &jid, "Carol's reaction", |m| {
        m["kind"] == "reaction" && m["emoji"] == "👍"
    })
    .await;

    // Alice removes Carol's reaction in Matrix: the number's reaction stays.
    alice
        .wait_joined(&room)
        .await
        .redact(&thumbs, None, None)
        .await
        .unwrap();
    alice.send_text(&room, "fin").await;
    wait_member_text(sim, BOB, &jid, "*Alice*: fin").await;
    assert_eq!(
        reactions(&member_messages(sim, BOB, &jid).await),
        ["👍"],
        "someone else's redaction took the reaction back"
    );

    // Carol takes back her own: it goes.
    let again = carol_room
        .send(ReactionEventContent::new(Annotation::new(
            EventId::parse(&mirrored.event_id).unwrap(),
            "🎉".into(),
        )))
        .await
        .unwrap()
        .response
        .event_id;
    wait_member_message(sim, BOB, &jid, "Carol's second reaction", |m| {
        m["kind"] == "reaction" && m["emoji"] == "🎉"
    })
    .await;
    carol_room.redact(&again, None, None).await.unwrap();
    wait_member_message(sim, BOB, &jid, "the reaction taken back", |m| {
        m["kind"] == "reaction" && m["emoji"] == ""
    })
    .await;
    assert_eq!(
        reactions(&member_messages(sim, BOB, &jid).await),
        ["👍", "🎉", ""]
    );
    scene.bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_matrix_sender_whose_messages_wait_long_is_told_once_and_they_still_cross() {
    init_test_logs();
    let synapse = Synapse::shared();
    // Six messages a minute, one at once: the second waits 10 s, the third 20 s;
    // a sender is told once a message waits 4 s.
    let extra = "messages_per_minute = 6\nburst = 1\n\n[relay]\ntell_waiting_after_secs = 4";
    let mut scene = linked_scene(synapse, "Patience", false, extra).await;
    let room = scene.start().await;
    let (sim, alice, jid) = (&scene.sim, &scene.alice, scene.jid.clone());
    let bot = scene.bridge.bot_user.clone();
    for text in ["un", "deux", "trois"] {
        alice.send_text(&room, text).await;
    }
    let told = alice
        .wait_for(&room, "the notice that her messages wait", |s| {
            s.sender == bot && s.body.contains("waiting")
        })
        .await;
    assert!(
        told.body.contains(&alice.user_id)
            && told.body.contains("at most 6 messages a minute")
            && told.body.contains("no need to send it again"),
        "{told:?}"
    );
    assert!(told.msgtype == "m.notice", "{told:?}");
    wait_member_text(sim, BOB, &jid, "*Alice*: trois").await;
    // Past another sweep: nothing more said, each message once and in order.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let texts: Vec<String> = member_messages(sim, BOB, &jid)
        .await
        .iter()
        .filter_map(|m| m["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(texts, ["*Alice*: un", "*Alice*: deux", "*Alice*: trois"]);
    let notices: Vec<Seen> = alice
        .seen_in(&room)
        .into_iter()
        .filter(|s| s.sender == bot && s.body.contains("waiting"))
        .collect();
    assert_eq!(notices.len(), 1, "told once: {notices:#?}");
    scene.bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_waiting_for_a_group_whose_file_is_removed_is_not_delivered() {
    init_test_logs();
    let synapse = Synapse::shared();
    // Two messages a minute: the second waits its turn for 30 s.
    let extra = "messages_per_minute = 2\nburst = 1";
    let mut scene = linked_scene(synapse, "Retirée", false, extra).await;
    let room = scene.start().await;
    let (sim, alice, jid) = (&scene.sim, &scene.alice, scene.jid.clone());
    let config = scene.bridge.config_path.clone();
    alice.send_text(&room, "un").await;
    wait_member_text(sim, BOB, &jid, "*Alice*: un").await;
    alice.send_text(&room, "deux").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while scene.bridge.service().pending().1 == 0 {
        assert!(Instant::now() < deadline, "the second message never queued");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The admin removes the group's file while it waits.
    for file in std::fs::read_dir(&scene.bridge.groups_dir).unwrap() {
        std::fs::remove_file(file.unwrap().path()).unwrap();
    }
    scene.bridge.service().reload().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = admin_command(&config, &["outbox"]).await;
        if listed.contains("no longer approved") {
            break;
        }
        assert!(Instant::now() < deadline, "never set aside: {listed}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(scene.bridge.service().pending(), (0, 0));
    let texts: Vec<String> = member_messages(sim, BOB, &jid)
        .await
        .iter()
        .filter_map(|m| m["text"].as_str().map(str::to_owned))
        .filter(|t| t.starts_with("*Alice*"))
        .collect();
    assert_eq!(
        texts,
        ["*Alice*: un"],
        "nothing reached the group after its removal"
    );
    scene.bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_alias_someone_else_took_first_is_never_adopted() {
    use matrix_sdk::ruma::api::client::room::create_room;
    init_test_logs();
    let synapse = Synapse::shared();
    let mut scene = linked_scene(synapse, "Squat", true, "").await;
    let stem = std::fs::read_dir(&scene.bridge.groups_dir)
        .unwrap()
        .map(|file| file.unwrap().path())
        .find_map(|path| Some(path.file_stem()?.to_str()?.to_string()))
        .unwrap();
    let alias = format!("#{stem}:localhost");
    // Mallory, a local user, makes a public room under the group's alias first.
    let mallory = MatrixUser::new(synapse, &unique("mallory"), Some("Mallory")).await;
    let mut request = create_room::v3::Request::new();
    request.room_alias_name = Some(stem.clone());
    request.preset = Some(create_room::v3::RoomPreset::PublicChat);
    let squatted = mallory.client.create_room(request).await.unwrap();
    let squatted_id = squatted.room_id().to_string();

    let room = scene.start().await;
    assert_ne!(room, squatted_id, "the bridge adopted someone else's room");
    let (sim, alice, jid) = (&scene.sim, &scene.alice, scene.jid.clone());
    bob_says(sim, &jid, "entre nous").await;
    alice
        .wait_for(&room, "Bob's text", |s| s.body == "Bob: entre nous")
        .await;
    squatted
        .send(
            matrix_sdk::ruma::events::room::message::RoomMessageEventContent::text_plain(
                "je parle pour le numéro",
            ),
        )
        .await
        .unwrap();
    alice.send_text(&room, "fin").await;
    wait_member_text(sim, BOB, &jid, "*Alice*: fin").await;
    let texts: Vec<String> = member_messages(sim, BOB, &jid)
        .await
        .iter()
        .filter_map(|m| m["text"].as_str().map(str::to_owned))
        .collect();
    assert!(
        !texts.iter().any(|t| t.contains("numéro")),
        "Mallory's room reached WhatsApp: {texts:?}"
    );
    let bot = &scene.bridge.bot_user;
    assert!(
        mallory.history_from(&squatted_id, bot).await.is_empty(),
        "the bot spoke in Mallory's room"
    );
    let bot_id = matrix_sdk::ruma::UserId::parse(bot.as_str()).unwrap();
    assert!(
        squatted.get_member(&bot_id).await.unwrap().is_none(),
        "the bot joined Mallory's room"
    );

    // The admins, status and check say which alias is held, and by which room.
    alice
        .wait_anywhere("the taken alias told", |s| {
            s.body.contains(&alias) && s.body.contains(&squatted_id)
        })
        .await;
    let config = &scene.bridge.config_path;
    let report: serde_json::Value =
        serde_json::from_str(&admin_command(config, &["status", "--json"]).await).unwrap();
    assert_eq!(
        report["groups"][0]["alias_taken"],
        json!([alias, squatted_id]),
        "{report}"
    );
    let checked = admin_command(config, &["check"]).await;
    assert!(
        checked.contains(&format!("the alias {alias} is held by {squatted_id}")),
        "{checked}"
    );
    scene.bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_events_that_cannot_cross_gets_a_few_notices_and_delays_nothing() {
    init_test_logs();
    let synapse = Synapse::shared();
    let mut scene = linked_scene(synapse, "Inondation", false, "").await;
    let room = scene.start().await;
    let (sim, alice, jid) = (&scene.sim, &scene.alice, scene.jid.clone());
    let bot = scene.bridge.bot_user.clone();
    let joined = alice.wait_joined(&room).await;
    for n in 0..15 {
        joined
            .send_raw(
                "m.room.message",
                json!({"msgtype": "org.example.sketch", "body": format!("dessin {n}")}),
            )
            .await
            .unwrap();
    }
    alice.send_text(&room, "texte normal").await;
    wait_member_text(sim, BOB, &jid, "*Alice*: texte normal").await;
    bob_says(sim, &jid, "réponse").await;
    alice
        .wait_for(&room, "Bob's answer", |s| s.body == "Bob: réponse")
        .await;
    let notices = alice
        .history_from(&room, &bot)
        .await
        .into_iter()
        .filter(|body| body.contains("not relayed to WhatsApp yet"))
        .count();
    assert_eq!(notices, 3, "notices to one sender are bounded");
    scene.bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kicked_bot_tells_the_admins_once_and_delivers_when_invited_back() {
    init_test_logs();
    let synapse = Synapse::shared();
    let mut scene = linked_scene(synapse, "Expulsion", true, "").await;
    // A room Alice made (the bot cannot be removed from a room it created).
    let bot = matrix_sdk::ruma::UserId::parse(scene.bridge.bot_user.as_str()).unwrap();
    let mut request = matrix_sdk::ruma::api::client::room::create_room::v3::Request::new();
    request.invite = vec![bot.clone()];
    let made = scene.alice.client.create_room(request).await.unwrap();
    let room = made.room_id().to_string();
    for file in std::fs::read_dir(&scene.bridge.groups_dir).unwrap() {
        let path = file.unwrap().path();
        std::fs::write(
            &path,
            format!("whatsapp = \"{}\"\nroom = \"{room}\"\n", scene.jid),
        )
        .unwrap();
    }
    scene.bridge.start_real().await;
    assert_eq!(scene.bridge.wait_room(&scene.jid).await, room);
    let (sim, alice, jid) = (&scene.sim, &scene.alice, scene.jid.clone());
    let joined = alice.wait_joined(&room).await;
    bob_says(sim, &jid, "avant").await;
    alice
        .wait_for(&room, "Bob's first", |s| s.body == "Bob: avant")
        .await;
    joined.kick_user(&bot, Some("essai")).await.unwrap();
    bob_says(sim, &jid, "pendant l'absence").await;
    let told = alice
        .wait_anywhere("the removal told", |s| {
            s.body.contains("was removed from the room") && s.body.contains(&room)
        })
        .await;
    assert!(told.body.contains(alice.user_id.as_str()), "{}", told.body);

    joined.invite_user_by_id(&bot).await.unwrap();
    alice
        .wait_for(&room, "the message that waited", |s| {
            s.body == "Bob: pendant l'absence"
        })
        .await;
    alice
        .wait_anywhere("the return told", |s| s.body.contains("is back in"))
        .await;
    let removal_notices = alice
        .seen_in(&told.room_id)
        .iter()
        .filter(|s| s.body.contains("was removed from the room"))
        .count();
    assert_eq!(removal_notices, 1, "told once");
    alice.send_text(&room, "bon retour").await;
    wait_member_text(sim, BOB, &jid, "*Alice*: bon retour").await;
    scene.bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgraded_room_takes_the_group_with_it() {
    init_test_logs();
    let synapse = Synapse::shared();
    let mut scene = linked_scene(synapse, "Mise à niveau", true, "").await;
    let room = scene.start().await;
    let (sim, alice, jid) = (&scene.sim, &scene.alice, scene.jid.clone());
    bob_says(sim, &jid, "avant").await;
    alice
        .wait_for(&room, "Bob's first", |s| s.body == "Bob: avant")
        .await;

    // Alice, an admin of the room, upgrades it and invites the bot to the new one.
    let token = alice.client.access_token().unwrap();
    let url = synapse.api(&format!("/_matrix/client/v3/rooms/{room}/upgrade"));
    let (status, body) = tokio::task::spawn_blocking(move || {
        http_json(
            "POST",
            &url,
            Some(&token),
            Some(&json!({"new_version": "12"})),
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let successor = body["replacement_room"].as_str().unwrap().to_string();
    let bot = matrix_sdk::ruma::UserId::parse(scene.bridge.bot_user.as_str()).unwrap();
    alice
        .wait_joined(&successor)
        .await
        .invite_user_by_id(&bot)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while scene.bridge.service().room_for_group(&jid).as_deref() != Some(successor.as_str()) {
        assert!(Instant::now() < deadline, "the group never moved");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bob_says(sim, &jid, "après").await;
    alice
        .wait_for(&successor, "Bob's message in the new room", |s| {
            s.body == "Bob: après"
        })
        .await;
    alice.send_text(&successor, "bien arrivée").await;
    wait_member_text(sim, BOB, &jid, "*Alice*: bien arrivée").await;
    scene.bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn homeserver_rate_limit_delays_but_keeps_every_whatsapp_message() {
    const COUNT: usize = 16; // Synapse's default burst is 10, then 0.2/s
    init_test_logs();
    let synapse = Synapse::start_with_default_message_rate_limit();
    let mut scene = linked_scene(&synapse, "Limite", false, "").await;
    let room = scene.start().await;
    let (sim, alice, jid) = (&scene.sim, &scene.alice, &scene.jid);
    let from_bob: Vec<String> = (1..=COUNT).map(|n| format!("r{n}")).collect();
    for text in &from_bob {
        bob_says(sim, jid, text).await;
    }
    let seen = wait_bot_history(
        alice,
        &room,
        &scene.bridge.bot_user,
        COUNT,
        Duration::from_secs(150),
    )
    .await;
    let expected: Vec<String> = from_bob.iter().map(|t| format!("Bob: {t}")).collect();
    assert_eq!(seen, expected);
    scene.bridge.stop().await;
}

/// A valid 1x1 PNG (a picture Synapse can thumbnail).
fn one_pixel_png() -> Vec<u8> {
    const HEX: &str = "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c6300010000000500010d0a2db40000000049454e44ae426082";
    (0..HEX.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&HEX[i..i + 2], 16).unwrap())
        .collect()
}

/// Bytes that look like nothing in particular (so a wrong file cannot match by luck).
fn sample_file(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(u32::from(seed)) as u8
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Downloads the file of Matrix event `event` (authenticated media) as `user`.
async fn matrix_file(
    synapse: &Synapse,
    user: &MatrixUser,
    room: &str,
    event: &str,
) -> (serde_json::Value, Vec<u8>) {
    let raw = user.raw_event(synapse, room, event).await;
    let content = raw["content"].clone();
    let mxc = content["url"].as_str().expect("an unencrypted file");
    let data = matrix_media(synapse, user, mxc).await;
    (content, data)
}

/// The bytes behind an `mxc://` URI, through authenticated media.
async fn matrix_media(synapse: &Synapse, user: &MatrixUser, mxc: &str) -> Vec<u8> {
    let path = mxc.strip_prefix("mxc://").expect("an mxc URI");
    let url = synapse.api(&format!("/_matrix/client/v1/media/download/{path}"));
    let token = user.client.access_token().unwrap();
    let (status, data) = tokio::task::spawn_blocking(move || {
        common::synapse::http_request("GET", &url, Some(&token), None, &[]).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "downloading {mxc}");
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn photos_voice_notes_documents_and_locations_cross_through_whatsapp_rust() {
    init_test_logs();
    use base64::Engine as _;
    use matrix_sdk::attachment::{AttachmentConfig, AttachmentInfo, BaseAudioInfo};
    use matrix_sdk::ruma::events::room::message::{
        LocationMessageEventContent, MessageType, RoomMessageEventContent, TextMessageEventContent,
    };
    use matrix_sdk::ruma::events::room::ImageInfo;
    use matrix_sdk::ruma::events::sticker::StickerEventContent;

    let synapse = Synapse::shared();
    let mut scene = linked_scene(synapse, "Photos", false, "\n[relay]\nmax_file_mb = 1").await;
    let room = scene.start().await;
    let (sim, alice, jid) = (&scene.sim, &scene.alice, &scene.jid);
    let b64 = |data: &[u8]| base64::engine::general_purpose::STANDARD.encode(data);

    // WhatsApp -> Matrix: a captioned photo, a voice note, a named document.
    let photo = sample_file(1, 70_000);
    bob_sends(
        sim,
        jid,
        json!({"image": b64(&photo), "mime": "image/jpeg", "text": "les enfants"}),
    )
    .await;
    let seen = alice
        .wait_for(&room, "Bob's photo", |s| s.msgtype == "m.image")
        .await;
    assert_eq!(seen.body, "Bob: les enfants");
    let (content, data) = matrix_file(synapse, alice, &room, &seen.event_id).await;
    assert_eq!(sha256_hex(&data), sha256_hex(&photo));
    assert_eq!(content["info"]["mimetype"], "image/jpeg");
    assert!(content["filename"].is_string(), "{content}");

    // Member changes are told in the room (names as far as the bridge knows them).
    create_member(sim, CAROL, "Carol").await;
    for (change, told) in [
        ("add", format!("Bob added +{CAROL} to the group.")),
        ("remove", format!("Bob removed +{CAROL} from the group.")),
    ] {
        let (status, body) = control(
            "POST",
            format!("{}groups/{jid}/participants", sim.http_url()),
            json!({ change: [CAROL] }),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        alice
            .wait_for(&room, "the member notice", |s| s.body == told)
            .await;
    }

    let voice = sample_file(2, 9_000);
    bob_sends(
        sim,
        jid,
        json!({"audio": b64(&voice), "ptt": true, "seconds": 4, "waveform": [0, 25, 50, 100]}),
    )
    .await;
    let seen = alice
        .wait_for(&room, "Bob's voice note", |s| s.msgtype == "m.audio")
        .await;
    assert_eq!(seen.body, "Bob sent a voice message");
    let (content, data) = matrix_file(synapse, alice, &room, &seen.event_id).await;
    assert_eq!(sha256_hex(&data), sha256_hex(&voice));
    assert!(
        content.get("org.matrix.msc3245.voice").is_some(),
        "a Matrix voice message: {content}"
    );
    assert_eq!(content["info"]["duration"], 4000);
    // The bars phones drew, as Matrix players draw them (0 to 1024).
    assert_eq!(
        content["org.matrix.msc1767.audio"]["waveform"],
        json!([0, 256, 512, 1024]),
        "{content}"
    );

    let menu = sample_file(3, 20_000);
    bob_sends(
        sim,
        jid,
        json!({"document": b64(&menu), "mime": "application/pdf", "file_name": "menu.pdf"}),
    )
    .await;
    let seen = alice
        .wait_for(&room, "Bob's document", |s| s.msgtype == "m.file")
        .await;
    let (content, data) = matrix_file(synapse, alice, &room, &seen.event_id).await;
    assert_eq!(sha256_hex(&data), sha256_hex(&menu));
    assert_eq!(content["filename"], "menu.pdf");
    assert_eq!(seen.body, "Bob sent a file");

    // Over `max_file_mb`: a notice naming the file and its size, nothing uploaded.
    let film = sample_file(4, 1_200_000);
    bob_sends(sim, jid, json!({"video": b64(&film), "seconds": 12})).await;
    alice
        .wait_for(&room, "the size notice", |s| {
            s.body
                == "Bob sent a video, 1.2 MB, which is larger than the bridge relays (1.0 MB): see it in WhatsApp."
        })
        .await;

    // Matrix -> WhatsApp: a captioned photo, a voice message, an uncaptioned file.
    let matrix_room = alice.wait_joined(&room).await;
    let picture = sample_file(5, 50_000);
    matrix_room
        .send_attachment(
            "garden.png",
            &mime::IMAGE_PNG,
            picture.clone(),
            AttachmentConfig::new().caption(Some(TextMessageEventContent::plain("le jardin"))),
        )
        .await
        .expect("Alice sends a photo");
    let got = wait_member_message(sim, BOB, jid, "Alice's photo", |m| {
        m["kind"] == "image" && m["from_me"] != true && !m["media_sha256"].is_null()
    })
    .await;
    assert_eq!(got["text"], "*Alice*: le jardin");
    assert_eq!(got["mime"], "image/png");
    assert_eq!(got["media_sha256"], sha256_hex(&picture), "{got}");

    let recording = sample_file(6, 12_000);
    matrix_room
        .send_attachment(
            "voice.ogg",
            &"audio/ogg".parse().unwrap(),
            recording.clone(),
            AttachmentConfig::new().info(AttachmentInfo::Voice(BaseAudioInfo {
                duration: Some(Duration::from_secs(3)),
                waveform: Some(vec![0.0, 0.5, 1.0]),
                ..BaseAudioInfo::default()
            })),
        )
        .await
        .expect("Alice sends a voice message");
    let got = wait_member_message(sim, BOB, jid, "Alice's voice message", |m| {
        m["kind"] == "ptt" && m["from_me"] != true && !m["media_sha256"].is_null()
    })
    .await;
    assert_eq!(got["media_sha256"], sha256_hex(&recording), "{got}");
    assert_eq!(got["waveform"], json!([0, 50, 100]), "its bars: {got}");
    // Voice notes carry no caption in WhatsApp: Alice's name came just before.
    let messages = member_messages(sim, BOB, jid).await;
    let voice_at = messages.iter().position(|m| m["id"] == got["id"]).unwrap();
    assert_eq!(
        messages[voice_at - 1]["text"],
        "* _Alice_ sent a voice message"
    );

    let notes = sample_file(7, 3_000);
    matrix_room
        .send_attachment(
            "notes.txt",
            &mime::TEXT_PLAIN,
            notes.clone(),
            AttachmentConfig::new(),
        )
        .await
        .expect("Alice sends a file");
    let got = wait_member_message(sim, BOB, jid, "Alice's file", |m| {
        m["kind"] == "document" && m["from_me"] != true && !m["media_sha256"].is_null()
    })
    .await;
    assert_eq!(got["media_sha256"], sha256_hex(&notes), "{got}");
    assert_eq!(got["text"], "* _Alice_ sent a file");

    // A sticker (any image in Matrix) arrives as a photo after Alice's line.
    let sticker = sample_file(9, 8_000);
    let uploaded = alice
        .client
        .media()
        .upload(&mime::IMAGE_PNG, sticker.clone(), None)
        .await
        .expect("upload the sticker");
    matrix_room
        .send(StickerEventContent::new(
            "a cat".into(),
            ImageInfo::new(),
            uploaded.content_uri,
        ))
        .await
        .expect("Alice sends a sticker");
    let got = wait_member_message(sim, BOB, jid, "Alice's sticker", |m| {
        m["kind"] == "image" && m["media_sha256"] == sha256_hex(&sticker)
    })
    .await;
    let messages = member_messages(sim, BOB, jid).await;
    let sticker_at = messages.iter().position(|m| m["id"] == got["id"]).unwrap();
    assert_eq!(messages[sticker_at - 1]["text"], "* _Alice_ sent a sticker");

    // A contact crosses as its card, a .vcf file, with a readable line as caption;
    // polls and view-once photos read as lines (a view-once file is never fetched,
    // so it cannot stay in the room).
    let vcard =
        "BEGIN:VCARD\nVERSION:3.0\nFN:Marie Dupont\nTEL;type=CELL:+33 6 12 34 56 78\nEND:VCARD";
    bob_sends(
        sim,
        jid,
        json!({"contact": {"name": "Marie Dupont", "vcard": vcard}}),
    )
    .await;
    let card = alice
        .wait_for(&room, "Bob's contact", |s| {
            s.body == "Bob shared a contact, Marie Dupont: +33 6 12 34 56 78"
        })
        .await;
    assert_eq!(card.msgtype, "m.file");
    let (content, data) = matrix_file(synapse, alice, &room, &card.event_id).await;
    assert_eq!(content["filename"], "Marie Dupont.vcf", "{content}");
    assert_eq!(content["info"]["mimetype"], "text/vcard", "{content}");
    assert_eq!(data, vcard.as_bytes());
    bob_sends(
        sim,
        jid,
        json!({"poll": {"question": "Quel jour ?", "options": ["Samedi", "Dimanche"]}}),
    )
    .await;
    alice
        .wait_for(&room, "Bob's poll", |s| {
            s.body == "Bob started a poll: Quel jour ?\n1. Samedi\n2. Dimanche\n(Vote in WhatsApp.)"
        })
        .await;
    bob_sends(
        sim,
        jid,
        json!({"image": b64(&sample_file(10, 5_000)), "view_once": true}),
    )
    .await;
    alice
        .wait_for(&room, "Bob's view-once photo", |s| {
            s.body == "Bob sent a view-once photo: it can only be opened once, on a phone."
        })
        .await;
    assert_eq!(
        alice
            .seen_in(&room)
            .iter()
            .filter(|s| s.msgtype == "m.image" && s.sender == scene.bridge.bot_user)
            .count(),
        1,
        "only the ordinary photo was posted as a file: {:?}",
        alice.seen_in(&room)
    );

    // A kind passerelle does not know (an event invitation) is told, never dropped.
    bob_sends(
        sim,
        jid,
        json!({"event": {"name": "Pique-nique", "start": 1_790_000_000}}),
    )
    .await;
    alice
        .wait_for(&room, "the notice for Bob's event", |s| {
            s.body
                == "Bob sent a kind of message that passerelle does not relay yet: see it in WhatsApp."
        })
        .await;
    // A text longer than one Matrix event holds (64 KiB; a modified client's
    // 100,000 characters, WhatsApp's own limit is 65,536): it crosses whole, in
    // parts, in order.
    let long_text: String = (0..20_000).map(|i| format!("{:04} ", i % 10_000)).collect();
    assert_eq!(long_text.chars().count(), 100_000);
    bob_sends(sim, jid, json!({"text": long_text})).await;
    let last = alice
        .wait_for(&room, "the last part of Bob's long text", |s| {
            s.body.starts_with("Bob: ") && part_of(&s.body).is_some_and(|(i, n)| i == n)
        })
        .await;
    let (_, count) = part_of(&last.body).unwrap();
    assert!((2..=4).contains(&count), "{count} parts");
    let parts: Vec<(usize, String)> = alice
        .seen_in(&room)
        .iter()
        .filter(|s| s.sender == scene.bridge.bot_user && s.body.starts_with("Bob: "))
        .filter_map(|s| {
            let (i, n) = part_of(&s.body)?;
            let piece = s.body.strip_prefix("Bob: ")?;
            let piece = piece.strip_suffix(&format!(" ({i}/{n})"))?;
            (n == count).then(|| (i, piece.to_owned()))
        })
        .collect();
    let order: Vec<usize> = parts.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        order,
        (1..=count).collect::<Vec<_>>(),
        "each part once, in order"
    );
    let in_order: Vec<String> = parts.into_iter().map(|(_, piece)| piece).collect();
    let whole: String = in_order.concat();
    assert_eq!(whole, long_text, "the whole text");

    // Locations: a point both ways, with a map link in Matrix and Alice's line
    // before the pin in WhatsApp.
    bob_sends(
        sim,
        jid,
        json!({"location": {"lat": 45.5, "lon": -0.25, "name": "Mairie"}}),
    )
    .await;
    let seen = alice
        .wait_for(&room, "Bob's location", |s| s.msgtype == "m.location")
        .await;
    assert_eq!(
        seen.body,
        "Bob shared a location: Mairie (https://www.openstreetmap.org/?mlat=45.500000&mlon=-0.250000#map=17/45.500000/-0.250000)"
    );
    let raw = alice.raw_event(synapse, &room, &seen.event_id).await;
    assert_eq!(raw["content"]["geo_uri"], "geo:45.500000,-0.250000");
    matrix_room
        .send(RoomMessageEventContent::new(MessageType::Location(
            LocationMessageEventContent::new("Le parc".into(), "geo:48.8584,2.2945;u=20".into()),
        )))
        .await
        .expect("Alice shares a location");
    let got = wait_member_message(sim, BOB, jid, "Alice's location", |m| {
        m["kind"] == "location" && m["from_me"] != true
    })
    .await;
    assert_eq!(
        (got["lat"].as_f64(), got["lon"].as_f64()),
        (Some(48.8584), Some(2.2945))
    );
    let messages = member_messages(sim, BOB, jid).await;
    let pin_at = messages.iter().position(|m| m["id"] == got["id"]).unwrap();
    assert_eq!(messages[pin_at - 1]["text"], "* _Alice_ shared a location");

    let too_big = sample_file(8, 1_500_000);
    matrix_room
        .send_attachment(
            "big.bin",
            &mime::APPLICATION_OCTET_STREAM,
            too_big,
            AttachmentConfig::new(),
        )
        .await
        .expect("Alice sends a big file");
    wait_member_text(
        sim,
        BOB,
        jid,
        "* _Alice_ sent big.bin, 1.5 MB, which is larger than the bridge relays (1.0 MB): see it in Matrix",
    )
    .await;
    scene.bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_calls_disappearing_messages_and_admins_only_mode_are_told_and_respected() {
    init_test_logs();
    let synapse = Synapse::shared();
    let mut scene = linked_scene(synapse, "Réglages", false, "").await;
    let room = scene.start().await;
    let (sim, alice, jid) = (&scene.sim, &scene.alice, &scene.jid);
    let settings = format!("{}groups/{jid}", sim.http_url());
    bob_says(sim, jid, "bonjour").await;
    alice
        .wait_for(&room, "Bob's message", |s| s.body == "Bob: bonjour")
        .await;

    // Bob calls the group: the room hears where to join (calls do not cross).
    let (status, body) = control(
        "POST",
        format!("{}groups/{jid}/call", sim.http_url()),
        json!({"from": BOB, "video": false}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    alice
        .wait_for(&room, "the call line", |s| {
            s.body == "Bob started a group call in WhatsApp: join it on a phone."
        })
        .await;

    // Bob turns on disappearing messages: the room is told what that means here,
    // and the number's messages disappear like everyone else's.
    let (status, body) = control("PUT", settings.clone(), json!({"ephemeral": 604800})).await;
    assert_eq!(status, 200, "{body}");
    alice
        .wait_for(&room, "the disappearing-messages line", |s| {
            s.body
                == "Bob turned on disappearing messages: new messages disappear from WhatsApp after 7 days. Their copies in this room stay."
        })
        .await;
    alice.send_text(&room, "éphémère").await;
    let relayed = wait_member_text(sim, BOB, jid, "*Alice*: éphémère").await;
    assert_eq!(relayed["expiration"], 604800, "{relayed}");

    // Only admins may send now, and the number is not one: Alice hears it and her
    // next message comes back as a notice instead of vanishing.
    let (status, body) = control("PUT", settings.clone(), json!({"admins_only": true})).await;
    assert_eq!(status, 200, "{body}");
    alice
        .wait_for(&room, "the admins-only line", |s| {
            s.body
                .starts_with("Bob changed the group's settings: only admins can send messages now.")
        })
        .await;
    alice.send_text(&room, "personne ne lira").await;
    let notice = alice
        .wait_for(&room, "the refusal", |s| {
            s.msgtype == "m.notice" && s.body.contains("only admins can send messages")
        })
        .await;
    assert_eq!(
        notice.body,
        "This message could not be sent to WhatsApp: only admins can send messages in this WhatsApp group"
    );

    // Back to normal: both told, and messages cross again without a timer.
    let (status, body) = control(
        "PUT",
        settings,
        json!({"admins_only": false, "ephemeral": 0}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    alice
        .wait_for(&room, "everyone may send again", |s| {
            s.body == "Bob changed the group's settings: everyone can send messages again."
        })
        .await;
    alice
        .wait_for(&room, "disappearing messages off", |s| {
            s.body == "Bob turned off disappearing messages."
        })
        .await;
    alice.send_text(&room, "de nouveau").await;
    let relayed = wait_member_text(sim, BOB, jid, "*Alice*: de nouveau").await;
    assert_eq!(relayed["expiration"], serde_json::Value::Null, "{relayed}");
    let texts: Vec<serde_json::Value> = member_messages(sim, BOB, jid)
        .await
        .into_iter()
        .filter(|m| m["from_me"] == false)
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(
        texts,
        [json!("*Alice*: éphémère"), json!("*Alice*: de nouveau")],
        "the refused message never reached WhatsApp"
    );
    scene.bridge.stop().await;
}

/// Member `phone` sends `body` (a control-API send body) to group `jid`; returns
/// the message id.
async fn member_sends(
    sim: &wa_sim::Simulator,
    phone: &str,
    jid: &str,
    mut body: serde_json::Value,
) -> String {
    body["from"] = json!(phone);
    let (status, answer) = control(
        "POST",
        format!("{}groups/{jid}/messages", sim.http_url()),
        body,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    answer["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poll_votes_are_read_with_the_polls_secret_and_tallied_on_its_line() {
    init_test_logs();
    let synapse = Synapse::shared();
    let mut scene = linked_scene(synapse, "Sondage", false, "").await;
    let room = scene.start().await;
    let (sim, alice, jid) = (&scene.sim, &scene.alice, &scene.jid);
    add_member(sim, jid, CAROL, "Carol").await;

    // A poll in a group that is not bridged: nothing of it is kept.
    let (status, unbridged) = control(
        "POST",
        format!("{}groups", sim.http_url()),
        json!({"subject": "Pas ici", "creator": BOB, "members": [BOB, BRIDGE_PHONE]}),
    )
    .await;
    assert_eq!(status, 201, "{unbridged}");
    let unbridged = unbridged["jid"].as_str().unwrap().to_owned();
    member_sends(
        sim,
        BOB,
        &unbridged,
        json!({"poll": {"question": "Secret ?", "options": ["Oui", "Non"]}}),
    )
    .await;

    let poll = bob_sends(
        sim,
        jid,
        json!({"poll": {"question": "Quel jour ?", "options": ["Samedi", "Dimanche"]}}),
    )
    .await;
    let line = alice
        .wait_for(&room, "Bob's poll", |s| {
            s.body == "Bob started a poll: Quel jour ?\n1. Samedi\n2. Dimanche\n(Vote in WhatsApp.)"
        })
        .await;
    // Carol has the poll on her phone before she votes.
    wait_member_message(sim, CAROL, jid, "Bob's poll", |m| m["id"] == json!(poll)).await;

    // Each vote (encrypted with the poll's secret by whatsapp-rust's polls().vote)
    // edits the poll's line with the tally; a voter's latest vote counts.
    let tally = |samedi: &str, dimanche: &str, voted: &str| {
        format!(
            "Bob started a poll: Quel jour ?\n1. Samedi {samedi}\n2. Dimanche {dimanche}\n\
             (Vote in WhatsApp: {voted}.)"
        )
    };
    let steps = [
        (
            CAROL,
            vec!["Samedi"],
            tally("(1: Carol)", "(0)", "1 person voted"),
        ),
        (
            BOB,
            vec!["Dimanche"],
            tally("(1: Carol)", "(1: Bob)", "2 people voted"),
        ),
        (
            BOB,
            vec!["Samedi"],
            tally("(2: Carol, Bob)", "(0)", "2 people voted"),
        ),
        (CAROL, vec![], tally("(1: Bob)", "(0)", "1 person voted")),
    ];
    for (voter, options, expected) in &steps {
        member_sends(
            sim,
            voter,
            jid,
            json!({"vote": {"poll": poll, "options": options}}),
        )
        .await;
        let edit = alice
            .wait_for(&room, "the poll's tally", |s| &s.body == expected)
            .await;
        assert_eq!(
            edit.relation,
            Some(("replace".into(), line.event_id.clone())),
            "a vote edits the poll's line"
        );
    }
    let html = alice
        .seen_in(&room)
        .into_iter()
        .rfind(|s| s.relation.is_some())
        .and_then(|s| s.html)
        .unwrap();
    assert!(html.contains("<li>Samedi <em>(1: Bob)</em></li>"), "{html}");
    // The bridged poll is kept (its secret reads the votes); the other one is not.
    let kept: Vec<String> = {
        let db =
            rusqlite::Connection::open(scene.bridge.dir.path().join("state/whatsapp.db")).unwrap();
        let mut statement = db.prepare("SELECT chat FROM polls").unwrap();
        statement
            .query_map([], |row| row.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(
        kept,
        vec![jid.clone()],
        "only the bridged group's poll is kept"
    );

    // Votes are not lines of their own: the poll and its four edits, nothing else.
    let bot_events: Vec<_> = alice
        .seen_in(&room)
        .into_iter()
        .skip_while(|s| s.event_id != line.event_id)
        .filter(|s| s.sender == scene.bridge.bot_user)
        .collect();
    assert_eq!(bot_events.len(), 1 + steps.len(), "{bot_events:#?}");

    // A poll asked in Matrix becomes the number's WhatsApp poll, after Alice's
    // line; WhatsApp votes in it show as the bot's reply line (the poll's event is
    // Alice's, not the bot's to edit); Matrix votes and the end cross as lines
    // answering the poll (the number's one vote is nobody's to cast).
    use matrix_sdk::ruma::events::poll::unstable_end::UnstablePollEndEventContent;
    use matrix_sdk::ruma::events::poll::unstable_response::UnstablePollResponseEventContent;
    use matrix_sdk::ruma::events::poll::unstable_start::{
        NewUnstablePollStartEventContent, UnstablePollAnswer, UnstablePollStartContentBlock,
        UnstablePollStartEventContent,
    };
    let matrix_room = alice.wait_joined(&room).await;
    let answers = |names: &[&str]| {
        let answers: Vec<UnstablePollAnswer> = names
            .iter()
            .enumerate()
            .map(|(n, name)| UnstablePollAnswer::new(format!("a{n}"), *name))
            .collect();
        answers.try_into().unwrap()
    };
    let asked = matrix_room
        .send(UnstablePollStartEventContent::New(
            NewUnstablePollStartEventContent::plain_text(
                "Sortie ?",
                UnstablePollStartContentBlock::new("Sortie ?", answers(&["Vélo", "Piscine"])),
            ),
        ))
        .await
        .expect("Alice asks a poll")
        .response
        .event_id;
    let number_poll = wait_member_message(sim, BOB, jid, "Alice's poll", |m| {
        m["kind"] == "poll" && m["from_me"] != true
    })
    .await;
    assert_eq!(number_poll["text"], "Sortie ?", "{number_poll}");
    assert_eq!(number_poll["options"], json!(["Vélo", "Piscine"]));
    assert_eq!(number_poll["selectable"], 1);
    let messages = member_messages(sim, BOB, jid).await;
    let poll_at = messages
        .iter()
        .position(|m| m["id"] == number_poll["id"])
        .unwrap();
    assert_eq!(messages[poll_at - 1]["text"], "* _Alice_ started a poll");
    let number_poll = number_poll["id"].as_str().unwrap().to_owned();

    for (options, expected) in [
        (
            ["Vélo"],
            "Votes in WhatsApp:\n1. Vélo (1: Bob)\n2. Piscine (0)",
        ),
        (
            ["Piscine"],
            "Votes in WhatsApp:\n1. Vélo (0)\n2. Piscine (1: Bob)",
        ),
    ] {
        bob_sends(
            sim,
            jid,
            json!({"vote": {"poll": number_poll, "options": options}}),
        )
        .await;
        alice
            .wait_for(&room, "WhatsApp's votes", |s| s.body == expected)
            .await;
    }
    let tally_lines: Vec<_> = alice
        .seen_in(&room)
        .into_iter()
        .filter(|s| s.body.starts_with("Votes in WhatsApp:"))
        .collect();
    assert_eq!(
        tally_lines.len(),
        2,
        "one line, then its edit: {tally_lines:#?}"
    );
    assert_eq!(
        tally_lines[0].relation,
        Some(("reply".into(), asked.to_string())),
        "the line answers Alice's poll"
    );
    assert_eq!(
        tally_lines[1].relation,
        Some(("replace".into(), tally_lines[0].event_id.clone()))
    );

    matrix_room
        .send(UnstablePollResponseEventContent::new(
            vec!["a1".into()],
            asked.clone(),
        ))
        .await
        .expect("Alice votes");
    matrix_room
        .send(UnstablePollEndEventContent::new(
            "The poll has ended. Top answer: Piscine",
            asked.clone(),
        ))
        .await
        .expect("Alice ends the poll");
    for line in ["* _Alice_ voted: Piscine", "* _Alice_ ended the poll"] {
        let got = wait_member_message(sim, BOB, jid, line, |m| m["text"] == line).await;
        assert_eq!(got["quoted_id"], json!(number_poll), "{got}");
    }

    // WhatsApp polls have at most 12 options: a bigger one is refused with a notice.
    let names: Vec<String> = (1..=13).map(|n| format!("choix {n}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    matrix_room
        .send(UnstablePollStartEventContent::New(
            NewUnstablePollStartEventContent::new(UnstablePollStartContentBlock::new(
                "Trop ?",
                answers(&names),
            )),
        ))
        .await
        .expect("Alice asks a big poll");
    alice
        .wait_for(&room, "the refusal", |s| {
            s.msgtype == "m.notice"
                && s.body
                    .contains("WhatsApp polls have 2 to 12 different options")
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_whatsapp_sticker_is_a_matrix_sticker() {
    init_test_logs();
    use base64::Engine as _;
    let synapse = Synapse::shared();
    let mut scene = linked_scene(synapse, "Autocollants", false, "").await;
    let room = scene.start().await;
    let (sim, alice, jid) = (&scene.sim, &scene.alice, scene.jid.clone());
    let bot = scene.bridge.bot_user.clone();
    let sticker = sample_file(6, 5_000);
    bob_sends(
        sim,
        &jid,
        json!({"sticker": base64::engine::general_purpose::STANDARD.encode(&sticker)}),
    )
    .await;
    bob_says(sim, &jid, "après l'autocollant").await;
    alice
        .wait_for(&room, "the text behind the sticker", |s| {
            s.body == "Bob: après l'autocollant"
        })
        .await;
    let stickers = alice.events_of_type(&room, "m.sticker").await;
    assert_eq!(stickers.len(), 1, "one sticker: {stickers:#?}");
    let event = &stickers[0];
    assert_eq!(event["sender"], bot.as_str(), "{event}");
    assert_eq!(event["content"]["body"], "Bob sent a sticker", "{event}");
    assert_eq!(
        event["content"]["info"]["mimetype"], "image/webp",
        "{event}"
    );
    let mxc = event["content"]["url"]
        .as_str()
        .expect("an unencrypted sticker");
    assert_eq!(
        sha256_hex(&matrix_media(synapse, alice, mxc).await),
        sha256_hex(&sticker)
    );
    assert!(
        alice.seen_in(&room).iter().all(|s| s.msgtype != "m.image"),
        "not an image"
    );
    scene.bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_whatsapp_gif_is_a_looping_video_in_matrix() {
    init_test_logs();
    use base64::Engine as _;
    let synapse = Synapse::shared();
    let mut scene = linked_scene(synapse, "Animé", false, "").await;
    let room = scene.start().await;
    let (sim, alice, jid) = (&scene.sim, &scene.alice, scene.jid.clone());
    let gif = sample_file(4, 12_000);
    let video = sample_file(5, 15_000);
    let b64 = |data: &[u8]| base64::engine::general_purpose::STANDARD.encode(data);
    bob_sends(sim, &jid, json!({"video": b64(&gif), "gif": true})).await;
    bob_sends(sim, &jid, json!({"video": b64(&video), "seconds": 3})).await;
    let seen_gif = alice
        .wait_for(&room, "Bob's GIF", |s| s.body == "Bob sent a GIF")
        .await;
    assert_eq!(seen_gif.msgtype, "m.video");
    let (content, data) = matrix_file(synapse, alice, &room, &seen_gif.event_id).await;
    assert_eq!(sha256_hex(&data), sha256_hex(&gif));
    for hint in [
        "fi.mau.loop",
        "fi.mau.autoplay",
        "fi.mau.no_audio",
        "fi.mau.hide_controls",
    ] {
        assert_eq!(content["info"][hint], true, "{hint}: {content}");
    }
    assert_eq!(content["info"]["mimetype"], "video/mp4", "{content}");
    // A plain video is no GIF, and its bytes are the same on both sides too.
    let seen_video = alice
        .wait_for(&room, "Bob's video", |s| s.body == "Bob sent a video")
        .await;
    let (content, data) = matrix_file(synapse, alice, &room, &seen_video.event_id).await;
    assert_eq!(sha256_hex(&data), sha256_hex(&video));
    assert!(content["info"].get("fi.mau.loop").is_none(), "{content}");

    // The other way: a Matrix video with the GIF hints is a WhatsApp GIF.
    let uploaded = alice
        .client
        .media()
        .upload(&"video/mp4".parse().unwrap(), gif.clone(), None)
        .await
        .expect("upload the GIF");
    alice
        .send_raw_event(
            &room,
            "m.room.message",
            json!({
                "msgtype": "m.video",
                "body": "danse.mp4",
                "url": uploaded.content_uri.to_string(),
                "info": {"mimetype": "video/mp4", "fi.mau.loop": true, "fi.mau.autoplay": true},
            }),
        )
        .await;
    let got = wait_member_message(sim, BOB, &jid, "Alice's GIF", |m| {
        m["kind"] == "video" && m["from_me"] != true && m["media_sha256"] == sha256_hex(&gif)
    })
    .await;
    assert_eq!(got["gif"], true, "{got}");
    assert_eq!(got["text"], "* _Alice_ sent a GIF", "{got}");
    scene.bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_member_notices_off_member_changes_are_not_told_in_the_room() {
    init_test_logs();
    let synapse = Synapse::shared();
    let mut scene = linked_scene(
        synapse,
        "Discret",
        false,
        "\n[relay]\nmember_notices = false",
    )
    .await;
    let room = scene.start().await;
    let (sim, alice, jid) = (&scene.sim, &scene.alice, scene.jid.clone());
    let bot = scene.bridge.bot_user.clone();
    create_member(sim, CAROL, "Carol").await;
    for change in ["add", "remove"] {
        let (status, body) = control(
            "POST",
            format!("{}groups/{jid}/participants", sim.http_url()),
            json!({ change: [CAROL] }),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    // What Bob says after the changes arrives; nothing was said of them before it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    bob_says(sim, &jid, "après les changements").await;
    alice
        .wait_for(&room, "Bob's text", |s| {
            s.body == "Bob: après les changements"
        })
        .await;
    let from_bot: Vec<String> = alice
        .seen_in(&room)
        .into_iter()
        .filter(|s| s.sender == bot)
        .map(|s| s.body)
        .collect();
    assert_eq!(
        from_bot,
        ["Bob: après les changements"],
        "nothing else said"
    );
    scene.bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_room_made_for_a_group_with_a_description_has_it_as_its_topic() {
    init_test_logs();
    let synapse = Synapse::shared();
    let sim = wa_sim::Simulator::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let alice = MatrixUser::new(synapse, &unique("alice"), Some("Alice")).await;
    let mut bridge = TestBridge::new(synapse, &[]);
    bridge.append_config(&format!("[whatsapp]\nserver_url = \"{}\"\n", sim.ws_url()));
    login_by_qr(&sim, &bridge.config_path, BRIDGE_PHONE).await;
    // A group that had its description long before the number joined it: no
    // notification of it ever reaches the bridge.
    create_member(&sim, BOB, "Bob").await;
    let (status, group) = control(
        "POST",
        format!("{}groups", sim.http_url()),
        json!({"subject": "Jardin partagé", "creator": BOB, "members": [BOB]}),
    )
    .await;
    assert_eq!(status, 201, "{group}");
    let jid = group["jid"].as_str().unwrap().to_string();
    let description = "Arrosage le samedi, outils dans la cabane.";
    let (status, body) = control(
        "PUT",
        format!("{}groups/{jid}", sim.http_url()),
        json!({"description": description}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = control(
        "POST",
        format!("{}groups/{jid}/participants", sim.http_url()),
        json!({"add": [BRIDGE_PHONE]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    bridge.write_group(
        &unique("jardin"),
        &jid,
        &format!("invite = [\"{}\"]", alice.user_id),
    );
    bridge.start_real().await;
    let room = bridge.wait_room(&jid).await;
    alice.wait_joined(&room).await;
    let topic = alice
        .wait_state_matching(synapse, &room, "m.room.topic", "a topic", |c| {
            c["topic"].is_string()
        })
        .await;
    assert_eq!(topic["topic"], description, "{topic}");
    alice
        .wait_state(synapse, &room, "m.room.name", "name", "Jardin partagé")
        .await;
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn room_renames_topics_avatars_invites_kicks_and_bans_never_reach_the_whatsapp_group() {
    init_test_logs();
    let synapse = Synapse::shared();
    // Alice is a room admin (power 100): Synapse lets her change everything.
    let mut scene = linked_scene(synapse, "Sécurité", true, "").await;
    let room = scene.start().await;
    let (sim, alice, jid) = (&scene.sim, &scene.alice, &scene.jid);
    let group = format!("{}groups/{jid}", sim.http_url());
    let get = |url: String| async move {
        tokio::task::spawn_blocking(move || http_json("GET", &url, None, None))
            .await
            .unwrap()
    };
    let (status, before) = get(group.clone()).await;
    assert_eq!(status, 200, "{before}");
    bob_says(sim, jid, "bonjour").await;
    alice
        .wait_for(&room, "Bob's message", |s| s.body == "Bob: bonjour")
        .await;

    let matrix_room = alice.wait_joined(&room).await;
    let dave = MatrixUser::new(synapse, &unique("dave"), Some("Dave")).await;
    let dave_id = matrix_sdk::ruma::UserId::parse(dave.user_id.as_str()).unwrap();
    matrix_room
        .set_name("Autre nom".into())
        .await
        .expect("Alice renames the room");
    matrix_room
        .set_room_topic("Autre sujet")
        .await
        .expect("Alice sets the topic");
    matrix_room
        .upload_avatar(&mime::IMAGE_PNG, one_pixel_png(), None)
        .await
        .expect("Alice sets an avatar");
    matrix_room
        .invite_user_by_id(&dave_id)
        .await
        .expect("Alice invites Dave");
    dave.wait_joined(&room).await;
    matrix_room
        .kick_user(&dave_id, Some("test"))
        .await
        .expect("Alice kicks Dave");
    matrix_room
        .ban_user(&dave_id, Some("test"))
        .await
        .expect("Alice bans Dave");

    // A text after all that, as a barrier: once Bob has it, anything the bridge
    // would have done about the room's changes was done before it.
    alice.send_text(&room, "fin").await;
    wait_member_text(sim, BOB, jid, "*Alice*: fin").await;
    let (status, after) = get(group).await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after, before, "the WhatsApp group did not change");
    let (status, events) = get(format!("{}members/{BOB}/events", sim.http_url())).await;
    assert_eq!(status, 200, "{events}");
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| !e["actor"]
                .as_str()
                .unwrap_or_default()
                .contains(BRIDGE_PHONE)),
        "the number changed nothing in the group: {events}"
    );
    let from_number: Vec<serde_json::Value> = member_messages(sim, BOB, jid)
        .await
        .into_iter()
        .filter(|m| m["from_me"] != true)
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(
        from_number,
        vec![json!("*Alice*: fin")],
        "only Alice's words crossed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn formatting_emotes_notices_and_reaction_modes_cross_through_whatsapp_rust() {
    init_test_logs();
    use matrix_sdk::ruma::events::reaction::ReactionEventContent;
    use matrix_sdk::ruma::events::relation::Annotation;
    use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
    use matrix_sdk::ruma::EventId;
    let synapse = Synapse::shared();
    let mut scene = linked_scene(
        synapse,
        "Formats",
        false,
        "\n[relay]\nreactions_to_whatsapp = \"digest\"\nreactions_to_matrix = \"reaction\"",
    )
    .await;
    let room = scene.start().await;
    let (sim, alice, jid) = (&scene.sim, &scene.alice, &scene.jid);
    let bot = scene.bridge.bot_user.clone();

    // WhatsApp formatting -> Matrix HTML.
    let formatted = bob_sends(
        sim,
        jid,
        json!({"text": "*gras*, _ital_ et ~barré~\n> cité\n```let x = 1;```"}),
    )
    .await;
    let seen = alice
        .wait_for(&room, "Bob's formatted message", |s| {
            s.body.contains("gras")
        })
        .await;
    assert_eq!(
        seen.body,
        "Bob: *gras*, _ital_ et ~barré~\n> cité\n```let x = 1;```"
    );
    assert_eq!(
        seen.html.as_deref(),
        Some(
            "<strong>Bob</strong>: <strong>gras</strong>, <em>ital</em> et <del>barré</del>\
             <blockquote>cité</blockquote><pre><code>let x = 1;</code></pre>"
        )
    );

    // Matrix HTML -> WhatsApp formatting; unsafe HTML degrades to its text.
    alice
        .send(
            &room,
            RoomMessageEventContent::text_html(
                "fort doux barré code",
                "<strong>fort</strong> <em>doux</em> <del>barré</del> <code>code</code>\
                 <blockquote>cité</blockquote><ul><li>un</li><li>deux</li></ul>\
                 <ol><li>premier</li></ol><pre><code>bloc</code></pre><script>alert(1)</script>",
            ),
        )
        .await;
    let got = wait_member_message(sim, BOB, jid, "Alice's formatted message", |m| {
        m["from_me"] != true && m["text"].as_str().is_some_and(|t| t.contains("fort"))
    })
    .await;
    assert_eq!(
        got["text"],
        "*Alice*: *fort* _doux_ ~barré~ `code`\n> cité\n- un\n- deux\n1. premier\n```bloc```"
    );

    // An emote reads as one; a notice (what bots send) is not relayed.
    alice
        .send(&room, RoomMessageEventContent::emote_plain("fait signe"))
        .await;
    wait_member_text(sim, BOB, jid, "* _Alice_ fait signe").await;
    alice
        .send(
            &room,
            RoomMessageEventContent::notice_plain("je suis un bot"),
        )
        .await;

    // reactions_to_whatsapp = "digest": Alice's reaction is the number's one reply
    // to Bob's message, deleted when she takes it back.
    let matrix_room = alice.wait_joined(&room).await;
    let reaction = matrix_room
        .send(ReactionEventContent::new(Annotation::new(
            EventId::parse(&seen.event_id).unwrap(),
            "👍".into(),
        )))
        .await
        .unwrap()
        .response
        .event_id;
    let digest = wait_member_text(sim, BOB, jid, "👍 Alice").await;
    assert_eq!(digest["quoted_id"], json!(formatted), "{digest}");
    matrix_room.redact(&reaction, None, None).await.unwrap();
    wait_member_message(sim, BOB, jid, "the digest's deletion", |m| {
        m["kind"] == "revoke" && m["revoke_of"] == digest["id"]
    })
    .await;

    // reactions_to_matrix = "reaction": Bob's reaction is the bot's own, taken back
    // with his.
    let annotations_become = |expected: Vec<(String, String)>| {
        let (alice, room, event) = (alice, &room, &seen.event_id);
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let found = alice.annotations(synapse, room, event).await;
                if found == expected {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "expected {expected:?}, found {found:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    bob_sends(
        sim,
        jid,
        json!({"reaction": {"to": formatted, "emoji": "❤️"}}),
    )
    .await;
    annotations_become(vec![(bot.clone(), "❤️".to_owned())]).await;
    bob_sends(
        sim,
        jid,
        json!({"reaction": {"to": formatted, "emoji": ""}}),
    )
    .await;
    annotations_become(Vec::new()).await;

    // A barrier: once Bob has this, the notice would have come before it.
    alice.send_text(&room, "fin").await;
    wait_member_text(sim, BOB, jid, "*Alice*: fin").await;
    assert!(
        !member_messages(sim, BOB, jid)
            .await
            .iter()
            .any(|m| m["text"]
                .as_str()
                .is_some_and(|t| t.contains("je suis un bot"))),
        "notices are not relayed"
    );
    assert!(
        !alice
            .seen_in(&room)
            .iter()
            .any(|s| s.body.contains("reacted")),
        "no reaction lines in this mode"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_encrypted_room_relays_texts_and_files_both_ways_through_whatsapp_rust() {
    init_test_logs();
    use base64::Engine as _;
    use matrix_sdk::attachment::AttachmentConfig;
    use matrix_sdk::media::{MediaFormat, MediaRequestParameters};
    use matrix_sdk::ruma::api::client::room::create_room;
    use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
    use matrix_sdk::ruma::events::room::message::{MessageType, SyncRoomMessageEvent};
    use matrix_sdk::ruma::events::room::MediaSource;
    use matrix_sdk::ruma::events::{
        AnySyncMessageLikeEvent, AnySyncTimelineEvent, InitialStateEvent,
    };
    use matrix_sdk::ruma::{EventId, OwnedUserId};

    let synapse = Synapse::shared();
    let sim = wa_sim::Simulator::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let alice = MatrixUser::new(synapse, &unique("alice"), Some("Alice")).await;
    let mut bridge = TestBridge::new(synapse, &[&alice.user_id]);
    bridge.append_config(&format!("[whatsapp]\nserver_url = \"{}\"\n", sim.ws_url()));
    login_by_qr(&sim, &bridge.config_path, BRIDGE_PHONE).await;
    let jid = bob_and_group(&sim, "Secrets de famille").await;

    // An admin creates an encrypted room, invites the bot, and names the room in the
    // group file.
    let mut request = create_room::v3::Request::new();
    request.invite = vec![OwnedUserId::try_from(bridge.bot_user.as_str()).unwrap()];
    request.initial_state = vec![InitialStateEvent::with_empty_state_key(
        RoomEncryptionEventContent::with_recommended_defaults(),
    )
    .to_raw_any()];
    let room = alice
        .client
        .create_room(request)
        .await
        .expect("create room");
    let room_id = room.room_id().to_string();
    bridge.write_group(&unique("secret"), &jid, &format!("room = \"{room_id}\""));
    bridge.start_real().await;
    assert_eq!(bridge.wait_room(&jid).await, room_id);

    // WhatsApp -> Matrix: the bot encrypts; Alice's client decrypts.
    bob_says(&sim, &jid, "un secret bien gardé").await;
    let seen = alice
        .wait_for(&room_id, "Bob's message", |s| {
            s.body == "Bob: un secret bien gardé"
        })
        .await;
    let raw = alice.raw_event(synapse, &room_id, &seen.event_id).await;
    assert_eq!(raw["type"], "m.room.encrypted", "{raw}");

    // Matrix -> WhatsApp: Alice's client encrypts; the bot decrypts.
    let sent = alice.send_text(&room_id, "motus et bouche cousue").await;
    let raw = alice.raw_event(synapse, &room_id, &sent).await;
    assert_eq!(raw["type"], "m.room.encrypted", "{raw}");
    wait_member_text(&sim, BOB, &jid, "*Alice*: motus et bouche cousue").await;

    // Files too: an encrypted attachment in Matrix, the same bytes on each side.
    let photo = sample_file(21, 40_000);
    bob_sends(
        &sim,
        &jid,
        json!({
            "image": base64::engine::general_purpose::STANDARD.encode(&photo),
            "mime": "image/png",
            "text": "la photo"
        }),
    )
    .await;
    let seen = alice
        .wait_for(&room_id, "Bob's photo", |s| s.msgtype == "m.image")
        .await;
    assert_eq!(seen.body, "Bob: la photo");
    let event = room
        .load_or_fetch_event(&EventId::parse(&seen.event_id).unwrap(), None)
        .await
        .expect("the photo event");
    let Ok(AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomMessage(
        SyncRoomMessageEvent::Original(message),
    ))) = event.raw().deserialize()
    else {
        panic!("not a decrypted message");
    };
    let MessageType::Image(image) = message.content.msgtype else {
        panic!("not an image");
    };
    assert!(
        matches!(image.source, MediaSource::Encrypted(_)),
        "an encrypted file"
    );
    let data = alice
        .client
        .media()
        .get_media_content(
            &MediaRequestParameters {
                source: image.source,
                format: MediaFormat::File,
            },
            false,
        )
        .await
        .expect("download and decrypt");
    assert_eq!(sha256_hex(&data), sha256_hex(&photo));

    // A sticker is an m.sticker with an encrypted file.
    let sticker = sample_file(23, 6_000);
    bob_sends(
        &sim,
        &jid,
        json!({"sticker": base64::engine::general_purpose::STANDARD.encode(&sticker)}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let sticker_event = loop {
        if let Some(event) = alice.events_of_type(&room_id, "m.sticker").await.pop() {
            break event;
        }
        assert!(Instant::now() < deadline, "no sticker came");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let file: matrix_sdk::ruma::events::room::EncryptedFile =
        serde_json::from_value(sticker_event["content"]["file"].clone())
            .unwrap_or_else(|e| panic!("an encrypted sticker ({e}): {sticker_event}"));
    let data = alice
        .client
        .media()
        .get_media_content(
            &MediaRequestParameters {
                source: MediaSource::Encrypted(Box::new(file)),
                format: MediaFormat::File,
            },
            false,
        )
        .await
        .expect("download and decrypt the sticker");
    assert_eq!(sha256_hex(&data), sha256_hex(&sticker));

    let drawing = sample_file(22, 30_000);
    room.send_attachment(
        "dessin.png",
        &mime::IMAGE_PNG,
        drawing.clone(),
        AttachmentConfig::new(),
    )
    .await
    .expect("Alice sends an encrypted file");
    wait_member_message(&sim, BOB, &jid, "Alice's drawing", |m| {
        m["kind"] == "image" && m["media_sha256"] == sha256_hex(&drawing)
    })
    .await;
    bridge.stop().await;
}

/// Everything member `phone` has in `chat`, in order.
async fn member_messages(
    sim: &wa_sim::Simulator,
    phone: &str,
    chat: &str,
) -> Vec<serde_json::Value> {
    let url = format!(
        "{}members/{phone}/messages?chat={}",
        sim.http_url(),
        chat.replace('@', "%40")
    );
    let (status, body) = tokio::task::spawn_blocking(move || http_json("GET", &url, None, None))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    body["messages"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_lost_before_whatsapp_acked_it_is_sent_again_once() {
    init_test_logs();
    let synapse = Synapse::shared();
    let mut scene = linked_scene(synapse, "Perdu", false, "").await;
    let room = scene.start().await;
    let (sim, alice, jid) = (&scene.sim, &scene.alice, &scene.jid);
    let before = alice.send_text(&room, "avant").await;
    wait_member_text(sim, BOB, jid, "*Alice*: avant").await;

    // The next message the bridge's device sends never reaches the server: written
    // to the socket, then the connection fails. It must go out again, once.
    let faults = format!("{}phones/{BRIDGE_PHONE}/devices/1/faults", sim.http_url());
    let (status, body) = control("PUT", faults.clone(), json!({"swallow_messages": 1})).await;
    assert_eq!(status, 200, "{body}");
    let lost = alice.send_text(&room, "perdu en route ?").await;
    let after = alice.send_text(&room, "après").await;
    wait_member_text(sim, BOB, jid, "*Alice*: après").await;
    let (_, counters) = control("GET", faults.clone(), json!({})).await;
    assert_eq!(counters["swallowed"], 1, "{counters}");

    let texts: Vec<String> = member_messages(sim, BOB, jid)
        .await
        .iter()
        .filter(|m| m["from_me"] != true)
        .filter_map(|m| m["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        texts,
        [
            "*Alice*: avant",
            "*Alice*: perdu en route ?",
            "*Alice*: après"
        ],
        "each message once, in order"
    );

    // The same for an edit, a reaction and a deletion: each is lost once on the
    // way, and arrives once.
    use matrix_sdk::ruma::events::reaction::ReactionEventContent;
    use matrix_sdk::ruma::events::relation::Annotation;
    use matrix_sdk::ruma::events::room::message::{ReplacementMetadata, RoomMessageEventContent};
    use matrix_sdk::ruma::EventId;
    let swallow_next = || async {
        let (status, body) = control("PUT", faults.clone(), json!({"swallow_messages": 1})).await;
        assert_eq!(status, 200, "{body}");
    };
    let from_bridge = |kind: &'static str| {
        move |m: &serde_json::Value| m["kind"] == kind && m["from_me"] == false
    };
    swallow_next().await;
    let edit = RoomMessageEventContent::text_plain("avant, corrigé").make_replacement(
        ReplacementMetadata::new(EventId::parse(&before).unwrap(), None),
    );
    alice.send(&room, edit).await;
    let edited = wait_member_message(sim, BOB, jid, "the edit", from_bridge("edit")).await;
    assert_eq!(edited["text"], "*Alice*: avant, corrigé", "{edited}");

    swallow_next().await;
    let joined = alice.wait_joined(&room).await;
    joined
        .send(ReactionEventContent::new(Annotation::new(
            EventId::parse(&after).unwrap(),
            "👍".into(),
        )))
        .await
        .unwrap();
    let reaction =
        wait_member_message(sim, BOB, jid, "the reaction", from_bridge("reaction")).await;
    assert_eq!(reaction["emoji"], "👍", "{reaction}");

    swallow_next().await;
    joined
        .redact(&EventId::parse(&lost).unwrap(), None, None)
        .await
        .unwrap();
    wait_member_message(sim, BOB, jid, "the deletion", from_bridge("revoke")).await;
    // A last text proves the queue went on, and leaves time for a stray double.
    alice.send_text(&room, "fin").await;
    wait_member_text(sim, BOB, jid, "*Alice*: fin").await;

    let (_, counters) = control("GET", faults, json!({})).await;
    assert_eq!(counters["swallowed"], 4, "{counters}");
    let messages = member_messages(sim, BOB, jid).await;
    for kind in ["edit", "reaction", "revoke"] {
        let copies = messages.iter().filter(|m| from_bridge(kind)(m)).count();
        assert_eq!(copies, 1, "one {kind} in {messages:#?}");
    }
    scene.bridge.stop().await;
}

/// Which part of how many a bot's line is (` (2/3)` at its end).
fn part_of(body: &str) -> Option<(usize, usize)> {
    let (_, marker) = body.strip_suffix(')')?.rsplit_once(" (")?;
    let (index, count) = marker.split_once('/')?;
    Some((index.parse().ok()?, count.parse().ok()?))
}

/// Whether the server shows `event_id` as redacted now.
async fn is_redacted(synapse: &Synapse, user: &MatrixUser, room: &str, event_id: &str) -> bool {
    user.raw_event(synapse, room, event_id).await["unsigned"]["redacted_because"].is_object()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whatsapp_deletions_apply_only_from_the_author_or_a_group_admin() {
    init_test_logs();
    let synapse = Synapse::shared();
    let mut scene = linked_scene(synapse, "Suppressions", false, "").await;
    let room = scene.start().await;
    let (sim, alice, jid) = (&scene.sim, &scene.alice, scene.jid.clone());
    add_member(sim, &jid, CAROL, "Carol").await;

    // Bob created the group (its admin); Carol is a plain member.
    let bobs = bob_sends(sim, &jid, json!({"text": "le message de Bob"})).await;
    let bobs_event = alice
        .wait_for(&room, "Bob's message", |s| {
            s.body == "Bob: le message de Bob"
        })
        .await
        .event_id;
    alice.send_text(&room, "le message d'Alice").await;
    let alices_event = alice
        .wait_for(&room, "Alice's own message", |s| {
            s.body == "le message d'Alice" && s.sender == alice.user_id
        })
        .await
        .event_id;
    let alices = wait_member_text(sim, CAROL, &jid, "*Alice*: le message d'Alice").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let carols = member_sends(sim, CAROL, &jid, json!({"text": "le message de Carol"})).await;
    let carols_event = alice
        .wait_for(&room, "Carol's message", |s| {
            s.body == "Carol: le message de Carol"
        })
        .await
        .event_id;

    // Carol's modified client deletes Bob's message twice (as an admin would, and
    // claiming it was hers), and Alice's (sent by the number); Bob, an admin, deletes
    // Alice's too. None of it may touch the Matrix copies.
    member_sends(sim, CAROL, &jid, json!({"revoke": bobs})).await;
    member_sends(
        sim,
        CAROL,
        &jid,
        json!({"message": {"protocolMessage": {
            "type": "REVOKE",
            "key": {"remoteJid": jid, "fromMe": true, "id": bobs}
        }}}),
    )
    .await;
    member_sends(sim, CAROL, &jid, json!({"revoke": alices})).await;
    bob_sends(sim, &jid, json!({"revoke": alices})).await;
    // Relayed in order: once this is in, the deletions before it were judged.
    member_sends(sim, CAROL, &jid, json!({"text": "témoin"})).await;
    alice
        .wait_for(&room, "Carol's witness", |s| s.body == "Carol: témoin")
        .await;
    for (event, whose) in [(&bobs_event, "Bob's"), (&alices_event, "Alice's")] {
        assert!(
            !is_redacted(synapse, alice, &room, event).await,
            "a forged deletion redacted {whose} message"
        );
    }

    // Bob, an admin, deletes Carol's message; Bob deletes his own.
    bob_sends(sim, &jid, json!({"revoke": carols})).await;
    alice.wait_redacted(synapse, &room, &carols_event).await;
    let second = bob_sends(sim, &jid, json!({"text": "je retire ça"})).await;
    let second_event = alice
        .wait_for(&room, "Bob's second message", |s| {
            s.body == "Bob: je retire ça"
        })
        .await
        .event_id;
    bob_sends(sim, &jid, json!({"revoke": second})).await;
    alice.wait_redacted(synapse, &room, &second_event).await;

    // Carol made an admin: now her deletion of Bob's message is WhatsApp's admin delete.
    let (status, body) = control(
        "PUT",
        format!("{}groups/{jid}", sim.http_url()),
        json!({"admins": [CAROL]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    member_sends(sim, CAROL, &jid, json!({"revoke": bobs})).await;
    alice.wait_redacted(synapse, &room, &bobs_event).await;
    assert!(!is_redacted(synapse, alice, &room, &alices_event).await);
    scene.bridge.stop().await;
}

/// Waits until the bot's reactions to `event` are `expected` (`(sender, key)`, sorted).
async fn wait_annotations(
    synapse: &Synapse,
    user: &MatrixUser,
    room: &str,
    event: &str,
    expected: &[(&str, &str)],
) {
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(sender, key)| (sender.to_string(), key.to_string()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = user.annotations(synapse, room, event).await;
        if found == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected {expected:?}, found {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whatsapp_reactions_change_only_the_reactors_own_and_ids_cannot_pose_as_the_bridges() {
    init_test_logs();
    let synapse = Synapse::shared();
    let mut scene = linked_scene(
        synapse,
        "Réactions",
        false,
        "\n[relay]\nreactions_to_matrix = \"reaction\"",
    )
    .await;
    let room = scene.start().await;
    let (sim, alice, jid) = (&scene.sim, &scene.alice, scene.jid.clone());
    let bot = scene.bridge.bot_user.clone();
    add_member(sim, &jid, CAROL, "Carol").await;
    let bobs = bob_sends(sim, &jid, json!({"text": "on se voit samedi ?"})).await;
    let bobs_event = alice
        .wait_for(&room, "Bob's message", |s| {
            s.body == "Bob: on se voit samedi ?"
        })
        .await
        .event_id;

    // Carol's modified client sends a text under the key the bridge finds its own
    // 👍 on Bob's message by: were it taken, nobody's 👍 would show.
    member_sends(
        sim,
        CAROL,
        &jid,
        json!({"text": "je prends la place", "id": format!("wa-annotation:{bobs}:👍")}),
    )
    .await;
    bob_sends(sim, &jid, json!({"reaction": {"to": bobs, "emoji": "👍"}})).await;
    wait_annotations(synapse, alice, &room, &bobs_event, &[(&bot, "👍")]).await;

    // Carol takes back "Bob's" reaction: a reaction names only its message, so it is
    // hers, and she had none.
    member_sends(
        sim,
        CAROL,
        &jid,
        json!({"message": {"reactionMessage": {
            "key": {"remoteJid": jid, "fromMe": false, "id": bobs,
                    "participant": format!("{BOB}@s.whatsapp.net")},
            "text": ""
        }}}),
    )
    .await;
    member_sends(
        sim,
        CAROL,
        &jid,
        json!({"reaction": {"to": bobs, "emoji": "❤️"}}),
    )
    .await;
    wait_annotations(
        synapse,
        alice,
        &room,
        &bobs_event,
        &[(&bot, "❤️"), (&bot, "👍")],
    )
    .await;
    member_sends(
        sim,
        CAROL,
        &jid,
        json!({"reaction": {"to": bobs, "emoji": ""}}),
    )
    .await;
    wait_annotations(synapse, alice, &room, &bobs_event, &[(&bot, "👍")]).await;

    member_sends(sim, CAROL, &jid, json!({"text": "témoin"})).await;
    alice
        .wait_for(&room, "Carol's witness", |s| s.body == "Carol: témoin")
        .await;
    assert!(
        !alice
            .seen_in(&room)
            .iter()
            .any(|s| s.body.contains("je prends la place")),
        "a message under a forged id was relayed"
    );
    scene.bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn people_showing_the_same_name_are_told_apart_on_both_sides() {
    init_test_logs();
    let synapse = Synapse::shared();
    let mut scene = linked_scene(synapse, "Homonymes", false, "").await;
    let room = scene.start().await;
    let (sim, alice, jid) = (&scene.sim, &scene.alice, scene.jid.clone());
    // Carol's push name is Alice's, its first letter a Cyrillic look-alike.
    add_member(sim, &jid, CAROL, "\u{410}lice").await;

    bob_says(sim, &jid, "salut").await;
    alice
        .wait_for(&room, "Bob's line", |s| s.body == "Bob: salut")
        .await;
    alice.send_text(&room, "bonjour").await;
    wait_member_text(sim, CAROL, &jid, "*Alice*: bonjour").await;

    member_sends(sim, CAROL, &jid, json!({"text": "c'est moi, Alice"})).await;
    alice
        .wait_for(&room, "Carol told apart", |s| {
            s.body == "\u{410}lice (+33…2222): c'est moi, Alice"
        })
        .await;
    alice.send_text(&room, "non, c'est moi").await;
    let told_apart = format!("*Alice ({})*: non, c'est moi", alice.user_id);
    wait_member_text(sim, BOB, &jid, &told_apart).await;
    // Nobody shares Bob's name: he stays as he is.
    bob_says(sim, &jid, "et moi Bob").await;
    alice
        .wait_for(&room, "Bob's second line", |s| s.body == "Bob: et moi Bob")
        .await;
    scene.bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_numbers_own_whatsapp_web_is_relayed_whatever_its_ids_look_like() {
    init_test_logs();
    let synapse = Synapse::shared();
    let mut scene = linked_scene(synapse, "Web", false, "").await;
    let room = scene.start().await;
    let (sim, alice, jid) = (&scene.sim, &scene.alice, scene.jid.clone());
    // The association also uses its number from WhatsApp Web: another linked device.
    create_member(sim, BRIDGE_PHONE, "Association").await;
    alice.send_text(&room, "depuis Matrix").await;
    wait_member_text(sim, BOB, &jid, "*Alice*: depuis Matrix").await;
    // WhatsApp Web's ids are `3EB0` + hex: one can start like the bridge's own.
    member_sends(
        sim,
        BRIDGE_PHONE,
        &jid,
        json!({"text": "depuis WhatsApp Web", "id": "3EB0BE0123456789ABCDEF"}),
    )
    .await;
    alice
        .wait_for(&room, "the Web client's message", |s| {
            s.body.ends_with(": depuis WhatsApp Web")
        })
        .await;
    let from_bot = alice.history_from(&room, &scene.bridge.bot_user).await;
    assert!(
        !from_bot.iter().any(|line| line.contains("depuis Matrix")),
        "the bridge's own message came back: {from_bot:?}"
    );
    scene.bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_media_urls_sizes_and_keys_never_reach_the_host_or_block_the_group() {
    init_test_logs();
    use base64::Engine as _;
    let b64 = |data: &[u8]| base64::engine::general_purpose::STANDARD.encode(data);
    let synapse = Synapse::shared();
    let mut scene = linked_scene(synapse, "Médias", false, "\n[relay]\nmax_file_mb = 1").await;
    let room = scene.start().await;
    let (sim, alice, jid) = (&scene.sim, &scene.alice, scene.jid.clone());

    // A local listener that accepts and never answers: the address a modified
    // client names as its photo's `staticUrl` and `url`.
    let trap = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trap_url = format!("http://{}/photo.jpg", trap.local_addr().unwrap());
    let visits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = visits.clone();
    let trap_task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = trap.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream);
        }
    });
    let photo = sample_file(7, 30_000);
    bob_sends(
        sim,
        &jid,
        json!({
            "message": {"imageMessage": {
                "mimetype": "image/jpeg", "caption": "la photo",
                "staticUrl": trap_url, "url": trap_url
            }},
            "upload": {"type": "image", "data": b64(&photo)}
        }),
    )
    .await;
    let image = alice
        .wait_for(&room, "Bob's photo", |s| s.msgtype == "m.image")
        .await;
    let (_, data) = matrix_file(synapse, alice, &room, &image.event_id).await;
    assert_eq!(data, photo, "the photo, fetched from WhatsApp's media host");
    assert_eq!(
        visits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the trap was visited"
    );
    trap_task.abort();

    // 3 MB declared as 100 bytes, with max_file_mb = 1: cut off, and said.
    let big = sample_file(8, 3_000_000);
    bob_sends(
        sim,
        &jid,
        json!({
            "message": {"documentMessage": {
                "mimetype": "application/octet-stream", "fileName": "petit.bin",
                "fileLength": "100"
            }},
            "upload": {"type": "document", "data": b64(&big)}
        }),
    )
    .await;
    alice
        .wait_for(&room, "the notice for the oversize file", |s| {
            s.body
                == "Bob sent petit.bin, which is larger than its message said (100 B): \
                    not relayed, see it in WhatsApp."
        })
        .await;

    // A file under a wrong media key never decrypts: said at once, and the text
    // behind it follows.
    bob_sends(
        sim,
        &jid,
        json!({
            "message": {"imageMessage": {
                "mimetype": "image/jpeg", "mediaKey": b64(&[7u8; 32])
            }},
            "upload": {"type": "image", "data": b64(&photo)}
        }),
    )
    .await;
    bob_says(sim, &jid, "après la photo illisible").await;
    alice
        .wait_for(&room, "the notice for the unreadable photo", |s| {
            s.body == "Bob sent a photo that could not be fetched from WhatsApp: see it there."
        })
        .await;
    alice
        .wait_for(&room, "the text behind it", |s| {
            s.body == "Bob: après la photo illisible"
        })
        .await;
    scene.bridge.stop().await;
}

/// The peak resident memory of process `pid` so far (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_20_mb_file_declared_as_100_bytes_is_cut_off_without_filling_memory() {
    init_test_logs();
    use base64::Engine as _;
    let b64 = |data: &[u8]| base64::engine::general_purpose::STANDARD.encode(data);
    let synapse = Synapse::shared();
    let scene = linked_scene(synapse, "Mémoire", false, "\n[relay]\nmax_file_mb = 1").await;
    let (sim, alice, jid) = (&scene.sim, &scene.alice, scene.jid.clone());
    // The real binary, so that its memory is its own (killed however the test ends).
    let (child, room) = scene.run_until_bridged().await;
    let child = KillOnDrop(child);

    // A file that fits first: the download path has run once when the peak is read.
    let small = sample_file(9, 600_000);
    bob_sends(
        sim,
        &jid,
        json!({"document": b64(&small), "file_name": "petit.bin"}),
    )
    .await;
    let document = alice
        .wait_for(&room, "the small file", |s| s.msgtype == "m.file")
        .await;
    let (_, data) = matrix_file(synapse, alice, &room, &document.event_id).await;
    assert_eq!(data, small);
    let before = peak_rss(child.0.id());

    const BIG: usize = 20_000_000;
    let big = sample_file(10, BIG);
    bob_sends(
        sim,
        &jid,
        json!({
            "message": {"documentMessage": {
                "mimetype": "application/octet-stream", "fileName": "menteur.bin",
                "fileLength": "100"
            }},
            "upload": {"type": "document", "data": b64(&big)}
        }),
    )
    .await;
    alice
        .wait_for(&room, "the notice for the oversize file", |s| {
            s.body
                == "Bob sent menteur.bin, which is larger than its message said (100 B): \
                    not relayed, see it in WhatsApp."
        })
        .await;
    let grown = peak_rss(child.0.id()).saturating_sub(before);
    eprintln!(
        "peak memory grew by {} kB for a 20 MB file cut at 1 MB",
        grown / 1024
    );
    // Cut at 1 MB: a few MB of buffers at most, where holding the file would take
    // 20 MB and more.
    assert!(
        grown < (BIG / 4) as u64,
        "the peak memory grew by {grown} bytes for a file cut at 1 MB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_matrix_downloads_and_uploads_delay_only_their_own_room() {
    init_test_logs();
    use matrix_sdk::ruma::events::room::message::{
        FileMessageEventContent, MessageType, RoomMessageEventContent,
    };
    let synapse = Synapse::shared();
    let mut scene = linked_scene(synapse, "Lent", false, "").await;
    // The bot reaches the homeserver through a proxy that can hold one file back.
    let proxy = SlowProxy::start(&synapse.url).await;
    let config = std::fs::read_to_string(&scene.bridge.config_path).unwrap();
    let config = config.replace(
        &format!("homeserver = \"{}\"", synapse.url),
        &format!("homeserver = \"{}\"", proxy.url),
    );
    std::fs::write(&scene.bridge.config_path, config).unwrap();
    let other_jid = scene.second_group("Vif").await;
    let room = scene.start().await;
    let other_room = scene.room_joined(&other_jid).await;
    let (sim, alice, jid) = (&scene.sim, &scene.alice, scene.jid.clone());

    // The homeserver takes 20 s to serve Alice's file to the bot.
    let notes = sample_file(5, 4_000);
    let uploaded = alice
        .client
        .media()
        .upload(&mime::TEXT_PLAIN, notes.clone(), None)
        .await
        .expect("upload the file");
    let media_id = uploaded
        .content_uri
        .as_str()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    proxy.slow_down(&media_id, Duration::from_secs(20));
    alice
        .send(
            &room,
            RoomMessageEventContent::new(MessageType::File(FileMessageEventContent::plain(
                "notes.txt".into(),
                uploaded.content_uri,
            ))),
        )
        .await;
    alice.send_text(&room, "après le fichier").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.held() == 0 {
        assert!(
            Instant::now() < deadline,
            "the bot never asked for the file"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = Instant::now();
    alice.send_text(&other_room, "dans l'autre salon").await;
    wait_member_text(sim, BOB, &other_jid, "*Alice*: dans l'autre salon").await;
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "the other room waited for the download: {:?}",
        sent.elapsed()
    );
    // Its own room keeps its order: the file, then the text behind it.
    wait_member_text(sim, BOB, &jid, "*Alice*: après le fichier").await;
    let messages = member_messages(sim, BOB, &jid).await;
    let file_at = messages
        .iter()
        .position(|m| m["kind"] == "document" && m["media_sha256"] == sha256_hex(&notes));
    let text_at = messages
        .iter()
        .position(|m| m["text"] == "*Alice*: après le fichier");
    assert!(file_at.is_some() && file_at < text_at, "{messages:#?}");

    // The other way: the homeserver takes 20 s to take a WhatsApp photo's upload.
    use base64::Engine as _;
    proxy.slow_down("/upload", Duration::from_secs(20));
    let photo = sample_file(8, 6_000);
    bob_sends(
        sim,
        &jid,
        json!({"image": base64::engine::general_purpose::STANDARD.encode(&photo)}),
    )
    .await;
    bob_says(sim, &jid, "après la photo").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.held() < 2 {
        assert!(
            Instant::now() < deadline,
            "the bot never uploaded the photo"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = Instant::now();
    bob_says(sim, &other_jid, "dans l'autre groupe").await;
    alice
        .wait_for(&other_room, "the text of the other group", |s| {
            s.body == "Bob: dans l'autre groupe"
        })
        .await;
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "the other group waited for the upload: {:?}",
        sent.elapsed()
    );
    let text = alice
        .wait_for(&room, "the text behind the photo", |s| {
            s.body == "Bob: après la photo"
        })
        .await;
    let seen = alice.seen_in(&room);
    let photo_at = seen.iter().position(|s| s.msgtype == "m.image");
    let text_at = seen.iter().position(|s| s.event_id == text.event_id);
    assert!(photo_at.is_some() && photo_at < text_at, "{seen:?}");
    scene.bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_whatsapp_download_delays_only_its_own_group() {
    init_test_logs();
    use base64::Engine as _;
    let synapse = Synapse::shared();
    let mut scene = linked_scene(synapse, "Lente", false, "").await;
    let other_jid = scene.second_group("Rapide").await;
    let room = scene.start().await;
    let other_room = scene.room_joined(&other_jid).await;
    let (sim, alice, jid) = (&scene.sim, &scene.alice, scene.jid.clone());

    // WhatsApp's media host answers after 20 s from now on.
    let (status, body) = control(
        "PUT",
        format!("{}media/faults", sim.http_url()),
        json!({"delay_ms": 20_000}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let photo = sample_file(9, 20_000);
    bob_sends(
        sim,
        &jid,
        json!({"image": base64::engine::general_purpose::STANDARD.encode(&photo)}),
    )
    .await;
    bob_says(sim, &jid, "après la photo").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = Instant::now();
    bob_says(sim, &other_jid, "dans l'autre groupe").await;
    alice
        .wait_for(&other_room, "the text of the other group", |s| {
            s.body == "Bob: dans l'autre groupe"
        })
        .await;
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "the other group waited for the download: {:?}",
        sent.elapsed()
    );
    control(
        "PUT",
        format!("{}media/faults", sim.http_url()),
        json!({"delay_ms": 0}),
    )
    .await;
    // Its own group keeps its order: the photo, then the text behind it.
    let text = alice
        .wait_for(&room, "the text behind the photo", |s| {
            s.body == "Bob: après la photo"
        })
        .await;
    let seen = alice.seen_in(&room);
    let photo_at = seen.iter().position(|s| s.msgtype == "m.image");
    let text_at = seen.iter().position(|s| s.event_id == text.event_id);
    assert!(photo_at.is_some() && photo_at < text_at, "{seen:?}");
    scene.bridge.stop().await;
}
