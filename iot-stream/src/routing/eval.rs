//! Evaluation of a routing condition with IoT Hub's three-valued semantics: a value is a JSON
//! value or *undefined* (`None`). A missing property is undefined; comparing or computing with
//! undefined, or across types, is undefined; a condition routes only when it is `true`.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::Value;

use super::ast::{BinOp, Expr, Func, Root, Step};
use super::message::{Member, MessageView};
use crate::rules::project::Field;

/// A defined value while evaluating. Borrowed wherever it can be — from the condition, the body,
/// the twin, or (as text) from the record's headers — so that reading a property or a constant
/// copies nothing; owned only when computed.
#[derive(Clone, Debug)]
pub(crate) enum V<'s> {
    /// A JSON value of the condition, the body or the twin.
    Ref(&'s Value),
    /// A string property's text in the record (an application or a system property).
    Str(&'s str),
    /// A computed value.
    Own(Value),
}

/// A value or *undefined* (`None`).
pub(crate) type Val<'s> = Option<V<'s>>;

/// What comparisons look at: a string (wherever it lives) or any other JSON value.
enum Kind<'v> {
    Str(&'v str),
    Json(&'v Value),
}

impl<'s> V<'s> {
    fn json(&self) -> Option<&Value> {
        match self {
            V::Ref(v) => Some(v),
            V::Own(v) => Some(v),
            V::Str(_) => None,
        }
    }

    fn kind(&self) -> Kind<'_> {
        match self {
            V::Str(s) => Kind::Str(s),
            V::Ref(Value::String(s)) | V::Own(Value::String(s)) => Kind::Str(s),
            V::Ref(v) => Kind::Json(v),
            V::Own(v) => Kind::Json(v),
        }
    }

    pub(crate) fn as_bool(&self) -> Option<bool> {
        self.json()?.as_bool()
    }

    fn as_str(&self) -> Option<&str> {
        match self.kind() {
            Kind::Str(s) => Some(s),
            Kind::Json(_) => None,
        }
    }

    fn as_f64(&self) -> Option<f64> {
        self.json()?.as_f64()
    }

    fn is_number(&self) -> bool {
        self.json().is_some_and(Value::is_number)
    }

    /// Whether `test` holds for the value (a header's text is a JSON string).
    fn is(&self, test: fn(&Value) -> bool) -> bool {
        match self {
            V::Str(_) => test(&Value::String(String::new())),
            V::Ref(v) => test(v),
            V::Own(v) => test(v),
        }
    }

    /// The value as JSON.
    pub(crate) fn into_owned(self) -> Value {
        match self {
            V::Ref(v) => v.clone(),
            V::Str(s) => Value::from(s),
            V::Own(v) => v,
        }
    }
}

/// What a condition reads: the message and, when the route needs it, the twin
/// (`{"tags": …, "properties": {"desired": …, "reported": …}}`).
pub(crate) struct Scope<'s, 'a> {
    pub(crate) message: &'s MessageView<'a>,
    pub(crate) twin: Option<&'s Value>,
}

fn num(x: f64) -> Option<Value> {
    // NaN and infinities are not JSON numbers: the result is undefined.
    serde_json::Number::from_f64(x).map(Value::Number)
}

fn owned<'s>(v: Option<Value>) -> Val<'s> {
    v.map(V::Own)
}

fn boolean<'s>(b: bool) -> Val<'s> {
    Some(V::Own(Value::Bool(b)))
}

/// A path's value inside a JSON value.
pub(crate) fn walk<'v>(mut v: &'v Value, steps: &[Step]) -> Option<&'v Value> {
    for step in steps {
        v = match step {
            Step::Field(name) => v.as_object()?.get(name)?,
            Step::Index(i) => v.as_array()?.get(*i)?,
        };
    }
    Some(v)
}

fn compare_json(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        _ => None,
    }
}

fn compare(a: &Kind<'_>, b: &Kind<'_>) -> Option<Ordering> {
    match (a, b) {
        (Kind::Str(x), Kind::Str(y)) => Some(x.cmp(y)),
        (Kind::Json(x), Kind::Json(y)) => compare_json(x, y),
        // A string and anything else.
        _ => None,
    }
}

/// `=` and `!=` also hold between arrays and between objects (deep equality); numbers compare
/// as numbers (`1 = 1.0`).
pub(crate) fn equal_json(a: &Value, b: &Value) -> Option<bool> {
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Some(false);
            }
            for (p, q) in x.iter().zip(y) {
                if !equal_json(p, q)? {
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
                    Some(q) if equal_json(p, q)? => {}
                    _ => return Some(false),
                }
            }
            Some(true)
        }
        _ => compare_json(a, b).map(|o| o == Ordering::Equal),
    }
}

fn equal(a: &Kind<'_>, b: &Kind<'_>) -> Option<bool> {
    match (a, b) {
        (Kind::Json(x), Kind::Json(y)) => equal_json(x, y),
        _ => compare(a, b).map(|o| o == Ordering::Equal),
    }
}

fn as_bool(v: &Val<'_>) -> Option<bool> {
    v.as_ref()?.as_bool()
}

impl Expr {
    /// The expression's value; `None` is undefined.
    pub(crate) fn eval<'s>(&'s self, s: &Scope<'s, '_>) -> Val<'s> {
        match self {
            Expr::Const(v) => Some(V::Ref(v)),
            Expr::Undefined => None,
            Expr::Path(root, steps) => path(root, steps, s),
            Expr::Not(e) => as_bool(&e.eval(s)).map(|b| V::Own(Value::Bool(!b))),
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
            Expr::Call(func, args) => call(*func, args, s),
        }
    }

    /// The same expression with each `$body.name…` path reading slot `i` of a view projected on
    /// `members` (sorted, as [`body_members`](Self::body_members) collects them) where
    /// `members[i]` is `name`: the routing plan's form, worked out once per routing snapshot.
    pub(crate) fn with_member_slots(&self, members: &[String]) -> Expr {
        let boxed = |e: &Expr| Box::new(e.with_member_slots(members));
        match self {
            Expr::Path(Root::Body, steps) => {
                let slot = match steps.first() {
                    Some(Step::Field(name)) => super::scan::find(members, name),
                    _ => None,
                };
                match slot {
                    Some(slot) => Expr::Path(Root::Member(slot), steps.clone()),
                    None => self.clone(),
                }
            }
            Expr::Path(..) | Expr::Const(_) | Expr::Undefined => self.clone(),
            Expr::Not(e) => Expr::Not(boxed(e)),
            Expr::Neg(e) => Expr::Neg(boxed(e)),
            Expr::Binary(op, a, b) => Expr::Binary(*op, boxed(a), boxed(b)),
            Expr::Call(func, args) => Expr::Call(
                *func,
                args.iter().map(|a| a.with_member_slots(members)).collect(),
            ),
        }
    }

    /// Adds the top-level body members the expression reads (`a` of `$body.a.b`) to `out`.
    pub(crate) fn body_members(&self, out: &mut Vec<String>) {
        match self {
            Expr::Path(Root::Body | Root::Member(_), steps) => {
                if let Some(Step::Field(name)) = steps.first() {
                    out.push(name.clone());
                }
            }
            Expr::Path(..) | Expr::Const(_) | Expr::Undefined => {}
            Expr::Not(e) | Expr::Neg(e) => e.body_members(out),
            Expr::Binary(_, a, b) => {
                a.body_members(out);
                b.body_members(out);
            }
            Expr::Call(_, args) => args.iter().for_each(|a| a.body_members(out)),
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
fn binary(op: BinOp, a: &V<'_>, b: &V<'_>) -> Option<Value> {
    let (ka, kb) = (a.kind(), b.kind());
    let cmp = |want: fn(Ordering) -> bool| compare(&ka, &kb).map(|o| Value::Bool(want(o)));
    match op {
        BinOp::Eq => equal(&ka, &kb).map(Value::Bool),
        BinOp::NotEq => equal(&ka, &kb).map(|e| Value::Bool(!e)),
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
        Root::App(app) => {
            let v = s.message.app_property_named(&app.name, app.reserved)?;
            // Application properties are strings; a path into one is undefined.
            steps.is_empty().then_some(V::Str(v))
        }
        Root::System(system) => {
            if !steps.is_empty() {
                return None;
            }
            match s.message.system_text_of(system.property, &system.name) {
                Some(Cow::Borrowed(v)) => Some(V::Str(v)),
                Some(Cow::Owned(v)) => Some(V::Own(Value::String(v))),
                None => {
                    let app = &system.fallback;
                    s.message
                        .app_property_named(&app.name, app.reserved)
                        .map(V::Str)
                }
            }
        }
        // A query on the whole body (`$body`, `$body[0]`) is undefined, as IoT Hub documents:
        // only properties in the body can be read.
        Root::Body => match steps.split_first() {
            Some((Step::Field(name), rest)) => member(s.message.member(name)?, rest),
            _ => None,
        },
        Root::Member(slot) => match steps.split_first() {
            Some((Step::Field(name), rest)) => member(s.message.member_at(*slot, name)?, rest),
            _ => None,
        },
        Root::Twin => match steps.first() {
            Some(Step::Field(_)) => walk(s.twin?, steps).map(V::Ref),
            _ => None,
        },
    }
}

/// The value at `rest` in a top-level body member.
fn member<'s>(found: Member<'s, '_>, rest: &[Step]) -> Val<'s> {
    match found {
        Member::Value(v) => walk(v, rest).map(V::Ref),
        Member::Field(field) => match field {
            Field::Json(v) => walk(v, rest).map(V::Ref),
            // A path into a scalar is undefined.
            _ if !rest.is_empty() => None,
            Field::Str(text) => Some(V::Str(text)),
            Field::Number(n) => Some(V::Own(Value::Number(n.clone()))),
            Field::Bool(b) => Some(V::Own(Value::Bool(*b))),
            Field::Null => Some(V::Own(Value::Null)),
        },
    }
}

fn integer(v: &V<'_>) -> Option<i64> {
    let x = v.as_f64()?;
    (x.fract() == 0.0).then_some(x as i64)
}

/// Whether `LOWER` (`lower`) or `UPPER` would give `text` back unchanged, known without a copy:
/// ASCII text with no letter of the other case. (Beyond ASCII a character that is not upper
/// case may still change, so such text is never known to be unchanged.)
pub(crate) fn already_in_case(text: &str, lower: bool) -> bool {
    text.is_ascii()
        && !text.bytes().any(|b| {
            if lower {
                b.is_ascii_uppercase()
            } else {
                b.is_ascii_lowercase()
            }
        })
}

/// A function's value.
fn call<'s>(func: Func, args: &'s [Expr], s: &Scope<'s, '_>) -> Val<'s> {
    if let Func::Lower | Func::Upper = func {
        // Text already in the wanted case (the usual lowered property) is its own result: no copy.
        let v = args.first()?.eval(s)?;
        let lower = func == Func::Lower;
        // Not a string: undefined.
        let text = v.as_str()?;
        if already_in_case(text, lower) {
            return Some(v);
        }
        let changed = if lower {
            text.to_lowercase()
        } else {
            text.to_uppercase()
        };
        return Some(V::Own(Value::String(changed)));
    }
    owned(computed(func, args, s))
}

/// A function's value, computed. Arguments are evaluated when the function needs them
/// (evaluation has no side effects, so this only saves work), and none is collected into a
/// list.
fn computed<'s>(func: Func, args: &'s [Expr], s: &Scope<'s, '_>) -> Option<Value> {
    let arg = |i: usize| args.get(i).and_then(|a| a.eval(s));
    let is = |test: fn(&Value) -> bool| Some(Value::Bool(arg(0).is_some_and(|v| v.is(test))));
    let math = |f: fn(f64) -> f64| num(f(arg(0)?.as_f64()?));
    // The text of a string argument, else undefined.
    macro_rules! text {
        ($v:expr) => {
            match $v {
                Some(v) => match v.as_str() {
                    Some(_) => v,
                    None => return None,
                },
                None => return None,
            }
        };
    }
    fn str_of<'v>(v: &'v V<'_>) -> &'v str {
        v.as_str().unwrap_or_default()
    }
    match func {
        Func::IsDefined => Some(Value::Bool(arg(0).is_some())),
        Func::IsString => is(Value::is_string),
        Func::IsNumber => is(Value::is_number),
        Func::IsBool => is(Value::is_boolean),
        Func::IsNull => is(Value::is_null),
        Func::IsObject => is(Value::is_object),
        Func::IsArray => is(Value::is_array),
        Func::IsPrimitive => is(|v| !v.is_object() && !v.is_array()),
        Func::AsNumber => {
            let first = arg(0)?;
            match first.kind() {
                Kind::Json(v @ Value::Number(_)) => Some(v.clone()),
                Kind::Str(text) => num(text.trim().parse::<f64>().ok()?),
                Kind::Json(_) => None,
            }
        }
        Func::Length => Some(Value::from(str_of(&text!(arg(0))).chars().count())),
        // Answered by `call`.
        Func::Lower | Func::Upper => None,
        Func::Concat => {
            let mut out = String::new();
            for a in args {
                out.push_str(str_of(&text!(a.eval(s))));
            }
            Some(Value::from(out))
        }
        Func::Contains => {
            let (a, b) = (text!(arg(0)), text!(arg(1)));
            Some(Value::Bool(str_of(&a).contains(str_of(&b))))
        }
        Func::StartsWith => {
            let (a, b) = (text!(arg(0)), text!(arg(1)));
            Some(Value::Bool(str_of(&a).starts_with(str_of(&b))))
        }
        Func::EndsWith => {
            let (a, b) = (text!(arg(0)), text!(arg(1)));
            Some(Value::Bool(str_of(&a).ends_with(str_of(&b))))
        }
        Func::IndexOf => {
            let (a, b) = (text!(arg(0)), text!(arg(1)));
            let (text, fragment) = (str_of(&a), str_of(&b));
            // Positions in characters, like LENGTH and SUBSTRING.
            let index = text
                .find(fragment)
                .map_or(-1, |byte| text[..byte].chars().count() as i64);
            Some(Value::from(index))
        }
        Func::Substring => {
            let a = text!(arg(0));
            let start = usize::try_from(integer(&arg(1)?)?.max(0)).ok()?;
            let length = match args.get(2) {
                Some(e) => usize::try_from(integer(&e.eval(s)?)?.max(0)).ok()?,
                None => usize::MAX,
            };
            Some(Value::from(
                str_of(&a)
                    .chars()
                    .skip(start)
                    .take(length)
                    .collect::<String>(),
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
        Func::Power => num(arg(0)?.as_f64()?.powf(arg(1)?.as_f64()?)),
    }
}
