//! The front door's side: put one validated event on its partition's subject and report what
//! JetStream answered, awaiting the acknowledgement of every publish.
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

use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::jetstream::{self, ErrorCode, context::PublishErrorKind};
use floodgate_core::Event;

use crate::partition::{Partition, partition_of, subject};
use crate::wire::encode_event;

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
/// JetStream's error for an atomic batch holding an id already stored.
const STORED_ID_IN_BATCH: u64 = 10201;

/// The answer to an atomic batch's commit: a PubAck for the batch, or an error.
#[derive(Debug, serde::Deserialize)]
struct BatchAnswer {
    error: Option<BatchError>,
    #[serde(default)]
    count: Option<u64>,
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

    /// Publishes `events` (each with its message id) as one JetStream atomic batch and waits
    /// for the commit's acknowledgement: every event stored, or none. At most
    /// [`ATOMIC_BATCH_MAX`] events. A stored id in the batch is
    /// [`PublishError::StoredIdInBatch`] (nothing stored: publish the events one by one to
    /// learn which are duplicates); a full stream is [`PublishError::QueueFull`].
    pub async fn publish_atomic(
        &self,
        batch_id: &str,
        events: &[(&Event, &str)],
    ) -> Result<(), PublishError> {
        let client = self.context.client();
        let last = events.len().checked_sub(1).ok_or_else(|| {
            PublishError::Refused("an atomic batch needs at least one event".to_owned())
        })?;
        if last >= ATOMIC_BATCH_MAX {
            return Err(PublishError::Refused(format!(
                "{} events: an atomic batch holds at most {ATOMIC_BATCH_MAX}",
                events.len()
            )));
        }
        let unreachable =
            |error: &dyn std::fmt::Display| PublishError::Unreachable(error.to_string());
        for (index, &(event, message_id)) in events.iter().enumerate() {
            let subject = subject(partition_of(&event.user, self.partitions));
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Batch-Id", batch_id);
            headers.insert("Nats-Batch-Sequence", (index + 1).to_string().as_str());
            headers.insert("Nats-Msg-Id", message_id);
            if is_client_id(event, message_id) {
                headers.insert(CLIENT_ID_HEADER, "1");
            }
            if index < last {
                client
                    .publish_with_headers(subject, headers, encode_event(event))
                    .await
                    .map_err(|error| unreachable(&error))?;
                continue;
            }
            headers.insert("Nats-Batch-Commit", "1");
            let reply = client
                .request_with_headers(subject, headers, encode_event(event))
                .await
                .map_err(|error| unreachable(&error))?;
            return batch_answer(&reply.payload, events.len());
        }
        Ok(())
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

/// What the commit's answer of an atomic batch of `count` events means.
fn batch_answer(payload: &[u8], count: usize) -> Result<(), PublishError> {
    let answer: BatchAnswer = serde_json::from_slice(payload)
        .map_err(|error| PublishError::Unreachable(format!("bad batch answer: {error}")))?;
    match answer.error {
        None if answer.count == Some(count as u64) => Ok(()),
        None => Err(PublishError::Refused(format!(
            "the batch answer counts {:?} events, not {count}",
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
