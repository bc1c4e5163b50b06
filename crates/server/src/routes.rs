//! The HTTP routes: where a request becomes an engine call and the answer becomes JSON.
//!
//! Lesson: stage 3 (read the whole body, bounded; validate at the boundary), stage 5 (the
//! handler only reads, validates and admits: it never waits for room in the queue, a full
//! queue is a 503 at once) and issue 5 (health, readiness and metrics for operators).
//! Invariant: a body is read under both a size limit and a time limit before it is parsed, and
//! every failure goes through [`ApiError`], the one place that maps errors to responses.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use floodgate_core::config::ProcessingMode;
use floodgate_core::engine::{Engine, Ingested};
use floodgate_core::event::parse_event;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use serde_json::json;

use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::metrics::ServerMetrics;

/// Largest page of `GET /balances` (the contract's `limit ≤ 1000`): bounds one response.
pub const BALANCES_PAGE_MAX: usize = 1000;
/// Page size of `GET /balances` when `limit` is not given.
pub const BALANCES_PAGE_DEFAULT: usize = 100;

/// Everything a handler needs; one per server.
#[derive(Debug)]
pub struct AppState {
    /// The engine behind the front door.
    pub engine: Engine,
    /// The configuration the server runs with.
    pub config: ServerConfig,
    /// Front-door metrics (the engine's own are read from it at scrape time).
    pub metrics: Arc<ServerMetrics>,
    /// Set when a graceful stop starts: `/readyz` turns 503 before the engine drains.
    pub draining: AtomicBool,
}

/// The router of the HTTP contract.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/events", post(post_event))
        .route("/balances", get(list_balances))
        .route("/balances/{user}", get(get_balance))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
}

/// `POST /events`: read (bounded), parse, admit; latency recorded by outcome.
async fn post_event(State(app): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let result = ingest(&app, &headers, body).await;
    let outcome = match &result {
        Ok(_) => "accepted",
        Err(error) => {
            if error.is_invalid_input() {
                app.engine.record_invalid(error.reason());
            }
            error.outcome()
        }
    };
    app.metrics
        .observe_request(outcome, started.elapsed().as_secs_f64());
    match result {
        Ok(ingested) => ingested.into_response(),
        Err(error) => error.into_response(),
    }
}

async fn ingest(app: &AppState, headers: &HeaderMap, body: Body) -> Result<Accepted, ApiError> {
    check_content_type(headers)?;
    let limits = &app.config.front_door;
    if announced_length(headers).is_some_and(|length| length > limits.body_limit_bytes as u64) {
        return Err(ApiError::BodyTooLarge); // refused before reading a byte of it
    }
    let bytes = read_body(body, limits.body_limit_bytes, limits.body_timeout()).await?;
    let event = parse_event(&bytes)?;
    Ok(Accepted(app.engine.ingest(event).await?))
}

/// A missing content type is accepted as JSON; a present one must be `application/json` or
/// `application/<something>+json` (parameters such as `charset` ignored).
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = value
        .to_str()
        .map_err(|_| ApiError::UnsupportedMediaType)?
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let is_json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// The `Content-Length` the client announced (hyper has already refused malformed ones).
fn announced_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Reads the whole body, refusing it past `limit_bytes` (413) or `timeout` (408).
async fn read_body(
    body: Body,
    limit_bytes: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, ApiError> {
    let collect = Limited::new(body, limit_bytes).collect();
    match tokio::time::timeout(timeout, collect).await {
        Err(_elapsed) => Err(ApiError::BodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::BodyTooLarge)
        }
        Ok(Err(error)) => Err(ApiError::BodyRead(error.to_string())),
    }
}

/// The 202 answer; in inline mode it carries the balance just applied.
struct Accepted(Ingested);

impl IntoResponse for Accepted {
    fn into_response(self) -> Response {
        let body = match self.0 {
            Ingested::Applied { balance } => json!({"status": "accepted", "balance": balance}),
            Ingested::Queued | Ingested::Validated => json!({"status": "accepted"}),
        };
        (StatusCode::ACCEPTED, Json(body)).into_response()
    }
}

/// `GET /balances/{user}`.
async fn get_balance(
    State(app): State<Arc<AppState>>,
    Path(user): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let balance = app.engine.balance(&user).ok_or(ApiError::UnknownUser)?;
    Ok(Json(json!({"user": user, "balance": balance})))
}

/// Query of `GET /balances`: a cursor (`after`, exclusive) and a page size.
#[derive(Debug, Deserialize)]
struct PageQuery {
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /balances?after=<user>&limit=<n>`: one page sorted by user; `next` is the cursor of
/// the following page, `null` on the last one. `limit` is clamped to 1..=1000.
async fn list_balances(
    State(app): State<Arc<AppState>>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::InvalidQuery(rejection.body_text()))?;
    let limit = query
        .limit
        .unwrap_or(BALANCES_PAGE_DEFAULT)
        .clamp(1, BALANCES_PAGE_MAX);
    // One extra row tells whether another page follows.
    let mut rows = app.engine.balances(query.after.as_deref(), limit + 1);
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more {
        rows.last().map(|(user, _)| user.clone())
    } else {
        None
    };
    let balances: Vec<_> = rows
        .into_iter()
        .map(|(user, balance)| json!({"user": user, "balance": balance}))
        .collect();
    Ok(Json(json!({"balances": balances, "next": next})))
}

/// `GET /stats`: the engine's statistics.
async fn stats(State(app): State<Arc<AppState>>) -> Response {
    Json(app.engine.stats()).into_response()
}

/// `GET /metrics`: Prometheus text exposition.
async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    match app.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(error) => {
            tracing::error!(%error, "metrics encoding failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// `GET /healthz`: the process is alive and serving HTTP.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 503 while draining or while the queue is above its high-water mark.
async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    let not_ready = |reason: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": reason})),
        )
            .into_response()
    };
    if app.draining.load(Ordering::SeqCst) || app.engine.is_draining() {
        return not_ready("draining");
    }
    let engine = &app.config.engine;
    if engine.mode == ProcessingMode::Queued {
        let high_water = engine.queue_capacity_events
            * usize::from(app.config.front_door.ready_high_water_percent)
            / 100;
        if app.engine.queue_depth() > high_water {
            return not_ready("queue_high_water");
        }
    }
    Json(json!({"status": "ready"})).into_response()
}
