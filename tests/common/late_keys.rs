//! A Matrix device that sends an encrypted message now and hands out its room key
//! only when the test says so, as a client or a federation link that is late with
//! its to-device messages would: the receivers first see an event they cannot
//! decrypt, then get the key.
//!
//! It is a second device of an existing user with its own `OlmMachine` (in memory),
//! driven by hand: the login's client only carries the requests.

use std::sync::Arc;

use matrix_sdk::ruma::api::client::keys::{claim_keys, get_keys, upload_keys};
use matrix_sdk::ruma::api::client::message::send_message_event;
use matrix_sdk::ruma::api::client::to_device::send_event_to_device;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::events::AnyMessageLikeEventContent;
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::{OwnedUserId, RoomId, TransactionId, UserId};
use matrix_sdk::Client;
use matrix_sdk_crypto::types::requests::{AnyOutgoingRequest, ToDeviceRequest};
use matrix_sdk_crypto::{EncryptionSettings, OlmMachine};

use super::synapse::Synapse;

/// Room keys shared but not sent yet.
pub struct HeldKeys(Vec<Arc<ToDeviceRequest>>);

pub struct LateKeyDevice {
    client: Client,
    machine: OlmMachine,
    user: OwnedUserId,
}

impl LateKeyDevice {
    /// Logs `user_id` in as a new device and publishes its device keys.
    pub async fn login(synapse: &Synapse, user_id: &str, password: &str) -> LateKeyDevice {
        let client = Client::builder()
            .homeserver_url(&synapse.url)
            .build()
            .await
            .expect("build the late-key device's client");
        let login = client
            .matrix_auth()
            .login_username(user_id, password)
            .initial_device_display_name("late keys")
            .send()
            .await
            .expect("late-key device login");
        let machine = OlmMachine::new(&login.user_id, &login.device_id).await;
        let device = LateKeyDevice {
            client,
            machine,
            user: login.user_id,
        };
        device.send_outgoing().await;
        device
    }

    /// Sends what the machine has to say (key uploads, queries), until it has nothing.
    async fn send_outgoing(&self) {
        for _ in 0..10 {
            let requests = self.machine.outgoing_requests().await.expect("requests");
            if requests.is_empty() {
                return;
            }
            for request in requests {
                let id = request.request_id().to_owned();
                match request.request() {
                    AnyOutgoingRequest::KeysUpload(upload) => {
                        let response: upload_keys::v3::Response =
                            self.client.send(upload.clone()).await.expect("keys upload");
                        self.machine.mark_request_as_sent(&id, &response).await
                    }
                    AnyOutgoingRequest::KeysQuery(query) => {
                        let mut ruma = get_keys::v3::Request::new();
                        ruma.device_keys = query.device_keys.clone();
                        let response = self.client.send(ruma).await.expect("keys query");
                        self.machine.mark_request_as_sent(&id, &response).await
                    }
                    AnyOutgoingRequest::KeysClaim(claim) => {
                        let response: claim_keys::v3::Response =
                            self.client.send(claim.clone()).await.expect("keys claim");
                        self.machine.mark_request_as_sent(&id, &response).await
                    }
                    AnyOutgoingRequest::ToDeviceRequest(to_device) => {
                        let response = self.send_to_device(to_device).await;
                        self.machine.mark_request_as_sent(&id, &response).await
                    }
                    other => panic!("the late-key device does not send {other:?}"),
                }
                .expect("mark a request as sent");
            }
        }
        panic!("the late-key device's machine never ran out of requests");
    }

    async fn send_to_device(
        &self,
        request: &ToDeviceRequest,
    ) -> send_event_to_device::v3::Response {
        let ruma = send_event_to_device::v3::Request::new_raw(
            request.event_type.clone(),
            request.txn_id.clone(),
            request.messages.clone(),
        );
        self.client.send(ruma).await.expect("to-device send")
    }

    /// Sends `body` to `room_id` encrypted for the devices of `recipients` and
    /// returns its event id and the room keys, which nobody has until
    /// [`give_keys`](Self::give_keys).
    pub async fn send_keeping_the_key(
        &self,
        room_id: &str,
        recipients: &[&str],
        body: &str,
    ) -> (String, HeldKeys) {
        let room = RoomId::parse(room_id).unwrap();
        let mut users: Vec<OwnedUserId> = recipients
            .iter()
            .map(|user| UserId::parse(*user).unwrap())
            .collect();
        users.push(self.user.clone());
        self.machine
            .update_tracked_users(users.iter().map(|u| u.as_ref()))
            .await
            .expect("track the recipients");
        self.send_outgoing().await;
        if let Some((id, claim)) = self
            .machine
            .get_missing_sessions(users.iter().map(|u| u.as_ref()))
            .await
            .expect("missing sessions")
        {
            let response: claim_keys::v3::Response =
                self.client.send(claim).await.expect("keys claim");
            self.machine
                .mark_request_as_sent(&id, &response)
                .await
                .expect("claimed");
        }
        let keys = self
            .machine
            .share_room_key(
                &room,
                users.iter().map(|u| u.as_ref()),
                EncryptionSettings::default(),
            )
            .await
            .expect("share the room key");
        let content: Raw<AnyMessageLikeEventContent> =
            Raw::new(&RoomMessageEventContent::text_plain(body))
                .unwrap()
                .cast_unchecked();
        let encrypted = self
            .machine
            .encrypt_room_event_raw(&room, "m.room.message", &content)
            .await
            .expect("encrypt");
        let send = send_message_event::v3::Request::new_raw(
            room.clone(),
            TransactionId::new(),
            "m.room.encrypted".into(),
            encrypted.content.cast_unchecked(),
        );
        let sent = self
            .client
            .send(send)
            .await
            .expect("send the encrypted event");
        (sent.event_id.to_string(), HeldKeys(keys))
    }

    /// Sends the room keys held back by [`send_keeping_the_key`](Self::send_keeping_the_key).
    pub async fn give_keys(&self, keys: HeldKeys) {
        for request in keys.0 {
            let response = self.send_to_device(&request).await;
            self.machine
                .mark_request_as_sent(&request.txn_id, &response)
                .await
                .expect("keys sent");
        }
    }
}
