//! Placeholder: the load generator is being built (issue 3).
use std::process::ExitCode;

/// Flags of `floodgate load`.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {}

/// Entry point of `floodgate load`.
pub fn load_main(_args: LoadArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
