//! Simulated members through the control API: `POST /members` starts a
//! whatsapp-rust client linked to a new number, `POST /members/{phone}/messages`
//! makes it send, `GET /members/{phone}/messages` shows what it decrypted.

mod common;

use std::time::Duration;

use common::{http, init_logs, start_sim};
use serde_json::json;

async fn create(sim: &wa_sim::Simulator, phone: &str, name: &str) {
    let (status, body) = http(
        sim.addr(),
        "POST",
        "/members",
        Some(json!({ "phone": phone, "name": name })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["jid"], format!("{phone}:1@s.whatsapp.net"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_exchange_a_direct_message() {
    init_logs();
    let sim = start_sim().await;
    tokio::join!(
        create(&sim, "33611111111", "Alice"),
        create(&sim, "33622222222", "Bob")
    );
    let (status, _) = http(
        sim.addr(),
        "POST",
        "/members",
        Some(json!({ "phone": "33611111111", "name": "Again" })),
    )
    .await;
    assert_eq!(status, 409);

    let (status, sent) = http(
        sim.addr(),
        "POST",
        "/members/33611111111/messages",
        Some(json!({ "to": "33622222222", "text": "salut Bob" })),
    )
    .await;
    assert_eq!(status, 200, "{sent}");
    let id = sent["id"].as_str().expect("message id").to_string();

    let path = "/members/33622222222/messages?chat=33611111111%40s.whatsapp.net";
    let mut last = serde_json::Value::Null;
    for _ in 0..100 {
        let (status, body) = http(sim.addr(), "GET", path, None).await;
        assert_eq!(status, 200, "{body}");
        if let Some(m) = body["messages"].as_array().and_then(|a| a.first()) {
            assert_eq!(m["id"], id.as_str());
            assert_eq!(m["text"], "salut Bob");
            assert_eq!(m["kind"], "text");
            assert_eq!(m["from_me"], false);
            assert!(
                m["sender"].as_str().unwrap().starts_with("33611111111@"),
                "{m}"
            );
            return;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("Bob never received the message: {last}");
}
