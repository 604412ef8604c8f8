//! IoT Hub's twin JSON, written straight from the parts it is made of.
//!
//! A twin answer is the hottest JSON the endpoint writes (every `GET /twins/{id}`). Building it
//! as a `serde_json::Value` first meant copying the tags and both property sections into a tree
//! of maps, formatting each time into a `String`, serializing the tree and dropping it — about
//! a fifth of a twin GET's CPU. [`TwinDoc`] borrows the parts and serializes them in one pass:
//! the same document, no intermediate tree.

use iot_core::Timestamp;
use iot_core::time::Rfc3339;
use serde::ser::{Serialize, SerializeMap, SerializeStruct, Serializer};
use serde_json::Value;

use super::json::{DeviceView, NEVER, auth_type, connection_state, device_etag, status, twin_etag};
use crate::twins::{Twin, TwinSection};

/// The twin of a device as IoT Hub shows it, borrowing everything.
pub(crate) struct TwinDoc<'a> {
    view: &'a DeviceView,
    twin: &'a Twin,
}

impl<'a> TwinDoc<'a> {
    pub(crate) fn new(view: &'a DeviceView, twin: &'a Twin) -> Self {
        TwinDoc { view, twin }
    }

    /// The document as bytes.
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        // A map with string keys and JSON values cannot fail to serialize; an empty object is
        // the safe answer should that ever change.
        serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec())
    }
}

/// A time as IoT Hub writes it (RFC 3339), or its "never" — formatted while writing.
struct Time(Option<Timestamp>);

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(t) => s.collect_str(&Rfc3339(
                i64::try_from(t.as_unix_micros()).unwrap_or(i64::MAX),
            )),
            None => s.serialize_str(NEVER),
        }
    }
}

/// `{"primaryThumbprint": null, "secondaryThumbprint": null}`.
struct NoThumbprints;

impl Serialize for NoThumbprints {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("X509Thumbprint", 2)?;
        m.serialize_field("primaryThumbprint", &None::<&str>)?;
        m.serialize_field("secondaryThumbprint", &None::<&str>)?;
        m.end()
    }
}

/// `{"iotEdge": false}`.
struct Capabilities;

impl Serialize for Capabilities {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("Capabilities", 1)?;
        m.serialize_field("iotEdge", &false)?;
        m.end()
    }
}

/// A section: its properties, then `$metadata` and `$version`. The twin store keeps no
/// per-property times, so `$metadata` carries the section's version and, as `$lastUpdated`,
/// `last_updated` (the caller's best time; see `docs/http.md`).
struct Section<'a> {
    section: &'a TwinSection,
    last_updated: Timestamp,
}

struct Metadata {
    last_updated: Timestamp,
    version: u64,
}

impl Serialize for Metadata {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("Metadata", 2)?;
        m.serialize_field("$lastUpdated", &Time(Some(self.last_updated)))?;
        m.serialize_field("$lastUpdatedVersion", &self.version)?;
        m.end()
    }
}

impl Serialize for Section<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let properties = match &self.section.properties {
            Value::Object(map) => Some(map),
            _ => None,
        };
        let mut m = s.serialize_map(None)?;
        // The read-only members are the hub's: a stored property of the same name is not shown.
        for (key, value) in properties.into_iter().flatten() {
            if key != "$metadata" && key != "$version" {
                m.serialize_entry(key, value)?;
            }
        }
        m.serialize_entry(
            "$metadata",
            &Metadata {
                last_updated: self.last_updated,
                version: self.section.version,
            },
        )?;
        m.serialize_entry("$version", &self.section.version)?;
        m.end()
    }
}

struct Properties<'a> {
    desired: Section<'a>,
    reported: Section<'a>,
}

impl Serialize for Properties<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("Properties", 2)?;
        m.serialize_field("desired", &self.desired)?;
        m.serialize_field("reported", &self.reported)?;
        m.end()
    }
}

impl Serialize for TwinDoc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (view, twin) = (self.view, self.twin);
        let identity = &view.identity;
        let (status, reason) = status(identity);
        let mut m = s.serialize_struct("Twin", 16)?;
        m.serialize_field("deviceId", identity.id.as_str())?;
        m.serialize_field("etag", &twin_etag(&view.record, twin))?;
        m.serialize_field("deviceEtag", &device_etag(identity, &view.record))?;
        m.serialize_field(
            "version",
            &(twin.desired.version + twin.reported.version + 1),
        )?;
        m.serialize_field("status", status)?;
        m.serialize_field("statusReason", &reason)?;
        m.serialize_field("statusUpdateTime", &Time(Some(identity.status_updated_at)))?;
        m.serialize_field("connectionState", connection_state(view.connected))?;
        m.serialize_field("lastActivityTime", &Time(view.activity.last_activity))?;
        m.serialize_field("cloudToDeviceMessageCount", &view.c2d_pending)?;
        m.serialize_field("authenticationType", auth_type(&identity.credentials))?;
        m.serialize_field("x509Thumbprint", &NoThumbprints)?;
        m.serialize_field("modelId", "")?;
        m.serialize_field("capabilities", &Capabilities)?;
        m.serialize_field("tags", &view.record.metadata)?;
        m.serialize_field(
            "properties",
            &Properties {
                desired: Section {
                    section: &twin.desired,
                    last_updated: view.record.updated,
                },
                reported: Section {
                    section: &twin.reported,
                    last_updated: identity.updated_at.max(view.record.updated),
                },
            },
        )?;
        m.end()
    }
}
