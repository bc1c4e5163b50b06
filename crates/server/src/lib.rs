//! Placeholder: the HTTP front door is being built (issue 2/5).
use std::process::ExitCode;

/// Flags of `floodgate serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {}

/// Entry point of `floodgate serve`.
pub fn serve_main(_args: ServeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
