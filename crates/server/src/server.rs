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
use std::time::Duration;

use anyhow::Context as _;
use floodgate_cluster::Node;
use floodgate_core::engine::{Engine, Summary};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Access;
use crate::config::{
    ADMIN_MAX_CONNECTIONS, CLUSTER_READY_TIMEOUT_MS, FrontDoorConfig, ServerConfig,
};
use crate::conn::Acceptor;
use crate::metrics::ServerMetrics;
use crate::routes::{AppState, Routes};
use crate::shutdown::StopSignal;
use crate::signals::{Reload, Reloadable};
use crate::tls::Tls;

/// Serves HTTP on `listener` until `shutdown` completes, then stops gracefully and returns the
/// engine's final summary. Starts the engine itself (call inside a tokio runtime); the files
/// the configuration names are registered with `reload` (SIGHUP).
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    reload: &Reload,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Summary> {
    config.validate()?;
    let gate = Gate::open(&config, reload)?;
    let (engine, cluster) = start_engine(&config, true).await?;
    let summary = run_with_engine(listener, engine.clone(), cluster, config, gate, shutdown).await;
    stopped_cleanly(&engine, summary)
}

/// The summary of a stop, or the failure that forced it (the process then exits non-zero).
fn stopped_cleanly(engine: &Engine, summary: Summary) -> anyhow::Result<Summary> {
    match engine.failure() {
        Some(failure) => Err(anyhow::anyhow!(
            "{} (final summary: accepted={} applied={} overflowed={} lost={})",
            failure.explain(),
            summary.accepted,
            summary.applied,
            summary.overflowed,
            summary.lost
        )),
        None => Ok(summary),
    }
}

/// Starts what stands behind the routes: a cluster node and its forwarding engine with
/// `--nats`, else the engine with its log (a data directory, when `with_log`) or in memory.
async fn start_engine(
    config: &ServerConfig,
    with_log: bool,
) -> anyhow::Result<(Engine, Option<Arc<Node>>)> {
    let Some((urls, cluster)) = config.cluster.cluster_config(&config.engine) else {
        let options = config.storage.durable_options().filter(|_| with_log);
        let engine = match options {
            Some(options) => Engine::start_durable(config.engine.clone(), &options)
                .context("engine refused to start")?,
            None => Engine::start(config.engine.clone()).context("engine refused to start")?,
        };
        return Ok((engine, None));
    };
    let name = floodgate_cluster::unique_node_name();
    tracing::info!(
        node = name, nats = %urls.join(","), partitions = cluster.partitions,
        lease_ttl_ms = cluster.lease_ttl.as_millis() as u64,
        stream_capacity_events = cluster.capacity_events,
        "cluster node: events go to the JetStream stream; the data directory is not used"
    );
    let ready = Duration::from_millis(CLUSTER_READY_TIMEOUT_MS);
    // Boxed: connecting and creating the stream and buckets make a large future.
    let node = Box::pin(Node::start(&urls, cluster, name, ready))
        .await
        .context("cannot join the NATS JetStream cluster")?;
    let engine = Engine::start_forwarding(config.engine.clone(), Arc::clone(&node) as _)
        .context("engine refused to start")?;
    Ok((engine, Some(node)))
}

/// What stands before the routes, made ready before anything is served: the access gate
/// (tokens read), TLS (certificate and key read; a bad file stops start-up) and the admin
/// listener (bound).
#[derive(Debug)]
struct Gate {
    access: Arc<Access>,
    tls: Option<Arc<Tls>>,
    admin: Option<TcpListener>,
}

impl Gate {
    /// Reads the files the configuration names and binds the admin listener; registers what
    /// SIGHUP re-reads with `reload`.
    fn open(config: &ServerConfig, reload: &Reload) -> anyhow::Result<Self> {
        let access = Arc::new(Access::load(&config.access)?);
        if access.requires_tokens() {
            reload.register(Arc::clone(&access) as Arc<dyn Reloadable>);
        }
        let tls = match (&config.access.tls_cert, &config.access.tls_key) {
            (Some(cert), Some(key)) => {
                let tls = Arc::new(Tls::load(cert, key)?);
                reload.register(Arc::clone(&tls) as Arc<dyn Reloadable>);
                Some(tls)
            }
            _ => None,
        };
        let admin = match config.access.admin_addr {
            Some(addr) => {
                let listener = crate::conn::bind_listener(addr)
                    .with_context(|| format!("cannot listen on admin-addr {addr}"))?;
                tracing::info!(
                    admin_listener = %listener.local_addr()?,
                    max_connections = ADMIN_MAX_CONNECTIONS,
                    "admin listener: /metrics /stats /healthz /readyz"
                );
                Some(listener)
            }
            None => None,
        };
        Ok(Self { access, tls, admin })
    }
}

/// Serves with an already started engine; see [`run`].
async fn run_with_engine(
    listener: TcpListener,
    engine: Engine,
    cluster: Option<Arc<Node>>,
    config: ServerConfig,
    gate: Gate,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Summary {
    let metrics = Arc::new(ServerMetrics::with_cluster(
        engine.clone(),
        cluster.clone(),
        config.front_door.max_connections,
    ));
    let grace = config.front_door.shutdown_grace();
    let app = Arc::new(AppState {
        engine: engine.clone(),
        cluster: cluster.clone(),
        config,
        metrics: Arc::clone(&metrics),
        access: gate.access,
        stop: StopSignal::default(),
    });
    let hard_stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let acceptor = |routes: Routes, front_door: FrontDoorConfig| Acceptor {
        routes: Arc::new(routes),
        front_door,
        metrics: Arc::clone(&metrics),
        graceful: app.stop.clone(),
        hard_stop: hard_stop.clone(),
        tracker: tracker.clone(),
        tls: gate.tls.clone(),
    };
    let main = acceptor(Routes::new(Arc::clone(&app)), app.config.front_door.clone());
    let mut accept_loops = vec![tokio::spawn(main.run(listener))];
    if let Some(admin_listener) = gate.admin {
        let budget = FrontDoorConfig {
            max_connections: ADMIN_MAX_CONNECTIONS,
            ..app.config.front_door.clone()
        };
        let admin = acceptor(Routes::admin(Arc::clone(&app)), budget);
        accept_loops.push(tokio::spawn(admin.run(admin_listener)));
    }
    // A failed worker or a failed log write or sync stops the server like a signal would (then
    // it exits non-zero).
    tokio::select! {
        () = shutdown => {}
        failure = engine.failed() => {
            tracing::error!(reason = failure.reason(), "{}: stopping (503 {} meanwhile)", failure.explain(), failure.reason());
        }
    }
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "stopping: no new connections, finishing in-flight requests"
    );
    app.stop.raise();
    for accept_loop in accept_loops {
        let _ = accept_loop.await;
    }
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            open = tracker.len(),
            "shutdown timeout passed: closing the remaining connections"
        );
        hard_stop.cancel();
        tracker.wait().await;
    }
    tracing::info!("draining the queue");
    let summary = engine.shutdown().await;
    if let Some(node) = cluster {
        tracing::info!("leaving the cluster: last snapshots, leases released");
        node.stop().await;
    }
    summary
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
    admin_addr: Option<SocketAddr>,
    reload: Reload,
    engine: Engine,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Summary>,
}

impl ServerHandle {
    /// Binds 127.0.0.1:0, starts the engine and serves on the current tokio runtime.
    pub async fn spawn(config: ServerConfig) -> anyhow::Result<ServerHandle> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Binds `addr`, starts the engine (in memory: the storage settings are not used; a
    /// cluster node with `cluster.nats`) and serves on the current tokio runtime.
    pub async fn bind(addr: SocketAddr, config: ServerConfig) -> anyhow::Result<ServerHandle> {
        config.validate()?;
        let listener =
            crate::conn::bind_listener(addr).with_context(|| format!("cannot listen on {addr}"))?;
        let addr = listener.local_addr()?;
        let reload = Reload::default();
        let gate = Gate::open(&config, &reload)?;
        let admin_addr = gate
            .admin
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        let (engine, cluster) = start_engine(&config, false).await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            // A dropped handle counts as a stop request too.
            let _ = stopped.await;
        };
        let task = tokio::spawn(run_with_engine(
            listener,
            engine.clone(),
            cluster,
            config,
            gate,
            shutdown,
        ));
        Ok(ServerHandle {
            addr,
            admin_addr,
            reload,
            engine,
            stop: Some(stop),
            task,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener's address, when `admin-addr` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Re-reads the files the configuration names, as SIGHUP does.
    pub fn reload(&self) {
        self.reload.reload();
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
    /// returns the final summary, or an error if a failure (see [`Engine::failure`]) stopped
    /// the server.
    pub async fn stop(mut self) -> anyhow::Result<Summary> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let summary = (&mut self.task).await.context("server task failed")?;
        stopped_cleanly(&self.engine, summary)
    }
}
