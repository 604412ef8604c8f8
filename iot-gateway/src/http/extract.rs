//! Extractors that answer bad input in IoT Hub's error shape (axum's own answer plain text).

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use iot_core::DeviceId;
use serde::de::DeserializeOwned;

use super::error::{ApiError, code};

/// A JSON request body. A body that is not JSON, or not of the expected shape, is 400
/// `ArgumentInvalid`; a wrong `Content-Type` is 415; one over the body limit is 413.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(json_rejection(rejection.status(), rejection.body_text())),
        }
    }
}

fn json_rejection(status: StatusCode, text: String) -> ApiError {
    match status {
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            status,
            code::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON (Content-Type: application/json)",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            status,
            code::MESSAGE_TOO_LARGE,
            "the request body is too large",
        ),
        _ => ApiError::bad_request(text),
    }
}

/// The `{id}` of a path, as a device id; an invalid one is 400 `ArgumentInvalid`.
#[derive(Debug, Clone)]
pub struct DevicePath(pub DeviceId);

impl<S: Send + Sync> FromRequestParts<S> for DevicePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        DeviceId::new(&raw)
            .map(DevicePath)
            .map_err(|e| ApiError::bad_request(format!("invalid device id: {e}")))
    }
}

/// The value of an `If-Match` header without its quotes: `None` when absent or `*`.
pub fn if_match(parts: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = parts.get(axum::http::header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::bad_request("If-Match is not ASCII"))?
        .trim();
    let text = text.strip_prefix("W/").unwrap_or(text);
    let unquoted = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    if unquoted == "*" || unquoted.is_empty() {
        return Ok(None);
    }
    Ok(Some(unquoted.to_owned()))
}
