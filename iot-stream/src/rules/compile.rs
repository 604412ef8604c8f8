//! Compiling the rule language (a subset of Azure Stream Analytics SQL) with `sqlparser`.
//!
//! `TIMESTAMP BY expr` is not SQL any dialect of `sqlparser` knows, so it is cut out of the text
//! before parsing: the tokenizer finds `TIMESTAMP BY` at nesting depth 0, the clause (up to the
//! next `WHERE`, `GROUP`, `HAVING`, `ORDER` or the end) is parsed alone as an expression, and its
//! characters are replaced by spaces in the statement, so every position the parser reports is
//! still a position in the original text.

use std::time::Duration;

use sqlparser::ast::{
    self, BinaryOperator, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, SelectItem,
    SetExpr, Spanned, Statement, TableFactor, UnaryOperator,
};
use sqlparser::dialect::MsSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Location, Token, Tokenizer};

use super::expr::{BinOp, Expr};
use crate::error::{Error, Result};
use crate::window::{AggKind, WindowSpec};

/// A compiled rule.
#[derive(Clone, Debug)]
pub struct CompiledRule {
    pub(crate) input: String,
    pub(crate) output: String,
    pub(crate) timestamp_by: Option<Expr>,
    pub(crate) filter: Option<Expr>,
    pub(crate) shape: Shape,
}

impl CompiledRule {
    /// The topic the rule reads (`FROM`).
    pub fn input(&self) -> &str {
        &self.input
    }

    /// The topic the rule writes (`INTO`; `output` when absent).
    pub fn output(&self) -> &str {
        &self.output
    }

    /// The top-level payload fields the rule reads.
    pub(crate) fn fields(&self) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        for e in self.timestamp_by.iter().chain(self.filter.iter()) {
            e.fields(&mut out);
        }
        match &self.shape {
            Shape::Project { items } => {
                for (_, e) in items.iter().flatten() {
                    e.fields(&mut out);
                }
            }
            Shape::Aggregate {
                keys, aggregates, ..
            } => {
                for e in keys.iter().chain(aggregates.iter().map(|a| &a.1)) {
                    e.fields(&mut out);
                }
            }
        }
        out
    }

    /// The window of an aggregating rule.
    pub fn window(&self) -> Option<WindowSpec> {
        match &self.shape {
            Shape::Aggregate { window, .. } => Some(*window),
            Shape::Project { .. } => None,
        }
    }
}

/// What a rule computes.
#[derive(Clone, Debug)]
pub(crate) enum Shape {
    /// Record by record: `None` items means `SELECT *`.
    Project { items: Option<Vec<(String, Expr)>> },
    /// GROUP BY keys and one window.
    Aggregate {
        keys: Vec<Expr>,
        window: WindowSpec,
        aggregates: Vec<(AggKind, Expr)>,
        items: Vec<(String, Expr)>,
        having: Option<Expr>,
    },
}

fn err_at(loc: Location, reason: impl Into<String>) -> Error {
    Error::Rule {
        reason: reason.into(),
        line: loc.line,
        column: loc.column,
    }
}

fn unsupported(node: &impl Spanned, what: &str) -> Error {
    err_at(
        node.span().start,
        format!("{what} is not supported by the rule language"),
    )
}

/// Finds "Line: L, Column: C" in a sqlparser message.
fn parser_error(e: sqlparser::parser::ParserError, base: Location) -> Error {
    let msg = e.to_string();
    let find = |label: &str| -> Option<u64> {
        let at = msg.find(label)? + label.len();
        msg[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .ok()
    };
    let (line, column) = match (find("Line: "), find("Column: ")) {
        (Some(l), Some(c)) if base.line <= 1 && l == 1 => {
            (base.line.max(1), c + base.column.saturating_sub(1))
        }
        (Some(l), Some(c)) => (l + base.line.saturating_sub(1), c),
        _ => (base.line, base.column),
    };
    Error::Rule {
        reason: msg,
        line,
        column,
    }
}

/// Byte offset of a 1-based (line, column) location in `text` (columns count characters).
fn offset_of(text: &str, loc: Location) -> usize {
    let mut line = 1;
    let mut col = 1;
    for (i, c) in text.char_indices() {
        if line == loc.line && col == loc.column {
            return i;
        }
        if c == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    text.len()
}

/// Cuts `TIMESTAMP BY expr` out of `sql`; returns the blanked text and the clause.
fn cut_timestamp_by(sql: &str) -> Result<(String, Option<(String, Location)>)> {
    let dialect = MsSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| Error::Rule {
            reason: e.message.clone(),
            line: e.location.line,
            column: e.location.column,
        })?;
    let significant: Vec<_> = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .collect();
    let is_word = |t: &Token, w: &str| matches!(t, Token::Word(word) if word.quote_style.is_none() && word.value.eq_ignore_ascii_case(w));
    let mut depth = 0i32;
    for (i, t) in significant.iter().enumerate() {
        match t.token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ => {}
        }
        if depth != 0 || !is_word(&t.token, "TIMESTAMP") {
            continue;
        }
        let Some(by) = significant.get(i + 1) else {
            continue;
        };
        if !is_word(&by.token, "BY") {
            continue;
        }
        let start = offset_of(sql, t.span.start);
        let expr_start_tok = significant
            .get(i + 2)
            .ok_or_else(|| err_at(by.span.end, "TIMESTAMP BY needs an expression"))?;
        let mut d = 0i32;
        let mut end = sql.len();
        for next in &significant[i + 2..] {
            match next.token {
                Token::LParen => d += 1,
                Token::RParen => d -= 1,
                _ => {}
            }
            let stops = [
                "WHERE",
                "GROUP",
                "HAVING",
                "ORDER",
                "UNION",
                "PARTITION",
                "OVER",
            ]
            .iter()
            .any(|w| is_word(&next.token, w));
            if d == 0 && stops || matches!(next.token, Token::SemiColon | Token::EOF) {
                end = offset_of(sql, next.span.start);
                break;
            }
        }
        let expr_start = offset_of(sql, expr_start_tok.span.start);
        let clause = sql[expr_start..end].to_owned();
        let blanked: String = sql
            .char_indices()
            .map(|(i, c)| {
                if (start..end).contains(&i) && c != '\n' {
                    ' '
                } else {
                    c
                }
            })
            .collect();
        return Ok((blanked, Some((clause, expr_start_tok.span.start))));
    }
    Ok((sql.to_owned(), None))
}

fn ident_is(i: &ast::Ident, name: &str) -> bool {
    i.value.eq_ignore_ascii_case(name)
}

fn name_parts(name: &ast::ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|p| match p {
            ast::ObjectNamePart::Identifier(i) => i.value.clone(),
            ast::ObjectNamePart::Function(f) => f.name.value.clone(),
        })
        .collect()
}

fn function_args(f: &ast::Function) -> Result<Vec<&FunctionArgExpr>> {
    match &f.args {
        FunctionArguments::None => Ok(Vec::new()),
        FunctionArguments::List(list) => {
            if list.duplicate_treatment.is_some() || !list.clauses.is_empty() {
                return Err(unsupported(f, "DISTINCT or clauses in a function call"));
            }
            list.args
                .iter()
                .map(|a| match a {
                    FunctionArg::Unnamed(e) => Ok(e),
                    other => Err(unsupported(other, "a named argument")),
                })
                .collect()
        }
        FunctionArguments::Subquery(q) => Err(unsupported(q.as_ref(), "a subquery")),
    }
}

fn aggregate_kind(name: &str) -> Option<AggKind> {
    Some(match name.to_ascii_uppercase().as_str() {
        "COUNT" => AggKind::Count,
        "SUM" => AggKind::Sum,
        "AVG" => AggKind::Avg,
        "MIN" => AggKind::Min,
        "MAX" => AggKind::Max,
        "LAST" | "TOPONE" => AggKind::Last,
        _ => return None,
    })
}

fn literal(v: &ast::ValueWithSpan) -> Result<Expr> {
    Ok(Expr::Literal(match &v.value {
        ast::Value::Number(n, _) => {
            let x: f64 = n
                .parse()
                .map_err(|_| err_at(v.span.start, format!("bad number {n}")))?;
            if let Ok(i) = n.parse::<i64>() {
                serde_json::Value::from(i)
            } else {
                serde_json::Number::from_f64(x)
                    .map(serde_json::Value::Number)
                    .ok_or_else(|| err_at(v.span.start, "number out of range"))?
            }
        }
        ast::Value::SingleQuotedString(s) | ast::Value::DoubleQuotedString(s) => {
            serde_json::Value::from(s.as_str())
        }
        ast::Value::Boolean(b) => serde_json::Value::Bool(*b),
        ast::Value::Null => serde_json::Value::Null,
        _ => return Err(unsupported(v, "this literal")),
    }))
}

fn bin_op(op: &BinaryOperator) -> Option<BinOp> {
    Some(match op {
        BinaryOperator::Plus => BinOp::Add,
        BinaryOperator::Minus => BinOp::Sub,
        BinaryOperator::Multiply => BinOp::Mul,
        BinaryOperator::Divide => BinOp::Div,
        BinaryOperator::Modulo => BinOp::Mod,
        BinaryOperator::Eq => BinOp::Eq,
        BinaryOperator::NotEq => BinOp::NotEq,
        BinaryOperator::Lt => BinOp::Lt,
        BinaryOperator::LtEq => BinOp::LtEq,
        BinaryOperator::Gt => BinOp::Gt,
        BinaryOperator::GtEq => BinOp::GtEq,
        BinaryOperator::And => BinOp::And,
        BinaryOperator::Or => BinOp::Or,
        _ => return None,
    })
}

/// Compiles an expression over one record (no aggregates).
fn record_expr(e: &ast::Expr) -> Result<Expr> {
    use ast::Expr as E;
    Ok(match e {
        E::Identifier(i) if ident_is(i, "deviceId") => Expr::DeviceId,
        E::Identifier(i) if ident_is(i, "EventEnqueuedUtcTime") => Expr::EnqueuedTime,
        E::Identifier(i) => Expr::Field(vec![i.value.clone()]),
        E::CompoundIdentifier(parts) => {
            Expr::Field(parts.iter().map(|p| p.value.clone()).collect())
        }
        E::Value(v) => literal(v)?,
        E::Nested(inner) => record_expr(inner)?,
        E::IsNull(inner) => Expr::IsNull(Box::new(record_expr(inner)?), false),
        E::IsNotNull(inner) => Expr::IsNull(Box::new(record_expr(inner)?), true),
        E::UnaryOp { op, expr } => match op {
            UnaryOperator::Not => Expr::Not(Box::new(record_expr(expr)?)),
            UnaryOperator::Minus => Expr::Neg(Box::new(record_expr(expr)?)),
            UnaryOperator::Plus => record_expr(expr)?,
            _ => return Err(unsupported(e, "this operator")),
        },
        E::BinaryOp { left, op, right } => {
            let op = bin_op(op).ok_or_else(|| unsupported(e, "this operator"))?;
            Expr::Binary(
                op,
                Box::new(record_expr(left)?),
                Box::new(record_expr(right)?),
            )
        }
        E::Function(f) => {
            let parts = name_parts(&f.name);
            let args = function_args(f)?;
            match parts
                .iter()
                .map(|p| p.to_ascii_lowercase())
                .collect::<Vec<_>>()
                .as_slice()
            {
                [s, t] if s == "system" && t == "timestamp" && args.is_empty() => {
                    Expr::SystemTimestamp
                }
                [h] if h == "header" => match args.as_slice() {
                    [FunctionArgExpr::Expr(ast::Expr::Value(v))] => match &v.value {
                        ast::Value::SingleQuotedString(s) => Expr::Header(s.clone()),
                        _ => return Err(unsupported(f, "header() with a non-string argument")),
                    },
                    _ => return Err(err_at(f.span().start, "header() takes one string")),
                },
                [a] if aggregate_kind(a).is_some() => {
                    return Err(err_at(
                        f.span().start,
                        "aggregates need GROUP BY with a window (and belong in SELECT or HAVING)",
                    ));
                }
                _ => return Err(unsupported(f, &format!("function {}", parts.join(".")))),
            }
        }
        other => return Err(unsupported(other, "this expression")),
    })
}

/// Compiles an expression of an aggregating rule's output.
struct OutputScope<'a> {
    keys: &'a [Expr],
    aggregates: Vec<(AggKind, Expr)>,
    aliases: Vec<(String, Expr)>,
}

impl OutputScope<'_> {
    fn expr(&mut self, e: &ast::Expr) -> Result<Expr> {
        use ast::Expr as E;
        if let E::Identifier(i) = e
            && let Some((_, aliased)) = self
                .aliases
                .iter()
                .find(|(a, _)| a.eq_ignore_ascii_case(&i.value))
        {
            return Ok(aliased.clone());
        }
        if let Ok(plain) = record_expr(e)
            && !matches!(plain, Expr::SystemTimestamp | Expr::Literal(_))
            && let Some(i) = self.keys.iter().position(|k| *k == plain)
        {
            return Ok(Expr::GroupKey(i));
        }
        Ok(match e {
            E::Value(v) => literal(v)?,
            E::Nested(inner) => self.expr(inner)?,
            E::IsNull(inner) => Expr::IsNull(Box::new(self.expr(inner)?), false),
            E::IsNotNull(inner) => Expr::IsNull(Box::new(self.expr(inner)?), true),
            E::UnaryOp { op, expr } => match op {
                UnaryOperator::Not => Expr::Not(Box::new(self.expr(expr)?)),
                UnaryOperator::Minus => Expr::Neg(Box::new(self.expr(expr)?)),
                UnaryOperator::Plus => self.expr(expr)?,
                _ => return Err(unsupported(e, "this operator")),
            },
            E::BinaryOp { left, op, right } => {
                let op = bin_op(op).ok_or_else(|| unsupported(e, "this operator"))?;
                Expr::Binary(op, Box::new(self.expr(left)?), Box::new(self.expr(right)?))
            }
            E::Function(f) => {
                let parts = name_parts(&f.name);
                let args = function_args(f)?;
                if let [name] = parts.as_slice()
                    && let Some(kind) = aggregate_kind(name)
                {
                    let input = match args.as_slice() {
                        [FunctionArgExpr::Wildcard] if kind == AggKind::Count => {
                            Expr::Literal(serde_json::Value::Bool(true))
                        }
                        [FunctionArgExpr::Expr(arg)] => record_expr(arg)?,
                        _ => {
                            return Err(err_at(
                                f.span().start,
                                format!("{name} takes one argument"),
                            ));
                        }
                    };
                    let at = match self
                        .aggregates
                        .iter()
                        .position(|a| *a == (kind, input.clone()))
                    {
                        Some(at) => at,
                        None => {
                            self.aggregates.push((kind, input));
                            self.aggregates.len() - 1
                        }
                    };
                    return Ok(Expr::Aggregate(at));
                }
                match record_expr(e)? {
                    Expr::SystemTimestamp => Expr::SystemTimestamp,
                    _ => {
                        return Err(err_at(
                            e.span().start,
                            "only GROUP BY keys, aggregates and System.Timestamp() may appear here",
                        ));
                    }
                }
            }
            other => {
                return Err(err_at(
                    other.span().start,
                    format!("{other} must be a GROUP BY key or inside an aggregate"),
                ));
            }
        })
    }
}

fn window_spec(f: &ast::Function) -> Result<Option<WindowSpec>> {
    let parts = name_parts(&f.name);
    let [name] = parts.as_slice() else {
        return Ok(None);
    };
    let kind = name.to_ascii_lowercase();
    if ![
        "tumblingwindow",
        "hoppingwindow",
        "slidingwindow",
        "sessionwindow",
    ]
    .contains(&kind.as_str())
    {
        return Ok(None);
    }
    let args = function_args(f)?;
    let bad = |why: &str| err_at(f.span().start, format!("{name}: {why}"));
    let Some(FunctionArgExpr::Expr(ast::Expr::Identifier(unit))) = args.first() else {
        return Err(bad(
            "the first argument is a time unit (second, minute, hour, day, millisecond)",
        ));
    };
    let unit = match unit.value.to_ascii_lowercase().as_str() {
        "microsecond" | "mcs" | "us" => Duration::from_micros(1),
        "millisecond" | "ms" => Duration::from_millis(1),
        "second" | "ss" | "s" => Duration::from_secs(1),
        "minute" | "mi" | "n" => Duration::from_secs(60),
        "hour" | "hh" => Duration::from_secs(3600),
        "day" | "dd" | "d" => Duration::from_secs(86_400),
        other => return Err(bad(&format!("unknown time unit {other}"))),
    };
    let sizes: Vec<u32> = args[1..]
        .iter()
        .map(|a| match a {
            FunctionArgExpr::Expr(ast::Expr::Value(v)) => match &v.value {
                ast::Value::Number(n, _) => n
                    .parse::<u32>()
                    .map_err(|_| bad("sizes are positive integers")),
                _ => Err(bad("sizes are positive integers")),
            },
            _ => Err(bad("sizes are positive integers")),
        })
        .collect::<Result<_>>()?;
    let spec = match (kind.as_str(), sizes.as_slice()) {
        ("tumblingwindow", [size]) => WindowSpec::Tumbling { size: unit * *size },
        ("hoppingwindow", [size, hop]) => WindowSpec::Hopping {
            size: unit * *size,
            hop: unit * *hop,
        },
        ("slidingwindow", [size]) => WindowSpec::Sliding { size: unit * *size },
        ("sessionwindow", [timeout, max]) => WindowSpec::Session {
            timeout: unit * *timeout,
            max_duration: unit * *max,
        },
        _ => return Err(bad("wrong number of arguments")),
    };
    spec.validate().map_err(|e| bad(&e.to_string()))?;
    Ok(Some(spec))
}

fn item_name(e: &ast::Expr) -> String {
    match e {
        ast::Expr::Identifier(i) => i.value.clone(),
        ast::Expr::CompoundIdentifier(p) => p.last().map(|i| i.value.clone()).unwrap_or_default(),
        other => other.to_string(),
    }
}

/// Compiles one rule.
pub(crate) fn compile(sql: &str) -> Result<CompiledRule> {
    let (text, ts_clause) = cut_timestamp_by(sql)?;
    let dialect = MsSqlDialect {};
    let timestamp_by = match ts_clause {
        Some((clause, at)) => {
            let e = Parser::new(&dialect)
                .try_with_sql(&clause)
                .and_then(|mut p| p.parse_expr())
                .map_err(|e| parser_error(e, at))?;
            Some(record_expr(&e).map_err(|e| match e {
                Error::Rule { reason, .. } => err_at(at, reason),
                other => other,
            })?)
        }
        None => None,
    };
    let statements = Parser::parse_sql(&dialect, &text)
        .map_err(|e| parser_error(e, Location { line: 1, column: 1 }))?;
    let [statement] = statements.as_slice() else {
        return Err(err_at(
            Location { line: 1, column: 1 },
            "a rule is exactly one SELECT statement",
        ));
    };
    let Statement::Query(query) = statement else {
        return Err(unsupported(statement, "a statement other than SELECT"));
    };
    if query.with.is_some() || query.order_by.is_some() || query.limit_clause.is_some() {
        return Err(unsupported(query.as_ref(), "WITH, ORDER BY or LIMIT"));
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return Err(unsupported(query.body.as_ref(), "UNION or a nested query"));
    };
    if select.distinct.is_some() || select.top.is_some() {
        return Err(unsupported(select.as_ref(), "DISTINCT or TOP"));
    }
    let output = match &select.into {
        None => "output".to_owned(),
        Some(into) => match into.targets.as_slice() {
            [ast::Expr::Identifier(i)] => i.value.clone(),
            _ => return Err(unsupported(into, "this INTO target")),
        },
    };
    let input = match select.from.as_slice() {
        [from] if from.joins.is_empty() => match &from.relation {
            TableFactor::Table {
                name, args: None, ..
            } => name_parts(name).join("."),
            other => return Err(unsupported(other, "this FROM source")),
        },
        [] => return Err(err_at(select.span().start, "a rule needs FROM <topic>")),
        [_, second, ..] => return Err(unsupported(second, "more than one FROM source")),
        [from] => return Err(unsupported(&from.joins[0], "JOIN")),
    };
    let filter = select.selection.as_ref().map(record_expr).transpose()?;
    let group_exprs = match &select.group_by {
        GroupByExpr::Expressions(exprs, modifiers) if modifiers.is_empty() => exprs.clone(),
        other => return Err(unsupported(other, "GROUP BY ALL or modifiers")),
    };
    if group_exprs.is_empty() {
        if let Some(h) = &select.having {
            return Err(err_at(h.span().start, "HAVING needs GROUP BY"));
        }
        let mut items = Vec::new();
        for item in &select.projection {
            match item {
                SelectItem::Wildcard(_) if select.projection.len() == 1 => {
                    return Ok(CompiledRule {
                        input,
                        output,
                        timestamp_by,
                        filter,
                        shape: Shape::Project { items: None },
                    });
                }
                SelectItem::UnnamedExpr(e) => items.push((item_name(e), record_expr(e)?)),
                SelectItem::ExprWithAlias { expr, alias } => {
                    items.push((alias.value.clone(), record_expr(expr)?))
                }
                other => return Err(unsupported(other, "this SELECT item")),
            }
        }
        return Ok(CompiledRule {
            input,
            output,
            timestamp_by,
            filter,
            shape: Shape::Project { items: Some(items) },
        });
    }
    let mut window = None;
    let mut keys = Vec::new();
    for g in &group_exprs {
        if let ast::Expr::Function(f) = g
            && let Some(spec) = window_spec(f)?
        {
            if window.is_some() {
                return Err(err_at(g.span().start, "GROUP BY takes exactly one window"));
            }
            window = Some(spec);
            continue;
        }
        keys.push(record_expr(g)?);
    }
    let Some(window) = window else {
        let at = group_exprs
            .first()
            .map_or(Location { line: 1, column: 1 }, |g| g.span().start);
        return Err(err_at(
            at,
            "GROUP BY needs one window: TumblingWindow, HoppingWindow, SlidingWindow or SessionWindow",
        ));
    };
    let mut scope = OutputScope {
        keys: &keys,
        aggregates: Vec::new(),
        aliases: Vec::new(),
    };
    let mut items = Vec::new();
    for item in &select.projection {
        let (name, e) = match item {
            SelectItem::UnnamedExpr(e) => (item_name(e), e),
            SelectItem::ExprWithAlias { expr, alias } => (alias.value.clone(), expr),
            other => {
                return Err(unsupported(
                    other,
                    "this SELECT item in an aggregating rule",
                ));
            }
        };
        let compiled = scope.expr(e)?;
        scope.aliases.push((name.clone(), compiled.clone()));
        items.push((name, compiled));
    }
    let having = select.having.as_ref().map(|h| scope.expr(h)).transpose()?;
    let aggregates = scope.aggregates;
    Ok(CompiledRule {
        input,
        output,
        timestamp_by,
        filter,
        shape: Shape::Aggregate {
            keys,
            window,
            aggregates,
            items,
            having,
        },
    })
}
