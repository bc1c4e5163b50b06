//! A userspace TCP proxy in front of one nats-server route link, so a test can cut the network
//! between two brokers and heal it again without network namespaces or root.
//!
//! Invariants:
//! - While cut, a link carries nothing: every connection it carried is shut down at the cut,
//!   and each new one is closed as soon as it is accepted, so the servers see what a broken
//!   network shows them (routes lost, reconnects failing) and keep retrying on their own.
//! - Healing only lets new connections through; the servers' own reconnects (every second for
//!   an explicit route) form the route again, exactly as after a real partition.
//! - Nothing leaks: dropping the proxy stops accepting, shuts every connection down and joins
//!   every thread it started.

use std::io::{ErrorKind, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the proxy waits to reach the server behind it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What the acceptor and the pumps share.
#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    cut: AtomicBool,
    closing: AtomicBool,
    /// Both ends of every connection carried now (shut down at a cut).
    open: Mutex<Vec<TcpStream>>,
    pumps: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn shut_down_open(&self) {
        let open = std::mem::take(&mut *self.open.lock().unwrap_or_else(PoisonError::into_inner));
        for stream in open {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// One direction of a route link: connections to [`LinkProxy::port`] are forwarded to the
/// target address until [`LinkProxy::cut`].
#[derive(Debug)]
pub struct LinkProxy {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl LinkProxy {
    /// A proxy on a free loopback port forwarding to `target`, carrying traffic at once.
    pub fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            target,
            cut: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            open: Mutex::new(Vec::new()),
            pumps: Mutex::new(Vec::new()),
        });
        let accepting = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name(format!("route-proxy-{port}"))
            .spawn(move || accept_loop(&listener, &accepting))?;
        Ok(Self {
            port,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The loopback port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cuts the link: closes what it carries and refuses what comes until [`Self::heal`].
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        self.shared.shut_down_open();
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// Whether the link is cut now.
    pub fn is_cut(&self) -> bool {
        self.shared.cut.load(Ordering::SeqCst)
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.shared.shut_down_open();
        // Wake the blocking accept so the acceptor sees `closing`.
        drop(TcpStream::connect(("127.0.0.1", self.port)));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let pumps = std::mem::take(
            &mut *self
                .shared
                .pumps
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for pump in pumps {
            let _ = pump.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for incoming in listener.incoming() {
        if shared.closing.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = incoming else {
            continue;
        };
        if shared.cut.load(Ordering::SeqCst) {
            continue; // dropped: closed at once, as a broken link would
        }
        let Ok(server) = TcpStream::connect_timeout(&shared.target, CONNECT_TIMEOUT) else {
            continue;
        };
        if let Err(error) = carry(shared, client, server) {
            tracing::debug!(%error, "route proxy: connection not carried");
        }
    }
}

/// Registers both ends and starts one pump per direction.
fn carry(shared: &Arc<Shared>, client: TcpStream, server: TcpStream) -> std::io::Result<()> {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    {
        let mut open = shared.open.lock().unwrap_or_else(PoisonError::into_inner);
        // A cut between the check above and here must still close this connection.
        if shared.cut.load(Ordering::SeqCst) || shared.closing.load(Ordering::SeqCst) {
            return Ok(());
        }
        open.push(client.try_clone()?);
        open.push(server.try_clone()?);
    }
    let upstream = (client.try_clone()?, server.try_clone()?);
    let downstream = (server, client);
    let mut pumps = shared.pumps.lock().unwrap_or_else(PoisonError::into_inner);
    pumps.retain(|pump| !pump.is_finished());
    for (from, to) in [upstream, downstream] {
        pumps.push(std::thread::Builder::new().spawn(move || pump(from, to))?);
    }
    Ok(())
}

/// Copies `from` into `to` until either side ends, then shuts both down.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = [0_u8; 16 * 1024];
    loop {
        match std::io::Read::read(&mut from, &mut buffer) {
            Ok(0) => break,
            Ok(read) => {
                if to.write_all(&buffer[..read]).is_err() {
                    break;
                }
            }
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    /// An echo server on a free port; its thread ends after `connections` connections.
    fn echo_server(connections: usize) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        let address = listener.local_addr().expect("address");
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming().take(connections) {
                let Ok(mut stream) = stream else { continue };
                let mut buffer = [0_u8; 64];
                while let Ok(read) = stream.read(&mut buffer) {
                    if read == 0 || stream.write_all(&buffer[..read]).is_err() {
                        break;
                    }
                }
            }
        });
        (address, thread)
    }

    fn round_trip(port: u16) -> std::io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"ping")?;
        let mut answer = vec![0_u8; 4];
        stream.read_exact(&mut answer)?;
        Ok(answer)
    }

    // Proves the proxy carries bytes both ways, closes an open connection at the cut, refuses
    // new ones while cut, and carries again once healed.
    #[test]
    fn a_link_carries_then_cuts_then_heals() {
        let (target, server) = echo_server(3);
        let proxy = LinkProxy::start(target).expect("proxy");
        assert_eq!(round_trip(proxy.port()).expect("carried"), b"ping");

        let mut open = TcpStream::connect(("127.0.0.1", proxy.port())).expect("connect");
        open.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        open.write_all(b"ping").expect("write");
        let mut answer = [0_u8; 4];
        open.read_exact(&mut answer).expect("echoed");
        proxy.cut();
        assert!(proxy.is_cut());
        let mut rest = Vec::new();
        let after_cut = open.read_to_end(&mut rest);
        assert!(
            matches!(after_cut, Ok(0)) || after_cut.is_err(),
            "the open connection ends at the cut: {after_cut:?}"
        );
        assert!(round_trip(proxy.port()).is_err(), "refused while cut");

        proxy.heal();
        assert_eq!(round_trip(proxy.port()).expect("carried again"), b"ping");
        drop(open);
        drop(proxy);
        server.join().expect("echo server");
    }
}
