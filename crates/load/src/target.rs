//! The target of a run: a loopback address, the Host header and the request path.
//!
//! Lesson (team rule; stage 1, docs/stages.md): load is a weapon; we only point it at our own
//! machine.
//! Invariant: a [`Target`] always holds a loopback socket address (127.0.0.0/8 or ::1); any
//! other host, including names other than `localhost`, is refused before a socket is opened.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use http::Uri;
use http::uri::PathAndQuery;

use crate::LoadError;

/// Path used when the URL has none (or just `/`): the server's ingestion route.
pub const DEFAULT_PATH: &str = "/events";
/// Path used for batches (`--batch`) when the URL has none: the server's batch route.
pub const DEFAULT_BATCH_PATH: &str = "/events/batch";

/// A parsed, loopback-checked target.
#[derive(Clone, Debug)]
pub struct Target {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The `Host` header value (`127.0.0.1:8080`).
    pub host_header: String,
    /// The request URI (origin form: path and query).
    pub path: Uri,
}

impl Target {
    /// Parses `http://host:port/path`, refusing anything that is not loopback.
    pub fn parse(url: &str) -> Result<Self, LoadError> {
        Self::parse_with_default(url, DEFAULT_PATH)
    }

    /// Like [`Target::parse`], with `default_path` when the URL has no path (or just `/`).
    pub fn parse_with_default(url: &str, default_path: &str) -> Result<Self, LoadError> {
        let invalid = |reason: &str| LoadError::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|_| invalid("not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => return Err(invalid("only http:// is supported")),
            None => return Err(invalid("missing http://")),
        }
        let authority = uri.authority().ok_or_else(|| invalid("missing host"))?;
        let host = authority.host();
        let ip = loopback_ip(host)?;
        let port = authority.port_u16().unwrap_or(80);
        let path = match uri.path_and_query().map(PathAndQuery::as_str) {
            None | Some("" | "/") => default_path.to_owned(),
            Some(path) => path.to_owned(),
        };
        let path: Uri = path.parse().map_err(|_| invalid("bad path"))?;
        Ok(Self {
            addr: SocketAddr::new(ip, port),
            host_header: authority.as_str().to_owned(),
            path,
        })
    }
}

fn loopback_ip(host: &str) -> Result<IpAddr, LoadError> {
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    match literal.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => Ok(ip),
        _ => Err(LoadError::NotLoopback {
            host: host.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_parse_with_the_events_path_by_default() {
        // Proves the default URL targets 127.0.0.1:8080/events and that explicit paths, IPv6
        // loopback and `localhost` are accepted.
        let target = Target::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(target.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(target.path, "/events");
        assert_eq!(target.host_header, "127.0.0.1:8080");
        assert_eq!(
            Target::parse("http://127.0.0.1:9/x?y=1").unwrap().path,
            "/x?y=1"
        );
        assert_eq!(
            Target::parse("http://[::1]:9/").unwrap().addr,
            "[::1]:9".parse().unwrap()
        );
        assert!(
            Target::parse("http://localhost:9")
                .unwrap()
                .addr
                .ip()
                .is_loopback()
        );
        assert!(Target::parse("http://127.1.2.3:9").is_ok());
    }

    #[test]
    fn non_loopback_hosts_and_other_schemes_are_refused() {
        // Proves the loopback-only rule: public IPs, LAN IPs, names and https are all refused.
        for url in [
            "http://10.0.0.1:80",
            "http://example.com",
            "http://0.0.0.0:80",
            "http://[::2]:1",
        ] {
            assert!(
                matches!(Target::parse(url), Err(LoadError::NotLoopback { .. })),
                "{url} must be refused"
            );
        }
        assert!(matches!(
            Target::parse("https://127.0.0.1"),
            Err(LoadError::InvalidUrl { .. })
        ));
        assert!(matches!(
            Target::parse("127.0.0.1:80"),
            Err(LoadError::InvalidUrl { .. })
        ));
    }
}
