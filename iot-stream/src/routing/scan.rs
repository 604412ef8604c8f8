//! A fast scan of the common telemetry body: one flat JSON object whose members are strings
//! without escapes, integers, `true`, `false` or `null`
//! (`{"temperature": 42, "site": "s3", "ok": true}`).
//!
//! The routing processor reads a few top-level members of every message's body. serde_json's
//! deserializer with a visitor per member costs several thousand instructions for such a body;
//! this scan, a byte loop over the text, a fraction of that. It only accepts what it can read
//! exactly as serde_json reads it, and gives up (`None`) on anything else — a nested value, a
//! fraction or an exponent, an escape, a control character, `-0`, a long number, a syntax
//! error — and the caller then scans with serde_json, so every body reads the same either way
//! (a proptest in `tests.rs` holds the two to the same slots).

use std::borrow::Cow;

use serde_json::Number;

use crate::rules::project::Field;

/// Digits an integer may have here: any such number fits in an `i64` and a `u64`.
const MAX_DIGITS: usize = 18;

/// Index of `name` in `names` (sorted). The routing processor's lists are short (the members
/// its routes read), and comparing lengths first then bytes is cheaper than a binary search's
/// ordered comparisons; long lists are searched.
pub(crate) fn find(names: &[String], name: &str) -> Option<usize> {
    if names.len() > 16 {
        return names.binary_search_by(|n| n.as_str().cmp(name)).ok();
    }
    names.iter().position(|n| n == name)
}

/// The slots of the top-level members `names` (sorted) of `text` (`None`: absent), when `text`
/// is a flat object this scan reads; `None` when it is not (nothing is then known about it).
/// A repeated member's last value counts, as in serde_json.
pub(crate) fn flat_object<'a>(
    text: &'a str,
    names: &[String],
    slots: &mut [Option<Field<'a>>],
) -> Option<()> {
    let mut s = Scanner {
        text,
        bytes: text.as_bytes(),
        at: 0,
    };
    s.skip_whitespace();
    s.eat(b'{')?;
    s.skip_whitespace();
    if !s.eat_if(b'}') {
        loop {
            s.eat(b'"')?;
            let key = s.string()?;
            s.skip_whitespace();
            s.eat(b':')?;
            s.skip_whitespace();
            let value = s.scalar()?;
            if let Some(i) = find(names, key) {
                *slots.get_mut(i)? = Some(value);
            }
            s.skip_whitespace();
            if s.eat_if(b'}') {
                break;
            }
            s.eat(b',')?;
            s.skip_whitespace();
        }
    }
    s.skip_whitespace();
    (s.at == s.bytes.len()).then_some(())
}

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    /// JSON's whitespace, as serde_json skips it.
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn eat_if(&mut self, byte: u8) -> bool {
        let hit = self.peek() == Some(byte);
        self.at += usize::from(hit);
        hit
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        self.eat_if(byte).then_some(())
    }

    /// The rest of a string whose opening quote is read: its text, when it has no escape and no
    /// control character (serde_json refuses those; this scan leaves escapes to it).
    fn string(&mut self) -> Option<&'a str> {
        let start = self.at;
        // One tight loop to the first quote, backslash or control character.
        let len = self
            .bytes
            .get(start..)?
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        let end = start + len;
        if self.bytes.get(end) != Some(&b'"') {
            return None;
        }
        // Both ends are at an ASCII quote, so on character boundaries of the text.
        let text = self.text.get(start..end)?;
        self.at = end + 1;
        Some(text)
    }

    /// A member's value: a string, an integer, `true`, `false` or `null`.
    fn scalar(&mut self) -> Option<Field<'a>> {
        match self.peek()? {
            b'"' => {
                self.at += 1;
                self.string().map(|s| Field::Str(Cow::Borrowed(s)))
            }
            b't' => self.word("true", Field::Bool(true)),
            b'f' => self.word("false", Field::Bool(false)),
            b'n' => self.word("null", Field::Null),
            b'-' => {
                self.at += 1;
                // `-0` is a float in serde_json (negative zero): left to it.
                let n = self.digits().filter(|&n| n != 0)?;
                // At most 18 digits: below i64::MAX, so the negation fits.
                Some(Field::Number(Number::from(-i64::try_from(n).ok()?)))
            }
            b'0'..=b'9' => self.digits().map(|n| Field::Number(Number::from(n))),
            _ => None,
        }
    }

    fn word(&mut self, word: &str, value: Field<'a>) -> Option<Field<'a>> {
        let end = self.at + word.len();
        (self.bytes.get(self.at..end)? == word.as_bytes()).then_some(())?;
        self.at = end;
        self.end_of_value()?;
        Some(value)
    }

    /// An integer without sign, as JSON writes it (no leading zero), ending the value.
    fn digits(&mut self) -> Option<u64> {
        let start = self.at;
        let mut n: u64 = 0;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            n = n * 10 + u64::from(d - b'0');
            self.at += 1;
            if self.at - start > MAX_DIGITS {
                return None;
            }
        }
        let len = self.at - start;
        if len == 0 || (len > 1 && self.bytes.get(start) == Some(&b'0')) {
            return None;
        }
        self.end_of_value()?;
        Some(n)
    }

    /// A scalar ends at whitespace, `,` or `}`; anything else (a fraction, an exponent, a
    /// letter) is not this scan's to read.
    fn end_of_value(&self) -> Option<()> {
        matches!(self.peek()?, b' ' | b'\t' | b'\n' | b'\r' | b',' | b'}').then_some(())
    }
}
