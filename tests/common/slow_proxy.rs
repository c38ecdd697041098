//! A loopback HTTP proxy in front of the test Synapse that holds back the requests
//! whose path contains a chosen text (a homeserver slow to serve one file) and
//! passes every other request at once. It asks for one request per connection
//! (`Connection: close`), so that it sees every request's path.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The largest request head the proxy reads before passing a request on.
const MAX_HEAD: usize = 64 * 1024;

/// The paths to hold back and for how long, and how many requests were held.
#[derive(Default)]
struct Rules {
    slow: Vec<(String, Duration)>,
    held: usize,
}

type Slow = Arc<Mutex<Rules>>;

pub struct SlowProxy {
    /// The proxy's base URL (`http://127.0.0.1:<port>`), to give the bridge.
    pub url: String,
    slow: Slow,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SlowProxy {
    /// Starts a proxy to `upstream` (`http://127.0.0.1:<port>`).
    pub async fn start(upstream: &str) -> SlowProxy {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let slow: Slow = Arc::default();
        let rules = slow.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(pass_on(client, upstream.clone(), rules.clone()));
            }
        });
        SlowProxy { url, slow, task }
    }

    /// From now on, requests whose path contains `path_part` wait `by` before
    /// they reach the homeserver.
    pub fn slow_down(&self, path_part: &str, by: Duration) {
        self.slow
            .lock()
            .unwrap()
            .slow
            .push((path_part.to_owned(), by));
    }

    /// How many requests were held back so far (counted when they arrive).
    pub fn held(&self) -> usize {
        self.slow.lock().unwrap().held
    }
}

/// Passes one request (and its response) between `client` and the homeserver.
async fn pass_on(mut client: TcpStream, upstream: String, slow: Slow) {
    let mut head = Vec::new();
    let mut buffer = [0u8; 8192];
    let end = loop {
        let Ok(read) = client.read(&mut buffer).await else {
            return;
        };
        if read == 0 || head.len() > MAX_HEAD {
            return;
        }
        head.extend_from_slice(&buffer[..read]);
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let text = String::from_utf8_lossy(&head[..end]).into_owned();
    let path = text.split(' ').nth(1).unwrap_or_default().to_owned();
    let delay = {
        let mut rules = slow.lock().unwrap();
        let delay = rules
            .slow
            .iter()
            .find(|(part, _)| path.contains(part.as_str()))
            .map(|(_, by)| *by);
        rules.held += usize::from(delay.is_some());
        delay
    };
    if let Some(by) = delay {
        tokio::time::sleep(by).await;
    }
    let mut rewritten: Vec<&str> = text
        .trim_end_matches("\r\n")
        .split("\r\n")
        .filter(|line| !line.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    rewritten.push("Connection: close");
    let mut request = (rewritten.join("\r\n") + "\r\n\r\n").into_bytes();
    request.extend_from_slice(&head[end..]);
    let Ok(mut server) = TcpStream::connect(&upstream).await else {
        return;
    };
    if server.write_all(&request).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
