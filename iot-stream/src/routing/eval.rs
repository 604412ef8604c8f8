//! Evaluation of a routing condition with IoT Hub's three-valued semantics: a value is a JSON
//! value or *undefined* (`None`). A missing property is undefined; comparing or computing with
//! undefined, or across types, is undefined; a condition routes only when it is `true`.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::Value;

use super::ast::{BinOp, Expr, Func, Root, Step};
use super::message::MessageView;

/// What a condition reads: the message and, when the route needs it, the twin
/// (`{"tags": …, "properties": {"desired": …, "reported": …}}`).
/// A value while evaluating: borrowed from the condition, the body or the twin where possible
/// (no copy per comparison), owned when computed; `None` is undefined.
pub(crate) type Val<'s> = Option<Cow<'s, Value>>;

pub(crate) struct Scope<'s, 'a> {
    pub(crate) message: &'s MessageView<'a>,
    pub(crate) twin: Option<&'s Value>,
}

fn num(x: f64) -> Option<Value> {
    // NaN and infinities are not JSON numbers: the result is undefined.
    serde_json::Number::from_f64(x).map(Value::Number)
}

fn owned<'s>(v: Option<Value>) -> Val<'s> {
    v.map(Cow::Owned)
}

fn boolean<'s>(b: bool) -> Val<'s> {
    Some(Cow::Owned(Value::Bool(b)))
}

fn walk<'v>(mut v: &'v Value, steps: &[Step]) -> Option<&'v Value> {
    for step in steps {
        v = match step {
            Step::Field(name) => v.as_object()?.get(name)?,
            Step::Index(i) => v.as_array()?.get(*i)?,
        };
    }
    Some(v)
}

fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        _ => None,
    }
}

/// `=` and `!=` also hold between arrays and between objects (deep equality); numbers compare
/// as numbers (`1 = 1.0`).
fn equal(a: &Value, b: &Value) -> Option<bool> {
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Some(false);
            }
            for (p, q) in x.iter().zip(y) {
                if !equal(p, q)? {
                    return Some(false);
                }
            }
            Some(true)
        }
        (Value::Object(x), Value::Object(y)) => {
            if x.len() != y.len() {
                return Some(false);
            }
            for (k, p) in x {
                match y.get(k) {
                    Some(q) if equal(p, q)? => {}
                    _ => return Some(false),
                }
            }
            Some(true)
        }
        _ => compare(a, b).map(|o| o == Ordering::Equal),
    }
}

fn as_bool(v: &Val<'_>) -> Option<bool> {
    match v.as_deref() {
        Some(Value::Bool(b)) => Some(*b),
        _ => None,
    }
}

impl Expr {
    /// The expression's value; `None` is undefined.
    pub(crate) fn eval<'s>(&'s self, s: &Scope<'s, '_>) -> Val<'s> {
        match self {
            Expr::Const(v) => Some(Cow::Borrowed(v)),
            Expr::Undefined => None,
            Expr::Path(root, steps) => path(root, steps, s),
            Expr::Not(e) => as_bool(&e.eval(s)).map(|b| Cow::Owned(Value::Bool(!b))),
            Expr::Neg(e) => owned(num(-e.eval(s)?.as_f64()?)),
            Expr::Binary(BinOp::And, a, b) => {
                let a = as_bool(&a.eval(s));
                if a == Some(false) {
                    return boolean(false);
                }
                match (a, as_bool(&b.eval(s))) {
                    (_, Some(false)) => boolean(false),
                    (Some(true), Some(true)) => boolean(true),
                    _ => None,
                }
            }
            Expr::Binary(BinOp::Or, a, b) => {
                let a = as_bool(&a.eval(s));
                if a == Some(true) {
                    return boolean(true);
                }
                match (a, as_bool(&b.eval(s))) {
                    (_, Some(true)) => boolean(true),
                    (Some(false), Some(false)) => boolean(false),
                    _ => None,
                }
            }
            Expr::Binary(op, a, b) => {
                let a = a.eval(s)?;
                let b = b.eval(s)?;
                owned(binary(*op, &a, &b))
            }
            Expr::Call(func, args) => owned(call(*func, args, s)),
        }
    }

    /// Whether the expression reads the twin anywhere.
    pub(crate) fn reads_twin(&self) -> bool {
        match self {
            Expr::Path(root, _) => *root == Root::Twin,
            Expr::Not(e) | Expr::Neg(e) => e.reads_twin(),
            Expr::Binary(_, a, b) => a.reads_twin() || b.reads_twin(),
            Expr::Call(_, args) => args.iter().any(Expr::reads_twin),
            Expr::Const(_) | Expr::Undefined => false,
        }
    }
}

/// A comparison or arithmetic on two defined values.
pub(crate) fn binary(op: BinOp, a: &Value, b: &Value) -> Option<Value> {
    let cmp = |want: fn(Ordering) -> bool| compare(a, b).map(|o| Value::Bool(want(o)));
    match op {
        BinOp::Eq => equal(a, b).map(Value::Bool),
        BinOp::NotEq => equal(a, b).map(|e| Value::Bool(!e)),
        BinOp::Lt => cmp(Ordering::is_lt),
        BinOp::LtEq => cmp(Ordering::is_le),
        BinOp::Gt => cmp(Ordering::is_gt),
        BinOp::GtEq => cmp(Ordering::is_ge),
        BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Mod => {
            let (x, y) = (a.as_f64()?, b.as_f64()?);
            if !a.is_number() || !b.is_number() {
                return None;
            }
            num(match op {
                BinOp::Add => x + y,
                BinOp::Sub => x - y,
                BinOp::Mul => x * y,
                // x / 0 and x % 0 are not finite: undefined.
                BinOp::Div => x / y,
                _ => x % y,
            })
        }
        BinOp::And | BinOp::Or => None,
    }
}

fn path<'s>(root: &Root, steps: &[Step], s: &Scope<'s, '_>) -> Val<'s> {
    match root {
        Root::App(name) => {
            let v = s.message.app_property(name)?;
            // Application properties are strings; a path into one is undefined.
            steps.is_empty().then(|| Cow::Owned(Value::from(v)))
        }
        Root::System(name) => {
            let v = s
                .message
                .system_property(name)
                .or_else(|| s.message.app_property(&format!("${name}")).map(Value::from))?;
            steps.is_empty().then_some(Cow::Owned(v))
        }
        // A query on the whole body (`$body`, `$body[0]`) is undefined, as IoT Hub documents:
        // only properties in the body can be read.
        Root::Body => match steps.first() {
            Some(Step::Field(_)) => walk(s.message.body()?, steps).map(Cow::Borrowed),
            _ => None,
        },
        Root::Twin => match steps.first() {
            Some(Step::Field(_)) => walk(s.twin?, steps).map(Cow::Borrowed),
            _ => None,
        },
    }
}

fn string<'v>(v: &'v Val<'_>) -> Option<&'v str> {
    v.as_deref()?.as_str()
}

fn integer(v: &Val<'_>) -> Option<i64> {
    let x = v.as_deref()?.as_f64()?;
    (x.fract() == 0.0).then_some(x as i64)
}

fn call<'s>(func: Func, args: &'s [Expr], s: &Scope<'s, '_>) -> Option<Value> {
    let values: Vec<Val<'s>> = args.iter().map(|a| a.eval(s)).collect();
    let first: Option<&Value> = values.first().and_then(|v| v.as_deref());
    let is = |test: fn(&Value) -> bool| Some(Value::Bool(first.is_some_and(test)));
    let math = |f: fn(f64) -> f64| num(f(first?.as_f64()?));
    match func {
        Func::IsDefined => Some(Value::Bool(first.is_some())),
        Func::IsString => is(Value::is_string),
        Func::IsNumber => is(Value::is_number),
        Func::IsBool => is(Value::is_boolean),
        Func::IsNull => is(Value::is_null),
        Func::IsObject => is(Value::is_object),
        Func::IsArray => is(Value::is_array),
        Func::IsPrimitive => is(|v| !v.is_object() && !v.is_array()),
        Func::AsNumber => match first? {
            v @ Value::Number(_) => Some(v.clone()),
            Value::String(text) => num(text.trim().parse::<f64>().ok()?),
            _ => None,
        },
        Func::Length => Some(Value::from(string(&values[0])?.chars().count())),
        Func::Lower => Some(Value::from(string(&values[0])?.to_lowercase())),
        Func::Upper => Some(Value::from(string(&values[0])?.to_uppercase())),
        Func::Concat => {
            let mut out = String::new();
            for v in &values {
                out.push_str(string(v)?);
            }
            Some(Value::from(out))
        }
        Func::Contains => Some(Value::Bool(
            string(&values[0])?.contains(string(&values[1])?),
        )),
        Func::StartsWith => Some(Value::Bool(
            string(&values[0])?.starts_with(string(&values[1])?),
        )),
        Func::EndsWith => Some(Value::Bool(
            string(&values[0])?.ends_with(string(&values[1])?),
        )),
        Func::IndexOf => {
            let text = string(&values[0])?;
            let fragment = string(&values[1])?;
            // Positions in characters, like LENGTH and SUBSTRING.
            let index = text
                .find(fragment)
                .map_or(-1, |byte| text[..byte].chars().count() as i64);
            Some(Value::from(index))
        }
        Func::Substring => {
            let text = string(&values[0])?;
            let start = usize::try_from(integer(&values[1])?.max(0)).ok()?;
            let length = match values.get(2) {
                Some(v) => usize::try_from(integer(v)?.max(0)).ok()?,
                None => usize::MAX,
            };
            Some(Value::from(
                text.chars().skip(start).take(length).collect::<String>(),
            ))
        }
        Func::Abs => math(f64::abs),
        Func::Ceiling => math(f64::ceil),
        Func::Floor => math(f64::floor),
        Func::Round => math(f64::round),
        Func::Sign => math(|x| {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                0.0
            }
        }),
        Func::Square => math(|x| x * x),
        Func::Sqrt => math(f64::sqrt),
        Func::Exp => math(f64::exp),
        Func::Power => num(first?.as_f64()?.powf(values[1].as_deref()?.as_f64()?)),
    }
}
