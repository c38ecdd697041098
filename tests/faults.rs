//! Fault injection on the Matrix side, with the in-process fake WhatsApp network: a
//! message the homeserver refuses for good, malformed Matrix events, the waiting
//! queue in the metrics. (The homeserver outage and rate-limit tests run through
//! wa-sim, in `whatsapp_e2e.rs`.) Each asserts the exact messages on the far side.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_refused_for_good_is_set_aside_with_a_notice() {
    let synapse = Synapse::shared();
    let (mut bridge, alice, jid, room) = setup(synapse).await;
    // Matrix events are limited to 64 KiB: this one can never be posted (a text
    // that long is shortened to fit; a sender's name is not, yet).
    let huge = "x".repeat(70_000);
    bridge
        .network
        .post(&jid, "33611111111", Some(&huge), "hello");
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
        let oldest_waits = body.lines().any(|l| {
            l.strip_prefix("passerelle_queue_oldest_age_seconds{direction=\"to_whatsapp\"} ")
                .and_then(|age| age.parse::<u64>().ok())
                .is_some_and(|age| age >= 1)
        });
        if body.contains("passerelle_queue_messages{direction=\"to_whatsapp\"} 3") && oldest_waits {
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
