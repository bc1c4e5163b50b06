//! Reads from any node: the owner of a partition answers balance requests on the partition's
//! read subject; any other node asks it there.
//!
//! Invariants:
//! - Only an owner with a valid lease answers: the responder checks the lease's validity before
//!   each reply and stays silent otherwise, so a paused or deposed owner cannot serve a stale
//!   balance after the moment a new owner could exist.
//! - No responder means the partition is moving (its owner died or gave it up and no one has
//!   taken it yet): [`ReadError::Moving`], for a 503 with that reason, never a guessed value.
//!
//! Wire shape (one subject per partition; the header `Floodgate-Read` names the request):
//!
//! | header | request payload | answer |
//! |---|---|---|
//! | none | the user | `{"balance": n}` or `{"balance": null}` |
//! | `page` | `{"after": bytes or null, "limit": n}` | `{"balances": [[user, n], ...]}` |
//! | `id` | one client id | one [`IdLookup`] |
//! | `ids` | a JSON array of client ids | a JSON array of [`IdLookup`], one per id, in order |
//! | `kept` | `{"sequence": s, "ids": [...], "wait_ms": w}` | `{"kept": [`[`KeptId`]` or null, ...]}` once the owner applied `s` (it waits up to `w` ms, apart from the other reads), `{"kept": null}` if it did not in time |
//!
//! `ids` came after the others, so that a batch's resend costs one request per partition
//! instead of one per id. An owner that predates it reads it as a page request it cannot parse
//! and answers an empty payload (as it answers any bad page request); the asker then falls
//! back to one `id` request per id, so nodes of both versions answer each other during a
//! rolling upgrade. `kept` (a stored batch message's ids, see `conflict::judge_stored_message`)
//! came after `ids`; an older owner's empty answer to it reads as "nothing kept": the
//! message's events are answered accepted, as that owner's version answered them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::RequestErrorKind;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{RwLock, watch};

use crate::partition::{Partition, partition_of};
use crate::state::{IdLookup, KeptId, PartitionState};

/// Prefix of the per-partition read subjects.
pub const READ_SUBJECT_PREFIX: &str = "floodgate.read";

/// The subject on which partition `partition`'s owner answers balance requests.
pub fn read_subject(partition: Partition) -> String {
    format!("{READ_SUBJECT_PREFIX}.{partition}")
}

/// Why a balance could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadError {
    /// No node owns the partition right now (a takeover is under way); retry shortly.
    #[error("partition {0} is moving to another node")]
    Moving(Partition),
    /// The owner did not answer in time, or NATS could not be reached.
    #[error("partition {partition}: owner unreachable: {reason}")]
    Unreachable {
        partition: Partition,
        reason: String,
    },
}

/// An owner's answer: `None` for a user the partition never saw.
#[derive(Debug, Serialize, Deserialize)]
struct BalanceReply {
    balance: Option<i64>,
}

/// Asks the owner of `user`'s partition for the user's balance (`None`: never seen).
pub async fn request_balance(
    client: &async_nats::Client,
    partitions: u32,
    user: &str,
    timeout: Duration,
) -> Result<Option<i64>, ReadError> {
    let partition = partition_of(user, partitions);
    let request = client.request(read_subject(partition), user.to_owned().into());
    ask_owner::<BalanceReply>(partition, request, timeout)
        .await
        .map(|reply| reply.balance)
}

/// Waits up to `timeout` for the owner's answer to `request` and decodes it: no responder
/// means the partition is moving; no answer, a failed request or a bad answer means the owner
/// is unreachable.
async fn ask_owner<Reply: serde::de::DeserializeOwned>(
    partition: Partition,
    request: impl std::future::Future<Output = Result<async_nats::Message, async_nats::RequestError>>,
    timeout: Duration,
) -> Result<Reply, ReadError> {
    let payload = ask_owner_raw(partition, request, timeout).await?;
    decode_answer(partition, &payload)
}

/// [`ask_owner`] without the decoding: the answer's payload.
async fn ask_owner_raw(
    partition: Partition,
    request: impl std::future::Future<Output = Result<async_nats::Message, async_nats::RequestError>>,
    timeout: Duration,
) -> Result<bytes::Bytes, ReadError> {
    let unreachable = |reason: String| ReadError::Unreachable { partition, reason };
    match tokio::time::timeout(timeout, request).await {
        Err(_elapsed) => Err(unreachable(format!("no answer in {timeout:?}"))),
        Ok(Err(error)) if error.kind() == RequestErrorKind::NoResponders => {
            Err(ReadError::Moving(partition))
        }
        Ok(Err(error)) => Err(unreachable(error.to_string())),
        Ok(Ok(reply)) => Ok(reply.payload),
    }
}

/// An owner's answer decoded; one that does not decode makes the owner unreachable.
fn decode_answer<Reply: serde::de::DeserializeOwned>(
    partition: Partition,
    payload: &[u8],
) -> Result<Reply, ReadError> {
    serde_json::from_slice::<Reply>(payload).map_err(|error| ReadError::Unreachable {
        partition,
        reason: format!("bad answer: {error}"),
    })
}

/// The header that makes a read request a page request (value `page`, payload a
/// [`PageRequest`]), an id lookup (value `id`, payload the client id; value `ids`, payload
/// a JSON array of client ids) or a question about a stored message's ids (value `kept`,
/// payload a [`KeptRequest`]).
const PAGE_HEADER: &str = "Floodgate-Read";

/// A page of a partition's balances: users after `after` (compared as bytes), at most `limit`.
#[derive(Debug, Serialize, Deserialize)]
struct PageRequest {
    after: Option<Vec<u8>>,
    limit: usize,
}

/// An owner's page: `(user, balance)` sorted by user.
#[derive(Debug, Serialize, Deserialize)]
struct PageReply {
    balances: Vec<(String, i64)>,
}

/// Asks the owner of `partition` for a page of its balances (see
/// [`PartitionState::page`]).
pub async fn request_page(
    client: &async_nats::Client,
    partition: Partition,
    after: Option<&[u8]>,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<(String, i64)>, ReadError> {
    let unreachable = |reason: String| ReadError::Unreachable { partition, reason };
    let body = PageRequest {
        after: after.map(<[u8]>::to_vec),
        limit,
    };
    let payload = serde_json::to_vec(&body).map_err(|error| unreachable(error.to_string()))?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(PAGE_HEADER, "page");
    let request = client.request_with_headers(read_subject(partition), headers, payload.into());
    ask_owner::<PageReply>(partition, request, timeout)
        .await
        .map(|reply| reply.balances)
}

/// Asks the owner of `partition` what it knows of client id `id` (see
/// [`PartitionState::lookup_id`]).
pub async fn request_id_lookup(
    client: &async_nats::Client,
    partition: Partition,
    id: &str,
    timeout: Duration,
) -> Result<IdLookup, ReadError> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(PAGE_HEADER, "id");
    let request =
        client.request_with_headers(read_subject(partition), headers, id.to_owned().into());
    ask_owner::<IdLookup>(partition, request, timeout).await
}

/// Asks the owner of `partition` what it knows of each of `ids`, in one request (header
/// `ids`); the answers in the order of `ids`. An owner from before that request answers it
/// with an empty payload: it is then asked one id at a time.
pub async fn request_id_lookups(
    client: &async_nats::Client,
    partition: Partition,
    ids: &[&str],
    timeout: Duration,
) -> Result<Vec<IdLookup>, ReadError> {
    let unreachable = |reason: String| ReadError::Unreachable { partition, reason };
    let payload = serde_json::to_vec(ids).map_err(|error| unreachable(error.to_string()))?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(PAGE_HEADER, "ids");
    let request = client.request_with_headers(read_subject(partition), headers, payload.into());
    let answer = ask_owner_raw(partition, request, timeout).await?;
    if answer.is_empty() {
        return request_each_id(client, partition, ids, timeout).await;
    }
    let lookups: Vec<IdLookup> = decode_answer(partition, &answer)?;
    if lookups.len() != ids.len() {
        let counts = format!(
            "bad answer: {} lookups for {} ids",
            lookups.len(),
            ids.len()
        );
        return Err(unreachable(counts));
    }
    Ok(lookups)
}

/// [`request_id_lookups`] the way an owner that predates `ids` understands: one request per id.
async fn request_each_id(
    client: &async_nats::Client,
    partition: Partition,
    ids: &[&str],
    timeout: Duration,
) -> Result<Vec<IdLookup>, ReadError> {
    tracing::debug!(
        partition,
        ids = ids.len(),
        "owner predates id batches: one id at a time"
    );
    let mut lookups = Vec::with_capacity(ids.len());
    for id in ids {
        lookups.push(request_id_lookup(client, partition, id, timeout).await?);
    }
    Ok(lookups)
}

/// Which of a stored message's client ids the owner applied from it: asked once the message
/// at `sequence` is applied (the owner waits up to `wait_ms` for that).
/// Sent with borrowed ids (`S = &str`), read with owned ones (`S = String`).
#[derive(Debug, Serialize, Deserialize)]
struct KeptRequest<S> {
    sequence: u64,
    ids: Vec<S>,
    wait_ms: u64,
}

/// The owner's answer: what it keeps of each id, once applied through the sequence asked
/// (`None`: it had not got that far within the wait).
#[derive(Debug, Serialize, Deserialize)]
struct KeptReply {
    kept: Option<Vec<Option<KeptId>>>,
}

/// What `state` keeps of `ids` (see [`PartitionState::kept_ids`]) once it has applied the
/// message at `sequence`; `None` if it has not within `wait` (or its owner stopped). A
/// partition's owner applies in stream order, so from then on the answer is the one its fold
/// of that message gave. `applied` is the owner's `applied_sequence`, published after the
/// state: the wait wakes when the message is applied (a 2 ms poll here halved one-partition
/// batches with ids, bench/results/cluster-kept.md).
pub async fn kept_ids_once_applied(
    state: &RwLock<PartitionState>,
    mut applied: watch::Receiver<u64>,
    sequence: u64,
    ids: &[impl AsRef<str>],
    wait: Duration,
) -> Option<Vec<Option<KeptId>>> {
    let waited = tokio::time::timeout(wait, applied.wait_for(|&done| done >= sequence)).await;
    // The watch's guard is not Send: let it go before the state's lock is awaited.
    let reached = matches!(waited, Ok(Ok(_)));
    drop(waited);
    if !reached {
        return None;
    }
    let state = state.read().await;
    (state.applied_sequence >= sequence).then(|| state.kept_ids(ids))
}

/// Asks the owner of `partition` what it keeps of `ids`, once it has applied the message at
/// `sequence` (waiting at most `timeout`); one request for all of them. An owner that has not
/// got that far in time is [`ReadError::Unreachable`]. An owner from before this request
/// answers it with an empty payload: it keeps nothing to tell, and every id reads as not
/// kept (the message's events answered accepted, as that version answered them).
pub async fn request_kept_ids(
    client: &async_nats::Client,
    partition: Partition,
    sequence: u64,
    ids: &[&str],
    timeout: Duration,
) -> Result<Vec<Option<KeptId>>, ReadError> {
    let unreachable = |reason: String| ReadError::Unreachable { partition, reason };
    // The owner stops waiting before the asker does, so its "not yet" arrives.
    let wait = timeout.saturating_sub(timeout / 5);
    let body = KeptRequest {
        sequence,
        ids: ids.to_vec(),
        wait_ms: wait.as_millis() as u64,
    };
    let payload = serde_json::to_vec(&body).map_err(|error| unreachable(error.to_string()))?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(PAGE_HEADER, "kept");
    let request = client.request_with_headers(read_subject(partition), headers, payload.into());
    let count = body.ids.len();
    let answer = ask_owner_raw(partition, request, timeout).await?;
    if answer.is_empty() {
        tracing::debug!(
            partition,
            "owner predates kept ids: the message's events accepted"
        );
        return Ok(vec![None; count]);
    }
    decode_answer::<KeptReply>(partition, &answer)?
        .kept
        .ok_or_else(|| unreachable(format!("sequence {sequence} not applied in {wait:?}")))
}

/// Answers a [`KeptRequest`] (it may wait for the owner to apply: run apart from the other
/// reads).
async fn answer_kept(
    request: &async_nats::Message,
    state: &RwLock<PartitionState>,
    applied: watch::Receiver<u64>,
) -> Vec<u8> {
    let Ok(asked) = serde_json::from_slice::<KeptRequest<String>>(&request.payload) else {
        return Vec::new(); // not JSON: the asker reads it as a bad answer
    };
    let wait = Duration::from_millis(asked.wait_ms);
    let kept = kept_ids_once_applied(state, applied, asked.sequence, &asked.ids, wait).await;
    serde_json::to_vec(&KeptReply { kept }).unwrap_or_default()
}

/// The answer to one read request (a user's balance, a page, an id lookup), from `state`.
async fn answer(request: &async_nats::Message, state: &RwLock<PartitionState>) -> Vec<u8> {
    let kind = request
        .headers
        .as_ref()
        .and_then(|headers| headers.get(PAGE_HEADER))
        .map(|value| value.as_str().to_owned());
    if kind.as_deref() == Some("id") {
        let id = String::from_utf8_lossy(&request.payload);
        let lookup = state.read().await.lookup_id(&id);
        return serde_json::to_vec(&lookup).unwrap_or_default();
    }
    if kind.as_deref() == Some("ids") {
        let Ok(ids) = serde_json::from_slice::<Vec<String>>(&request.payload) else {
            return Vec::new(); // not a list of ids: the asker reads it as an older owner's
        };
        let state = state.read().await;
        let lookups: Vec<IdLookup> = ids.iter().map(|id| state.lookup_id(id)).collect();
        return serde_json::to_vec(&lookups).unwrap_or_default();
    }
    if kind.is_some() {
        let Ok(page) = serde_json::from_slice::<PageRequest>(&request.payload) else {
            return Vec::new(); // not JSON: the asker reads it as a bad answer
        };
        let balances = state.read().await.page(page.after.as_deref(), page.limit);
        return serde_json::to_vec(&PageReply { balances }).unwrap_or_default();
    }
    let user = String::from_utf8_lossy(&request.payload);
    let balance = state.read().await.known_balance(&user);
    serde_json::to_vec(&BalanceReply { balance }).unwrap_or_default()
}

/// Answers read requests (balances, pages) for `partition` from `state` while the lease (its
/// validity in `valid_until`) holds. Runs until the subscription ends or the task is aborted.
pub async fn serve_balances(
    client: async_nats::Client,
    partition: Partition,
    state: Arc<RwLock<PartitionState>>,
    applied: watch::Receiver<u64>,
    valid_until: watch::Receiver<Instant>,
) -> Result<(), async_nats::SubscribeError> {
    let mut requests = client.subscribe(read_subject(partition)).await?;
    while let Some(request) = requests.next().await {
        let Some(reply_to) = request.reply.clone() else {
            continue;
        };
        if *valid_until.borrow() <= Instant::now() {
            continue; // not ours to answer any more: silence reads as "moving"
        }
        if is_kept_request(&request) {
            let (client, state, applied) = (client.clone(), Arc::clone(&state), applied.clone());
            tokio::spawn(async move {
                let answer = answer_kept(&request, &state, applied).await;
                reply(&client, partition, reply_to, answer).await;
            });
            continue;
        }
        let answer = answer(&request, &state).await;
        reply(&client, partition, reply_to, answer).await;
    }
    Ok(())
}

fn is_kept_request(request: &async_nats::Message) -> bool {
    request
        .headers
        .as_ref()
        .and_then(|headers| headers.get(PAGE_HEADER))
        .is_some_and(|value| value.as_str() == "kept")
}

async fn reply(
    client: &async_nats::Client,
    partition: Partition,
    reply_to: async_nats::Subject,
    answer: Vec<u8>,
) {
    if let Err(error) = client.publish(reply_to, answer.into()).await {
        tracing::debug!(partition, %error, "balance reply not sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_at(sequence: u64) -> (Arc<RwLock<PartitionState>>, watch::Sender<u64>) {
        let state = PartitionState {
            applied_sequence: sequence,
            ..PartitionState::default()
        };
        (Arc::new(RwLock::new(state)), watch::Sender::new(sequence))
    }

    // Proves a `kept` read waiting for a sequence wakes when the owner publishes it (no timer:
    // with the clock paused, no time passes), and that an owner that stops, or does not get
    // there within the wait, answers None.
    #[tokio::test(start_paused = true)]
    async fn a_kept_read_wakes_when_its_sequence_is_applied() {
        let ids = vec!["x".to_owned()];
        let (state, applied) = state_at(3);
        let started = tokio::time::Instant::now();
        let waiting = {
            let (state, receiver, ids) = (Arc::clone(&state), applied.subscribe(), ids.clone());
            tokio::spawn(async move {
                kept_ids_once_applied(&state, receiver, 5, &ids, Duration::from_secs(10)).await
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "sequence 5 is not applied yet");
        state.write().await.applied_sequence = 5;
        applied.send_replace(5);
        let kept = waiting.await.expect("the read task");
        assert_eq!(kept, Some(vec![None]));
        assert_eq!(started.elapsed(), Duration::ZERO, "woken, not polled");

        let receiver = applied.subscribe();
        drop(applied);
        let stopped = kept_ids_once_applied(&state, receiver, 6, &ids, Duration::from_secs(10));
        assert_eq!(stopped.await, None, "the owner stopped");
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "no wait for a stopped owner"
        );

        let (state, applied) = state_at(3);
        let late =
            kept_ids_once_applied(&state, applied.subscribe(), 4, &ids, Duration::from_secs(1));
        assert_eq!(late.await, None, "not applied within the wait");
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }
}
