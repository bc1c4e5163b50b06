//! The bodies a run sends: valid events (users uniform or Zipf-skewed, amounts in a range)
//! mixed with deliberately malformed ones.
//!
//! Lesson (stage 3, docs/stages.md): real clients send garbage, so validation must be exercised
//! under load, not only in unit tests; (stage 8) skewed users make hot keys visible.
//! Invariant: every body carries the amount it encodes (or `None` when malformed), so the run
//! can sum the amounts of the accepted events and check them against the server's balances.

use std::fmt::Write as _;

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

/// One request body.
#[derive(Clone, Debug)]
pub struct Body {
    /// The bytes to send.
    pub bytes: Bytes,
    /// The event's amount, or `None` for a deliberately malformed body.
    pub amount: Option<i64>,
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
            buffer: BytesMut::with_capacity(4096),
        }
    }

    /// The next body.
    pub fn next_body(&mut self) -> Body {
        if self.invalid_ratio > 0.0 && self.rng.random_bool(self.invalid_ratio) {
            let index = self.rng.random_range(0..INVALID_BODIES.len());
            return Body {
                bytes: Bytes::from_static(INVALID_BODIES[index]),
                amount: None,
            };
        }
        let user = self.next_user();
        let amount = self.rng.random_range(self.amount_min..=self.amount_max);
        if self.buffer.capacity() < 128 {
            self.buffer.reserve(4096);
        }
        // Writing into a BytesMut cannot fail.
        let _ = write!(
            self.buffer,
            "{{\"user\":\"user{user}\",\"amount\":{amount}}}"
        );
        Body {
            bytes: self.buffer.split().freeze(),
            amount: Some(amount),
        }
    }

    fn next_user(&mut self) -> u64 {
        match &self.zipf {
            // Zipf yields ranks 1..=users; rank 1 (the hottest) is `user0`.
            Some(zipf) => (zipf.sample(&mut self.rng) as u64).clamp(1, self.users) - 1,
            None => self.rng.random_range(0..self.users),
        }
    }
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
            let amount = body.amount.unwrap();
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
            .filter(|_| source.next_body().amount.is_none())
            .count();
        assert!((2_500..3_500).contains(&invalid), "{invalid}");
        for bytes in INVALID_BODIES {
            let value: Result<serde_json::Value, _> = serde_json::from_slice(bytes);
            let is_event = value.is_ok_and(|v| v["user"].is_string() && v["amount"].is_i64());
            assert!(!is_event);
        }
        config.invalid_ratio = 0.0;
        let mut source = EventSource::new(&config, 2);
        assert!((0..1000).all(|_| source.next_body().amount.is_some()));
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
}
