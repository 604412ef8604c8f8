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
use crate::record::DeviceRecord;
use crate::value::OwnedSortKey;

/// Default and largest page size.
pub const DEFAULT_PAGE_SIZE: usize = 1000;

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
    pub(crate) fn new(items: Vec<DeviceRecord>, continuation: Option<String>) -> Self {
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
        Token { v: 1, q, n, k, id }
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
        if token.v != 1 {
            return Err(invalid("unknown version"));
        }
        if token.q != fingerprint || token.k.len() != order_keys {
            return Err(invalid("it belongs to another query"));
        }
        Ok(token)
    }
}
