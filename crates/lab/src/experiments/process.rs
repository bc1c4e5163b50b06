//! The real `floodgate` binary as a child process: started, SIGKILLed, restarted, stopped.
//!
//! Lesson (stage 9, exactly-once, scale-out): a claim about surviving `kill -9` can only be
//! tested on a process of its own, so these experiments run the real binary rather than the
//! in-process servers of [`super::servers`]; one way to start, kill and reap it keeps them
//! honest alike.
//!
//! Invariant: a [`FloodgateProcess`] is ready when returned (it printed its address and answers
//! `/healthz`); its log is drained so it never blocks on a full pipe; it is killed on drop, and
//! [`FloodgateProcess::kill`] and [`FloodgateProcess::stop`] return only once it is reaped.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::LabError;
use crate::probe::{Answer, exchange};

/// How long a started server may take to print its address and answer `/healthz`, and a
/// stopped one to exit.
pub const START_WAIT: Duration = Duration::from_secs(20);
/// Deadline of one probe request (`/healthz`, `/stats`).
pub const PROBE_DEADLINE: Duration = Duration::from_secs(2);

/// The binary to start: the one named, `$FLOODGATE_BIN`, or this program if it is `floodgate`.
pub fn floodgate_binary(named: Option<&Path>) -> Result<PathBuf, LabError> {
    if let Some(path) = named {
        return Ok(path.to_path_buf());
    }
    if let Some(path) = std::env::var_os("FLOODGATE_BIN") {
        return Ok(PathBuf::from(path));
    }
    let current = std::env::current_exe()?;
    if current.file_stem().is_some_and(|stem| stem == "floodgate") {
        return Ok(current);
    }
    Err(LabError::Unavailable(
        "the floodgate binary: run `floodgate lab`, or set FLOODGATE_BIN",
    ))
}

/// A `floodgate serve` child process and the address it listens on.
#[derive(Debug)]
pub struct FloodgateProcess {
    child: Child,
    addr: SocketAddr,
}

impl FloodgateProcess {
    /// Starts `binary serve --addr <listen> <args>` (`listen` as `127.0.0.1:0`, or a fixed
    /// port to come back on after a kill) and waits until it is ready.
    pub async fn start<I, S>(binary: &Path, listen: &str, args: I) -> Result<Self, LabError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = Command::new(binary)
            .args(["serve", "--addr", listen])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| LabError::Server(format!("{}: {error}", binary.display())))?;
        let ready = Self::await_ready(&mut child).await;
        match ready {
            Ok(addr) => Ok(Self { child, addr }),
            Err(error) => {
                let _ = child.kill().await;
                Err(error)
            }
        }
    }

    /// Reads the start-up log until the address, keeps draining it, then waits for `/healthz`.
    async fn await_ready(child: &mut Child) -> Result<SocketAddr, LabError> {
        let stderr = child
            .stderr
            .take()
            .ok_or(LabError::Server("no stderr pipe".to_owned()))?;
        let mut lines = BufReader::new(stderr).lines();
        let addr = tokio::time::timeout(START_WAIT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = address_in(&line) {
                    return Some(addr);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .ok_or(LabError::Server(
            "floodgate serve printed no address".to_owned(),
        ))?;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let deadline = Instant::now() + START_WAIT;
        while Instant::now() < deadline {
            if get(addr, "/healthz")
                .await
                .is_some_and(|(status, _)| status == 200)
            {
                return Ok(addr);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(LabError::Server(format!("{addr} never answered /healthz")))
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// SIGKILL, then reap.
    pub async fn kill(mut self) -> Result<(), LabError> {
        self.child.kill().await?;
        Ok(())
    }

    /// SIGTERM (a graceful stop), then reap; SIGKILL if it has not exited within
    /// [`START_WAIT`].
    pub async fn stop(mut self) -> Result<(), LabError> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(START_WAIT, self.child.wait())
            .await
            .is_err()
        {
            self.child.kill().await?;
        }
        Ok(())
    }
}

/// The address in a start-up log line (`... addr=127.0.0.1:PORT ...`).
fn address_in(line: &str) -> Option<SocketAddr> {
    line.split("addr=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A fresh directory under the system's temporary folder, named after `label`.
pub fn fresh_dir(label: &str) -> Result<PathBuf, LabError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let path = std::env::temp_dir().join(format!(
        "floodgate-lab-{label}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&path)?;
    Ok(path)
}

/// Removes a directory made by [`fresh_dir`] (already gone is fine).
pub fn remove_dir(path: &Path) {
    let _ = std::fs::remove_dir_all(path);
}

/// A port nothing listens on right now, for a server that must come back on the same address
/// after a kill (a small race with other processes, accepted for the lab).
pub fn free_port() -> Result<u16, LabError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// `GET path` on a new connection, with `deadline`.
pub async fn get_answer(
    addr: SocketAddr,
    path: &str,
    deadline: Duration,
) -> Result<Answer, LabError> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    Ok(exchange(addr, request.as_bytes(), deadline).await?)
}

/// `GET path`: status and body, or `None` when the server does not answer in
/// [`PROBE_DEADLINE`].
pub async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    match get_answer(addr, path, PROBE_DEADLINE).await {
        Ok(Answer::Response { status, body, .. }) => Some((status, body)),
        _ => None,
    }
}

/// `GET path` as JSON when answered 200.
pub async fn get_json(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    match get(addr, path).await {
        Some((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the start-up line is parsed for its address and other lines are not.
    #[test]
    fn the_address_is_read_from_the_start_up_line() {
        let line = "2026-12-03T09:00:00Z INFO floodgate: listening addr=127.0.0.1:4242 workers=4";
        assert_eq!(
            address_in(line),
            Some(SocketAddr::from(([127, 0, 0, 1], 4242)))
        );
        assert_eq!(address_in("INFO starting"), None);
        assert_eq!(address_in("addr=not-an-address"), None);
    }
}
