//! The registry of experiments: one per claim of the seed, plus those beyond it.
//!
//! Lesson (all stages, docs/stages.md): each stage makes a claim; each experiment here reproduces
//! it on this machine, in-process, in seconds (`--quick`) or with the seed's own parameters.
//!
//! Invariant: [`Experiment::ALL`] lists every experiment exactly once, in seed order, and every
//! name is unique (tested), so `lab all` runs each claim once and REPORT.md follows the story.

pub mod exactly_once;
pub mod hot_keys;
pub mod process;
pub mod scale_out;
pub mod servers;
pub mod shared_receiver;
pub mod stage1;
pub mod stage2;
pub mod stage3;
pub mod stage4;
pub mod stage5;
pub mod stage6;
pub mod stage7;
pub mod stage8;
pub mod stage9;
pub mod sustain;

use std::time::Instant;

use serde::Serialize;

use crate::outcome::{ExperimentInfo, Outcome};
use crate::plot::PlotSpec;
use crate::table::Table;
use crate::verdict::{Check, Verdict};

/// Why an experiment could not run (as opposed to running and finding its claim false).
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A server could not be started or stopped.
    #[error("server: {0}")]
    Server(String),
    /// The load generator failed.
    #[error("load generator: {0}")]
    Load(String),
    /// A raw socket operation failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// A part the experiment needs is not built yet.
    #[error("not available yet: {0}")]
    Unavailable(&'static str),
}

/// Every experiment the lab knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Experiment {
    /// Stage 1: idle connections freeze the blocking server.
    Stage1Freeze,
    /// Stage 2: the async server serves clients together.
    Stage2Concurrency,
    /// Stage 3: bad input gets predictable answers.
    Stage3BadInput,
    /// Stage 4: inline work under one lock serializes.
    Stage4InlineLock,
    /// Stage 5: a bounded queue rejects a burst fast.
    Stage5Backpressure,
    /// Stage 6: workers multiply throughput.
    Stage6Workers,
    /// Stage 7: one lock caps throughput.
    Stage7Contention,
    /// Stage 8: sharding lifts the cap.
    Stage8Sharding,
    /// Stage 9: a 202 from the log survives SIGKILL.
    Stage9DurableAcceptance,
    /// Beyond: a hot user defeats sharding.
    HotKeys,
    /// Beyond: the seed's shared receiver against a multi-consumer channel.
    SharedReceiver,
    /// Beyond: resends with ids are applied once through kill -9, without ids twice.
    ExactlyOnce,
    /// Beyond: three cluster nodes on three brokers through a broker and a node kill -9.
    ScaleOut,
}

impl Experiment {
    /// Every experiment, in the order of the seed's story.
    pub const ALL: [Self; 13] = [
        Self::Stage1Freeze,
        Self::Stage2Concurrency,
        Self::Stage3BadInput,
        Self::Stage4InlineLock,
        Self::Stage5Backpressure,
        Self::Stage6Workers,
        Self::Stage7Contention,
        Self::Stage8Sharding,
        Self::Stage9DurableAcceptance,
        Self::HotKeys,
        Self::SharedReceiver,
        Self::ExactlyOnce,
        Self::ScaleOut,
    ];

    /// The experiment called `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|experiment| experiment.info().name == name)
    }

    /// Its name and the claim it tests.
    pub fn info(self) -> &'static ExperimentInfo {
        match self {
            Self::Stage1Freeze => &STAGE1,
            Self::Stage2Concurrency => &STAGE2,
            Self::Stage3BadInput => &STAGE3,
            Self::Stage4InlineLock => &STAGE4,
            Self::Stage5Backpressure => &STAGE5,
            Self::Stage6Workers => &STAGE6,
            Self::Stage7Contention => &STAGE7,
            Self::Stage8Sharding => &STAGE8,
            Self::Stage9DurableAcceptance => &STAGE9,
            Self::HotKeys => &HOT_KEYS,
            Self::SharedReceiver => &SHARED_RECEIVER,
            Self::ExactlyOnce => &EXACTLY_ONCE,
            Self::ScaleOut => &SCALE_OUT,
        }
    }

    /// Runs it: the full form (the seed's parameters) or the `quick` one.
    pub async fn run(self, quick: bool) -> Result<Outcome, LabError> {
        macro_rules! form {
            ($module:ident) => {
                if quick {
                    $module::run(&$module::Params::quick()).await
                } else {
                    $module::run(&$module::Params::full()).await
                }
            };
        }
        match self {
            Self::Stage1Freeze => form!(stage1),
            Self::Stage2Concurrency => form!(stage2),
            Self::Stage3BadInput => form!(stage3),
            Self::Stage4InlineLock => form!(stage4),
            Self::Stage5Backpressure => form!(stage5),
            Self::Stage6Workers => form!(stage6),
            Self::Stage7Contention => form!(stage7),
            Self::Stage8Sharding => form!(stage8),
            Self::Stage9DurableAcceptance => form!(stage9),
            Self::HotKeys => form!(hot_keys),
            Self::SharedReceiver => form!(shared_receiver),
            Self::ExactlyOnce => form!(exactly_once),
            Self::ScaleOut => form!(scale_out),
        }
    }
}

/// What an experiment found, before it is stamped with its name, parameters and time.
#[derive(Debug, Clone)]
pub struct Findings {
    /// The headline figure in one line.
    pub measured: String,
    /// The measured rows.
    pub table: Table,
    /// The checks that decide the verdict.
    pub checks: Vec<Check>,
    /// The chart.
    pub plot: PlotSpec,
    /// Remarks (where the seed's story and the measurement differ).
    pub notes: Vec<String>,
}

/// Stamps `findings` into an [`Outcome`] for `info`, run with `params` since `started`.
pub fn finish(
    info: &'static ExperimentInfo,
    quick: bool,
    params: &impl Serialize,
    started: Instant,
    findings: Findings,
) -> Outcome {
    Outcome {
        info: *info,
        quick,
        parameters: serde_json::to_value(params).unwrap_or(serde_json::Value::Null),
        measured: findings.measured,
        table: findings.table,
        verdict: Verdict::from_checks(findings.checks),
        plot: findings.plot,
        notes: findings.notes,
        elapsed_seconds: started.elapsed().as_secs_f64(),
    }
}

/// Stage 1's claim.
pub const STAGE1: ExperimentInfo = ExperimentInfo {
    name: "stage1-freeze",
    stage: "1",
    claim: "20 idle connections freeze the blocking single-threaded server: a valid request from \
            another client gets no answer within the timeout, while the async stage-2 server and \
            the default server answer it at once.",
    seed_says: "With 20 `nc` connections open, the server accepts one and freezes; a valid request \
                from another terminal also hangs.",
};

/// Stage 2's claim.
pub const STAGE2: ExperimentInfo = ExperimentInfo {
    name: "stage2-concurrency",
    stage: "2",
    claim: "The async server serves clients together: clients that arrive while another \
            trickles its request are answered at once (the blocking server makes them wait for \
            the slow one), and idle or trickling clients delay no other request.",
    seed_says: "Handles multiple clients at once – each client runs in its own async task, so \
                slow clients don't block others.",
};

/// Stage 3's claim.
pub const STAGE3: ExperimentInfo = ExperimentInfo {
    name: "stage3-bad-input",
    stage: "3",
    claim: "Malformed, cut-short, oversized, slow and trickled requests each get a predictable \
            answer (status and reason), and the server keeps serving valid events afterwards.",
    seed_says: "Errors should be handled explicitly and return predictable responses, not \
                crashes; partial reads are normal.",
};

/// Stage 4's claim.
pub const STAGE4: ExperimentInfo = ExperimentInfo {
    name: "stage4-inline-lock",
    stage: "4",
    claim: "Slow work done inline while holding one lock serializes requests: N concurrent \
            requests take about N × work, not 1 × work.",
    seed_says: "Async does not equal parallel: multiple clients are accepted concurrently, but \
                slow work (500 ms) + mutex serializes requests.",
};

/// Stage 5's claim.
pub const STAGE5: ExperimentInfo = ExperimentInfo {
    name: "stage5-backpressure",
    stage: "5",
    claim: "A burst beyond capacity: accepted ≈ queue capacity + the event in flight, the rest \
            are rejected at once (503 in far less time than a queued event waits), and the \
            single worker keeps its fixed pace of 1/work.",
    seed_says: "Accepted requests matched queue capacity (100); clients get fast, clear \
                rejection; the worker speed never changed (~2 jobs/s at 500 ms).",
};

/// Stage 6's claim.
pub const STAGE6: ExperimentInfo = ExperimentInfo {
    name: "stage6-workers",
    stage: "6",
    claim: "With independent 500 ms jobs, throughput grows about linearly with workers: \
            1, 2, 4, 8 workers ≈ 2, 4, 8, 16 events/s.",
    seed_says: "1 worker ~2 jobs/sec; 4 workers ~8 jobs/sec (4x faster).",
};

/// Stage 7's claim.
pub const STAGE7: ExperimentInfo = ExperimentInfo {
    name: "stage7-contention",
    stage: "7",
    claim: "With one global lock held 10 ms per event (after 100 ms of work), throughput \
            plateaus near 1/hold = 100 events/s however many workers, lock wait ≫ hold, and the \
            seed's stress test (5000 requests, concurrency 200, queue 100) rejects most of it.",
    seed_says: "Accepted 138, rejected 4862 (97%); ~100 jobs/s effective max; wait 45–82 ms vs \
                hold 10 ms; 16 workers plateau, 64 workers 'actually slower'.",
};

/// Stage 8's claim.
pub const STAGE8: ExperimentInfo = ExperimentInfo {
    name: "stage8-sharding",
    stage: "8",
    claim: "Sharding the ledger by hash(user) lifts the plateau: throughput follows \
            workers / (work + hold) instead of stopping at 1/hold.",
    seed_says: "Split the state into shards so workers updating different users don't block \
                each other (16 workers: ≈145 jobs/s theoretical).",
};

/// Stage 9's claim (the durable ledger, past the seed's eight stages).
pub const STAGE9: ExperimentInfo = ExperimentInfo {
    name: "stage9-durable-acceptance",
    stage: "9",
    claim: "Under the same load and a SIGKILL mid-load, the seed's in-memory acceptance loses \
            the events it answered 202, while `write` and `fsync` (202 after the log) lose none \
            on restart; group commit puts more events in each sync as more clients wait, so \
            `fsync` costs about one sync per group, not per event.",
    seed_says: "(past the seed) Stage 5's queue makes a 202 mean \"in this process's memory\"; \
                the seed never restarts the server.",
};

/// The hot-key claim (beyond the seed).
pub const HOT_KEYS: ExperimentInfo = ExperimentInfo {
    name: "hot-keys",
    stage: "beyond",
    claim: "Sharding does not save a hot user: when the events are skewed towards one user, that \
            user's shard lock caps throughput near 1/(hold × hot share) again.",
    seed_says: "(not in the seed) Stage 8 shards by user and assumes updates spread over users.",
};

/// The shared-receiver claim (beyond the seed).
pub const SHARED_RECEIVER: ExperimentInfo = ExperimentInfo {
    name: "shared-receiver",
    stage: "beyond",
    claim: "The seed's Arc<Mutex<Receiver>> shares work as well as a true multi-consumer \
            channel: equal throughput on the seed's 500 ms jobs, and both still scale with \
            workers on 1 ms jobs (the receive lock is held only to take a job).",
    seed_says: "Shared receiver pattern: wrap the receiver in Arc<Mutex<Receiver<Job>>>; simple \
                and effective for work distribution.",
};

/// The exactly-once claim (beyond the seed, issue 13).
pub const EXACTLY_ONCE: ExperimentInfo = ExperimentInfo {
    name: "exactly-once",
    stage: "beyond",
    claim: "Clients that resend every unanswered request through kill -9 of a durable server \
            end with balances exactly equal to the events acknowledged when every event \
            carries an id, and drift upwards (events applied twice) when none does.",
    seed_says: "(not in the seed) The seed's client never resends; a real one must, and a \
                resend without an identity is a second event.",
};

/// The scale-out claim (beyond the seed, issue 15).
pub const SCALE_OUT: ExperimentInfo = ExperimentInfo {
    name: "scale-out",
    stage: "beyond",
    claim: "Three `floodgate serve --nats` nodes on a three-server JetStream cluster, under \
            clients that resend with ids to any node, lose no acknowledged event and apply none \
            twice through a SIGKILL of the stream's leader broker and of a node: the live nodes \
            own every partition again within TTL + TTL/3 + expiry, the front doors keep \
            accepting, and the restarted node takes partitions back.",
    seed_says: "(not in the seed) One process is one point of failure; issue 15 adds nodes on \
                a replicated log with leased partition owners.",
};

#[cfg(test)]
mod tests {
    use super::*;

    // Proves every experiment is listed once, names are unique, and each name finds itself.
    #[test]
    fn registry_names_are_unique_and_resolvable() {
        let mut names: Vec<&str> = Experiment::ALL.iter().map(|e| e.info().name).collect();
        for experiment in Experiment::ALL {
            assert_eq!(
                Experiment::from_name(experiment.info().name),
                Some(experiment)
            );
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Experiment::ALL.len());
        assert_eq!(Experiment::from_name("stage9"), None);
    }
}
