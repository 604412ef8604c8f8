//! From `sqlparser` expressions to the query's conditions and paths: what the device query
//! language allows of SQL's expression grammar, with errors that say what was expected where.

use sqlparser::ast::{
    BinaryOperator, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, InTarget,
    ObjectNamePart, UnaryOperator, Value,
};
use sqlparser::tokenizer::Location;

use super::ast::{CmpOp, Cond, Path, Root};
use super::geo::GeoArea;
use super::parse::{Res, err_at};
use crate::error::{QueryError, QueryErrorKind as Kind};
use crate::limits::{check_key, shorten};
use crate::value::{F64Key, ScalarKey};

/// The position of an expression's first token, found without recursion.
pub(super) fn position(mut e: &Expr, fallback: Location) -> Location {
    loop {
        match e {
            Expr::Identifier(i) => return i.span.start,
            Expr::CompoundIdentifier(ids) => return ids.first().map_or(fallback, |i| i.span.start),
            Expr::Value(v) => return v.span.start,
            Expr::Function(f) => {
                return match f.name.0.first() {
                    Some(ObjectNamePart::Identifier(i)) => i.span.start,
                    _ => fallback,
                };
            }
            Expr::BinaryOp { left, .. } => e = left,
            Expr::Nested(inner) => e = inner,
            Expr::UnaryOp { expr, .. } => e = expr,
            Expr::In { expr, .. } => e = expr,
            Expr::IsNull(inner) | Expr::IsNotNull(inner) => e = inner,
            _ => return fallback,
        }
    }
}

/// Collects the operands of a chain of one boolean operator (`a AND b AND c`, parsed as a
/// left-deep tree) without recursion.
fn flatten<'e>(e: &'e Expr, wanted: &BinaryOperator) -> Vec<&'e Expr> {
    let mut operands = Vec::new();
    let mut current = e;
    loop {
        match current {
            Expr::BinaryOp { left, op, right } if op == wanted => {
                operands.push(&**right);
                current = left;
            }
            Expr::Nested(inner) if matches!(&**inner, Expr::BinaryOp { op, .. } if op == wanted) => {
                current = inner;
            }
            _ => {
                operands.push(current);
                break;
            }
        }
    }
    operands.reverse();
    operands
}

/// Compiles a `WHERE` expression. Recursion happens only through parentheses, `NOT` and the
/// operands of flattened chains, all bounded by the parser's recursion limit.
pub(super) fn condition(e: &Expr, fallback: Location) -> Res<Cond> {
    let at = position(e, fallback);
    match e {
        Expr::BinaryOp {
            op: op @ (BinaryOperator::And | BinaryOperator::Or),
            ..
        } => {
            let children = flatten(e, op)
                .into_iter()
                .map(|c| condition(c, at))
                .collect::<Res<Vec<_>>>()?;
            Ok(if *op == BinaryOperator::And {
                Cond::And(children)
            } else {
                Cond::Or(children)
            })
        }
        Expr::BinaryOp { left, op, right } => {
            let op = match op {
                BinaryOperator::Eq => CmpOp::Eq,
                BinaryOperator::NotEq => CmpOp::Ne,
                BinaryOperator::Lt => CmpOp::Lt,
                BinaryOperator::LtEq => CmpOp::Le,
                BinaryOperator::Gt => CmpOp::Gt,
                BinaryOperator::GtEq => CmpOp::Ge,
                other => {
                    return Err(err_at(
                        Kind::Unsupported,
                        at,
                        format!(
                            "operator {other} is not supported: expected = != < <= > >= AND OR"
                        ),
                    ));
                }
            };
            comparison(left, op, right, at)
        }
        Expr::UnaryOp {
            op: UnaryOperator::Not,
            expr,
        } => Ok(Cond::Not(Box::new(condition(expr, at)?))),
        Expr::Nested(inner) => condition(inner, at),
        Expr::Value(v) => match &v.value {
            Value::Boolean(b) => Ok(Cond::Const(*b)),
            _ => Err(err_at(
                Kind::TypeMismatch,
                at,
                "expected a condition, found a literal that is not true or false",
            )),
        },
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) => Err(err_at(
            Kind::TypeMismatch,
            at,
            "expected a condition, found a field path (compare it, or use IS_DEFINED)",
        )),
        Expr::In {
            expr,
            target,
            negated,
            ..
        } => match target {
            InTarget::List(list) => in_list(expr, list, *negated, at),
            _ => Err(err_at(
                Kind::Unsupported,
                at,
                "expected a list of literals after IN, such as IN ['a', 'b']",
            )),
        },
        Expr::IsNull(inner) | Expr::IsNotNull(inner) => {
            let path = as_path(inner, at)?.ok_or_else(|| {
                err_at(
                    Kind::TypeMismatch,
                    at,
                    "expected a field path before IS NULL",
                )
            })?;
            let op = if matches!(e, Expr::IsNull(_)) {
                CmpOp::Eq
            } else {
                CmpOp::Ne
            };
            Ok(Cond::Cmp {
                path,
                op,
                value: ScalarKey::Null,
            })
        }
        Expr::Function(f) => function(f, at),
        _ => Err(err_at(
            Kind::Unsupported,
            at,
            "expected a comparison, IN, STARTS_WITH, IS_DEFINED, AND, OR, NOT or parentheses",
        )),
    }
}

fn comparison(left: &Expr, op: CmpOp, right: &Expr, at: Location) -> Res<Cond> {
    let (path, op, literal, literal_at) = match (as_path(left, at)?, as_path(right, at)?) {
        (Some(_), Some(_)) => {
            return Err(err_at(
                Kind::Unsupported,
                at,
                "comparing two fields is not supported: expected a literal on one side",
            ));
        }
        (Some(path), None) => (path, op, right, position(right, at)),
        (None, Some(path)) => (path, op.flip(), left, at),
        (None, None) => {
            return Err(err_at(
                Kind::Unsupported,
                at,
                "expected a field path on one side of the comparison",
            ));
        }
    };
    let value = literal_of(literal, literal_at)?;
    if value == ScalarKey::Null && !matches!(op, CmpOp::Eq | CmpOp::Ne) {
        return Err(err_at(
            Kind::TypeMismatch,
            literal_at,
            "null can only be compared with = or !=",
        ));
    }
    Ok(Cond::Cmp { path, op, value })
}

fn in_list(expr: &Expr, list: &[Expr], negated: bool, at: Location) -> Res<Cond> {
    let path = as_path(expr, at)?
        .ok_or_else(|| err_at(Kind::TypeMismatch, at, "expected a field path before IN"))?;
    let values = list
        .iter()
        .map(|item| literal_of(item, position(item, at)))
        .collect::<Res<Vec<_>>>()?;
    let cond = Cond::In { path, values };
    Ok(if negated {
        Cond::Not(Box::new(cond))
    } else {
        cond
    })
}

fn function(f: &sqlparser::ast::Function, at: Location) -> Res<Cond> {
    let name = match f.name.0.as_slice() {
        [ObjectNamePart::Identifier(i)] => i.value.to_ascii_uppercase(),
        _ => {
            return Err(err_at(
                Kind::UnknownFunction,
                at,
                format!("unknown function: expected {FUNCTIONS}"),
            ));
        }
    };
    let args: Vec<&Expr> = match &f.args {
        FunctionArguments::List(list)
            if list.clauses.is_empty() && list.duplicate_treatment.is_none() =>
        {
            list.args
                .iter()
                .map(|a| match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e),
                    _ => Err(err_at(
                        Kind::Syntax,
                        at,
                        format!("expected a plain argument to {name}"),
                    )),
                })
                .collect::<Res<_>>()?
        }
        FunctionArguments::None | FunctionArguments::List(_) | FunctionArguments::Subquery(_) => {
            return Err(err_at(
                Kind::Syntax,
                at,
                format!("expected an argument list after {name}"),
            ));
        }
    };
    match (name.as_str(), args.as_slice()) {
        ("IS_DEFINED", [arg]) => {
            let path = as_path(arg, at)?.ok_or_else(|| {
                err_at(
                    Kind::TypeMismatch,
                    position(arg, at),
                    "IS_DEFINED expects a field path",
                )
            })?;
            Ok(Cond::IsDefined(path))
        }
        ("STARTS_WITH", [arg, prefix]) => {
            let path = as_path(arg, at)?.ok_or_else(|| {
                err_at(
                    Kind::TypeMismatch,
                    position(arg, at),
                    "STARTS_WITH expects a field path first",
                )
            })?;
            let prefix_at = position(prefix, at);
            match literal_of(prefix, prefix_at)? {
                ScalarKey::Str(s) => Ok(Cond::StartsWith {
                    path,
                    prefix: s.into(),
                }),
                _ => Err(err_at(
                    Kind::TypeMismatch,
                    prefix_at,
                    "STARTS_WITH expects a string literal as its second argument",
                )),
            }
        }
        ("WITHIN_BOX", [arg, south, west, north, east]) => {
            let path = geo_path(arg, at, "WITHIN_BOX")?;
            let edges = [
                number_arg(south, at, "WITHIN_BOX", "south")?,
                number_arg(west, at, "WITHIN_BOX", "west")?,
                number_arg(north, at, "WITHIN_BOX", "north")?,
                number_arg(east, at, "WITHIN_BOX", "east")?,
            ];
            let area = GeoArea::bbox(edges[0], edges[1], edges[2], edges[3])
                .map_err(|e| err_at(Kind::TypeMismatch, position(south, at), e.to_string()))?;
            Ok(within(path, area))
        }
        ("WITHIN_DISTANCE", [arg, lat, lon, metres]) => {
            let path = geo_path(arg, at, "WITHIN_DISTANCE")?;
            let area = GeoArea::circle(
                number_arg(lat, at, "WITHIN_DISTANCE", "lat")?,
                number_arg(lon, at, "WITHIN_DISTANCE", "lon")?,
                number_arg(metres, at, "WITHIN_DISTANCE", "metres")?,
            )
            .map_err(|e| err_at(Kind::TypeMismatch, position(lat, at), e.to_string()))?;
            Ok(within(path, area))
        }
        ("WITHIN_BOX", _) => Err(err_at(
            Kind::Syntax,
            at,
            "WITHIN_BOX takes five arguments: a field path, then south, west, north, east in degrees",
        )),
        ("WITHIN_DISTANCE", _) => Err(err_at(
            Kind::Syntax,
            at,
            "WITHIN_DISTANCE takes four arguments: a field path, then lat, lon in degrees and a distance in metres",
        )),
        ("IS_DEFINED", _) => Err(err_at(
            Kind::Syntax,
            at,
            "IS_DEFINED takes exactly one argument",
        )),
        ("STARTS_WITH", _) => Err(err_at(
            Kind::Syntax,
            at,
            "STARTS_WITH takes exactly two arguments",
        )),
        _ => Err(err_at(
            Kind::UnknownFunction,
            at,
            format!("unknown function {}: expected {FUNCTIONS}", shorten(&name)),
        )),
    }
}

/// The functions a condition may call, for error messages.
const FUNCTIONS: &str = "STARTS_WITH, IS_DEFINED, WITHIN_BOX or WITHIN_DISTANCE";

fn within(path: Path, area: GeoArea) -> Cond {
    Cond::Within {
        lat: path.member("lat"),
        lon: path.member("lon"),
        path,
        area,
    }
}

/// The position argument of a geo function: a path into `metadata` or `tags` (the object holding
/// `lat` and `lon`).
fn geo_path(arg: &Expr, at: Location, function: &str) -> Res<Path> {
    let arg_at = position(arg, at);
    match as_path(arg, at)? {
        Some(path) if matches!(path.root, Root::Metadata | Root::Tags) => Ok(path),
        _ => Err(err_at(
            Kind::TypeMismatch,
            arg_at,
            format!(
                "{function} expects a field path in metadata or tags first, naming an object with lat and lon"
            ),
        )),
    }
}

fn number_arg(e: &Expr, at: Location, function: &str, what: &str) -> Res<f64> {
    let arg_at = position(e, at);
    match literal_of(e, arg_at)? {
        ScalarKey::Num(n) => Ok(n.get()),
        _ => Err(err_at(
            Kind::TypeMismatch,
            arg_at,
            format!("{function} expects a number for {what}"),
        )),
    }
}

/// A path, `None` if `e` is not one, or an error if it looks like a path but is not a valid one.
pub(super) fn as_path(mut e: &Expr, fallback: Location) -> Res<Option<Path>> {
    while let Expr::Nested(inner) = e {
        e = inner;
    }
    let idents: &[Ident] = match e {
        Expr::Identifier(i) => std::slice::from_ref(i),
        Expr::CompoundIdentifier(ids) => ids,
        _ => return Ok(None),
    };
    let Some((first, rest)) = idents.split_first() else {
        return Ok(None);
    };
    let root = match first.value.to_ascii_lowercase().as_str() {
        "deviceid" => Root::DeviceId,
        "stateref" => Root::StateRef,
        "metadata" => Root::Metadata,
        "tags" => Root::Tags,
        _ => {
            return Err(QueryError::new(
                Kind::UnknownField,
                first.span.start.line.max(fallback.line.min(1)),
                first.span.start.column,
                format!(
                    "unknown field {}: expected a path starting with metadata, tags, deviceId or stateRef",
                    shorten(&first.value)
                ),
            ));
        }
    };
    if matches!(root, Root::DeviceId | Root::StateRef) && !rest.is_empty() {
        return Err(err_at(
            Kind::UnknownField,
            first.span.start,
            format!("{} is a string and has no fields", root.name()),
        ));
    }
    let mut segments = Vec::with_capacity(rest.len());
    for ident in rest {
        if let Err(reason) = check_key(&ident.value, usize::MAX) {
            return Err(err_at(
                Kind::Syntax,
                ident.span.start,
                format!(
                    "expected a key in the path, but {:?} {reason}",
                    shorten(&ident.value)
                ),
            ));
        }
        segments.push(ident.value.clone());
    }
    Ok(Some(Path::new(root, segments)))
}

/// A literal: string, number (with an optional sign), true, false, null.
fn literal_of(e: &Expr, at: Location) -> Res<ScalarKey> {
    let (negative, value) = match e {
        Expr::Value(v) => (false, &v.value),
        Expr::UnaryOp {
            op: op @ (UnaryOperator::Minus | UnaryOperator::Plus),
            expr,
        } => match &**expr {
            Expr::Value(v) if matches!(v.value, Value::Number(..)) => {
                (*op == UnaryOperator::Minus, &v.value)
            }
            _ => {
                return Err(err_at(
                    Kind::TypeMismatch,
                    at,
                    "a sign can only precede a number",
                ));
            }
        },
        Expr::Nested(inner) => return literal_of(inner, at),
        _ => {
            return Err(err_at(
                Kind::TypeMismatch,
                at,
                "expected a literal (string, number, true, false or null)",
            ));
        }
    };
    match value {
        Value::Number(n, _) => {
            let f: f64 = n
                .parse()
                .ok()
                .filter(|f: &f64| f.is_finite())
                .ok_or_else(|| {
                    err_at(
                        Kind::TypeMismatch,
                        at,
                        format!("number {} is out of range", shorten(n)),
                    )
                })?;
            Ok(ScalarKey::Num(F64Key::new(if negative { -f } else { f })))
        }
        Value::SingleQuotedString(s) => Ok(ScalarKey::Str(s.as_str().into())),
        Value::Boolean(b) => Ok(ScalarKey::Bool(*b)),
        Value::Null => Ok(ScalarKey::Null),
        _ => Err(err_at(
            Kind::TypeMismatch,
            at,
            "expected a literal (string in single quotes, number, true, false or null)",
        )),
    }
}
