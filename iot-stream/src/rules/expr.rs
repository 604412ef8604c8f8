//! Compiled expressions of the rule language and their evaluation.

use iot_core::StoredRecord;
use serde_json::{Number, Value};

use super::project::Projected;
use super::time::format_rfc3339;

/// Binary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    And,
    Or,
}

/// A compiled expression.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Expr {
    Literal(Value),
    /// A path into the JSON payload (`a.b.c`).
    Field(Vec<String>),
    /// `deviceId`: the payload field if present, else the record key.
    DeviceId,
    /// `header('name')`.
    Header(String),
    /// `EventEnqueuedUtcTime`.
    EnqueuedTime,
    /// `System.Timestamp()`: the event time, or the window end in aggregate output.
    SystemTimestamp,
    /// The i-th GROUP BY key (aggregate output only).
    GroupKey(usize),
    /// The i-th aggregate (aggregate output only).
    Aggregate(usize),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    IsNull(Box<Expr>, bool),
    Binary(BinOp, Box<Expr>, Box<Expr>),
}

/// What an expression is evaluated against.
pub(crate) struct Scope<'a> {
    pub(crate) record: Option<&'a StoredRecord>,
    pub(crate) payload: &'a Projected<'a>,
    pub(crate) timestamp: i64,
    pub(crate) keys: &'a [Value],
    pub(crate) aggregates: &'a [Value],
}

fn num(x: f64) -> Value {
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

fn truthy(v: &Value) -> bool {
    matches!(v, Value::Bool(true))
}

fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

impl Expr {
    pub(crate) fn eval(&self, s: &Scope<'_>) -> Value {
        match self {
            Expr::Literal(v) => v.clone(),
            Expr::Field(path) => {
                let Some((first, rest)) = path.split_first() else {
                    return Value::Null;
                };
                let Some(mut v) = s.payload.get(first) else {
                    return Value::Null;
                };
                for p in rest {
                    match v.get(p) {
                        Some(next) => v = next,
                        None => return Value::Null,
                    }
                }
                v.clone()
            }
            Expr::DeviceId => match s.payload.get("deviceId") {
                Some(v) if !v.is_null() => v.clone(),
                _ => s
                    .record
                    .map_or(Value::Null, |r| Value::from(r.record.key.as_str())),
            },
            Expr::Header(name) => s
                .record
                .and_then(|r| r.record.headers.get(name))
                .map_or(Value::Null, Value::from),
            Expr::EnqueuedTime => s.record.map_or(Value::Null, |r| {
                Value::from(format_rfc3339(crate::window::micros(r.enqueued_time)))
            }),
            Expr::SystemTimestamp => Value::from(format_rfc3339(s.timestamp)),
            Expr::GroupKey(i) => s.keys.get(*i).cloned().unwrap_or(Value::Null),
            Expr::Aggregate(i) => s.aggregates.get(*i).cloned().unwrap_or(Value::Null),
            Expr::Not(e) => match e.eval(s) {
                Value::Bool(b) => Value::Bool(!b),
                _ => Value::Null,
            },
            Expr::Neg(e) => e.eval(s).as_f64().map_or(Value::Null, |x| num(-x)),
            Expr::IsNull(e, negated) => Value::Bool(e.eval(s).is_null() != *negated),
            Expr::Binary(op, a, b) => {
                let a = a.eval(s);
                // AND / OR short-circuit; null counts as false.
                match op {
                    BinOp::And => return Value::Bool(truthy(&a) && truthy(&b.eval(s))),
                    BinOp::Or => return Value::Bool(truthy(&a) || truthy(&b.eval(s))),
                    _ => {}
                }
                let b = b.eval(s);
                use std::cmp::Ordering::*;
                let cmp = |want: &[std::cmp::Ordering]| {
                    compare(&a, &b).map_or(Value::Null, |o| Value::Bool(want.contains(&o)))
                };
                let arith = |f: fn(f64, f64) -> f64| match (a.as_f64(), b.as_f64()) {
                    (Some(x), Some(y)) => num(f(x, y)),
                    _ => Value::Null,
                };
                match op {
                    BinOp::Eq => cmp(&[Equal]),
                    BinOp::NotEq => cmp(&[Less, Greater]),
                    BinOp::Lt => cmp(&[Less]),
                    BinOp::LtEq => cmp(&[Less, Equal]),
                    BinOp::Gt => cmp(&[Greater]),
                    BinOp::GtEq => cmp(&[Greater, Equal]),
                    BinOp::Add => arith(|x, y| x + y),
                    BinOp::Sub => arith(|x, y| x - y),
                    BinOp::Mul => arith(|x, y| x * y),
                    BinOp::Div => arith(|x, y| x / y),
                    BinOp::Mod => arith(|x, y| x % y),
                    BinOp::And | BinOp::Or => Value::Null,
                }
            }
        }
    }

    /// Adds the top-level payload fields the expression reads to `out`; `false` if it needs the
    /// whole payload.
    pub(crate) fn fields(&self, out: &mut std::collections::BTreeSet<String>) {
        match self {
            Expr::Field(path) => {
                if let Some(first) = path.first() {
                    out.insert(first.clone());
                }
            }
            Expr::DeviceId => {
                out.insert("deviceId".to_owned());
            }
            Expr::Not(e) | Expr::Neg(e) | Expr::IsNull(e, _) => e.fields(out),
            Expr::Binary(_, a, b) => {
                a.fields(out);
                b.fields(out);
            }
            Expr::Literal(_)
            | Expr::Header(_)
            | Expr::EnqueuedTime
            | Expr::SystemTimestamp
            | Expr::GroupKey(_)
            | Expr::Aggregate(_) => {}
        }
    }

    /// The expression's value when it is a string read straight from the record (no copy).
    pub(crate) fn str_ref<'a>(&self, s: &Scope<'a>) -> Option<&'a str> {
        match self {
            Expr::Field(path) => {
                let (first, rest) = path.split_first()?;
                let mut v = s.payload.get(first)?;
                for p in rest {
                    v = v.get(p)?;
                }
                v.as_str()
            }
            Expr::DeviceId => match s.payload.get("deviceId") {
                Some(Value::String(x)) => Some(x),
                Some(v) if !v.is_null() => None,
                _ => s.record.map(|r| r.record.key.as_str()),
            },
            _ => None,
        }
    }

    /// Whether the expression holds (`true`; null and anything else do not).
    pub(crate) fn holds(&self, s: &Scope<'_>) -> bool {
        truthy(&self.eval(s))
    }
}
