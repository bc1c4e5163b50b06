//! Floodgate's benchmark suite as a library: the processes it starts ([`process`]), the load
//! tools it drives ([`tools`]), the measurements ([`sections`]) and the report ([`report`]).
//! The `bench-suite` binary is a thin flag parser over [`Suite`].

pub mod process;
pub mod report;
pub mod sections;
pub mod tools;

use std::path::PathBuf;

use anyhow::{Context, Result};

pub use report::{Report, Table};

/// What to run and where to write it.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// Length of each closed-loop ingest measurement, in seconds.
    pub seconds: u64,
    /// Pairs of runs per ingest cell (one run of each server back to back, alternating which
    /// goes first); the median of the per-pair ratios is kept.
    pub repeat: usize,
    /// Length of the sustained overload window, in seconds (30 by default: long enough for memory to settle).
    pub overload_seconds: u64,
    /// Where `RESULTS.md` and `results.json` go.
    pub out: PathBuf,
    /// Run one section only (`ingest`, `engine`, `overload`, `presets`).
    pub only: Option<String>,
    /// Also load with wrk (an outside tool), so figures do not depend on our generator alone.
    pub use_wrk: bool,
}

impl Default for SuiteOptions {
    fn default() -> Self {
        Self {
            seconds: 5,
            repeat: 5,
            overload_seconds: 30,
            out: PathBuf::from("bench/results"),
            only: None,
            use_wrk: true,
        }
    }
}

/// The whole suite: runs the sections in order and writes the report.
#[derive(Debug)]
pub struct Suite {
    options: SuiteOptions,
    binaries: process::Binaries,
}

impl Suite {
    /// Finds the release binaries that `bench/run.sh` built.
    pub fn new(options: SuiteOptions) -> Result<Self> {
        let binaries = process::Binaries::locate()?;
        Ok(Self { options, binaries })
    }

    /// Runs every selected section, printing each table as it completes.
    pub fn run(&self) -> Result<()> {
        let mut report = Report::default();
        let wanted = |name: &str| self.options.only.as_deref().is_none_or(|only| only == name);
        if wanted("ingest") {
            report.push(sections::ingest(&self.binaries, &self.options)?);
        }
        if wanted("engine") {
            report.push(sections::engine(&self.binaries)?);
        }
        if wanted("overload") {
            report.push(sections::overload(&self.binaries, &self.options)?);
        }
        if wanted("presets") {
            report.push(sections::presets(&self.binaries, &self.options)?);
        }
        std::fs::create_dir_all(&self.options.out)
            .with_context(|| format!("creating {}", self.options.out.display()))?;
        report.write(&self.options.out)?;
        println!("wrote {}/RESULTS.md", self.options.out.display());
        Ok(())
    }
}
