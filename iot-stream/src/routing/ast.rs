//! The syntax tree of a routing condition, and its printing (the printed form parses back to
//! the same tree).

use std::fmt::{self, Display, Formatter, Write as _};

use serde_json::Value;

use super::message::{SystemName, is_reserved};

/// Binary operators, loosest first within each family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BinOp {
    Or,
    And,
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

impl BinOp {
    pub(crate) fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "OR",
            BinOp::And => "AND",
            BinOp::Eq => "=",
            BinOp::NotEq => "!=",
            BinOp::Lt => "<",
            BinOp::LtEq => "<=",
            BinOp::Gt => ">",
            BinOp::GtEq => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
        }
    }
}

/// What a path starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Root {
    /// An application property (a header the device set), by name.
    App(AppName),
    /// `$name`: a system property, else an application property of that name (as IoT Hub
    /// documents).
    System(SystemPath),
    /// `$body`: the message body, when it is JSON.
    Body,
    /// `$body` read through slot `i` of the routing plan's body members (the path's first step
    /// is that member's name): what the routing processor's plan makes of a `$body.name` path,
    /// so that evaluating it finds the member without comparing names. Never parsed.
    Member(usize),
    /// `$twin`: the device's (or module's) twin.
    Twin,
}

/// An application property's name, with what evaluation would otherwise work out for every
/// message: whether the name is one a system header reserves (then no header is that property).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AppName {
    pub(crate) name: String,
    pub(crate) reserved: bool,
}

impl From<String> for AppName {
    fn from(name: String) -> Self {
        let reserved = is_reserved(&name);
        AppName { name, reserved }
    }
}

/// `$name` as written (without the `$`), resolved to the system property it names once, when
/// the condition is parsed, rather than by comparing names for every message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SystemPath {
    pub(crate) name: String,
    pub(crate) property: SystemName,
    /// The application property `$name`, read when `name` is no system property.
    pub(crate) fallback: AppName,
}

impl From<String> for SystemPath {
    fn from(name: String) -> Self {
        SystemPath {
            property: SystemName::resolve(&name),
            fallback: AppName::from(format!("${name}")),
            name,
        }
    }
}

/// One step into a JSON value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Field(String),
    Index(usize),
}

/// The built-in functions, with IoT Hub's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Func {
    IsDefined,
    IsString,
    IsNumber,
    IsBool,
    IsNull,
    IsObject,
    IsArray,
    IsPrimitive,
    AsNumber,
    Length,
    Lower,
    Upper,
    Concat,
    Contains,
    StartsWith,
    EndsWith,
    Substring,
    IndexOf,
    Abs,
    Ceiling,
    Floor,
    Round,
    Sign,
    Square,
    Sqrt,
    Exp,
    Power,
}

/// Every function: name, fewest and most arguments.
pub(crate) const FUNCTIONS: &[(Func, &str, usize, usize)] = &[
    (Func::IsDefined, "IS_DEFINED", 1, 1),
    (Func::IsString, "IS_STRING", 1, 1),
    (Func::IsNumber, "IS_NUMBER", 1, 1),
    (Func::IsBool, "IS_BOOL", 1, 1),
    (Func::IsNull, "IS_NULL", 1, 1),
    (Func::IsObject, "IS_OBJECT", 1, 1),
    (Func::IsArray, "IS_ARRAY", 1, 1),
    (Func::IsPrimitive, "IS_PRIMITIVE", 1, 1),
    (Func::AsNumber, "AS_NUMBER", 1, 1),
    (Func::Length, "LENGTH", 1, 1),
    (Func::Lower, "LOWER", 1, 1),
    (Func::Upper, "UPPER", 1, 1),
    (Func::Concat, "CONCAT", 2, usize::MAX),
    (Func::Contains, "CONTAINS", 2, 2),
    (Func::StartsWith, "STARTS_WITH", 2, 2),
    (Func::EndsWith, "ENDS_WITH", 2, 2),
    (Func::Substring, "SUBSTRING", 2, 3),
    (Func::IndexOf, "INDEX_OF", 2, 2),
    (Func::Abs, "ABS", 1, 1),
    (Func::Ceiling, "CEILING", 1, 1),
    (Func::Floor, "FLOOR", 1, 1),
    (Func::Round, "ROUND", 1, 1),
    (Func::Sign, "SIGN", 1, 1),
    (Func::Square, "SQUARE", 1, 1),
    (Func::Sqrt, "SQRT", 1, 1),
    (Func::Exp, "EXP", 1, 1),
    (Func::Power, "POWER", 2, 2),
];

impl Func {
    pub(crate) fn name(self) -> &'static str {
        FUNCTIONS
            .iter()
            .find(|(f, ..)| *f == self)
            .map_or("?", |(_, name, ..)| name)
    }
}

/// A condition or a part of one.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Expr {
    /// A JSON constant: `null`, `true`, a number, a string, an array of constants.
    Const(Value),
    /// `undefined`.
    Undefined,
    Path(Root, Vec<Step>),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Call(Func, Vec<Expr>),
}

fn write_str(f: &mut Formatter<'_>, s: &str) -> fmt::Result {
    f.write_char('\'')?;
    for c in s.chars() {
        match c {
            '\'' => f.write_str("\\'")?,
            '\\' => f.write_str("\\\\")?,
            c if c.is_control() => write!(f, "\\u{:04x}", c as u32)?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('\'')
}

fn write_const(f: &mut Formatter<'_>, v: &Value) -> fmt::Result {
    match v {
        Value::Null => f.write_str("null"),
        Value::Bool(b) => write!(f, "{b}"),
        // Rust prints the shortest text that reads back as the same f64.
        Value::Number(n) => write!(f, "{}", n.as_f64().unwrap_or(0.0)),
        Value::String(s) => write_str(f, s),
        Value::Array(items) => {
            f.write_char('[')?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write_const(f, item)?;
            }
            f.write_char(']')
        }
        // The parser makes no object constants; print something that does not parse.
        Value::Object(_) => f.write_str("{}"),
    }
}

/// Prints fully parenthesised, so that the text parses back to the same tree.
impl Display for Expr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Const(v) => write_const(f, v),
            Expr::Undefined => f.write_str("undefined"),
            Expr::Path(root, steps) => {
                match root {
                    Root::App(app) => f.write_str(&app.name)?,
                    Root::System(system) => write!(f, "${}", system.name)?,
                    Root::Body | Root::Member(_) => f.write_str("$body")?,
                    Root::Twin => f.write_str("$twin")?,
                }
                for step in steps {
                    match step {
                        Step::Field(name) => write!(f, ".{name}")?,
                        Step::Index(i) => write!(f, "[{i}]")?,
                    }
                }
                Ok(())
            }
            Expr::Not(e) => write!(f, "NOT ({e})"),
            Expr::Neg(e) => write!(f, "-({e})"),
            Expr::Binary(op, a, b) => write!(f, "({a}) {} ({b})", op.symbol()),
            Expr::Call(func, args) => {
                write!(f, "{}(", func.name())?;
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{a}")?;
                }
                f.write_char(')')
            }
        }
    }
}
