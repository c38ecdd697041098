//! Fault injection on the Matrix side, with the in-process fake WhatsApp network:
//! homeserver outage during a burst, the homeserver's rate limit, and a message the
//! homeserver refuses for good. Each asserts the exact messages on the far side.
#![recursion_limit = "256"]

mod common;

use std::time::Duration;

use common::bridge::{unique, TestBridge};
use common::matrix_user::MatrixUser;
use common::synapse::Synapse;

/// Starts a bridge on `synapse` for one group inviting a new user; returns them.
async fn setup(synapse: &Synapse) -> (TestBridge, MatrixUser, String, String) {
    let alice = MatrixUser::new(synapse, &unique("alice"), Some("Alice")).await;
    let mut bridge = TestBridge::new(synapse, &[]);
    let jid = bridge.network.create_group("Famille");
    bridge.write_group(
        &unique("faults"),
        &jid,
        &format!("invite = [\"{}\"]", alice.user_id),
    );
    bridge.start().await;
    let room = bridge.wait_room(&jid).await;
    alice.wait_joined(&room).await;
    (bridge, alice, jid, room)
}

/// Polls the room's server-side history until the bot posted `count` messages.
async fn wait_bot_history(
    alice: &MatrixUser,
    room: &str,
    bot: &str,
    count: usize,
    timeout: Duration,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let bodies: Vec<String> = alice.history_from(room, bot).await;
        if bodies.len() >= count || tokio::time::Instant::now() > deadline {
            return bodies;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn homeserver_outage_during_a_burst_loses_and_doubles_nothing() {
    const BURST: usize = 200;
    let mut synapse = Synapse::start();
    let (mut bridge, alice, jid, room) = setup(&synapse).await;

    for n in 0..BURST / 2 {
        bridge
            .network
            .post(&jid, "33611111111", Some("Bob"), &format!("w{n}"));
    }
    synapse.stop();
    for n in BURST / 2..BURST {
        bridge
            .network
            .post(&jid, "33611111111", Some("Bob"), &format!("w{n}"));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (waiting, _) = bridge.service().pending();
    assert!(
        waiting > 0,
        "messages wait in the outbox while the homeserver is down"
    );
    tokio::task::block_in_place(|| synapse.restart());

    let bodies = wait_bot_history(
        &alice,
        &room,
        &bridge.bot_user,
        BURST,
        Duration::from_secs(120),
    )
    .await;
    let expected: Vec<String> = (0..BURST).map(|n| format!("Bob: w{n}")).collect();
    assert_eq!(bodies, expected);
    assert_eq!(bridge.service().pending(), (0, 0));
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn homeserver_rate_limit_delays_but_keeps_every_message() {
    const COUNT: usize = 16; // Synapse's default burst is 10, then 0.2/s
    let synapse = Synapse::start_with_default_message_rate_limit();
    let (mut bridge, alice, jid, room) = setup(&synapse).await;
    for n in 0..COUNT {
        bridge
            .network
            .post(&jid, "33611111111", Some("Bob"), &format!("r{n}"));
    }
    let bodies = wait_bot_history(
        &alice,
        &room,
        &bridge.bot_user,
        COUNT,
        Duration::from_secs(150),
    )
    .await;
    let expected: Vec<String> = (0..COUNT).map(|n| format!("Bob: r{n}")).collect();
    assert_eq!(bodies, expected);
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_refused_for_good_is_set_aside_with_a_notice() {
    let synapse = Synapse::shared();
    let (mut bridge, alice, jid, room) = setup(synapse).await;
    // Matrix events are limited to 64 KiB: this one can never be posted.
    let huge = "x".repeat(70_000);
    bridge.network.post(&jid, "33611111111", Some("Bob"), &huge);
    bridge
        .network
        .post(&jid, "33611111111", Some("Bob"), "after the huge one");
    alice
        .wait_for(&room, "the next message", |s| {
            s.body == "Bob: after the huge one"
        })
        .await;
    let notice = alice
        .wait_for(&room, "a notice about the refused message", |s| {
            s.msgtype == "m.notice"
        })
        .await;
    assert!(
        notice.body.contains("could not be posted"),
        "{}",
        notice.body
    );
    assert_eq!(bridge.service().pending(), (0, 0));
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_matrix_events_do_not_stop_the_relay() {
    let synapse = Synapse::shared();
    let (mut bridge, alice, jid, room) = setup(synapse).await;
    let token = alice.client.access_token().unwrap();
    // Malformed message events Synapse accepts: fields of the wrong type or missing.
    let malformed = [
        serde_json::json!({ "msgtype": "org.example.weird", "body": 5 }),
        serde_json::json!({ "body": "no msgtype" }),
        serde_json::json!({ "msgtype": "m.text", "body": "x", "m.relates_to": "garbage" }),
        serde_json::json!({ "msgtype": "m.text", "body": "x", "format": "org.matrix.custom.html", "formatted_body": 7 }),
    ];
    let mut accepted = 0;
    for (n, content) in malformed.iter().enumerate() {
        let (status, body) = common::synapse::http_json(
            "PUT",
            &synapse.api(&format!(
                "/_matrix/client/v3/rooms/{room}/send/m.room.message/bad{n}"
            )),
            Some(&token),
            Some(content),
        );
        // Synapse validates some fields itself; what it lets through must not hurt.
        assert!(status == 200 || status == 400, "{status} {body}");
        accepted += usize::from(status == 200);
    }
    assert!(
        accepted >= 2,
        "too few malformed events got through to test anything"
    );
    alice.send_text(&room, "still alive").await;
    bridge
        .wait_whatsapp_text(&jid, "*Alice*: still alive")
        .await;
    // Lenient parsing may relay a body that is a valid text; nothing else gets through.
    let texts = bridge.network.bridge_texts(&jid);
    assert_eq!(
        texts.last().map(String::as_str),
        Some("*Alice*: still alive")
    );
    assert!(
        texts
            .iter()
            .all(|t| t == "*Alice*: x" || t == "*Alice*: still alive"),
        "{texts:?}"
    );
    bridge.stop().await;
}

/// `GET path` on a local HTTP server; returns (status line, body).
fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_waiting_queue_while_whatsapp_is_away() {
    let synapse = Synapse::shared();
    let addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let alice = MatrixUser::new(synapse, &unique("alice"), Some("Alice")).await;
    let mut bridge = TestBridge::new(synapse, &[]);
    bridge.append_config(&format!("[metrics]\nlisten = \"{addr}\""));
    let jid = bridge.network.create_group("Famille");
    bridge.write_group(
        &unique("metrics"),
        &jid,
        &format!("invite = [\"{}\"]", alice.user_id),
    );
    bridge.start().await;
    let room = bridge.wait_room(&jid).await;
    alice.wait_joined(&room).await;
    alice.send_text(&room, "un").await;
    bridge.wait_whatsapp_text(&jid, "*Alice*: un").await;

    bridge.network.log_out("test");
    for text in ["deux", "trois", "quatre"] {
        alice.send_text(&room, text).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let body = loop {
        let (status, body) = tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
            .await
            .unwrap();
        assert_eq!(status, "HTTP/1.1 200 OK");
        if body.contains("passerelle_queue_messages{direction=\"to_whatsapp\"} 3") {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for line in [
        "passerelle_whatsapp_connected 0",
        "passerelle_relayed_messages_total{direction=\"to_whatsapp\"} 1",
        "passerelle_groups_approved 1",
        "passerelle_groups_bridged 1",
        "passerelle_queue_messages{direction=\"to_matrix\"} 0",
    ] {
        assert!(body.lines().any(|l| l == line), "{line} missing:\n{body}");
    }
    let (status, _) = tokio::task::spawn_blocking(move || http_get(addr, "/other"))
        .await
        .unwrap();
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    bridge.stop().await;
}
