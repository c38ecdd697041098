//! Replies, edits, deletions, reactions and mentions through a real Synapse and the
//! in-process fake WhatsApp network, both ways; and who may edit or delete what.
#![recursion_limit = "256"]

mod common;

use common::bridge::{bridged_group, unique};
use common::matrix_user::MatrixUser;
use common::synapse::Synapse;
use matrix_sdk::ruma::events::reaction::ReactionEventContent;
use matrix_sdk::ruma::events::relation::{Annotation, Reply};
use matrix_sdk::ruma::events::room::message::{
    Relation, ReplacementMetadata, RoomMessageEventContent,
};
use matrix_sdk::ruma::EventId;
use passerelle::relay::WhatsAppRelation;
use passerelle::whatsapp::GroupChange;

const BOB: &str = "33611111111";
const CAROL: &str = "33622222222";
const DAVE: &str = "33633333333";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_replies_edits_deletions_reactions_and_mentions_reach_matrix() {
    let synapse = Synapse::shared();
    let (mut bridge, alice, jid, room) = bridged_group("relations", "").await;
    let net = bridge.network.clone();
    let hello = net.post(&jid, BOB, Some("Bob"), "hello");
    let mirrored = alice
        .wait_for(&room, "Bob's message", |s| s.body == "Bob: hello")
        .await;

    // A reply points at the mirrored event.
    let reply = Some(WhatsAppRelation::Reply {
        id: hello.clone(),
        quoted: Some("hello".into()),
    });
    net.post_related(&jid, CAROL, Some("Carol"), "hi Bob", reply, &[]);
    let seen = alice
        .wait_for(&room, "Carol's reply", |s| s.body == "Carol: hi Bob")
        .await;
    assert_eq!(
        seen.relation,
        Some(("reply".to_string(), mirrored.event_id.clone()))
    );

    // A reply to a message the bridge never saw quotes what WhatsApp quoted.
    let unseen = Some(WhatsAppRelation::Reply {
        id: "NEVERSEEN".into(),
        quoted: Some("an old message\nwith two lines".into()),
    });
    net.post_related(&jid, CAROL, Some("Carol"), "indeed", unseen, &[]);
    let seen = alice
        .wait_for(&room, "the reply to an unseen message", |s| {
            s.body.ends_with("Carol: indeed")
        })
        .await;
    assert_eq!(seen.body, "> an old message…\n\nCarol: indeed");
    assert_eq!(seen.relation, None);

    // An edit replaces the mirrored event's text.
    let edit = Some(WhatsAppRelation::Edit { id: hello.clone() });
    net.post_related(&jid, BOB, Some("Bob"), "hello everyone", edit, &[]);
    let seen = alice
        .wait_for(&room, "Bob's edit", |s| s.body == "Bob: hello everyone")
        .await;
    assert_eq!(
        seen.relation,
        Some(("replace".to_string(), mirrored.event_id.clone()))
    );

    // A reaction is a line replying to the message; changed, it is edited; removed,
    // it is redacted.
    let react = |emoji: &str| {
        Some(WhatsAppRelation::Reaction {
            id: hello.clone(),
            emoji: emoji.into(),
        })
    };
    net.post_related(&jid, CAROL, Some("Carol"), "", react("👍"), &[]);
    let line = alice
        .wait_for(&room, "Carol's reaction", |s| s.body == "Carol reacted 👍")
        .await;
    assert_eq!(
        line.relation,
        Some(("reply".to_string(), mirrored.event_id.clone()))
    );
    net.post_related(&jid, CAROL, Some("Carol"), "", react("❤️"), &[]);
    let changed = alice
        .wait_for(&room, "the changed reaction", |s| {
            s.body == "Carol reacted ❤️"
        })
        .await;
    assert_eq!(
        changed.relation,
        Some(("replace".to_string(), line.event_id.clone()))
    );
    net.post_related(&jid, CAROL, Some("Carol"), "", react(""), &[]);
    alice.wait_redacted(synapse, &room, &line.event_id).await;

    // Mentions show the person's name, bold in HTML.
    net.post_related(
        &jid,
        CAROL,
        Some("Carol"),
        &format!("@{BOB} tu viens ?"),
        None,
        &[BOB],
    );
    let seen = alice
        .wait_for(&room, "the mention", |s| s.body.contains("tu viens"))
        .await;
    assert_eq!(seen.body, "Carol: @Bob tu viens ?");
    assert_eq!(
        seen.html.as_deref(),
        Some("<strong>Carol</strong>: <strong>@Bob</strong> tu viens ?")
    );

    // Deleted for everyone in WhatsApp: redacted in Matrix.
    let revoke = Some(WhatsAppRelation::Revoke { id: hello.clone() });
    net.post_related(&jid, BOB, Some("Bob"), "", revoke, &[]);
    alice
        .wait_redacted(synapse, &room, &mirrored.event_id)
        .await;
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_replies_edits_and_redactions_reach_whatsapp_for_their_authors_only() {
    let synapse = Synapse::shared();
    let (mut bridge, alice, jid, room) = bridged_group("relations-mx", "").await;
    let net = bridge.network.clone();
    let bob_id = net.post(&jid, BOB, Some("Bob"), "qui vient ?");
    let mirrored = alice
        .wait_for(&room, "Bob's message", |s| s.body == "Bob: qui vient ?")
        .await;

    // A Matrix reply quotes the WhatsApp message it answers.
    let mut content = RoomMessageEventContent::text_plain("moi");
    content.relates_to = Some(Relation::Reply(Reply::with_event_id(
        EventId::parse(&mirrored.event_id).unwrap(),
    )));
    let moi = alice.send(&room, content).await;
    bridge.wait_whatsapp_text(&jid, "*Alice*: moi").await;
    let sent = net.messages(&jid);
    let relayed = sent.iter().find(|m| m.text == "*Alice*: moi").unwrap();
    assert_eq!(
        relayed.relation,
        Some(WhatsAppRelation::Reply {
            id: bob_id.clone(),
            quoted: None
        })
    );
    let relayed_id = relayed.id.clone();

    // Alice edits her message: the bridge's WhatsApp message is edited, prefix kept.
    let edit = RoomMessageEventContent::text_plain("moi aussi").make_replacement(
        ReplacementMetadata::new(EventId::parse(&moi).unwrap(), None),
    );
    alice.send(&room, edit).await;
    let edited = wait_fake(&net, &jid, |m| {
        m.relation
            == Some(WhatsAppRelation::Edit {
                id: relayed_id.clone(),
            })
    })
    .await;
    assert_eq!(edited.text, "*Alice*: moi aussi");

    // Someone else's edit of Alice's message is refused, with a notice.
    // Mallory is let in the way an admin does it: added to the file's invites.
    let mallory = MatrixUser::new(synapse, &unique("mallory"), Some("Mallory")).await;
    let matrix_room = alice.wait_joined(&room).await;
    bridge.edit_group(
        &format!("invite = [\"{}\"]", alice.user_id),
        &format!("invite = [\"{}\", \"{}\"]", alice.user_id, mallory.user_id),
    );
    bridge.service().reload().await.unwrap();
    mallory.wait_joined(&room).await;
    let forged = RoomMessageEventContent::text_plain("forged").make_replacement(
        ReplacementMetadata::new(EventId::parse(&moi).unwrap(), None),
    );
    mallory.send(&room, forged).await;
    alice
        .wait_for(&room, "the refusal notice", |s| {
            s.msgtype == "m.notice" && s.body.contains("only the author of a message can edit it")
        })
        .await;

    // Alice deletes her message: it is deleted for everyone in WhatsApp.
    matrix_room
        .redact(&EventId::parse(&moi).unwrap(), None, None)
        .await
        .unwrap();
    wait_fake(&net, &jid, |m| {
        m.relation
            == Some(WhatsAppRelation::Revoke {
                id: relayed_id.clone(),
            })
    })
    .await;

    // Alice's reaction becomes the number's reaction; removing it removes that.
    let reaction = matrix_room
        .send(ReactionEventContent::new(Annotation::new(
            EventId::parse(&mirrored.event_id).unwrap(),
            "👍".into(),
        )))
        .await
        .unwrap()
        .response
        .event_id;
    wait_fake(&net, &jid, |m| {
        m.relation
            == Some(WhatsAppRelation::Reaction {
                id: bob_id.clone(),
                emoji: "👍".into(),
            })
    })
    .await;
    matrix_room.redact(&reaction, None, None).await.unwrap();
    wait_fake(&net, &jid, |m| {
        m.relation
            == Some(WhatsAppRelation::Reaction {
                id: bob_id.clone(),
                emoji: String::new(),
            })
    })
    .await;

    // Deleting the bot's copy of a WhatsApp message deletes nothing in WhatsApp.
    matrix_room
        .redact(&EventId::parse(&mirrored.event_id).unwrap(), None, None)
        .await
        .unwrap_err(); // Alice is no moderator here: Synapse refuses anyway
    alice.send_text(&room, "barrier").await;
    bridge.wait_whatsapp_text(&jid, "*Alice*: barrier").await;
    let changes: Vec<_> = net
        .messages(&jid)
        .into_iter()
        .filter(|m| {
            matches!(
                m.relation,
                Some(WhatsAppRelation::Edit { .. } | WhatsAppRelation::Revoke { .. })
            )
        })
        .collect();
    assert_eq!(changes.len(), 2, "one edit and one deletion: {changes:?}");
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_deletions_past_whatsapps_time_limits_come_back_as_notices() {
    let (mut bridge, alice, jid, room) = bridged_group("too-late", "").await;
    let net = bridge.network.clone();
    let old = alice.send_text(&room, "vieux message").await;
    bridge
        .wait_whatsapp_text(&jid, "*Alice*: vieux message")
        .await;
    // Make the bridge's WhatsApp copy older than WhatsApp's limits, in the bridge's
    // own database (the service keeps running: SQLite in WAL mode takes both).
    let age_by = |seconds: i64| {
        let db = rusqlite::Connection::open(bridge.dir.path().join("state/passerelle.db")).unwrap();
        db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
        let changed = db
            .execute(
                "UPDATE message_links SET created_at = created_at - ?1 WHERE event_id = ?2",
                rusqlite::params![seconds, old],
            )
            .unwrap();
        assert_eq!(changed, 1);
    };
    age_by(16 * 60);
    let edit = RoomMessageEventContent::text_plain("corrigé").make_replacement(
        ReplacementMetadata::new(EventId::parse(&old).unwrap(), None),
    );
    alice.send(&room, edit).await;
    alice
        .wait_for(&room, "the edit refusal", |s| {
            s.msgtype == "m.notice"
                && s.body.ends_with(
                    "WhatsApp allows edits for 15 minutes only; the edit was not relayed.",
                )
        })
        .await;
    age_by(61 * 3600);
    alice
        .wait_joined(&room)
        .await
        .redact(&EventId::parse(&old).unwrap(), None, None)
        .await
        .unwrap();
    alice
        .wait_for(&room, "the deletion refusal", |s| {
            s.msgtype == "m.notice"
                && s.body.ends_with(
                    "WhatsApp allows deleting a message for everyone for 60 hours only; it stays in the WhatsApp group.",
                )
        })
        .await;
    assert!(
        net.messages(&jid).iter().all(|m| m.relation.is_none()),
        "neither the edit nor the deletion reached WhatsApp: {:?}",
        net.messages(&jid)
    );
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_older_than_remember_days_are_forgotten_and_replies_to_them_quote() {
    let (mut bridge, alice, jid, room) = bridged_group("forget", "").await;
    bridge.append_config("[relay]\nremember_days = 1\n");
    let net = bridge.network.clone();
    let old = net.post(&jid, BOB, Some("Bob"), "ancien");
    alice
        .wait_for(&room, "the old message", |s| s.body == "Bob: ancien")
        .await;
    let recent = net.post(&jid, BOB, Some("Bob"), "récent");
    let recent_seen = alice
        .wait_for(&room, "the recent message", |s| s.body == "Bob: récent")
        .await;
    bridge.stop().await;

    // Two days pass for the old message's link.
    let db_path = bridge.dir.path().join("state/passerelle.db");
    let links_of = |wa_id: &str| -> i64 {
        let db = rusqlite::Connection::open(&db_path).unwrap();
        db.query_row(
            "SELECT COUNT(*) FROM message_links WHERE wa_id = ?1",
            [wa_id],
            |row| row.get(0),
        )
        .unwrap()
    };
    {
        let db = rusqlite::Connection::open(&db_path).unwrap();
        db.execute(
            "UPDATE message_links SET created_at = created_at - 2 * 86400 WHERE wa_id = ?1",
            [&old],
        )
        .unwrap();
    }
    // The service forgets at start.
    bridge.start().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while links_of(&old) != 0 {
        assert!(std::time::Instant::now() < deadline, "the old link stays");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(links_of(&recent), 1, "the recent link is kept");

    // A reply to the forgotten message quotes it; one to the recent one is a reply.
    let reply = |to: &str, quoted: &str, text: &str| {
        net.post_related(
            &jid,
            CAROL,
            Some("Carol"),
            text,
            Some(WhatsAppRelation::Reply {
                id: to.to_owned(),
                quoted: Some(quoted.to_owned()),
            }),
            &[],
        );
    };
    reply(&old, "ancien", "je me souviens");
    let seen = alice
        .wait_for(&room, "the reply to the old message", |s| {
            s.body.ends_with("Carol: je me souviens")
        })
        .await;
    assert_eq!(seen.body, "> ancien\n\nCarol: je me souviens");
    assert_eq!(seen.relation, None);
    reply(&recent, "récent", "moi aussi");
    let seen = alice
        .wait_for(&room, "the reply to the recent message", |s| {
            s.body.ends_with("Carol: moi aussi")
        })
        .await;
    assert_eq!(
        seen.relation,
        Some(("reply".into(), recent_seen.event_id.clone()))
    );
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn votes_answer_the_numbers_poll_only_for_matrix_polls_that_crossed() {
    use matrix_sdk::ruma::events::poll::unstable_response::UnstablePollResponseEventContent;
    use matrix_sdk::ruma::events::poll::unstable_start::{
        NewUnstablePollStartEventContent, UnstablePollAnswer, UnstablePollStartContentBlock,
        UnstablePollStartEventContent,
    };
    let (mut bridge, alice, jid, room) = bridged_group("poll-answers", "").await;
    let net = bridge.network.clone();
    let joined = alice.wait_joined(&room).await;
    let ask = |question: &'static str, options: usize| {
        let joined = joined.clone();
        async move {
            let answers: Vec<UnstablePollAnswer> = (0..options)
                .map(|n| UnstablePollAnswer::new(format!("a{n}"), format!("choix {n}")))
                .collect();
            joined
                .send(UnstablePollStartEventContent::New(
                    NewUnstablePollStartEventContent::new(UnstablePollStartContentBlock::new(
                        question,
                        answers.try_into().unwrap(),
                    )),
                ))
                .await
                .unwrap()
                .response
                .event_id
        }
    };
    let vote = |poll: matrix_sdk::ruma::OwnedEventId| {
        let joined = joined.clone();
        async move {
            joined
                .send(UnstablePollResponseEventContent::new(
                    vec!["a1".into()],
                    poll,
                ))
                .await
                .unwrap();
        }
    };
    // A poll WhatsApp cannot hold is refused; a vote in it answers nothing.
    let refused = ask("Trop ?", 13).await;
    alice
        .wait_for(&room, "the refusal", |s| {
            s.msgtype == "m.notice" && s.body.contains("WhatsApp polls have 2 to 12")
        })
        .await;
    vote(refused).await;
    // A poll that crossed: the vote is a line answering the number's poll.
    let asked = ask("Sortie ?", 2).await;
    let number_poll = wait_fake(&net, &jid, |m| m.text == "Sortie ?: choix 0 / choix 1").await;
    vote(asked).await;
    let line = wait_fake(&net, &jid, |m| m.text == "* _Alice_ voted: choix 1").await;
    assert_eq!(
        line.relation,
        Some(WhatsAppRelation::Reply {
            id: number_poll.id.clone(),
            quoted: None
        })
    );
    assert_eq!(
        net.messages(&jid)
            .iter()
            .filter(|m| m.text.contains("voted"))
            .count(),
        1,
        "the vote in the refused poll never crossed: {:?}",
        net.messages(&jid)
    );
    bridge.stop().await;
}

/// Waits until the fake group holds a message matching `found`.
async fn wait_fake(
    net: &passerelle::whatsapp::fake::FakeNetwork,
    jid: &str,
    found: impl Fn(&passerelle::whatsapp::fake::FakeMessage) -> bool,
) -> passerelle::whatsapp::fake::FakeMessage {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(message) = net.messages(jid).into_iter().find(|m| found(m)) {
            return message;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never found; group: {:#?}",
            net.messages(jid)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_can_be_switched_off_each_way() {
    let synapse = Synapse::shared();
    let (mut bridge, alice, jid, room) = bridged_group("no-reactions", "").await;
    bridge.append_config(
        "[relay]\nreactions_to_whatsapp = \"ignore\"\nreactions_to_matrix = \"ignore\"\n",
    );
    bridge.service().reload().await.unwrap();
    let _ = synapse;
    let net = bridge.network.clone();
    let bob_id = net.post(&jid, BOB, Some("Bob"), "réagissez");
    let mirrored = alice
        .wait_for(&room, "Bob's message", |s| s.body == "Bob: réagissez")
        .await;
    let reaction = Some(WhatsAppRelation::Reaction {
        id: bob_id.clone(),
        emoji: "👍".into(),
    });
    net.post_related(&jid, CAROL, Some("Carol"), "", reaction, &[]);
    alice
        .wait_joined(&room)
        .await
        .send(ReactionEventContent::new(Annotation::new(
            EventId::parse(&mirrored.event_id).unwrap(),
            "👍".into(),
        )))
        .await
        .unwrap();
    // Barriers both ways, then nothing of either reaction on the other side.
    net.post(&jid, BOB, Some("Bob"), "barrière");
    alice
        .wait_for(&room, "the barrier", |s| s.body == "Bob: barrière")
        .await;
    alice.send_text(&room, "barrier").await;
    bridge.wait_whatsapp_text(&jid, "*Alice*: barrier").await;
    assert!(
        !alice
            .seen_in(&room)
            .iter()
            .any(|s| s.body.contains("reacted")),
        "no reaction line in Matrix"
    );
    assert!(
        !net.messages(&jid).iter().any(|m| m.sender_phone
            == passerelle::whatsapp::fake::BRIDGE_PHONE
            && matches!(m.relation, Some(WhatsAppRelation::Reaction { .. }))),
        "no reaction from the number"
    );
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_reactions_can_be_one_edited_digest_reply() {
    use passerelle::whatsapp::fake::BRIDGE_PHONE;
    let (mut bridge, alice, jid, room) = bridged_group("digest", "").await;
    bridge.append_config("[relay]\nreactions_to_whatsapp = \"digest\"\n");
    bridge.service().reload().await.unwrap();
    let net = bridge.network.clone();
    let bob_id = net.post(&jid, BOB, Some("Bob"), "qui vient samedi ?");
    let mirrored = alice
        .wait_for(&room, "Bob's message", |s| {
            s.body == "Bob: qui vient samedi ?"
        })
        .await;
    let joined = alice.wait_joined(&room).await;
    let target = EventId::parse(&mirrored.event_id).unwrap();
    let react = |emoji: &'static str| {
        let joined = joined.clone();
        let target = target.clone();
        async move {
            joined
                .send(ReactionEventContent::new(Annotation::new(
                    target,
                    emoji.into(),
                )))
                .await
                .unwrap()
                .response
                .event_id
        }
    };
    let from_number = |m: &passerelle::whatsapp::fake::FakeMessage| m.sender_phone == BRIDGE_PHONE;

    // The first reaction: one reply of the number to Bob's message.
    let thumbs = react("👍").await;
    let reply = wait_fake(&net, &jid, |m| from_number(m) && m.text == "👍 Alice").await;
    assert_eq!(
        reply.relation,
        Some(WhatsAppRelation::Reply {
            id: bob_id.clone(),
            quoted: None
        })
    );
    // The next ones edit that reply, and so do removals; the last removal deletes it.
    let party = react("🎉").await;
    let edited_to = |text: &'static str| {
        let id = reply.id.clone();
        move |m: &passerelle::whatsapp::fake::FakeMessage| {
            from_number(m)
                && m.text == text
                && m.relation == Some(WhatsAppRelation::Edit { id: id.clone() })
        }
    };
    wait_fake(&net, &jid, edited_to("👍 Alice · 🎉 Alice")).await;
    joined.redact(&thumbs, None, None).await.unwrap();
    wait_fake(&net, &jid, edited_to("🎉 Alice")).await;
    joined.redact(&party, None, None).await.unwrap();
    wait_fake(&net, &jid, |m| {
        from_number(m)
            && m.relation
                == Some(WhatsAppRelation::Revoke {
                    id: reply.id.clone(),
                })
    })
    .await;
    assert!(
        !net.messages(&jid).iter().any(
            |m| from_number(m) && matches!(m.relation, Some(WhatsAppRelation::Reaction { .. }))
        ),
        "no reaction of the number itself"
    );
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_reactions_can_be_the_bots_own_one_per_emoji() {
    let synapse = Synapse::shared();
    let (mut bridge, alice, jid, room) = bridged_group("bot-reactions", "").await;
    bridge.append_config("[relay]\nreactions_to_matrix = \"reaction\"\n");
    bridge.service().reload().await.unwrap();
    let net = bridge.network.clone();
    let bob_id = net.post(&jid, BOB, Some("Bob"), "on se voit quand ?");
    let mirrored = alice
        .wait_for(&room, "Bob's message", |s| {
            s.body == "Bob: on se voit quand ?"
        })
        .await;
    let react = |who: &str, emoji: &str| {
        let relation = Some(WhatsAppRelation::Reaction {
            id: bob_id.clone(),
            emoji: emoji.into(),
        });
        net.post_related(&jid, who, None, "", relation, &[]);
    };
    let bot = bridge.bot_user.clone();
    let wait_annotations = |expected: Vec<&'static str>| {
        let (alice, room, event, bot) = (&alice, &room, &mirrored.event_id, &bot);
        async move {
            let expected: Vec<(String, String)> = expected
                .iter()
                .map(|key| (bot.clone(), key.to_string()))
                .collect();
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                let found = alice.annotations(synapse, room, event).await;
                if found == expected {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "expected {expected:?}, found {found:?}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    };
    // Two people react 👍: one reaction of the bot. One changes to ❤️: both show.
    react(CAROL, "👍");
    wait_annotations(vec!["👍"]).await;
    react(DAVE, "👍");
    react(CAROL, "❤️");
    wait_annotations(vec!["❤️", "👍"]).await;
    // The last 👍 goes: so does the bot's.
    react(DAVE, "");
    wait_annotations(vec!["❤️"]).await;
    assert!(
        !alice
            .seen_in(&room)
            .iter()
            .any(|s| s.body.contains("reacted") || s.msgtype == "m.notice"),
        "no reaction lines in this mode, and no refused (doubled) reaction"
    );
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_name_and_description_follow_whatsapp() {
    let (mut bridge, alice, jid, room) = bridged_group("group-state", "").await;
    let net = bridge.network.clone();
    net.change_group(&jid, GroupChange::Subject("Famille Martin-Durand".into()));
    net.change_group(
        &jid,
        GroupChange::Description(Some("Les nouvelles de la famille".into())),
    );
    let synapse = Synapse::shared();
    alice
        .wait_state(
            synapse,
            &room,
            "m.room.name",
            "name",
            "Famille Martin-Durand",
        )
        .await;
    alice
        .wait_state(
            synapse,
            &room,
            "m.room.topic",
            "topic",
            "Les nouvelles de la famille",
        )
        .await;
    bridge.stop().await;
}
