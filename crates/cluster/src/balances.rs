//! A partition's balances: a hash map for the apply, and the users in byte order beside it for
//! pages.
//!
//! Lesson (measured in `benches/page.rs`): sorting the users per page request costs the scan
//! and sort of the whole partition (0.9–1.6 s at 1 M users), and keeping the balances in a
//! `BTreeMap` makes every apply a walk of string keys (3.8–4.5x the hash lookup at that size).
//! Both at once cost neither: an event of a known user is one hash lookup, a new user one
//! ordered insert, and a page a seek plus `limit` steps.
//!
//! Invariant: `order` holds exactly the users of `by_user` (one shared `Arc<str>` each); the
//! only way in is [`Balances::add`], which inserts into both or neither.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Balance per user, with the users in byte order.
#[derive(Clone, Debug, Default)]
pub struct Balances {
    by_user: HashMap<Arc<str>, i64>,
    order: BTreeSet<Arc<str>>,
}

impl Balances {
    /// The balance of `user`, `None` if no event of theirs was applied.
    pub fn get(&self, user: &str) -> Option<i64> {
        self.by_user.get(user).copied()
    }

    /// Adds `amount` to `user`'s balance (a new user starts at 0); `false`, and nothing
    /// changed, when the sum would leave the i64 range.
    pub fn add(&mut self, user: &str, amount: i64) -> bool {
        if let Some(balance) = self.by_user.get_mut(user) {
            return balance
                .checked_add(amount)
                .map(|sum| *balance = sum)
                .is_some();
        }
        let user: Arc<str> = Arc::from(user);
        self.order.insert(Arc::clone(&user));
        self.by_user.insert(user, amount);
        true
    }

    /// Users with a balance.
    pub fn len(&self) -> usize {
        self.by_user.len()
    }

    /// Whether no user has a balance.
    pub fn is_empty(&self) -> bool {
        self.by_user.is_empty()
    }

    /// Every `(user, balance)`, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, i64)> {
        self.by_user
            .iter()
            .map(|(user, balance)| (&**user, *balance))
    }

    /// Up to `limit` balances of users after `after` (compared as bytes), in that order: a
    /// seek and `limit` steps. A cursor that is not UTF-8 seeks to its longest UTF-8 prefix
    /// and steps over the users not after it.
    pub fn page(&self, after: Option<&[u8]>, limit: usize) -> Vec<(String, i64)> {
        let start = match after {
            None => Bound::Unbounded,
            Some(after) => Bound::Excluded(utf8_prefix(after)),
        };
        self.order
            .range::<str, _>((start, Bound::Unbounded))
            .filter(|user| after.is_none_or(|after| user.as_bytes() > after))
            .take(limit)
            .map(|user| (user.to_string(), self.get(user).unwrap_or(0)))
            .collect()
    }
}

/// The longest prefix of `bytes` that is UTF-8 (all of it when it is).
fn utf8_prefix(bytes: &[u8]) -> &str {
    match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(error) => std::str::from_utf8(&bytes[..error.valid_up_to()]).unwrap_or_default(),
    }
}

impl PartialEq for Balances {
    fn eq(&self, other: &Self) -> bool {
        self.by_user == other.by_user
    }
}

impl Eq for Balances {}

impl FromIterator<(String, i64)> for Balances {
    /// The balances of `(user, balance)` pairs (a repeated user: the last pair counts).
    fn from_iter<I: IntoIterator<Item = (String, i64)>>(pairs: I) -> Self {
        let mut balances = Self::default();
        for (user, balance) in pairs {
            let user: Arc<str> = Arc::from(user);
            if balances
                .by_user
                .insert(Arc::clone(&user), balance)
                .is_none()
            {
                balances.order.insert(user);
            }
        }
        balances
    }
}

impl IntoIterator for Balances {
    type Item = (String, i64);
    type IntoIter = std::iter::Map<
        std::collections::hash_map::IntoIter<Arc<str>, i64>,
        fn((Arc<str>, i64)) -> (String, i64),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.by_user
            .into_iter()
            .map(|(user, balance)| (user.to_string(), balance))
    }
}

/// Serialized as a JSON object `{user: balance}`, as before the index existed.
impl Serialize for Balances {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Balances {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let pairs: HashMap<String, i64> = HashMap::deserialize(deserializer)?;
        Ok(pairs.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the index follows the map: new users are in both, an overflow changes nothing,
    // pages are in byte order after the cursor, and the JSON is the plain object.
    #[test]
    fn the_order_follows_the_balances() {
        let mut balances = Balances::default();
        for user in ["d", "a", "c", "b", "a"] {
            assert!(balances.add(user, 1));
        }
        assert!(!balances.add("a", i64::MAX), "overflow refused");
        assert_eq!((balances.len(), balances.get("a")), (4, Some(2)));
        let users =
            |rows: Vec<(String, i64)>| rows.into_iter().map(|(user, _)| user).collect::<Vec<_>>();
        assert_eq!(users(balances.page(None, 3)), ["a", "b", "c"]);
        assert_eq!(users(balances.page(Some(b"b"), 10)), ["c", "d"]);
        assert_eq!(users(balances.page(Some(b"b\x80"), 10)), ["c", "d"]);
        let json = serde_json::to_value(&balances).expect("json");
        assert_eq!(json, serde_json::json!({"a": 2, "b": 1, "c": 1, "d": 1}));
        let back: Balances = serde_json::from_value(json).expect("back");
        assert_eq!(back, balances);
        assert_eq!(
            users(back.page(None, 10)),
            ["a", "b", "c", "d"],
            "order rebuilt"
        );
    }
}
