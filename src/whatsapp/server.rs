//! Which WhatsApp server passerelle may talk to, and the transport that reaches it.
//!
//! The real WhatsApp proves who it is with a Noise certificate chain signed by
//! WhatsApp's root key. A build made for tests against wa-sim (cargo feature
//! `simulator`, or any build where whatsapp-rust was compiled with
//! `danger-skip-cert-chain-verify`, e.g. through feature unification in a workspace
//! build) skips that check. Such a build must never reach anything but a simulator
//! on loopback, and a normal build must never be pointed elsewhere than WhatsApp.
//! Both rules are checked here, before any connection is made.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use whatsapp_rust::http::{HttpClient, HttpRequest, HttpResponse, UreqHttpClient};

use whatsapp_rust::transport::TokioWebSocketTransportFactory;
use whatsapp_rust::wacore::noise::HandshakeUtils;
use whatsapp_rust::waproto::buffa::{Message as _, MessageField};
use whatsapp_rust::waproto::whatsapp as wa;

/// Why the configured WhatsApp server may not be used by this build.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ServerError {
    /// `[whatsapp] server_url` set in a build that checks certificates (a normal build).
    #[error("{}", crate::build_kind::URL_IN_NORMAL_BUILD)]
    UrlInNormalBuild,
    /// A build that skips certificate checks, with no simulator URL.
    #[error(
        "this build skips WhatsApp's certificate checks (made for tests against a \
         simulator) and will not connect to the real WhatsApp: set `[whatsapp] server_url` to \
         a simulator on loopback, or build passerelle without the `simulator` feature"
    )]
    UncheckedBuildWithoutSimulator,
    /// A build that skips certificate checks, pointed at a non-loopback host.
    #[error(
        "this build skips WhatsApp's certificate checks, so it only talks to a simulator \
         on loopback (127.0.0.0/8 or ::1), not to `{0}`"
    )]
    UncheckedBuildNotLoopback(String),
}

use crate::build_kind::SIMULATOR_BUILD;

/// Whether whatsapp-rust, as compiled into this binary, verifies the server's
/// certificate chain. Probed rather than assumed: Cargo's feature unification can
/// switch the check off (a workspace build pulling in wa-sim) without this crate's
/// own features saying so. The probe hands the verifier a chain whose signatures
/// are missing altogether; a verifying build refuses it.
pub fn certificate_checks_enabled() -> bool {
    let server_static = [7u8; 32];
    let details = |serial: u32, issuer: u32, key: Vec<u8>| {
        wa::cert_chain::noise_certificate::Details {
            serial: Some(serial),
            issuer_serial: Some(issuer),
            key: Some(key),
            not_before: Some(0),
            not_after: Some(u64::MAX),
        }
        .encode_to_vec()
    };
    let chain = wa::CertChain {
        intermediate: MessageField::some(wa::cert_chain::NoiseCertificate {
            details: Some(details(1, 0, vec![9u8; 32])),
            signature: None,
        }),
        leaf: MessageField::some(wa::cert_chain::NoiseCertificate {
            details: Some(details(2, 1, server_static.to_vec())),
            signature: None,
        }),
    }
    .encode_to_vec();
    HandshakeUtils::verify_server_cert(&chain, &server_static).is_err()
}

/// Checks that this build may use `url` (`None`: the real WhatsApp), given whether it
/// was built for the simulator and whether it verifies certificates.
pub fn check_server(
    url: Option<&str>,
    simulator_build: bool,
    checks_certificates: bool,
) -> Result<(), ServerError> {
    if !simulator_build && url.is_some() {
        return Err(ServerError::UrlInNormalBuild);
    }
    if checks_certificates {
        return Ok(());
    }
    let Some(url) = url else {
        return Err(ServerError::UncheckedBuildWithoutSimulator);
    };
    if is_loopback_url(url) {
        Ok(())
    } else {
        Err(ServerError::UncheckedBuildNotLoopback(url.to_owned()))
    }
}

/// The transport for the configured server, once [`check_server`] allowed it for
/// this very binary. `None` means whatsapp-rust's default (the real WhatsApp).
pub fn transport_for(
    url: Option<&str>,
) -> Result<Option<TokioWebSocketTransportFactory>, ServerError> {
    check_server(url, SIMULATOR_BUILD, certificate_checks_enabled())?;
    Ok(url.map(|url| TokioWebSocketTransportFactory::new().with_url(url)))
}

/// How long connecting to a media host may take.
const MEDIA_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a media host may keep silent, before its answer or inside its body.
const MEDIA_SILENCE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest one media request may take in all (the download's own deadline is in
/// `whatsapp/media.rs`).
const MEDIA_REQUEST_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Largest body read from a media host: above any file worth relaying (WhatsApp's
/// own limit is 2 GiB); each download is also capped at `[relay] max_file_mb`.
const MEDIA_MAX_BODY_BYTES: u64 = 512 * 1024 * 1024;

/// The HTTP client for media (uploads and downloads) of the configured server, once
/// [`transport_for`] allowed it: WhatsApp's own (TLS, checked certificates), or for
/// a simulator, plain HTTP to the simulator's address (wa-sim serves media on its
/// control port; see tests/wa-sim/README.md). Either way it asks only the media
/// hosts of that server ([`media_host_allowed`]), follows no redirect, and gives up
/// on a host that does not answer in time.
pub fn media_http_for(url: Option<&str>) -> MediaHttp {
    let simulator = url
        .and_then(|url| url::Url::parse(url).ok())
        .and_then(|url| url.socket_addrs(|| None).ok())
        .and_then(|addrs| addrs.into_iter().find(|addr| addr.ip().is_loopback()));
    match simulator {
        Some(addr) => MediaHttp::Simulator(addr),
        None => {
            let agent: ureq::Agent = ureq::config::Config::builder()
                .timeout_connect(Some(MEDIA_CONNECT_TIMEOUT))
                .timeout_recv_response(Some(MEDIA_SILENCE_TIMEOUT))
                .timeout_global(Some(MEDIA_REQUEST_TIMEOUT))
                .max_redirects(0)
                .https_only(true)
                .build()
                .into();
            MediaHttp::WhatsApp(
                UreqHttpClient::with_agent(agent).with_max_body_bytes(MEDIA_MAX_BODY_BYTES),
            )
        }
    }
}

/// Whether a media request may go to `url`: WhatsApp's hosts over HTTPS
/// (`*.whatsapp.net`, `*.whatsapp.com`), or for a simulator its media host. A URL a
/// message names is never fetched (the download drops it), and this refuses any
/// that would still come through: no request ever reaches the host's own network.
fn media_host_allowed(url: &str, simulator: bool) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    let Some(url::Host::Domain(host)) = parsed.host() else {
        return false;
    };
    let host = host.to_ascii_lowercase();
    let under = |domain: &str| host == domain || host.ends_with(&format!(".{domain}"));
    if simulator {
        under("wa-sim.invalid")
    } else {
        parsed.scheme() == "https" && (under("whatsapp.net") || under("whatsapp.com"))
    }
}

/// See [`media_http_for`].
pub enum MediaHttp {
    WhatsApp(UreqHttpClient),
    Simulator(SocketAddr),
}

impl MediaHttp {
    fn check(&self, url: &str) -> anyhow::Result<()> {
        let simulator = matches!(self, MediaHttp::Simulator(_));
        if media_host_allowed(url, simulator) {
            Ok(())
        } else {
            anyhow::bail!("refused a media URL not on WhatsApp's media hosts")
        }
    }
}

#[whatsapp_rust::async_trait]
impl HttpClient for MediaHttp {
    async fn execute(&self, request: HttpRequest) -> anyhow::Result<HttpResponse> {
        self.check(&request.url)?;
        match self {
            MediaHttp::WhatsApp(client) => client.execute(request).await,
            MediaHttp::Simulator(addr) => plain_http(*addr, request).await,
        }
    }

    fn supports_streaming(&self) -> bool {
        match self {
            MediaHttp::WhatsApp(client) => client.supports_streaming(),
            MediaHttp::Simulator(_) => true,
        }
    }

    fn execute_streaming(
        &self,
        request: HttpRequest,
    ) -> anyhow::Result<whatsapp_rust::wacore::net::StreamingHttpResponse> {
        self.check(&request.url)?;
        match self {
            MediaHttp::WhatsApp(client) => client.execute_streaming(request),
            MediaHttp::Simulator(addr) => plain_http_streaming(*addr, &request),
        }
    }
}

/// The request line and headers of `request` for the simulator at `addr`, with
/// its body's length: the path of the `https://HOST/PATH` URL is kept.
fn plain_http_head(request: &HttpRequest, body_len: usize) -> anyhow::Result<String> {
    let rest = request
        .url
        .split_once("://")
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("not a URL"))?;
    let (host, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    let mut head = format!(
        "{} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {body_len}\r\nConnection: close\r\n",
        request.method,
    );
    for (name, value) in &request.headers {
        if !name.eq_ignore_ascii_case("content-length") && !name.eq_ignore_ascii_case("host") {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("\r\n");
    Ok(head)
}

/// A download from the simulator read as it comes (whatsapp-rust calls this on a
/// blocking thread): the status line and headers read, the body handed over as a
/// reader, with the same silence and total deadlines as WhatsApp's client.
fn plain_http_streaming(
    addr: SocketAddr,
    request: &HttpRequest,
) -> anyhow::Result<whatsapp_rust::wacore::net::StreamingHttpResponse> {
    use std::io::{BufRead, Read, Write};
    let body = request.body.as_deref().unwrap_or_default();
    let head = plain_http_head(request, body.len())?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, MEDIA_CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(MEDIA_SILENCE_TIMEOUT))?;
    stream.set_write_timeout(Some(MEDIA_SILENCE_TIMEOUT))?;
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut reader = std::io::BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status_code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| anyhow::anyhow!("no HTTP status"))?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
    }
    let deadline = std::time::Instant::now() + MEDIA_REQUEST_TIMEOUT;
    let body = Deadline {
        inner: reader.take(MEDIA_MAX_BODY_BYTES),
        deadline,
    };
    Ok(whatsapp_rust::wacore::net::StreamingHttpResponse {
        status_code,
        body: Box::new(body),
    })
}

/// A reader that fails once its deadline has passed.
struct Deadline<R> {
    inner: R,
    deadline: std::time::Instant,
}

impl<R: std::io::Read> std::io::Read for Deadline<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        if std::time::Instant::now() > self.deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the media download took too long",
            ));
        }
        self.inner.read(buffer)
    }
}

/// One HTTP/1.1 request over plain TCP to `addr` (the simulator), answered with
/// `Connection: close`: the path of the `https://HOST/PATH` URL is kept.
async fn plain_http(addr: SocketAddr, request: HttpRequest) -> anyhow::Result<HttpResponse> {
    let body = request.body.as_deref().unwrap_or_default();
    let head = plain_http_head(&request, body.len())?;
    let mut stream =
        tokio::time::timeout(MEDIA_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await??;
    let exchange = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut raw = Vec::new();
        (&mut stream)
            .take(MEDIA_MAX_BODY_BYTES)
            .read_to_end(&mut raw)
            .await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(MEDIA_REQUEST_TIMEOUT, exchange).await??;
    let end = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("malformed HTTP response"))?;
    let status_code = std::str::from_utf8(&raw[..end])?
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| anyhow::anyhow!("no HTTP status"))?;
    Ok(HttpResponse {
        status_code,
        body: raw[end + 4..].to_vec(),
    })
}

/// Whether `url`'s host is a loopback address (or `localhost`).
fn is_loopback_url(url: &str) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    match parsed.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIM: &str = "ws://127.0.0.1:9000/ws/chat";

    #[test]
    fn a_normal_build_talks_to_whatsapp_only() {
        assert_eq!(check_server(None, false, true), Ok(()));
        assert_eq!(
            check_server(Some(SIM), false, true),
            Err(ServerError::UrlInNormalBuild)
        );
        // Even if feature unification switched the checks off behind its back.
        assert_eq!(
            check_server(Some(SIM), false, false),
            Err(ServerError::UrlInNormalBuild)
        );
        assert_eq!(
            check_server(None, false, false),
            Err(ServerError::UncheckedBuildWithoutSimulator)
        );
    }

    #[test]
    fn a_build_without_certificate_checks_talks_to_loopback_only() {
        for url in [
            SIM,
            "ws://127.3.2.1:1/ws/chat",
            "ws://[::1]:9000/",
            "ws://localhost:1/",
        ] {
            assert_eq!(check_server(Some(url), true, false), Ok(()), "{url}");
        }
        for url in [
            "wss://web.whatsapp.com/ws/chat",
            "ws://10.0.0.1:9000/ws/chat",
            "ws://[::ffff:8.8.8.8]:1/",
            "ws://localhost.example.org/",
        ] {
            assert_eq!(
                check_server(Some(url), true, false),
                Err(ServerError::UncheckedBuildNotLoopback(url.into())),
                "{url}"
            );
        }
        assert_eq!(
            check_server(None, true, false),
            Err(ServerError::UncheckedBuildWithoutSimulator)
        );
    }

    #[test]
    fn media_requests_go_to_whatsapps_media_hosts_only() {
        for url in [
            "https://mmg.whatsapp.net/v/t62.7118-24/x.enc",
            "https://media-cdg4-1.cdn.whatsapp.net/v/x",
            "https://pps.whatsapp.net/v/t61/x",
        ] {
            assert!(media_host_allowed(url, false), "{url}");
            assert!(!media_host_allowed(url, true), "{url}");
        }
        for url in [
            "http://mmg.whatsapp.net/v/x",
            "https://127.0.0.1/v/x",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/x",
            "https://whatsapp.net.example.org/x",
            "https://evilwhatsapp.net/x",
            "https://localhost/x",
            "file:///etc/passwd",
            "not a url",
        ] {
            assert!(!media_host_allowed(url, false), "{url}");
            assert!(!media_host_allowed(url, true), "{url}");
        }
        assert!(media_host_allowed("https://media.wa-sim.invalid/v/x", true));
        assert!(!media_host_allowed(
            "https://media.wa-sim.invalid/v/x",
            false
        ));
    }

    #[test]
    fn the_probe_sees_whether_this_binary_checks_certificates() {
        // Unit tests run in the simulator build, where whatsapp-rust skips the checks;
        // in a normal build the same probe must see them (a chain without signatures
        // is refused).
        assert_eq!(certificate_checks_enabled(), !SIMULATOR_BUILD);
        assert!(transport_for(Some(SIM)).is_ok() == SIMULATOR_BUILD);
    }
}
