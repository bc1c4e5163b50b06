//! Integration tests of floodgate-server: real sockets on 127.0.0.1:0, real HTTP.
//!
//! Each module covers one part of the front door; `support` holds the raw-TCP helpers.

mod access;
mod fuzz;
mod fuzz_batch;
mod hostile;
mod http_contract;
mod ids;
mod lingering_close;
mod metrics_and_shutdown;
mod openapi;
mod raw_http;
mod raw_servers;
mod slow_clients;
mod stop_deadlines;
mod strict_requests;
mod support;
mod tls;
mod worker_failure;
