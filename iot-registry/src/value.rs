//! Scalars as the query language and the indexes see them, and how a path finds its value in a
//! record.
//!
//! Values compare only within their class: null, booleans (`false < true`), numbers (as `f64`),
//! strings (by bytes). The classes order `null < bool < number < string`, which is also the order
//! of the index keys, so a range over one class is a contiguous key range.

use std::cmp::Ordering;
use std::ops::Bound;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::query::{Path, Root};
use crate::record::DeviceRecord;

/// An `f64` with a total order (JSON has no NaN; `-0.0` is folded into `0.0` so that equal
/// numbers have equal keys).
#[derive(Clone, Copy, Debug)]
pub(crate) struct F64Key(f64);

impl F64Key {
    pub(crate) fn new(f: f64) -> Self {
        F64Key(if f == 0.0 { 0.0 } else { f })
    }
    pub(crate) fn get(self) -> f64 {
        self.0
    }
}

impl std::hash::Hash for F64Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Equal keys have equal bits: -0.0 is folded into 0.0 and JSON has no NaN.
        self.0.to_bits().hash(state);
    }
}

impl PartialEq for F64Key {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for F64Key {}
impl PartialOrd for F64Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for F64Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// An owned scalar: a query literal, or an index key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum ScalarKey {
    Null,
    Bool(bool),
    Num(F64Key),
    Str(Box<str>),
}

/// A scalar borrowed from a record.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ScalarRef<'a> {
    Null,
    Bool(bool),
    Num(f64),
    Str(&'a str),
}

impl ScalarRef<'_> {
    pub(crate) fn to_key(self) -> ScalarKey {
        match self {
            ScalarRef::Null => ScalarKey::Null,
            ScalarRef::Bool(b) => ScalarKey::Bool(b),
            ScalarRef::Num(n) => ScalarKey::Num(F64Key::new(n)),
            ScalarRef::Str(s) => ScalarKey::Str(s.into()),
        }
    }

    /// Compares with a literal of the same class; `None` across classes.
    pub(crate) fn cmp_key(self, key: &ScalarKey) -> Option<Ordering> {
        match (self, key) {
            (ScalarRef::Null, ScalarKey::Null) => Some(Ordering::Equal),
            (ScalarRef::Bool(a), ScalarKey::Bool(b)) => Some(a.cmp(b)),
            (ScalarRef::Num(a), ScalarKey::Num(b)) => Some(F64Key::new(a).cmp(b)),
            (ScalarRef::Str(a), ScalarKey::Str(b)) => Some(a.cmp(&**b)),
            _ => None,
        }
    }
}

/// What a path finds in a record.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Node<'a> {
    Scalar(ScalarRef<'a>),
    /// An object or an array: defined, but equal to no literal and unordered.
    Composite,
}

pub(crate) fn scalar_of(value: &Value) -> Node<'_> {
    match value {
        Value::Null => Node::Scalar(ScalarRef::Null),
        Value::Bool(b) => Node::Scalar(ScalarRef::Bool(*b)),
        // Without serde_json's `arbitrary_precision`, every number has an f64 form.
        Value::Number(n) => Node::Scalar(ScalarRef::Num(n.as_f64().unwrap_or(f64::NAN))),
        Value::String(s) => Node::Scalar(ScalarRef::Str(s)),
        Value::Array(_) | Value::Object(_) => Node::Composite,
    }
}

/// A record as conditions and `ORDER BY` read it: decoded ([`DeviceRecord`]) or encoded
/// ([`crate::stored::Stored`]); both must find the same node for every path.
pub(crate) trait Resolve {
    /// Finds `path`; `None` when it is not defined.
    fn resolve(&self, path: &Path) -> Option<Node<'_>>;
}

impl Resolve for DeviceRecord {
    fn resolve(&self, path: &Path) -> Option<Node<'_>> {
        resolve(self, path)
    }
}

/// Finds `path` in `record`; `None` when it is not defined there.
pub(crate) fn resolve<'a>(record: &'a DeviceRecord, path: &Path) -> Option<Node<'a>> {
    let (map, segments): (&'a Map<String, Value>, &[String]) = match path.root {
        Root::DeviceId => {
            return path
                .segments
                .is_empty()
                .then_some(Node::Scalar(ScalarRef::Str(record.device_id.as_str())));
        }
        Root::StateRef => {
            return match (&record.state_ref, path.segments.is_empty()) {
                (Some(s), true) => Some(Node::Scalar(ScalarRef::Str(s))),
                _ => None,
            };
        }
        Root::Metadata => (&record.metadata, &path.segments),
        Root::Tags => (&record.tags, &path.segments),
    };
    let Some((first, rest)) = segments.split_first() else {
        return Some(Node::Composite);
    };
    let mut value = map.get(first)?;
    for segment in rest {
        value = value.as_object()?.get(segment)?;
    }
    Some(scalar_of(value))
}

/// The key range of the class of `key`.
pub(crate) fn class_bounds(key: &ScalarKey) -> (Bound<ScalarKey>, Bound<ScalarKey>) {
    match key {
        ScalarKey::Null => (
            Bound::Included(ScalarKey::Null),
            Bound::Included(ScalarKey::Null),
        ),
        ScalarKey::Bool(_) => (
            Bound::Included(ScalarKey::Bool(false)),
            Bound::Included(ScalarKey::Bool(true)),
        ),
        ScalarKey::Num(_) => (
            Bound::Included(ScalarKey::Num(F64Key::new(f64::NEG_INFINITY))),
            Bound::Included(ScalarKey::Num(F64Key::new(f64::INFINITY))),
        ),
        ScalarKey::Str(_) => (Bound::Included(ScalarKey::Str("".into())), Bound::Unbounded),
    }
}

/// A value as `ORDER BY` sorts it: undefined (or an object or array) first, then null, booleans,
/// numbers, strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum SortKey<'a> {
    Undefined,
    Null,
    Bool(bool),
    Num(F64Key),
    Str(&'a str),
}

impl<'a> SortKey<'a> {
    pub(crate) fn of(node: Option<Node<'a>>) -> Self {
        match node {
            None | Some(Node::Composite) => SortKey::Undefined,
            Some(Node::Scalar(ScalarRef::Null)) => SortKey::Null,
            Some(Node::Scalar(ScalarRef::Bool(b))) => SortKey::Bool(b),
            Some(Node::Scalar(ScalarRef::Num(n))) => SortKey::Num(F64Key::new(n)),
            Some(Node::Scalar(ScalarRef::Str(s))) => SortKey::Str(s),
        }
    }

    pub(crate) fn to_owned_key(self) -> OwnedSortKey {
        match self {
            SortKey::Undefined => OwnedSortKey::U,
            SortKey::Null => OwnedSortKey::N,
            SortKey::Bool(b) => OwnedSortKey::B(b),
            SortKey::Num(n) => OwnedSortKey::F(n.get().to_bits()),
            SortKey::Str(s) => OwnedSortKey::S(s.to_owned()),
        }
    }
}

/// A sort key as a continuation token carries it. A number travels as the bits of its `f64`:
/// a decimal form would have to be read back exactly, and serde_json's default float parser may
/// land one unit in the last place off, which moves the next page's start past or before the
/// record it names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum OwnedSortKey {
    U,
    N,
    B(bool),
    F(u64),
    S(String),
}

impl OwnedSortKey {
    pub(crate) fn as_key(&self) -> SortKey<'_> {
        match self {
            OwnedSortKey::U => SortKey::Undefined,
            OwnedSortKey::N => SortKey::Null,
            OwnedSortKey::B(b) => SortKey::Bool(*b),
            OwnedSortKey::F(bits) => SortKey::Num(F64Key::new(f64::from_bits(*bits))),
            OwnedSortKey::S(s) => SortKey::Str(s),
        }
    }
}
