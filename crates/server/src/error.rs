//! The one place where a failed request becomes an HTTP response.
//!
//! Lesson: stage 3 (docs/stages.md): correctness at the boundary. Every way a request can fail has
//! one variant here, one status, one stable machine-readable `reason`, and (for bad input) a
//! human `detail`; stage 5's backpressure answers 503 with `Retry-After` at once.
//! Invariant: handlers return `Result<_, ApiError>` and never build an error response by hand,
//! so the HTTP contract table in the README is this file's `status`/`reason` match.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use floodgate_core::engine::Rejected;
use floodgate_core::event::EventError;
use serde_json::json;

/// What became of a `POST /events`: the `outcome` label of the latency histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Answered 202: admitted (queued, or applied inline).
    Accepted,
    /// Refused on purpose: queue full, draining, ledger full, storage failed, disk full
    /// (503, 507).
    Rejected,
    /// Bad input: not JSON, not a valid event, too large, wrong content type (4xx).
    Invalid,
    /// Applying the event would overflow the balance (422 `balance_overflow`).
    Overflowed,
    /// The transfer itself failed: the body timed out or could not be read.
    Error,
}

impl Outcome {
    /// Every outcome, in the order the metrics list them.
    pub const ALL: [Self; 5] = [
        Self::Accepted,
        Self::Rejected,
        Self::Invalid,
        Self::Overflowed,
        Self::Error,
    ];

    /// The label value in `/metrics`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Rejected => "rejected",
            Self::Invalid => "invalid",
            Self::Overflowed => "overflowed",
            Self::Error => "error",
        }
    }

    /// Position in [`Outcome::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// Seconds a client is told to wait (`Retry-After`) after `queue_full`: the queue drains in
/// well under a second at production rates, and one second is the smallest whole value.
pub const RETRY_AFTER_SECONDS: u32 = 1;

/// Every way a request can fail, each with its status and reason.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON, is cut short, or nests too deep (400 `invalid_json`).
    #[error("{0}")]
    InvalidJson(String),
    /// The body is JSON but not a valid event (422 with the event error's reason).
    #[error("{detail}")]
    InvalidEvent {
        /// `missing_field`, `invalid_amount`, `invalid_user`, `not_an_object`, `unknown_field`.
        reason: &'static str,
        /// What exactly was wrong, for humans.
        detail: String,
    },
    /// The body is larger than the configured limit (413 `body_too_large`).
    #[error("request body over the limit")]
    BodyTooLarge,
    /// A content type is present and is not JSON (415 `unsupported_media_type`).
    #[error("content type is not JSON")]
    UnsupportedMediaType,
    /// The body did not arrive within the body timeout (408 `body_timeout`, connection closed).
    #[error("request body not received in time")]
    BodyTimeout,
    /// The body could not be read (bad chunked encoding, connection cut) (400 `invalid_body`).
    #[error("request body could not be read: {0}")]
    BodyRead(String),
    /// The queue is full: answered at once (503 `queue_full`, `Retry-After`).
    #[error("queue full")]
    QueueFull,
    /// The server is shutting down (503 `draining`).
    #[error("draining")]
    Draining,
    /// Cluster mode: NATS JetStream did not acknowledge the event in time, or a partition's
    /// owner did not answer a read (503 `cluster_unreachable`, `Retry-After`). The event may
    /// have been stored: a retry with the same id is applied once.
    #[error("the cluster did not answer")]
    ClusterUnreachable,
    /// Cluster mode: the user's partition has no owner right now, it is moving to another node
    /// (503 `partition_moving`, `Retry-After`): read again shortly.
    #[error("the user's partition is moving to another node")]
    PartitionMoving,
    /// A new user while the ledger holds `max_users` users (507 `ledger_full`, no
    /// `Retry-After`: not transient; known users are still accepted).
    #[error("ledger full: no room for a new user")]
    LedgerFull,
    /// The log's storage failed (503 `storage_failed`): nothing more is accepted until the
    /// server restarts and recovers from its data directory.
    #[error("storage failed")]
    StorageFailed,
    /// A worker panicked (503 `worker_failed`): nothing more is accepted, and the server stops
    /// and exits non-zero once the requests in flight are answered.
    #[error("a worker failed: the server is stopping")]
    WorkerFailed,
    /// The disk is full (507 `disk_full`, `Retry-After`): this event was not accepted; events
    /// are accepted again once space returns.
    #[error("disk full")]
    DiskFull,
    /// The event's id was already used, within the dedup window, with another user or amount
    /// (422 `id_conflict`; `detail` names the field): nothing applied.
    #[error("the id was already used with a different `{field}`")]
    IdConflict {
        /// `user` or `amount`.
        field: &'static str,
    },
    /// A batch with more events than `batch_max_events` or than the queue can ever hold (413
    /// `batch_too_large`): split it.
    #[error("{0}")]
    BatchTooLarge(String),
    /// The body's `id` and the `Idempotency-Key` header differ (400 `id_mismatch`).
    #[error("the `id` field ({body}) and the Idempotency-Key header ({header}) differ")]
    IdMismatch {
        /// The body's id.
        body: String,
        /// The header's id.
        header: String,
    },
    /// Applying the event would overflow the balance (422 `balance_overflow`, not applied).
    #[error("balance would overflow")]
    BalanceOverflow,
    /// No balance was ever recorded for this user (404 `unknown_user`).
    #[error("unknown user")]
    UnknownUser,
    /// A query string that does not parse (400 `invalid_query`).
    #[error("{0}")]
    InvalidQuery(String),
    /// A path segment that does not decode (e.g. `%ff`, not UTF-8) (400 `invalid_path`).
    #[error("{0}")]
    InvalidPath(String),
    /// HTTP/1.1 without a `Host` header, or any request with more than one (RFC 9112 §3.2:
    /// 400 `invalid_host`, connection closed: a framing disagreement is how smuggling starts).
    #[error("{0}")]
    InvalidHost(&'static str),
    /// A `Transfer-Encoding` other than one `chunked` (`gzip, chunked`, `chunked, chunked`, two
    /// header lines): RFC 9112 §6.1, 501 `unsupported_transfer_encoding`, connection closed
    /// (the body's framing is what a smuggler and this server would disagree on).
    #[error("{0}")]
    UnsupportedTransferEncoding(&'static str),
    /// No route matches (404 `not_found`).
    #[error("no such route")]
    NotFound,
    /// The route exists but not with this method (405 `method_not_allowed`).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Tokens are required and the request has none, or one nobody issued (401
    /// `unauthorized`, `WWW-Authenticate: Bearer`).
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// The token is valid but lacks the route's scope (403 `forbidden`).
    #[error("the token does not have this route's scope")]
    Forbidden,
    /// The token posted more than its rate limit allows (429 `rate_limited`, `Retry-After`
    /// in whole seconds until its next event would be admitted).
    #[error("rate limit exceeded")]
    RateLimited {
        /// When to try again, in whole seconds (at least 1).
        retry_after_seconds: u64,
    },
}

impl From<EventError> for ApiError {
    fn from(error: EventError) -> Self {
        if error.is_malformed_json() {
            Self::InvalidJson(error.to_string())
        } else {
            Self::InvalidEvent {
                reason: error.reason(),
                detail: error.to_string(),
            }
        }
    }
}

impl From<Rejected> for ApiError {
    fn from(rejected: Rejected) -> Self {
        match rejected {
            Rejected::QueueFull => Self::QueueFull,
            Rejected::Draining => Self::Draining,
            Rejected::Overflow => Self::BalanceOverflow,
            Rejected::LedgerFull => Self::LedgerFull,
            Rejected::StorageFailed => Self::StorageFailed,
            Rejected::WorkerFailed => Self::WorkerFailed,
            Rejected::DiskFull => Self::DiskFull,
            Rejected::IdConflict(field) => Self::IdConflict {
                field: field.name(),
            },
            Rejected::Unreachable => Self::ClusterUnreachable,
        }
    }
}

impl ApiError {
    /// One error of every kind the server can answer: each variant once, and one
    /// [`ApiError::InvalidEvent`] per event error that is not malformed JSON. The OpenAPI
    /// document's test derives every status, reason and header from this list.
    /// [`Self::variant_index`] has no wildcard, so a new variant does not compile until it has
    /// an index, and the test of this list fails until it is listed here.
    pub fn one_of_each() -> Vec<ApiError> {
        let mut all = vec![
            Self::InvalidJson(String::new()),
            Self::BodyTooLarge,
            Self::UnsupportedMediaType,
            Self::BodyTimeout,
            Self::BodyRead(String::new()),
            Self::QueueFull,
            Self::Draining,
            Self::LedgerFull,
            Self::StorageFailed,
            Self::WorkerFailed,
            Self::DiskFull,
            Self::Unauthorized,
            Self::Forbidden,
            Self::RateLimited {
                retry_after_seconds: 1,
            },
            Self::BalanceOverflow,
            Self::UnknownUser,
            Self::InvalidQuery(String::new()),
            Self::InvalidPath(String::new()),
            Self::InvalidHost(""),
            Self::NotFound,
            Self::MethodNotAllowed,
            Self::IdConflict { field: "amount" },
            Self::IdMismatch {
                body: String::new(),
                header: String::new(),
            },
            Self::BatchTooLarge(String::new()),
            Self::UnsupportedTransferEncoding(""),
            Self::ClusterUnreachable,
            Self::PartitionMoving,
        ];
        all.extend(
            EventError::one_of_each()
                .into_iter()
                .filter(|error| !error.is_malformed_json())
                .map(Self::from),
        );
        all
    }

    /// The variant's index (every [`ApiError::InvalidEvent`] shares one).
    pub fn variant_index(&self) -> usize {
        match self {
            Self::InvalidJson(_) => 0,
            Self::InvalidEvent { .. } => 1,
            Self::BodyTooLarge => 2,
            Self::UnsupportedMediaType => 3,
            Self::BodyTimeout => 4,
            Self::BodyRead(_) => 5,
            Self::QueueFull => 6,
            Self::Draining => 7,
            Self::LedgerFull => 8,
            Self::BalanceOverflow => 9,
            Self::UnknownUser => 10,
            Self::InvalidQuery(_) => 11,
            Self::InvalidPath(_) => 12,
            Self::InvalidHost(_) => 13,
            Self::NotFound => 14,
            Self::MethodNotAllowed => 15,
            Self::StorageFailed => 16,
            Self::DiskFull => 17,
            Self::Unauthorized => 18,
            Self::Forbidden => 19,
            Self::RateLimited { .. } => 20,
            Self::IdConflict { .. } => 21,
            Self::IdMismatch { .. } => 22,
            Self::BatchTooLarge(_) => 23,
            Self::WorkerFailed => 24,
            Self::UnsupportedTransferEncoding(_) => 25,
            Self::ClusterUnreachable => 26,
            Self::PartitionMoving => 27,
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidJson(_)
            | Self::BodyRead(_)
            | Self::InvalidQuery(_)
            | Self::InvalidPath(_)
            | Self::InvalidHost(_)
            | Self::IdMismatch { .. } => StatusCode::BAD_REQUEST,
            Self::InvalidEvent { .. } | Self::BalanceOverflow | Self::IdConflict { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::BodyTooLarge | Self::BatchTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::QueueFull
            | Self::Draining
            | Self::StorageFailed
            | Self::WorkerFailed
            | Self::ClusterUnreachable
            | Self::PartitionMoving => StatusCode::SERVICE_UNAVAILABLE,
            Self::LedgerFull | Self::DiskFull => StatusCode::INSUFFICIENT_STORAGE,
            Self::UnknownUser | Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::UnsupportedTransferEncoding(_) => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// The stable machine-readable reason (the `reason` field of the body).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid_json",
            Self::InvalidEvent { reason, .. } => reason,
            Self::BodyTooLarge => "body_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::BodyTimeout => "body_timeout",
            Self::BodyRead(_) => "invalid_body",
            Self::QueueFull => "queue_full",
            Self::Draining => "draining",
            Self::LedgerFull => "ledger_full",
            Self::StorageFailed => "storage_failed",
            Self::WorkerFailed => "worker_failed",
            Self::DiskFull => "disk_full",
            Self::BalanceOverflow => "balance_overflow",
            Self::IdConflict { .. } => "id_conflict",
            Self::IdMismatch { .. } => "id_mismatch",
            Self::BatchTooLarge(_) => "batch_too_large",
            Self::UnknownUser => "unknown_user",
            Self::InvalidQuery(_) => "invalid_query",
            Self::InvalidPath(_) => "invalid_path",
            Self::InvalidHost(_) => "invalid_host",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::RateLimited { .. } => "rate_limited",
            Self::UnsupportedTransferEncoding(_) => "unsupported_transfer_encoding",
            Self::ClusterUnreachable => "cluster_unreachable",
            Self::PartitionMoving => "partition_moving",
        }
    }

    /// The request's outcome (never [`Outcome::Accepted`]): `rejected` (backpressure),
    /// `overflowed` (the balance would overflow), `invalid` (the client's input), or `error`
    /// (the transfer itself failed).
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::QueueFull
            | Self::Draining
            | Self::LedgerFull
            | Self::StorageFailed
            | Self::WorkerFailed
            | Self::DiskFull
            | Self::ClusterUnreachable
            | Self::PartitionMoving
            | Self::RateLimited { .. } => Outcome::Rejected,
            Self::BodyTimeout | Self::BodyRead(_) => Outcome::Error,
            Self::BalanceOverflow => Outcome::Overflowed,
            _ => Outcome::Invalid,
        }
    }

    /// Whether this is bad input the engine should count as `invalid` (by reason).
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Self::InvalidJson(_)
                | Self::InvalidEvent { .. }
                | Self::IdConflict { .. }
                | Self::IdMismatch { .. }
                | Self::BatchTooLarge(_)
                | Self::BodyTooLarge
                | Self::UnsupportedMediaType
                | Self::BodyRead(_)
                | Self::BodyTimeout
        )
    }

    fn body(&self) -> serde_json::Value {
        let status = if self.outcome() == Outcome::Rejected {
            "rejected"
        } else {
            "error"
        };
        match self {
            Self::InvalidJson(detail)
            | Self::InvalidEvent { detail, .. }
            | Self::BodyRead(detail)
            | Self::InvalidQuery(detail)
            | Self::InvalidPath(detail)
            | Self::BatchTooLarge(detail) => {
                json!({"status": status, "reason": self.reason(), "detail": detail})
            }
            Self::InvalidHost(detail) | Self::UnsupportedTransferEncoding(detail) => {
                json!({"status": status, "reason": self.reason(), "detail": detail})
            }
            Self::IdConflict { .. } | Self::IdMismatch { .. } => {
                json!({"status": status, "reason": self.reason(), "detail": self.to_string()})
            }
            _ => json!({"status": status, "reason": self.reason()}),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), Json(self.body())).into_response();
        let headers = response.headers_mut();
        match self {
            Self::QueueFull | Self::DiskFull | Self::ClusterUnreachable | Self::PartitionMoving => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
            }
            Self::RateLimited {
                retry_after_seconds,
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_seconds));
            }
            Self::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // The rest of the body may still be on the wire: the connection cannot be reused.
            Self::BodyTimeout
            | Self::BodyTooLarge
            | Self::BodyRead(_)
            | Self::InvalidHost(_)
            | Self::UnsupportedTransferEncoding(_) => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the backpressure answer carries Retry-After and the contract's status and reason.
    #[test]
    fn queue_full_is_503_with_retry_after() {
        let response = ApiError::QueueFull.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from_static("1"))
        );
    }

    // Proves each contract row's status: a change here must be a deliberate contract change.
    #[test]
    fn statuses_match_the_contract() {
        let cases = [
            (ApiError::InvalidJson(String::new()), 400, "invalid_json"),
            (ApiError::BodyTooLarge, 413, "body_too_large"),
            (
                ApiError::UnsupportedMediaType,
                415,
                "unsupported_media_type",
            ),
            (ApiError::Draining, 503, "draining"),
            (ApiError::LedgerFull, 507, "ledger_full"),
            (ApiError::BalanceOverflow, 422, "balance_overflow"),
            (ApiError::UnknownUser, 404, "unknown_user"),
            (ApiError::BodyTimeout, 408, "body_timeout"),
            (ApiError::InvalidPath(String::new()), 400, "invalid_path"),
            (ApiError::InvalidHost(""), 400, "invalid_host"),
            (
                ApiError::UnsupportedTransferEncoding(""),
                501,
                "unsupported_transfer_encoding",
            ),
            (ApiError::Unauthorized, 401, "unauthorized"),
            (ApiError::Forbidden, 403, "forbidden"),
            (
                ApiError::RateLimited {
                    retry_after_seconds: 2,
                },
                429,
                "rate_limited",
            ),
            (ApiError::IdConflict { field: "user" }, 422, "id_conflict"),
            (
                ApiError::IdMismatch {
                    body: "a".into(),
                    header: "b".into(),
                },
                400,
                "id_mismatch",
            ),
        ];
        for (error, status, reason) in cases {
            assert_eq!(error.status().as_u16(), status, "{reason}");
            assert_eq!(error.reason(), reason);
        }
    }

    // Proves the list of kinds has no gap: the variant indices listed are exactly 0..n, so a
    // variant given an index below the largest but not listed fails here.
    #[test]
    fn one_of_each_covers_every_variant() {
        let mut indices: Vec<usize> = ApiError::one_of_each()
            .iter()
            .map(ApiError::variant_index)
            .collect();
        indices.sort_unstable();
        indices.dedup();
        assert_eq!(indices, (0..indices.len()).collect::<Vec<_>>());
    }

    // Proves every error's outcome label is one the latency histogram was created with (an
    // unknown label would be dropped from the metrics).
    #[test]
    fn every_outcome_has_a_histogram() {
        for error in ApiError::one_of_each() {
            assert!(
                Outcome::ALL[error.outcome().index()] == error.outcome(),
                "{error:?}"
            );
        }
    }

    // Proves the README's HTTP contract table and the code agree: every error's reason is in a
    // row of the table that also names its status code (in the status column, or as
    // "400 `reason`" in the row's text).
    #[test]
    fn the_readme_lists_every_error_with_its_status() {
        let readme = include_str!("../../../README.md");
        for error in ApiError::one_of_each() {
            let reason = error.reason();
            let status = error.status().as_u16().to_string();
            assert!(
                readme.lines().any(|row| row.starts_with('|')
                    && row.contains(reason)
                    && (row.contains(&format!("{status} `{reason}`"))
                        || row
                            .split(" | ")
                            .any(|cell| cell.split(" / ").any(|code| code.trim() == status)))),
                "README contract table lacks {reason} with status {status}"
            );
        }
    }
}
