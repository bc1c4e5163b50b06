//! A structure-aware fuzz test of the request and event parsers (proptest, stable Rust).
//!
//! Each case is a near-valid `POST /events`: an event built field by field (users, amounts
//! and ids drawn from valid and invalid classes, fields shuffled, repeated or added), maybe one
//! byte-level mutation of the body, then framed (`Content-Length` or random chunks) with a
//! content type and maybe an `Idempotency-Key`. It goes to a real server over a real socket.
//! The server runs inline (`--mode inline`: the event is applied before the answer), so each
//! answer can be checked against the ledger at once.
//!
//! Properties, for every case: an answer comes (a panic would end the connection without
//! one); it is a documented status and reason (a 202 `accepted`/`duplicate`, an
//! [`ApiError`] pair, or hyper's empty-bodied 400/431); a valid event is accepted unless its
//! id conflicts or its balance would overflow; an event with a known-invalid part and no
//! mutation is refused with a 4xx; a 202 `accepted` applies exactly one event and moves its
//! user's balance by exactly the amount; anything else applies nothing.
//!
//! `cargo test` runs [`DEFAULT_CASES`] cases (a few seconds); a long run sets
//! `FLOODGATE_FUZZ_CASES` (see docs/fuzzing.md).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt::Write as _;

use floodgate_core::config::ProcessingMode;
use floodgate_server::{ApiError, ServerHandle};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio::io::AsyncWriteExt as _;

use crate::support::{RawResponse, read_response, test_config};

/// Cases run by `cargo test`: enough to cross every generator branch many times, a few seconds.
const DEFAULT_CASES: u32 = 400;

/// The number of cases: `FLOODGATE_FUZZ_CASES` when set (a long run), else [`DEFAULT_CASES`].
pub(crate) fn cases_to_run() -> u32 {
    std::env::var("FLOODGATE_FUZZ_CASES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// One generated field value: its JSON text, whether the contract accepts it (`None`: the
/// generator cannot tell), and the value the server will read when it is known.
#[derive(Debug, Clone)]
struct Field<T> {
    json: String,
    valid: Option<bool>,
    value: Option<T>,
}

fn field<T>(json: String, valid: Option<bool>, value: Option<T>) -> Field<T> {
    Field { json, valid, value }
}

/// A user: valid names (a small pool, so users repeat), and the invalid classes of the
/// contract (empty, blank, too long, control, format or non-NFC characters, not a string),
/// plus arbitrary strings whose validity the generator does not judge.
fn user() -> impl Strategy<Value = Field<String>> {
    let named = |valid: Option<bool>| {
        move |name: String| {
            field(
                serde_json::to_string(&name).unwrap_or_default(),
                valid,
                Some(name),
            )
        }
    };
    prop_oneof![
        12 => "[ab]{1,2}".prop_map(named(Some(true))),
        6 => "[a-zé漢]{1,12}".prop_map(named(Some(true))),
        1 => Just(String::new()).prop_map(named(Some(false))),
        1 => " {1,4}".prop_map(named(Some(false))),
        1 => "[a-z]{129,160}".prop_map(named(Some(false))),
        1 => "[a-z]{1,4}[\u{0}-\u{1f}\u{7f}][a-z]{0,3}".prop_map(named(Some(false))),
        1 => "[a-z]{1,4}[\u{200b}\u{202e}\u{feff}\u{ad}][a-z]{0,3}".prop_map(named(Some(false))),
        1 => "[a-z]{1,4}".prop_map(|name| format!("{name}e\u{308}")).prop_map(named(Some(false))),
        2 => any::<String>().prop_map(named(None)),
        1 => prop_oneof![Just("5"), Just("null"), Just("[]"), Just("{}"), Just("true")]
            .prop_map(|json| field(json.to_owned(), Some(false), None)),
        1 => Just(r#""\ud800""#).prop_map(|json| field(json.to_owned(), Some(false), None)),
    ]
}

/// An amount: any i64 (small ones most often, the edges too), and the invalid classes
/// (fractions, exponents, out of range, not a number).
fn amount() -> impl Strategy<Value = Field<i64>> {
    let integer = |amount: i64| field(amount.to_string(), Some(true), Some(amount));
    prop_oneof![
        4 => (-1000_i64..1000).prop_map(integer),
        4 => (1_i64..3).prop_map(integer),
        1 => any::<i64>().prop_map(integer),
        1 => prop_oneof![Just(i64::MAX), Just(i64::MIN), Just(0)].prop_map(integer),
        1 => Just(field("-0".to_owned(), Some(true), Some(0))),
        1 => prop_oneof![Just("1.5"), Just("1e3"), Just("1.0"), Just("-0.0"), Just("1E400")]
            .prop_map(|json| field(json.to_owned(), Some(false), None)),
        1 => "[1-9][0-9]{19,40}".prop_map(|json| field(json, Some(false), None)),
        1 => prop_oneof![Just(r#""5""#), Just("null"), Just("[1]"), Just("{}"), Just("false")]
            .prop_map(|json| field(json.to_owned(), Some(false), None)),
    ]
}

/// An id: 1-64 printable ASCII bytes, no outer space (a small pool, so ids repeat), or an
/// invalid one.
fn id() -> impl Strategy<Value = Field<String>> {
    let text = |valid: bool| {
        move |id: String| {
            field(
                serde_json::to_string(&id).unwrap_or_default(),
                Some(valid),
                Some(id),
            )
        }
    };
    prop_oneof![
        3 => "id-[0-3]".prop_map(text(true)),
        4 => "[!-~]([ -~]{0,62}[!-~])?".prop_map(text(true)),
        // HTTP strips a header value's outer spaces, so the rule refuses them (found here).
        1 => "( [ -~]{0,10}|[ -~]{0,10} )".prop_map(text(false)),
        1 => Just(String::new()).prop_map(text(false)),
        1 => "[a-z]{65,80}".prop_map(text(false)),
        1 => "[a-z]{0,3}[é\u{7f}\u{0}][a-z]{0,3}".prop_map(text(false)),
        1 => Just(field("7".to_owned(), Some(false), None)),
    ]
}

/// A byte-level mutation of the serialized body.
#[derive(Debug, Clone)]
enum Mutation {
    Truncate(prop::sample::Index),
    Delete(prop::sample::Index),
    Insert(prop::sample::Index, u8),
    Replace(prop::sample::Index, u8),
}

impl Mutation {
    fn apply(&self, body: &mut Vec<u8>) {
        if body.is_empty() {
            return;
        }
        match self {
            Self::Truncate(at) => body.truncate(at.index(body.len())),
            Self::Delete(at) => {
                body.remove(at.index(body.len()));
            }
            Self::Insert(at, byte) => body.insert(at.index(body.len()), *byte),
            Self::Replace(at, byte) => {
                let index = at.index(body.len());
                body[index] = *byte;
            }
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        any::<prop::sample::Index>().prop_map(Mutation::Delete),
        (any::<prop::sample::Index>(), any::<u8>())
            .prop_map(|(at, byte)| Mutation::Insert(at, byte)),
        (any::<prop::sample::Index>(), any::<u8>())
            .prop_map(|(at, byte)| Mutation::Replace(at, byte)),
    ]
}

/// How the body is framed.
#[derive(Debug, Clone)]
enum Framing {
    ContentLength,
    /// Chunked, split at these fractions of the body.
    Chunked(Vec<prop::sample::Index>),
}

/// The `Idempotency-Key` header.
#[derive(Debug, Clone)]
enum KeyHeader {
    Absent,
    /// The body's id (when it has a valid one).
    SameAsBody,
    Other(String),
}

/// One generated request.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    user: Field<String>,
    amount: Field<i64>,
    id: Option<Field<String>>,
    /// The field order: a permutation of 0 (user), 1 (amount), 2 (id).
    order: Vec<usize>,
    /// Repeat the first field of the order.
    duplicate: bool,
    /// An extra field nobody knows.
    extra: bool,
    mutation: Option<Mutation>,
    content_type: Option<(&'static str, bool)>,
    key: KeyHeader,
    framing: Framing,
    /// Send it twice (a client's retry): with an id, an accepted event's resend is a duplicate.
    resend: bool,
}

pub(crate) fn request() -> impl Strategy<Value = Request> {
    let content_type = prop_oneof![
        6 => Just(None),
        6 => Just(Some(("application/json", true))),
        1 => Just(Some(("Application/JSON; charset=utf-8", true))),
        1 => Just(Some(("application/cloudevents+json", true))),
        1 => Just(Some(("text/plain", false))),
        1 => Just(Some(("application/x-ndjson", false))),
    ];
    let key = prop_oneof![
        4 => Just(KeyHeader::Absent),
        1 => Just(KeyHeader::SameAsBody),
        1 => "id-[0-3]|[a-z]{0,3}é".prop_map(KeyHeader::Other),
    ];
    let framing = prop_oneof![
        3 => Just(Framing::ContentLength),
        1 => prop::collection::vec(any::<prop::sample::Index>(), 0..4).prop_map(Framing::Chunked),
    ];
    let fields = (user(), amount(), prop::option::weighted(0.5, id()));
    let order = Just(vec![0_usize, 1, 2]).prop_shuffle();
    let mutation = prop::option::weighted(0.2, mutation());
    let mistakes = (prop::bool::weighted(0.05), prop::bool::weighted(0.05));
    let resend = prop::bool::weighted(0.3);
    (
        fields,
        order,
        mistakes,
        mutation,
        content_type,
        key,
        framing,
        resend,
    )
        .prop_map(
            |(
                (user, amount, id),
                order,
                (duplicate, extra),
                mutation,
                content_type,
                key,
                framing,
                resend,
            )| Request {
                user,
                amount,
                id,
                order,
                duplicate,
                extra,
                mutation,
                content_type,
                key,
                framing,
                resend,
            },
        )
}

impl Request {
    /// The body, field by field in the generated order, then mutated.
    pub(crate) fn body(&self) -> Vec<u8> {
        let text = |index: usize| match index {
            0 => Some(format!(r#""user":{}"#, self.user.json)),
            1 => Some(format!(r#""amount":{}"#, self.amount.json)),
            _ => self.id.as_ref().map(|id| format!(r#""id":{}"#, id.json)),
        };
        let mut fields: Vec<String> = self.order.iter().filter_map(|index| text(*index)).collect();
        if self.duplicate {
            fields.push(fields[0].clone());
        }
        if self.extra {
            fields.push(r#""extra":1"#.to_owned());
        }
        let mut body = format!("{{{}}}", fields.join(",")).into_bytes();
        if let Some(mutation) = &self.mutation {
            mutation.apply(&mut body);
        }
        body
    }

    /// The whole request on the wire.
    fn bytes(&self) -> Vec<u8> {
        let body = self.body();
        let mut head = String::from("POST /events HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n");
        if let Some((content_type, _)) = self.content_type {
            let _ = write!(head, "Content-Type: {content_type}\r\n");
        }
        match (&self.key, self.body_id()) {
            (KeyHeader::SameAsBody, Some(id)) => {
                let _ = write!(head, "Idempotency-Key: {id}\r\n");
            }
            (KeyHeader::Other(key), _) => {
                let _ = write!(head, "Idempotency-Key: {key}\r\n");
            }
            _ => {}
        }
        let mut bytes = match &self.framing {
            Framing::ContentLength => {
                format!("{head}Content-Length: {}\r\n\r\n", body.len()).into_bytes()
            }
            Framing::Chunked(_) => format!("{head}Transfer-Encoding: chunked\r\n\r\n").into_bytes(),
        };
        match &self.framing {
            Framing::ContentLength => bytes.extend(&body),
            Framing::Chunked(splits) => bytes.extend(chunked(&body, splits)),
        }
        bytes
    }

    /// The body's id, when it is a valid one the header can repeat.
    fn body_id(&self) -> Option<&str> {
        let id = self.id.as_ref()?;
        (id.valid == Some(true)).then_some(id.value.as_deref()?)
    }

    /// Whether every part is valid (the event must be accepted, bar an id conflict or an
    /// overflow); `Some(false)`: some part is known invalid and nothing was mutated (it must be
    /// refused); `None`: the generator cannot tell.
    fn validity(&self) -> Option<bool> {
        let key_valid = match (&self.key, self.body_id()) {
            (KeyHeader::Absent | KeyHeader::SameAsBody, _) => Some(true),
            (KeyHeader::Other(key), Some(id)) => Some(key == id),
            (KeyHeader::Other(key), None) => match &self.id {
                Some(_) => None, // a bad body id and a header: which is reported first is free
                None => Some(key.is_ascii() && !key.is_empty()),
            },
        };
        let content_type = Some(self.content_type.is_none_or(|(_, json)| json));
        combine(&[self.event_validity(), content_type, key_valid])
    }

    /// [`Self::validity`] of the body alone (a line of a batch).
    pub(crate) fn event_validity(&self) -> Option<bool> {
        if self.mutation.is_some() {
            return None;
        }
        combine(&[
            self.user.valid,
            self.amount.valid,
            self.id.as_ref().map_or(Some(true), |id| id.valid),
            Some(!self.duplicate && !self.extra),
        ])
    }

    /// Whether the body carries an `id` field (valid or not).
    pub(crate) fn has_id(&self) -> bool {
        self.id.is_some()
    }

    /// The event's user and amount when the server will read them as generated.
    pub(crate) fn known_event(&self) -> Option<(&str, i64)> {
        if self.mutation.is_some() {
            return None;
        }
        Some((self.user.value.as_deref()?, self.amount.value?))
    }
}

/// Known invalid if any part is; valid if all are; else unknown.
fn combine(parts: &[Option<bool>]) -> Option<bool> {
    if parts.contains(&Some(false)) {
        Some(false)
    } else if parts.iter().all(|part| *part == Some(true)) {
        Some(true)
    } else {
        None
    }
}

/// `body` as chunks split at `splits`, then the last chunk.
fn chunked(body: &[u8], splits: &[prop::sample::Index]) -> Vec<u8> {
    let mut cuts: Vec<usize> = splits
        .iter()
        .map(|split| split.index(body.len() + 1))
        .collect();
    cuts.extend([0, body.len()]);
    cuts.sort_unstable();
    cuts.dedup();
    let mut bytes = Vec::new();
    for pair in cuts.windows(2) {
        let chunk = &body[pair[0]..pair[1]];
        bytes.extend(format!("{:x}\r\n", chunk.len()).into_bytes());
        bytes.extend(chunk);
        bytes.extend(b"\r\n");
    }
    bytes.extend(b"0\r\n\r\n");
    bytes
}

/// Every (status, reason) an error answer can have.
pub(crate) fn documented_errors() -> BTreeSet<(u16, &'static str)> {
    ApiError::one_of_each()
        .iter()
        .map(|error| (error.status().as_u16(), error.reason()))
        .collect()
}

/// Checks one answer is documented; the body's `status` (202) or `reason` (errors), or
/// `None` for hyper's empty-bodied refusals.
fn documented_answer(
    response: &RawResponse,
    errors: &BTreeSet<(u16, &'static str)>,
) -> Result<Option<String>, TestCaseError> {
    if response.body.is_empty() {
        prop_assert!(
            matches!(response.status, 400 | 431),
            "empty body with {}",
            response.status
        );
        return Ok(None);
    }
    let body: serde_json::Value = serde_json::from_slice(&response.body)
        .map_err(|_| TestCaseError::fail(format!("not JSON: {:?}", response.body)))?;
    if response.status == 202 {
        let status = body["status"].as_str().unwrap_or_default().to_owned();
        prop_assert!(status == "accepted" || status == "duplicate", "{body}");
        return Ok(Some(status));
    }
    let reason = body["reason"].as_str().unwrap_or_default().to_owned();
    prop_assert!(
        errors
            .iter()
            .any(|(status, known)| *status == response.status && *known == reason),
        "undocumented answer {} {reason}",
        response.status
    );
    Ok(Some(reason))
}

/// Sends one request on a new connection; its answer (`None`: closed without one).
pub(crate) async fn send(server: &ServerHandle, request: &[u8]) -> Option<RawResponse> {
    let mut stream = tokio::net::TcpStream::connect(server.addr()).await.ok()?;
    let _ = stream.write_all(request).await;
    read_response(&mut stream, &mut Vec::new()).await
}

/// Sends `request` once and checks the answer is documented and the ledger moved by exactly
/// what it says; the answer (the 202's `status` or the error's `reason`, `None` for hyper's
/// empty-bodied refusals), its HTTP status, and the user's balance before.
async fn exchange_and_check_ledger(
    server: &ServerHandle,
    request: &Request,
    errors: &BTreeSet<(u16, &'static str)>,
) -> Result<(Option<String>, u16, Option<i64>), TestCaseError> {
    let engine = server.engine();
    let user = request
        .user
        .value
        .clone()
        .filter(|_| request.mutation.is_none());
    let before = user.as_deref().and_then(|user| engine.balance(user));
    let applied_before = engine.stats().applied;
    let response = send(server, &request.bytes())
        .await
        .ok_or_else(|| TestCaseError::fail("no answer: the connection closed without one"))?;
    let answer = documented_answer(&response, errors)?;
    let accepted = answer.as_deref() == Some("accepted");
    let applied = engine.stats().applied - applied_before;
    prop_assert_eq!(
        applied,
        u64::from(accepted),
        "applied count after {:?}",
        answer
    );
    if let Some(user) = &user {
        let after = engine.balance(user);
        let expected = if accepted {
            let amount = request.amount.value.ok_or_else(|| {
                TestCaseError::fail("accepted an amount the generator calls invalid")
            })?;
            before.unwrap_or(0).checked_add(amount)
        } else {
            before
        };
        prop_assert_eq!(after, expected, "balance of {:?} after {:?}", user, answer);
    }
    Ok((answer, response.status, before))
}

/// Runs one case (twice when it is a resend) and checks every property.
async fn check(
    server: &ServerHandle,
    request: &Request,
    errors: &BTreeSet<(u16, &'static str)>,
    seen: &RefCell<BTreeSet<String>>,
) -> Result<(), TestCaseError> {
    let (answer, status, before) = exchange_and_check_ledger(server, request, errors).await?;
    seen.borrow_mut()
        .insert(answer.clone().unwrap_or_else(|| status.to_string()));
    match request.validity() {
        Some(true) => {
            let overflow = request
                .amount
                .value
                .is_some_and(|amount| before.unwrap_or(0).checked_add(amount).is_none());
            let allowed = status == 202
                || (status == 422
                    && matches!(answer.as_deref(), Some("id_conflict" | "balance_overflow")));
            prop_assert!(
                allowed,
                "a valid event got {} {:?} (overflow: {})",
                status,
                answer,
                overflow
            );
        }
        Some(false) => prop_assert!(
            (400..500).contains(&status),
            "an invalid event got {}",
            status
        ),
        None => {}
    }
    if request.resend {
        let (again, _, _) = exchange_and_check_ledger(server, request, errors).await?;
        seen.borrow_mut().insert(again.clone().unwrap_or_default());
        let has_id = request.body_id().is_some() || matches!(request.key, KeyHeader::Other(_));
        if answer.as_deref() == Some("accepted") && has_id {
            prop_assert_eq!(again.as_deref(), Some("duplicate"), "a resend with an id");
        }
    }
    Ok(())
}

// Proves the fuzz properties above on generated near-valid requests (FLOODGATE_FUZZ_CASES
// for a long run): never a silent close or an undocumented answer, valid events accepted,
// invalid ones refused, and the ledger moved by exactly what was accepted.
#[test]
fn fuzz_post_events() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut config = test_config();
    config.engine.mode = ProcessingMode::Inline;
    let server = runtime
        .block_on(ServerHandle::spawn(config))
        .expect("spawn");
    let errors = documented_errors();
    let mut runner = TestRunner::new(Config {
        cases: cases_to_run(),
        failure_persistence: None,
        ..Config::default()
    });
    let seen = RefCell::new(BTreeSet::new());
    let outcome = runner.run(&request(), |request| {
        runtime.block_on(check(&server, &request, &errors, &seen))
    });
    runtime.block_on(server.stop()).expect("stop");
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    // Not vacuous: the generator reached acceptances, duplicates and the main refusals.
    let seen = seen.into_inner();
    for answer in [
        "accepted",
        "duplicate",
        "invalid_json",
        "invalid_user",
        "invalid_amount",
        "invalid_id",
        "id_conflict",
        "unsupported_media_type",
    ] {
        assert!(
            seen.contains(answer),
            "no case was answered {answer}: {seen:?}"
        );
    }
}
