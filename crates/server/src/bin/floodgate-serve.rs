//! `floodgate-serve`: exactly `floodgate serve`, as this crate's own binary.
//!
//! Lesson: issue 5's shutdown claim ("SIGTERM drains, prints the summary, exits 0") is only
//! proven by signalling a real process. Cargo builds this binary for the crate's integration
//! tests (`CARGO_BIN_EXE_floodgate-serve`), which a binary in another crate cannot offer.
//! Invariant: no logic here; everything is `floodgate_server::serve_main`, the function the
//! `floodgate` binary calls.

use std::process::ExitCode;

use clap::Parser;

/// Run the Floodgate ingestion server (same flags as `floodgate serve`).
#[derive(Debug, Parser)]
#[command(name = "floodgate-serve", version)]
struct Cli {
    #[command(flatten)]
    args: floodgate_server::ServeArgs,
}

fn main() -> ExitCode {
    match floodgate_server::serve_main(Cli::parse().args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
