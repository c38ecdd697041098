//! Just enough HTTP/1.1 for the control API and the WebSocket upgrade: read one
//! request (head + `Content-Length` body), write one JSON response, close.

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_HEAD: usize = 64 * 1024;
/// Room for a 40 MB file in base64 (tests send oversize files through `upload`).
const MAX_BODY: usize = 64 * 1024 * 1024;

pub struct Request {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// Query string (after `?`), if any, still percent-encoded.
    pub query: Option<String>,
    pub body: Vec<u8>,
}

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: serde_json::to_vec(&body).unwrap_or_default(),
        }
    }

    pub fn bytes(status: u16, body: Vec<u8>) -> Self {
        Self {
            status,
            content_type: "application/octet-stream",
            body,
        }
    }

    pub fn error(status: u16, message: impl std::fmt::Display) -> Self {
        Self::json(status, serde_json::json!({ "error": message.to_string() }))
    }
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Looks at the request head without consuming it: is this a WebSocket upgrade?
/// (The WebSocket library then reads the head itself.)
pub async fn is_websocket_upgrade(stream: &TcpStream) -> Result<bool> {
    let mut buf = vec![0u8; MAX_HEAD];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            bail!("connection closed before a request");
        }
        if let Some(end) = head_end(&buf[..n]) {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            req.parse(&buf[..end]).context("parsing request head")?;
            return Ok(req.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("upgrade")
                    && String::from_utf8_lossy(h.value).eq_ignore_ascii_case("websocket")
            }));
        }
        if n == buf.len() {
            bail!("request head too large");
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out reading request head");
        }
        // `peek` returns at once while the head is incomplete: wait a little.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

/// Reads one request from the stream.
pub async fn read_request(stream: &mut TcpStream) -> Result<Request> {
    let mut buf = Vec::with_capacity(4096);
    let end = loop {
        if let Some(end) = head_end(&buf) {
            break end;
        }
        if buf.len() > MAX_HEAD {
            bail!("request head too large");
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed mid-request");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(&buf[..end]).context("parsing request head")?;
    let method = req.method.context("no method")?.to_string();
    let target = req.path.context("no path")?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let len = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| String::from_utf8_lossy(h.value).trim().parse::<usize>())
        .transpose()
        .context("bad Content-Length")?
        .unwrap_or(0);
    if len > MAX_BODY {
        bail!("request body too large");
    }
    let mut body = buf[end..].to_vec();
    while body.len() < len {
        let mut chunk = vec![0u8; (len - body.len()).min(64 * 1024)];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed mid-body");
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Ok(Request {
        method,
        path,
        query,
        body,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        409 => "Conflict",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

pub async fn write_response(stream: &mut TcpStream, resp: &Response) -> Result<()> {
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&resp.body).await?;
    stream.flush().await?;
    Ok(())
}

/// Value of `key` in a query string, percent-decoded (`+` is kept as is).
pub fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| percent_decode(v))
    })
}

/// `%XX` escapes decoded (`+` is kept as is).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_percent_decoded() {
        let q = Some("chat=33611111111%40s.whatsapp.net&x=1");
        assert_eq!(
            query_param(q, "chat").as_deref(),
            Some("33611111111@s.whatsapp.net")
        );
        assert_eq!(query_param(q, "x").as_deref(), Some("1"));
        assert_eq!(query_param(q, "y"), None);
        assert_eq!(percent_decode("100%"), "100%");
    }
}
