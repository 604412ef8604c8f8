//! Record headers: an ordered map of strings, and the well-known names.

use serde::{Deserialize, Serialize};

/// The stream discriminator naming what a record is about (for example `temperature`).
pub const SUBJECT: &str = "subject";
/// The stream a record belongs to, when one device sends several kinds of data.
pub const STREAM_ID: &str = "stream-id";
/// The schema version of the payload.
pub const VERSION: &str = "$version";
/// The payload's media type (`application/json`, ...).
pub const CONTENT_TYPE: &str = "content-type";
/// The payload's encoding (`utf-8`, `gzip`, ...).
pub const CONTENT_ENCODING: &str = "content-encoding";
/// An id the sender gave the message, for de-duplication.
pub const MESSAGE_ID: &str = "message-id";
/// The id of the message this one answers or relates to.
pub const CORRELATION_ID: &str = "correlation-id";

/// The well-known header names, in the order above.
pub const WELL_KNOWN: [&str; 7] = [
    SUBJECT,
    STREAM_ID,
    VERSION,
    CONTENT_TYPE,
    CONTENT_ENCODING,
    MESSAGE_ID,
    CORRELATION_ID,
];

/// An ordered map from header name to value.
///
/// Order is insertion order and is preserved by every log; inserting an existing name replaces its
/// value in place. Names are case-sensitive. Small (a vector), because records carry few headers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Headers(Vec::new())
    }

    /// Sets `name` to `value`, replacing (in place) an earlier value of the same name.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Removes `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let at = self.0.iter().position(|(n, _)| n == name)?;
        Some(self.0.remove(at).1)
    }

    /// The headers in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<N: Into<String>, V: Into<String>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut headers = Headers::new();
        for (n, v) in iter {
            headers.insert(n, v);
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_keeps_order_and_replaces_in_place() {
        let mut h = Headers::new();
        h.insert(SUBJECT, "temp");
        h.insert(CONTENT_TYPE, "application/json");
        h.insert(SUBJECT, "humidity");
        let pairs: Vec<_> = h.iter().collect();
        assert_eq!(
            pairs,
            vec![(SUBJECT, "humidity"), (CONTENT_TYPE, "application/json")]
        );
        assert_eq!(h.remove(SUBJECT).as_deref(), Some("humidity"));
        assert_eq!(h.get(SUBJECT), None);
        assert_eq!(h.len(), 1);
    }
}
