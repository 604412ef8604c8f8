//! `POST /devices/{id}/messages/events`: device-to-cloud messages, one per request or a batch.
//!
//! One message: the body is the payload, as is; its properties come in headers, as IoT Hub's
//! HTTPS API and the device SDKs send them:
//!
//! | header | becomes |
//! | --- | --- |
//! | `iothub-messageid`, `iothub-correlationid` | message id, correlation id |
//! | `iothub-contenttype`, `iothub-contentencoding` | content type and encoding |
//! | `iothub-userid`, `iothub-expiry` (RFC 3339), `iothub-interface-id` | user id, expiry, interface |
//! | `dt-subject` | the IoT Plug and Play component |
//! | `iothub-app-{name}` | custom property `{name}` |
//!
//! — the same telemetry properties the MQTT endpoint makes of `$.mid`, `$.cid`, `$.ct`, … and
//! of the property bag. Other `iothub-` headers (`iothub-to`, the hub's own stamps) are ignored,
//! as the MQTT endpoint drops them.
//!
//! A batch (`Content-Type: application/vnd.microsoft.iothub.json`) is a JSON array of
//! `{"body": "<base64>", "base64Encoded": true, "properties": {"iothub-app-k": "v", …}}`
//! (`base64Encoded` false means `body` is the payload as text; the Node SDK leaves it out and
//! always encodes). Each entry's `properties` use the header names above. Every message of a
//! batch is checked before the first is sent, so a batch with one bad message sends none.
//!
//! A message (or a whole batch) is at most
//! [`HttpConfig::max_message_bytes`](crate::http::HttpConfig::max_message_bytes), 256 KiB as in
//! IoT Hub. Answers 204 once every message is in the log.

use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine as _;
use iot_core::Timestamp;
use serde::Deserialize;

use super::sessions::DeviceSessions;
use super::{Via, with_session};
use crate::http::auth::Caller;
use crate::http::error::{ApiError, ApiResult, code};
use crate::http::extract::DevicePath;
use crate::http::state::HttpState;
use crate::message::Telemetry;
use crate::validate;

/// The content type of a batch of device-to-cloud messages.
pub const BATCH_CONTENT_TYPE: &str = "application/vnd.microsoft.iothub.json";
const APP_PREFIX: &str = "iothub-app-";

/// `POST /devices/{id}/messages/events`.
pub(super) async fn send(
    caller: Caller,
    DevicePath(id): DevicePath,
    State(state): State<HttpState>,
    Extension(sessions): Extension<DeviceSessions>,
    via: Via,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let id = caller.device(&id)?.clone();
    let limit = state.config().max_message_bytes;
    if body.len() > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            code::MESSAGE_TOO_LARGE,
            format!("a message or batch is at most {limit} bytes"),
        ));
    }
    let messages = if is_batch(&headers) {
        batch(&body)?
    } else {
        let mut telemetry = Telemetry::new(body);
        for (name, value) in &headers {
            let value = value
                .to_str()
                .map_err(|_| ApiError::bad_request(format!("header {name} is not ASCII")))?;
            apply_property(&mut telemetry, name.as_str(), value)?;
        }
        vec![telemetry]
    };
    for message in &messages {
        check(message)?;
    }
    with_session(&sessions, &state, &id, &via, |session| {
        let messages = messages.clone();
        async move {
            for message in messages {
                session.send_telemetry(message).await?;
            }
            Ok(())
        }
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn is_batch(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(BATCH_CONTENT_TYPE))
}

/// Sets what header (or batch property) `name` says on `telemetry`. Names compare without case,
/// as HTTP header names do; custom property names keep the case they were sent with.
fn apply_property(telemetry: &mut Telemetry, name: &str, value: &str) -> ApiResult<()> {
    let lower = name.to_ascii_lowercase();
    let system = &mut telemetry.system;
    match lower.as_str() {
        "iothub-messageid" => system.message_id = Some(value.to_owned()),
        "iothub-correlationid" => system.correlation_id = Some(value.to_owned()),
        "iothub-contenttype" => system.content_type = Some(value.to_owned()),
        "iothub-contentencoding" => system.content_encoding = Some(value.to_owned()),
        "iothub-userid" => system.user_id = Some(value.to_owned()),
        "iothub-interface-id" => system.interface_id = Some(value.to_owned()),
        "dt-subject" => system.component = Some(value.to_owned()),
        "iothub-expiry" => {
            system.expiry = Some(
                Timestamp::parse_rfc3339(value)
                    .map_err(|e| ApiError::bad_request(format!("iothub-expiry: {e}")))?,
            );
        }
        _ => {
            if lower.starts_with(APP_PREFIX) {
                let key = &name[APP_PREFIX.len()..];
                telemetry
                    .properties
                    .push((key.to_owned(), value.to_owned()));
            }
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchEntry {
    body: String,
    #[serde(rename = "base64Encoded", default = "yes")]
    base64_encoded: bool,
    #[serde(default)]
    properties: std::collections::BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}

fn batch(body: &[u8]) -> ApiResult<Vec<Telemetry>> {
    let entries: Vec<BatchEntry> = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("a batch is a JSON array of messages: {e}")))?;
    if entries.is_empty() {
        return Err(ApiError::bad_request("a batch holds at least one message"));
    }
    entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let payload = if entry.base64_encoded {
                base64::engine::general_purpose::STANDARD
                    .decode(entry.body.as_bytes())
                    .map_err(|e| {
                        ApiError::bad_request(format!("message {i}: body is not base64: {e}"))
                    })?
            } else {
                entry.body.into_bytes()
            };
            let mut telemetry = Telemetry::new(payload);
            for (name, value) in &entry.properties {
                if !name.to_ascii_lowercase().starts_with("iothub-")
                    && !name.eq_ignore_ascii_case("dt-subject")
                {
                    return Err(ApiError::bad_request(format!(
                        "message {i}: property names are header names (iothub-app-{name})"
                    )));
                }
                apply_property(&mut telemetry, name, value)
                    .map_err(|e| ApiError::bad_request(format!("message {i}: {}", e.message)))?;
            }
            Ok(telemetry)
        })
        .collect()
}

/// The hub's own checks of a message's properties, made before anything is sent, so that a
/// batch is refused whole.
fn check(telemetry: &Telemetry) -> ApiResult<()> {
    let s = &telemetry.system;
    validate::check_system(&[
        ("message-id", &s.message_id),
        ("correlation-id", &s.correlation_id),
        ("content-type", &s.content_type),
        ("content-encoding", &s.content_encoding),
        ("user-id", &s.user_id),
        ("iothub-interface-id", &s.interface_id),
        ("dt-subject", &s.component),
    ])?;
    validate::check_properties(&telemetry.properties)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_map_to_system_and_custom_properties() {
        let mut t = Telemetry::new(Bytes::new());
        for (name, value) in [
            ("IoTHub-MessageId", "m1"),
            ("iothub-correlationid", "c1"),
            ("iothub-contenttype", "application/json"),
            ("iothub-contentencoding", "utf-8"),
            ("iothub-userid", "ops"),
            ("iothub-expiry", "2030-01-01T00:00:00Z"),
            ("dt-subject", "thermostat1"),
            ("iothub-app-Temp", "21"),
            ("iothub-to", "/devices/d/messages/events"),
            ("iothub-connection-device-id", "other"),
            ("user-agent", "x"),
        ] {
            apply_property(&mut t, name, value).expect("property");
        }
        assert_eq!(t.system.message_id.as_deref(), Some("m1"));
        assert_eq!(t.system.correlation_id.as_deref(), Some("c1"));
        assert_eq!(t.system.content_type.as_deref(), Some("application/json"));
        assert_eq!(t.system.content_encoding.as_deref(), Some("utf-8"));
        assert_eq!(t.system.user_id.as_deref(), Some("ops"));
        assert_eq!(t.system.component.as_deref(), Some("thermostat1"));
        assert!(t.system.expiry.is_some());
        assert_eq!(t.properties, vec![("Temp".into(), "21".into())]);
        assert!(apply_property(&mut t, "iothub-expiry", "soon").is_err());
    }

    #[test]
    fn batches_decode_base64_and_text_bodies() {
        let body = br#"[{"body":"aGk=","properties":{"iothub-app-a":"1","iothub-messageid":"m"}},
                        {"body":"plain","base64Encoded":false}]"#;
        let messages = batch(body).expect("batch");
        assert_eq!(messages[0].payload.as_ref(), b"hi");
        assert_eq!(messages[0].properties, vec![("a".into(), "1".into())]);
        assert_eq!(messages[0].system.message_id.as_deref(), Some("m"));
        assert_eq!(messages[1].payload.as_ref(), b"plain");
        for bad in [
            &b"{}"[..],
            b"[]",
            b"[{\"body\":\"***\"}]",
            b"[{\"body\":\"aGk=\",\"properties\":{\"bare\":\"1\"}}]",
            b"[{\"body\":\"aGk=\",\"extra\":1}]",
        ] {
            assert!(batch(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
