//! Starting and stopping the whole server: store, media workers, front threads.
//!
//! [`Server::start`] binds the listener and spawns every thread; it returns once
//! the server is ready (so tests can connect at once). [`Server::shutdown`] stops
//! accepting, closes signaling sessions with 1012, stops the workers and flushes
//! the store, within a bounded time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::app::{App, ConnectionLimits};
use crate::audit::AuditSink;
use crate::auth::{SessionTokenVerifier, TicketKey, UsedTickets};
use crate::config::Config;
use crate::directory::Directory;
use crate::engine::{EngineConfig, EngineControl};
use crate::front::{FrontThread, TlsConfig};
use crate::housekeeping::Housekeeping;
use crate::metrics::Metrics;
use crate::moderation::{Moderation, ModerationChange};
use crate::ratelimit::KeyedLimiter;
use crate::store::{Store, StoreHandle};
use crate::worker::{UdpSettings, Worker};

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    /// The listener could not be bound.
    Bind(SocketAddr, std::io::Error),
    /// TLS certificate or key unusable.
    Tls(String),
    /// The session-token settings are unusable.
    Auth(String),
    /// The store could not be opened.
    Store(String),
    /// A thread could not be started.
    Thread(std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Bind(a, e) => write!(f, "cannot listen on {a}: {e}"),
            StartError::Tls(e) => write!(f, "TLS: {e}"),
            StartError::Auth(e) => write!(f, "session tokens: {e}"),
            StartError::Store(e) => write!(f, "store: {e}"),
            StartError::Thread(e) => write!(f, "cannot start a thread: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A running server.
pub struct Server {
    app: Arc<App>,
    local_addr: SocketAddr,
    fronts: Vec<FrontThread>,
    workers: Vec<Worker>,
    tls: TlsConfig,
    store: StoreHandle,
    housekeeping: Option<Housekeeping>,
    front_shutdown: Arc<AtomicBool>,
    worker_shutdown: Arc<AtomicBool>,
}

#[expect(
    clippy::disallowed_methods,
    reason = "start-up reads the wall clock once"
)]
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Loads the TLS certificate chain and key (PEM) into a rustls config (ring).
pub fn load_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

impl Server {
    /// Starts everything; returns when the server accepts connections.
    pub fn start(config: Config) -> Result<Self, StartError> {
        let tls_cfg = match &config.tls {
            Some(t) => Some(load_tls(&t.cert_path, &t.key_path).map_err(StartError::Tls)?),
            None => None,
        };
        let tls: TlsConfig = Arc::new(std::sync::RwLock::new(tls_cfg));
        let store = Store::open(&config.data_dir).map_err(|e| StartError::Store(e.to_string()))?;
        let used_tickets =
            UsedTickets::load(&store, unix_now()).map_err(|e| StartError::Store(e.to_string()))?;
        let moderation = Arc::new(Moderation::new());
        let snapshot = store
            .load_moderation()
            .map_err(|e| StartError::Store(e.to_string()))?;
        log::info!(
            "moderation state loaded: {} bans, {} timeouts, {} locks",
            snapshot.bans.len(),
            snapshot.timeouts.len(),
            snapshot.locks.len()
        );
        for b in snapshot.bans {
            moderation.apply(&ModerationChange::PutBan(b));
        }
        for t in snapshot.timeouts {
            moderation.apply(&ModerationChange::PutTimeout(t));
        }
        for l in snapshot.locks {
            moderation.apply(&ModerationChange::PutLock(l));
        }
        let session_tokens = SessionTokenVerifier::new(&config.session_tokens)
            .map_err(|e| StartError::Auth(e.to_string()))?;
        let listener = std::net::TcpListener::bind(config.listen)
            .map_err(|e| StartError::Bind(config.listen, e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| StartError::Bind(config.listen, e))?;

        let workers_n = config.media.workers.max(1);
        let metrics = Arc::new(Metrics::new(workers_n));
        let directory = Arc::new(Directory::new(workers_n));
        let worker_shutdown = Arc::new(AtomicBool::new(false));
        let audit = AuditSink::new(store.clone(), metrics.clone());
        let control = EngineControl {
            moderation: moderation.clone(),
            audit: audit.clone(),
        };
        let mut workers = Vec::with_capacity(workers_n);
        for worker_id in 0..workers_n {
            let cfg = EngineConfig {
                worker_id,
                participants_per_channel: config.limits.participants_per_channel,
                tracks_per_participant: config.limits.tracks_per_participant,
                reconnect_grace: Duration::from_millis(config.limits.reconnect_grace_ms),
                ice_disconnect_grace: Duration::from_millis(config.limits.ice_disconnect_grace_ms),
                room_linger: Duration::from_secs(60),
            };
            let port = match config.media.port_base {
                0 => 0,
                base => base.saturating_add(worker_id as u16),
            };
            let udp = UdpSettings {
                bind: std::net::SocketAddr::new(config.media.bind_ip, port),
                public_ip: config.media.public_ip,
            };
            workers.push(
                Worker::spawn_with(
                    cfg,
                    udp,
                    config.limits.worker_queue,
                    directory.clone(),
                    metrics.clone(),
                    worker_shutdown.clone(),
                    Some(control.clone()),
                )
                .map_err(StartError::Thread)?,
            );
        }
        let l = &config.limits;
        let app = Arc::new(App {
            tickets: TicketKey::new(config.secrets.ticket_key.clone()),
            used_tickets,
            session_tokens,
            directory,
            workers: workers.iter().map(|w| w.handle.clone()).collect(),
            metrics,
            ticket_rate_user: KeyedLimiter::per_minute(l.ticket_rate_per_user_per_min, 100_000),
            ticket_rate_ip: KeyedLimiter::per_minute(l.ticket_rate_per_ip_per_min, 100_000),
            connections: Arc::new(ConnectionLimits::new(
                l.max_connections,
                l.max_connections_per_ip,
            )),
            store: store.clone(),
            moderation: moderation.clone(),
            audit,
            ready: AtomicBool::new(false),
            config,
        });
        let housekeeping =
            Housekeeping::spawn(moderation, store.clone(), app.config.audit_retention_days)
                .map_err(StartError::Thread)?;
        let front_shutdown = Arc::new(AtomicBool::new(false));
        let mut fronts = Vec::new();
        for i in 0..app.config.front_threads.max(1) {
            fronts.push(
                FrontThread::spawn(
                    i,
                    &listener,
                    app.clone(),
                    tls.clone(),
                    front_shutdown.clone(),
                )
                .map_err(StartError::Thread)?,
            );
        }
        app.ready.store(true, Ordering::Release);
        log::info!(
            "prism listening on {}{} ({} front threads, {} media workers, mode {:?})",
            local_addr,
            if app.config.tls.is_some() {
                " (TLS)"
            } else {
                ""
            },
            fronts.len(),
            workers.len(),
            app.config.mode
        );
        Ok(Self {
            app,
            local_addr,
            fronts,
            workers,
            tls,
            store,
            housekeeping: Some(housekeeping),
            front_shutdown,
            worker_shutdown,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The shared state (tests and tools).
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Re-reads the TLS certificate and key (SIGHUP). New connections use them.
    pub fn reload_tls(&self) -> Result<(), String> {
        let Some(t) = &self.app.config.tls else {
            return Ok(());
        };
        let cfg = load_tls(&t.cert_path, &t.key_path)?;
        match self.tls.write() {
            Ok(mut g) => *g = Some(cfg),
            Err(p) => *p.into_inner() = Some(cfg),
        }
        log::info!("TLS certificate reloaded");
        Ok(())
    }

    /// Graceful stop: not ready, sessions closed with 1012, workers stopped,
    /// store flushed.
    pub fn shutdown(self) {
        log::info!("shutting down");
        self.app.ready.store(false, Ordering::Release);
        self.front_shutdown.store(true, Ordering::Release);
        for f in self.fronts {
            f.join();
        }
        self.worker_shutdown.store(true, Ordering::Release);
        for w in self.workers {
            w.join();
        }
        if let Some(h) = self.housekeeping {
            h.stop();
        }
        self.store.shutdown();
        log::info!("stopped");
    }
}
