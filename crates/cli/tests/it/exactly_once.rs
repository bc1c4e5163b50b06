//! Exactly-once across kill -9, on the real binary (`floodgate serve`, fsync): clients give
//! every event an id and resend every request whose answer did not come back (or was 503)
//! until it is answered, while the server is SIGKILLed mid-load and restarted on the same
//! data directory, several times.
//!
//! Lessons and the invariants the tests hold the server to:
//! - a 2xx is a promise: every event acknowledged is applied, once, whichever server answered
//!   it (nothing lost, nothing counted twice), through `/events` and `/events/batch` alike;
//! - a resend of a request that WAS answered (a client whose answer was lost on the way) is
//!   answered `duplicate` event by event, by the server that answered it and by every server
//!   recovered after a kill: the dedup window keeps an applied event's id, and recovery
//!   rebuilds it (resending only unanswered requests cannot tell: their first copy was rarely
//!   logged before the kill);
//! - a batch is one log record: a batch resent after a kill is applied whole or not at all.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::process::Child;
use tokio::sync::watch;

use crate::support::{
    Launched, balance, collect_log, launch, random_delay, settled_balance, signal, stats, wait_exit,
};

/// Users the events are spread over.
const USERS: usize = 10;
/// Events in a batch at most (a batch holds 1 to this many, varying request by request).
const BATCH_EVENTS_MAX: usize = 40;
/// Times the server is killed with SIGKILL mid-load.
const KILLS: usize = 4;
/// A request not answered within this is resent (the server may be gone).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause before a resend.
const RESEND_PAUSE: Duration = Duration::from_millis(20);
/// Resends of one request at most: far more than the restarts take.
const MAX_RESENDS: u32 = 1_000;
/// How long a server may take to acknowledge its first request (a loaded machine may need
/// a while to get the clients to it); not a speed target.
const FIRST_ACKNOWLEDGEMENT_WAIT: Duration = Duration::from_secs(30);
/// Kills come this long or up to 500 ms more after a server's first acknowledgement.
const KILL_DELAY_SHORTEST: Duration = Duration::from_millis(200);

/// Where the clients send: the running server's address, `None` while it is down (so no
/// client ever sends to a port the OS may have handed to another test's server).
type Address = watch::Receiver<Option<String>>;

/// What the clients were told, summed over them.
#[derive(Debug, Default)]
struct Tally {
    /// Events of requests answered 2xx, each request counted once (its first answer).
    acknowledged_events: AtomicU64,
    /// Events a request's first answer called `duplicate` (its earlier copy was logged).
    duplicates: AtomicU64,
    /// Sends after a request's first one (unanswered or 503).
    resends: AtomicU64,
    /// Requests sent again after they were answered, and the events they carried.
    replays: AtomicU64,
    replayed_events: AtomicU64,
}

impl Tally {
    /// Counts a request's first 2xx answer: its events acknowledged, and those it called
    /// `duplicate`.
    fn count_first_answer(&self, answer: &Answered, events: usize) {
        self.duplicates
            .fetch_add(answer.count(Outcome::Duplicate) as u64, Ordering::Relaxed);
        self.acknowledged_events
            .fetch_add(events as u64, Ordering::Relaxed);
    }
}

/// How a request carries its events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// One event, `POST /events`.
    Single,
    /// A batch as NDJSON, `POST /events/batch`.
    Ndjson,
    /// A batch as a JSON array, `POST /events/batch`.
    JsonArray,
}

/// One event as the client built it: its id is unique in the run.
#[derive(Clone, Debug)]
struct SentEvent {
    id: String,
    user: String,
    amount: i64,
}

/// One request: the same bytes are sent on every attempt.
struct Request {
    shape: Shape,
    body: String,
    events: Vec<SentEvent>,
}

impl Request {
    fn path(&self) -> &'static str {
        match self.shape {
            Shape::Single => "/events",
            Shape::Ndjson | Shape::JsonArray => "/events/batch",
        }
    }

    fn content_type(&self) -> &'static str {
        match self.shape {
            Shape::Ndjson => "application/x-ndjson",
            Shape::Single | Shape::JsonArray => "application/json",
        }
    }

    /// The request's first event id, to name it in a failure.
    fn name(&self) -> &str {
        self.events.first().map_or("", |event| event.id.as_str())
    }
}

/// Request `number` of client `client`: one event, or a batch of 1 to [`BATCH_EVENTS_MAX`];
/// every event's id is unique in the run (`c{client}-r{number}-e{index}`).
fn build_request(client: usize, number: usize, shape: Shape) -> Request {
    let count = match shape {
        Shape::Single => 1,
        Shape::Ndjson | Shape::JsonArray => 1 + (client * 13 + number * 7) % BATCH_EVENTS_MAX,
    };
    let events: Vec<SentEvent> = (0..count)
        .map(|index| SentEvent {
            id: format!("c{client}-r{number}-e{index}"),
            user: format!("user-{}", (client * 7 + number * 3 + index) % USERS),
            amount: i64::try_from((number + index) % 9 + 1).expect("small"),
        })
        .collect();
    let lines: Vec<String> = events
        .iter()
        .map(|event| {
            serde_json::json!({"user": event.user, "amount": event.amount, "id": event.id})
                .to_string()
        })
        .collect();
    let body = match shape {
        Shape::Single => lines.concat(),
        Shape::Ndjson => lines.join("\n"),
        Shape::JsonArray => format!("[{}]", lines.join(",")),
    };
    Request {
        shape,
        body,
        events,
    }
}

/// What a 2xx answer says of one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Accepted,
    Duplicate,
}

/// A request's 2xx answer, event by event, and the sends it took.
struct Answered {
    outcomes: Vec<Outcome>,
    sends: u32,
}

impl Answered {
    fn count(&self, outcome: Outcome) -> usize {
        self.outcomes
            .iter()
            .filter(|seen| **seen == outcome)
            .count()
    }
}

/// Sends `request` until it is answered 2xx (resending the same bytes after a timeout, a
/// broken or refused connection, or a 503); the answer read event by event.
async fn send_until_answered(
    http: &reqwest::Client,
    address: &mut Address,
    request: &Request,
    tally: &Tally,
) -> Answered {
    for attempt in 0..MAX_RESENDS {
        if attempt > 0 {
            tally.resends.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(RESEND_PAUSE).await;
        }
        let addr = address
            .wait_for(Option::is_some)
            .await
            .expect("the test keeps the address")
            .clone()
            .expect("some");
        let sent = http
            .post(format!("http://{addr}{}", request.path()))
            .header("content-type", request.content_type())
            .body(request.body.clone())
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await;
        let Ok(response) = sent else { continue };
        let status = response.status().as_u16();
        if status == 503 {
            continue;
        }
        let replayed = response
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|value| value == "true");
        let Ok(answer) = response.json::<serde_json::Value>().await else {
            continue; // killed while the answer was on its way
        };
        return Answered {
            outcomes: outcomes_of(status, replayed, &answer, request),
            sends: attempt + 1,
        };
    }
    panic!("no answer after {MAX_RESENDS} resends of {}", request.body);
}

/// What a 2xx answer says of each of `request`'s events; any other answer, or a 2xx that
/// breaks the contract (README, openapi.json), fails the test.
fn outcomes_of(
    status: u16,
    replayed: bool,
    answer: &serde_json::Value,
    request: &Request,
) -> Vec<Outcome> {
    match (request.shape, status) {
        (Shape::Single, 202) => vec![single_outcome(replayed, answer)],
        (Shape::Ndjson | Shape::JsonArray, 200) => batch_outcomes(answer, request.events.len()),
        _ => panic!("unexpected answer {status} {answer} to {}", request.body),
    }
}

/// `202 {"status":"accepted"|"duplicate"}`; a duplicate, and only a duplicate, carries
/// `Idempotent-Replayed: true`.
fn single_outcome(replayed: bool, answer: &serde_json::Value) -> Outcome {
    let outcome = match answer["status"].as_str() {
        Some("accepted") => Outcome::Accepted,
        Some("duplicate") => Outcome::Duplicate,
        _ => panic!("unexpected 202 {answer}"),
    };
    assert_eq!(
        replayed,
        outcome == Outcome::Duplicate,
        "Idempotent-Replayed beside {answer}"
    );
    outcome
}

/// `200 {"accepted":a,"duplicate":d,"rejected":0,"results":[..]}`: `results` lists exactly the
/// events not accepted, in index order, each `{"index":i,"status":"duplicate"}`.
fn batch_outcomes(answer: &serde_json::Value, count: usize) -> Vec<Outcome> {
    let results = answer["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in {answer}"));
    let mut outcomes = vec![Outcome::Accepted; count];
    let mut previous = None;
    for result in results {
        let index = result["index"]
            .as_u64()
            .and_then(|index| usize::try_from(index).ok())
            .filter(|index| *index < count)
            .unwrap_or_else(|| panic!("a result's index out of 0..{count}: {answer}"));
        assert!(
            previous < Some(index),
            "results not in index order: {answer}"
        );
        assert_eq!(
            *result,
            serde_json::json!({"index": index, "status": "duplicate"}),
            "{answer}"
        );
        outcomes[index] = Outcome::Duplicate;
        previous = Some(index);
    }
    let duplicates = results.len() as u64;
    assert_eq!(
        (
            answer["accepted"].as_u64(),
            answer["duplicate"].as_u64(),
            answer["rejected"].as_u64()
        ),
        (Some(count as u64 - duplicates), Some(duplicates), Some(0)),
        "{answer}"
    );
    outcomes
}

/// Starts `floodgate serve` on `directory` (durable: fsync) with small log segments and
/// `extra` arguments.
async fn serve(directory: &Path, extra: &[&str]) -> Launched {
    let directory = directory.display().to_string();
    let mut args = vec!["--data-dir", &directory, "--log-segment-bytes", "65536"];
    args.extend_from_slice(extra);
    launch(&args, &[]).await
}

/// Hands the server to the clients and SIGKILLs it mid-load: a random delay after its first
/// acknowledgement (so a loaded machine cannot make a round acknowledge nothing).
async fn load_until_killed(
    launched: Launched,
    publish: &watch::Sender<Option<String>>,
    acknowledged: &AtomicU64,
    round: usize,
) {
    let (mut child, before) = hand_to_clients(launched, publish, acknowledged).await;
    tokio::time::sleep(random_delay(KILL_DELAY_SHORTEST)).await;
    // Frozen first, so the requests in flight stay cut off (unpublished first, they would
    // drain while `kill` starts, and the kill would find an idle server); unpublished before
    // its port is freed.
    signal(&child, "STOP");
    publish.send_replace(None);
    signal(&child, "KILL");
    wait_exit(&mut child).await;
    let after = acknowledged.load(Ordering::Relaxed);
    assert!(after > before, "round {round}: nothing acknowledged");
}

/// Hands the server to the clients and waits for its first acknowledgement; returns its
/// process and the events acknowledged before it was handed over.
async fn hand_to_clients(
    launched: Launched,
    publish: &watch::Sender<Option<String>>,
    acknowledged: &AtomicU64,
) -> (Child, u64) {
    drop(collect_log(launched.log));
    let before = acknowledged.load(Ordering::Relaxed);
    publish.send_replace(Some(launched.addr));
    wait_for_acknowledgement(acknowledged, before).await;
    (launched.child, before)
}

/// Waits until `acknowledged` passes `before`, at most [`FIRST_ACKNOWLEDGEMENT_WAIT`] (the
/// caller checks what came of it).
async fn wait_for_acknowledgement(acknowledged: &AtomicU64, before: u64) {
    let deadline = tokio::time::Instant::now() + FIRST_ACKNOWLEDGEMENT_WAIT;
    while acknowledged.load(Ordering::Relaxed) == before && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One client that resends only what went unanswered: sends requests (each until answered)
/// until `stop`; per user, the sum of the amounts acknowledged.
async fn client_loop(
    client: usize,
    shape: Shape,
    mut address: Address,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> BTreeMap<String, i64> {
    let http = reqwest::Client::new();
    let mut books = BTreeMap::new();
    let mut number = 0;
    while !stop.load(Ordering::Relaxed) {
        let request = build_request(client, number, shape);
        let answer = send_until_answered(&http, &mut address, &request, &tally).await;
        tally.count_first_answer(&answer, request.events.len());
        for event in request.events {
            *books.entry(event.user).or_insert(0) += event.amount;
        }
        number += 1;
    }
    books
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_ids_and_resends_counts_every_event_exactly_once() {
    // Proves exactly-once on the real binary: six clients (three on /events, three on
    // /events/batch) give every event an id and resend every unanswered or 503 request with
    // the same bytes; the server is SIGKILLed at random moments four times and restarted on
    // the same data directory; at the end every user's balance equals the sum of the events
    // the clients had acknowledged (a logged event whose answer was lost comes back as a
    // duplicate on resend, so nothing is counted twice, and nothing acknowledged is lost).
    const SINGLE_CLIENTS: usize = 3;
    const BATCH_CLIENTS: usize = 3;
    let directory = tempfile::tempdir().expect("temp dir");
    let (publish, address) = watch::channel(None);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..SINGLE_CLIENTS + BATCH_CLIENTS)
        .map(|client| {
            let shape = if client < SINGLE_CLIENTS {
                Shape::Single
            } else {
                Shape::Ndjson
            };
            let (address, stop, tally) = (address.clone(), Arc::clone(&stop), Arc::clone(&tally));
            tokio::spawn(client_loop(client, shape, address, stop, tally))
        })
        .collect();
    for round in 0..KILLS {
        let launched = serve(directory.path(), &[]).await;
        load_until_killed(launched, &publish, &tally.acknowledged_events, round).await;
    }
    let launched = serve(directory.path(), &[]).await;
    let addr = launched.addr.clone();
    let (mut child, _) = hand_to_clients(launched, &publish, &tally.acknowledged_events).await;
    stop.store(true, Ordering::Relaxed);
    let mut books = BTreeMap::<String, i64>::new();
    for client in clients {
        for (user, sum) in client.await.expect("client") {
            *books.entry(user).or_insert(0) += sum;
        }
    }
    for (user, acknowledged) in &books {
        let balance = settled_balance(&addr, user, *acknowledged).await;
        assert_eq!(balance, Some(*acknowledged), "{user}");
    }
    assert_eq!(books.len(), USERS);
    assert!(
        tally.resends.load(Ordering::Relaxed) > 0,
        "no kill cut off a request in flight: nothing was resent"
    );
    eprintln!(
        "exactly once: {} events acknowledged, {} of them as duplicates, {} resends",
        tally.acknowledged_events.load(Ordering::Relaxed),
        tally.duplicates.load(Ordering::Relaxed),
        tally.resends.load(Ordering::Relaxed)
    );
    signal(&child, "TERM");
    assert!(wait_exit(&mut child).await.success());
}

/// Every id the clients sent, with its user and amount, and the ids acknowledged: the
/// client-side truth the balances are held to (each id counted once however often sent).
#[derive(Debug, Default)]
struct Books {
    sent: BTreeMap<String, (String, i64)>,
    acknowledged: BTreeSet<String>,
}

impl Books {
    fn record_sent(&mut self, request: &Request) {
        for event in &request.events {
            let fresh = self
                .sent
                .insert(event.id.clone(), (event.user.clone(), event.amount))
                .is_none();
            assert!(fresh, "id {} built twice", event.id);
        }
    }

    fn record_acknowledged(&mut self, request: &Request) {
        self.acknowledged
            .extend(request.events.iter().map(|event| event.id.clone()));
    }

    /// Per user, the sum of the amounts of the distinct ids sent (`acknowledged_only`: of
    /// those answered 2xx).
    fn sums(&self, acknowledged_only: bool) -> BTreeMap<String, i64> {
        let mut sums = BTreeMap::new();
        for (id, (user, amount)) in &self.sent {
            if !acknowledged_only || self.acknowledged.contains(id) {
                *sums.entry(user.clone()).or_insert(0) += amount;
            }
        }
        sums
    }
}

fn lock(books: &Mutex<Books>) -> MutexGuard<'_, Books> {
    books.lock().expect("a client panicked holding the books")
}

/// The first answer to a request: a copy answered at its first send cannot be a duplicate
/// (its ids are new to every server); after resends, a batch is all accepted or all
/// duplicate (one log record: logged whole before a kill, or not at all).
fn assert_first_answer(answer: &Answered, request: &Request) {
    let accepted = answer.count(Outcome::Accepted);
    if answer.sends == 1 {
        assert_eq!(
            accepted,
            request.events.len(),
            "{}: answered at its first send {:?}",
            request.name(),
            answer.outcomes
        );
    } else {
        assert!(
            accepted == 0 || accepted == request.events.len(),
            "{}: a batch resent after a kill half applied {:?}",
            request.name(),
            answer.outcomes
        );
    }
}

/// Sends `request`, already answered 2xx, again (a client retry after a lost answer) until
/// answered: every one of its events must come back `duplicate`.
async fn replay(http: &reqwest::Client, address: &mut Address, request: &Request, tally: &Tally) {
    let answer = send_until_answered(http, address, request, tally).await;
    assert_eq!(
        answer.count(Outcome::Duplicate),
        request.events.len(),
        "{}: a resend of an acknowledged {:?} answered {:?}",
        request.name(),
        request.shape,
        answer.outcomes
    );
    tally.replays.fetch_add(1, Ordering::Relaxed);
    tally
        .replayed_events
        .fetch_add(request.events.len() as u64, Ordering::Relaxed);
}

/// Sends two copies of `request` at once, each until answered (a client that resent on a
/// second connection before the first answered): no event may be accepted by both, and if
/// both copies were answered at their first send, each event is accepted by exactly one.
/// The answer merged: an event accepted by either copy counts as accepted.
async fn send_twice_at_once(
    http: &reqwest::Client,
    address: &Address,
    request: &Request,
    tally: &Tally,
) -> Answered {
    let (mut one, mut other) = (address.clone(), address.clone());
    let (first, second) = tokio::join!(
        send_until_answered(http, &mut one, request, tally),
        send_until_answered(http, &mut other, request, tally)
    );
    let both_at_first_send = first.sends == 1 && second.sends == 1;
    let outcomes = first
        .outcomes
        .iter()
        .zip(&second.outcomes)
        .map(|pair| match pair {
            (Outcome::Accepted, Outcome::Accepted) => panic!(
                "{}: two copies at once both accepted {:?} / {:?}",
                request.name(),
                first.outcomes,
                second.outcomes
            ),
            (Outcome::Duplicate, Outcome::Duplicate) if both_at_first_send => panic!(
                "{}: two first copies both duplicates {:?}",
                request.name(),
                first.outcomes
            ),
            (Outcome::Duplicate, Outcome::Duplicate) => Outcome::Duplicate,
            _ => Outcome::Accepted,
        })
        .collect();
    Answered {
        outcomes,
        sends: first.sends.max(second.sends),
    }
}

/// Request `number`'s shape for client `client`: the first `batch_clients` clients post
/// batches, NDJSON and JSON arrays in turn; the others single events.
fn shape_of(client: usize, number: usize, batch_clients: usize) -> Shape {
    match (client < batch_clients, number % 2) {
        (false, _) => Shape::Single,
        (true, 0) => Shape::Ndjson,
        (true, _) => Shape::JsonArray,
    }
}

/// One client that also resends answered requests: every third request at once after its
/// answer, and every fourth time an older one (often answered by a server killed since, so
/// the recovered window must know it). Sends until `stop`; the requests answered.
async fn replaying_client(
    client: usize,
    batch_clients: usize,
    mut address: Address,
    stop: Arc<AtomicBool>,
    books: Arc<Mutex<Books>>,
    tally: Arc<Tally>,
) -> Vec<Request> {
    let http = reqwest::Client::new();
    let mut answered: Vec<Request> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let number = answered.len();
        let request = build_request(client, number, shape_of(client, number, batch_clients));
        lock(&books).record_sent(&request);
        let answer = if number % 5 == 2 {
            send_twice_at_once(&http, &address, &request, &tally).await
        } else {
            send_until_answered(&http, &mut address, &request, &tally).await
        };
        assert_first_answer(&answer, &request);
        lock(&books).record_acknowledged(&request);
        tally.count_first_answer(&answer, request.events.len());
        if number % 3 == 1 {
            replay(&http, &mut address, &request, &tally).await;
        }
        answered.push(request);
        if number % 4 == 3 {
            replay(&http, &mut address, &answered[number / 2], &tally).await;
        }
    }
    answered
}

/// A restarted server, before any client reaches it: every user's balance holds at least
/// what was acknowledged (nothing lost) and at most what was sent (nothing applied twice).
async fn assert_recovered(addr: &str, books: &Mutex<Books>, restart: usize) {
    let (floor, ceiling) = {
        let books = lock(books);
        (books.sums(true), books.sums(false))
    };
    for (user, ceiling) in &ceiling {
        let floor = floor.get(user).copied().unwrap_or(0);
        let recovered = balance(addr, user).await.unwrap_or(0);
        assert!(
            (floor..=*ceiling).contains(&recovered),
            "restart {restart}: {user} recovered {recovered}, acknowledged {floor}, sent {ceiling}"
        );
    }
}

/// `/stats` field `field` as a number (`pointer` syntax: `/dedup/ids`).
fn counter(stats: &serde_json::Value, field: &str) -> u64 {
    stats
        .pointer(field)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or_else(|| panic!("no {field} in /stats {stats}"))
}

/// `/stats` once every event this server accepted is applied (a batch is answered once
/// durable, applied just after); fails if that does not come.
async fn settled_stats(addr: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + FIRST_ACKNOWLEDGEMENT_WAIT;
    loop {
        let stats = stats(addr).await.expect("/stats");
        let settled = counter(&stats, "/applied") == counter(&stats, "/accepted");
        if settled {
            return stats;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "accepted events never applied: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// At the end (every request answered): every id sent was acknowledged, each user's balance
/// is the sum of their distinct ids' amounts, and the server agrees in its total and in the
/// ids its dedup window keeps.
async fn assert_each_id_applied_once(addr: &str, books: &Mutex<Books>) {
    let (expected, ids) = {
        let books = lock(books);
        let unanswered: Vec<&String> = books
            .sent
            .keys()
            .filter(|id| !books.acknowledged.contains(*id))
            .collect();
        assert!(unanswered.is_empty(), "never answered: {unanswered:?}");
        (books.sums(true), books.acknowledged.len() as u64)
    };
    assert_eq!(expected.len(), USERS);
    for (user, sum) in &expected {
        assert_eq!(
            settled_balance(addr, user, *sum).await,
            Some(*sum),
            "{user}"
        );
    }
    let stats = settled_stats(addr).await;
    let total: i64 = expected.values().sum();
    assert_eq!(stats["balance_total"], total, "{stats}");
    assert_eq!(counter(&stats, "/dedup/ids"), ids, "{stats}");
}

/// Resends every answered request once more to the last server: each is a duplicate event by
/// event, and its counters move by exactly that (`duplicate` by every event resent,
/// `accepted`, `applied` and the total balance not at all).
async fn assert_every_replay_a_duplicate(addr: &str, answered: &[Request], tally: &Tally) {
    let before = settled_stats(addr).await;
    let http = reqwest::Client::new();
    let (_keep, mut address) = watch::channel(Some(addr.to_owned()));
    for request in answered {
        replay(&http, &mut address, request, tally).await;
    }
    let after = settled_stats(addr).await;
    let resent: usize = answered.iter().map(|request| request.events.len()).sum();
    assert_eq!(
        counter(&after, "/duplicate") - counter(&before, "/duplicate"),
        resent as u64,
        "{after}"
    );
    for field in ["/accepted", "/applied", "/balance_total"] {
        assert_eq!(
            after.pointer(field),
            before.pointer(field),
            "{field}: {after}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_batches_resent_before_and_after_their_answer_applies_each_id_once() {
    // Proves exactly-once for batches with ids on the real binary, and that an answered
    // batch stays answered: four clients post batches (NDJSON and JSON arrays, 1-40 events)
    // and one posts single events, all with ids; each resends what went unanswered AND,
    // like a client whose answer was lost, some requests that were answered (at once, and
    // later, often to a server restarted since); every fifth request goes out as two copies
    // at once (no event may be accepted by both). The server snapshots every 1,000 events and
    // is SIGKILLed four times mid-load. Each restart recovers every acknowledged event and nothing more; every
    // resend of an answered request is `duplicate` event by event; at the end each balance
    // is the sum of the distinct acknowledged ids, and a last resend of everything moves only
    // the duplicate counter.
    const BATCH_CLIENTS: usize = 4;
    const CLIENTS: usize = BATCH_CLIENTS + 1;
    // Snapshots mid-load too: a restart then rebuilds the window from a snapshot's ids and
    // the log after it, and the segments the snapshot covers are gone.
    const SNAPSHOT_OFTEN: &[&str] = &["--snapshot-every-events", "1000"];
    let directory = tempfile::tempdir().expect("temp dir");
    let (publish, address) = watch::channel(None);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let books = Arc::new(Mutex::new(Books::default()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (address, stop) = (address.clone(), Arc::clone(&stop));
            let (books, tally) = (Arc::clone(&books), Arc::clone(&tally));
            tokio::spawn(replaying_client(
                client,
                BATCH_CLIENTS,
                address,
                stop,
                books,
                tally,
            ))
        })
        .collect();
    for round in 0..KILLS {
        let launched = serve(directory.path(), SNAPSHOT_OFTEN).await;
        assert_recovered(&launched.addr, &books, round).await;
        load_until_killed(launched, &publish, &tally.acknowledged_events, round).await;
    }
    let launched = serve(directory.path(), SNAPSHOT_OFTEN).await;
    let addr = launched.addr.clone();
    assert_recovered(&addr, &books, KILLS).await;
    let recovered = stats(&addr).await.expect("/stats");
    assert!(
        counter(&recovered, "/durability/snapshot_position") > 0,
        "no snapshot before the last kill: {recovered}"
    );
    let (mut child, _) = hand_to_clients(launched, &publish, &tally.acknowledged_events).await;
    stop.store(true, Ordering::Relaxed);
    let mut answered = Vec::new();
    for client in clients {
        answered.extend(client.await.expect("client"));
    }
    assert_each_id_applied_once(&addr, &books).await;
    assert_every_replay_a_duplicate(&addr, &answered, &tally).await;
    assert!(
        tally.resends.load(Ordering::Relaxed) > 0,
        "no kill cut off a request in flight: nothing was resent"
    );
    eprintln!(
        "exactly once with batches: {} events acknowledged in {} requests, {} of them as \
         duplicates, {} resends; {} answered requests resent ({} events)",
        tally.acknowledged_events.load(Ordering::Relaxed),
        answered.len(),
        tally.duplicates.load(Ordering::Relaxed),
        tally.resends.load(Ordering::Relaxed),
        tally.replays.load(Ordering::Relaxed),
        tally.replayed_events.load(Ordering::Relaxed)
    );
    signal(&child, "TERM");
    assert!(wait_exit(&mut child).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_labs_exactly_once_experiment_holds_in_its_quick_form() {
    // Proves the lab's "exactly-once" claim on this binary (its --quick form): resends with
    // ids through three kill -9 leave applied == acknowledged, and the same load without ids
    // applies some events twice; the verdict, table and plot come out of one run.
    let params = floodgate_lab::experiments::exactly_once::Params {
        binary: Some(env!("CARGO_BIN_EXE_floodgate").into()),
        ..floodgate_lab::experiments::exactly_once::Params::quick()
    };
    let outcome = floodgate_lab::experiments::exactly_once::run(&params)
        .await
        .expect("the experiment runs");
    eprintln!("{}", outcome.render_text());
    assert!(outcome.verdict.holds, "{}", outcome.render_text());
    assert_eq!(outcome.table.rows.len(), 2);
}
