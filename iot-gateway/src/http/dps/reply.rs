//! DPS's answers over HTTP: a JSON body with a status, and DPS's error shape.

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use iot_core::Timestamp;
use serde_json::Value;

use crate::mqtt::rfc3339;

/// `x-ms-error-code`: the numeric DPS error code of a refusal, as DPS sends it.
const ERROR_CODE_HEADER: &str = "x-ms-error-code";

/// A JSON answer with a status and, for `202` and `503`, a `retry-after`.
pub(super) fn json(status: u16, body: Value, retry_after: Option<u32>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Json(body)).into_response();
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from(secs));
    }
    response
}

/// A refusal with DPS's error body: `{"errorCode", "trackingId", "message", "timestampUtc"}`.
/// `body` is the MQTT form's error body (`errorCode`, `message`), completed here.
pub(super) fn error(status: u16, mut body: Value, retry_after: Option<u32>) -> Response {
    let code = body.get("errorCode").and_then(Value::as_u64).unwrap_or(0);
    if let Some(object) = body.as_object_mut() {
        object.insert(
            "trackingId".into(),
            Value::String(format!("{:032x}", rand::random::<u128>())),
        );
        object.insert(
            "timestampUtc".into(),
            Value::String(rfc3339::format_millis(Timestamp::now())),
        );
    }
    let mut response = json(status, body, retry_after);
    response
        .headers_mut()
        .insert(ERROR_CODE_HEADER, HeaderValue::from(code));
    response
}
