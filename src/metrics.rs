//! The metrics endpoint: the figures an admin or a monitoring system watches (queues
//! and the age of their oldest message, messages set aside, connection, groups,
//! messages relayed) in Prometheus' text format on `GET /metrics`. Numbers only: no
//! content, no phone numbers, no group ids.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Longest request accepted (a scraper's GET is a few hundred bytes).
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// A client that does not send its request in this time is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One direction's outbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueFigures {
    pub waiting: u64,
    pub oldest_age_secs: u64,
    /// Messages relayed in this direction since the counters began.
    pub relayed_total: u64,
}

/// Everything the endpoint shows, gathered by the service at each request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Figures {
    pub to_matrix: QueueFigures,
    pub to_whatsapp: QueueFigures,
    pub set_aside: u64,
    /// WhatsApp edits and deletions refused since the start: their sender may not
    /// make them (a modified client's).
    pub forgeries_refused: u64,
    pub whatsapp_connected: bool,
    /// The bot's Matrix session is in force (not ended by the homeserver).
    pub matrix_logged_in: bool,
    pub groups_approved: u64,
    pub groups_bridged: u64,
}

/// Where the figures come from (the service).
pub trait FigureSource: Send + Sync {
    fn figures(&self) -> Figures;
}

/// The figures in Prometheus' text exposition format.
pub fn render(figures: &Figures) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let (m, w) = (&figures.to_matrix, &figures.to_whatsapp);
    const TO_MATRIX: &str = "{direction=\"to_matrix\"}";
    const TO_WHATSAPP: &str = "{direction=\"to_whatsapp\"}";
    metric(
        "passerelle_queue_messages",
        "gauge",
        "Messages waiting in the outbox to be relayed.",
        &[(TO_MATRIX, m.waiting), (TO_WHATSAPP, w.waiting)],
    );
    metric(
        "passerelle_queue_oldest_age_seconds",
        "gauge",
        "Age of the oldest waiting message (0 when none waits).",
        &[
            (TO_MATRIX, m.oldest_age_secs),
            (TO_WHATSAPP, w.oldest_age_secs),
        ],
    );
    metric(
        "passerelle_relayed_messages_total",
        "counter",
        "Messages relayed.",
        &[(TO_MATRIX, m.relayed_total), (TO_WHATSAPP, w.relayed_total)],
    );
    metric(
        "passerelle_set_aside_messages",
        "gauge",
        "Messages refused for good and set aside (recent ones).",
        &[("", figures.set_aside)],
    );
    metric(
        "passerelle_forged_changes_refused_total",
        "counter",
        "WhatsApp edits, deletions and message ids refused because their sender may not make them.",
        &[("", figures.forgeries_refused)],
    );
    metric(
        "passerelle_whatsapp_connected",
        "gauge",
        "1 when the linked WhatsApp device is connected.",
        &[("", u64::from(figures.whatsapp_connected))],
    );
    metric(
        "passerelle_matrix_logged_in",
        "gauge",
        "1 while the bot's Matrix session is in force; 0 once the homeserver ended it, until a new login.",
        &[("", u64::from(figures.matrix_logged_in))],
    );
    metric(
        "passerelle_groups_approved",
        "gauge",
        "Groups approved by a file in groups.d.",
        &[("", figures.groups_approved)],
    );
    metric(
        "passerelle_groups_bridged",
        "gauge",
        "Approved groups whose Matrix room is set up.",
        &[("", figures.groups_bridged)],
    );
    out
}

/// Answers `GET /metrics` until the task is aborted.
pub async fn serve(listener: TcpListener, source: Arc<dyn FigureSource>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!("metrics: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let source = Arc::clone(&source);
        tokio::spawn(async move {
            if let Err(error) = answer(stream, source.as_ref()).await {
                tracing::debug!("metrics: {error}");
            }
        });
    }
}

async fn answer(
    mut stream: tokio::net::TcpStream,
    source: &dyn FigureSource,
) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buffer = [0u8; 1024];
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buffer).await?;
            if n == 0 || request.len() + n > MAX_REQUEST_BYTES {
                break;
            }
            request.extend_from_slice(&buffer[..n]);
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return Ok(());
    }
    let line = request.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (status, body) = match (parts.next(), parts.next()) {
        (Some("GET"), Some("/metrics")) => ("200 OK", render(&source.figures())),
        (Some("GET"), Some(_)) => ("404 Not Found", "only /metrics here\n".to_string()),
        _ => ("405 Method Not Allowed", "GET /metrics\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_render_as_prometheus_text() {
        let figures = Figures {
            to_matrix: QueueFigures {
                waiting: 0,
                oldest_age_secs: 0,
                relayed_total: 12,
            },
            to_whatsapp: QueueFigures {
                waiting: 3,
                oldest_age_secs: 42,
                relayed_total: 7,
            },
            set_aside: 1,
            forgeries_refused: 4,
            whatsapp_connected: false,
            matrix_logged_in: false,
            groups_approved: 2,
            groups_bridged: 1,
        };
        let text = render(&figures);
        for line in [
            "# TYPE passerelle_queue_messages gauge",
            "passerelle_queue_messages{direction=\"to_whatsapp\"} 3",
            "passerelle_queue_oldest_age_seconds{direction=\"to_whatsapp\"} 42",
            "passerelle_relayed_messages_total{direction=\"to_matrix\"} 12",
            "passerelle_set_aside_messages 1",
            "passerelle_forged_changes_refused_total 4",
            "passerelle_whatsapp_connected 0",
            "passerelle_matrix_logged_in 0",
            "passerelle_groups_bridged 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}
