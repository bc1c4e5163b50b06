//! Reads from any node: the owner of a partition answers balance requests on the partition's
//! read subject; any other node asks it there.
//!
//! Invariants:
//! - Only an owner with a valid lease answers: the responder checks the lease's validity before
//!   each reply and stays silent otherwise, so a paused or deposed owner cannot serve a stale
//!   balance after the moment a new owner could exist.
//! - No responder means the partition is moving (its owner died or gave it up and no one has
//!   taken it yet): [`ReadError::Moving`], for a 503 with that reason, never a guessed value.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::RequestErrorKind;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{RwLock, watch};

use crate::partition::{Partition, partition_of};
use crate::state::PartitionState;

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
    let unreachable = |reason: String| ReadError::Unreachable { partition, reason };
    let request = client.request(read_subject(partition), user.to_owned().into());
    let reply = match tokio::time::timeout(timeout, request).await {
        Err(_elapsed) => return Err(unreachable(format!("no answer in {timeout:?}"))),
        Ok(Err(error)) if error.kind() == RequestErrorKind::NoResponders => {
            return Err(ReadError::Moving(partition));
        }
        Ok(Err(error)) => return Err(unreachable(error.to_string())),
        Ok(Ok(reply)) => reply,
    };
    serde_json::from_slice::<BalanceReply>(&reply.payload)
        .map(|reply| reply.balance)
        .map_err(|error| unreachable(format!("bad answer: {error}")))
}

/// Answers balance requests for `partition` from `state` while the lease (its validity in
/// `valid_until`) holds. Runs until the subscription ends or the task is aborted.
pub async fn serve_balances(
    client: async_nats::Client,
    partition: Partition,
    state: Arc<RwLock<PartitionState>>,
    valid_until: watch::Receiver<Instant>,
) -> Result<(), async_nats::SubscribeError> {
    let mut requests = client.subscribe(read_subject(partition)).await?;
    while let Some(request) = requests.next().await {
        let Some(reply_to) = request.reply else {
            continue;
        };
        if *valid_until.borrow() <= Instant::now() {
            continue; // not ours to answer any more: silence reads as "moving"
        }
        let user = String::from_utf8_lossy(&request.payload);
        let balance = state.read().await.known_balance(&user);
        let answer = serde_json::to_vec(&BalanceReply { balance }).unwrap_or_default();
        if let Err(error) = client.publish(reply_to, answer.into()).await {
            tracing::debug!(partition, %error, "balance reply not sent");
        }
    }
    Ok(())
}
