//! Smoke test of the Synapse test harness: start the shared homeserver, register and log
//! in users, create a room through the hand-written HTTP helper.
#![recursion_limit = "256"]

mod common;

use common::synapse::{hmac_sha1, http_json, Synapse};
use serde_json::json;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn hmac_sha1_matches_rfc2202() {
    assert_eq!(
        hex(&hmac_sha1(&[0x0b; 20], b"Hi There")),
        "b617318655057264e28bc0b6fb378c8ef146be00"
    );
    assert_eq!(
        hex(&hmac_sha1(b"Jefe", b"what do ya want for nothing?")),
        "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
    );
    // Key longer than the block size.
    assert_eq!(
        hex(&hmac_sha1(
            &[0xaa; 80],
            b"Test Using Larger Than Block-Size Key - Hash Key First"
        )),
        "aa4ae5e15272d00e95705637ce8a3b55ed402112"
    );
}

#[test]
fn shared_synapse_registers_logs_in_and_creates_a_room() {
    let hs = Synapse::shared();
    assert_eq!(hs.server_name, "localhost");
    assert!(hs.url.starts_with("http://127.0.0.1:"), "{}", hs.url);

    let alice = hs.register("harness_alice", "alice-pw", false);
    let bob = hs.register("harness_bob", "bob-pw", true);
    assert_eq!(alice, "@harness_alice:localhost");
    assert_eq!(bob, "@harness_bob:localhost");

    let token = hs.login(&alice, "alice-pw");
    let (status, whoami) = http_json(
        "GET",
        &hs.api("/_matrix/client/v3/account/whoami"),
        Some(&token),
        None,
    );
    assert_eq!(status, 200, "{whoami}");
    assert_eq!(whoami["user_id"], alice);

    let (status, body) = http_json(
        "POST",
        &hs.api("/_matrix/client/v3/createRoom"),
        Some(&token),
        Some(&json!({"name": "harness smoke", "invite": [bob]})),
    );
    assert_eq!(status, 200, "{body}");
    let room_id = body["room_id"].as_str().expect("room_id");
    assert!(room_id.starts_with('!'), "{room_id}");

    let bob_token = hs.login(&bob, "bob-pw");
    let (status, body) = http_json(
        "POST",
        &hs.api(&format!("/_matrix/client/v3/join/{room_id}")),
        Some(&bob_token),
        Some(&json!({})),
    );
    assert_eq!(status, 200, "{body}");

    // Wrong password: a clean 403 with a JSON error body.
    let (status, body) = http_json(
        "POST",
        &hs.api("/_matrix/client/v3/login"),
        None,
        Some(&json!({"type": "m.login.password",
                     "identifier": {"type": "m.id.user", "user": alice},
                     "password": "wrong"})),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
}
