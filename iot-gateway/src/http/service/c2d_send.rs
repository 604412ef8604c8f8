//! The C2D extension (ours, not IoT Hub's): IoT Hub's service SDKs send cloud-to-device
//! messages over AMQP only; this lets any HTTP client do it, and read the feedback.
//!
//! * `POST /devices/{id}/messages/cloudToDevice` — the body is the payload, as is; the message's
//!   properties come in the headers the device side of IoT Hub's HTTPS API uses for them:
//!   `iothub-messageid`, `iothub-correlationid`, `iothub-ack` (`none`, `positive`, `negative`,
//!   `full`), `iothub-expiry` (RFC 3339, at most two days ahead), `Content-Type`,
//!   `Content-Encoding`, and `iothub-app-{name}` for each custom property. Answers 200 with
//!   `{"messageId", "expiryTimeUtc"}`.
//! * `GET /messages/serviceBound/feedback?from=N&max=M` — feedback records from position `N`
//!   (0 is the oldest), at most `M` (default 100, at most 1 000), in IoT Hub's feedback record
//!   shape plus each record's `offset`; `next` is the position to ask for next.
//!
//! Both need `ServiceConnect`.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use iot_core::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};

use super::lookup::device_view;
use crate::http::auth::Caller;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::DevicePath;
use crate::http::policy::Rights;
use crate::http::state::HttpState;
use crate::message::{AckRequest, C2dMessage, FeedbackStatus};

const APP_PREFIX: &str = "iothub-app-";

fn header_text(headers: &HeaderMap, name: &str) -> ApiResult<Option<String>> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| ApiError::bad_request(format!("header {name} is not ASCII")))
        })
        .transpose()
}

fn ack(text: Option<&str>) -> ApiResult<AckRequest> {
    Ok(match text.map(str::to_ascii_lowercase).as_deref() {
        None | Some("none") => AckRequest::None,
        Some("positive") => AckRequest::Positive,
        Some("negative") => AckRequest::Negative,
        Some("full") => AckRequest::Full,
        Some(_) => {
            return Err(ApiError::bad_request(
                "iothub-ack must be none, positive, negative or full",
            ));
        }
    })
}

/// `POST /devices/{id}/messages/cloudToDevice`.
pub(super) async fn send(
    caller: Caller,
    DevicePath(id): DevicePath,
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    caller.require(Rights::SERVICE_CONNECT)?;
    device_view(&state, &id).await?;
    let mut message = C2dMessage::new(body);
    message.message_id = header_text(&headers, "iothub-messageid")?;
    message.correlation_id = header_text(&headers, "iothub-correlationid")?;
    message.content_type = header_text(&headers, "content-type")?;
    message.content_encoding = header_text(&headers, "content-encoding")?;
    message.ack = ack(header_text(&headers, "iothub-ack")?.as_deref())?;
    if let Some(expiry) = header_text(&headers, "iothub-expiry")? {
        let at = Timestamp::parse_rfc3339(&expiry)
            .map_err(|e| ApiError::bad_request(format!("iothub-expiry: {e}")))?;
        let ttl = at
            .to_system_time()
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO);
        if ttl.is_zero() {
            return Err(ApiError::bad_request("iothub-expiry is in the past"));
        }
        message.ttl = Some(ttl);
    }
    for (name, value) in &headers {
        if let Some(key) = name.as_str().strip_prefix(APP_PREFIX) {
            let value = value
                .to_str()
                .map_err(|_| ApiError::bad_request(format!("header {name} is not ASCII")))?;
            message.properties.push((key.to_owned(), value.to_owned()));
        }
    }
    let receipt = state.gateway().send_c2d(&id, message).await?;
    Ok(Json(json!({
        "messageId": receipt.message_id,
        "expiryTimeUtc": receipt.expires_at.to_rfc3339(),
    })))
}

#[derive(Debug, Deserialize)]
pub(super) struct FeedbackParams {
    from: Option<u64>,
    max: Option<usize>,
}

fn status_code(status: FeedbackStatus) -> &'static str {
    match status {
        FeedbackStatus::Success => "Success",
        FeedbackStatus::Expired => "Expired",
        FeedbackStatus::DeliveryCountExceeded => "DeliveryCountExceeded",
        FeedbackStatus::Rejected => "Rejected",
    }
}

/// `GET /messages/serviceBound/feedback?from=N&max=M`.
pub(super) async fn feedback(
    caller: Caller,
    State(state): State<HttpState>,
    Query(params): Query<FeedbackParams>,
) -> ApiResult<Json<Value>> {
    caller.require(Rights::SERVICE_CONNECT)?;
    let from = params.from.unwrap_or(0);
    let max = params.max.unwrap_or(100).clamp(1, 1_000);
    let records = state.gateway().read_feedback(from, max).await?;
    let next = records.last().map_or(from, |r| r.offset + 1);
    let records: Vec<Value> = records
        .into_iter()
        .map(|r| {
            json!({
                "offset": r.offset,
                "originalMessageId": r.message_id,
                "correlationId": r.correlation_id,
                "deviceId": r.device_id.as_str(),
                "statusCode": status_code(r.status),
                "description": status_code(r.status),
                "enqueuedTimeUtc": r.at.to_rfc3339(),
                "deliveryCount": r.delivery_count,
            })
        })
        .collect();
    Ok(Json(json!({"records": records, "next": next})))
}
