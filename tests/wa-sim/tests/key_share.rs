//! The simulated phone shares its app-state sync key with each newly linked
//! device, so that whatsapp-rust does not wait for it (up to 10 s) before
//! `Event::Connected`: after a QR pairing, for `POST /members`, and after a
//! reconnect.

mod common;

use std::time::{Duration, Instant};

use common::{http, init_logs, spawn_client, start_sim};
use serde_json::json;
use whatsapp_rust::types::events::Event;

/// Well under the client's 10 s key-share grace (plus login and sync).
const FAST: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linked_device_gets_the_key_and_connects_without_waiting() {
    init_logs();
    let sim = start_sim().await;

    let mut client = spawn_client(&sim).await;
    let qr = client
        .wait_for(20, "PairingQrCode", |e| match e {
            Event::PairingQrCode(q) => Some(q.code.clone()),
            _ => None,
        })
        .await;
    let started = Instant::now();
    sim.scan("33611111111", &qr).await.expect("scan links");
    client
        .wait_for(45, "Connected", |e| {
            matches!(e, Event::Connected(_)).then_some(())
        })
        .await;
    let pairing = started.elapsed();
    eprintln!("QR scan -> Connected: {pairing:?}");

    // The key is in the device's store, and the share was acknowledged.
    let keys = client
        .backend
        .get_latest_sync_key_id()
        .await
        .expect("store answers");
    assert!(keys.is_some(), "no app-state sync key stored");
    acknowledged(&sim, "33611111111").await;

    // Reconnect (same client): no second wait.
    let (status, body) = http(
        sim.addr(),
        "POST",
        "/phones/33611111111/devices/1/disconnect",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let started = Instant::now();
    client
        .wait_for(45, "Connected after reconnect", |e| {
            matches!(e, Event::Connected(_)).then_some(())
        })
        .await;
    let reconnect = started.elapsed();
    eprintln!("disconnect -> Connected: {reconnect:?}");

    // (A restart, a new client on the same store, still waits once when the
    // client has no push name: whatsapp-rust keeps "keys received" in memory
    // only, and the phone shares its key once per linked device.)
    client.handle.shutdown().await;

    assert!(pairing < FAST, "pairing took {pairing:?}");
    // Includes the client's reconnect backoff (about 1 s).
    assert!(reconnect < FAST, "reconnect took {reconnect:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_creation_is_fast() {
    init_logs();
    let sim = start_sim().await;
    let started = Instant::now();
    let (status, body) = http(
        sim.addr(),
        "POST",
        "/members",
        Some(json!({ "phone": "33611111111", "name": "Alice" })),
    )
    .await;
    let took = started.elapsed();
    eprintln!("POST /members: {took:?}");
    assert_eq!(status, 201, "{body}");
    assert!(took < FAST, "member creation took {took:?}");

    // The key share is not in the member's log (no one wrote it), and the
    // phone saw it acknowledged.
    let (status, log) = http(sim.addr(), "GET", "/members/33611111111/messages", None).await;
    assert_eq!(status, 200, "{log}");
    assert_eq!(log["messages"], json!([]), "{log}");
    acknowledged(&sim, "33611111111").await;
}

/// Waits until device 1 of `phone` has acknowledged everything routed to it
/// (the key share among it).
async fn acknowledged(sim: &wa_sim::Simulator, phone: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let info = sim.phone_info(phone).unwrap();
        if info["devices"][0]["queued"] == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "key share never acknowledged: {info}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
