//! `floodgate serve` settings: flags, environment, config file, stage preset, defaults.
//!
//! Lesson: every knob of the seed's stages (and of the production front door) can be set
//! alone, so the lab can sweep them; issue 5: one documented source of truth per setting.
//! Invariant: precedence is flag > env (`FLOODGATE_<FLAG>`, read by clap) > config file
//! (`--config floodgate.toml`, keys spelled like the flags) > stage preset > production
//! default, and an invalid value is refused before anything starts, with a message naming it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use floodgate_core::config::{LedgerStrategy, ProcessingMode, QueueKind};
use serde::Deserialize;

use crate::config::ServerConfig;

/// Address the seed's server listened on.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";
/// Largest config file read: a settings file is a few hundred bytes.
pub const CONFIG_FILE_MAX_BYTES: u64 = 64 * 1024;

/// Ledger strategy names for `--state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateArg {
    /// One lock around every balance (stages 4-7).
    Global,
    /// Balances split over `--shards` locks by hash(user) (stage 8).
    Sharded,
    /// Each worker owns a shard and its own queue: no lock contention.
    Owned,
}

impl From<StateArg> for LedgerStrategy {
    fn from(state: StateArg) -> Self {
        match state {
            StateArg::Global => Self::Global,
            StateArg::Sharded => Self::Sharded,
            StateArg::Owned => Self::Owned,
        }
    }
}

/// Queue kinds for `--queue-kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueueKindArg {
    /// A true multi-consumer channel.
    Mpmc,
    /// The seed's `Arc<Mutex<Receiver>>` (stage 6).
    SharedReceiver,
}

impl From<QueueKindArg> for QueueKind {
    fn from(kind: QueueKindArg) -> Self {
        match kind {
            QueueKindArg::Mpmc => Self::Mpmc,
            QueueKindArg::SharedReceiver => Self::SharedReceiver,
        }
    }
}

/// Flags of `floodgate serve`. Each can also come from the env var shown, or from the config
/// file (same name without `--`); a flag beats its env var, which beats the file, which beats
/// the `--stage` preset, which beats the production default.
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080]. Port 0 picks a free port; the address
    /// actually bound is logged.
    #[arg(long, env = "FLOODGATE_ADDR")]
    pub addr: Option<SocketAddr>,
    /// Run a seed stage: 1 blocking echo, 2 async echo, 3 validate only, 4 inline under one
    /// lock, 5 queue 100 + 1 worker, 6 four workers, 7 sixteen workers on one lock, 8 sharded.
    /// Without it: the production default. Explicit flags override the preset.
    #[arg(long, env = "FLOODGATE_STAGE", value_parser = clap::value_parser!(u8).range(1..=8))]
    pub stage: Option<u8>,
    /// Worker tasks applying queued events [default: available cores].
    #[arg(long, env = "FLOODGATE_WORKERS")]
    pub workers: Option<usize>,
    /// Bound of the event queue; a full queue answers 503 at once [default: 65536].
    #[arg(long, env = "FLOODGATE_QUEUE_CAPACITY")]
    pub queue_capacity: Option<usize>,
    /// Most distinct users the ledger holds; an event for a new user beyond it answers 507
    /// `ledger_full` (known users are still accepted) [default: 10000000, ~0.5-0.9 GiB].
    #[arg(long, env = "FLOODGATE_MAX_USERS")]
    pub max_users: Option<usize>,
    /// How balances are stored and locked [default: owned, the fastest in core's benchmark].
    #[arg(long, env = "FLOODGATE_STATE", value_enum)]
    pub state: Option<StateArg>,
    /// Number of shards for `--state sharded` [default: 64].
    #[arg(long, env = "FLOODGATE_SHARDS")]
    pub shards: Option<usize>,
    /// Apply each event in the request handler under the ledger lock (stage 4) instead of
    /// queueing it.
    #[arg(long, env = "FLOODGATE_INLINE", value_parser = clap::builder::BoolishValueParser::new())]
    pub inline: bool,
    /// Simulated async work per event before taking the ledger lock, in ms [default: 0].
    #[arg(long, env = "FLOODGATE_WORK_MS")]
    pub work_ms: Option<u64>,
    /// Simulated work per event while holding the ledger lock, in ms [default: 0].
    #[arg(long, env = "FLOODGATE_HOLD_MS")]
    pub hold_ms: Option<u64>,
    /// Multiplies every simulated duration (0.1 runs the seed ten times faster) [default: 1.0].
    #[arg(long, env = "FLOODGATE_TIME_SCALE")]
    pub time_scale: Option<f64>,
    /// How workers share the queue [default: mpmc].
    #[arg(long, env = "FLOODGATE_QUEUE_KIND", value_enum)]
    pub queue_kind: Option<QueueKindArg>,
    /// A request head must be complete this long after accept (or after its first byte on a
    /// kept-alive connection), else the connection is closed [default: 10000].
    #[arg(long, env = "FLOODGATE_HEADER_TIMEOUT_MS")]
    pub header_timeout_ms: Option<u64>,
    /// A request body must be complete this long after its head, else 408 [default: 10000].
    #[arg(long, env = "FLOODGATE_BODY_TIMEOUT_MS")]
    pub body_timeout_ms: Option<u64>,
    /// A kept-alive connection idle this long between requests is closed [default: 30000].
    #[arg(long, env = "FLOODGATE_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Most open connections; new ones over the cap are closed at once [default: 10000].
    #[arg(long, env = "FLOODGATE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Largest request body; larger gets 413 [default: 65536].
    #[arg(long, env = "FLOODGATE_BODY_LIMIT_BYTES")]
    pub body_limit_bytes: Option<usize>,
    /// Largest request head (request line + headers); larger gets 431 [default: 16384].
    #[arg(long, env = "FLOODGATE_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Most headers per request; more gets 431 [default: 64].
    #[arg(long, env = "FLOODGATE_MAX_HEADERS")]
    pub max_headers: Option<usize>,
    /// On SIGTERM/Ctrl-C, how long in-flight requests may take to finish before their
    /// connections are closed; the queue is drained after [default: 10000].
    #[arg(long, env = "FLOODGATE_SHUTDOWN_TIMEOUT_MS")]
    pub shutdown_timeout_ms: Option<u64>,
    /// `/readyz` answers 503 above this queue fill, in percent of capacity [default: 90].
    #[arg(long, env = "FLOODGATE_READY_HIGH_WATER_PERCENT")]
    pub ready_high_water_percent: Option<u8>,
    /// A TOML file with any of these settings (keys spelled like the flags, e.g.
    /// `header-timeout-ms = 5000`); flags and env vars win over it.
    #[arg(long, env = "FLOODGATE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

/// What `serve` will run, fully resolved.
#[derive(Debug, Clone)]
pub enum ServePlan {
    /// Stage 1: the blocking echo server.
    Blocking {
        /// Where to listen.
        addr: SocketAddr,
    },
    /// Stage 2: the async echo server.
    Echo {
        /// Where to listen.
        addr: SocketAddr,
    },
    /// Stages 3..8 and the default: the HTTP front door and the engine.
    Http {
        /// Where to listen.
        addr: SocketAddr,
        /// The validated configuration.
        config: Box<ServerConfig>,
    },
}

/// Reads and parses the config file named by `--config` (bounded in size).
pub fn read_config_file(path: &Path) -> anyhow::Result<ServeArgs> {
    let metadata = std::fs::metadata(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    anyhow::ensure!(
        metadata.len() <= CONFIG_FILE_MAX_BYTES,
        "config file {} is larger than {CONFIG_FILE_MAX_BYTES} bytes",
        path.display()
    );
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

impl ServeArgs {
    /// Resolves flags (and env, already merged by clap) over the config file, the stage
    /// preset and the defaults; validates everything.
    pub fn resolve(self) -> anyhow::Result<ServePlan> {
        let file = match &self.config {
            Some(path) => read_config_file(path)?,
            None => ServeArgs::default(),
        };
        self.overlay(&file).plan()
    }

    /// `self`'s values where set, `lower`'s otherwise.
    fn overlay(&self, lower: &ServeArgs) -> ServeArgs {
        ServeArgs {
            addr: self.addr.or(lower.addr),
            stage: self.stage.or(lower.stage),
            workers: self.workers.or(lower.workers),
            queue_capacity: self.queue_capacity.or(lower.queue_capacity),
            max_users: self.max_users.or(lower.max_users),
            state: self.state.or(lower.state),
            shards: self.shards.or(lower.shards),
            inline: self.inline || lower.inline,
            work_ms: self.work_ms.or(lower.work_ms),
            hold_ms: self.hold_ms.or(lower.hold_ms),
            time_scale: self.time_scale.or(lower.time_scale),
            queue_kind: self.queue_kind.or(lower.queue_kind),
            header_timeout_ms: self.header_timeout_ms.or(lower.header_timeout_ms),
            body_timeout_ms: self.body_timeout_ms.or(lower.body_timeout_ms),
            idle_timeout_ms: self.idle_timeout_ms.or(lower.idle_timeout_ms),
            max_connections: self.max_connections.or(lower.max_connections),
            body_limit_bytes: self.body_limit_bytes.or(lower.body_limit_bytes),
            max_header_bytes: self.max_header_bytes.or(lower.max_header_bytes),
            max_headers: self.max_headers.or(lower.max_headers),
            shutdown_timeout_ms: self.shutdown_timeout_ms.or(lower.shutdown_timeout_ms),
            ready_high_water_percent: self
                .ready_high_water_percent
                .or(lower.ready_high_water_percent),
            config: self.config.clone(),
        }
    }

    /// Turns fully merged settings into a plan.
    fn plan(&self) -> anyhow::Result<ServePlan> {
        let addr = match self.addr {
            Some(addr) => addr,
            None => DEFAULT_ADDR.parse()?,
        };
        if matches!(self.stage, Some(1 | 2)) && self.has_http_settings() {
            tracing::warn!(
                "stages 1 and 2 are the raw echo servers: engine and front-door settings are ignored"
            );
        }
        match self.stage {
            Some(1) => Ok(ServePlan::Blocking { addr }),
            Some(2) => Ok(ServePlan::Echo { addr }),
            Some(stage) => {
                let base = ServerConfig::for_stage(stage)
                    .with_context(|| format!("invalid value {stage} for `stage`: 1 to 8"))?;
                self.build(addr, base)
            }
            None => self.build(addr, ServerConfig::production()),
        }
    }

    /// Whether any engine or front-door setting was given (meaningless for stages 1 and 2).
    fn has_http_settings(&self) -> bool {
        let defaults = ServeArgs {
            addr: self.addr,
            stage: self.stage,
            config: self.config.clone(),
            ..ServeArgs::default()
        };
        *self != defaults
    }

    fn build(&self, addr: SocketAddr, mut config: ServerConfig) -> anyhow::Result<ServePlan> {
        self.apply_engine(&mut config);
        self.apply_front_door(&mut config);
        config
            .engine
            .validate()
            .context("invalid engine setting (see `floodgate serve --help`)")?;
        config.front_door.validate()?;
        Ok(ServePlan::Http {
            addr,
            config: Box::new(config),
        })
    }

    fn apply_engine(&self, config: &mut ServerConfig) {
        let engine = &mut config.engine;
        if self.inline {
            engine.mode = ProcessingMode::Inline;
        }
        set(&mut engine.workers, self.workers);
        set(&mut engine.queue_capacity_events, self.queue_capacity);
        set(&mut engine.max_users, self.max_users);
        set(&mut engine.strategy, self.state.map(Into::into));
        set(&mut engine.shards, self.shards);
        set(&mut engine.work_ms, self.work_ms);
        set(&mut engine.hold_ms, self.hold_ms);
        set(&mut engine.time_scale, self.time_scale);
        set(&mut engine.queue_kind, self.queue_kind.map(Into::into));
    }

    fn apply_front_door(&self, config: &mut ServerConfig) {
        let limits = &mut config.front_door;
        set(&mut limits.header_timeout_ms, self.header_timeout_ms);
        set(&mut limits.body_timeout_ms, self.body_timeout_ms);
        set(&mut limits.idle_timeout_ms, self.idle_timeout_ms);
        set(&mut limits.max_connections, self.max_connections);
        set(&mut limits.body_limit_bytes, self.body_limit_bytes);
        set(&mut limits.max_header_bytes, self.max_header_bytes);
        set(&mut limits.max_headers, self.max_headers);
        set(&mut limits.shutdown_timeout_ms, self.shutdown_timeout_ms);
        set(
            &mut limits.ready_high_water_percent,
            self.ready_high_water_percent,
        );
    }
}

fn set<T>(target: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *target = value;
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn parse(flags: &[&str]) -> ServeArgs {
        let argv = std::iter::once("serve").chain(flags.iter().copied());
        Cli::try_parse_from(argv).expect("flags parse").args
    }

    fn http_config(plan: ServePlan) -> ServerConfig {
        match plan {
            ServePlan::Http { config, .. } => *config,
            other => panic!("expected the HTTP server, got {other:?}"),
        }
    }

    // Proves the precedence chain: flag > config file > stage preset > production default.
    #[test]
    fn flag_beats_file_beats_preset_beats_default() {
        let file: ServeArgs = toml::from_str(
            "stage = 7\nworkers = 3\nhold-ms = 20\nidle-timeout-ms = 777\nmax-users = 9\n",
        )
        .expect("file parses");
        let flags = parse(&["--workers", "5"]);
        let config = http_config(flags.overlay(&file).plan().expect("valid"));
        assert_eq!(config.engine.workers, 5, "flag beats file");
        assert_eq!(config.engine.max_users, 9, "max-users from the file");
        let flags = parse(&["--max-users", "3"]);
        let limited = http_config(flags.overlay(&file).plan().expect("valid"));
        assert_eq!(limited.engine.max_users, 3, "--max-users beats the file");
        assert!(
            parse(&["--max-users", "0"]).resolve().is_err(),
            "max users 0 refused"
        );
        assert_eq!(config.engine.hold_ms, 20, "file beats preset");
        assert_eq!(config.engine.work_ms, 100, "preset (stage 7) beats default");
        assert_eq!(config.front_door.idle_timeout_ms, 777);
        assert_eq!(
            config.front_door.header_timeout_ms,
            crate::config::DEFAULT_HEADER_TIMEOUT_MS
        );
        assert_eq!(config.stage, Some(7));
    }

    // Proves a stage preset plus an explicit flag: the flag wins, the rest is the preset's.
    #[test]
    fn stage_preset_with_explicit_flags() {
        let flags = parse(&[
            "--stage",
            "8",
            "--state",
            "global",
            "--time-scale",
            "0.1",
            "--inline",
        ]);
        let config = http_config(flags.resolve().expect("valid"));
        assert_eq!(config.engine.strategy, LedgerStrategy::Global);
        assert_eq!(config.engine.mode, ProcessingMode::Inline);
        assert_eq!(config.engine.workers, 16);
        assert!((config.engine.time_scale - 0.1).abs() < f64::EPSILON);
    }

    // Proves stages 1 and 2 select the raw servers and the default address is the seed's.
    #[test]
    fn stages_one_and_two_are_the_raw_servers() {
        assert!(matches!(
            parse(&["--stage", "1"]).resolve(),
            Ok(ServePlan::Blocking { addr }) if addr.to_string() == DEFAULT_ADDR
        ));
        assert!(matches!(
            parse(&["--stage", "2"]).resolve(),
            Ok(ServePlan::Echo { .. })
        ));
    }

    // Proves invalid values are refused at start with a message naming the setting, from a
    // flag, from the config file, and for an unknown config key.
    #[test]
    fn invalid_values_are_refused_by_name() {
        let error = parse(&["--max-connections", "0"])
            .resolve()
            .expect_err("refused");
        assert!(error.to_string().contains("max-connections"), "{error}");
        let error = parse(&["--workers", "0"]).resolve().expect_err("refused");
        assert!(format!("{error:#}").contains("workers"), "{error:#}");
        assert!(Cli::try_parse_from(["serve", "--stage", "9"]).is_err());
        let unknown: Result<ServeArgs, _> = toml::from_str("workerz = 3");
        assert!(
            unknown
                .expect_err("refused")
                .to_string()
                .contains("workerz")
        );
        let file: ServeArgs = toml::from_str("body-timeout-ms = 0").expect("parses");
        let error = parse(&[]).overlay(&file).plan().expect_err("refused");
        assert!(error.to_string().contains("body-timeout-ms"), "{error}");
    }
}
