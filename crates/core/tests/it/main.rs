//! Integration tests of the engine through its public API: conservation under concurrency,
//! overload and shutdown for every ledger strategy and queue kind; the user limit; the seed's stages in
//! simulated (paused) time.

mod api;
mod conservation;
mod durable;
mod ids;
mod logged_batches;
mod stages;
mod support;
mod user_limit;
