//! Record headers: an ordered map of strings, and the well-known names.

use std::fmt;
use std::sync::Arc;

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
///
/// Besides [`insert`](Headers::insert), which copies its strings, a producer that stamps the same
/// names and values on every record can avoid the copies: [`insert_static`](Headers::insert_static)
/// keeps `'static` strings as they are, and [`insert_shared`](Headers::insert_shared) shares a
/// value between records, so that cloning a record (as an in-memory log does on every read) costs
/// a reference count instead of an allocation per header.
#[derive(Clone, Default)]
pub struct Headers(Vec<(Text, Text)>);

/// A header name or value, owned or shared. Compared, hashed and serialized as the text it holds.
#[derive(Clone)]
enum Text {
    Static(&'static str),
    Shared(Arc<str>),
    Owned(String),
}

impl Text {
    fn as_str(&self) -> &str {
        match self {
            Text::Static(s) => s,
            Text::Shared(s) => s,
            Text::Owned(s) => s,
        }
    }

    fn into_string(self) -> String {
        match self {
            Text::Owned(s) => s,
            other => other.as_str().to_owned(),
        }
    }
}

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Headers(Vec::new())
    }

    /// No headers, with room for `n` before the first reallocation.
    pub fn with_capacity(n: usize) -> Self {
        Headers(Vec::with_capacity(n))
    }

    /// Sets `name` to `value`, replacing (in place) an earlier value of the same name.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        match self.slot(&name) {
            Some(slot) => *slot = Text::Owned(value.into()),
            None => self.0.push((Text::Owned(name), Text::Owned(value.into()))),
        }
    }

    /// [`insert`](Headers::insert) for a name and a value that live for the whole program
    /// (constants): neither is copied.
    pub fn insert_static(&mut self, name: &'static str, value: &'static str) {
        self.set(name, Text::Static(value));
    }

    /// [`insert`](Headers::insert) for a value shared between many records (a device id stamped
    /// on each of its messages): the record holds a reference to it.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use iot_core::Headers;
    ///
    /// let device: Arc<str> = Arc::from("sensor-7");
    /// let mut h = Headers::new();
    /// h.insert_shared("device", &device);
    /// assert_eq!(h.get("device"), Some("sensor-7"));
    /// ```
    pub fn insert_shared(&mut self, name: &'static str, value: &Arc<str>) {
        self.set(name, Text::Shared(Arc::clone(value)));
    }

    /// [`insert`](Headers::insert) for a `'static` name and a value made for this record: only the
    /// value is kept as given (no copy of the name).
    pub fn insert_owned(&mut self, name: &'static str, value: String) {
        self.set(name, Text::Owned(value));
    }

    fn set(&mut self, name: &'static str, value: Text) {
        match self.slot(name) {
            Some(slot) => *slot = value,
            None => self.0.push((Text::Static(name), value)),
        }
    }

    fn slot(&mut self, name: &str) -> Option<&mut Text> {
        self.0
            .iter_mut()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, v)| v)
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, v)| v.as_str())
    }

    /// Removes `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let at = self.0.iter().position(|(n, _)| n.as_str() == name)?;
        Some(self.0.remove(at).1.into_string())
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

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Headers {}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Serialized as a sequence of `[name, value]` pairs, however the strings are held.
impl Serialize for Headers {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let pairs = Vec::<(String, String)>::deserialize(deserializer)?;
        Ok(Headers(
            pairs
                .into_iter()
                .map(|(n, v)| (Text::Owned(n), Text::Owned(v)))
                .collect(),
        ))
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

    #[test]
    fn static_shared_and_owned_headers_behave_as_copied_ones() {
        let shared: Arc<str> = Arc::from("dev-1");
        let mut fast = Headers::with_capacity(4);
        fast.insert_static(SUBJECT, "temp");
        fast.insert_shared(STREAM_ID, &shared);
        fast.insert_owned(MESSAGE_ID, "m-1".to_owned());
        fast.insert(SUBJECT, "humidity");
        let copied: Headers = [
            (SUBJECT, "humidity"),
            (STREAM_ID, "dev-1"),
            (MESSAGE_ID, "m-1"),
        ]
        .into_iter()
        .collect();
        assert_eq!(fast, copied);
        assert_eq!(format!("{fast:?}"), format!("{copied:?}"));
        let json = serde_json::to_string(&fast).unwrap();
        assert_eq!(
            json,
            r#"[["subject","humidity"],["stream-id","dev-1"],["message-id","m-1"]]"#
        );
        assert_eq!(serde_json::from_str::<Headers>(&json).unwrap(), copied);
        assert_eq!(fast.remove(STREAM_ID).as_deref(), Some("dev-1"));
        fast.insert_shared(SUBJECT, &shared);
        assert_eq!(fast.get(SUBJECT), Some("dev-1"));
        assert_eq!(fast.len(), 2);
    }
}
