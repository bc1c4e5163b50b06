//! The one `floodgate` binary: a thin dispatcher. Each subcommand's flags and behaviour live in
//! the library crate that owns them (`floodgate-server`, `floodgate-load`, `floodgate-lab`), so
//! tests and the lab drive the same code in-process.

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc as the global allocator: a request allocates and frees small buffers on whichever
/// runtime thread runs it, which the system allocator serves more slowly (bench/run.sh).
#[global_allocator]
static GLOBAL_ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Floodgate: an HTTP service that ingests JSON events and keeps per-user balances, its load
/// generator, and the lab that measures every lesson of its design story.
#[derive(Debug, Parser)]
#[command(name = "floodgate", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the ingestion server (the production default, or a seed stage with `--stage N`).
    Serve(floodgate_server::ServeArgs),
    /// Drive a server with load and report what it answered, and how fast.
    Load(floodgate_load::LoadArgs),
    /// Run the experiments that turn each claim of the design story into a measured verdict.
    Lab(floodgate_lab::LabArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Serve(args) => floodgate_server::serve_main(args),
        Command::Load(args) => floodgate_load::load_main(args),
        Command::Lab(args) => floodgate_lab::lab_main(args),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            // Not `eprintln!`: it panics when stderr's reader is gone.
            let _ = writeln!(std::io::stderr(), "error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
