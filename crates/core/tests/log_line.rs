//! The seed's stage-7 debug line and the overflow warning, captured from tracing.
//!
//! A binary of its own: tracing's callsite interest and max-level caches are process-wide,
//! so a capturing subscriber only sees every event reliably when no other test runs beside
//! it in the same process.

use std::sync::{Arc, Mutex};

use floodgate_core::{Engine, EngineConfig, Event};

/// A `MakeWriter` capturing formatted log lines into a shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("capture lock")
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn debug_logs_the_seed_line_and_overflow_warns() {
    // Proves the seed's stage-7 line at debug level for each applied event, and a warning for
    // an event that would overflow.
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let engine = Engine::start(EngineConfig {
        workers: 1,
        hold_ms: 10,
        ..EngineConfig::production()
    })
    .expect("start");
    engine
        .submit(Event::new("user3", 30))
        .await
        .expect("queued");
    engine
        .submit(Event::new("user3", i64::MAX))
        .await
        .expect("queued");
    let summary = engine.shutdown().await;
    assert_eq!((summary.applied, summary.overflowed), (1, 1));
    let text = String::from_utf8(capture.0.lock().expect("capture").clone()).expect("utf8");
    assert!(
        text.contains("[Worker  0] user=user3, balance=30, wait=0.00ms, hold=10.00ms"),
        "{text}"
    );
    assert!(text.contains("WARN") && text.contains("overflow"), "{text}");
}
