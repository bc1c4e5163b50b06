//! The signals that do not stop the server: SIGHUP reloads, SIGUSR1/SIGUSR2/SIGALRM are ignored.
//!
//! Lesson: a signal without a handler takes its default action, and for SIGHUP, SIGUSR1,
//! SIGUSR2 and SIGALRM that is to terminate the process at once: a closed terminal, an
//! operator's `kill -HUP` out of habit or a stray `kill -USR1` lost every event queued behind
//! its 202. Every signal an operator may send gets a deliberate, documented effect instead.
//! (SIGTERM, SIGINT and SIGQUIT are stops that drain; they are handled where the server stops.)
//! Invariant: once [`handle_non_stopping`] has returned, none of these signals can end the
//! process; SIGHUP runs [`reload`], the others log one line.

use anyhow::Context as _;

/// What SIGHUP re-reads. Nothing can be re-read yet; this is where files named by the
/// configuration (tokens, TLS certificates) are re-read once they exist, each read validated
/// before it replaces the one in use, so a bad file leaves the server as it was.
pub fn reload() {
    tracing::info!("reload requested; nothing to reload");
}

/// Registers SIGHUP (→ [`reload`]) and SIGUSR1, SIGUSR2, SIGALRM (→ ignored, logged) and
/// handles them on a task for as long as the runtime runs. Call inside a tokio runtime, before
/// the server starts, so a signal during start-up does not meet the default action.
#[cfg(unix)]
pub fn handle_non_stopping() -> anyhow::Result<()> {
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
            reload();
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
pub fn handle_non_stopping() -> anyhow::Result<()> {
    Ok(())
}
