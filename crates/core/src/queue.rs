//! Bounded admission between the front door and the workers (seed stages 5–6).
//!
//! Lesson: a bounded queue declares capacity; `try_send` makes overload explicit ("backpressure
//! is honesty"): a full queue refuses at once instead of making the caller wait. Stage 6
//! shared one receiver behind `Arc<Mutex<Receiver>>` ([`QueueKind::SharedReceiver`]); a true
//! multi-consumer channel ([`QueueKind::Mpmc`], async-channel) lets idle workers receive
//! without taking turns on a lock.
//!
//! Invariants:
//! - [`Admission::try_push`] never waits: it returns `Full` or `Closed` immediately.
//! - Capacity is bounded: the lanes' capacities add up to `queue_capacity_events`.
//! - Nothing pushed is lost: [`Consumer::recv_batch`] returns 0 only once its lane is closed
//!   AND empty. After [`Admission::close`] an async-channel lane refuses pushes at once; a
//!   tokio lane is closed by its consumer when it sees the closing signal, so a push may still
//!   succeed in between, and that job is then drained like any other (the engine refuses new
//!   events itself, before pushing, once draining).
//! - With the owned strategy there is one lane per worker and a job goes to lane
//!   `shard_index(hash, lanes)`: the worker that owns the job's shard.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{mpsc, watch};

use crate::config::QueueKind;
use crate::dedup::{Claim, Window};
use crate::event::Event;
use crate::ledger::shard_index;

/// How long the log writer waits before looking for room again in a full lane.
const BLOCKING_PUSH_PAUSE: std::time::Duration = std::time::Duration::from_micros(50);

/// One admitted event on its way to a worker: the hash is computed once, at admission.
/// 72 bytes, no allocation besides the user's name: an id's claim travels inline.
#[derive(Debug)]
pub struct Job {
    /// The user (moved into the ledger when new).
    pub user: String,
    /// Amount to add.
    pub amount: i64,
    /// `user_hash(&user)`, used for routing and the table probe.
    pub hash: u64,
    /// With a log, a single event's caller waits for the apply: told the outcome here.
    pub reply: Option<AppliedReply>,
    /// With a log, the event's id, claimed in the dedup window: the worker that applies the
    /// job settles it (kept if applied, freed if the balance would overflow), one window lock
    /// per batch of jobs. Whoever drops a job unapplied must release it ([`release_claims`]).
    /// (Without a log the engine keeps an id once its event is queued: `None` here.)
    pub claim: Option<Claim>,
}

/// A job's outcome, as its worker reports it: the new balance, or `Err(())` for an overflow.
pub type AppliedOutcome = Result<i64, ()>;

/// Where a worker tells a waiting caller its event's outcome.
pub type AppliedReply = tokio::sync::oneshot::Sender<AppliedOutcome>;

impl Job {
    /// An admitted event without reply or id.
    pub fn new(user: String, amount: i64, hash: u64) -> Self {
        Self {
            user,
            amount,
            hash,
            reply: None,
            claim: None,
        }
    }

    /// The event this job carries (for a refusal that hands it back).
    pub fn into_event(self) -> Event {
        Event::new(self.user, self.amount)
    }

    /// Takes the job's claim, to settle it elsewhere (a refusal frees it).
    pub fn take_claim(&mut self) -> Option<Claim> {
        self.claim.take()
    }
}

/// Frees the claims of jobs that will never be applied (one window lock).
pub fn release_claims<'a>(window: &Window, jobs: impl IntoIterator<Item = &'a mut Job>) {
    window.settle_all(
        jobs.into_iter()
            .filter_map(|job| job.take_claim().map(|claim| (claim, false))),
    );
}

/// Why a push failed (the job is handed back with it: the caller answers 503).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushError {
    /// The lane is at capacity.
    Full,
    /// The queue is closed (draining).
    Closed,
}

#[derive(Debug)]
enum Lane {
    /// async-channel has no reservations: its room is counted beside it (`Room`), taken
    /// before a push and given back by the consumers as they receive.
    Mpmc(async_channel::Sender<Job>, Arc<Room>),
    Tokio(mpsc::Sender<Job>),
}

/// Free slots of an async-channel lane. Never more than the channel's own free slots: taken
/// before a send, given back only after a receive.
#[derive(Debug)]
pub struct Room(AtomicUsize);

impl Room {
    fn take(&self, count: usize) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| {
                free.checked_sub(count)
            })
            .is_ok()
    }

    fn give(&self, count: usize) {
        self.0.fetch_add(count, Ordering::AcqRel);
    }
}

/// Room reserved on one lane for a batch; unused room is given back when dropped.
enum Reservation<'a> {
    Mpmc {
        sender: &'a async_channel::Sender<Job>,
        room: &'a Room,
        unused: usize,
    },
    Tokio(Option<mpsc::PermitIterator<'a, Job>>),
}

impl Reservation<'_> {
    /// Sends one job with reserved room (the reservation covers it: never `Full`).
    fn send(&mut self, job: Job) {
        match self {
            Self::Mpmc {
                sender,
                room,
                unused,
            } => {
                *unused -= 1;
                if sender.try_send(job).is_err() {
                    // Closed after the reservation: the engine refuses new events before
                    // pushing once draining, so this job was admitted while closing.
                    room.give(1);
                    tracing::warn!("queue closed during a batch push; one job dropped");
                }
            }
            Self::Tokio(permits) => permits
                .as_mut()
                .and_then(Iterator::next)
                .expect("room was reserved for every job of this lane")
                .send(job),
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Self::Mpmc { room, unused, .. } = self {
            room.give(*unused);
        }
    }
}

impl Lane {
    /// Reserves room for as many of `count` jobs as fit now (at least one): the reservation
    /// and how many it covers; `Full` when there is no room at all.
    fn reserve_some(&self, count: usize) -> Result<(Reservation<'_>, usize), PushError> {
        let free = match self {
            Self::Mpmc(sender, room) => {
                if sender.is_closed() {
                    return Err(PushError::Closed);
                }
                room.0.load(Ordering::Acquire)
            }
            Self::Tokio(sender) => {
                if sender.is_closed() {
                    return Err(PushError::Closed);
                }
                sender.capacity()
            }
        };
        let granted = count.min(free);
        if granted == 0 {
            return Err(PushError::Full);
        }
        self.reserve(granted)
            .map(|reservation| (reservation, granted))
    }

    /// Pushes all of `jobs` (draining it) into this lane, one reservation per wait for room.
    fn push_all_blocking(&self, jobs: &mut Vec<Job>, dropped: &mut Vec<Job>) {
        let mut pending = jobs.drain(..);
        while pending.len() > 0 {
            match self.reserve_some(pending.len()) {
                Ok((mut reservation, granted)) => {
                    for job in pending.by_ref().take(granted) {
                        reservation.send(job);
                    }
                }
                Err(PushError::Full) => std::thread::sleep(BLOCKING_PUSH_PAUSE),
                Err(PushError::Closed) => {
                    dropped.extend(pending);
                    return;
                }
            }
        }
    }

    fn reserve(&self, count: usize) -> Result<Reservation<'_>, PushError> {
        match self {
            Self::Mpmc(sender, room) => {
                if sender.is_closed() {
                    return Err(PushError::Closed);
                }
                if !room.take(count) {
                    return Err(PushError::Full);
                }
                Ok(Reservation::Mpmc {
                    sender,
                    room,
                    unused: count,
                })
            }
            Self::Tokio(_) if count == 0 => Ok(Reservation::Tokio(None)),
            Self::Tokio(sender) => match sender.try_reserve_many(count) {
                Ok(permits) => Ok(Reservation::Tokio(Some(permits))),
                Err(mpsc::error::TrySendError::Full(())) => Err(PushError::Full),
                Err(mpsc::error::TrySendError::Closed(())) => Err(PushError::Closed),
            },
        }
    }
}

/// The producer side: one lane, or one per worker when `owned` (the owned strategy).
#[derive(Debug)]
pub struct Admission {
    lanes: Box<[Lane]>,
    capacity_events: usize,
    closing: watch::Sender<bool>,
}

/// The consumer side of one worker.
#[derive(Debug)]
pub enum Consumer {
    /// A clone of the multi-consumer receiver, and the lane's room to give back.
    Mpmc(async_channel::Receiver<Job>, Arc<Room>),
    /// A lane with one consumer (owned strategy): tokio's receiver, owned by the worker.
    Single {
        /// The receiver.
        receiver: mpsc::Receiver<Job>,
        /// Turns true when the queue closes (tokio's receiver is closed from its side).
        closing: watch::Receiver<bool>,
    },
    /// The seed's shared receiver: lock it, receive, unlock.
    Shared {
        /// The receiver, shared by the workers of this lane.
        receiver: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
        /// Turns true when the queue closes (tokio's receiver is closed from its side).
        closing: watch::Receiver<bool>,
    },
}

/// Build the queue and one consumer per worker.
///
/// - Shared (`owned == false`): one lane of `capacity_events`; every worker consumes it (an
///   async-channel receiver clone for [`QueueKind::Mpmc`], the seed's `Arc<Mutex<Receiver>>`
///   for [`QueueKind::SharedReceiver`]).
/// - Owned (`owned == true`): one lane per worker, capacities adding up to `capacity_events`,
///   each consumed by its worker alone. A lane with one consumer needs no multi-consumer
///   channel, so [`QueueKind::Mpmc`] then uses tokio's mpsc receiver owned by the worker
///   (`recv_many` takes a whole batch per wake-up); `SharedReceiver` keeps the seed's mutex
///   (uncontended) for like-for-like sweeps.
///
/// # Panics
/// When `workers` is 0 or, owned, `capacity_events < workers` (a programmer error:
/// `EngineConfig::validate` refuses such configurations).
pub fn build(
    kind: QueueKind,
    capacity_events: usize,
    workers: usize,
    owned: bool,
) -> (Admission, Vec<Consumer>) {
    assert!(workers > 0 && capacity_events > 0, "queue shape");
    let lanes = if owned { workers } else { 1 };
    assert!(capacity_events >= lanes, "at least one slot per lane");
    let (closing, closing_receiver) = watch::channel(false);
    let mut senders = Vec::with_capacity(lanes);
    let mut consumers = Vec::with_capacity(workers);
    for lane in 0..lanes {
        // Spread the remainder so the lanes add up to exactly `capacity_events`.
        let capacity = capacity_events / lanes + usize::from(lane < capacity_events % lanes);
        let consumers_of_lane = if owned { 1 } else { workers };
        match (kind, owned) {
            (QueueKind::Mpmc, false) => {
                let (sender, receiver) = async_channel::bounded(capacity);
                let room = Arc::new(Room(AtomicUsize::new(capacity)));
                senders.push(Lane::Mpmc(sender, Arc::clone(&room)));
                consumers.extend(
                    (0..consumers_of_lane)
                        .map(|_| Consumer::Mpmc(receiver.clone(), Arc::clone(&room))),
                );
            }
            (QueueKind::Mpmc, true) => {
                let (sender, receiver) = mpsc::channel(capacity);
                senders.push(Lane::Tokio(sender));
                let closing = closing_receiver.clone();
                consumers.push(Consumer::Single { receiver, closing });
            }
            (QueueKind::SharedReceiver, _) => {
                let (sender, receiver) = mpsc::channel(capacity);
                senders.push(Lane::Tokio(sender));
                let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
                consumers.extend((0..consumers_of_lane).map(|_| Consumer::Shared {
                    receiver: Arc::clone(&receiver),
                    closing: closing_receiver.clone(),
                }));
            }
        }
    }
    let admission = Admission {
        lanes: senders.into_boxed_slice(),
        capacity_events,
        closing,
    };
    (admission, consumers)
}

impl Admission {
    /// Admit a job without waiting: `Full` when its lane is at capacity, `Closed` once closed;
    /// a refused job is handed back (so a caller may retry without cloning).
    pub fn try_push(&self, job: Job) -> Result<(), (PushError, Job)> {
        match &self.lanes[self.lane_index(job.hash)] {
            Lane::Mpmc(sender, room) => {
                if !room.take(1) {
                    let error = if sender.is_closed() {
                        PushError::Closed
                    } else {
                        PushError::Full
                    };
                    return Err((error, job));
                }
                sender.try_send(job).map_err(|error| {
                    room.give(1);
                    match error {
                        async_channel::TrySendError::Full(job) => (PushError::Full, job),
                        async_channel::TrySendError::Closed(job) => (PushError::Closed, job),
                    }
                })
            }
            Lane::Tokio(sender) => sender.try_send(job).map_err(|error| match error {
                mpsc::error::TrySendError::Full(job) => (PushError::Full, job),
                mpsc::error::TrySendError::Closed(job) => (PushError::Closed, job),
            }),
        }
    }

    /// Push every job of `jobs` (draining it), waiting for room: the log writer's hand-over of
    /// a durable group. The jobs are grouped by lane (in order, so each user's events keep
    /// their log order) and each lane takes its jobs under one reservation when it has room
    /// for all of them (in parts as room frees up otherwise), instead of one push per job.
    /// Only from a thread outside the async runtime. Returns the jobs given back because
    /// their lane closed.
    pub fn push_all_blocking(&self, jobs: &mut Vec<Job>, lanes: &mut Vec<Vec<Job>>) -> Vec<Job> {
        let mut dropped = Vec::new();
        if self.lanes.len() == 1 {
            self.lanes[0].push_all_blocking(jobs, &mut dropped);
            return dropped;
        }
        lanes.resize_with(self.lanes.len(), Vec::new);
        for job in jobs.drain(..) {
            lanes[self.lane_index(job.hash)].push(job);
        }
        for (lane, lane_jobs) in self.lanes.iter().zip(lanes.iter_mut()) {
            lane.push_all_blocking(lane_jobs, &mut dropped);
        }
        dropped
    }

    /// Admit a whole batch or nothing: room for every job is reserved first (one reservation
    /// per lane), then the jobs go in with the reserved room, in order per lane. When any lane
    /// lacks room (`Full`) or the queue is closed, nothing was pushed and every job is handed
    /// back in its original order.
    pub fn try_push_batch(&self, jobs: Vec<Job>) -> Result<(), (PushError, Vec<Job>)> {
        let lanes = self.lanes.len();
        let mut per_lane = vec![0_usize; lanes];
        for job in &jobs {
            per_lane[self.lane_index(job.hash)] += 1;
        }
        let mut reserved = Vec::with_capacity(lanes);
        for (lane, &count) in self.lanes.iter().zip(&per_lane) {
            match lane.reserve(count) {
                Ok(reservation) => reserved.push(reservation),
                // Dropping `reserved` gives the room taken so far back.
                Err(error) => return Err((error, jobs)),
            }
        }
        for job in jobs {
            let lane = self.lane_index(job.hash);
            reserved[lane].send(job);
        }
        Ok(())
    }

    fn lane_index(&self, hash: u64) -> usize {
        if self.lanes.len() == 1 {
            0
        } else {
            shard_index(hash, self.lanes.len())
        }
    }

    /// Stop admitting. Jobs already queued stay and are still delivered. Idempotent.
    pub fn close(&self) {
        for lane in &*self.lanes {
            if let Lane::Mpmc(sender, _) = lane {
                sender.close();
            }
        }
        self.closing.send_replace(true);
    }

    /// Jobs waiting, over every lane.
    pub fn depth(&self) -> usize {
        self.lanes
            .iter()
            .map(|lane| match lane {
                Lane::Mpmc(sender, _) => sender.len(),
                Lane::Tokio(sender) => sender.max_capacity() - sender.capacity(),
            })
            .sum()
    }

    /// Total capacity in events.
    pub fn capacity_events(&self) -> usize {
        self.capacity_events
    }
}

impl Consumer {
    /// Wait for at least one job, then take up to `max` without waiting more; appends to
    /// `batch` and returns how many. Returns 0 only when the lane is closed and empty.
    pub async fn recv_batch(&mut self, batch: &mut Vec<Job>, max: usize) -> usize {
        debug_assert!(max > 0, "batch of at least one");
        match self {
            Self::Mpmc(receiver, room) => {
                let Ok(job) = receiver.recv().await else {
                    return 0;
                };
                batch.push(job);
                let mut taken = 1;
                while taken < max {
                    let Ok(job) = receiver.try_recv() else { break };
                    batch.push(job);
                    taken += 1;
                }
                room.give(taken);
                taken
            }
            Self::Single { receiver, closing } => {
                recv_many_or_close(receiver, closing, batch, max).await
            }
            Self::Shared { receiver, closing } => {
                let mut receiver = receiver.lock().await;
                recv_many_or_close(&mut receiver, closing, batch, max).await
            }
        }
    }
}

/// Receive up to `max` jobs from a tokio lane; once `closing` turns true, close the lane (so
/// later pushes fail) and keep draining: returns 0 only when closed and empty.
async fn recv_many_or_close(
    receiver: &mut mpsc::Receiver<Job>,
    closing: &mut watch::Receiver<bool>,
    batch: &mut Vec<Job>,
    max: usize,
) -> usize {
    let closed = *closing.borrow();
    if closed {
        receiver.close();
        return receiver.recv_many(batch, max).await;
    }
    tokio::select! {
        biased;
        taken = receiver.recv_many(batch, max) => taken,
        () = async {
            // Drop the watch guard at once (it is not `Send`).
            let _ = closing.wait_for(|closing| *closing).await;
        } => {
            receiver.close();
            receiver.recv_many(batch, max).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::user_hash;

    fn job(user: &str) -> Job {
        Job::new(user.to_owned(), 1, user_hash(user))
    }

    #[tokio::test]
    async fn try_push_refuses_when_full_and_after_close_but_drains() {
        // Proves boundedness (Full at capacity, never waiting), Closed after close, and that
        // every job pushed before close is still received, for both queue kinds.
        for kind in [QueueKind::Mpmc, QueueKind::SharedReceiver] {
            let (admission, mut consumers) = build(kind, 3, 2, false);
            for user in ["a", "b", "c"] {
                assert!(admission.try_push(job(user)).is_ok());
            }
            assert_eq!(
                admission.try_push(job("d")).map_err(|error| error.0),
                Err(PushError::Full)
            );
            assert_eq!(admission.depth(), 3);
            admission.close();
            let mut batch = Vec::new();
            let mut received = 0;
            loop {
                let taken = consumers[received % 2].recv_batch(&mut batch, 2).await;
                if taken == 0 {
                    break;
                }
                received += taken;
            }
            assert_eq!(received, 3, "{kind:?}");
            let (error, job) = admission.try_push(job("e")).expect_err("closed");
            assert_eq!((error, job.user.as_str()), (PushError::Closed, "e"));
        }
    }

    #[tokio::test]
    async fn a_batch_goes_in_whole_or_not_at_all() {
        // Proves all-or-nothing for both lane kinds, shared and owned: a batch larger than
        // the free room pushes nothing (and the room stays as it was), one that fits pushes
        // every job, and a closed queue refuses the batch whole.
        for (kind, owned) in [
            (QueueKind::Mpmc, false),
            (QueueKind::Mpmc, true),
            (QueueKind::SharedReceiver, false),
        ] {
            let (admission, mut consumers) = build(kind, 8, 2, owned);
            assert!(admission.try_push(job("first")).is_ok());
            let too_many: Vec<Job> = (0..8).map(|n| job(&format!("u{n}"))).collect();
            let (error, back) = admission.try_push_batch(too_many).expect_err("no room");
            assert_eq!((error, back.len()), (PushError::Full, 8), "{kind:?}");
            assert_eq!(back[3].user, "u3", "handed back in order");
            assert_eq!(admission.depth(), 1, "nothing pushed: {kind:?} {owned}");
            let fits: Vec<Job> = (0..3).map(|n| job(&format!("v{n}"))).collect();
            assert!(admission.try_push_batch(fits).is_ok(), "{kind:?} {owned}");
            assert_eq!(admission.depth(), 4);
            admission.close();
            let mut received = Vec::new();
            for consumer in &mut consumers {
                while consumer.recv_batch(&mut received, 16).await > 0 {}
            }
            assert_eq!(received.len(), 4, "{kind:?} {owned}");
            let (error, _) = admission
                .try_push_batch(vec![job("late")])
                .expect_err("closed");
            assert_eq!(error, PushError::Closed);
        }
    }

    #[tokio::test]
    async fn owned_lanes_route_by_hash_and_split_capacity() {
        // Proves lanes add up to the capacity and a user always lands in its owner's lane.
        let (admission, mut consumers) = build(QueueKind::Mpmc, 10, 3, true);
        assert_eq!((consumers.len(), admission.capacity_events()), (3, 10));
        let users: Vec<String> = (0..6).map(|user| format!("user{user}")).collect();
        for user in &users {
            assert!(admission.try_push(job(user)).is_ok());
        }
        admission.close();
        for (lane, consumer) in consumers.iter_mut().enumerate() {
            let mut batch = Vec::new();
            while consumer.recv_batch(&mut batch, 8).await > 0 {}
            for job in &batch {
                assert_eq!(shard_index(job.hash, 3), lane);
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blocking_hand_over_waits_for_room_and_keeps_each_lanes_order() {
        // Proves the log writer's hand-over for every lane kind: a group of 40 jobs into a
        // queue of 8 (more than any lane holds) completes as the consumers drain, each
        // consumer receives its jobs in the group's order, nothing is lost, and after close the
        // jobs are handed back instead of waiting forever.
        for (kind, owned) in [
            (QueueKind::Mpmc, false),
            (QueueKind::Mpmc, true),
            (QueueKind::SharedReceiver, false),
        ] {
            let (admission, consumers) = build(kind, 8, 2, owned);
            let admission = Arc::new(admission);
            let pusher = {
                let admission = Arc::clone(&admission);
                std::thread::spawn(move || {
                    let mut jobs: Vec<Job> = (0..40)
                        .map(|n| Job {
                            amount: n,
                            ..job(&format!("user{}", n % 5))
                        })
                        .collect();
                    let dropped = admission.push_all_blocking(&mut jobs, &mut Vec::new());
                    admission.close();
                    dropped.len()
                })
            };
            let draining: Vec<_> = consumers
                .into_iter()
                .map(|mut consumer| {
                    tokio::spawn(async move {
                        let mut batch = Vec::new();
                        while consumer.recv_batch(&mut batch, 3).await > 0 {}
                        batch
                    })
                })
                .collect();
            let mut received = 0;
            for consumer in draining {
                let batch = consumer.await.expect("consumer");
                received += batch.len();
                // What one consumer receives keeps the group's order.
                let amounts: Vec<i64> = batch.iter().map(|job| job.amount).collect();
                assert!(amounts.is_sorted(), "{kind:?} {owned}: {amounts:?}");
            }
            assert_eq!(pusher.join().expect("pusher"), 0);
            assert_eq!(received, 40, "{kind:?} {owned}");
            let mut late = vec![job("late")];
            let dropped = admission.push_all_blocking(&mut late, &mut Vec::new());
            assert_eq!(dropped.len(), 1, "closed: handed back");
        }
    }
}
