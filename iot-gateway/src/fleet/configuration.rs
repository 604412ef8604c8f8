//! An automatic device configuration: desired properties for the devices a target condition
//! matches, with a priority.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::{FleetError, FleetResult};

/// What a caller writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigurationSpec {
    /// The configuration's id.
    pub id: String,
    /// Free labels.
    pub labels: BTreeMap<String, String>,
    /// IoT Hub's `content.deviceContent`: paths under `properties.desired` and their values
    /// (`{"properties.desired.telemetry": {"interval": 30}}`).
    pub device_content: Map<String, Value>,
    /// Which devices (an IoT Hub query condition over tags, properties and the device id).
    pub target_condition: String,
    /// Among the configurations that target a device, the highest priority wins (ties: the one
    /// created last).
    pub priority: i64,
    /// Custom metrics: name → an IoT Hub query whose answer is counted.
    pub metrics_queries: BTreeMap<String, String>,
}

/// A stored configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Configuration {
    /// What was written.
    pub spec: ConfigurationSpec,
    /// When it was created, Unix milliseconds.
    pub created_ms: u64,
    /// When it was last written.
    pub updated_ms: u64,
    /// Changes on every write; `If-Match` names it.
    pub etag: String,
    /// Creation order, to break priority ties between configurations created in the same
    /// millisecond.
    #[serde(default)]
    pub sequence: u64,
}

impl Configuration {
    /// The order of precedence: higher priority first, then the one created last.
    pub fn precedence(&self) -> (i64, u64, u64) {
        (self.spec.priority, self.created_ms, self.sequence)
    }
}

/// The desired-properties patch `device_content` stands for: each key is `properties.desired`
/// or a dotted path under it, and its value lands at that path.
pub fn desired_patch(device_content: &Map<String, Value>) -> FleetResult<Value> {
    let mut patch = Map::new();
    for (key, value) in device_content {
        let rest = if key == "properties.desired" {
            ""
        } else if let Some(rest) = key.strip_prefix("properties.desired.") {
            rest
        } else {
            return Err(FleetError::Invalid(format!(
                "content.deviceContent key {key:?} is not under properties.desired"
            )));
        };
        if rest.is_empty() {
            let Value::Object(section) = value else {
                return Err(FleetError::Invalid(
                    "content.deviceContent[\"properties.desired\"] must be an object".into(),
                ));
            };
            for (k, v) in section {
                patch.insert(k.clone(), v.clone());
            }
            continue;
        }
        let parts: Vec<&str> = rest.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(FleetError::Invalid(format!(
                "content.deviceContent key {key:?} has an empty segment"
            )));
        }
        let mut node = &mut patch;
        for part in &parts[..parts.len() - 1] {
            let entry = node
                .entry((*part).to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            node = match entry {
                Value::Object(next) => next,
                _ => return Err(FleetError::Invalid(format!("content key {key:?}"))),
            };
        }
        node.insert(parts[parts.len() - 1].to_owned(), value.clone());
    }
    Ok(Value::Object(patch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_paths_become_a_nested_patch() {
        let content = json!({
            "properties.desired.telemetry": {"interval": 30},
            "properties.desired.firmware.version": "2.1",
            "properties.desired": {"mode": "eco"}
        });
        let Value::Object(content) = content else {
            panic!()
        };
        assert_eq!(
            desired_patch(&content).expect("patch"),
            json!({"telemetry": {"interval": 30}, "firmware": {"version": "2.1"}, "mode": "eco"})
        );
        let Value::Object(bad) = json!({"tags.x": 1}) else {
            panic!()
        };
        assert!(desired_patch(&bad).is_err());
    }
}
