//! `GET /statistics/devices` and `GET /statistics/service`.

use axum::Json;
use axum::extract::State;
use iot_registry::Query;
use serde_json::{Value, json};

use crate::http::auth::Caller;
use crate::http::error::{ApiError, ApiResult};
use crate::http::policy::Rights;
use crate::http::state::HttpState;

async fn device_count(state: &HttpState) -> ApiResult<u64> {
    let all = Query::parse("SELECT COUNT() FROM devices")
        .map_err(|e| ApiError::internal(false, "statistics", &e))?;
    Ok(state.registry().count(&all).await?)
}

/// Registry statistics: how many devices, how many enabled and disabled (IoT Hub's
/// `RegistryStatistics`). Status lives in the identity store, so the enabled count walks it.
pub(super) async fn devices(
    caller: Caller,
    State(state): State<HttpState>,
) -> ApiResult<Json<Value>> {
    caller.require(Rights::REGISTRY_READ)?;
    let total = device_count(&state).await?;
    let mut disabled = 0u64;
    let mut after = None;
    loop {
        let page = state
            .identity()
            .list(after.as_ref(), iot_identity::MAX_PAGE_SIZE)
            .await?;
        disabled += page.items.iter().filter(|i| !i.status.is_enabled()).count() as u64;
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    Ok(Json(json!({
        "totalDeviceCount": total,
        "enabledDeviceCount": total.saturating_sub(disabled),
        "disabledDeviceCount": disabled,
    })))
}

/// Service statistics: connected devices (IoT Hub's `ServiceStatistics`).
pub(super) async fn service(
    caller: Caller,
    State(state): State<HttpState>,
) -> ApiResult<Json<Value>> {
    caller.require(Rights::SERVICE_CONNECT.union(Rights::REGISTRY_READ))?;
    let connected = state.gateway().connected_devices().await?.len();
    Ok(Json(json!({ "connectedDeviceCount": connected })))
}
