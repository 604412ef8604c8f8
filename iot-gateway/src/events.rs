//! IoT Hub's non-telemetry events as log records: device connection state, device lifecycle and
//! twin change notifications, with the system and application properties IoT Hub sets on them
//! and the bodies it sends, so that routes (`iot_stream::routing`, sources other than device
//! messages) and processors read them as they would read IoT Hub's.
//!
//! Every event record carries, as headers:
//!
//! | header | value | routing query |
//! |---|---|---|
//! | `content-type`, `content-encoding` | `application/json`, `utf-8` | `$contentType`, `$contentEncoding` |
//! | `correlation-id` | a unique id of the event | `$correlationId` |
//! | `user-id` | the hub's name | `$userId` |
//! | `iothub-connection-device-id` | the device | `$connectionDeviceId` |
//! | `iothub-message-source` | `deviceConnectionStateEvents`, `deviceLifecycleEvents`, `twinChangeEvents` | — |
//! | `hubName`, `deviceId`, `opType`, `operationTimestamp`, `iothub-message-schema` | application properties | `opType = 'deviceConnected'` |
//!
//! The record key is the device id, so one device's events stay in order in one partition.

use bytes::Bytes;
use iot_core::{Record, Timestamp};
use serde_json::{Map, Value, json};

use crate::message::header;

/// Application property: the operation (`deviceConnected`, `createDeviceIdentity`, …).
pub const OP_TYPE: &str = "opType";
/// Application property: the hub's name.
pub const HUB_NAME: &str = "hubName";
/// Application property: the device.
pub const DEVICE_ID: &str = "deviceId";
/// Application property: when the operation happened, RFC 3339.
pub const OPERATION_TIMESTAMP: &str = "operationTimestamp";
/// Application property: the body's schema (`deviceLifecycleNotification`, …).
pub const MESSAGE_SCHEMA: &str = "iothub-message-schema";
/// System property: the hub's name, as IoT Hub sets it on events.
pub const USER_ID: &str = header::USER_ID;

/// The kinds of event, with the names IoT Hub gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// A device opened a session.
    DeviceConnected,
    /// A device's session ended.
    DeviceDisconnected,
    /// A device identity was created.
    CreateDeviceIdentity,
    /// A device identity was deleted.
    DeleteDeviceIdentity,
    /// A twin section was patched.
    UpdateTwin,
    /// A twin was replaced.
    ReplaceTwin,
}

impl EventKind {
    /// `opType`.
    pub fn op_type(self) -> &'static str {
        match self {
            EventKind::DeviceConnected => "deviceConnected",
            EventKind::DeviceDisconnected => "deviceDisconnected",
            EventKind::CreateDeviceIdentity => "createDeviceIdentity",
            EventKind::DeleteDeviceIdentity => "deleteDeviceIdentity",
            EventKind::UpdateTwin => "updateTwin",
            EventKind::ReplaceTwin => "replaceTwin",
        }
    }

    /// `iothub-message-schema`.
    pub fn schema(self) -> &'static str {
        match self {
            EventKind::DeviceConnected | EventKind::DeviceDisconnected => {
                "deviceConnectionStateNotification"
            }
            EventKind::CreateDeviceIdentity | EventKind::DeleteDeviceIdentity => {
                "deviceLifecycleNotification"
            }
            EventKind::UpdateTwin | EventKind::ReplaceTwin => "twinChangeNotification",
        }
    }

    /// `iothub-message-source`.
    pub fn source(self) -> &'static str {
        match self {
            EventKind::DeviceConnected | EventKind::DeviceDisconnected => {
                "deviceConnectionStateEvents"
            }
            EventKind::CreateDeviceIdentity | EventKind::DeleteDeviceIdentity => {
                "deviceLifecycleEvents"
            }
            EventKind::UpdateTwin | EventKind::ReplaceTwin => "twinChangeEvents",
        }
    }
}

/// The hub's name as IoT Hub reports it in `hubName`: the first label of its host name
/// (`contoso` for `contoso.azure-devices.net`).
pub fn hub_name(host: &str) -> &str {
    host.split(['.', ':']).next().unwrap_or(host)
}

/// An event record of `kind` for `device` at `at`, with `body` as its JSON payload and
/// `correlation_id` as its unique id (callers that may write one event twice, such as an
/// at-least-once processor, derive it from their input so duplicates share it).
pub fn event_record(
    kind: EventKind,
    hub: &str,
    device: &str,
    at: Timestamp,
    correlation_id: String,
    body: &Value,
) -> Record {
    Record::new(device, Bytes::from(body.to_string()))
        .with_header(header::CONTENT_TYPE, "application/json")
        .with_header(header::CONTENT_ENCODING, "utf-8")
        .with_header(header::CORRELATION_ID, correlation_id)
        .with_header(USER_ID, hub)
        .with_header(header::DEVICE_ID, device)
        .with_header(header::MESSAGE_SOURCE, kind.source())
        .with_header(HUB_NAME, hub)
        .with_header(DEVICE_ID, device)
        .with_header(OP_TYPE, kind.op_type())
        .with_header(OPERATION_TIMESTAMP, at.to_rfc3339())
        .with_header(MESSAGE_SCHEMA, kind.schema())
}

/// The body of a connection state event: `{"sequenceNumber": "…"}`, 64 hexadecimal digits that
/// order one hub's events by string comparison (the time in microseconds, then a counter).
pub fn connection_body(at: Timestamp, counter: u64) -> Value {
    let micros = at.as_unix_micros();
    json!({ "sequenceNumber": format!("{micros:032X}{counter:032X}") })
}

/// The body of a twin change event for a patch of `section` (`"desired"` or `"reported"`) that
/// made its version `version`: `{"version", "properties": {section: patch + "$metadata" +
/// "$version"}}`, the way IoT Hub shows the changed properties. `$metadata` holds the change's
/// time for the section and for each top-level property of the patch.
pub fn twin_change_body(section: &str, version: u64, patch: &Value, at: Timestamp) -> Value {
    let time = at.to_rfc3339();
    let mut changed = patch.as_object().cloned().unwrap_or_default();
    let mut metadata = Map::new();
    metadata.insert("$lastUpdated".into(), Value::String(time.clone()));
    for key in changed.keys() {
        let mut entry = Map::new();
        entry.insert("$lastUpdated".into(), Value::String(time.clone()));
        if section == "desired" {
            entry.insert("$lastUpdatedVersion".into(), json!(version));
        }
        metadata.insert(key.clone(), Value::Object(entry));
    }
    changed.insert("$metadata".into(), Value::Object(metadata));
    changed.insert("$version".into(), json!(version));
    let mut properties = Map::new();
    properties.insert(section.to_owned(), Value::Object(changed));
    json!({ "version": version, "properties": properties })
}

/// The patch a twin change body carries for `section`: its properties without `$metadata` and
/// `$version` (the inverse of [`twin_change_body`]).
pub fn twin_change_patch(body: &Value, section: &str) -> Option<Value> {
    let mut patch = body.get("properties")?.get(section)?.as_object()?.clone();
    patch.retain(|k, _| !k.starts_with('$'));
    Some(Value::Object(patch))
}

/// The body of a lifecycle event: the device's twin as IoT Hub sends it (`deviceId`, `etag`,
/// `version`, `tags` when there are any, `properties.desired` and `properties.reported` with
/// their `$metadata` and `$version`). `twin` is `{"tags", "properties": {"desired",
/// "reported"}}` when the caller knows it; otherwise the body is the empty twin of a new device.
pub fn lifecycle_body(device: &str, twin: Option<&Value>, at: Timestamp) -> Value {
    let time = at.to_rfc3339();
    let section = |name: &str| {
        let mut props = twin
            .and_then(|t| t.get("properties")?.get(name)?.as_object().cloned())
            .unwrap_or_default();
        let version = props.get("$version").and_then(Value::as_u64).unwrap_or(1);
        props.retain(|k, _| !k.starts_with('$'));
        props.insert("$metadata".into(), json!({ "$lastUpdated": time }));
        props.insert("$version".into(), json!(version));
        Value::Object(props)
    };
    let mut body = Map::new();
    body.insert("deviceId".into(), json!(device));
    body.insert("etag".into(), json!("AAAAAAAAAAE="));
    body.insert("version".into(), json!(1));
    if let Some(tags) = twin
        .and_then(|t| t.get("tags"))
        .filter(|t| t.as_object().is_some_and(|o| !o.is_empty()))
    {
        body.insert("tags".into(), tags.clone());
    }
    body.insert(
        "properties".into(),
        json!({ "desired": section("desired"), "reported": section("reported") }),
    );
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_name_is_the_first_label() {
        assert_eq!(hub_name("contoso.azure-devices.net"), "contoso");
        assert_eq!(hub_name("localhost"), "localhost");
        assert_eq!(hub_name("localhost:8443"), "localhost");
    }

    #[test]
    fn a_twin_change_body_round_trips_its_patch() {
        let at = Timestamp::from_unix_micros(1_700_000_000_000_000);
        let patch = json!({"a": 1, "b": {"c": null}});
        let body = twin_change_body("desired", 4, &patch, at);
        assert_eq!(body["version"], 4);
        assert_eq!(body["properties"]["desired"]["$version"], 4);
        assert_eq!(
            body["properties"]["desired"]["$metadata"]["a"]["$lastUpdatedVersion"],
            4
        );
        assert_eq!(twin_change_patch(&body, "desired"), Some(patch));
        assert_eq!(twin_change_patch(&body, "reported"), None);
    }

    #[test]
    fn sequence_numbers_order_by_string_comparison() {
        let a = connection_body(Timestamp::from_unix_micros(10), 9);
        let b = connection_body(Timestamp::from_unix_micros(10), 10);
        let c = connection_body(Timestamp::from_unix_micros(11), 0);
        let s = |v: &Value| v["sequenceNumber"].as_str().unwrap_or_default().to_owned();
        assert_eq!(s(&a).len(), 64);
        assert!(s(&a) < s(&b) && s(&b) < s(&c));
    }
}
