//! floodgate-server: the HTTP front door of Floodgate and the seed's raw lesson servers.
//!
//! Lesson: stages 1 to 8 (docs/stages.md) meet the network here. Stages 1 and 2 are the raw echo
//! servers in [`raw`]; stages 3 to 8 and the production default share one front door on axum
//! 0.8 and hyper 1 with our own accept loop ([`conn`]), the engine (`floodgate-core`) behind.
//! A request travels: [`conn`] (connection cap, deadlines) → [`auth`] (tokens, scopes, rate
//! limits: one gate) → [`routes`] (bounded body read, parse, admit) → the engine; failures
//! become responses in [`error`] only; [`metrics`] exposes it all; [`server`] starts and stops it; [`shutdown`] is the stop signal they
//! all observe; [`settings`] and [`cli`] are `floodgate serve`, [`signals`] the signals that
//! do not stop it, [`output`] the writes to stderr and stdout that cannot fail.
//! Invariant: the front door never waits for room in the queue, bounds every read (time and
//! size), and an event answered 202 is applied before a graceful stop returns its summary.

pub mod accept_failure;
pub mod auth;
pub mod batch;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod error;
pub mod linger;
pub mod metrics;
pub mod output;
pub mod rate_limit;
pub mod raw;
pub mod routes;
pub mod server;
pub mod settings;
pub mod shutdown;
pub mod signals;
pub mod tls;

pub use cli::serve_main;
pub use config::{FrontDoorConfig, ServerConfig};
pub use error::ApiError;
pub use raw::blocking::BlockingServerHandle;
pub use raw::echo::EchoServerHandle;
pub use server::{ServerHandle, run};
pub use settings::ServeArgs;
