//! The bytes of events on the stream and of a partition snapshot in its bucket.
//!
//! Invariant: what a front door publishes is exactly what an owner applies, and a message is
//! applied whole or not at all: it decodes completely (every event, every id) before anything
//! of it touches a balance.
//!
//! Two payloads share the partition subjects:
//!
//! - **One event** (`POST /events`): JSON `{"user":…,"amount":…}`, so that `nats stream view`
//!   shows it to an operator; its client id travels in `Nats-Msg-Id` (+ `Floodgate-Client-Id`).
//! - **A batch message** (`POST /events/batch`): one message per partition the HTTP batch spans,
//!   carrying that partition's events in the batch's order, in a compact binary encoding:
//!
//!   ```text
//!   message := "FGB1"  count:varint  event{count}
//!   event   := user_len:varint user:bytes  amount:zigzag-varint  id_len:varint id:bytes
//!   ```
//!
//!   `varint` is unsigned LEB128 (7 bits a byte, low first); `amount` is zigzag-mapped first
//!   (`(n << 1) ^ (n >> 63)`), so small debits are one or two bytes too. `user` is UTF-8 (1 to
//!   128 bytes), `id` the event's *client* id (1 to 64 printable ASCII bytes), `id_len` 0 when
//!   the client gave none. A JSON payload starts with `{`, never `F`, so the magic tells the two
//!   apart; the `1` is the format's version. An event costs its user and id plus 3 to 13 bytes
//!   (about 40 bytes for a 10-byte user and a 24-byte id, against ~45 of JSON without the id),
//!   so 1,000 events are at most ~210 KB, under NATS's default 1 MiB `max_payload`.
//!
//! A batch message's `Nats-Msg-Id` is [`batch_message_id`]: a digest of its events' client ids
//! in order (plus a token made once per message when one of them has no id), so an identical
//! resend is a JetStream duplicate, and the node's own retry of the message is one too.

use floodgate_core::{Event, EventId};
use ring::digest;
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

/// The first bytes of a batch message (format version 1).
pub const BATCH_MAGIC: &[u8; 4] = b"FGB1";

/// Why a payload on the stream is not something an owner can apply.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A one-event payload that is not the event's JSON.
    #[error("not an event: {0}")]
    Json(#[from] serde_json::Error),
    /// A batch message cut short, with bytes left over, or with a field out of its bounds.
    #[error("malformed batch message: {0}")]
    Batch(&'static str),
}

/// What one message on a partition subject carries.
#[derive(Debug, PartialEq, Eq)]
pub enum Payload {
    /// One event (its client id, if any, is in the message's headers).
    One(Event),
    /// A batch message: events in order, each with its client id (if it had one).
    Batch(Vec<Event>),
}

/// The payload of a message, decoded whole (a batch message fails as a whole).
pub fn decode_payload(payload: &[u8]) -> Result<Payload, WireError> {
    match payload.strip_prefix(BATCH_MAGIC) {
        Some(body) => decode_batch_body(body).map(Payload::Batch),
        None => Ok(Payload::One(decode_event(payload)?)),
    }
}

/// The batch message carrying `events` (their client ids included), in order.
pub fn encode_batch<'a>(events: impl ExactSizeIterator<Item = &'a Event>) -> bytes::Bytes {
    let mut out = Vec::with_capacity(BATCH_MAGIC.len() + 5 + events.len() * 40);
    out.extend_from_slice(BATCH_MAGIC);
    put_varint(&mut out, events.len() as u64);
    for event in events {
        put_varint(&mut out, event.user.len() as u64);
        out.extend_from_slice(event.user.as_bytes());
        put_varint(&mut out, zigzag(event.amount));
        let id = event.id.as_ref().map_or("", EventId::as_str);
        put_varint(&mut out, id.len() as u64);
        out.extend_from_slice(id.as_bytes());
    }
    bytes::Bytes::from(out)
}

/// The `Nats-Msg-Id` of a batch message: `fgb-` and 32 hex digits of the SHA-256 of its
/// events' client ids in order (each length-prefixed, an event without one as length 0), and
/// of `token` when any event has no id. A resend of the same ids in the same message is the
/// same id (a JetStream duplicate); `token`, made once per message by the node, keeps a
/// message with anonymous events unique while its own retries still share it.
pub fn batch_message_id<'a>(events: impl Iterator<Item = &'a Event>, token: &str) -> String {
    let mut context = digest::Context::new(&digest::SHA256);
    let mut anonymous = false;
    for event in events {
        let id = event.id.as_ref().map_or("", EventId::as_str);
        anonymous |= id.is_empty();
        context.update(&(id.len() as u32).to_le_bytes());
        context.update(id.as_bytes());
    }
    if anonymous {
        context.update(b"\0token:");
        context.update(token.as_bytes());
    }
    let digest = context.finish();
    let mut id = String::with_capacity(36);
    id.push_str("fgb-");
    for byte in &digest.as_ref()[..16] {
        id.push(char::from(HEX[usize::from(byte >> 4)]));
        id.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    id
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)).cast_unsigned()
}

fn unzigzag(value: u64) -> i64 {
    (value >> 1).cast_signed() ^ -(value & 1).cast_signed()
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A cursor over a batch message's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self
                .bytes
                .split_first()
                .ok_or(WireError::Batch("cut short in a number"))?;
            self.bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::Batch("a number longer than 64 bits"))
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], WireError> {
        let len = usize::try_from(len).map_err(|_| WireError::Batch("a length too large"))?;
        if len > self.bytes.len() {
            return Err(WireError::Batch("cut short in a string"));
        }
        let (taken, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(taken)
    }
}

fn decode_batch_body(body: &[u8]) -> Result<Vec<Event>, WireError> {
    let mut reader = Reader { bytes: body };
    let count = reader.varint()?;
    // Every event takes at least 4 bytes: a count beyond that is a lie, not an allocation.
    if count > body.len() as u64 / 4 {
        return Err(WireError::Batch("more events than bytes"));
    }
    let mut events = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let user_len = reader.varint()?;
        let user = std::str::from_utf8(reader.take(user_len)?)
            .map_err(|_| WireError::Batch("a user that is not UTF-8"))?;
        if user.is_empty() {
            return Err(WireError::Batch("an empty user"));
        }
        let amount = unzigzag(reader.varint()?);
        let id_len = reader.varint()?;
        let mut event = Event::new(user, amount);
        if id_len > 0 {
            let id = std::str::from_utf8(reader.take(id_len)?)
                .map_err(|_| WireError::Batch("an id that is not ASCII"))?;
            let id = EventId::parse(id).map_err(|_| WireError::Batch("an invalid id"))?;
            event = event.with_id(id);
        }
        events.push(event);
    }
    if !reader.bytes.is_empty() {
        return Err(WireError::Batch("bytes after the last event"));
    }
    Ok(events)
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

    fn with_id(user: &str, amount: i64, id: &str) -> Event {
        Event::new(user, amount).with_id(EventId::parse(id).expect("id"))
    }

    // Proves a batch message carries every event, amount and client id unchanged, in order,
    // extremes included, and that a one-event JSON payload still decodes as one event.
    #[test]
    fn a_batch_message_round_trips_and_json_is_one_event() {
        let events = vec![
            with_id("ünï", i64::MIN, "order-1"),
            Event::new("b", i64::MAX),
            with_id("c", 0, &"x".repeat(64)),
            Event::new("d".repeat(128), -1),
        ];
        let payload = encode_batch(events.iter());
        assert!(payload.starts_with(BATCH_MAGIC));
        assert_eq!(
            decode_payload(&payload).expect("decodes"),
            Payload::Batch(events)
        );
        let one = Event::new("a", 5);
        assert_eq!(
            decode_payload(&encode_event(&one)).expect("decodes"),
            Payload::One(one)
        );
        let small = encode_batch([Event::new("0123456789", -3)].iter());
        assert_eq!(small.len(), 4 + 1 + 1 + 10 + 1 + 1, "compact: {small:?}");
    }

    // Proves a damaged batch message is refused whole: cut anywhere, with a byte left over,
    // with a count larger than its bytes, with an invalid id or user.
    #[test]
    fn a_damaged_batch_message_is_refused_whole() {
        let payload = encode_batch([with_id("alice", 300, "id-1"), Event::new("bob", -7)].iter());
        for cut in BATCH_MAGIC.len()..payload.len() {
            assert!(decode_payload(&payload[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = payload.to_vec();
        longer.push(0);
        assert!(decode_payload(&longer).is_err());
        assert!(decode_payload(b"FGB1\xff\xff\xff\xff\x0f").is_err());
        assert!(
            decode_payload(b"FGB1\x01\x01a\x00\x02\x01\x02").is_err(),
            "id"
        );
        assert!(
            decode_payload(b"FGB1\x01\x00\x00\x00").is_err(),
            "empty user"
        );
        assert!(
            decode_payload(b"FGB1\x01\x02\xc3\x28\x00\x00").is_err(),
            "not UTF-8"
        );
    }

    // Proves the message id: the same ids in the same order give the same id (an identical
    // resend is a duplicate); another id, another order or another token for a message with
    // an anonymous event give another; the token does not matter when every event has an id.
    #[test]
    fn a_batch_message_id_is_a_digest_of_its_client_ids() {
        let ab = [with_id("u", 1, "a"), with_id("v", 2, "b")];
        let ba = [with_id("v", 2, "b"), with_id("u", 1, "a")];
        let id = batch_message_id(ab.iter(), "t1");
        assert!(id.starts_with("fgb-") && id.len() == 36, "{id}");
        assert_eq!(id, batch_message_id(ab.iter(), "t2"));
        assert_ne!(id, batch_message_id(ba.iter(), "t1"));
        assert_ne!(id, batch_message_id(ab[..1].iter(), "t1"));
        let anonymous = [with_id("u", 1, "a"), Event::new("v", 2)];
        assert_ne!(
            batch_message_id(anonymous.iter(), "t1"),
            batch_message_id(anonymous.iter(), "t2")
        );
        assert_eq!(
            batch_message_id(anonymous.iter(), "t1"),
            batch_message_id(anonymous.iter(), "t1")
        );
    }

    // Proves a payload that is not an event is refused, not applied as something else.
    #[test]
    fn garbage_is_refused() {
        assert!(decode_event(b"{\"user\":\"a\"}").is_err());
        assert!(decode_event(b"not json").is_err());
    }
}
