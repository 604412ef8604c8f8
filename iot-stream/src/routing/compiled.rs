//! Conditions compiled for routing: the form the routing processor evaluates for every message.
//!
//! The syntax tree's evaluator ([`Expr::eval`]) gives every node a value — a JSON value or
//! *undefined* — and a condition routes when its value is `true`. Most of a condition's nodes,
//! though, only ever matter as a truth value (`AND`, `OR`, `NOT`, a comparison, `IS_DEFINED`),
//! and the operands of a comparison are nearly always a property and a constant. So a condition
//! is compiled, once, into
//!
//! * a [`Test`]: the parts in Boolean position, evaluated to `Option<bool>` (`None` is undefined
//!   *or* not a Boolean: either way the route does not match), with AND and OR short-circuiting
//!   and parts that can never be a Boolean (arithmetic, `LOWER`, a property, which is always a
//!   string, …) folded to undefined when compiled;
//! * [`Operand`]s: the values a comparison or a function reads, each read as an [`Item`] that
//!   borrows from the message, the body's projection, the twin or the condition (numbers are
//!   their `f64`, as every comparison and computation reads them), so that reading a property
//!   builds and drops no JSON value.
//!
//! Functions the routing processor rarely meets (`CONCAT`, `SUBSTRING`, `AS_NUMBER`, the math
//! functions, …) are left to the tree's evaluator, whose value is then read as an item. The
//! values are those of the tree's evaluator, operator for operator (a proptest in `tests.rs`
//! holds the two to each other over generated conditions and messages).

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::{Number, Value};

use super::ast::{AppName, BinOp, Expr, Func, Root, Step, SystemPath};
use super::eval::{Scope, V, already_in_case, equal_json, walk};
use super::message::Member;
use crate::rules::project::Field;

/// A condition, or a part of one, in Boolean position.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Test {
    /// Known when compiled (a constant, or a part that is never a Boolean: `None`).
    Known(Option<bool>),
    Not(Box<Test>),
    /// Kleene's AND and OR (undefined is "unknown"), left operand first.
    And(Box<Test>, Box<Test>),
    Or(Box<Test>, Box<Test>),
    /// `=`, `!=`, `<`, `<=`, `>`, `>=`.
    Compare(BinOp, Operand, Operand),
    /// The same with a constant (the common `level = 'critical'`), compared without reading it
    /// as an item. A constant written on the left is moved to the right with the operator
    /// turned around (`<` to `>`): the same truth, as a constant holds no object (deep equality
    /// of two objects may depend on which one is walked).
    Against(BinOp, Operand, Constant),
    /// A value that may be a Boolean (a body member, a twin path).
    Truth(Operand),
    /// `IS_DEFINED`.
    Defined(Operand),
    /// `IS_STRING`, `IS_NUMBER`, `IS_BOOL`, `IS_NULL`, `IS_OBJECT`, `IS_ARRAY`, `IS_PRIMITIVE`.
    Is(Func, Operand),
    /// `CONTAINS`, `STARTS_WITH`, `ENDS_WITH`.
    Text(Func, Operand, Operand),
}

/// A value a test reads.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Operand {
    Undefined,
    Const(Constant),
    /// An application property.
    App(AppName),
    /// `$name`.
    System(SystemPath),
    /// `$body.name…`: top-level member `name`, then the steps into it.
    Body(String, Vec<Step>),
    /// The same, read from slot `slot` of the routing plan's projection (`name` is that member).
    Member(usize, String, Vec<Step>),
    /// `$twin.…`.
    Twin(Vec<Step>),
    /// A Boolean-valued part (`a = b` compared with something, say): `true`, `false` or
    /// undefined.
    Test(Box<Test>),
    /// Unary minus.
    Neg(Box<Operand>),
    /// `+ - * / %`.
    Arith(BinOp, Box<Operand>, Box<Operand>),
    /// `LOWER` (`true`) or `UPPER` (`false`).
    Case(bool, Box<Operand>),
    /// Anything else, read through the tree's evaluator.
    Tree(Box<Expr>),
}

/// A constant of the condition, sorted by kind when compiled.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Constant {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
    /// An array (or a number without an `f64`, which serde_json without `arbitrary_precision`
    /// never makes).
    Json(Value),
}

/// A defined value while testing, borrowed wherever it can be.
#[derive(Debug)]
pub(crate) enum Item<'s> {
    /// A string in the message, the body, the twin or the condition.
    Str(&'s str),
    /// A computed string.
    Text(String),
    /// A number, as the `f64` every comparison and computation reads.
    Num(f64),
    Bool(bool),
    Null,
    /// An array or an object (or another JSON value no variant above holds).
    Json(&'s Value),
    /// A computed one.
    Owned(Value),
}

impl<'s> Item<'s> {
    /// The item of a JSON value.
    fn of(v: &'s Value) -> Self {
        match v {
            Value::String(s) => Item::Str(s),
            Value::Number(n) => n.as_f64().map_or(Item::Json(v), Item::Num),
            Value::Bool(b) => Item::Bool(*b),
            Value::Null => Item::Null,
            _ => Item::Json(v),
        }
    }

    /// The item of a computed JSON value.
    fn of_owned(v: Value) -> Self {
        match v {
            Value::String(s) => Item::Text(s),
            Value::Number(n) => match n.as_f64() {
                Some(x) => Item::Num(x),
                None => Item::Owned(Value::Number(n)),
            },
            Value::Bool(b) => Item::Bool(b),
            Value::Null => Item::Null,
            _ => Item::Owned(v),
        }
    }

    /// The item of a number read from the body.
    fn of_number(n: &Number) -> Self {
        n.as_f64()
            .map_or_else(|| Item::Owned(Value::Number(n.clone())), Item::Num)
    }

    /// The item of a value of the tree's evaluator.
    fn of_v(v: V<'s>) -> Self {
        match v {
            V::Ref(v) => Item::of(v),
            V::Str(s) => Item::Str(s),
            V::Own(v) => Item::of_owned(v),
        }
    }

    fn text(&self) -> Option<&str> {
        match self {
            Item::Str(s) => Some(s),
            Item::Text(s) => Some(s),
            _ => None,
        }
    }

    fn json(&self) -> Option<&Value> {
        match self {
            Item::Json(v) => Some(v),
            Item::Owned(v) => Some(v),
            _ => None,
        }
    }
}

/// The ordering of two items; `None` across types and between arrays or objects.
fn compare(a: &Item<'_>, b: &Item<'_>) -> Option<Ordering> {
    match (a, b) {
        (Item::Num(x), Item::Num(y)) => x.partial_cmp(y),
        (Item::Bool(x), Item::Bool(y)) => Some(x.cmp(y)),
        (Item::Null, Item::Null) => Some(Ordering::Equal),
        _ => Some(a.text()?.cmp(b.text()?)),
    }
}

/// `=`: deep between arrays and between objects.
fn equal(a: &Item<'_>, b: &Item<'_>) -> Option<bool> {
    if let (Some(x), Some(y)) = (a.json(), b.json()) {
        return equal_json(x, y);
    }
    compare(a, b).map(Ordering::is_eq)
}

/// The value at `rest` in a top-level body member.
fn member<'s>(found: Member<'s, '_>, rest: &[Step]) -> Option<Item<'s>> {
    match found {
        Member::Value(v) => walk(v, rest).map(Item::of),
        Member::Field(Field::Json(v)) => walk(v, rest).map(Item::of),
        // A path into a scalar is undefined.
        Member::Field(_) if !rest.is_empty() => None,
        Member::Field(Field::Str(text)) => Some(Item::Str(text)),
        Member::Field(Field::Number(n)) => Some(Item::of_number(n)),
        Member::Field(Field::Bool(b)) => Some(Item::Bool(*b)),
        Member::Field(Field::Null) => Some(Item::Null),
    }
}

/// The comparison `b op a` written as `a op' b`.
fn turned(op: BinOp) -> BinOp {
    match op {
        BinOp::Lt => BinOp::Gt,
        BinOp::LtEq => BinOp::GtEq,
        BinOp::Gt => BinOp::Lt,
        BinOp::GtEq => BinOp::LtEq,
        op => op,
    }
}

/// A finite result, else undefined (NaN and the infinities are no JSON numbers).
fn finite<'s>(x: f64) -> Option<Item<'s>> {
    x.is_finite().then_some(Item::Num(x))
}

impl Test {
    /// `e` compiled, as a condition (or a part of one in Boolean position).
    ///
    /// The recursive functions here keep small frames (each case is a function of its own):
    /// a condition may chain up to the parser's bound of `AND`s or `+`s, and a debug build
    /// gives every temporary of a function its own stack slot.
    pub(crate) fn compile(e: &Expr) -> Test {
        match e {
            Expr::Not(a) => Test::not(Test::compile(a)),
            Expr::Binary(BinOp::And, a, b) => Test::and(Test::compile(a), Test::compile(b)),
            Expr::Binary(BinOp::Or, a, b) => Test::or(Test::compile(a), Test::compile(b)),
            _ => Test::leaf(e),
        }
    }

    fn not(a: Test) -> Test {
        match a {
            Test::Known(b) => Test::Known(b.map(|b| !b)),
            a => Test::Not(Box::new(a)),
        }
    }

    fn and(a: Test, b: Test) -> Test {
        match (a, b) {
            (Test::Known(Some(false)), _) | (_, Test::Known(Some(false))) => {
                Test::Known(Some(false))
            }
            // `true AND b` is `b` (as a truth value), and `a AND true` is `a`.
            (Test::Known(Some(true)), b) => b,
            (a, Test::Known(Some(true))) => a,
            (Test::Known(None), Test::Known(None)) => Test::Known(None),
            (a, b) => Test::And(Box::new(a), Box::new(b)),
        }
    }

    fn or(a: Test, b: Test) -> Test {
        match (a, b) {
            (Test::Known(Some(true)), _) | (_, Test::Known(Some(true))) => Test::Known(Some(true)),
            (Test::Known(Some(false)), b) => b,
            (a, Test::Known(Some(false))) => a,
            (Test::Known(None), Test::Known(None)) => Test::Known(None),
            (a, b) => Test::Or(Box::new(a), Box::new(b)),
        }
    }

    /// Anything but `NOT`, `AND` and `OR`.
    fn leaf(e: &Expr) -> Test {
        match e {
            Expr::Const(v) => Test::Known(v.as_bool()),
            // Properties are strings, `$body` itself is undefined: never a Boolean.
            Expr::Path(Root::App(_) | Root::System(_), _) => Test::Known(None),
            Expr::Path(..) => match Operand::compile(e) {
                Operand::Undefined => Test::Known(None),
                operand => Test::Truth(operand),
            },
            Expr::Binary(
                op @ (BinOp::Eq | BinOp::NotEq | BinOp::Lt | BinOp::LtEq | BinOp::Gt | BinOp::GtEq),
                a,
                b,
            ) => Test::comparison(*op, Operand::compile(a), Operand::compile(b)),
            Expr::Call(func, args) => {
                let arg = |i: usize| args.get(i).map_or(Operand::Undefined, Operand::compile);
                match func {
                    Func::IsDefined => Test::Defined(arg(0)),
                    Func::IsString
                    | Func::IsNumber
                    | Func::IsBool
                    | Func::IsNull
                    | Func::IsObject
                    | Func::IsArray
                    | Func::IsPrimitive => Test::Is(*func, arg(0)),
                    Func::Contains | Func::StartsWith | Func::EndsWith => {
                        Test::Text(*func, arg(0), arg(1))
                    }
                    // Numbers and strings: never a Boolean.
                    _ => Test::Known(None),
                }
            }
            // `undefined`; arithmetic and unary minus (numbers or undefined); NOT, AND and OR
            // are not leaves.
            _ => Test::Known(None),
        }
    }

    fn comparison(op: BinOp, a: Operand, b: Operand) -> Test {
        match (a, b) {
            (a, Operand::Const(c)) => Test::Against(op, a, c),
            (Operand::Const(c), b) => Test::Against(turned(op), b, c),
            (a, b) => Test::Compare(op, a, b),
        }
    }

    /// The condition's truth: `Some(true)` routes; `None` is undefined or not a Boolean.
    pub(crate) fn eval<'s>(&'s self, s: &Scope<'s, '_>) -> Option<bool> {
        match self {
            Test::Known(b) => *b,
            Test::Not(a) => a.eval(s).map(|b| !b),
            Test::And(a, b) => Test::eval_and(a, b, s),
            Test::Or(a, b) => Test::eval_or(a, b, s),
            _ => self.eval_leaf(s),
        }
    }

    fn eval_and<'s>(a: &'s Test, b: &'s Test, s: &Scope<'s, '_>) -> Option<bool> {
        match a.eval(s) {
            Some(false) => Some(false),
            a => match b.eval(s) {
                Some(false) => Some(false),
                Some(true) => a,
                None => None,
            },
        }
    }

    fn eval_or<'s>(a: &'s Test, b: &'s Test, s: &Scope<'s, '_>) -> Option<bool> {
        match a.eval(s) {
            Some(true) => Some(true),
            a => match b.eval(s) {
                Some(true) => Some(true),
                Some(false) => a,
                None => None,
            },
        }
    }

    /// A test other than `NOT`, `AND` and `OR`.
    fn eval_leaf<'s>(&'s self, s: &Scope<'s, '_>) -> Option<bool> {
        match self {
            Test::Known(_) | Test::Not(_) | Test::And(..) | Test::Or(..) => self.eval(s),
            Test::Compare(op, a, b) => {
                let a = a.item(s)?;
                let b = b.item(s)?;
                match op {
                    BinOp::Eq => equal(&a, &b),
                    BinOp::NotEq => equal(&a, &b).map(|e| !e),
                    BinOp::Lt => compare(&a, &b).map(Ordering::is_lt),
                    BinOp::LtEq => compare(&a, &b).map(Ordering::is_le),
                    BinOp::Gt => compare(&a, &b).map(Ordering::is_gt),
                    BinOp::GtEq => compare(&a, &b).map(Ordering::is_ge),
                    _ => None,
                }
            }
            Test::Against(op, a, c) => {
                let a = a.item(s)?;
                let order = match (&a, c) {
                    (_, Constant::Str(c)) => a.text()?.cmp(c.as_str()),
                    (Item::Num(x), Constant::Num(c)) => x.partial_cmp(c)?,
                    (Item::Bool(x), Constant::Bool(c)) => x.cmp(c),
                    (Item::Null, Constant::Null) => Ordering::Equal,
                    // An array: equal or not to an array (deeply), never ordered.
                    (_, Constant::Json(c)) => {
                        let equal = equal_json(a.json()?, c)?;
                        return match op {
                            BinOp::Eq => Some(equal),
                            BinOp::NotEq => Some(!equal),
                            _ => None,
                        };
                    }
                    _ => return None,
                };
                match op {
                    BinOp::Eq => Some(order.is_eq()),
                    BinOp::NotEq => Some(order.is_ne()),
                    BinOp::Lt => Some(order.is_lt()),
                    BinOp::LtEq => Some(order.is_le()),
                    BinOp::Gt => Some(order.is_gt()),
                    BinOp::GtEq => Some(order.is_ge()),
                    _ => None,
                }
            }
            Test::Truth(a) => match a.item(s)? {
                Item::Bool(b) => Some(b),
                _ => None,
            },
            Test::Defined(a) => Some(a.item(s).is_some()),
            Test::Is(func, a) => {
                let Some(a) = a.item(s) else {
                    return Some(false);
                };
                let json = a.json();
                Some(match func {
                    Func::IsString => a.text().is_some(),
                    Func::IsNumber => {
                        matches!(a, Item::Num(_)) || json.is_some_and(Value::is_number)
                    }
                    Func::IsBool => matches!(a, Item::Bool(_)),
                    Func::IsNull => matches!(a, Item::Null),
                    Func::IsObject => json.is_some_and(Value::is_object),
                    Func::IsArray => json.is_some_and(Value::is_array),
                    _ => json.is_none_or(|v| !v.is_object() && !v.is_array()),
                })
            }
            Test::Text(func, a, b) => {
                let a = a.item(s)?;
                let text = a.text()?;
                let b = b.item(s)?;
                let fragment = b.text()?;
                Some(match func {
                    Func::Contains => text.contains(fragment),
                    Func::StartsWith => text.starts_with(fragment),
                    _ => text.ends_with(fragment),
                })
            }
        }
    }
}

impl Operand {
    /// `e` compiled, as a value.
    fn compile(e: &Expr) -> Operand {
        match e {
            Expr::Neg(a) => Operand::Neg(Box::new(Operand::compile(a))),
            Expr::Binary(
                op @ (BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Mod),
                a,
                b,
            ) => Operand::Arith(
                *op,
                Box::new(Operand::compile(a)),
                Box::new(Operand::compile(b)),
            ),
            _ => Operand::leaf(e),
        }
    }

    /// Anything but arithmetic and unary minus.
    fn leaf(e: &Expr) -> Operand {
        match e {
            Expr::Const(v) => Operand::Const(match v {
                Value::String(s) => Constant::Str(s.clone()),
                Value::Number(n) => n
                    .as_f64()
                    .map_or_else(|| Constant::Json(v.clone()), Constant::Num),
                Value::Bool(b) => Constant::Bool(*b),
                Value::Null => Constant::Null,
                _ => Constant::Json(v.clone()),
            }),
            Expr::Undefined => Operand::Undefined,
            // Properties are strings: a path into one is undefined.
            Expr::Path(Root::App(app), steps) if steps.is_empty() => Operand::App(app.clone()),
            Expr::Path(Root::System(system), steps) if steps.is_empty() => {
                Operand::System(system.clone())
            }
            // A query on the whole body (`$body`, `$body[0]`) is undefined, as IoT Hub
            // documents: only properties in the body can be read.
            Expr::Path(Root::Body, steps) => match steps.split_first() {
                Some((Step::Field(name), rest)) => Operand::Body(name.clone(), rest.to_vec()),
                _ => Operand::Undefined,
            },
            Expr::Path(Root::Member(slot), steps) => match steps.split_first() {
                Some((Step::Field(name), rest)) => {
                    Operand::Member(*slot, name.clone(), rest.to_vec())
                }
                _ => Operand::Undefined,
            },
            Expr::Path(Root::Twin, steps) => match steps.first() {
                Some(Step::Field(_)) => Operand::Twin(steps.clone()),
                _ => Operand::Undefined,
            },
            Expr::Path(..) => Operand::Undefined,
            // Boolean-valued: the test's truth as a value.
            Expr::Not(_)
            | Expr::Binary(
                BinOp::And
                | BinOp::Or
                | BinOp::Eq
                | BinOp::NotEq
                | BinOp::Lt
                | BinOp::LtEq
                | BinOp::Gt
                | BinOp::GtEq,
                ..,
            )
            | Expr::Call(
                Func::IsDefined
                | Func::IsString
                | Func::IsNumber
                | Func::IsBool
                | Func::IsNull
                | Func::IsObject
                | Func::IsArray
                | Func::IsPrimitive
                | Func::Contains
                | Func::StartsWith
                | Func::EndsWith,
                _,
            ) => match Test::compile(e) {
                Test::Known(None) => Operand::Undefined,
                Test::Known(Some(b)) => Operand::Const(Constant::Bool(b)),
                test => Operand::Test(Box::new(test)),
            },
            Expr::Call(func @ (Func::Lower | Func::Upper), args) => Operand::Case(
                *func == Func::Lower,
                Box::new(args.first().map_or(Operand::Undefined, Operand::compile)),
            ),
            Expr::Call(..) => Operand::Tree(Box::new(e.clone())),
            // Arithmetic and unary minus are not leaves.
            Expr::Neg(_) | Expr::Binary(..) => Operand::compile(e),
        }
    }

    /// The value; `None` is undefined. (The cases that recurse are functions of their own, for
    /// small frames: see [`Test::compile`].)
    fn item<'s>(&'s self, s: &Scope<'s, '_>) -> Option<Item<'s>> {
        match self {
            Operand::Member(slot, name, rest) => member(s.message.member_at(*slot, name)?, rest),
            Operand::Const(c) => Some(match c {
                Constant::Str(text) => Item::Str(text),
                Constant::Num(x) => Item::Num(*x),
                Constant::Bool(b) => Item::Bool(*b),
                Constant::Null => Item::Null,
                Constant::Json(v) => Item::Json(v),
            }),
            Operand::App(app) => s
                .message
                .app_property_named(&app.name, app.reserved)
                .map(Item::Str),
            Operand::Test(test) => test.eval(s).map(Item::Bool),
            Operand::Neg(a) => Operand::negated(a, s),
            Operand::Arith(op, a, b) => Operand::arith(*op, a, b, s),
            Operand::Case(lower, a) => Operand::case(*lower, a, s),
            _ => self.item_other(s),
        }
    }

    fn negated<'s>(a: &'s Operand, s: &Scope<'s, '_>) -> Option<Item<'s>> {
        match a.item(s)? {
            Item::Num(x) => finite(-x),
            _ => None,
        }
    }

    fn arith<'s>(op: BinOp, a: &'s Operand, b: &'s Operand, s: &Scope<'s, '_>) -> Option<Item<'s>> {
        let Item::Num(x) = a.item(s)? else {
            return None;
        };
        let Item::Num(y) = b.item(s)? else {
            return None;
        };
        finite(match op {
            BinOp::Add => x + y,
            BinOp::Sub => x - y,
            BinOp::Mul => x * y,
            // x / 0 and x % 0 are not finite: undefined.
            BinOp::Div => x / y,
            BinOp::Mod => x % y,
            _ => return None,
        })
    }

    /// `LOWER` (`lower`) or `UPPER` of `a`.
    fn case<'s>(lower: bool, a: &'s Operand, s: &Scope<'s, '_>) -> Option<Item<'s>> {
        let a = a.item(s)?;
        // Not a string: undefined.
        let text = a.text()?;
        // Text already in the wanted case (the usual lowered property) is its own result: no copy.
        if already_in_case(text, lower) {
            return Some(a);
        }
        Some(Item::Text(if lower {
            text.to_lowercase()
        } else {
            text.to_uppercase()
        }))
    }

    /// The operands [`item`](Self::item) does not read itself.
    fn item_other<'s>(&'s self, s: &Scope<'s, '_>) -> Option<Item<'s>> {
        match self {
            Operand::System(system) => {
                match s.message.system_text_of(system.property, &system.name) {
                    Some(Cow::Borrowed(v)) => Some(Item::Str(v)),
                    Some(Cow::Owned(v)) => Some(Item::Text(v)),
                    None => {
                        let app = &system.fallback;
                        s.message
                            .app_property_named(&app.name, app.reserved)
                            .map(Item::Str)
                    }
                }
            }
            Operand::Body(name, rest) => member(s.message.member(name)?, rest),
            Operand::Twin(steps) => walk(s.twin?, steps).map(Item::of),
            Operand::Tree(e) => e.eval(s).map(Item::of_v),
            Operand::Undefined => None,
            Operand::Member(..)
            | Operand::Const(_)
            | Operand::App(_)
            | Operand::Test(_)
            | Operand::Neg(_)
            | Operand::Arith(..)
            | Operand::Case(..) => self.item(s),
        }
    }
}
