//! Compiled expressions of the rule language and their evaluation.

use iot_core::StoredRecord;
use iot_core::time::format_rfc3339;
use serde_json::{Number, Value};

use super::project::{Field, Projected};
use crate::window::{AggKind, Input};

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

/// The GROUP BY keys of a window output.
#[derive(Clone, Copy, Debug)]
pub(crate) enum GroupKeys<'a> {
    /// The keys as values.
    Values(&'a [Value]),
    /// A single string key (the common case, a device id), not copied into a value.
    Str(&'a str),
}

/// What an expression is evaluated against.
pub(crate) struct Scope<'a> {
    pub(crate) record: Option<&'a StoredRecord>,
    pub(crate) payload: &'a Projected<'a>,
    pub(crate) timestamp: i64,
    pub(crate) keys: GroupKeys<'a>,
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
                match (s.payload.get(first), rest) {
                    (Some(f), []) => f.to_value(),
                    (Some(Field::Json(v)), rest) => {
                        let mut v = v;
                        for p in rest {
                            match v.get(p) {
                                Some(next) => v = next,
                                None => return Value::Null,
                            }
                        }
                        v.clone()
                    }
                    _ => Value::Null,
                }
            }
            Expr::DeviceId => match s.payload.get("deviceId") {
                Some(v) if !v.is_null() => v.to_value(),
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
            Expr::GroupKey(i) => match s.keys {
                GroupKeys::Values(keys) => keys.get(*i).cloned().unwrap_or(Value::Null),
                GroupKeys::Str(k) if *i == 0 => Value::from(k),
                GroupKeys::Str(_) => Value::Null,
            },
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
                match (s.payload.get(first)?, rest) {
                    (Field::Str(x), []) => Some(x.as_ref()),
                    (Field::Json(v), [_, ..]) => {
                        let mut v = v;
                        for p in rest {
                            v = v.get(p)?;
                        }
                        v.as_str()
                    }
                    _ => None,
                }
            }
            Expr::DeviceId => match s.payload.get("deviceId") {
                Some(Field::Str(x)) => Some(x.as_ref()),
                Some(v) if !v.is_null() => None,
                _ => s.record.map(|r| r.record.key.as_str()),
            },
            Expr::GroupKey(0) => match s.keys {
                GroupKeys::Str(k) => Some(k),
                GroupKeys::Values(keys) => keys.first()?.as_str(),
            },
            _ => None,
        }
    }

    /// The expression's value as a number (`None` for anything that is not a finite number),
    /// without building a JSON value on the common paths: a top-level payload field, a literal,
    /// arithmetic over those.
    pub(crate) fn eval_f64(&self, s: &Scope<'_>) -> Option<f64> {
        let finite = |x: f64| x.is_finite().then_some(x);
        match self {
            Expr::Field(path) if path.len() == 1 => s.payload.get(&path[0])?.as_f64(),
            Expr::Literal(v) => v.as_f64(),
            Expr::Neg(e) => e.eval_f64(s).map(|x| -x),
            Expr::Binary(op, a, b) => {
                let f: fn(f64, f64) -> f64 = match op {
                    BinOp::Add => |x, y| x + y,
                    BinOp::Sub => |x, y| x - y,
                    BinOp::Mul => |x, y| x * y,
                    BinOp::Div => |x, y| x / y,
                    BinOp::Mod => |x, y| x % y,
                    _ => return self.eval(s).as_f64(),
                };
                finite(f(a.eval_f64(s)?, b.eval_f64(s)?))
            }
            _ => self.eval(s).as_f64(),
        }
    }

    /// The expression's value as the input of an aggregate of `kind`: a number for the numeric
    /// aggregates, presence for `COUNT`, the value for `LAST`.
    pub(crate) fn input(&self, kind: AggKind, s: &Scope<'_>) -> Input {
        match kind {
            AggKind::Sum | AggKind::Avg | AggKind::Min | AggKind::Max => {
                self.eval_f64(s).map_or(Input::Null, Input::Number)
            }
            AggKind::Count => {
                let present = match self {
                    Expr::Literal(v) => !v.is_null(),
                    Expr::Field(path) if path.len() == 1 => {
                        s.payload.get(&path[0]).is_some_and(|f| !f.is_null())
                    }
                    _ => !self.eval(s).is_null(),
                };
                if present {
                    Input::Number(1.0)
                } else {
                    Input::Null
                }
            }
            AggKind::Last => Input::from(self.eval(s)),
        }
    }

    /// Appends the expression's value to `out` as JSON, without copying the common cases (a
    /// string key, an aggregate).
    pub(crate) fn write_json(&self, s: &Scope<'_>, out: &mut Vec<u8>) {
        let written = match self {
            Expr::GroupKey(0) if matches!(s.keys, GroupKeys::Str(_)) => {
                serde_json::to_writer(&mut *out, &self.str_ref(s))
            }
            Expr::Aggregate(i) => {
                serde_json::to_writer(&mut *out, s.aggregates.get(*i).unwrap_or(&Value::Null))
            }
            _ => serde_json::to_writer(&mut *out, &self.eval(s)),
        };
        // Writing a JSON value into a vector cannot fail; keep the output valid if it did.
        if written.is_err() {
            out.extend_from_slice(b"null");
        }
    }

    /// Whether the expression holds (`true`; null and anything else do not).
    pub(crate) fn holds(&self, s: &Scope<'_>) -> bool {
        truthy(&self.eval(s))
    }
}
