//! The hostile-input campaign: one table-driven test per family (request smuggling shapes, path
//! and header abuse, JSON edge cases, TLS abuse, token abuse), each case sent over a real
//! socket on a connection of its own.
//!
//! Invariant checked for every case: the answer is the one the README's "Hostile input" tables
//! give for it (status and JSON `reason`, or hyper's empty-bodied refusal, or a close without
//! an answer, and whether the connection is closed after it); the server then accepts a valid
//! event on a new connection; and nothing a refused request carried is applied (per case, the
//! case's own user has no balance, and in total the applied count is exactly the accepted
//! events). The smuggling family pipelines a second request behind each case: when the case
//! closes its connection, that request is never answered and never applied.

use std::time::{Duration, Instant};

use floodgate_server::{ServerConfig, ServerHandle};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::{ANSWER_WAIT, RawResponse, event_json, read_response, test_config};

/// What the server must answer to one case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// A JSON error body with this status and `reason`.
    Refused(u16, &'static str),
    /// hyper's refusal before routing: this status and an empty body.
    Hyper(u16),
    /// A success with this status (202 for an event, 200 for a read).
    Success(u16),
    /// No HTTP answer at all: the connection is closed.
    Silence,
}

/// One hostile request and what it must get.
struct Case {
    /// The name of the case: its row in the README's tables, and the user its event names.
    name: &'static str,
    request: Vec<u8>,
    answer: Answer,
    /// Whether the server closes the connection after the answer.
    closes: bool,
    /// The event applied when the case is accepted: (user, amount).
    applied: Option<(String, i64)>,
}

impl Case {
    /// A case whose request must not change any balance.
    fn refused(name: &'static str, request: Vec<u8>, answer: Answer, closes: bool) -> Self {
        Self {
            name,
            request,
            answer,
            closes,
            applied: None,
        }
    }

    /// A case accepted (a documented leniency) whose event for `name` applies `amount`.
    fn accepted(name: &'static str, request: Vec<u8>, amount: i64, closes: bool) -> Self {
        Self {
            name,
            request,
            answer: Answer::Success(202),
            closes,
            applied: Some((name.to_owned(), amount)),
        }
    }

    /// A case accepted as an event for `user` (not the case's name) applying `amount`.
    fn accepted_as(name: &'static str, request: Vec<u8>, user: &str, amount: i64) -> Self {
        Self {
            applied: Some((user.to_owned(), amount)),
            ..Self::accepted(name, request, amount, false)
        }
    }

    /// The README's rendering of the expected answer (third cell of the case's row).
    fn documented_answer(&self) -> String {
        let answer = match self.answer {
            Answer::Refused(status, reason) => format!("{status} `{reason}`"),
            Answer::Hyper(status) => format!("{status}, empty body (hyper)"),
            Answer::Success(status) => status.to_string(),
            Answer::Silence => "no answer".to_owned(),
        };
        if self.closes {
            format!("{answer}; connection closed")
        } else {
            answer
        }
    }
}

/// The README's answer cell for a case named `name`, from its "Hostile input" tables (rows
/// like ``| `name` | what is sent | answer |``).
fn readme_answer(name: &str) -> Option<String> {
    let readme = include_str!("../../../../README.md");
    let prefix = format!("| `{name}` |");
    let row = readme.lines().find(|line| line.starts_with(&prefix))?;
    let cells: Vec<&str> = row.trim_end_matches('|').split(" | ").collect();
    cells.last().map(|cell| cell.trim().to_owned())
}

/// Checks each case's expected answer against the README's table row for it.
fn assert_documented(cases: &[Case]) {
    for case in cases {
        assert_eq!(
            readme_answer(case.name).as_deref(),
            Some(case.documented_answer().as_str()),
            "README row of `{}`",
            case.name
        );
    }
}

/// Asserts `response` is the answer `expected` (status, and a JSON reason or an empty body).
fn assert_answer(name: &str, response: Option<&RawResponse>, expected: Answer) {
    match (expected, response) {
        (Answer::Silence, None) => {}
        (Answer::Silence, Some(response)) => {
            panic!("{name}: answered {} instead of closing", response.status)
        }
        (_, None) => panic!("{name}: closed without an answer, expected {expected:?}"),
        (Answer::Refused(status, reason), Some(response)) => {
            assert_eq!(response.status, status, "{name}: {:?}", response.body);
            let body: serde_json::Value = serde_json::from_slice(&response.body)
                .unwrap_or_else(|_| panic!("{name}: body is not JSON: {:?}", response.body));
            assert_eq!(body["reason"], reason, "{name}: {body}");
        }
        (Answer::Hyper(status), Some(response)) => {
            assert_eq!(response.status, status, "{name}");
            assert!(response.body.is_empty(), "{name}: {:?}", response.body);
        }
        (Answer::Success(status), Some(response)) => {
            assert_eq!(
                response.status,
                status,
                "{name}: {}",
                String::from_utf8_lossy(&response.body)
            );
        }
    }
}

/// Whether the server has closed `stream`: an end of stream (or a reset) within the wait, with
/// nothing left unread.
async fn closed_by_server(stream: &mut TcpStream, pending: &[u8]) -> bool {
    if !pending.is_empty() {
        return false;
    }
    let mut byte = [0_u8; 1];
    match tokio::time::timeout(ANSWER_WAIT, stream.read(&mut byte)).await {
        Ok(Ok(0)) => true,
        Ok(Err(error)) => error.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(Ok(_)) | Err(_) => false,
    }
}

/// A valid `POST /events` for `user`, with `extra_headers` (lines ending in CRLF).
fn valid_event(user: &str, amount: i64, extra_headers: &str) -> Vec<u8> {
    let body = event_json(user, amount);
    format!(
        "POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Runs one family against `server`: each case on its own connection (with a valid event
/// pipelined behind it when `pipeline_canary`), then a valid event on a new connection. Returns the
/// number of events that must have been applied.
async fn run_family(
    server: &ServerHandle,
    cases: &[Case],
    pipeline_canary: bool,
    valid_headers: &str,
) -> u64 {
    let mut applied = 0;
    for case in cases {
        let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
        let mut request = case.request.clone();
        let canary_user = format!("{}-smuggled", case.name);
        if pipeline_canary {
            request.extend(valid_event(&canary_user, 1, ""));
        }
        // The server may close before reading all of it: a failed write is part of the answer.
        let _ = stream.write_all(&request).await;
        let mut pending = Vec::new();
        let response = read_response(&mut stream, &mut pending).await;
        assert_answer(case.name, response.as_ref(), case.answer);
        if case.closes {
            assert!(
                closed_by_server(&mut stream, &pending).await,
                "{}: the connection stayed open",
                case.name
            );
        } else if pipeline_canary {
            let behind = read_response(&mut stream, &mut pending).await;
            assert_answer(&canary_user, behind.as_ref(), Answer::Success(202));
            applied += 1;
        }
        drop(stream);
        applied += 1 + u64::from(case.applied.is_some());
        let after = format!("{}-after", case.name);
        let valid =
            crate::support::raw_exchange(server.addr(), &valid_event(&after, 1, valid_headers))
                .await;
        assert_answer(&after, valid.as_ref(), Answer::Success(202));
    }
    applied
}

/// Stops the server and checks that exactly `expected_applied` events were applied, and per
/// case, that its user's balance is what the case applied (none when refused) and that an
/// event smuggled behind a closing case was not applied.
async fn assert_nothing_refused_was_applied(
    server: ServerHandle,
    cases: &[Case],
    expected_applied: u64,
) {
    let engine = server.engine().clone();
    let summary = server.stop().await.expect("stop");
    for case in cases {
        let (user, amount) = case
            .applied
            .clone()
            .map_or((case.name.to_owned(), None), |(user, amount)| {
                (user, Some(amount))
            });
        assert_eq!(
            engine.balance(&user),
            amount,
            "{}: balance of {user:?}",
            case.name
        );
        if case.closes {
            let smuggled = format!("{}-smuggled", case.name);
            assert_eq!(engine.balance(&smuggled), None, "{smuggled}");
        }
    }
    assert_eq!(summary.applied, expected_applied);
}

/// The test server of the campaign: a short body deadline, so the case that stalls its body
/// ends quickly; the header deadline is left long enough that a loaded machine never cuts a
/// case's head before it is written.
fn campaign_config() -> ServerConfig {
    let mut config = test_config();
    config.front_door.body_timeout_ms = 1000;
    config.front_door.header_timeout_ms = 5000;
    config
}

/// `POST /events` with `headers` (CRLF-terminated lines, framing included) and `body` as is.
fn post(headers: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!("POST /events HTTP/1.1\r\nHost: t\r\n{headers}\r\n").into_bytes();
    request.extend_from_slice(body);
    request
}

/// `POST /events` with a correct `Content-Length` for `body`.
fn post_json(body: &[u8]) -> Vec<u8> {
    post(&format!("Content-Length: {}\r\n", body.len()), body)
}

/// `body` as one chunk and the last chunk.
fn one_chunk(body: &str) -> String {
    format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len())
}

/// A request that is chunked under `transfer_encoding` (header lines, CRLF-terminated).
fn chunked_post(transfer_encoding: &str, user: &str, amount: i64) -> Vec<u8> {
    post(
        transfer_encoding,
        one_chunk(&event_json(user, amount)).as_bytes(),
    )
}

/// The event for the user `name`, framed by `headers(the event's length)`.
fn framed(name: &str, headers: &dyn Fn(usize) -> String) -> Vec<u8> {
    let body = event_json(name, 1);
    post(&headers(body.len()), body.as_bytes())
}

/// Smuggling shapes in `Transfer-Encoding`: only one `chunked` is served.
fn transfer_encoding_cases() -> Vec<Case> {
    let chunked_as = |name: &str, lines: &str| chunked_post(lines, name, 1);
    let unsupported = |name: &'static str, value: &str| {
        let lines = format!("Transfer-Encoding: {value}\r\n");
        let answer = Answer::Refused(501, "unsupported_transfer_encoding");
        Case::refused(name, chunked_as(name, &lines), answer, true)
    };
    let hyper_400 =
        |name: &'static str, request| Case::refused(name, request, Answer::Hyper(400), true);
    let cl_and_te = post(
        "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
        one_chunk(&event_json("cl_and_te", 1)).as_bytes(),
    );
    let http_1_0 = format!(
        "POST /events HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{}",
        one_chunk(&event_json("te_in_http_1_0", 1))
    );
    let any_case = chunked_as("te_any_case", "tRANSFER-eNCODING: ChUnKeD\r\n");
    vec![
        Case::accepted("cl_and_te", cl_and_te, 1, true),
        unsupported("te_gzip_chunked", "gzip, chunked"),
        unsupported("te_chunked_chunked", "chunked, chunked"),
        unsupported("te_two_lines", "chunked\r\nTransfer-Encoding: chunked"),
        unsupported("te_identity_chunked", "identity, chunked"),
        hyper_400(
            "te_chunked_gzip",
            chunked_as("te_chunked_gzip", "Transfer-Encoding: chunked, gzip\r\n"),
        ),
        hyper_400("te_in_http_1_0", http_1_0.into_bytes()),
        hyper_400(
            "te_space_before_colon",
            chunked_as("te_space_before_colon", "Transfer-Encoding : chunked\r\n"),
        ),
        Case::accepted("te_any_case", any_case, 1, false),
    ]
}

/// Smuggling shapes in `Content-Length` and in the head's lines.
fn length_and_line_cases() -> Vec<Case> {
    let hyper_400 = |name: &'static str, headers: &dyn Fn(usize) -> String| {
        Case::refused(name, framed(name, headers), Answer::Hyper(400), true)
    };
    let bare_lf = {
        let body = event_json("bare_lf_head", 1);
        format!(
            "POST /events HTTP/1.1\nHost: t\nContent-Length: {}\n\n{body}",
            body.len()
        )
    };
    let twice_equal = framed("cl_twice_equal", &|n| {
        format!("Content-Length: {n}\r\nContent-Length: {n}\r\n")
    });
    vec![
        Case::accepted("cl_twice_equal", twice_equal, 1, false),
        hyper_400("cl_twice_different", &|n| {
            format!("Content-Length: {n}\r\nContent-Length: {}\r\n", n + 1)
        }),
        hyper_400("cl_comma_list", &|n| {
            format!("Content-Length: {n}, {n}\r\n")
        }),
        hyper_400("cl_plus_sign", &|n| format!("Content-Length: +{n}\r\n")),
        hyper_400("obs_fold", &|n| {
            format!("X-Note: a\r\n folded\r\nContent-Length: {n}\r\n")
        }),
        hyper_400("obs_fold_length", &|n| {
            format!("Content-Length:\r\n {n}\r\n")
        }),
        Case::accepted("bare_lf_head", bare_lf.into_bytes(), 1, false),
        hyper_400("bare_cr_head", &|n| {
            format!("X-A: 1\rContent-Length: {n}\r\n")
        }),
    ]
}

/// Request smuggling shapes in the chunked framing: extensions, sizes, and a chunk over the
/// body limit.
fn chunk_cases() -> Vec<Case> {
    let event = |user: &str| event_json(user, 1);
    let with_extension = |extension: &str, user: &str| {
        let body = event(user);
        let chunks = format!("{:x}{extension}\r\n{body}\r\n0\r\n\r\n", body.len());
        post("Transfer-Encoding: chunked\r\n", chunks.as_bytes())
    };
    let huge_extension = format!(";x={}", "a".repeat(20 * 1024));
    let mut oversized_chunk = post("Transfer-Encoding: chunked\r\n", b"100000\r\n");
    oversized_chunk.extend(vec![b'a'; 70 * 1024]);
    let stalled_chunk = post("Transfer-Encoding: chunked\r\n", b"100000\r\n{\"user\":");
    vec![
        Case::accepted(
            "chunk_extension",
            with_extension(";name=value", "chunk_extension"),
            1,
            false,
        ),
        Case::accepted(
            "chunk_extension_quoted",
            with_extension(";name=\"a quoted; value\"", "chunk_extension_quoted"),
            1,
            false,
        ),
        Case::refused(
            "chunk_extension_20_kib",
            with_extension(&huge_extension, "chunk_extension_20_kib"),
            Answer::Refused(400, "invalid_body"),
            true,
        ),
        Case::refused(
            "chunk_size_overflow",
            post(
                "Transfer-Encoding: chunked\r\n",
                b"ffffffffffffffffffff\r\n{}\r\n0\r\n\r\n",
            ),
            Answer::Refused(400, "invalid_body"),
            true,
        ),
        Case::refused(
            "chunk_size_not_hex",
            post("Transfer-Encoding: chunked\r\n", b"zz\r\n{}\r\n0\r\n\r\n"),
            Answer::Refused(400, "invalid_body"),
            true,
        ),
        Case::refused(
            "chunk_longer_than_its_size",
            post(
                "Transfer-Encoding: chunked\r\n",
                format!("2\r\n{}\r\n0\r\n\r\n", event("chunk_longer_than_its_size")).as_bytes(),
            ),
            Answer::Refused(400, "invalid_body"),
            true,
        ),
        Case::refused(
            "chunk_over_the_body_limit",
            oversized_chunk,
            Answer::Refused(413, "body_too_large"),
            true,
        ),
        Case::refused(
            "chunk_over_the_limit_stalled",
            stalled_chunk,
            Answer::Refused(408, "body_timeout"),
            true,
        ),
    ]
}

/// Smuggling shapes in the chunked framing's line ends and sizes: hyper reads chunk lines
/// strictly (CRLF only), so a bare LF or CR inside the framing is a broken body.
fn chunk_line_cases() -> Vec<Case> {
    let chunks = |name: &'static str, framing: &dyn Fn(usize, &str) -> String| {
        let body = event_json(name, 1);
        post(
            "Transfer-Encoding: chunked\r\n",
            framing(body.len(), &body).as_bytes(),
        )
    };
    let broken = |name: &'static str, framing: &dyn Fn(usize, &str) -> String| {
        let answer = Answer::Refused(400, "invalid_body");
        Case::refused(name, chunks(name, framing), answer, true)
    };
    let accepted = |name: &'static str, framing: &dyn Fn(usize, &str) -> String| {
        Case::accepted(name, chunks(name, framing), 1, false)
    };
    vec![
        broken("chunk_size_bare_lf", &|n, body| {
            format!("{n:x}\n{body}\r\n0\r\n\r\n")
        }),
        broken("chunk_data_bare_lf", &|n, body| {
            format!("{n:x}\r\n{body}\n0\r\n\r\n")
        }),
        broken("last_chunk_bare_lf", &|n, body| {
            format!("{n:x}\r\n{body}\r\n0\n\n")
        }),
        broken("chunk_size_bare_cr", &|n, body| {
            format!("{n:x}\r{body}\r\n0\r\n\r\n")
        }),
        broken("chunk_size_0x", &|n, body| {
            format!("0x{n:x}\r\n{body}\r\n0\r\n\r\n")
        }),
        accepted("chunk_size_space_before_crlf", &|n, body| {
            format!("{n:x} \r\n{body}\r\n0\r\n\r\n")
        }),
        accepted("chunk_size_leading_zeros", &|n, body| {
            format!("000{n:x}\r\n{body}\r\n0\r\n\r\n")
        }),
        accepted("chunked_trailer", &|n, body| {
            format!("{n:x}\r\n{body}\r\n0\r\nX-T: v\r\n\r\n")
        }),
    ]
}

// Proves the smuggling shapes get their documented answers: a Transfer-Encoding other than one
// `chunked` is 501 and closes, hyper's refusals close, the leniencies that remain (bare LF,
// chunk extensions, equal duplicate lengths) are accepted; a request pipelined behind a case
// that closes is never answered nor applied, and one behind a case that keeps the connection
// is answered 202; the server then serves a valid event on a new connection.
#[tokio::test]
async fn smuggling_shapes() {
    let mut cases = transfer_encoding_cases();
    cases.extend(length_and_line_cases());
    cases.extend(chunk_cases());
    cases.extend(chunk_line_cases());
    assert_documented(&cases);
    let server = ServerHandle::spawn(campaign_config()).await.expect("spawn");
    let applied = run_family(&server, &cases, true, "").await;
    assert_nothing_refused_was_applied(server, &cases, applied).await;
}

/// A body nested `depth` deep: `open` repeated, `inner`, then `close` repeated.
fn nested(open: &str, inner: &str, close: &str, depth: usize) -> String {
    format!("{}{inner}{}", open.repeat(depth), close.repeat(depth))
}

/// The answers of the JSON family.
const INVALID_JSON: Answer = Answer::Refused(400, "invalid_json");
const INVALID_AMOUNT: Answer = Answer::Refused(422, "invalid_amount");
const INVALID_USER: Answer = Answer::Refused(422, "invalid_user");
const DUPLICATE_FIELD: Answer = Answer::Refused(422, "duplicate_field");
const NOT_AN_OBJECT: Answer = Answer::Refused(422, "not_an_object");

/// A JSON case refused with `answer` (413 closes the connection).
fn json_refused(name: &'static str, body: impl AsRef<[u8]>, answer: Answer) -> Case {
    let closes = matches!(answer, Answer::Refused(413, _));
    Case::refused(name, post_json(body.as_ref()), answer, closes)
}

/// An event for the user `name` whose `amount` is the raw JSON text `amount`.
fn with_amount(name: &str, amount: &str) -> String {
    format!(r#"{{"user":"{name}","amount":{amount}}}"#)
}

/// An event of amount 1 whose `user` is the raw JSON string content `user`.
fn with_user(user: &str) -> String {
    format!(r#"{{"user":"{user}","amount":1}}"#)
}

/// JSON edge cases in the structure: nesting, duplicate keys, extra values and fields.
fn json_structure_cases() -> Vec<Case> {
    let deep_user = format!(
        r#"{{"user":{},"amount":1}}"#,
        nested(r#"{"a":"#, "1", "}", 10_000)
    );
    let deep_amount = with_amount("deep_array_in_amount", &nested("[", "1", "]", 10_000));
    vec![
        json_refused("deep_object_in_user", deep_user, INVALID_USER),
        json_refused(
            "deep_array_top_level",
            nested("[", "", "]", 10_000),
            NOT_AN_OBJECT,
        ),
        json_refused("deep_array_in_amount", deep_amount, INVALID_AMOUNT),
        json_refused(
            "duplicate_key_same",
            r#"{"user":"a","user":"a","amount":1}"#,
            DUPLICATE_FIELD,
        ),
        json_refused(
            "duplicate_key_different",
            r#"{"user":"a","user":"b","amount":1}"#,
            DUPLICATE_FIELD,
        ),
        json_refused(
            "duplicate_amount",
            r#"{"user":"a","amount":1,"amount":2}"#,
            DUPLICATE_FIELD,
        ),
        json_refused(
            "trailing_garbage",
            with_amount("trailing_garbage", "1") + "x",
            INVALID_JSON,
        ),
        json_refused(
            "two_objects",
            with_amount("two_objects", "1").repeat(2),
            INVALID_JSON,
        ),
        json_refused("empty_body", "", INVALID_JSON),
        json_refused("json_null", "null", NOT_AN_OBJECT),
        json_refused(
            "comment",
            r#"{/* c */"user":"comment","amount":1}"#,
            INVALID_JSON,
        ),
        json_refused(
            "single_quotes",
            "{'user':'single_quotes','amount':1}",
            INVALID_JSON,
        ),
        json_refused(
            "unknown_field",
            r#"{"user":"unknown_field","amount":1,"admin":true}"#,
            Answer::Refused(422, "unknown_field"),
        ),
    ]
}

/// JSON edge cases in numbers: huge, fractional, NaN, the i64 edges.
fn json_number_cases() -> Vec<Case> {
    let amount = |name: &'static str, text: &str, answer| {
        json_refused(name, with_amount(name, text), answer)
    };
    let applied = |name: &'static str, text: &str, value| {
        Case::accepted(
            name,
            post_json(with_amount(name, text).as_bytes()),
            value,
            false,
        )
    };
    vec![
        amount(
            "amount_400_digits",
            &format!("1{}", "0".repeat(400)),
            INVALID_AMOUNT,
        ),
        amount("amount_1e400", "1e400", INVALID_AMOUNT),
        amount("amount_2_pow_63", "9223372036854775808", INVALID_AMOUNT),
        applied("amount_i64_min", "-9223372036854775808", i64::MIN),
        applied("amount_negative_zero", "-0", 0),
        amount("amount_1_0", "1.0", INVALID_AMOUNT),
        amount("amount_as_string", r#""5""#, INVALID_AMOUNT),
        amount("amount_nan", "NaN", INVALID_JSON),
        amount("amount_infinity", "Infinity", INVALID_JSON),
    ]
}

/// JSON edge cases in text: encodings, byte order marks, surrogates, control characters, size.
fn json_text_cases() -> Vec<Case> {
    let mut bom = "\u{feff}".as_bytes().to_vec();
    bom.extend(with_amount("bom", "1").as_bytes());
    let utf16: Vec<u8> = with_amount("utf16_body", "1")
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    let pair = post_json(with_user(r"surrogate_pair\ud83d\ude00").as_bytes());
    let body_too_large = Answer::Refused(413, "body_too_large");
    vec![
        json_refused("bom", bom, INVALID_JSON),
        json_refused("utf16_body", utf16, INVALID_JSON),
        json_refused(
            "lone_high_surrogate",
            with_user(r"lone_high_surrogate\ud800"),
            INVALID_JSON,
        ),
        json_refused(
            "lone_low_surrogate",
            with_user(r"lone_low_surrogate\udc00"),
            INVALID_JSON,
        ),
        Case::accepted_as("surrogate_pair", pair, "surrogate_pair\u{1f600}", 1),
        json_refused("escaped_nul", with_user(r"escaped_nul\u0000"), INVALID_USER),
        json_refused(
            "raw_tab_in_string",
            with_user("raw_tab\tin_string"),
            INVALID_JSON,
        ),
        json_refused(
            "invalid_utf8",
            b"{\"user\":\"invalid_utf8\xff\",\"amount\":1}",
            INVALID_JSON,
        ),
        json_refused(
            "overlong_utf8",
            b"{\"user\":\"overlong\xc0\xaf\",\"amount\":1}",
            INVALID_JSON,
        ),
        json_refused(
            "user_60_kib",
            with_user(&"u".repeat(60 * 1024)),
            INVALID_USER,
        ),
        json_refused(
            "user_64_kib",
            with_user(&"u".repeat(64 * 1024)),
            body_too_large,
        ),
    ]
}

// Proves the JSON edge cases get their documented answers (nesting, huge numbers, duplicate
// keys, BOM, NaN, surrogates, encodings), the server then accepts a valid event, and only the
// accepted cases changed a balance, by exactly their amount.
#[tokio::test]
async fn json_edge_cases() {
    let mut cases = json_structure_cases();
    cases.extend(json_number_cases());
    cases.extend(json_text_cases());
    assert_documented(&cases);
    let server = ServerHandle::spawn(campaign_config()).await.expect("spawn");
    let applied = run_family(&server, &cases, false, "").await;
    assert_nothing_refused_was_applied(server, &cases, applied).await;
}

/// A raw request line and `Host`, then `headers` (CRLF-terminated lines) and an empty body.
fn request(method: &str, target: &[u8], headers: &[u8]) -> Vec<u8> {
    let mut bytes = format!("{method} ").into_bytes();
    bytes.extend_from_slice(target);
    bytes.extend_from_slice(b" HTTP/1.1\r\nHost: t\r\n");
    bytes.extend_from_slice(headers);
    bytes.extend_from_slice(b"\r\n");
    bytes
}

/// Path abuse on `GET /balances/{user}` (a user `seed/user` holds a balance).
fn path_cases() -> Vec<Case> {
    let get = |name: &'static str, target: &[u8], answer: Answer| {
        let closes = matches!(answer, Answer::Hyper(_));
        Case::refused(name, request("GET", target, b""), answer, closes)
    };
    let unknown_user = Answer::Refused(404, "unknown_user");
    let not_found = Answer::Refused(404, "not_found");
    let mut long_path = b"/balances/".to_vec();
    long_path.extend(vec![b'u'; 64 * 1024]);
    vec![
        get(
            "encoded_slash",
            b"/balances/seed%2Fuser",
            Answer::Success(200),
        ),
        get(
            "encoded_slash_to_a_route",
            b"/balances/..%2Fstats",
            unknown_user,
        ),
        get("dot_segments", b"/balances/../stats", not_found),
        get("dot_segment_user", b"/balances/..", unknown_user),
        get("encoded_dot_segments", b"/balances/%2e%2e/stats", not_found),
        get("trailing_slash", b"/balances/", not_found),
        get("double_slash", b"//balances/seed", not_found),
        get(
            "percent_ff",
            b"/balances/%ff",
            Answer::Refused(400, "invalid_path"),
        ),
        get("raw_byte_ff", b"/balances/\xff", Answer::Hyper(400)),
        get("bad_percent_escape", b"/balances/%zz", unknown_user),
        get("encoded_nul", b"/balances/%00", unknown_user),
        get("path_user_64_kib", &long_path, Answer::Hyper(431)),
    ]
}

/// Header and request-line abuse on `POST /events` with a valid event for the case's user.
fn header_cases() -> Vec<Case> {
    let event_with = |name: &str, method: &str, target: &[u8], headers: &[u8]| {
        let body = event_json(name, 1);
        let mut lines = headers.to_vec();
        lines.extend(format!("Content-Length: {}\r\n", body.len()).into_bytes());
        let mut bytes = request(method, target, &lines);
        bytes.extend(body.into_bytes());
        bytes
    };
    let refused = |name: &'static str, headers: &[u8], answer: Answer| {
        let closes = matches!(answer, Answer::Hyper(_));
        Case::refused(
            name,
            event_with(name, "POST", b"/events", headers),
            answer,
            closes,
        )
    };
    let mut big_header = b"X-Big: ".to_vec();
    big_header.extend(vec![b'h'; 64 * 1024]);
    big_header.extend(b"\r\n");
    vec![
        refused("header_value_64_kib", &big_header, Answer::Hyper(431)),
        refused("header_nul", b"X-Note: a\0b\r\n", Answer::Hyper(400)),
        refused(
            "header_name_with_space",
            b"X Note: a\r\n",
            Answer::Hyper(400),
        ),
        Case::accepted(
            "header_obs_text",
            event_with(
                "header_obs_text",
                "POST",
                b"/events",
                b"X-Note: caf\xe9\r\n",
            ),
            1,
            false,
        ),
        refused(
            "content_type_not_utf8",
            b"Content-Type: application/json\xff\r\n",
            Answer::Refused(415, "unsupported_media_type"),
        ),
        Case::accepted(
            "absolute_form",
            event_with(
                "absolute_form",
                "POST",
                b"http://elsewhere.example/events",
                b"",
            ),
            1,
            false,
        ),
        Case::refused(
            "lowercase_method",
            event_with("lowercase_method", "post", b"/events", b""),
            Answer::Refused(405, "method_not_allowed"),
            false,
        ),
        Case::refused(
            "asterisk_form",
            request("OPTIONS", b"*", b""),
            Answer::Refused(404, "not_found"),
            false,
        ),
        Case::refused(
            "http_2_preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            Answer::Silence,
            true,
        ),
    ]
}

// Proves path and header abuse get their documented answers: an encoded slash stays inside
// the user name (it never reaches another route), dot segments are not resolved, undecodable
// and raw non-ASCII paths are refused, oversized heads are 431; the server then accepts a
// valid event, and only the accepted cases changed a balance.
#[tokio::test]
async fn path_and_header_abuse() {
    let mut cases = path_cases();
    cases.extend(header_cases());
    assert_documented(&cases);
    let server = ServerHandle::spawn(campaign_config()).await.expect("spawn");
    let seeded =
        crate::support::raw_exchange(server.addr(), &valid_event("seed/user", 7, "")).await;
    assert_answer("seed", seeded.as_ref(), Answer::Success(202));
    let applied = run_family(&server, &cases, false, "").await;
    assert_nothing_refused_was_applied(server, &cases, applied + 1).await;
}

/// The tokens of the token family: one that may ingest, one that may only read.
const INGEST_TOKEN: &str = "ingest-token-0123456789abcdef";
const READ_TOKEN: &str = "read-token-0123456789abcdef";

/// Token abuse on `POST /events` with tokens on: each case's `Authorization` lines (or none).
fn token_cases() -> Vec<Case> {
    let with_headers = |name: &str, target: &[u8], headers: &[u8]| {
        let body = event_json(name, 1);
        let mut lines = headers.to_vec();
        lines.extend(format!("Content-Length: {}\r\n", body.len()).into_bytes());
        let mut bytes = request("POST", target, &lines);
        bytes.extend(body.into_bytes());
        bytes
    };
    let unauthorized = |name: &'static str, headers: &[u8]| {
        let answer = Answer::Refused(401, "unauthorized");
        Case::refused(name, with_headers(name, b"/events", headers), answer, false)
    };
    let bearer = |token: &str| format!("Authorization: Bearer {token}\r\n").into_bytes();
    let off_by_one = |index: usize| {
        let mut token = INGEST_TOKEN.as_bytes().to_vec();
        token[index] ^= 1;
        bearer(&String::from_utf8_lossy(&token))
    };
    let shorter = bearer(&INGEST_TOKEN[..INGEST_TOKEN.len() - 1]);
    let longer = bearer(&format!("{INGEST_TOKEN}x"));
    let twice = [bearer(INGEST_TOKEN), bearer(INGEST_TOKEN)].concat();
    let unknown_then_valid = [bearer("unknown-token-0123456789"), bearer(INGEST_TOKEN)].concat();
    let mut not_utf8 = bearer(INGEST_TOKEN);
    not_utf8.splice(not_utf8.len() - 2..not_utf8.len() - 2, [0xff]);
    let in_query = format!("/events?access_token={INGEST_TOKEN}");
    let lowercase = format!("Authorization: bearer {INGEST_TOKEN}\r\n");
    vec![
        unauthorized("token_last_byte_off", &off_by_one(INGEST_TOKEN.len() - 1)),
        unauthorized("token_first_byte_off", &off_by_one(0)),
        unauthorized("token_one_byte_short", &shorter),
        unauthorized("token_one_byte_long", &longer),
        Case::refused(
            "token_in_query",
            with_headers("token_in_query", in_query.as_bytes(), b""),
            Answer::Refused(401, "unauthorized"),
            false,
        ),
        unauthorized("token_twice", &twice),
        unauthorized("token_unknown_then_valid", &unknown_then_valid),
        unauthorized(
            "token_comma_joined",
            format!("Authorization: Bearer {INGEST_TOKEN}, Bearer {INGEST_TOKEN}\r\n").as_bytes(),
        ),
        unauthorized(
            "token_basic_scheme",
            format!("Authorization: Basic {INGEST_TOKEN}\r\n").as_bytes(),
        ),
        unauthorized(
            "token_no_space",
            format!("Authorization: Bearer{INGEST_TOKEN}\r\n").as_bytes(),
        ),
        unauthorized("token_not_utf8", &not_utf8),
        unauthorized("token_8_kib", &bearer(&"t".repeat(8 * 1024))),
        unauthorized(
            "token_as_proxy_authorization",
            format!("Proxy-Authorization: Bearer {INGEST_TOKEN}\r\n").as_bytes(),
        ),
        Case::accepted(
            "token_scheme_lowercase",
            with_headers("token_scheme_lowercase", b"/events", lowercase.as_bytes()),
            1,
            false,
        ),
        Case::refused(
            "token_without_the_scope",
            with_headers("token_without_the_scope", b"/events", &bearer(READ_TOKEN)),
            Answer::Refused(403, "forbidden"),
            false,
        ),
    ]
}

// Proves token abuse gets its documented answer: a token one byte off (first or last byte,
// shorter, longer), in the query string, sent twice, in another scheme or header is 401; a
// token without the scope is 403; the server then accepts a valid token's event, and no
// refused request changed a balance.
#[tokio::test]
async fn token_abuse() {
    let cases = token_cases();
    assert_documented(&cases);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tokens");
    std::fs::write(&path, format!("{INGEST_TOKEN} ingest\n{READ_TOKEN} read\n")).expect("tokens");
    let mut config = campaign_config();
    config.access.auth_tokens_file = Some(path);
    let server = ServerHandle::spawn(config).await.expect("spawn");
    let valid_headers = format!("Authorization: Bearer {INGEST_TOKEN}\r\n");
    let applied = run_family(&server, &cases, false, &valid_headers).await;
    assert_nothing_refused_was_applied(server, &cases, applied).await;
}

/// One TLS abuse case: what is sent to the TLS port (after a completed handshake when
/// `handshake_first`), and whether the server may hold the connection until the header
/// deadline (else it must close before it).
struct TlsCase {
    case: Case,
    handshake_first: bool,
    cut_at_the_deadline: bool,
}

/// The header deadline of the TLS family: long enough that "closed before it" means at once,
/// even on a loaded machine.
const TLS_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// TLS abuse: what reaches the TLS port that is not a well-behaved TLS client.
fn tls_cases() -> Vec<TlsCase> {
    let closed = |name: &'static str, bytes: &[u8], handshake_first, cut_at_the_deadline| TlsCase {
        case: Case::refused(name, bytes.to_vec(), Answer::Silence, true),
        handshake_first,
        cut_at_the_deadline,
    };
    let mut sslv2_hello = vec![
        0x80, 0x2e, 0x01, 0x00, 0x02, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10,
    ];
    sslv2_hello.extend([0x07, 0x00, 0xc0].repeat(7));
    vec![
        closed(
            "plain_http_to_the_tls_port",
            b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
            false,
            false,
        ),
        closed(
            "client_hello_never_finished",
            &[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01],
            false,
            true,
        ),
        closed(
            "record_over_the_tls_limit",
            &[0x16, 0x03, 0x01, 0xff, 0xff, 0x01],
            false,
            false,
        ),
        closed("sslv2_client_hello", &sslv2_hello, false, false),
        closed("silence_after_connect", b"", false, true),
        closed("silence_after_the_handshake", b"", true, true),
        TlsCase {
            case: Case::refused(
                "garbage_after_the_handshake",
                b"\x00\xffgarbage\r\n\r\n".to_vec(),
                Answer::Hyper(400),
                true,
            ),
            handshake_first: true,
            cut_at_the_deadline: false,
        },
    ]
}

/// Sends one TLS case; what came back before the server closed, and how long that took.
/// Panics if the server has not closed the connection within [`ANSWER_WAIT`].
async fn exchange_tls_case(
    server: &ServerHandle,
    connector: &tokio_rustls::TlsConnector,
    case: &TlsCase,
) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut tcp = TcpStream::connect(server.addr()).await.expect("connect");
    let mut received = Vec::new();
    let read = if case.handshake_first {
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut tls = connector.connect(name, tcp).await.expect("handshake");
        let _ = tls.write_all(&case.case.request).await;
        tokio::time::timeout(ANSWER_WAIT, tls.read_to_end(&mut received)).await
    } else {
        let _ = tcp.write_all(&case.case.request).await;
        tokio::time::timeout(ANSWER_WAIT, tcp.read_to_end(&mut received)).await
    };
    // A reset is a close too; only a connection still open at the wait's end fails.
    assert!(
        read.is_ok(),
        "{}: the connection stayed open",
        case.case.name
    );
    (received, started.elapsed())
}

/// Posts one valid event over TLS on a new connection; the raw response.
async fn post_over_tls(
    server: &ServerHandle,
    connector: &tokio_rustls::TlsConnector,
    user: &str,
) -> Vec<u8> {
    let tcp = TcpStream::connect(server.addr()).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("handshake");
    let request = valid_event(user, 1, "Connection: close\r\n");
    tls.write_all(&request).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(ANSWER_WAIT, tls.read_to_end(&mut response))
        .await
        .expect("answered in time")
        .expect("read");
    response
}

// Proves TLS abuse is closed without an HTTP answer (hyper's 400 for garbage sent inside a
// finished handshake): plain HTTP, a bad record or an SSLv2 hello at once, a client that
// stalls (before, during or after the handshake) at the header deadline and not before; the
// server then accepts a valid event over TLS, and nothing else was applied.
#[tokio::test]
async fn tls_abuse() {
    let cases = tls_cases();
    let plain: Vec<Case> = tls_cases().into_iter().map(|tls| tls.case).collect();
    assert_documented(&plain);
    let cert = crate::tls::TestCert::new();
    let mut config = crate::tls::with_tls(&cert);
    config.front_door.header_timeout_ms =
        u64::try_from(TLS_HEADER_TIMEOUT.as_millis()).expect("ms");
    let server = ServerHandle::spawn(config).await.expect("spawn");
    let connector = crate::tls::connector(&cert.der, &rustls::version::TLS13);
    for case in &cases {
        let name = case.case.name;
        let (received, took) = exchange_tls_case(&server, &connector, case).await;
        let response = crate::support::status_of(&received).map(|status| RawResponse {
            status,
            headers: Vec::new(),
            body: crate::support::body_of(&received).to_vec(),
        });
        assert_answer(name, response.as_ref(), case.case.answer);
        if case.cut_at_the_deadline {
            assert!(
                took >= TLS_HEADER_TIMEOUT,
                "{name}: closed after {took:?}, before the deadline"
            );
        } else {
            assert!(
                took < TLS_HEADER_TIMEOUT,
                "{name}: closed after {took:?}, not at once"
            );
        }
        let after = post_over_tls(&server, &connector, &format!("{name}-after")).await;
        assert_eq!(crate::support::status_of(&after), Some(202), "after {name}");
    }
    let summary = server.stop().await.expect("stop");
    assert_eq!(summary.applied, cases.len() as u64);
}

// Proves the README's "Hostile input" tables list only cases the campaign sends: every row's
// case name is one of the families' cases (the family tests check the other direction).
#[test]
fn every_readme_row_is_a_case() {
    let mut names: Vec<&str> = transfer_encoding_cases()
        .into_iter()
        .chain(length_and_line_cases())
        .chain(chunk_cases())
        .chain(chunk_line_cases())
        .chain(json_structure_cases())
        .chain(json_number_cases())
        .chain(json_text_cases())
        .chain(path_cases())
        .chain(header_cases())
        .chain(token_cases())
        .chain(tls_cases().into_iter().map(|tls| tls.case))
        .map(|case| case.name)
        .collect();
    names.sort_unstable();
    let readme = include_str!("../../../../README.md");
    let section = readme
        .split("\n## Hostile input\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Hostile input section");
    let rows: Vec<&str> = section
        .lines()
        .filter_map(|line| line.strip_prefix("| `")?.split('`').next())
        .collect();
    assert_eq!(rows.len(), names.len(), "one row per case");
    for row in rows {
        assert!(
            names.binary_search(&row).is_ok(),
            "README row `{row}` is no case"
        );
    }
}
