//! From query text to [`Query`], with the `sqlparser` crate doing the lexing and the expression
//! grammar.
//!
//! The statement skeleton (`SELECT … FROM devices [WHERE …] [ORDER BY …] [LIMIT n]`) is read here
//! token by token, which keeps every error specific ("expected FROM"); the `WHERE` condition and
//! the `ORDER BY` paths are parsed by `sqlparser`'s expression parser and then checked against
//! what the device query language allows.
//!
//! Two adaptations:
//! * IoT Hub writes lists in square brackets (`IN ['a', 'b']`). Before parsing, a `[` that directly
//!   follows `IN` (and its matching `]`) is turned into a parenthesis; positions are kept.
//! * Size limits are enforced before any tree is built: query length and token count here, nesting
//!   through `sqlparser`'s recursion limit. `AND`/`OR` chains are flattened without recursion.
//!   Together they keep every input far from the end of the stack.

use sqlparser::dialect::Dialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

use super::ast::{Cond, OrderKey, Query, Select};
use super::compile::{as_path, condition};
use crate::error::{QueryError, QueryErrorKind as Kind};
use crate::limits::{QueryLimits, shorten};

/// The lexical rules of device queries: ASCII identifiers (with `_` and `$`), `"…"` or `` `…` ``
/// for keys that are not identifiers.
#[derive(Debug)]
struct DeviceQueryDialect;

impl Dialect for DeviceQueryDialect {
    fn is_identifier_start(&self, ch: char) -> bool {
        ch.is_ascii_alphabetic() || ch == '_' || ch == '$'
    }
    fn is_identifier_part(&self, ch: char) -> bool {
        ch.is_ascii_alphanumeric() || ch == '_' || ch == '$'
    }
    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        ch == '"' || ch == '`'
    }
}

pub(super) type Res<T> = Result<T, QueryError>;

pub(super) fn parse(text: &str, limits: &QueryLimits) -> Res<Query> {
    if text.len() > limits.max_query_bytes {
        return Err(QueryError::new(
            Kind::TooComplex,
            0,
            0,
            format!(
                "the query is {} bytes long, the limit is {}",
                text.len(),
                limits.max_query_bytes
            ),
        ));
    }
    let dialect = DeviceQueryDialect;
    let tokens = Tokenizer::new(&dialect, text)
        .tokenize_with_location()
        .map_err(|e| {
            QueryError::new(Kind::Syntax, e.location.line, e.location.column, e.message)
        })?;
    let tokens = check_and_rewrite(tokens, limits)?;
    let end = tokens
        .iter()
        .rev()
        .find(|t| !matches!(t.token, Token::Whitespace(_)))
        .map_or(Location { line: 1, column: 1 }, |t| t.span.end);
    let parser = Parser::new(&dialect)
        .with_recursion_limit(limits.max_nesting)
        .with_tokens_with_locations(tokens);
    let mut p = Reader { parser, end };
    let query = p.statement()?;
    Ok(query)
}

/// Enforces the token limit and rewrites IoT Hub's `IN [ … ]` into `IN ( … )`.
fn check_and_rewrite(
    mut tokens: Vec<TokenWithSpan>,
    limits: &QueryLimits,
) -> Res<Vec<TokenWithSpan>> {
    let mut count = 0usize;
    let mut previous_is_in = false;
    // Nesting, counted here so that the limit holds whatever the parser does: open parentheses,
    // and runs of `NOT` / `(` (each starts a nested condition).
    let mut depth = 0usize;
    let mut run = 0usize;
    // For each open `[`: whether it opened an IN list.
    let mut brackets: Vec<bool> = Vec::new();
    for t in &mut tokens {
        if matches!(t.token, Token::Whitespace(_)) {
            continue;
        }
        count += 1;
        if count > limits.max_tokens {
            return Err(QueryError::new(
                Kind::TooComplex,
                t.span.start.line,
                t.span.start.column,
                format!("the query has more than {} tokens", limits.max_tokens),
            ));
        }
        match &t.token {
            Token::LParen => {
                depth += 1;
                run += 1;
            }
            Token::RParen => {
                depth = depth.saturating_sub(1);
                run = 0;
            }
            Token::Word(w) if w.keyword == Keyword::NOT => run += 1,
            _ => run = 0,
        }
        if depth > limits.max_nesting || run > limits.max_nesting {
            return Err(QueryError::new(
                Kind::TooComplex,
                t.span.start.line,
                t.span.start.column,
                format!(
                    "parentheses and NOTs nest deeper than {} levels",
                    limits.max_nesting
                ),
            ));
        }
        match t.token {
            Token::LBracket => {
                brackets.push(previous_is_in);
                if previous_is_in {
                    t.token = Token::LParen;
                }
            }
            Token::RBracket if brackets.pop() == Some(true) => t.token = Token::RParen,
            _ => {}
        }
        previous_is_in = matches!(&t.token, Token::Word(w) if w.keyword == Keyword::IN);
    }
    Ok(tokens)
}

struct Reader<'a> {
    parser: Parser<'a>,
    end: Location,
}

pub(super) fn err_at(kind: Kind, at: Location, message: impl Into<String>) -> QueryError {
    QueryError::new(kind, at.line, at.column, message)
}

/// Turns a `sqlparser` error into ours. Its messages end with " at Line: L, Column: C"; errors
/// at the end of the input point just past the last token.
fn from_parser(e: ParserError, fallback: Location, end: Location) -> QueryError {
    let e = match e {
        ParserError::ParserError(m) if m.contains("found: EOF") => {
            let message = m.split(" at Line: ").next().unwrap_or_default();
            return QueryError::new(
                Kind::Syntax,
                end.line,
                end.column,
                shorten(&message.replace("found: EOF", "found: end of query")),
            );
        }
        e => e,
    };
    match e {
        ParserError::RecursionLimitExceeded => err_at(
            Kind::TooComplex,
            fallback,
            "parentheses or NOTs nest deeper than the limit",
        ),
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => {
            let (message, line, column) = match m.rsplit_once(" at Line: ") {
                Some((message, position)) => {
                    let mut parts = position.split(", Column: ");
                    let line = parts.next().and_then(|l| l.trim().parse().ok());
                    let column = parts.next().and_then(|c| c.trim().parse().ok());
                    match (line, column) {
                        (Some(l), Some(c)) => (message.to_owned(), l, c),
                        _ => (m.clone(), fallback.line, fallback.column),
                    }
                }
                None => (m, fallback.line, fallback.column),
            };
            QueryError::new(Kind::Syntax, line, column, shorten(&message))
        }
    }
}

impl Reader<'_> {
    fn here(&self) -> Location {
        let t = self.parser.peek_token_ref();
        if t.token == Token::EOF || t.span.start.line == 0 {
            self.end_location()
        } else {
            t.span.start
        }
    }

    /// Just past the last token, where "found: end of query" errors point.
    fn end_location(&self) -> Location {
        self.end
    }

    fn expect_keyword(&mut self, keyword: Keyword, what: &str) -> Res<()> {
        if self.parser.parse_keyword(keyword) {
            return Ok(());
        }
        Err(self.expected(what))
    }

    fn expected(&self, what: &str) -> QueryError {
        let found = self.parser.peek_token_ref().token.to_string();
        let found = if found.is_empty() {
            "end of query".to_owned()
        } else {
            found
        };
        err_at(
            Kind::Syntax,
            self.here(),
            format!("expected {what}, found {}", shorten(&found)),
        )
    }

    fn statement(&mut self) -> Res<Query> {
        self.expect_keyword(Keyword::SELECT, "SELECT")?;
        let select = self.projection()?;
        self.expect_keyword(Keyword::FROM, "FROM")?;
        let at = self.here();
        match self.parser.next_token().token {
            Token::Word(w)
                if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("devices") => {}
            other => {
                return Err(err_at(
                    Kind::Syntax,
                    at,
                    format!(
                        "expected the collection name devices, found {}",
                        shorten(&other.to_string())
                    ),
                ));
            }
        }
        let filter = if self.parser.parse_keyword(Keyword::WHERE) {
            let at = self.here();
            let expr = self
                .parser
                .parse_expr()
                .map_err(|e| from_parser(e, at, self.end))?;
            condition(&expr, at)?
        } else {
            Cond::Const(true)
        };
        let mut order_by = Vec::new();
        if self.parser.parse_keywords(&[Keyword::ORDER, Keyword::BY]) {
            loop {
                let at = self.here();
                let expr = self
                    .parser
                    .parse_expr()
                    .map_err(|e| from_parser(e, at, self.end))?;
                let path = as_path(&expr, at)?.ok_or_else(|| {
                    err_at(Kind::Unsupported, at, "expected a field path to order by")
                })?;
                let descending = matches!(
                    self.parser
                        .parse_one_of_keywords(&[Keyword::ASC, Keyword::DESC]),
                    Some(Keyword::DESC)
                );
                order_by.push(OrderKey { path, descending });
                if !self.parser.consume_token(&Token::Comma) {
                    break;
                }
            }
        }
        let limit = if self.parser.parse_keyword(Keyword::LIMIT) {
            let at = self.here();
            match self.parser.next_token().token {
                Token::Number(n, _) => Some(n.parse::<u64>().map_err(|_| {
                    err_at(
                        Kind::Syntax,
                        at,
                        format!("expected a whole number for LIMIT, found {}", shorten(&n)),
                    )
                })?),
                other => {
                    return Err(err_at(
                        Kind::Syntax,
                        at,
                        format!(
                            "expected a number after LIMIT, found {}",
                            shorten(&other.to_string())
                        ),
                    ));
                }
            }
        } else {
            None
        };
        if self.parser.peek_token_ref().token != Token::EOF {
            return Err(self.expected("WHERE, ORDER BY, LIMIT or the end of the query"));
        }
        let fingerprint =
            crc32c::crc32c(format!("{select:?}{filter:?}{order_by:?}{limit:?}").as_bytes());
        Ok(Query {
            select,
            filter,
            order_by,
            limit,
            fingerprint,
        })
    }

    fn projection(&mut self) -> Res<Select> {
        if self.parser.consume_token(&Token::Mul) {
            return Ok(Select::All);
        }
        let at = self.here();
        let token = self.parser.peek_token_ref().token.clone();
        if let Token::Word(w) = token
            && w.quote_style.is_none()
        {
            let is_call = self.parser.peek_nth_token_ref(1).token == Token::LParen;
            if w.value.eq_ignore_ascii_case("count") && is_call {
                self.parser.next_token();
                self.parser.next_token();
                let _star = self.parser.consume_token(&Token::Mul);
                if !self.parser.consume_token(&Token::RParen) {
                    return Err(self.expected(") closing COUNT("));
                }
                return Ok(Select::Count);
            }
            if is_call {
                return Err(err_at(
                    Kind::UnknownFunction,
                    at,
                    format!(
                        "unknown function {} in SELECT: expected * or COUNT()",
                        shorten(&w.value)
                    ),
                ));
            }
            return Err(err_at(
                Kind::Unsupported,
                at,
                "expected * or COUNT(): selecting single fields is not supported",
            ));
        }
        Err(self.expected("* or COUNT()"))
    }
}
