//! Cloud-to-device messages from the back end: IoT Hub's queue purge.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::lookup::device_view;
use crate::http::auth::Caller;
use crate::http::error::ApiResult;
use crate::http::extract::DevicePath;
use crate::http::policy::Rights;
use crate::http::state::HttpState;

/// `DELETE /devices/{id}/commands`: removes every queued C2D message of the device; answers
/// IoT Hub's `PurgeMessageQueueResult`.
pub(super) async fn purge(
    caller: Caller,
    DevicePath(id): DevicePath,
    State(state): State<HttpState>,
) -> ApiResult<Json<Value>> {
    caller.require(Rights::SERVICE_CONNECT)?;
    device_view(&state, &id).await?;
    let removed = state.gateway().purge_c2d(&id).await?;
    Ok(Json(
        json!({"deviceId": id.as_str(), "moduleId": null, "totalMessagesPurged": removed}),
    ))
}
