//! Pages of query results and the continuation tokens that link them.
//!
//! A token records where the previous page ended — the last record's sort keys and device id —
//! and how many records were returned so far (for `LIMIT`). The next page starts strictly after
//! that position, so records written between two pages are neither skipped nor repeated unless
//! they moved across the position. Tokens are opaque to callers (URL-safe base64 of JSON).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
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
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Page {
    /// The records, in the query's order.
    pub items: Vec<DeviceRecord>,
    /// Pass this back for the next page; `None` when there are no more results.
    pub continuation: Option<String>,
}

impl Page {
    /// A page of `items`, followed by the page `continuation` names (`None` for the last page).
    /// Registries outside this crate make their tokens with
    /// [`PageToken`](crate::PageToken).
    pub fn new(items: Vec<DeviceRecord>, continuation: Option<String>) -> Self {
        Page {
            items,
            continuation,
        }
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
