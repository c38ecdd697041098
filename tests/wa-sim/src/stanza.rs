//! Stanza dispatch for an established connection: registration vs login right
//! after the handshake, then each top-level stanza the client sends to its handler.

use std::sync::Arc;

use wacore_binary::Node;
use wacore_binary::builder::NodeBuilder;
use waproto::whatsapp as wa;

use crate::state::{ConnHandle, RegistrationData, World};
use crate::{iq, messages, pairing};

/// Server JID as it appears in `from` attributes.
pub const SERVER: &str = "s.whatsapp.net";

/// Who is on the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Session {
    /// Unpaired device showing QR codes.
    Registering,
    /// Linked device `phone:device`.
    LoggedIn { phone: String, device: u16 },
    /// Refused; the connection is being closed.
    Refused,
}

/// Per-connection context handed to the handlers.
pub struct Conn {
    pub world: Arc<World>,
    pub handle: ConnHandle,
    pub client_static: [u8; 32],
    pub session: Session,
}

impl Conn {
    pub fn new(world: Arc<World>, handle: ConnHandle, client_static: [u8; 32]) -> Self {
        Self {
            world,
            handle,
            client_static,
            session: Session::Refused,
        }
    }

    pub fn send(&self, node: Node) {
        self.handle.send(node);
    }
}

/// String value of an attribute.
pub fn attr(node: &Node, key: &str) -> Option<String> {
    node.attrs.get(key).map(|v| v.as_str().into_owned())
}

/// Content bytes of a node (binary or string content).
pub fn content_bytes(node: &Node) -> Option<&[u8]> {
    match &node.content {
        Some(wacore_binary::NodeContent::Bytes(b)) => Some(b),
        Some(wacore_binary::NodeContent::String(s)) => Some(s.as_bytes()),
        _ => None,
    }
}

/// Current server time in seconds, as the `t` attribute carries it.
pub fn now() -> String {
    wacore::time::now_secs().to_string()
}

fn registration_data(p: &wa::client_payload::DevicePairingRegistrationData) -> RegistrationData {
    fn be_u32(bytes: Option<&Vec<u8>>) -> u32 {
        bytes
            .map(|b| b.iter().fold(0u32, |acc, x| (acc << 8) | u32::from(*x)))
            .unwrap_or(0)
    }
    RegistrationData {
        registration_id: be_u32(p.e_regid.as_ref()),
        identity_pub: p.e_ident.clone().unwrap_or_default(),
        signed_prekey_id: be_u32(p.e_skey_id.as_ref()),
        signed_prekey_pub: p.e_skey_val.clone().unwrap_or_default(),
        signed_prekey_sig: p.e_skey_sig.clone().unwrap_or_default(),
    }
}

/// Called once the Noise handshake produced the client's payload.
pub fn on_established(conn: &mut Conn, payload: &wa::ClientPayload) {
    if let Some(reg) = payload.device_pairing_data.as_option() {
        conn.session = Session::Registering;
        let push_name = payload.push_name.clone().unwrap_or_default();
        pairing::start_registration(conn, registration_data(reg), push_name);
        return;
    }
    let (Some(user), Some(device)) = (payload.username, payload.device) else {
        refuse(conn, "login payload without username/device");
        return;
    };
    let phone = user.to_string();
    let device = device as u16;
    // A banned or outdated device (control API) is refused before it is online.
    if let Some(failure) = crate::devices::login_failure(&conn.world, &(phone.clone(), device)) {
        log::warn!("refusing login of {phone}:{device}: {failure:?}");
        conn.session = Session::Refused;
        conn.send(failure);
        conn.handle.close();
        return;
    }
    let lid = {
        let mut inner = conn.world.lock();
        let known = inner
            .devices
            .get(&(phone.clone(), device))
            .is_some_and(|d| d.noise_pub == conn.client_static);
        if !known {
            None
        } else {
            let lid = inner.phone_mut(&phone).lid_user.clone();
            if let Some(old) = inner
                .online
                .insert((phone.clone(), device), conn.handle.clone())
            {
                old.send(
                    NodeBuilder::new("stream:error")
                        .children([NodeBuilder::new("conflict")
                            .attr("type", "replaced")
                            .build()])
                        .build(),
                );
                old.close();
            }
            Some(lid)
        }
    };
    let Some(lid) = lid else {
        refuse(conn, &format!("unknown device {phone}:{device}"));
        return;
    };

    log::info!("{phone}:{device} logged in");
    conn.session = Session::LoggedIn {
        phone: phone.clone(),
        device,
    };
    conn.send(
        NodeBuilder::new("success")
            .attr("t", now())
            .attr("lid", format!("{lid}:{device}@lid"))
            .attr("location", "sim")
            .attr("creation", now())
            .build(),
    );
}

/// `<failure reason="401">`: the client treats it as logged out and stops.
fn refuse(conn: &mut Conn, why: &str) {
    log::warn!("refusing login: {why}");
    conn.session = Session::Refused;
    conn.send(
        NodeBuilder::new("failure")
            .attr("reason", "401")
            .attr("location", "sim")
            .build(),
    );
    conn.handle.close();
}

/// Routes one stanza from the client.
pub async fn on_stanza(conn: &mut Conn, node: Node) {
    match node.tag.as_ref() {
        "iq" => iq::on_iq(conn, &node).await,
        "message" => messages::on_message(conn, &node),
        "receipt" => messages::on_receipt(conn, &node),
        "presence" => on_presence(conn, &node),
        "ack" => messages::on_ack(conn, &node),
        // Unified-session markers, chat states: nothing to do.
        "ib" | "chatstate" => {}
        other => log::warn!("unhandled <{other}> stanza"),
    }
}

/// `<presence name="...">` carries the device's push name: remember it for `notify`.
fn on_presence(conn: &mut Conn, node: &Node) {
    if let (Session::LoggedIn { phone, device }, Some(name)) = (&conn.session, attr(node, "name"))
        && let Some(d) = conn.world.lock().devices.get_mut(&(phone.clone(), *device))
    {
        d.push_name = name;
    }
}
