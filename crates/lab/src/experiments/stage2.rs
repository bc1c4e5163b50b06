//! Stage 2: the async server serves many clients together; a slow client delays no other.
//!
//! Lesson (stage 2, docs/stages.md): with a task per connection, a client that pauses mid-request
//! only holds its own task. N clients that each pause for `pause` finish in about one pause on the
//! async server and in N pauses on the blocking one; and requests sent while an idle and a
//! trickling client hang on are answered as fast as without them.
//!
//! Invariant: every client is bounded by a deadline, the slow clients are cancelled and every
//! server stopped before `run` returns.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::servers::Target;
use super::{Findings, LabError, STAGE2, finish};
use crate::outcome::Outcome;
use crate::plot::{Bar, PlotKind, PlotSpec, Reference};
use crate::probe::{self, Answer};
use crate::table::Table;
use crate::verdict::{Check, Expectation, format_figure};

/// Pause between two bytes of the trickling slow client.
const TRICKLE_PAUSE: Duration = Duration::from_millis(20);

/// Parameters of the stage-2 experiment.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// The scaled-down form?
    pub quick: bool,
    /// Ordinary clients that arrive while a slow client is sending its request.
    pub clients: usize,
    /// How long the slow client takes to send its (complete) request, in milliseconds.
    pub slow_ms: u64,
    /// Requests sent one after another, with and without slow clients hanging on.
    pub probe_requests: usize,
    /// The server claimed to serve clients together.
    pub concurrent: Target,
}

impl Params {
    /// 20 clients pausing 200 ms each; 20 probe requests.
    pub fn full() -> Self {
        Self {
            quick: false,
            clients: 50,
            slow_ms: 1_000,
            probe_requests: 20,
            concurrent: Target::Echo,
        }
    }

    /// 10 clients pausing 100 ms each; 10 probe requests.
    pub fn quick() -> Self {
        Self {
            quick: true,
            clients: 20,
            slow_ms: 300,
            probe_requests: 10,
            concurrent: Target::Echo,
        }
    }

    fn slow(&self) -> Duration {
        Duration::from_millis(self.slow_ms)
    }
}

/// Latencies (ms, `None` when unanswered) of `clients` ordinary clients that arrive just after
/// a slow client began trickling its request over `slow_ms`; and whether the slow one was answered.
async fn behind_slow_client(
    target: Target,
    params: &Params,
) -> Result<(Vec<Option<f64>>, bool), LabError> {
    let server = target.start().await?;
    let addr = server.addr();
    let slow_request = probe::valid_event("slow", 1);
    let per_byte = params.slow() / u32::try_from(slow_request.len()).unwrap_or(u32::MAX);
    let deadline = params.slow() * 3 + Duration::from_secs(1);
    let slow = tokio::spawn(async move {
        probe::exchange_paced(addr, &slow_request, per_byte, deadline).await
    });
    tokio::time::sleep(params.slow() / 10).await;
    let mut tasks = Vec::with_capacity(params.clients);
    for index in 0..params.clients {
        let request = probe::valid_event(&format!("user{index}"), 1);
        tasks.push(tokio::spawn(async move {
            probe::exchange(addr, &request, deadline).await
        }));
    }
    let mut latencies = Vec::with_capacity(params.clients);
    let mut failure = None;
    for task in tasks {
        match task.await {
            Ok(Ok(answer)) => latencies.push(ok_latency(&answer)),
            Ok(Err(error)) => failure = Some(LabError::Io(error)),
            Err(error) => failure = Some(LabError::Server(format!("client task: {error}"))),
        }
    }
    let slow_answered = matches!(slow.await, Ok(Ok(answer)) if answer.status() == Some(200));
    server.stop().await?;
    match failure {
        Some(error) => Err(error),
        None => Ok((latencies, slow_answered)),
    }
}

fn ok_latency(answer: &Answer) -> Option<f64> {
    match answer {
        Answer::Response {
            status: 200,
            latency,
            ..
        } => Some(latency.as_secs_f64() * 1e3),
        _ => None,
    }
}

/// A client that sends a request head one byte at a time, forever (until aborted).
async fn trickle_forever(addr: std::net::SocketAddr) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    let head = b"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: ";
    stream.write_all(head).await?;
    loop {
        stream.write_all(b"a").await?;
        tokio::time::sleep(TRICKLE_PAUSE).await;
    }
}

/// Latencies (ms) of `count` sequential requests, or None for one that was not answered.
async fn sequential(
    addr: std::net::SocketAddr,
    count: usize,
    deadline: Duration,
) -> Result<Vec<Option<f64>>, LabError> {
    let request = probe::valid_event("bob", 1);
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let answer = probe::exchange(addr, &request, deadline).await?;
        latencies.push(ok_latency(&answer));
    }
    Ok(latencies)
}

/// Probe latencies without and then with an idle and a trickling client hanging on.
async fn slow_client_probe(
    params: &Params,
) -> Result<(Vec<Option<f64>>, Vec<Option<f64>>), LabError> {
    let server = params.concurrent.start().await?;
    let addr = server.addr();
    let deadline = params.slow();
    let result = async {
        let baseline = sequential(addr, params.probe_requests, deadline).await?;
        let idle = probe::open_idle(addr, 1).await?;
        let trickler = tokio::spawn(trickle_forever(addr));
        tokio::time::sleep(TRICKLE_PAUSE * 3).await;
        let with_slow = sequential(addr, params.probe_requests, deadline).await;
        trickler.abort();
        drop(idle);
        Ok::<_, LabError>((baseline, with_slow?))
    }
    .await;
    server.stop().await?;
    result
}

fn worst(latencies: &[Option<f64>]) -> f64 {
    latencies
        .iter()
        .map(|latency| latency.unwrap_or(f64::INFINITY))
        .fold(0.0, f64::max)
}

fn median(latencies: &[Option<f64>]) -> f64 {
    let mut sorted: Vec<f64> = latencies
        .iter()
        .map(|latency| latency.unwrap_or(f64::INFINITY))
        .collect();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

fn answered(latencies: &[Option<f64>]) -> usize {
    latencies.iter().filter(|latency| latency.is_some()).count()
}

/// Runs the experiment.
pub async fn run(params: &Params) -> Result<Outcome, LabError> {
    let started = Instant::now();
    let (blocking, blocking_slow) = behind_slow_client(Target::Blocking, params).await?;
    let (concurrent, concurrent_slow) = behind_slow_client(params.concurrent, params).await?;
    let (baseline, with_slow) = slow_client_probe(params).await?;
    let measured = Measured {
        blocking,
        concurrent,
        concurrent_slow_answered: concurrent_slow,
        baseline,
        with_slow,
    };
    let findings = Findings {
        measured: format!(
            "behind a client trickling for {} ms: blocking median {} ms, async median {} ms \
             (worst {} ms); with idle + trickling clients hanging on, worst probe {} ms",
            params.slow_ms,
            format_figure(median(&measured.blocking)),
            format_figure(median(&measured.concurrent)),
            format_figure(worst(&measured.concurrent)),
            format_figure(worst(&measured.with_slow)),
        ),
        table: table(params, &measured),
        checks: checks(params, &measured),
        plot: plot(
            params,
            &measured.blocking,
            &measured.concurrent,
            blocking_slow,
        ),
        notes: Vec::new(),
    };
    Ok(finish(&STAGE2, params.quick, params, started, findings))
}

/// Latencies measured by the three scenarios.
struct Measured {
    blocking: Vec<Option<f64>>,
    concurrent: Vec<Option<f64>>,
    concurrent_slow_answered: bool,
    baseline: Vec<Option<f64>>,
    with_slow: Vec<Option<f64>>,
}

fn table(params: &Params, m: &Measured) -> Table {
    let mut table = Table::new([
        "scenario",
        "server",
        "answered",
        "median latency (ms)",
        "worst latency (ms)",
    ]);
    let behind = format!(
        "{} clients arrive while 1 client trickles its request over {} ms",
        params.clients, params.slow_ms
    );
    for (target, latencies) in [
        (Target::Blocking, &m.blocking),
        (params.concurrent, &m.concurrent),
    ] {
        table.push([
            behind.clone(),
            target.label().to_owned(),
            format!("{}/{}", answered(latencies), params.clients),
            format_figure(median(latencies)),
            format_figure(worst(latencies)),
        ]);
    }
    for (scenario, latencies) in [
        ("no slow client", &m.baseline),
        ("1 idle + 1 trickling client hang on", &m.with_slow),
    ] {
        table.push([
            format!("{} requests one by one, {scenario}", params.probe_requests),
            params.concurrent.label().to_owned(),
            format!("{}/{}", answered(latencies), params.probe_requests),
            format_figure(median(latencies)),
            format_figure(worst(latencies)),
        ]);
    }
    table
}

fn checks(params: &Params, m: &Measured) -> Vec<Check> {
    let slow_ms = params.slow_ms as f64;
    let label = params.concurrent.label();
    vec![
        Check::flag(
            format!("{label} answers every client and the slow one"),
            answered(&m.concurrent) == params.clients && m.concurrent_slow_answered,
        ),
        Check::new(
            format!("{label}: worst latency behind the slow client (ms)"),
            worst(&m.concurrent),
            Expectation::AtMost {
                max: slow_ms / 10.0,
            },
        ),
        Check::new(
            "stage 1 blocking: median latency behind the slow client (ms) (it waits its turn)",
            median(&m.blocking),
            Expectation::AtLeast { min: slow_ms / 2.0 },
        ),
        Check::flag(
            "every probe answered while an idle and a trickling client hang on",
            answered(&m.with_slow) == params.probe_requests,
        ),
        Check::new(
            "worst probe latency with slow clients hanging on (ms)",
            worst(&m.with_slow),
            Expectation::AtMost {
                max: slow_ms / 10.0,
            },
        ),
    ]
}

fn plot(
    params: &Params,
    blocking: &[Option<f64>],
    concurrent: &[Option<f64>],
    blocking_slow_answered: bool,
) -> PlotSpec {
    let mut blocking_bar = Bar::new(
        format!("{} (median)", Target::Blocking.label()),
        median(blocking),
    );
    if !blocking_slow_answered {
        blocking_bar.note = Some("slow client unanswered".to_owned());
    }
    PlotSpec {
        title: format!(
            "Stage 2: a client trickling for {} ms delays no other client",
            params.slow_ms
        ),
        x_label: format!(
            "server ({} clients arrive behind the slow one)",
            params.clients
        ),
        y_label: "latency of the other clients (ms)".to_owned(),
        kind: PlotKind::Bars {
            bars: vec![
                blocking_bar,
                Bar::new(
                    format!("{} (median)", params.concurrent.label()),
                    median(concurrent),
                ),
                Bar::new(
                    format!("{} (worst)", params.concurrent.label()),
                    worst(concurrent),
                ),
            ],
        },
        y_max: None,
        references: vec![Reference {
            label: format!("slow client's send time {} ms", params.slow_ms),
            y: params.slow_ms as f64,
        }],
    }
}
