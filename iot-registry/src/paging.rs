//! Pages of query results and the continuation tokens that link them.
//!
//! A token records where the previous page ended — the last record's sort keys and device id —
//! and how many records were returned so far (for `LIMIT`). The next page starts strictly after
//! that position, so records written between two pages are neither skipped nor repeated unless
//! they moved across the position. Tokens are opaque to callers (URL-safe base64 of JSON).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use std::fmt;

use iot_core::DeviceId;

use crate::error::{Error, Result};
use crate::file::binary::BatchDecoder;
use crate::query::Query;
use crate::record::DeviceRecord;
use crate::value::{OwnedSortKey, SortKey};

/// Default and largest page size.
pub const DEFAULT_PAGE_SIZE: usize = 1000;

/// The token format: 2 carries numbers as `f64` bits (1, their decimal form, could be read back
/// a unit in the last place off).
const TOKEN_VERSION: u8 = 2;

/// Longest continuation token accepted (a token holds at most a few sort keys and an id).
const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// Which page of a query to return.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageRequest {
    /// Most records in the page (1 to the registry's `max_page_size`). Default 1 000.
    pub max_items: usize,
    /// The token of the previous page, or `None` for the first page.
    pub continuation: Option<String>,
}

impl Default for PageRequest {
    fn default() -> Self {
        PageRequest {
            max_items: DEFAULT_PAGE_SIZE,
            continuation: None,
        }
    }
}

impl PageRequest {
    /// The first page, with at most `max_items` records.
    pub fn first(max_items: usize) -> Self {
        PageRequest {
            max_items,
            continuation: None,
        }
    }

    /// The page after the one that returned `continuation`.
    pub fn next(max_items: usize, continuation: String) -> Self {
        PageRequest {
            max_items,
            continuation: Some(continuation),
        }
    }
}

/// One page of query results.
///
/// A page of this crate's registries keeps its records *encoded* (one buffer for the whole page,
/// in the compact form the registry stores them in) and decodes them only when asked: a
/// `DeviceRecord` is a tree of JSON values, about seventeen allocations for a typical device,
/// and building 500 of them is most of what a selective query would otherwise cost. Counting
/// the results, reading their device ids or following the continuation token decode nothing.
///
/// ```
/// # use iot_registry::{MemoryRegistry, PageRequest, Query, Registry};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// # let registry = MemoryRegistry::new();
/// let q = Query::parse("SELECT * FROM devices WHERE metadata.floor = 3")?;
/// let page = registry.query(&q, &PageRequest::first(100)).await?;
/// println!("{} devices", page.len());                 // no decoding
/// for id in page.device_ids() { println!("{id}"); }   // no decoding
/// for record in page.into_records()? {                // decoded here
///     println!("{} {:?}", record.device_id, record.metadata.get("room"));
/// }
/// # Ok::<(), iot_registry::Error>(())
/// # }).unwrap();
/// ```
///
/// Registries outside this crate build pages of decoded records with [`Page::new`].
#[derive(Clone)]
#[non_exhaustive]
pub struct Page {
    items: Items,
    /// Pass this back for the next page; `None` when there are no more results.
    pub continuation: Option<String>,
}

#[derive(Clone)]
enum Items {
    Decoded(Vec<DeviceRecord>),
    Encoded(EncodedRecords),
}

/// The records of a page as the engine stores them: each record's encoding copied into one
/// buffer (two allocations for the page), with each one's device id (shared with the engine's
/// id map: a reference count, not a copy) and where its encoding ends.
#[derive(Clone, Default)]
pub(crate) struct EncodedRecords {
    bytes: Vec<u8>,
    records: Vec<(DeviceId, usize)>,
}

impl EncodedRecords {
    pub(crate) fn with_capacity(records: usize, bytes: usize) -> Self {
        EncodedRecords {
            bytes: Vec::with_capacity(bytes),
            records: Vec::with_capacity(records),
        }
    }

    /// Appends a record: `bytes` must be a valid encoding of the record of `id` (the engine's
    /// stored bytes are, see `crate::stored`).
    pub(crate) fn push(&mut self, id: &DeviceId, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
        self.records.push((id.clone(), self.bytes.len()));
    }

    fn iter(&self) -> impl ExactSizeIterator<Item = (&DeviceId, &[u8])> + '_ {
        let mut start = 0;
        self.records.iter().map(move |(id, end)| {
            let bytes = self.bytes.get(start..*end).unwrap_or_default();
            start = *end;
            (id, bytes)
        })
    }

    fn decode(&self) -> Result<Vec<DeviceRecord>> {
        let mut decoder = BatchDecoder::new();
        let mut out = Vec::with_capacity(self.records.len());
        for (id, bytes) in self.iter() {
            // The bytes were validated when the registry stored them, so this does not fail
            // unless that invariant is broken; then it is reported, not a panic.
            out.push(decoder.decode(bytes, id).map_err(|reason| Error::Corrupt {
                path: std::path::PathBuf::from("<page>"),
                position: 0,
                reason: format!("record of {id} unreadable: {reason}"),
            })?);
        }
        Ok(out)
    }
}

impl Page {
    /// A page of `items`, followed by the page `continuation` names (`None` for the last page).
    /// Registries outside this crate make their tokens with
    /// [`PageToken`](crate::PageToken).
    pub fn new(items: Vec<DeviceRecord>, continuation: Option<String>) -> Self {
        Page {
            items: Items::Decoded(items),
            continuation,
        }
    }

    /// A page of records kept encoded (this crate's registries).
    pub(crate) fn encoded(items: EncodedRecords, continuation: Option<String>) -> Self {
        Page {
            items: Items::Encoded(items),
            continuation,
        }
    }

    /// How many records the page holds.
    pub fn len(&self) -> usize {
        match &self.items {
            Items::Decoded(v) => v.len(),
            Items::Encoded(e) => e.records.len(),
        }
    }

    /// Whether the page holds no record (the last page of a query may be empty).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The records' device ids, in the page's order, without decoding the records.
    pub fn device_ids(&self) -> impl ExactSizeIterator<Item = &DeviceId> + '_ {
        let (decoded, encoded): (&[DeviceRecord], &[(DeviceId, usize)]) = match &self.items {
            Items::Decoded(v) => (v, &[]),
            Items::Encoded(e) => (&[], &e.records),
        };
        PageIds {
            decoded: decoded.iter(),
            encoded: encoded.iter(),
        }
    }

    /// The records, decoded, leaving the page as it is.
    ///
    /// Fails only with [`Error::Corrupt`] if a stored record cannot be read (which the
    /// registries' checks on every write and every reopen rule out).
    pub fn records(&self) -> Result<Vec<DeviceRecord>> {
        match &self.items {
            Items::Decoded(v) => Ok(v.clone()),
            Items::Encoded(e) => e.decode(),
        }
    }

    /// The records, decoded (a page built with [`Page::new`] hands its vector back as it is).
    /// Errors as [`Page::records`].
    pub fn into_records(self) -> Result<Vec<DeviceRecord>> {
        match self.items {
            Items::Decoded(v) => Ok(v),
            Items::Encoded(e) => e.decode(),
        }
    }
}

/// [`Page::device_ids`]: one of the two slices is empty.
struct PageIds<'a> {
    decoded: std::slice::Iter<'a, DeviceRecord>,
    encoded: std::slice::Iter<'a, (DeviceId, usize)>,
}

impl<'a> Iterator for PageIds<'a> {
    type Item = &'a DeviceId;

    fn next(&mut self) -> Option<&'a DeviceId> {
        match self.decoded.next() {
            Some(r) => Some(&r.device_id),
            None => self.encoded.next().map(|(id, _)| id),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.decoded.len() + self.encoded.len();
        (n, Some(n))
    }
}

impl ExactSizeIterator for PageIds<'_> {}

/// Compares the records (decoded: an encoded page equals a page of the same records built with
/// [`Page::new`]) and the continuation token. A page whose records cannot be read equals none.
impl PartialEq for Page {
    fn eq(&self, other: &Self) -> bool {
        if self.continuation != other.continuation || self.len() != other.len() {
            return false;
        }
        match (self.records(), other.records()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }
}

/// Shows the device ids, not the records (which a page may hold thousands of).
impl fmt::Debug for Page {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let encoded = matches!(self.items, Items::Encoded(_));
        f.debug_struct("Page")
            .field("len", &self.len())
            .field("encoded", &encoded)
            .field("device_ids", &self.device_ids().collect::<Vec<_>>())
            .field("continuation", &self.continuation)
            .finish()
    }
}

/// The decoded content of a continuation token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Token {
    /// Format version.
    v: u8,
    /// The query's fingerprint: a token only continues the query that made it.
    pub(crate) q: u32,
    /// Records returned so far.
    pub(crate) n: u64,
    /// Sort keys of the last record returned.
    pub(crate) k: Vec<OwnedSortKey>,
    /// Device id of the last record returned.
    pub(crate) id: String,
}

impl Token {
    pub(crate) fn new(q: u32, n: u64, k: Vec<OwnedSortKey>, id: String) -> Self {
        Token {
            v: TOKEN_VERSION,
            q,
            n,
            k,
            id,
        }
    }

    pub(crate) fn encode(&self) -> String {
        // Serialising plain data into a Vec cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(json)
    }

    pub(crate) fn decode(text: &str, fingerprint: u32, order_keys: usize) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidContinuation {
            reason: reason.to_owned(),
        };
        if text.len() > MAX_TOKEN_BYTES {
            return Err(invalid("too long"));
        }
        let json = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| invalid("not base64"))?;
        let token: Token = serde_json::from_slice(&json).map_err(|_| invalid("malformed"))?;
        if token.v != TOKEN_VERSION {
            return Err(invalid("unknown version"));
        }
        if token.q != fingerprint || token.k.len() != order_keys {
            return Err(invalid("it belongs to another query"));
        }
        Ok(token)
    }
}

/// A continuation token as a registry makes and reads it, for registries outside this crate
/// that page the way this crate's do: a token names the position of the last record returned
/// (its `ORDER BY` values and device id) and how many records were returned so far, and only
/// continues the query that made it.
///
/// A backend answering page `n + 1` decodes the caller's token with [`decode`](Self::decode),
/// returns the matching records that come strictly [after](Self::is_after) it (in a database:
/// `WHERE (sort values, device id) > (token's)` in the query's order, see
/// [`last_sort_values`](Self::last_sort_values)), at most `LIMIT` minus
/// [`returned`](Self::returned) of them, and ends a page that has more after it with
/// [`PageToken::after`] its last record, [encoded](Self::encode).
///
/// ```
/// use iot_core::{DeviceId, Timestamp};
/// use iot_registry::{DeviceDocument, DeviceRecord, ETag, PageToken, Query};
///
/// let q = Query::parse("SELECT * FROM devices ORDER BY metadata.floor")?;
/// let record = |id: &str, floor: u32| {
///     let doc = DeviceDocument::with_metadata(serde_json::json!({ "floor": floor })).unwrap();
///     DeviceRecord::new(DeviceId::new(id).unwrap(), doc, ETag::new("1"), Timestamp::now(), Timestamp::now())
/// };
/// let text = PageToken::after(&q, &record("b", 2), 1).encode();
/// let token = PageToken::decode(&q, &text)?;
/// assert_eq!((token.returned(), token.last_device_id()), (1, "b"));
/// assert!(token.is_after(&q, &record("a", 3)));
/// assert!(!token.is_after(&q, &record("a", 2)));
/// assert!(PageToken::decode(&Query::parse("SELECT * FROM devices")?, &text).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct PageToken(Token);

/// A value of a record as `ORDER BY` sorts it, in a [`PageToken`]: undefined (or an object or
/// array) sorts first, then null, booleans, numbers, strings.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum SortValue<'a> {
    /// The path is not defined in the record, or holds an object or array.
    Undefined,
    /// `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// A number.
    Number(f64),
    /// A string.
    String(&'a str),
}

impl PageToken {
    /// The token of a page of `query` whose last record is `last`, after which `returned`
    /// records have been returned in all (this page's included).
    pub fn after(query: &Query, last: &DeviceRecord, returned: u64) -> Self {
        let keys = query
            .sort_keys(last)
            .into_iter()
            .map(SortKey::to_owned_key)
            .collect();
        PageToken(Token::new(
            query.fingerprint,
            returned,
            keys,
            last.device_id.as_str().to_owned(),
        ))
    }

    /// Reads a caller's token, refusing one that is malformed or made by another query with
    /// [`Error::InvalidContinuation`].
    pub fn decode(query: &Query, text: &str) -> Result<Self> {
        Token::decode(text, query.fingerprint, query.order_by.len()).map(PageToken)
    }

    /// The token as the caller receives it (URL-safe, opaque).
    pub fn encode(&self) -> String {
        self.0.encode()
    }

    /// How many records the pages before returned in all (for `LIMIT`).
    pub fn returned(&self) -> u64 {
        self.0.n
    }

    /// The device id of the last record returned.
    pub fn last_device_id(&self) -> &str {
        &self.0.id
    }

    /// The `ORDER BY` values of the last record returned, one per key.
    pub fn last_sort_values(&self) -> impl ExactSizeIterator<Item = SortValue<'_>> + '_ {
        self.0.k.iter().map(|k| match k.as_key() {
            SortKey::Undefined => SortValue::Undefined,
            SortKey::Null => SortValue::Null,
            SortKey::Bool(b) => SortValue::Bool(b),
            SortKey::Num(n) => SortValue::Number(n.get()),
            SortKey::Str(s) => SortValue::String(s),
        })
    }

    /// Whether `record` comes strictly after the token's position in `query`'s order, so that
    /// it belongs on a later page.
    pub fn is_after(&self, query: &Query, record: &DeviceRecord) -> bool {
        let keys = query.sort_keys(record);
        let last: Vec<SortKey<'_>> = self.0.k.iter().map(OwnedSortKey::as_key).collect();
        query.cmp_positions(
            (&keys, record.device_id.as_str()),
            (&last, self.0.id.as_str()),
        ) == std::cmp::Ordering::Greater
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{DeviceDocument, ETag};
    use crate::stored::Stored;
    use iot_core::Timestamp;
    use serde_json::json;

    fn record(id: &str, n: u64) -> DeviceRecord {
        let doc = DeviceDocument::with_metadata(json!({"n": n, "room": format!("R{n}")}))
            .expect("an object");
        DeviceRecord::new(
            DeviceId::new(id).expect("a valid id"),
            doc,
            ETag::new(format!("{n:x}")),
            Timestamp::from_unix_micros(n),
            Timestamp::from_unix_micros(n + 1),
        )
    }

    fn encoded(records: &[DeviceRecord]) -> EncodedRecords {
        let mut page = EncodedRecords::with_capacity(records.len(), 0);
        for r in records {
            let stored = Stored::encode(r);
            page.push(stored.device_id(), stored.bytes());
        }
        page
    }

    /// An encoded page reads as the page of the same records built with `Page::new`.
    #[test]
    fn an_encoded_page_reads_as_its_records() {
        let records: Vec<DeviceRecord> = (0..5).map(|n| record(&format!("d{n}"), n)).collect();
        let lazy = Page::encoded(encoded(&records), Some("t".into()));
        let plain = Page::new(records.clone(), Some("t".into()));
        for page in [&lazy, &plain] {
            assert_eq!(page.len(), 5);
            assert!(!page.is_empty());
            assert_eq!(page.device_ids().len(), 5);
            let ids: Vec<&str> = page.device_ids().map(DeviceId::as_str).collect();
            assert_eq!(ids, ["d0", "d1", "d2", "d3", "d4"]);
            assert_eq!(page.records().expect("records"), records);
        }
        assert_eq!(lazy, plain);
        assert_ne!(lazy, Page::new(records[..4].to_vec(), Some("t".into())));
        assert_ne!(lazy, Page::new(records.clone(), None));
        assert_eq!(lazy.clone().into_records().expect("records"), records);
        assert_eq!(plain.into_records().expect("records"), records);
        let empty = Page::encoded(EncodedRecords::default(), None);
        assert!(empty.is_empty());
        assert_eq!(empty.into_records().expect("records"), Vec::new());
        // Debug names the records, not their contents.
        let shown = format!("{lazy:?}");
        assert!(shown.contains("d3") && !shown.contains("R3"), "{shown}");
    }

    /// A damaged encoding (which the registries never store) is an error, not a panic.
    #[test]
    fn a_damaged_record_is_reported() {
        let r = record("d0", 1);
        let stored = Stored::encode(&r);
        let bytes = stored.bytes();
        let mut page = EncodedRecords::default();
        page.push(
            stored.device_id(),
            bytes.get(..bytes.len() - 3).expect("shorter"),
        );
        let page = Page::encoded(page, None);
        assert_eq!(page.len(), 1);
        assert!(matches!(page.records(), Err(Error::Corrupt { .. })));
        assert!(matches!(page.into_records(), Err(Error::Corrupt { .. })));
    }
}
