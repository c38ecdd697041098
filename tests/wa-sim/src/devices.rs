//! What the control API can do to one linked device: unlink it from its phone
//! (logout), refuse its next logins (temporary ban, outdated client), drop its
//! connection, and chaos faults on what is routed to it (connection drops every
//! N stanzas, malformed stanzas). Stanzas routed to a device stay in its outbox
//! until it acknowledges them (see [`crate::messages::deliver`]), so none of
//! these faults loses a message.

use wacore_binary::Node;
use wacore_binary::builder::NodeBuilder;

use crate::stanza::{SERVER, now};
use crate::state::{DeviceKey, Faults, LoginFault, World};

/// Sender of the garbage-ciphertext messages: a number no test uses.
const GARBAGE_SENDER: &str = "999999999999:1@s.whatsapp.net";

/// The `n`-th malformed stanza (n >= 1) sent instead of a real one, in turn: a
/// `<message>` without its attributes, an unknown top-level tag, and a
/// `<message>` whose ciphertext is garbage. The real stanza follows it.
pub fn malformed(n: u64) -> Node {
    let id = format!("SIMBAD{n:010}");
    match n % 3 {
        1 => NodeBuilder::new("message")
            .attr("id", id)
            .children([NodeBuilder::new("sim-bogus").bytes(vec![0xff; 8]).build()])
            .build(),
        2 => NodeBuilder::new("sim-unknown-stanza")
            .attr("id", id)
            .attr("from", SERVER)
            .attr("t", now())
            .children([NodeBuilder::new("x").build()])
            .build(),
        _ => {
            let garbage: Vec<u8> = (0..48u8)
                .map(|i| i.wrapping_mul(37).wrapping_add(n as u8))
                .collect();
            NodeBuilder::new("message")
                .attr("from", GARBAGE_SENDER)
                .attr("id", id)
                .attr("t", now())
                .attr("type", "text")
                .children([NodeBuilder::new("enc")
                    .attr("v", "2")
                    .attr("type", "msg")
                    .bytes(garbage)
                    .build()])
                .build()
        }
    }
}

/// The `<failure>` that refuses a login of `device`, if the control API set one.
pub fn login_failure(world: &World, device: &DeviceKey) -> Option<Node> {
    let mut inner = world.lock();
    match inner.login_faults.get(device)?.clone() {
        LoginFault::TempBan { code, until } => {
            let left = until - wacore::time::now_secs();
            if left <= 0 {
                inner.login_faults.remove(device);
                return None;
            }
            Some(
                NodeBuilder::new("failure")
                    .attr("reason", "402")
                    .attr("location", "sim")
                    .attr("code", code.to_string())
                    .attr("expire", left.to_string())
                    .build(),
            )
        }
        LoginFault::Outdated => Some(
            NodeBuilder::new("failure")
                .attr("reason", "405")
                .attr("location", "sim")
                .build(),
        ),
    }
}

/// The phone unlinks `device`: its registration is forgotten (its next login
/// gets `<failure reason="401">`) and, when online, it gets
/// `<stream:error><conflict type="device_removed"/></stream:error>`.
/// `None` for an unknown device, else whether it was online.
pub fn logout(world: &World, device: &DeviceKey) -> Option<bool> {
    let conn = {
        let mut inner = world.lock();
        inner.devices.remove(device)?;
        inner.outbox.remove(device);
        inner.faults.remove(device);
        inner.login_faults.remove(device);
        inner.online.remove(device)
    };
    log::info!("{}:{} logged out by its phone", device.0, device.1);
    let online = conn.is_some();
    if let Some(conn) = conn {
        conn.send(
            NodeBuilder::new("stream:error")
                .children([NodeBuilder::new("conflict")
                    .attr("type", "device_removed")
                    .build()])
                .build(),
        );
        conn.close();
    }
    Some(online)
}

/// Closes the device's connection abruptly (no stream error, no close frame).
/// `None` for an unknown device, else whether it was online.
pub fn disconnect(world: &World, device: &DeviceKey) -> Option<bool> {
    let mut inner = world.lock();
    if !inner.devices.contains_key(device) {
        return None;
    }
    let conn = inner.online.remove(device);
    if let Some(c) = &conn {
        c.abort();
    }
    Some(conn.is_some())
}

/// Refuses the device's logins with `fault` from now on (and drops its current
/// connection, so that the refusal comes at once). `None` for an unknown device.
pub fn refuse_logins(world: &World, device: &DeviceKey, fault: LoginFault) -> Option<bool> {
    world.lock().login_faults.insert(device.clone(), fault);
    let was_online = disconnect(world, device);
    if was_online.is_none() {
        world.lock().login_faults.remove(device);
    }
    was_online
}

/// A temporary ban of `expire` seconds with ban `code` (see [`refuse_logins`]).
pub fn ban(world: &World, device: &DeviceKey, code: u32, expire: u64) -> Option<bool> {
    let until = wacore::time::now_secs() + i64::try_from(expire).unwrap_or(i64::MAX / 2);
    refuse_logins(world, device, LoginFault::TempBan { code, until })
}

/// Sets the device's chaos switches (`None` keeps a switch as it is); returns
/// them with their counters, `None` for an unknown device.
pub fn set_faults(
    world: &World,
    device: &DeviceKey,
    drop_every: Option<u64>,
    malformed_every: Option<u64>,
    swallow_messages: Option<u64>,
) -> Option<Faults> {
    let mut inner = world.lock();
    if !inner.devices.contains_key(device) {
        return None;
    }
    let f = inner.faults.entry(device.clone()).or_default();
    if let Some(n) = drop_every {
        f.drop_every = n;
    }
    if let Some(n) = malformed_every {
        f.malformed_every = n;
    }
    if let Some(n) = swallow_messages {
        f.swallow_messages = n;
    }
    Some(f.clone())
}

/// The device's chaos switches and counters; `None` for an unknown device.
pub fn faults(world: &World, device: &DeviceKey) -> Option<Faults> {
    let inner = world.lock();
    if !inner.devices.contains_key(device) {
        return None;
    }
    Some(inner.faults.get(device).cloned().unwrap_or_default())
}
