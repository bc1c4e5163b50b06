//! The bodies a run sends: valid events (users uniform or Zipf-skewed, amounts in a range)
//! mixed with deliberately malformed ones, one per request or NDJSON batches, with or without
//! ids.
//!
//! Lesson (stage 3, docs/stages.md): real clients send garbage, so validation must be exercised
//! under load, not only in unit tests; (stage 8) skewed users make hot keys visible; (issue 13)
//! an id is the event's identity and is chosen before the first attempt, so a resend of the
//! same bytes is the same event.
//! Invariant: every body carries the amount of each event it encodes, in order (`None` when
//! malformed), so the run can sum the amounts of the accepted events and check them against
//! the server's balances; ids are never reused within a run.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use rand::rngs::SmallRng;
use rand::{RngExt as _, SeedableRng as _};
use rand_distr::{Distribution as _, Zipf};

use crate::config::{LoadConfig, Skew};

/// Malformed bodies, each a different way of being wrong (the server answers 400 or 422).
pub const INVALID_BODIES: [&[u8]; 5] = [
    b"this is not json",                        // not JSON at all
    b"{\"user\":\"user0\",\"amount\":",         // cut short
    b"{\"user\":\"user0\",\"amount\":\"ten\"}", // wrong type
    b"{\"user\":\"user0\"}",                    // missing field
    b"[\"user0\",10]",                          // not an object
];

/// The amounts of a body's events, in order; `None` for a deliberately malformed one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Amounts {
    /// A single-event body (no allocation per request).
    One(Option<i64>),
    /// An NDJSON batch, one entry per line.
    Many(Vec<Option<i64>>),
}

/// One request body.
#[derive(Clone, Debug)]
pub struct Body {
    /// The bytes to send.
    pub bytes: Bytes,
    /// The amount of each event in the body.
    pub amounts: Amounts,
}

impl Body {
    /// The amounts, one per event.
    pub fn amounts(&self) -> &[Option<i64>] {
        match &self.amounts {
            Amounts::One(amount) => std::slice::from_ref(amount),
            Amounts::Many(amounts) => amounts,
        }
    }

    /// Events in the body.
    pub fn event_count(&self) -> usize {
        self.amounts().len()
    }
}

/// A per-worker stream of bodies, deterministic for a given seed and stream number.
#[derive(Debug)]
pub struct EventSource {
    rng: SmallRng,
    users: u64,
    zipf: Option<Zipf<f64>>,
    amount_min: i64,
    amount_max: i64,
    invalid_ratio: f64,
    batch_events: Option<usize>,
    /// Draws the random part of ids: seeded apart from `rng` and from the clock, so two runs
    /// with the same `--seed` send the same events with different ids.
    id_rng: Option<SmallRng>,
    buffer: BytesMut,
}

impl EventSource {
    /// A source for one worker; `stream` makes each worker's sequence distinct.
    pub fn new(config: &LoadConfig, stream: u64) -> Self {
        let zipf = match config.skew {
            Skew::Uniform => None,
            // Validated: users >= 1 and exponent >= 0, so construction cannot fail.
            Skew::Zipf { exponent } => Zipf::new(config.users as f64, exponent).ok(),
        };
        Self {
            rng: SmallRng::seed_from_u64(config.seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            users: config.users,
            zipf,
            amount_min: config.amount_min,
            amount_max: config.amount_max,
            invalid_ratio: config.invalid_ratio,
            batch_events: config.batch_events,
            id_rng: config.ids.then(|| {
                let clock = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |elapsed| elapsed.as_nanos() as u64);
                SmallRng::seed_from_u64(clock ^ stream.rotate_left(17) ^ config.seed)
            }),
            buffer: BytesMut::with_capacity(4096),
        }
    }

    /// The next body: one event, or a batch of `batch_events` lines.
    pub fn next_body(&mut self) -> Body {
        let Some(events) = self.batch_events else {
            let amount = self.write_event();
            return Body {
                bytes: self.buffer.split().freeze(),
                amounts: Amounts::One(amount),
            };
        };
        let mut amounts = Vec::with_capacity(events);
        for _ in 0..events {
            amounts.push(self.write_event());
            self.buffer.extend_from_slice(b"\n");
        }
        Body {
            bytes: self.buffer.split().freeze(),
            amounts: Amounts::Many(amounts),
        }
    }

    /// Appends one event (valid or, at `invalid_ratio`, malformed) to the buffer; its amount.
    fn write_event(&mut self) -> Option<i64> {
        if self.buffer.capacity() < 256 {
            self.buffer.reserve(64 * 1024);
        }
        if self.invalid_ratio > 0.0 && self.rng.random_bool(self.invalid_ratio) {
            let index = self.rng.random_range(0..INVALID_BODIES.len());
            self.buffer.extend_from_slice(INVALID_BODIES[index]);
            return None;
        }
        let user = self.next_user();
        let amount = self.rng.random_range(self.amount_min..=self.amount_max);
        // Writing into a BytesMut cannot fail.
        let _ = write!(self.buffer, "{{\"user\":\"user{user}\",\"amount\":{amount}");
        if let Some(id_rng) = &mut self.id_rng {
            let id = next_id(id_rng);
            let mut text = [0_u8; uuid::fmt::Hyphenated::LENGTH];
            self.buffer.extend_from_slice(b",\"id\":\"");
            self.buffer
                .extend_from_slice(id.hyphenated().encode_lower(&mut text).as_bytes());
            self.buffer.extend_from_slice(b"\"");
        }
        self.buffer.extend_from_slice(b"}");
        Some(amount)
    }

    fn next_user(&mut self) -> u64 {
        match &self.zipf {
            // Zipf yields ranks 1..=users; rank 1 (the hottest) is `user0`.
            Some(zipf) => (zipf.sample(&mut self.rng) as u64).clamp(1, self.users) - 1,
            None => self.rng.random_range(0..self.users),
        }
    }
}

/// A UUIDv7: the current Unix time in milliseconds, then 74 random bits (RFC 9562 section
/// 5.7), so ids sort by creation time and two never collide in practice.
fn next_id(rng: &mut SmallRng) -> uuid::Uuid {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64);
    let random: [u8; 10] = rng.random();
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &Body) -> serde_json::Value {
        serde_json::from_slice(&body.bytes).unwrap()
    }

    #[test]
    fn valid_bodies_encode_their_amount_and_stay_in_range() {
        // Proves each valid body is JSON {"user","amount"} whose amount equals the one reported
        // (the basis of the accepted-amount check), within the range and the user set.
        let mut config = LoadConfig::new("http://127.0.0.1:1");
        config.users = 7;
        config.amount_min = -5;
        config.amount_max = 5;
        let mut source = EventSource::new(&config, 1);
        for _ in 0..1000 {
            let body = source.next_body();
            let value = parse(&body);
            let amount = body.amounts()[0].unwrap();
            assert_eq!(value["amount"].as_i64().unwrap(), amount);
            assert!((-5..=5).contains(&amount));
            let user = value["user"].as_str().unwrap();
            let index: u64 = user.strip_prefix("user").unwrap().parse().unwrap();
            assert!(index < 7);
        }
    }

    #[test]
    fn invalid_ratio_mixes_in_malformed_bodies_at_about_that_share() {
        // Proves --invalid-ratio 0.3 yields roughly 30% bodies without an amount, that none
        // of them is a valid event, and that ratio 0 yields none.
        let mut config = LoadConfig::new("http://127.0.0.1:1");
        config.invalid_ratio = 0.3;
        let mut source = EventSource::new(&config, 2);
        let invalid = (0..10_000)
            .filter(|_| source.next_body().amounts()[0].is_none())
            .count();
        assert!((2_500..3_500).contains(&invalid), "{invalid}");
        for bytes in INVALID_BODIES {
            let value: Result<serde_json::Value, _> = serde_json::from_slice(bytes);
            let is_event = value.is_ok_and(|v| v["user"].is_string() && v["amount"].is_i64());
            assert!(!is_event);
        }
        config.invalid_ratio = 0.0;
        let mut source = EventSource::new(&config, 2);
        assert!((0..1000).all(|_| source.next_body().amounts()[0].is_some()));
    }

    #[test]
    fn zipf_skew_makes_the_first_user_hot() {
        // Proves zipf:1.2 concentrates events on user0 far above the uniform share, while
        // uniform does not.
        let mut config = LoadConfig::new("http://127.0.0.1:1");
        config.users = 1000;
        let count_user0 = |config: &LoadConfig| {
            let mut source = EventSource::new(config, 3);
            (0..10_000)
                .filter(|_| parse(&source.next_body())["user"] == "user0")
                .count()
        };
        assert!(count_user0(&config) < 100);
        config.skew = Skew::Zipf { exponent: 1.2 };
        assert!(count_user0(&config) > 1000);
    }

    #[test]
    fn batches_are_ndjson_lines_in_the_order_of_their_amounts() {
        // Proves a batch body is `batch_events` lines, each the event whose amount is at the
        // same index (malformed lines where the amount is None), ending in a newline.
        let mut config = LoadConfig::new("http://127.0.0.1:1");
        config.batch_events = Some(50);
        config.invalid_ratio = 0.2;
        let mut source = EventSource::new(&config, 4);
        let body = source.next_body();
        assert_eq!(body.event_count(), 50);
        assert!(body.bytes.ends_with(b"\n"));
        let lines: Vec<&[u8]> = body.bytes.split(|&byte| byte == b'\n').collect();
        assert_eq!(lines.len(), 51);
        for (line, amount) in lines.iter().zip(body.amounts()) {
            let value: Option<serde_json::Value> = serde_json::from_slice(line).ok();
            match amount {
                Some(amount) => assert_eq!(value.unwrap()["amount"].as_i64(), Some(*amount)),
                None => assert!(value.is_none_or(|v| !v["amount"].is_i64())),
            }
        }
        assert!(body.amounts().iter().any(Option::is_none));
    }

    #[test]
    fn ids_are_uuid_v7_and_never_repeat() {
        // Proves --ids: every valid event carries an id that parses as a version-7 UUID, and
        // 20,000 of them (two sources with the same seed and stream) hold no repeat; without
        // --ids no event has one.
        let mut config = LoadConfig::new("http://127.0.0.1:1");
        config.ids = true;
        config.batch_events = Some(100);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2 {
            let mut source = EventSource::new(&config, 5);
            for _ in 0..100 {
                let body = source.next_body();
                for line in body
                    .bytes
                    .split(|&byte| byte == b'\n')
                    .filter(|l| !l.is_empty())
                {
                    let value: serde_json::Value = serde_json::from_slice(line).unwrap();
                    let id = value["id"].as_str().unwrap().to_owned();
                    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);
                    assert!(seen.insert(id));
                }
            }
        }
        assert_eq!(seen.len(), 20_000);
        config.ids = false;
        let body = EventSource::new(&config, 5).next_body();
        assert!(!body.bytes.windows(4).any(|window| window == b"\"id\""));
    }
}
