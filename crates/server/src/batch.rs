//! `POST /events/batch`: many events in one request, each answered on its own.
//!
//! Lesson: one event per request caps ingest near the HTTP request rate; a batch pays the
//! request, the reservation and the log record once for thousands of events. Its contract
//! keeps what must be per event per event (validation, ids: a bad line is that event's error,
//! the rest proceed) and what must be whole whole (capacity: all admitted or none, so resending
//! a refused batch with ids is always safe).
//!
//! Invariants: the body is read under the batch size limit, and a gzip body is decompressed
//! under the same limit (a zip bomb is 413 before it takes more than the limit of memory); a
//! 200 is sent only once every accepted event is durable under the durability mode in force;
//! `results` lists only the events not accepted, by index, so the answer stays small.

use std::io::Read as _;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use floodgate_core::engine::{EventOutcome, Ingested, Rejected};
use floodgate_core::event::{Event, EventError, parse_event};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::error::ApiError;
use crate::routes::{AppState, EventBody, announced_length, read_body};

/// How the events of a batch are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// `application/x-ndjson`: one event per line; a bad line is that event's error.
    Lines,
    /// `application/json` (or no content type): a JSON array; malformed JSON fails it whole.
    Array,
}

/// One event not accepted, in the answer's `results`.
#[derive(Debug, Serialize)]
struct Unaccepted {
    index: usize,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

/// The 200 answer: counts, and the events not accepted.
#[derive(Debug, Serialize)]
pub struct BatchAnswer {
    accepted: usize,
    duplicate: usize,
    rejected: usize,
    results: Vec<Unaccepted>,
}

impl IntoResponse for BatchAnswer {
    fn into_response(self) -> Response {
        (StatusCode::OK, axum::Json(self)).into_response()
    }
}

/// Reads, decodes, parses and submits a batch; the answer or the whole request's error.
pub(crate) async fn ingest_batch<B: EventBody>(
    app: &AppState,
    headers: &HeaderMap,
    body: B,
) -> Result<BatchAnswer, ApiError> {
    let framing = framing(headers)?;
    let gzip = is_gzip(headers)?;
    let limits = &app.config.front_door;
    let limit_bytes = limits.batch_max_bytes;
    if announced_length(headers).is_some_and(|length| length > limit_bytes as u64) {
        return Err(ApiError::BodyTooLarge);
    }
    let mut bytes = read_body(body, limit_bytes, limits.body_timeout()).await?;
    if gzip {
        bytes = gunzip(&bytes, limit_bytes)?;
    }
    let parsed = match framing {
        Framing::Lines => split_lines(&bytes),
        Framing::Array => split_array(&bytes)?,
    };
    let max_events = limits
        .batch_max_events
        .min(app.engine.batch_capacity_events().max(1));
    if parsed.len() > max_events {
        return Err(ApiError::BatchTooLarge(format!(
            "{} events; at most {max_events} fit in one batch (batch_max_events {}, queue \
             capacity {}, all-or-nothing bound {})",
            parsed.len(),
            limits.batch_max_events,
            app.engine.queue_capacity_events(),
            app.engine.batch_capacity_events()
        )));
    }
    submit(app, parsed).await
}

/// Submits the valid events as one batch and answers for every event.
async fn submit(
    app: &AppState,
    parsed: Vec<Result<Event, EventError>>,
) -> Result<BatchAnswer, ApiError> {
    let mut results = Vec::new();
    let mut events = Vec::with_capacity(parsed.len());
    let mut indices = Vec::with_capacity(parsed.len());
    for (index, event) in parsed.into_iter().enumerate() {
        match event {
            Ok(event) => {
                events.push(event);
                indices.push(index);
            }
            Err(error) => {
                app.engine.record_invalid(error.reason());
                results.push(Unaccepted {
                    index,
                    status: "rejected",
                    reason: Some(error.reason()),
                    detail: Some(error.to_string()),
                });
            }
        }
    }
    let outcomes = app
        .engine
        .submit_batch(events)
        .await
        .map_err(ApiError::from)?;
    let mut answer = BatchAnswer {
        accepted: 0,
        duplicate: 0,
        rejected: results.len(),
        results,
    };
    for (index, outcome) in indices.into_iter().zip(outcomes) {
        answer.count(index, outcome, app);
    }
    answer.results.sort_unstable_by_key(|result| result.index);
    Ok(answer)
}

impl BatchAnswer {
    fn count(&mut self, index: usize, outcome: EventOutcome, app: &AppState) {
        match outcome {
            Ok(Ingested::Duplicate) => {
                self.duplicate += 1;
                self.results.push(Unaccepted {
                    index,
                    status: "duplicate",
                    reason: None,
                    detail: None,
                });
            }
            Ok(_) => self.accepted += 1,
            Err(rejected) => {
                self.rejected += 1;
                if matches!(rejected, Rejected::IdConflict(_)) {
                    app.engine.record_invalid(rejected.reason());
                }
                self.results.push(Unaccepted {
                    index,
                    status: "rejected",
                    reason: Some(rejected.reason()),
                    detail: Some(rejected.to_string()),
                });
            }
        }
    }
}

/// `application/x-ndjson` is lines; `application/json`, `+json` or none is an array; anything
/// else is 415.
fn framing(headers: &HeaderMap) -> Result<Framing, ApiError> {
    let Some(essence) = crate::routes::media_type(headers)? else {
        return Ok(Framing::Array);
    };
    if essence.eq_ignore_ascii_case("application/x-ndjson") {
        Ok(Framing::Lines)
    } else if crate::routes::is_json_media_type(essence) {
        Ok(Framing::Array)
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// `Content-Encoding`: none, `identity` or `gzip`; anything else is 415.
fn is_gzip(headers: &HeaderMap) -> Result<bool, ApiError> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(false);
    };
    match value.to_str().map(str::trim) {
        Ok(coding) if coding.eq_ignore_ascii_case("gzip") => Ok(true),
        Ok(coding) if coding.eq_ignore_ascii_case("identity") => Ok(false),
        _ => Err(ApiError::UnsupportedMediaType),
    }
}

/// Decompresses a gzip body, refusing (413) output past `limit_bytes`: the reader stops one
/// byte past the limit, so a zip bomb never takes more memory than the limit.
fn gunzip(compressed: &[u8], limit_bytes: usize) -> Result<Bytes, ApiError> {
    let mut output = Vec::with_capacity(compressed.len().saturating_mul(4).min(limit_bytes));
    flate2::read::GzDecoder::new(compressed)
        .take(limit_bytes as u64 + 1)
        .read_to_end(&mut output)
        .map_err(|error| ApiError::BodyRead(format!("the gzip body cannot be decoded: {error}")))?;
    if output.len() > limit_bytes {
        return Err(ApiError::BodyTooLarge);
    }
    Ok(Bytes::from(output))
}

/// NDJSON: one event per non-blank line (a `\r` before the `\n` is allowed).
fn split_lines(body: &[u8]) -> Vec<Result<Event, EventError>> {
    body.split(|&byte| byte == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .map(parse_event)
        .collect()
}

/// A JSON array of events: the whole must be well-formed JSON (else 400 `invalid_json`); each
/// element is then validated on its own.
fn split_array(body: &[u8]) -> Result<Vec<Result<Event, EventError>>, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|error| ApiError::InvalidJson(format!("invalid UTF-8: {error}")))?;
    let elements: Vec<&RawValue> = serde_json::from_str(text).map_err(|error| {
        ApiError::InvalidJson(format!(
            "a batch must be a JSON array of events (or NDJSON with Content-Type \
             application/x-ndjson): {error}"
        ))
    })?;
    Ok(elements
        .into_iter()
        .map(|element| parse_event(element.get().as_bytes()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_their_index_and_blank_lines_are_skipped() {
        // Proves NDJSON splitting: CRLF allowed, blank lines skipped, a bad line is an error
        // at its own index while its neighbours parse.
        let body =
            b"{\"user\":\"a\",\"amount\":1}\r\n\n{\"user\":\n{\"user\":\"b\",\"amount\":2}\n";
        let parsed = split_lines(body);
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[0], Ok(Event::new("a", 1)));
        assert!(parsed[1].as_ref().is_err_and(EventError::is_malformed_json));
        assert_eq!(parsed[2], Ok(Event::new("b", 2)));
    }

    #[test]
    fn a_zip_bomb_stops_at_the_limit() {
        // Proves the limit applies after decompression: 10 MB of zeros compress to ~10 KB but
        // are refused 413 at a 1 MB limit; a small body decompresses exactly.
        use std::io::Write as _;
        let compress = |data: &[u8]| {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            encoder.write_all(data).expect("in memory");
            encoder.finish().expect("in memory")
        };
        let bomb = compress(&vec![0_u8; 10_000_000]);
        assert!(bomb.len() < 100_000, "{}", bomb.len());
        assert!(matches!(
            gunzip(&bomb, 1_000_000),
            Err(ApiError::BodyTooLarge)
        ));
        let small = compress(b"{\"user\":\"a\",\"amount\":1}");
        assert_eq!(
            gunzip(&small, 1_000_000).expect("fits").as_ref(),
            b"{\"user\":\"a\",\"amount\":1}"
        );
        assert!(matches!(
            gunzip(b"not gzip", 1_000),
            Err(ApiError::BodyRead(_))
        ));
    }
}
