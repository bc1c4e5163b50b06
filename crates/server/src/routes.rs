//! The HTTP routes: where a request becomes an engine call and the answer becomes JSON.
//!
//! Lesson (docs/stages.md): stage 3 (read the whole body, bounded; validate at the boundary), stage
//! 5 (the handler only reads, validates and admits: it never waits for room in the queue, a full
//! queue is a 503 at once) and operations (health, readiness and metrics for operators).
//! Invariant: every request passes the access gate ([`crate::auth::Access::check`]) before
//! any route runs; a body is read under both a size limit and a time limit before it is
//! parsed, and every failure goes through [`ApiError`], the one place that maps errors to
//! responses.

use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use axum::BoxError;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use axum::{Json, Router};
use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::prelude::BASE64_URL_SAFE_NO_PAD;
use bytes::Bytes;
use floodgate_cluster::{Node, ReadError};
use floodgate_core::config::ProcessingMode;
use floodgate_core::engine::{Engine, Ingested};
use floodgate_core::event::{Event, EventError, EventId, parse_event};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;
use tower::ServiceExt;

use crate::auth::Access;
use crate::config::ServerConfig;
use crate::error::{ApiError, Outcome};
use crate::metrics::ServerMetrics;
use crate::shutdown::StopSignal;

/// Largest page of `GET /balances` (the contract's `limit ≤ 1000`): bounds one response.
pub const BALANCES_PAGE_MAX: usize = 1000;
/// Page size of `GET /balances` when `limit` is not given.
pub const BALANCES_PAGE_DEFAULT: usize = 100;

/// Everything a handler needs; one per server.
#[derive(Debug)]
pub struct AppState {
    /// The engine behind the front door (a cluster node's forwards to the stream).
    pub engine: Engine,
    /// The cluster node, with `--nats`: reads go to the partition's owner.
    pub cluster: Option<Arc<Node>>,
    /// The configuration the server runs with.
    pub config: ServerConfig,
    /// Front-door metrics (the engine's own are read from it at scrape time).
    pub metrics: Arc<ServerMetrics>,
    /// Who may do what: tokens and rate limits.
    pub access: Arc<Access>,
    /// Raised when a graceful stop starts: `/readyz` turns 503 before the engine drains, and
    /// connections stop accepting requests.
    pub(crate) stop: StopSignal,
}

/// The front door's request handler: `POST /events` straight to its handler, every other
/// request through the axum [`Router`] of the whole contract.
///
/// Why two ways in: `POST /events` is the hot path, and axum's routing (path matching, a clone
/// of the boxed route service, extractors) was a large share of the per-request work that
/// bare hyper does not do: skipping it moved the ingest ratio to bare hyper under wrk from
/// 0.81 to 0.88 (with the content-type check made allocation-free in the same step). The
/// handler is the function the router calls for that route; the router keeps the route, so it
/// still answers every other method and path (405, 404).
#[derive(Debug)]
pub struct Routes {
    app: Arc<AppState>,
    router: Router,
    /// Whether `POST /events` is served (not on the admin listener).
    ingest: bool,
}

impl Routes {
    /// The handler of the main listener: the whole contract.
    pub fn new(app: Arc<AppState>) -> Self {
        let router = router(Arc::clone(&app));
        Self {
            app,
            router,
            ingest: true,
        }
    }

    /// The handler of the admin listener: `/metrics`, `/stats`, `/healthz`, `/readyz` only.
    pub fn admin(app: Arc<AppState>) -> Self {
        let router = admin_router(Arc::clone(&app));
        Self {
            app,
            router,
            ingest: false,
        }
    }

    /// Answers one request: the access gate first, then the route.
    pub async fn handle(&self, request: hyper::Request<Incoming>) -> Response {
        if let Err(error) =
            check_transfer_encoding(request.headers()).and_then(|()| check_host(&request))
        {
            return error.into_response();
        }
        let app = &self.app;
        let (method, path) = (request.method(), request.uri().path());
        if let Err(refused) = app
            .access
            .check(method, path, request.headers(), &app.metrics)
        {
            return refused.into_response();
        }
        if self.ingest && method == Method::POST && path == "/events" {
            return post_event(app, request).await;
        }
        match self.router.clone().oneshot(request.map(Body::new)).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request must carry exactly one `Host`, and no request may
/// carry two (hyper accepts both). A proxy and this server that disagree on which Host counts
/// disagree on what the request is.
fn check_host<B>(request: &hyper::Request<B>) -> Result<(), ApiError> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(ApiError::InvalidHost("more than one Host header")),
        (None, _) if request.version() == hyper::Version::HTTP_11 => {
            Err(ApiError::InvalidHost("HTTP/1.1 requires a Host header"))
        }
        _ => Ok(()),
    }
}

/// RFC 9112 §6.1: the only transfer coding this server decodes is one `chunked`; any other
/// `Transfer-Encoding` is 501 `unsupported_transfer_encoding` and the connection is closed.
///
/// hyper frames a request as chunked whenever the last coding is `chunked` and refuses (400)
/// one whose last coding is anything else, but it accepts `gzip, chunked` (and hands over the
/// gzip bytes undecoded, as if they were the body) and `chunked, chunked` (decoding the chunks
/// once, so the body is still chunk-framed). It keeps every `Transfer-Encoding` line in the
/// headers, so the rule is checked here: exactly one line whose value is `chunked`.
fn check_transfer_encoding(headers: &HeaderMap) -> Result<(), ApiError> {
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (codings.next(), codings.next()) {
        (None, _) => Ok(()),
        (Some(only), None) if is_single_chunked(only.as_bytes()) => Ok(()),
        (Some(_), None) => Err(ApiError::UnsupportedTransferEncoding(
            "only `Transfer-Encoding: chunked`, applied once, is supported",
        )),
        (Some(_), Some(_)) => Err(ApiError::UnsupportedTransferEncoding(
            "more than one Transfer-Encoding header",
        )),
    }
}

/// Whether a `Transfer-Encoding` value is the one coding `chunked` (any letter case, optional
/// whitespace around it).
fn is_single_chunked(value: &[u8]) -> bool {
    value.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

/// Declares [`Route`]: one line per route of the HTTP contract (variant, method, path), so
/// the router and the OpenAPI document's test read the same table.
macro_rules! contract_routes {
    ($($variant:ident => $method:ident $path:literal,)+) => {
        /// Every route the server answers. The router is built from [`Route::ALL`] (a route
        /// not listed here is not served), and a test checks the OpenAPI document against it.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Route {
            $(
                #[doc = concat!("`", stringify!($method), " ", $path, "`")]
                $variant,
            )+
        }

        impl Route {
            /// Every route, in the order of the table.
            pub const ALL: &[Route] = &[$(Route::$variant,)+];

            /// The route's method.
            pub fn method(self) -> Method {
                match self {
                    $(Self::$variant => Method::$method,)+
                }
            }

            /// The route's method, as the router filters it.
            fn method_filter(self) -> MethodFilter {
                match self {
                    $(Self::$variant => MethodFilter::$method,)+
                }
            }

            /// The route's path, in the router's (and OpenAPI's) template syntax.
            pub const fn path(self) -> &'static str {
                match self {
                    $(Self::$variant => $path,)+
                }
            }
        }
    };
}

contract_routes! {
    PostEvents => POST "/events",
    ListBalances => GET "/balances",
    GetBalance => GET "/balances/{user}",
    Stats => GET "/stats",
    Metrics => GET "/metrics",
    Healthz => GET "/healthz",
    Readyz => GET "/readyz",
    OpenApi => GET "/openapi.json",
    PostBatch => POST "/events/batch",
}

impl Route {
    /// The routes the admin listener serves (`--admin-addr`): the operators' routes.
    pub const ADMIN: &[Route] = &[Route::Stats, Route::Metrics, Route::Healthz, Route::Readyz];

    /// The handler of this route, for the method of the table.
    fn handler(self) -> MethodRouter<Arc<AppState>> {
        let method = self.method_filter();
        match self {
            Self::PostEvents => on(
                method,
                |State(app): State<Arc<AppState>>, request: Request| async move {
                    post_event(&app, request).await
                },
            ),
            Self::ListBalances => on(method, list_balances),
            Self::GetBalance => on(method, get_balance),
            Self::Stats => on(method, stats),
            Self::Metrics => on(method, metrics),
            Self::Healthz => on(method, healthz),
            Self::Readyz => on(method, readyz),
            Self::OpenApi => on(method, openapi),
            Self::PostBatch => on(
                method,
                |State(app): State<Arc<AppState>>, request: Request| async move {
                    post_batch(&app, request).await
                },
            ),
        }
    }
}

/// The router of the HTTP contract: every [`Route`], and JSON errors for the rest.
fn router(state: Arc<AppState>) -> Router {
    router_of(Route::ALL, state)
}

/// The router of the admin listener: operators' routes only, everything else 404.
fn admin_router(state: Arc<AppState>) -> Router {
    router_of(Route::ADMIN, state)
}

/// A router serving `routes`, with the contract's JSON 404 and 405 for everything else.
fn router_of(routes: &[Route], state: Arc<AppState>) -> Router {
    routes
        .iter()
        .fold(Router::new(), |router, route| {
            router.route(route.path(), route.handler())
        })
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
}

/// A request body `POST /events` can read: hyper's, or axum's boxed one.
pub(crate) trait EventBody:
    hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send
{
}

impl<B: hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send> EventBody for B {}

/// `POST /events`: read (bounded), parse, admit; latency recorded by outcome. Generic over the
/// body so the direct path reads hyper's body as is (no boxing).
async fn post_event<B: EventBody>(app: &AppState, request: hyper::Request<B>) -> Response {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let result = ingest(app, &parts.headers, body).await;
    answer_ingest(app, started, result)
}

/// `POST /events/batch`: read (bounded, gzip allowed), split, parse per event, admit as a
/// batch; latency recorded by outcome.
async fn post_batch<B: EventBody>(app: &AppState, request: hyper::Request<B>) -> Response {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let result = crate::batch::ingest_batch(app, &parts.headers, body).await;
    answer_ingest(app, started, result)
}

/// The one ending of both ingest routes: an invalid input is counted by its reason, the
/// latency recorded under the outcome, and the result turned into the response.
fn answer_ingest<T: IntoResponse>(
    app: &AppState,
    started: Instant,
    result: Result<T, ApiError>,
) -> Response {
    let outcome = match &result {
        Ok(_) => Outcome::Accepted,
        Err(error) => {
            if error.is_invalid_input() {
                app.engine.record_invalid(error.reason());
            }
            error.outcome()
        }
    };
    app.metrics.observe_request(outcome, started.elapsed());
    match result {
        Ok(answer) => answer.into_response(),
        Err(error) => error.into_response(),
    }
}

async fn ingest<B: EventBody>(
    app: &AppState,
    headers: &HeaderMap,
    body: B,
) -> Result<Accepted, ApiError> {
    check_content_type(headers)?;
    let limits = &app.config.front_door;
    if announced_length(headers).is_some_and(|length| length > limits.body_limit_bytes as u64) {
        return Err(ApiError::BodyTooLarge); // refused before reading a byte of it
    }
    let bytes = read_body(body, limits.body_limit_bytes, limits.body_timeout()).await?;
    let mut event = parse_event(&bytes)?;
    take_idempotency_key(headers, &mut event)?;
    let ingested = app.engine.submit(event).await;
    Ok(Accepted(ingested.map_err(|refused| refused.reason)?))
}

/// The `Idempotency-Key` header: an alias of the body's `id` (same rules, 422 `invalid_id`);
/// both present and different is 400 `id_mismatch`.
fn take_idempotency_key(headers: &HeaderMap, event: &mut Event) -> Result<(), ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(());
    };
    let text = value.to_str().map_err(|_| {
        ApiError::from(EventError::InvalidId(
            "Idempotency-Key must be printable ASCII (0x20 to 0x7E)",
        ))
    })?;
    let key = EventId::parse(text)?;
    match &event.id {
        Some(id) if *id != key => Err(ApiError::IdMismatch {
            body: id.to_string(),
            header: key.to_string(),
        }),
        Some(_) => Ok(()),
        None => {
            event.id = Some(key);
            Ok(())
        }
    }
}

/// The header that carries an event's id on `POST /events`.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The header set on the answer to a duplicate: nothing was applied this time.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// A missing content type is accepted as JSON; a present one must be `application/json` or
/// `application/<something>+json` (parameters such as `charset` ignored).
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    match media_type(headers)? {
        None => Ok(()),
        Some(essence) if is_json_media_type(essence) => Ok(()),
        Some(_) => Err(ApiError::UnsupportedMediaType),
    }
}

/// The request's media type without parameters (`application/json; charset=utf-8` gives
/// `application/json`), `None` when there is no `Content-Type`; one that is not text is 415.
pub(crate) fn media_type(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(None);
    };
    let essence = value
        .to_str()
        .map_err(|_| ApiError::UnsupportedMediaType)?
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    Ok(Some(essence))
}

/// `application/json` or `application/<something>+json`, in any letter case.
pub(crate) fn is_json_media_type(essence: &str) -> bool {
    const TYPE: &str = "application/";
    const SUFFIX: &str = "+json";
    let Some((kind, subtype)) = essence.split_at_checked(TYPE.len()) else {
        return false;
    };
    let suffixed = subtype.len() > SUFFIX.len()
        && subtype
            .get(subtype.len() - SUFFIX.len()..)
            .is_some_and(|end| end.eq_ignore_ascii_case(SUFFIX));
    kind.eq_ignore_ascii_case(TYPE) && (subtype.eq_ignore_ascii_case("json") || suffixed)
}

/// The `Content-Length` the client announced (hyper has already refused malformed ones).
pub(crate) fn announced_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Reads the whole body, refusing it past `limit_bytes` (413) or `timeout` (408).
///
/// The timer is armed only if the body is not complete at the first look: a small event
/// usually arrives with its head, and a timer per request costs a timer-wheel insert and
/// removal (a lock each).
pub(crate) async fn read_body<B: EventBody>(
    body: B,
    limit_bytes: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, ApiError> {
    let mut collect = std::pin::pin!(Limited::new(body, limit_bytes).collect());
    let first_look = std::future::poll_fn(|cx| Poll::Ready(collect.as_mut().poll(cx))).await;
    let collected = match first_look {
        Poll::Ready(collected) => collected,
        Poll::Pending => match tokio::time::timeout(timeout, collect).await {
            Err(_elapsed) => return Err(ApiError::BodyTimeout),
            Ok(collected) => collected,
        },
    };
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::BodyTooLarge)
        }
        Err(error) => Err(ApiError::BodyRead(error.to_string())),
    }
}

/// The 202 answer; in inline mode it carries the balance just applied.
struct Accepted(Ingested);

/// The body of a queued or validated event's 202: the same bytes every time, so not
/// serialized per request.
const ACCEPTED_BODY: &str = r#"{"status":"accepted"}"#;
/// The body of a duplicate's 202.
const DUPLICATE_BODY: &str = r#"{"status":"duplicate"}"#;

/// A 202 with a fixed JSON body.
fn accepted_response(body: &'static str) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::ACCEPTED;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(JSON_CONTENT_TYPE),
    );
    response
}

impl IntoResponse for Accepted {
    fn into_response(self) -> Response {
        match self.0 {
            Ingested::Applied { balance } => (
                StatusCode::ACCEPTED,
                Json(json!({"status": "accepted", "balance": balance})),
            )
                .into_response(),
            Ingested::Queued | Ingested::Validated => accepted_response(ACCEPTED_BODY),
            Ingested::Duplicate => {
                let mut response = accepted_response(DUPLICATE_BODY);
                response
                    .headers_mut()
                    .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
                response
            }
        }
    }
}

/// What axum's `Json` sets, for bodies written by hand.
const JSON_CONTENT_TYPE: &str = "application/json";

/// `GET /balances/{user}`.
async fn get_balance(
    State(app): State<Arc<AppState>>,
    user: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(user) = user.map_err(|rejection| ApiError::InvalidPath(rejection.body_text()))?;
    let balance = match &app.cluster {
        None => app.engine.balance(&user),
        Some(node) => node
            .view()
            .find_balance(&user)
            .await
            .map_err(|error| read_error(&error))?,
    };
    let balance = balance.ok_or(ApiError::UnknownUser)?;
    Ok(Json(json!({"user": user, "balance": balance})))
}

/// The answer to a cluster read that failed: the partition is moving, or its owner (or NATS)
/// did not answer.
fn read_error(error: &ReadError) -> ApiError {
    tracing::debug!(%error, "balance not read");
    match error {
        ReadError::Moving(_) => ApiError::PartitionMoving,
        ReadError::Unreachable { .. } => ApiError::ClusterUnreachable,
    }
}

/// Query of `GET /balances`: a cursor (`after`, exclusive) and a page size.
#[derive(Debug, Deserialize)]
struct PageQuery {
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /balances?after=<cursor>&limit=<n>`: one page sorted by user; `next` is the cursor of
/// the following page, `null` on the last one. The cursor is opaque and URL-safe (base64url,
/// no padding, of the page's last user), so a client pastes it into the next URL as is.
/// `limit` outside 1..=1000 or a cursor that is not base64url is 400 `invalid_query`; any
/// base64url cursor is a position in byte order, whether or not a user has that name.
async fn list_balances(
    State(app): State<Arc<AppState>>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::InvalidQuery(rejection.body_text()))?;
    let limit = query.limit.unwrap_or(BALANCES_PAGE_DEFAULT);
    if !(1..=BALANCES_PAGE_MAX).contains(&limit) {
        let detail = format!("limit must be between 1 and {BALANCES_PAGE_MAX}, got {limit}");
        return Err(ApiError::InvalidQuery(detail));
    }
    let after = query.after.as_deref().map(decode_cursor).transpose()?;
    // One extra row tells whether another page follows.
    let mut rows = match &app.cluster {
        None => app.engine.balances(after.as_deref(), limit + 1),
        Some(node) => node
            .view()
            .page(after.as_deref(), limit + 1)
            .await
            .map_err(|error| read_error(&error))?,
    };
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more {
        rows.last()
            .map(|(user, _)| BASE64_URL_SAFE_NO_PAD.encode(user))
    } else {
        None
    };
    let balances: Vec<_> = rows
        .into_iter()
        .map(|(user, balance)| json!({"user": user, "balance": balance}))
        .collect();
    Ok(Json(json!({"balances": balances, "next": next})))
}

/// Decodes cursors leniently: padding optional, stray trailing bits ignored, so every string of
/// the base64url alphabet whose length is not 1 mod 4 (the pattern the OpenAPI document gives)
/// is a position.
const CURSOR_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The position a `GET /balances` cursor stands for: bytes in user order (a cursor need not
/// name a user, nor be UTF-8, to be a position).
fn decode_cursor(cursor: &str) -> Result<Vec<u8>, ApiError> {
    CURSOR_ENGINE.decode(cursor).map_err(|_| {
        ApiError::InvalidQuery(format!("`after` is not a base64url cursor: {cursor:?}"))
    })
}

/// `GET /stats`: the engine's statistics, and a cluster node's own under `cluster`.
async fn stats(State(app): State<Arc<AppState>>) -> Response {
    let stats = app.engine.stats();
    let Some(node) = &app.cluster else {
        return Json(stats).into_response();
    };
    let mut body = serde_json::to_value(stats).unwrap_or_else(|_| json!({}));
    if let Some(fields) = body.as_object_mut() {
        fields.insert("cluster".to_owned(), crate::cluster::stats(node));
    }
    Json(body).into_response()
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

/// The OpenAPI 3 document of the HTTP contract (the file `crates/server/openapi.json`).
pub const OPENAPI_DOCUMENT: &str = include_str!("../openapi.json");

/// `GET /openapi.json`: the contract, machine-readable, for client authors and API tools.
async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, JSON_CONTENT_TYPE)],
        OPENAPI_DOCUMENT,
    )
        .into_response()
}

/// `GET /healthz`: the process is alive and serving HTTP.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 503 while draining, after a worker or the log's storage failed, while the
/// queue is above its high-water mark, or (cluster node) while its NATS connection is down.
async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    let not_ready = |reason: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": reason})),
        )
            .into_response()
    };
    if let Some(failure) = app.engine.failure() {
        return not_ready(failure.reason());
    }
    if app.stop.is_raised() || app.engine.is_draining() {
        return not_ready("draining");
    }
    if app
        .cluster
        .as_ref()
        .is_some_and(|node| !node.is_connected())
    {
        return not_ready("cluster_unreachable");
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

#[cfg(test)]
mod tests {
    use super::{is_json_media_type, is_single_chunked};

    #[test]
    fn only_one_chunked_coding_is_served() {
        // Proves the 501 rule's core: one `chunked` in any case with outer spaces passes;
        // a list, another coding, or an empty value does not.
        for served in ["chunked", "Chunked", " CHUNKED ", "chunked\t"] {
            assert!(is_single_chunked(served.as_bytes()), "{served:?}");
        }
        for refused in [
            "gzip, chunked",
            "chunked, chunked",
            "chunked,",
            ",chunked",
            "",
            "chunk",
        ] {
            assert!(!is_single_chunked(refused.as_bytes()), "{refused:?}");
        }
    }

    #[test]
    fn json_media_types_in_any_case_and_nothing_else() {
        // Proves the 415 rule without allocating: JSON and +json subtypes in any letter case.
        for accepted in [
            "application/json",
            "Application/JSON",
            "application/cloudevents+json",
            "APPLICATION/LD+JSON",
        ] {
            assert!(is_json_media_type(accepted), "{accepted}");
        }
        for refused in [
            "",
            "text/plain",
            "application/",
            "application/+json",
            "application/jsonx",
            "text/json",
            "applicatio/json",
            "application/json+xml",
            "é",
        ] {
            assert!(!is_json_media_type(refused), "{refused}");
        }
    }
}
