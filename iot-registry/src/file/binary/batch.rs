//! Decoding many records in a row (a query's page), which mostly have the same keys.
//!
//! [`decode_with_id`](super::decode_with_id) builds each object's map from its entries: every
//! key is checked as UTF-8 and copied, the entries gathered in a list, checked for order and
//! duplicates, and moved into a new B-tree. The records of one page usually share their keys
//! (every device of a fleet carries the same metadata fields), so this decoder remembers, for
//! each object of a record (numbered in the order they are met: `metadata`, the objects inside
//! it, then `tags`…), the keys it had last time, as a map with null values. When the next
//! record's object has the same keys in the same order — a comparison of bytes — its map is a
//! clone of that one (the B-tree copied node by node, keys copied without being checked again)
//! with the decoded values put in. When the keys differ, the object is decoded as
//! `decode_with_id` does and its keys are remembered instead.
//!
//! The result is the same record either way: a clone is only taken when every key is equal to
//! the remembered one, and the remembered keys come from a map, so they are sorted and distinct,
//! as the map built from the entries would be.

use iot_core::{DeviceId, Timestamp};
use serde_json::{Map, Number, Value};

use super::{ARRAY, F64, FALSE, I64, MAX_DECODE_DEPTH, MIN_ENTRY_BYTES, MIN_VALUE_BYTES, NULL};
use super::{OBJECT, Reader};
use super::{STR, TRUE, U64};
use crate::record::{DeviceRecord, ETag};

/// Objects a record may have whose keys are remembered; the ones met after these (records of
/// deeply nested or object-laden documents) are decoded without.
const MAX_SITES: usize = 64;

/// Decodes records one after another, remembering the keys of each object (see the module
/// documentation).
#[derive(Debug, Default)]
pub(crate) struct BatchDecoder {
    /// For each object site, the keys last seen there with null values; empty when nothing is
    /// remembered.
    shapes: Vec<Map<String, Value>>,
}

impl BatchDecoder {
    pub(crate) fn new() -> Self {
        BatchDecoder::default()
    }

    /// The record `bytes` encode, whose device id is `id` (which must be the one encoded, as in
    /// [`decode_with_id`](super::decode_with_id)); equal to what that function returns.
    pub(crate) fn decode(&mut self, bytes: &[u8], id: &DeviceId) -> Result<DeviceRecord, String> {
        let mut r = Reader { bytes };
        r.raw_str()?;
        let etag = ETag::new(r.str()?);
        let created = Timestamp::from_unix_micros(r.u64()?);
        let updated = Timestamp::from_unix_micros(r.u64()?);
        let state_ref = match r.byte()? {
            0 => None,
            1 => Some(r.str()?.to_owned()),
            other => return Err(format!("bad stateRef marker {other}")),
        };
        let mut site = 0;
        let metadata = self.object(&mut r, 1, &mut site)?;
        let tags = self.object(&mut r, 1, &mut site)?;
        if !r.bytes.is_empty() {
            return Err(format!("{} bytes after the record", r.bytes.len()));
        }
        Ok(DeviceRecord {
            device_id: id.clone(),
            metadata,
            tags,
            state_ref,
            etag,
            created,
            updated,
        })
    }

    /// The object at `r`, the `site`-th of its record (advanced past it and the objects inside
    /// it); `depth` is its own.
    fn object(
        &mut self,
        r: &mut Reader<'_>,
        depth: usize,
        site: &mut usize,
    ) -> Result<Map<String, Value>, String> {
        if depth > MAX_DECODE_DEPTH {
            return Err("document nested too deep".into());
        }
        let this = *site;
        *site += 1;
        let count = r.len()?;
        if count == 0 {
            return Ok(Map::new());
        }
        if let Some(shape) = self.shapes.get(this)
            && shape.len() == count
            && same_keys(*r, shape, depth)?
        {
            let mut map = shape.clone();
            for slot in map.values_mut() {
                r.raw_str()?;
                *slot = self.value(r, depth, site)?;
            }
            return Ok(map);
        }
        let mut entries = Vec::with_capacity(count.min(r.bytes.len() / MIN_ENTRY_BYTES));
        for _ in 0..count {
            let key = r.str()?.to_owned();
            let value = self.value(r, depth, site)?;
            entries.push((key, value));
        }
        let map: Map<String, Value> = entries.into_iter().collect();
        if this < MAX_SITES {
            self.put_shape(this, map.keys().map(|k| (k.clone(), Value::Null)).collect());
        }
        Ok(map)
    }

    /// Remembers `keys` (with null values) as the shape of site `this`.
    fn put_shape(&mut self, this: usize, keys: Map<String, Value>) {
        if this >= self.shapes.len() {
            self.shapes.resize_with(this + 1, Map::new);
        }
        if let Some(slot) = self.shapes.get_mut(this) {
            *slot = keys;
        }
    }

    /// `depth` is that of the container holding the value.
    fn value(
        &mut self,
        r: &mut Reader<'_>,
        depth: usize,
        site: &mut usize,
    ) -> Result<Value, String> {
        Ok(match r.byte()? {
            NULL => Value::Null,
            FALSE => Value::Bool(false),
            TRUE => Value::Bool(true),
            I64 => Value::Number(i64::from_le_bytes(r.array8()?).into()),
            U64 => Value::Number(u64::from_le_bytes(r.array8()?).into()),
            F64 => Value::Number(
                Number::from_f64(f64::from_le_bytes(r.array8()?))
                    .ok_or_else(|| "number is not finite".to_owned())?,
            ),
            STR => Value::String(r.str()?.to_owned()),
            ARRAY => {
                if depth + 1 > MAX_DECODE_DEPTH {
                    return Err("document nested too deep".into());
                }
                let count = r.len()?;
                let mut items = Vec::with_capacity(count.min(r.bytes.len() / MIN_VALUE_BYTES));
                for _ in 0..count {
                    items.push(self.value(r, depth + 1, site)?);
                }
                Value::Array(items)
            }
            OBJECT => Value::Object(self.object(r, depth + 1, site)?),
            other => return Err(format!("unknown value tag {other}")),
        })
    }
}

/// Whether the entries at `r` have the keys of `shape`, in its order; `depth` is that of their
/// object.
fn same_keys(mut r: Reader<'_>, shape: &Map<String, Value>, depth: usize) -> Result<bool, String> {
    for key in shape.keys() {
        if r.raw_str()? != key.as_bytes() {
            return Ok(false);
        }
        r.skip_value(depth, false)?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::super::{decode_with_id, encode_record};
    use super::*;
    use serde_json::json;

    fn record(id: &str, metadata: Value, tags: Value) -> DeviceRecord {
        let (Value::Object(metadata), Value::Object(tags)) = (metadata, tags) else {
            panic!("objects")
        };
        DeviceRecord {
            device_id: DeviceId::new(id).expect("valid id"),
            metadata,
            tags,
            state_ref: None,
            etag: ETag::new("2a"),
            created: Timestamp::from_unix_micros(1),
            updated: Timestamp::from_unix_micros(2),
        }
    }

    fn encoded(r: &DeviceRecord) -> Vec<u8> {
        let mut bytes = Vec::new();
        encode_record(&mut bytes, r);
        bytes
    }

    /// A run of records whose objects keep, change, lose and regain their keys decodes to what
    /// the one-record decoder gives, record by record, with one decoder throughout.
    #[test]
    fn a_batch_decodes_as_records_one_by_one() {
        let many: Map<String, Value> = (0..40).map(|i| (format!("k{i:02}"), json!(i))).collect();
        // Within the depth limit; and more objects than sites remembered.
        let deep = (0..60).fold(json!({}), |inner, i| json!({ format!("d{i}"): inner }));
        let wide: Map<String, Value> = (0..2 * MAX_SITES)
            .map(|i| (format!("w{i:03}"), json!({ "v": i })))
            .collect();
        let docs = [
            json!({"building": "B1", "floor": 3, "geo": {"lat": 1.5, "lon": 2.5}}),
            json!({"building": "B2", "floor": 4, "geo": {"lat": 0.5, "lon": -2.5}}),
            // Same count, one key different (after the first), a nested object of new keys.
            json!({"building": "B2", "flour": 4, "geo": {"lat": 0.5, "alt": 9}}),
            json!({"building": "B3", "floor": 5, "geo": {"lat": 7, "lon": 8}}),
            // An object where the remembered one had a string, and the reverse below.
            json!({"building": {"name": "B4"}, "floor": "5", "geo": "none"}),
            json!({"building": "B5", "floor": null, "geo": {"lat": true, "lon": false}}),
            json!({}),
            json!({"a": [1, {"x": "y"}, [{"z": {}}]], "b": {"c": {"d": u64::MAX}}}),
            json!({"a": [2, {"x": "w"}, [{"z": {"q": 1}}]], "b": {"c": {"d": -1}}}),
            Value::Object(many.clone()),
            Value::Object(many),
            deep.clone(),
            deep,
            Value::Object(wide.clone()),
            Value::Object(wide),
        ];
        let tags = [json!({}), json!({"owner": "ops"}), json!({"owner": "dev"})];
        let mut decoder = BatchDecoder::new();
        for round in 0..2 {
            for (i, doc) in docs.iter().enumerate() {
                let tags = tags[(i + round) % tags.len()].clone();
                let r = record(&format!("dev-{i}"), doc.clone(), tags);
                let bytes = encoded(&r);
                let batch = decoder.decode(&bytes, &r.device_id);
                assert_eq!(
                    batch,
                    decode_with_id(&bytes, Some(&r.device_id)),
                    "record {i}"
                );
                assert_eq!(batch, Ok(r), "record {i}");
            }
        }
    }

    /// Damaged bytes are errors, never panics, whatever the decoder remembers; and it decodes
    /// the next sound record correctly.
    #[test]
    fn damaged_bytes_are_errors_and_the_decoder_carries_on() {
        let r = record(
            "dev-1",
            json!({"a": [1, {"b": "c"}], "d": 2.5, "e": {"f": "g"}}),
            json!({"owner": "ops"}),
        );
        let bytes = encoded(&r);
        let mut decoder = BatchDecoder::new();
        for cut in 0..bytes.len() {
            assert!(
                decoder.decode(&bytes[..cut], &r.device_id).is_err(),
                "cut at {cut}"
            );
            assert_eq!(decoder.decode(&bytes, &r.device_id).as_ref(), Ok(&r));
        }
        for at in 0..bytes.len() {
            for bit in [0x01, 0x80, 0xff] {
                let mut damaged = bytes.clone();
                if let Some(b) = damaged.get_mut(at) {
                    *b ^= bit;
                }
                // Some flips still decode; then to what the one-record decoder makes of them.
                let one = decode_with_id(&damaged, Some(&r.device_id));
                let batch = decoder.decode(&damaged, &r.device_id);
                assert_eq!(batch.is_ok(), one.is_ok(), "flip {bit:#x} at {at}");
                if one.is_ok() {
                    assert_eq!(batch, one, "flip {bit:#x} at {at}");
                }
                assert_eq!(decoder.decode(&bytes, &r.device_id).as_ref(), Ok(&r));
            }
        }
    }
}
