//! Beyond the seed: scale-out. Three `floodgate serve --nats` nodes on a three-server JetStream
//! cluster keep every acknowledged event, once, through a kill -9 of a broker and of a node.
//!
//! Lesson (issue 15, docs/cluster.md): the front doors and the owners are separate jobs. A node
//! answers 202 once the replicated stream has the event, whoever owns its partition, so the
//! accepted rate barely notices a dead owner; what stops is *applying* that owner's partitions,
//! until its leases expire and the live nodes take them over (within TTL + TTL/3 + JetStream's
//! expiry) and replay the stream from the last snapshot. The timeline shows both rates, the
//! kills, the takeover and the rejoin.
//!
//! Invariant: every event carries an id and amount 1 and is resent (to the next node) until it
//! is answered 202, so each acknowledged event is counted once by the clients; at the end every
//! user's balance, read from every live node, must equal its acknowledged events. Every process
//! started (brokers, nodes) is stopped or killed and reaped before [`run`] returns.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use floodgate_cluster::{ClusterConfig, Layout, LocalCluster};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::process::{FloodgateProcess, floodgate_binary, free_port, get, get_json};
use super::{Findings, LabError, SCALE_OUT, finish};
use crate::outcome::Outcome;
use crate::plot::{PlotKind, PlotSpec, Series, XScale};
use crate::probe::read_status;
use crate::table::Table;
use crate::verdict::{Check, Expectation, format_figure};

/// A request unanswered for this long is resent to the next node.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before a resend (a refused connection or a 503).
const RESEND_PAUSE: Duration = Duration::from_millis(20);
/// An event not acknowledged after this long is given up (counted unanswered).
const GIVE_UP: Duration = Duration::from_secs(30);
/// A client moves to the next node after this many events on one connection (as a load
/// balancer spreads new connections), so a restarted node gets front-door traffic again.
const EVENTS_PER_CONNECTION: u64 = 100;
/// How long the cluster may take to share, take over or give back its partitions, and the
/// balances to settle (liveness deadlines; the measured times are the figures).
const MOVE_DEADLINE: Duration = Duration::from_secs(60);
/// How often ownership is polled while waiting for a takeover or a rejoin.
const OWNERSHIP_POLL: Duration = Duration::from_millis(25);
/// How long JetStream may wait to connect and create the stream (a fresh cluster elects its
/// meta leader first).
const JETSTREAM_READY: Duration = Duration::from_secs(30);

/// Parameters of the scale-out experiment.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// The scaled-down form?
    pub quick: bool,
    /// The `floodgate` binary to run (`None`: `$FLOODGATE_BIN`, else this program).
    pub binary: Option<PathBuf>,
    /// Floodgate nodes.
    pub nodes: usize,
    /// nats-servers in the JetStream cluster (replicas = min(3, servers)).
    pub brokers: usize,
    /// Partitions (`--partitions`).
    pub partitions: u32,
    /// Lease TTL (`--lease-ttl-ms`).
    pub lease_ttl_ms: u64,
    /// The stream's capacity (`--queue-capacity-events`); owners snapshot every
    /// capacity / partitions / 4 events, which bounds a takeover's replay.
    pub capacity_events: u64,
    /// Allowance for JetStream's expiry of a lease and the claim, in the takeover bound.
    pub expiry_allowance_ms: u64,
    /// Closed-loop clients (one keep-alive connection each).
    pub clients: usize,
    /// Distinct users.
    pub users: usize,
    /// When the stream's leader broker is SIGKILLed, from the start of the load.
    pub broker_kill_at_ms: u64,
    /// When a node is SIGKILLed, from the start of the load.
    pub node_kill_at_ms: u64,
    /// How long after the takeover the killed node is started again.
    pub restart_after_takeover_ms: u64,
    /// Load kept on after the restarted node owns partitions again.
    pub tail_ms: u64,
    /// Width of a timeline bucket.
    pub bucket_ms: u64,
    /// How often every node's `/stats` is sampled.
    pub sample_every_ms: u64,
}

impl Params {
    /// The default lease TTL (6 s), 24 clients over 30 s or so.
    pub fn full() -> Self {
        Self {
            quick: false,
            binary: None,
            nodes: 3,
            brokers: 3,
            partitions: 8,
            lease_ttl_ms: 6_000,
            capacity_events: 20_000,
            expiry_allowance_ms: 1_000,
            clients: 24,
            users: 100,
            broker_kill_at_ms: 4_000,
            node_kill_at_ms: 10_000,
            restart_after_takeover_ms: 2_000,
            tail_ms: 6_000,
            bucket_ms: 250,
            sample_every_ms: 100,
        }
    }

    /// A 1.5 s lease TTL, 8 clients over 8 s or so.
    pub fn quick() -> Self {
        Self {
            quick: true,
            lease_ttl_ms: 1_500,
            clients: 8,
            users: 40,
            broker_kill_at_ms: 1_500,
            node_kill_at_ms: 3_500,
            restart_after_takeover_ms: 500,
            tail_ms: 1_500,
            ..Self::full()
        }
    }

    /// The stated takeover bound: TTL (the lease outlives its holder by up to that), one
    /// member tick (TTL/3) to notice, and JetStream's expiry plus the claim.
    pub fn takeover_bound_ms(&self) -> u64 {
        self.lease_ttl_ms + self.lease_ttl_ms / 3 + self.expiry_allowance_ms
    }

    fn node_args(&self, urls: &str) -> Vec<String> {
        vec![
            "--durability".into(),
            "memory".into(),
            "--nats".into(),
            urls.into(),
            "--partitions".into(),
            self.partitions.to_string(),
            "--lease-ttl-ms".into(),
            self.lease_ttl_ms.to_string(),
            "--queue-capacity-events".into(),
            self.capacity_events.to_string(),
        ]
    }
}

/// Milliseconds since the load started.
type Millis = u64;

/// The moments the timeline marks.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Moments {
    /// The stream leader's server SIGKILLed (its index, when known, and when).
    pub broker_killed: Option<(usize, Millis)>,
    /// A node SIGKILLed.
    pub node_killed: Option<Millis>,
    /// The live nodes own every partition again, each once.
    pub taken_over: Option<Millis>,
    /// The killed node answers again (a new process on the same address).
    pub restarted: Option<Millis>,
    /// The restarted node owns partitions again and every partition has one owner.
    pub rejoined: Option<Millis>,
    /// The clients stopped starting events.
    pub load_ended: Millis,
}

impl Moments {
    fn takeover_ms(&self) -> Option<u64> {
        Some(self.taken_over? - self.node_killed?)
    }

    fn rejoin_ms(&self) -> Option<u64> {
        Some(self.rejoined? - self.restarted?)
    }
}

/// What one client did.
#[derive(Debug, Default)]
struct ClientTally {
    /// Acknowledged events per user (each event once, amount 1).
    acknowledged: BTreeMap<String, i64>,
    /// When each acknowledgement arrived.
    acknowledged_at: Vec<Millis>,
    /// Requests sent again (after no answer, a lost connection or a 503).
    resends: u64,
    /// Events given up after [`GIVE_UP`].
    unanswered: u64,
    /// Answers other than 202 and 503 (none expected), as `status`.
    unexpected: Vec<u16>,
}

/// One reading of one node's `/stats`.
#[derive(Debug, Clone)]
struct Sample {
    at: Millis,
    node: usize,
    applied_events: u64,
}

/// Everything one run measured.
#[derive(Debug)]
struct Measured {
    moments: Moments,
    clients: Vec<ClientTally>,
    samples: Vec<Sample>,
    /// Per live node at the end: users whose balance differs from the acknowledged sum.
    mismatches: Vec<(SocketAddr, Vec<Mismatch>)>,
}

/// A user whose balance read from a node differs: the user, the acknowledged sum, the balance
/// read (`None`: no answer, or unknown).
type Mismatch = (String, i64, Option<i64>);

/// Runs the experiment.
pub async fn run(params: &Params) -> Result<Outcome, LabError> {
    let started = Instant::now();
    let binary = floodgate_binary(params.binary.as_deref())?;
    let mut brokers =
        LocalCluster::start(params.brokers).map_err(|error| LabError::Server(error.to_string()))?;
    let measured = run_on(&binary, params, &mut brokers).await;
    drop(brokers);
    let findings = findings(params, &measured?);
    Ok(finish(&SCALE_OUT, params.quick, params, started, findings))
}

/// The nodes on `brokers`: started, loaded, killed and restarted on schedule, then checked.
async fn run_on(
    binary: &Path,
    params: &Params,
    brokers: &mut LocalCluster,
) -> Result<Measured, LabError> {
    let args = params.node_args(&brokers.urls().join(","));
    let mut addrs = Vec::with_capacity(params.nodes);
    let mut nodes = Vec::with_capacity(params.nodes);
    for _ in 0..params.nodes {
        let listen = format!("127.0.0.1:{}", free_port()?);
        let node = FloodgateProcess::start(binary, &listen, &args).await?;
        addrs.push(node.addr());
        nodes.push(Some(node));
    }
    let mut run = Run {
        binary,
        params,
        brokers,
        args,
        addrs,
        nodes,
    };
    let result = run.drive().await;
    for node in run.nodes.into_iter().flatten() {
        node.stop().await?;
    }
    result
}

/// One run's parts: the brokers and nodes the schedule kills and restarts.
struct Run<'a> {
    binary: &'a Path,
    params: &'a Params,
    brokers: &'a mut LocalCluster,
    /// Every node's arguments (a restarted node gets the same).
    args: Vec<String>,
    /// Every node's address (a restarted node keeps its own).
    addrs: Vec<SocketAddr>,
    /// The node processes by index (`None`: killed and not restarted).
    nodes: Vec<Option<FloodgateProcess>>,
}

impl Run<'_> {
    /// Loads the nodes while [`Self::kill_and_restart`] runs its schedule, then reads what
    /// the clients were told and every live node's balances.
    async fn drive(&mut self) -> Result<Measured, LabError> {
        let params = self.params;
        wait_all_owned(&self.addrs, params.partitions).await?;
        let leader = stream_leader(&self.brokers.urls(), params).await;
        let clock = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let targets = Arc::new(self.addrs.clone());
        let clients: Vec<_> = (0..params.clients)
            .map(|number| {
                tokio::spawn(run_client(
                    number,
                    Arc::clone(&targets),
                    params.users,
                    clock,
                    Arc::clone(&stop),
                ))
            })
            .collect();
        let sampling = Arc::new(AtomicBool::new(false));
        let stats_task = tokio::spawn(sample_stats(
            Arc::clone(&targets),
            Duration::from_millis(params.sample_every_ms),
            clock,
            Arc::clone(&sampling),
        ));
        let mut moments = self.kill_and_restart(leader, clock).await;
        stop.store(true, Ordering::Relaxed);
        moments.load_ended = elapsed_ms(clock);
        let mut tallies = Vec::with_capacity(clients.len());
        for client in clients {
            tallies.push(
                client
                    .await
                    .map_err(|error| LabError::Load(format!("client task: {error}")))?,
            );
        }
        let sums = acknowledged_sums(&tallies);
        let mut mismatches = Vec::new();
        for (addr, node) in self.addrs.iter().zip(&self.nodes) {
            if node.is_some() {
                mismatches.push((*addr, unsettled(*addr, &sums).await));
            }
        }
        sampling.store(true, Ordering::Relaxed);
        let samples = stats_task
            .await
            .map_err(|error| LabError::Load(format!("sampler task: {error}")))?;
        Ok(Measured {
            moments,
            clients: tallies,
            samples,
            mismatches,
        })
    }

    /// The kill schedule under load: the stream leader's broker (`leader`), then node 0;
    /// waits for the takeover, restarts node 0 on its address, waits for its rejoin, then lets
    /// the load run on. A step that does not happen in time leaves its moment unset (the
    /// verdict says so).
    async fn kill_and_restart(&mut self, leader: usize, clock: Instant) -> Moments {
        let params = self.params;
        let mut moments = Moments::default();
        sleep_until(clock, params.broker_kill_at_ms).await;
        if self.brokers.kill(leader).is_ok() {
            moments.broker_killed = Some((leader, elapsed_ms(clock)));
        }
        sleep_until(clock, params.node_kill_at_ms).await;
        let Some(victim) = self.nodes[0].take() else {
            return moments;
        };
        if victim.kill().await.is_err() {
            return moments;
        }
        moments.node_killed = Some(elapsed_ms(clock));
        if wait_all_owned(&self.addrs[1..], params.partitions)
            .await
            .is_err()
        {
            return moments;
        }
        moments.taken_over = Some(elapsed_ms(clock));
        tokio::time::sleep(Duration::from_millis(params.restart_after_takeover_ms)).await;
        let listen = self.addrs[0].to_string();
        let Ok(restarted) = FloodgateProcess::start(self.binary, &listen, &self.args).await else {
            return moments;
        };
        self.nodes[0] = Some(restarted);
        moments.restarted = Some(elapsed_ms(clock));
        if wait_rejoined(&self.addrs, params.partitions).await.is_ok() {
            moments.rejoined = Some(elapsed_ms(clock));
        }
        tokio::time::sleep(Duration::from_millis(params.tail_ms)).await;
        moments
    }
}

fn elapsed_ms(clock: Instant) -> Millis {
    u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX)
}

async fn sleep_until(clock: Instant, at_ms: Millis) {
    tokio::time::sleep_until((clock + Duration::from_millis(at_ms)).into()).await;
}

/// The index of the server leading the events stream (0 if it cannot be read): killing it
/// forces a leader election under load, the broker failure that costs the most.
async fn stream_leader(urls: &[String], params: &Params) -> usize {
    let mut config = ClusterConfig::new(params.partitions, urls.len());
    config.lease_ttl = Duration::from_millis(params.lease_ttl_ms);
    config.capacity_events = i64::try_from(params.capacity_events).unwrap_or(i64::MAX);
    let Ok(layout) = Layout::connect(urls, &config, JETSTREAM_READY).await else {
        return 0;
    };
    let leader = layout
        .stream
        .get_info()
        .await
        .ok()
        .and_then(|info| info.cluster?.leader);
    // Server names are n0, n1, ... (LocalCluster).
    leader
        .and_then(|name| name.strip_prefix('n')?.parse().ok())
        .filter(|&index: &usize| index < urls.len())
        .unwrap_or(0)
}

/// The partitions a node owns now (`None` if it does not answer).
async fn owned(addr: SocketAddr) -> Option<Vec<u64>> {
    let stats = get_json(addr, "/stats").await?;
    stats["cluster"]["owned_partitions"]
        .as_array()
        .map(|owned| owned.iter().filter_map(serde_json::Value::as_u64).collect())
}

/// Whether `nodes` together own every partition, each exactly once.
async fn all_owned_once(nodes: &[SocketAddr], partitions: u32) -> bool {
    let mut all = Vec::new();
    for &addr in nodes {
        all.extend(owned(addr).await.unwrap_or_default());
    }
    let distinct: BTreeSet<u64> = all.iter().copied().collect();
    all.len() == partitions as usize && distinct.len() == all.len()
}

async fn wait_all_owned(nodes: &[SocketAddr], partitions: u32) -> Result<(), LabError> {
    let started = Instant::now();
    while started.elapsed() < MOVE_DEADLINE {
        if all_owned_once(nodes, partitions).await {
            return Ok(());
        }
        tokio::time::sleep(OWNERSHIP_POLL).await;
    }
    Err(LabError::Server(format!(
        "the nodes did not own all {partitions} partitions within {} s",
        MOVE_DEADLINE.as_secs()
    )))
}

/// Waits until node 0 (restarted) owns a partition and every partition has one owner.
async fn wait_rejoined(nodes: &[SocketAddr], partitions: u32) -> Result<(), LabError> {
    let started = Instant::now();
    while started.elapsed() < MOVE_DEADLINE {
        let back = owned(nodes[0]).await.is_some_and(|owned| !owned.is_empty());
        if back && all_owned_once(nodes, partitions).await {
            return Ok(());
        }
        tokio::time::sleep(OWNERSHIP_POLL).await;
    }
    Err(LabError::Server(
        "the restarted node took no partition back".to_owned(),
    ))
}

/// One client: events with ids (amount 1) on a keep-alive connection, each resent to the next
/// node until answered 202; stops starting events once `stop` is set.
async fn run_client(
    number: usize,
    nodes: Arc<Vec<SocketAddr>>,
    users: usize,
    clock: Instant,
    stop: Arc<AtomicBool>,
) -> ClientTally {
    let mut tally = ClientTally::default();
    let mut node = number;
    let mut connection: Option<TcpStream> = None;
    let mut buffer = Vec::with_capacity(1024);
    let mut on_connection = 0;
    let mut sequence = 0_usize;
    while !stop.load(Ordering::Relaxed) {
        sequence += 1;
        let user = format!("scale-{}", (number * 7 + sequence) % users.max(1));
        let id = format!("scale-out-{number}-{sequence}");
        let request = post_request(&user, &id);
        if on_connection >= EVENTS_PER_CONNECTION {
            connection = None;
            node += 1;
            on_connection = 0;
        }
        let event_started = Instant::now();
        loop {
            if event_started.elapsed() > GIVE_UP {
                tally.unanswered += 1;
                break;
            }
            let status = send(
                &mut connection,
                nodes[node % nodes.len()],
                &request,
                &mut buffer,
            );
            match status.await {
                Some(202) => {
                    *tally.acknowledged.entry(user).or_insert(0) += 1;
                    tally.acknowledged_at.push(elapsed_ms(clock));
                    on_connection += 1;
                    break;
                }
                Some(status) if status != 503 => {
                    tally.unexpected.push(status);
                    break;
                }
                _ => {
                    // No answer, a lost connection or a 503: the same event, to the next node.
                    tally.resends += 1;
                    connection = None;
                    node += 1;
                    on_connection = 0;
                    tokio::time::sleep(RESEND_PAUSE).await;
                }
            }
        }
    }
    tally
}

fn post_request(user: &str, id: &str) -> Vec<u8> {
    let body = serde_json::json!({ "user": user, "amount": 1, "id": id }).to_string();
    format!(
        "POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends `request` on the open connection (opening one to `addr` if there is none); the
/// answer's status, or `None` (the connection is then dropped) on no answer in time.
async fn send(
    connection: &mut Option<TcpStream>,
    addr: SocketAddr,
    request: &[u8],
    buffer: &mut Vec<u8>,
) -> Option<u16> {
    if connection.is_none() {
        buffer.clear();
        let stream = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
        *connection = Some(stream);
    }
    let stream = connection.as_mut()?;
    let answered = tokio::time::timeout(REQUEST_TIMEOUT, async {
        stream.write_all(request).await.ok()?;
        read_status(stream, buffer).await
    })
    .await
    .ok()
    .flatten();
    if answered.is_none() {
        *connection = None;
    }
    answered
}

/// Reads every node's `/stats` every `every` until `done`; the applied-event counters.
async fn sample_stats(
    nodes: Arc<Vec<SocketAddr>>,
    every: Duration,
    clock: Instant,
    done: Arc<AtomicBool>,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !done.load(Ordering::Relaxed) {
        ticker.tick().await;
        for (node, &addr) in nodes.iter().enumerate() {
            let Some(stats) = get_json(addr, "/stats").await else {
                continue;
            };
            if let Some(applied_events) = stats["cluster"]["applied_events"].as_u64() {
                samples.push(Sample {
                    at: elapsed_ms(clock),
                    node,
                    applied_events,
                });
            }
        }
    }
    samples
}

fn acknowledged_sums(tallies: &[ClientTally]) -> BTreeMap<String, i64> {
    let mut sums = BTreeMap::new();
    for tally in tallies {
        for (user, count) in &tally.acknowledged {
            *sums.entry(user.clone()).or_insert(0) += count;
        }
    }
    sums
}

/// Reads every user's balance from `addr` until all equal `sums` (owners apply after the
/// 202); the users that still differ at the deadline, with the expected and read balance.
async fn unsettled(addr: SocketAddr, sums: &BTreeMap<String, i64>) -> Vec<Mismatch> {
    let started = Instant::now();
    loop {
        let mut wrong = Vec::new();
        for (user, &sum) in sums {
            let balance = match get(addr, &format!("/balances/{user}")).await {
                Some((200, body)) => serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|json| json["balance"].as_i64()),
                _ => None,
            };
            if balance != Some(sum) {
                wrong.push((user.clone(), sum, balance));
            }
        }
        if wrong.is_empty() || started.elapsed() > MOVE_DEADLINE {
            return wrong;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Events per second in each bucket of `bucket_ms` from 0 to `end`.
#[derive(Debug, Clone, PartialEq)]
struct Timeline {
    bucket_ms: u64,
    accepted: Vec<f64>,
    applied: Vec<f64>,
}

impl Timeline {
    fn build(params: &Params, measured: &Measured) -> Self {
        let bucket_ms = params.bucket_ms.max(1);
        let buckets = usize::try_from(measured.moments.load_ended / bucket_ms + 1).unwrap_or(0);
        let per_second = 1_000.0 / bucket_ms as f64;
        let mut accepted = vec![0.0; buckets];
        for &at in measured
            .clients
            .iter()
            .flat_map(|tally| &tally.acknowledged_at)
        {
            if let Some(slot) = accepted.get_mut(bucket_of(at, bucket_ms)) {
                *slot += per_second;
            }
        }
        let mut applied = vec![0.0; buckets];
        for (at, events) in applied_increments(&measured.samples) {
            if let Some(slot) = applied.get_mut(bucket_of(at, bucket_ms)) {
                *slot += events as f64 * per_second;
            }
        }
        Self {
            bucket_ms,
            accepted,
            applied,
        }
    }

    /// The mean rate of `series` over the buckets wholly inside `[from, to)` ms.
    fn mean(&self, series: &[f64], from: Millis, to: Millis) -> Option<f64> {
        let inside = self.inside(series, from, to);
        (!inside.is_empty()).then(|| inside.iter().sum::<f64>() / inside.len() as f64)
    }

    /// The lowest bucket of `series` wholly inside `[from, to)` ms.
    fn min(&self, series: &[f64], from: Millis, to: Millis) -> Option<f64> {
        self.inside(series, from, to).into_iter().reduce(f64::min)
    }

    fn inside(&self, series: &[f64], from: Millis, to: Millis) -> Vec<f64> {
        series
            .iter()
            .enumerate()
            .filter(|&(index, _)| {
                let start = index as u64 * self.bucket_ms;
                start >= from && start + self.bucket_ms <= to
            })
            .map(|(_, &rate)| rate)
            .collect()
    }

    fn points(&self, series: &[f64]) -> Vec<(f64, f64)> {
        series
            .iter()
            .enumerate()
            .map(|(index, &rate)| ((index as f64 + 0.5) * self.bucket_ms as f64 / 1_000.0, rate))
            .collect()
    }
}

fn bucket_of(at: Millis, bucket_ms: u64) -> usize {
    usize::try_from(at / bucket_ms).unwrap_or(usize::MAX)
}

/// Each node's applied-event counter turned into increments at the time of the later sample.
/// A counter that goes down is a new process on the node's address (a restart): it counts from
/// zero. A killed node's last reading stays its total.
fn applied_increments(samples: &[Sample]) -> Vec<(Millis, u64)> {
    let mut last: BTreeMap<usize, u64> = BTreeMap::new();
    let mut increments = Vec::with_capacity(samples.len());
    for sample in samples {
        let before = last.insert(sample.node, sample.applied_events);
        let increment = match before {
            Some(previous) if sample.applied_events >= previous => sample.applied_events - previous,
            Some(_) => sample.applied_events,
            None => 0,
        };
        increments.push((sample.at, increment));
    }
    increments
}

/// A phase of the timeline: a label and its span in ms.
struct Phase {
    label: &'static str,
    from: Millis,
    to: Millis,
}

fn phases(moments: &Moments) -> Vec<Phase> {
    let marks = [
        ("before the kills", Some(0)),
        ("broker killed", moments.broker_killed.map(|(_, at)| at)),
        ("node killed, partitions orphaned", moments.node_killed),
        ("taken over (2 nodes)", moments.taken_over),
        ("restarted, rejoining", moments.restarted),
        ("rejoined (3 nodes)", moments.rejoined),
    ];
    let known: Vec<(&'static str, Millis)> = marks
        .into_iter()
        .filter_map(|(label, at)| Some((label, at?)))
        .collect();
    known
        .iter()
        .enumerate()
        .map(|(index, &(label, from))| Phase {
            label,
            from,
            to: known
                .get(index + 1)
                .map_or(moments.load_ended, |&(_, at)| at),
        })
        .collect()
}

fn table(timeline: &Timeline, moments: &Moments) -> Table {
    let mut table = Table::new([
        "phase",
        "from (s)",
        "to (s)",
        "accepted events/s (mean)",
        "accepted events/s (lowest 250 ms)",
        "applied events/s (mean)",
    ]);
    let figure = |value: Option<f64>| value.map_or_else(|| "-".to_owned(), format_figure);
    for phase in phases(moments) {
        table.push([
            phase.label.to_owned(),
            format_figure(phase.from as f64 / 1_000.0),
            format_figure(phase.to as f64 / 1_000.0),
            figure(timeline.mean(&timeline.accepted, phase.from, phase.to)),
            figure(timeline.min(&timeline.accepted, phase.from, phase.to)),
            figure(timeline.mean(&timeline.applied, phase.from, phase.to)),
        ]);
    }
    table
}

/// The accepted rate before any kill (the first bucket, the clients' start, left out).
fn baseline(params: &Params, timeline: &Timeline, moments: &Moments) -> Option<f64> {
    let first_kill = moments
        .broker_killed
        .map_or(params.broker_kill_at_ms, |(_, at)| at);
    timeline.mean(&timeline.accepted, params.bucket_ms, first_kill)
}

/// The accepted rate after the rejoin, over the buckets of the tail.
fn after_rejoin(timeline: &Timeline, moments: &Moments) -> Option<f64> {
    timeline.mean(&timeline.accepted, moments.rejoined?, moments.load_ended)
}

fn checks(params: &Params, measured: &Measured, timeline: &Timeline) -> Vec<Check> {
    let moments = &measured.moments;
    let wrong: usize = measured
        .mismatches
        .iter()
        .map(|(_, wrong)| wrong.len())
        .sum();
    let unanswered: u64 = measured.clients.iter().map(|tally| tally.unanswered).sum();
    let unexpected: usize = measured
        .clients
        .iter()
        .map(|tally| tally.unexpected.len())
        .sum();
    let recovery = match (
        after_rejoin(timeline, moments),
        baseline(params, timeline, moments),
    ) {
        (Some(after), Some(before)) if before > 0.0 => after / before,
        _ => f64::NAN,
    };
    vec![
        Check::flag(
            "a broker and a node were SIGKILLed, the node restarted and rejoined",
            moments.broker_killed.is_some() && moments.rejoined.is_some(),
        ),
        Check::new(
            "users whose balance, read from a live node, differs from the acknowledged sum",
            wrong as f64,
            Expectation::AtMost { max: 0.0 },
        ),
        Check::flag(
            "balances read from every live node (all three)",
            measured.mismatches.len() == params.nodes,
        ),
        Check::new(
            "events never acknowledged (given up) or answered other than 202/503",
            (unanswered + unexpected as u64) as f64,
            Expectation::AtMost { max: 0.0 },
        ),
        Check::new(
            format!(
                "takeover after the node's SIGKILL (ms; bound TTL + TTL/3 + {} ms expiry)",
                params.expiry_allowance_ms
            ),
            moments.takeover_ms().map_or(f64::NAN, |ms| ms as f64),
            Expectation::AtMost {
                max: params.takeover_bound_ms() as f64,
            },
        ),
        Check::new(
            "accepted events/s after the rejoin / before the kills",
            recovery,
            Expectation::AtLeast { min: 0.5 },
        ),
    ]
}

fn findings(params: &Params, measured: &Measured) -> Findings {
    let timeline = Timeline::build(params, measured);
    let moments = &measured.moments;
    let acknowledged: usize = measured
        .clients
        .iter()
        .map(|tally| tally.acknowledged_at.len())
        .sum();
    let resends: u64 = measured.clients.iter().map(|tally| tally.resends).sum();
    let figure = |value: Option<f64>| value.map_or_else(|| "-".to_owned(), format_figure);
    let broker_to_node = moments.node_killed.unwrap_or(moments.load_ended);
    let dip = moments
        .broker_killed
        .and_then(|(_, at)| timeline.min(&timeline.accepted, at, broker_to_node));
    Findings {
        measured: format!(
            "{acknowledged} events acknowledged ({resends} resends), balances exact on {} live \
             nodes; takeover {} ms after the node's SIGKILL (bound {} ms); rejoin {} ms after \
             the restart; accepted {}/s before the kills, lowest {}/s after the broker kill, {}/s \
             after the rejoin",
            measured.mismatches.len(),
            figure(moments.takeover_ms().map(|ms| ms as f64)),
            params.takeover_bound_ms(),
            figure(moments.rejoin_ms().map(|ms| ms as f64)),
            figure(baseline(params, &timeline, moments)),
            figure(dip),
            figure(after_rejoin(&timeline, moments)),
        ),
        table: table(&timeline, moments),
        checks: checks(params, measured, &timeline),
        plot: plot(params, &timeline, moments),
        notes: notes(params, measured),
    }
}

fn notes(params: &Params, measured: &Measured) -> Vec<String> {
    let mut notes = vec![format!(
        "{} `floodgate serve --nats` nodes (real binaries, {} partitions, lease TTL {} ms, \
         stream capacity {} events: an owner snapshots every {} events) on {} nats-servers \
         (JetStream, replicas 3) on loopback; {} clients post events with ids (amount 1) on \
         keep-alive connections, moving to the next node after {EVENTS_PER_CONNECTION} events, \
         and resend an unanswered or 503 event to the next node until it is answered 202. \
         Accepted = 202s as the clients received them; applied = the growth of the nodes' \
         `applied_events` (/stats, sampled every {} ms), which counts a takeover's replay of \
         the events since the last snapshot again: the spike after the takeover is that replay \
         plus the backlog of the orphaned partitions.",
        params.nodes,
        params.partitions,
        params.lease_ttl_ms,
        params.capacity_events,
        params.capacity_events / u64::from(params.partitions.max(1)) / 4,
        params.brokers,
        params.clients,
        params.sample_every_ms,
    )];
    if let Some((leader, at)) = measured.moments.broker_killed {
        notes.push(format!(
            "The broker killed at {} s is n{leader}, the events stream's leader when the load \
             started (a leader election under load); it stays down. Node 0 is killed at {} s \
             and restarted on its address {} ms after the takeover.",
            format_figure(at as f64 / 1_000.0),
            format_figure(measured.moments.node_killed.unwrap_or(0) as f64 / 1_000.0),
            params.restart_after_takeover_ms,
        ));
    }
    for (addr, wrong) in &measured.mismatches {
        if !wrong.is_empty() {
            notes.push(format!(
                "{addr}: users whose balance differs (user, acknowledged, read): {:?}",
                &wrong[..wrong.len().min(10)]
            ));
        }
    }
    notes
}

fn plot(params: &Params, timeline: &Timeline, moments: &Moments) -> PlotSpec {
    let peak = timeline
        .accepted
        .iter()
        .chain(&timeline.applied)
        .copied()
        .fold(0.0_f64, f64::max);
    let top = (peak * 1.6).max(1.0);
    let marker = |label: String, at: Millis| {
        let x = at as f64 / 1_000.0;
        Series::theory(label, vec![(x, 0.0), (x, top)])
    };
    let seconds = |at: Millis| format_figure(at as f64 / 1_000.0);
    let mut series = vec![
        Series::measured(
            "accepted events/s (202s at the clients)",
            timeline.points(&timeline.accepted),
        ),
        Series::measured(
            "applied events/s (owners, replay included)",
            timeline.points(&timeline.applied),
        ),
    ];
    if let Some((leader, at)) = moments.broker_killed {
        series.push(marker(
            format!(
                "SIGKILL broker n{leader} (stream leader), {} s",
                seconds(at)
            ),
            at,
        ));
    }
    if let Some(at) = moments.node_killed {
        series.push(marker(format!("SIGKILL node 0, {} s", seconds(at)), at));
    }
    if let (Some(at), Some(took)) = (moments.taken_over, moments.takeover_ms()) {
        series.push(marker(
            format!(
                "all partitions owned again, {} s (takeover {took} ms, bound {} ms)",
                seconds(at),
                params.takeover_bound_ms()
            ),
            at,
        ));
    }
    if let (Some(restarted), Some(at)) = (moments.restarted, moments.rejoined) {
        series.push(marker(
            format!(
                "node 0 restarted {} s, owns partitions again {} s",
                seconds(restarted),
                seconds(at)
            ),
            at,
        ));
    }
    PlotSpec {
        title: "Scale-out: accepted and applied events/s through a broker and a node kill -9"
            .to_owned(),
        x_label: format!(
            "time since the load started (s; {} ms buckets)",
            params.bucket_ms
        ),
        y_label: "events/s".to_owned(),
        kind: PlotKind::Lines {
            x_scale: XScale::Linear,
            series,
        },
        y_max: Some(top),
        references: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: Millis, node: usize, applied_events: u64) -> Sample {
        Sample {
            at,
            node,
            applied_events,
        }
    }

    // Proves the applied rate: increments per node between its samples, a restarted node's
    // counter (lower than before) counted from zero, a node's first sample a baseline only.
    #[test]
    fn applied_increments_follow_each_node_and_its_restart() {
        let samples = [
            sample(0, 0, 100),
            sample(0, 1, 50),
            sample(100, 0, 130),
            sample(100, 1, 60),
            sample(200, 0, 5),
            sample(300, 0, 25),
        ];
        let increments: Vec<u64> = applied_increments(&samples)
            .into_iter()
            .map(|(_, events)| events)
            .collect();
        assert_eq!(increments, [0, 0, 30, 10, 5, 20]);
    }

    // Proves the timeline: acknowledgements and applied increments land in their 250 ms
    // bucket as events/s, and means and minimums use only the buckets inside a span.
    #[test]
    fn the_timeline_buckets_rates_and_phases() {
        let params = Params::quick();
        let measured = Measured {
            moments: Moments {
                load_ended: 999,
                ..Moments::default()
            },
            clients: vec![ClientTally {
                acknowledged_at: vec![10, 20, 260, 900],
                ..ClientTally::default()
            }],
            samples: vec![sample(0, 0, 0), sample(300, 0, 3)],
            mismatches: Vec::new(),
        };
        let timeline = Timeline::build(&params, &measured);
        assert_eq!(timeline.accepted, [8.0, 4.0, 0.0, 4.0]);
        assert_eq!(timeline.applied, [0.0, 12.0, 0.0, 0.0]);
        assert_eq!(timeline.mean(&timeline.accepted, 0, 500), Some(6.0));
        assert_eq!(timeline.min(&timeline.accepted, 250, 1_000), Some(0.0));
        assert_eq!(timeline.mean(&timeline.accepted, 100, 200), None);
    }

    // Proves the verdict fails on a single wrong balance, and on a takeover past its bound.
    #[test]
    fn a_wrong_balance_or_a_slow_takeover_fails_the_verdict() {
        let params = Params::quick();
        let moments = Moments {
            broker_killed: Some((1, 1_500)),
            node_killed: Some(3_500),
            taken_over: Some(5_000),
            restarted: Some(5_500),
            rejoined: Some(6_000),
            load_ended: 8_000,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let measured = |moments: Moments, wrong: Vec<Mismatch>| Measured {
            moments,
            clients: vec![ClientTally {
                acknowledged_at: (0..8_000).step_by(10).collect(),
                ..ClientTally::default()
            }],
            samples: Vec::new(),
            mismatches: vec![(addr, wrong), (addr, Vec::new()), (addr, Vec::new())],
        };
        let holds = |measured: &Measured| {
            let timeline = Timeline::build(&params, measured);
            crate::verdict::Verdict::from_checks(checks(&params, measured, &timeline)).holds
        };
        assert!(holds(&measured(moments.clone(), Vec::new())));
        assert!(!holds(&measured(
            moments.clone(),
            vec![("scale-1".to_owned(), 5, Some(6))]
        )));
        let slow = Moments {
            taken_over: Some(3_500 + params.takeover_bound_ms() + 1),
            ..moments
        };
        assert!(!holds(&measured(slow, Vec::new())));
    }
}
