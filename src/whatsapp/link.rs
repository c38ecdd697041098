//! Linking the association's WhatsApp number to passerelle as a companion device, by
//! QR code or pair code (`passerelle login`): the only time a human has to act on the
//! WhatsApp side. The device keys land in `whatsapp.db`; the service uses them after.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use whatsapp_rust::bot::Bot;
use whatsapp_rust::pair_code::PairCodeOptions;
use whatsapp_rust::store::traits::{Backend, DeviceStore};
use whatsapp_rust::types::events::{Event, EventHandler};

use super::real::{PUSH_NAME, WHATSAPP_WEB_VERSION};
use super::store::{SqliteBackend, WaStoreError};

/// How long a login attempt may take in all (QR codes rotate meanwhile).
const LINK_TIMEOUT: Duration = Duration::from_secs(300);
/// After the pairing succeeded, how long to wait for the first real login.
const FIRST_LOGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// How to link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkMethod {
    /// Show QR codes to scan with the phone (WhatsApp > Linked devices).
    Qr,
    /// Show a code to type on the phone; the number is digits with country code.
    PairCode { phone: String },
}

/// What the admin must see while linking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkPrompt {
    /// A new QR code (they rotate): its payload and how long it stays valid.
    Qr { code: String, valid_for: Duration },
    /// The code to type on the phone.
    PairCode { code: String, valid_for: Duration },
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("already linked to +{0} (use --force to link again)")]
    AlreadyLinked(String),
    #[error("WhatsApp key store: {0}")]
    Store(#[from] WaStoreError),
    #[error("WhatsApp key store: {0}")]
    Backend(String),
    #[error("could not start the WhatsApp client: {0}")]
    Build(String),
    #[error("linking failed: {0}")]
    Refused(String),
    #[error("no phone linked the device in time (QR codes exhausted or timeout)")]
    TimedOut,
    #[error(transparent)]
    Server(#[from] super::server::ServerError),
    #[error("removing the old link: {0}")]
    Io(#[from] std::io::Error),
}

/// The number a device store is linked to, if any (digits only).
pub fn linked_number(state_dir: &Path) -> Result<Option<String>, LinkError> {
    Ok(SqliteBackend::linked_number_at(&db_path(state_dir))?)
}

async fn linked_in(backend: &SqliteBackend) -> Result<Option<String>, LinkError> {
    let device = backend
        .load()
        .await
        .map_err(|e| LinkError::Backend(e.to_string()))?;
    Ok(device
        .filter(|device| device.is_registered())
        .and_then(|device| device.pn.map(|pn| pn.user.to_string())))
}

fn db_path(state_dir: &Path) -> PathBuf {
    state_dir.join("whatsapp.db")
}

/// Forwards the pairing events of whatsapp-rust to the linking loop.
struct Forward(mpsc::UnboundedSender<Arc<Event>>);

impl EventHandler for Forward {
    fn handle_event(&self, event: Arc<Event>) {
        let _ = self.0.send(event);
    }
}

/// Links the number: shows prompts through `prompt` until a phone links the device,
/// waits for its first login (so the keys are complete), and returns the number.
/// Refuses when already linked, unless `force`, which starts from a fresh device.
pub async fn link(
    state_dir: &Path,
    url: Option<&str>,
    method: LinkMethod,
    force: bool,
    mut prompt: impl FnMut(LinkPrompt),
) -> Result<String, LinkError> {
    let transport = super::server::transport_for(url)?;
    crate::secret_file::create_private_dir(state_dir)?;
    let path = db_path(state_dir);
    if path.exists() {
        let backend = SqliteBackend::open(&path)?;
        if let Some(number) = linked_in(&backend).await? {
            if !force {
                return Err(LinkError::AlreadyLinked(number));
            }
            drop(backend);
            for suffix in ["", "-wal", "-shm"] {
                let mut file = path.as_os_str().to_owned();
                file.push(suffix);
                match std::fs::remove_file(&file) {
                    Ok(()) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => return Err(error.into()),
                }
            }
        }
    }
    let backend: Arc<dyn Backend> = Arc::new(SqliteBackend::open(&path)?);
    let (sender, mut events) = mpsc::unbounded_channel();
    let mut builder = Bot::builder()
        .with_backend_arc(backend)
        .with_version(WHATSAPP_WEB_VERSION)
        .with_push_name(PUSH_NAME)
        .skip_history_sync()
        .with_event_handler(Forward(sender));
    if let LinkMethod::PairCode { phone } = &method {
        let options = PairCodeOptions {
            phone_number: phone.trim_start_matches('+').to_string(),
            ..PairCodeOptions::default()
        };
        builder = builder.with_pair_code(options);
    }
    if let Some(transport) = transport {
        builder = builder.with_transport_factory(transport);
    }
    let bot = builder
        .build()
        .await
        .map_err(|e| LinkError::Build(e.to_string()))?;
    let handle = bot.spawn();

    let outcome = tokio::time::timeout(LINK_TIMEOUT, async {
        let mut paired: Option<String> = None;
        while let Some(event) = events.recv().await {
            match &*event {
                Event::PairingQrCode(qr) if method == LinkMethod::Qr => prompt(LinkPrompt::Qr {
                    code: qr.code.clone(),
                    valid_for: qr.timeout,
                }),
                Event::PairingCode(code) => prompt(LinkPrompt::PairCode {
                    code: code.code.clone(),
                    valid_for: code.timeout,
                }),
                Event::PairSuccess(success) => {
                    paired = Some(success.id.user.to_string());
                    tracing::info!("device linked; waiting for its first login");
                    break;
                }
                Event::PairError(error) => return Err(LinkError::Refused(error.error.clone())),
                Event::PairingCodeError(error) => {
                    return Err(LinkError::Refused(format!("{error:?}")))
                }
                Event::PairingQrCodesExhausted(_) => return Err(LinkError::TimedOut),
                _ => {}
            }
        }
        let Some(number) = paired else {
            return Err(LinkError::TimedOut);
        };
        // After pairing, WhatsApp closes the stream (515) and the client logs in for
        // real; wait for that so the device is fully set up before we stop.
        let connected = tokio::time::timeout(FIRST_LOGIN_TIMEOUT, async {
            while let Some(event) = events.recv().await {
                if matches!(&*event, Event::Connected(_)) {
                    return true;
                }
            }
            false
        })
        .await;
        if !matches!(connected, Ok(true)) {
            tracing::warn!("the linked device did not log in yet; the service will retry");
        }
        Ok(number)
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(10), handle.shutdown()).await;
    match outcome {
        Ok(result) => result,
        Err(_) => Err(LinkError::TimedOut),
    }
}
