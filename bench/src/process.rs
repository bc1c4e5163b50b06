//! The processes the suite starts: release binaries found under `target/release`, servers on a
//! free loopback port, killed when their handle drops (no process outlives its measurement).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long a server gets to start listening before the suite gives up on it.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The release binaries the suite runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `floodgate` (serve and load).
    pub floodgate: PathBuf,
    /// The bare hyper ceiling server.
    pub bare_hyper: PathBuf,
    /// The core's engine throughput example.
    pub engine_throughput: PathBuf,
}

impl Binaries {
    /// Finds them under `target/release` (run from the repository root, as `bench/run.sh` does).
    pub fn locate() -> Result<Self> {
        let release = PathBuf::from("target/release");
        let binaries = Self {
            floodgate: release.join("floodgate"),
            bare_hyper: release.join("bare-hyper"),
            engine_throughput: release.join("examples/engine_throughput"),
        };
        for path in [&binaries.floodgate, &binaries.bare_hyper] {
            if !path.exists() {
                bail!(
                    "{} is missing: run bench/run.sh, which builds it",
                    path.display()
                );
            }
        }
        Ok(binaries)
    }
}

/// A free port on loopback (bound, read, released; the server binds it a moment later).
pub fn free_loopback_addr() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}

/// A server child process on loopback, killed on drop.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    addr: SocketAddr,
}

impl ServerProcess {
    /// Starts `program` with `args` (which must make it listen on `addr`) and waits until it
    /// accepts connections.
    pub fn start(program: &PathBuf, args: &[String], addr: SocketAddr) -> Result<Self> {
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let mut server = Self { child, addr };
        server.wait_until_listening()?;
        Ok(server)
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The child's resident memory in KiB (`VmRSS` of `/proc/PID/status`).
    pub fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .context("no VmRSS line")
    }

    fn wait_until_listening(&mut self) -> Result<()> {
        let started = Instant::now();
        while started.elapsed() < START_TIMEOUT {
            if let Some(status) = self.child.try_wait()? {
                bail!("server exited early with {status}");
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "server did not listen on {} within {START_TIMEOUT:?}",
            self.addr
        )
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
