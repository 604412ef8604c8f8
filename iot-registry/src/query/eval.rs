//! What a query means for one record: the reference semantics that the index planner must
//! reproduce exactly.
//!
//! Conditions are two-valued. A comparison with a path that is not defined in the record, or that
//! holds a value of another class (a string where the literal is a number), is false; `!=` is true
//! when the path is defined and holds anything other than the literal; `NOT` negates.

use std::cmp::Ordering;

use super::ast::{CmpOp, Cond, Query};
use crate::record::DeviceRecord;
use crate::value::{Node, Resolve, ScalarRef, SortKey, resolve};

impl Cond {
    pub(crate) fn matches<R: Resolve + ?Sized>(&self, record: &R) -> bool {
        match self {
            Cond::Const(b) => *b,
            Cond::Cmp { path, op, value } => match record.resolve(path) {
                None => false,
                Some(Node::Composite) => *op == CmpOp::Ne,
                Some(Node::Scalar(s)) => {
                    let ord = s.cmp_key(value);
                    match op {
                        CmpOp::Eq => ord == Some(Ordering::Equal),
                        CmpOp::Ne => ord != Some(Ordering::Equal),
                        CmpOp::Lt => ord == Some(Ordering::Less),
                        CmpOp::Le => matches!(ord, Some(Ordering::Less | Ordering::Equal)),
                        CmpOp::Gt => ord == Some(Ordering::Greater),
                        CmpOp::Ge => matches!(ord, Some(Ordering::Greater | Ordering::Equal)),
                    }
                }
            },
            Cond::In { path, values } => match record.resolve(path) {
                Some(Node::Scalar(s)) => {
                    values.iter().any(|v| s.cmp_key(v) == Some(Ordering::Equal))
                }
                _ => false,
            },
            Cond::StartsWith { path, prefix } => matches!(
                record.resolve(path),
                Some(Node::Scalar(ScalarRef::Str(s))) if s.starts_with(prefix.as_str())
            ),
            Cond::IsDefined(path) => record.resolve(path).is_some(),
            Cond::Within { lat, lon, area, .. } => {
                match (record.resolve(lat), record.resolve(lon)) {
                    (
                        Some(Node::Scalar(ScalarRef::Num(lat))),
                        Some(Node::Scalar(ScalarRef::Num(lon))),
                    ) => area.contains(lat, lon),
                    _ => false,
                }
            }
            Cond::Not(c) => !c.matches(record),
            Cond::And(cs) => cs.iter().all(|c| c.matches(record)),
            Cond::Or(cs) => cs.iter().any(|c| c.matches(record)),
        }
    }
}

impl Query {
    /// Whether `record` satisfies the query's `WHERE` clause (true when there is none).
    pub fn matches(&self, record: &DeviceRecord) -> bool {
        self.filter.matches(record)
    }

    /// The order of results: the `ORDER BY` keys (undefined values first, then null, booleans,
    /// numbers, strings; `DESC` reverses a key), then the device id, ascending, to break ties.
    /// Without `ORDER BY`, records come in device-id order.
    pub fn cmp_records(&self, a: &DeviceRecord, b: &DeviceRecord) -> Ordering {
        for key in &self.order_by {
            let ka = SortKey::of(resolve(a, &key.path));
            let kb = SortKey::of(resolve(b, &key.path));
            let ord = if key.descending {
                kb.cmp(&ka)
            } else {
                ka.cmp(&kb)
            };
            if ord != Ordering::Equal {
                return ord;
            }
        }
        a.device_id.cmp(&b.device_id)
    }

    /// The sort keys of `record` for this query's `ORDER BY`.
    pub(crate) fn sort_keys<'a, R: Resolve + ?Sized>(&self, record: &'a R) -> Vec<SortKey<'a>> {
        self.order_by
            .iter()
            .map(|k| SortKey::of(record.resolve(&k.path)))
            .collect()
    }

    /// Compares two `(sort keys, device id)` positions in this query's order.
    pub(crate) fn cmp_positions(
        &self,
        a: (&[SortKey<'_>], &str),
        b: (&[SortKey<'_>], &str),
    ) -> Ordering {
        for (i, key) in self.order_by.iter().enumerate() {
            let (ka, kb) = (a.0.get(i), b.0.get(i));
            let ord = if key.descending {
                kb.cmp(&ka)
            } else {
                ka.cmp(&kb)
            };
            if ord != Ordering::Equal {
                return ord;
            }
        }
        a.1.cmp(b.1)
    }
}
