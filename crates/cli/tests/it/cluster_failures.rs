//! Cluster failures shown on real processes (`floodgate serve --nats`): a broker cut off from
//! the two others (its route links cut by userspace proxies, a network partition without
//! namespaces or root), and an owner stopped with SIGSTOP while its lease expires and another
//! node takes over, stopped anywhere or at a chosen step of a snapshot (a pause point of
//! fault-injection builds). Every balance, read from every node, must equal the sum of the
//! events acknowledged, each counted once, and a deposed owner must write nothing.
//!
//! The waits follow real conditions (leaders, replicas caught up, ownership, a process state),
//! not fixed sleeps: nats-server elects a new stream leader 4-9 s after losing the old one
//! (raft election timeout), an isolated leader steps down only after 10-20 s without a quorum
//! (lost-quorum check), and a cut route is redialled every second.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use floodgate_cluster::fault::{PAUSE_DIRECTORY_VARIABLE, PausePoint};
use floodgate_cluster::layout::{LEASE_BUCKET, MEMBER_BUCKET, SNAPSHOT_BUCKET, STREAM_NAME};
use floodgate_cluster::{ClusterConfig, Layout, LocalCluster, Snapshot, partition_of};
use futures_util::StreamExt;
use reqwest::StatusCode;
use tokio::process::Child;

use crate::cluster::{
    LEASE_TTL_MS, Load, MOVE_DEADLINE, PARTITIONS, node_args, owned, post, read_balance,
    start_node, stop_gracefully, unsettled, user, wait_all_owned,
};
use crate::support::{Log, launch, signal, stats};

/// The stream's bound in these tests: small enough that owners snapshot (and purge) every
/// `CAPACITY / PARTITIONS / 4` = 125 events of a partition under load, not only when idle.
const CAPACITY: usize = 4_000;
/// Liveness deadline for a healed broker to catch up (measured 5.6-14 s at load average
/// 5-10: it replays what it missed into each raft group; not a speed target).
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(45);

/// A connection to the broker at `url` with the nodes' configuration (`servers` brokers):
/// how the test reads leaders, replicas and snapshots as JetStream has them.
async fn observer(url: &str, servers: usize) -> Layout {
    let mut config = ClusterConfig::new(PARTITIONS, servers);
    config.lease_ttl = Duration::from_millis(LEASE_TTL_MS);
    config.capacity_events = i64::try_from(CAPACITY).expect("small");
    Layout::connect(&[url.to_owned()], &config, Duration::from_secs(30))
        .await
        .expect("JetStream ready")
}

/// The server (`n0`, `n1`, ...) leading stream `name`, as `observer`'s broker sees it.
async fn leader(observer: &Layout, name: &str) -> Option<String> {
    let mut stream = observer.context.get_stream(name).await.ok()?;
    let info = stream.info().await.ok()?;
    info.cluster.as_ref()?.leader.clone()
}

/// Asks the leader of stream `name` to step down until a server other than `server` leads it.
async fn move_leader_off(observer: &Layout, name: &str, server: &str) {
    let started = Instant::now();
    loop {
        match leader(observer, name).await {
            Some(leader) if leader != server => return,
            Some(_) => {
                let subject = format!("$JS.API.STREAM.LEADER.STEPDOWN.{name}");
                let _ = observer.client.request(subject, "".into()).await;
            }
            None => {}
        }
        assert!(
            started.elapsed() < MOVE_DEADLINE,
            "{name}: leader not moved off {server}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether stream `name` has a leader and all its `servers - 1` other replicas caught up.
async fn replicas_current(observer: &Layout, name: &str, servers: usize) -> bool {
    let Ok(mut stream) = observer.context.get_stream(name).await else {
        return false;
    };
    let Ok(info) = stream.info().await else {
        return false;
    };
    info.cluster.as_ref().is_some_and(|cluster| {
        cluster.leader.is_some()
            && cluster.replicas.len() == servers - 1
            && cluster
                .replicas
                .iter()
                .all(|peer| peer.current && !peer.offline)
    })
}

/// Watches the ownership move after the cut, every 25 ms: the majority nodes' owned
/// partitions are read first, then the cut-off node's, so a partition listed by both in one
/// round had two owners at once (the cut-off node's listing is the later one). Returns when
/// the cut-off node lists nothing and the majority owns every partition once: how long each
/// took after `cut_at`.
async fn watch_ownership_move(
    addrs: &[String],
    isolated: usize,
    cut_at: Instant,
) -> (Duration, Duration) {
    let mut stopped_after = None;
    loop {
        let mut majority = Vec::new();
        for (index, addr) in addrs.iter().enumerate() {
            if index != isolated {
                majority.extend(owned(addr).await);
            }
        }
        let cut_off = owned(&addrs[isolated]).await;
        let both: Vec<&u64> = majority
            .iter()
            .filter(|partition| cut_off.contains(partition))
            .collect();
        assert!(
            both.is_empty(),
            "partitions {both:?} owned on both sides of the cut at once"
        );
        if cut_off.is_empty() && stopped_after.is_none() {
            stopped_after = Some(cut_at.elapsed());
        }
        let distinct: BTreeSet<u64> = majority.iter().copied().collect();
        if let Some(stopped) = stopped_after
            && majority.len() == PARTITIONS as usize
            && distinct.len() == majority.len()
        {
            return (stopped, cut_at.elapsed());
        }
        assert!(
            cut_at.elapsed() < MOVE_DEADLINE,
            "ownership did not move: the majority owns {majority:?}, the cut-off node \
             {cut_off:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until the broker cut off and healed is a current replica of the events stream and
/// the lease bucket again, and then until every node owns a share; how long each took.
async fn wait_converged(observer: &Layout, addrs: &[String]) -> (Duration, Duration) {
    let started = Instant::now();
    for name in [STREAM_NAME.to_owned(), format!("KV_{LEASE_BUCKET}")] {
        while !replicas_current(observer, &name, addrs.len()).await {
            assert!(
                started.elapsed() < CATCH_UP_DEADLINE,
                "{name}: replicas caught up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let caught_up = started.elapsed();
    wait_shared(addrs).await;
    (caught_up, started.elapsed())
}

/// Waits until every node owns a share of the partitions, each partition once.
async fn wait_shared(addrs: &[String]) {
    let started = Instant::now();
    loop {
        let mut shares = Vec::new();
        for addr in addrs {
            shares.push(owned(addr).await);
        }
        let all: Vec<u64> = shares.iter().flatten().copied().collect();
        let distinct: BTreeSet<u64> = all.iter().copied().collect();
        if shares.iter().all(|share| !share.is_empty())
            && all.len() == PARTITIONS as usize
            && distinct.len() == all.len()
        {
            return;
        }
        assert!(
            started.elapsed() < MOVE_DEADLINE,
            "every node owns a share again: {shares:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Posts `(id, user, amount)` to `addr` until it is answered 202 (the client's duty after a
/// 503 cluster_unreachable, which means "maybe stored").
async fn resend_until_accepted(addr: &str, id: &str, user: &str, amount: i64) {
    let started = Instant::now();
    loop {
        let (status, reason, _) = post(addr, id, user, amount).await;
        if status == StatusCode::ACCEPTED {
            return;
        }
        assert!(
            started.elapsed() < MOVE_DEADLINE,
            "{id} never accepted: {status} {reason}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts one node per broker of `nats`, node i knowing broker i only (its URL three times:
/// the node can reach no other broker, so it stays on broker i's side of a cut, and three
/// URLs keep the stream's replicas at 3); waits until they share the partitions.
async fn start_nodes_on_own_brokers(nats: &LocalCluster) -> (Vec<Child>, Vec<String>) {
    let mut children = Vec::new();
    let mut addrs = Vec::new();
    for url in nats.urls() {
        let urls = [url.as_str(); 3].join(",");
        let (child, addr) = start_node(&node_args(&urls, PARTITIONS, CAPACITY)).await;
        children.push(child);
        addrs.push(addr);
    }
    assert!(
        wait_all_owned(&addrs, PARTITIONS).await.is_some(),
        "three nodes share the partitions"
    );
    (children, addrs)
}

/// The broker to cut off, by index and name: the events stream's leader (its appends not yet
/// on a quorum must be dropped). The buckets' leaders are moved to the other brokers first,
/// so the majority can take over as soon as the leases expire (were one on the cut-off
/// broker, the majority would first elect its own, 4-9 s later).
async fn choose_isolated(observers: &[Layout]) -> (usize, String) {
    let started = Instant::now();
    let name = loop {
        if let Some(name) = leader(&observers[0], STREAM_NAME).await {
            break name;
        }
        assert!(
            started.elapsed() < MOVE_DEADLINE,
            "the events stream has a leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let isolated: usize = name[1..].parse().expect("servers are named n<i>");
    let majority = (isolated + 1) % observers.len();
    for bucket in [LEASE_BUCKET, SNAPSHOT_BUCKET, MEMBER_BUCKET] {
        move_leader_off(&observers[majority], &format!("KV_{bucket}"), &name).await;
    }
    (isolated, name)
}

/// During the cut: a post to the cut-off node is 503 cluster_unreachable (after its own
/// retries) and a read there a 503, never a balance; the majority accepts a post (once it has
/// a leader for the events stream again).
async fn check_both_sides(addrs: &[String], isolated: usize, majority: usize) {
    let (status, reason, _) = post(&addrs[isolated], "probe-during-cut", "probe", 5).await;
    assert_eq!(
        (status, reason.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "cluster_unreachable"),
        "the cut-off side refuses new events"
    );
    let (status, balance, reason) = read_balance(&addrs[isolated], &user(0)).await;
    assert_eq!(
        (status, balance),
        (StatusCode::SERVICE_UNAVAILABLE, None),
        "the cut-off side serves no balance ({reason})"
    );
    resend_until_accepted(&addrs[majority], "probe-majority", "probe-majority", 3).await;
}

/// Every balance read from every node in `addrs` equals `sums`.
async fn check_balances(addrs: &[String], sums: &BTreeMap<String, i64>) {
    for addr in addrs {
        let wrong = unsettled(addr, sums).await;
        assert!(
            wrong.is_empty(),
            "balances read from {addr} differ from the acknowledged sums (user, expected, \
             read): {wrong:?}"
        );
    }
}

// Proves a broker network partition on real processes: three nodes, node i speaking to
// broker i only; under concurrent clients (ids, resending to another node until a 202) the
// broker leading the events stream is cut off from the two others (every route link through
// it cut by the test's proxies). The cut-off node stops listing its partitions (its owners
// stop at their first failed write, at the latest when their leases lapse at 0.9 x TTL) and
// never while a majority node lists them; a post to it is 503 cluster_unreachable and a read
// a 503, never a balance; the majority owns every partition and accepts events. After
// healing, the broker catches up, every node owns a share again, the probe refused during
// the cut is resent, and every balance read from every node equals the acknowledged sums,
// each event counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_cut_off_from_the_others_refuses_while_the_majority_carries_on() {
    let nats = LocalCluster::start_partitionable(3).expect("nats-servers");
    let (children, addrs) = start_nodes_on_own_brokers(&nats).await;
    let mut observers = Vec::new();
    for url in nats.urls() {
        observers.push(observer(&url, addrs.len()).await);
    }
    let load = Load::start(&addrs);
    let (isolated, isolated_name) = choose_isolated(&observers).await;
    let majority = (isolated + 1) % addrs.len();
    // Moving leaders can make owners give partitions up for a moment: the cut waits until
    // every node owns its share again, so the cut-off node is an owner.
    wait_shared(&addrs).await;
    let acknowledged_before_cut = load.acknowledged_count();
    assert!(nats.isolate(isolated), "the cluster's links are proxied");
    let cut_at = Instant::now();

    let (stopped_after, moved_after) = watch_ownership_move(&addrs, isolated, cut_at).await;
    println!(
        "cut off broker {isolated_name}: its node listed no partition after {} ms, the majority \
         owned all after {} ms (lease TTL {LEASE_TTL_MS} ms, validity 0.9 x TTL)",
        stopped_after.as_millis(),
        moved_after.as_millis()
    );
    check_both_sides(&addrs, isolated, majority).await;
    let during_cut = load.acknowledged_count() - acknowledged_before_cut;

    nats.heal();
    let (caught_up, converged) = wait_converged(&observers[majority], &addrs).await;
    println!(
        "{during_cut} events acknowledged during the cut; after healing, replicas current in \
         {} ms, every node owning a share in {} ms",
        caught_up.as_millis(),
        converged.as_millis()
    );
    // The probe refused during the cut means "maybe stored": resent with its id, as a client must.
    resend_until_accepted(&addrs[majority], "probe-during-cut", "probe", 5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut sums = load.finish().await;
    sums.insert("probe".to_owned(), 5);
    sums.insert("probe-majority".to_owned(), 3);
    check_balances(&addrs, &sums).await;
    drop(observers);
    for child in children {
        stop_gracefully(child).await;
    }
}

/// One write to a partition's key in the snapshot bucket, as a watcher saw it.
#[derive(Clone, Debug)]
struct SnapshotWrite {
    partition: u64,
    seen_at: Instant,
    writer: String,
    lease_revision: u64,
    applied_sequence: u64,
    /// Not a claim: a claim rewrites the value it read unchanged, so it carries the previous
    /// writer's name; an authored write carries a new state.
    authored: bool,
}

/// Every write to the snapshot bucket's partition keys, in order, from a watch.
struct SnapshotWrites {
    writes: Arc<Mutex<Vec<SnapshotWrite>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SnapshotWrites {
    async fn watch(observer: &Layout) -> Self {
        let mut watch = observer.snapshots.watch_all().await.expect("watch");
        let writes: Arc<Mutex<Vec<SnapshotWrite>>> = Arc::default();
        let recorded = Arc::clone(&writes);
        let task = tokio::spawn(async move {
            let mut last_values: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            while let Some(Ok(entry)) = watch.next().await {
                // Chunk keys (`p<p>.<generation>.<i>`) and chunked manifests are not needed here.
                let Some(partition) = entry
                    .key
                    .strip_prefix('p')
                    .and_then(|number| number.parse::<u64>().ok())
                else {
                    continue;
                };
                let Ok(snapshot) = Snapshot::decode(&entry.value) else {
                    continue;
                };
                let value = entry.value.to_vec();
                let authored = last_values.get(&entry.key) != Some(&value);
                last_values.insert(entry.key.clone(), value);
                recorded.lock().expect("writes").push(SnapshotWrite {
                    partition,
                    seen_at: Instant::now(),
                    writer: snapshot.writer,
                    lease_revision: snapshot.lease_revision,
                    applied_sequence: snapshot.state.applied_sequence,
                    authored,
                });
            }
        });
        Self { writes, task }
    }

    fn all(&self) -> Vec<SnapshotWrite> {
        self.writes.lock().expect("writes").clone()
    }

    /// Whether each of `partitions` has a state written by a node other than `writer` that
    /// covers stream sequences past `sequence`.
    fn others_wrote_past(&self, partitions: &BTreeSet<u64>, writer: &str, sequence: u64) -> bool {
        let seen = self.all();
        partitions.iter().all(|partition| {
            seen.iter().any(|write| {
                write.partition == *partition
                    && write.authored
                    && write.writer != writer
                    && write.applied_sequence > sequence
            })
        })
    }

    /// Writes by `writer` seen after `since` under a lease older than another writer's on the
    /// same partition: a deposed owner's writes (none may exist).
    fn stale_writes(&self, writer: &str, since: Instant) -> Vec<SnapshotWrite> {
        let seen = self.all();
        seen.iter()
            .filter(|write| write.authored && write.writer == writer && write.seen_at >= since)
            .filter(|write| {
                seen.iter().any(|other| {
                    other.partition == write.partition
                        && other.writer != writer
                        && other.lease_revision > write.lease_revision
                })
            })
            .cloned()
            .collect()
    }
}

impl Drop for SnapshotWrites {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until process `pid` is stopped (state `T` in `/proc/<pid>/stat`).
async fn wait_stopped(pid: u32) {
    let started = Instant::now();
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next());
        if state == Some("T") {
            return;
        }
        assert!(
            started.elapsed() < MOVE_DEADLINE,
            "process {pid} stopped ({stat})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The partition whose owner stopped itself at `point`, from the node's log.
fn paused_partition(log: &[String], point: PausePoint) -> u64 {
    log.iter()
        .filter(|line| line.contains("fault injection") && line.contains(point.name()))
        .find_map(|line| {
            let (_, rest) = line.split_once("partition=")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("the node paused at {}: {log:#?}", point.name()))
}

/// A node's log, read into memory as the node writes it (stderr is unbuffered, so a line
/// written just before the process stops itself is there).
struct LiveLog {
    lines: Arc<Mutex<Vec<String>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl LiveLog {
    fn start(mut log: Log) -> Self {
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let written = Arc::clone(&lines);
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = log.next_line().await {
                written.lock().expect("log").push(line);
            }
        });
        Self { lines, reader }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("log").clone()
    }

    /// The first line holding `needle`, waiting for it.
    async fn wait_for(&self, needle: &str) -> String {
        let started = Instant::now();
        loop {
            if let Some(line) = self.lines().into_iter().find(|line| line.contains(needle)) {
                return line;
            }
            assert!(
                started.elapsed() < MOVE_DEADLINE,
                "no log line with {needle:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every line, once the process has closed its log.
    async fn finish(self) -> Vec<String> {
        self.reader.await.expect("log reader");
        std::mem::take(&mut *self.lines.lock().expect("log"))
    }
}

/// How the test pauses the owner.
#[derive(Clone, Copy, Debug)]
enum Pause {
    /// SIGSTOP from outside, wherever the process is.
    Anywhere,
    /// The process stops itself at this step of an owner's snapshot (fault-injection build).
    At(PausePoint),
}

/// What the test knows of node 0 once it is paused.
struct Paused {
    pause: Pause,
    name: String,
    held: BTreeSet<u64>,
    at: Instant,
    /// The stream's last sequence when it stopped: node 0 applied nothing past it.
    last_sequence: u64,
}

/// Three nodes on one nats-server under concurrent clients, node 0 the one to pause (it may
/// stop itself at a pause point: it runs with a trigger directory).
struct PauseTrial {
    addrs: Vec<String>,
    paused: Child,
    paused_log: LiveLog,
    others: Vec<Child>,
    observer: Layout,
    writes: SnapshotWrites,
    load: Load,
    triggers: tempfile::TempDir,
    _nats: LocalCluster,
}

impl PauseTrial {
    async fn start() -> Self {
        let nats = LocalCluster::start(1).expect("nats-server");
        let url = nats.urls().join(",");
        let args = node_args(&url, PARTITIONS, CAPACITY);
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let triggers = tempfile::tempdir().expect("trigger directory");
        let directory = triggers.path().to_str().expect("utf-8 path").to_owned();
        let paused = launch(&arg_refs, &[(PAUSE_DIRECTORY_VARIABLE, &directory)]).await;
        let mut addrs = vec![paused.addr];
        let mut others = Vec::new();
        for _ in 0..2 {
            let (child, addr) = start_node(&args).await;
            others.push(child);
            addrs.push(addr);
        }
        assert!(
            wait_all_owned(&addrs, PARTITIONS).await.is_some(),
            "three nodes share the partitions"
        );
        let observer = observer(&url, 1).await;
        let writes = SnapshotWrites::watch(&observer).await;
        let load = Load::start(&addrs);
        tokio::time::sleep(Duration::from_secs(1)).await;
        Self {
            addrs,
            paused: paused.child,
            paused_log: LiveLog::start(paused.log),
            others,
            observer,
            writes,
            load,
            triggers,
            _nats: nats,
        }
    }

    /// Pauses node 0 as `pause` says and waits until it is stopped.
    async fn pause(&self, pause: Pause) -> Paused {
        let stats = stats(&self.addrs[0]).await.expect("stats");
        let name = stats["cluster"]["node"]
            .as_str()
            .expect("node name")
            .to_owned();
        // A starved machine can make a renewal late and an owner give a partition up for a
        // moment: wait until node 0 owns some.
        let started = Instant::now();
        let held = loop {
            let held = owned(&self.addrs[0]).await;
            if !held.is_empty() {
                break held;
            }
            assert!(started.elapsed() < MOVE_DEADLINE, "node 0 owns partitions");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.load.replace(0, &self.addrs[1]);
        match pause {
            Pause::Anywhere => signal(&self.paused, "STOP"),
            Pause::At(point) => {
                std::fs::write(self.triggers.path().join(point.name()), b"").expect("trigger");
            }
        }
        wait_stopped(self.paused.id().expect("running")).await;
        let mut stream = self.observer.stream.clone();
        let last_sequence = stream.info().await.expect("info").state.last_sequence;
        Paused {
            pause,
            name,
            held,
            at: Instant::now(),
            last_sequence,
        }
    }

    /// Waits until the two others own every partition and have snapshotted (and purged) node
    /// 0's partitions past anything node 0 had applied.
    async fn wait_taken_over(&self, paused: &Paused) {
        let taken = wait_all_owned(&self.addrs[1..], PARTITIONS).await;
        assert!(taken.is_some(), "the two others own every partition");
        while !self
            .writes
            .others_wrote_past(&paused.held, &paused.name, paused.last_sequence)
        {
            assert!(
                paused.at.elapsed() < MOVE_DEADLINE,
                "the new owners snapshot node 0's partitions"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "node 0's {} partitions taken over and snapshotted {} ms after the pause",
            paused.held.len(),
            paused.at.elapsed().as_millis()
        );
    }

    /// Resumes node 0 (releasing an owner held at a pause point): its first answer lists none
    /// of the partitions it lost.
    async fn resume(&self, paused: &Paused) -> Instant {
        if let Pause::At(point) = paused.pause {
            let release = self.triggers.path().join(point.release_name());
            std::fs::write(release, b"").expect("release");
        }
        signal(&self.paused, "CONT");
        let resumed_at = Instant::now();
        let after = owned(&self.addrs[0]).await;
        assert!(
            after.is_disjoint(&paused.held),
            "the resumed node lists none of the partitions it lost: {after:?} of {:?}",
            paused.held
        );
        resumed_at
    }

    /// Lets the load run on, then checks every balance from every node against the
    /// acknowledged sums (plus `more`), and that node 0 wrote no snapshot under a lost lease
    /// since `resumed_at`; stops everything and returns node 0's log.
    async fn finish(
        self,
        paused: &Paused,
        resumed_at: Instant,
        more: BTreeMap<String, i64>,
    ) -> Vec<String> {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut sums = self.load.finish().await;
        for (user, amount) in more {
            *sums.entry(user).or_insert(0) += amount;
        }
        check_balances(&self.addrs, &sums).await;
        let stale = self.writes.stale_writes(&paused.name, resumed_at);
        assert!(
            stale.is_empty(),
            "the deposed owner wrote snapshots: {stale:?}"
        );
        drop(self.writes);
        drop(self.observer);
        for child in self.others {
            stop_gracefully(child).await;
        }
        stop_gracefully(self.paused).await;
        self.paused_log.finish().await
    }

    /// Stops the node that owns `partition` now and posts events of that partition through
    /// the third node, so the stream holds events of the partition that its owner has not
    /// applied; the stopped node's index (1 or 2) and the events' sums.
    async fn stop_owner_with_events_waiting(
        &self,
        partition: u64,
    ) -> (usize, BTreeMap<String, i64>) {
        let owner = if owned(&self.addrs[1]).await.contains(&partition) {
            1
        } else {
            2
        };
        signal(&self.others[owner - 1], "STOP");
        wait_stopped(self.others[owner - 1].id().expect("running")).await;
        let third = 3 - owner;
        let users: Vec<String> = (0..)
            .map(|number| format!("waiting-{number}"))
            .filter(|user| u64::from(partition_of(user, PARTITIONS)) == partition)
            .take(3)
            .collect();
        let mut sums = BTreeMap::new();
        for number in 0..30 {
            let user = &users[number % users.len()];
            let id = format!("waiting-{number}");
            resend_until_accepted(&self.addrs[third], &id, user, 2).await;
            *sums.entry(user.clone()).or_insert(0) += 2;
        }
        (owner, sums)
    }
}

// Proves an owner stopped by SIGSTOP mid-load (anywhere) is deposed: its leases expire, the
// others take its partitions and snapshot past it; once resumed it lists none of them, writes
// no snapshot under a lost lease (its own validity check, or the claim's fence, stops it), and
// every balance is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_owner_paused_mid_load_is_deposed_and_writes_nothing() {
    let trial = Box::pin(PauseTrial::start()).await;
    let paused = trial.pause(Pause::Anywhere).await;
    trial.wait_taken_over(&paused).await;
    let resumed_at = trial.resume(&paused).await;
    Box::pin(trial.finish(&paused, resumed_at, BTreeMap::new())).await;
}

// Proves the fence on a real process: the owner stops itself after finding its lease valid
// and before writing its snapshot (its lease expires during the snapshot); another node takes
// over, claims and writes; once resumed, the old owner's write is refused by the
// compare-and-set (exit Fenced in its log), it writes nothing, purges nothing, and every
// balance is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lease_expiring_during_a_snapshot_write_is_fenced() {
    let point = PausePoint::BeforeSnapshotWrite;
    let trial = Box::pin(PauseTrial::start()).await;
    let paused = trial.pause(Pause::At(point)).await;
    let partition = paused_partition(&trial.paused_log.lines(), point);
    trial.wait_taken_over(&paused).await;
    let resumed_at = trial.resume(&paused).await;
    let log = Box::pin(trial.finish(&paused, resumed_at, BTreeMap::new())).await;
    // The owner is held at the point until released (see `fault`), so its write is the first
    // thing it does on resume, after the new owner's claim: the fence refuses it every run.
    let fenced = format!("partition given up partition={partition} exit=Ok(Fenced)");
    assert!(
        log.iter().any(|line| line.contains(&fenced)),
        "the resumed owner's snapshot write was refused by the fence: {log:#?}"
    );
}

// Proves a purge that runs late removes nothing a snapshot lacks: the owner stops itself
// between writing its snapshot and purging what it covers; another node takes over and
// snapshots further, and is then stopped itself while events of the partition wait in the
// stream, unapplied; the old owner resumes and purges (only up to its own, older snapshot),
// the new owner resumes and applies the waiting events: nothing lost, every balance exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_owner_paused_between_snapshot_and_purge_loses_nothing() {
    let point = PausePoint::BeforePurge;
    let trial = Box::pin(PauseTrial::start()).await;
    let paused = trial.pause(Pause::At(point)).await;
    let partition = paused_partition(&trial.paused_log.lines(), point);
    trial.wait_taken_over(&paused).await;
    let (owner, waiting) = trial.stop_owner_with_events_waiting(partition).await;
    let resumed_at = trial.resume(&paused).await;
    // The old owner's task has ended (its purge, if any, is done) once it gives the
    // partition up.
    let given_up = format!("partition given up partition={partition} ");
    trial.paused_log.wait_for(&given_up).await;
    signal(&trial.others[owner - 1], "CONT");
    Box::pin(trial.finish(&paused, resumed_at, waiting)).await;
}
