//! Pair-code linking (WhatsApp's "link with phone number"), phone side.
//!
//! 1. An unregistered device sends `<link_code_companion_reg stage="companion_hello"
//!    jid="PHONE@s.whatsapp.net">` with its ephemeral X25519 key wrapped by the
//!    8-character code it shows (`salt(32) | iv(16) | AES-256-CTR`, key =
//!    PBKDF2-SHA256(code, salt, 131072)); it gets a pairing ref back.
//! 2. The control API's `POST /phones/{phone}/pair-code` is the user typing the
//!    code on the phone: the phone unwraps the device's ephemeral key with it, and
//!    sends the device a `primary_hello` notification with its own ephemeral key
//!    wrapped the same way and its identity key.
//! 3. The device answers `companion_finish` with a key bundle (`salt(32) | iv(12) |
//!    AES-256-GCM`, key = HKDF(ECDH(ephemerals), salt,
//!    "link_code_pairing_key_bundle_encryption_key")) holding both identity keys
//!    and 32 random bytes. A bundle that does not open means the code was wrong.
//! 4. Both sides derive the ADV secret, HKDF(ECDH(ephemerals) | ECDH(phone
//!    identity, device identity) | random, "adv_secret"), and linking ends as
//!    for a QR code (`<pair-success>` HMACed with that secret).

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::sync::oneshot;
use wacore::libsignal::protocol::{KeyPair, PublicKey};
use wacore::pair_code::PairCodeUtils;
use wacore_binary::Node;
use wacore_binary::builder::NodeBuilder;

use crate::iq;
use crate::pairing::{Linked, ScanError};
use crate::stanza::{Conn, SERVER, Session, attr, content_bytes, now};
use crate::state::World;

const BUNDLE_KEY_INFO: &[u8] = b"link_code_pairing_key_bundle_encryption_key";
/// How long the phone waits for the device's `companion_finish` (the device
/// runs PBKDF2 with 131072 rounds first).
const FINISH_TIMEOUT: Duration = Duration::from_secs(30);

/// A device waiting for its code to be entered on the phone of `phone`.
pub struct CodeRequest {
    pub conn_id: u64,
    pub pairing_ref: String,
    /// The device's ephemeral key wrapped with its code (80 bytes).
    pub wrapped_ephemeral: Vec<u8>,
}

/// The phone entered a code and sent `primary_hello`: waiting for `companion_finish`.
pub struct CodeEntered {
    pub conn_id: u64,
    pub phone_ephemeral: KeyPair,
    pub phone_identity: KeyPair,
    pub device_ephemeral: [u8; 32],
    pub device_identity: Vec<u8>,
    /// The ADV secret, or why the bundle was refused (`Err(true)`: wrong code).
    pub done: oneshot::Sender<Result<[u8; 32], bool>>,
}

/// `<iq xmlns="md"><link_code_companion_reg stage=...>` from a device. Returns
/// the answer, or `None` when it is not a pair-code stanza.
pub fn on_iq(conn: &mut Conn, id: &str, node: &Node) -> Option<Node> {
    let reg = node.get_optional_child("link_code_companion_reg")?;
    let stage = attr(reg, "stage").unwrap_or_default();
    if conn.session != Session::Registering {
        return Some(iq::error(id, 400, "bad-request"));
    }
    let answer = match stage.as_str() {
        "companion_hello" => companion_hello(conn, id, reg),
        "companion_finish" => companion_finish(conn, id, reg),
        other => Err(anyhow!("unknown stage {other:?}")),
    };
    Some(answer.unwrap_or_else(|e| {
        log::warn!("pair code: {e:#}");
        iq::error(id, 400, "bad-request")
    }))
}

fn child_bytes<'a>(node: &'a Node, tag: &str) -> Result<&'a [u8]> {
    node.get_optional_child(tag)
        .and_then(content_bytes)
        .with_context(|| format!("no <{tag}>"))
}

fn companion_hello(conn: &mut Conn, id: &str, reg: &Node) -> Result<Node> {
    let jid = attr(reg, "jid").context("no jid")?;
    let phone = jid
        .strip_suffix("@s.whatsapp.net")
        .filter(|p| crate::valid_phone(p))
        .with_context(|| format!("bad jid {jid:?}"))?
        .to_string();
    let wrapped = child_bytes(reg, "link_code_pairing_wrapped_companion_ephemeral_pub")?;
    if wrapped.len() != 80 {
        bail!("wrapped ephemeral key of {} bytes", wrapped.len());
    }
    let pairing_ref = format!("sim-link-{}", conn.world.next_id());
    conn.world.lock().code_requests.insert(
        phone.clone(),
        CodeRequest {
            conn_id: conn.handle.id,
            pairing_ref: pairing_ref.clone(),
            wrapped_ephemeral: wrapped.to_vec(),
        },
    );
    log::info!("a device asks to link with {phone} by code");
    Ok(iq::result(
        id,
        vec![
            NodeBuilder::new("link_code_companion_reg")
                .children([NodeBuilder::new("link_code_pairing_ref")
                    .bytes(pairing_ref.into_bytes())
                    .build()])
                .build(),
        ],
    ))
}

fn companion_finish(conn: &mut Conn, id: &str, reg: &Node) -> Result<Node> {
    let pairing_ref =
        String::from_utf8_lossy(child_bytes(reg, "link_code_pairing_ref")?).into_owned();
    let wrapped = child_bytes(reg, "link_code_pairing_wrapped_key_bundle")?.to_vec();
    let entered = conn
        .world
        .lock()
        .codes_entered
        .remove(&pairing_ref)
        .context("companion_finish for no entered code")?;
    if entered.conn_id != conn.handle.id {
        bail!("companion_finish from another connection");
    }
    match open_bundle(&entered, &wrapped) {
        Ok(adv) => {
            let _ = entered.done.send(Ok(adv));
            Ok(iq::result(id, vec![]))
        }
        Err(e) => {
            let wrong_code = format!("{e:#}").contains("does not open");
            let _ = entered.done.send(Err(wrong_code));
            Err(e)
        }
    }
}

/// Opens the device's key bundle and derives the ADV secret.
fn open_bundle(entered: &CodeEntered, wrapped: &[u8]) -> Result<[u8; 32]> {
    if wrapped.len() < 32 + 12 + 16 {
        bail!("key bundle of {} bytes", wrapped.len());
    }
    let (salt, rest) = wrapped.split_at(32);
    let (iv, sealed) = rest.split_at(12);
    let device_ephemeral = PublicKey::from_djb_public_key_bytes(&entered.device_ephemeral)
        .map_err(|e| anyhow!("device ephemeral key: {e}"))?;
    let ephemeral_shared = entered
        .phone_ephemeral
        .private_key
        .calculate_agreement(&device_ephemeral)
        .map_err(|e| anyhow!("ephemeral agreement: {e}"))?;
    let mut key = [0u8; 32];
    wacore::crypto::hkdf_sha256_into(&ephemeral_shared, Some(salt), BUNDLE_KEY_INFO, &mut key)
        .map_err(|e| anyhow!("bundle key: {e:?}"))?;
    let iv: [u8; 12] = iv.try_into().expect("12 bytes");
    let mut bundle = Vec::new();
    wacore::libsignal::crypto::aes_256_gcm_decrypt(&key, &iv, b"", sealed, &mut bundle)
        .map_err(|_| anyhow!("key bundle does not open (wrong code)"))?;
    if bundle.len() != 96 {
        bail!("key bundle of {} bytes", bundle.len());
    }
    if bundle[..32] != entered.device_identity[..] {
        bail!("key bundle names another device identity");
    }
    if bundle[32..64] != *entered.phone_identity.public_key.public_key_bytes() {
        bail!("key bundle names another phone identity");
    }
    let device_identity = PublicKey::from_djb_public_key_bytes(&bundle[..32])
        .map_err(|e| anyhow!("device identity key: {e}"))?;
    let identity_shared = entered
        .phone_identity
        .private_key
        .calculate_agreement(&device_identity)
        .map_err(|e| anyhow!("identity agreement: {e}"))?;
    let mut secret = Vec::with_capacity(96);
    secret.extend_from_slice(&ephemeral_shared);
    secret.extend_from_slice(&identity_shared);
    secret.extend_from_slice(&bundle[64..]);
    let mut adv = [0u8; 32];
    wacore::crypto::hkdf_sha256_into(&secret, None, b"adv_secret", &mut adv)
        .map_err(|e| anyhow!("adv secret: {e:?}"))?;
    Ok(adv)
}

/// The phone of `phone` enters `code`: `primary_hello` to the device that asked
/// to link with this number, then, once its key bundle opens, the usual
/// `<pair-success>`. `UnknownRef` = no device waiting (404), `InvalidQr` = bad
/// or wrong code (400).
pub async fn enter_code(world: &World, phone: &str, code: &str) -> Result<Linked, ScanError> {
    let code = code.trim().to_ascii_uppercase();
    if !PairCodeUtils::validate_code(&code) {
        return Err(ScanError::InvalidQr(
            "a pair code is 8 characters of 123456789ABCDEFGHJKLMNPQRSTVWXYZ".into(),
        ));
    }
    let (conn, pairing_ref, wrapped, device_identity) = {
        let inner = world.lock();
        let req = inner
            .code_requests
            .get(phone)
            .ok_or(ScanError::UnknownRef)?;
        let reg = inner
            .registering
            .get(&req.conn_id)
            .ok_or(ScanError::UnknownRef)?;
        (
            reg.conn.clone(),
            req.pairing_ref.clone(),
            req.wrapped_ephemeral.clone(),
            reg.registration.identity_pub.clone(),
        )
    };
    // PBKDF2 with 131072 rounds, twice: off the async threads.
    let code2 = code.clone();
    let (device_ephemeral, phone_ephemeral, wrapped_phone_ephemeral) =
        tokio::task::spawn_blocking(move || {
            let device_ephemeral = PairCodeUtils::decrypt_primary_ephemeral_pub(&wrapped, &code2)
                .map_err(|e| e.to_string())?;
            let phone_ephemeral = wacore::crypto::generate_curve_key_pair();
            let pub_bytes: [u8; 32] = phone_ephemeral
                .public_key
                .public_key_bytes()
                .try_into()
                .map_err(|_| "ephemeral key size".to_string())?;
            let wrapped = PairCodeUtils::encrypt_ephemeral_pub(&pub_bytes, &code2);
            Ok::<_, String>((device_ephemeral, phone_ephemeral, wrapped))
        })
        .await
        .map_err(|e| ScanError::Failed(e.to_string()))?
        .map_err(ScanError::Failed)?;

    let phone_identity = world.lock().phone_mut(phone).account_key.clone();
    let phone_identity_pub = phone_identity.public_key.public_key_bytes().to_vec();
    let (done_tx, done_rx) = oneshot::channel();
    world.lock().codes_entered.insert(
        pairing_ref.clone(),
        CodeEntered {
            conn_id: conn.id,
            phone_ephemeral,
            phone_identity,
            device_ephemeral,
            device_identity: device_identity.clone(),
            done: done_tx,
        },
    );
    conn.send(primary_hello(
        world,
        &pairing_ref,
        &wrapped_phone_ephemeral,
        &phone_identity_pub,
    ));
    let adv_secret = match tokio::time::timeout(FINISH_TIMEOUT, done_rx).await {
        Ok(Ok(Ok(adv))) => adv,
        Ok(Ok(Err(true))) => {
            world.lock().code_requests.remove(phone);
            return Err(ScanError::InvalidQr(
                "wrong code: the device's key bundle does not open".into(),
            ));
        }
        Ok(Ok(Err(false))) => {
            return Err(ScanError::Failed(
                "the device's key bundle is invalid".into(),
            ));
        }
        Ok(Err(_)) | Err(_) => {
            world.lock().codes_entered.remove(&pairing_ref);
            return Err(ScanError::Failed(
                "the device did not answer primary_hello in time".into(),
            ));
        }
    };
    world.lock().code_requests.remove(phone);
    let identity_pub: [u8; 32] = device_identity
        .try_into()
        .map_err(|_| ScanError::Failed("device identity is not 32 bytes".into()))?;
    crate::pairing::link(world, phone, conn.id, identity_pub, adv_secret.to_vec()).await
}

fn primary_hello(world: &World, pairing_ref: &str, wrapped: &[u8; 80], identity: &[u8]) -> Node {
    NodeBuilder::new("notification")
        .attr("from", SERVER)
        .attr("type", "link_code_companion_reg")
        .attr("id", format!("sim-{}", world.next_id()))
        .attr("t", now())
        .children([NodeBuilder::new("link_code_companion_reg")
            .attr("stage", "primary_hello")
            .children([
                NodeBuilder::new("link_code_pairing_wrapped_primary_ephemeral_pub")
                    .bytes(wrapped.to_vec())
                    .build(),
                NodeBuilder::new("primary_identity_pub")
                    .bytes(identity.to_vec())
                    .build(),
                NodeBuilder::new("link_code_pairing_ref")
                    .bytes(pairing_ref.as_bytes().to_vec())
                    .build(),
            ])
            .build()])
        .build()
}
