//! Direct messages between two real whatsapp-rust clients through the simulator:
//! usync device lists, pre-key bundle fetch, Signal-encrypted fan-out, and the
//! offline queue delivered when a device comes back (its reconnect uses Noise IK).

mod common;

use common::{init_logs, paired_client, received_text, spawn_client_with, start_sim};
use whatsapp_rust::Jid;
use whatsapp_rust::types::events::Event;

/// Polls the simulator until device 1 of `phone` matches `ok` (10 s at most).
async fn wait_device(
    sim: &wa_sim::Simulator,
    phone: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) {
    for _ in 0..200 {
        let info = sim.phone_info(phone).expect("phone exists");
        if ok(&info["devices"][0]) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("device of {phone} never reached the expected state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_message_live_then_offline() {
    init_logs();
    let sim = start_sim().await;
    let (a, mut b) = tokio::join!(
        paired_client(&sim, "33611111111"),
        paired_client(&sim, "33622222222")
    );
    let to_b: Jid = "33622222222@s.whatsapp.net".parse().unwrap();

    a.handle
        .client()
        .send_text(to_b.clone(), "bonjour")
        .await
        .expect("send to B");
    let (text, sender) = b.wait_for(20, "message from A", received_text).await;
    assert_eq!(text, "bonjour");
    assert_eq!(sender, "33611111111");

    // B goes away; A writes; B comes back (same store) and gets it from the queue.
    let backend_b = b.backend.clone();
    b.handle.shutdown().await;
    wait_device(&sim, "33622222222", |d| d["online"] == false).await;
    a.handle
        .client()
        .send_text(to_b, "tu es là ?")
        .await
        .expect("send to offline B");
    wait_device(&sim, "33622222222", |d| d["queued"] == 1).await;
    let mut b = spawn_client_with(&sim, backend_b).await;
    let (text, _) = b.wait_for(30, "queued message", received_text).await;
    assert_eq!(text, "tu es là ?");
    b.wait_for(30, "Connected", |e| {
        matches!(e, Event::Connected(_)).then_some(())
    })
    .await;

    a.handle.shutdown().await;
    b.handle.shutdown().await;
}
