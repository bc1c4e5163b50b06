//! `floodgate serve`: logging, settings, signals, and the final summary.
//!
//! Lesson: a service is operated through its logs and signals: one info line with every
//! setting's effective value at start, no line per request at the default level,
//! SIGTERM/Ctrl-C/SIGQUIT drain everything accepted before the process exits 0, and a second
//! signal exits at once.
//! Invariant: the summary printed at exit is the engine's own `Summary` after the drain, so
//! `applied` there equals the number of 202 answers clients received.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use anyhow::Context as _;
use floodgate_core::engine::Summary;
use tracing_subscriber::EnvFilter;

use crate::raw::blocking::BlockingServerHandle;
use crate::raw::echo::EchoServerHandle;
use crate::settings::{ServeArgs, ServePlan, ServeSettings};
use crate::signals::Reload;

/// Exit code after a second signal cut the graceful stop short.
pub const EXIT_CODE_FORCED: u8 = 130;
/// Margin of file descriptors kept for the process itself besides connections.
const FD_MARGIN: usize = 64;

/// Entry point of `floodgate serve`.
pub fn serve_main(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_tracing();
    let plan = args.resolve()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(run_plan(plan))
}

/// Logs to stderr, level from `RUST_LOG` (default `info`); a second init is ignored.
fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(crate::output::LogWriter)
        .log_internal_errors(false) // a failed write is counted by the writer, never printed
        .try_init();
}

async fn run_plan(plan: ServePlan) -> anyhow::Result<ExitCode> {
    let signals = Signals::register()?;
    let reload = Reload::default();
    crate::signals::handle_non_stopping(reload.clone())?;
    match plan {
        ServePlan::Blocking { addr } => {
            let server = BlockingServerHandle::bind(addr)
                .with_context(|| format!("cannot listen on {addr}"))?;
            tracing::info!(addr = %server.addr(), stage = 1, "serving: blocking echo, one connection at a time, no timeouts");
            signals.first_then_arm_second().await;
            tokio::task::spawn_blocking(move || server.stop()).await?;
            Ok(ExitCode::SUCCESS)
        }
        ServePlan::Echo { addr } => {
            let server = EchoServerHandle::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            tracing::info!(addr = %server.addr(), stage = 2, "serving: async echo, one task per connection");
            signals.first_then_arm_second().await;
            server.stop().await;
            Ok(ExitCode::SUCCESS)
        }
        ServePlan::Http { settings } => run_front_door(*settings, signals, &reload).await,
    }
}

async fn run_front_door(
    settings: ServeSettings,
    signals: Signals,
    reload: &Reload,
) -> anyhow::Result<ExitCode> {
    let addr = settings.addr;
    let listener =
        crate::conn::bind_listener(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    warn_if_fd_limit_low(settings.config.front_door.max_connections);
    tracing::info!(
        addr = %bound,
        settings = %settings.describe(),
        "listening"
    );
    let config = settings.config;
    let stop = signals.first_then_arm_second();
    let summary = crate::server::run(listener, config, reload, stop).await?;
    print_summary(&summary);
    Ok(ExitCode::SUCCESS)
}

/// Prints the final summary on stdout (one `key=value` line) and logs it.
fn print_summary(summary: &Summary) {
    crate::output::print_line(format_args!(
        "final summary: accepted={} applied={} rejected={} invalid={} overflowed={}",
        summary.accepted, summary.applied, summary.rejected, summary.invalid, summary.overflowed
    ));
    tracing::info!(
        accepted = summary.accepted,
        applied = summary.applied,
        rejected = summary.rejected,
        invalid = summary.invalid,
        overflowed = summary.overflowed,
        "stopped"
    );
}

/// SIGTERM, SIGINT (Ctrl-C) and SIGQUIT, the stops that drain, registered as soon as this is
/// built, so a signal that arrives while the server starts is not lost to the default action.
struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    quit: tokio::signal::unix::Signal,
}

impl Signals {
    #[cfg(unix)]
    fn register() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            quit: signal(SignalKind::quit()).context("cannot handle SIGQUIT")?,
        })
    }

    #[cfg(not(unix))]
    fn register() -> anyhow::Result<Self> {
        Ok(Self {})
    }

    #[cfg(unix)]
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
            _ = self.quit.recv() => {}
        }
    }

    #[cfg(not(unix))]
    async fn recv(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }

    /// Waits for the first signal, then arms the second: it exits the process at once.
    async fn first_then_arm_second(mut self) {
        self.recv().await;
        tracing::info!("signal received: stopping gracefully (a second signal exits at once)");
        tokio::spawn(async move {
            self.recv().await;
            crate::output::eprint_line(format_args!(
                "second signal: exiting at once without draining"
            ));
            std::process::exit(i32::from(EXIT_CODE_FORCED));
        });
    }
}

/// Warns when the open-file limit cannot hold `max_connections` (Linux: /proc/self/limits).
fn warn_if_fd_limit_low(max_connections: usize) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    let soft = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|value| value.parse::<usize>().ok());
    if let Some(soft) = soft.filter(|soft| *soft < max_connections + FD_MARGIN) {
        tracing::warn!(
            open_files_limit = soft,
            max_connections,
            "the open-file limit is below max-connections: raise `ulimit -n` or lower --max-connections"
        );
    }
}
