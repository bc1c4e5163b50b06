//! Runs a load: slow clients first, then one current-thread runtime per core with the
//! connections (or the schedule) split across them, then one merge of the tallies.
//!
//! Lesson (stage 6, docs/stages.md: a thread per worker with its own runtime): one
//! runtime per core, no work stealing and no cross-thread traffic per request is what lets a
//! generator outrun the server it measures.
//! Invariant: every thread started is joined before `run` returns, and the slow clients are
//! counted after the load ends and then closed.

use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::LoadError;
use crate::client::{Shared, ThreadContext};
use crate::closed::{self, Budget};
use crate::config::{LoadConfig, Mode};
use crate::open::{self, Schedule};
use crate::progress::Progress;
use crate::report::{Report, RunFacts};
use crate::slow::SlowClients;
use crate::stats::ThreadStats;

/// Delay between planning the open loop and its first due time, so every thread's runtime is
/// up before request 0 is due (otherwise the first requests all start late).
pub const OPEN_LOOP_START_DELAY: Duration = Duration::from_millis(20);

/// What one load thread does.
#[derive(Debug)]
enum ThreadPlan {
    Closed {
        connections: usize,
        requests: Option<u64>,
        deadline: Option<Instant>,
    },
    Open(Schedule),
}

/// Runs a load to completion; see [`run_until`].
pub async fn run(config: LoadConfig) -> Result<Report, LoadError> {
    run_until(config, std::future::pending()).await
}

/// Runs a load until it completes or `stop` resolves (then no new request starts, requests in
/// flight finish or time out, and the report covers what was done). Call inside a tokio
/// runtime; the load itself runs on its own threads.
pub async fn run_until(
    config: LoadConfig,
    stop: impl Future<Output = ()>,
) -> Result<Report, LoadError> {
    config.validate()?;
    let target = config.target()?;
    let slow = SlowClients::start(&target, config.slow_kind, config.slow_clients).await;
    let threads = thread_count(&config);
    let shared = Arc::new(Shared {
        config,
        target,
        stop: AtomicBool::new(false),
        progress: (0..threads).map(|_| AtomicU64::new(0)).collect(),
        requests_started: AtomicU64::new(0),
    });
    // If the caller drops this future mid-run, the load threads still stop promptly.
    let _stop_on_drop = StopOnDrop(Arc::clone(&shared));
    let started = Instant::now();
    let (plans, measured_from) = plan(&shared.config, threads, started);
    let progress = Progress::start(&shared);
    let mut handles = Vec::with_capacity(threads);
    let mut spawn_error = None;
    for (thread_index, plan) in plans.into_iter().enumerate() {
        match spawn_thread(Arc::clone(&shared), thread_index, plan) {
            Ok(handle) => handles.push(handle),
            Err(error) => {
                // Stop the threads already started, then report the error.
                shared.stop.store(true, Ordering::Relaxed);
                spawn_error = Some(error);
                break;
            }
        }
    }
    let collected = collect(handles, stop, &shared).await;
    let duration_seconds = measured_from.elapsed().as_secs_f64();
    progress.finish().await;
    let slow_clients_held = slow.finish().await;
    if let Some(error) = spawn_error {
        return Err(error);
    }
    let (stats, stopped_early) = collected?;
    let facts = RunFacts {
        threads,
        duration_seconds,
        slow_clients_held,
        stopped_early,
    };
    Ok(Report::new(&shared.config, &stats, facts))
}

/// Sets the run's stop flag when dropped.
#[derive(Debug)]
struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}

fn thread_count(config: &LoadConfig) -> usize {
    let wanted = if config.threads == 0 {
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
    } else {
        config.threads
    };
    let work_items = match &config.mode {
        Mode::Closed { concurrency, .. } => *concurrency,
        Mode::Open { max_in_flight, .. } => *max_in_flight,
    };
    wanted.clamp(1, work_items.max(1))
}

/// Splits the connections and requests (or the schedule and in-flight cap) across threads.
/// Returns the plans and the instant the run's duration is measured from.
fn plan(config: &LoadConfig, threads: usize, started: Instant) -> (Vec<ThreadPlan>, Instant) {
    match &config.mode {
        Mode::Closed {
            concurrency,
            requests,
            duration,
        } => {
            let deadline = duration.map(|duration| started + duration);
            let plans = (0..threads)
                .map(|index| ThreadPlan::Closed {
                    connections: share(*concurrency, threads, index),
                    requests: *requests,
                    deadline,
                })
                .collect();
            (plans, started)
        }
        Mode::Open {
            rate_per_second,
            duration,
            max_in_flight,
        } => {
            let t0 = started + OPEN_LOOP_START_DELAY;
            let total = Schedule::total_for(*rate_per_second, *duration);
            let plans = (0..threads)
                .map(|index| {
                    ThreadPlan::Open(Schedule {
                        t0,
                        rate_per_second: *rate_per_second,
                        total,
                        offset: index as u64,
                        stride: threads as u64,
                        max_in_flight: share(*max_in_flight, threads, index),
                    })
                })
                .collect();
            (plans, t0)
        }
    }
}

/// Thread `index`'s share of `total` split as evenly as possible over `parts`.
fn share(total: usize, parts: usize, index: usize) -> usize {
    total / parts + usize::from(index < total % parts)
}

fn spawn_thread(
    shared: Arc<Shared>,
    thread_index: usize,
    plan: ThreadPlan,
) -> Result<(JoinHandle<()>, oneshot::Receiver<ThreadStats>), LoadError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(LoadError::Runtime)?;
    let (sender, receiver) = oneshot::channel();
    let handle = std::thread::Builder::new()
        .name(format!("floodgate-load-{thread_index}"))
        .spawn(move || {
            let context = Rc::new(ThreadContext::new(shared, thread_index));
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, run_plan(Rc::clone(&context), plan));
            drop(local);
            let _ = sender.send(context.stats.take());
        })
        .map_err(LoadError::Runtime)?;
    Ok((handle, receiver))
}

async fn run_plan(context: Rc<ThreadContext>, plan: ThreadPlan) {
    match plan {
        ThreadPlan::Closed {
            connections,
            requests,
            deadline,
        } => {
            let budget = Rc::new(Budget::new(requests, deadline));
            closed::run_thread(context, budget, connections).await;
        }
        ThreadPlan::Open(schedule) => open::run_thread(context, schedule).await,
    }
}

/// Waits for every thread's tallies (asking them to stop early if `stop` fires first), joins
/// the threads and merges the tallies. The flag says whether the run was stopped early.
async fn collect(
    handles: Vec<(JoinHandle<()>, oneshot::Receiver<ThreadStats>)>,
    stop: impl Future<Output = ()>,
    shared: &Shared,
) -> Result<(ThreadStats, bool), LoadError> {
    let (threads, receivers): (Vec<_>, Vec<_>) = handles.into_iter().unzip();
    let wait_all = async move {
        let mut results = Vec::with_capacity(receivers.len());
        for receiver in receivers {
            results.push(receiver.await);
        }
        results
    };
    tokio::pin!(wait_all, stop);
    let results = tokio::select! {
        results = &mut wait_all => results,
        () = &mut stop => {
            shared.stop.store(true, Ordering::Relaxed);
            wait_all.await
        }
    };
    // Every thread has sent its tallies (or died): joining only waits for runtime teardown.
    let joined = tokio::task::spawn_blocking(move || {
        threads.into_iter().map(JoinHandle::join).all(|r| r.is_ok())
    })
    .await
    .unwrap_or(false);
    let mut merged = ThreadStats::new();
    for result in results {
        merged.merge(&result.map_err(|_| LoadError::ThreadFailed)?);
    }
    if !joined {
        return Err(LoadError::ThreadFailed);
    }
    Ok((merged, shared.stopping()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_split_across_threads_without_loss() {
        // Proves the closed-loop split: every connection lands on exactly one thread, however
        // uneven the division (requests are not split: threads draw from one shared count).
        for (concurrency, threads) in [(5, 2), (1, 1), (7, 3), (4, 4), (1000, 3)] {
            let connections: usize = (0..threads).map(|i| share(concurrency, threads, i)).sum();
            assert_eq!(connections, concurrency);
        }
    }

    #[test]
    fn threads_never_outnumber_connections() {
        // Proves a concurrency-1 run uses one thread (a thread with no connection would idle).
        let mut config = LoadConfig::new("http://127.0.0.1:1");
        config.threads = 8;
        config.mode = Mode::Closed {
            concurrency: 1,
            requests: Some(1),
            duration: None,
        };
        assert_eq!(thread_count(&config), 1);
        config.mode = Mode::Closed {
            concurrency: 100,
            requests: Some(1),
            duration: None,
        };
        assert_eq!(thread_count(&config), 8);
    }
}
