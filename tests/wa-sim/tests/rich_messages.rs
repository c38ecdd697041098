//! Replies, mentions, edits, revokes, reactions, every media kind and locations
//! through the simulator, both ways a test needs them:
//! - members send them through the control API and another member reads them
//!   back with every field;
//! - a whatsapp-rust client that builds its own waproto messages (as passerelle
//!   does, with `Client::send_message` and `Client::upload`) sends them and a
//!   member reads them back.

mod common;

use std::net::SocketAddr;

use base64::Engine as _;
use common::{http, init_logs, paired_client_with_media, sha256_hex, start_sim, wait_log};
use serde_json::{Value, json};
use wa_sim::Received;
use waproto::buffa::MessageField;
use waproto::whatsapp as wa;
use waproto::whatsapp::message::protocol_message::Type as ProtocolType;
use whatsapp_rust::Jid;
use whatsapp_rust::download::MediaType;
use whatsapp_rust::prelude::MessageBuilderExt;
use whatsapp_rust::upload::UploadOptions;

const ALICE: &str = "33611111111";
const BOB: &str = "33622222222";
const BRIDGE: &str = "33699999999";

fn jid(phone: &str) -> String {
    format!("{phone}@s.whatsapp.net")
}

/// Deterministic test bytes (the simulator and clients only move and encrypt them).
fn blob(len: u32, seed: u32) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + seed) % 251) as u8).collect()
}

fn b64(data: &[u8]) -> String {
    base64::prelude::BASE64_STANDARD.encode(data)
}

/// `POST /groups/{jid}/messages` from `from`; returns the new message's id.
async fn post(addr: SocketAddr, group: &str, from: &str, mut body: Value) -> String {
    body["from"] = json!(from);
    let (status, answer) = http(
        addr,
        "POST",
        &format!("/groups/{group}/messages"),
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 200, "{body}: {answer}");
    answer["id"].as_str().expect("id").to_string()
}

/// `POST /members/{from}/messages`; returns the new message's id.
async fn send_direct(addr: SocketAddr, from: &str, body: Value) -> String {
    let (status, answer) = http(
        addr,
        "POST",
        &format!("/members/{from}/messages"),
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 200, "{body}: {answer}");
    answer["id"].as_str().expect("id").to_string()
}

/// `POST /groups/{jid}/messages`, expecting a 400 whose error mentions `why`.
async fn refused(addr: SocketAddr, group: &str, body: Value, why: &str) {
    let (status, answer) = http(
        addr,
        "POST",
        &format!("/groups/{group}/messages"),
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 400, "{body}: {answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(error.contains(why), "{body}: error {error:?} lacks {why:?}");
}

fn find<'a>(log: &'a [Received], id: &str) -> &'a Received {
    log.iter()
        .find(|m| m.id == id)
        .unwrap_or_else(|| panic!("no {id} in {log:#?}"))
}

/// Every id present, and every media among them downloaded.
fn all_in(log: &[Received], ids: &[&String]) -> bool {
    ids.iter().all(|id| {
        log.iter()
            .any(|m| m.id == **id && (m.mime.is_none() || m.media_sha256.is_some()))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_send_every_kind_and_read_each_other() {
    init_logs();
    let sim = start_sim().await;
    let (a, b) = tokio::join!(
        sim.create_member(ALICE, "Alice"),
        sim.create_member(BOB, "Bob")
    );
    let alice = a.expect("Alice");
    let bob = b.expect("Bob");
    let (group, _) = sim.create_group("Kinds", ALICE, &[BOB.to_string()]);
    let addr = sim.addr();

    let hello = post(addr, &group, ALICE, json!({"text": "Bonjour"})).await;
    // Bob's reply names only the id: the sender comes from what Bob received.
    wait_log(&bob, &group, 20, "the first text", |l| {
        l.iter().any(|m| m.id == hello)
    })
    .await;
    let reply = post(
        addr,
        &group,
        BOB,
        json!({"text": "Salut", "reply_to": hello, "mentions": [ALICE]}),
    )
    .await;
    let log = wait_log(&alice, &group, 20, "Bob's reply", |l| {
        l.iter().any(|m| m.id == reply)
    })
    .await;
    let m = find(&log, &reply);
    assert_eq!((m.kind.as_str(), m.from_me), ("text", false));
    assert_eq!(m.text.as_deref(), Some("Salut @33611111111"));
    assert_eq!(m.quoted_id.as_deref(), Some(hello.as_str()));
    assert_eq!(m.quoted_sender.as_deref(), Some(jid(ALICE).as_str()));
    assert_eq!(m.mentions, vec![ALICE.to_string()]);
    // The sender logs its own sends too.
    let own = find(&bob.received(Some(&group)), &reply).clone();
    assert!(
        own.from_me && own.sender == jid(BOB) && own.quoted_id.as_deref() == Some(hello.as_str())
    );

    let image = blob(40_000, 1);
    let video = blob(70_000, 2);
    let voice = blob(9_000, 3);
    let song = blob(12_000, 4);
    let pdf = blob(20_000, 5);
    let sticker = blob(5_000, 6);
    let photo = post(
        addr,
        &group,
        ALICE,
        json!({"image": b64(&image), "mime": "image/png", "text": "la photo",
        "reply_to": {"id": reply, "sender": BOB}}),
    )
    .await;
    let clip = post(
        addr,
        &group,
        ALICE,
        json!({"video": b64(&video), "mime": "video/mp4", "text": "le film", "seconds": 7}),
    )
    .await;
    let note = post(
        addr,
        &group,
        ALICE,
        json!({"audio": b64(&voice), "ptt": true, "seconds": 3}),
    )
    .await;
    let tune = post(
        addr,
        &group,
        ALICE,
        json!({"audio": b64(&song), "mime": "audio/mpeg"}),
    )
    .await;
    let doc = post(
        addr,
        &group,
        ALICE,
        json!({"document": b64(&pdf), "mime": "application/pdf",
        "file_name": "cr.pdf", "text": "le CR"}),
    )
    .await;
    let stick = post(addr, &group, ALICE, json!({"sticker": b64(&sticker)})).await;
    let place = post(
        addr,
        &group,
        ALICE,
        json!({"location": {"lat": 48.85, "lon": 2.35, "name": "Paris"}}),
    )
    .await;
    let edit = post(
        addr,
        &group,
        ALICE,
        json!({"edit_of": hello, "text": "Bonjour à tous"}),
    )
    .await;
    let like = post(
        addr,
        &group,
        BOB,
        json!({"reaction": {"to": hello, "emoji": "👍"}}),
    )
    .await;
    let unlike = post(
        addr,
        &group,
        BOB,
        json!({"reaction": {"to": hello, "emoji": ""}}),
    )
    .await;
    let own_like = post(
        addr,
        &group,
        ALICE,
        json!({"reaction": {"to": photo, "emoji": "❤️"}}),
    )
    .await;
    let revoke = post(addr, &group, ALICE, json!({"revoke": place})).await;
    // Alice created the group: she deletes Bob's reply for everyone (admin form).
    let admin_revoke = post(addr, &group, ALICE, json!({"revoke": reply})).await;

    let ids = [
        &photo,
        &clip,
        &note,
        &tune,
        &doc,
        &stick,
        &place,
        &edit,
        &own_like,
        &revoke,
        &admin_revoke,
    ];
    let log = wait_log(&bob, &group, 30, "all of Alice's messages", |l| {
        all_in(l, &ids)
    })
    .await;
    let m = find(&log, &photo);
    assert_eq!(
        (m.kind.as_str(), m.text.as_deref(), m.mime.as_deref()),
        ("image", Some("la photo"), Some("image/png"))
    );
    assert_eq!(m.media_sha256, Some(sha256_hex(&image)));
    assert_eq!(
        (m.quoted_id.as_deref(), m.quoted_sender.as_deref()),
        (Some(reply.as_str()), Some(jid(BOB).as_str()))
    );
    let m = find(&log, &clip);
    assert_eq!(
        (m.kind.as_str(), m.text.as_deref(), m.seconds),
        ("video", Some("le film"), Some(7))
    );
    assert_eq!(
        (m.mime.as_deref(), m.media_sha256.clone()),
        (Some("video/mp4"), Some(sha256_hex(&video)))
    );
    let m = find(&log, &note);
    assert_eq!(
        (m.kind.as_str(), m.ptt, m.seconds),
        ("ptt", Some(true), Some(3))
    );
    assert_eq!(
        (m.mime.as_deref(), m.media_sha256.clone()),
        (Some("audio/ogg; codecs=opus"), Some(sha256_hex(&voice)))
    );
    let m = find(&log, &tune);
    assert_eq!(
        (m.kind.as_str(), m.ptt, m.mime.as_deref()),
        ("audio", Some(false), Some("audio/mpeg"))
    );
    assert_eq!(m.media_sha256, Some(sha256_hex(&song)));
    let m = find(&log, &doc);
    assert_eq!(
        (m.kind.as_str(), m.file_name.as_deref(), m.text.as_deref()),
        ("document", Some("cr.pdf"), Some("le CR"))
    );
    assert_eq!(
        (m.mime.as_deref(), m.media_sha256.clone()),
        (Some("application/pdf"), Some(sha256_hex(&pdf)))
    );
    let m = find(&log, &stick);
    assert_eq!(
        (m.kind.as_str(), m.mime.as_deref()),
        ("sticker", Some("image/webp"))
    );
    assert_eq!(m.media_sha256, Some(sha256_hex(&sticker)));
    let m = find(&log, &place);
    assert_eq!(
        (m.kind.as_str(), m.lat, m.lon, m.name.as_deref()),
        ("location", Some(48.85), Some(2.35), Some("Paris"))
    );
    let m = find(&log, &edit);
    assert_eq!(m.edit_attr.as_deref(), Some("1"));
    assert_eq!(
        (m.kind.as_str(), m.edit_of.as_deref(), m.text.as_deref()),
        ("edit", Some(hello.as_str()), Some("Bonjour à tous"))
    );
    let m = find(&log, &own_like);
    assert_eq!(
        (
            m.kind.as_str(),
            m.reaction_to.as_deref(),
            m.emoji.as_deref()
        ),
        ("reaction", Some(photo.as_str()), Some("❤️"))
    );
    let m = find(&log, &revoke);
    assert_eq!(m.edit_attr.as_deref(), Some("7"));
    assert_eq!(
        (m.kind.as_str(), m.revoke_of.as_deref()),
        ("revoke", Some(place.as_str()))
    );
    let m = find(&log, &admin_revoke);
    assert_eq!(m.edit_attr.as_deref(), Some("8"));
    assert_eq!(
        (m.kind.as_str(), m.revoke_of.as_deref(), m.sender.as_str()),
        ("revoke", Some(reply.as_str()), jid(ALICE).as_str())
    );

    let log = wait_log(&alice, &group, 20, "Bob's reactions", |l| {
        all_in(l, &[&like, &unlike])
    })
    .await;
    let m = find(&log, &like);
    assert_eq!(
        (
            m.kind.as_str(),
            m.reaction_to.as_deref(),
            m.emoji.as_deref()
        ),
        ("reaction", Some(hello.as_str()), Some("👍"))
    );
    let m = find(&log, &unlike);
    assert_eq!(m.edit_attr.as_deref(), Some("7"));
    assert_eq!(
        (m.reaction_to.as_deref(), m.emoji.as_deref()),
        (Some(hello.as_str()), Some(""))
    );

    // Direct chat, through `POST /members/{phone}/messages`: no participant in keys.
    let dm = send_direct(addr, ALICE, json!({"to": BOB, "text": "en privé"})).await;
    wait_log(&bob, ALICE, 20, "the direct text", |l| {
        l.iter().any(|m| m.id == dm)
    })
    .await;
    let dm_like = send_direct(
        addr,
        BOB,
        json!({"to": ALICE, "reaction": {"to": dm, "emoji": "🙂"}}),
    )
    .await;
    let dm_reply = send_direct(
        addr,
        BOB,
        json!({"to": ALICE, "text": "ok", "reply_to": dm}),
    )
    .await;
    let (status, answer) = http(
        addr,
        "POST",
        &format!("/members/{BOB}/messages"),
        Some(json!({"to": ALICE, "revoke": dm})),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("no admin"),
        "{answer}"
    );
    let log = wait_log(&alice, BOB, 20, "Bob's direct answers", |l| {
        all_in(l, &[&dm_like, &dm_reply])
    })
    .await;
    let m = find(&log, &dm_like);
    assert_eq!(
        (
            m.kind.as_str(),
            m.reaction_to.as_deref(),
            m.emoji.as_deref()
        ),
        ("reaction", Some(dm.as_str()), Some("🙂"))
    );
    let m = find(&log, &dm_reply);
    assert_eq!(
        (m.quoted_id.as_deref(), m.quoted_sender.as_deref()),
        (Some(dm.as_str()), Some(jid(ALICE).as_str()))
    );
    let dm_revoke = send_direct(addr, ALICE, json!({"to": BOB, "revoke": dm})).await;
    let log = wait_log(&bob, ALICE, 20, "the direct revoke", |l| {
        all_in(l, &[&dm_revoke])
    })
    .await;
    assert_eq!(
        find(&log, &dm_revoke).revoke_of.as_deref(),
        Some(dm.as_str())
    );

    // Malformed or contradictory bodies.
    refused(
        addr,
        &group,
        json!({"from": ALICE, "text": "x", "image": b64(&image), "video": b64(&video)}),
        "image and video",
    )
    .await;
    refused(
        addr,
        &group,
        json!({"from": ALICE, "revoke": hello, "text": "x"}),
        "revoke takes no",
    )
    .await;
    refused(
        addr,
        &group,
        json!({"from": ALICE, "sticker": b64(&sticker), "text": "x"}),
        "no caption",
    )
    .await;
    refused(
        addr,
        &group,
        json!({"from": ALICE, "text": "x", "file_name": "a.txt"}),
        "file_name only goes with document",
    )
    .await;
    refused(
        addr,
        &group,
        json!({"from": ALICE, "image": "***"}),
        "not base64",
    )
    .await;
    refused(
        addr,
        &group,
        json!({"from": ALICE, "text": "x", "reply_to": "NOPE"}),
        "give its sender",
    )
    .await;
    refused(
        addr,
        &group,
        json!({"from": BOB, "edit_of": hello, "text": "x"}),
        "not by this member",
    )
    .await;
    refused(
        addr,
        &group,
        json!({"from": ALICE, "reaction": {"to": hello}}),
        "emoji",
    )
    .await;
    refused(
        addr,
        &group,
        json!({"from": ALICE, "txt": "x"}),
        "unknown field",
    )
    .await;
    refused(
        addr,
        &group,
        json!({"from": ALICE, "location": {"lat": 95.0, "lon": 2.0}}),
        "out of range",
    )
    .await;
}

/// A stand-in for passerelle: a whatsapp-rust client that builds its waproto
/// messages itself and sends them with `Client::send_message`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_built_by_another_client_are_read_back() {
    init_logs();
    let sim = start_sim().await;
    let (bridge, b) = tokio::join!(
        paired_client_with_media(&sim, BRIDGE),
        sim.create_member(BOB, "Bob")
    );
    let bob = b.expect("Bob");
    let (group, _) = sim.create_group("Pont", BOB, &[BRIDGE.to_string()]);
    let client = bridge.handle.client();
    let chat: Jid = group.parse().unwrap();
    let send = |m: wa::Message| {
        let client = client.clone();
        let chat = chat.clone();
        async move {
            client
                .send_message(chat, m)
                .await
                .expect("bridge sends")
                .message_id
        }
    };

    let bob_text = post(
        sim.addr(),
        &group,
        BOB,
        json!({"text": "Qui vient samedi ?"}),
    )
    .await;
    let original = send(wa::Message::text("*Matrix*: moi")).await;
    // Reply with a mention, quoting a stand-in of Bob's message.
    let reply = send(wa::Message::text_with_context(
        "*Matrix*: @33622222222 oui",
        wa::ContextInfo {
            stanza_id: Some(bob_text.clone()),
            participant: Some(jid(BOB)),
            quoted_message: MessageField::some(wa::Message::text("Qui vient samedi ?")),
            mentioned_jid: vec![jid(BOB)],
            ..Default::default()
        },
    ))
    .await;
    // Edit and revoke of its own message, as a bridge builds them.
    let edit = send(wa::Message {
        protocol_message: MessageField::some(wa::message::ProtocolMessage {
            key: MessageField::some(wa::MessageKey {
                remote_jid: Some(group.clone()),
                from_me: Some(true),
                id: Some(original.clone()),
                participant: Some(jid(BRIDGE)),
            }),
            r#type: Some(ProtocolType::MESSAGE_EDIT),
            edited_message: MessageField::some(wa::Message::text("*Matrix*: moi aussi")),
            timestamp_ms: Some(1_700_000_000_000),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    // whatsapp-rust's own edit helper gives the same read-back.
    client
        .edit_message(
            chat.clone(),
            original.clone(),
            wa::Message::text("*Matrix*: moi, sûr"),
        )
        .await
        .expect("edit helper");
    let reaction = send(
        whatsapp_rust::wacore::proto_helpers::build_reaction_message(
            wa::MessageKey {
                remote_jid: Some(group.clone()),
                from_me: Some(false),
                id: Some(bob_text.clone()),
                participant: Some(jid(BOB)),
            },
            "🎉",
            1_700_000_000_000,
        ),
    )
    .await;
    let image = blob(30_000, 9);
    let upload = client
        .upload(image.clone(), MediaType::Image, UploadOptions::default())
        .await
        .expect("upload");
    let photo = send(whatsapp_rust::media::image_message(
        upload,
        whatsapp_rust::media::ImageOptions {
            caption: Some("*Matrix*: photo".into()),
            ..Default::default()
        },
    ))
    .await;
    let voice = blob(8_000, 10);
    let upload = client
        .upload(voice.clone(), MediaType::Audio, UploadOptions::default())
        .await
        .expect("upload");
    let note = send(whatsapp_rust::media::audio_message(
        upload,
        whatsapp_rust::media::AudioOptions {
            ptt: Some(true),
            duration_seconds: Some(2),
            ..Default::default()
        },
    ))
    .await;
    let file = blob(15_000, 11);
    let upload = client
        .upload(file.clone(), MediaType::Document, UploadOptions::default())
        .await
        .expect("upload");
    let doc = send(whatsapp_rust::media::document_message(
        upload,
        whatsapp_rust::media::DocumentOptions {
            mimetype: Some("text/plain".into()),
            file_name: Some("notes.txt".into()),
            ..Default::default()
        },
    ))
    .await;
    let revoke = send(wa::Message {
        protocol_message: MessageField::some(wa::message::ProtocolMessage {
            key: MessageField::some(wa::MessageKey {
                remote_jid: Some(group.clone()),
                from_me: Some(true),
                id: Some(photo.clone()),
                participant: None,
            }),
            r#type: Some(ProtocolType::REVOKE),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;

    let ids = [
        &original, &reply, &edit, &reaction, &photo, &note, &doc, &revoke,
    ];
    let log = wait_log(&bob, &group, 30, "the bridge's messages", |l| {
        all_in(l, &ids) && l.iter().filter(|m| m.kind == "edit").count() == 2
    })
    .await;
    let m = find(&log, &reply);
    assert_eq!(
        (m.kind.as_str(), m.sender.as_str()),
        ("text", jid(BRIDGE).as_str())
    );
    assert_eq!(
        (m.quoted_id.as_deref(), m.quoted_sender.as_deref()),
        (Some(bob_text.as_str()), Some(jid(BOB).as_str()))
    );
    assert_eq!(m.mentions, vec![BOB.to_string()]);
    let edits: Vec<&Received> = log.iter().filter(|m| m.kind == "edit").collect();
    assert!(
        edits
            .iter()
            .all(|m| m.edit_of.as_deref() == Some(original.as_str())),
        "{edits:#?}"
    );
    assert_eq!(
        find(&log, &edit).text.as_deref(),
        Some("*Matrix*: moi aussi")
    );
    assert!(
        edits
            .iter()
            .any(|m| m.text.as_deref() == Some("*Matrix*: moi, sûr"))
    );
    assert!(
        edits.iter().all(|m| m.edit_attr.as_deref() == Some("1")),
        "{edits:#?}"
    );
    let m = find(&log, &reaction);
    assert_eq!(
        (
            m.kind.as_str(),
            m.reaction_to.as_deref(),
            m.emoji.as_deref()
        ),
        ("reaction", Some(bob_text.as_str()), Some("🎉"))
    );
    let m = find(&log, &photo);
    assert_eq!(
        (m.kind.as_str(), m.text.as_deref(), m.media_sha256.clone()),
        ("image", Some("*Matrix*: photo"), Some(sha256_hex(&image)))
    );
    let m = find(&log, &note);
    assert_eq!(
        (m.kind.as_str(), m.seconds, m.media_sha256.clone()),
        ("ptt", Some(2), Some(sha256_hex(&voice)))
    );
    let m = find(&log, &doc);
    assert_eq!(
        (m.kind.as_str(), m.file_name.as_deref(), m.mime.as_deref()),
        ("document", Some("notes.txt"), Some("text/plain"))
    );
    assert_eq!(m.media_sha256, Some(sha256_hex(&file)));
    let m = find(&log, &revoke);
    assert_eq!(m.edit_attr.as_deref(), Some("7"));
    assert_eq!(
        (m.kind.as_str(), m.revoke_of.as_deref()),
        ("revoke", Some(photo.as_str()))
    );

    // The same through the control API's JSON.
    let (status, body) = http(
        sim.addr(),
        "GET",
        &format!("/members/{BOB}/messages?chat={}", group.replace('@', "%40")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let messages = body["messages"].as_array().expect("messages");
    let m = messages
        .iter()
        .find(|m| m["id"] == reply.as_str())
        .expect("reply in JSON");
    assert_eq!(m["quoted_id"], bob_text.as_str(), "{m}");
    assert_eq!(m["quoted_sender"], jid(BOB).as_str(), "{m}");
    assert_eq!(m["mentions"], json!([BOB]), "{m}");
    assert_eq!(m["edit_of"], Value::Null, "{m}");
    let m = messages
        .iter()
        .find(|m| m["id"] == note.as_str())
        .expect("voice note in JSON");
    assert_eq!(
        (&m["kind"], &m["ptt"], &m["seconds"]),
        (&json!("ptt"), &json!(true), &json!(2)),
        "{m}"
    );
    assert_eq!(m["media_sha256"], sha256_hex(&voice).as_str(), "{m}");

    // Bob answers the bridge by id only: the sender comes from his log.
    let answer = post(
        sim.addr(),
        &group,
        BOB,
        json!({"text": "super", "reply_to": reply}),
    )
    .await;
    let own = find(&bob.received(Some(&group)), &answer).clone();
    assert_eq!(own.quoted_sender.as_deref(), Some(jid(BRIDGE).as_str()));
    bridge.handle.shutdown().await;
}
