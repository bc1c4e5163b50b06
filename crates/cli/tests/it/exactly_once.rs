//! Exactly-once across kill -9, on the real binary: clients that give every event an id and
//! resend every request whose answer did not come back (or was 503) until it is answered
//! end with each user's balance equal to the sum of their acknowledged events, never counted
//! twice, never lost, through /events and /events/batch alike.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::support::{Launched, collect_log, launch, settled_balance, signal, wait_exit};

/// Users the events are spread over.
const USERS: usize = 10;
/// Clients posting one event per request (`POST /events`).
const SINGLE_CLIENTS: usize = 3;
/// Clients posting batches (`POST /events/batch`).
const BATCH_CLIENTS: usize = 3;
/// Events per batch.
const BATCH_EVENTS: usize = 25;
/// Times the server is killed with SIGKILL mid-load.
const KILLS: usize = 4;
/// A request not answered within this is resent (the server may be gone).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause before a resend.
const RESEND_PAUSE: Duration = Duration::from_millis(20);
/// Resends of one request at most: far more than the restarts take.
const MAX_RESENDS: u32 = 1_000;

/// Where the clients send: the running server's address, `None` while it is down (so no
/// client ever sends to a port the OS may have handed to another test's server).
type Address = watch::Receiver<Option<String>>;

/// What the clients were told, summed over them.
#[derive(Debug, Default)]
struct Tally {
    acknowledged_events: AtomicU64,
    duplicates: AtomicU64,
    resends: AtomicU64,
}

/// One request's body and the events it carries (user, amount).
struct Request {
    path: &'static str,
    content_type: &'static str,
    body: String,
    events: Vec<(String, i64)>,
}

fn event_line(user: &str, amount: i64, id: &str) -> String {
    serde_json::json!({"user": user, "amount": amount, "id": id}).to_string()
}

/// Request `number` of client `client`: one event, or a batch of [`BATCH_EVENTS`]; every
/// event's id is unique in the run (`c{client}-r{number}-e{index}`).
fn build_request(client: usize, number: usize, batch: bool) -> Request {
    let count = if batch { BATCH_EVENTS } else { 1 };
    let events: Vec<(String, i64)> = (0..count)
        .map(|index| {
            let user = format!("user-{}", (client * 7 + number * 3 + index) % USERS);
            let amount = i64::try_from((number + index) % 9 + 1).expect("small");
            (user, amount)
        })
        .collect();
    let lines: Vec<String> = events
        .iter()
        .enumerate()
        .map(|(index, (user, amount))| {
            event_line(user, *amount, &format!("c{client}-r{number}-e{index}"))
        })
        .collect();
    if batch {
        Request {
            path: "/events/batch",
            content_type: "application/x-ndjson",
            body: lines.join("\n"),
            events,
        }
    } else {
        Request {
            path: "/events",
            content_type: "application/json",
            body: lines.concat(),
            events,
        }
    }
}

/// Sends `request` until it is answered 2xx (resending the same bytes after a timeout, a
/// broken or refused connection, or a 503); returns how many of its events were duplicates.
async fn send_until_answered(
    http: &reqwest::Client,
    address: &mut Address,
    request: &Request,
    tally: &Tally,
) -> u64 {
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
            .post(format!("http://{addr}{}", request.path))
            .header("content-type", request.content_type)
            .body(request.body.clone())
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await;
        let Ok(response) = sent else { continue };
        let status = response.status().as_u16();
        if status == 503 {
            continue;
        }
        let Ok(answer) = response.json::<serde_json::Value>().await else {
            continue; // killed while the answer was on its way
        };
        return duplicates_in(status, &answer, request);
    }
    panic!("no answer after {MAX_RESENDS} resends of {}", request.body);
}

/// The duplicates a 2xx answer reports; any other answer fails the test.
fn duplicates_in(status: u16, answer: &serde_json::Value, request: &Request) -> u64 {
    match (request.path, status) {
        ("/events", 202) => u64::from(answer["status"] == "duplicate"),
        ("/events/batch", 200) => {
            assert_eq!(answer["rejected"], 0, "{answer}");
            assert_eq!(
                answer["accepted"].as_u64().unwrap_or(0)
                    + answer["duplicate"].as_u64().unwrap_or(0),
                request.events.len() as u64,
                "{answer}"
            );
            answer["duplicate"].as_u64().unwrap_or(0)
        }
        _ => panic!("unexpected answer {status} {answer} to {}", request.body),
    }
}

/// One client: sends requests (each until answered) until `stop`; per user, the sum of the
/// amounts acknowledged.
async fn client_loop(
    client: usize,
    batch: bool,
    mut address: Address,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> BTreeMap<String, i64> {
    let http = reqwest::Client::new();
    let mut books = BTreeMap::new();
    let mut number = 0;
    while !stop.load(Ordering::Relaxed) {
        let request = build_request(client, number, batch);
        let duplicates = send_until_answered(&http, &mut address, &request, &tally).await;
        tally.duplicates.fetch_add(duplicates, Ordering::Relaxed);
        tally
            .acknowledged_events
            .fetch_add(request.events.len() as u64, Ordering::Relaxed);
        for (user, amount) in request.events {
            *books.entry(user).or_insert(0) += amount;
        }
        number += 1;
    }
    books
}

/// Starts `floodgate serve` on `directory` (durable: fsync) with small log segments.
async fn serve(directory: &Path) -> Launched {
    let directory = directory.display().to_string();
    launch(
        &["--data-dir", &directory, "--log-segment-bytes", "65536"],
        &[],
    )
    .await
}

/// A pseudo-random delay in 200..700 ms, different on every call.
fn random_delay() -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    Duration::from_millis(200 + u64::from(nanos % 500))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_ids_and_resends_counts_every_event_exactly_once() {
    // Proves exactly-once on the real binary: six clients (three on /events, three on
    // /events/batch) give every event an id and resend every unanswered or 503 request with
    // the same bytes; the server is SIGKILLed at random moments four times and restarted on
    // the same data directory; at the end every user's balance equals the sum of the events
    // the clients had acknowledged (a logged event whose answer was lost comes back as a
    // duplicate on resend, so nothing is counted twice, and nothing acknowledged is lost).
    let directory = tempfile::tempdir().expect("temp dir");
    let (publish, address) = watch::channel(None);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..SINGLE_CLIENTS + BATCH_CLIENTS)
        .map(|client| {
            let batch = client >= SINGLE_CLIENTS;
            let (address, stop, tally) = (address.clone(), Arc::clone(&stop), Arc::clone(&tally));
            tokio::spawn(client_loop(client, batch, address, stop, tally))
        })
        .collect();
    for round in 0..KILLS {
        let launched = serve(directory.path()).await;
        let mut child = launched.child;
        drop(collect_log(launched.log));
        let before = tally.acknowledged_events.load(Ordering::Relaxed);
        publish.send_replace(Some(launched.addr));
        // Mid-load: the kill comes a random delay after this server's first acknowledgement
        // (on a loaded machine the clients may need a while to reach it).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while tally.acknowledged_events.load(Ordering::Relaxed) == before
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(random_delay()).await;
        publish.send_replace(None);
        signal(&child, "KILL");
        wait_exit(&mut child).await;
        let after = tally.acknowledged_events.load(Ordering::Relaxed);
        assert!(after > before, "round {round}: nothing acknowledged");
    }
    let launched = serve(directory.path()).await;
    let addr = launched.addr.clone();
    let mut child = launched.child;
    drop(collect_log(launched.log));
    publish.send_replace(Some(addr.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
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
    eprintln!(
        "exactly once: {} events acknowledged, {} of them as duplicates, {} resends",
        tally.acknowledged_events.load(Ordering::Relaxed),
        tally.duplicates.load(Ordering::Relaxed),
        tally.resends.load(Ordering::Relaxed)
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
