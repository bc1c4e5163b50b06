//! floodgate-server: the HTTP front door of Floodgate and the seed's raw lesson servers.
//!
//! Lesson: stages 1 to 8 of the seed meet the network here. Stage 1 and 2 are the raw echo
//! servers in [`raw`]; stages 3 to 8 and the production default share one front door on axum
//! and hyper, with the engine (`floodgate-core`) behind it.
//! Invariant: the front door never waits for room in the queue, bounds every read (time and
//! size), and an event answered 202 is applied before a graceful stop returns its summary.

pub mod raw;

pub use raw::blocking::BlockingServerHandle;
pub use raw::echo::EchoServerHandle;

use std::process::ExitCode;

/// Flags of `floodgate serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {}

/// Entry point of `floodgate serve`.
pub fn serve_main(_args: ServeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
