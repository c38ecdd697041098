//! The HTTP control API (JSON on loopback) that tests use to drive the simulator.
//! The contract is documented in `tests/wa-sim/README.md`.

use serde::Deserialize;
use serde_json::json;

use crate::Core;
use crate::Outgoing;
use crate::http::{self, Request, Response};
use crate::members::{MemberError, SendFailure};
use crate::pairing::ScanError;

#[derive(Deserialize)]
struct ScanBody {
    qr: String,
}

#[derive(Deserialize)]
struct MemberBody {
    phone: String,
    name: String,
}

#[derive(Deserialize)]
struct GroupBody {
    subject: String,
    creator: String,
    #[serde(default)]
    members: Vec<String>,
}

#[derive(Deserialize)]
struct ParticipantsBody {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize)]
struct GroupInfoBody {
    subject: Option<String>,
    description: Option<String>,
    admins_only: Option<bool>,
    ephemeral: Option<u32>,
    /// The group's admins besides its creator (phone numbers of participants).
    admins: Option<Vec<String>>,
}

/// A send body: the address field (`from` or `to`) and the message fields
/// (checked by [`Outgoing::from_json`]).
fn split_send_body(body: &[u8], address: &str) -> Result<(String, Outgoing), Response> {
    let shape = format!(r#"{{"{address}": "...", "text": "..."}}"#);
    let mut fields = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(o)) => o,
        Ok(_) => return Err(Response::error(400, format!("expected {shape}"))),
        Err(e) => return Err(Response::error(400, format!("expected {shape}: {e}"))),
    };
    let to = match fields.remove(address) {
        Some(serde_json::Value::String(s)) => s,
        _ => {
            return Err(Response::error(
                400,
                format!("expected {shape}: missing \"{address}\""),
            ));
        }
    };
    match Outgoing::from_json(serde_json::Value::Object(fields)) {
        Ok(out) => Ok((to, out)),
        Err(e) => Err(Response::error(400, e)),
    }
}

async fn send_content(member: &crate::Member, to: &str, out: Outgoing) -> Response {
    match member.send(to, out).await {
        Ok(id) => Response::json(200, json!({ "id": id })),
        Err(e @ SendFailure::BadRequest(_)) => Response::error(400, e),
        Err(e @ SendFailure::Failed(_)) => Response::error(502, e),
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| Response::error(400, format!("expected {shape}: {e}")))
}

/// A phone number as the simulator accepts it: 5 to 15 digits, no `+`.
pub fn valid_phone(phone: &str) -> bool {
    (5..=15).contains(&phone.len()) && phone.bytes().all(|b| b.is_ascii_digit())
}

/// Answers one control request.
pub async fn handle(sim: &Core, req: Request) -> Response {
    let segments: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    match (req.method.as_str(), segments.as_slice()) {
        ("GET", ["health"]) => Response::json(
            200,
            json!({
                "status": "ok",
                "ws_url": sim.ws_url(),
                "control_url": sim.http_url(),
            }),
        ),
        ("POST", ["phones", phone, "scan"]) => scan(sim, phone, &req.body).await,
        ("POST", ["phones", phone, "pair-code"]) => pair_code(sim, phone, &req.body).await,
        ("GET", ["phones", phone]) => match sim.phone_info(phone) {
            Some(info) => Response::json(200, info),
            None => Response::error(404, format!("unknown phone {phone}")),
        },
        ("POST", ["phones", phone, "devices", n, action]) => {
            device_action(sim, phone, n, action, &req.body)
        }
        ("PUT" | "GET", ["phones", phone, "devices", n, "faults"]) => {
            device_faults(sim, &req.method, phone, n, &req.body)
        }
        ("POST", ["members"]) => create_member(sim, &req.body).await,
        ("POST", ["mms", ..]) => crate::media::upload(&sim.world, req.query.as_deref(), req.body),
        ("GET", ["v", ..]) => {
            let delay = sim.world.lock().media_delay_ms;
            if delay > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            }
            crate::media::download(&sim.world, &req.path)
        }
        ("PUT", ["media", "faults"]) => media_faults(sim, &req.body),
        ("GET", ["members", phone, "messages"]) => match sim.members.get(phone) {
            Some(m) => {
                let chat = http::query_param(req.query.as_deref(), "chat");
                let messages = in_server_order(&sim.world, m.received(chat.as_deref()));
                Response::json(200, json!({ "messages": messages }))
            }
            None => Response::error(404, format!("no member {phone}")),
        },
        ("POST", ["members", phone, "messages"]) => send(sim, phone, &req.body).await,
        ("POST", ["groups"]) => create_group(sim, &req.body),
        ("POST", ["groups", jid, "messages"]) => group_send(sim, jid, &req.body).await,
        ("POST", ["groups", jid, "call"]) => group_call(sim, jid, &req.body),
        ("GET", ["groups", jid]) => group_info(sim, jid),
        ("PUT", ["groups", jid, "picture"]) => group_picture(sim, jid, Some(req.body)),
        ("DELETE", ["groups", jid, "picture"]) => group_picture(sim, jid, None),
        ("GET", ["pp", gid, picture_id]) => {
            match crate::groups::picture_bytes(&sim.world.lock(), gid, picture_id) {
                Some(data) => Response::bytes(200, data),
                None => Response::error(404, "no such picture"),
            }
        }
        ("PUT", ["groups", jid]) => group_update(sim, jid, &req.body),
        ("POST", ["groups", jid, "participants"]) => group_participants(sim, jid, &req.body),
        ("GET", ["members", phone, "events"]) => match sim.members.get(phone) {
            Some(m) => Response::json(200, json!({ "events": m.events() })),
            None => Response::error(404, format!("no member {phone}")),
        },
        (_, ["groups", ..]) => Response::error(501, "not implemented yet (see README: planned)"),
        (_, ["health"])
        | (_, ["phones", _, "scan"])
        | (_, ["members"])
        | (_, ["members", _, "messages"]) => Response::error(405, "method not allowed"),
        _ => Response::error(404, format!("no route for {} {}", req.method, req.path)),
    }
}

#[derive(Deserialize, Default)]
struct BanBody {
    code: Option<u32>,
    expire: Option<u64>,
}

#[derive(Deserialize)]
struct FaultsBody {
    drop_every: Option<u64>,
    malformed_every: Option<u64>,
    swallow_messages: Option<u64>,
}

/// `phone:n` from the path, or the 400/404 to answer.
fn device_key(sim: &Core, phone: &str, n: &str) -> Result<crate::state::DeviceKey, Response> {
    if !valid_phone(phone) {
        return Err(Response::error(
            400,
            "phone must be 5 to 15 digits, without '+'",
        ));
    }
    let Ok(device) = n.parse::<u16>() else {
        return Err(Response::error(400, format!("bad device number {n:?}")));
    };
    let key = (phone.to_string(), device);
    if !sim.world.lock().devices.contains_key(&key) {
        return Err(Response::error(
            404,
            format!("no linked device {phone}:{device}"),
        ));
    }
    Ok(key)
}

/// `POST /phones/{phone}/devices/{n}/{logout|disconnect|ban|outdated}`.
fn device_action(sim: &Core, phone: &str, n: &str, action: &str, body: &[u8]) -> Response {
    let key = match device_key(sim, phone, n) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let world = &sim.world;
    let was_online = match action {
        "logout" => crate::devices::logout(world, &key),
        "disconnect" => crate::devices::disconnect(world, &key),
        "ban" => {
            let body: BanBody = if body.iter().all(u8::is_ascii_whitespace) {
                BanBody::default()
            } else {
                match parse(body, r#"{"code": 101, "expire": 3600}"#) {
                    Ok(b) => b,
                    Err(r) => return r,
                }
            };
            crate::devices::ban(
                world,
                &key,
                body.code.unwrap_or(101),
                body.expire.unwrap_or(3600),
            )
        }
        "outdated" => {
            crate::devices::refuse_logins(world, &key, crate::state::LoginFault::Outdated)
        }
        _ => return Response::error(404, format!("no device action {action:?}")),
    };
    match was_online {
        Some(online) => Response::json(
            200,
            json!({ "jid": format!("{}:{}@s.whatsapp.net", key.0, key.1), "was_online": online }),
        ),
        None => Response::error(404, format!("no linked device {}:{}", key.0, key.1)),
    }
}

/// `PUT|GET /phones/{phone}/devices/{n}/faults`.
fn device_faults(sim: &Core, method: &str, phone: &str, n: &str, body: &[u8]) -> Response {
    let key = match device_key(sim, phone, n) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let faults = if method == "PUT" {
        let body: FaultsBody = match parse(
            body,
            r#"{"drop_every": N, "malformed_every": N, "swallow_messages": N}"#,
        ) {
            Ok(b) => b,
            Err(r) => return r,
        };
        crate::devices::set_faults(
            &sim.world,
            &key,
            body.drop_every,
            body.malformed_every,
            body.swallow_messages,
        )
    } else {
        crate::devices::faults(&sim.world, &key)
    };
    match faults {
        Some(f) => Response::json(200, json!(f)),
        None => Response::error(404, format!("no linked device {}:{}", key.0, key.1)),
    }
}

async fn scan(sim: &Core, phone: &str, body: &[u8]) -> Response {
    if !valid_phone(phone) {
        return Response::error(400, "phone must be 5 to 15 digits, without '+'");
    }
    let body: ScanBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return Response::error(400, format!("expected {{\"qr\": \"...\"}}: {e}")),
    };
    match sim.scan(phone, &body.qr).await {
        Ok(linked) => Response::json(200, json!({ "jid": linked.jid, "lid": linked.lid })),
        Err(e @ ScanError::InvalidQr(_)) => Response::error(400, e),
        Err(e @ ScanError::UnknownRef) => Response::error(404, e),
        Err(e @ ScanError::Failed(_)) => Response::error(504, e),
    }
}

#[derive(Deserialize)]
struct PairCodeBody {
    code: String,
}

async fn pair_code(sim: &Core, phone: &str, body: &[u8]) -> Response {
    if !valid_phone(phone) {
        return Response::error(400, "phone must be 5 to 15 digits, without '+'");
    }
    let body: PairCodeBody = match parse(body, r#"{"code": "ABCD1234"}"#) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match sim.enter_code(phone, &body.code).await {
        Ok(linked) => Response::json(200, json!({ "jid": linked.jid, "lid": linked.lid })),
        Err(ScanError::InvalidQr(e)) => Response::error(400, e),
        Err(ScanError::UnknownRef) => Response::error(
            404,
            format!("no device is waiting to link with {phone} by code"),
        ),
        Err(e @ ScanError::Failed(_)) => Response::error(504, e),
    }
}

async fn create_member(sim: &Core, body: &[u8]) -> Response {
    let body: MemberBody = match parse(body, r#"{"phone": "...", "name": "..."}"#) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if !valid_phone(&body.phone) {
        return Response::error(400, "phone must be 5 to 15 digits, without '+'");
    }
    match sim.create_member(&body.phone, &body.name).await {
        Ok(m) => Response::json(
            201,
            json!({ "phone": m.phone, "name": m.name, "jid": m.linked.jid, "lid": m.linked.lid }),
        ),
        Err(e @ MemberError::Exists) => Response::error(409, e),
        Err(e @ MemberError::Failed(_)) => Response::error(504, e),
    }
}

async fn send(sim: &Core, phone: &str, body: &[u8]) -> Response {
    let Some(member) = sim.members.get(phone) else {
        return Response::error(404, format!("no member {phone}"));
    };
    let (to, out) = match split_send_body(body, "to") {
        Ok(b) => b,
        Err(r) => return r,
    };
    send_content(&member, &to, out).await
}

fn create_group(sim: &Core, body: &[u8]) -> Response {
    let body: GroupBody = match parse(
        body,
        r#"{"subject": "...", "creator": "...", "members": [...]}"#,
    ) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Some(bad) = std::iter::once(&body.creator)
        .chain(&body.members)
        .find(|p| !valid_phone(p))
    {
        return Response::error(400, format!("invalid phone {bad:?}"));
    }
    let (jid, invite) = crate::groups::create(
        &mut sim.world.lock(),
        &body.subject,
        &body.creator,
        &body.members,
    );
    Response::json(201, json!({ "jid": jid, "invite": invite }))
}

async fn group_send(sim: &Core, jid: &str, body: &[u8]) -> Response {
    let (from, out) = match split_send_body(body, "from") {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(member) = sim.members.get(&from) else {
        return Response::error(404, format!("no member {from}"));
    };
    let jid = format!("{}@g.us", group_id(jid));
    send_content(&member, &jid, out).await
}

/// `ID` from `ID@g.us`, `ID%40g.us` or `ID`.
fn group_id(jid: &str) -> String {
    let jid = http::percent_decode(jid);
    jid.strip_suffix("@g.us").unwrap_or(&jid).to_string()
}

fn group_info(sim: &Core, jid: &str) -> Response {
    let gid = group_id(jid);
    let inner = sim.world.lock();
    let Some(g) = inner.groups.get(&gid) else {
        return Response::error(404, format!("no group {gid}@g.us"));
    };
    Response::json(
        200,
        json!({
            "jid": g.jid(),
            "subject": g.subject,
            "description": g.description,
            "creator": g.creator,
            "participants": g.participants,
            "invite": format!("https://chat.whatsapp.com/{}", g.invite_code),
        }),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MediaFaultsBody {
    delay_ms: u64,
}

/// `PUT /media/faults`: every media download from now on waits `delay_ms` first.
fn media_faults(sim: &Core, body: &[u8]) -> Response {
    let body: MediaFaultsBody = match parse(body, r#"{"delay_ms": 20000}"#) {
        Ok(b) => b,
        Err(r) => return r,
    };
    sim.world.lock().media_delay_ms = body.delay_ms;
    Response::json(200, json!({}))
}

fn group_update(sim: &Core, jid: &str, body: &[u8]) -> Response {
    let body: GroupInfoBody = match parse(
        body,
        r#"{"subject": "...", "description": "...", "admins_only": true, "ephemeral": 604800, "admins": ["336..."]}"#,
    ) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let gid = group_id(jid);
    let mut inner = sim.world.lock();
    let Some(group) = inner.groups.get(&gid) else {
        return Response::error(404, format!("no group {gid}@g.us"));
    };
    let creator = group.creator.clone();
    if let Some(stranger) = body
        .admins
        .iter()
        .flatten()
        .find(|p| !group.participants.contains(p))
    {
        return Response::error(400, format!("admins: {stranger} is not in the group"));
    }
    if let Some(admins) = &body.admins {
        crate::groups::set_admins(&mut inner, &gid, &creator, admins);
    }
    crate::groups::set_info(
        &mut inner,
        &gid,
        &creator,
        body.subject.as_deref(),
        body.description.as_deref(),
    );
    crate::groups::set_settings(&mut inner, &gid, &creator, body.admins_only, body.ephemeral);
    Response::json(200, json!({}))
}

#[derive(Deserialize)]
struct CallBody {
    from: String,
    #[serde(default)]
    video: bool,
}

/// A participant starts a group call (every other participant's devices ring).
fn group_call(sim: &Core, jid: &str, body: &[u8]) -> Response {
    let body: CallBody = match parse(body, r#"{"from": "33611111111", "video": false}"#) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let gid = group_id(jid);
    let mut inner = sim.world.lock();
    if !inner.groups.contains_key(&gid) {
        return Response::error(404, format!("no group {gid}@g.us"));
    }
    match crate::groups::start_call(&mut inner, &gid, &body.from, body.video) {
        Some(call_id) => Response::json(200, json!({ "call_id": call_id })),
        None => Response::error(400, format!("{} is not in the group", body.from)),
    }
}

/// Sets (the request body: image bytes) or removes the group picture, by the creator.
fn group_picture(sim: &Core, jid: &str, image: Option<Vec<u8>>) -> Response {
    if image.as_ref().is_some_and(Vec::is_empty) {
        return Response::error(400, "expected the picture's bytes as the body");
    }
    let gid = group_id(jid);
    let mut inner = sim.world.lock();
    let Some(creator) = inner.groups.get(&gid).map(|g| g.creator.clone()) else {
        return Response::error(404, format!("no group {gid}@g.us"));
    };
    match crate::groups::set_picture(&mut inner, &gid, &creator, image) {
        Some(id) => Response::json(200, json!({ "id": id })),
        None => Response::error(404, format!("no group {gid}@g.us")),
    }
}

fn group_participants(sim: &Core, jid: &str, body: &[u8]) -> Response {
    let body: ParticipantsBody = match parse(body, r#"{"add": [...], "remove": [...]}"#) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Some(bad) = body
        .add
        .iter()
        .chain(&body.remove)
        .find(|p| !valid_phone(p))
    {
        return Response::error(400, format!("invalid phone {bad:?}"));
    }
    let gid = group_id(jid);
    let mut inner = sim.world.lock();
    let Some(creator) = inner.groups.get(&gid).map(|g| g.creator.clone()) else {
        return Response::error(404, format!("no group {gid}@g.us"));
    };
    match crate::groups::change_participants(&mut inner, &gid, &creator, &body.add, &body.remove) {
        Some((added, removed)) => {
            Response::json(200, json!({ "added": added, "removed": removed }))
        }
        None => Response::error(404, format!("no group {gid}@g.us")),
    }
}

/// A member's messages in the order the server routed them, which is the order a
/// phone shows them in (a member's client may finish decrypting two messages in
/// the other order). A message the server has no rank for stays right after the
/// one before it.
fn in_server_order(
    world: &crate::state::World,
    messages: Vec<crate::members::Received>,
) -> Vec<crate::members::Received> {
    let inner = world.lock();
    let mut rank = 0;
    let mut ranked: Vec<(u64, usize, crate::members::Received)> = Vec::new();
    for (index, message) in messages.into_iter().enumerate() {
        let sender = message.sender.split('@').next().unwrap_or_default();
        if let Some(known) = inner
            .routed_order
            .get(&(sender.to_owned(), message.id.clone()))
        {
            rank = *known;
        }
        ranked.push((rank, index, message));
    }
    drop(inner);
    ranked.sort_by_key(|(rank, index, _)| (*rank, *index));
    ranked.into_iter().map(|(_, _, message)| message).collect()
}
