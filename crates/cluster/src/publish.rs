//! The front door's side: put one validated event on its partition's subject, or a batch as
//! one message per partition it spans, and report what JetStream answered, awaiting the
//! acknowledgement of every publish.
//!
//! Invariants:
//! - A success is returned only after JetStream's PubAck (stored on a quorum of replicas); an
//!   unawaited ack could hide a refusal (nats.rs#1477).
//! - Every publish carries a `Nats-Msg-Id` (the client's event id, or one this node made once
//!   for the event), so a retry of the same publish is stored at most once within the
//!   duplicate window, and is answered with the first one's sequence.
//! - A full stream (error 10077, `discard: new` past `max_msgs`) is [`PublishError::QueueFull`]:
//!   nothing was stored. A timeout or lost connection is [`PublishError::Unreachable`]: the
//!   event may or may not be stored, and retrying with the same id is safe.
//! - A batch is [`BatchMessage`]s, one per partition (`wire` documents the encoding and the
//!   message id), built once and republished unchanged on a retry; several are published as
//!   one JetStream atomic batch, so they are stored all together or not at all.

use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::jetstream::{self, ErrorCode, context::PublishErrorKind};
use floodgate_core::Event;

use crate::partition::{Partition, partition_of, subject};
use crate::wire::{batch_message_id, encode_batch, encode_event};

/// Where an acknowledged event was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// The event's partition.
    pub partition: Partition,
    /// Its stream sequence (the first publish's, for a duplicate).
    pub sequence: u64,
    /// The stream had this message id already: nothing new was stored.
    pub duplicate: bool,
}

/// Why an event was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The stream is at its capacity: nothing was stored; retry later.
    #[error("the events stream is full")]
    QueueFull,
    /// No answer from JetStream (timeout, connection lost, no stream leader): the event may
    /// have been stored; a retry with the same id is safe.
    #[error("JetStream unreachable: {0}")]
    Unreachable(String),
    /// JetStream refused the message for another reason.
    #[error("JetStream refused the event: {0}")]
    Refused(String),
    /// An atomic batch held an id the stream had already stored (error 10201): nothing of the
    /// batch was stored.
    #[error("the atomic batch holds an id already stored")]
    StoredIdInBatch,
}

/// Set (to `1`) on a message whose `Nats-Msg-Id` is the client's event id, not one the node
/// made: the owner remembers those ids beyond JetStream's duplicate window.
pub const CLIENT_ID_HEADER: &str = "Floodgate-Client-Id";

/// Whether `message_id` is `event`'s own (client) id.
fn is_client_id(event: &Event, message_id: &str) -> bool {
    event
        .id
        .as_ref()
        .is_some_and(|id| id.as_str() == message_id)
}

/// Most messages in one JetStream atomic batch (the server's limit).
pub const ATOMIC_BATCH_MAX: usize = 1000;
/// Most events in one batch: a batch message of 1,000 events is at most ~210 KB (see `wire`),
/// well under NATS's default 1 MiB `max_payload`.
pub const BATCH_MAX_EVENTS: usize = 1000;

/// One partition's share of a batch: its message, built once so that a retry republishes
/// exactly the same bytes under the same `Nats-Msg-Id`.
#[derive(Clone, Debug)]
pub struct BatchMessage {
    /// The partition whose subject it goes to.
    pub partition: Partition,
    /// Its `Nats-Msg-Id` (`wire::batch_message_id`).
    pub message_id: String,
    /// The encoded events (`wire::encode_batch`).
    pub payload: bytes::Bytes,
    /// The positions, in the batch, of the events it carries (in order).
    pub events: Vec<usize>,
}
/// JetStream's error for an atomic batch holding an id already stored.
const STORED_ID_IN_BATCH: u64 = 10201;

/// The answer to an atomic batch's commit: a PubAck for the batch, or an error.
#[derive(Debug, serde::Deserialize)]
struct BatchAnswer {
    error: Option<BatchError>,
    #[serde(default)]
    count: Option<u64>,
    /// The stream sequence of the batch's last message (its messages are stored at
    /// consecutive sequences, in batch order).
    #[serde(default)]
    seq: Option<u64>,
}

/// JetStream's error body.
#[derive(Debug, serde::Deserialize)]
struct BatchError {
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// Publishes events to the stream.
#[derive(Debug)]
pub struct Publisher {
    context: jetstream::Context,
    partitions: u32,
    node: String,
    next_id: AtomicU64,
}

impl Publisher {
    /// A publisher for `partitions` partitions; `node` prefixes the ids it makes.
    pub fn new(context: jetstream::Context, partitions: u32, node: impl Into<String>) -> Self {
        Self {
            context,
            partitions,
            node: node.into(),
            next_id: AtomicU64::new(0),
        }
    }

    /// A message id for an event the client gave none: unique to this node's run, made once
    /// per event so that the node's own retries reuse it.
    pub fn make_id(&self) -> String {
        let number = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{}-{number}", self.node)
    }

    /// `events` split by partition: one [`BatchMessage`] per partition they touch (in
    /// partition order), each carrying that partition's events in the batch's order.
    pub fn batch_messages(&self, events: &[Event]) -> Vec<BatchMessage> {
        let mut by_partition: std::collections::BTreeMap<Partition, Vec<usize>> =
            std::collections::BTreeMap::new();
        for (index, event) in events.iter().enumerate() {
            let partition = partition_of(&event.user, self.partitions);
            by_partition.entry(partition).or_default().push(index);
        }
        by_partition
            .into_iter()
            .map(|(partition, indexes)| {
                let carried = || indexes.iter().map(|&index| &events[index]);
                BatchMessage {
                    partition,
                    message_id: batch_message_id(carried(), &self.make_id()),
                    payload: encode_batch(carried()),
                    events: indexes,
                }
            })
            .collect()
    }

    /// Publishes one batch message and waits for its acknowledgement (`duplicate`: JetStream
    /// had its message id, so the same events were stored before).
    pub async fn publish_message(&self, message: &BatchMessage) -> Result<Published, PublishError> {
        let publish = jetstream::message::PublishMessage::build()
            .payload(message.payload.clone())
            .message_id(message.message_id.as_str());
        let ack_future = self
            .context
            .send_publish(subject(message.partition), publish)
            .await
            .map_err(|error| classify(&error))?;
        let ack = ack_future.await.map_err(|error| classify(&error))?;
        Ok(Published {
            partition: message.partition,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    /// Publishes `messages` as one JetStream atomic batch and waits for the commit's
    /// acknowledgement: every message stored, or none; the answer is the stream sequence of
    /// each message, in order (a batch is stored at consecutive sequences). At most
    /// [`ATOMIC_BATCH_MAX`] messages.
    /// A message id the stream already stored is [`PublishError::StoredIdInBatch`] (nothing
    /// stored: publish the messages one by one to learn which are duplicates); a stream
    /// without room for all of them is [`PublishError::QueueFull`].
    pub async fn publish_atomic(
        &self,
        batch_id: &str,
        messages: &[BatchMessage],
    ) -> Result<Vec<u64>, PublishError> {
        let client = self.context.client();
        let last = messages.len().checked_sub(1).ok_or_else(|| {
            PublishError::Refused("an atomic batch needs at least one message".to_owned())
        })?;
        if last >= ATOMIC_BATCH_MAX {
            return Err(PublishError::Refused(format!(
                "{} messages: an atomic batch holds at most {ATOMIC_BATCH_MAX}",
                messages.len()
            )));
        }
        let unreachable =
            |error: &dyn std::fmt::Display| PublishError::Unreachable(error.to_string());
        for (index, message) in messages.iter().enumerate() {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Batch-Id", batch_id);
            headers.insert("Nats-Batch-Sequence", (index + 1).to_string().as_str());
            headers.insert("Nats-Msg-Id", message.message_id.as_str());
            let subject = subject(message.partition);
            let payload = message.payload.clone();
            if index < last {
                client
                    .publish_with_headers(subject, headers, payload)
                    .await
                    .map_err(|error| unreachable(&error))?;
                continue;
            }
            headers.insert("Nats-Batch-Commit", "1");
            let reply = client
                .request_with_headers(subject, headers, payload)
                .await
                .map_err(|error| unreachable(&error))?;
            return batch_answer(&reply.payload, messages.len());
        }
        Err(PublishError::Refused(
            "an atomic batch needs at least one message".to_owned(),
        ))
    }

    /// Publishes `event` with `message_id` and waits for JetStream's acknowledgement.
    pub async fn publish(
        &self,
        event: &Event,
        message_id: &str,
    ) -> Result<Published, PublishError> {
        let partition = partition_of(&event.user, self.partitions);
        let mut publish = jetstream::message::PublishMessage::build()
            .payload(encode_event(event))
            .message_id(message_id);
        if is_client_id(event, message_id) {
            publish = publish.header(CLIENT_ID_HEADER, "1");
        }
        let ack_future = self
            .context
            .send_publish(subject(partition), publish)
            .await
            .map_err(|error| classify(&error))?;
        let ack = ack_future.await.map_err(|error| classify(&error))?;
        Ok(Published {
            partition,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}

/// What the commit's answer of an atomic batch of `count` messages means: the sequences its
/// messages were stored at.
fn batch_answer(payload: &[u8], count: usize) -> Result<Vec<u64>, PublishError> {
    let answer: BatchAnswer = serde_json::from_slice(payload)
        .map_err(|error| PublishError::Unreachable(format!("bad batch answer: {error}")))?;
    let first = answer
        .seq
        .and_then(|last| last.checked_sub(count as u64 - 1))
        .filter(|&first| first > 0);
    match answer.error {
        None if answer.count == Some(count as u64) => match first {
            Some(first) => Ok((first..first + count as u64).collect()),
            None => Err(PublishError::Refused(format!(
                "the batch answer has no valid last sequence ({:?})",
                answer.seq
            ))),
        },
        None => Err(PublishError::Refused(format!(
            "the batch answer counts {:?} messages, not {count}",
            answer.count
        ))),
        Some(error) if error.err_code == ErrorCode::STREAM_STORE_FAILED.0 => {
            Err(PublishError::QueueFull)
        }
        Some(error) if error.err_code == STORED_ID_IN_BATCH => Err(PublishError::StoredIdInBatch),
        Some(error) => Err(PublishError::Refused(format!(
            "{} (error {})",
            error.description, error.err_code
        ))),
    }
}

/// The refusal a publish error means.
fn classify(error: &jetstream::context::PublishError) -> PublishError {
    let code = std::error::Error::source(&error)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .map(jetstream::Error::error_code);
    // 10077, "maximum messages exceeded": `discard: new` refused a message past `max_msgs`.
    if code == Some(ErrorCode::STREAM_STORE_FAILED) {
        return PublishError::QueueFull;
    }
    match error.kind() {
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::StreamNotFound
        | PublishErrorKind::MaxAckPending => PublishError::Unreachable(error.to_string()),
        PublishErrorKind::Other if code.is_none() => PublishError::Unreachable(error.to_string()),
        _ => PublishError::Refused(error.to_string()),
    }
}
