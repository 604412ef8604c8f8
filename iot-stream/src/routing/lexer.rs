//! Tokens of the routing query language, each with the byte offset where it starts.

use crate::error::{Error, Result};

/// A token kind.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Tok {
    /// A name: an application property (`level`), a system property or reference (`$body`,
    /// `$dt-dataschema`), a keyword (`AND`, `true`) or a function name. Keywords are told apart by
    /// the parser, case-insensitively.
    Ident(String),
    Number(f64),
    Str(String),
    Dot,
    Comma,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    End,
}

/// A token and the byte offset of its first character.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Token {
    pub(crate) tok: Tok,
    pub(crate) at: usize,
}

/// The error for `reason` at byte `at` of `text`, with its 1-based line and column (columns
/// count characters, not bytes).
pub(crate) fn error_at(text: &str, at: usize, reason: impl Into<String>) -> Error {
    let at = at.min(text.len());
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Error::Rule {
        reason: format!("{} (byte {at})", reason.into()),
        line: line as u64,
        column: column as u64,
    }
}

fn ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_' || c == '$'
}

fn ident_continue(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

/// Splits `text` into tokens; the last is [`Tok::End`].
pub(crate) fn tokenize(text: &str) -> Result<Vec<Token>> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(at, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let single = |tok| Token { tok, at };
        if ident_start(c) {
            let mut end = at;
            while let Some(&(i, c)) = chars.peek() {
                if ident_continue(c) {
                    end = i + c.len_utf8();
                    chars.next();
                } else if c == '-' && text[i + 1..].chars().next().is_some_and(ident_start) {
                    // IoT Hub's names have hyphens (`$iothub-enqueuedtime`, `$dt-subject`):
                    // a hyphen followed by a letter continues the name; `a - b` subtracts.
                    end = i + 1;
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(Token {
                tok: Tok::Ident(text[at..end].to_owned()),
                at,
            });
            continue;
        }
        if c.is_ascii_digit() {
            out.push(Token {
                tok: Tok::Number(number(text, at, &mut chars)?),
                at,
            });
            continue;
        }
        if c == '\'' || c == '"' {
            chars.next();
            out.push(Token {
                tok: Tok::Str(string(text, at, c, &mut chars)?),
                at,
            });
            continue;
        }
        chars.next();
        let next = chars.peek().map(|&(_, c)| c);
        let tok = match (c, next) {
            ('.', _) => Tok::Dot,
            (',', _) => Tok::Comma,
            ('(', _) => Tok::LParen,
            (')', _) => Tok::RParen,
            ('[', _) => Tok::LBracket,
            (']', _) => Tok::RBracket,
            ('+', _) => Tok::Plus,
            ('-', _) => Tok::Minus,
            ('*', _) => Tok::Star,
            ('/', _) => Tok::Slash,
            ('%', _) => Tok::Percent,
            ('=', _) => Tok::Eq,
            ('!', Some('=')) => {
                chars.next();
                Tok::NotEq
            }
            ('<', Some('>')) => {
                chars.next();
                Tok::NotEq
            }
            ('<', Some('=')) => {
                chars.next();
                Tok::LtEq
            }
            ('<', _) => Tok::Lt,
            ('>', Some('=')) => {
                chars.next();
                Tok::GtEq
            }
            ('>', _) => Tok::Gt,
            _ => return Err(error_at(text, at, format!("unexpected character {c:?}"))),
        };
        out.push(single(tok));
    }
    out.push(Token {
        tok: Tok::End,
        at: text.len(),
    });
    Ok(out)
}

type Chars<'a> = std::iter::Peekable<std::str::CharIndices<'a>>;

/// A decimal (`12`, `1.5`, `2e-3`) or hexadecimal (`0x1F`) number starting at `at`.
fn number(text: &str, at: usize, chars: &mut Chars<'_>) -> Result<f64> {
    let rest = &text[at..];
    if rest.len() > 2 && (rest.starts_with("0x") || rest.starts_with("0X")) {
        chars.next();
        chars.next();
        let mut end = at + 2;
        while let Some(&(i, c)) = chars.peek() {
            if !c.is_ascii_hexdigit() {
                break;
            }
            end = i + 1;
            chars.next();
        }
        let digits = &text[at + 2..end];
        return u64::from_str_radix(digits, 16)
            .map(|v| v as f64)
            .map_err(|_| error_at(text, at, "bad hexadecimal number"));
    }
    let mut end = at;
    let mut prev = ' ';
    while let Some(&(i, c)) = chars.peek() {
        let exp_sign = (c == '+' || c == '-') && (prev == 'e' || prev == 'E');
        if c.is_ascii_digit() || c == '.' || c == 'e' || c == 'E' || exp_sign {
            end = i + 1;
            prev = c;
            chars.next();
        } else {
            break;
        }
    }
    text[at..end]
        .parse::<f64>()
        .map_err(|_| error_at(text, at, format!("bad number {:?}", &text[at..end])))
}

/// A string literal whose opening `quote` was at `at`; escapes `\'`, `\"`, `\\`, `\uXXXX`.
fn string(text: &str, at: usize, quote: char, chars: &mut Chars<'_>) -> Result<String> {
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c == quote => return Ok(out),
            '\\' => {
                match chars.next() {
                    Some((_, c @ ('\'' | '"' | '\\'))) => out.push(c),
                    Some((_, 'u')) => {
                        let mut code = 0u32;
                        for _ in 0..4 {
                            let digit = chars.next().and_then(|(_, d)| d.to_digit(16)).ok_or_else(
                                || error_at(text, i, "\\u needs four hexadecimal digits"),
                            )?;
                            code = code * 16 + digit;
                        }
                        let c = char::from_u32(code)
                            .ok_or_else(|| error_at(text, i, "\\u names no character"))?;
                        out.push(c);
                    }
                    _ => return Err(error_at(text, i, "unknown escape in string")),
                }
            }
            c => out.push(c),
        }
    }
    Err(error_at(text, at, "unterminated string"))
}
