//! A `waE2E.Message` given as proto3 JSON (the canonical mapping: camelCase
//! field names, enums by name, bytes in base64, 64-bit numbers as strings), for a
//! member that plays a modified client: whatever the JSON says is what its client
//! encrypts and sends, with no check an official client would make. Read with
//! waproto's own descriptor (copied by `build.rs`), so it is the schema the
//! members' clients encode with; `extra_wire` appends raw protobuf bytes (fields
//! the schema does not know, or a second value for one it knows).

use std::sync::{Arc, OnceLock};

use buffa_descriptor::{DescriptorPool, DynamicMessageSeed};
use serde::de::DeserializeSeed as _;
use waproto::buffa::Message as _;
use waproto::whatsapp as wa;

static DESCRIPTOR: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/whatsapp.desc"));

fn pool() -> &'static Arc<DescriptorPool> {
    static POOL: OnceLock<Arc<DescriptorPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        // Our own build's descriptor: trusted, larger than the default bound.
        let options = waproto::buffa::DecodeOptions::new().with_element_memory_limit(usize::MAX);
        Arc::new(
            DescriptorPool::decode_with_options(DESCRIPTOR, &options)
                .unwrap_or_else(|e| panic!("waproto's descriptor decodes: {e:?}")),
        )
    })
}

/// The wire bytes of `json` read as a `whatsapp.Message`, followed by `extra_wire`.
pub fn wire_bytes(json: &serde_json::Value, extra_wire: &[u8]) -> Result<Vec<u8>, String> {
    let pool = pool();
    let index = pool
        .message_index("whatsapp.Message")
        .ok_or("waproto's descriptor has no whatsapp.Message")?;
    // `DynamicMessage::from_json` needs buffa-descriptor's `std` (see Cargo.toml).
    let text = json.to_string();
    let mut reader = serde_json::Deserializer::from_str(&text);
    let dynamic = DynamicMessageSeed::new(pool.clone(), index)
        .deserialize(&mut reader)
        .and_then(|message| reader.end().map(|()| message))
        .map_err(|e| format!("message: not a waE2E.Message in proto3 JSON: {e}"))?;
    let mut bytes = dynamic.encode_to_vec();
    bytes.extend_from_slice(extra_wire);
    Ok(bytes)
}

/// `json` (+ `extra_wire`) as the waproto `Message` a client sends.
pub fn message(json: &serde_json::Value, extra_wire: &[u8]) -> Result<wa::Message, String> {
    let bytes = wire_bytes(json, extra_wire)?;
    wa::Message::decode_from_slice(&bytes)
        .map_err(|e| format!("message: the bytes do not decode as a waE2E.Message: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_proto3_json_with_every_kind_of_field() {
        let m = message(
            &json!({
                "imageMessage": {
                    "url": "https://mmg.whatsapp.net/x",
                    "staticUrl": "http://127.0.0.1:9/never",
                    "mediaKey": "AAEC",
                    "fileLength": "100",
                    "caption": "hi",
                    "contextInfo": {"stanzaId": "ABC", "participant": "336@s.whatsapp.net"}
                },
                "protocolMessage": {
                    "type": "REVOKE",
                    "key": {"remoteJid": "1@g.us", "fromMe": false, "id": "XYZ"}
                }
            }),
            &[],
        )
        .unwrap();
        let image = m.image_message.as_option().unwrap();
        assert_eq!(
            image.static_url.as_deref(),
            Some("http://127.0.0.1:9/never")
        );
        assert_eq!(image.media_key.as_deref(), Some(&[0u8, 1, 2][..]));
        assert_eq!(image.file_length, Some(100));
        let context = image.context_info.as_option().unwrap();
        assert_eq!(context.stanza_id.as_deref(), Some("ABC"));
        let protocol = m.protocol_message.as_option().unwrap();
        assert_eq!(
            protocol.r#type,
            Some(wa::message::protocol_message::Type::REVOKE)
        );
        assert_eq!(protocol.key.as_option().unwrap().from_me, Some(false));
    }

    #[test]
    fn extra_wire_bytes_become_unknown_fields() {
        // Field 9999, varint 1: not in the schema.
        let plain = wire_bytes(&json!({"conversation": "hi"}), &[]).unwrap();
        let extra = [0xf8, 0xe1, 0x04, 0x01];
        let bytes = wire_bytes(&json!({"conversation": "hi"}), &extra).unwrap();
        assert_eq!(bytes.len(), plain.len() + extra.len());
        assert_eq!(
            message(&json!({"conversation": "hi"}), &extra)
                .unwrap()
                .conversation
                .as_deref(),
            Some("hi")
        );
    }

    #[test]
    fn refuses_what_is_not_a_message() {
        assert!(message(&json!({"conversashun": "hi"}), &[]).is_err());
        assert!(message(&json!({"conversation": 3}), &[]).is_err());
        // A truncated field in the extra bytes.
        assert!(message(&json!({}), &[0x0a, 0x05, b'a']).is_err());
    }
}
