//! Records as the engine keeps them: each one's binary encoding (see `file/binary.rs`), not a
//! tree of JSON values.
//!
//! A decoded record costs a map node per object and a heap string per key and per string value
//! (about twenty allocations and two kilobytes for a typical device); the encoding is one run of
//! bytes of a few hundred. Reopening a `FileRegistry` slices each record out of the one buffer
//! the snapshot or the log was read into, so it allocates nothing per record but the device id.
//! Queries read the encoding in place: a condition or an `ORDER BY` key finds its path by
//! walking the encoded object (keys are compared, values skipped) and borrows strings from the
//! bytes. A record is decoded only when it is handed out (`get`, query results) or changed.
//!
//! # Invariant
//! Every `Stored` holds bytes that passed [`binary::validate`] (or came from
//! [`binary::encode_record`]), so reading them lazily never meets an error; the readers still
//! report one instead of panicking if that were ever broken.

use bytes::Bytes;
use iot_core::DeviceId;

use crate::file::binary::{self, Document};
use crate::query::{Path, Root};
use crate::record::DeviceRecord;
use crate::value::{Node, Resolve, ScalarRef};

/// One record, encoded.
#[derive(Clone, Debug)]
pub(crate) struct Stored {
    /// The device id, decoded once: the id map shares it (a reference count, not a copy).
    id: DeviceId,
    bytes: Bytes,
}

impl Stored {
    /// Encodes `record`.
    pub(crate) fn encode(record: &DeviceRecord) -> Self {
        let mut out = Vec::with_capacity(256);
        binary::encode_record(&mut out, record);
        Stored {
            id: record.device_id.clone(),
            // A boxed slice becomes `Bytes` without a separate reference-count allocation.
            bytes: Bytes::from(out.into_boxed_slice()),
        }
    }

    /// Takes `bytes` (typically a slice of a whole file read at once) after checking that they
    /// encode a record; the error says what is wrong.
    pub(crate) fn from_bytes(bytes: Bytes) -> Result<Self, String> {
        let id = binary::validate(&bytes)?;
        let id = DeviceId::new(id).map_err(|e| format!("bad device id: {e}"))?;
        Ok(Stored { id, bytes })
    }

    pub(crate) fn device_id(&self) -> &DeviceId {
        &self.id
    }

    /// The encoding (what a snapshot or a log entry stores).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The record, decoded.
    pub(crate) fn decode(&self) -> Result<DeviceRecord, String> {
        binary::decode_with_id(&self.bytes, Some(&self.id))
    }

    pub(crate) fn fields(&self) -> Result<binary::Fields<'_>, String> {
        binary::fields(&self.bytes)
    }
}

impl Resolve for Stored {
    fn resolve(&self, path: &Path) -> Option<Node<'_>> {
        let which = match path.root {
            Root::DeviceId => {
                return path
                    .segments
                    .is_empty()
                    .then_some(Node::Scalar(ScalarRef::Str(self.id.as_str())));
            }
            Root::StateRef => {
                let state_ref = self.fields().ok()?.state_ref?;
                return path
                    .segments
                    .is_empty()
                    .then_some(Node::Scalar(ScalarRef::Str(state_ref)));
            }
            Root::Metadata => Document::Metadata,
            Root::Tags => Document::Tags,
        };
        if path.segments.is_empty() {
            return Some(Node::Composite);
        }
        // Validated bytes never fail here (see the invariant); were they damaged, the path
        // would read as undefined rather than panic.
        self.fields()
            .and_then(|f| f.lookup(which, &path.segments))
            .ok()
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{DeviceDocument, ETag};
    use crate::value::SortKey;
    use iot_core::Timestamp;
    use serde_json::{Value, json};

    fn record(metadata: Value, tags: Value, state_ref: Option<&str>) -> DeviceRecord {
        let (Value::Object(metadata), Value::Object(tags)) = (metadata, tags) else {
            panic!("objects")
        };
        DeviceRecord::new(
            DeviceId::new("dev-1").expect("a valid id"),
            DeviceDocument {
                metadata,
                tags,
                state_ref: state_ref.map(str::to_owned),
            },
            ETag::new("7"),
            Timestamp::from_unix_micros(3),
            Timestamp::from_unix_micros(4),
        )
    }

    /// Every path of `value` under `prefix`, and some that are not there.
    fn paths(prefix: &[String], value: &Value, out: &mut Vec<Vec<String>>) {
        out.push([prefix, &["missing".to_owned()]].concat());
        if let Value::Object(map) = value {
            for (k, v) in map {
                let path = [prefix, std::slice::from_ref(k)].concat();
                out.push(path.clone());
                paths(&path, v, out);
            }
        } else {
            // Through a scalar or an array: undefined.
            out.push([prefix, &["x".to_owned(), "y".to_owned()]].concat());
        }
    }

    /// Reading the encoding in place finds what the decoded record holds, for every path.
    #[test]
    fn lazy_reads_equal_the_decoded_record() {
        let metadata = json!({
            "a": 1, "b": -2, "c": 1.5, "u": u64::MAX, "s": "text", "e": "", "n": null,
            "t": true, "f": false, "arr": [1, {"k": 2}], "o": {"p": {"q": "deep", "r": []}},
            "z": {"after": "nested"}
        });
        let tags = json!({"owner": "ops", "o": {"x": 3}});
        for state_ref in [None, Some("st/1")] {
            let decoded = record(metadata.clone(), tags.clone(), state_ref);
            let stored = Stored::encode(&decoded);
            assert_eq!(stored.decode().ok().as_ref(), Some(&decoded));
            let mut all = Vec::new();
            for (root, doc) in [(Root::Metadata, &metadata), (Root::Tags, &tags)] {
                let mut segments = Vec::new();
                paths(&[], doc, &mut segments);
                all.extend(segments.into_iter().map(|s| Path::new(root, s)));
                all.push(Path::new(root, Vec::new()));
            }
            for root in [Root::DeviceId, Root::StateRef] {
                all.push(Path::new(root, Vec::new()));
                all.push(Path::new(root, vec!["x".into()]));
            }
            for path in &all {
                let lazy = SortKey::of(stored.resolve(path));
                let eager = SortKey::of(decoded.resolve(path));
                assert_eq!(lazy, eager, "{}", path.text);
                assert_eq!(
                    stored.resolve(path).is_some(),
                    decoded.resolve(path).is_some(),
                    "{}",
                    path.text
                );
            }
        }
    }

    /// Damaged bytes are refused when stored exactly when the decoder refuses them, and reading
    /// whatever is accepted never panics.
    #[test]
    fn damaged_bytes_are_refused_when_stored() {
        let r = record(
            json!({"a": [1, {"b": "c"}], "d": 2.5, "o": {"p": "q"}}),
            json!({"t": "u"}),
            Some("s"),
        );
        let bytes = Stored::encode(&r).bytes().to_vec();
        let paths = [
            Path::new(Root::Metadata, vec!["o".into(), "p".into()]),
            Path::new(Root::Tags, vec!["t".into()]),
            Path::new(Root::StateRef, Vec::new()),
        ];
        let check = |damaged: Vec<u8>| {
            let stored = Stored::from_bytes(Bytes::from(damaged.clone()));
            assert_eq!(
                stored.is_ok(),
                binary::decode_record(&damaged).is_ok(),
                "{damaged:?}"
            );
            if let Ok(stored) = stored {
                assert!(stored.decode().is_ok());
                for path in &paths {
                    let _ = stored.resolve(path);
                }
                let mut indexes = crate::index::Indexes::new(Vec::new());
                indexes.insert(0, &stored);
            }
        };
        for cut in 0..bytes.len() {
            check(bytes[..cut].to_vec());
        }
        for at in 0..bytes.len() {
            for bit in [0x01, 0x80, 0xff] {
                let mut damaged = bytes.clone();
                if let Some(b) = damaged.get_mut(at) {
                    *b ^= bit;
                }
                check(damaged);
            }
        }
    }
}
