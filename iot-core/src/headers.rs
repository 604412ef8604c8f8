//! Record headers: an ordered map of strings, and the well-known names.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

mod cache;

pub use cache::HeaderCache;

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
/// keeps `'static` strings as they are, [`insert_shared`](Headers::insert_shared) shares a value
/// between records ([`insert_shared_pair`](Headers::insert_shared_pair) a name and a value, for
/// names only known at run time), [`insert_u64`](Headers::insert_u64) keeps a number's digits
/// inline, and
/// [`with_shared`](Headers::with_shared) starts a record with a whole [`SharedHeaders`] block,
/// so that cloning a record (as an in-memory log does on every read) costs a reference count
/// instead of an allocation per header.
#[derive(Clone, Default)]
pub struct Headers {
    /// Headers shared with other records, in front of `own`.
    shared: Option<SharedHeaders>,
    /// This record's own headers, after the shared ones. No name is in both. The first is
    /// kept in place: a record that adds one header (a time) to a shared block allocates
    /// nothing, neither when made nor when cloned.
    own: Own,
}

type Own = SmallVec<[(Text, Text); 1]>;

/// A block of headers that many records share (a device session's stamps, say), made once and
/// put in front of each record's own headers by [`Headers::with_shared`] for the cost of a
/// reference count.
///
/// ```
/// use iot_core::headers::{Headers, SharedHeaders};
///
/// let mut stamps = Headers::new();
/// stamps.insert_static("source", "telemetry");
/// let stamps = SharedHeaders::from(stamps);
/// let mut h = Headers::with_shared(&stamps, 1);
/// h.insert_u64("sequence", 7);
/// assert_eq!(h.iter().collect::<Vec<_>>(), [("source", "telemetry"), ("sequence", "7")]);
/// ```
#[derive(Clone)]
pub struct SharedHeaders(Arc<Block>);

/// The headers of a [`SharedHeaders`], with the bytes of their names and values counted once.
struct Block {
    pairs: Box<[(Text, Text)]>,
    bytes: usize,
}

impl From<Headers> for SharedHeaders {
    fn from(headers: Headers) -> Self {
        let pairs: Box<[(Text, Text)]> = headers.into_pairs().into_iter().collect();
        let bytes = pairs.iter().map(|(n, v)| n.len() + v.len()).sum();
        SharedHeaders(Arc::new(Block { pairs, bytes }))
    }
}

impl SharedHeaders {
    /// The headers in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.0.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

impl fmt::Debug for SharedHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Digits a number kept inline may have: enough for Unix milliseconds until the year 33658.
const INLINE_DIGITS: usize = 15;
/// The smallest number with more digits than that.
const INLINE_LIMIT: u64 = 10u64.pow(INLINE_DIGITS as u32);

/// A header name or value, owned or shared. Compared, hashed and serialized as the text it holds.
#[derive(Clone)]
enum Text {
    Static(&'static str),
    Shared(Arc<str>),
    /// The decimal digits of a number, in place (`bytes[start..]`): no allocation to make or
    /// to clone.
    Digits {
        start: u8,
        bytes: [u8; INLINE_DIGITS],
    },
    Owned(String),
}

impl Text {
    /// `n` in decimal, inline when it is short enough.
    fn number(n: u64) -> Text {
        if n >= INLINE_LIMIT {
            return Text::Owned(n.to_string());
        }
        // Right-aligned, written from the last digit, two at a time: a record's time is
        // written on every telemetry message.
        let mut bytes = [b'0'; INLINE_DIGITS];
        let mut at = INLINE_DIGITS;
        let mut rest = n;
        while rest >= 100 {
            // Below 100, so the cast keeps it.
            let pair = (rest % 100) as usize;
            rest /= 100;
            at -= 2;
            bytes[at] = b'0' + (pair / 10) as u8;
            bytes[at + 1] = b'0' + (pair % 10) as u8;
        }
        if rest >= 10 {
            at -= 2;
            bytes[at] = b'0' + (rest / 10) as u8;
            bytes[at + 1] = b'0' + (rest % 10) as u8;
        } else {
            at -= 1;
            bytes[at] = b'0' + rest as u8;
        }
        Text::Digits {
            start: at as u8,
            bytes,
        }
    }

    /// The length in bytes of [`as_str`](Text::as_str), without building it.
    fn len(&self) -> usize {
        match self {
            Text::Static(s) => s.len(),
            Text::Shared(s) => s.len(),
            Text::Digits { start, .. } => INLINE_DIGITS - usize::from(*start),
            Text::Owned(s) => s.len(),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Text::Static(s) => s,
            Text::Shared(s) => s,
            Text::Digits { start, bytes } => {
                // Only ASCII digits are ever written, so this is always valid UTF-8.
                let digits = bytes.get(usize::from(*start)..).unwrap_or_default();
                std::str::from_utf8(digits).unwrap_or_default()
            }
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
        Headers {
            shared: None,
            own: SmallVec::new_const(),
        }
    }

    /// No headers, with room for `n` before the first reallocation.
    pub fn with_capacity(n: usize) -> Self {
        Headers {
            shared: None,
            own: SmallVec::with_capacity(n),
        }
    }

    /// The headers of `shared` (not copied), with room for `n` more of this record's own.
    pub fn with_shared(shared: &SharedHeaders, n: usize) -> Self {
        Headers {
            shared: Some(shared.clone()),
            own: SmallVec::with_capacity(n),
        }
    }

    /// Sets `name` to `value`, replacing (in place) an earlier value of the same name.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        match self.slot(&name) {
            Some(slot) => *slot = Text::Owned(value.into()),
            None => self
                .own
                .push((Text::Owned(name), Text::Owned(value.into()))),
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

    /// [`insert`](Headers::insert) for a name and a value that many records share (an enrichment a
    /// router stamps on every message it sends to an endpoint): neither is copied, the record
    /// holds a reference to each.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use iot_core::Headers;
    ///
    /// let (name, value): (Arc<str>, Arc<str>) = (Arc::from("customer"), Arc::from("contoso"));
    /// let mut h = Headers::new();
    /// h.insert_shared_pair(&name, &value);
    /// assert_eq!(h.get("customer"), Some("contoso"));
    /// ```
    pub fn insert_shared_pair(&mut self, name: &Arc<str>, value: &Arc<str>) {
        let value = Text::Shared(Arc::clone(value));
        match self.slot(name) {
            Some(slot) => *slot = value,
            None => self.own.push((Text::Shared(Arc::clone(name)), value)),
        }
    }

    /// Makes room for `additional` more headers of this record's own, so that inserting that
    /// many new names does not reallocate.
    pub fn reserve(&mut self, additional: usize) {
        self.own.reserve(additional);
    }

    /// [`insert`](Headers::insert) for a `'static` name and a value made for this record: only the
    /// value is kept as given (no copy of the name).
    pub fn insert_owned(&mut self, name: &'static str, value: String) {
        self.set(name, Text::Owned(value));
    }

    /// [`insert`](Headers::insert) of `value` in decimal under a `'static` name. A number of up
    /// to 15 digits (a Unix time in milliseconds, a version) is kept inline, so neither making
    /// nor cloning the header allocates.
    ///
    /// ```
    /// let mut h = iot_core::Headers::new();
    /// h.insert_u64("enqueued", 1_700_000_000_000);
    /// assert_eq!(h.get("enqueued"), Some("1700000000000"));
    /// ```
    pub fn insert_u64(&mut self, name: &'static str, value: u64) {
        self.set(name, Text::number(value));
    }

    fn set(&mut self, name: &'static str, value: Text) {
        match self.slot(name) {
            Some(slot) => *slot = value,
            None => self.own.push((Text::Static(name), value)),
        }
    }

    /// The value of `name` to overwrite. A name in the shared block makes the block this
    /// record's own first (rare: producers share what they do not change).
    fn slot(&mut self, name: &str) -> Option<&mut Text> {
        if self
            .shared
            .as_ref()
            .is_some_and(|s| s.0.pairs.iter().any(|(n, _)| n.as_str() == name))
        {
            self.unshare();
        }
        self.own
            .iter_mut()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, v)| v)
    }

    /// Copies the shared block in front of the own headers.
    fn unshare(&mut self) {
        if let Some(shared) = self.shared.take() {
            let mut pairs = Own::with_capacity(shared.0.pairs.len() + self.own.len());
            pairs.extend(shared.0.pairs.iter().cloned());
            pairs.extend(self.own.drain(..));
            self.own = pairs;
        }
    }

    fn into_pairs(mut self) -> Own {
        self.unshare();
        self.own
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        // Compared in place, lengths first, and only the found value turned into text: routing
        // looks several names up in every message.
        let shared: &[(Text, Text)] = self.shared.as_ref().map_or(&[], |s| &s.0.pairs);
        shared
            .iter()
            .chain(self.own.iter())
            .find(|(n, _)| n.len() == name.len() && n.as_str() == name)
            .map(|(_, v)| v.as_str())
    }

    /// Removes `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        self.slot(name)?;
        let at = self.own.iter().position(|(n, _)| n.as_str() == name)?;
        Some(self.own.remove(at).1.into_string())
    }

    /// The headers in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        let shared: &[(Text, Text)] = self.shared.as_ref().map_or(&[], |s| &s.0.pairs);
        Iter {
            first: shared.iter(),
            then: self.own.iter(),
        }
    }

    /// The bytes of every name and value, plus `per_header` for each header: what a record's
    /// size counts for its headers. Cheaper than summing over [`iter`](Headers::iter), which
    /// a log does for every record it appends and reads.
    pub(crate) fn size_bytes(&self, per_header: usize) -> usize {
        let shared = self
            .shared
            .as_ref()
            .map_or(0, |s| s.0.bytes + per_header * s.0.pairs.len());
        let own: usize = self
            .own
            .iter()
            .map(|(n, v)| per_header + n.len() + v.len())
            .sum();
        shared + own
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.shared.as_ref().map_or(0, |s| s.0.pairs.len()) + self.own.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The shared block's headers, then the record's own.
struct Iter<'a> {
    first: std::slice::Iter<'a, (Text, Text)>,
    then: std::slice::Iter<'a, (Text, Text)>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let (n, v) = self.first.next().or_else(|| self.then.next())?;
        Some((n.as_str(), v.as_str()))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.first.len() + self.then.len();
        (n, Some(n))
    }
}

impl ExactSizeIterator for Iter<'_> {}

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
        Ok(Headers {
            shared: None,
            own: pairs
                .into_iter()
                .map(|(n, v)| (Text::Owned(n), Text::Owned(v)))
                .collect(),
        })
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

    #[test]
    fn shared_blocks_behave_as_copied_headers() {
        let mut stamps = Headers::new();
        stamps.insert_static(SUBJECT, "temp");
        stamps.insert(STREAM_ID, "s-1");
        let stamps = SharedHeaders::from(stamps);
        assert_eq!(
            format!("{stamps:?}"),
            r#"[("subject", "temp"), ("stream-id", "s-1")]"#
        );
        let mut h = Headers::with_shared(&stamps, 2);
        h.insert_u64(VERSION, 3);
        h.insert(MESSAGE_ID, "m-1");
        let copied: Headers = [
            (SUBJECT, "temp"),
            (STREAM_ID, "s-1"),
            (VERSION, "3"),
            (MESSAGE_ID, "m-1"),
        ]
        .into_iter()
        .collect();
        assert_eq!(h, copied);
        assert_eq!(h.len(), 4);
        assert_eq!(h.iter().len(), 4);
        assert_eq!(h.get(STREAM_ID), Some("s-1"));
        assert_eq!(h.get(VERSION), Some("3"));
        assert_eq!(
            serde_json::to_string(&h).unwrap(),
            serde_json::to_string(&copied).unwrap()
        );
        // Changing a shared name changes this record only, in place.
        let mut changed = h.clone();
        changed.insert(STREAM_ID, "s-2");
        assert_eq!(
            changed.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            [SUBJECT, STREAM_ID, VERSION, MESSAGE_ID]
        );
        assert_eq!(changed.get(STREAM_ID), Some("s-2"));
        assert_eq!(h.get(STREAM_ID), Some("s-1"));
        let mut removed = h.clone();
        assert_eq!(removed.remove(SUBJECT).as_deref(), Some("temp"));
        assert_eq!(removed.len(), 3);
        assert_eq!(removed.get(SUBJECT), None);
        assert_eq!(removed.remove(SUBJECT), None);
        assert_eq!(h, copied);
        // A block of a block is flat.
        let again = SharedHeaders::from(h);
        assert_eq!(again.iter().len(), 4);
        assert!(Headers::with_shared(&again, 0).iter().eq(copied.iter()));
    }

    #[test]
    fn shared_pairs_behave_as_copied_headers() {
        let (name, value): (Arc<str>, Arc<str>) = (Arc::from("customer"), Arc::from("contoso"));
        let mut h: Headers = [(SUBJECT, "temp"), ("customer", "old")]
            .into_iter()
            .collect();
        h.reserve(2);
        h.insert_shared_pair(&name, &value);
        let hub: Arc<str> = Arc::from("hub");
        h.insert_shared_pair(&hub, &value);
        let copied: Headers = [
            (SUBJECT, "temp"),
            ("customer", "contoso"),
            ("hub", "contoso"),
        ]
        .into_iter()
        .collect();
        // Replaced in place, then appended; equal, printed and serialized as copied text.
        assert_eq!(h, copied);
        assert_eq!(format!("{h:?}"), format!("{copied:?}"));
        assert_eq!(
            serde_json::to_string(&h).unwrap(),
            serde_json::to_string(&copied).unwrap()
        );
        assert_eq!(h.size_bytes(8), copied.size_bytes(8));
        assert_eq!(h.clone().remove("hub").as_deref(), Some("contoso"));
        // A name in a shared block is replaced in this record only.
        let block = SharedHeaders::from(copied.clone());
        let mut on_block = Headers::with_shared(&block, 0);
        on_block.insert_shared_pair(&name, &hub);
        assert_eq!(on_block.get("customer"), Some("hub"));
        assert_eq!(on_block.len(), 3);
        assert!(Headers::with_shared(&block, 0).iter().eq(copied.iter()));
    }

    #[test]
    fn reserve_keeps_the_headers() {
        let mut h: Headers = [(SUBJECT, "temp")].into_iter().collect();
        let before = h.clone();
        h.reserve(4);
        assert_eq!(h, before);
        h.reserve(0);
        assert_eq!(h, before);
    }

    #[test]
    fn size_bytes_counts_every_name_and_value() {
        let mut stamps = Headers::new();
        stamps.insert_static(SUBJECT, "temp");
        let mut h = Headers::with_shared(&SharedHeaders::from(stamps), 1);
        h.insert_u64(VERSION, 1_700_000_000_000);
        h.insert(MESSAGE_ID, "m-1");
        let by_iter: usize = h.iter().map(|(n, v)| 8 + n.len() + v.len()).sum();
        assert_eq!(h.size_bytes(8), by_iter);
        assert_eq!(Headers::new().size_bytes(8), 0);
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        for n in [
            0,
            7,
            10,
            99,
            100,
            101,
            1_700_000_000_000,
            999_999_999_999_999,
            1_000_000_000_000_000,
            u64::MAX,
        ] {
            let mut h = Headers::new();
            h.insert_u64(VERSION, n);
            assert_eq!(h.get(VERSION), Some(n.to_string().as_str()));
            assert_eq!(h.size_bytes(0), VERSION.len() + n.to_string().len());
            assert_eq!(h.clone().remove(VERSION), Some(n.to_string()));
        }
    }
}
