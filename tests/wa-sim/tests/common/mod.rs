//! Shared test helpers: start a simulator, build real whatsapp-rust clients
//! pointed at it (in-memory store, no network but loopback), wait for events,
//! and call the control API over plain HTTP.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use wa_sim::Simulator;
use whatsapp_rust::bot::{Bot, BotHandle};
use whatsapp_rust::prelude::MessageExt;
use whatsapp_rust::transport::TokioWebSocketTransportFactory;
use whatsapp_rust::types::events::Event;
use whatsapp_rust::wacore::net::{HttpClient, HttpRequest, HttpResponse};
use whatsapp_rust::wacore::store::InMemoryBackend;
use whatsapp_rust::wacore::store::traits::Backend;

/// Logs to the test output when `RUST_LOG` is set (e.g. `RUST_LOG=wa_sim=debug`).
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

pub async fn start_sim() -> Simulator {
    Simulator::start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts")
}

/// HTTP client handed to whatsapp-rust: refuses every request, so a test can never
/// reach the Internet through the client (media goes through wa-sim later).
pub struct NoNetwork;

#[whatsapp_rust::async_trait]
impl HttpClient for NoNetwork {
    async fn execute(&self, request: HttpRequest) -> anyhow::Result<HttpResponse> {
        anyhow::bail!("network disabled in tests: {}", request.url)
    }
}

/// A whatsapp-rust client running against the simulator, with its events in a channel.
pub struct TestClient {
    pub handle: BotHandle,
    pub events: mpsc::UnboundedReceiver<Arc<Event>>,
    /// Its key store, to restart the same device later.
    pub backend: Arc<dyn Backend>,
}

/// Builds and starts a fresh (unpaired) client pointed at `sim`.
pub async fn spawn_client(sim: &Simulator) -> TestClient {
    spawn_client_with(sim, Arc::new(InMemoryBackend::new())).await
}

/// HTTP client of a test client that may use media: through the simulator
/// (`wa_sim::SimHttpClient`), or nowhere ([`NoNetwork`]).
struct TestHttp(Option<wa_sim::SimHttpClient>);

#[whatsapp_rust::async_trait]
impl HttpClient for TestHttp {
    async fn execute(&self, request: HttpRequest) -> anyhow::Result<HttpResponse> {
        match &self.0 {
            Some(sim) => sim.execute(request).await,
            None => NoNetwork.execute(request).await,
        }
    }
}

/// Builds and starts a client on an existing store (a restart of the same device).
pub async fn spawn_client_with(sim: &Simulator, backend: Arc<dyn Backend>) -> TestClient {
    spawn_client_full(sim, backend, false).await
}

async fn spawn_client_full(sim: &Simulator, backend: Arc<dyn Backend>, media: bool) -> TestClient {
    let (tx, events) = mpsc::unbounded_channel();
    let http = TestHttp(media.then(|| wa_sim::SimHttpClient { addr: sim.addr() }));
    let bot = Bot::builder()
        .with_backend_arc(backend.clone())
        .with_transport_factory(TokioWebSocketTransportFactory::new().with_url(sim.ws_url()))
        .with_http_client(http)
        // A fixed version: otherwise the client fetches it from web.whatsapp.com.
        .with_version((2, 3000, 1_000_000_000))
        .skip_history_sync()
        .on_event(move |event, _client| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(event);
            }
        })
        .build()
        .await
        .expect("client builds");
    TestClient {
        handle: bot.spawn(),
        events,
        backend,
    }
}

/// A client linked to `phone` (through the library API) and `Connected`.
pub async fn paired_client(sim: &Simulator, phone: &str) -> TestClient {
    pair(sim, phone, spawn_client(sim).await).await
}

/// Like [`paired_client`], with media up- and downloads through the simulator
/// (as passerelle's client would be built against it).
pub async fn paired_client_with_media(sim: &Simulator, phone: &str) -> TestClient {
    let client = spawn_client_full(sim, Arc::new(InMemoryBackend::new()), true).await;
    pair(sim, phone, client).await
}

async fn pair(sim: &Simulator, phone: &str, mut client: TestClient) -> TestClient {
    let qr = client
        .wait_for(20, "PairingQrCode", |e| match e {
            Event::PairingQrCode(q) => Some(q.code.clone()),
            _ => None,
        })
        .await;
    sim.scan(phone, &qr).await.expect("scan links the device");
    client
        .wait_for(45, "Connected", |e| {
            matches!(e, Event::Connected(_)).then_some(())
        })
        .await;
    client
}

/// Text of the first received message in an event, with the sender's user part.
pub fn received_text(event: &Event) -> Option<(String, String)> {
    match event {
        Event::Messages(batch) => batch.messages.iter().find_map(|m| {
            m.message
                .text_content()
                .map(|t| (t.to_string(), m.info.source.sender.user.to_string()))
        }),
        _ => None,
    }
}

impl TestClient {
    /// Waits for the first event `pick` accepts; panics after `secs` seconds,
    /// listing the events seen meanwhile.
    pub async fn wait_for<T>(
        &mut self,
        secs: u64,
        what: &str,
        pick: impl Fn(&Event) -> Option<T>,
    ) -> T {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => {
                    if let Some(v) = pick(&event) {
                        return v;
                    }
                    seen.push(format!("{:?}", event_name(&event)));
                }
                Ok(None) => panic!("event channel closed while waiting for {what}; saw {seen:?}"),
                Err(_) => panic!("no {what} within {secs}s; saw {seen:?}"),
            }
        }
    }
}

fn event_name(event: &Event) -> String {
    let dbg = format!("{event:?}");
    dbg.split(['(', ' ', '{'])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Polls `member`'s log of `chat` until `done` accepts it (at most `secs`
/// seconds; panics with the log otherwise).
pub async fn wait_log(
    member: &wa_sim::Member,
    chat: &str,
    secs: u64,
    what: &str,
    done: impl Fn(&[wa_sim::Received]) -> bool,
) -> Vec<wa_sim::Received> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let log = member.received(Some(chat));
        if done(&log) {
            return log;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{} never got {what} within {secs}s: {log:#?}", member.phone);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Hex SHA-256, as the members' logs give it.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Minimal HTTP/1.1 request to the control API: returns (status, JSON body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect control API");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut raw))
        .await
        .expect("control API answers in time")
        .unwrap();
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}
