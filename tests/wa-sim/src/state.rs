//! The simulated world: phone numbers, their linked devices, pending pairings and
//! which device is online on which connection. One mutex, never held across `.await`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};
use wacore::libsignal::protocol::KeyPair;
use wacore_binary::Node;

use crate::noise::ServerIdentity;

/// What a connection's writer task is asked to do.
pub enum Outgoing {
    Node(Node),
    /// Flush what is queued, then close the WebSocket.
    Close,
    /// Flush what is queued, then drop the connection without a WebSocket
    /// close frame or stream error (the client sees the stream end).
    Abort,
}

/// Cheap handle to send stanzas to one connected client.
#[derive(Clone)]
pub struct ConnHandle {
    pub id: u64,
    tx: mpsc::UnboundedSender<Outgoing>,
}

impl ConnHandle {
    pub fn new(id: u64, tx: mpsc::UnboundedSender<Outgoing>) -> Self {
        Self { id, tx }
    }

    /// Queues a stanza; silently dropped if the connection is gone.
    pub fn send(&self, node: Node) {
        let _ = self.tx.send(Outgoing::Node(node));
    }

    pub fn close(&self) {
        let _ = self.tx.send(Outgoing::Close);
    }

    /// Sends what is queued, then closes the TCP connection abruptly.
    pub fn abort(&self) {
        let _ = self.tx.send(Outgoing::Abort);
    }
}

/// A stanza routed to a device, kept until the device acknowledges it
/// (`<receipt>` or `<ack class="message">` for messages, `<ack class=TAG>` for
/// the rest) and sent again at each login until then.
pub struct Pending {
    pub node: Node,
    /// Connection it was last sent on (`None`: never sent).
    pub sent_on: Option<u64>,
}

/// Chaos switches of one device (`PUT /phones/{phone}/devices/{n}/faults`).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Faults {
    /// Close the connection abruptly after every N stanzas routed to it live (0 = off).
    pub drop_every: u64,
    /// Put a malformed stanza before every N-th message stanza routed live (0 = off).
    pub malformed_every: u64,
    /// Lose the next N `<message>` stanzas this device sends: neither routed nor
    /// acked, and the connection cut right after, as if the network failed before
    /// the server got them (counts down).
    pub swallow_messages: u64,
    /// Message stanzas lost that way.
    pub swallowed: u64,
    /// Counters, for tests: stanzas routed live, message stanzas among them,
    /// connections dropped, malformed stanzas sent.
    pub routed: u64,
    pub messages: u64,
    pub drops: u64,
    pub malformed_sent: u64,
}

/// How the next logins of a device are refused (`<failure reason=...>`).
#[derive(Clone, Debug)]
pub enum LoginFault {
    /// `402` with a ban `code` until `until` (unix seconds); `expire` is the rest.
    TempBan { code: u32, until: i64 },
    /// `405`: client version too old.
    Outdated,
}

/// Signal identity and signed pre-key a device announced in its registration payload.
#[derive(Clone, Debug, Default)]
pub struct RegistrationData {
    pub registration_id: u32,
    pub identity_pub: Vec<u8>,
    pub signed_prekey_id: u32,
    pub signed_prekey_pub: Vec<u8>,
    pub signed_prekey_sig: Vec<u8>,
}

/// A phone number: its primary phone (device 0, simulated, never connects), the
/// account key that signs the identities of linked devices (and is the phone's
/// Signal identity), and the app-state sync key it shares with them.
pub struct Phone {
    pub lid_user: String,
    /// `raw_id` of the account's ADV identities and key-index lists.
    pub raw_id: u32,
    pub account_key: KeyPair,
    pub next_device: u16,
    pub next_key_index: u32,
    /// The app-state sync key the phone shares with its linked devices.
    pub sync_key: crate::phone::SyncKey,
    /// The phone's Signal sessions with its linked devices.
    pub sessions: crate::phone::Sessions,
}

/// A linked (companion) device that completed pairing.
pub struct DeviceRecord {
    pub noise_pub: [u8; 32],
    pub registration: RegistrationData,
    /// The `ADVSignedDeviceIdentity` the device signed back (without the HMAC wrapper).
    pub signed_identity: Vec<u8>,
    pub key_index: u32,
    pub push_name: String,
    /// One-time pre-keys uploaded and not yet handed out: (id, public key).
    pub prekeys: Vec<(u32, Vec<u8>)>,
}

/// A device that connected with a registration payload and shows QR codes.
pub struct Registering {
    pub conn: ConnHandle,
    pub noise_pub: [u8; 32],
    pub registration: RegistrationData,
    pub push_name: String,
}

/// A `<pair-success>` sent to a device, waiting for its `<pair-device-sign>`.
pub struct PendingSign {
    pub conn_id: u64,
    pub phone: String,
    pub device: u16,
    pub key_index: u32,
    pub noise_pub: [u8; 32],
    pub registration: RegistrationData,
    pub push_name: String,
    pub done: oneshot::Sender<Result<(), String>>,
}

/// `phone` and `device` number of a linked device (`phone:device@s.whatsapp.net`).
pub type DeviceKey = (String, u16);

#[derive(Default)]
pub struct Inner {
    pub phones: HashMap<String, Phone>,
    pub devices: HashMap<DeviceKey, DeviceRecord>,
    pub online: HashMap<DeviceKey, ConnHandle>,
    /// QR ref -> registering connection id.
    pub refs: HashMap<String, u64>,
    pub registering: HashMap<u64, Registering>,
    /// Pair-code linking: phone number -> the device that asked to link with it.
    pub code_requests: HashMap<String, crate::pair_code::CodeRequest>,
    /// Pair-code linking: pairing ref -> code entered, waiting for `companion_finish`.
    pub codes_entered: HashMap<String, crate::pair_code::CodeEntered>,
    /// `<pair-success>` iq id -> pending signature.
    pub pending_signs: HashMap<String, PendingSign>,
    /// Stanzas routed to each device and not acknowledged yet, in routing order:
    /// (re)sent at the device's next `<active/>` unless sent on that connection.
    pub outbox: HashMap<DeviceKey, Vec<Pending>>,
    pub faults: HashMap<DeviceKey, Faults>,
    pub login_faults: HashMap<DeviceKey, LoginFault>,
    /// Groups by id (`ID` of `ID@g.us`).
    pub groups: HashMap<String, crate::groups::Group>,
    pub next_group: u64,
    pub next_notification: u64,
    /// Uploaded (encrypted) media by direct path.
    pub media: HashMap<String, Vec<u8>>,
    /// How long each media download waits before its answer (`PUT /media/faults`).
    pub media_delay_ms: u64,
    /// `(sender phone, chat, message id)` of every message routed: like WhatsApp, a
    /// message sent again under the same id (a retry after a lost ack) is acked and
    /// not delivered twice.
    pub routed_ids: std::collections::HashSet<(String, String, String)>,
    /// `(sender phone, message id)` -> the rank in which the server routed it: the
    /// order a phone shows messages in (member clients may decrypt out of order).
    pub routed_order: HashMap<(String, String), u64>,
    next_lid: u64,
}

impl Inner {
    /// The phone for `number`, created on first use with a fresh account key and LID.
    pub fn phone_mut(&mut self, number: &str) -> &mut Phone {
        if !self.phones.contains_key(number) {
            self.next_lid += 1;
            let lid_user = format!("{}", 100_000_000_000_000u64 + self.next_lid);
            self.phones.insert(
                number.to_string(),
                Phone {
                    lid_user,
                    raw_id: (self.next_lid as u32).wrapping_mul(2_654_435_761) | 1,
                    account_key: wacore::crypto::generate_curve_key_pair(),
                    next_device: 1,
                    next_key_index: 1,
                    sync_key: crate::phone::SyncKey::generate(),
                    sessions: Default::default(),
                },
            );
        }
        self.phones.get_mut(number).expect("inserted above")
    }

    /// The linked device a JID names: `phone:device@s.whatsapp.net` or
    /// `lid:device@lid` (device 0, the simulated phone, holds no keys).
    pub fn device_key_for_jid(&self, jid: &str) -> Option<DeviceKey> {
        let (user, server) = jid.split_once('@')?;
        let (user, device) = match user.split_once(':') {
            Some((u, d)) => (u, d.parse::<u16>().ok()?),
            None => (user, 0),
        };
        let phone = match server {
            "s.whatsapp.net" => user.to_string(),
            "lid" => self
                .phones
                .iter()
                .find(|(_, p)| p.lid_user == user)
                .map(|(n, _)| n.clone())?,
            _ => return None,
        };
        let key = (phone, device);
        self.devices.contains_key(&key).then_some(key)
    }
}

/// Shared simulator state.
pub struct World {
    pub identity: ServerIdentity,
    pub inner: Mutex<Inner>,
    next_id: AtomicU64,
}

impl World {
    pub fn new(identity: ServerIdentity) -> Self {
        Self {
            identity,
            inner: Mutex::new(Inner::default()),
            next_id: AtomicU64::new(1),
        }
    }

    /// Process-unique number for connection and stanza ids.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets everything tied to a closed connection.
    pub fn connection_closed(&self, conn_id: u64) {
        let mut inner = self.lock();
        inner.online.retain(|_, c| c.id != conn_id);
        if inner.registering.remove(&conn_id).is_some() {
            inner.refs.retain(|_, c| *c != conn_id);
            inner.code_requests.retain(|_, r| r.conn_id != conn_id);
            inner.codes_entered.retain(|_, c| c.conn_id != conn_id);
        }
        let stale: Vec<String> = inner
            .pending_signs
            .iter()
            .filter(|(_, p)| p.conn_id == conn_id)
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some(p) = inner.pending_signs.remove(&id) {
                let _ = p
                    .done
                    .send(Err("device disconnected before signing".into()));
            }
        }
    }
}
