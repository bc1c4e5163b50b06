//! Writing to stderr (the log) and stdout (the final summary) without ever failing the writer.
//!
//! Lesson: a log reader that goes away (a `| tee` killed, a log shipper restarting, a closed
//! terminal) makes every later write to stderr fail with `EPIPE`. tracing-subscriber reports a
//! failed write with `eprintln!`, and `eprintln!`/`println!` panic when their write fails: a
//! logging worker died with its event, and SIGTERM or the final summary exited 101 without
//! draining. A lost log line is a pity; a lost event answered 202 breaks the contract.
//! Invariant: every write the server makes to stderr or stdout goes through [`Tolerant`],
//! which reports success to its caller and counts the failure instead (exported as
//! `floodgate_log_write_errors_total`), so no write can panic or stop a task.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use tracing_subscriber::fmt::MakeWriter;

/// Writes to stderr or stdout that failed and were dropped, since the process started.
static WRITE_ERRORS: AtomicU64 = AtomicU64::new(0);

/// Writes to stderr or stdout that failed and were dropped, since the process started.
pub fn write_errors_total() -> u64 {
    WRITE_ERRORS.load(Ordering::Relaxed)
}

/// A writer that never fails: an error is counted and the bytes are dropped.
#[derive(Debug)]
pub struct Tolerant<W>(pub W);

impl<W: Write> Write for Tolerant<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match self.0.write(buf) {
                Ok(written) => return Ok(written),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    WRITE_ERRORS.fetch_add(1, Ordering::Relaxed);
                    return Ok(buf.len());
                }
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.0.flush().is_err() {
            WRITE_ERRORS.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The log's writer for tracing-subscriber: stderr through [`Tolerant`].
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = Tolerant<io::StderrLock<'static>>;

    fn make_writer(&'a self) -> Self::Writer {
        Tolerant(io::stderr().lock())
    }
}

/// Writes one line to stdout; a failure is counted, never raised.
pub fn print_line(line: std::fmt::Arguments<'_>) {
    let mut stdout = Tolerant(io::stdout().lock());
    let _ = stdout.write_fmt(line);
    let _ = stdout.write_all(b"\n");
    let _ = stdout.flush();
}

/// Writes one line to stderr outside the log (e.g. just before exiting); never fails.
pub fn eprint_line(line: std::fmt::Arguments<'_>) {
    let mut stderr = Tolerant(io::stderr().lock());
    let _ = stderr.write_fmt(line);
    let _ = stderr.write_all(b"\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose reader is gone.
    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }

        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
    }

    // Proves a broken pipe is reported as success to the writer's caller and counted.
    #[test]
    fn a_broken_writer_succeeds_and_counts() {
        let before = write_errors_total();
        let mut writer = Tolerant(Broken);
        assert!(writeln!(writer, "lost line").is_ok());
        assert!(writer.flush().is_ok());
        assert!(write_errors_total() >= before + 2);
    }
}
