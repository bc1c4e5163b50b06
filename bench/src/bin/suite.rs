//! The benchmark suite: Floodgate measured against its ceilings, side by side, in one
//! run, as ratios. This machine has 2 cores and is noisy, so absolute figures mean little; a
//! ratio between two servers loaded by the same tool a few seconds apart means a lot.
//!
//! Sections (each prints a markdown table; all go to `<out>/RESULTS.md` and `<out>/results.json`):
//! 1. ingest: `POST /events` with keep-alive, closed loop at 16/64/256 connections, against the
//!    production default and the bare hyper ceiling, each loaded by `floodgate load` and by wrk.
//! 2. engine: events/s through queue + workers + ledger without HTTP (the core's
//!    `engine_throughput` example), for every ledger strategy.
//! 3. overload: an open loop at 2x a known capacity for a sustained window: accepted rate against
//!    the rate at capacity, rejection p99, and the server's memory sampled every second.
//! 4. seed presets: stages 7 and 8 with 16 and 64 workers over 1,000 users: applied jobs/s
//!    against the theoretical limit workers / (work + hold).
//!
//! Run it with `bench/run.sh` (which builds everything in release first). It only ever targets
//! loopback, and every process it starts is killed when its measurement ends.

use std::path::PathBuf;

use anyhow::Result;
use floodgate_bench::{Suite, SuiteOptions};

fn main() -> Result<()> {
    let mut options = SuiteOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--seconds" => options.seconds = parse_next(&mut args, "--seconds")?,
            "--repeat" => options.repeat = parse_next(&mut args, "--repeat")?,
            "--overload-seconds" => {
                options.overload_seconds = parse_next(&mut args, "--overload-seconds")?;
            }
            "--out" => options.out = PathBuf::from(parse_next::<String>(&mut args, "--out")?),
            "--only" => options.only = Some(parse_next(&mut args, "--only")?),
            "--skip-wrk" => options.use_wrk = false,
            other => anyhow::bail!(
                "unknown flag {other}; flags: --seconds N --repeat N --overload-seconds N --out DIR \
                 --only ingest|engine|overload|presets --skip-wrk"
            ),
        }
    }
    Suite::new(options)?.run()
}

fn parse_next<T: std::str::FromStr>(
    args: &mut impl Iterator<Item = String>,
    flag: &str,
) -> Result<T> {
    let value = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
    value
        .parse()
        .map_err(|_| anyhow::anyhow!("{flag}: cannot parse {value:?}"))
}
