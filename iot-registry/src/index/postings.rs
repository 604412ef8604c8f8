//! The slots holding each value of one path (postings), and one path's index.

use std::collections::BTreeMap;

use roaring::RoaringBitmap;

use crate::value::ScalarKey;

/// The slots holding one value of one path.
#[derive(Debug)]
pub(super) enum Posting {
    One(u32),
    Many(RoaringBitmap),
}

impl Posting {
    pub(super) fn len(&self) -> u64 {
        match self {
            Posting::One(_) => 1,
            Posting::Many(b) => b.len(),
        }
    }

    pub(super) fn insert(&mut self, slot: u32) {
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
    pub(super) fn remove(&mut self, slot: u32) -> bool {
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
    pub(super) fn union(&mut self, other: Posting) {
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

    pub(super) fn iter(&self) -> PostingIter<'_> {
        match self {
            Posting::One(s) => PostingIter::One(Some(*s)),
            Posting::Many(b) => PostingIter::Many(b.iter()),
        }
    }

    /// Keeps in `set` only the slots of this posting.
    pub(super) fn retain_in(&self, set: &mut RoaringBitmap) {
        match self {
            Posting::One(s) => {
                let kept = set.contains(*s);
                set.clear();
                if kept {
                    set.insert(*s);
                }
            }
            Posting::Many(b) => *set &= b,
        }
    }

    pub(super) fn add_to(&self, out: &mut RoaringBitmap) {
        match self {
            Posting::One(s) => {
                out.insert(*s);
            }
            Posting::Many(b) => *out |= b,
        }
    }
}

pub(super) enum PostingIter<'a> {
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
pub(super) struct PathIndex {
    pub(super) defined: RoaringBitmap,
    pub(super) values: BTreeMap<ScalarKey, Posting>,
}

impl PathIndex {
    /// Adds the entries of `other` (built for other slots).
    pub(super) fn absorb(&mut self, other: PathIndex) {
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

    pub(super) fn eq_set(&self, key: &ScalarKey) -> RoaringBitmap {
        let mut out = RoaringBitmap::new();
        if let Some(p) = self.values.get(key) {
            p.add_to(&mut out);
        }
        out
    }

    pub(super) fn eq_len(&self, key: &ScalarKey) -> u64 {
        self.values.get(key).map_or(0, Posting::len)
    }
}
