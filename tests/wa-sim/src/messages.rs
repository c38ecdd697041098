//! Message routing: a `<message>` from a device is acked, split per recipient
//! device (`<participants><to jid>`), re-addressed `from` the sender device and
//! delivered, or queued until the recipient device comes back (offline queue).
//! Receipts travel back to the sender's devices the same way. Content stays
//! end-to-end encrypted: the simulator never decrypts it.

use wacore_binary::Node;
use wacore_binary::builder::NodeBuilder;
use wacore_binary::node::Attrs;

use crate::stanza::{Conn, SERVER, Session, attr, now};
use crate::state::{DeviceKey, Inner, Pending};

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

/// Sends `node` to the device now (applying its chaos faults), or keeps it for
/// its next login. Either way it stays in the device's outbox until acknowledged.
pub fn deliver(inner: &mut Inner, to: &DeviceKey, node: Node) {
    // Like WhatsApp, never let a live stanza overtake older ones still waiting to be
    // (re)sent on this connection (a device that reconnected gets its backlog when
    // it goes `active`): it joins the queue behind them.
    let overtakes = |conn_id: u64| {
        inner
            .outbox
            .get(to)
            .is_some_and(|pending| pending.iter().any(|p| p.sent_on != Some(conn_id)))
    };
    let conn = inner
        .online
        .get(to)
        .filter(|conn| !overtakes(conn.id))
        .cloned();
    let Some(conn) = conn else {
        inner.outbox.entry(to.clone()).or_default().push(Pending {
            node,
            sent_on: None,
        });
        return;
    };
    let mut abort = false;
    if let Some(f) = inner.faults.get_mut(to) {
        f.routed += 1;
        if node.tag == "message" {
            f.messages += 1;
            if f.malformed_every > 0 && f.messages % f.malformed_every == 0 {
                f.malformed_sent += 1;
                conn.send(crate::devices::malformed(f.malformed_sent));
            }
        }
        if f.drop_every > 0 && f.routed % f.drop_every == 0 {
            f.drops += 1;
            abort = true;
        }
    }
    conn.send(node.clone());
    inner.outbox.entry(to.clone()).or_default().push(Pending {
        node,
        sent_on: Some(conn.id),
    });
    if abort {
        log::info!("{}:{}: dropping its connection (faults)", to.0, to.1);
        conn.abort();
        inner.online.remove(to);
    }
}

/// What a device that just became active on connection `conn_id` must get:
/// every unacknowledged stanza not already sent on that connection, marked
/// `offline`, in routing order.
pub fn take_offline(inner: &mut Inner, device: &DeviceKey, conn_id: u64) -> Vec<Node> {
    let Some(pending) = inner.outbox.get_mut(device) else {
        return Vec::new();
    };
    pending
        .iter_mut()
        .filter(|p| p.sent_on != Some(conn_id))
        .map(|p| {
            p.sent_on = Some(conn_id);
            let mut n = p.node.clone();
            n.attrs.insert("offline", "1");
            n
        })
        .collect()
}

/// The device acknowledged the stanzas `ids` of kind `tag`: forget them.
fn acknowledged(inner: &mut Inner, device: &DeviceKey, tag: &str, ids: &[String]) {
    if let Some(pending) = inner.outbox.get_mut(device) {
        pending.retain(|p| {
            p.node.tag != tag || !attr(&p.node, "id").is_some_and(|id| ids.contains(&id))
        });
        if pending.is_empty() {
            inner.outbox.remove(device);
        }
    }
}

/// An `<ack class="..." id="...">` from a device: it got that stanza.
pub fn on_ack(conn: &mut Conn, node: &Node) {
    if let (Some(device), Some(class), Some(id)) =
        (sender(conn), attr(node, "class"), attr(node, "id"))
    {
        acknowledged(&mut conn.world.lock(), &device, &class, &[id]);
    }
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
    {
        let mut inner = conn.world.lock();
        if let Some(f) = inner
            .faults
            .get_mut(&from_key)
            .filter(|f| f.swallow_messages > 0)
        {
            f.swallow_messages -= 1;
            f.swallowed += 1;
            log::info!("message {id}: lost in transit, cutting the connection (faults)");
            if let Some(online) = inner.online.remove(&from_key) {
                online.abort();
            }
            return;
        }
        let key = (from_key.0.clone(), to.clone(), id.clone());
        if !inner.routed_ids.insert(key) {
            log::info!("message {id}: already routed, acked again only");
            drop(inner);
            conn.send(ack("message", &id, &to));
            return;
        }
        let rank = inner.routed_order.len() as u64;
        inner
            .routed_order
            .insert((from_key.0.clone(), id.clone()), rank);
    }
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
            log::warn!(
                "message {id}: unknown group {to}, sender not in it, or only admins may send"
            );
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
    // A receipt (delivery, read, retry...) from a device acknowledges the
    // messages it names: `id` and any `<list><item id>`.
    let mut ids = vec![id.clone()];
    if let Some(list) = node.get_optional_child("list") {
        ids.extend(
            list.get_children_by_tag("item")
                .filter_map(|i| attr(i, "id")),
        );
    }
    acknowledged(&mut conn.world.lock(), &from_key, "message", &ids);
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
