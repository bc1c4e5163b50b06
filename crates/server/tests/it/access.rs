//! Who may do what, over real sockets: scoped bearer tokens (401, 403), their reload, per-token
//! rate limits (429), and the admin listener that answers while the main port is full.

use std::path::PathBuf;

use floodgate_server::{ServerConfig, ServerHandle};
use reqwest::StatusCode;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::support::{client, event_json, raw_exchange, read_response, test_config};

const INGEST: &str = "ingest-token-aaaaaaaaaaaaaaaa";
const READER: &str = "reader-token-bbbbbbbbbbbbbbbb";
const ADMIN: &str = "admin-token-cccccccccccccccccc";
const NOISY: &str = "noisy-token-dddddddddddddddddd";

/// A tokens file in a temporary directory (kept alive by the returned guard).
fn tokens_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tokens");
    std::fs::write(&path, text).expect("write tokens");
    (dir, path)
}

fn standard_tokens() -> String {
    format!(
        "# test tokens\n{INGEST} ingest collector\n{READER} read\n{ADMIN} admin,read ops\n{NOISY} ingest noisy\n"
    )
}

fn with_tokens(path: &std::path::Path) -> ServerConfig {
    let mut config = test_config();
    config.access.auth_tokens_file = Some(path.to_owned());
    config
}

async fn post(server: &ServerHandle, token: Option<&str>, user: &str) -> reqwest::Response {
    let mut request = client()
        .post(format!("{}/events", server.url()))
        .header("content-type", "application/json")
        .body(event_json(user, 1));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("answer")
}

async fn get(url: String, token: Option<&str>) -> reqwest::Response {
    let mut request = client().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("answer")
}

async fn reason_of(response: reqwest::Response) -> String {
    let body: serde_json::Value = response.json().await.expect("JSON body");
    body["reason"].as_str().unwrap_or_default().to_owned()
}

// Proves the token rules on every kind of route: no token or an unknown one is 401 with
// `WWW-Authenticate: Bearer`, a token without the scope is 403, the right scope passes (on
// the fast POST /events path and through the router), and /healthz and /readyz stay open.
#[tokio::test]
async fn tokens_and_scopes_decide_every_route() {
    let (_dir, path) = tokens_file(&standard_tokens());
    let server = ServerHandle::spawn(with_tokens(&path))
        .await
        .expect("spawn");
    let url = server.url();

    let response = post(&server, None, "alice").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_eq!(reason_of(response).await, "unauthorized");
    let unknown = post(&server, Some("nobody-knows-this-token-xx"), "alice").await;
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    let forbidden = post(&server, Some(READER), "alice").await;
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    assert_eq!(reason_of(forbidden).await, "forbidden");
    assert_eq!(
        post(&server, Some(INGEST), "alice").await.status(),
        StatusCode::ACCEPTED
    );

    for (path, allowed, refused) in [
        ("/balances", READER, INGEST),
        ("/balances/alice", ADMIN, INGEST),
        ("/stats", ADMIN, READER),
        ("/metrics", ADMIN, INGEST),
    ] {
        let ok = get(format!("{url}{path}"), Some(allowed)).await.status();
        assert!(
            ok == StatusCode::OK || ok == StatusCode::NOT_FOUND,
            "{path}: {ok}"
        );
        let no = get(format!("{url}{path}"), Some(refused)).await.status();
        assert_eq!(no, StatusCode::FORBIDDEN, "{path}");
        let none = get(format!("{url}{path}"), None).await.status();
        assert_eq!(none, StatusCode::UNAUTHORIZED, "{path}");
    }
    for open in ["/healthz", "/readyz"] {
        assert_eq!(
            get(format!("{url}{open}"), None).await.status(),
            StatusCode::OK
        );
    }
    // An unknown route tells a stranger nothing: 401 first, 404 once the caller is known.
    assert_eq!(
        get(format!("{url}/nope"), None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let known = get(format!("{url}/nope"), Some(READER)).await.status();
    assert_eq!(known, StatusCode::NOT_FOUND);
    server.stop().await.expect("stop");
}

// Proves the token abuse cases are refused as "no valid token": one byte off, a prefix, in
// the query string, in a second Authorization header, another scheme; and that /metrics
// counts refusals by reason without ever showing a secret.
#[tokio::test]
async fn token_abuse_is_unauthorized_and_never_shown() {
    let (_dir, path) = tokens_file(&standard_tokens());
    let server = ServerHandle::spawn(with_tokens(&path))
        .await
        .expect("spawn");
    let one_off = format!("{}b", &INGEST[..INGEST.len() - 1]);
    let body = event_json("mallory", 1);
    let cases = [
        format!("Authorization: Bearer {one_off}\r\n"),
        format!("Authorization: Bearer {}\r\n", &INGEST[..20]),
        format!("Authorization: Bearer {INGEST}x\r\n"),
        format!("Authorization: Bearer {INGEST}\r\nAuthorization: Bearer {INGEST}\r\n"),
        format!("Authorization: Basic {INGEST}\r\n"),
        String::new(),
    ];
    for (index, headers) in cases.iter().enumerate() {
        let target = if headers.is_empty() {
            format!("/events?access_token={INGEST}")
        } else {
            "/events".to_owned()
        };
        let request = format!(
            "POST {target} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let response = raw_exchange(server.addr(), request.as_bytes())
            .await
            .expect("an answer");
        assert_eq!(response.status, 401, "case {index}: {headers}");
        assert_eq!(response.header("www-authenticate"), Some("Bearer"));
    }
    assert_eq!(server.engine().stats().accepted, 0, "nothing got in");
    let scrape = get(format!("{}/metrics", server.url()), Some(ADMIN))
        .await
        .text()
        .await
        .expect("metrics");
    assert!(
        scrape.contains(r#"floodgate_http_access_refused_total{reason="unauthorized"} 6"#),
        "{scrape}"
    );
    for secret in [INGEST, READER, ADMIN, NOISY] {
        assert!(!scrape.contains(secret), "a secret in /metrics");
    }
    server.stop().await.expect("stop");
}

// Proves a reload (what SIGHUP runs) takes a valid new file at once (a new token works, a
// removed one is refused) and that a bad file keeps the tokens in force.
#[tokio::test]
async fn reload_swaps_valid_files_and_keeps_the_old_on_a_bad_one() {
    let (_dir, path) = tokens_file(&format!("{INGEST} ingest\n"));
    let server = ServerHandle::spawn(with_tokens(&path))
        .await
        .expect("spawn");
    assert_eq!(post(&server, Some(INGEST), "a").await.status(), 202);
    assert_eq!(post(&server, Some(NOISY), "a").await.status(), 401);

    std::fs::write(&path, format!("{NOISY} ingest\n")).expect("rewrite");
    server.reload();
    assert_eq!(
        post(&server, Some(NOISY), "a").await.status(),
        202,
        "new token"
    );
    assert_eq!(
        post(&server, Some(INGEST), "a").await.status(),
        401,
        "removed"
    );

    std::fs::write(&path, format!("{INGEST} ingest,everything\n")).expect("break");
    server.reload();
    assert_eq!(
        post(&server, Some(NOISY), "a").await.status(),
        202,
        "old kept"
    );
    assert_eq!(post(&server, Some(INGEST), "a").await.status(), 401);
    std::fs::remove_file(&path).expect("remove");
    server.reload();
    assert_eq!(
        post(&server, Some(NOISY), "a").await.status(),
        202,
        "old kept"
    );
    server.stop().await.expect("stop");
}

// Proves a missing or bad tokens file stops start-up with a message naming the file.
#[tokio::test]
async fn a_bad_tokens_file_stops_start_up() {
    let (dir, path) = tokens_file("short read\n");
    let error = ServerHandle::spawn(with_tokens(&path))
        .await
        .expect_err("refused");
    let message = format!("{error:#}");
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("line 1"), "{message}");
    let missing = dir.path().join("missing");
    let error = ServerHandle::spawn(with_tokens(&missing))
        .await
        .expect_err("refused");
    assert!(format!("{error:#}").contains("missing"), "{error:#}");
}

// Proves one token over its rate limit gets 429 `rate_limited` with a computed Retry-After
// (at least 1 s), counted under its name in /metrics, while another token's events are all
// accepted: a noisy client does not take the queue from everyone else.
#[tokio::test]
async fn a_noisy_token_is_limited_and_others_are_not() {
    let (_dir, path) = tokens_file(&standard_tokens());
    let mut config = with_tokens(&path);
    config.access.rate_limit_per_second = 0.5; // one event every 2 s on average
    config.access.rate_limit_burst_events = 5;
    let server = ServerHandle::spawn(config).await.expect("spawn");
    let mut accepted = 0;
    let mut limited = 0;
    for _ in 0..30 {
        let response = post(&server, Some(NOISY), "noisy").await;
        match response.status() {
            StatusCode::ACCEPTED => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                let retry: u64 = response.headers()["retry-after"]
                    .to_str()
                    .expect("ascii")
                    .parse()
                    .expect("whole seconds");
                assert!((1..=2).contains(&retry), "Retry-After {retry}");
                assert_eq!(reason_of(response).await, "rate_limited");
                limited += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    // The burst, plus at most one more if the test ran slower than 2 s.
    assert!((5..=7).contains(&accepted), "accepted {accepted}");
    assert_eq!(limited, 30 - accepted);
    for _ in 0..5 {
        assert_eq!(post(&server, Some(INGEST), "quiet").await.status(), 202);
    }
    let scrape = get(format!("{}/metrics", server.url()), Some(ADMIN))
        .await
        .text()
        .await
        .expect("metrics");
    let line = format!(r#"floodgate_rate_limited_requests_total{{token="noisy"}} {limited}"#);
    assert!(scrape.contains(&line), "{line} in\n{scrape}");
    assert!(
        !scrape.contains(r#"token="collector""#),
        "the quiet token was never limited"
    );
    server.stop().await.expect("stop");
}

// Proves the admin listener answers /healthz, /metrics and /stats while the main port is at
// its connection cap (every slot held), requires the admin scope with tokens on, and serves
// nothing else.
#[tokio::test]
async fn the_admin_port_answers_while_the_main_port_is_full() {
    let (_dir, path) = tokens_file(&standard_tokens());
    let mut config = with_tokens(&path);
    config.front_door.max_connections = 3;
    config.access.admin_addr = Some("127.0.0.1:0".parse().expect("addr"));
    let server = ServerHandle::spawn(config).await.expect("spawn");
    let admin = server.admin_addr().expect("admin listener");
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        let response = read_response(&mut stream, &mut Vec::new()).await;
        assert_eq!(response.expect("a slot").status, 200);
        held.push(stream);
    }
    let refused = raw_exchange(server.addr(), b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(refused.is_none(), "the main port is full: {refused:?}");

    let admin_url = format!("http://{admin}");
    assert_eq!(
        get(format!("{admin_url}/healthz"), None).await.status(),
        200
    );
    assert_eq!(get(format!("{admin_url}/readyz"), None).await.status(), 200);
    let metrics = get(format!("{admin_url}/metrics"), Some(ADMIN)).await;
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.expect("text");
    assert!(
        text.contains("floodgate_http_connections_refused_total 1"),
        "{text}"
    );
    assert_eq!(
        get(format!("{admin_url}/stats"), Some(ADMIN))
            .await
            .status(),
        200
    );
    assert_eq!(get(format!("{admin_url}/stats"), None).await.status(), 401);
    assert_eq!(
        get(format!("{admin_url}/metrics"), Some(INGEST))
            .await
            .status(),
        403
    );
    let events = client()
        .post(format!("{admin_url}/events"))
        .bearer_auth(INGEST)
        .body(event_json("a", 1))
        .send()
        .await
        .expect("answer");
    assert_eq!(events.status(), 404, "no ingest on the admin port");
    assert_eq!(
        get(format!("{admin_url}/balances"), Some(READER))
            .await
            .status(),
        404
    );
    drop(held);
    server.stop().await.expect("stop");
}
