//! Building indexes in bulk (reopening a large registry): entries collected per path, sorted
//! once, the ordered maps built from sorted input, paths split between threads.

use std::collections::HashMap;

use roaring::RoaringBitmap;

use super::postings::{PathIndex, Posting};
use super::walk;
use crate::stored::Stored;
use crate::value::{F64Key, Node, ScalarKey, ScalarRef};

/// FNV-1a, to split paths between bulk-building threads (not used for any map).
fn path_part(path: &str, parts: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.as_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h % parts.max(1) as u64) as usize
}

/// One path's entries while bulk-loading.
#[derive(Default)]
struct Bulk {
    defined: Vec<u32>,
    /// String values while they arrive in strictly ascending order — the device ids of a
    /// snapshot, written in id order — each with its posting: a value greater than the last one
    /// is new, so these need no hashing at all. The first value out of order moves them into
    /// `strings`.
    ascending: Vec<(Box<str>, u32)>,
    /// Whether `ascending` is still in use.
    out_of_order: bool,
    /// Other string values, interned (hashing a value is cheaper than comparing it, in a sort,
    /// with values scattered over the heap). Looked up by `&str`, so a repeated value costs no
    /// allocation.
    strings: HashMap<Box<str>, u32>,
    /// Numbers with their slots, sorted at the end: comparing two `f64`s is cheaper than
    /// hashing one, and positions or readings are mostly distinct anyway.
    numbers: Vec<(F64Key, u32)>,
    /// Null and booleans, interned.
    others: HashMap<ScalarKey, u32>,
    postings: Vec<BulkPosting>,
}

enum BulkPosting {
    One(u32),
    Many(Vec<u32>),
}

impl BulkPosting {
    fn push(&mut self, slot: u32) {
        match self {
            BulkPosting::Many(v) => v.push(slot),
            BulkPosting::One(first) => *self = BulkPosting::Many(vec![*first, slot]),
        }
    }

    fn into_posting(self) -> Posting {
        match self {
            BulkPosting::One(s) => Posting::One(s),
            BulkPosting::Many(v) => Posting::Many(
                RoaringBitmap::from_sorted_iter(v.iter().copied())
                    .unwrap_or_else(|_| v.iter().copied().collect()),
            ),
        }
    }
}

impl Bulk {
    fn add(&mut self, slot: u32, value: ScalarRef<'_>) {
        let next = u32::try_from(self.postings.len()).unwrap_or(u32::MAX);
        let found = match value {
            ScalarRef::Num(n) => {
                self.numbers.push((F64Key::new(n), slot));
                return;
            }
            ScalarRef::Str(s) if !self.out_of_order => match self.ascending.last() {
                Some((last, k)) if **last == *s => Some(*k),
                Some((last, _)) if **last > *s => {
                    self.out_of_order = true;
                    self.strings.extend(self.ascending.drain(..));
                    return self.add(slot, value);
                }
                _ => {
                    self.ascending.push((s.into(), next));
                    None
                }
            },
            ScalarRef::Str(s) => match self.strings.get(s) {
                Some(&k) => Some(k),
                None => {
                    self.strings.insert(s.into(), next);
                    None
                }
            },
            other => {
                let key = other.to_key();
                match self.others.get(&key) {
                    Some(&k) => Some(k),
                    None => {
                        self.others.insert(key, next);
                        None
                    }
                }
            }
        };
        match found.and_then(|k| self.postings.get_mut(k as usize)) {
            Some(p) => p.push(slot),
            None => self.postings.push(BulkPosting::One(slot)),
        }
    }

    fn finish(mut self) -> PathIndex {
        // Keys in order of first appearance: already sorted for the device ids of a snapshot,
        // so the sort below is then a linear check.
        let mut keys: Vec<Option<ScalarKey>> = vec![None; self.postings.len()];
        let strings = self
            .ascending
            .into_iter()
            .chain(self.strings)
            .map(|(s, k)| (ScalarKey::Str(s), k));
        for (key, k) in self.others.into_iter().chain(strings) {
            if let Some(place) = keys.get_mut(k as usize) {
                *place = Some(key);
            }
        }
        // Numbers sort below strings and above null and booleans: those go first, then the
        // numbers grouped by value, then the strings.
        let interned = keys.into_iter().zip(self.postings);
        let (mut pairs, strings): (Vec<_>, Vec<_>) = interned
            .filter_map(|(k, p)| Some((k?, p.into_posting())))
            .partition(|(k, _)| !matches!(k, ScalarKey::Str(_)));
        // (key, slot) pairs: equal keys end up with their slots in ascending order.
        self.numbers.sort_unstable();
        let mut numbers = self.numbers.into_iter().peekable();
        while let Some((key, slot)) = numbers.next() {
            let mut posting = BulkPosting::One(slot);
            while let Some((_, more)) = numbers.next_if(|(k, _)| *k == key) {
                posting.push(more);
            }
            pairs.push((ScalarKey::Num(key), posting.into_posting()));
        }
        pairs.extend(strings);
        if !pairs.is_sorted_by(|a, b| a.0 <= b.0) {
            pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
        let defined = RoaringBitmap::from_sorted_iter(self.defined.iter().copied())
            .unwrap_or_else(|_| self.defined.iter().copied().collect());
        PathIndex {
            defined,
            values: pairs.into_iter().collect(),
        }
    }
}

/// The indexes of the paths that fall in `part` of `parts`, from `records` (slot, record).
pub(super) fn bulk_part<'a>(
    unindexed: &[String],
    records: impl Iterator<Item = (u32, &'a Stored)>,
    part: usize,
    parts: usize,
) -> Vec<(Box<str>, PathIndex)> {
    let mut names: HashMap<Box<str>, Option<usize>> = HashMap::new();
    let mut bulks: Vec<(Box<str>, Bulk)> = Vec::new();
    // Records of a fleet mostly share a shape: the paths of the previous record, in walk order,
    // resolve a path by comparing it with one string instead of hashing it.
    let mut previous: Vec<(Box<str>, Option<usize>)> = Vec::new();
    for (slot, record) in records {
        let mut position = 0usize;
        walk(unindexed, record, &mut |path, node| {
            let target = match previous.get(position) {
                Some((p, target)) if **p == *path => *target,
                _ => {
                    let target = match names.get(path) {
                        Some(t) => *t,
                        None => {
                            let t = (path_part(path, parts) == part).then(|| {
                                bulks.push((path.into(), Bulk::default()));
                                bulks.len() - 1
                            });
                            names.insert(path.into(), t);
                            t
                        }
                    };
                    if let Some(entry) = previous.get_mut(position) {
                        *entry = (path.into(), target);
                    } else {
                        previous.push((path.into(), target));
                    }
                    target
                }
            };
            position += 1;
            let Some((_, bulk)) = target.and_then(|i| bulks.get_mut(i)) else {
                return;
            };
            bulk.defined.push(slot);
            if let Node::Scalar(s) = node {
                bulk.add(slot, s);
            }
        });
    }
    bulks
        .into_iter()
        .map(|(path, bulk)| (path, bulk.finish()))
        .collect()
}
