//! Groups: state (subject, description, participants, invite code), the `w:g2`
//! queries clients make (metadata, participating groups), and group message
//! fan-out (`skmsg` to every participant device, plus the per-device sender-key
//! distribution the sender put in `<participants>`). Phone-number addressing.

use wacore_binary::Node;
use wacore_binary::builder::NodeBuilder;

use crate::iq::error;
use crate::stanza::{Conn, SERVER, Session, attr, now};
use crate::state::{DeviceKey, Inner};

/// A simulated group.
pub struct Group {
    /// `ID` of `ID@g.us`.
    pub id: String,
    pub subject: String,
    pub description: Option<String>,
    pub creator: String,
    pub creation: i64,
    /// Phone numbers, creator first; the creator is `superadmin`.
    pub participants: Vec<String>,
    pub admins: Vec<String>,
    pub invite_code: String,
    /// Announcement mode: only admins may send messages.
    pub admins_only: bool,
    /// Disappearing-message timer in seconds (0 = off).
    pub ephemeral: u32,
    /// The group picture: its id and the image, served at `/pp/{group id}/{picture id}`.
    pub picture: Option<(String, Vec<u8>)>,
}

impl Group {
    pub fn jid(&self) -> String {
        format!("{}@g.us", self.id)
    }

    /// The `<group>` node of `w:g2` answers.
    pub fn to_node(&self) -> Node {
        let mut children: Vec<Node> = self
            .participants
            .iter()
            .map(|p| {
                let b = NodeBuilder::new("participant").attr("jid", format!("{p}@{SERVER}"));
                if *p == self.creator {
                    b.attr("type", "superadmin").build()
                } else if self.admins.contains(p) {
                    b.attr("type", "admin").build()
                } else {
                    b.build()
                }
            })
            .collect();
        if self.admins_only {
            children.push(NodeBuilder::new("announcement").build());
        }
        if self.ephemeral > 0 {
            children.push(
                NodeBuilder::new("ephemeral")
                    .attr("expiration", self.ephemeral.to_string())
                    .build(),
            );
        }
        if let Some(d) = &self.description {
            children.push(
                NodeBuilder::new("description")
                    .attr("id", format!("{:X}", self.creation))
                    .children([NodeBuilder::new("body").string_content(d.as_str()).build()])
                    .build(),
            );
        }
        NodeBuilder::new("group")
            .attr("id", self.id.clone())
            .attr("subject", self.subject.clone())
            .attr("addressing_mode", "pn")
            .attr("creator", format!("{}@{SERVER}", self.creator))
            .attr("creation", self.creation.to_string())
            .attr("s_t", self.creation.to_string())
            .attr("s_o", format!("{}@{SERVER}", self.creator))
            .attr("size", self.participants.len().to_string())
            .children(children)
            .build()
    }
}

/// Creates a group owned by `creator` with `members` (phone numbers).
pub fn create(
    inner: &mut Inner,
    subject: &str,
    creator: &str,
    members: &[String],
) -> (String, String) {
    inner.next_group += 1;
    let creation = wacore::time::now_secs();
    let id = format!(
        "1203630{:011}",
        creation.max(0) as u64 % 100_000_000_000 + inner.next_group
    );
    let mut participants = vec![creator.to_string()];
    for m in members {
        if !participants.contains(m) {
            participants.push(m.clone());
        }
    }
    let invite_code = format!("SIM{:08X}{:04X}", creation, inner.next_group);
    let group = Group {
        id: id.clone(),
        subject: subject.to_string(),
        description: None,
        creator: creator.to_string(),
        creation,
        participants,
        admins: Vec::new(),
        invite_code: invite_code.clone(),
        admins_only: false,
        ephemeral: 0,
        picture: None,
    };
    let jid = group.jid();
    inner.groups.insert(id, group);
    (jid, format!("https://chat.whatsapp.com/{invite_code}"))
}

fn group_id(jid: &str) -> Option<&str> {
    jid.strip_suffix("@g.us")
}

/// Phone number of a participant JID (`N@s.whatsapp.net`, `N:D@...`, or bare `N`).
fn phone_of(jid: &str) -> String {
    jid.split(['@', ':']).next().unwrap_or_default().to_string()
}

/// Sends a `w:gp2` notification with `action` about group `gid` to every device of
/// its participants and of `also` (e.g. the removed ones).
pub fn notify(inner: &mut Inner, gid: &str, actor: &str, action: Node, also: &[String]) {
    let Some(group) = inner.groups.get(gid) else {
        return;
    };
    let mut phones = group.participants.clone();
    phones.extend(also.iter().cloned());
    inner.next_notification += 1;
    let node = NodeBuilder::new("notification")
        .attr("from", format!("{gid}@g.us"))
        .attr("type", "w:gp2")
        .attr("id", format!("sim-n{}", inner.next_notification))
        .attr("participant", format!("{actor}@{SERVER}"))
        .attr("t", now())
        .children([action])
        .build();
    deliver_to_phones(inner, &phones, &node);
}

/// Delivers `node` to every device of the users `phones`.
fn deliver_to_phones(inner: &mut Inner, phones: &[String], node: &Node) {
    let targets: Vec<DeviceKey> = inner
        .devices
        .keys()
        .filter(|k| phones.contains(&k.0))
        .cloned()
        .collect();
    for t in targets {
        crate::messages::deliver(inner, &t, node.clone());
    }
}

fn participant_list(tag: &'static str, phones: &[String]) -> Node {
    NodeBuilder::new(tag)
        .children(phones.iter().map(|p| {
            NodeBuilder::new("participant")
                .attr("jid", format!("{p}@{SERVER}"))
                .build()
        }))
        .build()
}

/// Adds and removes participants (phone numbers) on behalf of `actor`, with one
/// notification per action. Returns (added, removed) after filtering no-ops.
pub fn change_participants(
    inner: &mut Inner,
    gid: &str,
    actor: &str,
    add: &[String],
    remove: &[String],
) -> Option<(Vec<String>, Vec<String>)> {
    let group = inner.groups.get_mut(gid)?;
    let mut added = Vec::new();
    for p in add {
        if !group.participants.contains(p) {
            group.participants.push(p.clone());
            added.push(p.clone());
        }
    }
    let mut removed = Vec::new();
    for p in remove {
        if group.participants.contains(p) {
            group.participants.retain(|x| x != p);
            group.admins.retain(|x| x != p);
            removed.push(p.clone());
        }
    }
    if !added.is_empty() {
        notify(inner, gid, actor, participant_list("add", &added), &[]);
    }
    if !removed.is_empty() {
        notify(
            inner,
            gid,
            actor,
            participant_list("remove", &removed),
            &removed,
        );
    }
    Some((added, removed))
}

/// Makes `admins` (participants) the group's admins besides its creator, on
/// behalf of `actor`: a `promote` notification for the new ones, a `demote` one
/// for those no longer listed.
pub fn set_admins(inner: &mut Inner, gid: &str, actor: &str, admins: &[String]) {
    let Some(group) = inner.groups.get_mut(gid) else {
        return;
    };
    let wanted: Vec<String> = admins
        .iter()
        .filter(|p| **p != group.creator)
        .cloned()
        .collect();
    let promoted: Vec<String> = wanted
        .iter()
        .filter(|p| !group.admins.contains(p))
        .cloned()
        .collect();
    let demoted: Vec<String> = group
        .admins
        .iter()
        .filter(|p| !wanted.contains(p))
        .cloned()
        .collect();
    group.admins = wanted;
    if !promoted.is_empty() {
        notify(
            inner,
            gid,
            actor,
            participant_list("promote", &promoted),
            &[],
        );
    }
    if !demoted.is_empty() {
        notify(inner, gid, actor, participant_list("demote", &demoted), &[]);
    }
}

/// Sets subject and/or description on behalf of `actor`, notifying members.
pub fn set_info(
    inner: &mut Inner,
    gid: &str,
    actor: &str,
    subject: Option<&str>,
    description: Option<&str>,
) -> bool {
    let Some(group) = inner.groups.get_mut(gid) else {
        return false;
    };
    let t = now();
    let mut actions = Vec::new();
    if let Some(subject) = subject {
        group.subject = subject.to_string();
        actions.push(
            NodeBuilder::new("subject")
                .attr("subject", subject.to_string())
                .attr("s_o", format!("{actor}@{SERVER}"))
                .attr("s_t", t.clone())
                .build(),
        );
    }
    if let Some(d) = description {
        group.description = (!d.is_empty()).then(|| d.to_string());
        let id = format!("SIM{}", t);
        let body = if d.is_empty() {
            NodeBuilder::new("delete").build()
        } else {
            NodeBuilder::new("body").string_content(d).build()
        };
        actions.push(
            NodeBuilder::new("description")
                .attr("id", id)
                .children([body])
                .build(),
        );
    }
    for a in actions {
        notify(inner, gid, actor, a, &[]);
    }
    true
}

/// Turns announcement mode and/or the disappearing-message timer (seconds, 0 =
/// off) on or off on behalf of `actor`, notifying members of each change.
pub fn set_settings(
    inner: &mut Inner,
    gid: &str,
    actor: &str,
    admins_only: Option<bool>,
    ephemeral: Option<u32>,
) -> bool {
    let Some(group) = inner.groups.get_mut(gid) else {
        return false;
    };
    let mut actions = Vec::new();
    if let Some(admins_only) = admins_only {
        group.admins_only = admins_only;
        let tag = if admins_only {
            "announcement"
        } else {
            "not_announcement"
        };
        actions.push(NodeBuilder::new(tag).build());
    }
    if let Some(seconds) = ephemeral {
        group.ephemeral = seconds;
        actions.push(if seconds > 0 {
            NodeBuilder::new("ephemeral")
                .attr("expiration", seconds.to_string())
                .build()
        } else {
            NodeBuilder::new("not_ephemeral").build()
        });
    }
    for a in actions {
        notify(inner, gid, actor, a, &[]);
    }
    true
}

/// Sets (`Some(image)`) or removes the group picture on behalf of `actor`, and
/// sends every participant device a `picture` notification. Returns the new
/// picture id, or `None` for an unknown group.
pub fn set_picture(
    inner: &mut Inner,
    gid: &str,
    actor: &str,
    image: Option<Vec<u8>>,
) -> Option<Option<String>> {
    inner.next_notification += 1;
    let serial = inner.next_notification;
    let group = inner.groups.get_mut(gid)?;
    let picture_id = image
        .as_ref()
        .map(|_| format!("{}{serial:04}", group.creation));
    group.picture = image.map(|data| (picture_id.clone().unwrap_or_default(), data));
    let jid = group.jid();
    let phones = group.participants.clone();
    let change = match &picture_id {
        Some(id) => NodeBuilder::new("set")
            .attr("jid", jid.clone())
            .attr("id", id.clone())
            .attr("author", format!("{actor}@{SERVER}")),
        None => NodeBuilder::new("delete")
            .attr("jid", jid.clone())
            .attr("author", format!("{actor}@{SERVER}")),
    }
    .build();
    let node = NodeBuilder::new("notification")
        .attr("from", jid)
        .attr("type", "picture")
        .attr("id", format!("sim-n{serial}"))
        .attr("t", now())
        .children([change])
        .build();
    deliver_to_phones(inner, &phones, &node);
    Some(picture_id)
}

/// `caller` starts a group call: every other participant device gets the `<call>`
/// offer naming the group (as WhatsApp rings them). Returns the call id, or
/// `None` when the group is unknown or the caller not in it.
pub fn start_call(inner: &mut Inner, gid: &str, caller: &str, video: bool) -> Option<String> {
    let group = inner.groups.get(gid)?;
    if !group.participants.iter().any(|p| p == caller) {
        return None;
    }
    let jid = group.jid();
    let others: Vec<String> = group
        .participants
        .iter()
        .filter(|p| *p != caller)
        .cloned()
        .collect();
    inner.next_notification += 1;
    let call_id = format!("SIMCALL{:012}", inner.next_notification);
    let stanza_id = format!("sim-c{}", inner.next_notification);
    let offer = NodeBuilder::new("offer")
        .attr("call-id", call_id.clone())
        .attr("call-creator", format!("{caller}@{SERVER}"))
        .attr("group-jid", jid);
    let mut media = vec![
        NodeBuilder::new("audio")
            .attr("enc", "opus")
            .attr("rate", "16000")
            .build(),
    ];
    if video {
        media.push(NodeBuilder::new("video").attr("enc", "vp8").build());
    }
    let node = NodeBuilder::new("call")
        .attr("from", format!("{caller}@{SERVER}"))
        .attr("id", stanza_id)
        .attr("t", now())
        .attr("platform", "android")
        .attr("version", "2.25.1.1")
        .children([offer.children(media).build()])
        .build();
    deliver_to_phones(inner, &others, &node);
    Some(call_id)
}

/// `xmlns="w:profile:picture"` get of a group's picture: its id and URL (on the
/// simulator's media host), or a 404 inside `<picture>` when it has none.
pub fn on_picture_iq(conn: &mut Conn, id: &str, node: &Node) -> Node {
    let target = attr(node, "target").unwrap_or_default();
    let inner = conn.world.lock();
    let picture = group_id(&target)
        .and_then(|gid| inner.groups.get(gid))
        .and_then(|group| Some((group.id.clone(), group.picture.as_ref()?.0.clone())));
    let child = match picture {
        Some((gid, picture_id)) => {
            let path = format!("/pp/{gid}/{picture_id}");
            NodeBuilder::new("picture")
                .attr("id", picture_id)
                .attr("type", "image")
                .attr("url", format!("https://{}{path}", crate::media::MEDIA_HOST))
                .attr("direct_path", path)
                .build()
        }
        None => NodeBuilder::new("picture")
            .children([NodeBuilder::new("error")
                .attr("code", "404")
                .attr("text", "item-not-found")
                .build()])
            .build(),
    };
    crate::iq::result(id, vec![child])
}

/// `GET /pp/{group id}/{picture id}`: the picture's bytes, while it is current.
pub fn picture_bytes(inner: &Inner, gid: &str, picture_id: &str) -> Option<Vec<u8>> {
    let (current, data) = inner.groups.get(gid)?.picture.as_ref()?;
    (current == picture_id).then(|| data.clone())
}

/// Whether `phone` may send messages to the group: a participant, and an admin
/// when announcement mode is on.
pub fn may_send(group: &Group, phone: &str) -> bool {
    group.participants.iter().any(|p| p == phone)
        && (!group.admins_only || group.creator == phone || group.admins.iter().any(|a| a == phone))
}

/// `xmlns="w:g2"` from a logged-in device.
pub fn on_iq(conn: &mut Conn, id: &str, node: &Node) -> Node {
    let Session::LoggedIn { phone, .. } = &conn.session else {
        return error(id, 401, "not-authorized");
    };
    let phone = phone.clone();
    let to = attr(node, "to").unwrap_or_default();
    let is_set = attr(node, "type").as_deref() == Some("set");
    let Some(child) = node.children().and_then(|c| c.first()) else {
        return from(error(id, 400, "bad-request"), &to);
    };
    let mut inner = conn.world.lock();
    let ok = |children: Vec<Node>| from(crate::iq::result(id, children), &to);
    let err = |code: u16, text: &str| from(error(id, code, text), &to);

    // Requests to `g.us` itself.
    if !to.ends_with("@g.us") {
        return match (child.tag.as_ref(), is_set) {
            ("participating", false) => {
                let mut groups: Vec<&Group> = inner
                    .groups
                    .values()
                    .filter(|g| g.participants.contains(&phone))
                    .collect();
                groups.sort_by(|a, b| a.id.cmp(&b.id));
                let list = NodeBuilder::new("groups")
                    .children(groups.into_iter().map(Group::to_node))
                    .build();
                ok(vec![list])
            }
            ("invite", join) => {
                let code = attr(child, "code").unwrap_or_default();
                let Some(gid) = inner
                    .groups
                    .values()
                    .find(|g| g.invite_code == code)
                    .map(|g| g.id.clone())
                else {
                    return err(404, "item-not-found");
                };
                if !join {
                    return ok(vec![inner.groups[&gid].to_node()]);
                }
                change_participants(&mut inner, &gid, &phone, std::slice::from_ref(&phone), &[]);
                ok(vec![
                    NodeBuilder::new("group")
                        .attr("jid", format!("{gid}@g.us"))
                        .build(),
                ])
            }
            ("leave", true) => {
                for g in child.get_children_by_tag("group") {
                    if let Some(gid) = attr(g, "id").as_deref().and_then(group_id) {
                        change_participants(
                            &mut inner,
                            gid,
                            &phone,
                            &[],
                            std::slice::from_ref(&phone),
                        );
                    }
                }
                ok(vec![])
            }
            ("create", true) => {
                let subject = attr(child, "subject").unwrap_or_default();
                let members: Vec<String> = child
                    .get_children_by_tag("participant")
                    .filter_map(|p| attr(p, "jid"))
                    .map(|j| phone_of(&j))
                    .collect();
                let (jid, _) = create(&mut inner, &subject, &phone, &members);
                let gid = group_id(&jid).unwrap_or_default().to_string();
                let others: Vec<String> = inner.groups[&gid].participants[1..].to_vec();
                notify(
                    &mut inner,
                    &gid,
                    &phone,
                    participant_list("add", &others),
                    &[],
                );
                ok(vec![inner.groups[&gid].to_node()])
            }
            (other, _) => {
                log::warn!("unhandled w:g2 <{other}> to {to}: answering 501");
                err(501, "feature-not-implemented")
            }
        };
    }

    // Requests about one group.
    let Some(gid) = group_id(&to).map(str::to_string) else {
        return err(404, "item-not-found");
    };
    let Some(group) = inner.groups.get(&gid) else {
        return err(404, "item-not-found");
    };
    if !group.participants.contains(&phone) {
        return err(403, "forbidden");
    }
    match (child.tag.as_ref(), is_set) {
        ("query", false) => ok(vec![group.to_node()]),
        ("invite", reset) => {
            if reset {
                inner.next_group += 1;
                let code = format!(
                    "SIM{:08X}{:04X}",
                    wacore::time::now_secs(),
                    inner.next_group
                );
                if let Some(g) = inner.groups.get_mut(&gid) {
                    g.invite_code = code;
                }
            }
            let invite = NodeBuilder::new("invite")
                .attr("code", inner.groups[&gid].invite_code.clone())
                .build();
            ok(vec![invite])
        }
        ("subject", true) => {
            let subject = crate::stanza::content_bytes(child)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            set_info(&mut inner, &gid, &phone, Some(&subject), None);
            ok(vec![])
        }
        ("description", true) => {
            let body = child
                .get_optional_child("body")
                .and_then(crate::stanza::content_bytes)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            set_info(&mut inner, &gid, &phone, None, Some(&body));
            ok(vec![])
        }
        (action @ ("add" | "remove"), true) => {
            let phones: Vec<String> = child
                .get_children_by_tag("participant")
                .filter_map(|p| attr(p, "jid"))
                .map(|j| phone_of(&j))
                .collect();
            let (add, remove) = if action == "add" {
                (phones.clone(), vec![])
            } else {
                (vec![], phones.clone())
            };
            change_participants(&mut inner, &gid, &phone, &add, &remove);
            let answer = NodeBuilder::new(if action == "add" { "add" } else { "remove" })
                .children(phones.iter().map(|p| {
                    NodeBuilder::new("participant")
                        .attr("jid", format!("{p}@{SERVER}"))
                        .attr("type", "200")
                        .build()
                }))
                .build();
            ok(vec![answer])
        }
        (other, _) => {
            log::warn!("unhandled w:g2 <{other}> to {to}: answering 501");
            err(501, "feature-not-implemented")
        }
    }
}

/// Answers come `from` the JID the request went `to` (`g.us` or the group).
fn from(mut node: Node, to: &str) -> Node {
    if !to.is_empty() {
        node.attrs.insert("from", to.to_string());
    }
    node
}

/// A `<message to="ID@g.us">`: deliver to every device of every other participant
/// (and the sender's other devices). Returns `false` if the group is unknown or
/// the sender is not in it.
pub fn fan_out(
    inner: &mut Inner,
    sender: &DeviceKey,
    node: &Node,
    id: &str,
    to: &str,
    push_name: &str,
) -> bool {
    let Some(group) = group_id(to).and_then(|g| inner.groups.get(g)) else {
        return false;
    };
    if !may_send(group, &sender.0) {
        return false;
    }
    let participants = group.participants.clone();
    let children = node.children().unwrap_or_default();
    let skmsg: Vec<Node> = children
        .iter()
        .filter(|c| c.tag == "enc")
        .cloned()
        .collect();
    let device_identity = children
        .iter()
        .find(|c| c.tag == "device-identity")
        .cloned();
    let per_device: Vec<(String, Vec<Node>)> = children
        .iter()
        .find(|c| c.tag == "participants")
        .map(|p| {
            p.get_children_by_tag("to")
                .filter_map(|t| Some((attr(t, "jid")?, t.children()?.to_vec())))
                .collect()
        })
        .unwrap_or_default();
    let ty = attr(node, "type").unwrap_or_else(|| "text".into());
    let edit = attr(node, "edit");
    let t = now();
    let participant = format!("{}:{}@{SERVER}", sender.0, sender.1);
    let targets: Vec<DeviceKey> = inner
        .devices
        .keys()
        .filter(|k| participants.contains(&k.0) && *k != sender)
        .cloned()
        .collect();
    for target in targets {
        let mut content: Vec<Node> = per_device
            .iter()
            .filter(|(jid, _)| inner.device_key_for_jid(jid).as_ref() == Some(&target))
            .flat_map(|(_, encs)| encs.iter().cloned())
            .collect();
        let got_pkmsg = content
            .iter()
            .any(|e| attr(e, "type").as_deref() == Some("pkmsg"));
        content.extend(skmsg.iter().cloned());
        if got_pkmsg {
            content.extend(device_identity.clone());
        }
        let mut b = NodeBuilder::new("message")
            .attr("from", to.to_string())
            .attr("participant", participant.clone())
            .attr("addressing_mode", "pn")
            .attr("id", id.to_string())
            .attr("t", t.clone())
            .attr("type", ty.clone());
        if !push_name.is_empty() {
            b = b.attr("notify", push_name.to_string());
        }
        if let Some(edit) = &edit {
            // Edits, revokes and reaction removals keep their marker.
            b = b.attr("edit", edit.clone());
        }
        crate::messages::deliver(inner, &target, b.children(content).build());
    }
    true
}
