//! The bytes of an event on the stream and of a partition snapshot in its bucket.
//!
//! Invariant: what a front door publishes is exactly what an owner applies: one user and one
//! amount per message, JSON so that `nats stream view` shows it to an operator.

use floodgate_core::Event;
use serde::{Deserialize, Serialize};

use crate::state::PartitionState;

/// An event as carried on the stream.
#[derive(Debug, Serialize, Deserialize)]
struct WireEvent<'a> {
    #[serde(borrow)]
    user: std::borrow::Cow<'a, str>,
    amount: i64,
}

/// The payload of `event` on the stream.
pub fn encode_event(event: &Event) -> bytes::Bytes {
    let wire = WireEvent {
        user: std::borrow::Cow::Borrowed(&event.user),
        amount: event.amount,
    };
    // Serializing a string and an integer cannot fail.
    serde_json::to_vec(&wire).map_or_else(|_| bytes::Bytes::new(), bytes::Bytes::from)
}

/// The event carried by a stream payload, or why it is not one.
pub fn decode_event(payload: &[u8]) -> Result<Event, serde_json::Error> {
    let wire: WireEvent<'_> = serde_json::from_slice(payload)?;
    Ok(Event::new(wire.user.into_owned(), wire.amount))
}

/// A partition's state as stored in the snapshot bucket, with who wrote it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Balances up to a stream sequence.
    #[serde(flatten)]
    pub state: PartitionState,
    /// The node that wrote this snapshot (for operators; not used for decisions).
    pub writer: String,
    /// The lease revision its writer held (for operators; the bucket revision fences).
    pub lease_revision: u64,
}

impl Snapshot {
    /// The bucket value of this snapshot.
    pub fn encode(&self) -> Result<bytes::Bytes, serde_json::Error> {
        serde_json::to_vec(self).map(bytes::Bytes::from)
    }

    /// A snapshot from its bucket value.
    pub fn decode(value: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves an event survives the trip through its stream payload unchanged.
    #[test]
    fn event_round_trips() {
        let event = Event::new("ünï \"quoted\"", -42);
        let decoded = decode_event(&encode_event(&event)).expect("decodes");
        assert_eq!(decoded, event);
    }

    // Proves a payload that is not an event is refused, not applied as something else.
    #[test]
    fn garbage_is_refused() {
        assert!(decode_event(b"{\"user\":\"a\"}").is_err());
        assert!(decode_event(b"not json").is_err());
    }
}
