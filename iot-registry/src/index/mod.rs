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

mod bulk;
mod persist;
mod planner;
mod postings;

use std::collections::HashMap;

use roaring::RoaringBitmap;

use crate::file::binary::Document;
use crate::query::Path;
use crate::stored::Stored;
use crate::value::{Node, ScalarRef};

use bulk::bulk_part;
use postings::{PathIndex, Posting};

pub(crate) use persist::{Part, decode_part};

/// The indexes of one registry.
#[derive(Debug, Default)]
pub(crate) struct Indexes {
    paths: HashMap<Box<str>, PathIndex>,
    unindexed: Vec<String>,
}

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

    /// How many distinct paths are indexed (for diagnostics).
    pub(crate) fn path_count(&self) -> usize {
        self.paths.len()
    }
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

/// Every path's index with slots replaced by what `name` makes of them (device ids), so that
/// indexes built in different ways — with different slot numbers — can be compared.
#[cfg(test)]
pub(crate) type Canonical =
    std::collections::BTreeMap<String, (Vec<String>, Vec<(String, Vec<String>)>)>;

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
