//! Message routing: a `<message>` from a device is acked, split per recipient
//! device (`<participants><to jid>`), re-addressed `from` the sender device and
//! delivered, or queued until the recipient device comes back (offline queue).
//! Receipts travel back to the sender's devices the same way. Content stays
//! end-to-end encrypted: the simulator never decrypts it.

use wacore_binary::Node;
use wacore_binary::builder::NodeBuilder;
use wacore_binary::node::Attrs;

use crate::stanza::{Conn, SERVER, Session, attr, now};
use crate::state::{DeviceKey, Inner};

fn ack(class: &str, id: &str, from: &str) -> Node {
    NodeBuilder::new("ack")
        .attr("class", class.to_string())
        .attr("id", id.to_string())
        .attr("from", from.to_string())
        .attr("t", now())
        .build()
}

/// JID of `device` of `phone`, in the addressing family of `like` (PN or LID).
fn device_jid(inner: &Inner, phone: &str, device: u16, like: &str) -> String {
    let lid = like.ends_with("@lid");
    let user = if lid {
        inner.phones.get(phone).map(|p| p.lid_user.clone())
    } else {
        None
    };
    match (user, device) {
        (Some(l), 0) => format!("{l}@lid"),
        (Some(l), d) => format!("{l}:{d}@lid"),
        (None, 0) => format!("{phone}@{SERVER}"),
        (None, d) => format!("{phone}:{d}@{SERVER}"),
    }
}

/// Sends `node` to the device now, or keeps it for its next login.
pub fn deliver(inner: &mut Inner, to: &DeviceKey, node: Node) {
    match inner.online.get(to) {
        Some(conn) => conn.send(node),
        None => inner.offline.entry(to.clone()).or_default().push(node),
    }
}

/// Everything queued for a device that just became active, marked `offline`.
pub fn take_offline(inner: &mut Inner, device: &DeviceKey) -> Vec<Node> {
    let mut queued = inner.offline.remove(device).unwrap_or_default();
    for n in &mut queued {
        n.attrs.insert("offline", "1");
    }
    queued
}

fn sender(conn: &Conn) -> Option<DeviceKey> {
    match &conn.session {
        Session::LoggedIn { phone, device } => Some((phone.clone(), *device)),
        _ => None,
    }
}

/// A `<message>` from a logged-in device.
pub fn on_message(conn: &mut Conn, node: &Node) {
    let (Some(from_key), Some(id), Some(to)) = (sender(conn), attr(node, "id"), attr(node, "to"))
    else {
        log::warn!("dropping malformed <message>");
        return;
    };
    if to.ends_with("@g.us") {
        let mut inner = conn.world.lock();
        let push_name = inner
            .devices
            .get(&from_key)
            .map(|d| d.push_name.clone())
            .unwrap_or_default();
        let routed = crate::groups::fan_out(&mut inner, &from_key, node, &id, &to, &push_name);
        drop(inner);
        let mut a = ack("message", &id, &to);
        if !routed {
            log::warn!("message {id}: unknown group {to} or sender not in it");
            a.attrs.insert("error", "403");
        }
        conn.send(a);
        return;
    }
    let ty = attr(node, "type").unwrap_or_else(|| "text".into());
    let edit = attr(node, "edit");
    let children = node.children().unwrap_or_default();
    let device_identity = children
        .iter()
        .find(|c| c.tag == "device-identity")
        .cloned();
    // Fan-out list: `<participants><to jid><enc/></to>...` or a single `<enc>` to `to`.
    let mut targets: Vec<(String, Vec<Node>)> = Vec::new();
    if let Some(parts) = children.iter().find(|c| c.tag == "participants") {
        for t in parts.get_children_by_tag("to") {
            if let (Some(jid), Some(encs)) = (attr(t, "jid"), t.children()) {
                targets.push((jid, encs.to_vec()));
            }
        }
    } else {
        let encs: Vec<Node> = children
            .iter()
            .filter(|c| c.tag == "enc")
            .cloned()
            .collect();
        if !encs.is_empty() {
            targets.push((to.clone(), encs));
        }
    }

    let mut inner = conn.world.lock();
    let push_name = inner
        .devices
        .get(&from_key)
        .map(|d| d.push_name.clone())
        .unwrap_or_default();
    let t = now();
    for (jid, encs) in targets {
        let Some(target) = inner.device_key_for_jid(&jid) else {
            log::warn!("message {id}: unknown recipient device {jid}");
            continue;
        };
        let mut b = NodeBuilder::new("message")
            .attr("from", device_jid(&inner, &from_key.0, from_key.1, &jid))
            .attr("id", id.clone())
            .attr("t", t.clone())
            .attr("type", ty.clone());
        if target.0 == from_key.0 {
            // To the sender's own other devices: say who the chat is with.
            b = b.attr("recipient", to.clone());
        }
        if !push_name.is_empty() {
            b = b.attr("notify", push_name.clone());
        }
        if let Some(edit) = &edit {
            // Edits, revokes and reaction removals keep their marker.
            b = b.attr("edit", edit.clone());
        }
        let mut content = encs;
        content.extend(device_identity.clone());
        let delivered = b.children(content).build();
        deliver(&mut inner, &target, delivered);
    }
    drop(inner);
    conn.send(ack("message", &id, &to));
}

/// A `<receipt>` (delivery, read, retry...): ack it and pass it to the devices
/// of the user it is addressed to, `from` the device that sent it.
pub fn on_receipt(conn: &mut Conn, node: &Node) {
    let (Some(from_key), Some(id), Some(to)) = (sender(conn), attr(node, "id"), attr(node, "to"))
    else {
        return;
    };
    let ty = attr(node, "type");
    let mut ack_node = ack("receipt", &id, &to);
    if let Some(ty) = &ty {
        ack_node.attrs.insert("type", ty.clone());
    }
    conn.send(ack_node);
    if to.ends_with("@g.us") {
        return;
    }
    let mut inner = conn.world.lock();
    let to_phone = inner
        .device_key_for_jid(&to)
        .map(|(p, _)| p)
        .or_else(|| to.split(['@', ':']).next().map(str::to_string));
    let Some(to_phone) = to_phone else {
        return;
    };
    let targets: Vec<DeviceKey> = inner
        .devices
        .keys()
        .filter(|(p, _)| *p == to_phone)
        .cloned()
        .collect();
    let from = device_jid(&inner, &from_key.0, from_key.1, &to);
    for target in targets {
        let mut attrs = Attrs::new();
        for (k, v) in node.attrs.iter() {
            if !matches!(k.as_ref(), "to" | "from" | "t") {
                attrs.push(k.clone(), v.clone());
            }
        }
        attrs.push("from", from.clone());
        attrs.push("t", now());
        let r = Node::new("receipt", attrs, node.content.clone());
        deliver(&mut inner, &target, r);
    }
}
