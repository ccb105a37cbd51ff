//! Builds the gateway from a validated config: opens the store and restores usage
//! (tokenizer vocabularies are read by the first request that needs one), starts the ledger, binds the public and admin listeners, and shuts
//! down gracefully: in-flight requests and streams get a grace period, then are cut, and
//! the ledger writes what is left before the store closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::listener::ConnectionLimits;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::background::Background;
use crate::config::Config;
use crate::gateway::Gateway;
use crate::providers::SetupError;
use crate::store::{SledStore, Store, StoreError, Watched};
use crate::workers::Workers;

/// How long a shutdown waits for in-flight requests before cutting them.
/// Time cut work gets to write its last frames and records.
const CUT_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}; is another process using the port? ({key})")]
    Bind {
        addr: SocketAddr,
        key: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}; give a readable PEM file, or remove the setting to serve plain HTTP")]
    Tls(#[from] crate::tls::TlsError),
    #[error("the start-up task failed: {0}")]
    Task(String),
    #[error("{0} ([state]); start Valkey or Redis there, or set backend = \"local\" to run alone")]
    SharedState(String),
    #[error(
        "the admin token in {var} is {why}; use at least {MIN_ADMIN_TOKEN} characters, e.g. `openssl rand -hex 16`, or unset {var} to run without the admin API"
    )]
    WeakAdminToken { var: String, why: &'static str },
}

/// Admin tokens shorter than this are refused: the admin API can stop every tenant.
pub const MIN_ADMIN_TOKEN: usize = 16;

/// A running gateway.
pub struct Daemon {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    /// `https` or `http`, for the public and the admin listener.
    schemes: (&'static str, &'static str),
    gateway: Arc<Gateway>,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    /// The threads that serve the public API's connections.
    workers: Arc<Workers>,
    ledger: Background,
    cache_writer: Background,
    responses_writer: Background,
    audit_writer: Background,
}

impl Daemon {
    /// Builds the gateway and starts serving on `server.listen`, and the admin API on
    /// `server.admin_listen` when the variable `server.admin_token_env` names is set.
    pub async fn start(config: Config) -> Result<Daemon, StartError> {
        let admin_token = std::env::var(&config.admin.token_env)
            .ok()
            .filter(|t| !t.is_empty());
        if let Some(token) = &admin_token {
            let why = if token.trim().is_empty() {
                Some("only whitespace")
            } else if token.trim().chars().count() < MIN_ADMIN_TOKEN {
                Some("too short")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(StartError::WeakAdminToken {
                    var: config.admin.token_env.clone(),
                    why,
                });
            }
        }
        if admin_token.is_none() {
            tracing::warn!(
                "the admin API is off: set {} to a secret token to turn it on",
                config.admin.token_env
            );
        }
        Daemon::start_with_admin_token(config, admin_token).await
    }

    /// Same, with the admin token given rather than read from the environment.
    pub async fn start_with_admin_token(
        config: Config,
        admin_token: Option<String>,
    ) -> Result<Daemon, StartError> {
        // Certificates first: a bad file stops the start before anything is opened.
        let tls = match &config.server.tls {
            Some(files) => Some(crate::tls::acceptor(files, "server.tls")?),
            None => None,
        };
        let admin_tls = match &config.admin.tls {
            Some(files) if admin_token.is_some() => {
                Some(crate::tls::acceptor(files, "server.admin_tls")?)
            }
            _ => None,
        };
        if admin_token.is_some() && admin_tls.is_none() && !config.admin.listen.ip().is_loopback() {
            tracing::warn!(
                addr = %config.admin.listen,
                "the admin API listens beyond this machine without TLS, so its token crosses the network in clear; set server.admin_tls_cert and server.admin_tls_key"
            );
        }
        let schemes = (scheme(&tls), scheme(&admin_tls));
        let data_dir = config.server.data_dir.clone();
        let sled = tokio::task::spawn_blocking(move || SledStore::open(&data_dir))
            .await
            .map_err(|e| StartError::Task(e.to_string()))??;
        let usage = sled.load_usage()?;
        let cached = crate::cache::persist::load(&sled)?;

        let (listen, admin_listen) = (config.server.listen, config.admin.listen);
        let checkpoint = config.checkpoint_interval;
        let gateway = Arc::new(Gateway::new(config)?);
        let store: Arc<dyn Store> = Arc::new(Watched {
            inner: sled,
            health: gateway.persistence().clone(),
        });
        gateway.admission().restore(&usage);
        gateway.cache().restore(cached);
        gateway.attach_store(store.clone());
        gateway.restore_keys(store.load_keys()?);
        gateway.restore_overrides(store.load_overrides()?);
        let cache_writer =
            crate::cache::persist::spawn_writer(gateway.cache().clone(), store.clone());
        let responses_writer =
            crate::gateway::conversations::spawn_writer(gateway.conversations(), store.clone());
        gateway.conversations().restore(store.load_responses()?);
        gateway.files().restore(store.load_files()?);
        gateway.restore_batches(store.load_batches()?);
        restore_collections(&gateway, store.as_ref())?;
        gateway
            .flow_runs()
            .restore_values(store.load_flow_values()?);
        gateway.restore_flow_runs(store.load_flow_runs()?);
        let audit_writer = crate::audit::spawn_writer(gateway.audit().clone(), store.clone());
        let ledger = crate::ledger::spawn(gateway.admission().clone(), store, checkpoint);

        let (stop, stopped) = watch::channel(false);
        let mut servers = vec![
            tokio::spawn(health_probes(gateway.clone(), stopped.clone())),
            tokio::spawn(drain_deadlines(gateway.clone(), stopped.clone())),
            tokio::spawn(every_second(gateway.clone(), stopped.clone())),
        ];
        let state = &gateway.config().state;
        if state.backend != crate::domain::StateBackend::Local {
            let data_dir = &gateway.config().server.data_dir;
            let replica =
                crate::state::replica_id(state, data_dir).map_err(StartError::SharedState)?;
            let shared = crate::state::Shared::connect(state, replica, gateway.admission().clone())
                .await
                .map_err(StartError::SharedState)?;
            let shared = Arc::new(shared);
            tracing::info!(
                replica = shared.replica(),
                "limits and budgets are shared with the cluster"
            );
            gateway.attach_shared(shared);
            gateway.join_cluster().await;
            servers.push(tokio::spawn(
                gateway.clone().follow_cluster(stopped.clone()),
            ));
        }
        let connections = gateway.config().server.connections;
        let workers = Workers::start(gateway.config().server.workers)
            .map(Arc::new)
            .map_err(|e| StartError::Task(format!("cannot start the connection workers: {e}")))?;
        gateway.attach_workers(workers.occupancy());
        let (addr, task) = serve(
            listen,
            "server.listen",
            crate::api::router(gateway.clone()),
            connections,
            tls,
            Some(workers.clone()),
            stopped.clone(),
        )
        .await?;
        servers.push(task);
        tracing::info!(%addr, "switchyard is listening");
        if let Some(shared) = gateway.shared() {
            let seen = Arc::downgrade(&gateway);
            let about = move || {
                let in_flight = seen.upgrade().map_or(0, |g| g.shutdown().running());
                serde_json::json!({
                    "listen": addr.to_string(),
                    "in_flight": in_flight,
                    "version": env!("CARGO_PKG_VERSION"),
                })
            };
            servers.push(tokio::spawn(shared.clone().run(about, stopped.clone())));
        }

        let admin_addr = match admin_token {
            Some(token) => {
                let app = crate::admin::router(gateway.clone(), &token);
                let limits = ConnectionLimits {
                    max_connections: ADMIN_CONNECTIONS,
                    max_per_address: ADMIN_CONNECTIONS_PER_ADDRESS,
                    ..connections
                };
                let (admin_addr, task) = serve(
                    admin_listen,
                    "server.admin_listen",
                    app,
                    limits,
                    admin_tls,
                    None,
                    stopped,
                )
                .await?;
                servers.push(task);
                tracing::info!(addr = %admin_addr, "admin API is listening");
                Some(admin_addr)
            }
            None => None,
        };
        Ok(Daemon {
            addr,
            admin_addr,
            schemes,
            gateway,
            stop,
            servers,
            workers,
            ledger,
            cache_writer,
            responses_writer,
            audit_writer,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` (or `https://`), the base for clients (`/v1` is appended by them).
    pub fn url(&self) -> String {
        format!("{}://{}", self.schemes.0, self.addr)
    }

    /// `http://ADDR` (or `https://`) of the admin API, when it runs.
    pub fn admin_url(&self) -> Option<String> {
        self.admin_addr.map(|a| format!("{}://{a}", self.schemes.1))
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Stops as `server.shutdown_grace` says.
    pub async fn shutdown(self) {
        let grace = self.gateway.config().server.shutdown_grace;
        self.stop(grace).await;
    }

    /// Stops accepting, lets requests and streams in flight finish within `grace`, then
    /// cuts what remains (streams end with an SSE error, requests get 503), waits for
    /// all of it to be settled and recorded, and only then flushes the writers: usage,
    /// cache and audit records of everything that ran are kept.
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        let shutdown = self.gateway.shutdown().clone();
        shutdown.begin();
        if tokio::time::timeout(grace, shutdown.idle()).await.is_err() {
            tracing::warn!(
                running = shutdown.running(),
                grace = %crate::config::format_duration(grace),
                "requests and streams outlived the shutdown grace period; cutting them"
            );
            shutdown.cut();
            if tokio::time::timeout(CUT_WAIT, shutdown.idle())
                .await
                .is_err()
            {
                tracing::error!(
                    running = shutdown.running(),
                    "work still running after the cut; stopping without it"
                );
            }
        }
        for mut task in self.servers {
            // Connections end once their last response has been written.
            if tokio::time::timeout(CUT_WAIT, &mut task).await.is_err() {
                task.abort();
                let _ = task.await;
            }
        }
        // Nothing of the public API's runs any more: its threads can go.
        drop(self.workers);
        self.gateway.audit_failed_auth();
        drop(self.gateway);
        self.cache_writer.stop().await;
        self.responses_writer.stop().await;
        self.audit_writer.stop().await;
        self.ledger.stop().await;
        tracing::info!("switchyard stopped");
    }
}

/// Probes every instance each `health.interval` until stopped.
/// Rebuilds tenants' vector collections from the rows the store keeps.
fn restore_collections(gateway: &Gateway, store: &dyn Store) -> Result<(), StartError> {
    let (mut rows, mut skipped) = (0u64, 0u64);
    store.each_vector(&mut |row| {
        if gateway.collections().restore(row) {
            rows += 1;
        } else {
            skipped += 1;
        }
    })?;
    if rows > 0 {
        tracing::info!(rows, "vector collections rebuilt from the store");
    }
    if skipped > 0 {
        tracing::warn!(
            skipped,
            "vector rows that no longer fit their collection were skipped"
        );
    }
    Ok(())
}

async fn health_probes(gateway: Arc<Gateway>, mut stopped: watch::Receiver<bool>) {
    // Instances start up; the first probe comes one interval after start.
    let interval = gateway.config().health.interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => gateway.probe_all().await,
            _ = stopped.changed() => return,
        }
    }
}

/// Cuts what still runs on drained instances once their deadline passes, and keeps the
/// scheduler's seats equal to what the routable instances can take.
async fn drain_deadlines(gateway: Arc<Gateway>, mut stopped: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                gateway.router().enforce_drains();
                if !gateway.config().seats_fixed {
                    gateway.scheduler().set_seats(gateway.router().routable_capacity());
                }
            }
            _ = stopped.changed() => return,
        }
    }
}

/// Once a second: samples the request counters and queue depth (for rates and
/// sparklines) and sweeps finished streams past their keep; every failed-authentication
/// window, audits its failures.
async fn every_second(gateway: Arc<Gateway>, mut stopped: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let window = gateway.failed_auth_window().as_secs().max(1);
    let mut seconds = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                gateway.meter().sample(gateway.scheduler().queued() as u64);
                gateway.router().sample();
                gateway.hub().sweep();
                gateway.note_shared_state();
                seconds += 1;
                if seconds.is_multiple_of(window) {
                    gateway.audit_failed_auth();
                }
            }
            _ = stopped.changed() => return,
        }
    }
}

/// The admin API's own connection caps: a few operators and scrapers, kept apart from
/// the public listener's so a flood there never locks operators out.
const ADMIN_CONNECTIONS: usize = 256;
const ADMIN_CONNECTIONS_PER_ADDRESS: usize = 64;

fn scheme(tls: &Option<tokio_rustls::TlsAcceptor>) -> &'static str {
    if tls.is_some() { "https" } else { "http" }
}

async fn serve(
    listen: SocketAddr,
    key: &'static str,
    app: impl crate::listener::App,
    limits: ConnectionLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    workers: Option<Arc<Workers>>,
    stopped: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<()>), StartError> {
    let bind = |source| StartError::Bind {
        addr: listen,
        key,
        source,
    };
    let listener = TcpListener::bind(listen).await.map_err(bind)?;
    let addr = listener.local_addr().map_err(bind)?;
    let limits = limits.within_descriptors(key);
    Ok((
        addr,
        crate::listener::spawn(listener, app, limits, tls, workers, stopped, key),
    ))
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
