//! Rooms: each approved group's room found or created and remembered, kept named and
//! pictured after its WhatsApp group, set up again while it could not be, and the
//! bot's answer to invitations.

use std::sync::Arc;
use std::time::Duration;

use super::Bridge;
use crate::config::{self, GroupFile};
use crate::matrix::{AliasTaken, BotRemoved, RoomSetup, SetUpRoom};
use crate::status;
use crate::whatsapp::GroupChange;

/// How often groups whose room could not be set up are tried again.
const ROOM_SETUP_RETRY: Duration = Duration::from_secs(30);

impl Bridge {
    /// Finds or creates the room of a group and remembers it. Failures are logged and
    /// retried by `room_setup_retries`.
    pub(super) async fn setup_group(&self, group: &GroupFile) {
        let known_room = match self.store.room_for_group(&group.whatsapp) {
            Ok(room) => room,
            Err(error) => {
                tracing::error!(group = %group.name, "store: {error}");
                return;
            }
        };
        let profile = match (&known_room, self.whatsapp()) {
            (None, Some(client)) => client.group_profile(&group.whatsapp).await.ok(),
            _ => None,
        };
        let (name, topic) = match profile {
            Some(profile) => (profile.subject, profile.description),
            None => (group.name.clone(), None),
        };
        let active = self.active();
        let setup = RoomSetup {
            group_jid: group.whatsapp.clone(),
            alias_localpart: format!("{}{}", active.config.matrix.alias_prefix, group.name),
            name,
            topic,
            // Moderators are invited too: they moderate from inside the room.
            invite: group
                .invite
                .iter()
                .chain(
                    group
                        .moderators
                        .iter()
                        .filter(|m| !group.invite.contains(m)),
                )
                .cloned()
                .collect(),
            admins: active.config.matrix.admins.clone(),
            moderators: group.moderators.clone(),
            encrypted: active.config.matrix.encrypt_new_rooms,
            existing: group.room.clone(),
            known_room,
        };
        match self.matrix.ensure_room(&setup).await {
            Ok(SetUpRoom {
                room_id,
                alias_taken,
            }) => {
                if let Some(taken) = alias_taken {
                    self.alias_taken(group, &taken, room_id.as_str());
                }
                if let Err(error) = self.store.set_group_room(&group.whatsapp, room_id.as_str()) {
                    tracing::error!(group = %group.name, "store: {error}");
                    return;
                }
                self.rooms_ready
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(group.whatsapp.clone());
                tracing::info!(group = %group.name, room = %room_id, "group bridged");
                if group.room.is_none() {
                    if let Err(error) = self
                        .matrix
                        .keep_room_policy(room_id.as_str(), &setup.admins, &group.moderators)
                        .await
                    {
                        tracing::warn!(group = %group.name, "could not set the room's power levels: {error}");
                    }
                    self.sync_avatar(group, room_id.as_str()).await;
                }
                self.wake_to_matrix.notify_one();
            }
            Err(error) => {
                tracing::warn!(group = %group.name, "room setup failed, will retry: {error}");
                self.note_error(&format!(
                    "room of group {} could not be set up: {error}",
                    group.name
                ));
            }
        }
    }

    /// The alias a group's new room should have had is held by a room the bridge
    /// did not make (someone made it first, or an unrelated room has that name):
    /// that room is left alone, and the admins are told which alias and room, as
    /// are `status` and `check` (through the store).
    fn alias_taken(&self, group: &GroupFile, taken: &AliasTaken, own_room: &str) {
        let value = format!("{}|{}", taken.alias, taken.room_id);
        let key = status::keys::alias_taken(&group.whatsapp);
        if let Err(error) = self.store.set_meta(&key, &value) {
            tracing::warn!("store: {error}");
        }
        self.note_error(&format!(
            "the alias {} of group {} is held by a room the bridge did not make",
            taken.alias, group.name
        ));
        let text = format!(
            "The alias {alias} is held by a room the bridge did not make ({held_by}), so the \
             group of {file} was given a room of its own without it: {own_room}. Nothing is \
             relayed into {held_by}. To give the bridge's room that alias, remove it from \
             the other room and set it on {own_room}.",
            alias = taken.alias,
            held_by = taken.room_id,
            file = group.name,
        );
        self.tell_admins(text, "about a taken alias");
    }

    /// Someone removed the bot from a room: for a bridged group's room, the admins
    /// are told once (per removal, also across restarts), with what it means: its
    /// messages wait, and are set aside after their attempts, until the bot is
    /// invited back (it accepts an invite to a bridged room).
    pub(super) fn bot_removed_from(&self, removed: BotRemoved) {
        let Ok(Some(jid)) = self.store.group_for_room(&removed.room_id) else {
            return;
        };
        let Some(group) = self.active().groups.get(&jid).cloned() else {
            return;
        };
        let key = status::keys::bot_removed(&removed.room_id);
        // Kept once the bot is back (`<event>|back`): a sync that shows the removal
        // again (with the join after it) tells nothing new.
        let known = self.store.get_meta(&key).ok().flatten().unwrap_or_default();
        if known.split('|').next() == Some(removed.event_id.as_str()) {
            return;
        }
        if let Err(error) = self.store.set_meta(&key, &removed.event_id) {
            tracing::warn!("store: {error}");
        }
        let how = if removed.banned { "banned" } else { "removed" };
        tracing::warn!(group = %group.name, room = %removed.room_id, "the bot was {how} from the group's room");
        self.note_error(&format!(
            "the bot was {how} from the room of group {}",
            group.name
        ));
        let back = if removed.banned {
            "unban the bot and invite it back"
        } else {
            "invite the bot back"
        };
        let text = format!(
            "The bot was {how} from the room of group {file} ({room}) by {by}. Messages \
             between the group and the room wait (those that keep failing are set aside \
             after about an hour and a half; `passerelle outbox` sends them again). To \
             resume, {back}.",
            file = group.name,
            room = removed.room_id,
            by = removed.by,
        );
        self.tell_admins(text, "the bot was removed");
    }

    /// The bot is in a room: if it had been removed from a group's room, relaying
    /// resumes at once and the admins are told.
    pub(super) fn bot_back_in(&self, room_id: &str) {
        let key = status::keys::bot_removed(room_id);
        let removal = match self.store.get_meta(&key) {
            Ok(Some(removal)) if !removal.ends_with("|back") => removal,
            _ => return,
        };
        if let Err(error) = self.store.set_meta(&key, &format!("{removal}|back")) {
            tracing::warn!("store: {error}");
        }
        tracing::info!(room = %room_id, "the bot is back in the group's room");
        if let Ok(Some(jid)) = self.store.group_for_room(room_id) {
            if let Err(error) = self.store.due_now_for_group(&jid, super::now_ms()) {
                tracing::warn!("store: {error}");
            }
        }
        self.wake_to_matrix.notify_one();
        self.wake_to_whatsapp.notify_one();
        let text = format!("The bot is back in {room_id}; relaying resumes.");
        self.tell_admins(text, "the bot is back");
    }

    /// A group's room was upgraded: the bot joins the successor and the group moves
    /// there, with what waits for it. When the bot may not join yet (an invite-only
    /// successor), the admins are asked to invite it, and the move happens on join.
    pub(super) fn follow_upgrade(&self, old: &str, new: &str) {
        let Ok(Some(jid)) = self.store.group_for_room(old) else {
            return;
        };
        if !self.active().groups.contains_key(&jid) {
            return;
        }
        let key = status::keys::successor(new);
        if let Err(error) = self.store.set_meta(&key, &jid) {
            tracing::warn!("store: {error}");
        }
        let (old, new) = (old.to_owned(), new.to_owned());
        self.spawn_with_self(|bridge| async move {
            match bridge.matrix.join(&new).await {
                Ok(()) => bridge.successor_joined(&new),
                Err(error) => {
                    tracing::warn!(room = %old, successor = %new, "could not join the upgraded room: {error}");
                    bridge.tell_admins(
                        format!(
                            "The room {old} was upgraded to {new}, which the bot could not \
                             join ({error}). Invite the bot there: the group moves with it."
                        ),
                        "about a room upgrade",
                    );
                }
            }
        });
    }

    /// The bot is in `room_id`: if it succeeds a group's upgraded room, the group
    /// moves to it.
    pub(super) fn successor_joined(&self, room_id: &str) {
        let key = status::keys::successor(room_id);
        let Ok(Some(jid)) = self.store.get_meta(&key) else {
            return;
        };
        let old = self.store.room_for_group(&jid).ok().flatten();
        let moved = self
            .store
            .set_group_room(&jid, room_id)
            .and_then(|()| match &old {
                Some(old) => self.store.move_room_items(old, room_id).map(|_| ()),
                None => Ok(()),
            })
            .and_then(|()| self.store.delete_meta(&key).map(|_| ()));
        if let Err(error) = moved {
            tracing::error!("store: could not move the group to its upgraded room: {error}");
            return;
        }
        tracing::info!(room = %room_id, "the group follows its room's upgrade");
        self.wake_to_matrix.notify_one();
        self.tell_admins(
            format!(
                "The group bridged in {} now relays in its upgraded room {room_id}.",
                old.as_deref().unwrap_or("its room")
            ),
            "about a room upgrade",
        );
    }

    /// Names each created room after its WhatsApp group's subject. Rooms named in a
    /// group file (`room = ...`) belong to their owners and are left as they are.
    pub(super) async fn sync_room_names(&self) {
        let Some(client) = self.whatsapp() else {
            return;
        };
        let groups: Vec<GroupFile> = self.active().groups.values().cloned().collect();
        for group in groups.iter().filter(|group| group.room.is_none()) {
            let Ok(Some(room_id)) = self.store.room_for_group(&group.whatsapp) else {
                continue;
            };
            match client.group_profile(&group.whatsapp).await {
                Ok(profile) => {
                    tracing::debug!(group = %group.name, "naming the room after the group");
                    if let Err(error) = self.matrix.set_room_name(&room_id, &profile.subject).await
                    {
                        tracing::warn!(group = %group.name, "could not rename the room: {error}");
                    }
                    // A description removed while the bridge was away is not known
                    // as removed: a topic set in Matrix meanwhile stays.
                    if let Some(description) = &profile.description {
                        if let Err(error) = self.matrix.set_room_topic(&room_id, description).await
                        {
                            tracing::warn!(group = %group.name, "could not set the room's topic: {error}");
                        }
                    }
                }
                Err(error) => {
                    tracing::debug!(group = %group.name, "no subject: {error}");
                }
            }
            self.sync_avatar(group, &room_id).await;
        }
    }

    /// Gives a created room its group's picture as avatar, when the picture changed
    /// since the bridge last set it (WhatsApp's picture id, kept in the store, tells).
    async fn sync_avatar(&self, group: &GroupFile, room_id: &str) {
        let Some(client) = self.whatsapp() else {
            return;
        };
        let picture = match client.group_picture(&group.whatsapp).await {
            Ok(picture) => picture,
            Err(error) => {
                tracing::debug!(group = %group.name, "group picture not read: {error}");
                return;
            }
        };
        let key = format!("group_picture:{}", group.whatsapp);
        let known = self.store.get_meta(&key).ok().flatten();
        let current = picture.as_ref().map(|picture| picture.id.clone());
        if known == current {
            return;
        }
        let image = picture.map(|picture| picture.data);
        if let Err(error) = self.matrix.set_room_avatar(room_id, image).await {
            tracing::warn!(group = %group.name, "could not set the room avatar: {error}");
            return;
        }
        let stored = match &current {
            Some(id) => self.store.set_meta(&key, id),
            None => self.store.delete_meta(&key).map(|_| ()),
        };
        if let Err(error) = stored {
            tracing::warn!("store: {error}");
        }
        tracing::debug!(group = %group.name, "room avatar follows the group picture");
    }

    pub(super) async fn room_setup_retries(self: Arc<Self>) {
        loop {
            tokio::time::sleep(ROOM_SETUP_RETRY).await;
            let pending: Vec<GroupFile> = {
                let ready = self
                    .rooms_ready
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                self.active()
                    .groups
                    .values()
                    .filter(|group| !ready.contains(&group.whatsapp))
                    .cloned()
                    .collect()
            };
            for group in pending {
                self.setup_group(&group).await;
            }
        }
    }

    /// A WhatsApp group changed its subject, description or picture: its room follows.
    pub(super) fn mirror_group_change(&self, group_jid: &str, change: GroupChange) {
        // Only rooms the bridge created follow the group: a room named in a group
        // file belongs to its owners.
        let Some(group) = self.active().groups.get(group_jid).cloned() else {
            return;
        };
        if group.room.is_some() {
            return;
        }
        let Ok(Some(room_id)) = self.store.room_for_group(group_jid) else {
            return;
        };
        tracing::debug!(group = %group.name, ?change, "group changed in WhatsApp");
        self.spawn_with_self(|bridge| async move {
            if change == GroupChange::Picture {
                bridge.sync_avatar(&group, &room_id).await;
                return;
            }
            let result = match &change {
                GroupChange::Subject(subject) => {
                    bridge.matrix.set_room_name(&room_id, subject).await
                }
                GroupChange::Description(description) => {
                    bridge
                        .matrix
                        .set_room_topic(&room_id, description.as_deref().unwrap_or_default())
                        .await
                }
                GroupChange::Picture => Ok(()),
            };
            match result {
                Ok(()) => tracing::debug!(group = %group.name, ?change, "group change mirrored"),
                Err(error) => {
                    tracing::warn!(group = %group.name, "could not mirror a group change: {error}")
                }
            }
        });
    }

    /// Whether the bot joins a room it was invited to.
    pub(super) async fn should_accept_invite(&self, room_id: &str, inviter: &str) -> bool {
        let active = self.active();
        if active
            .config
            .matrix
            .admins
            .iter()
            .any(|admin| admin == inviter)
        {
            return true;
        }
        if matches!(self.store.group_for_room(room_id), Ok(Some(jid)) if active.groups.contains_key(&jid))
        {
            return true;
        }
        for group in active.groups.values() {
            let configured = match &group.room {
                Some(config::RoomRef::Id(id)) => id == room_id,
                Some(config::RoomRef::Alias(alias)) => {
                    self.matrix.resolve_alias(alias).await.as_deref() == Some(room_id)
                }
                None => false,
            };
            if configured {
                // The bot could not join this group's room before: set it up now.
                let group = group.clone();
                self.spawn_with_self(|bridge| async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    bridge.setup_group(&group).await;
                });
                return true;
            }
        }
        false
    }
}
