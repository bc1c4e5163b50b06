//! The batch parser under the same generator as `fuzz.rs`: each case is an NDJSON
//! `POST /events/batch` of 1-8 generated event bodies, sent to a queued server (the production
//! path: one reservation for the batch, workers apply).
//!
//! Properties, for every batch: an answer comes and is documented (a 200 whose counts add up
//! to the lines sent, with `results` only for lines not accepted, each a documented reason, or
//! an [`ApiError`] pair); a line whose every part is valid and has no id is accepted, a line
//! with a known-invalid part is rejected; once the workers are done, exactly the accepted
//! events were applied (or counted overflowed), and each user's balance moved by exactly the
//! amounts of its accepted lines, in order (an addition that would overflow i64 is skipped, as
//! the workers skip it).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use floodgate_server::ServerHandle;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::fuzz::{Request, cases_to_run, documented_errors, request, send};
use crate::support::{ANSWER_WAIT, test_config};

/// A batch's lines as NDJSON (`None`: some line holds a line break or is blank after a
/// mutation, so the server's indexes differ from ours and only the totals are checked).
fn ndjson(batch: &[Request]) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    let mut indexable = true;
    for event in batch {
        let line = event.body();
        indexable &= !line.contains(&b'\n') && !line.trim_ascii().is_empty();
        body.extend(line);
        body.push(b'\n');
    }
    (body, indexable)
}

/// The request on the wire.
fn batch_request(body: &[u8]) -> Vec<u8> {
    let mut bytes = format!(
        "POST /events/batch HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend(body);
    bytes
}

/// A 200's `results`: index to (status, reason), checked to be documented and in range.
fn parsed_results(
    answer: &serde_json::Value,
    lines: Option<usize>,
    reasons: &BTreeSet<&str>,
) -> Result<BTreeMap<usize, (String, String)>, TestCaseError> {
    let count = |key: &str| answer[key].as_u64().unwrap_or(u64::MAX);
    let total = count("accepted") + count("duplicate") + count("rejected");
    if let Some(lines) = lines {
        prop_assert_eq!(total, lines as u64, "counts of {}", answer);
    }
    let mut results = BTreeMap::new();
    for result in answer["results"].as_array().into_iter().flatten() {
        let index =
            usize::try_from(result["index"].as_u64().unwrap_or(u64::MAX)).unwrap_or(usize::MAX);
        let status = result["status"].as_str().unwrap_or_default().to_owned();
        let reason = result["reason"].as_str().unwrap_or_default().to_owned();
        prop_assert!(
            status == "duplicate" || reasons.contains(reason.as_str()),
            "{}",
            result
        );
        prop_assert!(status == "duplicate" || status == "rejected", "{}", result);
        prop_assert!(lines.is_none_or(|lines| index < lines), "{}", result);
        prop_assert!(
            results.insert(index, (status, reason)).is_none(),
            "index twice: {}",
            answer
        );
    }
    prop_assert_eq!(results.len() as u64, count("duplicate") + count("rejected"));
    Ok(results)
}

/// Waits until the workers have applied (or counted overflowed) `target` events in all.
async fn settled(server: &ServerHandle, target: u64) -> Result<(), TestCaseError> {
    let started = Instant::now();
    loop {
        let stats = server.engine().stats();
        let done = stats.applied + stats.overflowed;
        prop_assert!(
            done <= target,
            "{} events applied, only {} accepted",
            done,
            target
        );
        if done == target {
            return Ok(());
        }
        prop_assert!(
            started.elapsed() < ANSWER_WAIT,
            "accepted events not applied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// Runs one batch and checks every property.
async fn check(
    server: &ServerHandle,
    batch: &[Request],
    reasons: &BTreeSet<&str>,
) -> Result<(), TestCaseError> {
    let engine = server.engine();
    let (body, indexable) = ndjson(batch);
    let users: BTreeSet<&str> = batch
        .iter()
        .filter_map(|event| Some(event.known_event()?.0))
        .collect();
    let before: BTreeMap<&str, Option<i64>> = users
        .iter()
        .map(|user| (*user, engine.balance(user)))
        .collect();
    let stats = engine.stats();
    let done_before = stats.applied + stats.overflowed;
    let response = send(server, &batch_request(&body))
        .await
        .ok_or_else(|| TestCaseError::fail("no answer: the connection closed without one"))?;
    let answer: serde_json::Value = serde_json::from_slice(&response.body).map_err(|_| {
        TestCaseError::fail(format!("not JSON: {} {:?}", response.status, response.body))
    })?;
    if response.status != 200 {
        let reason = answer["reason"].as_str().unwrap_or_default();
        prop_assert!(
            documented_errors().contains(&(response.status, reason)),
            "undocumented {} {}",
            response.status,
            answer
        );
        return settled(server, done_before).await;
    }
    let results = parsed_results(&answer, indexable.then_some(batch.len()), reasons)?;
    let accepted = answer["accepted"].as_u64().unwrap_or_default();
    settled(server, done_before + accepted).await?;
    if !indexable {
        return Ok(());
    }
    let mut expected = before.clone();
    let mut every_accepted_known = true;
    for (index, event) in batch.iter().enumerate() {
        let outcome = results.get(&index);
        match event.event_validity() {
            Some(true) if !event.has_id() => {
                prop_assert!(outcome.is_none(), "valid line {} got {:?}", index, outcome);
            }
            Some(false) => {
                let rejected = outcome.is_some_and(|(status, _)| status == "rejected");
                prop_assert!(rejected, "invalid line {} got {:?}", index, outcome);
            }
            _ => {}
        }
        if outcome.is_none() {
            match event.known_event() {
                Some((user, amount)) => {
                    let balance = expected.entry(user).or_default();
                    if let Some(sum) = balance.unwrap_or(0).checked_add(amount) {
                        *balance = Some(sum);
                    }
                }
                None => every_accepted_known = false,
            }
        }
    }
    if every_accepted_known {
        for (user, balance) in expected {
            prop_assert_eq!(engine.balance(user), balance, "balance of {:?}", user);
        }
    }
    Ok(())
}

// Proves the batch properties above on generated NDJSON batches (FLOODGATE_FUZZ_CASES for a
// long run, as fuzz.rs).
#[test]
fn fuzz_post_events_batch() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = runtime
        .block_on(ServerHandle::spawn(test_config()))
        .expect("spawn");
    let errors = documented_errors();
    let reasons: BTreeSet<&str> = errors.iter().map(|(_, reason)| *reason).collect();
    let mut runner = TestRunner::new(Config {
        cases: cases_to_run() / 4,
        failure_persistence: None,
        ..Config::default()
    });
    let batches = prop::collection::vec(request(), 1..8);
    let outcome = runner.run(&batches, |batch| {
        runtime.block_on(check(&server, &batch, &reasons))
    });
    runtime.block_on(server.stop()).expect("stop");
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
}
