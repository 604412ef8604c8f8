//! The compiled form of a query.

use std::fmt;
use std::str::FromStr;

use super::geo::GeoArea;
use crate::error::QueryError;
use crate::limits::QueryLimits;
use crate::value::ScalarKey;

/// What a query returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Select {
    /// `SELECT *`: the matching records.
    All,
    /// `SELECT COUNT()`: how many records match.
    Count,
}

/// Where a path starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Root {
    DeviceId,
    StateRef,
    Metadata,
    Tags,
}

impl Root {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Root::DeviceId => "deviceId",
            Root::StateRef => "stateRef",
            Root::Metadata => "metadata",
            Root::Tags => "tags",
        }
    }
}

/// A dotted path into a record: `metadata.geo.lat`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Path {
    pub(crate) root: Root,
    pub(crate) segments: Vec<String>,
    /// The path as the indexes name it (keys cannot contain `.`, so this is unambiguous).
    pub(crate) text: String,
}

impl Path {
    pub(crate) fn new(root: Root, segments: Vec<String>) -> Self {
        let mut text = root.name().to_owned();
        for s in &segments {
            text.push('.');
            text.push_str(s);
        }
        Path {
            root,
            segments,
            text,
        }
    }

    /// The path of member `key` of the object this path names.
    pub(crate) fn member(&self, key: &str) -> Path {
        let mut segments = self.segments.clone();
        segments.push(key.to_owned());
        Path::new(self.root, segments)
    }
}

/// A comparison operator, with the path on the left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    /// The operator seen from the other side (`3 < p` is `p > 3`).
    pub(crate) fn flip(self) -> Self {
        match self {
            CmpOp::Eq => CmpOp::Eq,
            CmpOp::Ne => CmpOp::Ne,
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::Le => CmpOp::Ge,
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::Ge => CmpOp::Le,
        }
    }
}

/// A condition of the `WHERE` clause. `AND` and `OR` chains are flattened, so the tree is only as
/// deep as the query's parentheses and `NOT`s (bounded by [`QueryLimits::max_nesting`]).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Cond {
    Const(bool),
    Cmp {
        path: Path,
        op: CmpOp,
        value: ScalarKey,
    },
    In {
        path: Path,
        values: Vec<ScalarKey>,
    },
    StartsWith {
        path: Path,
        prefix: String,
    },
    IsDefined(Path),
    /// `WITHIN_BOX` / `WITHIN_DISTANCE`: `path` holds a position (`lat` and `lon` are its two
    /// members' paths, kept so that evaluation and the indexes need not build them).
    Within {
        path: Path,
        lat: Path,
        lon: Path,
        area: GeoArea,
    },
    Not(Box<Cond>),
    And(Vec<Cond>),
    Or(Vec<Cond>),
}

/// One `ORDER BY` key.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct OrderKey {
    pub(crate) path: Path,
    pub(crate) descending: bool,
}

/// A parsed and checked query, ready to run on any [`Registry`](crate::Registry).
///
/// ```
/// use iot_registry::Query;
///
/// let q: Query = "SELECT * FROM devices WHERE metadata.floor >= 3 ORDER BY metadata.room LIMIT 10".parse()?;
/// assert_eq!(q.limit(), Some(10));
/// let bad = Query::parse("SELECT * FROM devices WHERE metadata.floor >=").unwrap_err();
/// assert_eq!((bad.line, bad.column), (1, 46));
/// # Ok::<(), iot_registry::QueryError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    pub(crate) select: Select,
    pub(crate) filter: Cond,
    pub(crate) order_by: Vec<OrderKey>,
    pub(crate) limit: Option<u64>,
    /// Identifies the query in continuation tokens.
    pub(crate) fingerprint: u32,
}

impl Query {
    /// Parses `text` with the default [`QueryLimits`].
    pub fn parse(text: &str) -> Result<Query, QueryError> {
        Self::parse_with_limits(text, &QueryLimits::default())
    }

    /// Parses `text`, refusing queries over `limits` with
    /// [`QueryErrorKind::TooComplex`](crate::QueryErrorKind::TooComplex).
    pub fn parse_with_limits(text: &str, limits: &QueryLimits) -> Result<Query, QueryError> {
        super::parse::parse(text, limits)
    }

    /// What the query returns.
    pub fn select(&self) -> Select {
        self.select
    }

    /// The `LIMIT`, if any.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// Whether the query has an `ORDER BY`.
    pub fn is_ordered(&self) -> bool {
        !self.order_by.is_empty()
    }
}

impl FromStr for Query {
    type Err = QueryError;
    fn from_str(s: &str) -> Result<Self, QueryError> {
        Query::parse(s)
    }
}

impl fmt::Display for Select {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Select::All => "SELECT *",
            Select::Count => "SELECT COUNT()",
        })
    }
}
