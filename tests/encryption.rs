//! Rooms with Matrix end-to-end encryption: the bot decrypts what members write and
//! encrypts what it posts (matrix-sdk's crypto store in the state directory),
//! texts and files alike, through a real Synapse and the in-process fake WhatsApp
//! network.

#![recursion_limit = "256"]

mod common;

use common::bridge::{unique, TestBridge};
use common::matrix_user::MatrixUser;
use common::synapse::Synapse;
use matrix_sdk::attachment::AttachmentConfig;
use matrix_sdk::media::{MediaFormat, MediaRequestParameters};
use matrix_sdk::ruma::api::client::room::create_room;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::room::message::{MessageType, SyncRoomMessageEvent};
use matrix_sdk::ruma::events::room::MediaSource;
use matrix_sdk::ruma::events::InitialStateEvent;
use matrix_sdk::ruma::events::{AnySyncMessageLikeEvent, AnySyncTimelineEvent};
use matrix_sdk::ruma::{EventId, OwnedUserId};
use passerelle::relay::media::{Media, MediaKind};

const BOB: &str = "33611111111";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_room_relays_both_ways() {
    let synapse = Synapse::shared();
    let alice = MatrixUser::new(synapse, &unique("alice"), Some("Alice")).await;
    let mut bridge = TestBridge::new(synapse, &[&alice.user_id]);

    // An admin creates an encrypted room, invites the bot, and names the room in the
    // group file.
    let mut request = create_room::v3::Request::new();
    request.invite = vec![OwnedUserId::try_from(bridge.bot_user.as_str()).unwrap()];
    request.initial_state = vec![InitialStateEvent::with_empty_state_key(
        RoomEncryptionEventContent::with_recommended_defaults(),
    )
    .to_raw_any()];
    let room = alice
        .client
        .create_room(request)
        .await
        .expect("create room");
    let room_id = room.room_id().to_string();
    let jid = bridge.network.create_group("Secrets de famille");
    bridge.write_group(&unique("secret"), &jid, &format!("room = \"{room_id}\""));
    bridge.start().await;
    assert_eq!(bridge.wait_room(&jid).await, room_id);

    // WhatsApp -> Matrix: the bot encrypts; Alice's client decrypts.
    bridge
        .network
        .post(&jid, BOB, Some("Bob"), "un secret bien gardé");
    let seen = alice
        .wait_for(&room_id, "Bob's message", |s| {
            s.body == "Bob: un secret bien gardé"
        })
        .await;
    let raw = alice.raw_event(synapse, &room_id, &seen.event_id).await;
    assert_eq!(raw["type"], "m.room.encrypted", "{raw}");

    // Matrix -> WhatsApp: Alice's client encrypts; the bot decrypts.
    let sent = alice.send_text(&room_id, "motus et bouche cousue").await;
    let raw = alice.raw_event(synapse, &room_id, &sent).await;
    assert_eq!(raw["type"], "m.room.encrypted", "{raw}");
    bridge
        .wait_whatsapp_text(&jid, "*Alice*: motus et bouche cousue")
        .await;

    // Files too: encrypted attachments, the same bytes on the far side.
    let photo: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let media = Media {
        kind: MediaKind::Image,
        source: String::new(),
        mime: "image/png".into(),
        file_name: None,
        size: None,
        seconds: None,
    };
    bridge
        .network
        .post_media(&jid, BOB, Some("Bob"), media, photo.clone(), "la photo");
    let seen = alice
        .wait_for(&room_id, "Bob's photo", |s| s.msgtype == "m.image")
        .await;
    assert_eq!(seen.body, "Bob: la photo");
    let event = room
        .load_or_fetch_event(&EventId::parse(&seen.event_id).unwrap(), None)
        .await
        .expect("the photo event");
    let Ok(AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomMessage(
        SyncRoomMessageEvent::Original(message),
    ))) = event.raw().deserialize()
    else {
        panic!("not a decrypted message");
    };
    let MessageType::Image(image) = message.content.msgtype else {
        panic!("not an image");
    };
    assert!(
        matches!(image.source, MediaSource::Encrypted(_)),
        "an encrypted file"
    );
    let request = MediaRequestParameters {
        source: image.source,
        format: MediaFormat::File,
    };
    let data = alice
        .client
        .media()
        .get_media_content(&request, false)
        .await
        .expect("download and decrypt");
    assert_eq!(data, photo);

    let drawing: Vec<u8> = (0..30_000u32).map(|i| (i * 13 % 241) as u8).collect();
    room.send_attachment(
        "dessin.png",
        &mime::IMAGE_PNG,
        drawing.clone(),
        AttachmentConfig::new(),
    )
    .await
    .expect("Alice sends an encrypted file");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let sent = bridge
            .network
            .messages(&jid)
            .into_iter()
            .find_map(|m| m.media.filter(|(_, data)| *data == drawing));
        if let Some((media, _)) = sent {
            assert_eq!(media.kind, MediaKind::Image);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the drawing never reached WhatsApp"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    bridge.stop().await;
}
