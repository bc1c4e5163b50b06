//! The signals that do not stop the server: SIGHUP reloads, SIGUSR1/SIGUSR2/SIGALRM are ignored.
//!
//! Lesson: a signal without a handler takes its default action, and for SIGHUP, SIGUSR1,
//! SIGUSR2 and SIGALRM that is to terminate the process at once: a closed terminal, an
//! operator's `kill -HUP` out of habit or a stray `kill -USR1` lost every event queued behind
//! its 202. Every signal an operator may send gets a deliberate, documented effect instead.
//! (SIGTERM, SIGINT and SIGQUIT are stops that drain; they are handled where the server stops.)
//! Invariant: once [`handle_non_stopping`] has returned, none of these signals can end the
//! process; SIGHUP runs [`Reload::reload`], the others log one line.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;

/// Something SIGHUP re-reads (the tokens file, the TLS certificate). Each reads and validates
/// the new file before it replaces the one in use, so a bad file leaves the server as it was.
pub trait Reloadable: Send + Sync {
    /// Re-reads; logs what happened (never fails the caller).
    fn reload(&self);
}

/// What SIGHUP re-reads: the server registers its files as it starts.
#[derive(Clone, Default)]
pub struct Reload {
    targets: Arc<Mutex<Vec<Arc<dyn Reloadable>>>>,
}

impl fmt::Debug for Reload {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("Reload").finish_non_exhaustive()
    }
}

impl Reload {
    /// Adds `target` to what a reload re-reads.
    pub fn register(&self, target: Arc<dyn Reloadable>) {
        self.targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(target);
    }

    /// Re-reads every registered file.
    pub fn reload(&self) {
        let targets = self
            .targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if targets.is_empty() {
            tracing::info!("reload requested; nothing to reload");
        } else {
            tracing::info!("reload requested");
        }
        for target in targets {
            target.reload();
        }
    }
}

/// Registers SIGHUP (→ `reload`) and SIGUSR1, SIGUSR2, SIGALRM (→ ignored, logged) and
/// handles them on a task for as long as the runtime runs. Call inside a tokio runtime, before
/// the server starts, so a signal during start-up does not meet the default action.
#[cfg(unix)]
pub fn handle_non_stopping(reload: Reload) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut ignored = Vec::new();
    for (kind, name) in [
        (SignalKind::user_defined1(), "SIGUSR1"),
        (SignalKind::user_defined2(), "SIGUSR2"),
        (SignalKind::alarm(), "SIGALRM"),
    ] {
        let stream = signal(kind).with_context(|| format!("cannot handle {name}"))?;
        ignored.push((stream, name));
    }
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            reload.reload();
        }
    });
    for (mut stream, name) in ignored {
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                tracing::info!(
                    signal = name,
                    "signal ignored (it has no effect on Floodgate)"
                );
            }
        });
    }
    Ok(())
}

/// Elsewhere these signals do not exist.
#[cfg(not(unix))]
pub fn handle_non_stopping(_reload: Reload) -> anyhow::Result<()> {
    Ok(())
}
