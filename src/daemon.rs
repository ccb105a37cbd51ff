//! Builds the gateway from a validated config, binds the public listener, and shuts down
//! gracefully: in-flight requests and streams get a grace period, then are cut.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::gateway::Gateway;
use crate::providers::SetupError;

/// How long a shutdown waits for in-flight requests before cutting them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "cannot listen on {addr}: {source}; is another process using the port? (server.listen)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Setup(#[from] SetupError),
}

/// A running gateway.
pub struct Daemon {
    addr: SocketAddr,
    gateway: Arc<Gateway>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Daemon {
    /// Builds the gateway and starts serving on `server.listen`.
    pub async fn start(config: Config) -> Result<Daemon, StartError> {
        let listen = config.server.listen;
        let gateway = Arc::new(Gateway::new(config)?);
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let (stop, mut stopped) = watch::channel(false);
        let app = crate::api::router(gateway.clone());
        let task = tokio::spawn(async move {
            let server = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|s| *s).await;
            });
            if let Err(error) = server.await {
                tracing::error!(%error, "public listener failed");
            }
        });
        tracing::info!(%addr, "switchyard is listening");
        Ok(Daemon {
            addr,
            gateway,
            stop,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the base for clients (`/v1` is appended by them).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Stops accepting, lets in-flight work finish within the grace period, then cuts it.
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            tracing::warn!(
                ?grace,
                "in-flight requests outlived the shutdown grace period; cutting them"
            );
            task.abort();
        }
        tracing::info!("switchyard stopped");
    }
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
