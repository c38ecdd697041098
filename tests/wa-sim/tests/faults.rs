//! Device faults driven by the control API, against real whatsapp-rust clients:
//! the phone logs a device out (`Event::LoggedOut`, no way back in), a temporary
//! ban and an outdated client refused at login (`TemporaryBan`,
//! `ClientOutdated`), an abrupt disconnect (the client reconnects and gets what
//! was sent meanwhile exactly once), and a burst of group messages through a
//! connection that keeps dropping and gets malformed stanzas (nothing lost,
//! nothing twice).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{TestClient, http, init_logs, paired_client, spawn_client_with, start_sim};
use serde_json::json;
use whatsapp_rust::Jid;
use whatsapp_rust::types::events::{ConnectFailureReason, Event, TempBanReason};

/// Waits until the client's `Client::run` loop has returned.
async fn run_stops(client: &mut TestClient, secs: u64) {
    tokio::time::timeout(Duration::from_secs(secs), &mut client.handle)
        .await
        .expect("Client::run stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logged_out_device_gets_logged_out_and_cannot_log_in_again() {
    init_logs();
    let sim = start_sim().await;
    let phone = "33611111111";
    let mut client = paired_client(&sim, phone).await;

    let (status, body) = http(
        sim.addr(),
        "POST",
        &format!("/phones/{phone}/devices/1/logout"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["was_online"], true);

    let lo = client
        .wait_for(10, "LoggedOut", |e| match e {
            Event::LoggedOut(l) => Some(l.clone()),
            _ => None,
        })
        .await;
    assert!(!lo.on_connect);
    assert_eq!(lo.reason, ConnectFailureReason::LoggedOut);
    let raw = lo.raw.expect("stanza kept");
    assert_eq!(raw.tag, "stream:error");
    let conflict = raw.get_optional_child("conflict").expect("<conflict>");
    assert_eq!(
        conflict.attrs.get("type").map(|v| v.as_str().into_owned()),
        Some("device_removed".to_string())
    );
    run_stops(&mut client, 10).await;
    let info = sim.phone_info(phone).unwrap();
    assert_eq!(info["devices"], json!([]), "{info}");

    // The same store cannot log in again: <failure reason="401"> at login.
    let mut again = spawn_client_with(&sim, client.backend.clone()).await;
    let lo = again
        .wait_for(20, "LoggedOut at login", |e| match e {
            Event::LoggedOut(l) => Some(l.clone()),
            _ => None,
        })
        .await;
    assert!(lo.on_connect);
    assert_eq!(lo.reason, ConnectFailureReason::LoggedOut);
    run_stops(&mut again, 10).await;

    let (status, _) = http(
        sim.addr(),
        "POST",
        &format!("/phones/{phone}/devices/1/logout"),
        None,
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banned_and_outdated_devices_are_refused_at_login() {
    init_logs();
    let sim = start_sim().await;
    let (mut banned, mut outdated) = tokio::join!(
        paired_client(&sim, "33611111111"),
        paired_client(&sim, "33622222222")
    );

    let (status, body) = http(
        sim.addr(),
        "POST",
        "/phones/33611111111/devices/1/ban",
        Some(json!({ "code": 101, "expire": 600 })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(
        sim.addr(),
        "POST",
        "/phones/33622222222/devices/1/outdated",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Both connections are dropped; the clients reconnect and are refused.
    let ban = banned
        .wait_for(20, "TemporaryBan", |e| match e {
            Event::TemporaryBan(b) => Some(b.clone()),
            _ => None,
        })
        .await;
    assert_eq!(ban.code, TempBanReason::SentToTooManyPeople);
    let secs = ban.expire.num_seconds();
    assert!((590..=600).contains(&secs), "expire {secs}");
    outdated
        .wait_for(20, "ClientOutdated", |e| {
            matches!(e, Event::ClientOutdated(_)).then_some(())
        })
        .await;
    run_stops(&mut banned, 10).await;
    run_stops(&mut outdated, 10).await;
}

/// Message ids and texts the client reports within `secs` seconds.
async fn collect(client: &mut TestClient, secs: u64) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, client.events.recv()).await {
        if let Event::Messages(batch) = &*event {
            for m in batch.messages.iter() {
                use whatsapp_rust::prelude::MessageExt;
                if let Some(t) = m.message.text_content() {
                    out.push((m.info.id.to_string(), t.to_string()));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnected_device_reconnects_and_gets_messages_sent_meanwhile_once() {
    init_logs();
    let sim = start_sim().await;
    let (a, mut b) = tokio::join!(
        paired_client(&sim, "33611111111"),
        paired_client(&sim, "33622222222")
    );
    let to_b: Jid = "33622222222@s.whatsapp.net".parse().unwrap();
    a.handle
        .client()
        .send_text(to_b.clone(), "before")
        .await
        .unwrap();
    b.wait_for(20, "first message", |e| {
        common::received_text(e).filter(|(t, _)| t == "before")
    })
    .await;

    let (status, body) = http(
        sim.addr(),
        "POST",
        "/phones/33622222222/devices/1/disconnect",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["was_online"], true);
    let reason = b
        .wait_for(10, "Disconnected", |e| match e {
            Event::Disconnected(d) => Some(d.reason.clone()),
            _ => None,
        })
        .await;
    eprintln!("Disconnected reason: {reason:?}");

    // B's client waits ~1 s (backoff) before reconnecting: this one is queued,
    // and comes (offline drain) before B's `Connected`.
    a.handle
        .client()
        .send_text(to_b.clone(), "meanwhile")
        .await
        .unwrap();
    let texts = collect(&mut b, 8).await;
    let meanwhile: Vec<_> = texts.iter().filter(|(_, t)| t == "meanwhile").collect();
    assert_eq!(meanwhile.len(), 1, "{texts:?}");
    assert!(!texts.iter().any(|(_, t)| t == "before"), "{texts:?}");
    let info = sim.phone_info("33622222222").unwrap();
    assert_eq!(info["devices"][0]["online"], true, "{info}");
    assert_eq!(info["devices"][0]["queued"], 0, "{info}");

    a.handle.shutdown().await;
    b.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_burst_survives_connection_drops_and_malformed_stanzas() {
    init_logs();
    let sim = start_sim().await;
    let (alice, bob) = tokio::join!(
        sim.create_member("33611111111", "Alice"),
        sim.create_member("33622222222", "Bob")
    );
    let (alice, bob) = (alice.unwrap(), bob.unwrap());
    let (group, _) = sim.create_group("Burst", "33611111111", &["33622222222".to_string()]);

    let (status, body) = http(
        sim.addr(),
        "PUT",
        "/phones/33622222222/devices/1/faults",
        Some(json!({ "drop_every": 5, "malformed_every": 4 })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["drop_every"], 5);

    // Paced so that the burst spans several drops and reconnects (drops count
    // stanzas routed while Bob is online; what piles up meanwhile is redelivered
    // at his next login).
    let mut sent = Vec::new();
    for i in 0..30 {
        sent.push(
            alice
                .send_text(&group, &format!("burst {i}"))
                .await
                .unwrap(),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let got = loop {
        let got = bob.received(Some(&group));
        if sent.iter().all(|id| got.iter().any(|r| &r.id == id))
            || tokio::time::Instant::now() > deadline
        {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut count: HashMap<&str, usize> = HashMap::new();
    for r in &got {
        *count.entry(r.id.as_str()).or_default() += 1;
    }
    for id in &sent {
        assert_eq!(count.get(id.as_str()), Some(&1), "id {id}: got {got:?}");
    }
    assert_eq!(got.len(), 30, "{got:?}");
    // Everything routed to Bob was acknowledged in the end: nothing left queued.
    let mut queued = serde_json::Value::Null;
    for _ in 0..100 {
        queued = sim.phone_info("33622222222").unwrap()["devices"][0]["queued"].clone();
        if queued == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(queued, 0, "Bob's outbox");

    let (status, faults) = http(
        sim.addr(),
        "GET",
        "/phones/33622222222/devices/1/faults",
        None,
    )
    .await;
    assert_eq!(status, 200);
    eprintln!("faults: {faults}");
    assert!(faults["drops"].as_u64().unwrap() >= 2, "{faults}");
    assert!(faults["malformed_sent"].as_u64().unwrap() >= 2, "{faults}");
}
