//! A recursive-descent parser for routing conditions.
//!
//! Precedence, loosest first: `OR`, `AND`, `NOT`, comparisons (`= != <> < <= > >=`), `+ -`,
//! `* / %`, unary `-`, then constants, paths, function calls and parentheses. Keywords and
//! function names are case-insensitive.

use serde_json::Value;

use super::ast::{BinOp, Expr, FUNCTIONS, Root, Step};
use super::lexer::{Tok, Token, error_at, tokenize};
use crate::error::{Error, Result};

/// Longest condition accepted, in bytes (IoT Hub limits a route's condition to about 1 KB; this
/// is generous and only bounds the work).
pub(crate) const MAX_CONDITION_BYTES: usize = 64 * 1024;
/// Most tokens: `a + b + …` and `a AND b AND …` chains build left-deep trees that evaluation,
/// printing and dropping walk recursively, so their length is bounded here (as the registry's
/// queries bound theirs) and a condition cannot exhaust the stack.
pub(crate) const MAX_TOKENS: usize = 4096;
/// Deepest nesting of parentheses, `NOT`s and unary minuses: bounds the recursion.
pub(crate) const MAX_DEPTH: usize = 64;

struct Parser<'a> {
    text: &'a str,
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
}

/// Parses a condition.
pub(crate) fn parse(text: &str) -> Result<Expr> {
    if text.len() > MAX_CONDITION_BYTES {
        return Err(error_at(
            text,
            MAX_CONDITION_BYTES,
            format!("the condition is longer than {MAX_CONDITION_BYTES} bytes"),
        ));
    }
    let tokens = tokenize(text)?;
    if tokens.len() > MAX_TOKENS {
        let at = tokens.get(MAX_TOKENS).map_or(text.len(), |t| t.at);
        return Err(error_at(
            text,
            at,
            format!("the condition has more than {MAX_TOKENS} tokens"),
        ));
    }
    let mut p = Parser {
        text,
        tokens,
        pos: 0,
        depth: 0,
    };
    if p.peek() == &Tok::End {
        return Err(p.error("an empty condition"));
    }
    let expr = p.or()?;
    match p.peek() {
        Tok::End => Ok(expr),
        _ => Err(p.error("expected AND, OR, an operator or the end of the condition")),
    }
}

fn keyword(tok: &Tok, word: &str) -> bool {
    matches!(tok, Tok::Ident(name) if name.eq_ignore_ascii_case(word))
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        self.tokens.get(self.pos).map_or(&Tok::End, |t| &t.tok)
    }

    fn at(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.text.len(), |t| t.at)
    }

    fn bump(&mut self) -> Tok {
        let tok = self.peek().clone();
        if self.pos < self.tokens.len() {
            self.pos += 1;
        }
        tok
    }

    fn error(&self, reason: &str) -> Error {
        let found = match self.peek() {
            Tok::End => "the end".to_owned(),
            _ => {
                let at = self.at();
                let end = self
                    .tokens
                    .get(self.pos + 1)
                    .map_or(self.text.len(), |t| t.at);
                format!("{:?}", self.text[at..end].trim_end())
            }
        };
        error_at(self.text, self.at(), format!("{reason}, found {found}"))
    }

    fn expect(&mut self, tok: &Tok, what: &str) -> Result<()> {
        if self.peek() == tok {
            self.bump();
            Ok(())
        } else {
            Err(self.error(&format!("expected {what}")))
        }
    }

    fn nest(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(&format!("nested deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Expr> {
        let mut left = self.and()?;
        while keyword(self.peek(), "OR") {
            self.bump();
            let right = self.and()?;
            left = Expr::Binary(BinOp::Or, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr> {
        let mut left = self.not()?;
        while keyword(self.peek(), "AND") {
            self.bump();
            let right = self.not()?;
            left = Expr::Binary(BinOp::And, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr> {
        if keyword(self.peek(), "NOT") {
            self.bump();
            self.nest()?;
            let inner = self.not()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr> {
        let mut left = self.additive()?;
        loop {
            let op = match self.peek() {
                Tok::Eq => BinOp::Eq,
                Tok::NotEq => BinOp::NotEq,
                Tok::Lt => BinOp::Lt,
                Tok::LtEq => BinOp::LtEq,
                Tok::Gt => BinOp::Gt,
                Tok::GtEq => BinOp::GtEq,
                _ => return Ok(left),
            };
            self.bump();
            let right = self.additive()?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
    }

    fn additive(&mut self) -> Result<Expr> {
        let mut left = self.multiplicative()?;
        loop {
            let op = match self.peek() {
                Tok::Plus => BinOp::Add,
                Tok::Minus => BinOp::Sub,
                _ => return Ok(left),
            };
            self.bump();
            let right = self.multiplicative()?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
    }

    fn multiplicative(&mut self) -> Result<Expr> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Tok::Star => BinOp::Mul,
                Tok::Slash => BinOp::Div,
                Tok::Percent => BinOp::Mod,
                _ => return Ok(left),
            };
            self.bump();
            let right = self.unary()?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
    }

    fn unary(&mut self) -> Result<Expr> {
        match self.peek() {
            Tok::Minus => {
                self.bump();
                self.nest()?;
                let inner = self.unary()?;
                self.depth -= 1;
                Ok(Expr::Neg(Box::new(inner)))
            }
            Tok::Plus => {
                self.bump();
                self.unary()
            }
            _ => self.primary(),
        }
    }

    fn primary(&mut self) -> Result<Expr> {
        match self.peek().clone() {
            Tok::Number(n) => {
                self.bump();
                Ok(Expr::Const(number(n)))
            }
            Tok::Str(s) => {
                self.bump();
                Ok(Expr::Const(Value::String(s)))
            }
            Tok::LBracket => Ok(Expr::Const(self.array()?)),
            Tok::LParen => {
                self.bump();
                self.nest()?;
                let inner = self.or()?;
                self.depth -= 1;
                self.expect(&Tok::RParen, "')'")?;
                Ok(inner)
            }
            Tok::Ident(name) => self.named(&name),
            _ => Err(self.error("expected a value, a property or a function")),
        }
    }

    /// A constant array `[c, …]`.
    fn array(&mut self) -> Result<Value> {
        self.expect(&Tok::LBracket, "'['")?;
        self.nest()?;
        let mut items = Vec::new();
        if self.peek() != &Tok::RBracket {
            loop {
                items.push(self.constant()?);
                if self.peek() == &Tok::Comma {
                    self.bump();
                } else {
                    break;
                }
            }
        }
        self.expect(&Tok::RBracket, "',' or ']'")?;
        self.depth -= 1;
        Ok(Value::Array(items))
    }

    fn constant(&mut self) -> Result<Value> {
        match self.peek().clone() {
            Tok::Number(n) => {
                self.bump();
                Ok(number(n))
            }
            Tok::Minus => {
                self.bump();
                match self.bump() {
                    Tok::Number(n) => Ok(number(-n)),
                    _ => {
                        self.pos -= 1;
                        Err(self.error("expected a number after '-'"))
                    }
                }
            }
            Tok::Str(s) => {
                self.bump();
                Ok(Value::String(s))
            }
            Tok::LBracket => self.array(),
            Tok::Ident(w) if w.eq_ignore_ascii_case("true") => {
                self.bump();
                Ok(Value::Bool(true))
            }
            Tok::Ident(w) if w.eq_ignore_ascii_case("false") => {
                self.bump();
                Ok(Value::Bool(false))
            }
            Tok::Ident(w) if w.eq_ignore_ascii_case("null") => {
                self.bump();
                Ok(Value::Null)
            }
            _ => Err(self.error("expected a constant in the array")),
        }
    }

    /// A keyword constant, a function call or a path.
    fn named(&mut self, name: &str) -> Result<Expr> {
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "true" | "false" => {
                self.bump();
                return Ok(Expr::Const(Value::Bool(lower == "true")));
            }
            "null" => {
                self.bump();
                return Ok(Expr::Const(Value::Null));
            }
            "undefined" => {
                self.bump();
                return Ok(Expr::Undefined);
            }
            "and" | "or" | "not" => {
                return Err(self.error("expected a value, a property or a function"));
            }
            _ => {}
        }
        if self.tokens.get(self.pos + 1).map(|t| &t.tok) == Some(&Tok::LParen) {
            return self.call(name);
        }
        self.bump();
        let root = match lower.as_str() {
            "$body" => Root::Body,
            "$twin" => Root::Twin,
            _ => match name.strip_prefix('$') {
                Some("") => return Err(error_at(self.text, self.at(), "a '$' needs a name")),
                Some(system) => Root::System(system.to_owned().into()),
                None => Root::App(name.to_owned().into()),
            },
        };
        let mut steps = Vec::new();
        loop {
            match self.peek() {
                Tok::Dot => {
                    self.bump();
                    match self.bump() {
                        Tok::Ident(field) => steps.push(Step::Field(field)),
                        _ => {
                            self.pos -= 1;
                            return Err(self.error("expected a property name after '.'"));
                        }
                    }
                }
                Tok::LBracket => {
                    self.bump();
                    match self.bump() {
                        Tok::Number(n) if n >= 0.0 && n.fract() == 0.0 && n < 1e9 => {
                            steps.push(Step::Index(n as usize));
                        }
                        _ => {
                            self.pos -= 1;
                            return Err(self.error("expected an array index (0, 1, …)"));
                        }
                    }
                    self.expect(&Tok::RBracket, "']'")?;
                }
                _ => break,
            }
        }
        Ok(Expr::Path(root, steps))
    }

    fn call(&mut self, name: &str) -> Result<Expr> {
        let at = self.at();
        let Some(&(func, canonical, min, max)) = FUNCTIONS
            .iter()
            .find(|(_, n, ..)| n.eq_ignore_ascii_case(name))
        else {
            return Err(error_at(
                self.text,
                at,
                format!("unknown function {name:?}"),
            ));
        };
        self.bump();
        self.expect(&Tok::LParen, "'('")?;
        self.nest()?;
        let mut args = Vec::new();
        if self.peek() != &Tok::RParen {
            loop {
                args.push(self.or()?);
                if self.peek() == &Tok::Comma {
                    self.bump();
                } else {
                    break;
                }
            }
        }
        self.expect(&Tok::RParen, "',' or ')'")?;
        self.depth -= 1;
        if args.len() < min || args.len() > max {
            let wanted = match (min, max) {
                (a, b) if a == b => format!("{a}"),
                (a, usize::MAX) => format!("at least {a}"),
                (a, b) => format!("{a} to {b}"),
            };
            return Err(error_at(
                self.text,
                at,
                format!("{canonical} takes {wanted} arguments, not {}", args.len()),
            ));
        }
        Ok(Expr::Call(func, args))
    }
}

pub(crate) fn number(n: f64) -> Value {
    // Whole numbers stay integers, so that printing a constant gives back the same JSON.
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}
