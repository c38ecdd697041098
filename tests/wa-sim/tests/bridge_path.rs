//! The path passerelle takes with its own whatsapp-rust client (here a test client
//! linked by QR, like `passerelle login`): join a group by invite link, list it,
//! receive a member's message, and post one that the members decrypt.

mod common;

use std::time::Duration;

use common::{http, init_logs, paired_client, received_text, start_sim};
use serde_json::json;
use whatsapp_rust::Jid;
use whatsapp_rust::types::events::Event;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_by_invite_then_messages_both_ways() {
    init_logs();
    let sim = start_sim().await;
    let (mut bridge, alice, bob) = tokio::join!(
        paired_client(&sim, "33699999999"),
        sim.create_member("33611111111", "Alice"),
        sim.create_member("33622222222", "Bob"),
    );
    alice.expect("member Alice");
    bob.expect("member Bob");
    let (jid, invite) =
        sim.create_group("Association", "33611111111", &["33622222222".to_string()]);

    let client = bridge.handle.client();
    let joined = client
        .groups()
        .join_with_invite_code(&invite)
        .await
        .expect("join by invite link");
    let group: Jid = jid.parse().unwrap();
    assert!(
        matches!(joined, whatsapp_rust::wacore::iq::groups::JoinGroupResult::Joined(ref j) if *j == group)
    );
    let groups = client
        .groups()
        .get_participating()
        .await
        .expect("participating");
    let meta = groups.get(&group).expect("joined group is listed");
    assert_eq!(meta.subject, "Association");
    assert_eq!(meta.participants.len(), 3);
    // Member -> bridge.
    let (status, sent) = http(
        sim.addr(),
        "POST",
        &format!("/groups/{jid}/messages"),
        Some(json!({ "from": "33611111111", "text": "Bonjour le pont" })),
    )
    .await;
    assert_eq!(status, 200, "{sent}");
    let group_for_pick = group.clone();
    let (text, sender) = bridge
        .wait_for(20, "group message", move |e| match e {
            Event::Messages(batch)
                if batch
                    .messages
                    .iter()
                    .any(|m| m.info.source.chat == group_for_pick) =>
            {
                received_text(e)
            }
            _ => None,
        })
        .await;
    assert_eq!(text, "Bonjour le pont");
    assert_eq!(sender, "33611111111");

    // Bridge -> members.
    client
        .send_text(group.clone(), "*Matrix*: salut")
        .await
        .expect("bridge sends to the group");
    for phone in ["33611111111", "33622222222"] {
        let member = sim.member(phone).unwrap();
        let mut got = Vec::new();
        for _ in 0..150 {
            got = member.received(Some(&jid));
            if got
                .iter()
                .any(|m| m.text.as_deref() == Some("*Matrix*: salut"))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            got.iter()
                .any(|m| m.text.as_deref() == Some("*Matrix*: salut")
                    && m.sender.starts_with("33699999999@")),
            "{phone} got {got:?}"
        );
        assert!(
            member
                .events()
                .iter()
                .any(|e| e.action == "add" && e.detail.contains("33699999999")),
            "{phone} was not told about the join: {:?}",
            member.events()
        );
    }
    bridge.handle.shutdown().await;
}
