//! A cluster node as its HTTP front door sees it: the [`Forward`] behind the engine's one door
//! (publish, retry with the same id, answer after JetStream's acknowledgement), the member
//! running in its own task (leases, owners, reads), and what `/stats`, `/metrics` and
//! `/readyz` show.
//!
//! Invariants:
//! - An event is answered stored only after its PubAck; a publish that got no answer is
//!   retried with the same `Nats-Msg-Id` (the client's id or one made once for the event)
//!   until `request_timeout` has passed since the first try, so the node's own retries store
//!   it at most once.
//! - A full stream is `Rejected::QueueFull` at once (nothing stored, never retried here);
//!   no answer in time is `Rejected::Unreachable` (maybe stored; the client retries with its
//!   id).
//! - A duplicate PubAck for a client id is checked against the stored original (see
//!   `conflict`): another user or amount is `Rejected::IdConflict`, as standalone answers;
//!   for a batch message, event by event.
//! - A batch message stored new that carries client ids is answered once its owner has
//!   applied it, per event from what the owner skipped (`conflict::judge_stored_message`): a
//!   mixed resend is `duplicate` for its repeats, as standalone; no owner in time is
//!   `Rejected::Unreachable`, never a guessed `Stored`.
//! - [`Node::stop`] stops the member after the front door finished: each owner writes a last
//!   snapshot and releases its lease, so another node takes the partitions at once instead of
//!   after the lease TTL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use floodgate_core::forward::{Forward, Forwarded, Forwarding};
use floodgate_core::metrics::{HistogramSnapshot, StripedHistogram};
use floodgate_core::{Event, Rejected};
use futures_util::future::join_all;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

use crate::config::ClusterConfig;
use crate::conflict::{self, Verdict};
use crate::layout::{Layout, LayoutError};
use crate::member::Member;
use crate::publish::{BATCH_MAX_EVENTS, BatchMessage, PublishError, Published, Publisher};
use crate::view::MemberView;

/// Publish-latency buckets: 100 µs doubling 17 times (to about 6.5 s, past the ack timeout's
/// default 5 s).
const PUBLISH_BUCKET_START_NANOS: u64 = 100_000;
const PUBLISH_BUCKET_COUNT: u32 = 17;
/// Pause between two tries of an unanswered publish.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// A running cluster node: publisher, member task and their figures.
#[derive(Debug)]
pub struct Node {
    name: String,
    config: ClusterConfig,
    client: async_nats::Client,
    publisher: Publisher,
    view: MemberView,
    publish_latency: StripedHistogram,
    stop: watch::Sender<bool>,
    member: Mutex<Option<JoinHandle<()>>>,
}

impl Node {
    /// Connects to `urls`, creates (or finds) the stream and buckets, and starts the member
    /// named `name` (unique among live nodes) in its own task. Call inside a tokio runtime.
    pub async fn start(
        urls: &[String],
        config: ClusterConfig,
        name: impl Into<String>,
        ready_timeout: Duration,
    ) -> Result<Arc<Self>, LayoutError> {
        let name = name.into();
        let layout = Layout::connect(urls, &config, ready_timeout).await?;
        let publisher = Publisher::new(layout.context.clone(), config.partitions, name.clone());
        let member = Member::new(layout.clone(), config.clone(), name.clone());
        let view = member.view();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(member.run(stopped));
        let bounds: Vec<u64> = (0..PUBLISH_BUCKET_COUNT)
            .map(|doublings| PUBLISH_BUCKET_START_NANOS << doublings)
            .collect();
        Ok(Arc::new(Self {
            name,
            config,
            client: layout.client,
            publisher,
            view,
            publish_latency: StripedHistogram::new(&bounds),
            stop,
            member: Mutex::new(Some(task)),
        }))
    }

    /// This node's member name (also the prefix of the ids it makes).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cluster configuration this node runs with.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The member's window: owned partitions, balances, counters, apply lag.
    pub fn view(&self) -> &MemberView {
        &self.view
    }

    /// Whether the NATS connection is up now (`/readyz`).
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Latency of acknowledged publishes, first try to PubAck (retries included).
    pub fn publish_latency(&self) -> HistogramSnapshot {
        self.publish_latency.snapshot()
    }

    /// Stops the member: each owner writes a last snapshot, each lease is released. Waits for
    /// it; a second call returns at once.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self.member.lock().await.take();
        if let Some(task) = task
            && let Err(error) = task.await
        {
            tracing::error!(%error, "cluster member task failed");
        }
    }

    /// The event's message id: the client's, or one made now (once per event).
    fn message_id(&self, event: &Event) -> String {
        match &event.id {
            Some(id) => id.as_str().to_owned(),
            None => self.publisher.make_id(),
        }
    }

    /// Publishes `events` as one message per partition they touch (all stored or none: one
    /// plain publish for one partition, one JetStream atomic batch for several), retrying an
    /// unanswered publish (the same messages, the same message ids) until `request_timeout` has
    /// passed. Every event of a message gets the message's answer. Messages the stream already
    /// holds (an identical resend, or a retry after a lost answer) make the atomic batch
    /// refused whole; they are then published one by one, so each learns whether it is a
    /// duplicate.
    async fn store_batch(&self, events: &[Event]) -> Vec<Result<Forwarded, Rejected>> {
        if events.is_empty() {
            return Vec::new();
        }
        let messages = self.publisher.batch_messages(events);
        let all = |answer: Result<Forwarded, Rejected>| vec![answer; events.len()];
        if messages.len() == 1 {
            return self.store_messages_one_by_one(events, &messages).await;
        }
        let started = Instant::now();
        loop {
            let batch_id = format!("batch-{}", self.publisher.make_id());
            match self.publisher.publish_atomic(&batch_id, &messages).await {
                Ok(sequences) => {
                    self.publish_latency.record(started.elapsed());
                    let judged = messages
                        .iter()
                        .zip(sequences)
                        .map(|(message, sequence)| self.judge_stored(events, message, sequence));
                    return scatter(events.len(), &messages, join_all(judged).await);
                }
                Err(PublishError::QueueFull) => return all(Err(Rejected::QueueFull)),
                Err(PublishError::Unreachable(error))
                    if started.elapsed() + RETRY_PAUSE < self.config.request_timeout =>
                {
                    tracing::debug!(%error, batch_id, "batch commit not answered: retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(PublishError::Unreachable(error)) => {
                    tracing::warn!(%error, batch_id, "batch not answered: refused as cluster_unreachable");
                    return all(Err(Rejected::Unreachable));
                }
                Err(error) => {
                    // A stored message id (10201), or a stream without atomic publish.
                    tracing::debug!(%error, batch_id, "batch refused whole: publishing its messages one by one");
                    return self.store_messages_one_by_one(events, &messages).await;
                }
            }
        }
    }

    /// Publishes each message of `events` on its own; each event gets its message's answer.
    async fn store_messages_one_by_one(
        &self,
        events: &[Event],
        messages: &[BatchMessage],
    ) -> Vec<Result<Forwarded, Rejected>> {
        let answers = messages
            .iter()
            .map(|message| self.store_message(events, message));
        scatter(events.len(), messages, join_all(answers).await)
    }

    /// The answers for the events of `message`, stored new at `sequence`: a message of
    /// another composition than any before may still repeat client ids an earlier message
    /// carried, and its owner skipped those; it says which once it has applied the message
    /// (see `conflict::judge_stored_message`), so each is answered `duplicate` (or
    /// `id_conflict`) as standalone answers it, the others `accepted`.
    async fn judge_stored(
        &self,
        events: &[Event],
        message: &BatchMessage,
        sequence: u64,
    ) -> Vec<Result<Forwarded, Rejected>> {
        let carried: Vec<&Event> = message.events.iter().map(|&index| &events[index]).collect();
        let deadline = Instant::now() + self.config.request_timeout;
        let verdicts = conflict::judge_stored_message(
            &self.view,
            &carried,
            message.partition,
            sequence,
            deadline,
        )
        .await;
        match verdicts {
            Ok(verdicts) => verdicts
                .into_iter()
                .map(|verdict| verdict.map_or(Ok(Forwarded::Stored), forwarded))
                .collect(),
            Err(refused) => vec![Err(refused); carried.len()],
        }
    }

    /// Publishes one batch message of `events`, retrying an unanswered publish with the same
    /// message id until `request_timeout` has passed; one answer per event it carries. A
    /// duplicate is judged event by event against the stored original (see `conflict`).
    async fn store_message(
        &self,
        events: &[Event],
        message: &BatchMessage,
    ) -> Vec<Result<Forwarded, Rejected>> {
        let started = Instant::now();
        let answer = loop {
            let answer = self.publisher.publish_message(message).await;
            match self.settle_publish(answer, started, &message.message_id) {
                Some(settled) => break settled,
                None => tokio::time::sleep(RETRY_PAUSE).await,
            }
        };
        let carried: Vec<&Event> = message.events.iter().map(|&index| &events[index]).collect();
        match answer {
            Ok(published) if published.duplicate => {
                let verdicts = conflict::judge_batch_duplicate(
                    &self.view,
                    &carried,
                    &message.message_id,
                    published.sequence,
                )
                .await;
                match verdicts {
                    Ok(verdicts) => verdicts.into_iter().map(forwarded).collect(),
                    Err(refused) => vec![Err(refused); carried.len()],
                }
            }
            Ok(published) => self.judge_stored(events, message, published.sequence).await,
            Err(refused) => vec![Err(refused); carried.len()],
        }
    }

    /// What a publish's answer means: acknowledged (stored or a duplicate), refused, or
    /// `None` (retry: no answer, and `request_timeout` has not passed since `started`).
    fn settle_publish(
        &self,
        answer: Result<Published, PublishError>,
        started: Instant,
        id: &str,
    ) -> Option<Result<Published, Rejected>> {
        match answer {
            Ok(published) => {
                self.publish_latency.record(started.elapsed());
                Some(Ok(published))
            }
            Err(PublishError::QueueFull) => Some(Err(Rejected::QueueFull)),
            Err(error) if started.elapsed() + RETRY_PAUSE < self.config.request_timeout => {
                tracing::debug!(%error, id, "publish not answered: retrying with the same id");
                None
            }
            Err(error) => {
                tracing::warn!(%error, id, "publish not answered: refused as cluster_unreachable");
                Some(Err(Rejected::Unreachable))
            }
        }
    }

    /// Publishes `event` and waits for its acknowledgement, retrying an unanswered publish
    /// with the same id until `request_timeout` has passed.
    async fn store(&self, event: &Event) -> Result<Forwarded, Rejected> {
        let id = self.message_id(event);
        self.store_with_id(event, &id).await
    }

    /// [`Self::store`] with the message id given.
    async fn store_with_id(&self, event: &Event, id: &str) -> Result<Forwarded, Rejected> {
        let started = Instant::now();
        loop {
            let answer = self.publisher.publish(event, id).await;
            match self.settle_publish(answer, started, id) {
                Some(Ok(published)) if published.duplicate => {
                    return self.judge_duplicate(event, id, published.sequence).await;
                }
                Some(Ok(_)) => return Ok(Forwarded::Stored),
                Some(Err(refused)) => return Err(refused),
                None => tokio::time::sleep(RETRY_PAUSE).await,
            }
        }
    }
}

impl Node {
    /// A duplicate PubAck for `event` under `id`: a resend of the client's event is
    /// `Duplicate`, its id used for another user or amount is 422 `id_conflict` (see
    /// `conflict`). The node's own ids are only ever resent by its retries.
    async fn judge_duplicate(
        &self,
        event: &Event,
        id: &str,
        sequence: u64,
    ) -> Result<Forwarded, Rejected> {
        let is_client_id = event.id.as_ref().is_some_and(|own| own.as_str() == id);
        if !is_client_id {
            return Ok(Forwarded::Duplicate);
        }
        forwarded(conflict::judge_duplicate(&self.view, event, id, sequence).await?)
    }
}

/// The answers per message (each in its events' order) put back in the batch's order.
fn scatter(
    count: usize,
    messages: &[BatchMessage],
    answers: Vec<Vec<Result<Forwarded, Rejected>>>,
) -> Vec<Result<Forwarded, Rejected>> {
    let mut results = vec![Err(Rejected::Unreachable); count];
    for (message, answers) in messages.iter().zip(answers) {
        for (&index, answer) in message.events.iter().zip(answers) {
            results[index] = answer;
        }
    }
    results
}

/// The answer a verdict on a duplicate means.
fn forwarded(verdict: Verdict) -> Result<Forwarded, Rejected> {
    match verdict {
        Verdict::Resend => Ok(Forwarded::Duplicate),
        Verdict::Conflict(field) => Err(Rejected::IdConflict(field)),
    }
}

impl Forward for Node {
    fn forward<'a>(&'a self, event: &'a Event) -> Forwarding<'a, Result<Forwarded, Rejected>> {
        Box::pin(self.store(event))
    }

    fn forward_batch<'a>(
        &'a self,
        events: &'a [Event],
    ) -> Forwarding<'a, Vec<Result<Forwarded, Rejected>>> {
        Box::pin(self.store_batch(events))
    }

    fn batch_max_events(&self) -> Option<usize> {
        Some(BATCH_MAX_EVENTS)
    }
}

/// A member name unique to this process's run: `floodgate-<pid>-<start time in ms, base 36>`,
/// so a restarted node never reuses the ids its previous run made within the duplicate window.
pub fn unique_node_name() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis());
    format!("floodgate-{}-{}", std::process::id(), base36(millis))
}

fn base36(mut value: u128) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut text = Vec::new();
    loop {
        text.push(DIGITS[(value % 36) as usize]);
        value /= 36;
        if value == 0 {
            break;
        }
    }
    text.reverse();
    String::from_utf8(text).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves node names differ between runs (the start time is in them) and carry the pid.
    #[test]
    fn node_names_carry_pid_and_start_time() {
        let name = unique_node_name();
        assert!(
            name.starts_with(&format!("floodgate-{}-", std::process::id())),
            "{name}"
        );
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }
}
