//! A Matrix person for integration tests: a real matrix-sdk client on the test
//! Synapse that joins rooms it is invited to and records every message it sees.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use matrix_sdk::config::SyncSettings;
use matrix_sdk::room::MessagesOptions;
use matrix_sdk::room::Room;
use matrix_sdk::ruma::api::client::filter::FilterDefinition;
use matrix_sdk::ruma::api::client::message::send_message_event;
use matrix_sdk::ruma::api::client::sync::sync_events::v3::Filter;
use matrix_sdk::ruma::events::room::member::{MembershipState, StrippedRoomMemberEvent};
use matrix_sdk::ruma::events::room::message::{
    MessageType, OriginalSyncRoomMessageEvent, Relation, RoomMessageEventContent,
};
use matrix_sdk::ruma::events::{AnySyncMessageLikeEvent, AnySyncTimelineEvent};
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::{OwnedRoomId, RoomId, TransactionId, UserId};
use matrix_sdk::Client;

use super::synapse::Synapse;

/// One message event as a Matrix user saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub room_id: String,
    pub event_id: String,
    pub sender: String,
    pub msgtype: String,
    pub body: String,
    pub html: Option<String>,
    /// `("reply", event)` or `("replace", event)` when the event relates to another;
    /// for an edit, `body` and `html` are those of the new content.
    pub relation: Option<(String, String)>,
}

pub struct MatrixUser {
    pub client: Client,
    pub user_id: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    sync: tokio::task::JoinHandle<()>,
}

impl Drop for MatrixUser {
    fn drop(&mut self) {
        self.sync.abort();
    }
}

impl MatrixUser {
    /// Registers `localpart` on the shared Synapse, logs in, sets a display name
    /// (when given), auto-joins invites and starts syncing.
    pub async fn new(synapse: &Synapse, localpart: &str, display_name: Option<&str>) -> MatrixUser {
        let password = format!("pw-{localpart}");
        let user_id = synapse.register(localpart, &password, false);
        Self::login(synapse, &user_id, &password, display_name).await
    }

    /// Logs in an existing user.
    pub async fn login(
        synapse: &Synapse,
        user_id: &str,
        password: &str,
        display_name: Option<&str>,
    ) -> MatrixUser {
        let client = Client::builder()
            .homeserver_url(&synapse.url)
            .build()
            .await
            .expect("build test client");
        client
            .matrix_auth()
            .login_username(user_id, password)
            .send()
            .await
            .expect("test user login");
        if let Some(name) = display_name {
            client
                .account()
                .set_display_name(Some(name))
                .await
                .expect("set display name");
        }
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let recorder = seen.clone();
        client.add_event_handler(move |event: OriginalSyncRoomMessageEvent, room: Room| {
            let recorder = recorder.clone();
            async move {
                let (msgtype, relation) = match &event.content.relates_to {
                    Some(Relation::Replacement(replacement)) => (
                        &replacement.new_content.msgtype,
                        Some(("replace".to_string(), replacement.event_id.to_string())),
                    ),
                    Some(Relation::Reply(reply)) => (
                        &event.content.msgtype,
                        Some(("reply".to_string(), reply.in_reply_to.event_id.to_string())),
                    ),
                    _ => (&event.content.msgtype, None),
                };
                let (body, html) = match msgtype {
                    MessageType::Text(text) => (
                        text.body.clone(),
                        text.formatted.as_ref().map(|f| f.body.clone()),
                    ),
                    MessageType::Notice(notice) => (
                        notice.body.clone(),
                        notice.formatted.as_ref().map(|f| f.body.clone()),
                    ),
                    MessageType::Emote(emote) => (emote.body.clone(), None),
                    other => (other.body().to_string(), None),
                };
                recorder.lock().unwrap().push(Seen {
                    room_id: room.room_id().to_string(),
                    event_id: event.event_id.to_string(),
                    sender: event.sender.to_string(),
                    msgtype: event.content.msgtype().to_string(),
                    body,
                    html,
                    relation,
                });
            }
        });
        let own_id = UserId::parse(user_id).unwrap();
        client.add_event_handler(move |event: StrippedRoomMemberEvent, room: Room| {
            let own_id = own_id.clone();
            async move {
                if event.state_key == own_id && event.content.membership == MembershipState::Invite
                {
                    for _ in 0..10 {
                        if room.join().await.is_ok() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            }
        });
        client
            .sync_once(SyncSettings::default())
            .await
            .expect("first sync");
        let sync_client = client.clone();
        let sync = tokio::spawn(async move {
            // A large timeline limit: a test user must see bursts whole (Synapse's
            // default of 10 per sync would skip events, as the bridge's notes warn).
            let mut filter = FilterDefinition::default();
            filter.room.timeline.limit = Some(1000u32.into());
            let settings = SyncSettings::default()
                .timeout(Duration::from_secs(5))
                .filter(Filter::FilterDefinition(filter));
            let _ = sync_client.sync(settings).await;
        });
        MatrixUser {
            client,
            user_id: user_id.to_string(),
            seen,
            sync,
        }
    }

    /// Every message seen so far in `room_id`, in order.
    pub fn seen_in(&self, room_id: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|seen| seen.room_id == room_id)
            .cloned()
            .collect()
    }

    /// An event as the server has it now (e.g. to see that it was redacted).
    pub async fn raw_event(
        &self,
        synapse: &Synapse,
        room_id: &str,
        event_id: &str,
    ) -> serde_json::Value {
        let (status, body) = self
            .get(
                synapse,
                &format!(
                    "/_matrix/client/v3/rooms/{}/event/{}",
                    urlencode(room_id),
                    urlencode(event_id)
                ),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// `GET path` on the homeserver as this user: the status and the JSON answer.
    async fn get(&self, synapse: &Synapse, path: &str) -> (u16, serde_json::Value) {
        let token = self.client.access_token().expect("logged in");
        let url = synapse.api(path);
        tokio::task::spawn_blocking(move || {
            super::synapse::http_json("GET", &url, Some(&token), None)
        })
        .await
        .unwrap()
    }

    /// Waits until the server's state event `event_type` (state key "") of the room
    /// has `field` equal to `value`.
    pub async fn wait_state(
        &self,
        synapse: &Synapse,
        room_id: &str,
        event_type: &str,
        field: &str,
        value: &str,
    ) {
        self.wait_state_matching(
            synapse,
            room_id,
            event_type,
            &format!("{field} = {value:?}"),
            |content| content[field] == value,
        )
        .await;
    }

    /// Waits until the content of the server's state event `event_type` (state key
    /// "") of the room satisfies `ready`; returns that content.
    pub async fn wait_state_matching(
        &self,
        synapse: &Synapse,
        room_id: &str,
        event_type: &str,
        what: &str,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/state/{event_type}/",
            urlencode(room_id)
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (_, content) = self.get(synapse, &path).await;
            if ready(&content) {
                return content;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{event_type} never had {what}: {content}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The reactions (`sender`, `key`) the server has on `event_id`, redacted ones
    /// left out.
    pub async fn annotations(
        &self,
        synapse: &Synapse,
        room_id: &str,
        event_id: &str,
    ) -> Vec<(String, String)> {
        let (status, body) = self
            .get(
                synapse,
                &format!(
                    "/_matrix/client/v1/rooms/{}/relations/{}/m.annotation",
                    urlencode(room_id),
                    urlencode(event_id)
                ),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let mut found: Vec<(String, String)> = body["chunk"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|event| {
                let key = event["content"]["m.relates_to"]["key"].as_str()?;
                Some((event["sender"].as_str()?.to_owned(), key.to_owned()))
            })
            .collect();
        found.sort();
        found
    }

    /// Waits until the server shows `event_id` as redacted.
    pub async fn wait_redacted(&self, synapse: &Synapse, room_id: &str, event_id: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let event = self.raw_event(synapse, room_id, event_id).await;
            if event["unsigned"]["redacted_because"].is_object() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{event_id} never redacted: {event}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until a message matching `predicate` is seen in any room.
    pub async fn wait_anywhere(&self, what: &str, predicate: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let seen = self.seen.lock().unwrap().clone();
            if let Some(found) = seen.into_iter().find(|s| predicate(s)) {
                return found;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("{} never saw {what} in any room", self.user_id);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until a message matching `predicate` is seen in `room_id`.
    pub async fn wait_for(
        &self,
        room_id: &str,
        what: &str,
        predicate: impl Fn(&Seen) -> bool,
    ) -> Seen {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(found) = self.seen_in(room_id).into_iter().find(|s| predicate(s)) {
                return found;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{} never saw {what} in {room_id}; saw: {:#?}",
                    self.user_id,
                    self.seen_in(room_id)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The bodies `sender` posted in the room, oldest first, from the room's history
    /// on the server (independent of what sync showed).
    pub async fn history_from(&self, room_id: &str, sender: &str) -> Vec<String> {
        self.history(room_id)
            .await
            .into_iter()
            .filter(|(from, _)| from == sender)
            .map(|(_, body)| body)
            .collect()
    }

    /// The room's whole history as the server has it (oldest first): bodies of
    /// `m.room.message` events with their senders. Independent of what sync showed.
    pub async fn history(&self, room_id: &str) -> Vec<(String, String)> {
        self.timeline(room_id)
            .await
            .iter()
            .filter_map(|event| match event.raw().deserialize() {
                Ok(AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomMessage(
                    matrix_sdk::ruma::events::room::message::SyncRoomMessageEvent::Original(m),
                ))) => Some((m.sender.to_string(), m.content.body().to_string())),
                _ => None,
            })
            .collect()
    }

    /// Every event of the room's history on the server, oldest first (decrypted
    /// where the user can).
    async fn timeline(
        &self,
        room_id: &str,
    ) -> Vec<matrix_sdk::deserialized_responses::TimelineEvent> {
        let room = self.wait_joined(room_id).await;
        let mut events = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut options = MessagesOptions::forward().from(token.as_deref());
            options.limit = 100u32.into();
            let page = room.messages(options).await.expect("room history");
            let empty = page.chunk.is_empty();
            events.extend(page.chunk);
            match page.end {
                Some(end) if !empty => token = Some(end),
                _ => return events,
            }
        }
    }

    /// The events of type `event_type` in the room's history on the server, oldest
    /// first, as JSON (decrypted where the user can).
    pub async fn events_of_type(&self, room_id: &str, event_type: &str) -> Vec<serde_json::Value> {
        self.timeline(room_id)
            .await
            .iter()
            .filter_map(|event| event.raw().deserialize_as::<serde_json::Value>().ok())
            .filter(|json| json["type"] == event_type)
            .collect()
    }

    /// Waits until the user is joined to `room_id` (after an invite).
    pub async fn wait_joined(&self, room_id: &str) -> Room {
        let room_id: OwnedRoomId = RoomId::parse(room_id).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(room) = self.client.get_room(&room_id) {
                if room.state() == matrix_sdk::RoomState::Joined {
                    return room;
                }
            }
            if tokio::time::Instant::now() > deadline {
                panic!("{} never joined {room_id}", self.user_id);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends a plain text message and returns its event id.
    pub async fn send_text(&self, room_id: &str, body: &str) -> String {
        self.send(room_id, RoomMessageEventContent::text_plain(body))
            .await
    }

    /// Sends an event of `event_type` with `content` exactly as given, as a modified
    /// client could (no encryption by the SDK, no checks); returns its event id.
    pub async fn send_raw_event(
        &self,
        room_id: &str,
        event_type: &str,
        content: serde_json::Value,
    ) -> String {
        let request = send_message_event::v3::Request::new_raw(
            RoomId::parse(room_id).unwrap(),
            TransactionId::new(),
            event_type.into(),
            Raw::new(&content).unwrap().cast_unchecked(),
        );
        self.client
            .send(request)
            .await
            .expect("send a raw event")
            .event_id
            .to_string()
    }

    pub async fn send(&self, room_id: &str, content: RoomMessageEventContent) -> String {
        let room = self.wait_joined(room_id).await;
        room.send(content)
            .await
            .expect("send message")
            .response
            .event_id
            .to_string()
    }
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
