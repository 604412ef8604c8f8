//! `GET /statistics/devices` and `GET /statistics/service`.

use axum::Json;
use axum::extract::State;
use std::collections::HashSet;

use iot_provisioning::access::RecordFilter;
use iot_registry::{PageRequest, Query};
use serde_json::{Value, json};

use crate::http::auth::Caller;
use crate::http::error::{ApiError, ApiResult};
use crate::http::policy::Rights;
use crate::http::state::HttpState;

/// The registry page size used while scanning a user's devices.
const SCAN_PAGE: usize = 1_000;

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
    if let Some(filter) = caller.listing_filter() {
        return Ok(Json(counts_within(&state, filter).await?));
    }
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

/// The counts over the devices `filter` holds: the registry is paged once for the devices it
/// holds (decided on each record in hand), the identity store once for their status.
async fn counts_within(state: &HttpState, filter: &RecordFilter) -> ApiResult<Value> {
    let all = Query::parse("SELECT * FROM devices")
        .map_err(|e| ApiError::internal(false, "statistics", &e))?;
    let mut held = HashSet::new();
    let mut page = PageRequest {
        max_items: SCAN_PAGE,
        continuation: None,
    };
    loop {
        let mut result = state.registry().query(&all, &page).await?;
        let continuation = result.continuation.take();
        held.extend(
            result
                .into_records()?
                .into_iter()
                .filter(|r| filter.holds(r))
                .map(|r| r.device_id),
        );
        match continuation {
            Some(token) => page.continuation = Some(token),
            None => break,
        }
    }
    let (mut total, mut disabled) = (0u64, 0u64);
    let mut after = None;
    while !held.is_empty() {
        let page = state
            .identity()
            .list(after.as_ref(), iot_identity::MAX_PAGE_SIZE)
            .await?;
        for identity in page.items.iter().filter(|i| held.contains(&i.id)) {
            total += 1;
            disabled += u64::from(!identity.status.is_enabled());
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    Ok(json!({
        "totalDeviceCount": total,
        "enabledDeviceCount": total - disabled,
        "disabledDeviceCount": disabled,
    }))
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
