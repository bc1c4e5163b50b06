//! The README's "all of it on" TOML file starts a real server as written: TLS, scoped tokens,
//! the admin listener and rate limits; and SIGHUP re-reads the tokens file of a live process.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio_rustls::TlsConnector;

use crate::support::{ANSWER_WAIT, Log, event_json, signal, summary_field, wait_with_stdout};

const COLLECTOR: &str = "collector-token-0123456789abcdef";
const OPS: &str = "ops-token-0123456789abcdef012345";
const LATER: &str = "later-token-0123456789abcdef0123";

/// The TOML block the README marks `<!-- secure-config -->`.
fn readme_config() -> String {
    let readme = include_str!("../../../../README.md");
    let after = readme
        .split("<!-- secure-config -->")
        .nth(1)
        .expect("the README marks its secure config");
    let block = after
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a toml block after the marker");
    block.to_owned()
}

/// Writes the files the README's config names into `dir`; the certificate, for the client.
fn write_named_files(dir: &Path) -> CertificateDer<'static> {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    std::fs::write(dir.join("cert.pem"), made.cert.pem()).expect("cert");
    std::fs::write(dir.join("key.pem"), made.signing_key.serialize_pem()).expect("key");
    write_tokens(
        dir,
        &format!("{COLLECTOR} ingest collector\n{OPS} read,admin ops\n"),
    );
    made.cert.der().clone()
}

fn write_tokens(dir: &Path, text: &str) {
    let path = dir.join("tokens.txt");
    std::fs::write(&path, text).expect("tokens");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
}

/// Reads the log until a line contains `needle`; that line.
async fn log_line(log: &mut Log, needle: &str) -> String {
    tokio::time::timeout(ANSWER_WAIT, async {
        while let Some(line) = log.next_line().await.expect("read log") {
            if line.contains(needle) {
                return line;
            }
        }
        panic!("the log ended before `{needle}`");
    })
    .await
    .unwrap_or_else(|_| panic!("`{needle}` not logged in time"))
}

/// The value after `key=` in a log line.
fn field(line: &str, key: &str) -> String {
    line.split(&format!(" {key}="))
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        .to_owned()
}

/// One `Connection: close` request over TLS to `addr`; the status code.
async fn status_over_tls(addr: &str, trusted: &CertificateDer<'static>, request: &str) -> u16 {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake");
    tls.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(ANSWER_WAIT, tls.read_to_end(&mut response))
        .await
        .expect("answered in time")
        .expect("read");
    let text = String::from_utf8_lossy(&response);
    text.get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

fn post(token: &str) -> String {
    let body = event_json("readme", 1);
    format!(
        "POST /events HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn get(path: &str, token: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
}

// Proves the README's secure config file starts `floodgate serve` as written (only the two
// addresses are moved to free ports by flags): TLS on both listeners, tokens and scopes
// enforced, the admin listener serving metrics to an admin token; then SIGHUP re-reads the
// tokens file (a new token works, a removed one is 401) and SIGTERM still drains and exits 0.
#[tokio::test]
async fn the_readme_config_starts_a_secure_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("floodgate.toml"), readme_config()).expect("config");
    let trusted = write_named_files(dir.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_floodgate"))
        .args(["serve", "--config", "floodgate.toml"])
        .args(["--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn floodgate serve");
    let mut log = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let listening = log_line(&mut log, "listening").await;
    let addr = field(&listening, "addr");
    assert!(
        listening.contains("rate_limit_per_second=1000"),
        "{listening}"
    );
    let admin = field(
        &log_line(&mut log, "admin_listener=").await,
        "admin_listener",
    );

    assert_eq!(
        status_over_tls(&addr, &trusted, &post(COLLECTOR)).await,
        202
    );
    assert_eq!(status_over_tls(&addr, &trusted, &post(OPS)).await, 403);
    assert_eq!(status_over_tls(&addr, &trusted, &post(LATER)).await, 401);
    assert_eq!(
        status_over_tls(&admin, &trusted, &get("/metrics", OPS)).await,
        200
    );
    assert_eq!(
        status_over_tls(&admin, &trusted, &get("/metrics", COLLECTOR)).await,
        403
    );

    write_tokens(
        dir.path(),
        &format!("{LATER} ingest later\n{OPS} read,admin ops\n"),
    );
    signal(&child, "HUP");
    log_line(&mut log, "tokens file re-read").await;
    assert_eq!(status_over_tls(&addr, &trusted, &post(LATER)).await, 202);
    assert_eq!(
        status_over_tls(&addr, &trusted, &post(COLLECTOR)).await,
        401
    );

    drop(log);
    signal(&child, "TERM");
    let (status, stdout) = wait_with_stdout(child).await;
    assert_eq!(status.code(), Some(0), "{stdout}");
    assert_eq!(summary_field(&stdout, "applied"), 2, "{stdout}");
}
