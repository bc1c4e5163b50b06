//! Shared helpers of the cluster tests: a started cluster and layout, publishing with a record
//! of what was acknowledged, a member in a runtime of its own (so a test can kill it as a crash
//! would: every task gone at once, no last snapshot, no lease released), and polling.

#![allow(dead_code)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use floodgate_cluster::{ClusterConfig, Layout, LocalCluster, Member, Publisher};
use floodgate_core::Event;
use tokio::sync::watch;

pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A three-server cluster and a layout on it with a short lease TTL.
pub async fn start(partitions: u32, lease_ttl: Duration) -> (LocalCluster, ClusterConfig, Layout) {
    let cluster = LocalCluster::start(3).unwrap_or_else(|error| panic!("{error}"));
    let mut config = ClusterConfig::new(partitions, cluster.size());
    config.lease_ttl = lease_ttl;
    let layout = Layout::connect(&cluster.urls(), &config, READY_TIMEOUT)
        .await
        .expect("JetStream ready");
    (cluster, config, layout)
}

/// The balances the acknowledged, non-duplicate events add up to.
#[derive(Debug, Default)]
pub struct Expected {
    pub balances: HashMap<String, i64>,
    pub events: u64,
}

/// Publishes `count` events (users `user-0..users`, amounts 1..=9) with ids `prefix-i`,
/// recording each acknowledged one that was not a duplicate.
pub async fn publish_events(
    publisher: &Publisher,
    prefix: &str,
    count: u64,
    users: u64,
    expected: &mut Expected,
) {
    for number in 0..count {
        let user = format!("user-{}", number % users);
        let amount = i64::try_from(number % 9 + 1).expect("small");
        let event = Event::new(user.clone(), amount);
        let receipt = publisher
            .publish(&event, &format!("{prefix}-{number}"))
            .await
            .expect("acknowledged");
        if !receipt.duplicate {
            *expected.balances.entry(user).or_insert(0) += amount;
            expected.events += 1;
        }
    }
}

/// Publishes like a client with retries: an `Unreachable` answer is retried with the same id
/// (safe: JetStream drops a repeated id) until acknowledged; returns how many retries it took.
pub async fn publish_with_retry(
    publisher: &Publisher,
    prefix: &str,
    count: u64,
    users: u64,
    expected: &mut Expected,
) -> u64 {
    let mut retries = 0;
    for number in 0..count {
        let user = format!("user-{}", number % users);
        let amount = i64::try_from(number % 9 + 1).expect("small");
        let event = Event::new(user.clone(), amount);
        let id = format!("{prefix}-{number}");
        let receipt = loop {
            match publisher.publish(&event, &id).await {
                Ok(receipt) => break receipt,
                Err(floodgate_cluster::PublishError::Unreachable(_)) if retries < 1_000 => {
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("publish {id}: {error}"),
            }
        };
        if !receipt.duplicate {
            *expected.balances.entry(user).or_insert(0) += amount;
            expected.events += 1;
        }
    }
    retries
}

/// A member running in its own runtime: `kill` drops every task at once, as a crashed process.
pub struct RemoteMember {
    runtime: Option<tokio::runtime::Runtime>,
    _stop: watch::Sender<bool>,
}

impl RemoteMember {
    pub fn start(urls: Vec<String>, config: ClusterConfig, node: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (stop, stop_receiver) = watch::channel(false);
        let node = node.to_owned();
        runtime.spawn(async move {
            let layout = Layout::connect(&urls, &config, READY_TIMEOUT)
                .await
                .expect("JetStream ready");
            Box::pin(Member::new(layout, config, node).run(stop_receiver)).await;
        });
        Self {
            runtime: Some(runtime),
            _stop: stop,
        }
    }

    /// Stops every task of this member at once: no last snapshot, no lease released.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for RemoteMember {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `member` ticks (every renew interval) until `done` holds or `timeout` passes; returns
/// whether it held and how long it took.
pub async fn tick_until<F>(
    member: &mut Member,
    config: &ClusterConfig,
    timeout: Duration,
    mut done: F,
) -> (bool, Duration)
where
    F: AsyncFnMut(&Member) -> bool,
{
    let started = Instant::now();
    loop {
        member.tick().await;
        if done(member).await {
            return (true, started.elapsed());
        }
        if started.elapsed() > timeout {
            return (false, started.elapsed());
        }
        tokio::time::sleep(config.renew_interval()).await;
    }
}

/// The balances of every partition `member` runs, merged.
pub async fn balances(member: &Member, partitions: u32) -> HashMap<String, i64> {
    let mut merged = HashMap::new();
    for partition in 0..partitions {
        if let Some(state) = member.partition_state(partition).await {
            merged.extend(state.balances);
        }
    }
    merged
}

/// Whether `member` runs every partition and its balances equal `expected`.
pub async fn holds_all_and_matches(member: &Member, partitions: u32, expected: &Expected) -> bool {
    member.owned().len() == partitions as usize
        && balances(member, partitions).await == expected.balances
}

/// What differs between `member`'s view and `expected` (for failure messages).
pub async fn difference(member: &Member, partitions: u32, expected: &Expected) -> String {
    let actual = balances(member, partitions).await;
    let mut states = Vec::new();
    for partition in 0..partitions {
        if let Some(state) = member.partition_state(partition).await {
            states.push((partition, state.applied_sequence));
        }
    }
    let actual_sum: i64 = actual.values().sum();
    let expected_sum: i64 = expected.balances.values().sum();
    format!(
        "owned {:?}, applied sequences {states:?}, sum {actual_sum} (expected {expected_sum}), \
         users {} (expected {})",
        member.owned(),
        actual.len(),
        expected.balances.len()
    )
}
