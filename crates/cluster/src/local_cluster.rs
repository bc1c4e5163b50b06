//! A real JetStream cluster on loopback, for tests and local trials: N `nats-server` processes
//! with temporary store directories, each started, killed and restarted on its own.
//!
//! Invariants:
//! - The binary is the pinned one `.ci/install-nats.sh` installs (or `FLOODGATE_NATS_SERVER`);
//!   when it is missing, [`LocalCluster::start`] fails with a message saying how to install it,
//!   so a cluster test fails rather than skips.
//! - Ports: cluster routes cannot be given port 0, so each port is found free by binding port 0
//!   on 127.0.0.1 first (all of a start's ports held together, so they differ) and released
//!   just before the servers bind them. Another process may take one in between: a server
//!   that finds its port taken exits, and the start tries again with fresh ports (up to
//!   [`START_ATTEMPTS`] times); a restart, which must keep its ports, tries the same ones
//!   again for a while. A server counts as started when its own log says it listens, never
//!   because something answers on its port.
//! - Nothing leaks: dropping the cluster kills and reaps every process it started; the store
//!   directories live in a temporary directory removed with it.
//! - Partitions without root: [`LocalCluster::start_partitionable`] routes every server-to-server
//!   link through a [`LinkProxy`] the test controls (server `i` dials server `j` only through
//!   the proxy of link `i → j`), and each server advertises a route address that refuses, so
//!   no server can reach another around the proxies by the routes it learns by gossip.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::route_proxy::LinkProxy;

/// Environment variable naming the nats-server binary to start.
pub const SERVER_BINARY_VARIABLE: &str = "FLOODGATE_NATS_SERVER";

/// Where `.ci/install-nats.sh` installs the pinned server (its virtualenv), unless
/// `FLOODGATE_NATS_HOME` says otherwise.
const DEFAULT_HOME: &str = ".local/share/floodgate/nats-2.15.1";

/// The cluster could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LocalClusterError {
    /// No nats-server binary where the tests look for it.
    #[error(
        "nats-server not found at {0}: run .ci/install-nats.sh once (it installs the pinned \
         nats-server 2.15.1), or set FLOODGATE_NATS_SERVER to a nats-server 2.12+ binary"
    )]
    MissingBinary(PathBuf),
    /// A file, directory, port or process operation failed.
    #[error("local cluster: {0}")]
    Io(#[from] std::io::Error),
    /// A server did not accept connections in time.
    #[error("nats-server {index} did not listen on port {port} within {waited_ms} ms")]
    NotListening {
        index: usize,
        port: u16,
        waited_ms: u64,
    },
    /// A server exited because another process holds one of its ports (what a start retries
    /// with other ports).
    #[error("nats-server {index} could not bind its port: {line}")]
    PortTaken { index: usize, line: String },
    /// A server exited for another reason (the last line of its log).
    #[error("nats-server {index} exited ({status}): {line}")]
    Exited {
        index: usize,
        status: std::process::ExitStatus,
        line: String,
    },
}

/// How many sets of fresh ports a start tries when a server finds one taken.
pub const START_ATTEMPTS: usize = 5;
/// How long a restart (same ports) keeps trying while one is taken: a port probe by another
/// test holds it for microseconds; a port another server bound stays taken.
const RESTART_PORT_PATIENCE: Duration = Duration::from_secs(2);
/// How long a server may take to listen.
const LISTEN_DEADLINE: Duration = Duration::from_secs(10);

/// The nats-server binary the tests start: `FLOODGATE_NATS_SERVER`, else the install script's
/// place.
pub fn server_binary() -> Result<PathBuf, LocalClusterError> {
    resolve_binary(|name| std::env::var_os(name))
}

/// [`server_binary`] with the environment passed in (`lookup` reads one variable).
fn resolve_binary(
    lookup: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<PathBuf, LocalClusterError> {
    let path = if let Some(path) = lookup(SERVER_BINARY_VARIABLE) {
        PathBuf::from(path)
    } else if let Some(home) = lookup("FLOODGATE_NATS_HOME") {
        PathBuf::from(home).join("bin/nats-server")
    } else {
        let home = lookup("HOME").unwrap_or_default();
        PathBuf::from(home)
            .join(DEFAULT_HOME)
            .join("bin/nats-server")
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(LocalClusterError::MissingBinary(path))
    }
}

/// One server of the cluster: its ports and, while it runs, its process.
#[derive(Debug)]
struct Server {
    client_port: u16,
    route_port: u16,
    config_path: PathBuf,
    log_path: PathBuf,
    /// Where this run's lines start in the log (earlier runs' lines stay above).
    log_start: u64,
    process: Option<Child>,
}

/// N nats-servers with JetStream, routed to each other on loopback.
#[derive(Debug)]
pub struct LocalCluster {
    binary: PathBuf,
    servers: Vec<Server>,
    /// The route links of a partitionable cluster (empty otherwise).
    links: Vec<RouteLink>,
    /// Refuses every connection: the route address each server of a partitionable cluster
    /// advertises, so gossip never leads a server around the proxies (held for its port).
    _refuser: Option<LinkProxy>,
    // Dropped last (fields drop in order): the processes are reaped before their stores go.
    _directory: tempfile::TempDir,
}

impl LocalCluster {
    /// Starts `size` servers (1 = a lone JetStream server, no routes) and waits until each
    /// accepts connections. JetStream's own readiness (a meta leader) is the caller's to await
    /// (`connect` retries until the stream can be created).
    pub fn start(size: usize) -> Result<Self, LocalClusterError> {
        Self::start_with(size, false)
    }

    /// Like [`Self::start`], with every route link behind a proxy the caller can cut
    /// ([`Self::isolate`]) and heal ([`Self::heal`]).
    pub fn start_partitionable(size: usize) -> Result<Self, LocalClusterError> {
        Self::start_with(size, true)
    }

    fn start_with(size: usize, partitionable: bool) -> Result<Self, LocalClusterError> {
        Self::start_picking(size, partitionable, free_ports)
    }

    /// Starts on ports from `pick` (called with how many are needed), with fresh ones while
    /// a server finds one taken, up to [`START_ATTEMPTS`] sets.
    fn start_picking(
        size: usize,
        partitionable: bool,
        mut pick: impl FnMut(usize) -> Result<Vec<u16>, LocalClusterError>,
    ) -> Result<Self, LocalClusterError> {
        let mut attempt = 1;
        loop {
            let ports = pick(2 * size)?;
            let ports: Vec<(u16, u16)> = ports
                .chunks_exact(2)
                .map(|pair| (pair[0], pair[1]))
                .collect();
            match Self::start_on(&ports, partitionable) {
                Err(LocalClusterError::PortTaken { index, line }) if attempt < START_ATTEMPTS => {
                    eprintln!(
                        "local cluster: nats-server {index} found a port taken ({line}); new ports"
                    );
                    attempt += 1;
                }
                started => return started,
            }
        }
    }

    /// Starts one server per `(client, route)` port pair and waits until each listens; a
    /// server that exits stops the start (the others are killed with the half-built cluster).
    fn start_on(ports: &[(u16, u16)], partitionable: bool) -> Result<Self, LocalClusterError> {
        let binary = server_binary()?;
        let directory = tempfile::Builder::new()
            .prefix("floodgate-nats-")
            .tempdir()?;
        let (links, refuser) = if partitionable && ports.len() > 1 {
            let (links, refuser) = route_links(ports)?;
            (links, Some(refuser))
        } else {
            (Vec::new(), None)
        };
        let mut servers = Vec::with_capacity(ports.len());
        for (index, &(client_port, route_port)) in ports.iter().enumerate() {
            let config_path = directory.path().join(format!("n{index}.conf"));
            let routes = route_targets(index, ports, &links);
            let advertise = refuser.as_ref().map(LinkProxy::port);
            let config = server_config(
                index,
                directory.path(),
                (client_port, route_port),
                &routes,
                advertise,
            );
            std::fs::write(&config_path, config)?;
            servers.push(Server {
                client_port,
                route_port,
                config_path,
                log_path: directory.path().join(format!("n{index}.log")),
                log_start: 0,
                process: None,
            });
        }
        let mut cluster = Self {
            binary,
            servers,
            links,
            _refuser: refuser,
            _directory: directory,
        };
        for index in 0..ports.len() {
            cluster.spawn(index)?;
        }
        for index in 0..ports.len() {
            cluster.wait_listening(index)?;
        }
        Ok(cluster)
    }

    /// Client URLs of every server, running or not (`nats://127.0.0.1:port`).
    pub fn urls(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|server| format!("nats://127.0.0.1:{}", server.client_port))
            .collect()
    }

    /// Number of servers.
    pub fn size(&self) -> usize {
        self.servers.len()
    }

    /// Kills server `index` with SIGKILL and reaps it (its store stays for a restart).
    pub fn kill(&mut self, index: usize) -> Result<(), LocalClusterError> {
        if let Some(mut process) = self.servers[index].process.take() {
            process.kill()?;
            process.wait()?;
        }
        Ok(())
    }

    /// Starts server `index` again on the same ports and store, and waits until it listens
    /// (trying again for a while if one of its ports is taken meanwhile).
    pub fn restart(&mut self, index: usize) -> Result<(), LocalClusterError> {
        self.kill(index)?;
        let started = Instant::now();
        loop {
            self.spawn(index)?;
            match self.wait_listening(index) {
                Err(LocalClusterError::PortTaken { .. })
                    if started.elapsed() < RESTART_PORT_PATIENCE =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                listening => return listening,
            }
        }
    }

    fn spawn(&mut self, index: usize) -> Result<(), LocalClusterError> {
        let server = &mut self.servers[index];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&server.log_path)?;
        server.log_start = log.metadata()?.len();
        let process = Command::new(&self.binary)
            .arg("-c")
            .arg(&server.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        server.process = Some(process);
        Ok(())
    }

    /// Waits until server `index` says in its log that it listens for clients (and for
    /// routes, in a cluster), while its process runs: an answer on the port alone could come
    /// from another process holding it.
    fn wait_listening(&mut self, index: usize) -> Result<(), LocalClusterError> {
        let routed = self.servers.len() > 1;
        let started = Instant::now();
        while started.elapsed() < LISTEN_DEADLINE {
            let log = self.run_log(index);
            let server = &mut self.servers[index];
            if let Some(status) = server
                .process
                .as_mut()
                .and_then(|process| process.try_wait().ok().flatten())
            {
                server.process = None;
                return Err(exit_error(index, status, &log));
            }
            if is_listening(&log, routed) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(LocalClusterError::NotListening {
            index,
            port: self.servers[index].client_port,
            waited_ms: LISTEN_DEADLINE.as_millis() as u64,
        })
    }

    /// What server `index` logged since its last start (empty if unreadable).
    fn run_log(&self, index: usize) -> String {
        let server = &self.servers[index];
        let log = std::fs::read(&server.log_path).unwrap_or_default();
        let start = usize::try_from(server.log_start).unwrap_or(usize::MAX);
        String::from_utf8_lossy(log.get(start..).unwrap_or_default()).into_owned()
    }

    /// The route port of server `index` (for tests that cut routes).
    pub fn route_port(&self, index: usize) -> u16 {
        self.servers[index].route_port
    }

    /// Cuts every route link to and from server `index` (a partitionable cluster only): it
    /// keeps its clients but reaches no other server until [`Self::heal`]. Returns whether
    /// there were links to cut.
    pub fn isolate(&self, index: usize) -> bool {
        let mut cut = false;
        for link in &self.links {
            if link.from == index || link.to == index {
                link.proxy.cut();
                cut = true;
            }
        }
        cut
    }

    /// Lets every route link carry traffic again; the servers reconnect on their own.
    pub fn heal(&self) {
        for link in &self.links {
            link.proxy.heal();
        }
    }
}

/// Server `from` dials server `to` through `proxy`.
#[derive(Debug)]
struct RouteLink {
    from: usize,
    to: usize,
    proxy: LinkProxy,
}

/// One proxy per ordered pair of servers, and one that refuses.
fn route_links(ports: &[(u16, u16)]) -> Result<(Vec<RouteLink>, LinkProxy), LocalClusterError> {
    let mut links = Vec::new();
    for from in 0..ports.len() {
        for (to, &(_, route_port)) in ports.iter().enumerate() {
            if from != to {
                let target = std::net::SocketAddr::from(([127, 0, 0, 1], route_port));
                let proxy = LinkProxy::start(target)?;
                links.push(RouteLink { from, to, proxy });
            }
        }
    }
    let refuser = LinkProxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], 1)))?;
    refuser.cut();
    Ok((links, refuser))
}

/// The route ports server `index` dials: the other servers' own, or the proxies in front of
/// them when the links are proxied.
fn route_targets(index: usize, ports: &[(u16, u16)], links: &[RouteLink]) -> Vec<u16> {
    if links.is_empty() {
        return ports
            .iter()
            .enumerate()
            .filter(|&(other, _)| other != index)
            .map(|(_, &(_, route))| route)
            .collect();
    }
    links
        .iter()
        .filter(|link| link.from == index)
        .map(|link| link.proxy.port())
        .collect()
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for server in &mut self.servers {
            if let Some(mut process) = server.process.take() {
                // Already exited is fine; reaping is what matters.
                let _ = process.kill();
                let _ = process.wait();
            }
        }
    }
}

/// `count` distinct ports free on 127.0.0.1 right now (each bound to port 0, all held until
/// the last is found, then released).
fn free_ports(count: usize) -> Result<Vec<u16>, LocalClusterError> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind(("127.0.0.1", 0)))
        .collect::<Result<Vec<_>, _>>()?;
    let ports = listeners
        .iter()
        .map(|listener| listener.local_addr().map(|address| address.port()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ports)
}

/// Whether a server's log of this run says it listens: for clients ("Server is ready"), and
/// for routes too when `routed` (nats-server binds its route port after saying it is ready).
fn is_listening(log: &str, routed: bool) -> bool {
    log.contains("Server is ready") && (!routed || log.contains("Listening for route connections"))
}

/// Why a server exited while starting: a port taken (nats-server's fatal bind error), or
/// anything else, with the last line it logged.
fn exit_error(index: usize, status: std::process::ExitStatus, log: &str) -> LocalClusterError {
    if let Some(line) = log
        .lines()
        .find(|line| line.contains("address already in use"))
    {
        return LocalClusterError::PortTaken {
            index,
            line: line.to_owned(),
        };
    }
    let line = log.lines().last().unwrap_or("(no log)").to_owned();
    LocalClusterError::Exited {
        index,
        status,
        line,
    }
}

/// The configuration of server `index`: client port, JetStream store, and routes to the
/// others (`routes`: the route ports it dials; none for a lone server), advertising
/// `advertise` as its route port when given.
fn server_config(
    index: usize,
    directory: &Path,
    (client_port, route_port): (u16, u16),
    routes: &[u16],
    advertise: Option<u16>,
) -> String {
    let store = directory.join(format!("n{index}"));
    let mut config = format!(
        "server_name: n{index}\nlisten: 127.0.0.1:{client_port}\n\
         jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  max_file_store: 1GB\n}}\n",
        store.display()
    );
    if !routes.is_empty() {
        let routes: Vec<String> = routes
            .iter()
            .map(|route| format!("nats-route://127.0.0.1:{route}"))
            .collect();
        let advertise = advertise
            .map(|port| format!("  advertise: 127.0.0.1:{port}\n"))
            .unwrap_or_default();
        let _ = write!(
            config,
            "cluster {{\n  name: floodgate\n  listen: 127.0.0.1:{route_port}\n{advertise}  \
             routes: [{}]\n}}\n",
            routes.join(", ")
        );
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves a missing nats-server is an error that names the path and says how to install
    // it (so a cluster test fails with instructions instead of skipping).
    #[test]
    fn a_missing_binary_fails_with_install_instructions() {
        let error = resolve_binary(|name| {
            (name == SERVER_BINARY_VARIABLE).then(|| "/nonexistent/nats-server".into())
        })
        .expect_err("no such file");
        let message = error.to_string();
        assert!(message.contains("/nonexistent/nats-server"), "{message}");
        assert!(message.contains(".ci/install-nats.sh"), "{message}");
    }

    // Proves a start tries fresh ports when a server finds one taken: the first set of ports
    // names one this test holds, the server exits (bind error), and the cluster starts on the
    // second set, whose URL does not name the held port; a picker that always names it gives
    // up after START_ATTEMPTS sets with the bind error.
    #[test]
    fn a_taken_port_is_replaced_by_a_fresh_one() {
        let held = TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        let held_port = held.local_addr().expect("address").port();
        let mut sets = 0;
        let cluster = LocalCluster::start_picking(1, false, |count| {
            sets += 1;
            let mut ports = free_ports(count)?;
            if sets == 1 {
                ports[0] = held_port;
            }
            Ok(ports)
        })
        .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(sets, 2, "one retry");
        let url = cluster.urls().remove(0);
        assert!(!url.ends_with(&format!(":{held_port}")), "{url}");
        drop(cluster);

        let mut sets = 0;
        let refused = LocalCluster::start_picking(1, false, |count| {
            sets += 1;
            let mut ports = free_ports(count)?;
            ports[0] = held_port;
            Ok(ports)
        });
        assert!(
            matches!(refused, Err(LocalClusterError::PortTaken { .. })),
            "{refused:?}"
        );
        assert_eq!(sets, START_ATTEMPTS);
        drop(held);
    }

    // Proves the readiness and exit reading of a server's log: a lone server is ready when it
    // says so, a routed one once it also listens for routes; a bind failure is a taken port,
    // anything else an exit with the last line.
    #[test]
    fn a_server_log_tells_listening_from_a_taken_port() {
        let ready =
            "[INF] Listening for client connections on 127.0.0.1:4\n[INF] Server is ready\n";
        assert!(is_listening(ready, false));
        assert!(!is_listening(ready, true), "routes not bound yet");
        let routed = format!("{ready}[INF] Listening for route connections on 127.0.0.1:5\n");
        assert!(is_listening(&routed, true));
        let status = std::process::Command::new("false")
            .status()
            .expect("false runs");
        let taken = "[FTL] Error listening on router port: 5 - listen tcp 127.0.0.1:5: bind: \
                     address already in use\n";
        assert!(matches!(
            exit_error(0, status, taken),
            LocalClusterError::PortTaken { .. }
        ));
        let other = exit_error(1, status, "[INF] Starting\n[FTL] bad config\n");
        assert!(other.to_string().contains("bad config"), "{other}");
    }

    // Proves the lookup order: the variable naming the binary, then FLOODGATE_NATS_HOME, then
    // the install script's place under HOME.
    #[test]
    fn the_binary_is_looked_up_in_order() {
        let home_only = resolve_binary(|name| (name == "HOME").then(|| "/home/someone".into()));
        let Err(LocalClusterError::MissingBinary(path)) = home_only else {
            panic!("expected a missing binary");
        };
        assert_eq!(
            path,
            PathBuf::from("/home/someone/.local/share/floodgate/nats-2.15.1/bin/nats-server")
        );
        let nats_home = resolve_binary(|name| match name {
            "FLOODGATE_NATS_HOME" => Some("/opt/nats".into()),
            "HOME" => Some("/home/someone".into()),
            _ => None,
        });
        let Err(LocalClusterError::MissingBinary(path)) = nats_home else {
            panic!("expected a missing binary");
        };
        assert_eq!(path, PathBuf::from("/opt/nats/bin/nats-server"));
    }
}
