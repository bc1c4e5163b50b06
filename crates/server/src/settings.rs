//! `floodgate serve` settings: each one declared once, layered in one place.
//!
//! Lesson: every knob of the design story's stages (docs/stages.md) and of the production
//! front door can be set alone, so the lab can sweep them, and one line in [`SETTINGS`] is
//! all a new setting costs.
//! Invariant: a setting has one name, the field of [`ServerConfig`] it sets and its key in
//! `/stats` and the start-up log; its flag and config-file key are that name in kebab-case,
//! its env var `FLOODGATE_` and the name in capitals. Precedence is flag > env > config file
//! (`--config`) > stage preset > production default, applied by [`ServeArgs::resolve`] only;
//! a value from any layer is parsed and bounds-checked before anything starts, and an error
//! names the setting, the value and where it came from.

use std::fmt::Display;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::Context as _;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use floodgate_core::DurabilityMode;
use floodgate_core::config::{
    DEDUP_MAX_IDS_MAX, DEDUP_WINDOW_MS_MAX, LedgerStrategy, MAX_LEDGER_BYTES_MAX, MAX_USERS_MAX,
    ProcessingMode, QUEUE_CAPACITY_EVENTS_MAX, QueueKind, SHARDS_MAX, SIMULATED_MS_MAX,
    WORKERS_MAX,
};

use crate::config::{
    MAX_BATCH_EVENTS_CEILING, MAX_BODY_LIMIT_BYTES, MAX_CONNECTIONS_CEILING,
    MAX_HEADER_BYTES_CEILING, MAX_HEADERS_CEILING, MAX_LEASE_TTL_MS, MAX_PARTITIONS,
    MAX_RATE_LIMIT_BURST_EVENTS, MAX_TIMEOUT_MS, MIN_HEADER_BYTES, MIN_LEASE_TTL_MS, NatsUrls,
    ServerConfig, StorageConfig,
};

/// Address the seed's server listened on.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";
/// Largest config file read: a settings file is a few hundred bytes.
pub const CONFIG_FILE_MAX_BYTES: u64 = 64 * 1024;
/// Prefix of every setting's environment variable.
const ENV_PREFIX: &str = "FLOODGATE_";

/// `--addr` as given: an IP literal with a port (`127.0.0.1:8080`, `[::1]:8080`), or a host name
/// with a port (`localhost:8080`), resolved when the setting is read, at start.
#[derive(Debug, Clone, Copy)]
struct ListenAddr(SocketAddr);

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Self(addr));
        }
        let resolved: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(text)
            .map_err(|error| {
                format!(
                    "cannot resolve `{text}` (expected host:port, e.g. 127.0.0.1:8080, \
                     [::1]:8080, localhost:8080): {error}"
                )
            })?
            .collect();
        resolved
            .iter()
            .find(|addr| addr.is_ipv4())
            .or_else(|| resolved.first())
            .map(|addr| Self(*addr))
            .ok_or_else(|| format!("`{text}` resolves to no address"))
    }
}

impl From<ListenAddr> for SocketAddr {
    fn from(addr: ListenAddr) -> Self {
        addr.0
    }
}

/// What the settings set: the address and the server's whole configuration.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// Where to listen.
    pub addr: SocketAddr,
    /// The engine, the front door, and the stage preset they started from.
    pub config: ServerConfig,
}

/// One setting: its name, help, bounds, and how to read and write it.
#[derive(Debug)]
pub struct Setting {
    /// The one name (snake_case): config field, `/stats` and start-up log key.
    pub name: &'static str,
    /// Help lines for `--help`.
    pub help: &'static [&'static str],
    /// Older spellings still accepted as flag, env var and file key (a warning is logged).
    pub aliases: &'static [&'static str],
    /// What `--help` shows as the default, where the production value is machine-dependent.
    default_note: Option<&'static str>,
    /// The allowed range as shown in `--help`, if bounded.
    bounds: Option<fn() -> String>,
    set: fn(&mut ServeSettings, &str) -> Result<(), String>,
    get: fn(&ServeSettings) -> String,
    check: fn(&ServerConfig) -> Result<(), String>,
}

/// Declares [`SETTINGS`]: per setting its help (doc comment), name, type, the place it sets
/// (a field path of [`ServeSettings`]) and optionally bounds, older names and a default note.
macro_rules! settings {
    ($(
        $(#[doc = $help:literal])+
        $name:ident: $type:ty => $($field:ident).+
            $(, bounds $bounds:expr)?
            $(, alias $alias:literal)*
            $(, default_note $note:literal)?
            ;
    )+) => {
        /// Every setting of `floodgate serve`, in the order `--help` lists them.
        pub static SETTINGS: &[Setting] = &[$(
            Setting {
                name: stringify!($name),
                help: &[$($help),+],
                aliases: &[$($alias),*],
                default_note: settings!(@option $($note)?),
                bounds: settings!(@option $(|| show_bounds(&$bounds))?),
                set: |target, text| {
                    let value: $type = parse(text)?;
                    $(within(&value, &$bounds)?;)?
                    target.$($field).+ = value.into();
                    Ok(())
                },
                get: |target| target.$($field).+.show(),
                check: settings!(@check [$($field).+] $($bounds)?),
            },
        )+];
    };
    (@check [$($field:ident).+]) => { |_| Ok(()) };
    (@check [config.$($field:ident).+] $bounds:expr) => {
        |config| match config.$($field).+.current() {
            Some(value) => within(value, &$bounds),
            None => Ok(()),
        }
    };
    (@option) => { None };
    (@option $value:expr) => { Some($value) };
}

settings! {
    /// Address to listen on. Port 0 picks a free port; the address actually bound is logged.
    /// A host name (`localhost:8080`) is resolved once at start; its first IPv4 address is
    /// used (else its first address).
    addr: ListenAddr => addr;
    /// Run a stage of the design story: 1 blocking echo, 2 async echo, 3 validate only, 4
    /// inline under one lock, 5 queue 100 + 1 worker, 6 four workers, 7 sixteen workers on
    /// one lock, 8 sharded. Unset: the production default. Other settings override the preset.
    stage: u8 => config.stage, bounds 1..=8, default_note "none (production)";
    /// Where events are applied: `queued` (a bounded queue, workers apply), `inline` (in the
    /// request handler under the ledger lock, stage 4) or `validate_only` (stage 3).
    mode: ProcessingMode => config.engine.mode;
    /// Worker tasks applying queued events.
    workers: usize => config.engine.workers, bounds 1..=WORKERS_MAX,
        default_note "available cores";
    /// Bound of the event queue; a full queue answers 503 at once.
    queue_capacity_events: usize => config.engine.queue_capacity_events,
        bounds 1..=QUEUE_CAPACITY_EVENTS_MAX, alias "queue_capacity";
    /// Most distinct users the ledger holds; an event for a new user beyond it answers 507
    /// `ledger_full` (known users are still accepted). Memory is bounded by
    /// `max_ledger_bytes`.
    max_users: usize => config.engine.max_users, bounds 1..=MAX_USERS_MAX;
    /// The dedup window forgets an event id this long after it was first seen, in ms; a
    /// resend after that is applied again.
    dedup_window_ms: u64 => config.engine.dedup_window_ms, bounds 0..=DEDUP_WINDOW_MS_MAX;
    /// Most event ids the dedup window keeps (the oldest are forgotten first); about 135
    /// bytes each.
    dedup_max_ids: usize => config.engine.dedup_max_ids, bounds 0..=DEDUP_MAX_IDS_MAX;
    /// Most bytes the ledger's users may cost (192 a user, plus 32 + the name's length for
    /// names over 22 bytes); a new user beyond it answers 507 `ledger_full`.
    max_ledger_bytes: u64 => config.engine.max_ledger_bytes, bounds 1..=MAX_LEDGER_BYTES_MAX;
    /// How balances are stored and locked: `global` (one lock), `sharded` (`shards` locks by
    /// hash(user)) or `owned` (each worker owns a shard and its own queue).
    strategy: LedgerStrategy => config.engine.strategy, alias "state";
    /// Number of shards for the sharded strategy.
    shards: usize => config.engine.shards, bounds 1..=SHARDS_MAX;
    /// How workers share the queue: `mpmc` or the seed's `shared_receiver`.
    queue_kind: QueueKind => config.engine.queue_kind;
    /// Simulated async work per event before taking the ledger lock, in ms.
    work_ms: u64 => config.engine.work_ms, bounds 0..=SIMULATED_MS_MAX;
    /// Simulated work per event while holding the ledger lock, in ms.
    hold_ms: u64 => config.engine.hold_ms, bounds 0..=SIMULATED_MS_MAX;
    /// Multiplies every simulated duration (0.1 runs the seed ten times faster).
    /// Must be finite and >= 0.
    time_scale: f64 => config.engine.time_scale;
    /// A request head must be complete this long after accept (or after its first byte on a
    /// kept-alive connection), else the connection is closed.
    header_timeout_ms: u64 => config.front_door.header_timeout_ms, bounds 1..=MAX_TIMEOUT_MS;
    /// A request body must be complete this long after its head, else 408.
    body_timeout_ms: u64 => config.front_door.body_timeout_ms, bounds 1..=MAX_TIMEOUT_MS;
    /// A kept-alive connection idle this long between requests is closed.
    idle_timeout_ms: u64 => config.front_door.idle_timeout_ms, bounds 1..=MAX_TIMEOUT_MS;
    /// Most open connections; new ones over the cap are closed at once.
    max_connections: usize => config.front_door.max_connections,
        bounds 1..=MAX_CONNECTIONS_CEILING;
    /// Largest request body; larger gets 413.
    body_limit_bytes: usize => config.front_door.body_limit_bytes,
        bounds 1..=MAX_BODY_LIMIT_BYTES;
    /// Most events in one `POST /events/batch`; more gets 413 `batch_too_large`.
    batch_max_events: usize => config.front_door.batch_max_events,
        bounds 1..=MAX_BATCH_EVENTS_CEILING;
    /// Largest `POST /events/batch` body, after decompression; larger gets 413.
    batch_max_bytes: usize => config.front_door.batch_max_bytes,
        bounds 1..=MAX_BODY_LIMIT_BYTES;
    /// Largest request head (request line + headers); larger gets 431.
    max_header_bytes: usize => config.front_door.max_header_bytes,
        bounds MIN_HEADER_BYTES..=MAX_HEADER_BYTES_CEILING;
    /// Most headers per request; more gets 431.
    max_headers: usize => config.front_door.max_headers, bounds 1..=MAX_HEADERS_CEILING;
    /// On SIGTERM/Ctrl-C, how long in-flight requests may take to finish before their
    /// connections are closed; the queue is drained after. Never less than body-timeout-ms +
    /// 1 s in effect, so a body still arriving when the stop begins gets its answer.
    shutdown_timeout_ms: u64 => config.front_door.shutdown_timeout_ms,
        bounds 0..=MAX_TIMEOUT_MS;
    /// `/readyz` answers 503 above this queue fill, in percent of capacity.
    ready_high_water_percent: u8 => config.front_door.ready_high_water_percent, bounds 1..=100;
    /// Where balances are kept: the log, its snapshots and a lock file. Created if missing;
    /// refused if not writable or in use by another live process.
    data_dir: PathBuf => config.storage.data_dir,
        default_note "floodgate-data (production), none with --stage";
    /// What a 202 waits for: `fsync` (the event is synced to disk: survives kill -9 and power
    /// loss), `write` (handed to the kernel: survives kill -9) or `memory` (nothing kept).
    durability: DurabilityMode => config.storage.durability;
    /// Snapshot the balances after this many events since the last snapshot.
    snapshot_every_events: u64 => config.storage.snapshot_every_events, bounds 1..=u64::MAX;
    /// Snapshot the balances after this many log bytes since the last snapshot.
    snapshot_every_bytes: u64 => config.storage.snapshot_every_bytes, bounds 1..=u64::MAX;
    /// A new log segment file starts once the current one would pass this size.
    log_segment_bytes: u64 => config.storage.log_segment_bytes,
        bounds 4096_u64..=1_099_511_627_776;
    /// A file of scoped bearer tokens, one per line: `<token> <scope>[,<scope>...] [name]`
    /// (scopes `ingest`, `read`, `admin`). Unset: no token is asked for (the server is open).
    /// Re-read on SIGHUP.
    auth_tokens_file: PathBuf => config.access.auth_tokens_file, default_note "none (open)";
    /// PEM certificate chain: with `tls-key`, every listener speaks TLS 1.2/1.3 only.
    /// Re-read on SIGHUP.
    tls_cert: PathBuf => config.access.tls_cert, default_note "none (plain HTTP)";
    /// PEM private key of `tls-cert`.
    tls_key: PathBuf => config.access.tls_key, default_note "none";
    /// A second listener for /metrics, /stats, /healthz and /readyz only, with its own small
    /// connection budget, so it answers while the main port is full.
    admin_addr: SocketAddr => config.access.admin_addr, default_note "none";
    /// Events per second each token may post on average (429 `rate_limited` above it);
    /// 0: no limit. Needs `auth-tokens-file`.
    rate_limit_per_second: f64 => config.access.rate_limit_per_second,
        alias "rate_limit";
    /// Events a token may post at once above its average rate.
    rate_limit_burst_events: u64 => config.access.rate_limit_burst_events,
        bounds 1..=MAX_RATE_LIMIT_BURST_EVENTS, alias "rate_limit_burst";
    /// Run as a node of a NATS JetStream cluster: the NATS servers' URLs, comma-separated
    /// (`nats://10.0.0.1:4222,nats://10.0.0.2:4222`). Events are answered once the stream
    /// stored them; `queue-capacity-events` is the stream's bound; no data directory is used.
    nats: NatsUrls => config.cluster.nats, default_note "none (standalone)";
    /// Partitions of the cluster's events stream (one owner each); fixed once the stream
    /// exists (it records the count; a node started with another count refuses to start).
    /// Needs `nats`.
    partitions: u32 => config.cluster.partitions, bounds 1..=MAX_PARTITIONS;
    /// A partition whose owner stops renewing its lease for this long moves to another node.
    /// Needs `nats`.
    lease_ttl_ms: u64 => config.cluster.lease_ttl_ms, bounds MIN_LEASE_TTL_MS..=MAX_LEASE_TTL_MS;
}

/// The older switch `--inline`: `true` is `mode = inline`, `false` is `mode = queued`.
const INLINE_SWITCH: &str = "inline";
/// The env var of [`INLINE_SWITCH`].
const INLINE_ENV: &str = "FLOODGATE_INLINE";

impl Setting {
    /// Flag and config-file key: the name in kebab-case.
    pub fn flag(&self) -> String {
        kebab(self.name)
    }

    /// Environment variable: `FLOODGATE_` and the name in capitals.
    pub fn env(&self) -> String {
        env_name(self.name)
    }

    /// The value this setting has in `settings`, as the start-up log shows it.
    pub fn value(&self, settings: &ServeSettings) -> String {
        (self.get)(settings)
    }

    fn arg(&self) -> Arg {
        let default = self
            .default_note
            .map_or_else(|| self.value(&ServeSettings::production()), str::to_owned);
        let bounds = self
            .bounds
            .map(|show| format!(" [{}]", show()))
            .unwrap_or_default();
        Arg::new(self.name)
            .long(self.flag())
            .env(self.env())
            .value_name(self.name.to_ascii_uppercase())
            .help(format!("{}{bounds} [default: {default}]", self.help_text()))
            .aliases(self.aliases.iter().map(|alias| kebab(alias)))
            .action(ArgAction::Set)
    }

    /// The doc lines as one paragraph.
    fn help_text(&self) -> String {
        let lines: Vec<&str> = self.help.iter().map(|line| line.trim()).collect();
        lines.join(" ")
    }

    fn named(name: &str) -> Option<&'static Setting> {
        let name = name.replace('-', "_");
        SETTINGS
            .iter()
            .find(|setting| setting.name == name || setting.aliases.contains(&name.as_str()))
    }
}

impl ServeSettings {
    /// The production default (no stage), on [`DEFAULT_ADDR`], keeping its balances in
    /// `floodgate-data`.
    pub fn production() -> Self {
        let mut config = ServerConfig::production();
        config.storage = StorageConfig::production();
        Self::from_config(config)
    }

    fn from_config(config: ServerConfig) -> Self {
        let addr = DEFAULT_ADDR
            .parse()
            .unwrap_or_else(|_| unreachable!("a valid literal"));
        Self { addr, config }
    }

    /// Every setting as `name=value`, in [`SETTINGS`] order (the start-up log line).
    pub fn describe(&self) -> String {
        SETTINGS
            .iter()
            .map(|setting| format!("{}={}", setting.name, setting.value(self)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Checks every declared bound of `config`; the message names the setting.
pub(crate) fn check_bounds(config: &ServerConfig) -> Result<(), String> {
    SETTINGS.iter().try_for_each(|setting| {
        (setting.check)(config).map_err(|error| format!("invalid `{}`: {error}", setting.flag()))
    })
}

/// Where a value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// A command-line flag.
    Flag,
    /// An environment variable.
    Env(String),
    /// A key of the config file.
    File(PathBuf),
}

impl Display for Source {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Flag => formatter.write_str("from a flag"),
            Self::Env(var) => write!(formatter, "from env {var}"),
            Self::File(path) => write!(formatter, "from config file {}", path.display()),
        }
    }
}

/// One value of one layer.
#[derive(Debug, Clone)]
struct Given {
    setting: &'static Setting,
    value: String,
    source: Source,
}

/// `floodgate serve`'s flags and env vars as parsed (built from [`SETTINGS`]), plus
/// `--config`. [`ServeArgs::resolve`] layers them over the file, the preset and the defaults.
#[derive(Debug, Clone, Default)]
pub struct ServeArgs {
    /// Flag and env values, lowest precedence first.
    given: Vec<Given>,
    /// `--config`: a TOML file with any of the settings.
    pub config: Option<PathBuf>,
}

impl clap::Args for ServeArgs {
    fn augment_args(command: Command) -> Command {
        let command = SETTINGS
            .iter()
            .fold(command, |command, setting| command.arg(setting.arg()));
        command
            .arg(
                Arg::new(INLINE_SWITCH)
                    .long(INLINE_SWITCH)
                    .env(INLINE_ENV)
                    .num_args(0..=1)
                    .default_missing_value("true")
                    .help("Shorthand: `--inline` is `--mode inline`, `--inline=false` is `--mode queued`"),
            )
            .arg(
                Arg::new("config")
                    .long("config")
                    .env(env_name("config"))
                    .value_parser(clap::value_parser!(PathBuf))
                    .help("A TOML file with any of these settings (keys spelled like the flags, e.g. `header-timeout-ms = 5000`); flags and env vars win over it"),
            )
    }

    fn augment_args_for_update(command: Command) -> Command {
        Self::augment_args(command)
    }
}

impl clap::FromArgMatches for ServeArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = ServeArgs {
            given: Vec::new(),
            config: matches.get_one::<PathBuf>("config").cloned(),
        };
        let inline = Setting::named("mode").map(|mode| (INLINE_SWITCH, mode));
        let all = SETTINGS.iter().map(|setting| (setting.name, setting));
        for (id, setting) in all.chain(inline) {
            let (Some(value), Some(source)) =
                (matches.get_one::<String>(id), matches.value_source(id))
            else {
                args.push_legacy_env(setting);
                continue;
            };
            let value = if id == INLINE_SWITCH {
                inline_as_mode(value)
            } else {
                value.clone()
            };
            let source = match source {
                ValueSource::EnvVariable => Source::Env(env_name(id)),
                _ => Source::Flag,
            };
            args.given.push(Given {
                setting,
                value,
                source,
            });
        }
        // Env values first, flags after: the later layer wins.
        args.given
            .sort_by_key(|given| matches!(given.source, Source::Flag));
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl ServeArgs {
    /// Reads an older env var spelling (`FLOODGATE_QUEUE_CAPACITY`) when the current one is
    /// not set ([`ServeArgs::resolve`] logs that it was renamed).
    fn push_legacy_env(&mut self, setting: &'static Setting) {
        for alias in setting.aliases {
            let var = env_name(alias);
            if let Ok(value) = std::env::var(&var) {
                self.given.push(Given {
                    setting,
                    value,
                    source: Source::Env(var),
                });
            }
        }
    }

    /// Layers flags and env over the config file, the stage preset and the production
    /// default; checks every value; says what to run.
    pub fn resolve(self) -> anyhow::Result<ServePlan> {
        for given in &self.given {
            if let Source::Env(var) = &given.source
                && *var != given.setting.env()
                && var != INLINE_ENV
            {
                tracing::warn!(
                    "{var} is renamed {}: please use the new name",
                    given.setting.env()
                );
            }
        }
        let mut layers = match &self.config {
            Some(path) => read_config_file(path)?,
            None => Vec::new(),
        };
        layers.extend(self.given);
        plan(&layers)
    }
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
        /// Where to listen and the validated configuration.
        settings: Box<ServeSettings>,
    },
}

/// Applies `layers` (lowest precedence first) over the stage preset they name, or the
/// production default.
fn plan(layers: &[Given]) -> anyhow::Result<ServePlan> {
    let stage_setting = Setting::named("stage").context("the stage setting")?;
    let mut settings = ServeSettings::production();
    for given in layers.iter().filter(|given| given.setting.name == "stage") {
        apply(&mut settings, given)?;
    }
    let stage = settings.config.stage;
    if let Some(stage @ 3..=8) = stage {
        let preset = ServerConfig::for_stage(stage).context("every stage 3..=8 has a preset")?;
        settings.config = preset;
    }
    let http_settings = layers
        .iter()
        .any(|given| !["addr", stage_setting.name].contains(&given.setting.name));
    for given in layers {
        apply(&mut settings, given)?;
    }
    match stage {
        Some(1 | 2) if http_settings => tracing::warn!(
            "stages 1 and 2 are the raw echo servers: engine and front-door settings are ignored"
        ),
        _ => {}
    }
    match stage {
        Some(1) => Ok(ServePlan::Blocking {
            addr: settings.addr,
        }),
        Some(2) => Ok(ServePlan::Echo {
            addr: settings.addr,
        }),
        _ => {
            settings.config.validate()?;
            Ok(ServePlan::Http {
                settings: Box::new(settings),
            })
        }
    }
}

fn apply(settings: &mut ServeSettings, given: &Given) -> anyhow::Result<()> {
    (given.setting.set)(settings, &given.value).map_err(|error| {
        anyhow::anyhow!(
            "invalid value `{}` for `{}` ({}): {error}",
            given.value,
            given.setting.flag(),
            given.source
        )
    })
}

/// Reads the config file named by `--config` (bounded in size): its keys, checked against
/// [`SETTINGS`], as the lowest layer above the preset.
fn read_config_file(path: &Path) -> anyhow::Result<Vec<Given>> {
    let metadata = std::fs::metadata(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    anyhow::ensure!(
        metadata.len() <= CONFIG_FILE_MAX_BYTES,
        "config file {} is larger than {CONFIG_FILE_MAX_BYTES} bytes",
        path.display()
    );
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    parse_config_text(&text, path)
}

/// Parses config-file text; an unknown key is refused by name.
fn parse_config_text(text: &str, path: &Path) -> anyhow::Result<Vec<Given>> {
    let table: toml::Table =
        toml::from_str(text).with_context(|| format!("invalid config file {}", path.display()))?;
    let mut given = Vec::new();
    for (key, value) in table {
        let value = match value {
            toml::Value::String(text) => text,
            other => other.to_string(),
        };
        let (setting, value) = if key == INLINE_SWITCH {
            (Setting::named("mode"), inline_as_mode(&value))
        } else {
            (Setting::named(&key), value)
        };
        let setting = setting.with_context(|| {
            format!(
                "unknown setting `{key}` in config file {} (see `floodgate serve --help`)",
                path.display()
            )
        })?;
        given.push(Given {
            setting,
            value,
            source: Source::File(path.to_owned()),
        });
    }
    Ok(given)
}

/// The older `inline` switch as a `mode` value; anything but a false value means inline.
fn inline_as_mode(value: &str) -> String {
    let off = ["false", "0", "no", "off"].contains(&value.to_ascii_lowercase().as_str());
    if off { "queued" } else { "inline" }.to_owned()
}

fn parse<T: FromStr<Err: Display>>(text: &str) -> Result<T, String> {
    text.trim()
        .parse()
        .map_err(|error: T::Err| error.to_string())
}

fn within<T: PartialOrd + Display>(value: &T, bounds: &RangeInclusive<T>) -> Result<(), String> {
    if bounds.contains(value) {
        Ok(())
    } else {
        Err(format!("{value} is outside {}", show_bounds(bounds)))
    }
}

fn show_bounds<T: Display>(bounds: &RangeInclusive<T>) -> String {
    format!("{}..={}", bounds.start(), bounds.end())
}

/// A setting's value as stored: shown in the log, and checked against bounds when present.
trait Stored {
    type Value: Display + ?Sized;
    fn current(&self) -> Option<&Self::Value>;
    fn show(&self) -> String;
}

macro_rules! stored_as_is {
    ($($type:ty),+) => {$(
        impl Stored for $type {
            type Value = Self;
            fn current(&self) -> Option<&Self> {
                Some(self)
            }
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )+};
}

stored_as_is!(
    SocketAddr,
    NatsUrls,
    u8,
    u32,
    u64,
    usize,
    f64,
    ProcessingMode,
    LedgerStrategy,
    QueueKind,
    DurabilityMode
);

/// A path is shown as given (never bounded).
impl Stored for PathBuf {
    type Value = str;
    fn current(&self) -> Option<&str> {
        self.to_str()
    }
    fn show(&self) -> String {
        self.display().to_string()
    }
}

/// An optional setting: `none` when unset.
impl<T: Stored> Stored for Option<T> {
    type Value = T::Value;
    fn current(&self) -> Option<&T::Value> {
        self.as_ref().and_then(Stored::current)
    }
    fn show(&self) -> String {
        self.as_ref()
            .map_or_else(|| "none".to_owned(), Stored::show)
    }
}

fn kebab(name: &str) -> String {
    name.replace('_', "-")
}

fn env_name(name: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        name.to_ascii_uppercase().replace('-', "_")
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use floodgate_core::config::DEFAULT_SHARDS;

    use super::*;
    use crate::config::DEFAULT_HEADER_TIMEOUT_MS;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn parse(flags: &[&str]) -> ServeArgs {
        let argv = std::iter::once("serve").chain(flags.iter().copied());
        Cli::try_parse_from(argv).expect("flags parse").args
    }

    fn file(text: &str) -> Vec<Given> {
        parse_config_text(text, Path::new("test.toml")).expect("file parses")
    }

    /// An env layer as clap would read it: `(setting, value)` pairs.
    fn env(pairs: &[(&str, &str)]) -> Vec<Given> {
        pairs
            .iter()
            .map(|(name, value)| {
                let setting = Setting::named(name).expect("a setting");
                Given {
                    setting,
                    value: (*value).to_owned(),
                    source: Source::Env(setting.env()),
                }
            })
            .collect()
    }

    /// Layers lowest first: file, env, flags (the order `resolve` uses).
    fn layered(file: Vec<Given>, env: Vec<Given>, flags: &ServeArgs) -> anyhow::Result<ServePlan> {
        let mut layers = file;
        layers.extend(env);
        layers.extend(flags.given.iter().cloned());
        plan(&layers)
    }

    fn http(plan: anyhow::Result<ServePlan>) -> ServerConfig {
        match plan.expect("valid settings") {
            ServePlan::Http { settings } => settings.config,
            other => panic!("expected the HTTP server, got {other:?}"),
        }
    }

    // Proves the precedence chain on representative settings, one layer at a time:
    // flag > env > config file > stage preset > production default.
    #[test]
    fn flag_beats_env_beats_file_beats_preset_beats_default() {
        let file = || file("stage = 7\nworkers = 3\nhold-ms = 20\nmax-users = 9\nshards = 5\n");
        let env = || {
            env(&[
                ("workers", "4"),
                ("shards", "6"),
                ("idle_timeout_ms", "777"),
            ])
        };
        let config = http(layered(file(), env(), &parse(&["--workers", "5"])));
        assert_eq!(config.engine.workers, 5, "flag beats env");
        assert_eq!(config.engine.shards, 6, "env beats file");
        assert_eq!(config.front_door.idle_timeout_ms, 777, "env beats default");
        assert_eq!(config.engine.max_users, 9, "file beats default");
        assert_eq!(config.engine.hold_ms, 20, "file beats preset");
        assert_eq!(config.engine.work_ms, 100, "preset (stage 7) beats default");
        assert_eq!(config.engine.queue_capacity_events, 100, "preset");
        assert_eq!(
            config.front_door.header_timeout_ms,
            DEFAULT_HEADER_TIMEOUT_MS
        );
        assert_eq!(config.stage, Some(7));
        let config = http(layered(file(), Vec::new(), &parse(&[])));
        assert_eq!(config.engine.workers, 3, "file beats preset");
        let config = http(layered(file(), env(), &parse(&["--stage", "8"])));
        assert_eq!(config.stage, Some(8), "a flag picks another preset");
        assert_eq!(config.engine.strategy, LedgerStrategy::Sharded);
        assert_eq!(config.engine.workers, 4, "env still beats the preset");
        let config = http(layered(Vec::new(), Vec::new(), &parse(&[])));
        assert_eq!(config.engine.shards, DEFAULT_SHARDS, "production default");
        assert!(
            parse(&["--max-users", "0"]).resolve().is_err(),
            "max users 0 refused"
        );
    }

    // Proves a switch set by a lower layer is turned off by a higher one: the file's inline
    // mode by env, env's inline by a flag, and the older `--inline=false` spelling.
    #[test]
    fn a_higher_layer_turns_a_switch_off() {
        let inline_file = || file("mode = \"inline\"\n");
        let mode = |plan| http(plan).engine.mode;
        assert_eq!(
            mode(layered(inline_file(), Vec::new(), &parse(&[]))),
            ProcessingMode::Inline
        );
        let queued_env = env(&[("mode", "queued")]);
        assert_eq!(
            mode(layered(inline_file(), queued_env, &parse(&[]))),
            ProcessingMode::Queued
        );
        let inline_env = env(&[("mode", "inline")]);
        let flags = parse(&["--mode", "queued"]);
        assert_eq!(
            mode(layered(Vec::new(), inline_env, &flags)),
            ProcessingMode::Queued
        );
        let old_file = file("inline = true\n");
        let flags = parse(&["--inline=false"]);
        assert_eq!(
            mode(layered(old_file, Vec::new(), &flags)),
            ProcessingMode::Queued
        );
        assert_eq!(
            mode(layered(Vec::new(), Vec::new(), &parse(&["--inline"]))),
            ProcessingMode::Inline
        );
    }

    // Proves a stage preset plus explicit flags (older spellings included): the flags win,
    // the rest is the preset's.
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
            "--queue-capacity",
            "50",
        ]);
        let config = http(flags.resolve());
        assert_eq!(config.engine.strategy, LedgerStrategy::Global);
        assert_eq!(config.engine.mode, ProcessingMode::Inline);
        assert_eq!(config.engine.workers, 16);
        assert_eq!(config.engine.queue_capacity_events, 50);
        assert!((config.engine.time_scale - 0.1).abs() < f64::EPSILON);
        let old_file = file("state = \"sharded\"\nqueue-kind = \"shared-receiver\"\n");
        let config = http(layered(old_file, Vec::new(), &parse(&[])));
        assert_eq!(config.engine.strategy, LedgerStrategy::Sharded);
        assert_eq!(config.engine.queue_kind, QueueKind::SharedReceiver);
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

    // Proves `--addr` takes a host name as well as an IP literal: `localhost:0` resolves at
    // start to a loopback address (port kept), and a name that does not resolve is refused
    // with a message naming the setting.
    #[test]
    fn addr_accepts_host_names() {
        let Ok(ServePlan::Http { settings }) = parse(&["--addr", "localhost:0"]).resolve() else {
            panic!("localhost:0 is a valid address");
        };
        let addr = settings.addr;
        assert!(addr.ip().is_loopback(), "{addr}");
        assert_eq!(addr.port(), 0);
        let Ok(ServePlan::Http { settings }) = parse(&["--addr", "[::1]:9"]).resolve() else {
            panic!("an IPv6 literal is a valid address");
        };
        assert_eq!(settings.addr.to_string(), "[::1]:9");
        let error = parse(&["--addr", "no-such-host.invalid:8080"])
            .resolve()
            .expect_err("refused");
        assert!(format!("{error:#}").contains("addr"), "{error:#}");
        let error = parse(&["--addr", "localhost"])
            .resolve()
            .expect_err("no port");
        assert!(format!("{error:#}").contains("addr"), "{error:#}");
    }

    // Proves invalid values are refused at start with a message naming the setting, from a
    // flag, from env, from the config file, and for an unknown config key.
    #[test]
    fn invalid_values_are_refused_by_name() {
        let error = parse(&["--max-connections", "0"])
            .resolve()
            .expect_err("refused");
        assert!(error.to_string().contains("max-connections"), "{error}");
        let error = parse(&["--workers", "0"]).resolve().expect_err("refused");
        assert!(format!("{error:#}").contains("workers"), "{error:#}");
        assert!(parse(&["--stage", "9"]).resolve().is_err());
        let error = parse_config_text("workerz = 3", Path::new("x.toml")).expect_err("refused");
        assert!(error.to_string().contains("`workerz`"), "{error}");
        let error =
            layered(file("body-timeout-ms = 0"), Vec::new(), &parse(&[])).expect_err("refused");
        assert!(error.to_string().contains("body-timeout-ms"), "{error}");
        let error =
            layered(Vec::new(), env(&[("workers", "many")]), &parse(&[])).expect_err("refused");
        let message = error.to_string();
        assert!(
            message.contains("`workers`") && message.contains("FLOODGATE_WORKERS"),
            "{message}"
        );
        let error = layered(Vec::new(), env(&[("strategy", "lockless")]), &parse(&[]))
            .expect_err("refused");
        assert!(error.to_string().contains("`strategy`"), "{error}");
    }

    // Proves the naming rule every setting follows: flag and file key are the name in
    // kebab-case, the env var is FLOODGATE_ and the name in capitals, names are unique, and
    // the start-up line shows every setting by that name.
    #[test]
    fn every_setting_follows_the_naming_rule() {
        let command = Cli::command_for_test();
        for setting in SETTINGS {
            let arg = command
                .get_arguments()
                .find(|arg| arg.get_id() == setting.name)
                .expect("an arg per setting");
            assert_eq!(arg.get_long(), Some(setting.flag().as_str()));
            let env = arg.get_env().map(|env| env.to_string_lossy().into_owned());
            assert_eq!(
                env.as_deref(),
                Some(format!("FLOODGATE_{}", setting.name.to_uppercase()).as_str())
            );
            let named = SETTINGS.iter().filter(|other| other.name == setting.name);
            assert_eq!(named.count(), 1, "{} declared once", setting.name);
        }
        let line = ServeSettings::production().describe();
        assert!(line.contains("queue_capacity_events=65536"), "{line}");
        assert!(
            line.contains("strategy=owned") && line.contains("mode=queued"),
            "{line}"
        );
    }

    // Proves the README and the code agree on the settings: every declared setting has a row
    // in the README's settings table, by its flag, and every flag the table's first column
    // lists exists.
    #[test]
    fn the_readme_lists_every_setting() {
        let readme = include_str!("../../../README.md");
        let table: Vec<&str> = readme
            .lines()
            .skip_while(|line| !line.starts_with("| setting | default |"))
            .take_while(|line| line.starts_with('|'))
            .collect();
        assert!(!table.is_empty(), "the README has a settings table");
        for setting in SETTINGS {
            let flag = format!("`--{}", setting.flag());
            assert!(
                table.iter().any(|row| row.contains(&flag)),
                "README settings table lacks {flag}`"
            );
        }
        for row in &table[2..] {
            let first_cell = row.split('|').nth(1).unwrap_or_default();
            for flag in first_cell.split("`--").skip(1) {
                let name: String = flag
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                assert!(
                    Setting::named(&name).is_some(),
                    "README lists unknown --{name}"
                );
            }
        }
    }

    impl Cli {
        fn command_for_test() -> Command {
            <Self as clap::CommandFactory>::command()
        }
    }
}
