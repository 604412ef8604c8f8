//! The binary encoding of a record in a snapshot (format `IOTREG03`), in the log,
//! and in memory (the engine keeps every record encoded, see `crate::stored`).
//!
//! Reopening a large registry is dominated by turning snapshot bytes back into records; JSON
//! spends most of that on tokenising text and parsing numbers. This encoding keeps the same
//! information (every `serde_json` value, numbers with their integer or float representation)
//! with explicit lengths, so decoding is copying.
//!
//! ```text
//! record = str(deviceId) str(etag) created:u64 updated:u64 stateRef:(0 | 1 str)
//!          object(metadata) object(tags)
//! str    = len:u32 utf-8 bytes
//! value  = 0 null | 1 false | 2 true | 3 i64 | 4 u64 | 5 f64 | 6 str
//!        | 7 count:u32 value* (array) | 8 object
//! object = count:u32 (str value)*
//! ```
//! All integers little-endian. The bytes come from a checksummed frame, but decoding still trusts
//! nothing: lengths are checked against the bytes left, nesting is bounded by
//! [`MAX_DECODE_DEPTH`] (so no input can exhaust the stack), strings are validated as UTF-8, device
//! ids as device ids, and every error is reported, never a panic.

use iot_core::{DeviceId, Timestamp};
use serde_json::{Map, Number, Value};

use crate::limits::MAX_SUPPORTED_DEPTH;
use crate::record::{DeviceRecord, ETag};
use crate::value::{Node, ScalarRef};

mod batch;

pub(crate) use batch::BatchDecoder;

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const I64: u8 = 3;
const U64: u8 = 4;
const F64: u8 = 5;
const STR: u8 = 6;
const ARRAY: u8 = 7;
const OBJECT: u8 = 8;

/// Deepest nesting the decoder accepts: documents are at most [`MAX_SUPPORTED_DEPTH`] deep, and
/// writes are checked against that before they are stored.
const MAX_DECODE_DEPTH: usize = MAX_SUPPORTED_DEPTH + 1;

/// Appends the encoding of `record` to `out`.
pub(crate) fn encode_record(out: &mut Vec<u8>, record: &DeviceRecord) {
    put_str(out, record.device_id.as_str());
    put_str(out, record.etag.as_str());
    out.extend_from_slice(&record.created.as_unix_micros().to_le_bytes());
    out.extend_from_slice(&record.updated.as_unix_micros().to_le_bytes());
    match &record.state_ref {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
    put_object(out, &record.metadata);
    put_object(out, &record.tags);
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // Documents are bounded far below 4 GiB by the document limits.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn put_object(out: &mut Vec<u8>, map: &Map<String, Value>) {
    put_len(out, map.len());
    for (key, value) in map {
        put_str(out, key);
        put_value(out, value);
    }
}

/// Recursion is bounded by the document depth limit, checked before any record is stored.
fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.push(NULL),
        Value::Bool(false) => out.push(FALSE),
        Value::Bool(true) => out.push(TRUE),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                out.push(U64);
                out.extend_from_slice(&u.to_le_bytes());
            } else if let Some(i) = n.as_i64() {
                out.push(I64);
                out.extend_from_slice(&i.to_le_bytes());
            } else {
                out.push(F64);
                out.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_le_bytes());
            }
        }
        Value::String(s) => {
            out.push(STR);
            put_str(out, s);
        }
        Value::Array(items) => {
            out.push(ARRAY);
            put_len(out, items.len());
            for item in items {
                put_value(out, item);
            }
        }
        Value::Object(map) => {
            out.push(OBJECT);
            put_object(out, map);
        }
    }
}

/// Decodes one record; the error says what is wrong.
#[cfg(test)]
pub(crate) fn decode_record(bytes: &[u8]) -> Result<DeviceRecord, String> {
    decode_with_id(bytes, None)
}

/// [`decode_record`] for a record whose device id is known already (`id`, which must be the
/// one encoded): the id is shared, not parsed and validated again.
pub(crate) fn decode_with_id(bytes: &[u8], id: Option<&DeviceId>) -> Result<DeviceRecord, String> {
    let mut r = Reader { bytes };
    let device_id = match id {
        Some(id) => {
            r.raw_str()?;
            id.clone()
        }
        None => DeviceId::new(r.str()?).map_err(|e| format!("bad device id: {e}"))?,
    };
    let etag = ETag::new(r.str()?);
    let created = Timestamp::from_unix_micros(r.u64()?);
    let updated = Timestamp::from_unix_micros(r.u64()?);
    let state_ref = match r.byte()? {
        0 => None,
        1 => Some(r.str()?.to_owned()),
        other => return Err(format!("bad stateRef marker {other}")),
    };
    let metadata = r.object(1)?;
    let tags = r.object(1)?;
    if !r.bytes.is_empty() {
        return Err(format!("{} bytes after the record", r.bytes.len()));
    }
    Ok(DeviceRecord {
        device_id,
        metadata,
        tags,
        state_ref,
        etag,
        created,
        updated,
    })
}

/// The fixed fields of an encoded record, borrowed from its bytes; `metadata` and `tags` are
/// still encoded (see [`lookup`] and [`walk_documents`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fields<'a> {
    pub(crate) state_ref: Option<&'a str>,
    /// The encoded metadata object followed by the encoded tags object.
    documents: &'a [u8],
}

/// Reads the fixed fields of an encoded record without decoding its documents.
pub(crate) fn fields(bytes: &[u8]) -> Result<Fields<'_>, String> {
    let mut r = Reader { bytes };
    // The device id and the etag are not needed here (a stored record keeps its id decoded).
    r.raw_str()?;
    r.raw_str()?;
    r.array8()?;
    r.array8()?;
    let state_ref = match r.byte()? {
        0 => None,
        1 => Some(r.str()?),
        other => return Err(format!("bad stateRef marker {other}")),
    };
    Ok(Fields {
        state_ref,
        documents: r.bytes,
    })
}

/// Checks everything [`decode_record`] checks (lengths, tags, UTF-8, finite numbers, nesting,
/// nothing after the record) without building anything; returns the device id. Records kept
/// encoded in memory are checked once so, and read lazily afterwards.
pub(crate) fn validate(bytes: &[u8]) -> Result<&str, String> {
    let mut r = Reader { bytes };
    let device_id = r.str()?;
    r.str()?;
    r.array8()?;
    r.array8()?;
    match r.byte()? {
        0 => {}
        1 => {
            r.str()?;
        }
        other => return Err(format!("bad stateRef marker {other}")),
    }
    r.skip_object(1, true)?;
    r.skip_object(1, true)?;
    if !r.bytes.is_empty() {
        return Err(format!("{} bytes after the record", r.bytes.len()));
    }
    Ok(device_id)
}

/// Which of a record's documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Document {
    Metadata,
    Tags,
}

impl<'a> Fields<'a> {
    /// The encoded object of `which`.
    fn document(&self, which: Document) -> Result<Reader<'a>, String> {
        let mut r = Reader {
            bytes: self.documents,
        };
        if which == Document::Tags {
            r.skip_object(1, false)?;
        }
        Ok(r)
    }

    /// What `segments` (at least one) find in document `which`: `None` when undefined.
    pub(crate) fn lookup(
        &self,
        which: Document,
        segments: &[String],
    ) -> Result<Option<Node<'a>>, String> {
        let mut r = self.document(which)?;
        let mut depth = 1;
        let mut segments = segments.iter().peekable();
        while let Some(segment) = segments.next() {
            let count = r.len()?;
            let mut found = false;
            for _ in 0..count {
                let key = r.raw_str()?;
                if key != segment.as_bytes() {
                    r.skip_value(depth, false)?;
                    continue;
                }
                if segments.peek().is_none() {
                    return r.node().map(Some);
                }
                if r.byte()? != OBJECT {
                    return Ok(None);
                }
                found = true;
                break;
            }
            if !found {
                return Ok(None);
            }
            depth += 1;
            if depth > MAX_DECODE_DEPTH {
                return Err("document nested too deep".into());
            }
        }
        // Unreachable with at least one segment: the loop returns.
        Ok(None)
    }

    /// Calls `f` with the path (`prefix.key.key…`) and node of every entry of document
    /// `which`, parents before children, in stored order; `keep(path)` false skips an entry and
    /// everything below it. `buf` holds the prefix and is left as it was.
    pub(crate) fn walk_documents(
        &self,
        which: Document,
        buf: &mut String,
        keep: &dyn Fn(&str) -> bool,
        f: &mut dyn FnMut(&str, Node<'a>),
    ) -> Result<(), String> {
        let mut r = self.document(which)?;
        r.walk_object(1, buf, keep, f)
    }
}

/// The fewest bytes an encoded value takes (a tag alone: null, false, true).
const MIN_VALUE_BYTES: usize = 1;

/// The fewest bytes an object entry takes (a key's length and a value's tag).
const MIN_ENTRY_BYTES: usize = 4 + MIN_VALUE_BYTES;

#[derive(Clone, Copy)]
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.bytes.len() {
            return Err("record cut short".into());
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, String> {
        let (first, rest) = self
            .bytes
            .split_first()
            .ok_or_else(|| "record cut short".to_owned())?;
        self.bytes = rest;
        Ok(*first)
    }

    fn array8(&mut self) -> Result<[u8; 8], String> {
        let (head, rest) = self
            .bytes
            .split_first_chunk::<8>()
            .ok_or_else(|| "record cut short".to_owned())?;
        self.bytes = rest;
        Ok(*head)
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array8()?))
    }

    /// A count or length, which can never exceed the bytes left (each item takes at least one
    /// byte), so a damaged count cannot make the decoder allocate absurdly.
    fn len(&mut self) -> Result<usize, String> {
        let (head, rest) = self
            .bytes
            .split_first_chunk::<4>()
            .ok_or_else(|| "record cut short".to_owned())?;
        self.bytes = rest;
        let len = u32::from_le_bytes(*head) as usize;
        if len > self.bytes.len() {
            return Err(format!("length {len} exceeds the record"));
        }
        Ok(len)
    }

    fn raw_str(&mut self) -> Result<&'a [u8], String> {
        let len = self.len()?;
        self.take(len)
    }

    /// Skips one value; `check` also validates what is skipped (strings as UTF-8, numbers
    /// finite). `depth` is that of the container holding the value.
    fn skip_value(&mut self, depth: usize, check: bool) -> Result<(), String> {
        match self.byte()? {
            NULL | FALSE | TRUE => {}
            I64 | U64 => {
                self.array8()?;
            }
            F64 => {
                let f = f64::from_le_bytes(self.array8()?);
                if check && !f.is_finite() {
                    return Err("number is not finite".into());
                }
            }
            STR if check => {
                self.str()?;
            }
            STR => {
                self.raw_str()?;
            }
            ARRAY => {
                if depth + 1 > MAX_DECODE_DEPTH {
                    return Err("document nested too deep".into());
                }
                for _ in 0..self.len()? {
                    self.skip_value(depth + 1, check)?;
                }
            }
            OBJECT => self.skip_object(depth + 1, check)?,
            other => return Err(format!("unknown value tag {other}")),
        }
        Ok(())
    }

    fn skip_object(&mut self, depth: usize, check: bool) -> Result<(), String> {
        if depth > MAX_DECODE_DEPTH {
            return Err("document nested too deep".into());
        }
        for _ in 0..self.len()? {
            if check {
                self.str()?;
            } else {
                self.raw_str()?;
            }
            self.skip_value(depth, check)?;
        }
        Ok(())
    }

    /// The node of the next value, which is consumed only up to its tag when it is an object
    /// or an array.
    fn node(&mut self) -> Result<Node<'a>, String> {
        Ok(match self.byte()? {
            NULL => Node::Scalar(ScalarRef::Null),
            FALSE => Node::Scalar(ScalarRef::Bool(false)),
            TRUE => Node::Scalar(ScalarRef::Bool(true)),
            // The same f64 forms serde_json's `as_f64` gives.
            I64 => Node::Scalar(ScalarRef::Num(i64::from_le_bytes(self.array8()?) as f64)),
            U64 => Node::Scalar(ScalarRef::Num(u64::from_le_bytes(self.array8()?) as f64)),
            F64 => Node::Scalar(ScalarRef::Num(f64::from_le_bytes(self.array8()?))),
            STR => Node::Scalar(ScalarRef::Str(self.str()?)),
            ARRAY | OBJECT => Node::Composite,
            other => return Err(format!("unknown value tag {other}")),
        })
    }

    /// See [`Fields::walk_documents`]; `depth` is that of the object.
    fn walk_object(
        &mut self,
        depth: usize,
        buf: &mut String,
        keep: &dyn Fn(&str) -> bool,
        f: &mut dyn FnMut(&str, Node<'a>),
    ) -> Result<(), String> {
        if depth > MAX_DECODE_DEPTH {
            return Err("document nested too deep".into());
        }
        for _ in 0..self.len()? {
            let key = self.str()?;
            let len = buf.len();
            buf.push('.');
            buf.push_str(key);
            if keep(buf) {
                let tag = self.bytes.first().copied();
                let node = self.node()?;
                f(buf, node);
                match tag {
                    Some(OBJECT) => self.walk_object(depth + 1, buf, keep, f)?,
                    Some(ARRAY) => {
                        if depth + 1 > MAX_DECODE_DEPTH {
                            return Err("document nested too deep".into());
                        }
                        for _ in 0..self.len()? {
                            self.skip_value(depth + 1, false)?;
                        }
                    }
                    _ => {}
                }
            } else {
                self.skip_value(depth, false)?;
            }
            buf.truncate(len);
        }
        Ok(())
    }

    fn str(&mut self) -> Result<&'a str, String> {
        let len = self.len()?;
        std::str::from_utf8(self.take(len)?).map_err(|_| "string is not UTF-8".to_owned())
    }

    fn object(&mut self, depth: usize) -> Result<Map<String, Value>, String> {
        if depth > MAX_DECODE_DEPTH {
            return Err("document nested too deep".into());
        }
        let count = self.len()?;
        // Entries are gathered and the map built once: `Map` is a B-tree, and building it from
        // a list (sorted first: encodings written from a `Map` already are, so that is one
        // comparison an entry) costs less than inserting key by key, which compares each new
        // key with every key already in the node. A key repeated by damaged bytes keeps its
        // last value, as inserting would. Reserve no more than the bytes left can hold.
        let mut entries = Vec::with_capacity(count.min(self.bytes.len() / MIN_ENTRY_BYTES));
        for _ in 0..count {
            let key = self.str()?.to_owned();
            let value = self.value(depth)?;
            entries.push((key, value));
        }
        Ok(entries.into_iter().collect())
    }

    /// `depth` is that of the container holding the value.
    fn value(&mut self, depth: usize) -> Result<Value, String> {
        Ok(match self.byte()? {
            NULL => Value::Null,
            FALSE => Value::Bool(false),
            TRUE => Value::Bool(true),
            I64 => Value::Number(i64::from_le_bytes(self.array8()?).into()),
            U64 => Value::Number(u64::from_le_bytes(self.array8()?).into()),
            F64 => Value::Number(
                Number::from_f64(f64::from_le_bytes(self.array8()?))
                    .ok_or_else(|| "number is not finite".to_owned())?,
            ),
            STR => Value::String(self.str()?.to_owned()),
            ARRAY => {
                if depth + 1 > MAX_DECODE_DEPTH {
                    return Err("document nested too deep".into());
                }
                let count = self.len()?;
                // The count comes from the file: reserve no more than the bytes left can hold
                // (a damaged count must not make the decoder allocate by it).
                let mut items = Vec::with_capacity(count.min(self.bytes.len() / MIN_VALUE_BYTES));
                for _ in 0..count {
                    items.push(self.value(depth + 1)?);
                }
                Value::Array(items)
            }
            OBJECT => Value::Object(self.object(depth + 1)?),
            other => return Err(format!("unknown value tag {other}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(metadata: Value, state_ref: Option<&str>) -> DeviceRecord {
        let Value::Object(metadata) = metadata else {
            panic!("an object")
        };
        DeviceRecord {
            device_id: DeviceId::new("dev-1").expect("valid id"),
            metadata,
            tags: Map::from_iter([("owner".to_owned(), json!("ops"))]),
            state_ref: state_ref.map(str::to_owned),
            etag: ETag::new("1f"),
            created: Timestamp::from_unix_micros(1),
            updated: Timestamp::from_unix_micros(u64::MAX),
        }
    }

    #[test]
    fn every_kind_of_value_round_trips() {
        let doc = json!({
            "n": null, "t": true, "f": false, "u": u64::MAX, "i": -5, "x": 1.5, "neg0": -0.0,
            "s": "é\u{0}\"", "a": [1, "two", [3.5, null], {"k": []}], "o": {"p": {"q": {}}},
        });
        for state_ref in [None, Some("state/1")] {
            let r = record(doc.clone(), state_ref);
            let mut bytes = Vec::new();
            encode_record(&mut bytes, &r);
            assert_eq!(decode_record(&bytes), Ok(r.clone()));
            // Numbers keep their representation: JSON of the decoded record is unchanged.
            let decoded = decode_record(&bytes).map(|d| serde_json::to_string(&d).ok());
            assert_eq!(decoded, Ok(serde_json::to_string(&r).ok()));
        }
    }

    #[test]
    fn damaged_bytes_are_errors_not_panics() {
        let r = record(json!({"a": [1, {"b": "c"}], "d": 2.5}), Some("s"));
        let mut bytes = Vec::new();
        encode_record(&mut bytes, &r);
        for cut in 0..bytes.len() {
            assert!(decode_record(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for at in 0..bytes.len() {
            for bit in [0x01, 0x80, 0xff] {
                let mut damaged = bytes.clone();
                if let Some(b) = damaged.get_mut(at) {
                    *b ^= bit;
                }
                // Any outcome but a panic is acceptable: some flips still decode.
                let _ = decode_record(&damaged);
            }
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(decode_record(&trailing).is_err());
    }

    #[test]
    fn nesting_beyond_the_bound_is_refused() {
        // metadata = {"k": [[[ … ]]]} far deeper than any document may be.
        let mut bytes = Vec::new();
        put_str(&mut bytes, "dev-1");
        put_str(&mut bytes, "1");
        bytes.extend_from_slice(&[0; 16]);
        bytes.push(0);
        put_len(&mut bytes, 1);
        put_str(&mut bytes, "k");
        for _ in 0..100_000 {
            bytes.push(ARRAY);
            put_len(&mut bytes, 1);
        }
        bytes.push(NULL);
        put_len(&mut bytes, 0);
        assert_eq!(
            decode_record(&bytes).map(|_| ()),
            Err("document nested too deep".to_owned())
        );
    }
}
