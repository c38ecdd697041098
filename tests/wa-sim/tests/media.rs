//! Media through the simulator: a member uploads an image (encrypted by its
//! client) and posts it in a group; another member's client downloads and
//! decrypts it, and the file's SHA-256 matches.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::{http, init_logs, start_sim};
use serde_json::json;
use sha2::Digest as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_posted_by_one_member_is_downloaded_by_another() {
    init_logs();
    let sim = start_sim().await;
    let (a, b) = tokio::join!(
        sim.create_member("33611111111", "Alice"),
        sim.create_member("33622222222", "Bob"),
    );
    a.expect("Alice");
    let bob = b.expect("Bob");
    let (jid, _) = sim.create_group("Photos", "33611111111", &["33622222222".to_string()]);

    // Not a real JPEG: the simulator and the clients only move and encrypt bytes.
    let image: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let expected: String = sha2::Sha256::digest(&image)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let (status, sent) = http(
        sim.addr(),
        "POST",
        &format!("/groups/{jid}/messages"),
        Some(json!({
            "from": "33611111111",
            "image": base64::prelude::BASE64_STANDARD.encode(&image),
            "mime": "image/jpeg",
            "text": "la photo",
        })),
    )
    .await;
    assert_eq!(status, 200, "{sent}");

    for _ in 0..150 {
        let got = bob.received(Some(&jid));
        if let Some(m) = got.iter().find(|m| m.media_sha256.is_some()) {
            assert_eq!(m.kind, "image");
            assert_eq!(m.text.as_deref(), Some("la photo"));
            assert_eq!(m.mime.as_deref(), Some("image/jpeg"));
            assert_eq!(m.media_sha256.as_deref(), Some(expected.as_str()));
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("Bob never downloaded the image: {:?}", bob.received(None));
}
