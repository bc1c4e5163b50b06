//! A node given fewer `--nats` URLs than its cluster has servers warns that its objects get
//! fewer replicas, once per connect however many times JetStream makes it retry.
//!
//! A binary of its own: tracing's callsite interest and max-level caches are process-wide,
//! so a capturing subscriber only sees every event reliably when no other test runs beside
//! it in the same process.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use floodgate_cluster::partition::SUBJECT_PREFIX;
use floodgate_cluster::{ClusterConfig, Layout, LayoutError, LocalCluster};

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

/// Waits until the server at `url` tells a new client of at least `servers` client URLs.
async fn wait_for_gossip(url: &str, servers: usize) {
    let started = Instant::now();
    loop {
        let client = async_nats::connect(url).await.expect("connect");
        let known = client.server_info().connect_urls.len();
        drop(client);
        if known >= servers {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the server knows {known} of {servers} client URLs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// Proves the warning comes once when the connect retries many times: a stream that already
// takes the events subjects makes every try fail after JetStream answered (the bucket checks
// pass, creating the events stream is refused for overlapping subjects) until the ready
// timeout; the one URL given names one of three servers.
#[tokio::test]
async fn fewer_urls_than_servers_warns_once_across_retries() {
    let cluster = LocalCluster::start(3).unwrap_or_else(|error| panic!("{error}"));
    let urls = cluster.urls();
    let first = urls[0].clone();
    wait_for_gossip(&first, 2).await;
    let blocker = async_nats::connect(&first).await.expect("connect");
    let jetstream = async_nats::jetstream::new(blocker);
    let started = Instant::now();
    while let Err(error) = jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: "TAKES_THE_EVENTS_SUBJECTS".to_owned(),
            subjects: vec![format!("{SUBJECT_PREFIX}.*")],
            ..Default::default()
        })
        .await
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "JetStream not ready: {error}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let config = ClusterConfig::new(2, 1);
    let outcome = Layout::connect(&[first], &config, Duration::from_millis(1_500)).await;
    assert!(
        matches!(outcome, Err(LayoutError::NotReady { .. })),
        "{outcome:?}"
    );

    let text = String::from_utf8(capture.0.lock().expect("capture").clone()).expect("utf8");
    let lines_with =
        |part: &str| -> Vec<&str> { text.lines().filter(|line| line.contains(part)).collect() };
    let retries = lines_with("JetStream not ready yet");
    assert!(retries.len() >= 2, "the connect retried: {retries:#?}");
    let warnings = lines_with("more servers than --nats names");
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
}
