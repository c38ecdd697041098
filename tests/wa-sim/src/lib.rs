//! wa-sim: a WhatsApp multi-device server simulator on loopback, so that real
//! whatsapp-rust clients (passerelle's and simulated members) can be tested
//! without WhatsApp. One port serves both the WhatsApp endpoint
//! (`ws://ADDR/ws/chat`) and the JSON control API (`http://ADDR/`); see README.md.

mod compose;
mod conn;
mod control;
mod devices;
mod groups;
mod http;
mod iq;
mod keys;
mod media;
mod members;
mod messages;
mod noise;
mod pair_code;
mod pairing;
mod phone;
mod raw;
mod readback;
mod stanza;
mod state;
mod usync;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use compose::{Body, MediaFile, MediaKind, Outgoing, Target};
pub use control::valid_phone;
pub use media::SimHttpClient;
pub use members::{Member, MemberError, MemberEvent, Received, SendFailure};
pub use pairing::{Linked, ScanError};

use state::World;

/// State shared by the accept loop, the connections and the control API.
pub(crate) struct Core {
    addr: SocketAddr,
    world: Arc<World>,
    members: members::Members,
}

impl Core {
    fn ws_url(&self) -> String {
        format!("ws://{}/ws/chat", self.addr)
    }

    fn http_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    async fn scan(&self, phone: &str, qr: &str) -> Result<Linked, ScanError> {
        pairing::scan(&self.world, phone, qr).await
    }

    async fn enter_code(&self, phone: &str, code: &str) -> Result<Linked, ScanError> {
        pair_code::enter_code(&self.world, phone, code).await
    }

    async fn create_member(&self, phone: &str, name: &str) -> Result<Arc<Member>, MemberError> {
        self.members
            .create(&self.world, &self.ws_url(), self.addr, phone, name)
            .await
    }

    fn phone_info(&self, phone: &str) -> Option<serde_json::Value> {
        let inner = self.world.lock();
        let p = inner.phones.get(phone)?;
        let mut devices: Vec<u16> = inner
            .devices
            .keys()
            .filter(|(ph, _)| ph == phone)
            .map(|(_, d)| *d)
            .collect();
        devices.sort();
        let devices: Vec<serde_json::Value> = devices
            .into_iter()
            .map(|d| {
                let key = (phone.to_string(), d);
                serde_json::json!({
                    "jid": format!("{phone}:{d}@s.whatsapp.net"),
                    "online": inner.online.contains_key(&key),
                    "queued": inner.outbox.get(&key).map_or(0, Vec::len),
                    "push_name": inner.devices.get(&key).map(|r| r.push_name.clone()),
                })
            })
            .collect();
        Some(serde_json::json!({
            "phone": phone,
            "lid": format!("{}@lid", p.lid_user),
            "devices": devices,
        }))
    }
}

/// A running simulator. Dropping it stops the listener and closes every connection.
pub struct Simulator {
    core: Arc<Core>,
    shutdown: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl Simulator {
    /// Listens on `listen` (loopback only; port 0 picks a free port) and serves.
    pub async fn start(listen: SocketAddr) -> Result<Self> {
        if !listen.ip().is_loopback() {
            bail!("wa-sim listens on loopback only, not {listen}");
        }
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr()?;
        let world = Arc::new(World::new(noise::ServerIdentity::generate()?));
        let core = Arc::new(Core {
            addr,
            world,
            members: members::Members::default(),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(listener, core.clone(), shutdown_rx));
        log::info!("wa-sim listening on {addr}");
        Ok(Self {
            core,
            shutdown,
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.core.addr
    }

    /// WhatsApp endpoint for `TokioWebSocketTransportFactory::with_url`.
    pub fn ws_url(&self) -> String {
        self.core.ws_url()
    }

    /// Base URL of the control API (ends with `/`).
    pub fn http_url(&self) -> String {
        self.core.http_url()
    }

    /// Same as `POST /phones/{phone}/scan`: the phone links the device showing `qr`.
    pub async fn scan(&self, phone: &str, qr: &str) -> Result<Linked, ScanError> {
        if !valid_phone(phone) {
            return Err(ScanError::InvalidQr(format!("invalid phone {phone:?}")));
        }
        self.core.scan(phone, qr).await
    }

    /// Same as `POST /phones/{phone}/pair-code`: the phone enters the pair code
    /// shown by the device that asked to link with this number.
    pub async fn enter_pair_code(&self, phone: &str, code: &str) -> Result<Linked, ScanError> {
        if !valid_phone(phone) {
            return Err(ScanError::InvalidQr(format!("invalid phone {phone:?}")));
        }
        self.core.enter_code(phone, code).await
    }

    /// Same as `POST /members`: a number whose linked device is a whatsapp-rust
    /// client run by the simulator, returned once `Connected`.
    pub async fn create_member(&self, phone: &str, name: &str) -> Result<Arc<Member>, MemberError> {
        if !valid_phone(phone) {
            return Err(MemberError::Failed(format!("invalid phone {phone:?}")));
        }
        self.core.create_member(phone, name).await
    }

    /// Same as `POST /groups`: a group of `creator` with `members` (phone
    /// numbers, the creator is added if missing). Returns (JID, invite link).
    pub fn create_group(
        &self,
        subject: &str,
        creator: &str,
        members: &[String],
    ) -> (String, String) {
        groups::create(&mut self.core.world.lock(), subject, creator, members)
    }

    /// A member created earlier.
    pub fn member(&self, phone: &str) -> Option<Arc<Member>> {
        self.core.members.get(phone)
    }

    /// Same as `GET /phones/{phone}`.
    pub fn phone_info(&self, phone: &str) -> Option<serde_json::Value> {
        self.core.phone_info(phone)
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.accept.abort();
        self.core.members.abort_all();
    }
}

async fn accept_loop(listener: TcpListener, core: Arc<Core>, shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let core = core.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_tcp(stream, core, shutdown).await {
                log::debug!("{peer}: {e:#}");
            }
        });
    }
}

async fn serve_tcp(
    mut stream: TcpStream,
    core: Arc<Core>,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let _ = stream.set_nodelay(true);
    if http::is_websocket_upgrade(&stream).await? {
        let (request, ws) = tokio_websockets::ServerBuilder::new()
            .accept(stream)
            .await
            .context("websocket handshake")?;
        if request.uri().path() != "/ws/chat" {
            bail!("websocket on unexpected path {}", request.uri().path());
        }
        conn::serve(core.world.clone(), ws, shutdown).await;
        return Ok(());
    }
    let request = http::read_request(&mut stream).await?;
    let response = control::handle(&core, request).await;
    http::write_response(&mut stream, &response).await
}
