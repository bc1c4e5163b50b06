//! Running the HTTP server: `run` for a given listener, `ServerHandle` for in-process use.
//!
//! Lesson: "nothing lost" (stage 5's queue, stopped safely; docs/stages.md): stop accepting, let
//! in-flight requests finish (bounded by the shutdown timeout), then drain the engine so every
//! event answered 202 is applied before the final summary is returned.
//! Invariant: the order is always accept loop closed → connections finished (or cut at the
//! timeout) → `Engine::shutdown` → summary; a handle's `stop` returns only after all of it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use floodgate_core::engine::{Engine, Summary};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
use crate::conn::Acceptor;
use crate::metrics::ServerMetrics;
use crate::routes::{AppState, Routes};
use crate::shutdown::StopSignal;

/// Serves HTTP on `listener` until `shutdown` completes, then stops gracefully and returns the
/// engine's final summary. Starts the engine itself (call inside a tokio runtime).
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Summary> {
    config.validate()?;
    let engine = match config.storage.durable_options() {
        Some(options) => Engine::start_durable(config.engine.clone(), &options)
            .context("engine refused to start")?,
        None => Engine::start(config.engine.clone()).context("engine refused to start")?,
    };
    let summary = run_with_engine(listener, engine.clone(), config, shutdown).await;
    anyhow::ensure!(
        !engine.has_storage_failed(),
        "the log's storage failed: stopped after answering the requests in flight; restart to \
         recover every acknowledged event from the data directory"
    );
    Ok(summary)
}

/// Serves with an already started engine; see [`run`].
async fn run_with_engine(
    listener: TcpListener,
    engine: Engine,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Summary {
    let metrics = Arc::new(ServerMetrics::new(
        engine.clone(),
        config.front_door.max_connections,
    ));
    let shutdown_timeout = config.front_door.shutdown_timeout();
    let app = Arc::new(AppState {
        engine: engine.clone(),
        config,
        metrics: Arc::clone(&metrics),
        stop: StopSignal::default(),
    });
    let hard_stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let acceptor = Acceptor {
        routes: Arc::new(Routes::new(Arc::clone(&app))),
        front_door: app.config.front_door.clone(),
        metrics,
        graceful: app.stop.clone(),
        hard_stop: hard_stop.clone(),
        tracker: tracker.clone(),
    };
    let accept_loop = tokio::spawn(acceptor.run(listener));
    // A failed log write or sync stops the server like a signal would (then exits non-zero).
    tokio::select! {
        () = shutdown => {}
        () = engine.storage_failed() => {
            tracing::error!("the log's storage failed: stopping (503 storage_failed meanwhile)");
        }
    }
    tracing::info!("stopping: no new connections, finishing in-flight requests");
    app.stop.raise();
    let _ = accept_loop.await;
    tracker.close();
    if tokio::time::timeout(shutdown_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = tracker.len(),
            "shutdown timeout passed: closing the remaining connections"
        );
        hard_stop.cancel();
        tracker.wait().await;
    }
    tracing::info!("draining the queue");
    engine.shutdown().await
}

/// A server running in-process on 127.0.0.1 (for tests, the lab and benchmarks).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> anyhow::Result<()> {
/// use floodgate_server::{ServerConfig, ServerHandle};
///
/// let server = ServerHandle::spawn(ServerConfig::production()).await?;
/// println!("POST events to {}/events", server.url());
/// let summary = server.stop().await?; // graceful: drains the queue first
/// assert_eq!(summary.applied, summary.accepted);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    engine: Engine,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Summary>,
}

impl ServerHandle {
    /// Binds 127.0.0.1:0, starts the engine and serves on the current tokio runtime.
    pub async fn spawn(config: ServerConfig) -> anyhow::Result<ServerHandle> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Binds `addr`, starts the engine and serves on the current tokio runtime.
    #[allow(clippy::unused_async)] // async by contract: it needs the caller's tokio runtime
    pub async fn bind(addr: SocketAddr, config: ServerConfig) -> anyhow::Result<ServerHandle> {
        config.validate()?;
        let listener =
            crate::conn::bind_listener(addr).with_context(|| format!("cannot listen on {addr}"))?;
        let addr = listener.local_addr()?;
        let engine = Engine::start(config.engine.clone()).context("engine refused to start")?;
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            // A dropped handle counts as a stop request too.
            let _ = stopped.await;
        };
        let task = tokio::spawn(run_with_engine(listener, engine.clone(), config, shutdown));
        Ok(ServerHandle {
            addr,
            engine,
            stop: Some(stop),
            task,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The engine behind the server.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Stops gracefully: no new connections, in-flight requests finish, the queue drains;
    /// returns the final summary.
    pub async fn stop(mut self) -> anyhow::Result<Summary> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.context("server task failed")
    }
}
