//! The seed's raw lesson servers (stages 1 and 2): they echo the request body back.
//!
//! Lesson (docs/stages.md): stage 1 (a blocking, single-threaded server freezes behind one idle
//! client) and stage 2 (one async task per connection, so an idle client delays nobody else).
//! Invariant: both read a request exactly the same way ([`request`]): the head is parsed with
//! `httparse` (header names compared case-insensitively, the seed's stage-6 bug), the body is
//! read by `Content-Length`, and every buffer is bounded. Neither has a timeout: that is the
//! lesson, and the production front door (`crate::conn`) is where timeouts live.

pub mod blocking;
pub mod echo;
pub mod request;
