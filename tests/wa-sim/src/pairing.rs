//! QR pairing: `<pair-device>` refs for an unregistered device, the simulated
//! phone "scanning" a QR string (it signs the device identity, ADV), the
//! `<pair-success>` / `<pair-device-sign>` exchange, then stream error 515.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::sync::oneshot;
use wacore::libsignal::protocol::PublicKey;
use wacore_binary::Node;
use wacore_binary::builder::NodeBuilder;
use waproto::buffa::Message as _;
use waproto::whatsapp as wa;

use crate::stanza::{Conn, SERVER, attr, content_bytes, now};
use crate::state::{DeviceRecord, PendingSign, Registering, RegistrationData, World};

const ADV_PREFIX_ACCOUNT_SIGNATURE: &[u8] = &[6, 0];
const ADV_PREFIX_DEVICE_SIGNATURE: &[u8] = &[6, 1];
/// How many QR refs a registering device gets (the client rotates through them).
const REFS_PER_CONNECTION: usize = 6;
/// How long `scan` waits for the device to sign its identity.
const SIGN_TIMEOUT: Duration = Duration::from_secs(20);

/// A device linked by [`scan`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct Linked {
    /// `phone:device@s.whatsapp.net`
    pub jid: String,
    /// `lid:device@lid`
    pub lid: String,
}

/// Why a scan failed; `Unknown*` map to HTTP 404, `Invalid*` to 400.
#[derive(Debug)]
pub enum ScanError {
    InvalidQr(String),
    UnknownRef,
    Failed(String),
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScanError::InvalidQr(e) => write!(f, "invalid QR string: {e}"),
            ScanError::UnknownRef => write!(
                f,
                "no connected device shows this QR ref (expired, or already linked)"
            ),
            ScanError::Failed(e) => write!(f, "pairing failed: {e}"),
        }
    }
}

impl std::error::Error for ScanError {}

fn random_ref(world: &World) -> String {
    let kp = wacore::crypto::generate_curve_key_pair();
    format!(
        "2@{}{}",
        BASE64_STANDARD.encode(&kp.public_key.public_key_bytes()[..12]),
        world.next_id()
    )
}

/// A device connected with a registration payload: remember it and send it refs.
pub fn start_registration(conn: &mut Conn, registration: RegistrationData, push_name: String) {
    let refs: Vec<String> = (0..REFS_PER_CONNECTION)
        .map(|_| random_ref(&conn.world))
        .collect();
    {
        let mut inner = conn.world.lock();
        for r in &refs {
            inner.refs.insert(r.clone(), conn.handle.id);
        }
        inner.registering.insert(
            conn.handle.id,
            Registering {
                conn: conn.handle.clone(),
                noise_pub: conn.client_static,
                registration,
                push_name,
            },
        );
    }
    let iq = NodeBuilder::new("iq")
        .attr("from", SERVER)
        .attr("type", "set")
        .attr("id", format!("sim-{}", conn.world.next_id()))
        .attr("xmlns", "md")
        .attr("t", now())
        .children([NodeBuilder::new("pair-device")
            .children(
                refs.into_iter()
                    .map(|r| NodeBuilder::new("ref").bytes(r.into_bytes()).build()),
            )
            .build()])
        .build();
    conn.send(iq);
}

struct Qr {
    pairing_ref: String,
    noise_pub: [u8; 32],
    identity_pub: [u8; 32],
    adv_secret: Vec<u8>,
}

fn parse_qr(qr: &str) -> Result<Qr> {
    let parts: Vec<&str> = qr.trim().split(',').collect();
    if parts.len() < 4 {
        bail!(
            "expected ref,noise,identity,adv[,type], got {} fields",
            parts.len()
        );
    }
    let key = |s: &str, what: &str| -> Result<[u8; 32]> {
        BASE64_STANDARD
            .decode(s)
            .with_context(|| format!("{what} is not base64"))?
            .try_into()
            .map_err(|_| anyhow!("{what} is not 32 bytes"))
    };
    Ok(Qr {
        pairing_ref: parts[0].to_string(),
        noise_pub: key(parts[1], "noise key")?,
        identity_pub: key(parts[2], "identity key")?,
        adv_secret: BASE64_STANDARD
            .decode(parts[3])
            .context("adv secret is not base64")?,
    })
}

/// The phone of `phone` scans `qr`: links the device that shows it and waits until
/// the device has signed its identity (the device then gets stream error 515).
pub async fn scan(world: &World, phone: &str, qr: &str) -> Result<Linked, ScanError> {
    let qr = parse_qr(qr).map_err(|e| ScanError::InvalidQr(format!("{e:#}")))?;
    let conn_id = {
        let inner = world.lock();
        let conn_id = *inner
            .refs
            .get(&qr.pairing_ref)
            .ok_or(ScanError::UnknownRef)?;
        let reg = inner
            .registering
            .get(&conn_id)
            .ok_or(ScanError::UnknownRef)?;
        if reg.noise_pub != qr.noise_pub {
            return Err(ScanError::InvalidQr(
                "noise key does not match the device showing this ref".into(),
            ));
        }
        if reg.registration.identity_pub.as_slice() != qr.identity_pub {
            return Err(ScanError::InvalidQr(
                "identity key does not match the device showing this ref".into(),
            ));
        }
        conn_id
    };
    link(world, phone, conn_id, qr.identity_pub, qr.adv_secret).await
}

/// Links the registering device on connection `conn_id` to `phone` as its next
/// device: `<pair-success>` with its identity signed by the phone's account key
/// and HMACed with `adv_secret` (from the QR code or the pair-code exchange),
/// then waits for the device's own signature.
pub async fn link(
    world: &World,
    phone: &str,
    conn_id: u64,
    identity_pub: [u8; 32],
    adv_secret: Vec<u8>,
) -> Result<Linked, ScanError> {
    let (done_tx, done_rx) = oneshot::channel();
    let (linked, conn, iq) = {
        let mut inner = world.lock();
        let reg = inner
            .registering
            .get(&conn_id)
            .ok_or(ScanError::UnknownRef)?;
        let conn = reg.conn.clone();
        let noise_pub = reg.noise_pub;
        let registration = reg.registration.clone();
        let push_name = reg.push_name.clone();
        // One pairing per registering connection.
        inner.refs.retain(|_, c| *c != conn_id);
        inner.code_requests.retain(|_, r| r.conn_id != conn_id);

        let p = inner.phone_mut(phone);
        let device = p.next_device;
        p.next_device += 1;
        let key_index = p.next_key_index;
        p.next_key_index += 1;
        let lid_user = p.lid_user.clone();
        let container = device_identity_container(p, &identity_pub, &adv_secret, key_index)
            .map_err(|e| ScanError::Failed(format!("{e:#}")))?;

        let linked = Linked {
            jid: format!("{phone}:{device}@{SERVER}"),
            lid: format!("{lid_user}:{device}@lid"),
        };
        let iq_id = format!("sim-{}", world.next_id());
        inner.pending_signs.insert(
            iq_id.clone(),
            PendingSign {
                conn_id,
                phone: phone.to_string(),
                device,
                key_index,
                noise_pub,
                registration,
                push_name,
                done: done_tx,
            },
        );
        let iq = NodeBuilder::new("iq")
            .attr("from", SERVER)
            .attr("type", "set")
            .attr("id", iq_id)
            .attr("xmlns", "md")
            .attr("t", now())
            .children([NodeBuilder::new("pair-success")
                .children([
                    NodeBuilder::new("device-identity").bytes(container).build(),
                    NodeBuilder::new("device")
                        .attr("jid", linked.jid.clone())
                        .attr("lid", linked.lid.clone())
                        .build(),
                    NodeBuilder::new("platform").attr("name", "android").build(),
                ])
                .build()])
            .build();
        (linked, conn, iq)
    };
    conn.send(iq);
    match tokio::time::timeout(SIGN_TIMEOUT, done_rx).await {
        Ok(Ok(Ok(()))) => Ok(linked),
        Ok(Ok(Err(e))) => Err(ScanError::Failed(e)),
        Ok(Err(_)) => Err(ScanError::Failed("simulator dropped the pairing".into())),
        Err(_) => Err(ScanError::Failed(
            "device did not sign its identity in time".into(),
        )),
    }
}

/// `ADVSignedDeviceIdentityHMAC` for the device with `identity_pub`, signed by
/// the phone's account key.
fn device_identity_container(
    phone: &crate::state::Phone,
    identity_pub: &[u8; 32],
    adv_secret: &[u8],
    key_index: u32,
) -> Result<Vec<u8>> {
    let details = wa::ADVDeviceIdentity {
        raw_id: Some(phone.raw_id),
        timestamp: Some(wacore::time::now_secs().max(0) as u64),
        key_index: Some(key_index),
        ..Default::default()
    }
    .encode_to_vec();
    let mut msg = Vec::with_capacity(2 + details.len() + 32);
    msg.extend_from_slice(ADV_PREFIX_ACCOUNT_SIGNATURE);
    msg.extend_from_slice(&details);
    msg.extend_from_slice(identity_pub);
    let account_signature =
        wacore::crypto::calculate_curve_signature(&phone.account_key.private_key, &msg)
            .map_err(|e| anyhow!("account signature: {e}"))?;
    let signed = wa::ADVSignedDeviceIdentity {
        details: Some(details),
        account_signature_key: Some(phone.account_key.public_key.public_key_bytes().to_vec()),
        account_signature: Some(account_signature.to_vec()),
        device_signature: None,
    }
    .encode_to_vec();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(adv_secret)
        .map_err(|e| anyhow!("adv secret: {e}"))?;
    mac.update(&signed);
    let hmac = mac.finalize().into_bytes().to_vec();
    Ok(wa::ADVSignedDeviceIdentityHMAC {
        details: Some(signed),
        hmac: Some(hmac),
        ..Default::default()
    }
    .encode_to_vec())
}

/// Checks the device's signature over its identity (`[6,1] details identity account`).
fn verify_device_signature(signed_identity: &[u8], identity_pub: &[u8]) -> Result<()> {
    let signed = wa::ADVSignedDeviceIdentity::decode_from_slice(signed_identity)
        .context("decoding ADVSignedDeviceIdentity")?;
    let details = signed.details.as_deref().unwrap_or_default();
    let account_key = signed.account_signature_key.as_deref().unwrap_or_default();
    let signature = signed
        .device_signature
        .as_deref()
        .context("no device signature")?;
    let mut msg = Vec::new();
    msg.extend_from_slice(ADV_PREFIX_DEVICE_SIGNATURE);
    msg.extend_from_slice(details);
    msg.extend_from_slice(identity_pub);
    msg.extend_from_slice(account_key);
    let key = PublicKey::from_djb_public_key_bytes(identity_pub)
        .map_err(|e| anyhow!("identity key: {e}"))?;
    if !key.verify_signature(&msg, signature) {
        bail!("device signature does not verify");
    }
    Ok(())
}

/// A `result`/`error` iq from a device: the answer to `<pair-success>` (or to
/// `<pair-device>`, which needs nothing). Returns whether it was ours.
pub fn on_iq_response(conn: &mut Conn, node: &Node) -> bool {
    let Some(id) = attr(node, "id") else {
        return false;
    };
    let Some(pending) = conn.world.lock().pending_signs.remove(&id) else {
        return false;
    };
    let outcome = (|| -> Result<Vec<u8>> {
        if attr(node, "type").as_deref() == Some("error") {
            let err = node.get_optional_child("error");
            bail!(
                "device refused pairing: {} {}",
                err.and_then(|e| attr(e, "code")).unwrap_or_default(),
                err.and_then(|e| attr(e, "text")).unwrap_or_default()
            );
        }
        let identity = node
            .get_optional_child("pair-device-sign")
            .and_then(|n| n.get_optional_child("device-identity"))
            .context("no <pair-device-sign><device-identity>")?;
        let signed = content_bytes(identity)
            .context("empty device-identity")?
            .to_vec();
        verify_device_signature(&signed, &pending.registration.identity_pub)?;
        Ok(signed)
    })();
    match outcome {
        Ok(signed_identity) => {
            {
                let mut inner = conn.world.lock();
                inner.registering.remove(&pending.conn_id);
                inner.devices.insert(
                    (pending.phone.clone(), pending.device),
                    DeviceRecord {
                        noise_pub: pending.noise_pub,
                        registration: pending.registration,
                        signed_identity,
                        key_index: pending.key_index,
                        push_name: pending.push_name,
                        prekeys: Vec::new(),
                    },
                );
            }
            log::info!("{}:{} linked", pending.phone, pending.device);
            // Like a real primary: share the app-state sync key with the new device
            // (it gets it at its first login, before it would start waiting for it).
            crate::phone::share_app_state_key(
                conn.world.clone(),
                (pending.phone.clone(), pending.device),
            );
            let _ = pending.done.send(Ok(()));
            // Like WhatsApp: restart the stream; the device logs in on reconnect.
            conn.send(NodeBuilder::new("stream:error").attr("code", "515").build());
            conn.handle.close();
        }
        Err(e) => {
            log::warn!("pairing {}:{} failed: {e:#}", pending.phone, pending.device);
            let _ = pending.done.send(Err(format!("{e:#}")));
        }
    }
    true
}
