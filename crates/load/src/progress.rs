//! The progress bar: drawn on stderr only when it is a terminal and the run lasts > 1 s.
//!
//! Lesson (seen in other load generators): a UI on the hot path changes what is measured. The bar
//! reads the threads' progress counters ten times a second from the coordinator's runtime;
//! the load threads only bump their own uncontended counter.
//! Invariant: nothing is drawn when stderr is not a terminal, when disabled, or before the run
//! has lasted a second; the bar is cleared before the report is printed.

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::Shared;
use crate::config::Mode;
use crate::open::Schedule;

/// Runs shorter than this never show a bar.
pub const PROGRESS_DELAY: Duration = Duration::from_secs(1);
/// Bar refresh period.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// A running progress display (or nothing).
#[derive(Debug)]
pub struct Progress {
    running: Option<(JoinHandle<()>, watch::Sender<bool>)>,
}

impl Progress {
    /// Starts the display if enabled and stderr is a terminal.
    pub fn start(shared: &Arc<Shared>) -> Self {
        if !shared.config.progress || !std::io::stderr().is_terminal() {
            return Self { running: None };
        }
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(show(Arc::clone(shared), stopped));
        Self {
            running: Some((task, stop)),
        }
    }

    /// Stops and clears the display.
    pub async fn finish(self) {
        if let Some((task, stop)) = self.running {
            let _ = stop.send(true);
            let _ = task.await;
        }
    }
}

async fn show(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let started = Instant::now();
    tokio::select! {
        () = tokio::time::sleep(PROGRESS_DELAY) => {}
        _ = stopped.changed() => return,
    }
    let (length, by_time) = match &shared.config.mode {
        Mode::Closed {
            requests: Some(requests),
            ..
        } => (*requests, false),
        Mode::Closed { duration, .. } => (duration.map_or(0, |d| d.as_millis() as u64), true),
        Mode::Open {
            rate_per_second,
            duration,
            ..
        } => (Schedule::total_for(*rate_per_second, *duration), false),
    };
    let template = if by_time {
        "{elapsed_precise} [{wide_bar}] {msg}"
    } else {
        "{elapsed_precise} [{wide_bar}] {pos}/{len} {msg}"
    };
    let style =
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr_with_hz(10))
        .with_style(style)
        .with_elapsed(started.elapsed());
    let mut interval = tokio::time::interval(PROGRESS_INTERVAL);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stopped.changed() => break,
        }
        let done: u64 = shared
            .progress
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum();
        let elapsed = started.elapsed();
        bar.set_position(if by_time {
            elapsed.as_millis() as u64
        } else {
            done
        });
        bar.set_message(format!(
            "{done} done, {:.0}/s",
            done as f64 / elapsed.as_secs_f64()
        ));
    }
    bar.finish_and_clear();
}
