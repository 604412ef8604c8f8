//! Copies of headers that share their text: what a processor that sends many copies of records
//! with the same header names and values (a router) uses instead of cloning each record's
//! strings.

use std::sync::Arc;

use smallvec::SmallVec;

use super::{Headers, Own, Text};

/// Header positions a cache keeps text for; the headers after these are copied as `clone` copies
/// them. Records rarely carry more, and this bounds the cache.
const POSITIONS: usize = 16;
/// Values kept per position: the few values a header such as a content type or a level takes.
const VALUES: usize = 4;

/// The header names and values recently copied by [`Headers::clone_shared`], by position in the
/// record, so that copies of records whose headers repeat (every telemetry message of a device
/// carries the same content type and encoding) hold references to one text instead of each
/// holding a new string.
///
/// It keeps at most 16 positions of a name and 4 values each, replacing the oldest value when a
/// new one comes: a header whose value changes on every record (a message id) costs what a
/// clone costs, plus a few comparisons.
///
/// ```
/// use iot_core::headers::{HeaderCache, Headers};
///
/// let mut cache = HeaderCache::new();
/// let h: Headers = [("content-type", "application/json"), ("level", "info")]
///     .into_iter()
///     .collect();
/// let copy = h.clone_shared(&mut cache, 1);
/// assert_eq!(copy, h);
/// ```
#[derive(Debug, Default)]
pub struct HeaderCache {
    positions: SmallVec<[Position; 4]>,
}

#[derive(Debug)]
struct Position {
    name: Arc<str>,
    values: SmallVec<[Arc<str>; VALUES]>,
    /// The value to replace next when `values` is full.
    next: usize,
}

impl HeaderCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The shared text of the name at `position`, set to `name` if it held another.
    fn name(&mut self, position: usize, name: &str) -> Option<&mut Position> {
        if position >= POSITIONS {
            return None;
        }
        while self.positions.len() <= position {
            // Positions before this one that held no copied name yet get this one for now.
            self.positions.push(Position {
                name: Arc::from(name),
                values: SmallVec::new(),
                next: 0,
            });
        }
        let slot = self.positions.get_mut(position)?;
        if !same(&slot.name, name) {
            slot.name = Arc::from(name);
            slot.values.clear();
            slot.next = 0;
        }
        Some(slot)
    }
}

impl Position {
    fn value(&mut self, value: &str) -> Arc<str> {
        if let Some(found) = self.values.iter().find(|v| same(v, value)) {
            return Arc::clone(found);
        }
        let new: Arc<str> = Arc::from(value);
        if self.values.len() < VALUES {
            self.values.push(Arc::clone(&new));
        } else if let Some(old) = self.values.get_mut(self.next) {
            *old = Arc::clone(&new);
            self.next = (self.next + 1) % VALUES;
        }
        new
    }
}

/// Lengths first: most names and values that differ differ in length.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.as_bytes() == b.as_bytes()
}

impl Headers {
    /// A copy of these headers, equal to [`clone`](Clone::clone)'s, whose copied names and
    /// values are shared with the copies made before through `cache` when they are the same
    /// text (a reference count instead of a new string each), with room for `additional` more
    /// headers of its own.
    ///
    /// Text already shared (a [`SharedHeaders`](super::SharedHeaders) block, `insert_shared`
    /// values, constants, numbers) is copied as `clone` copies it.
    pub fn clone_shared(&self, cache: &mut HeaderCache, additional: usize) -> Headers {
        let mut own = Own::with_capacity(self.own.len() + additional);
        for (position, (name, value)) in self.own.iter().enumerate() {
            let Text::Owned(name_text) = name else {
                own.push((name.clone(), value.clone()));
                continue;
            };
            match cache.name(position, name_text) {
                Some(slot) => {
                    let value = match value {
                        Text::Owned(text) => Text::Shared(slot.value(text)),
                        other => other.clone(),
                    };
                    own.push((Text::Shared(Arc::clone(&slot.name)), value));
                }
                None => own.push((name.clone(), value.clone())),
            }
        }
        Headers {
            shared: self.shared.clone(),
            own,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::headers::SharedHeaders;

    /// Headers from a few names and values, so that records repeat some of each.
    fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
        prop::collection::vec(("[a-c]{1,2}", "[x-z]{0,2}"), 0..20)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever the cache saw before, a copy equals a clone: same names and values in the
        /// same order, same size, and changing it leaves the original as it was.
        #[test]
        fn a_shared_copy_equals_a_clone(
            records in prop::collection::vec(headers(), 1..12),
            block in headers(),
            additional in 0usize..4,
        ) {
            let mut cache = HeaderCache::new();
            let block = SharedHeaders::from(block.into_iter().collect::<Headers>());
            for (i, pairs) in records.into_iter().enumerate() {
                // Every other record on a shared block, as a gateway's records are.
                let mut h = if i % 2 == 0 {
                    Headers::new()
                } else {
                    Headers::with_shared(&block, 0)
                };
                for (n, v) in pairs {
                    h.insert(n, v);
                }
                h.insert_static("static", "s");
                h.insert_u64("n", i as u64);
                let before = h.clone();
                let mut copy = h.clone_shared(&mut cache, additional);
                prop_assert_eq!(&copy, &h);
                prop_assert_eq!(copy.size_bytes(8), h.size_bytes(8));
                prop_assert!(copy.iter().eq(h.iter()));
                copy.insert("a", "changed");
                copy.insert("new", "v");
                prop_assert_eq!(&h, &before);
            }
        }
    }

    #[test]
    fn copies_share_repeated_text_and_reserve_room() {
        let mut cache = HeaderCache::new();
        let h: Headers = [("content-type", "application/json"), ("level", "info")]
            .into_iter()
            .collect();
        let a = h.clone_shared(&mut cache, 2);
        let b = h.clone_shared(&mut cache, 2);
        assert_eq!(a, h);
        assert!(a.own.capacity() >= 4);
        // The second copy holds the first copy's text.
        for ((an, av), (bn, bv)) in a.own.iter().zip(b.own.iter()) {
            match (an, av, bn, bv) {
                (Text::Shared(an), Text::Shared(av), Text::Shared(bn), Text::Shared(bv)) => {
                    assert!(Arc::ptr_eq(an, bn) && Arc::ptr_eq(av, bv));
                }
                _ => panic!("copied text is shared"),
            }
        }
    }

    #[test]
    fn a_value_that_changes_every_time_is_still_copied_exactly() {
        let mut cache = HeaderCache::new();
        for i in 0..50 {
            let h: Headers = [("message-id", format!("m-{i}")), ("level", "info".into())]
                .into_iter()
                .collect();
            assert_eq!(h.clone_shared(&mut cache, 0), h);
        }
        assert_eq!(cache.positions.len(), 2);
        assert!(cache.positions.iter().all(|p| p.values.len() <= VALUES));
        // More positions than the cache keeps: the rest are copied as a clone copies them.
        let many: Headers = (0..40)
            .map(|i| (format!("h{i}"), format!("v{i}")))
            .collect();
        assert_eq!(many.clone_shared(&mut cache, 0), many);
        assert_eq!(cache.positions.len(), POSITIONS);
    }
}
