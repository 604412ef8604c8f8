//! Verified service tokens, remembered for their lifetime.
//!
//! A back end sends the same SAS token with every request until it expires (the SDKs make one
//! per hour). Checking it each time means parsing it, finding its policy and computing an
//! HMAC; remembering what the check established makes a repeated token a hash lookup and a
//! comparison.
//!
//! Only tokens signed by a shared access policy are kept: what they prove depends on the policy
//! set alone, and [`PolicyStore::generation`](super::PolicyStore::generation) says when that
//! changed. Device-signed tokens depend on the identity store (keys, status) and are checked
//! every time.
//!
//! An entry is used only while
//! * its token is byte-for-byte the presented one, compared in constant time (the map is keyed
//!   by a randomly seeded hash of the token, so the lookup itself reveals nothing an attacker
//!   can steer towards a stored token);
//! * the token has not expired (with the same clock skew as the check);
//! * the policy set is still the one the check read: any rotation, upsert or removal drops
//!   every entry at its next use, so a rotated key's token is refused by the next request.
//!
//! The cache holds at most `capacity` entries; when full, stale ones are dropped first, then an
//! arbitrary one. Tokens are zeroized when dropped.

use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::sync::Mutex;

use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use super::auth::Caller;

struct Entry {
    token: Zeroizing<String>,
    caller: Caller,
    /// The last second (Unix) the token is accepted: its expiry plus the clock skew.
    valid_until: u64,
    /// The policy set's generation the check read.
    generation: u64,
}

impl Entry {
    fn usable(&self, now: u64, generation: u64) -> bool {
        now <= self.valid_until && self.generation == generation
    }
}

/// A bounded map from verified tokens to who they authenticate.
pub(crate) struct TokenCache {
    hasher: std::hash::RandomState,
    entries: Mutex<HashMap<u64, Entry>>,
    capacity: usize,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    /// A cache of at most `capacity` tokens (0: none are kept).
    pub(crate) fn new(capacity: usize) -> Self {
        TokenCache {
            hasher: std::hash::RandomState::new(),
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        // A panic while holding the lock leaves a map that is still well formed.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Who `token` authenticates, if it was verified before and that still holds at `now`
    /// (Unix seconds) under policy set `generation`.
    pub(crate) fn get(&self, token: &str, now: u64, generation: u64) -> Option<Caller> {
        if self.capacity == 0 {
            return None;
        }
        let key = self.hasher.hash_one(token);
        let mut entries = self.entries();
        let entry = entries.get(&key)?;
        if !bool::from(entry.token.as_bytes().ct_eq(token.as_bytes())) {
            return None;
        }
        if entry.usable(now, generation) {
            return Some(entry.caller.clone());
        }
        entries.remove(&key);
        None
    }

    /// Remembers that `token` authenticates `caller` until `valid_until` (Unix seconds, skew
    /// included), as checked against policy set `generation`.
    pub(crate) fn insert(
        &self,
        token: &str,
        caller: Caller,
        valid_until: u64,
        now: u64,
        generation: u64,
    ) {
        if self.capacity == 0 {
            return;
        }
        let key = self.hasher.hash_one(token);
        let mut entries = self.entries();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, e| e.usable(now, generation));
            if entries.len() >= self.capacity
                && let Some(victim) = entries.keys().next().copied()
            {
                entries.remove(&victim);
            }
        }
        entries.insert(
            key,
            Entry {
                token: Zeroizing::new(token.to_owned()),
                caller,
                valid_until,
                generation,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::policy::Rights;

    fn service(name: &str) -> Caller {
        Caller::Service {
            policy: name.to_owned(),
            rights: Rights::REGISTRY_READ,
        }
    }

    #[test]
    fn a_hit_needs_the_same_token_an_unexpired_entry_and_the_same_generation() {
        let cache = TokenCache::new(4);
        cache.insert("tok-a", service("a"), 100, 10, 7);
        assert_eq!(cache.get("tok-a", 10, 7), Some(service("a")));
        assert_eq!(cache.get("tok-a", 100, 7), Some(service("a")));
        assert_eq!(cache.get("tok-b", 10, 7), None);
        assert_eq!(cache.get("tok-a ", 10, 7), None);
        // Past its validity: gone, and stays gone.
        assert_eq!(cache.get("tok-a", 101, 7), None);
        assert_eq!(cache.get("tok-a", 10, 7), None);
        // Another policy generation: gone.
        cache.insert("tok-c", service("c"), 100, 10, 7);
        assert_eq!(cache.get("tok-c", 10, 8), None);
        assert_eq!(cache.get("tok-c", 10, 7), None);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn the_cache_stays_within_its_capacity_dropping_stale_entries_first() {
        let cache = TokenCache::new(3);
        cache.insert("old", service("old"), 5, 1, 1);
        cache.insert("t1", service("1"), 100, 1, 1);
        cache.insert("t2", service("2"), 100, 1, 1);
        // Full; at now = 50 `old` has expired and is the one dropped.
        cache.insert("t3", service("3"), 100, 50, 1);
        assert_eq!(cache.len(), 3);
        for t in ["t1", "t2", "t3"] {
            assert!(cache.get(t, 50, 1).is_some(), "{t}");
        }
        // Nothing stale: some entry makes room, the size holds.
        cache.insert("t4", service("4"), 100, 50, 1);
        assert_eq!(cache.len(), 3);
        assert!(cache.get("t4", 50, 1).is_some());
    }

    #[test]
    fn capacity_zero_keeps_nothing() {
        let cache = TokenCache::new(0);
        cache.insert("t", service("t"), 100, 1, 1);
        assert_eq!(cache.get("t", 1, 1), None);
    }
}
