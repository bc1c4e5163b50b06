//! Parse and validate one event body (stage 3: "correctness at the boundary").
//!
//! Lesson (stage 3, docs/stages.md): real clients send malformed, truncated or surprising data;
//! parsing into a typed [`Event`] is both validation and documentation of the protocol, and every
//! failure gets a predictable, specific answer instead of a crash.
//!
//! Invariant: [`parse_event`] returns `Ok` only for a body that is exactly one JSON object
//! with the two fields `user` (a non-empty string of at most [`USER_MAX_BYTES`] bytes
//! in Unicode NFC, not only spaces, without control or format characters or whitespace other
//! than the ASCII space) and `amount` (an integer that fits `i64`), and optionally `id` (the
//! event's identity, an [`EventId`]: 1 to [`ID_MAX_BYTES`] printable ASCII bytes). Anything that is not
//! well-formed JSON (invalid UTF-8, cut short, nested deeper than serde_json's recursion limit,
//! trailing bytes) is [`EventError::is_malformed_json`]; well-formed JSON that is not a valid
//! event gets a specific [`EventError::reason`]. The whole body is always checked for syntax
//! before a semantic error is reported, so a truncated body is never mistaken for a 422.
//!
//! Cost: the body is parsed once with borrowed slices (`&RawValue`); the only allocation on
//! the success path is the `user` string the event owns.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Longest accepted `user`, in bytes (UTF-8). Bounds the memory one ledger entry can take and
/// keeps log lines readable; 128 bytes is far more than any real account id.
pub const USER_MAX_BYTES: usize = 128;

/// Longest accepted event `id`, in bytes: a UUID (36) or ULID (26) fits with room to spare.
pub const ID_MAX_BYTES: usize = 64;

/// One ingested event: add `amount` to the balance of `user`.
///
/// Its `Deserialize` is serde's plain derive (strict about fields, but without the user and
/// amount checks): untrusted bodies go through [`parse_event`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// The account the amount is added to (validated: 1..=128 bytes, no control characters).
    pub user: String,
    /// Signed amount added to the balance.
    pub amount: i64,
    /// The client's identity for this event: a resend with the same id is recognised and not
    /// applied twice (within the dedup window). `None`: every copy is applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<EventId>,
}

impl Event {
    /// Convenience constructor without an id (no validation: use [`parse_event`] for
    /// untrusted input).
    pub fn new(user: impl Into<String>, amount: i64) -> Self {
        Self {
            user: user.into(),
            amount,
            id: None,
        }
    }

    /// The same event carrying `id`.
    #[must_use]
    pub fn with_id(mut self, id: EventId) -> Self {
        self.id = Some(id);
        self
    }
}

/// A client-chosen event identity: 1 to [`ID_MAX_BYTES`] bytes of printable ASCII (0x20 to
/// 0x7E) that neither starts nor ends with a space (HTTP strips a header value's outer spaces,
/// so such an id could not travel in `Idempotency-Key`). A UUIDv7 or ULID, made and kept by the
/// client before its first attempt, is the recommended choice.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventId(Box<str>);

impl EventId {
    /// Checks `text` against the id rules.
    ///
    /// ```
    /// use floodgate_core::event::EventId;
    /// assert!(EventId::parse("0190b6b4-7c1e-7d2a-9f00-3c5e8a1b2c3d").is_ok());
    /// assert!(EventId::parse("").is_err());
    /// assert!(EventId::parse("caf\u{e9}").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Self, EventError> {
        if text.is_empty() {
            return Err(EventError::InvalidId("must not be empty"));
        }
        if text.len() > ID_MAX_BYTES {
            return Err(EventError::InvalidId("longer than 64 bytes"));
        }
        if !text.bytes().all(|byte| (0x20..=0x7e).contains(&byte)) {
            return Err(EventError::InvalidId(
                "must be printable ASCII (0x20 to 0x7E)",
            ));
        }
        if text.starts_with(' ') || text.ends_with(' ') {
            return Err(EventError::InvalidId(
                "must not start or end with a space (an Idempotency-Key header cannot carry it)",
            ));
        }
        Ok(Self(text.into()))
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl TryFrom<String> for EventId {
    type Error = EventError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(&text)
    }
}

impl From<EventId> for String {
    fn from(id: EventId) -> Self {
        id.0.into_string()
    }
}

/// Why a body is not a valid event. `Display` is the human `detail` of the HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Not well-formed JSON: invalid UTF-8, cut short, too deep, trailing bytes, bad syntax.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// Well-formed JSON whose top level is not an object.
    #[error("an event must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    /// A required field is absent.
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// A field other than `user`, `amount` and `id` is present.
    #[error("unknown field `{0}`: an event has the fields `user`, `amount` and optionally `id`")]
    UnknownField(String),
    /// A field appears twice.
    #[error("duplicate field `{0}`")]
    DuplicateField(&'static str),
    /// `amount` is not an integer that fits i64.
    #[error("invalid amount: {0}")]
    InvalidAmount(&'static str),
    /// `user` is not a string, is empty, is too long, is only spaces, contains control or
    /// format characters or whitespace other than the ASCII space, or is not in NFC.
    #[error("invalid user: {0}")]
    InvalidUser(&'static str),
    /// `id` is not a string of 1 to 64 printable ASCII bytes.
    #[error("invalid id: {0}")]
    InvalidId(&'static str),
}

impl EventError {
    /// Machine-readable reason, as sent in the HTTP body and used as a metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "invalid_json",
            Self::NotAnObject(_) => "not_an_object",
            Self::MissingField(_) => "missing_field",
            Self::UnknownField(_) => "unknown_field",
            Self::DuplicateField(_) => "duplicate_field",
            Self::InvalidAmount(_) => "invalid_amount",
            Self::InvalidUser(_) => "invalid_user",
            Self::InvalidId(_) => "invalid_id",
        }
    }

    /// One error of every variant, in declaration order: what tests and the HTTP contract's
    /// document walk to list every reason. [`Self::variant_index`] has no wildcard, so a new
    /// variant does not compile until it has an index, and the test of this list fails until
    /// it is listed here.
    pub fn one_of_each() -> Vec<EventError> {
        vec![
            Self::MalformedJson(String::new()),
            Self::NotAnObject("an array"),
            Self::MissingField("user"),
            Self::UnknownField(String::new()),
            Self::DuplicateField("user"),
            Self::InvalidAmount("must be an integer"),
            Self::InvalidUser("must be a string"),
            Self::InvalidId("must be a string"),
        ]
    }

    /// The variant's position in [`Self::one_of_each`].
    pub fn variant_index(&self) -> usize {
        match self {
            Self::MalformedJson(_) => 0,
            Self::NotAnObject(_) => 1,
            Self::MissingField(_) => 2,
            Self::UnknownField(_) => 3,
            Self::DuplicateField(_) => 4,
            Self::InvalidAmount(_) => 5,
            Self::InvalidUser(_) => 6,
            Self::InvalidId(_) => 7,
        }
    }

    /// `true` => HTTP 400 `invalid_json`; `false` => HTTP 422 with [`Self::reason`] and detail.
    pub fn is_malformed_json(&self) -> bool {
        matches!(self, Self::MalformedJson(_))
    }
}

/// Parse and validate one event body.
///
/// ```
/// use floodgate_core::event::{parse_event, Event};
/// assert_eq!(parse_event(br#"{"user":"alice","amount":25}"#), Ok(Event::new("alice", 25)));
/// assert_eq!(parse_event(br#"{"user":"alice","amount":1.5}"#).unwrap_err().reason(), "invalid_amount");
/// assert!(parse_event(br#"{"user":"alice""#).unwrap_err().is_malformed_json());
/// ```
pub fn parse_event(body: &[u8]) -> Result<Event, EventError> {
    // Checking UTF-8 up front makes invalid bytes a 400 even inside values serde_json skips.
    let text = std::str::from_utf8(body)
        .map_err(|error| EventError::MalformedJson(format!("invalid UTF-8: {error}")))?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let raw = RawEvent::deserialize(&mut deserializer).map_err(malformed)?;
    deserializer.end().map_err(malformed)?;
    raw.into_event()
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(malformed)`
fn malformed(error: serde_json::Error) -> EventError {
    EventError::MalformedJson(error.to_string())
}

/// What the syntax pass found: borrowed raw field values plus the first semantic error.
/// Semantic errors are recorded, not returned, so serde_json still checks the whole body.
#[derive(Default)]
struct RawEvent<'a> {
    user: Option<&'a RawValue>,
    amount: Option<&'a RawValue>,
    id: Option<&'a RawValue>,
    error: Option<EventError>,
}

impl RawEvent<'_> {
    fn into_event(self) -> Result<Event, EventError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let user = self.user.ok_or(EventError::MissingField("user"))?;
        let amount = self.amount.ok_or(EventError::MissingField("amount"))?;
        let user = parse_user(user.get())?;
        let amount = parse_amount(amount.get())?;
        let id = self.id.map(|id| parse_id(id.get())).transpose()?;
        Ok(Event {
            user: user.into_owned(),
            amount,
            id,
        })
    }

    fn note(&mut self, error: EventError) {
        self.error.get_or_insert(error);
    }
}

/// Validate the raw JSON text of the `user` value; borrows unless the string has escapes.
fn parse_user(raw: &str) -> Result<Cow<'_, str>, EventError> {
    let Some(inner) = raw
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    else {
        return Err(EventError::InvalidUser("must be a string"));
    };
    let user: Cow<'_, str> = if inner.contains('\\') {
        // Escapes present: let serde_json decode them (the syntax was already checked).
        Cow::Owned(serde_json::from_str::<String>(raw).map_err(malformed)?)
    } else {
        Cow::Borrowed(inner)
    };
    if user.is_empty() {
        return Err(EventError::InvalidUser("must not be empty"));
    }
    if user.len() > USER_MAX_BYTES {
        return Err(EventError::InvalidUser("longer than 128 bytes"));
    }
    if user.chars().any(char::is_control) {
        return Err(EventError::InvalidUser("contains control characters"));
    }
    if user.bytes().all(|byte| byte == b' ') {
        return Err(EventError::InvalidUser("only spaces"));
    }
    if !user.is_ascii() {
        check_unicode_user(&user)?;
    }
    Ok(user)
}

/// The rules only non-ASCII names can break (printable ASCII is NFC and has no format
/// characters, so the common case pays nothing): a name that looks like another must not be
/// another user, so invisible and direction-changing characters are refused, as is any
/// whitespace but the ASCII space, and so are spellings not in NFC (`zoe\u{308}` would be a
/// second `zo\u{eb}`); refusing is honest where normalising would store a name the client
/// never sent.
fn check_unicode_user(user: &str) -> Result<(), EventError> {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory as _};
    if user
        .chars()
        .any(|character| character.general_category() == GeneralCategory::Format)
    {
        return Err(EventError::InvalidUser(
            "contains invisible format characters (such as U+200B, U+202E, U+FEFF)",
        ));
    }
    if user
        .chars()
        .any(|character| character.is_whitespace() && character != ' ')
    {
        return Err(EventError::InvalidUser(
            "contains whitespace other than the ASCII space (such as U+00A0)",
        ));
    }
    if !unicode_normalization::is_nfc(user) {
        return Err(EventError::InvalidUser("not in Unicode NFC"));
    }
    Ok(())
}

/// Validate the raw JSON text of the `id` value: a string of printable ASCII (escapes are
/// decoded first, so `"\u0041"` is the id `A`).
fn parse_id(raw: &str) -> Result<EventId, EventError> {
    let Some(inner) = raw
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    else {
        return Err(EventError::InvalidId("must be a string"));
    };
    if inner.contains('\\') {
        let decoded: String = serde_json::from_str(raw).map_err(malformed)?;
        EventId::parse(&decoded)
    } else {
        EventId::parse(inner)
    }
}

/// Validate the raw JSON text of the `amount` value: an integer literal that fits i64.
fn parse_amount(raw: &str) -> Result<i64, EventError> {
    let Some(&first) = raw.as_bytes().first() else {
        return Err(EventError::InvalidAmount("must be an integer"));
    };
    if first != b'-' && !first.is_ascii_digit() {
        return Err(EventError::InvalidAmount(
            "must be an integer, not a string, bool, null, array or object",
        ));
    }
    if raw.bytes().any(|byte| matches!(byte, b'.' | b'e' | b'E')) {
        return Err(EventError::InvalidAmount(
            "must be an integer, not a fraction or exponent",
        ));
    }
    raw.parse::<i64>()
        .map_err(|_| EventError::InvalidAmount("out of the i64 range"))
}

impl<'de> Deserialize<'de> for RawEvent<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TopVisitor)
    }
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = RawEvent<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut raw = RawEvent::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match key {
                Key::User if raw.user.is_some() => {
                    map.next_value::<IgnoredAny>()?;
                    raw.note(EventError::DuplicateField("user"));
                }
                Key::Amount if raw.amount.is_some() => {
                    map.next_value::<IgnoredAny>()?;
                    raw.note(EventError::DuplicateField("amount"));
                }
                Key::Id if raw.id.is_some() => {
                    map.next_value::<IgnoredAny>()?;
                    raw.note(EventError::DuplicateField("id"));
                }
                Key::User => raw.user = Some(map.next_value()?),
                Key::Amount => raw.amount = Some(map.next_value()?),
                Key::Id => raw.id = Some(map.next_value()?),
                Key::Unknown(name) => {
                    map.next_value::<IgnoredAny>()?;
                    if raw.error.is_none() {
                        // Only the first error is kept: copy the name only then.
                        raw.error = Some(EventError::UnknownField(name.into_owned()));
                    }
                }
            }
        }
        Ok(raw)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // Drain the array so its syntax (and depth) is still checked.
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(not_an_object("an array"))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(not_an_object("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(not_an_object("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(not_an_object("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(not_an_object("a number"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(not_an_object("a string"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(not_an_object("null"))
    }
}

fn not_an_object(kind: &'static str) -> RawEvent<'static> {
    RawEvent {
        error: Some(EventError::NotAnObject(kind)),
        ..RawEvent::default()
    }
}

/// An object key: the three known names, or an unknown one kept only for the error detail.
enum Key<'a> {
    User,
    Amount,
    Id,
    Unknown(Cow<'a, str>),
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a field name")
    }

    fn visit_borrowed_str<E: de::Error>(self, name: &'de str) -> Result<Self::Value, E> {
        Ok(match name {
            "user" => Key::User,
            "amount" => Key::Amount,
            "id" => Key::Id,
            other => Key::Unknown(Cow::Borrowed(other)),
        })
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
        Ok(match name {
            "user" => Key::User,
            "amount" => Key::Amount,
            "id" => Key::Id,
            other => Key::Unknown(Cow::Owned(other.to_owned())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(body: &[u8]) -> &'static str {
        parse_event(body)
            .expect_err("body must be rejected")
            .reason()
    }

    #[test]
    fn one_of_each_lists_every_variant_once() {
        // Proves the list of variants is complete: its indices are exactly 0..len, so a variant
        // given an index but not listed (or listed twice) fails here.
        let indices: Vec<usize> = EventError::one_of_each()
            .iter()
            .map(EventError::variant_index)
            .collect();
        assert_eq!(indices, (0..indices.len()).collect::<Vec<_>>());
    }

    #[test]
    fn valid_events_parse() {
        // Proves well-formed events (incl. whitespace, field order, escapes, extremes) are accepted.
        let cases: [(&[u8], Event); 6] = [
            (br#"{"user":"alice","amount":25}"#, Event::new("alice", 25)),
            (
                b" {\n \"amount\" : -7 , \"user\" : \"bob\" } \n",
                Event::new("bob", -7),
            ),
            (
                br#"{"user":"a\"b\u00e9","amount":0}"#,
                Event::new("a\"b\u{e9}", 0),
            ),
            (
                br#"{"user":"x","amount":9223372036854775807}"#,
                Event::new("x", i64::MAX),
            ),
            (
                br#"{"user":"x","amount":-9223372036854775808}"#,
                Event::new("x", i64::MIN),
            ),
            (
                "{\"user\":\"zo\u{eb}\",\"amount\":1}".as_bytes(),
                Event::new("zo\u{eb}", 1),
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(parse_event(body), Ok(expected));
        }
    }

    #[test]
    fn malformed_json_is_400_class() {
        // Proves that non-JSON, truncated, trailing-garbage, invalid UTF-8, raw control chars
        // in strings and 10,000-deep nesting are all `invalid_json` (HTTP 400), never a panic.
        let deep_array = "[".repeat(10_000);
        let deep_in_field = format!(r#"{{"user":"a","amount":1,"x":{}}}"#, "[".repeat(10_000));
        let cases: Vec<&[u8]> = vec![
            b"",
            b"hello",
            br#"{"user":"alice""#,
            br#"{"user":"alice","amount":2"#,
            br#"{"user":"alice","amount":2}}"#,
            br#"{"user":"alice","amount":2} x"#,
            b"{\"user\":\"al\xffice\",\"amount\":2}",
            b"{\"user\":\"a\",\"amount\":1,\"x\":\"\xfe\"}",
            b"{\"user\":\"a\x01\",\"amount\":2}",
            deep_array.as_bytes(),
            deep_in_field.as_bytes(),
            br#"{"user":"a","amount":01}"#,
            br#"{"unknown":1,"user":"a""#,
        ];
        for body in cases {
            let error = parse_event(body).expect_err("must be rejected");
            assert!(error.is_malformed_json(), "{body:?} gave {error:?}");
            assert_eq!(error.reason(), "invalid_json");
        }
    }

    #[test]
    fn not_an_object_is_422() {
        // Proves JSON values other than objects get `not_an_object`, not a 400.
        for body in [&b"[1,2]"[..], b"\"s\"", b"12", b"true", b"null", b"[]"] {
            let error = parse_event(body).expect_err("must be rejected");
            assert!(!error.is_malformed_json());
            assert_eq!(error.reason(), "not_an_object", "{body:?}");
        }
    }

    #[test]
    fn missing_unknown_and_duplicate_fields() {
        // Proves the strict shape: exactly {user, amount}, each once.
        assert_eq!(reason(br#"{"amount":1}"#), "missing_field");
        assert_eq!(reason(br#"{"user":"a"}"#), "missing_field");
        assert_eq!(reason(b"{}"), "missing_field");
        assert_eq!(
            reason(br#"{"user":"a","amount":1,"note":{"x":[1]}}"#),
            "unknown_field"
        );
        assert_eq!(reason(br#"{"User":"a","amount":1}"#), "unknown_field");
        assert_eq!(
            reason(br#"{"user":"a","amount":1,"user":"b"}"#),
            "duplicate_field"
        );
        assert_eq!(
            reason(br#"{"user":"a","amount":1,"amount":1}"#),
            "duplicate_field"
        );
        let detail = parse_event(br#"{"user":"a","amount":1,"note":2}"#)
            .expect_err("unknown")
            .to_string();
        assert!(detail.contains("note"), "{detail}");
    }

    #[test]
    fn invalid_amounts() {
        // Proves only i64 integer literals are amounts: floats (even 1.0), exponents, strings,
        // other types, 1e400 and values just outside the i64 range are `invalid_amount`.
        for amount in [
            "1.0",
            "1.5",
            "-0.5",
            "1e3",
            "1E3",
            "1e400",
            "-1e400",
            "9223372036854775808",
            "-9223372036854775809",
            "18446744073709551616",
            "123456789012345678901234567890",
            "\"5\"",
            "true",
            "null",
            "[1]",
            "{\"v\":1}",
        ] {
            let body = format!(r#"{{"user":"a","amount":{amount}}}"#);
            let error = parse_event(body.as_bytes()).expect_err("must be rejected");
            assert_eq!(error.reason(), "invalid_amount", "{amount}");
            assert!(!error.is_malformed_json());
        }
    }

    #[test]
    fn invalid_users() {
        // Proves users must be non-empty strings of at most 128 bytes without control chars,
        // counting bytes (not chars) and checking escaped control characters too.
        let long = "u".repeat(USER_MAX_BYTES + 1);
        let max = "u".repeat(USER_MAX_BYTES);
        let multibyte = "\u{e9}".repeat(65); // 130 bytes, 65 chars
        for user in [
            "\"\"".to_owned(),
            format!("\"{long}\""),
            format!("\"{multibyte}\""),
            r#""a\u0000b""#.to_owned(),
            r#""a\nb""#.to_owned(),
            r#""a\u007fb""#.to_owned(),
            r#""a\u0085b""#.to_owned(),
            "12".to_owned(),
            "null".to_owned(),
            "[\"a\"]".to_owned(),
        ] {
            let body = format!(r#"{{"user":{user},"amount":1}}"#);
            assert_eq!(reason(body.as_bytes()), "invalid_user", "{user}");
        }
        let body = format!(r#"{{"user":"{max}","amount":1}}"#);
        assert_eq!(
            parse_event(body.as_bytes()).map(|event| event.user.len()),
            Ok(128)
        );
    }

    #[test]
    fn invisible_spoofing_and_unnormalised_users() {
        // Proves the look-alike rule: format characters (bidi overrides, zero-width, BOM, soft
        // hyphen), whitespace other than the ASCII space, space-only names and names not in
        // NFC are refused (raw or escaped); ordinary non-ASCII names in NFC and inner ASCII
        // spaces are accepted.
        for user in [
            "\"evil\u{202e}gnp.exe\"".to_owned(), // RIGHT-TO-LEFT OVERRIDE
            r#""a\u202eb""#.to_owned(),           // the same, escaped
            "\"ali\u{200b}ce\"".to_owned(),       // ZERO WIDTH SPACE
            "\"\u{feff}alice\"".to_owned(),       // BYTE ORDER MARK
            "\"al\u{ad}ice\"".to_owned(),         // SOFT HYPHEN
            "\"alice\u{a0}bob\"".to_owned(),      // NO-BREAK SPACE
            "\"\u{a0}\"".to_owned(),              // NBSP only
            "\"\u{3000}\"".to_owned(),            // IDEOGRAPHIC SPACE only
            "\"a\u{2028}b\"".to_owned(),          // LINE SEPARATOR
            "\"   \"".to_owned(),                 // spaces only
            "\"zoe\u{308}\"".to_owned(),          // NFD: e + COMBINING DIAERESIS
        ] {
            let body = format!(r#"{{"user":{user},"amount":1}}"#);
            assert_eq!(reason(body.as_bytes()), "invalid_user", "{user:?}");
        }
        for user in [
            "zo\u{eb}",
            "Ren\u{e9}e M\u{fc}ller",
            "\u{6728}",
            "alice bob",
            "a-b_c.d",
        ] {
            let body = serde_json::json!({"user": user, "amount": 1}).to_string();
            assert_eq!(
                parse_event(body.as_bytes()).map(|event| event.user),
                Ok(user.to_owned())
            );
        }
    }

    #[test]
    fn mutated_bodies_never_panic_and_ok_means_valid() {
        // Proves robustness on arbitrary input: 20,000 deterministic mutations (byte flips,
        // truncations, insertions) of valid bodies never panic, and every `Ok` still satisfies
        // the event invariants.
        const ALPHABET: &[u8] = b"{}[]\":,0-.eE \\u\x00\xff";
        let seeds: [&[u8]; 3] = [
            br#"{"user":"alice","amount":25}"#,
            br#"{"amount":-9223372036854775808,"user":"b\u00e9"}"#,
            br#"[{"user":"x","amount":1}]"#,
        ];
        let mut state = 0x2545_F491_4F6C_DD1D_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..20_000 {
            let mut body = seeds[round % seeds.len()].to_vec();
            for _ in 0..=(next() % 4) {
                let at = (next() as usize) % (body.len() + 1);
                match next() % 3 {
                    0 if at < body.len() => body[at] = next() as u8,
                    1 => body.truncate(at),
                    _ => body.insert(at, ALPHABET[(next() as usize) % ALPHABET.len()]),
                }
            }
            if let Ok(event) = parse_event(&body) {
                assert!(!event.user.is_empty() && event.user.len() <= USER_MAX_BYTES);
                assert!(!event.user.chars().any(char::is_control), "{body:?}");
            }
        }
    }

    #[test]
    fn ids_are_one_to_64_printable_ascii_bytes() {
        // Proves the id rule: printable ASCII of 1..=64 bytes (escapes decoded first) is kept
        // on the event, inner spaces included; empty, too long, non-ASCII, control characters,
        // a leading or trailing space and non-strings are `invalid_id` (422), and a repeated
        // `id` is `duplicate_field`.
        let longest = "i".repeat(ID_MAX_BYTES);
        for (raw, expected) in [
            (
                r#""0190b6b4-7c1e-7d2a-9f00-3c5e8a1b2c3d""#,
                "0190b6b4-7c1e-7d2a-9f00-3c5e8a1b2c3d",
            ),
            (r#""a b~!""#, "a b~!"),
            (r#""\u0041\"""#, "A\""),
            (&format!("\"{longest}\""), longest.as_str()),
        ] {
            let body = format!(r#"{{"user":"a","amount":1,"id":{raw}}}"#);
            let event = parse_event(body.as_bytes()).expect("a valid id");
            assert_eq!(
                event.id.as_ref().map(EventId::as_str),
                Some(expected),
                "{raw}"
            );
        }
        let too_long = format!("\"{longest}x\"");
        for raw in [
            r#""""#,
            too_long.as_str(),
            "\"caf\u{e9}\"",
            r#""caf\u00e9""#,
            r#""a\tb""#,
            r#""a\u007fb""#,
            r#"" ""#,
            r#"" a""#,
            r#""a ""#,
            r#""\u0020a""#,
            "12",
            "null",
            r#"["a"]"#,
        ] {
            let body = format!(r#"{{"user":"a","amount":1,"id":{raw}}}"#);
            assert_eq!(reason(body.as_bytes()), "invalid_id", "{raw}");
        }
        assert_eq!(
            reason(br#"{"id":"a","user":"a","amount":1,"id":"a"}"#),
            "duplicate_field"
        );
        assert_eq!(
            parse_event(br#"{"user":"a","amount":1}"#).map(|event| event.id),
            Ok(None)
        );
    }

    #[test]
    fn syntax_beats_semantics() {
        // Proves a semantic error found early never hides a syntax error later in the body.
        assert_eq!(reason(br#"{"zzz":1,"user":"a","amount":"#), "invalid_json");
        assert_eq!(reason(b"[1,2"), "invalid_json");
        assert_eq!(reason(br#"{"user":"a","amount":1.5"#), "invalid_json");
    }
}
