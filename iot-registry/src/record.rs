//! Device records and the documents callers write.
//!
//! A record holds descriptive metadata only. There is deliberately no field for keys, tokens or
//! any other credential: those live in the identity store, and a registry record can be logged,
//! exported and queried freely.

use std::fmt;

use iot_core::{DeviceId, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::limits::DocumentLimits;
use crate::merge::merge_patch;

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
/// [`DocumentLimits`] for the size and depth limits.
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
    /// The document a JSON merge patch (RFC 7396) makes of this one, as
    /// [`Registry::merge`](crate::Registry::merge) must: the patch applies to
    /// `{"metadata": …, "tags": …, "stateRef": …}`. A patch that is not an object, names another
    /// top-level field, leaves `metadata`/`tags` as non-objects or `stateRef` as a non-string is
    /// [`Error::InvalidDocument`]; one nested deeper than `limits` allow is
    /// [`Error::DocumentTooDeep`]. The result is not yet checked against `limits`: pass it to
    /// [`DocumentLimits::check_document`] before storing it.
    ///
    /// ```
    /// use iot_registry::{DeviceDocument, DocumentLimits};
    /// use serde_json::json;
    ///
    /// let doc = DeviceDocument::with_metadata(json!({"floor": 3, "room": "R1"})).expect("an object");
    /// let patch = json!({"metadata": {"room": null}, "tags": {"owner": "ops"}});
    /// let merged = doc.merged(&patch, &DocumentLimits::default())?;
    /// assert_eq!(serde_json::Value::Object(merged.metadata), json!({"floor": 3}));
    /// assert_eq!(merged.tags["owner"], "ops");
    /// # Ok::<(), iot_registry::Error>(())
    /// ```
    pub fn merged(self, patch: &Value, limits: &DocumentLimits) -> Result<DeviceDocument> {
        if !patch.is_object() {
            return Err(Error::invalid_doc(
                "$",
                "a merge patch for a device must be a JSON object with metadata, tags or stateRef",
            ));
        }
        // The document is moved into the view, not cloned.
        let mut view = Map::new();
        view.insert("metadata".into(), Value::Object(self.metadata));
        view.insert("tags".into(), Value::Object(self.tags));
        if let Some(s) = self.state_ref {
            view.insert("stateRef".into(), Value::String(s));
        }
        let mut view = Value::Object(view);
        // One level more than documents: the patch's root holds `metadata`.
        merge_patch(&mut view, patch, limits.max_depth + 1)?;
        let Value::Object(mut view) = view else {
            return Err(Error::invalid_doc("$", "the merge did not leave an object"));
        };
        let mut object_field = |name: &str| match view.remove(name) {
            None => Ok(Map::new()),
            Some(Value::Object(m)) => Ok(m),
            Some(_) => Err(Error::invalid_doc(name, "must be a JSON object")),
        };
        let metadata = object_field("metadata")?;
        let tags = object_field("tags")?;
        let state_ref = match view.remove("stateRef") {
            None => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => return Err(Error::invalid_doc("stateRef", "must be a string or null")),
        };
        if let Some(key) = view.keys().next() {
            return Err(Error::invalid_doc(
                "$",
                format!(
                    "unknown or read-only field {:?}: a patch may change metadata, tags and stateRef",
                    crate::limits::shorten(key)
                ),
            ));
        }
        Ok(DeviceDocument {
            metadata,
            tags,
            state_ref,
        })
    }

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
    /// A record of `device_id` holding `doc`. Registries outside this crate build the records
    /// they return with it (from a database row, say); the etag and times are theirs to keep.
    pub fn new(
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

    /// The writable part of the record, taken out of it without copying.
    pub fn into_document(self) -> DeviceDocument {
        DeviceDocument {
            metadata: self.metadata,
            tags: self.tags,
            state_ref: self.state_ref,
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
