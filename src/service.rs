//! The service's lifecycle: loads the configuration, connects both sides, starts the
//! bridge's tasks, and obeys signals (SIGHUP reloads, SIGTERM and SIGINT stop) until
//! shutdown. What the bridge does with messages lives in `crate::bridge`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::bridge::{now_ms, Bridge};
use crate::config::{self, Problems};
use crate::control::{self, ControlError, ControlHandler};
use crate::matrix::{MatrixEvents, MatrixSide};
use crate::metrics;
use crate::secret_file;
use crate::status;
use crate::store::{Direction, Store};
use crate::whatsapp::fake::FakeNetwork;
use crate::whatsapp::real::{RealOptions, RealWhatsApp};
use crate::whatsapp::{InboundSink, WhatsAppClient};

pub use crate::bridge::ReloadOutcome;

/// Why the service could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Config(#[from] Problems),
    #[error("state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Matrix(#[from] crate::matrix::MatrixError),
    #[error("WhatsApp: {0}")]
    WhatsApp(String),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Which WhatsApp network the service talks to.
pub enum WhatsAppNetwork {
    /// whatsapp-rust, the real protocol (production).
    Real,
    /// The in-process fake network (tests of the core).
    Fake(Arc<FakeNetwork>),
}

/// A running passerelle.
pub struct Service {
    bridge: Arc<Bridge>,
    control_socket: PathBuf,
    tasks: Vec<JoinHandle<()>>,
    real_whatsapp: Option<Arc<RealWhatsApp>>,
    fake_whatsapp: Option<Arc<FakeNetwork>>,
}

impl Service {
    /// Loads the configuration, connects to Matrix and WhatsApp and starts relaying.
    pub async fn start(
        config_path: &Path,
        network: WhatsAppNetwork,
    ) -> Result<Service, ServiceError> {
        let (config, groups) = config::load_all(config_path)?;
        let state_dir = config.paths.state_dir.clone();
        secret_file::create_private_dir(&state_dir).map_err(|source| ServiceError::StateDir {
            path: state_dir.clone(),
            source,
        })?;
        // Before anything connects: a second service on this state directory would
        // replace the first one's WhatsApp connection.
        let control_listener = control::bind(&state_dir)?;
        let metrics_listener = match config.metrics.listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServiceError::Metrics { addr, source })?,
            ),
            None => None,
        };
        let store = Arc::new(Store::open(&state_dir.join("passerelle.db"))?);
        store.delete_meta(status::keys::STOPPED)?;
        let matrix = MatrixSide::connect(&config.matrix, &state_dir, store.clone()).await?;
        let whatsapp_url = config.whatsapp.url.clone();
        let bridge = Bridge::new(config_path, store, matrix, config, groups);

        let sink: Arc<dyn InboundSink> = bridge.clone();
        let (client, real_whatsapp, fake_whatsapp) = match network {
            WhatsAppNetwork::Fake(network) => {
                let client = network.client();
                (client, None, Some(network))
            }
            WhatsAppNetwork::Real => {
                let options = RealOptions {
                    url: whatsapp_url,
                    state_dir: state_dir.clone(),
                };
                let real = RealWhatsApp::start(options, sink.clone())
                    .await
                    .map_err(|e| ServiceError::WhatsApp(e.to_string()))?;
                let client: Arc<dyn WhatsAppClient> = real.clone();
                (client, Some(real), None)
            }
        };
        bridge.attach_whatsapp(client);

        // First start: learn the rooms' current state without relaying their history.
        if bridge.store.get_meta("matrix.synced")?.is_none() {
            bridge.matrix.initial_sync().await?;
            bridge.store.set_meta("matrix.synced", "1")?;
        }
        let groups = bridge.set_up_all_rooms().await;

        let events: Arc<dyn MatrixEvents> = bridge.clone();
        let mut tasks = bridge.matrix.start_sync(events);
        tasks.extend(bridge.spawn_workers());
        let handler: Arc<dyn ControlHandler> = bridge.clone();
        tasks.push(tokio::spawn(control::serve(control_listener, handler)));
        if let Some(listener) = metrics_listener {
            let source: Arc<dyn metrics::FigureSource> = bridge.clone();
            tasks.push(tokio::spawn(metrics::serve(listener, source)));
        }
        if let Some(network) = &fake_whatsapp {
            network.attach(sink);
        }
        tracing::info!(groups, "passerelle started");
        Ok(Service {
            bridge,
            control_socket: control::socket_path(&state_dir),
            tasks,
            real_whatsapp,
            fake_whatsapp,
        })
    }

    /// Re-reads config.toml and groups.d. On any problem the running configuration
    /// stays exactly as it was and the problems are returned (and logged).
    pub async fn reload(&self) -> Result<ReloadOutcome, Problems> {
        self.bridge.reload().await
    }

    /// The Matrix room bridged to a group, once set up.
    pub fn room_for_group(&self, group_jid: &str) -> Option<String> {
        self.bridge.store.room_for_group(group_jid).ok().flatten()
    }

    /// Messages waiting in each outbox: (to Matrix, to WhatsApp).
    pub fn pending(&self) -> (u64, u64) {
        let count = |direction| {
            self.bridge
                .store
                .queue_stats(direction)
                .map(|(count, _)| count)
                .unwrap_or(0)
        };
        (count(Direction::ToMatrix), count(Direction::ToWhatsApp))
    }

    /// Stops relaying; what is queued stays queued for the next start.
    pub async fn shutdown(self) {
        if let Some(network) = &self.fake_whatsapp {
            network.detach();
        }
        if let Some(real) = &self.real_whatsapp {
            real.shutdown().await;
        }
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
        self.bridge.matrix.stop();
        if let Err(error) = std::fs::remove_file(&self.control_socket) {
            tracing::debug!("control socket: {error}");
        }
        let now = (now_ms() / 1000).to_string();
        if let Err(error) = self.bridge.store.set_meta(status::keys::STOPPED, &now) {
            tracing::warn!("store: {error}");
        }
    }

    /// Runs until SIGTERM or SIGINT (`Ok`), or until it cannot go on (`Err` with
    /// why: the Matrix session ended and cannot be renewed); SIGHUP reloads.
    /// `signals` are installed before the service starts, so a reload requested
    /// during start-up is applied after it rather than killing the process
    /// (SIGHUP's default action). What waits stays queued either way.
    pub async fn run_until_signalled(self, mut signals: Signals) -> Result<(), String> {
        let outcome = loop {
            tokio::select! {
                _ = signals.hangup.recv() => {
                    tracing::info!("SIGHUP: reloading configuration");
                    let _ = self.reload().await;
                }
                _ = signals.terminate.recv() => break Ok(()),
                _ = signals.interrupt.recv() => break Ok(()),
                why = self.bridge.failed() => break Err(why),
            }
        };
        tracing::info!("stopping");
        self.shutdown().await;
        outcome
    }
}

/// The signals the service obeys, installed early (see `run_until_signalled`).
pub struct Signals {
    hangup: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            hangup: signal(SignalKind::hangup())?,
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }
}
