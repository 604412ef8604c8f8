//! Device records and the documents callers write.
//!
//! A record holds descriptive metadata only. There is deliberately no field for keys, tokens or
//! any other credential: those live in the identity store, and a registry record can be logged,
//! exported and queried freely.

use std::fmt;

use iot_core::{DeviceId, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The version tag of a record, for optimistic concurrency (`if-match`).
///
/// Every successful write gives the record a new etag, unique over the registry's life (a record
/// deleted and created again never gets an etag it had before). Treat it as opaque.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ETag(String);

impl ETag {
    /// Wraps a string received from a caller (an `If-Match` header, say).
    pub fn new(tag: impl Into<String>) -> Self {
        ETag(tag.into())
    }

    /// The etag of write number `version`.
    pub(crate) fn from_version(version: u64) -> Self {
        ETag(format!("{version:x}"))
    }

    /// The etag as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ETag({:?})", self.0)
    }
}

impl fmt::Display for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0)
    }
}

/// What a caller writes for a device: metadata, tags and an optional state reference.
///
/// `metadata` and `tags` are free-form JSON objects; they are queried as `metadata.…` and
/// `tags.…`. Keys may not be empty, contain `.` (the path separator) or control characters; see
/// [`DocumentLimits`](crate::DocumentLimits) for the size and depth limits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceDocument {
    /// Descriptive metadata: building, floor, model, firmware, position…
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// Labels the solution attaches (ownership, grouping), queried like metadata.
    #[serde(default)]
    pub tags: Map<String, Value>,
    /// Where the device's state lives in the state store (a key or URI), if anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_ref: Option<String>,
}

impl DeviceDocument {
    /// A document with `metadata` and no tags.
    pub fn with_metadata(metadata: Value) -> Option<Self> {
        match metadata {
            Value::Object(metadata) => Some(DeviceDocument {
                metadata,
                ..DeviceDocument::default()
            }),
            _ => None,
        }
    }
}

/// One device's entry in the registry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct DeviceRecord {
    /// The device.
    pub device_id: DeviceId,
    /// Descriptive metadata (a JSON object).
    pub metadata: Map<String, Value>,
    /// Tags (a JSON object).
    pub tags: Map<String, Value>,
    /// Reference to the device's state in the state store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_ref: Option<String>,
    /// Changes on every write; pass it back as `if_match`.
    pub etag: ETag,
    /// When the record was created.
    pub created: Timestamp,
    /// When the record was last written.
    pub updated: Timestamp,
}

impl DeviceRecord {
    pub(crate) fn new(
        device_id: DeviceId,
        doc: DeviceDocument,
        etag: ETag,
        created: Timestamp,
        updated: Timestamp,
    ) -> Self {
        DeviceRecord {
            device_id,
            metadata: doc.metadata,
            tags: doc.tags,
            state_ref: doc.state_ref,
            etag,
            created,
            updated,
        }
    }

    /// The writable part of the record.
    pub fn document(&self) -> DeviceDocument {
        DeviceDocument {
            metadata: self.metadata.clone(),
            tags: self.tags.clone(),
            state_ref: self.state_ref.clone(),
        }
    }
}
