//! Groups with simulated members: `POST /groups` then `POST /groups/{jid}/messages`;
//! the two other members' clients fetch the group metadata, receive the
//! sender-key distribution and the `skmsg`, and decrypt the text.

mod common;

use std::time::Duration;

use common::{http, init_logs, start_sim};
use serde_json::json;

async fn create_member(sim: &wa_sim::Simulator, phone: &str, name: &str) {
    let (status, body) = http(
        sim.addr(),
        "POST",
        "/members",
        Some(json!({ "phone": phone, "name": name })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

async fn wait_event(sim: &wa_sim::Simulator, phone: &str, action: &str) -> serde_json::Value {
    let path = format!("/members/{phone}/events");
    let mut last = serde_json::Value::Null;
    for _ in 0..150 {
        let (status, body) = http(sim.addr(), "GET", &path, None).await;
        assert_eq!(status, 200, "{body}");
        if let Some(e) = body["events"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["action"] == action))
        {
            return e.clone();
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{phone} got no {action} event: {last}");
}

/// Texts `phone` received in `chat`, waiting until there are `n`.
async fn wait_texts(sim: &wa_sim::Simulator, phone: &str, chat: &str, n: usize) -> Vec<String> {
    let path = format!(
        "/members/{phone}/messages?chat={}",
        chat.replace('@', "%40")
    );
    let mut last = serde_json::Value::Null;
    for _ in 0..150 {
        let (_, body) = http(sim.addr(), "GET", &path, None).await;
        let texts: Vec<String> = body["messages"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m["text"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if texts.len() >= n {
            return texts;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{phone} has fewer than {n} texts in {chat}: {last}");
}

async fn wait_text(sim: &wa_sim::Simulator, phone: &str, chat: &str) -> serde_json::Value {
    let path = format!(
        "/members/{phone}/messages?chat={}",
        chat.replace('@', "%40")
    );
    let mut last = serde_json::Value::Null;
    for _ in 0..150 {
        let (status, body) = http(sim.addr(), "GET", &path, None).await;
        assert_eq!(status, 200, "{body}");
        if let Some(m) = body["messages"].as_array().and_then(|a| a.first()) {
            return m.clone();
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{phone} got nothing in {chat}: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_text_reaches_the_other_two_members() {
    init_logs();
    let sim = start_sim().await;
    tokio::join!(
        create_member(&sim, "33611111111", "Alice"),
        create_member(&sim, "33622222222", "Bob"),
        create_member(&sim, "33633333333", "Carol"),
    );
    let (status, group) = http(
        sim.addr(),
        "POST",
        "/groups",
        Some(json!({
            "subject": "Association",
            "creator": "33611111111",
            "members": ["33622222222", "33633333333"],
        })),
    )
    .await;
    assert_eq!(status, 201, "{group}");
    let jid = group["jid"].as_str().unwrap().to_string();
    assert!(jid.ends_with("@g.us"), "{group}");
    assert!(
        group["invite"]
            .as_str()
            .unwrap()
            .starts_with("https://chat.whatsapp.com/")
    );

    let (status, sent) = http(
        sim.addr(),
        "POST",
        &format!("/groups/{jid}/messages"),
        Some(json!({ "from": "33611111111", "text": "Réunion jeudi" })),
    )
    .await;
    assert_eq!(status, 200, "{sent}");

    for phone in ["33622222222", "33633333333"] {
        let m = wait_text(&sim, phone, &jid).await;
        assert_eq!(m["text"], "Réunion jeudi", "{m}");
        assert_eq!(m["id"], sent["id"]);
        assert!(
            m["sender"].as_str().unwrap().starts_with("33611111111@"),
            "{m}"
        );
    }

    // A fourth member is added: the others are notified, and the next message
    // reaches the newcomer too (the sender learns the new participant list).
    create_member(&sim, "33644444444", "Dave").await;
    let (status, changed) = http(
        sim.addr(),
        "POST",
        &format!("/groups/{jid}/participants"),
        Some(json!({ "add": ["33644444444"] })),
    )
    .await;
    assert_eq!(status, 200, "{changed}");
    for phone in ["33611111111", "33622222222", "33633333333"] {
        let e = wait_event(&sim, phone, "add").await;
        assert_eq!(e["chat"], jid.as_str());
        assert!(e["detail"].as_str().unwrap().contains("33644444444"), "{e}");
    }
    let (status, _) = http(
        sim.addr(),
        "PUT",
        &format!("/groups/{jid}"),
        Some(json!({ "subject": "Association (bureau)" })),
    )
    .await;
    assert_eq!(status, 200);
    wait_event(&sim, "33622222222", "subject").await;

    let (status, sent) = http(
        sim.addr(),
        "POST",
        &format!("/groups/{jid}/messages"),
        Some(json!({ "from": "33611111111", "text": "Bienvenue Dave" })),
    )
    .await;
    assert_eq!(status, 200, "{sent}");
    assert_eq!(
        wait_texts(&sim, "33644444444", &jid, 1).await,
        ["Bienvenue Dave"]
    );
    assert_eq!(
        wait_texts(&sim, "33622222222", &jid, 2).await,
        ["Réunion jeudi", "Bienvenue Dave"]
    );

    let (status, info) = http(sim.addr(), "GET", &format!("/groups/{jid}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(info["subject"], "Association (bureau)");
    assert_eq!(info["participants"].as_array().unwrap().len(), 4);
}
