//! Device twins: desired and reported properties, each a JSON object with a version.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One section of a twin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TwinSection {
    /// The properties (always a JSON object).
    pub properties: Value,
    /// Starts at 0 for an empty section and grows by one with every patch.
    pub version: u64,
}

impl Default for TwinSection {
    fn default() -> Self {
        TwinSection {
            properties: Value::Object(Map::new()),
            version: 0,
        }
    }
}

impl TwinSection {
    /// The section as Azure IoT Hub's device protocol shows it: the properties with a
    /// `"$version"` member added.
    pub fn to_versioned_json(&self) -> Value {
        let mut doc = match &self.properties {
            Value::Object(map) => map.clone(),
            _ => Map::new(),
        };
        doc.insert("$version".into(), Value::from(self.version));
        Value::Object(doc)
    }
}

/// A device's twin: what the back end wants (desired) and what the device says (reported).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Twin {
    /// Written by the back end, pushed to the device.
    pub desired: TwinSection,
    /// Written by the device.
    pub reported: TwinSection,
}

impl Twin {
    /// The twin as the device protocol's twin GET returns it:
    /// `{"desired": {..., "$version": n}, "reported": {..., "$version": m}}`.
    pub fn to_device_json(&self) -> Value {
        let mut doc = Map::new();
        doc.insert("desired".into(), self.desired.to_versioned_json());
        doc.insert("reported".into(), self.reported.to_versioned_json());
        Value::Object(doc)
    }
}

/// A change of the desired properties, pushed to the device's session.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct DesiredPatch {
    /// The desired version after the change.
    pub version: u64,
    /// An RFC 7396 merge patch that turns version `version - 1` into `version` — or, when
    /// `full_document` is set, the whole desired section (the session fell behind and
    /// intermediate patches were folded).
    pub patch: Value,
    /// Whether `patch` is the whole desired section rather than one step.
    pub full_document: bool,
}

impl DesiredPatch {
    /// One step: the merge patch that took the desired section to `version`.
    pub fn new(version: u64, patch: Value) -> Self {
        DesiredPatch {
            version,
            patch,
            full_document: false,
        }
    }

    /// The whole desired section at `version`, for a session that fell behind (intermediate
    /// patches folded into one).
    pub fn full(version: u64, properties: Value) -> Self {
        DesiredPatch {
            version,
            patch: properties,
            full_document: true,
        }
    }

    /// The patch as the device protocol sends it: the patch object with `"$version"` added.
    pub fn to_versioned_json(&self) -> Value {
        TwinSection {
            properties: self.patch.clone(),
            version: self.version,
        }
        .to_versioned_json()
    }
}
