//! From a parsed [`Query`] (read through iot-registry's public query view) to SQL.
//!
//! Every condition becomes a two-valued SQL expression (never `NULL`), so that `NOT`, `AND` and
//! `OR` keep the query language's meaning:
//!
//! * a path is read with `->` only (object keys, never array positions, as the language does),
//!   giving `NULL` where it is undefined;
//! * a comparison reads the one class of value its literal has (`iot_registry_num`,
//!   `iot_registry_str`, …: `NULL` for other classes) and is `coalesce`d to `false`;
//! * `!=` is "defined and not equal";
//! * numbers compare as `float8`, as the language compares them as `f64`; strings compare under
//!   the `"C"` collation, i.e. by their UTF-8 bytes.
//!
//! An equality whose literal has a containment form (`metadata.building = 'B7'` is
//! `doc @> '{"metadata": {"building": "B7"}}'`) is written as that containment: it means the same
//! (containment follows object keys only and compares exactly; numbers get it only where
//! `numeric` and `f64` equality agree) and the GIN index answers it. The equalities of an `AND`
//! share one containment document.
//!
//! Values are written into the statement as literals, not bound (see [`Params`]).
//!
//! `ORDER BY` keys sort by class rank (undefined and composites first, then null, booleans,
//! numbers, strings) and then by the value of their class; the device id breaks ties. A
//! continuation token becomes the lexicographic "strictly after this position" condition.
//!
//! Whatever cannot be said exactly in SQL (a string literal holding U+0000, which PostgreSQL text
//! cannot carry; a construct of the language this adapter does not know yet) makes
//! [`translate`] return `None`; the registry then evaluates that query in Rust.

use iot_registry::query::{
    CompareOp, Condition, EARTH_RADIUS_M, Field, FieldRoot, GeoArea, Literal, OrderBy,
};
use iot_registry::{PageToken, Query, SortValue};
use tokio_postgres::types::ToSql;

/// The values of a statement, written into its text as literals.
///
/// Literals rather than bound parameters: PostgreSQL plans a prepared statement with parameters
/// anew on each of its first runs and then generically, and a generic plan cannot see that
/// `doc @> $n` is selective (measured: a scan of the namespace, 48 ms instead of 4 ms over
/// 50 000 devices), while a statement without parameters is planned once, when it is prepared,
/// and then only executed (the adapter caches it per connection). Strings are quoted by
/// [`quote_literal`]; a string holding U+0000, which PostgreSQL text cannot carry, marks the
/// statement unusable instead.
#[derive(Debug, Default)]
pub(crate) struct Params {
    /// A value PostgreSQL cannot take (text holding U+0000) was added: the statement is unusable.
    unsendable: bool,
}

impl Params {
    pub(crate) fn text(&mut self, s: &str) -> String {
        if s.contains('\0') {
            self.unsendable = true;
            return "NULL::text".to_owned();
        }
        format!("{}::text", quote_literal(s))
    }

    fn float(&mut self, f: f64) -> String {
        // `Debug` prints the shortest text that reads back as the same `f64` (`3.0`, `1e300`,
        // `-0.0`); PostgreSQL reads it back exactly too. JSON numbers are finite.
        if f.is_finite() {
            format!("'{f:?}'::float8")
        } else {
            self.unsendable = true;
            "NULL::float8".to_owned()
        }
    }

    fn boolean(&mut self, b: bool) -> String {
        if b { "TRUE" } else { "FALSE" }.to_owned()
    }

    /// The bound values: none, every value is in the text.
    pub(crate) fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        Vec::new()
    }
}

/// What a field names in a row.
#[derive(Debug, Clone)]
enum Target {
    /// The `device_id` column: always defined, always a string.
    DeviceId,
    /// A `jsonb` expression, `NULL` where the path is undefined.
    Json(String),
    /// A path that is never defined.
    Undefined,
}

fn target(field: &Field<'_>, p: &mut Params) -> Option<Target> {
    let segments = field.segments();
    let (root, key) = match field.root() {
        FieldRoot::DeviceId => {
            return Some(if segments.is_empty() {
                Target::DeviceId
            } else {
                Target::Undefined
            });
        }
        FieldRoot::StateRef => {
            return Some(if segments.is_empty() {
                Target::Json("(doc -> 'stateRef')".to_owned())
            } else {
                Target::Undefined
            });
        }
        FieldRoot::Metadata => ("metadata", "metadata"),
        FieldRoot::Tags => ("tags", "tags"),
        _ => return None,
    };
    debug_assert_eq!(root, key);
    let mut expr = format!("(doc -> '{root}'");
    for s in segments {
        expr.push_str(" -> ");
        expr.push_str(&p.text(s));
    }
    expr.push(')');
    Some(Target::Json(expr))
}

fn op_sql(op: CompareOp) -> Option<&'static str> {
    Some(match op {
        CompareOp::Eq => "=",
        CompareOp::Ne => "<>",
        CompareOp::Lt => "<",
        CompareOp::Le => "<=",
        CompareOp::Gt => ">",
        CompareOp::Ge => ">=",
        _ => return None,
    })
}

const TRUE: &str = "TRUE";
const FALSE: &str = "FALSE";

fn defined(t: &Target) -> String {
    match t {
        Target::DeviceId => TRUE.to_owned(),
        Target::Json(v) => format!("({v} IS NOT NULL)"),
        Target::Undefined => FALSE.to_owned(),
    }
}

/// `path = literal`, two-valued. Where the literal has a containment form (see
/// [`containment`]) that form *is* the comparison: containment follows object keys only, compares
/// strings, booleans and null exactly, and numbers where `numeric` and `f64` agree; it is also
/// what the GIN index answers, and cheaper to evaluate than extracting the path.
fn equals(t: &Target, field: &Field<'_>, lit: &Literal<'_>, p: &mut Params) -> Option<String> {
    if let (Target::Json(_), Some(doc)) = (t, containment(field, lit)) {
        return Some(format!("(doc @> {}::jsonb)", p.text(&doc.to_string())));
    }
    Some(match (t, lit) {
        (Target::Undefined, _) => FALSE.to_owned(),
        (Target::DeviceId, Literal::String(s)) => format!("(device_id = {})", p.text(s)),
        (Target::DeviceId, _) => FALSE.to_owned(),
        (Target::Json(v), Literal::Null) => format!("coalesce(jsonb_typeof({v}) = 'null', false)"),
        (Target::Json(v), Literal::Bool(b)) => format!("coalesce({v} = '{b}'::jsonb, false)"),
        (Target::Json(v), Literal::Number(x)) => {
            format!("coalesce(iot_registry_num({v}) = {}, false)", p.float(*x))
        }
        (Target::Json(v), Literal::String(s)) => {
            format!("coalesce({v} = to_jsonb({}), false)", p.text(s))
        }
        _ => return None,
    })
}

/// `path op literal` for an ordering operator, two-valued.
fn ordered(
    t: &Target,
    field: &Field<'_>,
    op: &str,
    lit: &Literal<'_>,
    p: &mut Params,
) -> Option<String> {
    Some(match (t, lit) {
        (Target::Undefined, _) => FALSE.to_owned(),
        (Target::DeviceId, Literal::String(s)) => format!("(device_id {op} {})", p.text(s)),
        (Target::DeviceId, _) => FALSE.to_owned(),
        // null is equal to itself and ordered against nothing else.
        (Target::Json(_), Literal::Null) if op == "<=" || op == ">=" => {
            return equals(t, field, lit, p);
        }
        (Target::Json(_), Literal::Null) => FALSE.to_owned(),
        (Target::Json(v), Literal::Bool(b)) => format!(
            "coalesce(iot_registry_bool({v}) {op} {}, false)",
            p.boolean(*b)
        ),
        (Target::Json(v), Literal::Number(x)) => format!(
            "coalesce(iot_registry_num({v}) {op} {}, false)",
            p.float(*x)
        ),
        (Target::Json(v), Literal::String(s)) => format!(
            "coalesce(iot_registry_str({v}) COLLATE \"C\" {op} {}, false)",
            p.text(s)
        ),
        _ => return None,
    })
}

/// The exact SQL of a condition; `None` if some part cannot be said exactly.
fn condition(c: &Condition<'_>, p: &mut Params) -> Option<String> {
    Some(match c {
        Condition::Const(b) => if *b { TRUE } else { FALSE }.to_owned(),
        Condition::Compare { field, op, value } => {
            let t = target(field, p)?;
            match op {
                CompareOp::Eq => equals(&t, field, value, p)?,
                CompareOp::Ne => {
                    format!("({} AND NOT {})", defined(&t), equals(&t, field, value, p)?)
                }
                other => ordered(&t, field, op_sql(*other)?, value, p)?,
            }
        }
        Condition::In { field, values } => {
            let t = target(field, p)?;
            let parts = values
                .iter()
                .map(|v| equals(&t, field, v, p))
                .collect::<Option<Vec<_>>>()?;
            join(parts, " OR ", FALSE)
        }
        Condition::StartsWith { field, prefix } => match target(field, p)? {
            // The range lets the primary key's btree find the first candidate.
            Target::DeviceId => {
                let pre = p.text(prefix);
                format!("(device_id >= {pre} AND starts_with(device_id, {pre}))")
            }
            Target::Json(v) => format!(
                "coalesce(starts_with(iot_registry_str({v}), {}), false)",
                p.text(prefix)
            ),
            Target::Undefined => FALSE.to_owned(),
        },
        Condition::IsDefined(field) => defined(&target(field, p)?),
        Condition::Within { lat, lon, area, .. } => match (target(lat, p)?, target(lon, p)?) {
            (Target::Json(lat), Target::Json(lon)) => within(&lat, &lon, area, p),
            _ => FALSE.to_owned(),
        },
        Condition::Not(inner) => format!("(NOT {})", condition(inner, p)?),
        Condition::And(cs) => {
            // The equalities with a containment form share one document: one GIN condition
            // rather than one per equality, and the same meaning (an AND of containments is the
            // containment of their union, when no path gets two values).
            let mut merged: Option<serde_json::Value> = None;
            let mut parts: Vec<String> = Vec::new();
            for c in cs {
                let single = match c {
                    Condition::Compare {
                        field,
                        op: CompareOp::Eq,
                        value,
                    } => containment(field, value),
                    _ => None,
                };
                let absorbed = match (single, merged.as_mut()) {
                    (Some(doc), None) => {
                        merged = Some(doc);
                        true
                    }
                    (Some(doc), Some(into)) => merge_into(into, &doc),
                    (None, _) => false,
                };
                if !absorbed {
                    parts.push(condition(c, p)?);
                }
            }
            if let Some(doc) = merged {
                parts.insert(0, format!("(doc @> {}::jsonb)", p.text(&doc.to_string())));
            }
            join(parts, " AND ", TRUE)
        }
        Condition::Or(cs) => join(
            cs.iter()
                .map(|c| condition(c, p))
                .collect::<Option<Vec<_>>>()?,
            " OR ",
            FALSE,
        ),
        _ => return None,
    })
}

/// A position inside `area`: the two members are numbers inside the area's bounds and, for a
/// circle, at most its radius away by the haversine formula, computed in `float8` in the order
/// `iot_registry::query::geo_distance_m` computes it (radians first, then differences), so that
/// both sides round alike.
fn within(lat: &str, lon: &str, area: &GeoArea, p: &mut Params) -> String {
    let (lat, lon) = (
        format!("iot_registry_num({lat})"),
        format!("iot_registry_num({lon})"),
    );
    let bounds = area.bounds();
    let mut parts = vec![format!(
        "{lat} BETWEEN {} AND {}",
        p.float(bounds.lat.0),
        p.float(bounds.lat.1)
    )];
    let lons: Vec<String> = bounds
        .lon
        .into_iter()
        .flatten()
        .map(|(w, e)| format!("{lon} BETWEEN {} AND {}", p.float(w), p.float(e)))
        .collect();
    parts.push(format!("({})", lons.join(" OR ")));
    if let GeoArea::Circle {
        lat: clat,
        lon: clon,
        radius_m,
    } = *area
    {
        let (clat, clon) = (p.float(clat), p.float(clon));
        let half_dp = format!("((radians({lat}) - radians({clat})) / 2)");
        let half_dl = format!("(radians({lon} - {clon}) / 2)");
        let a = format!(
            "(sin({half_dp}) * sin({half_dp}) + cos(radians({clat})) * cos(radians({lat})) \
             * (sin({half_dl}) * sin({half_dl})))"
        );
        parts.push(format!(
            "2.0::float8 * {} * asin(least(sqrt({a}), 1.0::float8)) <= {}",
            p.float(EARTH_RADIUS_M),
            p.float(radius_m)
        ));
    }
    format!("coalesce(({}), false)", parts.join(" AND "))
}

fn join(parts: Vec<String>, sep: &str, empty: &str) -> String {
    if parts.is_empty() {
        empty.to_owned()
    } else {
        format!("({})", parts.join(sep))
    }
}

/// The JSON a matching document contains for `field = lit`, when containment is implied by
/// equality. Numbers are included only where `f64` equality and PostgreSQL's exact `numeric`
/// equality agree on every value a document can hold: fractions, and integers below 2^53.
fn containment(field: &Field<'_>, lit: &Literal<'_>) -> Option<serde_json::Value> {
    use serde_json::Value;
    let leaf = match lit {
        Literal::Null => Value::Null,
        Literal::Bool(b) => Value::Bool(*b),
        Literal::String(s) if !s.contains('\0') => Value::String((*s).to_owned()),
        Literal::Number(x) if x.fract() != 0.0 => Value::from(*x),
        Literal::Number(x) if x.abs() < 9_007_199_254_740_992.0 => {
            // Exact: |x| < 2^53 and integral.
            #[allow(clippy::cast_possible_truncation)]
            Value::from(*x as i64)
        }
        _ => return None,
    };
    let segments = field.segments();
    let root = match field.root() {
        FieldRoot::StateRef if segments.is_empty() => {
            return match leaf {
                Value::String(_) => Some(serde_json::json!({ "stateRef": leaf })),
                _ => None,
            };
        }
        FieldRoot::Metadata if !segments.is_empty() => "metadata",
        FieldRoot::Tags if !segments.is_empty() => "tags",
        _ => return None,
    };
    let mut value = leaf;
    for s in segments.iter().rev() {
        let mut m = serde_json::Map::new();
        m.insert(s.clone(), value);
        value = Value::Object(m);
    }
    let mut m = serde_json::Map::new();
    m.insert(root.to_owned(), value);
    Some(Value::Object(m))
}

/// `text` as an SQL string literal that means the same whatever `standard_conforming_strings`
/// says (an escape string: backslashes and quotes doubled). `text` holds no U+0000: containment
/// documents are only made of literals without it.
fn quote_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 3);
    out.push_str("E'");
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("''"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Adds the paths of the containment document `doc` to `into`, if no path of `doc` holds a
/// different value in `into` already (then `into` is left as it was and the result is false).
/// Both are objects of objects down to one scalar leaf, as [`containment`] makes them.
fn merge_into(into: &mut serde_json::Value, doc: &serde_json::Value) -> bool {
    use serde_json::Value;
    fn compatible(into: &Value, doc: &Value) -> bool {
        match (into, doc) {
            (Value::Object(a), Value::Object(b)) => b
                .iter()
                .all(|(k, v)| a.get(k).is_none_or(|existing| compatible(existing, v))),
            (a, b) => a == b,
        }
    }
    fn merge(into: &mut Value, doc: &Value) {
        if let (Value::Object(a), Value::Object(b)) = (into, doc) {
            for (k, v) in b {
                match a.get_mut(k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
    }
    if !compatible(into, doc) {
        return false;
    }
    merge(into, doc);
    true
}

/// Whether [`hint`] has something for `c` (an `OR` has a hint only if every branch has one).
fn hintable(c: &Condition<'_>) -> bool {
    match c {
        Condition::Compare {
            field,
            op: CompareOp::Eq,
            value,
        } => containment(field, value).is_some(),
        Condition::In { field, values } => {
            !values.is_empty() && values.iter().all(|v| containment(field, v).is_some())
        }
        Condition::And(cs) => cs.iter().any(hintable),
        Condition::Or(cs) => !cs.is_empty() && cs.iter().all(hintable),
        _ => false,
    }
}

/// A condition every match satisfies and the GIN index can answer, if there is one: narrows the
/// candidates of a query evaluated in Rust.
fn hint(c: &Condition<'_>, p: &mut Params) -> Option<String> {
    if !hintable(c) {
        return None;
    }
    let contains = |json: serde_json::Value, p: &mut Params| {
        format!("(doc @> {}::jsonb)", p.text(&json.to_string()))
    };
    match c {
        Condition::Compare { field, value, .. } => Some(contains(containment(field, value)?, p)),
        Condition::In { field, values } => {
            let docs = values
                .iter()
                .map(|v| containment(field, v))
                .collect::<Option<Vec<_>>>()?;
            let parts = docs.into_iter().map(|d| contains(d, p)).collect();
            Some(join(parts, " OR ", FALSE))
        }
        Condition::And(cs) => {
            // The equalities of an AND become one containment document (one GIN condition
            // rather than one per equality); the rest keep their own hints.
            let mut merged: Option<serde_json::Value> = None;
            let mut parts: Vec<String> = Vec::new();
            for c in cs {
                let single = match c {
                    Condition::Compare {
                        field,
                        op: CompareOp::Eq,
                        value,
                    } => containment(field, value),
                    _ => None,
                };
                let absorbed = match (single, merged.as_mut()) {
                    (Some(doc), None) => {
                        merged = Some(doc);
                        true
                    }
                    (Some(doc), Some(into)) => merge_into(into, &doc),
                    (None, _) => false,
                };
                if !absorbed {
                    parts.extend(hint(c, p));
                }
            }
            if let Some(doc) = merged {
                parts.insert(0, contains(doc, p));
            }
            Some(join(parts, " AND ", TRUE))
        }
        Condition::Or(cs) => {
            let parts = cs.iter().map(|c| hint(c, p)).collect::<Option<Vec<_>>>()?;
            Some(join(parts, " OR ", FALSE))
        }
        _ => None,
    }
}

/// One `ORDER BY` key as SQL expressions.
struct SortExprs {
    /// The class rank (0 undefined/composite … 4 string).
    rank: String,
    /// The value of each class, `None` where the key cannot hold that class.
    boolean: Option<String>,
    number: Option<String>,
    string: Option<String>,
    descending: bool,
}

fn sort_exprs(key: &OrderBy<'_>, p: &mut Params) -> Option<SortExprs> {
    let descending = key.descending;
    Some(match target(&key.field, p)? {
        Target::DeviceId => SortExprs {
            rank: "4".to_owned(),
            boolean: None,
            number: None,
            string: Some("device_id".to_owned()),
            descending,
        },
        Target::Json(v) => SortExprs {
            rank: format!("iot_registry_rank({v})"),
            boolean: Some(format!("iot_registry_bool({v})")),
            number: Some(format!("iot_registry_num({v})")),
            string: Some(format!("(iot_registry_str({v}) COLLATE \"C\")")),
            descending,
        },
        Target::Undefined => SortExprs {
            rank: "0".to_owned(),
            boolean: None,
            number: None,
            string: None,
            descending,
        },
    })
}

/// `ORDER BY` items (constants left out: PostgreSQL reads an integer there as a column number).
fn order_items(keys: &[SortExprs]) -> Vec<String> {
    let mut items = Vec::new();
    for k in keys {
        let dir = if k.descending { "DESC" } else { "ASC" };
        if k.rank.parse::<i32>().is_err() {
            items.push(format!("{} {dir}", k.rank));
        }
        for e in [&k.boolean, &k.number, &k.string].into_iter().flatten() {
            items.push(format!("{e} {dir}"));
        }
    }
    items.push("device_id ASC".to_owned());
    items
}

/// "The row comes strictly after the token's position", lexicographically over the keys and
/// then the device id.
fn after_token(keys: &[SortExprs], token: &PageToken, p: &mut Params) -> Option<String> {
    let values: Vec<SortValue<'_>> = token.last_sort_values().collect();
    if values.len() != keys.len() {
        return None;
    }
    let mut equal_so_far: Vec<String> = Vec::new();
    let mut alternatives: Vec<String> = Vec::new();
    for (k, v) in keys.iter().zip(values) {
        let (rank, value): (i32, Option<(String, &Option<String>)>) = match v {
            SortValue::Undefined => (0, None),
            SortValue::Null => (1, None),
            SortValue::Bool(b) => (2, Some((p.boolean(b), &k.boolean))),
            SortValue::Number(x) => (3, Some((p.float(x), &k.number))),
            SortValue::String(s) => (4, Some((p.text(s), &k.string))),
            _ => return None,
        };
        let beyond = if k.descending { "<" } else { ">" };
        let r = &k.rank;
        let (after, equal) = match value {
            Some((param, Some(expr))) => (
                format!("({r} {beyond} {rank} OR ({r} = {rank} AND {expr} {beyond} {param}))"),
                format!("({r} = {rank} AND {expr} = {param})"),
            ),
            _ => (format!("({r} {beyond} {rank})"), format!("({r} = {rank})")),
        };
        let mut alt = equal_so_far.clone();
        alt.push(after);
        alternatives.push(join(alt, " AND ", TRUE));
        equal_so_far.push(equal);
    }
    let mut last = equal_so_far;
    last.push(format!("(device_id > {})", p.text(token.last_device_id())));
    alternatives.push(join(last, " AND ", TRUE));
    Some(join(alternatives, " OR ", FALSE))
}

/// A statement and its parameters.
#[derive(Debug)]
pub(crate) struct Statement {
    pub(crate) sql: String,
    pub(crate) params: Params,
}

/// The columns every read selects, in this order.
pub(crate) const COLUMNS: &str = "device_id, doc::text, etag, created_us, updated_us";

/// The page query: matches of `query` in namespace `ns`, after `token`, in the query's order, at
/// most `fetch` rows. `None` when the query must be evaluated in Rust instead.
pub(crate) fn translate(
    query: &Query,
    ns: &str,
    token: Option<&PageToken>,
    fetch: u64,
) -> Option<Statement> {
    let mut p = Params::default();
    let ns = p.text(ns);
    let cond = query.condition();
    // Equalities are containments in the condition itself, which the GIN index answers: no
    // separate hint is needed here.
    let mut clauses = vec![format!("ns = {ns}")];
    clauses.push(condition(&cond, &mut p)?);
    let keys = query
        .order_by()
        .map(|k| sort_exprs(&k, &mut p))
        .collect::<Option<Vec<_>>>()?;
    if let Some(token) = token {
        clauses.push(after_token(&keys, token, &mut p)?);
    }
    if p.unsendable {
        return None;
    }
    let sql = format!(
        "SELECT {COLUMNS} FROM iot_registry_devices WHERE {} ORDER BY {} LIMIT {fetch}",
        clauses.join(" AND "),
        order_items(&keys).join(", ")
    );
    Some(Statement { sql, params: p })
}

/// The count query of `query` in `ns`; `None` when it must be counted in Rust.
pub(crate) fn translate_count(query: &Query, ns: &str) -> Option<Statement> {
    let mut p = Params::default();
    let ns = p.text(ns);
    let cond = query.condition();
    let mut clauses = vec![format!("ns = {ns}")];
    clauses.push(condition(&cond, &mut p)?);
    if p.unsendable {
        return None;
    }
    let limit = match query.limit() {
        Some(l) => format!(" LIMIT {l}"),
        None => String::new(),
    };
    // Counting a subquery with the LIMIT lets PostgreSQL stop early.
    let sql = format!(
        "SELECT count(*) FROM (SELECT 1 FROM iot_registry_devices WHERE {}{limit}) AS matches",
        clauses.join(" AND ")
    );
    Some(Statement { sql, params: p })
}

/// The candidates of a query evaluated in Rust: every row of `ns` that satisfies the index hint
/// (a superset of the matches), when the hint itself can be sent.
pub(crate) fn candidates(query: &Query, ns: &str) -> Statement {
    let mut p = Params::default();
    let ns_param = p.text(ns);
    let mut clauses = vec![format!("ns = {ns_param}")];
    clauses.extend(hint(&query.condition(), &mut p));
    if p.unsendable {
        let mut p = Params::default();
        let ns_param = p.text(ns);
        return Statement {
            sql: format!("SELECT {COLUMNS} FROM iot_registry_devices WHERE ns = {ns_param}"),
            params: p,
        };
    }
    Statement {
        sql: format!(
            "SELECT {COLUMNS} FROM iot_registry_devices WHERE {}",
            clauses.join(" AND ")
        ),
        params: p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_construct_of_the_language_is_translated() {
        for text in [
            "SELECT * FROM devices",
            "SELECT * FROM devices WHERE metadata.building = 'B1' AND metadata.floor >= 3 AND NOT IS_DEFINED(metadata.retired) ORDER BY metadata.room LIMIT 100",
            "SELECT * FROM devices WHERE metadata.floor < 2 OR metadata.floor > 7",
            "SELECT * FROM devices WHERE metadata.model NOT IN ['M1', 3, true, null]",
            "SELECT * FROM devices WHERE STARTS_WITH(deviceId, 'dev-1') ORDER BY deviceId DESC",
            "SELECT * FROM devices WHERE IS_DEFINED(stateRef) ORDER BY metadata.floor DESC, tags.room",
            "SELECT * FROM devices WHERE true AND NOT false AND metadata != 1",
            "SELECT * FROM devices WHERE WITHIN_BOX(metadata.p, -21, 176, -12, -178)",
            "SELECT * FROM devices WHERE WITHIN_DISTANCE(tags.p, 47.6, -122.3, 5000) OR WITHIN_DISTANCE(metadata, 0, 0, 1)",
        ] {
            let q = Query::parse(text).expect("parses");
            let s = translate(&q, "ns", None, 10).expect("translated");
            assert!(s.sql.starts_with("SELECT"), "{text}: {}", s.sql);
            assert!(translate_count(&q, "ns").is_some(), "{text}");
        }
    }

    #[test]
    fn geo_conditions_become_ranges_and_a_haversine_check() {
        let q = Query::parse(
            "SELECT * FROM devices WHERE WITHIN_DISTANCE(metadata.location, 0, 179.99, 5000)",
        )
        .expect("parses");
        let s = translate(&q, "ns", None, 10).expect("translated");
        // The cap crosses the antimeridian: two longitude ranges, then the exact distance.
        assert_eq!(s.sql.matches("BETWEEN").count(), 3, "{}", s.sql);
        assert!(s.sql.contains("asin(least(sqrt("), "{}", s.sql);
        let q = Query::parse("SELECT * FROM devices WHERE WITHIN_BOX(metadata.l, 1, 2, 3, 4)")
            .expect("parses");
        let s = translate(&q, "ns", None, 10).expect("translated");
        assert!(!s.sql.contains("asin"), "{}", s.sql);
    }

    #[test]
    fn equalities_get_an_index_hint_and_ranges_do_not() {
        let q = Query::parse(
            "SELECT * FROM devices WHERE metadata.building = 'B1' AND metadata.floor > 2",
        )
        .expect("parses");
        let s = translate(&q, "ns", None, 10).expect("translated");
        assert_eq!(s.sql.matches("@>").count(), 1, "{}", s.sql);
        // An integer beyond 2^53 has no exact containment form.
        let q = Query::parse("SELECT * FROM devices WHERE metadata.n = 9007199254740993")
            .expect("parses");
        let s = translate(&q, "ns", None, 10).expect("translated");
        assert!(!s.sql.contains("@>"), "{}", s.sql);
    }

    #[test]
    fn the_equalities_of_an_and_share_one_containment() {
        let q = Query::parse(
            "SELECT * FROM devices WHERE metadata.b = 'B1' AND metadata.f = 3 AND tags.t = true \
             AND metadata.b = 'B2' AND metadata.m IN ['x', 'y']",
        )
        .expect("parses");
        let s = translate(&q, "ns", None, 10).expect("translated");
        // One document for b, f and t; b = 'B2' conflicts and keeps its own; IN has its own OR.
        assert_eq!(s.sql.matches("@>").count(), 4, "{}", s.sql);
        assert!(
            s.sql
                .contains(r#"{"metadata":{"b":"B1","f":3},"tags":{"t":true}}"#),
            "{}",
            s.sql
        );
    }

    #[test]
    fn containment_literals_are_quoted() {
        assert_eq!(
            quote_literal(r#"{"a":"it's \\ ok"}"#),
            r#"E'{"a":"it''s \\\\ ok"}'"#
        );
    }

    #[test]
    fn a_literal_holding_nul_is_left_to_rust() {
        let q = Query::parse("SELECT * FROM devices WHERE metadata.s = 'a\u{0}'").expect("parses");
        assert!(translate(&q, "ns", None, 10).is_none());
        assert!(translate_count(&q, "ns").is_none());
        assert!(!candidates(&q, "ns").sql.contains('\0'));
    }
}
