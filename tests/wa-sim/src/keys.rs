//! Signal key distribution (`xmlns="encrypt"`): pre-key upload and count, signed
//! pre-key rotation, key-bundle digest, and bundle fetch (one-time keys consumed).

use wacore_binary::Node;
use wacore_binary::builder::NodeBuilder;

use crate::iq::{error, result};
use crate::stanza::{Conn, Session, attr, content_bytes};
use crate::state::{DeviceRecord, Inner, RegistrationData};

pub fn be_uint(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
}

fn id3(id: u32) -> Vec<u8> {
    id.to_be_bytes()[1..].to_vec()
}

fn leaf(tag: &'static str, bytes: Vec<u8>) -> Node {
    NodeBuilder::new(tag).bytes(bytes).build()
}

fn skey_node(reg: &RegistrationData) -> Node {
    NodeBuilder::new("skey")
        .children([
            leaf("id", id3(reg.signed_prekey_id)),
            leaf("value", reg.signed_prekey_pub.clone()),
            leaf("signature", reg.signed_prekey_sig.clone()),
        ])
        .build()
}

/// Entry point for `xmlns="encrypt"` from a logged-in device.
pub fn on_encrypt(conn: &mut Conn, id: &str, node: &Node) -> Node {
    let Session::LoggedIn { phone, device } = &conn.session else {
        return error(id, 401, "not-authorized");
    };
    let own = (phone.clone(), *device);
    let mut inner = conn.world.lock();
    if let Some(key) = node.get_optional_child("key") {
        return fetch_bundles(&mut inner, id, key);
    }
    let Some(record) = inner.devices.get_mut(&own) else {
        return error(id, 404, "item-not-found");
    };
    if let Some(list) = node.get_optional_child("list") {
        upload(record, node, list);
        log::debug!("{}:{} has {} pre-keys", own.0, own.1, record.prekeys.len());
        return result(id, vec![]);
    }
    if node.get_optional_child("count").is_some() {
        let count = NodeBuilder::new("count")
            .attr("value", record.prekeys.len().to_string())
            .build();
        return result(id, vec![count]);
    }
    if let Some(rotate) = node.get_optional_child("rotate") {
        if let Some(skey) = rotate.get_optional_child("skey") {
            update_skey(&mut record.registration, skey);
        }
        return result(id, vec![]);
    }
    if node.get_optional_child("digest").is_some() {
        return digest(record, id);
    }
    error(id, 501, "feature-not-implemented")
}

/// Upload: `registration`, `type`, `identity`, `list` of one-time keys, `skey`.
fn upload(record: &mut DeviceRecord, node: &Node, list: &Node) {
    for k in list.children().unwrap_or_default() {
        let kid = k.get_optional_child("id").and_then(content_bytes);
        let val = k.get_optional_child("value").and_then(content_bytes);
        if let (Some(kid), Some(val)) = (kid, val) {
            let kid = be_uint(kid);
            record.prekeys.retain(|(i, _)| *i != kid);
            record.prekeys.push((kid, val.to_vec()));
        }
    }
    if let Some(b) = node
        .get_optional_child("registration")
        .and_then(content_bytes)
    {
        record.registration.registration_id = be_uint(b);
    }
    if let Some(b) = node.get_optional_child("identity").and_then(content_bytes) {
        record.registration.identity_pub = b.to_vec();
    }
    if let Some(skey) = node.get_optional_child("skey") {
        update_skey(&mut record.registration, skey);
    }
}

fn update_skey(reg: &mut RegistrationData, skey: &Node) {
    if let Some(b) = skey.get_optional_child("id").and_then(content_bytes) {
        reg.signed_prekey_id = be_uint(b);
    }
    if let Some(b) = skey.get_optional_child("value").and_then(content_bytes) {
        reg.signed_prekey_pub = b.to_vec();
    }
    if let Some(b) = skey.get_optional_child("signature").and_then(content_bytes) {
        reg.signed_prekey_sig = b.to_vec();
    }
}

/// What the server holds for the device, with the hash the client recomputes.
fn digest(record: &DeviceRecord, id: &str) -> Node {
    let reg = &record.registration;
    let pubkeys: Vec<&[u8]> = record.prekeys.iter().map(|(_, k)| k.as_slice()).collect();
    let hash = wacore::prekeys::compute_key_bundle_digest(
        &reg.identity_pub,
        &reg.signed_prekey_pub,
        &reg.signed_prekey_sig,
        &pubkeys,
    );
    let ids = record
        .prekeys
        .iter()
        .map(|(kid, _)| leaf("id", id3(*kid)))
        .collect::<Vec<_>>();
    let digest = NodeBuilder::new("digest")
        .children([
            leaf("type", vec![5]),
            leaf("registration", reg.registration_id.to_be_bytes().to_vec()),
            leaf("identity", reg.identity_pub.clone()),
            skey_node(reg),
            NodeBuilder::new("list").children(ids).build(),
            leaf("hash", hash),
        ])
        .build();
    result(id, vec![digest])
}

/// `<key><user jid="phone:device@s.whatsapp.net"/>...</key>`: one bundle per
/// device, each consuming one one-time pre-key while any are left.
fn fetch_bundles(inner: &mut Inner, id: &str, key: &Node) -> Node {
    let mut users = Vec::new();
    for user in key.get_children_by_tag("user") {
        let Some(jid) = attr(user, "jid") else {
            continue;
        };
        let Some(device_key) = inner.device_key_for_jid(&jid) else {
            users.push(
                NodeBuilder::new("user")
                    .attr("jid", jid)
                    .children([NodeBuilder::new("error")
                        .attr("code", "404")
                        .attr("text", "item-not-found")
                        .build()])
                    .build(),
            );
            continue;
        };
        let record = inner
            .devices
            .get_mut(&device_key)
            .expect("device_key_for_jid returns known devices");
        let reg = &record.registration;
        let mut children = vec![
            leaf("registration", reg.registration_id.to_be_bytes().to_vec()),
            leaf("type", vec![5]),
            leaf("identity", reg.identity_pub.clone()),
        ];
        if !record.prekeys.is_empty() {
            let (kid, value) = record.prekeys.remove(0);
            children.push(
                NodeBuilder::new("key")
                    .children([leaf("id", id3(kid)), leaf("value", value)])
                    .build(),
            );
        }
        children.push(skey_node(reg));
        children.push(leaf("device-identity", record.signed_identity.clone()));
        users.push(
            NodeBuilder::new("user")
                .attr("jid", jid)
                .children(children)
                .build(),
        );
    }
    result(id, vec![NodeBuilder::new("list").children(users).build()])
}
