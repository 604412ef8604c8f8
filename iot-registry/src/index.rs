//! Automatic indexes: every scalar path of every record, as document databases keep them.
//!
//! For each path (`metadata.building`, `tags.owner`, `deviceId`, …) an index holds
//! * `defined`: the slots of records where the path exists (any value, objects and arrays too),
//!   which answers `IS_DEFINED`, `!=` and `NOT`;
//! * `values`: an ordered map from scalar value to the slots holding it, which answers `=`, `IN`,
//!   ranges and `STARTS_WITH` (a range of string keys).
//!
//! Slots are small integers naming records inside one registry; sets of slots are roaring
//! bitmaps, so intersections (AND), unions (OR, ranges) and complements (NOT) are cheap even for
//! sets of hundreds of thousands of devices. A value held by one record (a serial number, a
//! position) costs one map entry and no bitmap.
//!
//! Arrays are indexed as defined but their elements are not (the query language has no array
//! operators). Paths listed as unindexed (and everything below them) are skipped; the planner
//! evaluates conditions on them by reading the records.
//!
//! # Invariants
//! * A slot is in `defined` of path `p` iff the record in that slot has `p`; it is in the posting
//!   of `(p, v)` iff the record's value at `p` is the scalar `v` (numbers as `f64`).
//! * No posting is empty (an emptied posting is removed with its key).

mod persist;

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use roaring::RoaringBitmap;

use crate::file::binary::Document;
use crate::query::{CmpOp, Cond, Path};
use crate::stored::Stored;
use crate::value::{F64Key, Node, ScalarKey, ScalarRef, class_bounds};

pub(crate) use persist::{Part, decode_part};

/// The slots holding one value of one path.
#[derive(Debug)]
enum Posting {
    One(u32),
    Many(RoaringBitmap),
}

impl Posting {
    fn len(&self) -> u64 {
        match self {
            Posting::One(_) => 1,
            Posting::Many(b) => b.len(),
        }
    }

    fn insert(&mut self, slot: u32) {
        match self {
            Posting::One(existing) if *existing == slot => {}
            Posting::One(existing) => {
                let mut b = RoaringBitmap::new();
                b.insert(*existing);
                b.insert(slot);
                *self = Posting::Many(b);
            }
            Posting::Many(b) => {
                b.insert(slot);
            }
        }
    }

    /// Removes `slot`; returns whether the posting is now empty.
    fn remove(&mut self, slot: u32) -> bool {
        match self {
            Posting::One(existing) => *existing == slot,
            Posting::Many(b) => {
                b.remove(slot);
                if b.len() == 1
                    && let Some(last) = b.min()
                {
                    *self = Posting::One(last);
                }
                false
            }
        }
    }

    /// Adds the slots of `other`.
    fn union(&mut self, other: Posting) {
        match (&mut *self, other) {
            (Posting::Many(a), Posting::Many(b)) => *a |= b,
            (Posting::Many(a), Posting::One(s)) => {
                a.insert(s);
            }
            (Posting::One(s), other) => {
                let s = *s;
                *self = other;
                self.insert(s);
            }
        }
    }

    fn iter(&self) -> PostingIter<'_> {
        match self {
            Posting::One(s) => PostingIter::One(Some(*s)),
            Posting::Many(b) => PostingIter::Many(b.iter()),
        }
    }

    fn add_to(&self, out: &mut RoaringBitmap) {
        match self {
            Posting::One(s) => {
                out.insert(*s);
            }
            Posting::Many(b) => *out |= b,
        }
    }
}

enum PostingIter<'a> {
    One(Option<u32>),
    Many(roaring::bitmap::Iter<'a>),
}

impl Iterator for PostingIter<'_> {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        match self {
            PostingIter::One(s) => s.take(),
            PostingIter::Many(it) => it.next(),
        }
    }
}

#[derive(Debug, Default)]
struct PathIndex {
    defined: RoaringBitmap,
    values: BTreeMap<ScalarKey, Posting>,
}

impl PathIndex {
    /// Adds the entries of `other` (built for other slots).
    fn absorb(&mut self, other: PathIndex) {
        self.defined |= other.defined;
        if other.values.len() * 8 < self.values.len() {
            // A few keys into a large map: look each one up.
            for (key, posting) in other.values {
                match self.values.get_mut(&key) {
                    Some(p) => p.union(posting),
                    None => {
                        self.values.insert(key, posting);
                    }
                }
            }
            return;
        }
        // Comparable sizes: merge the two sorted sequences and build the map once.
        let mut mine = std::mem::take(&mut self.values).into_iter().peekable();
        let mut theirs = other.values.into_iter().peekable();
        let mut merged = Vec::with_capacity(mine.len() + theirs.len());
        loop {
            let next = match (mine.peek(), theirs.peek()) {
                (Some((a, _)), Some((b, _))) => a.cmp(b),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => break,
            };
            match next {
                std::cmp::Ordering::Less => merged.extend(mine.next()),
                std::cmp::Ordering::Greater => merged.extend(theirs.next()),
                std::cmp::Ordering::Equal => {
                    if let (Some((key, mut p)), Some((_, q))) = (mine.next(), theirs.next()) {
                        p.union(q);
                        merged.push((key, p));
                    }
                }
            }
        }
        self.values = merged.into_iter().collect();
    }

    fn eq_set(&self, key: &ScalarKey) -> RoaringBitmap {
        let mut out = RoaringBitmap::new();
        if let Some(p) = self.values.get(key) {
            p.add_to(&mut out);
        }
        out
    }

    fn eq_len(&self, key: &ScalarKey) -> u64 {
        self.values.get(key).map_or(0, Posting::len)
    }
}

/// The indexes of one registry.
#[derive(Debug, Default)]
pub(crate) struct Indexes {
    paths: HashMap<Box<str>, PathIndex>,
    unindexed: Vec<String>,
}

/// How many keys of a range the planner reads to estimate its size before giving up and
/// assuming it is large.
const ESTIMATE_KEYS: usize = 64;

impl Indexes {
    pub(crate) fn new(unindexed: Vec<String>) -> Self {
        Indexes {
            paths: HashMap::new(),
            unindexed,
        }
    }

    /// Adds `records` (slot, record) to the indexes in bulk: entries are collected per path,
    /// sorted once, and the ordered maps built from sorted input, which is several times faster
    /// than inserting records one by one (reopening a large `FileRegistry` depends on it). The
    /// slots must not be in the indexes already (see [`Indexes::remove_slots`]). Cheapest when
    /// the slots ascend.
    pub(crate) fn bulk_build<'a, I>(&mut self, records: I)
    where
        I: Iterator<Item = (u32, &'a Stored)> + Clone + Send,
    {
        // Paths are split between threads by a hash of their name; each thread walks every
        // record but builds only its own paths' indexes.
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 4);
        let unindexed = &self.unindexed;
        let built: Vec<Vec<(Box<str>, PathIndex)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|part| {
                    let records = records.clone();
                    scope.spawn(move || bulk_part(unindexed, records, part, threads))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        for (path, index) in built.into_iter().flatten() {
            match self.paths.get_mut(&path) {
                Some(existing) => existing.absorb(index),
                None => {
                    self.paths.insert(path, index);
                }
            }
        }
    }

    /// Removes every entry of the slots in `gone`, in one pass over each path that holds any
    /// of them (cheaper than removing records one by one when there are many).
    pub(crate) fn remove_slots(&mut self, gone: &RoaringBitmap) {
        if gone.is_empty() {
            return;
        }
        self.paths.retain(|_, index| {
            if index.defined.is_disjoint(gone) {
                return true;
            }
            index.defined -= gone;
            index.values.retain(|_, posting| {
                let single = match posting {
                    Posting::One(slot) => return !gone.contains(*slot),
                    Posting::Many(bitmap) => {
                        *bitmap -= gone;
                        if bitmap.len() != 1 {
                            return !bitmap.is_empty();
                        }
                        bitmap.min()
                    }
                };
                if let Some(slot) = single {
                    *posting = Posting::One(slot);
                }
                true
            });
            !index.defined.is_empty()
        });
    }

    /// Whether conditions on `path` can be answered from the indexes.
    pub(crate) fn is_indexed(&self, path: &str) -> bool {
        is_indexed(&self.unindexed, path)
    }

    pub(crate) fn insert(&mut self, slot: u32, record: &Stored) {
        let paths = &mut self.paths;
        walk(&self.unindexed, record, &mut |path, node| {
            let index = match paths.get_mut(path) {
                Some(index) => index,
                None => paths.entry(path.into()).or_default(),
            };
            index.defined.insert(slot);
            if let Node::Scalar(s) = node {
                let key = s.to_key();
                match index.values.get_mut(&key) {
                    Some(posting) => posting.insert(slot),
                    None => {
                        index.values.insert(key, Posting::One(slot));
                    }
                }
            }
        });
    }

    pub(crate) fn remove(&mut self, slot: u32, record: &Stored) {
        let paths = &mut self.paths;
        walk(&self.unindexed, record, &mut |path, node| {
            let Some(index) = paths.get_mut(path) else {
                return;
            };
            index.defined.remove(slot);
            if let Node::Scalar(s) = node {
                let key = s.to_key();
                if let Some(posting) = index.values.get_mut(&key)
                    && posting.remove(slot)
                {
                    index.values.remove(&key);
                }
            }
            if index.defined.is_empty() {
                paths.remove(path);
            }
        });
    }

    fn path(&self, path: &Path) -> Option<&PathIndex> {
        self.paths.get(path.text.as_str())
    }

    /// The exact set of slots satisfying `cond`, or `None` if some part of it is not indexed.
    /// `all` is the set of live slots.
    pub(crate) fn exact(&self, cond: &Cond, all: &RoaringBitmap) -> Option<RoaringBitmap> {
        let empty = RoaringBitmap::new;
        Some(match cond {
            Cond::Const(true) => all.clone(),
            Cond::Const(false) => empty(),
            Cond::Cmp { path, op, value } => {
                if !self.is_indexed(&path.text) {
                    return None;
                }
                let Some(index) = self.path(path) else {
                    return Some(empty());
                };
                match op {
                    CmpOp::Eq => index.eq_set(value),
                    CmpOp::Ne => &index.defined - &index.eq_set(value),
                    _ => {
                        let mut out = empty();
                        for (_, posting) in index.values.range(range_of(*op, value)) {
                            posting.add_to(&mut out);
                        }
                        out
                    }
                }
            }
            Cond::In { path, values } => {
                if !self.is_indexed(&path.text) {
                    return None;
                }
                let mut out = empty();
                if let Some(index) = self.path(path) {
                    for v in values {
                        if let Some(p) = index.values.get(v) {
                            p.add_to(&mut out);
                        }
                    }
                }
                out
            }
            Cond::StartsWith { path, prefix } => {
                if !self.is_indexed(&path.text) {
                    return None;
                }
                let mut out = empty();
                if let Some(index) = self.path(path) {
                    for (_, posting) in prefix_range(index, prefix) {
                        posting.add_to(&mut out);
                    }
                }
                out
            }
            Cond::IsDefined(path) => {
                if !self.is_indexed(&path.text) {
                    return None;
                }
                self.path(path).map_or_else(empty, |i| i.defined.clone())
            }
            Cond::Not(inner) => all - &self.exact(inner, all)?,
            Cond::And(children) => {
                // Smallest first, so that the running intersection stays small.
                let mut ordered = children
                    .iter()
                    .map(|c| Some((self.estimate(c, all.len())?, c)))
                    .collect::<Option<Vec<_>>>()?;
                ordered.sort_by_key(|(estimate, _)| *estimate);
                let mut acc: Option<RoaringBitmap> = None;
                for (_, c) in ordered {
                    let set = self.exact(c, all)?;
                    acc = Some(match acc {
                        None => set,
                        Some(a) => a & set,
                    });
                    if acc.as_ref().is_some_and(RoaringBitmap::is_empty) {
                        break;
                    }
                }
                acc.unwrap_or_else(|| all.clone())
            }
            Cond::Or(children) => {
                let mut out = empty();
                for c in children {
                    out |= self.exact(c, all)?;
                }
                out
            }
        })
    }

    /// A cheap upper-bound estimate of how many slots satisfy `cond`, or `None` if it cannot be
    /// answered from the indexes.
    pub(crate) fn estimate(&self, cond: &Cond, all: u64) -> Option<u64> {
        Some(match cond {
            Cond::Const(true) => all,
            Cond::Const(false) => 0,
            Cond::Cmp { path, op, value } => {
                if !self.is_indexed(&path.text) {
                    return None;
                }
                let Some(index) = self.path(path) else {
                    return Some(0);
                };
                match op {
                    CmpOp::Eq => index.eq_len(value),
                    CmpOp::Ne => index.defined.len(),
                    _ => bounded_sum(index.values.range(range_of(*op, value)), all),
                }
            }
            Cond::In { path, values } => {
                if !self.is_indexed(&path.text) {
                    return None;
                }
                self.path(path)
                    .map_or(0, |i| values.iter().map(|v| i.eq_len(v)).sum())
            }
            Cond::StartsWith { path, prefix } => {
                if !self.is_indexed(&path.text) {
                    return None;
                }
                self.path(path)
                    .map_or(0, |i| bounded_sum(prefix_range(i, prefix), all))
            }
            Cond::IsDefined(path) => {
                if !self.is_indexed(&path.text) {
                    return None;
                }
                self.path(path).map_or(0, |i| i.defined.len())
            }
            Cond::Not(inner) => {
                self.estimate(inner, all)?;
                all
            }
            Cond::And(children) => {
                let mut min = all;
                for c in children {
                    min = min.min(self.estimate(c, all)?);
                }
                min
            }
            Cond::Or(children) => {
                let mut sum = 0u64;
                for c in children {
                    sum = sum.saturating_add(self.estimate(c, all)?);
                }
                sum.min(all)
            }
        })
    }

    /// The slots of `path`'s string values in key order, starting after `after` — with the
    /// `deviceId` index this lists records in device-id order. `None` if `path` is not indexed.
    pub(crate) fn ordered_strings<'a>(
        &'a self,
        path: &str,
        after: Option<&str>,
    ) -> Option<impl Iterator<Item = u32> + 'a> {
        if !self.is_indexed(path) {
            return None;
        }
        let index = self.paths.get(path);
        let low = match after {
            Some(a) => Bound::Excluded(ScalarKey::Str(a.into())),
            None => Bound::Included(ScalarKey::Str("".into())),
        };
        Some(
            index
                .into_iter()
                .flat_map(move |i| i.values.range((low.clone(), Bound::Unbounded)))
                .flat_map(|(_, posting)| posting.iter()),
        )
    }

    /// How many distinct paths are indexed (for diagnostics).
    pub(crate) fn path_count(&self) -> usize {
        self.paths.len()
    }
}

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
fn bulk_part<'a>(
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

fn is_indexed(unindexed: &[String], path: &str) -> bool {
    !unindexed.iter().any(|u| {
        path == u || (path.starts_with(u.as_str()) && path.as_bytes().get(u.len()) == Some(&b'.'))
    })
}

/// Calls `f` with every indexed path of `record` and what it holds, reading the record's
/// encoding in place. Nesting is bounded by the decoder's depth limit.
fn walk(unindexed: &[String], record: &Stored, f: &mut dyn FnMut(&str, Node<'_>)) {
    if is_indexed(unindexed, "deviceId") {
        f(
            "deviceId",
            Node::Scalar(ScalarRef::Str(record.device_id().as_str())),
        );
    }
    // Stored bytes were validated when they were stored: this cannot fail (and would only
    // leave the record partly indexed, never panic).
    let Ok(fields) = record.fields() else {
        tracing::error!(device = %record.device_id(), "stored record unreadable");
        return;
    };
    if let Some(s) = fields.state_ref
        && is_indexed(unindexed, "stateRef")
    {
        f("stateRef", Node::Scalar(ScalarRef::Str(s)));
    }
    let mut buf = String::with_capacity(64);
    let keep = |path: &str| is_indexed(unindexed, path);
    for (root, which) in [("metadata", Document::Metadata), ("tags", Document::Tags)] {
        if is_indexed(unindexed, root) {
            f(root, Node::Composite);
            buf.clear();
            buf.push_str(root);
            if let Err(e) = fields.walk_documents(which, &mut buf, &keep, f) {
                tracing::error!(device = %record.device_id(), error = %e, "stored record unreadable");
            }
        }
    }
}

/// The key range of `path <op> value` within the value's class (never a reversed range, which
/// `BTreeMap::range` would refuse).
fn range_of(op: CmpOp, value: &ScalarKey) -> (Bound<ScalarKey>, Bound<ScalarKey>) {
    let (low, high) = class_bounds(value);
    match op {
        CmpOp::Lt => (low, Bound::Excluded(value.clone())),
        CmpOp::Le => (low, Bound::Included(value.clone())),
        CmpOp::Gt => (Bound::Excluded(value.clone()), high),
        CmpOp::Ge => (Bound::Included(value.clone()), high),
        // Not called for = and != (answered by lookups), but correct if it were.
        CmpOp::Eq | CmpOp::Ne => (
            Bound::Included(value.clone()),
            Bound::Included(value.clone()),
        ),
    }
}

fn prefix_range<'a>(
    index: &'a PathIndex,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a ScalarKey, &'a Posting)> + 'a {
    index
        .values
        .range((
            Bound::Included(ScalarKey::Str(prefix.into())),
            Bound::Unbounded,
        ))
        .take_while(move |(k, _)| matches!(k, ScalarKey::Str(s) if s.starts_with(prefix)))
}

/// Sums posting sizes over at most [`ESTIMATE_KEYS`] keys; beyond that, assumes `all`.
fn bounded_sum<'a>(mut iter: impl Iterator<Item = (&'a ScalarKey, &'a Posting)>, all: u64) -> u64 {
    let mut sum = 0u64;
    for _ in 0..ESTIMATE_KEYS {
        match iter.next() {
            Some((_, p)) => sum += p.len(),
            None => return sum,
        }
    }
    if iter.next().is_some() { all } else { sum }
}

/// Every path's index with slots replaced by what `name` makes of them (device ids), so that
/// indexes built in different ways — with different slot numbers — can be compared.
#[cfg(test)]
pub(crate) type Canonical = BTreeMap<String, (Vec<String>, Vec<(String, Vec<String>)>)>;

#[cfg(test)]
impl Indexes {
    pub(crate) fn canonical(&self, name: impl Fn(u32) -> String) -> Canonical {
        let names = |slots: &mut dyn Iterator<Item = u32>| {
            let mut v: Vec<String> = slots.map(&name).collect();
            v.sort();
            v
        };
        self.paths
            .iter()
            .map(|(path, index)| {
                let values = index
                    .values
                    .iter()
                    .map(|(key, posting)| {
                        let canonical_posting = match posting {
                            Posting::Many(b) if b.len() < 2 => vec!["<non-canonical>".to_owned()],
                            _ => names(&mut posting.iter()),
                        };
                        (format!("{key:?}"), canonical_posting)
                    })
                    .collect();
                (path.to_string(), (names(&mut index.defined.iter()), values))
            })
            .collect()
    }
}
