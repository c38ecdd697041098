//! Text relay through a real Synapse and the in-process fake WhatsApp network: both
//! directions, who may speak, what is never relayed, room set-up and reloads.
#![recursion_limit = "256"]

mod common;

use common::bridge::{bridged_group, unique, TestBridge};
use common::matrix_user::MatrixUser;
use common::synapse::Synapse;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_is_relayed_both_ways_with_name_prefixes() {
    let (mut bridge, alice, jid, room) = bridged_group("famille", "").await;

    bridge
        .network
        .post(&jid, "33611111111", Some("Bob"), "hello <everyone>");
    let seen = alice
        .wait_for(&room, "Bob's message", |s| s.body.contains("hello"))
        .await;
    assert_eq!(seen.sender, bridge.bot_user);
    assert_eq!(seen.msgtype, "m.text");
    assert_eq!(seen.body, "Bob: hello <everyone>");
    assert_eq!(
        seen.html.as_deref(),
        Some("<strong>Bob</strong>: hello &lt;everyone&gt;")
    );

    bridge.network.post(&jid, "33622222222", None, "sans nom");
    let seen = alice
        .wait_for(&room, "a message without push name", |s| {
            s.body.contains("sans nom")
        })
        .await;
    assert_eq!(seen.body, "+33622222222: sans nom");

    // A later message without a push name keeps the name WhatsApp sent before.
    bridge.network.post(&jid, "33611111111", None, "encore moi");
    let seen = alice
        .wait_for(&room, "Bob without push name", |s| {
            s.body.contains("encore")
        })
        .await;
    assert_eq!(seen.body, "Bob: encore moi");

    alice.send_text(&room, "hi from Matrix").await;
    bridge
        .wait_whatsapp_text(&jid, "*Alice*: hi from Matrix")
        .await;

    alice
        .send(
            &room,
            matrix_sdk::ruma::events::room::message::RoomMessageEventContent::emote_plain("waves"),
        )
        .await;
    bridge.wait_whatsapp_text(&jid, "* _Alice_ waves").await;
    assert_eq!(
        bridge.network.bridge_texts(&jid),
        vec!["*Alice*: hi from Matrix", "* _Alice_ waves"]
    );
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_bot_messages_and_echoes_never_loop() {
    let (mut bridge, alice, jid, room) = bridged_group("echo", "").await;
    bridge.network.set_echo_own_messages(true);

    alice
        .send(
            &room,
            matrix_sdk::ruma::events::room::message::RoomMessageEventContent::notice_plain(
                "a bot notice",
            ),
        )
        .await;
    alice.send_text(&room, "ping").await;
    bridge.wait_whatsapp_text(&jid, "*Alice*: ping").await;

    bridge
        .network
        .post(&jid, "33611111111", Some("Bob"), "pong");
    alice
        .wait_for(&room, "pong", |s| s.body == "Bob: pong")
        .await;
    // A later Matrix message as a barrier: everything before it has been processed.
    alice.send_text(&room, "barrier").await;
    bridge.wait_whatsapp_text(&jid, "*Alice*: barrier").await;

    assert_eq!(
        bridge.network.bridge_texts(&jid),
        vec!["*Alice*: ping", "*Alice*: barrier"],
        "the notice and the bot's own post must not reach WhatsApp, each text once"
    );
    let from_bot: Vec<String> = alice
        .seen_in(&room)
        .into_iter()
        .filter(|s| s.sender == bridge.bot_user && s.msgtype == "m.text")
        .map(|s| s.body)
        .collect();
    assert_eq!(
        from_bot,
        vec!["Bob: pong"],
        "echoed WhatsApp messages must not come back"
    );
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_matrix_users_are_relayed() {
    let synapse = Synapse::shared();
    let alice = MatrixUser::new(synapse, &unique("alice"), Some("Alice")).await;
    let eve = MatrixUser::new(synapse, &unique("eve"), Some("Eve")).await;
    let mut bridge = TestBridge::new(synapse, &[]);
    let jid = bridge.network.create_group("Club");
    bridge.write_group(
        &unique("club"),
        &jid,
        &format!(
            "invite = [\"{}\", \"{}\"]\nallow = [\"{}\"]",
            alice.user_id, eve.user_id, alice.user_id
        ),
    );
    bridge.start().await;
    let room = bridge.wait_room(&jid).await;
    alice.wait_joined(&room).await;
    eve.wait_joined(&room).await;

    eve.send_text(&room, "eve speaks").await;
    let notice = alice
        .wait_for(&room, "the refusal notice", |s| s.msgtype == "m.notice")
        .await;
    assert!(notice.body.contains(&eve.user_id), "{}", notice.body);
    alice.send_text(&room, "alice speaks").await;
    bridge
        .wait_whatsapp_text(&jid, "*Alice*: alice speaks")
        .await;
    assert_eq!(
        bridge.network.bridge_texts(&jid),
        vec!["*Alice*: alice speaks"]
    );
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unapproved_groups_are_never_relayed() {
    let (mut bridge, alice, jid, room) = bridged_group("approved", "").await;
    let secret_group = bridge.network.create_group("Not approved");
    bridge
        .network
        .post(&secret_group, "33633333333", Some("Carol"), "private words");
    bridge
        .network
        .post(&jid, "33611111111", Some("Bob"), "after");
    alice
        .wait_for(&room, "Bob's message", |s| s.body == "Bob: after")
        .await;
    assert!(bridge.service().room_for_group(&secret_group).is_none());
    for room in alice.client.joined_rooms() {
        let seen = alice.seen_in(room.room_id().as_str());
        assert!(
            seen.iter().all(|s| !s.body.contains("private words")),
            "unapproved group leaked: {seen:?}"
        );
    }
    assert_eq!(bridge.service().pending(), (0, 0));
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_is_created_once_across_restarts_and_offline_messages_arrive() {
    let (mut bridge, alice, jid, room) = bridged_group("restart", "").await;
    bridge.stop().await;

    // While passerelle is stopped, both sides keep talking.
    bridge
        .network
        .post(&jid, "33611111111", Some("Bob"), "while you were away");
    alice.send_text(&room, "me too").await;

    bridge.start().await;
    assert_eq!(
        bridge.wait_room(&jid).await,
        room,
        "same room after restart"
    );
    alice
        .wait_for(&room, "the offline WhatsApp message", |s| {
            s.body == "Bob: while you were away"
        })
        .await;
    bridge.wait_whatsapp_text(&jid, "*Alice*: me too").await;

    // The bot is in exactly one room: no second room was created.
    let bot = MatrixUser::login(Synapse::shared(), &bridge.bot_user, "bot-password", None).await;
    let rooms: Vec<String> = bot
        .client
        .joined_rooms()
        .iter()
        .map(|r| r.room_id().to_string())
        .collect();
    assert_eq!(rooms, vec![room.clone()]);
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_groups_and_survives_broken_files() {
    let (mut bridge, alice, jid_a, room_a) = bridged_group("first", "").await;

    // Add a group: its room appears and relays.
    let jid_b = bridge.network.create_group("Voisins");
    let stem_b = unique("voisins");
    bridge.write_group(
        &stem_b,
        &jid_b,
        &format!("invite = [\"{}\"]", alice.user_id),
    );
    let outcome = bridge.service().reload().await.expect("valid reload");
    assert_eq!(outcome.added, vec![stem_b.clone()]);
    let room_b = bridge.wait_room(&jid_b).await;
    alice.wait_joined(&room_b).await;
    bridge
        .network
        .post(&jid_b, "33644444444", Some("Dan"), "bonjour");
    alice
        .wait_for(&room_b, "Dan", |s| s.body == "Dan: bonjour")
        .await;

    // A broken file: refused with path:line, the old configuration keeps relaying.
    std::fs::write(
        bridge.groups_dir.join("broken.toml"),
        "whatsapp = \"120363000000000001@g.us\"\nroom = 12\n",
    )
    .unwrap();
    let problems = bridge
        .service()
        .reload()
        .await
        .expect_err("broken file refused");
    let text = problems.to_string();
    assert!(text.contains("broken.toml:2:"), "{text}");
    bridge
        .network
        .post(&jid_a, "33611111111", Some("Bob"), "still here");
    alice
        .wait_for(&room_a, "Bob", |s| s.body == "Bob: still here")
        .await;
    std::fs::remove_file(bridge.groups_dir.join("broken.toml")).unwrap();

    // Remove the first group: a notice in its room, then nothing relayed any more.
    let stem_a = std::fs::read_dir(&bridge.groups_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| std::fs::read_to_string(p).unwrap().contains(&jid_a))
        .unwrap();
    std::fs::remove_file(stem_a).unwrap();
    let outcome = bridge.service().reload().await.expect("valid reload");
    assert_eq!(outcome.removed.len(), 1);
    alice
        .wait_for(&room_a, "the unbridge notice", |s| {
            s.msgtype == "m.notice" && s.body.contains("no longer bridged")
        })
        .await;
    bridge
        .network
        .post(&jid_a, "33611111111", Some("Bob"), "into the void");
    alice.send_text(&room_a, "not relayed").await;
    bridge
        .network
        .post(&jid_b, "33644444444", Some("Dan"), "barrier");
    alice
        .wait_for(&room_b, "barrier", |s| s.body == "Dan: barrier")
        .await;
    alice.send_text(&room_b, "barrier too").await;
    bridge
        .wait_whatsapp_text(&jid_b, "*Alice*: barrier too")
        .await;
    assert!(alice
        .seen_in(&room_a)
        .iter()
        .all(|s| !s.body.contains("into the void")));
    assert!(bridge.network.bridge_texts(&jid_a).is_empty());
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_accepts_invites_from_admins_only() {
    let synapse = Synapse::shared();
    let admin = MatrixUser::new(synapse, &unique("admin"), None).await;
    let stranger = MatrixUser::new(synapse, &unique("stranger"), None).await;
    let mut bridge = TestBridge::new(synapse, &[&admin.user_id]);
    bridge.start().await;
    let bot_id = matrix_sdk::ruma::UserId::parse(bridge.bot_user.as_str()).unwrap();

    let stranger_room = stranger
        .client
        .create_room(Default::default())
        .await
        .unwrap();
    stranger_room.invite_user_by_id(&bot_id).await.unwrap();
    let admin_room = admin.client.create_room(Default::default()).await.unwrap();
    admin_room.invite_user_by_id(&bot_id).await.unwrap();

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let membership = |room: &matrix_sdk::Room| {
        let room = room.clone();
        let bot_id = bot_id.clone();
        async move {
            room.sync_members().await.ok();
            room.get_member(&bot_id)
                .await
                .ok()
                .flatten()
                .map(|m| m.membership().clone())
        }
    };
    use matrix_sdk::ruma::events::room::member::MembershipState;
    loop {
        let on_admin = membership(&admin_room).await;
        let on_stranger = membership(&stranger_room).await;
        if on_admin == Some(MembershipState::Join) && on_stranger == Some(MembershipState::Leave) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "admin room: {on_admin:?}, stranger room: {on_stranger:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_room_is_named_after_the_group_and_carries_bridge_info() {
    let (mut bridge, alice, jid, room) = bridged_group("info", "").await;
    let synapse = Synapse::shared();
    let token = alice.client.access_token().unwrap();
    let state = |path: String| {
        common::synapse::http_json(
            "GET",
            &synapse.api(&format!("/_matrix/client/v3/rooms/{room}/state/{path}")),
            Some(&token),
            None,
        )
    };
    // Named after the WhatsApp subject once WhatsApp is connected.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, name) = state("m.room.name/".into());
        if status == 200 && name["name"] == "Famille Martin" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "room name: {status} {name}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let state_key = format!("passerelle://whatsapp/{jid}")
        .replace('/', "%2F")
        .replace(':', "%3A")
        .replace('@', "%40");
    for event_type in ["m.bridge", "uk.half-shot.bridge"] {
        let (status, info) = state(format!("{event_type}/{state_key}"));
        assert_eq!(status, 200, "{event_type}: {info}");
        assert_eq!(info["bridgebot"], bridge.bot_user.as_str());
        assert_eq!(info["protocol"]["id"], "whatsapp");
        assert_eq!(info["channel"]["id"], jid.as_str());
    }
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_rooms_are_invite_only_and_only_moderators_invite() {
    let synapse = Synapse::shared();
    let carol = MatrixUser::new(synapse, &unique("carol"), Some("Carol")).await;
    let dave = MatrixUser::new(synapse, &unique("dave"), Some("Dave")).await;
    let extra = format!("moderators = [\"{}\"]", carol.user_id);
    let (mut bridge, alice, _jid, room) = bridged_group("mods", &extra).await;
    carol.wait_joined(&room).await;
    let call = |who: &MatrixUser, method: &str, path: String, body: Option<serde_json::Value>| {
        common::synapse::http_json(
            method,
            &synapse.api(&path),
            Some(&who.client.access_token().unwrap()),
            body.as_ref(),
        )
    };
    let invite_dave = serde_json::json!({ "user_id": dave.user_id });
    // A plain member may not invite; nobody joins uninvited.
    let (status, body) = call(
        &alice,
        "POST",
        format!("/_matrix/client/v3/rooms/{room}/invite"),
        Some(invite_dave.clone()),
    );
    assert_eq!(status, 403, "a member invited someone: {body}");
    let (status, body) = call(
        &dave,
        "POST",
        format!("/_matrix/client/v3/join/{room}"),
        Some(serde_json::json!({})),
    );
    assert_eq!(status, 403, "joined uninvited: {body}");
    // A moderator of the group file may.
    let (status, body) = call(
        &carol,
        "POST",
        format!("/_matrix/client/v3/rooms/{room}/invite"),
        Some(invite_dave),
    );
    assert_eq!(status, 200, "the moderator could not invite: {body}");
    let (_, levels) = call(
        &alice,
        "GET",
        format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels/"),
        None,
    );
    assert_eq!(levels["invite"], 50, "{levels}");
    assert_eq!(levels["users"][carol.user_id.as_str()], 50, "{levels}");
    assert_eq!(levels["events"]["m.room.power_levels"], 100, "{levels}");

    // Dave becomes a moderator in the group file: after the reload he has the power.
    dave.wait_joined(&room).await;
    bridge.edit_group(
        &format!("moderators = [\"{}\"]", carol.user_id),
        &format!("moderators = [\"{}\", \"{}\"]", carol.user_id, dave.user_id),
    );
    bridge.service().reload().await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, levels) = call(
            &alice,
            "GET",
            format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels/"),
            None,
        );
        if levels["users"][dave.user_id.as_str()] == 50 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{levels}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_sent_while_stopped_arrive_once_and_in_order() {
    const BURST: usize = 150; // more than one sync timeline holds
    let (mut bridge, alice, jid, room) = bridged_group("burst", "").await;
    bridge.stop().await;
    // Pacing is tested on its own; here the whole burst may go out at once.
    bridge.append_config("[whatsapp]\nmessages_per_minute = 10000\nburst = 1000");
    bridge.start().await;
    // Something handled before the stop, so the bridge has a place to resume from.
    alice.send_text(&room, "before").await;
    bridge.wait_whatsapp_text(&jid, "*Alice*: before").await;
    bridge.stop().await;

    for n in 0..BURST {
        alice.send_text(&room, &format!("m{n}")).await;
        bridge
            .network
            .post(&jid, "33611111111", Some("Bob"), &format!("w{n}"));
    }
    bridge.start().await;

    let last = format!("*Alice*: m{}", BURST - 1);
    bridge.wait_whatsapp_text(&jid, &last).await;
    let mut expected: Vec<String> = vec!["*Alice*: before".into()];
    expected.extend((0..BURST).map(|n| format!("*Alice*: m{n}")));
    assert_eq!(bridge.network.bridge_texts(&jid), expected);

    let last = format!("Bob: w{}", BURST - 1);
    alice
        .wait_for(&room, "the last WhatsApp message", |s| s.body == last)
        .await;
    let expected: Vec<String> = (0..BURST).map(|n| format!("Bob: w{n}")).collect();
    let relayed: Vec<String> = alice.history_from(&room, &bridge.bot_user).await;
    assert_eq!(relayed, expected, "the room's history on the server");
    let seen: Vec<String> = alice
        .seen_in(&room)
        .into_iter()
        .filter(|s| s.sender == bridge.bot_user)
        .map(|s| s.body)
        .collect();
    assert_eq!(seen, expected, "what a client syncing the room saw");
    assert_eq!(bridge.service().pending(), (0, 0));
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matrix_burst_is_paced_to_whatsapp_not_dropped() {
    let synapse = Synapse::shared();
    let alice = MatrixUser::new(synapse, &unique("alice"), Some("Alice")).await;
    let mut bridge = TestBridge::new(synapse, &[]);
    // Two at once, then one per second, for the whole number.
    bridge.append_config("[whatsapp]\nmessages_per_minute = 60\nburst = 2");
    let jid = bridge.network.create_group("Rythme");
    bridge.write_group(
        &unique("rythme"),
        &jid,
        &format!("invite = [\"{}\"]", alice.user_id),
    );
    bridge.start().await;
    let room = bridge.wait_room(&jid).await;
    alice.wait_joined(&room).await;

    for n in 0..6 {
        alice.send_text(&room, &format!("p{n}")).await;
    }
    bridge.wait_whatsapp_text(&jid, "*Alice*: p5").await;
    let sent: Vec<_> = bridge
        .network
        .messages(&jid)
        .into_iter()
        .filter(|m| m.sender_phone == passerelle::whatsapp::fake::BRIDGE_PHONE)
        .collect();
    let texts: Vec<&str> = sent.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "*Alice*: p0",
            "*Alice*: p1",
            "*Alice*: p2",
            "*Alice*: p3",
            "*Alice*: p4",
            "*Alice*: p5"
        ]
    );
    // After the burst of 2, four more at one per second: at least ~4 s in all.
    let spread = sent[5].at.duration_since(sent[0].at);
    assert!(
        spread >= std::time::Duration::from_millis(3500),
        "sent within {spread:?}"
    );
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formatting_crosses_both_ways() {
    let (mut bridge, alice, jid, room) = bridged_group("format", "").await;
    bridge.network.post(
        &jid,
        "33611111111",
        Some("Bob"),
        "*gras*, _ital_ et ~barré~\n> cité",
    );
    let seen = alice
        .wait_for(&room, "Bob's formatted message", |s| {
            s.body.contains("gras")
        })
        .await;
    assert_eq!(seen.body, "Bob: *gras*, _ital_ et ~barré~\n> cité");
    assert_eq!(
        seen.html.as_deref(),
        Some("<strong>Bob</strong>: <strong>gras</strong>, <em>ital</em> et <del>barré</del><blockquote>cité</blockquote>")
    );

    alice
        .send(
            &room,
            matrix_sdk::ruma::events::room::message::RoomMessageEventContent::text_html(
                "fort doux code",
                "<strong>fort</strong> <em>doux</em> <code>code</code><script>alert(1)</script>",
            ),
        )
        .await;
    bridge
        .wait_whatsapp_text(&jid, "*Alice*: *fort* _doux_ `code`")
        .await;
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_that_cannot_be_relayed_yet_are_announced_not_dropped() {
    let (mut bridge, alice, jid, room) = bridged_group("kinds", "").await;
    bridge
        .network
        .post_unsupported(&jid, "33611111111", Some("Bob"), "image");
    let seen = alice
        .wait_for(&room, "the announcement of Bob's image", |s| {
            s.body.contains("image")
        })
        .await;
    assert_eq!(
        seen.body,
        "Bob sent an image that passerelle does not relay yet: see it in WhatsApp."
    );
    assert_eq!(seen.sender, bridge.bot_user);

    let file = matrix_sdk::ruma::events::room::message::RoomMessageEventContent::new(
        matrix_sdk::ruma::events::room::message::MessageType::new(
            "org.example.weather",
            "Sunny in Lyon".into(),
            Default::default(),
        )
        .unwrap(),
    );
    alice.send(&room, file).await;
    let notice = alice
        .wait_for(&room, "the notice about the unknown message type", |s| {
            s.msgtype == "m.notice" && s.body.contains("not relayed")
        })
        .await;
    assert_eq!(
        notice.body,
        format!(
            "{}: org.example.weather messages are not relayed to WhatsApp yet; texts, files, stickers, locations and polls are.",
            alice.user_id
        )
    );
    alice.send_text(&room, "texte").await;
    bridge.wait_whatsapp_text(&jid, "*Alice*: texte").await;
    assert_eq!(bridge.network.bridge_texts(&jid), vec!["*Alice*: texte"]);
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_are_told_in_a_direct_room_when_whatsapp_needs_them() {
    let synapse = Synapse::shared();
    let admin = MatrixUser::new(synapse, &unique("admin"), Some("Admin")).await;
    let mut bridge = TestBridge::new(synapse, &[&admin.user_id]);
    bridge.start().await;

    bridge.network.log_out("the phone removed this device");
    let notice = admin
        .wait_anywhere("the logged-out notice", |s| s.body.contains("logged out"))
        .await;
    assert_eq!(notice.sender, bridge.bot_user);
    assert_eq!(notice.msgtype, "m.notice");
    assert_eq!(
        notice.body,
        "WhatsApp needs an administrator: logged out: the phone removed this device."
    );
    let direct_room = admin.wait_joined(&notice.room_id).await;
    assert!(direct_room.is_direct().await.unwrap(), "a direct room");
    let members = direct_room
        .members(matrix_sdk::RoomMemberships::JOIN)
        .await
        .unwrap();
    assert_eq!(members.len(), 2, "only the bot and the admin");

    // Told once per state, also across a restart; back to normal is told too, in
    // the same room.
    bridge.network.log_out("the phone removed this device");
    bridge.stop().await;
    bridge.start().await;
    admin
        .wait_for(&notice.room_id, "the connected-again notice", |s| {
            s.body == "WhatsApp is connected again; relaying resumes."
        })
        .await;
    let told: Vec<String> = admin.history_from(&notice.room_id, &bridge.bot_user).await;
    assert_eq!(
        told,
        vec![
            notice.body.clone(),
            "WhatsApp is connected again; relaying resumes.".to_string()
        ]
    );
    bridge.stop().await;
}
