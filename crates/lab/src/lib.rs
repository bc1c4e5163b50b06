//! floodgate-lab: the experiments that turn each claim of the design story
//! (`docs/stages.md`, stages 1–8) into a measured verdict, a table, JSON and an SVG plot.
//!
//! `floodgate lab list` names the experiments and the claim each tests; `floodgate lab <name>`
//! runs one; `floodgate lab all` runs every one and writes `REPORT.md` beside the JSON and SVG
//! files (default folder `lab-results`). `--quick` runs the scaled-down form the tests use.
//!
//! # Layout
//! - [`experiments`]: the registry and one module per claim; each starts the servers it needs
//!   in-process on port 0, drives them, stops them, and returns an [`outcome::Outcome`].
//! - [`verdict`], [`table`], [`plot`]: the parts of an outcome (checks with bands, rows, chart).
//! - [`report`]: the files written (`<name>.json`, `<name>.svg`, `REPORT.md`).
//! - [`probe`]: raw TCP clients for idle, partial and trickled requests.
//! - [`measure`]: sustained-throughput windows read from the engine's own counters.
//!
//! Invariant: every experiment stops what it started (servers, load tasks, idle sockets) before
//! it returns, whether its claim held or not.

pub mod experiments;
pub mod measure;
pub mod outcome;
pub mod plot;
pub mod probe;
pub mod report;
pub mod table;
pub mod verdict;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use experiments::{Experiment, LabError};
use outcome::Outcome;
use report::Broken;

/// Flags of `floodgate lab`.
#[derive(Debug, Clone, clap::Args)]
pub struct LabArgs {
    /// `list` (the experiments and their claims), `all` (every experiment, plus REPORT.md), or
    /// the name of one experiment (e.g. `stage7-contention`).
    pub experiment: String,
    /// Folder for `<name>.json`, `<name>.svg` and `REPORT.md`.
    #[arg(long, default_value = "lab-results")]
    pub out: PathBuf,
    /// Run the scaled-down form (simulated time x0.1 or so, fewer requests): seconds instead of
    /// minutes, looser figures. The test suite runs this form.
    #[arg(long)]
    pub quick: bool,
}

/// Entry point of `floodgate lab`: exits 0 when every claim run holds, 1 otherwise.
#[allow(clippy::needless_pass_by_value)] // the CLI contract: every `*_main` takes its Args by value
pub fn lab_main(args: LabArgs) -> anyhow::Result<ExitCode> {
    match args.experiment.as_str() {
        "list" => {
            print!("{}", render_list());
            Ok(ExitCode::SUCCESS)
        }
        "all" => run_all(&args.out, args.quick),
        name => {
            let Some(experiment) = Experiment::from_name(name) else {
                anyhow::bail!(
                    "no experiment named {name:?}; `floodgate lab list` shows them:\n{}",
                    render_list()
                );
            };
            run_one(experiment, &args.out, args.quick)
        }
    }
}

/// The experiments, one per line, with the claim each tests.
pub fn render_list() -> String {
    let mut text = String::new();
    for experiment in Experiment::ALL {
        let info = experiment.info();
        let _ = writeln!(
            text,
            "{:<22} stage {:<6} {}",
            info.name, info.stage, info.claim
        );
    }
    text
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn print_and_write(outcome: &Outcome, out: &Path) -> anyhow::Result<()> {
    println!("{}", outcome.render_text());
    let (json, svg) = report::write_outcome(out, outcome)?;
    println!("wrote {} and {}\n", json.display(), svg.display());
    Ok(())
}

fn run_one(experiment: Experiment, out: &Path, quick: bool) -> anyhow::Result<ExitCode> {
    let outcome = runtime()?.block_on(experiment.run(quick))?;
    print_and_write(&outcome, out)?;
    Ok(if outcome.verdict.holds {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_all(out: &Path, quick: bool) -> anyhow::Result<ExitCode> {
    let runtime = runtime()?;
    let mut outcomes = Vec::new();
    let mut broken = Vec::new();
    for experiment in Experiment::ALL {
        eprintln!("running {} ...", experiment.info().name);
        match runtime.block_on(experiment.run(quick)) {
            Ok(outcome) => {
                print_and_write(&outcome, out)?;
                outcomes.push(outcome);
            }
            Err(error) => {
                eprintln!("{}: could not run: {error}", experiment.info().name);
                broken.push(broken_entry(experiment, &error));
            }
        }
    }
    let path = report::write_report(out, &outcomes, &broken, quick)?;
    println!("wrote {}", path.display());
    let all_hold = broken.is_empty() && outcomes.iter().all(|outcome| outcome.verdict.holds);
    Ok(if all_hold {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn broken_entry(experiment: Experiment, error: &LabError) -> Broken {
    Broken {
        info: *experiment.info(),
        error: error.to_string(),
    }
}
