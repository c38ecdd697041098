//! Noise responder: the server half of WhatsApp's XX and IK handshakes, plus the
//! certificate chain the server presents.
//!
//! The chain cannot carry WhatsApp's real root signature, so clients accept it only
//! when whatsapp-rust is built with `danger-skip-cert-chain-verify` (test builds).
//! The leaf is still properly signed by the simulator's own intermediate key.

use anyhow::{Context, Result, anyhow, bail};
use wacore::handshake::{NoiseCipher, NoiseHandshake};
use wacore::libsignal::protocol::KeyPair;
use wacore_binary::consts::{NOISE_PATTERN_IK, NOISE_PATTERN_XX, WA_CONN_HEADER};
use waproto::buffa::{Message as _, MessageField};
use waproto::whatsapp as wa;

/// The simulator's long-lived Noise identity: static key pair and the encoded
/// `CertChain` whose leaf is that static key.
pub struct ServerIdentity {
    static_kp: KeyPair,
    cert_chain: Vec<u8>,
}

impl ServerIdentity {
    /// Fresh static key and a chain valid from one day ago to one year ahead.
    pub fn generate() -> Result<Self> {
        let static_kp = wacore::crypto::generate_curve_key_pair();
        let intermediate_kp = wacore::crypto::generate_curve_key_pair();
        let now = wacore::time::now_secs().max(0) as u64;
        let not_before = now.saturating_sub(86_400);
        let not_after = now + 365 * 86_400;

        let intermediate_details = wa::cert_chain::noise_certificate::Details {
            serial: Some(1),
            issuer_serial: Some(0),
            key: Some(intermediate_kp.public_key.public_key_bytes().to_vec()),
            not_before: Some(not_before),
            not_after: Some(not_after),
        }
        .encode_to_vec();
        let leaf_details = wa::cert_chain::noise_certificate::Details {
            serial: Some(2),
            issuer_serial: Some(1),
            key: Some(static_kp.public_key.public_key_bytes().to_vec()),
            not_before: Some(not_before),
            not_after: Some(not_after),
        }
        .encode_to_vec();
        let leaf_signature =
            wacore::crypto::calculate_curve_signature(&intermediate_kp.private_key, &leaf_details)
                .map_err(|e| anyhow!("signing leaf certificate: {e}"))?;
        // Self-signed: only WhatsApp holds the root key the client checks this against.
        let intermediate_signature = wacore::crypto::calculate_curve_signature(
            &intermediate_kp.private_key,
            &intermediate_details,
        )
        .map_err(|e| anyhow!("signing intermediate certificate: {e}"))?;

        let cert_chain = wa::CertChain {
            leaf: MessageField::some(wa::cert_chain::NoiseCertificate {
                details: Some(leaf_details),
                signature: Some(leaf_signature.to_vec()),
            }),
            intermediate: MessageField::some(wa::cert_chain::NoiseCertificate {
                details: Some(intermediate_details),
                signature: Some(intermediate_signature.to_vec()),
            }),
        }
        .encode_to_vec();
        Ok(Self {
            static_kp,
            cert_chain,
        })
    }

    fn static_pub(&self) -> &[u8] {
        self.static_kp.public_key.public_key_bytes()
    }
}

/// Result of a completed handshake: the transport ciphers (from the server's
/// point of view), the client's static Noise key and its login/registration payload.
pub struct Established {
    /// Decrypts client -> server frames.
    pub read: NoiseCipher,
    /// Encrypts server -> client frames.
    pub write: NoiseCipher,
    pub client_static: [u8; 32],
    pub payload: wa::ClientPayload,
}

/// What to do after the ClientHello.
pub enum AfterHello {
    /// XX: send `server_hello`, then feed the ClientFinish to `pending`.
    Xx {
        server_hello: Vec<u8>,
        pending: Box<XxPending>,
    },
    /// IK accepted: send `server_hello`; the session is established.
    Ik {
        server_hello: Vec<u8>,
        established: Box<Established>,
    },
}

/// XX responder waiting for the ClientFinish.
pub struct XxPending {
    noise: NoiseHandshake,
    server_ephemeral: KeyPair,
}

/// Strips the connection header (`WA` magic, optionally preceded by an edge-routing
/// pre-intro) from the very first bytes a client sends.
pub fn strip_conn_header(first: &[u8]) -> Result<&[u8]> {
    let mut rest = first;
    if rest.starts_with(b"ED\x00\x01") {
        if rest.len() < 7 {
            bail!("truncated edge routing pre-intro");
        }
        let len = ((rest[4] as usize) << 16) | ((rest[5] as usize) << 8) | rest[6] as usize;
        rest = rest
            .get(7 + len..)
            .context("truncated edge routing pre-intro")?;
    }
    rest.strip_prefix(&WA_CONN_HEADER[..])
        .context("connection does not start with the WA header")
}

fn key32(bytes: &[u8], what: &str) -> Result<[u8; 32]> {
    bytes
        .try_into()
        .map_err(|_| anyhow!("{what}: expected 32 bytes, got {}", bytes.len()))
}

fn decode_payload(bytes: &[u8]) -> Result<wa::ClientPayload> {
    wa::ClientPayload::decode_from_slice(bytes).context("decoding ClientPayload")
}

fn split_for_server(noise: NoiseHandshake) -> Result<(NoiseCipher, NoiseCipher)> {
    // `finish` names the ciphers from the initiator's side: its write key is our read key.
    let (client_write, client_read) = noise.finish()?;
    Ok((client_write, client_read))
}

/// Handles the ClientHello frame (header already stripped, frame length removed).
pub fn on_client_hello(identity: &ServerIdentity, frame: &[u8]) -> Result<AfterHello> {
    let msg = wa::HandshakeMessage::decode_from_slice(frame).context("decoding ClientHello")?;
    let hello = msg
        .client_hello
        .into_option()
        .context("handshake message has no client_hello")?;
    let client_eph = key32(
        hello
            .ephemeral
            .as_deref()
            .context("ClientHello without ephemeral")?,
        "client ephemeral",
    )?;

    if let (Some(enc_static), Some(enc_payload)) = (hello.r#static, hello.payload) {
        return ik_accept(identity, client_eph, &enc_static, &enc_payload);
    }

    let mut noise = NoiseHandshake::new(NOISE_PATTERN_XX, &WA_CONN_HEADER)?;
    noise.authenticate(&client_eph);
    let server_ephemeral = wacore::crypto::generate_curve_key_pair();
    let eph_pub = server_ephemeral.public_key.public_key_bytes().to_vec();
    noise.authenticate(&eph_pub);
    noise.mix_shared_secret(server_ephemeral.private_key.serialize(), &client_eph)?;
    let enc_static = noise.encrypt(identity.static_pub())?;
    noise.mix_shared_secret(identity.static_kp.private_key.serialize(), &client_eph)?;
    let enc_cert = noise.encrypt(&identity.cert_chain)?;

    let server_hello = wa::HandshakeMessage {
        server_hello: MessageField::some(wa::handshake_message::ServerHello {
            ephemeral: Some(eph_pub),
            r#static: Some(enc_static),
            payload: Some(enc_cert),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec();
    Ok(AfterHello::Xx {
        server_hello,
        pending: Box::new(XxPending {
            noise,
            server_ephemeral,
        }),
    })
}

impl XxPending {
    /// Handles the ClientFinish: learns the client's static key and payload.
    pub fn on_client_finish(mut self, frame: &[u8]) -> Result<Established> {
        let msg =
            wa::HandshakeMessage::decode_from_slice(frame).context("decoding ClientFinish")?;
        let finish = msg
            .client_finish
            .into_option()
            .context("handshake message has no client_finish")?;
        let enc_static = finish.r#static.context("ClientFinish without static")?;
        let enc_payload = finish.payload.context("ClientFinish without payload")?;
        let client_static = key32(&self.noise.decrypt(&enc_static)?, "client static")?;
        self.noise.mix_shared_secret(
            self.server_ephemeral.private_key.serialize(),
            &client_static,
        )?;
        let payload = decode_payload(&self.noise.decrypt(&enc_payload)?)?;
        let (read, write) = split_for_server(self.noise)?;
        Ok(Established {
            read,
            write,
            client_static,
            payload,
        })
    }
}

/// IK (`-> e, es, s, ss` / `<- e, ee, se`): the client already knows our static key.
/// Fails (and the caller drops the connection) when the client cached another
/// server's key; whatsapp-rust then clears its cache and falls back to XX.
fn ik_accept(
    identity: &ServerIdentity,
    client_eph: [u8; 32],
    enc_static: &[u8],
    enc_payload: &[u8],
) -> Result<AfterHello> {
    let mut noise = NoiseHandshake::new(NOISE_PATTERN_IK, &WA_CONN_HEADER)?;
    noise.authenticate(identity.static_pub());
    noise.authenticate(&client_eph);
    noise.mix_shared_secret(identity.static_kp.private_key.serialize(), &client_eph)?;
    let client_static = key32(
        &noise
            .decrypt(enc_static)
            .context("IK: client encrypted to another server key")?,
        "client static",
    )?;
    noise.mix_shared_secret(identity.static_kp.private_key.serialize(), &client_static)?;
    let payload = decode_payload(&noise.decrypt(enc_payload)?)?;

    let server_ephemeral = wacore::crypto::generate_curve_key_pair();
    let eph_pub = server_ephemeral.public_key.public_key_bytes().to_vec();
    noise.authenticate(&eph_pub);
    noise.mix_shared_secret(server_ephemeral.private_key.serialize(), &client_eph)?;
    noise.mix_shared_secret(server_ephemeral.private_key.serialize(), &client_static)?;
    let enc_cert = noise.encrypt(&identity.cert_chain)?;
    let server_hello = wa::HandshakeMessage {
        server_hello: MessageField::some(wa::handshake_message::ServerHello {
            ephemeral: Some(eph_pub),
            r#static: None,
            payload: Some(enc_cert),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec();
    let (read, write) = split_for_server(noise)?;
    Ok(AfterHello::Ik {
        server_hello,
        established: Box::new(Established {
            read,
            write,
            client_static,
            payload,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wacore::handshake::{IkHandshakeState, IkServerHelloOutcome, XxHandshakeState};

    fn login_payload() -> Vec<u8> {
        wa::ClientPayload {
            username: Some(33_611_111_111),
            device: Some(1),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn roundtrip(client_write: &NoiseCipher, server: &Established) {
        let mut frame = client_write.encrypt_with_counter(0, b"ping").unwrap();
        server
            .read
            .decrypt_in_place_with_counter(0, &mut frame)
            .unwrap();
        assert_eq!(frame, b"ping");
    }

    /// whatsapp-rust's own initiator (XX, then IK with the cached key) against ours.
    #[test]
    fn xx_then_ik_with_the_client_state_machines() {
        let identity = ServerIdentity::generate().unwrap();
        let client_static = wacore::crypto::generate_curve_key_pair();

        let mut xx =
            XxHandshakeState::new(client_static.clone(), login_payload(), &WA_CONN_HEADER).unwrap();
        let hello = xx.build_client_hello().unwrap();
        let AfterHello::Xx {
            server_hello,
            pending,
        } = on_client_hello(&identity, &hello).unwrap()
        else {
            panic!("an XX hello must get an XX answer");
        };
        let finish = xx
            .read_server_hello_and_build_client_finish(&server_hello)
            .unwrap();
        let server = pending.on_client_finish(&finish).unwrap();
        let client = xx.finish().unwrap();
        assert_eq!(
            server.client_static,
            client_static.public_key.public_key_bytes()
        );
        assert_eq!(server.payload.username, Some(33_611_111_111));
        assert_eq!(client.server_cert_chain.leaf_key, identity.static_pub());
        roundtrip(&client.write_cipher, &server);

        let ik = IkHandshakeState::new(
            client_static,
            client.server_cert_chain.leaf_key,
            login_payload(),
            &WA_CONN_HEADER,
        );
        let mut ik = ik.unwrap();
        let hello = ik.build_client_hello().unwrap();
        let AfterHello::Ik {
            server_hello,
            established,
        } = on_client_hello(&identity, &hello).unwrap()
        else {
            panic!("an IK hello must be accepted");
        };
        let IkServerHelloOutcome::Continue(out) = ik.read_server_hello(&server_hello).unwrap()
        else {
            panic!("the client must continue in IK");
        };
        roundtrip(&out.write_cipher, &established);
    }

    #[test]
    fn ik_for_another_server_key_is_refused() {
        let identity = ServerIdentity::generate().unwrap();
        let other = wacore::crypto::generate_curve_key_pair();
        let mut ik = IkHandshakeState::new(
            wacore::crypto::generate_curve_key_pair(),
            other.public_key.public_key_bytes().try_into().unwrap(),
            login_payload(),
            &WA_CONN_HEADER,
        )
        .unwrap();
        let hello = ik.build_client_hello().unwrap();
        assert!(on_client_hello(&identity, &hello).is_err());
    }

    #[test]
    fn conn_header_with_and_without_edge_routing() {
        assert_eq!(strip_conn_header(b"WA\x06\x03rest").unwrap(), b"rest");
        assert_eq!(
            strip_conn_header(b"ED\x00\x01\x00\x00\x02xyWA\x06\x03rest").unwrap(),
            b"rest"
        );
        assert!(strip_conn_header(b"GET / HTTP/1.1").is_err());
    }
}
