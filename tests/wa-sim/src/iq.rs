//! `<iq>` requests a client sends to the server (namespace by namespace), and the
//! answers that let whatsapp-rust's connect path proceed. Anything not understood
//! gets a prompt `501` error so the client never waits for an IQ timeout.

use wacore_binary::Node;
use wacore_binary::builder::NodeBuilder;

use crate::stanza::{Conn, SERVER, Session, attr};
use crate::{groups, keys, media, messages, pair_code, pairing, usync};

pub fn result(id: &str, children: Vec<Node>) -> Node {
    let b = NodeBuilder::new("iq")
        .attr("from", SERVER)
        .attr("type", "result")
        .attr("id", id.to_string());
    if children.is_empty() {
        b.build()
    } else {
        b.children(children).build()
    }
}

pub fn error(id: &str, code: u16, text: &str) -> Node {
    NodeBuilder::new("iq")
        .attr("from", SERVER)
        .attr("type", "error")
        .attr("id", id.to_string())
        .children([NodeBuilder::new("error")
            .attr("code", code.to_string())
            .attr("text", text.to_string())
            .build()])
        .build()
}

/// Entry point for every `<iq>` from a client.
pub async fn on_iq(conn: &mut Conn, node: &Node) {
    let ty = attr(node, "type").unwrap_or_default();
    if ty == "result" || ty == "error" {
        if !pairing::on_iq_response(conn, node) {
            log::debug!("ignoring iq {ty} id={:?}", attr(node, "id"));
        }
        return;
    }
    let Some(id) = attr(node, "id") else {
        log::warn!("iq without id");
        return;
    };
    let xmlns = attr(node, "xmlns").unwrap_or_default();
    let first_child = node
        .children()
        .and_then(|c| c.first())
        .map(|c| c.tag.to_string())
        .unwrap_or_default();
    let logged_in = matches!(conn.session, Session::LoggedIn { .. });

    let reply = match (xmlns.as_str(), first_child.as_str()) {
        ("w:p", _) => result(&id, vec![]),
        ("passive", child) => {
            conn.send(result(&id, vec![]));
            if let (Session::LoggedIn { phone, device }, "active") = (&conn.session, child) {
                // Active: deliver what was queued while offline, then the end marker.
                let key = (phone.clone(), *device);
                let queued = messages::take_offline(&mut conn.world.lock(), &key, conn.handle.id);
                let count = queued.len();
                for n in queued {
                    conn.send(n);
                }
                conn.send(
                    NodeBuilder::new("ib")
                        .attr("from", SERVER)
                        .children([NodeBuilder::new("offline")
                            .attr("count", count.to_string())
                            .build()])
                        .build(),
                );
            }
            return;
        }
        ("abt", _) => result(
            &id,
            vec![
                NodeBuilder::new("props")
                    .attr("protocol", "1")
                    .attr("hash", "wa-sim")
                    .attr("refresh", "86400")
                    .build(),
            ],
        ),
        ("blocklist", _) => result(&id, vec![NodeBuilder::new("list").build()]),
        ("privacy", "privacy") if ty == "get" => {
            result(&id, vec![NodeBuilder::new("privacy").build()])
        }
        ("privacy", _) | ("disappearing_mode", _) => result(&id, vec![]),
        ("w:sync:app:state", _) => app_state_sync(&id, node),
        ("md", "link_code_companion_reg") => match pair_code::on_iq(conn, &id, node) {
            Some(reply) => reply,
            None => error(&id, 400, "bad-request"),
        },
        ("encrypt", _) if logged_in => keys::on_encrypt(conn, &id, node),
        ("usync", _) if logged_in => usync::on_usync(conn, &id, node),
        ("w:g2", _) if logged_in => groups::on_iq(conn, &id, node),
        ("w:profile:picture", "picture") if logged_in && ty == "get" => {
            groups::on_picture_iq(conn, &id, node)
        }
        ("w:m", "media_conn") if logged_in => result(&id, vec![media::media_conn_node()]),
        _ => {
            log::warn!("unhandled iq xmlns={xmlns:?} type={ty} <{first_child}>: answering 501");
            error(&id, 501, "feature-not-implemented")
        }
    };
    conn.send(reply);
}

/// App state: every requested collection exists and is empty (version 0, no patches).
fn app_state_sync(id: &str, node: &Node) -> Node {
    let collections: Vec<Node> = node
        .get_optional_child("sync")
        .and_then(|s| s.children())
        .unwrap_or_default()
        .iter()
        .filter(|c| c.tag == "collection")
        .filter_map(|c| attr(c, "name"))
        .map(|name| {
            NodeBuilder::new("collection")
                .attr("name", name)
                .attr("version", "0")
                .build()
        })
        .collect();
    result(
        id,
        vec![NodeBuilder::new("sync").children(collections).build()],
    )
}
