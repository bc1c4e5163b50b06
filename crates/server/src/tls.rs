//! TLS on the listeners: rustls (ring provider), TLS 1.2 and 1.3, a certificate SIGHUP can
//! replace without a restart.
//!
//! Lesson: tokens sent in clear text are tokens given away, and every ingest front door an
//! operator compares us with terminates TLS itself. The handshake is the client's work like a
//! request head: it must finish within the header timeout ([`crate::conn`] bounds it), so a
//! client that opens a connection and never completes its hello holds a socket for no longer
//! than a silent one, and plain HTTP sent to the TLS port fails the handshake and is closed.
//! Invariant: a new handshake uses the certificate read last; a reload builds the whole new
//! configuration first and replaces the old one only if both files were valid, so a bad file
//! leaves the server serving the certificate it had (and logs why).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig as RustlsConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Why a certificate or key was refused; names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    /// The certificate file is missing, unreadable, or has no PEM certificate.
    #[error("tls-cert {path}: {why}")]
    Cert {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The key file is missing, unreadable, or has no PEM private key.
    #[error("tls-key {path}: {why}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("tls-cert {cert} with tls-key {key}: {why}")]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        why: String,
    },
}

/// The listeners' TLS: the files and the configuration read from them last.
#[derive(Debug)]
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    config: ArcSwap<RustlsConfig>,
}

impl Tls {
    /// Reads the certificate chain and key; a missing or bad file is an error naming it.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsFileError> {
        let config = read_config(cert, key)?;
        tracing::info!(cert = %cert.display(), "TLS on (1.2 and 1.3): plain HTTP is refused");
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            config: ArcSwap::from_pointee(config),
        })
    }

    /// An acceptor for one new connection, with the certificate read last.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.load_full())
    }

    /// Re-reads both files; a bad one keeps the certificate in use and logs why.
    pub fn reload(&self) {
        match read_config(&self.cert, &self.key) {
            Ok(config) => {
                self.config.store(Arc::new(config));
                tracing::info!(cert = %self.cert.display(), "TLS certificate re-read");
            }
            Err(error) => tracing::error!(
                %error,
                "TLS certificate not re-read: the one in use stays"
            ),
        }
    }
}

impl crate::signals::Reloadable for Tls {
    fn reload(&self) {
        Tls::reload(self);
    }
}

/// Builds the rustls server configuration: ring, TLS 1.2 and 1.3, no client certificates,
/// HTTP/1.1 offered in ALPN.
fn read_config(cert: &Path, key: &Path) -> Result<RustlsConfig, TlsFileError> {
    let cert_error = |why: String| TlsFileError::Cert {
        path: cert.to_owned(),
        why,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|error| cert_error(error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| cert_error(error.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no PEM certificate in it".to_owned()));
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|error| TlsFileError::Key {
        path: key.to_owned(),
        why: error.to_string(),
    })?;
    let pair_error = |error: rustls::Error| TlsFileError::Pair {
        cert: cert.to_owned(),
        key: key.to_owned(),
        why: error.to_string(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = RustlsConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(pair_error)?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(pair_error)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
