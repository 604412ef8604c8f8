//! Interned grouping keys.
//!
//! A window engine sees the same few thousand keys (device ids) over and over, and most events
//! open a new (window, key) cell: keying the cells by a small id instead of the key string saves
//! a string copy per cell and hashes four bytes instead of a string. The table is swept when it
//! has doubled since the last sweep: a key neither held by the engine nor seen since the last
//! sweep is freed. Keys in steady use (the devices reporting every window) are never freed, and
//! an unbounded key set stays within about twice the keys seen in two sweep periods.

use std::collections::HashMap;

use foldhash::fast::{FixedState, RandomState};

/// An interned key.
pub(crate) type KeyId = u32;

/// A hash map keyed by [`KeyId`]s (or anything small), with a fast non-cryptographic hash:
/// the keys are interned by the engine, an attacker cannot choose the ids.
pub(crate) type IdMap<K, V> = HashMap<K, V, FixedState>;

/// Keys by id and ids by key.
#[derive(Debug, Default)]
pub(crate) struct Keys {
    /// Key → id. Keys come from payloads, so the hash is randomly seeded per table (as the
    /// standard library's is, only faster on short strings).
    ids: HashMap<Box<str>, KeyId, RandomState>,
    /// Id → key (`None` for a freed id).
    names: Vec<Option<Box<str>>>,
    /// Id → the sweep epoch in which it was last interned or looked up.
    used: Vec<u64>,
    /// Sweeps so far.
    epoch: u64,
    /// Ids free for reuse.
    free: Vec<KeyId>,
    /// Sweep when this many ids are in use.
    sweep_at: usize,
}

/// Ids below this many never trigger a sweep.
const MIN_SWEEP: usize = 4096;

impl Keys {
    /// The id of `key`, interning it if new.
    pub(crate) fn intern(&mut self, key: &str) -> KeyId {
        if let Some(&id) = self.ids.get(key) {
            if let Some(u) = self.used.get_mut(id as usize) {
                *u = self.epoch;
            }
            return id;
        }
        let name: Box<str> = key.into();
        let id = match self.free.pop() {
            Some(id) => {
                self.names[id as usize] = Some(name.clone());
                self.used[id as usize] = self.epoch;
                id
            }
            None => {
                self.names.push(Some(name.clone()));
                self.used.push(self.epoch);
                // More than u32::MAX live keys would exhaust memory long before.
                u32::try_from(self.names.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.ids.insert(name, id);
        id
    }

    /// The key of `id` (empty for an id that is not in use).
    pub(crate) fn name(&self, id: KeyId) -> &str {
        self.names
            .get(id as usize)
            .and_then(|n| n.as_deref())
            .unwrap_or("")
    }

    /// Whether the table should be swept (checked by the engine after closing windows).
    pub(crate) fn wants_sweep(&self) -> bool {
        self.ids.len() >= self.sweep_at.max(MIN_SWEEP)
    }

    /// Frees every id for which `live` is false and that was not used since the last sweep.
    pub(crate) fn sweep(&mut self, live: &[bool]) {
        for (id, name) in self.names.iter_mut().enumerate() {
            let recent = self.used.get(id).is_some_and(|u| *u == self.epoch);
            if name.is_some() && !recent && !live.get(id).copied().unwrap_or(false) {
                if let Some(n) = name.take() {
                    self.ids.remove(&n);
                }
                self.free.push(u32::try_from(id).unwrap_or(u32::MAX));
            }
        }
        self.sweep_at = self.ids.len() * 2;
        self.epoch += 1;
    }

    /// The number of ids ever handed out (live or free): the length of a `live` table.
    pub(crate) fn capacity(&self) -> usize {
        self.names.len()
    }

    /// Sorts `ids` by their keys.
    pub(crate) fn sort(&self, ids: &mut [KeyId]) {
        ids.sort_unstable_by(|a, b| self.name(*a).cmp(self.name(*b)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interns_reuses_and_sweeps() {
        let mut keys = Keys::default();
        let a = keys.intern("a");
        assert_eq!(keys.intern("a"), a);
        let b = keys.intern("b");
        assert_ne!(a, b);
        assert_eq!((keys.name(a), keys.name(b)), ("a", "b"));
        let mut live = vec![false; keys.capacity()];
        live[b as usize] = true;
        keys.sweep(&live);
        assert_eq!(keys.name(a), "a", "used since the last sweep: kept");
        keys.sweep(&live);
        assert_eq!(keys.name(a), "", "neither held nor used: freed");
        assert_eq!(keys.name(b), "b");
        let c = keys.intern("c");
        assert_eq!(c, a, "a freed id is reused");
        assert_eq!(keys.name(c), "c");
        let mut ids = vec![c, b];
        keys.sort(&mut ids);
        assert_eq!(ids, vec![b, c]);
    }
}
