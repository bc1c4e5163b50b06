//! Scoped bearer tokens and per-token rate limits: who may do what, checked in one place.
//!
//! Lesson: anyone who can reach an open port can post events and read every balance. A token
//! file (`auth-tokens-file`) names who may: one token per line with its scopes, `ingest` (post
//! events), `read` (balances) and `admin` (`/stats`, `/metrics`); `/healthz` and `/readyz`
//! stay open so probes need no secret. [`Access::check`] is the only gate, called once per
//! request before any route runs (the fast `POST /events` path included).
//! Invariant: a secret is kept only as its SHA-256 digest and compared with every digest in
//! the table in constant time, so neither its length nor which entry matched shows in the
//! timing; a secret is never logged (errors name the line, not the token). A reload replaces
//! the whole table only when the new file is valid; a bad file leaves the old one in force.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::http::{HeaderMap, Method, header};
use ring::digest::{SHA256, SHA256_OUTPUT_LEN, digest};
use subtle::{ConditionallySelectable as _, ConstantTimeEq as _};

use crate::config::AccessConfig;
use crate::error::ApiError;
use crate::metrics::ServerMetrics;
use crate::rate_limit::{Bucket, Clock, RateLimit, retry_after_seconds};

/// Shortest token accepted: 16 characters. A short token can be guessed over the network;
/// `openssl rand -hex 32` makes a good one.
pub const MIN_TOKEN_CHARS: usize = 16;
/// Longest token accepted: it must fit a request head with room to spare.
pub const MAX_TOKEN_CHARS: usize = 4096;
/// Largest tokens file read: 1 MiB is thousands of tokens.
pub const MAX_TOKENS_FILE_BYTES: u64 = 1024 * 1024;
/// Longest token name (the metrics label).
pub const MAX_NAME_CHARS: usize = 64;

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Post events (`POST /events` and any `/events/...` route).
    Ingest,
    /// Read balances (`/balances`, `/balances/{user}`).
    Read,
    /// Operate the server (`/stats`, `/metrics`).
    Admin,
}

impl Scope {
    const fn bit(self) -> u8 {
        match self {
            Self::Ingest => 1,
            Self::Read => 2,
            Self::Admin => 4,
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "ingest" => Some(Self::Ingest),
            "read" => Some(Self::Read),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// What a route asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Nothing: `/healthz`, `/readyz`, `/openapi.json` answer anyone.
    Nothing,
    /// A valid token with this scope.
    Scope(Scope),
    /// A valid token of any scope (unknown routes: a stranger learns nothing about them).
    AnyToken,
}

/// The scope `path` needs (the method does not matter: a wrong method is refused by the
/// route after the caller is known).
pub fn needs(path: &str) -> Needs {
    let under = |prefix: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    match path {
        "/healthz" | "/readyz" | "/openapi.json" => Needs::Nothing,
        "/stats" | "/metrics" => Needs::Scope(Scope::Admin),
        _ if under("/events") => Needs::Scope(Scope::Ingest),
        _ if under("/balances") => Needs::Scope(Scope::Read),
        _ => Needs::AnyToken,
    }
}

/// Why a tokens file was refused; never contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum TokensFileError {
    /// The file could not be read.
    #[error("cannot read tokens file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is over [`MAX_TOKENS_FILE_BYTES`].
    #[error("tokens file {0} is larger than {MAX_TOKENS_FILE_BYTES} bytes")]
    TooLarge(PathBuf),
    /// A line is not `<token> <scope>[,<scope>...] [name]`.
    #[error("tokens file {path}, line {line}: {why}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        why: String,
    },
    /// No token at all: every request would be refused.
    #[error("tokens file {0} has no token (every request but /healthz and /readyz would be 401)")]
    Empty(PathBuf),
}

/// One token as kept: its digest, scopes, name and bucket.
struct Entry {
    digest: [u8; SHA256_OUTPUT_LEN],
    scopes: u8,
    name: Arc<str>,
    bucket: Arc<Bucket>,
}

impl fmt::Debug for Entry {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The digest stays out of logs too.
        formatter
            .debug_struct("Entry")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// Every token of one version of the file.
#[derive(Debug, Default)]
pub struct TokenTable {
    entries: Vec<Entry>,
}

impl TokenTable {
    /// Parses a tokens file's text (`path` names it in errors). `previous` lends its buckets
    /// to tokens of the same name, so a reload does not reset anyone's rate limit.
    pub fn parse(
        text: &str,
        path: &Path,
        previous: Option<&TokenTable>,
    ) -> Result<Self, TokensFileError> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut names = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let refuse = |why: String| TokensFileError::Line {
                path: path.to_owned(),
                line,
                why,
            };
            let content = raw.split('#').next().unwrap_or_default().trim();
            if content.is_empty() {
                continue;
            }
            let (secret, scopes, name) = parse_line(content, line).map_err(refuse)?;
            let digest = digest_of(secret.as_bytes());
            if entries.iter().any(|entry| entry.digest == digest) {
                return Err(refuse("the same token is on an earlier line".to_owned()));
            }
            if let Some(first) = names.insert(name.clone(), line) {
                return Err(refuse(format!(
                    "name `{name}` is already used on line {first}"
                )));
            }
            let bucket = previous
                .and_then(|table| table.entries.iter().find(|entry| *entry.name == *name))
                .map_or_else(Arc::default, |entry| Arc::clone(&entry.bucket));
            entries.push(Entry {
                digest,
                scopes,
                name: name.into(),
                bucket,
            });
        }
        if entries.is_empty() {
            return Err(TokensFileError::Empty(path.to_owned()));
        }
        Ok(Self { entries })
    }

    /// Reads and parses the file at `path` (bounded in size).
    pub fn read(path: &Path, previous: Option<&TokenTable>) -> Result<Self, TokensFileError> {
        let read_error = |source| TokensFileError::Read {
            path: path.to_owned(),
            source,
        };
        let metadata = std::fs::metadata(path).map_err(read_error)?;
        if metadata.len() > MAX_TOKENS_FILE_BYTES {
            return Err(TokensFileError::TooLarge(path.to_owned()));
        }
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        Self::parse(&text, path, previous)
    }

    /// How many tokens the table holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry whose token is `presented`, compared with every entry in constant time.
    fn find(&self, presented: &[u8]) -> Option<&Entry> {
        let presented = digest_of(presented);
        let mut found = u32::MAX;
        for (index, entry) in self.entries.iter().enumerate() {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            found.conditional_assign(&index, entry.digest.ct_eq(&presented));
        }
        self.entries.get(found as usize)
    }
}

/// `<token> <scope>[,<scope>...] [name]` → the token, its scope bits and its name.
fn parse_line(content: &str, line: usize) -> Result<(&str, u8, String), String> {
    let mut fields = content.split_whitespace();
    let secret = fields.next().unwrap_or_default();
    let Some(scope_list) = fields.next() else {
        return Err("a token needs its scopes: `<token> <scope>[,<scope>...] [name]`".into());
    };
    let name = fields
        .next()
        .map_or_else(|| format!("line{line}"), str::to_owned);
    if fields.next().is_some() {
        return Err("too many fields: `<token> <scope>[,<scope>...] [name]`".into());
    }
    check_token(secret)?;
    let mut scopes = 0;
    for scope in scope_list.split(',') {
        let scope = Scope::parse(scope)
            .ok_or_else(|| format!("unknown scope `{scope}` (scopes: ingest, read, admin)"))?;
        scopes |= scope.bit();
    }
    let name_ok = (1..=MAX_NAME_CHARS).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"_.-".contains(&byte));
    if !name_ok {
        return Err(format!(
            "a name is 1 to {MAX_NAME_CHARS} characters of A-Z a-z 0-9 _ . -"
        ));
    }
    Ok((secret, scopes, name))
}

/// A token is RFC 6750's `b64token` (letters, digits, `-._~+/`, then `=` padding), at least
/// [`MIN_TOKEN_CHARS`] long. The message never quotes it.
fn check_token(secret: &str) -> Result<(), String> {
    let body = secret.trim_end_matches('=');
    let charset = !body.is_empty()
        && body
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"-._~+/".contains(&byte));
    if !charset {
        return Err("a token is letters, digits and - . _ ~ + / (then = padding)".into());
    }
    if !(MIN_TOKEN_CHARS..=MAX_TOKEN_CHARS).contains(&secret.len()) {
        return Err(format!(
            "a token is {MIN_TOKEN_CHARS} to {MAX_TOKEN_CHARS} characters (this one is {})",
            secret.len()
        ));
    }
    Ok(())
}

fn digest_of(bytes: &[u8]) -> [u8; SHA256_OUTPUT_LEN] {
    let mut out = [0; SHA256_OUTPUT_LEN];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// The token of a request: exactly one `Authorization: Bearer <token>` header. A second
/// `Authorization` header, another scheme, or a token in the query string count as none.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?.as_bytes();
    if values.next().is_some() {
        return None;
    }
    let (scheme, rest) = value.split_at_checked(SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let token = rest.trim_ascii_start();
    (!token.is_empty()).then_some(token)
}

/// The gate every request passes: tokens (when a file is set) and rate limits (when set).
#[derive(Debug)]
pub struct Access {
    tokens: Option<Tokens>,
    rate: Option<RateLimit>,
    clock: Clock,
}

/// The tokens file and the table read from it last.
#[derive(Debug)]
struct Tokens {
    path: PathBuf,
    table: ArcSwap<TokenTable>,
}

impl Access {
    /// Reads the tokens file (if any): a missing or bad file stops start-up. Warns when the
    /// file is readable by group or others, and logs that the server is open without one.
    pub fn load(config: &AccessConfig) -> Result<Self, TokensFileError> {
        let tokens = if let Some(path) = &config.auth_tokens_file {
            let table = TokenTable::read(path, None)?;
            warn_if_readable_by_others(path);
            tracing::info!(
                file = %path.display(),
                tokens = table.len(),
                "bearer tokens required (healthz and readyz stay open)"
            );
            Some(Tokens {
                path: path.clone(),
                table: ArcSwap::from_pointee(table),
            })
        } else {
            tracing::warn!(
                "no auth-tokens-file: the server is open, anyone who reaches it may post events and read balances"
            );
            None
        };
        let rate = (config.rate_limit_per_second > 0.0)
            .then(|| RateLimit::new(config.rate_limit_per_second, config.rate_limit_burst_events));
        Ok(Self {
            tokens,
            rate,
            clock: Clock::start(),
        })
    }

    /// An open gate: no tokens, no limits.
    pub fn open() -> Self {
        Self {
            tokens: None,
            rate: None,
            clock: Clock::start(),
        }
    }

    /// Whether tokens are required.
    pub fn requires_tokens(&self) -> bool {
        self.tokens.is_some()
    }

    /// Lets a request through, or says why not: 401 (no or unknown token), 403 (the token
    /// lacks the route's scope), 429 (the token is over its rate; ingest routes only).
    pub fn check(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        metrics: &ServerMetrics,
    ) -> Result<(), ApiError> {
        let Some(tokens) = &self.tokens else {
            return Ok(());
        };
        let needs = needs(path);
        if needs == Needs::Nothing {
            return Ok(());
        }
        let table = tokens.table.load();
        let Some(entry) = bearer(headers).and_then(|token| table.find(token)) else {
            metrics.record_access_refused("unauthorized");
            return Err(ApiError::Unauthorized);
        };
        if let Needs::Scope(scope) = needs {
            if entry.scopes & scope.bit() == 0 {
                metrics.record_access_refused("forbidden");
                return Err(ApiError::Forbidden);
            }
            if scope == Scope::Ingest && method == Method::POST {
                self.take_rate(entry, metrics)?;
            }
        }
        Ok(())
    }

    fn take_rate(&self, entry: &Entry, metrics: &ServerMetrics) -> Result<(), ApiError> {
        let Some(limit) = self.rate else {
            return Ok(());
        };
        entry
            .bucket
            .take(limit, self.clock.now_nanos())
            .map_err(|wait| {
                metrics.record_access_refused("rate_limited");
                metrics.record_rate_limited(&entry.name);
                ApiError::RateLimited {
                    retry_after_seconds: retry_after_seconds(wait),
                }
            })
    }

    /// Re-reads the tokens file; a bad file keeps the tokens in force and logs why.
    pub fn reload(&self) {
        let Some(tokens) = &self.tokens else {
            return;
        };
        let current = tokens.table.load();
        match TokenTable::read(&tokens.path, Some(&current)) {
            Ok(table) => {
                warn_if_readable_by_others(&tokens.path);
                tracing::info!(
                    file = %tokens.path.display(),
                    tokens = table.len(),
                    "tokens file re-read"
                );
                tokens.table.store(Arc::new(table));
            }
            Err(error) => tracing::error!(
                %error,
                "tokens file not re-read: the tokens in force stay"
            ),
        }
    }
}

impl crate::signals::Reloadable for Access {
    fn reload(&self) {
        Access::reload(self);
    }
}

/// Warns when the tokens file may be read by group or others (Unix mode bits).
fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(metadata) = std::fs::metadata(path) {
            let mode = metadata.permissions().mode();
            if mode & 0o044 != 0 {
                tracing::warn!(
                    file = %path.display(),
                    mode = format!("{:o}", mode & 0o777),
                    "the tokens file is readable by group or others: `chmod 600` it"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    const INGEST: &str = "ingest-token-0123456789";
    const READER: &str = "reader-token-0123456789";

    fn table(text: &str) -> Result<TokenTable, TokensFileError> {
        TokenTable::parse(text, Path::new("tokens.txt"), None)
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                header::AUTHORIZATION,
                HeaderValue::from_str(value).expect("header"),
            );
        }
        headers
    }

    // Proves the file format: comments, blank lines, scope lists, optional names (default
    // `line<N>`), and that each token finds its own entry and nothing else does.
    #[test]
    fn tokens_file_lines_and_lookup() {
        let text = format!(
            "# who may do what\n\n{INGEST} ingest collector\n  {READER} read,admin # ops\n"
        );
        let table = table(&text).expect("valid");
        assert_eq!(table.len(), 2);
        let ingest = table.find(INGEST.as_bytes()).expect("found");
        assert_eq!(&*ingest.name, "collector");
        assert_eq!(ingest.scopes, Scope::Ingest.bit());
        let reader = table.find(READER.as_bytes()).expect("found");
        assert_eq!(&*reader.name, "line4");
        assert_eq!(reader.scopes, Scope::Read.bit() | Scope::Admin.bit());
        let one_off = format!("{}X", &INGEST[..INGEST.len() - 1]);
        assert!(table.find(one_off.as_bytes()).is_none(), "one byte off");
        assert!(table.find(&INGEST.as_bytes()[1..]).is_none(), "a prefix");
        assert!(table.find(b"").is_none());
    }

    // Proves bad files are refused with the line and why, never quoting the token.
    #[test]
    fn bad_files_are_refused_by_line_without_the_secret() {
        let cases = [
            (format!("{INGEST}\n"), "line 1", "scopes"),
            (
                format!("{INGEST} ingest,write\n"),
                "line 1",
                "unknown scope",
            ),
            ("short ingest\n".to_owned(), "line 1", "16 to"),
            (
                format!("# c\n{INGEST} ingest a\n{INGEST} read b\n"),
                "line 3",
                "same token",
            ),
            (
                format!("{INGEST} ingest a\n{READER} read a\n"),
                "line 2",
                "already used",
            ),
            (format!("{INGEST} ingest a b\n"), "line 1", "too many"),
            (format!("{INGEST} ingest bad/name\n"), "line 1", "a name is"),
            (
                "to\"ken-0123456789abc ingest\n".to_owned(),
                "line 1",
                "letters",
            ),
        ];
        for (text, line, why) in cases {
            let message = table(&text).expect_err(&text).to_string();
            assert!(message.contains(line) && message.contains(why), "{message}");
            assert!(
                !message.contains(INGEST) && !message.contains(READER),
                "{message}"
            );
        }
        assert!(matches!(
            table("# nothing\n"),
            Err(TokensFileError::Empty(_))
        ));
    }

    // Proves the routes' scopes: probes open, ingest/read/admin by path, anything else needs
    // some valid token.
    #[test]
    fn each_route_needs_its_scope() {
        assert_eq!(needs("/healthz"), Needs::Nothing);
        assert_eq!(needs("/readyz"), Needs::Nothing);
        assert_eq!(needs("/events"), Needs::Scope(Scope::Ingest));
        assert_eq!(needs("/events/batch"), Needs::Scope(Scope::Ingest));
        assert_eq!(needs("/balances"), Needs::Scope(Scope::Read));
        assert_eq!(needs("/balances/alice"), Needs::Scope(Scope::Read));
        assert_eq!(needs("/stats"), Needs::Scope(Scope::Admin));
        assert_eq!(needs("/metrics"), Needs::Scope(Scope::Admin));
        assert_eq!(needs("/eventsx"), Needs::AnyToken);
        assert_eq!(needs("/healthz/x"), Needs::AnyToken);
        assert_eq!(needs("/"), Needs::AnyToken);
    }

    // Proves the Authorization header rules: one header, the Bearer scheme in any case,
    // anything else counts as no token.
    #[test]
    fn only_one_bearer_header_counts() {
        let bearer_of = |values: &[&str]| bearer(&headers(values)).map(<[u8]>::to_vec);
        assert_eq!(bearer_of(&["Bearer abc"]), Some(b"abc".to_vec()));
        assert_eq!(bearer_of(&["bEARER   abc"]), Some(b"abc".to_vec()));
        assert_eq!(bearer_of(&[]), None);
        assert_eq!(bearer_of(&["Basic abc"]), None);
        assert_eq!(bearer_of(&["Bearer "]), None);
        assert_eq!(bearer_of(&["Bearer"]), None);
        assert_eq!(bearer_of(&["Bearer abc", "Bearer abc"]), None);
    }
}
