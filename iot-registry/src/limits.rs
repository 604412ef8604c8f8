//! Limits on documents and queries, and the checks that enforce them without recursion.

use std::io;

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::record::DeviceDocument;

/// The deepest nesting a configuration may allow. Code that walks documents recursively (merge,
/// indexing, serialisation) relies on it to stay far from the end of the stack. The same bound as
/// `iot_core::json`'s, which does the merging.
pub const MAX_SUPPORTED_DEPTH: usize = iot_core::json::MAX_SUPPORTED_DEPTH;

pub use iot_core::json::depth_at_most;

/// Limits every registry enforces on the documents written to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DocumentLimits {
    /// Largest document: compact JSON of `metadata` and `tags` together. Default 64 KiB.
    pub max_document_bytes: usize,
    /// Deepest nesting of objects and arrays, counting `metadata` (or `tags`) itself as 1.
    /// Default 16, at most [`MAX_SUPPORTED_DEPTH`].
    pub max_depth: usize,
    /// Longest key, in bytes. Default 128.
    pub max_key_bytes: usize,
    /// Longest state reference, in bytes. Default 1 024.
    pub max_state_ref_bytes: usize,
}

impl Default for DocumentLimits {
    fn default() -> Self {
        DocumentLimits {
            max_document_bytes: 64 * 1024,
            max_depth: 16,
            max_key_bytes: 128,
            max_state_ref_bytes: 1024,
        }
    }
}

/// Chainable setters: the struct is `non_exhaustive`, so callers outside this crate start from
/// [`Default`] and change what they need.
impl DocumentLimits {
    /// Sets [`max_document_bytes`](Self::max_document_bytes).
    pub fn max_document_bytes(mut self, max_document_bytes: usize) -> Self {
        self.max_document_bytes = max_document_bytes;
        self
    }

    /// Sets [`max_depth`](Self::max_depth).
    pub fn max_depth(mut self, max_depth: usize) -> Self {
        self.max_depth = max_depth;
        self
    }

    /// Sets [`max_key_bytes`](Self::max_key_bytes).
    pub fn max_key_bytes(mut self, max_key_bytes: usize) -> Self {
        self.max_key_bytes = max_key_bytes;
        self
    }

    /// Sets [`max_state_ref_bytes`](Self::max_state_ref_bytes).
    pub fn max_state_ref_bytes(mut self, max_state_ref_bytes: usize) -> Self {
        self.max_state_ref_bytes = max_state_ref_bytes;
        self
    }
}

/// Limits on query text, checked before any syntax tree is built, so that no query can exhaust
/// the stack or the heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueryLimits {
    /// Longest query text, in bytes. Default 64 KiB.
    pub max_query_bytes: usize,
    /// Most tokens (words, literals, operators, punctuation). Default 4 096 — room for about a
    /// thousand comparisons.
    pub max_tokens: usize,
    /// Deepest nesting of parentheses and `NOT`s, passed to the parser's recursion limit.
    /// Default 48.
    pub max_nesting: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            max_query_bytes: 64 * 1024,
            max_tokens: 4096,
            max_nesting: 48,
        }
    }
}

/// Chainable setters: the struct is `non_exhaustive`, so callers outside this crate start from
/// [`Default`] and change what they need.
impl QueryLimits {
    /// Sets [`max_query_bytes`](Self::max_query_bytes).
    pub fn max_query_bytes(mut self, max_query_bytes: usize) -> Self {
        self.max_query_bytes = max_query_bytes;
        self
    }

    /// Sets [`max_tokens`](Self::max_tokens).
    pub fn max_tokens(mut self, max_tokens: usize) -> Self {
        self.max_tokens = max_tokens;
        self
    }

    /// Sets [`max_nesting`](Self::max_nesting).
    pub fn max_nesting(mut self, max_nesting: usize) -> Self {
        self.max_nesting = max_nesting;
        self
    }
}

impl DocumentLimits {
    /// Refuses a nonsensical configuration.
    pub fn validate(&self) -> Result<()> {
        if self.max_document_bytes == 0 || self.max_depth == 0 || self.max_key_bytes == 0 {
            return Err(Error::Config {
                reason: format!("document limits must be positive, got {self:?}"),
            });
        }
        if self.max_depth > MAX_SUPPORTED_DEPTH {
            return Err(Error::Config {
                reason: format!(
                    "max_depth {} is above the supported {MAX_SUPPORTED_DEPTH}",
                    self.max_depth
                ),
            });
        }
        Ok(())
    }

    /// Checks a document against the limits and the key rules. Never recurses, so any input is
    /// safe, however deep.
    pub fn check_document(&self, doc: &DeviceDocument) -> Result<()> {
        self.check_object("metadata", &doc.metadata)?;
        self.check_object("tags", &doc.tags)?;
        if let Some(state_ref) = &doc.state_ref {
            if state_ref.is_empty() || state_ref.len() > self.max_state_ref_bytes {
                return Err(Error::invalid_doc(
                    "stateRef",
                    format!(
                        "must be 1 to {} bytes long, is {}",
                        self.max_state_ref_bytes,
                        state_ref.len()
                    ),
                ));
            }
            if state_ref.chars().any(char::is_control) {
                return Err(Error::invalid_doc(
                    "stateRef",
                    "contains a control character",
                ));
            }
        }
        let mut counter = SizeCounter {
            written: 0,
            limit: self.max_document_bytes,
        };
        // Depth is bounded (checked above), so serde's recursive writer is safe here.
        let within = serde_json::to_writer(&mut counter, &doc.metadata)
            .and_then(|()| serde_json::to_writer(&mut counter, &doc.tags));
        if within.is_err() || counter.written > self.max_document_bytes {
            return Err(Error::DocumentTooLarge {
                size: counter.written,
                limit: self.max_document_bytes,
            });
        }
        Ok(())
    }

    fn check_object(&self, root: &str, object: &Map<String, Value>) -> Result<()> {
        // Explicit stack of (container, depth of the container, path of the container).
        let mut stack: Vec<(&Value, usize, String)> = Vec::new();
        self.check_keys(root, object)?;
        if self.max_depth < 1 {
            return Err(too_deep(1, self.max_depth, root));
        }
        for (key, value) in object {
            if is_container(value) {
                stack.push((value, 2, format!("{root}.{key}")));
            }
        }
        while let Some((value, depth, path)) = stack.pop() {
            if depth > self.max_depth {
                return Err(too_deep(depth, self.max_depth, &path));
            }
            match value {
                Value::Object(map) => {
                    self.check_keys(&path, map)?;
                    for (key, child) in map {
                        if is_container(child) {
                            stack.push((child, depth + 1, format!("{path}.{key}")));
                        }
                    }
                }
                Value::Array(items) => {
                    for (i, child) in items.iter().enumerate() {
                        if is_container(child) {
                            stack.push((child, depth + 1, format!("{path}[{i}]")));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn check_keys(&self, path: &str, map: &Map<String, Value>) -> Result<()> {
        for key in map.keys() {
            check_key(key, self.max_key_bytes).map_err(|reason| {
                Error::invalid_doc(path, format!("key {:?}: {reason}", shorten(key)))
            })?;
        }
        Ok(())
    }
}

/// Whether `key` may appear in a document: the query language addresses fields as dot-separated
/// paths, so a key may not contain `.` or be empty.
pub(crate) fn check_key(key: &str, max_bytes: usize) -> std::result::Result<(), String> {
    if key.is_empty() {
        return Err("keys may not be empty".into());
    }
    if key.len() > max_bytes {
        return Err(format!("is longer than {max_bytes} bytes"));
    }
    if key.contains('.') {
        return Err("keys may not contain '.', the path separator".into());
    }
    if key.chars().any(char::is_control) {
        return Err("keys may not contain control characters".into());
    }
    Ok(())
}

fn is_container(v: &Value) -> bool {
    matches!(v, Value::Object(_) | Value::Array(_))
}

fn too_deep(depth: usize, limit: usize, path: &str) -> Error {
    Error::DocumentTooDeep {
        depth,
        limit,
        path: shorten(path),
    }
}

/// Bounds what an error repeats of user input.
pub(crate) fn shorten(s: &str) -> String {
    const SHOWN: usize = 200;
    if s.len() <= SHOWN {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(SHOWN).collect();
    out.push('…');
    out
}

/// Counts bytes written, failing once past the limit so that a huge document is not serialised
/// in full just to be refused.
struct SizeCounter {
    written: usize,
    limit: usize,
}

impl io::Write for SizeCounter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written = self.written.saturating_add(buf.len());
        if self.written > self.limit {
            return Err(io::Error::other("document too large"));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The setters are the only way other crates can build these (`non_exhaustive`): each must
    // set its own field. Every value differs from the defaults and from the others.
    #[test]
    fn each_limits_setter_sets_its_own_field() {
        let built = DocumentLimits::default()
            .max_document_bytes(1)
            .max_depth(2)
            .max_key_bytes(3)
            .max_state_ref_bytes(4);
        let expected = DocumentLimits {
            max_document_bytes: 1,
            max_depth: 2,
            max_key_bytes: 3,
            max_state_ref_bytes: 4,
        };
        assert_eq!(built, expected);
        let built = QueryLimits::default()
            .max_query_bytes(1)
            .max_tokens(2)
            .max_nesting(3);
        let expected = QueryLimits {
            max_query_bytes: 1,
            max_tokens: 2,
            max_nesting: 3,
        };
        assert_eq!(built, expected);
    }
    use serde_json::json;

    fn doc(metadata: Value) -> DeviceDocument {
        DeviceDocument::with_metadata(metadata).unwrap_or_default()
    }

    #[test]
    fn refuses_bad_keys() {
        let limits = DocumentLimits::default();
        for bad in [json!({"a.b": 1}), json!({"": 1}), json!({"x": {"a\nb": 1}})] {
            assert!(matches!(
                limits.check_document(&doc(bad)),
                Err(Error::InvalidDocument { .. })
            ));
        }
        assert!(
            limits
                .check_document(&doc(json!({"a": {"b": [1, {"c": 2}]}})))
                .is_ok()
        );
    }

    #[test]
    fn depth_counts_metadata_as_one() {
        let limits = DocumentLimits {
            max_depth: 2,
            ..DocumentLimits::default()
        };
        assert!(limits.check_document(&doc(json!({"a": {"b": 1}}))).is_ok());
        assert!(matches!(
            limits.check_document(&doc(json!({"a": {"b": {"c": 1}}}))),
            Err(Error::DocumentTooDeep {
                depth: 3,
                limit: 2,
                ..
            })
        ));
        assert_eq!(depth_at_most(&json!(1), 10), 0);
        assert_eq!(depth_at_most(&json!([[[]]]), 10), 3);
    }

    #[test]
    fn size_limit_is_enforced() {
        let limits = DocumentLimits {
            max_document_bytes: 100,
            ..DocumentLimits::default()
        };
        let big = doc(json!({"blob": "x".repeat(10_000)}));
        match limits.check_document(&big) {
            Err(Error::DocumentTooLarge { size, limit: 100 }) => assert!(size > 100),
            other => panic!("unexpected {other:?}"),
        }
    }
}
