//! The rooms of groups: found again or created (invite-only, with the bridge's
//! power levels, encrypted by default, marked as a bridge), never adopted from an
//! alias someone else made, kept to that policy, named and pictured.

use matrix_sdk::deserialized_responses::RawAnySyncOrStrippedState;
use matrix_sdk::room::Room;
use matrix_sdk::ruma::api::client::discovery::get_capabilities;
use matrix_sdk::ruma::api::client::room::create_room;
use matrix_sdk::ruma::api::client::room::Visibility;
use matrix_sdk::ruma::api::error::ErrorKind;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::room::power_levels::RoomPowerLevelsEventContent;
use matrix_sdk::ruma::events::{AnyInitialStateEvent, InitialStateEvent};
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::Int;
use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, RoomOrAliasId, UserId};
use matrix_sdk::RoomState;
use serde_json::json;

use super::{parse_room_id, MatrixError, MatrixSide};
use crate::config::RoomRef;

/// Power of the bot and `[matrix] admins` in the rooms the bridge creates.
const ADMIN_POWER: i64 = 100;
/// Power of a group file's `moderators` in the rooms the bridge creates.
const MODERATOR_POWER: i64 = 50;

/// Power levels of a room the bridge creates: only moderators (50: `moderators`)
/// and admins (100: `admins`, the bot) invite, kick, ban, redact others' events or
/// change the room; only admins change who has power, the join rule, history
/// visibility, encryption and the bridge info. Everyone else speaks (0). The bot is
/// listed unless the room version privileges creators (it must not be, then).
fn created_room_power_levels(
    bot: &UserId,
    admins: &[String],
    moderators: &[String],
    creators_are_privileged: bool,
) -> serde_json::Value {
    let mut users = serde_json::Map::new();
    for moderator in moderators {
        users.insert(moderator.clone(), json!(MODERATOR_POWER));
    }
    for admin in admins {
        users.insert(admin.clone(), json!(ADMIN_POWER));
    }
    if creators_are_privileged {
        users.remove(bot.as_str());
    } else {
        users.insert(bot.to_string(), json!(ADMIN_POWER));
    }
    let admin_only: serde_json::Map<String, serde_json::Value> = [
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.history_visibility",
        "m.room.encryption",
        "m.room.tombstone",
        "m.room.server_acl",
        "m.room.canonical_alias",
        "m.bridge",
        "uk.half-shot.bridge",
    ]
    .into_iter()
    .map(|event_type| (event_type.to_string(), json!(ADMIN_POWER)))
    .collect();
    json!({
        "users": users,
        "users_default": 0,
        "events_default": 0,
        "state_default": MODERATOR_POWER,
        "invite": MODERATOR_POWER,
        "kick": MODERATOR_POWER,
        "ban": MODERATOR_POWER,
        "redact": MODERATOR_POWER,
        "events": admin_only,
    })
}

/// What is needed to set up (or find again) the room of a group.
#[derive(Debug, Clone)]
pub struct RoomSetup {
    pub group_jid: String,
    /// Local part of the alias for a created room (prefix + file stem).
    pub alias_localpart: String,
    /// Room name for a created room: the WhatsApp subject, else the file stem.
    pub name: String,
    /// Topic for a created room: the WhatsApp group's description.
    pub topic: Option<String>,
    pub invite: Vec<String>,
    pub admins: Vec<String>,
    /// Users given moderator power (50) in a created room.
    pub moderators: Vec<String>,
    /// Whether a created room is end-to-end encrypted.
    pub encrypted: bool,
    /// A room named in the group file, to attach to instead of creating one.
    pub existing: Option<RoomRef>,
    /// The room stored for this group by an earlier run.
    pub known_room: Option<String>,
}

/// The room a group is bridged to, and the alias it could not have.
#[derive(Debug, Clone)]
pub struct SetUpRoom {
    pub room_id: OwnedRoomId,
    pub alias_taken: Option<AliasTaken>,
}

/// The alias a created room would have had, held by a room the bridge did not make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasTaken {
    pub alias: String,
    /// The room the alias points to.
    pub room_id: String,
}

impl MatrixSide {
    /// The room an alias points to, if it resolves.
    pub async fn resolve_alias(&self, alias: &str) -> Option<String> {
        let alias = RoomAliasId::parse(alias).ok()?;
        let response = self.client().resolve_room_alias(&alias).await.ok()?;
        Some(response.room_id.to_string())
    }

    /// Finds or creates the room of a group. Never creates a second room: a stored
    /// room, then the configured room, then the alias are tried first. A room the
    /// alias points to is adopted only when the bridge made it (the bot created it
    /// or set its bridge info for this group, and is in it); another is left alone,
    /// and the bridge makes its own room without the alias, saying which is taken.
    pub async fn ensure_room(&self, setup: &RoomSetup) -> Result<SetUpRoom, MatrixError> {
        let found = |room_id: OwnedRoomId| SetUpRoom {
            room_id,
            alias_taken: None,
        };
        if let Some(known) = &setup.known_room {
            let room_id = parse_room_id(known)?;
            self.ensure_joined(&room_id).await?;
            return Ok(found(room_id));
        }
        if let Some(existing) = &setup.existing {
            let target = match existing {
                RoomRef::Id(id) => id.as_str(),
                RoomRef::Alias(alias) => alias.as_str(),
            };
            let target = RoomOrAliasId::parse(target)
                .map_err(|_| MatrixError::InvalidId(target.to_string()))?;
            let room = self.client().join_room_by_id_or_alias(&target, &[]).await?;
            self.send_bridge_info(&room, setup).await;
            return Ok(found(room.room_id().to_owned()));
        }
        let alias_text = format!("#{}:{}", setup.alias_localpart, self.server_name);
        let alias = RoomAliasId::parse(alias_text.as_str())
            .map_err(|_| MatrixError::InvalidId(alias_text.clone()))?;
        let mut alias_taken = None;
        match self.client().resolve_room_alias(&alias).await {
            Ok(response) if self.made_by_the_bridge(&response.room_id, setup).await => {
                // Created by an earlier run whose mapping was not stored.
                return Ok(found(response.room_id));
            }
            Ok(response) => {
                tracing::warn!(
                    alias = %alias_text,
                    room = %response.room_id,
                    "the alias is taken by a room the bridge did not make; making a room without it"
                );
                alias_taken = Some(AliasTaken {
                    alias: alias_text.clone(),
                    room_id: response.room_id.to_string(),
                });
            }
            Err(error) if matches!(error.client_api_error_kind(), Some(ErrorKind::NotFound)) => {}
            Err(error) => return Err(error.into()),
        }
        let room_id = self.create_group_room(setup, alias_taken.is_none()).await?;
        Ok(SetUpRoom {
            room_id,
            alias_taken,
        })
    }

    /// Whether the bot is in `room_id` and made it for this group: it created the
    /// room, or the room's bridge info for this group is the bot's.
    async fn made_by_the_bridge(&self, room_id: &RoomId, setup: &RoomSetup) -> bool {
        let Some(room) = self.client().get_room(room_id) else {
            return false;
        };
        if room.state() != RoomState::Joined {
            return false;
        }
        if room
            .creators()
            .is_some_and(|creators| creators.contains(&self.bot))
        {
            return true;
        }
        let info = room
            .get_state_event("m.bridge".into(), &Self::bridge_info_state_key(setup))
            .await;
        let sender = match info {
            Ok(Some(RawAnySyncOrStrippedState::Sync(raw))) => {
                raw.get_field::<OwnedUserId>("sender").ok().flatten()
            }
            _ => None,
        };
        sender.as_deref() == Some(self.bot.as_ref())
    }

    /// Creates the room of a group, with its alias when `with_alias`.
    async fn create_group_room(
        &self,
        setup: &RoomSetup,
        with_alias: bool,
    ) -> Result<OwnedRoomId, MatrixError> {
        let mut request = create_room::v3::Request::new();
        request.name = Some(setup.name.clone());
        request.topic = setup.topic.clone();
        request.room_alias_name = with_alias.then(|| setup.alias_localpart.clone());
        request.visibility = Visibility::Private;
        request.preset = Some(create_room::v3::RoomPreset::PrivateChat);
        request.invite = setup
            .invite
            .iter()
            .filter_map(|user| UserId::parse(user.as_str()).ok())
            .collect();
        request.initial_state = self.bridge_info_events(setup)?;
        if setup.encrypted {
            request.initial_state.push(
                InitialStateEvent::with_empty_state_key(
                    RoomEncryptionEventContent::with_recommended_defaults(),
                )
                .to_raw_any(),
            );
        }
        let levels = created_room_power_levels(
            &self.bot,
            &setup.admins,
            &setup.moderators,
            self.creators_are_privileged().await?,
        );
        request.power_level_content_override = Some(
            Raw::new(&levels)
                .map_err(matrix_sdk::Error::from)?
                .cast_unchecked(),
        );
        let room = self.client().create_room(request).await?;
        tracing::info!(room = %room.room_id(), "created bridged room");
        Ok(room.room_id().to_owned())
    }

    /// Brings a room the bot created up to the policy of `created_room_power_levels`:
    /// inviting, kicking, banning and redacting others take moderator power, and the
    /// admins and moderators have theirs (rooms made by older versions let anyone
    /// invite; `moderators` may have grown). Never lowers anyone; rooms the bot did
    /// not create are their owners'.
    pub async fn keep_room_policy(
        &self,
        room_id: &str,
        admins: &[String],
        moderators: &[String],
    ) -> Result<(), MatrixError> {
        let room = self.joined_room(room_id)?;
        let creators = room.creators().unwrap_or_default();
        if !creators.contains(&self.bot) {
            return Ok(());
        }
        let mut levels = room.power_levels().await.map_err(matrix_sdk::Error::from)?;
        let moderator = Int::from(MODERATOR_POWER as i32);
        let mut changed = false;
        for level in [
            &mut levels.invite,
            &mut levels.kick,
            &mut levels.ban,
            &mut levels.redact,
        ] {
            if *level < moderator {
                *level = moderator;
                changed = true;
            }
        }
        let wanted = moderators
            .iter()
            .map(|user| (user, MODERATOR_POWER))
            .chain(admins.iter().map(|user| (user, ADMIN_POWER)));
        for (user, power) in wanted {
            let Ok(user) = UserId::parse(user.as_str()) else {
                continue;
            };
            let power = Int::from(power as i32);
            let current = levels
                .users
                .get(&user)
                .copied()
                .unwrap_or(levels.users_default);
            if !creators.contains(&user) && current < power {
                levels.users.insert(user, power);
                changed = true;
            }
        }
        if changed {
            let content = RoomPowerLevelsEventContent::try_from(levels)
                .map_err(|error| MatrixError::PowerLevels(error.to_string()))?;
            room.send_state_event(content).await?;
            tracing::info!(room = %room_id, "room power levels brought up to the bridge's policy");
        }
        Ok(())
    }

    /// Whether rooms of the homeserver's default version give their creator power
    /// by itself (version 12 on), so that the bot must not be listed in the power
    /// levels; older versions require it to be.
    async fn creators_are_privileged(&self) -> Result<bool, MatrixError> {
        let response = self
            .client()
            .send(get_capabilities::v3::Request::new())
            .await?;
        Ok(response
            .capabilities
            .room_versions
            .default
            .rules()
            .is_some_and(|rules| rules.authorization.explicitly_privilege_room_creators))
    }

    pub(super) async fn ensure_joined(&self, room_id: &RoomId) -> Result<(), MatrixError> {
        if let Some(room) = self.client().get_room(room_id) {
            if room.state() == RoomState::Joined {
                return Ok(());
            }
        }
        self.client().join_room_by_id(room_id).await?;
        Ok(())
    }

    fn bridge_info_content(&self, setup: &RoomSetup) -> serde_json::Value {
        json!({
            "bridgebot": self.bot.as_str(),
            "creator": self.bot.as_str(),
            "protocol": { "id": "whatsapp", "displayname": "WhatsApp" },
            "channel": { "id": setup.group_jid, "displayname": setup.name },
        })
    }

    fn bridge_info_state_key(setup: &RoomSetup) -> String {
        format!("passerelle://whatsapp/{}", setup.group_jid)
    }

    fn bridge_info_events(
        &self,
        setup: &RoomSetup,
    ) -> Result<Vec<Raw<AnyInitialStateEvent>>, MatrixError> {
        let content = self.bridge_info_content(setup);
        let state_key = Self::bridge_info_state_key(setup);
        ["m.bridge", "uk.half-shot.bridge"]
            .iter()
            .map(|event_type| {
                Raw::new(&json!({ "type": event_type, "state_key": state_key, "content": content }))
                    .map(Raw::cast_unchecked)
                    .map_err(|e| MatrixError::Sdk(e.into()))
            })
            .collect()
    }

    /// Bridge info in a room the bot did not create: best effort (it may lack power).
    async fn send_bridge_info(&self, room: &Room, setup: &RoomSetup) {
        let content = self.bridge_info_content(setup);
        let state_key = Self::bridge_info_state_key(setup);
        for event_type in ["m.bridge", "uk.half-shot.bridge"] {
            if let Err(error) = room
                .send_state_event_raw(event_type, &state_key, content.clone())
                .await
            {
                tracing::warn!(room = %room.room_id(), "could not set bridge info: {error}");
            }
        }
    }

    /// Sets the room name, unless it already is `name`.
    pub async fn set_room_name(&self, room_id: &str, name: &str) -> Result<(), MatrixError> {
        let room = self.joined_room(room_id)?;
        if room.name().as_deref() == Some(name) || name.trim().is_empty() {
            tracing::debug!(room = %room_id, "room already has that name");
            return Ok(());
        }
        room.set_name(name.to_string()).await?;
        tracing::debug!(room = %room_id, "room renamed");
        Ok(())
    }

    /// Sets the room topic (empty: none), unless it already is `topic`.
    pub async fn set_room_topic(&self, room_id: &str, topic: &str) -> Result<(), MatrixError> {
        let room = self.joined_room(room_id)?;
        if room.topic().as_deref().unwrap_or_default() == topic {
            return Ok(());
        }
        room.set_room_topic(topic).await?;
        Ok(())
    }

    /// Sets the room avatar to `image` (JPEG or PNG bytes), or removes it (`None`).
    pub async fn set_room_avatar(
        &self,
        room_id: &str,
        image: Option<Vec<u8>>,
    ) -> Result<(), MatrixError> {
        let room = self.joined_room(room_id)?;
        match image {
            Some(data) => {
                let mime = if data.starts_with(b"\x89PNG") {
                    mime::IMAGE_PNG
                } else {
                    mime::IMAGE_JPEG
                };
                room.upload_avatar(&mime, data, None).await?;
            }
            // Not checked against the bot's store first: an avatar set a moment ago
            // may not be there yet.
            None => {
                room.remove_avatar().await?;
            }
        }
        Ok(())
    }

    /// Invites users into a room (used when a group file gains `invite` entries).
    pub async fn invite(&self, room_id: &str, users: &[String]) {
        let Some(room) = parse_room_id(room_id)
            .ok()
            .and_then(|id| self.client().get_room(&id))
        else {
            return;
        };
        for user in users {
            let Ok(user_id) = UserId::parse(user.as_str()) else {
                continue;
            };
            if let Err(error) = room.invite_user_by_id(&user_id).await {
                tracing::warn!(room = %room_id, "invite failed: {error}");
            }
        }
    }
}
