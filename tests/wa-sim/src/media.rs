//! Media: `media_conn` (`xmlns="w:m"`), the blob store behind it (upload by POST,
//! download by GET of the direct path, both on the control port), and the
//! `HttpClient` that sends a whatsapp-rust client's `https://HOST/...` media
//! requests to the simulator instead (no TLS: documented in README).

use std::net::SocketAddr;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wacore_binary::Node;
use wacore_binary::builder::NodeBuilder;
use whatsapp_rust::wacore::net::{HttpClient, HttpRequest, HttpResponse};

use crate::http::Response;
use crate::state::World;

/// Media host name announced in `media_conn` (never resolved: see [`SimHttpClient`]).
pub const MEDIA_HOST: &str = "media.wa-sim.invalid";

/// The `<media_conn>` answer: one host for upload and download.
pub fn media_conn_node() -> Node {
    NodeBuilder::new("media_conn")
        .attr("auth", "wa-sim-auth")
        .attr("ttl", "3600")
        .attr("auth_ttl", "21600")
        .attr("max_buckets", "12")
        .children([NodeBuilder::new("host")
            .attr("hostname", MEDIA_HOST)
            .children([
                NodeBuilder::new("upload").build(),
                NodeBuilder::new("download").build(),
            ])
            .build()])
        .build()
}

/// `POST /mms/{type}/{token}?...`: stores the encrypted blob, answers its URL.
pub fn upload(world: &World, query: Option<&str>, body: Vec<u8>) -> Response {
    if query.is_some_and(|q| q.split('&').any(|p| p == "resume=1")) {
        // Nothing is ever half-uploaded here.
        return Response::json(200, serde_json::json!({}));
    }
    let direct_path = format!("/v/t62.7118-24/wa-sim/{}.enc", world.next_id());
    let len = body.len();
    world.lock().media.insert(direct_path.clone(), body);
    log::debug!("stored {len} bytes of media at {direct_path}");
    Response::json(
        200,
        serde_json::json!({
            "url": format!("https://{MEDIA_HOST}{direct_path}"),
            "direct_path": direct_path,
        }),
    )
}

/// `GET /v/...`: a stored blob.
pub fn download(world: &World, path: &str) -> Response {
    match world.lock().media.get(path) {
        Some(b) => Response::bytes(200, b.clone()),
        None => Response::error(404, format!("no media at {path}")),
    }
}

/// HTTP client for whatsapp-rust that sends every `https://HOST/PATH` request to
/// the simulator at `addr` as plain HTTP (`PATH` unchanged, `Host: HOST`). Only
/// media requests reach it in practice; anything else gets the simulator's 404.
#[derive(Clone)]
pub struct SimHttpClient {
    pub addr: SocketAddr,
}

#[whatsapp_rust::async_trait]
impl HttpClient for SimHttpClient {
    async fn execute(&self, request: HttpRequest) -> Result<HttpResponse> {
        let rest = request
            .url
            .strip_prefix("https://")
            .or_else(|| request.url.strip_prefix("http://"))
            .with_context(|| format!("unsupported URL {}", request.url))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let body = request.body.as_deref().unwrap_or_default();
        let mut head = format!(
            "{} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n",
            request.method,
            body.len()
        );
        for (k, v) in &request.headers {
            if !k.eq_ignore_ascii_case("content-length") && !k.eq_ignore_ascii_case("host") {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        head.push_str("\r\n");
        let mut stream = tokio::net::TcpStream::connect(self.addr).await?;
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| anyhow!("malformed HTTP response"))?;
        let status = std::str::from_utf8(&raw[..end])?
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .context("no status code")?;
        if raw.len() < end + 4 {
            bail!("truncated HTTP response");
        }
        Ok(HttpResponse {
            status_code: status,
            body: raw[end + 4..].to_vec(),
        })
    }
}
