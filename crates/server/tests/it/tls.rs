//! TLS on the front door, over real sockets with a certificate made in the test (rcgen) and a
//! rustls client: both protocol versions, the slow-client limits during the handshake, plain
//! HTTP to the TLS port, certificate reload, and bad files at start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use floodgate_server::{ServerConfig, ServerHandle};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::support::{ANSWER_WAIT, body_of, event_json, raw_exchange, status_of, test_config};

/// A self-signed certificate for `localhost`, written as PEM files in a temporary directory.
pub(crate) struct TestCert {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    pub(crate) der: rustls::pki_types::CertificateDer<'static>,
}

impl TestCert {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let der = write_new_cert(&cert, &key);
        Self {
            _dir: dir,
            cert,
            key,
            der,
        }
    }
}

/// Makes a new self-signed certificate for `localhost` and writes it to `cert` and `key`.
fn write_new_cert(cert: &Path, key: &Path) -> rustls::pki_types::CertificateDer<'static> {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    std::fs::write(cert, made.cert.pem()).expect("write cert");
    std::fs::write(key, made.signing_key.serialize_pem()).expect("write key");
    made.cert.der().clone()
}

pub(crate) fn with_tls(cert: &TestCert) -> ServerConfig {
    let mut config = test_config();
    config.access.tls_cert = Some(cert.cert.clone());
    config.access.tls_key = Some(cert.key.clone());
    config
}

/// A rustls client trusting only `trusted`, speaking only `version`.
pub(crate) fn connector(
    trusted: &rustls::pki_types::CertificateDer<'static>,
    version: &'static SupportedProtocolVersion,
) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(trusted.clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// Sends one `Connection: close` request over TLS; the raw response, and the version spoken.
async fn exchange_tls(
    server: &ServerHandle,
    connector: &TlsConnector,
    request: &str,
) -> std::io::Result<(Vec<u8>, rustls::ProtocolVersion)> {
    let tcp = TcpStream::connect(server.addr()).await?;
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = tokio::time::timeout(ANSWER_WAIT, connector.connect(name, tcp)).await??;
    let version = tls.get_ref().1.protocol_version().expect("negotiated");
    tls.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(ANSWER_WAIT, tls.read_to_end(&mut response)).await??;
    Ok((response, version))
}

// Proves the server speaks HTTP over TLS 1.3 and TLS 1.2 with the certificate it was given:
// a health check and an event (202, applied) over each version.
#[tokio::test]
async fn http_over_tls_1_2_and_1_3() {
    let cert = TestCert::new();
    let server = ServerHandle::spawn(with_tls(&cert)).await.expect("spawn");
    let body = event_json("secure", 3);
    let post = format!(
        "POST /events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    for (version, expected) in [
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
    ] {
        let client = connector(&cert.der, version);
        let (response, spoken) = exchange_tls(
            &server,
            &client,
            "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("TLS exchange");
        assert_eq!(spoken, expected);
        assert_eq!(status_of(&response), Some(200), "{expected:?}");
        assert_eq!(body_of(&response), br#"{"status":"ok"}"#);
        let (response, _) = exchange_tls(&server, &client, &post).await.expect("post");
        assert_eq!(status_of(&response), Some(202), "{expected:?}");
    }
    let summary = server.stop().await.expect("stop");
    assert_eq!(summary.applied, 2);
}

// Proves plain HTTP sent to the TLS port is closed at once (no answer, no hang) and the
// server keeps serving TLS clients.
#[tokio::test]
async fn plain_http_to_the_tls_port_is_closed() {
    let cert = TestCert::new();
    let server = ServerHandle::spawn(with_tls(&cert)).await.expect("spawn");
    let started = std::time::Instant::now();
    let answer = raw_exchange(
        server.addr(),
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.is_none(),
        "plain HTTP got an HTTP answer: {answer:?}"
    );
    assert!(started.elapsed() < ANSWER_WAIT, "closed, not left to hang");
    let client = connector(&cert.der, &rustls::version::TLS13);
    let (response, _) = exchange_tls(
        &server,
        &client,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("TLS still served");
    assert_eq!(status_of(&response), Some(200));
    server.stop().await.expect("stop");
}

// Proves a handshake that never finishes (a client hello cut after its first bytes) is cut
// at the header timeout and counted as a header timeout.
#[tokio::test]
async fn a_handshake_that_never_finishes_is_cut_at_the_header_timeout() {
    let cert = TestCert::new();
    let mut config = with_tls(&cert);
    config.front_door.header_timeout_ms = 300;
    let server = ServerHandle::spawn(config).await.expect("spawn");
    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    // A TLS record header announcing a handshake message that never comes.
    stream
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01])
        .await
        .expect("write");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(ANSWER_WAIT, stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the stalled handshake was not cut");
    let client = connector(&cert.der, &rustls::version::TLS13);
    let scrape = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let (response, _) = exchange_tls(&server, &client, scrape)
        .await
        .expect("scrape");
    let timeouts = String::from_utf8_lossy(body_of(&response)).into_owned();
    assert!(
        timeouts.contains(r#"floodgate_http_connection_timeouts_total{phase="header"} 1"#),
        "{timeouts}"
    );
    server.stop().await.expect("stop");
}

// Proves a reload (SIGHUP) makes new handshakes use a new certificate, and that a bad file
// keeps the certificate in use.
#[tokio::test]
async fn reload_swaps_the_certificate_and_keeps_it_on_a_bad_file() {
    let cert = TestCert::new();
    let server = ServerHandle::spawn(with_tls(&cert)).await.expect("spawn");
    let health = "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let old_client = connector(&cert.der, &rustls::version::TLS13);
    assert!(exchange_tls(&server, &old_client, health).await.is_ok());

    let new_der = write_new_cert(&cert.cert, &cert.key);
    server.reload();
    let new_client = connector(&new_der, &rustls::version::TLS13);
    let (response, _) = exchange_tls(&server, &new_client, health)
        .await
        .expect("the new certificate is served");
    assert_eq!(status_of(&response), Some(200));
    assert!(
        exchange_tls(&server, &old_client, health).await.is_err(),
        "the old certificate is no longer served"
    );

    std::fs::write(&cert.cert, "not a certificate\n").expect("break");
    server.reload();
    let (response, _) = exchange_tls(&server, &new_client, health)
        .await
        .expect("a bad file keeps the certificate in use");
    assert_eq!(status_of(&response), Some(200));
    server.stop().await.expect("stop");
}

// Proves a missing or bad certificate or key stops start-up with a message naming the file,
// and that half a pair is refused.
#[tokio::test]
async fn bad_tls_files_stop_start_up_naming_them() {
    let cert = TestCert::new();
    let dir = cert.cert.parent().expect("dir");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN NOTHING-----\n").expect("write");
    let missing = dir.join("missing.pem");
    for (cert_path, key_path, named) in [
        (&missing, &cert.key, &missing),
        (&cert.cert, &missing, &missing),
        (&garbage, &cert.key, &garbage),
        (&cert.cert, &garbage, &garbage),
        (&cert.key, &cert.key, &cert.key),
    ] {
        let mut config = test_config();
        config.access.tls_cert = Some(cert_path.clone());
        config.access.tls_key = Some(key_path.clone());
        let error = ServerHandle::spawn(config).await.expect_err("refused");
        let message = format!("{error:#}");
        assert!(message.contains(&named.display().to_string()), "{message}");
    }
    let mut half = test_config();
    half.access.tls_cert = Some(cert.cert.clone());
    let error = ServerHandle::spawn(half).await.expect_err("refused");
    assert!(error.to_string().contains("tls-key"), "{error}");
}
