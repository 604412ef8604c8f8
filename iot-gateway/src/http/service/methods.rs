//! Direct methods: `POST /twins/{id}/methods`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::lookup::device_view;
use crate::http::auth::Caller;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{DevicePath, JsonBody};
use crate::http::policy::Rights;
use crate::http::state::HttpState;
use crate::method::{MethodCall, MethodResponse};

/// IoT Hub's `CloudToDeviceMethod`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct MethodIn {
    method_name: String,
    #[serde(default)]
    payload: Value,
    response_timeout_in_seconds: Option<u64>,
    connect_timeout_in_seconds: Option<u64>,
}

/// IoT Hub's bounds: a response within 5 to 300 s (30 by default), a connect wait of 0 to
/// 300 s (0 by default: the device must be connected now).
const RESPONSE_DEFAULT: u64 = 30;
const RESPONSE_RANGE: (u64, u64) = (5, 300);
const CONNECT_MAX: u64 = 300;

/// Invokes the method and answers `{"status": …, "payload": …}`; a device that is not
/// connected (within the connect timeout) is 404 `DeviceNotOnline`, one that does not answer
/// within the response timeout 504 `GatewayTimeout`, as IoT Hub answers.
pub(super) async fn invoke(
    caller: Caller,
    DevicePath(id): DevicePath,
    State(state): State<HttpState>,
    JsonBody(input): JsonBody<MethodIn>,
) -> ApiResult<Json<Value>> {
    caller.require(Rights::SERVICE_CONNECT)?;
    // 404 DeviceNotFound for an unknown device, before waiting for it to connect.
    let call = method_call(input)?;
    device_view(&state, &id).await?;
    let answer = state.gateway().invoke_method(&id, call).await?;
    Ok(Json(answer_json(&answer)))
}

/// The call a `CloudToDeviceMethod` asks for, within IoT Hub's bounds.
pub(super) fn method_call(input: MethodIn) -> ApiResult<MethodCall> {
    if input.method_name.is_empty() || input.method_name.len() > 256 {
        return Err(ApiError::bad_request(
            "methodName must be 1 to 256 characters",
        ));
    }
    let response = input
        .response_timeout_in_seconds
        .unwrap_or(RESPONSE_DEFAULT);
    if !(RESPONSE_RANGE.0..=RESPONSE_RANGE.1).contains(&response) {
        return Err(ApiError::bad_request(
            "responseTimeoutInSeconds must be between 5 and 300",
        ));
    }
    let connect = input.connect_timeout_in_seconds.unwrap_or(0);
    if connect > CONNECT_MAX {
        return Err(ApiError::bad_request(
            "connectTimeoutInSeconds must be between 0 and 300",
        ));
    }
    let payload = serde_json::to_vec(&input.payload)
        .map_err(|e| ApiError::bad_request(format!("payload: {e}")))?;
    let mut call = MethodCall::new(input.method_name, payload);
    call.response_timeout = Duration::from_secs(response);
    call.connect_timeout = Duration::from_secs(connect);
    Ok(call)
}

/// `{"status": …, "payload": …}`: the hub only passes JSON answers on; an empty one is null.
pub(super) fn answer_json(answer: &MethodResponse) -> Value {
    let payload = if answer.payload.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&answer.payload).unwrap_or(Value::Null)
    };
    json!({"status": answer.status, "payload": payload})
}
