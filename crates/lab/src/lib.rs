//! Placeholder: the lab is being built (issue 4).
use std::process::ExitCode;

/// Flags of `floodgate lab`.
#[derive(Debug, clap::Args)]
pub struct LabArgs {}

/// Entry point of `floodgate lab`.
pub fn lab_main(_args: LabArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
