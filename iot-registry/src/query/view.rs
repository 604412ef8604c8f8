//! A read-only view of a parsed [`Query`], for registries outside this crate that push queries
//! down to their engine (translate the condition to SQL, say) or evaluate them by a scan of
//! their own.
//!
//! The view borrows the query and is built on demand, so the compiled form behind it stays free
//! to change; every enum here is `#[non_exhaustive]` so that the language can grow.
//!
//! The semantics a backend must reproduce are in the docs of [`crate::query`].

use std::cmp::Ordering;

use serde_json::Value;

use super::ast::{CmpOp, Cond, OrderKey, Path, Query, Root};
use super::geo::GeoArea;
use crate::value::ScalarKey;

/// Where a [`Field`] starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FieldRoot {
    /// The device id (a string; no segments follow).
    DeviceId,
    /// The state reference (a string when present; no segments follow).
    StateRef,
    /// The metadata object.
    Metadata,
    /// The tags object.
    Tags,
}

/// A dotted path into a record, as a condition or `ORDER BY` key names it: `metadata.geo.lat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field<'q>(&'q Path);

impl<'q> Field<'q> {
    /// Where the path starts.
    pub fn root(&self) -> FieldRoot {
        match self.0.root {
            Root::DeviceId => FieldRoot::DeviceId,
            Root::StateRef => FieldRoot::StateRef,
            Root::Metadata => FieldRoot::Metadata,
            Root::Tags => FieldRoot::Tags,
        }
    }

    /// The object keys after the root (empty for `deviceId`, `stateRef` and a bare root).
    pub fn segments(&self) -> &'q [String] {
        &self.0.segments
    }

    /// The whole path, dotted (`metadata.geo.lat`). Keys cannot contain `.`, so this is
    /// unambiguous.
    pub fn as_str(&self) -> &'q str {
        &self.0.text
    }
}

/// A literal of a condition.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Literal<'q> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number (JSON numbers compare as `f64`; `-0` equals `0`).
    Number(f64),
    /// A string.
    String(&'q str),
}

impl<'q> Literal<'q> {
    fn of(key: &'q ScalarKey) -> Self {
        match key {
            ScalarKey::Null => Literal::Null,
            ScalarKey::Bool(b) => Literal::Bool(*b),
            ScalarKey::Num(n) => Literal::Number(n.get()),
            ScalarKey::Str(s) => Literal::String(s),
        }
    }

    /// How a JSON value compares with this literal: `None` when it is of another class (or a
    /// composite), which makes every comparison but `!=` false.
    ///
    /// ```
    /// use std::cmp::Ordering;
    /// use iot_registry::query::Literal;
    /// use serde_json::json;
    ///
    /// assert_eq!(Literal::Number(3.0).compare(&json!(4)), Some(Ordering::Greater));
    /// assert_eq!(Literal::Number(3.0).compare(&json!("4")), None);
    /// ```
    pub fn compare(&self, value: &Value) -> Option<Ordering> {
        match (value, self) {
            (Value::Null, Literal::Null) => Some(Ordering::Equal),
            (Value::Bool(a), Literal::Bool(b)) => Some(a.cmp(b)),
            (Value::Number(a), Literal::Number(b)) => {
                // Without serde_json's `arbitrary_precision`, every number has an f64 form; the
                // total order folds -0 into 0 as the indexes do.
                let a = a.as_f64()?;
                Some(fold_zero(a).total_cmp(&fold_zero(*b)))
            }
            (Value::String(a), Literal::String(b)) => Some(a.as_str().cmp(b)),
            _ => None,
        }
    }
}

fn fold_zero(f: f64) -> f64 {
    if f == 0.0 { 0.0 } else { f }
}

/// A comparison operator; the path is always on the left (`3 < p` is read as `p > 3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CompareOp {
    /// `=`
    Eq,
    /// `!=` (or `<>`)
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl CompareOp {
    /// Whether a value that compares with the literal as `ord` (`None`: another class, a
    /// composite) satisfies the operator.
    pub fn holds(self, ord: Option<Ordering>) -> bool {
        match self {
            CompareOp::Eq => ord == Some(Ordering::Equal),
            CompareOp::Ne => ord != Some(Ordering::Equal),
            CompareOp::Lt => ord == Some(Ordering::Less),
            CompareOp::Le => matches!(ord, Some(Ordering::Less | Ordering::Equal)),
            CompareOp::Gt => ord == Some(Ordering::Greater),
            CompareOp::Ge => matches!(ord, Some(Ordering::Greater | Ordering::Equal)),
        }
    }
}

/// A condition of the `WHERE` clause (see the module docs for what each means).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Condition<'q> {
    /// `true` or `false` (also the whole condition of a query without `WHERE`: `true`).
    Const(bool),
    /// `field op value`.
    Compare {
        /// The path compared.
        field: Field<'q>,
        /// The operator, with the path on the left.
        op: CompareOp,
        /// The literal.
        value: Literal<'q>,
    },
    /// `field IN [values…]` (`NOT IN` is `Not` of this).
    In {
        /// The path tested.
        field: Field<'q>,
        /// The literals.
        values: Vec<Literal<'q>>,
    },
    /// `STARTS_WITH(field, prefix)`.
    StartsWith {
        /// The path tested.
        field: Field<'q>,
        /// The prefix.
        prefix: &'q str,
    },
    /// `IS_DEFINED(field)`.
    IsDefined(Field<'q>),
    /// `WITHIN_BOX(field, …)` or `WITHIN_DISTANCE(field, …)`: `field` names an object whose
    /// numeric `lat` and `lon` members (`lat`, `lon` below) form a position inside `area`.
    Within {
        /// The object holding the position.
        field: Field<'q>,
        /// Its `lat` member.
        lat: Field<'q>,
        /// Its `lon` member.
        lon: Field<'q>,
        /// The area.
        area: GeoArea,
    },
    /// `NOT c`.
    Not(Box<Condition<'q>>),
    /// All of them.
    And(Vec<Condition<'q>>),
    /// Any of them.
    Or(Vec<Condition<'q>>),
}

impl<'q> Condition<'q> {
    fn of(cond: &'q Cond) -> Self {
        match cond {
            Cond::Const(b) => Condition::Const(*b),
            Cond::Cmp { path, op, value } => Condition::Compare {
                field: Field(path),
                op: match op {
                    CmpOp::Eq => CompareOp::Eq,
                    CmpOp::Ne => CompareOp::Ne,
                    CmpOp::Lt => CompareOp::Lt,
                    CmpOp::Le => CompareOp::Le,
                    CmpOp::Gt => CompareOp::Gt,
                    CmpOp::Ge => CompareOp::Ge,
                },
                value: Literal::of(value),
            },
            Cond::In { path, values } => Condition::In {
                field: Field(path),
                values: values.iter().map(Literal::of).collect(),
            },
            Cond::StartsWith { path, prefix } => Condition::StartsWith {
                field: Field(path),
                prefix,
            },
            Cond::IsDefined(path) => Condition::IsDefined(Field(path)),
            Cond::Within {
                path,
                lat,
                lon,
                area,
            } => Condition::Within {
                field: Field(path),
                lat: Field(lat),
                lon: Field(lon),
                area: *area,
            },
            Cond::Not(c) => Condition::Not(Box::new(Condition::of(c))),
            Cond::And(cs) => Condition::And(cs.iter().map(Condition::of).collect()),
            Cond::Or(cs) => Condition::Or(cs.iter().map(Condition::of).collect()),
        }
    }
}

/// One `ORDER BY` key.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct OrderBy<'q> {
    /// The path sorted on.
    pub field: Field<'q>,
    /// `DESC`.
    pub descending: bool,
}

impl<'q> OrderBy<'q> {
    fn of(key: &'q OrderKey) -> Self {
        OrderBy {
            field: Field(&key.path),
            descending: key.descending,
        }
    }
}

impl Query {
    /// The `WHERE` clause as a tree ([`Condition::Const`]`(true)` without one).
    ///
    /// ```
    /// use iot_registry::Query;
    /// use iot_registry::query::{CompareOp, Condition, FieldRoot, Literal};
    ///
    /// let q = Query::parse("SELECT * FROM devices WHERE 3 < metadata.floor")?;
    /// let Condition::Compare { field, op, value } = q.condition() else { panic!() };
    /// assert_eq!((field.root(), field.segments()), (FieldRoot::Metadata, &["floor".to_owned()][..]));
    /// assert_eq!((op, value), (CompareOp::Gt, Literal::Number(3.0)));
    /// # Ok::<(), iot_registry::QueryError>(())
    /// ```
    pub fn condition(&self) -> Condition<'_> {
        Condition::of(&self.filter)
    }

    /// The `ORDER BY` keys, in order (none: device-id order).
    pub fn order_by(&self) -> impl ExactSizeIterator<Item = OrderBy<'_>> + '_ {
        self.order_by.iter().map(OrderBy::of)
    }
}
