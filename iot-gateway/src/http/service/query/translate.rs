//! From IoT Hub's query language over `devices` to the registry's.
//!
//! The registry's language (`iot_registry::Query`) knows `metadata.*`, `tags.*` and
//! `deviceId`. An IoT Hub query is rewritten token by token onto the document the HTTP layer
//! evaluates (see `json::query_view`):
//!
//! | IoT Hub | registry | where the value lives |
//! | --- | --- | --- |
//! | `tags.x` | `metadata.x` | the registry record's metadata (indexed) |
//! | `deviceId` | `deviceId` | the record (indexed) |
//! | `properties.desired.x`, `properties.reported.x` | `tags.properties.desired.x`, … | the gateway's twin |
//! | `status` | `tags.status` | the identity store |
//! | `connectionState` | `tags.connectionState` | the gateway's sessions |
//!
//! The select list (`*`, `TOP n *`, `COUNT() [AS a]`, `path, COUNT() AS a` with `GROUP BY
//! path`) is read here; the rest (`WHERE`, `ORDER BY`) goes to the registry's parser, so its
//! grammar and errors are the registry's.

use iot_registry::query::{CompareOp, Condition, Field, FieldRoot, GeoArea, Literal};

use crate::http::error::{ApiError, ApiResult, code};

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// A quoted string or key, with its quotes, as written.
    Quoted(String),
    Number(String),
    Punct(String),
}

impl Tok {
    fn text(&self) -> &str {
        match self {
            Tok::Ident(s) | Tok::Quoted(s) | Tok::Number(s) | Tok::Punct(s) => s,
        }
    }

    fn is_keyword(&self, word: &str) -> bool {
        matches!(self, Tok::Ident(s) if s.eq_ignore_ascii_case(word))
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::BAD_REQUEST,
        code::BAD_QUERY,
        message,
    )
}

fn lex(text: &str) -> ApiResult<Vec<Tok>> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == '$' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | '$'))
            {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            out.push(Tok::Number(chars[start..i].iter().collect()));
        } else if matches!(c, '\'' | '"' | '`') {
            let start = i;
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(bad("a quoted string is not closed")),
                    // SQL's doubled quote stays inside the string.
                    Some(q) if *q == c && chars.get(i + 1) == Some(&c) => i += 2,
                    Some(q) if *q == c => {
                        i += 1;
                        break;
                    }
                    Some(_) => i += 1,
                }
            }
            out.push(Tok::Quoted(chars[start..i].iter().collect()));
        } else {
            let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
            if matches!(two.as_str(), "!=" | "<>" | "<=" | ">=") {
                out.push(Tok::Punct(two));
                i += 2;
            } else {
                out.push(Tok::Punct(c.to_string()));
                i += 1;
            }
        }
    }
    Ok(out)
}

/// What a query selects.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Selection {
    /// `SELECT *`: twins.
    Twins,
    /// `SELECT COUNT() [AS alias]`.
    Count(String),
    /// `SELECT path, COUNT() AS alias … GROUP BY path`: `path` rewritten (dotted), the name
    /// the answer uses for it (its last segment), the alias.
    GroupCount {
        path: Vec<String>,
        name: String,
        alias: String,
    },
}

/// An IoT Hub query, translated.
#[derive(Debug, Clone)]
pub(super) struct Translated {
    pub(super) selection: Selection,
    /// `SELECT * FROM devices [WHERE …] [ORDER BY …]` in the registry's language.
    pub(super) registry_text: String,
    /// `TOP n`.
    pub(super) top: Option<u64>,
}

fn rewrite_root(name: &str) -> Option<&'static str> {
    match name {
        "tags" => Some("metadata"),
        "properties" => Some("tags.properties"),
        "status" => Some("tags.status"),
        "connectionState" => Some("tags.connectionState"),
        _ => None,
    }
}

/// Joins tokens back into text, rewriting the root of each path.
fn render(tokens: &[Tok]) -> String {
    let mut out = String::new();
    let mut previous: Option<&Tok> = None;
    for tok in tokens {
        let after_dot = matches!(previous, Some(Tok::Punct(p)) if p == ".");
        let text = match tok {
            Tok::Ident(name) if !after_dot => rewrite_root(name).unwrap_or(name),
            other => other.text(),
        };
        let glue = after_dot
            || matches!(tok, Tok::Punct(p) if matches!(p.as_str(), "." | "," | ")" | "]"))
            || matches!(previous, Some(Tok::Punct(p)) if p == "(" || p == "[");
        if !out.is_empty() && !glue {
            out.push(' ');
        }
        out.push_str(text);
        previous = Some(tok);
    }
    out
}

fn position(tokens: &[Tok], from: usize, word: &str, then: Option<&str>) -> Option<usize> {
    (from..tokens.len()).find(|&i| {
        tokens[i].is_keyword(word)
            && then.is_none_or(|t| tokens.get(i + 1).is_some_and(|n| n.is_keyword(t)))
    })
}

/// A dotted path of plain identifiers, rewritten: `["tags", "properties", "reported", "fw"]`.
fn path_of(tokens: &[Tok]) -> ApiResult<Vec<String>> {
    let rendered = render(tokens);
    let parts: Vec<String> = rendered.split('.').map(str::to_owned).collect();
    let plain = |s: &String| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$'))
    };
    if parts.iter().all(plain) {
        Ok(parts)
    } else {
        Err(bad(format!(
            "GROUP BY needs a plain dotted path, found {rendered:?}"
        )))
    }
}

fn is_count(tokens: &[Tok]) -> Option<String> {
    // COUNT ( ) [AS alias]
    let ok = tokens.len() >= 3
        && tokens[0].is_keyword("COUNT")
        && tokens[1].text() == "("
        && tokens[2].text() == ")";
    if !ok {
        return None;
    }
    match &tokens[3..] {
        [] => Some("$1".to_owned()),
        [as_kw, Tok::Ident(alias)] if as_kw.is_keyword("AS") => Some(alias.clone()),
        _ => None,
    }
}

/// Translates `text`; errors are 400 `SqlQueryInvalid`.
pub(super) fn translate(text: &str) -> ApiResult<Translated> {
    let tokens = lex(text)?;
    if !tokens.first().is_some_and(|t| t.is_keyword("SELECT")) {
        return Err(bad("a query starts with SELECT"));
    }
    let from = position(&tokens, 1, "FROM", None).ok_or_else(|| bad("FROM devices is missing"))?;
    let source = tokens.get(from + 1).map(Tok::text).unwrap_or_default();
    if source != "devices" || tokens.get(from + 2).is_some_and(|t| t.text() == ".") {
        return Err(bad(format!(
            "only FROM devices is supported, not {:?}",
            source.chars().take(32).collect::<String>()
        )));
    }
    let group = position(&tokens, from, "GROUP", Some("BY"));
    let order = position(&tokens, from, "ORDER", Some("BY"));
    let where_at = position(&tokens, from, "WHERE", None);
    let clause_end = |start: usize| {
        [group, order]
            .into_iter()
            .flatten()
            .filter(|&p| p > start)
            .min()
            .unwrap_or(tokens.len())
    };

    let mut select = &tokens[1..from];
    let mut top = None;
    if select.first().is_some_and(|t| t.is_keyword("TOP")) {
        let n = select
            .get(1)
            .and_then(|t| t.text().parse::<u64>().ok())
            .ok_or_else(|| bad("TOP needs a number"))?;
        top = Some(n);
        select = &select[2..];
    }
    let group_path = match group {
        Some(g) => Some(path_of(&tokens[g + 2..clause_end(g + 1)])?),
        None => None,
    };
    let selection = if matches!(select, [Tok::Punct(p)] if p == "*") {
        Selection::Twins
    } else if let Some(alias) = is_count(select) {
        Selection::Count(alias)
    } else {
        let comma = select.iter().position(|t| t.text() == ",").ok_or_else(|| {
            bad("only SELECT *, SELECT COUNT() and GROUP BY counts are supported")
        })?;
        let (first, second) = (&select[..comma], &select[comma + 1..]);
        let (path_tokens, alias) = match (is_count(first), is_count(second)) {
            (Some(alias), None) => (second, alias),
            (None, Some(alias)) => (first, alias),
            _ => {
                return Err(bad(
                    "only SELECT *, SELECT COUNT() and GROUP BY counts are supported",
                ));
            }
        };
        let path = path_of(path_tokens)?;
        if Some(&path) != group_path.as_ref() {
            return Err(bad("the selected path must be the GROUP BY path"));
        }
        let name = match path.as_slice() {
            [only] => only.clone(),
            [.., last] => last.clone(),
            [] => return Err(bad("GROUP BY needs a path")),
        };
        Selection::GroupCount { path, name, alias }
    };
    if group.is_some() && !matches!(selection, Selection::GroupCount { .. }) {
        return Err(bad("GROUP BY needs SELECT path, COUNT() AS alias"));
    }

    let mut registry_text = String::from("SELECT * FROM devices");
    if let Some(w) = where_at {
        let end = clause_end(w);
        registry_text.push_str(" WHERE ");
        registry_text.push_str(&render(&tokens[w + 1..end]));
    }
    if let Some(o) = order {
        let end = clause_end(o + 1);
        registry_text.push_str(" ORDER BY ");
        registry_text.push_str(&render(&tokens[o + 2..end]));
    }
    Ok(Translated {
        selection,
        registry_text,
        top,
    })
}

/// Whether a condition reads anything outside the registry record (a twin-derived field).
pub(super) fn uses_derived(condition: &Condition<'_>) -> bool {
    match condition {
        Condition::Const(_) => false,
        Condition::Compare { field, .. }
        | Condition::In { field, .. }
        | Condition::StartsWith { field, .. }
        | Condition::IsDefined(field)
        | Condition::Within { field, .. } => field.root() == FieldRoot::Tags,
        Condition::Not(inner) => uses_derived(inner),
        Condition::And(all) | Condition::Or(all) => all.iter().any(uses_derived),
        _ => true,
    }
}

fn print_field(field: &Field<'_>) -> Option<String> {
    let mut out = match field.root() {
        FieldRoot::DeviceId => "deviceId",
        FieldRoot::StateRef => "stateRef",
        FieldRoot::Metadata => "metadata",
        FieldRoot::Tags => "tags",
        _ => return None,
    }
    .to_owned();
    for segment in field.segments() {
        out.push('.');
        if !segment.is_empty()
            && segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$'))
            && !segment.starts_with(|c: char| c.is_ascii_digit())
        {
            out.push_str(segment);
        } else if !segment.contains('`') {
            out.push('`');
            out.push_str(segment);
            out.push('`');
        } else {
            return None;
        }
    }
    Some(out)
}

fn print_literal(literal: &Literal<'_>) -> Option<String> {
    match literal {
        Literal::Null => Some("null".into()),
        Literal::Bool(b) => Some(b.to_string()),
        Literal::Number(n) if n.is_finite() => Some(format!("{n:?}")),
        Literal::String(s) if !s.contains('\'') => Some(format!("'{s}'")),
        _ => None,
    }
}

/// The condition as the registry's language writes it, or `None` if it cannot be printed
/// faithfully (the caller then leaves it out of the prefilter, which only makes it wider).
fn print(condition: &Condition<'_>) -> Option<String> {
    Some(match condition {
        Condition::Const(b) => b.to_string(),
        Condition::Compare { field, op, value } => {
            let op = match op {
                CompareOp::Eq => "=",
                CompareOp::Ne => "!=",
                CompareOp::Lt => "<",
                CompareOp::Le => "<=",
                CompareOp::Gt => ">",
                CompareOp::Ge => ">=",
                _ => return None,
            };
            format!("{} {op} {}", print_field(field)?, print_literal(value)?)
        }
        Condition::In { field, values } => {
            let values: Option<Vec<String>> = values.iter().map(print_literal).collect();
            format!("{} IN ({})", print_field(field)?, values?.join(", "))
        }
        Condition::StartsWith { field, prefix } => {
            format!(
                "STARTS_WITH({}, {})",
                print_field(field)?,
                print_literal(&Literal::String(prefix))?
            )
        }
        Condition::IsDefined(field) => format!("IS_DEFINED({})", print_field(field)?),
        Condition::Within { field, area, .. } => {
            let field = print_field(field)?;
            let n = |x: f64| print_literal(&Literal::Number(x));
            match *area {
                GeoArea::Box {
                    south,
                    west,
                    north,
                    east,
                } => format!(
                    "WITHIN_BOX({field}, {}, {}, {}, {})",
                    n(south)?,
                    n(west)?,
                    n(north)?,
                    n(east)?
                ),
                GeoArea::Circle { lat, lon, radius_m } => format!(
                    "WITHIN_DISTANCE({field}, {}, {}, {})",
                    n(lat)?,
                    n(lon)?,
                    n(radius_m)?
                ),
                _ => return None,
            }
        }
        Condition::Not(inner) => format!("NOT ({})", print(inner)?),
        Condition::And(all) => {
            let parts: Option<Vec<String>> = all.iter().map(print).collect();
            format!("({})", parts?.join(" AND "))
        }
        Condition::Or(all) => {
            let parts: Option<Vec<String>> = all.iter().map(print).collect();
            format!("({})", parts?.join(" OR "))
        }
        _ => return None,
    })
}

/// The part of `condition` the registry's indexes can answer alone: the top-level conjuncts
/// that read only the record. Every record matching `condition` matches it.
pub(super) fn prefilter(condition: &Condition<'_>) -> String {
    let conjuncts: Vec<&Condition<'_>> = match condition {
        Condition::And(all) => all.iter().collect(),
        other => vec![other],
    };
    let printed: Vec<String> = conjuncts
        .into_iter()
        .filter(|c| !uses_derived(c))
        .filter_map(print)
        .collect();
    if printed.is_empty() {
        "SELECT * FROM devices".to_owned()
    } else {
        format!("SELECT * FROM devices WHERE {}", printed.join(" AND "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iot_registry::Query;

    #[test]
    fn paths_are_rewritten_onto_the_view() {
        let t = translate(
            "SELECT * FROM devices WHERE tags.location.region = 'US' AND properties.reported.fw >= 2 \
             AND status = 'enabled' AND connectionState = 'Connected' ORDER BY tags.floor",
        )
        .unwrap();
        assert_eq!(t.selection, Selection::Twins);
        assert_eq!(
            t.registry_text,
            "SELECT * FROM devices WHERE metadata.location.region = 'US' AND \
             tags.properties.reported.fw >= 2 AND tags.status = 'enabled' AND \
             tags.connectionState = 'Connected' ORDER BY metadata.floor"
        );
        let q = Query::parse(&t.registry_text).unwrap();
        assert!(uses_derived(&q.condition()));
        assert_eq!(
            prefilter(&q.condition()),
            "SELECT * FROM devices WHERE metadata.location.region = 'US'"
        );
    }

    #[test]
    fn strings_keep_their_text_and_in_lists_pass_through() {
        let t = translate(
            "SELECT * FROM devices WHERE tags.x IN ['tags.y', 'a''b'] OR deviceId = 'properties'",
        )
        .unwrap();
        assert_eq!(
            t.registry_text,
            "SELECT * FROM devices WHERE metadata.x IN ['tags.y', 'a''b'] OR deviceId = 'properties'"
        );
        let q = Query::parse(&t.registry_text).unwrap();
        assert!(!uses_derived(&q.condition()));
    }

    #[test]
    fn counts_top_and_group_by_are_read() {
        let t = translate("SELECT COUNT() AS numberOfDevices FROM devices").unwrap();
        assert_eq!(t.selection, Selection::Count("numberOfDevices".into()));
        let t = translate("select top 5 * from devices").unwrap();
        assert_eq!((t.selection, t.top), (Selection::Twins, Some(5)));
        let t = translate(
            "SELECT properties.reported.fw, COUNT() AS n FROM devices WHERE tags.a = 1 GROUP BY properties.reported.fw",
        )
        .unwrap();
        assert_eq!(
            t.selection,
            Selection::GroupCount {
                path: vec![
                    "tags".into(),
                    "properties".into(),
                    "reported".into(),
                    "fw".into()
                ],
                name: "fw".into(),
                alias: "n".into()
            }
        );
        assert_eq!(
            t.registry_text,
            "SELECT * FROM devices WHERE metadata.a = 1"
        );
    }

    #[test]
    fn unsupported_queries_are_refused() {
        for text in [
            "SELECT * FROM devices.modules",
            "SELECT deviceId FROM devices",
            "DELETE FROM devices",
            "SELECT * FROM devices WHERE tags.x = 'open",
            "SELECT tags.a, COUNT() AS n FROM devices GROUP BY tags.b",
            "SELECT * FROM devices GROUP BY tags.b",
        ] {
            let e = translate(text).unwrap_err();
            assert_eq!(e.code, code::BAD_QUERY, "{text}");
        }
    }

    #[test]
    fn prefilter_prints_what_it_can() {
        let q = Query::parse(
            "SELECT * FROM devices WHERE metadata.`odd key` = 1.5 AND NOT (metadata.b IN (1, 'x')) \
             AND STARTS_WITH(deviceId, 'dev') AND (tags.status = 'enabled' OR metadata.c = true)",
        )
        .unwrap();
        let p = prefilter(&q.condition());
        assert_eq!(
            p,
            "SELECT * FROM devices WHERE metadata.`odd key` = 1.5 AND NOT (metadata.b IN (1.0, 'x')) \
             AND STARTS_WITH(deviceId, 'dev')"
        );
        Query::parse(&p).unwrap();
    }

    #[test]
    fn prefilter_keeps_geo_conditions_on_the_record() {
        let q = Query::parse(
            "SELECT * FROM devices WHERE WITHIN_DISTANCE(metadata.location, 47.6, -122.3, 5000) \
             AND WITHIN_BOX(metadata.location, -21, 176, -12, -178) \
             AND WITHIN_BOX(tags.properties.reported.gps, 0, 0, 1, 1)",
        )
        .unwrap();
        let p = prefilter(&q.condition());
        assert_eq!(
            p,
            "SELECT * FROM devices WHERE WITHIN_DISTANCE(metadata.location, 47.6, -122.3, 5000.0) \
             AND WITHIN_BOX(metadata.location, -21.0, 176.0, -12.0, -178.0)"
        );
        Query::parse(&p).unwrap();
    }
}
