//! The indexes as a snapshot stores them, so that reopening a registry loads them instead of
//! deriving them again from every record.
//!
//! The section is a sequence of parts, each a frame body; a path with many keys is split over
//! several consecutive parts so that no frame grows past the frame limit:
//!
//! ```text
//! part    = str(path) first:u8 [defined] count:u32 (key posting)*
//!           -- first = 1 on a path's first part, which alone carries `defined`
//! defined = bitmap
//! key     = 0 null | 1 false | 2 true | 3 f64 | 4 str
//! posting = 0 slot:u32 | 1 bitmap
//! bitmap  = len:u32 roaring bytes (the portable roaring format)
//! str     = len:u32 utf-8 bytes
//! ```
//!
//! All integers little-endian. Frames are checksummed, but loading still checks what the
//! planner relies on: keys strictly ascending within a path, numbers finite, no empty posting,
//! every posting inside `defined`, `defined` inside the live slots, no path listed twice, and no
//! path the current configuration leaves unindexed. A section that fails any check is reported
//! as an error (the caller then rebuilds the indexes from the records); nothing panics.

use std::collections::BTreeMap;

use roaring::RoaringBitmap;

use super::{Indexes, PathIndex, Posting, is_indexed};
use crate::value::{F64Key, ScalarKey};

/// A part is closed once it passes this size: one key more (a string value is bounded by the
/// document limit, a posting by the number of slots) keeps it far below the frame limit.
const PART_BYTES: usize = 1 << 20;

const KEY_NULL: u8 = 0;
const KEY_FALSE: u8 = 1;
const KEY_TRUE: u8 = 2;
const KEY_NUM: u8 = 3;
const KEY_STR: u8 = 4;
const POSTING_ONE: u8 = 0;
const POSTING_MANY: u8 = 1;

/// A path's index while its parts are put together: name, `defined`, keys so far.
type Assembling = (Box<str>, RoaringBitmap, Vec<(ScalarKey, Posting)>);

/// One decoded part of the section.
#[derive(Debug)]
pub(crate) struct Part {
    path: Box<str>,
    defined: Option<RoaringBitmap>,
    values: Vec<(ScalarKey, Posting)>,
}

impl Indexes {
    /// Calls `emit` with each part of the index section, paths in name order.
    pub(crate) fn encode_section<E>(
        &self,
        mut emit: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut paths: Vec<(&str, &PathIndex)> =
            self.paths.iter().map(|(p, i)| (&**p, i)).collect();
        paths.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut body = Vec::with_capacity(PART_BYTES + (1 << 16));
        for (path, index) in paths {
            let mut keys = index.values.iter().peekable();
            let mut first = true;
            // A path with no keys (only objects, arrays) still has its first part.
            while first || keys.peek().is_some() {
                body.clear();
                put_str(&mut body, path);
                body.push(u8::from(first));
                if first {
                    put_bitmap(&mut body, &index.defined);
                }
                let count_at = body.len();
                put_len(&mut body, 0);
                let mut count = 0u32;
                while body.len() < PART_BYTES
                    && let Some((key, posting)) = keys.next()
                {
                    put_key(&mut body, key);
                    match posting {
                        Posting::One(slot) => {
                            body.push(POSTING_ONE);
                            body.extend_from_slice(&slot.to_le_bytes());
                        }
                        Posting::Many(bitmap) => {
                            body.push(POSTING_MANY);
                            put_bitmap(&mut body, bitmap);
                        }
                    }
                    count += 1;
                }
                if let Some(place) = body.get_mut(count_at..count_at + 4) {
                    place.copy_from_slice(&count.to_le_bytes());
                }
                emit(&body)?;
                first = false;
            }
        }
        Ok(())
    }

    /// Indexes from the decoded `parts` of a section, for a registry whose live slots are
    /// `live`; the error says which check failed.
    pub(crate) fn from_section(
        unindexed: Vec<String>,
        parts: Vec<Part>,
        live: &RoaringBitmap,
    ) -> Result<Self, String> {
        let mut paths = std::collections::HashMap::new();
        let mut current: Option<Assembling> = None;
        let mut finish = |done: Option<Assembling>| {
            let Some((path, defined, values)) = done else {
                return Ok(());
            };
            if !defined.is_subset(live) || defined.is_empty() {
                return Err(format!("index of {path}: bad set of records"));
            }
            for (_, posting) in &values {
                let inside = match posting {
                    Posting::One(slot) => defined.contains(*slot),
                    Posting::Many(b) => !b.is_empty() && b.is_subset(&defined),
                };
                if !inside {
                    return Err(format!("index of {path}: a posting outside its records"));
                }
            }
            let values: BTreeMap<ScalarKey, Posting> = values.into_iter().collect();
            if paths
                .insert(path.clone(), PathIndex { defined, values })
                .is_some()
            {
                return Err(format!("index of {path} appears twice"));
            }
            Ok(())
        };
        for part in parts {
            if !is_indexed(&unindexed, &part.path) {
                return Err(format!("{} is indexed but configured not to be", part.path));
            }
            match (part.defined, current.as_mut()) {
                (Some(defined), _) => {
                    finish(current.take())?;
                    current = Some((part.path, defined, part.values));
                }
                (None, Some((path, _, values))) if *path == part.path => {
                    if let (Some((last, _)), Some((next, _))) = (values.last(), part.values.first())
                        && last >= next
                    {
                        return Err(format!("index of {path}: keys out of order"));
                    }
                    values.extend(part.values);
                }
                (None, _) => return Err(format!("index of {}: part out of place", part.path)),
            }
        }
        finish(current.take())?;
        Ok(Indexes { paths, unindexed })
    }
}

/// Decodes one part; the error says what is wrong.
pub(crate) fn decode_part(bytes: &[u8]) -> Result<Part, String> {
    let mut r = Cursor { bytes };
    let path: Box<str> = r.str()?.into();
    let defined = match r.byte()? {
        0 => None,
        1 => Some(r.bitmap()?),
        other => return Err(format!("bad part marker {other}")),
    };
    let count = r.len()?;
    // The count comes from the file: reserve no more than the bytes left can hold.
    let mut values: Vec<(ScalarKey, Posting)> =
        Vec::with_capacity(count.min(r.bytes.len() / MIN_VALUE_BYTES));
    for _ in 0..count {
        let key = match r.byte()? {
            KEY_NULL => ScalarKey::Null,
            KEY_FALSE => ScalarKey::Bool(false),
            KEY_TRUE => ScalarKey::Bool(true),
            KEY_NUM => {
                let f = f64::from_le_bytes(r.array::<8>()?);
                // Keys are stored as the index holds them: finite, -0.0 folded into 0.0.
                if !f.is_finite() || F64Key::new(f).get().to_bits() != f.to_bits() {
                    return Err("bad number key".into());
                }
                ScalarKey::Num(F64Key::new(f))
            }
            KEY_STR => ScalarKey::Str(r.str()?.into()),
            other => return Err(format!("unknown key tag {other}")),
        };
        if values.last().is_some_and(|(last, _)| *last >= key) {
            return Err(format!("index of {path}: keys out of order"));
        }
        let posting = match r.byte()? {
            POSTING_ONE => Posting::One(u32::from_le_bytes(r.array::<4>()?)),
            POSTING_MANY => Posting::Many(r.bitmap()?),
            other => return Err(format!("unknown posting tag {other}")),
        };
        values.push((key, posting));
    }
    if !r.bytes.is_empty() {
        return Err(format!("{} bytes after the index part", r.bytes.len()));
    }
    Ok(Part {
        path,
        defined,
        values,
    })
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // Lengths are bounded by the frame limit, far below 4 GiB.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn put_bitmap(out: &mut Vec<u8>, bitmap: &RoaringBitmap) {
    put_len(out, bitmap.serialized_size());
    // Writing into a Vec cannot fail.
    let _ = bitmap.serialize_into(&mut *out);
}

fn put_key(out: &mut Vec<u8>, key: &ScalarKey) {
    match key {
        ScalarKey::Null => out.push(KEY_NULL),
        ScalarKey::Bool(false) => out.push(KEY_FALSE),
        ScalarKey::Bool(true) => out.push(KEY_TRUE),
        ScalarKey::Num(n) => {
            out.push(KEY_NUM);
            out.extend_from_slice(&n.get().to_le_bytes());
        }
        ScalarKey::Str(s) => {
            out.push(KEY_STR);
            put_str(out, s);
        }
    }
}

/// The fewest bytes a key and its posting take: a key tag alone (null, false, true), a posting
/// tag and one slot.
const MIN_VALUE_BYTES: usize = 1 + 1 + 4;

struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.bytes.len() {
            return Err("index part cut short".into());
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, String> {
        let [b] = self.array::<1>()?;
        Ok(b)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let (head, rest) = self
            .bytes
            .split_first_chunk::<N>()
            .ok_or_else(|| "index part cut short".to_owned())?;
        self.bytes = rest;
        Ok(*head)
    }

    /// A count or length, never more than the bytes left (each item takes at least one byte).
    fn len(&mut self) -> Result<usize, String> {
        let len = u32::from_le_bytes(self.array::<4>()?) as usize;
        if len > self.bytes.len() {
            return Err(format!("length {len} exceeds the index part"));
        }
        Ok(len)
    }

    fn str(&mut self) -> Result<&'a str, String> {
        let len = self.len()?;
        std::str::from_utf8(self.take(len)?).map_err(|_| "string is not UTF-8".to_owned())
    }

    fn bitmap(&mut self) -> Result<RoaringBitmap, String> {
        let len = self.len()?;
        // The validating decoder: damaged bytes are an error, never a malformed bitmap.
        RoaringBitmap::deserialize_from(self.take(len)?).map_err(|e| format!("bad bitmap: {e}"))
    }
}
