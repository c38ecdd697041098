//! Simulated members: phone numbers whose device is a real whatsapp-rust client
//! run inside the simulator (linked by QR like any device), with a log of what
//! each one received and decrypted, and a way to make it send.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use sha2::Digest as _;
use tokio::sync::mpsc;
use whatsapp_rust::bot::{Bot, BotHandle};
use whatsapp_rust::download::MediaType;
use whatsapp_rust::prelude::MessageExt;
use whatsapp_rust::transport::TokioWebSocketTransportFactory;
use whatsapp_rust::types::events::Event;
use whatsapp_rust::upload::UploadOptions;
use whatsapp_rust::wacore::store::InMemoryBackend;
use whatsapp_rust::{Client, Jid};

use crate::pairing::{Linked, ScanError};
use crate::state::World;

/// Version the member clients announce (fixed: nothing is fetched from WhatsApp).
pub const CLIENT_VERSION: (u32, u32, u32) = (2, 3000, 1_000_000_000);
const QR_TIMEOUT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(45);

/// One message a member's client received and decrypted.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Received {
    pub id: String,
    /// Chat JID: the other user (direct) or the group.
    pub chat: String,
    /// Sender JID (user part is the phone number, or a LID).
    pub sender: String,
    pub from_me: bool,
    /// `text`, `image`, or `other`.
    pub kind: String,
    /// Text, or the caption of a media message.
    pub text: Option<String>,
    pub timestamp: i64,
    /// Media: MIME type, and hex SHA-256 of the file the member downloaded and
    /// decrypted (`None` until the download finished, or if it failed).
    pub mime: Option<String>,
    pub media_sha256: Option<String>,
}

/// A notable non-message event a member's client reported (group changes).
#[derive(Clone, Debug, serde::Serialize)]
pub struct MemberEvent {
    /// `group_update`
    pub kind: String,
    pub chat: String,
    /// Who made the change, when known.
    pub actor: Option<String>,
    /// The action's name (`add`, `remove`, `subject`, `description`, ...).
    pub action: String,
    /// whatsapp-rust's debug rendering of the action (participants, texts).
    pub detail: String,
}

/// A running member.
pub struct Member {
    pub phone: String,
    pub name: String,
    pub linked: Linked,
    client: Arc<Client>,
    handle: BotHandle,
    received: Arc<Mutex<Vec<Received>>>,
    events: Arc<Mutex<Vec<MemberEvent>>>,
}

impl Member {
    /// Group changes the member's client was told about, in order.
    pub fn events(&self) -> Vec<MemberEvent> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What the member received, optionally only in `chat` (compared on the user
    /// part too, so `336...@s.whatsapp.net` matches either addressing).
    pub fn received(&self, chat: Option<&str>) -> Vec<Received> {
        let log = self.received.lock().unwrap_or_else(|p| p.into_inner());
        log.iter()
            .filter(|r| chat.is_none_or(|c| same_chat(&r.chat, c)))
            .cloned()
            .collect()
    }

    /// Uploads `data` and sends it as an image (with an optional caption).
    pub async fn send_image(
        &self,
        to: &str,
        data: Vec<u8>,
        mime: Option<String>,
        caption: Option<String>,
    ) -> Result<String> {
        let jid = to_jid(to)?;
        let upload = self
            .client
            .upload(data, MediaType::Image, UploadOptions::default())
            .await
            .context("uploading the image")?;
        let message = whatsapp_rust::media::image_message(
            upload,
            whatsapp_rust::media::ImageOptions {
                caption,
                mimetype: mime,
                ..Default::default()
            },
        );
        let sent = self
            .client
            .send_message(jid, message)
            .await
            .map_err(|e| anyhow!("send failed: {e}"))?;
        Ok(sent.message_id.to_string())
    }

    /// Sends a text from this member's client to `to` (phone number or JID).
    pub async fn send_text(&self, to: &str, text: &str) -> Result<String> {
        let jid = to_jid(to)?;
        let sent = self
            .client
            .send_text(jid, text.to_string())
            .await
            .map_err(|e| anyhow!("send failed: {e}"))?;
        Ok(sent.message_id.to_string())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn same_chat(a: &str, b: &str) -> bool {
    a == b || a.split('@').next() == b.split('@').next()
}

/// `33611111111`, `33611111111@s.whatsapp.net` or `...@g.us` as a JID.
pub fn to_jid(to: &str) -> Result<Jid> {
    let full = if to.contains('@') {
        to.to_string()
    } else {
        format!("{to}@s.whatsapp.net")
    };
    full.parse::<Jid>()
        .map_err(|e| anyhow!("bad JID {full:?}: {e}"))
}

/// Why a member could not be created.
#[derive(Debug)]
pub enum MemberError {
    Exists,
    Failed(String),
}

impl std::fmt::Display for MemberError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemberError::Exists => write!(f, "member already exists"),
            MemberError::Failed(e) => write!(f, "member did not come up: {e}"),
        }
    }
}

impl std::error::Error for MemberError {}

/// All members of one simulator.
#[derive(Default)]
pub struct Members {
    by_phone: Mutex<HashMap<String, Arc<Member>>>,
    /// Phones being created, to refuse a concurrent duplicate.
    pending: Mutex<Vec<String>>,
}

impl Members {
    pub fn get(&self, phone: &str) -> Option<Arc<Member>> {
        self.by_phone
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(phone)
            .cloned()
    }

    /// Starts a whatsapp-rust client for `phone`, links it by QR and waits until
    /// it is `Connected` (about 11 s: see README).
    pub async fn create(
        &self,
        world: &Arc<World>,
        ws_url: &str,
        addr: std::net::SocketAddr,
        phone: &str,
        name: &str,
    ) -> Result<Arc<Member>, MemberError> {
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if self.get(phone).is_some() || pending.iter().any(|p| p == phone) {
                return Err(MemberError::Exists);
            }
            pending.push(phone.to_string());
        }
        let result = start_member(world, ws_url, addr, phone, name).await;
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|p| p != phone);
        let member = Arc::new(result.map_err(|e| MemberError::Failed(format!("{e:#}")))?);
        self.by_phone
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(phone.to_string(), member.clone());
        Ok(member)
    }

    /// Stops every member client at once (the simulator is going away).
    pub fn abort_all(&self) {
        for m in self
            .by_phone
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            m.handle.abort();
        }
    }
}

enum Lifecycle {
    Qr(String),
    Connected,
}

async fn start_member(
    world: &Arc<World>,
    ws_url: &str,
    world_addr: std::net::SocketAddr,
    phone: &str,
    name: &str,
) -> Result<Member> {
    let received: Arc<Mutex<Vec<Received>>> = Arc::default();
    let (tx, mut rx) = mpsc::unbounded_channel::<Lifecycle>();
    let log = received.clone();
    let events: Arc<Mutex<Vec<MemberEvent>>> = Arc::default();
    let event_log = events.clone();
    let bot = Bot::builder()
        .with_backend(InMemoryBackend::new())
        .with_transport_factory(TokioWebSocketTransportFactory::new().with_url(ws_url))
        .with_http_client(crate::media::SimHttpClient { addr: world_addr })
        .with_version(CLIENT_VERSION)
        .with_push_name(name)
        .skip_history_sync()
        .on_event(move |event, client| {
            match &*event {
                Event::PairingQrCode(q) => {
                    let _ = tx.send(Lifecycle::Qr(q.code.clone()));
                }
                Event::Connected(_) => {
                    let _ = tx.send(Lifecycle::Connected);
                }
                Event::Messages(batch) => {
                    let mut entries = log.lock().unwrap_or_else(|p| p.into_inner());
                    for m in batch.messages.iter() {
                        let image = m
                            .message
                            .get_base_message()
                            .image_message
                            .as_option()
                            .cloned();
                        let text = m
                            .message
                            .text_content()
                            .or_else(|| m.message.get_caption())
                            .map(str::to_string);
                        let kind = if image.is_some() {
                            "image"
                        } else if text.is_some() {
                            "text"
                        } else {
                            "other"
                        };
                        let id = m.info.id.to_string();
                        entries.push(Received {
                            id: id.clone(),
                            chat: m.info.source.chat.to_string(),
                            sender: m.info.source.sender.to_non_ad().to_string(),
                            from_me: m.info.source.is_from_me,
                            kind: kind.to_string(),
                            text,
                            timestamp: m.info.timestamp.timestamp(),
                            mime: image.as_ref().and_then(|i| i.mimetype.clone()),
                            media_sha256: None,
                        });
                        if let Some(image) = image {
                            let client = client.clone();
                            let log = log.clone();
                            tokio::spawn(async move {
                                match client.download(&image).await {
                                    Ok(bytes) => {
                                        let digest = hex(&sha2::Sha256::digest(&bytes));
                                        let mut entries =
                                            log.lock().unwrap_or_else(|p| p.into_inner());
                                        if let Some(e) = entries.iter_mut().find(|e| e.id == id) {
                                            e.media_sha256 = Some(digest);
                                        }
                                    }
                                    Err(e) => {
                                        log::warn!("member could not download media {id}: {e:#}")
                                    }
                                }
                            });
                        }
                    }
                }
                Event::GroupUpdate(u) => {
                    let detail = format!("{:?}", u.action);
                    let action = detail
                        .split([' ', '{', '('])
                        .next()
                        .unwrap_or_default()
                        .to_lowercase();
                    event_log
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(MemberEvent {
                            kind: "group_update".into(),
                            chat: u.group_jid.to_string(),
                            actor: u.participant.as_ref().map(|j| j.to_string()),
                            action,
                            detail,
                        });
                }
                _ => {}
            }
            async {}
        })
        .build()
        .await
        .context("building the member's client")?;
    let handle = bot.spawn();
    let client = handle.client();

    let qr = loop {
        match tokio::time::timeout(QR_TIMEOUT, rx.recv()).await {
            Ok(Some(Lifecycle::Qr(qr))) => break qr,
            Ok(Some(Lifecycle::Connected)) => continue,
            Ok(None) | Err(_) => {
                handle.abort();
                return Err(anyhow!("the client showed no QR code"));
            }
        }
    };
    let linked = match crate::pairing::scan(world, phone, &qr).await {
        Ok(l) => l,
        Err(e @ (ScanError::InvalidQr(_) | ScanError::UnknownRef | ScanError::Failed(_))) => {
            handle.abort();
            return Err(anyhow!("{e}"));
        }
    };
    loop {
        match tokio::time::timeout(CONNECT_TIMEOUT, rx.recv()).await {
            Ok(Some(Lifecycle::Connected)) => break,
            Ok(Some(Lifecycle::Qr(_))) => continue,
            Ok(None) | Err(_) => {
                handle.abort();
                return Err(anyhow!("the client did not reach Connected"));
            }
        }
    }
    log::info!("member {phone} ({name}) is up as {}", linked.jid);
    Ok(Member {
        phone: phone.to_string(),
        name: name.to_string(),
        linked,
        client,
        handle,
        received,
        events,
    })
}
