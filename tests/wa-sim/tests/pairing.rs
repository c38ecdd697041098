//! QR pairing end to end: a real whatsapp-rust client shows a QR code, the control
//! API's `POST /phones/{phone}/scan` links it, the client gets stream error 515,
//! reconnects, logs in and reaches `Event::Connected`.

mod common;

use common::{http, init_logs, spawn_client, start_sim};
use serde_json::json;
use whatsapp_rust::types::events::Event;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qr_scan_links_device_which_reconnects_and_connects() {
    init_logs();
    let sim = start_sim().await;

    let (status, health) = http(sim.addr(), "GET", "/health", None).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["ws_url"], sim.ws_url());

    let mut client = spawn_client(&sim).await;
    let qr = client
        .wait_for(20, "PairingQrCode", |e| match e {
            Event::PairingQrCode(q) => Some(q.code.clone()),
            _ => None,
        })
        .await;

    let (status, linked) = http(
        sim.addr(),
        "POST",
        "/phones/33611111111/scan",
        Some(json!({ "qr": qr })),
    )
    .await;
    assert_eq!(status, 200, "{linked}");
    assert_eq!(linked["jid"], "33611111111:1@s.whatsapp.net");

    let paired = client
        .wait_for(20, "PairSuccess", |e| match e {
            Event::PairSuccess(p) => Some(p.id.to_string()),
            _ => None,
        })
        .await;
    assert_eq!(paired, "33611111111:1@s.whatsapp.net");

    // After 515 the client reconnects with a login payload and gets the phone's
    // app-state key share, so it does not wait for it (see tests/key_share.rs).
    client
        .wait_for(45, "Connected", |e| {
            matches!(e, Event::Connected(_)).then_some(())
        })
        .await;

    let info = sim.phone_info("33611111111").expect("phone exists");
    assert_eq!(info["devices"][0]["online"], true, "{info}");

    // The same QR cannot link twice.
    let (status, _) = http(
        sim.addr(),
        "POST",
        "/phones/33611111111/scan",
        Some(json!({ "qr": qr })),
    )
    .await;
    assert_eq!(status, 404);

    client.handle.shutdown().await;
}

#[tokio::test]
async fn scan_rejects_bad_input() {
    init_logs();
    let sim = start_sim().await;
    let (status, body) = http(
        sim.addr(),
        "POST",
        "/phones/abc/scan",
        Some(json!({"qr": "x"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = http(
        sim.addr(),
        "POST",
        "/phones/33611111111/scan",
        Some(json!({"qr": "x"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = http(
        sim.addr(),
        "POST",
        "/phones/33611111111/scan",
        Some(json!({"nope": 1})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = http(sim.addr(), "GET", "/nowhere", None).await;
    assert_eq!(status, 404);
}

/// Pair-code linking: the client asks to link with a number (`pair_with_code`,
/// `companion_hello`), `POST /phones/{phone}/pair-code` is the user typing the
/// code on that phone (`primary_hello`, the client's `companion_finish`), then
/// `<pair-success>`, 515 and `Connected` as for a QR code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_code_links_device_which_connects() {
    use whatsapp_rust::pair_code::PairCodeOptions;
    init_logs();
    let sim = start_sim().await;
    let phone = "33633333333";
    let path = format!("/phones/{phone}/pair-code");

    let (status, body) = http(sim.addr(), "POST", &path, Some(json!({"code": "ABCD1234"}))).await;
    assert_eq!(status, 404, "no device asked yet: {body}");

    let mut client = spawn_client(&sim).await;
    // Registered (QR codes shown): the client can ask for a pair code.
    client
        .wait_for(20, "PairingQrCode", |e| {
            matches!(e, Event::PairingQrCode(_)).then_some(())
        })
        .await;
    let options = || PairCodeOptions {
        phone_number: format!("+{phone}"),
        ..Default::default()
    };
    let code = client
        .handle
        .client()
        .pair_with_code(options())
        .await
        .expect("pair code");
    assert_eq!(code.len(), 8);

    let (status, body) = http(sim.addr(), "POST", &path, Some(json!({"code": "0000"}))).await;
    assert_eq!(status, 400, "malformed code: {body}");
    let wrong = if code == "ABCD1234" {
        "ABCD1235"
    } else {
        "ABCD1234"
    };
    let (status, body) = http(sim.addr(), "POST", &path, Some(json!({"code": wrong}))).await;
    assert_eq!(status, 400, "wrong code: {body}");

    // The wrong code ended that attempt (companion_finish got an error): the
    // device gives up that code and asks for a new one.
    client.handle.client().cancel_pair_code().await;
    let code = client
        .handle
        .client()
        .pair_with_code(options())
        .await
        .expect("second pair code");
    let (status, linked) = http(sim.addr(), "POST", &path, Some(json!({"code": code}))).await;
    assert_eq!(status, 200, "{linked}");
    assert_eq!(linked["jid"], format!("{phone}:1@s.whatsapp.net"));

    let paired = client
        .wait_for(20, "PairSuccess", |e| match e {
            Event::PairSuccess(p) => Some(p.id.to_string()),
            _ => None,
        })
        .await;
    assert_eq!(paired, format!("{phone}:1@s.whatsapp.net"));
    client
        .wait_for(45, "Connected", |e| {
            matches!(e, Event::Connected(_)).then_some(())
        })
        .await;
    client.handle.shutdown().await;
}
