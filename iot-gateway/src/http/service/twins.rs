//! Twins: `GET/PATCH/PUT /twins/{id}`.
//!
//! A twin's `tags` are the registry record's `metadata` object: reading them reads the record,
//! writing them merges into the record through provisioning (`Provisioning::update`). Desired
//! and reported properties are the gateway's twin (`Gateway::get_twin`, `patch_desired`, which
//! also pushes the patch to the device). There is one copy of each.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use iot_core::DeviceId;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::json::{replace_patch, strip_meta, twin_etag};
use super::lookup::device_view;
use super::twin_doc::TwinDoc;
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

/// A twin answer: IoT Hub's twin JSON, written straight from its parts ([`TwinDoc`]).
pub(super) struct TwinAnswer(Vec<u8>);

impl IntoResponse for TwinAnswer {
    fn into_response(self) -> Response {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.0,
        )
            .into_response()
    }
}

/// The twin of `id` as IoT Hub shows it.
pub(super) async fn twin_of(state: &HttpState, id: &DeviceId) -> ApiResult<TwinAnswer> {
    let view = device_view(state, id).await?;
    let twin = state.gateway().get_twin(id).await?;
    Ok(TwinAnswer(TwinDoc::new(&view, &twin).to_vec()))
}

/// `GET /twins/{id}`.
pub(super) async fn get(
    caller: Caller,
    DevicePath(id): DevicePath,
    State(state): State<HttpState>,
) -> ApiResult<TwinAnswer> {
    caller.require(Rights::REGISTRY_READ.union(Rights::SERVICE_CONNECT))?;
    twin_of(&state, &id).await
}

/// How a write changes each part.
enum Write {
    Merge,
    Replace,
}

/// A patch worth writing: a non-empty object.
fn non_empty(patch: Option<Value>) -> Option<Value> {
    patch.filter(|p| p.as_object().is_some_and(|m| !m.is_empty()))
}

/// A refused desired patch, in IoT Hub's words.
fn desired_error(id: &DeviceId, e: crate::Error) -> ApiError {
    match e {
        crate::Error::PreconditionFailed { .. } => ApiError::precondition_failed(format!(
            "the desired properties of {id} changed meanwhile"
        )),
        other => other.into(),
    }
}

/// Writes `tags` (the registry record, through provisioning) and `properties.desired` (the
/// gateway's twin). They live in two stores, so this is two writes; it is arranged so that a
/// refused request writes nothing and a failed one leaves a state the client can read and retry
/// (see docs/http.md, "Twins"):
///
/// 1. the `If-Match` etag is checked against the twin read first;
/// 2. the desired patch is checked as its write will check it (`Gateway::check_desired`:
///    content, depth, size, version) before anything is written;
/// 3. the tags are written — provisioning validates them (sizes, depth, keys, hooks) in the same
///    step, so a refusal there has written nothing either;
/// 4. the desired patch is written. It was checked in step 2, so it fails only for what cannot
///    be checked ahead (a concurrent desired patch under `If-Match`, a throttle, a store); the
///    answer then says that the tags were written, and the twin shows it.
async fn write(
    state: &HttpState,
    id: &DeviceId,
    headers: &HeaderMap,
    input: TwinIn,
    how: Write,
) -> ApiResult<TwinAnswer> {
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
    let (tags_patch, desired_patch) = (non_empty(tags_patch), non_empty(desired_patch));
    if let (Some(_), Some(patch)) = (&tags_patch, &desired_patch) {
        state
            .gateway()
            .check_desired(id, patch, desired_version)
            .await
            .map_err(|e| desired_error(id, e))?;
    }
    let tags_written = tags_patch.is_some();
    if let Some(patch) = tags_patch {
        state
            .provisioning()
            .update(id, patch, record_etag.as_ref())
            .await?;
    }
    if let Some(patch) = desired_patch {
        let gateway = state.gateway();
        let written = match how {
            Write::Merge => gateway.patch_desired(id, patch, desired_version).await,
            // IoT Hub's twin change event for a PUT says `replaceTwin`.
            Write::Replace => gateway.replace_desired(id, patch, desired_version).await,
        };
        if let Err(e) = written {
            let mut error = desired_error(id, e);
            if tags_written {
                tracing::warn!(device = %id, error = %error, "twin tags written, desired properties not");
                error.message = format!(
                    "the tags were written, the desired properties were not: {}",
                    error.message
                );
            }
            return Err(error);
        }
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
) -> ApiResult<TwinAnswer> {
    caller.require(required_for_write())?;
    let answer = write(&state, &id, &headers, input, Write::Merge).await?;
    fleet_notify(&state, &id);
    Ok(answer)
}

/// Tells the configuration engine that the twin of `id` changed (its tags may now match
/// another target condition).
pub(crate) fn fleet_notify(state: &HttpState, id: &DeviceId) {
    if let Some(fleet) = state.fleet() {
        fleet.configurations.device_changed(id);
    }
}

/// Merges `tags` and `desired` into the twin of `id` as `PATCH /twins/{id}` does, without
/// `If-Match` (a job's twin update, a configuration's content).
pub(crate) async fn merge(
    state: &HttpState,
    id: &DeviceId,
    tags: Option<Value>,
    desired: Option<Value>,
) -> ApiResult<()> {
    let mut input = TwinIn::default();
    if let Some(tags) = tags {
        input.tags = Some(match tags {
            Value::Object(m) => m,
            _ => return Err(ApiError::bad_request("updateTwin.tags must be an object")),
        });
    }
    if let Some(desired) = desired {
        input.properties = Some(PropertiesIn {
            desired: Some(match desired {
                Value::Object(m) => m,
                _ => {
                    return Err(ApiError::bad_request(
                        "properties.desired must be an object",
                    ));
                }
            }),
        });
    }
    write(state, id, &HeaderMap::new(), input, Write::Merge).await?;
    Ok(())
}

/// `PUT /twins/{id}`: replaces `tags` and `properties.desired` (missing ones become empty).
pub(super) async fn put(
    caller: Caller,
    DevicePath(id): DevicePath,
    State(state): State<HttpState>,
    headers: HeaderMap,
    JsonBody(input): JsonBody<TwinIn>,
) -> ApiResult<TwinAnswer> {
    caller.require(required_for_write())?;
    let answer = write(&state, &id, &headers, input, Write::Replace).await?;
    fleet_notify(&state, &id);
    Ok(answer)
}
