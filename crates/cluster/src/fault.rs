//! Pause points for fault-injection builds: a test can stop a real node (SIGSTOP, the whole
//! process) at an exact step of an owner's snapshot, where a pause from outside would almost
//! never land, and then let its lease expire and another node take over.
//!
//! Invariants:
//! - Without the `fault-injection` feature a pause point compiles to nothing; with it, it
//!   does nothing unless `FLOODGATE_FAULT_PAUSE_DIR` is set and holds a file named after the
//!   point, so a test build behaves as a release build until a test asks.
//! - A trigger file is used once: the first owner to reach the point removes it and stops the
//!   process; the test resumes it by writing the release file ([`PausePoint::release_name`])
//!   and sending SIGCONT.
//! - Nothing of the owner runs past the point before the test resumes it. The SIGSTOP is sent
//!   by a child process, so it reaches the process's threads a moment later (a thread the
//!   kernel picks starts the stop; on a loaded machine that took long enough for the owner to
//!   write its snapshot before it stopped, 2 runs of 25): the owner therefore also waits for
//!   the release file, which the test writes only once it has seen the process stopped.

/// Environment variable naming the directory of trigger files (fault-injection builds).
pub const PAUSE_DIRECTORY_VARIABLE: &str = "FLOODGATE_FAULT_PAUSE_DIR";

/// Where an owner can be paused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PausePoint {
    /// The lease was found valid, the snapshot is not written yet.
    BeforeSnapshotWrite,
    /// The snapshot is written, its events are not purged yet.
    BeforePurge,
}

impl PausePoint {
    /// The trigger file's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::BeforeSnapshotWrite => "before_snapshot_write",
            Self::BeforePurge => "before_purge",
        }
    }

    /// The release file's name: the paused owner goes on once it exists (and the process was
    /// continued).
    pub fn release_name(self) -> String {
        format!("{}.release", self.name())
    }
}

/// How long a paused owner waits for its release file before it goes on anyway (a test that
/// never releases it has failed long before).
#[cfg(feature = "fault-injection")]
const RELEASE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(300);

/// Stops this process at `point` if a test asked for it (fault-injection builds only).
#[cfg(feature = "fault-injection")]
pub(crate) fn pause_point(point: PausePoint, partition: crate::partition::Partition) {
    let Some(directory) = std::env::var_os(PAUSE_DIRECTORY_VARIABLE) else {
        return;
    };
    let trigger = std::path::Path::new(&directory).join(point.name());
    if std::fs::remove_file(&trigger).is_err() {
        return;
    }
    tracing::warn!(
        point = point.name(),
        partition,
        "fault injection: this process stops itself (SIGSTOP) until SIGCONT"
    );
    let pid = std::process::id().to_string();
    if let Err(error) = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
    {
        tracing::error!(%error, "fault injection: SIGSTOP not sent");
        return;
    }
    wait_for_release(&std::path::Path::new(&directory).join(point.release_name()));
}

/// Blocks this thread (the paused owner's; the process is stopping or stopped) until the
/// test writes `release`, then removes it.
#[cfg(feature = "fault-injection")]
fn wait_for_release(release: &std::path::Path) {
    let started = std::time::Instant::now();
    while std::fs::remove_file(release).is_err() {
        if started.elapsed() > RELEASE_PATIENCE {
            tracing::error!(release = %release.display(), "fault injection: never released");
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Stops this process at `point` if a test asked for it (fault-injection builds only).
#[cfg(not(feature = "fault-injection"))]
#[inline]
pub(crate) fn pause_point(_point: PausePoint, _partition: crate::partition::Partition) {}
