//! Twins: `GET/PATCH/PUT /twins/{id}`.
//!
//! A twin's `tags` are the registry record's `metadata` object: reading them reads the record,
//! writing them merges into the record through provisioning (`Provisioning::update`). Desired
//! and reported properties are the gateway's twin (`Gateway::get_twin`, `patch_desired`, which
//! also pushes the patch to the device). There is one copy of each.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use iot_core::DeviceId;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::json::{replace_patch, strip_meta, twin_etag, twin_json};
use super::lookup::device_view;
use crate::http::auth::Caller;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{DevicePath, JsonBody, if_match};
use crate::http::policy::Rights;
use crate::http::state::HttpState;

/// The parts of a twin a back end writes.
#[derive(Debug, Default, Deserialize)]
pub(super) struct TwinIn {
    tags: Option<Map<String, Value>>,
    properties: Option<PropertiesIn>,
}

#[derive(Debug, Default, Deserialize)]
struct PropertiesIn {
    desired: Option<Map<String, Value>>,
}

/// The twin of `id` as IoT Hub shows it.
pub(super) async fn twin_of(state: &HttpState, id: &DeviceId) -> ApiResult<Value> {
    let view = device_view(state, id).await?;
    let twin = state.gateway().get_twin(id).await?;
    Ok(twin_json(&view, &twin))
}

/// `GET /twins/{id}`.
pub(super) async fn get(
    caller: Caller,
    DevicePath(id): DevicePath,
    State(state): State<HttpState>,
) -> ApiResult<Json<Value>> {
    caller.require(Rights::REGISTRY_READ.union(Rights::SERVICE_CONNECT))?;
    Ok(Json(twin_of(&state, &id).await?))
}

/// How a write changes each part.
enum Write {
    Merge,
    Replace,
}

async fn write(
    state: &HttpState,
    id: &DeviceId,
    headers: &HeaderMap,
    input: TwinIn,
    how: Write,
) -> ApiResult<Value> {
    let view = device_view(state, id).await?;
    let twin = state.gateway().get_twin(id).await?;
    let expected = if_match(headers)?;
    if let Some(etag) = &expected
        && *etag != twin_etag(&view.record, &twin)
    {
        return Err(ApiError::precondition_failed(format!(
            "the twin of {id} changed since etag {etag} was read"
        )));
    }
    let record_etag = expected.as_ref().map(|_| view.record.etag.clone());
    let desired_version = expected.as_ref().map(|_| twin.desired.version);
    let desired = input.properties.and_then(|p| p.desired).map(strip_meta);
    let (tags_patch, desired_patch) = match how {
        Write::Merge => (input.tags.map(Value::Object), desired.map(Value::Object)),
        Write::Replace => {
            let current_desired = match &twin.desired.properties {
                Value::Object(m) => m.clone(),
                _ => Map::new(),
            };
            (
                Some(replace_patch(
                    &view.record.metadata,
                    &input.tags.unwrap_or_default(),
                )),
                Some(replace_patch(
                    &current_desired,
                    &desired.unwrap_or_default(),
                )),
            )
        }
    };
    // Tags first: a refused tag patch (too large, bad key) leaves the desired section alone.
    if let Some(patch) = tags_patch.filter(|p| p.as_object().is_some_and(|m| !m.is_empty())) {
        state
            .provisioning()
            .update(id, patch, record_etag.as_ref())
            .await?;
    }
    if let Some(patch) = desired_patch.filter(|p| p.as_object().is_some_and(|m| !m.is_empty())) {
        state
            .gateway()
            .patch_desired(id, patch, desired_version)
            .await
            .map_err(|e| match e {
                crate::Error::PreconditionFailed { .. } => ApiError::precondition_failed(format!(
                    "the desired properties of {id} changed meanwhile"
                )),
                other => other.into(),
            })?;
    }
    twin_of(state, id).await
}

fn required_for_write() -> Rights {
    Rights::SERVICE_CONNECT.union(Rights::REGISTRY_WRITE)
}

/// `PATCH /twins/{id}`: merges `tags` and `properties.desired` (RFC 7396); `If-Match` checks
/// the twin's etag.
pub(super) async fn patch(
    caller: Caller,
    DevicePath(id): DevicePath,
    State(state): State<HttpState>,
    headers: HeaderMap,
    JsonBody(input): JsonBody<TwinIn>,
) -> ApiResult<Json<Value>> {
    caller.require(required_for_write())?;
    Ok(Json(
        write(&state, &id, &headers, input, Write::Merge).await?,
    ))
}

/// `PUT /twins/{id}`: replaces `tags` and `properties.desired` (missing ones become empty).
pub(super) async fn put(
    caller: Caller,
    DevicePath(id): DevicePath,
    State(state): State<HttpState>,
    headers: HeaderMap,
    JsonBody(input): JsonBody<TwinIn>,
) -> ApiResult<Json<Value>> {
    caller.require(required_for_write())?;
    Ok(Json(
        write(&state, &id, &headers, input, Write::Replace).await?,
    ))
}
