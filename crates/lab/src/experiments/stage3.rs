//! Stage 3: bad input gets a predictable answer, and the server survives it.
//!
//! Lesson (stage 3, docs/stages.md): clients send garbage, cut requests short, and dribble bytes;
//! the boundary must assemble whole bodies, parse into a typed event, and answer every failure with
//! a known status and reason, never a crash or a hang. The experiment sends one request of each
//! kind over a raw socket, then a load mix with 30 % malformed bodies and trickling clients, then
//! checks that a valid event is still accepted.
//!
//! Invariant: every case has a fixed set of acceptable answers written down before the run;
//! the server is stopped (and drained) before `run` returns.

use std::time::{Duration, Instant};

use floodgate_load::{LoadConfig, Mode, SlowKind};
use floodgate_server::ServerConfig;
use serde::Serialize;

use super::servers::{start_http, stop_http};
use super::{Findings, LabError, STAGE3, finish};
use crate::outcome::Outcome;
use crate::plot::{Bar, PlotKind, PlotSpec};
use crate::probe::{self, Answer};
use crate::table::Table;
use crate::verdict::{Check, Expectation, format_figure};

/// Parameters of the stage-3 experiment.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// The scaled-down form?
    pub quick: bool,
    /// The server's header and body timeouts, shortened so slow cases end quickly.
    pub read_timeout_ms: u64,
    /// Requests of the load mix.
    pub mix_requests: u64,
    /// Share of malformed bodies in the load mix.
    pub mix_invalid_ratio: f64,
    /// Trickling clients held open during the load mix.
    pub mix_slow_clients: usize,
}

impl Params {
    /// 2 s read timeouts, a 2000-request mix.
    pub fn full() -> Self {
        Self {
            quick: false,
            read_timeout_ms: 2_000,
            mix_requests: 2_000,
            mix_invalid_ratio: 0.3,
            mix_slow_clients: 10,
        }
    }

    /// 500 ms read timeouts, a 300-request mix.
    pub fn quick() -> Self {
        Self {
            quick: true,
            read_timeout_ms: 500,
            mix_requests: 300,
            mix_invalid_ratio: 0.3,
            mix_slow_clients: 4,
        }
    }
}

/// How a case's bytes are sent.
#[derive(Debug, Clone, Copy)]
enum Send {
    /// All at once.
    Whole,
    /// One byte at a time, `read_timeout / 400` apart (finishes well inside the timeout).
    Trickle,
    /// All at once, but the request is incomplete; the connection is held open.
    Hold,
}

/// One kind of request and the answers that count as predictable for it.
struct Case {
    name: &'static str,
    request: Vec<u8>,
    send: Send,
    expected: &'static [&'static str],
}

fn json(body: &str) -> Vec<u8> {
    probe::post_events(body.as_bytes(), &[("Content-Type", "application/json")])
}

fn chunked(body: &str) -> Vec<u8> {
    let framed = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    probe::post_events(
        framed.as_bytes(),
        &[
            ("Transfer-Encoding", "chunked"),
            ("Content-Type", "application/json"),
        ],
    )
}

fn with_length_header(name: &str, body: &str) -> Vec<u8> {
    let length = body.len().to_string();
    probe::post_events(body.as_bytes(), &[(name, length.as_str())])
}

/// Body limit of the default front door, plus one.
const OVERSIZED_BODY_BYTES: usize = 64 * 1024 + 1;

/// A valid event body.
const VALID: &str = r#"{"user":"alice","amount":5}"#;

/// Bodies sent whole as `application/json`, with the answers that count as predictable.
const JSON_CASES: [(&str, &str, &[&str]); 10] = [
    ("valid event", VALID, &["202"]),
    ("not JSON", "hello", &["400 invalid_json"]),
    (
        "JSON cut short",
        r#"{"user":"alice","amo"#,
        &["400 invalid_json"],
    ),
    ("empty body", "", &["400 invalid_json"]),
    ("array, not an object", "[1,2]", &["422 not_an_object"]),
    (
        "missing amount",
        r#"{"user":"alice"}"#,
        &["422 missing_field"],
    ),
    (
        "amount is a string",
        r#"{"user":"alice","amount":"5"}"#,
        &["422 invalid_amount"],
    ),
    (
        "amount is a fraction",
        r#"{"user":"alice","amount":1.5}"#,
        &["422 invalid_amount"],
    ),
    (
        "empty user",
        r#"{"user":"","amount":5}"#,
        &["422 invalid_user"],
    ),
    (
        "unknown field",
        r#"{"user":"alice","amount":5,"x":1}"#,
        &["422 unknown_field"],
    ),
];

fn case(
    name: &'static str,
    request: Vec<u8>,
    send: Send,
    expected: &'static [&'static str],
) -> Case {
    Case {
        name,
        request,
        send,
        expected,
    }
}

fn cases() -> Vec<Case> {
    let mut cases: Vec<Case> = JSON_CASES
        .iter()
        .map(|(name, body, expected)| case(name, json(body), Send::Whole, expected))
        .collect();
    cases.extend(framing_cases());
    cases.extend(slow_cases());
    cases
}

/// The same valid event framed or paced differently, and requests refused for their framing.
fn framing_cases() -> Vec<Case> {
    let oversized = format!(
        r#"{{"user":"alice","amount":5,"pad":"{}"}}"#,
        "x".repeat(OVERSIZED_BODY_BYTES)
    );
    let plain_text = probe::post_events(VALID.as_bytes(), &[("Content-Type", "text/plain")]);
    vec![
        case(
            "header `content-length` (lower case)",
            with_length_header("content-length", VALID),
            Send::Whole,
            &["202"],
        ),
        case(
            "header `CONTENT-LENGTH` (upper case)",
            with_length_header("CONTENT-LENGTH", VALID),
            Send::Whole,
            &["202"],
        ),
        case("chunked body", chunked(VALID), Send::Whole, &["202"]),
        case(
            "valid event trickled 1 byte at a time",
            json(VALID),
            Send::Trickle,
            &["202"],
        ),
        case(
            "body over 64 KiB",
            json(&oversized),
            Send::Whole,
            &["413 body_too_large"],
        ),
        case(
            "content type text/plain",
            plain_text,
            Send::Whole,
            &["415 unsupported_media_type"],
        ),
    ]
}

/// Requests that never finish: the front door's timeouts must end them.
fn slow_cases() -> Vec<Case> {
    vec![
        case(
            "body shorter than its Content-Length",
            probe::post_events(VALID.as_bytes(), &[("Content-Length", "100")]),
            Send::Hold,
            &["408 body_timeout", "closed"],
        ),
        case(
            "request head never finished",
            b"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\n".to_vec(),
            Send::Hold,
            &["closed", "408"],
        ),
        case(
            "connection that sends nothing",
            Vec::new(),
            Send::Hold,
            &["closed", "408"],
        ),
    ]
}

/// One case's answer.
struct Result3 {
    name: &'static str,
    expected: &'static [&'static str],
    answer: Answer,
}

async fn send_case(
    addr: std::net::SocketAddr,
    case: &Case,
    params: &Params,
) -> Result<Answer, LabError> {
    let timeout = Duration::from_millis(params.read_timeout_ms);
    let deadline = timeout * 3 + Duration::from_secs(1);
    Ok(match case.send {
        Send::Whole | Send::Hold => probe::exchange(addr, &case.request, deadline).await?,
        Send::Trickle => {
            probe::exchange_paced(addr, &case.request, timeout / 400, deadline).await?
        }
    })
}

fn server_config(params: &Params) -> Result<ServerConfig, LabError> {
    let mut config = ServerConfig::for_stage(3).ok_or(LabError::Unavailable("stage 3 preset"))?;
    config.front_door.header_timeout_ms = params.read_timeout_ms;
    config.front_door.body_timeout_ms = params.read_timeout_ms;
    Ok(config)
}

fn mix_config(url: String, params: &Params) -> LoadConfig {
    let mut load = LoadConfig::new(url);
    load.mode = Mode::Closed {
        concurrency: 16,
        requests: Some(params.mix_requests),
        duration: None,
    };
    load.invalid_ratio = params.mix_invalid_ratio;
    load.slow_clients = params.mix_slow_clients;
    load.slow_kind = SlowKind::Trickle;
    load.threads = 1;
    load
}

/// Runs the experiment.
pub async fn run(params: &Params) -> Result<Outcome, LabError> {
    let started = Instant::now();
    let server = start_http(server_config(params)?).await?;
    let addr = server.addr();
    let outcome = async {
        let mut results = Vec::new();
        for case in cases() {
            let answer = send_case(addr, &case, params).await?;
            results.push(Result3 {
                name: case.name,
                expected: case.expected,
                answer,
            });
        }
        let report = floodgate_load::run(mix_config(server.url(), params))
            .await
            .map_err(|error| LabError::Load(error.to_string()))?;
        let after = probe::exchange(
            addr,
            &probe::valid_event("alice", 1),
            Duration::from_secs(5),
        )
        .await?;
        Ok::<_, LabError>((results, report, after))
    }
    .await;
    stop_http(server).await?;
    let (results, report, after) = outcome?;
    Ok(finish(
        &STAGE3,
        params.quick,
        params,
        started,
        findings(&results, &report, &after),
    ))
}

/// The table, the number of cases answered as predicted, and the count per answer class.
fn table(
    results: &[Result3],
    report: &floodgate_load::Report,
    after: &Answer,
) -> (Table, usize, std::collections::BTreeMap<String, u32>) {
    let mut table = Table::new([
        "request",
        "expected answer",
        "answer",
        "after (ms)",
        "predictable",
    ]);
    let mut predictable = 0;
    let mut classes = std::collections::BTreeMap::new();
    for result in results {
        let got = result.answer.describe();
        let ok = result.expected.contains(&got.as_str());
        predictable += usize::from(ok);
        let after_ms = match &result.answer {
            Answer::Response { latency, .. } => latency.as_secs_f64() * 1e3,
            Answer::Closed { after } => after.as_secs_f64() * 1e3,
            Answer::TimedOut => f64::NAN,
        };
        table.push([
            result.name.to_owned(),
            result.expected.join(" or "),
            got.clone(),
            format_figure(after_ms),
            yes_no(ok),
        ]);
        let class = match result.answer.status() {
            Some(status) => status.to_string(),
            None => "closed / no answer".to_owned(),
        };
        *classes.entry(class).or_insert(0_u32) += 1;
    }
    table.push([
        format!(
            "load mix: {} requests, {:.0} % malformed, trickling clients",
            report.sent,
            report.invalid_bodies_sent as f64 * 100.0 / report.sent.max(1) as f64
        ),
        "202 or 400/422, no errors".to_owned(),
        format!(
            "{} accepted, {} invalid, {} errors",
            report.accepted, report.invalid, report.errors
        ),
        format_figure(report.latency_ms.all.p99),
        yes_no(report.errors == 0 && report.invalid == report.invalid_bodies_sent),
    ]);
    table.push([
        "valid event after all of it".to_owned(),
        "202".to_owned(),
        after.describe(),
        String::new(),
        yes_no(after.status() == Some(202)),
    ]);
    (table, predictable, classes)
}

fn yes_no(ok: bool) -> String {
    if ok { "yes" } else { "NO" }.to_owned()
}

fn findings(results: &[Result3], report: &floodgate_load::Report, after: &Answer) -> Findings {
    let (table, predictable, classes) = table(results, report, after);
    let checks = vec![
        Check::new(
            "cases answered predictably",
            predictable as f64,
            Expectation::AtLeast {
                min: results.len() as f64,
            },
        ),
        Check::new(
            "load mix: transport errors or timeouts",
            report.errors as f64,
            Expectation::AtMost { max: 0.0 },
        ),
        Check::flag(
            "load mix: every malformed body answered 400/422",
            report.invalid == report.invalid_bodies_sent,
        ),
        Check::flag(
            "load mix: every valid body accepted",
            report.accepted + report.invalid == report.sent,
        ),
        Check::flag(
            "server still accepts a valid event afterwards",
            after.status() == Some(202),
        ),
    ];
    Findings {
        measured: format!(
            "{predictable}/{} cases answered as expected; mix of {}: {} accepted, {} invalid, {} errors; server alive: {}",
            results.len(),
            report.sent,
            report.accepted,
            report.invalid,
            report.errors,
            after.describe()
        ),
        table,
        checks,
        plot: PlotSpec {
            title: format!(
                "Stage 3: {predictable} of {} kinds of request get their predicted answer",
                results.len()
            ),
            x_label: "answer (HTTP status)".to_owned(),
            y_label: "kinds of request (count)".to_owned(),
            kind: PlotKind::Bars {
                bars: classes
                    .into_iter()
                    .map(|(class, count)| Bar::new(class, f64::from(count)))
                    .collect(),
            },
            y_max: None,
            references: Vec::new(),
        },
        notes: vec![
            "Slow cases are bounded by the front door's header and body timeouts, shortened for \
             this experiment (see parameters); the default server uses 10 s."
                .to_owned(),
        ],
    }
}
