//! The servers an experiment can start in-process on 127.0.0.1:0, behind one handle.
//!
//! Lesson (stages 1–8, docs/stages.md): every experiment compares designs side by side on the same
//! machine in the same run, so the comparison is fair; this module starts any of them the same way.
//!
//! Invariant: a [`Running`] server is always stopped through [`Running::stop`], which returns
//! only once the server's threads and tasks are gone.

use std::net::SocketAddr;

use floodgate_core::engine::Engine;
use floodgate_core::stats::Summary;
use floodgate_server::{BlockingServerHandle, EchoServerHandle, ServerConfig, ServerHandle};
use serde::Serialize;

use super::LabError;

/// Which server to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Stage 1: std::net, one thread, one connection at a time, no timeouts.
    Blocking,
    /// Stage 2: tokio, one task per connection, echo.
    Echo,
    /// The production default: the full front door (timeouts, limits) and the queued engine.
    Default,
}

impl Target {
    /// A label for tables and plots.
    pub fn label(self) -> &'static str {
        match self {
            Self::Blocking => "stage 1 blocking",
            Self::Echo => "stage 2 async echo",
            Self::Default => "default server",
        }
    }

    /// Starts it on 127.0.0.1:0.
    pub async fn start(self) -> Result<Running, LabError> {
        Ok(match self {
            Self::Blocking => Running::Blocking(BlockingServerHandle::spawn()?),
            Self::Echo => Running::Echo(EchoServerHandle::spawn().await?),
            Self::Default => Running::Http(start_http(ServerConfig::production()).await?),
        })
    }
}

/// Starts the HTTP server with `config` on 127.0.0.1:0.
pub async fn start_http(config: ServerConfig) -> Result<ServerHandle, LabError> {
    ServerHandle::spawn(config)
        .await
        .map_err(|error| LabError::Server(format!("{error:#}")))
}

/// Stops the HTTP server gracefully (draining its queue) and returns its final summary.
pub async fn stop_http(server: ServerHandle) -> Result<Summary, LabError> {
    server
        .stop()
        .await
        .map_err(|error| LabError::Server(format!("{error:#}")))
}

/// Stops `server` on a separate task while `engine` (a clone of its engine) stays readable, so
/// the caller can watch the drain; the returned handle yields the final summary.
pub fn stop_http_in_background(
    server: ServerHandle,
) -> (Engine, tokio::task::JoinHandle<Result<Summary, LabError>>) {
    let engine = server.engine().clone();
    (engine, tokio::spawn(stop_http(server)))
}

/// A started server.
#[derive(Debug)]
pub enum Running {
    /// The stage-1 server.
    Blocking(BlockingServerHandle),
    /// The stage-2 server.
    Echo(EchoServerHandle),
    /// The HTTP server (any stage or the default).
    Http(ServerHandle),
}

impl Running {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Self::Blocking(handle) => handle.addr(),
            Self::Echo(handle) => handle.addr(),
            Self::Http(handle) => handle.addr(),
        }
    }

    /// Stops it and waits until it is gone.
    pub async fn stop(self) -> Result<(), LabError> {
        match self {
            Self::Blocking(handle) => tokio::task::spawn_blocking(move || handle.stop())
                .await
                .map_err(|error| LabError::Server(format!("stage 1 stop panicked: {error}"))),
            Self::Echo(handle) => {
                handle.stop().await;
                Ok(())
            }
            Self::Http(handle) => stop_http(handle).await.map(|_summary| ()),
        }
    }
}
