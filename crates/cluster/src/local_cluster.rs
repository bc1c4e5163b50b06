//! A real JetStream cluster on loopback, for tests and local trials: N `nats-server` processes
//! with temporary store directories, each started, killed and restarted on its own.
//!
//! Invariants:
//! - The binary is the pinned one `.ci/install-nats.sh` installs (or `FLOODGATE_NATS_SERVER`);
//!   when it is missing, [`LocalCluster::start`] fails with a message saying how to install it,
//!   so a cluster test fails rather than skips.
//! - Ports: cluster routes cannot be given port 0, so each port is found free by binding port 0
//!   on 127.0.0.1 first and released just before the server binds it (a small race with other
//!   processes, accepted for tests).
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
}

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
    directory: tempfile::TempDir,
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
        let binary = server_binary()?;
        let directory = tempfile::Builder::new()
            .prefix("floodgate-nats-")
            .tempdir()?;
        let mut ports = Vec::with_capacity(size);
        for _ in 0..size {
            ports.push((free_port()?, free_port()?));
        }
        let (links, refuser) = if partitionable && size > 1 {
            let (links, refuser) = route_links(&ports)?;
            (links, Some(refuser))
        } else {
            (Vec::new(), None)
        };
        let mut servers = Vec::with_capacity(size);
        for (index, &(client_port, route_port)) in ports.iter().enumerate() {
            let config_path = directory.path().join(format!("n{index}.conf"));
            let routes = route_targets(index, &ports, &links);
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
                process: None,
            });
        }
        let mut cluster = Self {
            binary,
            servers,
            links,
            _refuser: refuser,
            directory,
        };
        for index in 0..size {
            cluster.spawn(index)?;
        }
        for index in 0..size {
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

    /// Starts server `index` again on the same ports and store, and waits until it listens.
    pub fn restart(&mut self, index: usize) -> Result<(), LocalClusterError> {
        self.kill(index)?;
        self.spawn(index)?;
        self.wait_listening(index)
    }

    fn spawn(&mut self, index: usize) -> Result<(), LocalClusterError> {
        let log_path = self.directory.path().join(format!("n{index}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)?;
        let server = &mut self.servers[index];
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

    fn wait_listening(&self, index: usize) -> Result<(), LocalClusterError> {
        let port = self.servers[index].client_port;
        let deadline = Duration::from_secs(10);
        let started = Instant::now();
        while started.elapsed() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(LocalClusterError::NotListening {
            index,
            port,
            waited_ms: deadline.as_millis() as u64,
        })
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

/// A port free on 127.0.0.1 right now (bound to port 0, then released).
fn free_port() -> Result<u16, LocalClusterError> {
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
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
