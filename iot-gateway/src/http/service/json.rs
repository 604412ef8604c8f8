//! IoT Hub's JSON shapes of a device identity and a device twin, built from the SDK's parts.
//!
//! A device is its identity (status, keys, generation) and its registry record; a twin is the
//! registry record's `metadata` object shown as `tags`, the gateway's desired and reported
//! sections, and the identity's status. Nothing is copied between stores: each field is read
//! from the one store that owns it.

use iot_core::Timestamp;
use iot_identity::{Credentials, DeviceIdentity, DeviceStatus};
use iot_registry::DeviceRecord;
use serde_json::{Map, Value, json};

use super::twin_doc::TwinDoc;
use crate::gateway::DeviceActivity;
use crate::twins::Twin;

/// IoT Hub's "never" (`DateTime.MinValue`), for times the hub did not see.
pub(crate) const NEVER: &str = "0001-01-01T00:00:00Z";

/// Everything a device or twin answer is made of.
pub(crate) struct DeviceView {
    pub(crate) identity: DeviceIdentity,
    pub(crate) record: DeviceRecord,
    pub(crate) connected: bool,
    pub(crate) c2d_pending: usize,
    pub(crate) activity: DeviceActivity,
}

/// A time as IoT Hub writes it, or its "never".
pub(super) fn time_or_never(t: Option<Timestamp>) -> Value {
    Value::String(t.map_or_else(|| NEVER.to_owned(), Timestamp::to_rfc3339))
}

/// The device's etag: the identity's and the registry record's, so that a change of either
/// (status, keys, tags) gives a new one.
pub(crate) fn device_etag(identity: &DeviceIdentity, record: &DeviceRecord) -> String {
    format!("{}-{}", identity.etag, record.etag.as_str())
}

/// The twin's etag: the registry record's (tags) and both section versions.
pub(crate) fn twin_etag(record: &DeviceRecord, twin: &Twin) -> String {
    format!(
        "{}-{}-{}",
        record.etag.as_str(),
        twin.desired.version,
        twin.reported.version
    )
}

pub(super) fn status(identity: &DeviceIdentity) -> (&'static str, Value) {
    match &identity.status {
        DeviceStatus::Disabled { reason } => ("disabled", Value::String(reason.clone())),
        _ => ("enabled", Value::Null),
    }
}

pub(super) fn connection_state(connected: bool) -> &'static str {
    if connected {
        "Connected"
    } else {
        "Disconnected"
    }
}

pub(super) fn authentication(credentials: &Credentials) -> Value {
    let no_thumbprints = json!({"primaryThumbprint": null, "secondaryThumbprint": null});
    match credentials {
        Credentials::SymmetricKeys { primary, secondary } => json!({
            "symmetricKey": {
                "primaryKey": primary.expose_base64().as_str(),
                "secondaryKey": secondary.expose_base64().as_str(),
            },
            "x509Thumbprint": no_thumbprints,
            "type": "sas",
        }),
        Credentials::X509 { primary, secondary } => json!({
            "symmetricKey": {"primaryKey": null, "secondaryKey": null},
            "x509Thumbprint": {
                "primaryThumbprint": primary.to_string(),
                "secondaryThumbprint": secondary.to_string(),
            },
            "type": "selfSigned",
        }),
        Credentials::CertificateAuthority => json!({
            "symmetricKey": {"primaryKey": null, "secondaryKey": null},
            "x509Thumbprint": no_thumbprints,
            "type": "certificateAuthority",
        }),
        // Passphrases (ours) and no credentials have no IoT Hub counterpart.
        _ => json!({
            "symmetricKey": {"primaryKey": null, "secondaryKey": null},
            "x509Thumbprint": no_thumbprints,
            "type": "none",
        }),
    }
}

pub(super) fn auth_type(credentials: &Credentials) -> &'static str {
    match credentials {
        Credentials::SymmetricKeys { .. } => "sas",
        Credentials::X509 { .. } => "selfSigned",
        Credentials::CertificateAuthority => "certificateAuthority",
        _ => "none",
    }
}

/// IoT Hub's `Device` JSON (keys included, as IoT Hub returns them to a registry reader).
pub(crate) fn device_json(view: &DeviceView) -> Value {
    let (status, reason) = status(&view.identity);
    json!({
        "deviceId": view.identity.id.as_str(),
        "generationId": view.identity.generation_id.to_string(),
        "etag": device_etag(&view.identity, &view.record),
        "connectionState": connection_state(view.connected),
        "status": status,
        "statusReason": reason,
        "connectionStateUpdatedTime": time_or_never(view.activity.connection_state_updated),
        "statusUpdatedTime": view.identity.status_updated_at.to_rfc3339(),
        "lastActivityTime": time_or_never(view.activity.last_activity),
        "cloudToDeviceMessageCount": view.c2d_pending,
        "authentication": authentication(&view.identity.credentials),
        "capabilities": {"iotEdge": false},
    })
}

/// IoT Hub's twin JSON as a value (for query pages, which collect twins); the twin routes
/// write [`TwinDoc`] straight to bytes.
pub(crate) fn twin_json(view: &DeviceView, twin: &Twin) -> Value {
    serde_json::to_value(TwinDoc::new(view, twin)).unwrap_or_else(|_| Value::Object(Map::new()))
}

/// The document the query engine evaluates IoT Hub queries on (see `query.rs`): the registry
/// record with `metadata` (the twin's tags) as it is, and `tags` replaced by the twin-derived
/// fields `properties.desired`, `properties.reported`, `status` and `connectionState`.
pub(crate) fn query_view(view: &DeviceView, twin: &Twin) -> DeviceRecord {
    let (status, _) = status(&view.identity);
    let mut derived = Map::new();
    derived.insert(
        "properties".into(),
        json!({
            "desired": twin.desired.properties,
            "reported": twin.reported.properties,
        }),
    );
    derived.insert("status".into(), Value::from(status));
    derived.insert(
        "connectionState".into(),
        Value::from(connection_state(view.connected)),
    );
    let doc = iot_registry::DeviceDocument {
        metadata: view.record.metadata.clone(),
        tags: derived,
        state_ref: None,
    };
    DeviceRecord::new(
        view.record.device_id.clone(),
        doc,
        view.record.etag.clone(),
        view.record.created,
        view.record.updated,
    )
}

/// The patch that turns `old` into `new` under RFC 7396: keys of `old` missing from `new`
/// become `null`, objects present in both are diffed, anything else is `new`'s value. So
/// "replace" is one merge patch, written through the same door as any other change.
pub(crate) fn replace_patch(old: &Map<String, Value>, new: &Map<String, Value>) -> Value {
    let mut patch = Map::new();
    for key in old.keys() {
        if !new.contains_key(key) {
            patch.insert(key.clone(), Value::Null);
        }
    }
    for (key, value) in new {
        match (old.get(key), value) {
            (Some(Value::Object(a)), Value::Object(b)) => {
                let inner = replace_patch(a, b);
                if inner.as_object().is_some_and(|m| !m.is_empty()) {
                    patch.insert(key.clone(), inner);
                }
            }
            (Some(a), b) if a == b => {}
            (_, Value::Object(b)) => {
                // A new object must not keep what a merge would find there: write it whole
                // (a merge into a missing or non-object value starts from empty).
                patch.insert(key.clone(), Value::Object(b.clone()));
            }
            (_, b) => {
                patch.insert(key.clone(), b.clone());
            }
        }
    }
    Value::Object(patch)
}

/// Removes IoT Hub's read-only members (`$metadata`, `$version`) from a section written by a
/// back end.
pub(crate) fn strip_meta(mut section: Map<String, Value>) -> Map<String, Value> {
    section.remove("$metadata");
    section.remove("$version");
    section
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_patch_turns_old_into_new() {
        let cases = [
            (
                json!({"a": 1, "b": {"c": 2, "d": 3}}),
                json!({"b": {"c": 2}, "e": [1]}),
            ),
            (json!({"a": {"x": 1}}), json!({"a": 5})),
            (json!({"a": 5}), json!({"a": {"x": 1}})),
            (json!({}), json!({"n": null})),
            (json!({"k": {"deep": {"er": 1}}}), json!({})),
        ];
        for (old, new) in cases {
            let (Value::Object(o), Value::Object(n)) = (&old, &new) else {
                unreachable!()
            };
            let patch = replace_patch(o, n);
            let mut merged = old.clone();
            iot_core::json::merge_patch(&mut merged, &patch, 64).unwrap();
            // merge_patch drops nulls in objects it writes: compare without them.
            let mut expected = new.clone();
            iot_core::json::merge_patch(&mut expected, &json!({}), 64).unwrap();
            if let Value::Object(m) = &mut expected {
                m.retain(|_, v| !v.is_null());
            }
            assert_eq!(merged, expected, "{old} -> {new} via {patch}");
        }
    }
}
