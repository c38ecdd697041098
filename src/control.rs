//! The admin control socket: a Unix socket in the state directory through which the
//! admin commands (`passerelle groups`, `passerelle join`) ask the running service,
//! which holds the only WhatsApp connection of the linked device (a second connection
//! would replace it). One JSON request line in, one JSON reply line out.
//!
//! Only the service's own user (and root) can reach it: the socket is 0600 inside the
//! 0700 state directory.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use crate::whatsapp::{GroupSummary, JoinOutcome};

/// File name of the socket in the state directory.
pub const SOCKET_NAME: &str = "control.sock";

/// Longest request line accepted (an invite link is far shorter).
const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// How long a client waits for the service's answer (joining asks WhatsApp).
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// What an admin command asks the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// The groups the linked number is a member of.
    Groups,
    /// Join a group by invite link.
    Join { invite: String },
}

/// The service's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Groups { groups: Vec<GroupSummary> },
    Join { outcome: JoinOutcome },
    Error { message: String },
}

/// Why the control socket could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "passerelle is not running (nothing answers on {0}); start it first \
         (systemctl start passerelle)"
    )]
    NotRunning(PathBuf),
    #[error("another passerelle already runs with this state directory ({0})")]
    AlreadyRunning(PathBuf),
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {path}: unreadable answer: {detail}")]
    Protocol { path: PathBuf, detail: String },
}

/// The service side: answers requests.
#[async_trait]
pub trait ControlHandler: Send + Sync {
    async fn handle(&self, request: Request) -> Reply;
}

/// The socket's path for a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_NAME)
}

/// Binds the socket (0600). A socket left behind by a crashed service is replaced;
/// one that answers means another service uses this state directory, which is
/// refused: two services would fight over the same WhatsApp device.
pub fn bind(state_dir: &Path) -> Result<UnixListener, ControlError> {
    let path = socket_path(state_dir);
    let io = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    if let Ok(metadata) = std::fs::symlink_metadata(&path) {
        if !metadata.file_type().is_socket() {
            return Err(io(std::io::Error::other(
                "exists and is not a socket; remove it",
            )));
        }
        if UnixStream::connect(&path).is_ok() {
            return Err(ControlError::AlreadyRunning(state_dir.to_path_buf()));
        }
        std::fs::remove_file(&path).map_err(io)?;
    }
    let listener = UnixListener::bind(&path).map_err(io)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Serves requests until the task is aborted; each connection is answered on its own
/// task, so a slow WhatsApp query does not hold up the next admin.
pub async fn serve(listener: UnixListener, handler: Arc<dyn ControlHandler>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!("control socket: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            if let Err(error) = answer(stream, handler.as_ref()).await {
                tracing::warn!("control socket: {error}");
            }
        });
    }
}

async fn answer(
    stream: tokio::net::UnixStream,
    handler: &dyn ControlHandler,
) -> std::io::Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut line = String::new();
    tokio::io::BufReader::new(reader.take(MAX_REQUEST_BYTES))
        .read_line(&mut line)
        .await?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(request) => handler.handle(request).await,
        Err(error) => Reply::Error {
            message: format!("malformed request: {error}"),
        },
    };
    let mut text = serde_json::to_string(&reply).map_err(std::io::Error::other)?;
    text.push('\n');
    writer.write_all(text.as_bytes()).await?;
    writer.shutdown().await
}

/// The admin side: sends one request to the running service and waits for its reply.
pub fn ask(state_dir: &Path, request: &Request) -> Result<Reply, ControlError> {
    let path = socket_path(state_dir);
    let io = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    let mut stream = UnixStream::connect(&path).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ControlError::NotRunning(path.clone())
        }
        _ => io(error),
    })?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(io)?;
    let mut text = serde_json::to_string(request).map_err(|error| io(error.into()))?;
    text.push('\n');
    stream.write_all(text.as_bytes()).map_err(io)?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).map_err(io)?;
    serde_json::from_str(&line).map_err(|error| ControlError::Protocol {
        path: path.clone(),
        detail: error.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;

    #[async_trait]
    impl ControlHandler for Echo {
        async fn handle(&self, request: Request) -> Reply {
            match request {
                Request::Groups => Reply::Groups {
                    groups: vec![GroupSummary {
                        jid: "1203630001@g.us".into(),
                        subject: "Famille".into(),
                        participants: 3,
                    }],
                },
                Request::Join { invite } => Reply::Error { message: invite },
            }
        }
    }

    #[tokio::test]
    async fn a_request_gets_its_reply_and_the_socket_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let listener = bind(dir.path()).unwrap();
        let mode = std::fs::metadata(socket_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let server = tokio::spawn(serve(listener, Arc::new(Echo)));
        let state_dir = dir.path().to_path_buf();
        let (groups, join) = tokio::task::spawn_blocking(move || {
            (
                ask(&state_dir, &Request::Groups).unwrap(),
                ask(
                    &state_dir,
                    &Request::Join {
                        invite: "https://chat.whatsapp.com/X".into(),
                    },
                )
                .unwrap(),
            )
        })
        .await
        .unwrap();
        assert_eq!(
            groups,
            Reply::Groups {
                groups: vec![GroupSummary {
                    jid: "1203630001@g.us".into(),
                    subject: "Famille".into(),
                    participants: 3,
                }]
            }
        );
        assert_eq!(
            join,
            Reply::Error {
                message: "https://chat.whatsapp.com/X".into()
            }
        );

        // A second service on the same state directory is refused while this one
        // answers; once it is gone, its leftover socket is replaced.
        assert!(matches!(
            bind(dir.path()),
            Err(ControlError::AlreadyRunning(_))
        ));
        server.abort();
        let _ = server.await;
        bind(dir.path()).unwrap();
    }

    #[tokio::test]
    async fn nothing_listening_means_not_running_and_garbage_gets_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let missing = tokio::task::spawn_blocking(move || ask(&path, &Request::Groups))
            .await
            .unwrap();
        assert!(matches!(missing, Err(ControlError::NotRunning(_))));

        let listener = bind(dir.path()).unwrap();
        let server = tokio::spawn(serve(listener, Arc::new(Echo)));
        let path = socket_path(dir.path());
        let reply = tokio::task::spawn_blocking(move || {
            let mut stream = UnixStream::connect(path).unwrap();
            stream.write_all(b"{\"command\": \"reboot\"}\n").unwrap();
            let mut line = String::new();
            BufReader::new(stream).read_line(&mut line).unwrap();
            serde_json::from_str::<Reply>(&line).unwrap()
        })
        .await
        .unwrap();
        assert!(
            matches!(&reply, Reply::Error { message } if message.starts_with("malformed request")),
            "{reply:?}"
        );
        server.abort();
    }
}
