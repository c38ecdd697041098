//! The simulated primary phone's Signal side: like a real primary, it shares the
//! account's app-state sync key with each newly linked device, in a
//! Signal-encrypted `<message>` from device 0 of the same number (a
//! `protocol_message` of type `APP_STATE_SYNC_KEY_SHARE`).
//!
//! whatsapp-rust accepts a key share only from its own account (`is_from_me`);
//! until one arrives, the first login after pairing waits up to 10 s before
//! `Event::Connected`. The phone's Signal identity is the account key (a real
//! primary's identity key is the key that signs its companions' ADV identities),
//! its stores live in memory, and it opens the session from the pre-key bundle
//! the device announced in its registration payload (no one-time pre-key:
//! the device has not uploaded any yet).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use wacore::libsignal::protocol::error::Result as SignalResult;
use wacore::libsignal::protocol::{
    CiphertextMessage, DeviceId, Direction, IdentityChange, IdentityKey, IdentityKeyPair,
    IdentityKeyStore, PreKeyBundle, ProtocolAddress, PublicKey, SessionRecord, SessionStore,
    UsePQRatchet, message_encrypt, process_prekey_bundle,
};
use wacore::messages::MessageUtils;
use wacore_binary::builder::NodeBuilder;
use waproto::buffa::MessageField;
use waproto::whatsapp as wa;

use crate::stanza::{SERVER, now};
use crate::state::{DeviceKey, World};

/// The account's app-state sync key, created with the phone.
#[derive(Clone)]
pub struct SyncKey {
    pub id: Vec<u8>,
    pub data: Vec<u8>,
    /// Creation time, unix milliseconds.
    pub timestamp: i64,
}

impl SyncKey {
    pub fn generate() -> Self {
        let kp = wacore::crypto::generate_curve_key_pair();
        let random = kp.public_key.public_key_bytes();
        let mut id = vec![0, 0];
        id.extend_from_slice(&random[..4]);
        Self {
            id,
            // Any 32 random bytes: a private key is as good as anything.
            data: kp.private_key.serialize().to_vec(),
            timestamp: wacore::time::now_millis(),
        }
    }
}

/// The phone's sessions with its companions (serialized `SessionRecord`s by
/// device number).
#[derive(Default)]
pub struct Sessions(HashMap<u16, Vec<u8>>);

/// In-memory session store for one companion's address.
struct SessionMem(HashMap<ProtocolAddress, SessionRecord>);

#[whatsapp_rust::async_trait]
impl SessionStore for SessionMem {
    async fn load_session(&self, address: &ProtocolAddress) -> SignalResult<Option<SessionRecord>> {
        Ok(self.0.get(address).cloned())
    }

    async fn has_session(&self, address: &ProtocolAddress) -> SignalResult<bool> {
        Ok(self.0.contains_key(address))
    }

    async fn store_session(
        &mut self,
        address: &ProtocolAddress,
        record: SessionRecord,
    ) -> SignalResult<()> {
        self.0.insert(address.clone(), record);
        Ok(())
    }
}

/// In-memory identity store: the phone's identity (the account key), and the
/// companions' identities it has seen.
struct IdentityMem {
    pair: IdentityKeyPair,
    registration_id: u32,
    known: HashMap<ProtocolAddress, IdentityKey>,
}

#[whatsapp_rust::async_trait]
impl IdentityKeyStore for IdentityMem {
    async fn get_identity_key_pair(&self) -> SignalResult<IdentityKeyPair> {
        Ok(self.pair.clone())
    }

    async fn get_local_registration_id(&self) -> SignalResult<u32> {
        Ok(self.registration_id)
    }

    async fn save_identity(
        &mut self,
        address: &ProtocolAddress,
        identity: &IdentityKey,
    ) -> SignalResult<IdentityChange> {
        let old = self.known.insert(address.clone(), *identity);
        Ok(IdentityChange::from_changed(
            old.is_some_and(|o| o != *identity),
        ))
    }

    async fn is_trusted_identity(
        &self,
        _address: &ProtocolAddress,
        _identity: &IdentityKey,
        _direction: Direction,
    ) -> SignalResult<bool> {
        // Like WhatsApp: identity changes are not refused.
        Ok(true)
    }

    async fn get_identity(&self, address: &ProtocolAddress) -> SignalResult<Option<IdentityKey>> {
        Ok(self.known.get(address).copied())
    }
}

/// Everything the encryption needs, copied out of the world's lock.
struct Job {
    pair: IdentityKeyPair,
    registration_id: u32,
    session: Option<Vec<u8>>,
    bundle: crate::state::RegistrationData,
    key: SyncKey,
    raw_id: u32,
    key_indexes: Vec<u32>,
}

/// The phone of `device.0` sends its app-state sync key to its newly linked
/// `device` (queued for the device's next login, delivered at once if it is
/// online). Runs in the background; failures are logged.
pub fn share_app_state_key(world: Arc<World>, device: DeviceKey) {
    tokio::spawn(async move {
        if let Err(e) = send_key_share(&world, &device).await {
            log::warn!(
                "{}:{}: app-state key share failed: {e:#}",
                device.0,
                device.1
            );
        }
    });
}

async fn send_key_share(world: &World, device: &DeviceKey) -> Result<()> {
    let job = {
        let mut inner = world.lock();
        let bundle = inner
            .devices
            .get(device)
            .context("device unlinked")?
            .registration
            .clone();
        let mut key_indexes: Vec<u32> = inner
            .devices
            .iter()
            .filter(|((p, _), _)| *p == device.0)
            .map(|(_, d)| d.key_index)
            .collect();
        key_indexes.sort();
        let phone = inner.phones.get_mut(&device.0).context("unknown phone")?;
        let account = &phone.account_key;
        Job {
            pair: IdentityKeyPair::new(
                IdentityKey::new(account.public_key),
                account.private_key.clone(),
            ),
            registration_id: (phone.raw_id & 0x3fff).max(1),
            session: phone.sessions.0.get(&device.1).cloned(),
            bundle,
            key: phone.sync_key.clone(),
            raw_id: phone.raw_id,
            key_indexes,
        }
    };

    let address = ProtocolAddress::new(&device.0, DeviceId::from(u32::from(device.1)));
    let mut sessions = SessionMem(HashMap::new());
    if let Some(bytes) = &job.session {
        sessions.0.insert(
            address.clone(),
            SessionRecord::deserialize(bytes).map_err(|e| anyhow!("session: {e}"))?,
        );
    }
    let mut identities = IdentityMem {
        pair: job.pair,
        registration_id: job.registration_id,
        known: HashMap::new(),
    };
    if job.session.is_none() {
        let reg = &job.bundle;
        let identity = PublicKey::from_djb_public_key_bytes(&reg.identity_pub)
            .map_err(|e| anyhow!("device identity key: {e}"))?;
        let signed = PublicKey::from_djb_public_key_bytes(&reg.signed_prekey_pub)
            .map_err(|e| anyhow!("device signed pre-key: {e}"))?;
        let bundle = PreKeyBundle::new(
            reg.registration_id,
            DeviceId::from(u32::from(device.1)),
            None,
            reg.signed_prekey_id.into(),
            signed,
            reg.signed_prekey_sig.clone(),
            IdentityKey::new(identity),
        )
        .map_err(|e| anyhow!("pre-key bundle: {e}"))?;
        let mut rng = rand::make_rng::<rand::rngs::StdRng>();
        process_prekey_bundle(
            &address,
            &mut sessions,
            &mut identities,
            &bundle,
            &mut rng,
            UsePQRatchet::No,
        )
        .await
        .map_err(|e| anyhow!("opening the session: {e}"))?;
    }

    let share = key_share_message(&job.key, job.raw_id, job.key_indexes);
    let plaintext = MessageUtils::encode_and_pad(&share);
    let ciphertext = message_encrypt(&plaintext, &address, &mut sessions, &mut identities)
        .await
        .map_err(|e| anyhow!("encrypting: {e}"))?;
    let enc_type = match &ciphertext {
        CiphertextMessage::PreKeySignalMessage(_) => "pkmsg",
        CiphertextMessage::SignalMessage(_) => "msg",
        _ => anyhow::bail!("unexpected ciphertext type"),
    };
    let record = sessions
        .0
        .get(&address)
        .context("no session after encrypting")?
        .serialize()
        .map_err(|e| anyhow!("session: {e}"))?;

    let mut inner = world.lock();
    if !inner.devices.contains_key(device) {
        return Ok(());
    }
    if let Some(phone) = inner.phones.get_mut(&device.0) {
        phone.sessions.0.insert(device.1, record);
    }
    let node = NodeBuilder::new("message")
        .attr("from", format!("{}@{SERVER}", device.0))
        .attr("id", format!("SIMKEYS{:013}", world.next_id()))
        .attr("t", now())
        .attr("type", "text")
        .attr("category", "peer")
        .children([NodeBuilder::new("enc")
            .attr("v", "2")
            .attr("type", enc_type)
            .bytes(ciphertext.serialize().to_vec())
            .build()])
        .build();
    crate::messages::deliver(&mut inner, device, node);
    log::info!("{}:{}: app-state key shared", device.0, device.1);
    Ok(())
}

fn key_share_message(key: &SyncKey, raw_id: u32, key_indexes: Vec<u32>) -> wa::Message {
    let mut device_indexes = vec![0];
    device_indexes.extend(key_indexes);
    wa::Message {
        protocol_message: MessageField::some(wa::message::ProtocolMessage {
            r#type: Some(wa::message::protocol_message::Type::APP_STATE_SYNC_KEY_SHARE),
            app_state_sync_key_share: MessageField::some(wa::message::AppStateSyncKeyShare {
                keys: vec![wa::message::AppStateSyncKey {
                    key_id: MessageField::some(wa::message::AppStateSyncKeyId {
                        key_id: Some(key.id.clone()),
                    }),
                    key_data: MessageField::some(wa::message::AppStateSyncKeyData {
                        key_data: Some(key.data.clone()),
                        fingerprint: MessageField::some(wa::message::AppStateSyncKeyFingerprint {
                            raw_id: Some(raw_id),
                            current_index: Some(0),
                            device_indexes,
                        }),
                        timestamp: Some(key.timestamp),
                    }),
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
