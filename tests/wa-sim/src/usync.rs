//! `xmlns="usync"` queries: device lists (companion devices only: the simulated
//! primary phones hold no Signal keys), LID mapping and "is on WhatsApp".

use wacore_binary::Node;
use wacore_binary::builder::NodeBuilder;
use waproto::buffa::Message as _;
use waproto::whatsapp as wa;

use crate::iq::result;
use crate::stanza::{Conn, attr};
use crate::state::Inner;

/// ADV prefix of a key-index list signature.
const ADV_PREFIX_KEY_INDEX_LIST: &[u8] = &[6, 2];

/// Answers a usync query for every listed user, with the protocols asked for.
pub fn on_usync(conn: &mut Conn, id: &str, node: &Node) -> Node {
    let Some(usync) = node.get_optional_child("usync") else {
        return crate::iq::error(id, 400, "bad-request");
    };
    let protocols: Vec<String> = usync
        .get_optional_child("query")
        .and_then(|q| q.children())
        .unwrap_or_default()
        .iter()
        .map(|p| p.tag.to_string())
        .collect();
    let inner = conn.world.lock();
    let users: Vec<Node> = usync
        .get_optional_child("list")
        .map(|l| l.get_children_by_tag("user").collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|u| user_result(&inner, u, &protocols))
        .collect();
    let mut answer = NodeBuilder::new("usync");
    for key in ["sid", "index", "last", "mode", "context"] {
        if let Some(v) = attr(usync, key) {
            answer = answer.attr(key, v);
        }
    }
    let answer = answer
        .children([NodeBuilder::new("list").children(users).build()])
        .build();
    result(id, vec![answer])
}

/// Phone number of a user JID (`N@s.whatsapp.net`, or a LID `L@lid` we issued),
/// or a `<contact>` child holding `+N` / `N`.
fn phone_of(inner: &Inner, user: &Node) -> Option<String> {
    if let Some(jid) = attr(user, "jid") {
        let (u, server) = jid.split_once('@')?;
        let u = u.split(':').next().unwrap_or(u);
        return match server {
            "s.whatsapp.net" => Some(u.to_string()),
            "lid" => inner
                .phones
                .iter()
                .find(|(_, p)| p.lid_user == u)
                .map(|(n, _)| n.clone()),
            _ => None,
        };
    }
    let contact = user.get_optional_child("contact")?;
    let text = crate::stanza::content_bytes(contact)?;
    let text = String::from_utf8_lossy(text);
    Some(text.trim_start_matches('+').to_string())
}

fn user_result(inner: &Inner, user: &Node, protocols: &[String]) -> Option<Node> {
    let phone = phone_of(inner, user);
    let known = phone.as_ref().and_then(|p| inner.phones.get(p));
    let jid =
        attr(user, "jid").or_else(|| phone.as_ref().map(|p| format!("{p}@s.whatsapp.net")))?;
    let mut children = Vec::new();
    for protocol in protocols {
        match protocol.as_str() {
            "devices" => {
                let devices = phone
                    .as_ref()
                    .map(|p| device_list(inner, p))
                    .unwrap_or_default();
                let mut nodes: Vec<Node> = vec![
                    NodeBuilder::new("device-list")
                        .children(devices.iter().map(|(d, ki)| {
                            NodeBuilder::new("device")
                                .attr("id", d.to_string())
                                .attr("key-index", ki.to_string())
                                .build()
                        }))
                        .build(),
                ];
                if let (Some(p), false) = (known, devices.is_empty()) {
                    nodes.push(key_index_list(p, &devices));
                }
                children.push(NodeBuilder::new("devices").children(nodes).build());
            }
            "lid" => {
                if let Some(p) = known {
                    children.push(
                        NodeBuilder::new("lid")
                            .attr("val", format!("{}@lid", p.lid_user))
                            .build(),
                    );
                }
            }
            "contact" => {
                let ty = if known.is_some() { "in" } else { "out" };
                children.push(NodeBuilder::new("contact").attr("type", ty).build());
            }
            _ => {}
        }
    }
    Some(
        NodeBuilder::new("user")
            .attr("jid", jid)
            .children(children)
            .build(),
    )
}

/// Linked devices of `phone` as (device id, key index), by device id.
fn device_list(inner: &Inner, phone: &str) -> Vec<(u16, u32)> {
    let mut v: Vec<(u16, u32)> = inner
        .devices
        .iter()
        .filter(|((p, _), _)| p == phone)
        .map(|((_, d), r)| (*d, r.key_index))
        .collect();
    v.sort();
    v
}

/// `ADVSignedKeyIndexList` naming the valid key indexes, signed by the account key.
fn key_index_list(phone: &crate::state::Phone, devices: &[(u16, u32)]) -> Node {
    let ts = wacore::time::now_secs().max(0) as u64;
    let valid: Vec<u32> = devices.iter().map(|(_, ki)| *ki).collect();
    let details = wa::ADVKeyIndexList {
        raw_id: Some(phone.raw_id),
        timestamp: Some(ts),
        current_index: valid.iter().copied().max(),
        valid_indexes: valid,
        ..Default::default()
    }
    .encode_to_vec();
    let msg = [ADV_PREFIX_KEY_INDEX_LIST, &details].concat();
    let signature = wacore::crypto::calculate_curve_signature(&phone.account_key.private_key, &msg)
        .map(|s| s.to_vec())
        .unwrap_or_default();
    let signed = wa::ADVSignedKeyIndexList {
        details: Some(details),
        account_signature: Some(signature),
        account_signature_key: Some(phone.account_key.public_key.public_key_bytes().to_vec()),
    }
    .encode_to_vec();
    NodeBuilder::new("key-index-list")
        .attr("ts", ts.to_string())
        .bytes(signed)
        .build()
}
