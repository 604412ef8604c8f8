//! Module identities, twins and methods (IoT Hub's module routes):
//!
//! | route | operation | right |
//! | --- | --- | --- |
//! | `PUT/GET/DELETE /devices/{id}/modules/{mid}` | module identity | RegistryWrite / RegistryRead |
//! | `GET /devices/{id}/modules` | a device's modules | RegistryRead |
//! | `GET/PATCH/PUT /twins/{id}/modules/{mid}` | module twin | as the device twin |
//! | `POST /twins/{id}/modules/{mid}/methods` | direct method on the module | ServiceConnect |
//!
//! Modules live in the [`ModuleStore`](iot_identity::ModuleStore) given with
//! [`HttpState::with_modules`]; a module is created only for an existing device, and the hub
//! deletes a device's modules with it. Module twins hold desired and reported properties (no
//! tags: a module twin write with `tags` is refused).

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header::IF_MATCH};
use iot_core::{DeviceId, EndpointId, ModuleId};
use iot_identity::{Credentials, ModuleIdentity, ModuleStore, NewModule};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::devices::{AuthIn, credentials};
use super::json::{authentication, connection_state, replace_patch, strip_meta};
use super::lookup::device_view;
use super::methods::{MethodIn, answer_json, method_call};
use crate::http::auth::Caller;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{DevicePath, JsonBody, if_match};
use crate::http::policy::Rights;
use crate::http::state::HttpState;
use crate::twins::Twin;

/// The `{id}` and `{mid}` of a module path; an invalid one is 400 `ArgumentInvalid`.
#[derive(Debug, Clone)]
pub(super) struct ModulePath(DeviceId, ModuleId);

impl<S: Send + Sync> FromRequestParts<S> for ModulePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path((device, module)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        let device = DeviceId::new(&device)
            .map_err(|e| ApiError::bad_request(format!("invalid device id: {e}")))?;
        let module = ModuleId::new(&module)
            .map_err(|e| ApiError::bad_request(format!("invalid module id: {e}")))?;
        Ok(ModulePath(device, module))
    }
}

/// IoT Hub's `Module` as a back end writes it (unknown members are ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ModuleIn {
    device_id: Option<String>,
    module_id: Option<String>,
    managed_by: Option<String>,
    authentication: Option<AuthIn>,
}

fn store<'a>(
    state: &'a HttpState,
    device: &DeviceId,
    module: &ModuleId,
) -> ApiResult<&'a dyn ModuleStore> {
    state.modules().map(|m| m.as_ref()).ok_or_else(|| {
        ApiError::module_not_found(&EndpointId::module(device.clone(), module.clone()))
    })
}

async fn module_of(
    state: &HttpState,
    device: &DeviceId,
    module: &ModuleId,
) -> ApiResult<std::sync::Arc<ModuleIdentity>> {
    store(state, device, module)?
        .get(device, module)
        .await?
        .ok_or_else(|| {
            ApiError::module_not_found(&EndpointId::module(device.clone(), module.clone()))
        })
}

/// IoT Hub's `Module` JSON.
async fn module_json(state: &HttpState, m: &ModuleIdentity) -> ApiResult<Value> {
    let connected = state
        .gateway()
        .is_module_connected(&m.device, &m.module)
        .await?;
    Ok(json!({
        "deviceId": m.device.as_str(),
        "moduleId": m.module.as_str(),
        "generationId": m.generation_id.to_string(),
        "etag": m.etag.to_string(),
        "managedBy": m.managed_by,
        "connectionState": connection_state(connected),
        "connectionStateUpdatedTime": super::json::NEVER,
        "lastActivityTime": super::json::NEVER,
        "cloudToDeviceMessageCount": 0,
        "authentication": authentication(&m.credentials),
    }))
}

/// `PUT /devices/{id}/modules/{mid}`: no `If-Match` creates (409 if it exists, 404 if the
/// device does not); `If-Match: "*"` creates or replaces; `If-Match: "{etag}"` replaces that
/// version only. Without keys in the body a new module gets generated ones and an existing one
/// keeps its own. Answers 200 with the module, keys included.
pub(super) async fn put(
    caller: Caller,
    ModulePath(device, module): ModulePath,
    State(state): State<HttpState>,
    headers: HeaderMap,
    JsonBody(input): JsonBody<ModuleIn>,
) -> ApiResult<Json<Value>> {
    caller.require(Rights::REGISTRY_WRITE)?;
    let differs = |body: &Option<String>, path: &str| {
        body.as_deref()
            .map(str::trim)
            .is_some_and(|b| !b.is_empty() && b != path)
    };
    if differs(&input.device_id, device.as_str()) || differs(&input.module_id, module.as_str()) {
        return Err(ApiError::bad_request(
            "the deviceId or moduleId in the body differs from the path",
        ));
    }
    // 404 DeviceNotFound: a module belongs to an existing device.
    device_view(&state, &device).await?;
    let modules = store(&state, &device, &module)?;
    let creds = credentials(input.authentication.as_ref())?;
    let existing = modules.get(&device, &module).await?;
    let written = match (existing, headers.contains_key(IF_MATCH)) {
        (None, _) => {
            if if_match(&headers)?.is_some() {
                return Err(ApiError::module_not_found(&EndpointId::module(
                    device, module,
                )));
            }
            let credentials = creds.unwrap_or_else(Credentials::generate_symmetric_keys);
            let new = NewModule::new(device, module, credentials).managed_by(input.managed_by);
            modules.create(new).await?
        }
        (Some(current), true) => {
            let expected = if_match(&headers)?
                .map(|e| e.parse())
                .transpose()
                .map_err(|_| ApiError::bad_request("If-Match is not a module etag"))?;
            let credentials = creds.unwrap_or_else(|| current.credentials.clone());
            modules
                .replace(&device, &module, credentials, input.managed_by, expected)
                .await?
        }
        (Some(_), false) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                crate::http::error::code::MODULE_ALREADY_EXISTS,
                format!("A module with ID '{device}/{module}' is already registered."),
            ));
        }
    };
    Ok(Json(module_json(&state, &written).await?))
}

/// `GET /devices/{id}/modules/{mid}`.
pub(super) async fn get(
    caller: Caller,
    ModulePath(device, module): ModulePath,
    State(state): State<HttpState>,
) -> ApiResult<Json<Value>> {
    caller.require(Rights::REGISTRY_READ)?;
    let m = module_of(&state, &device, &module).await?;
    Ok(Json(module_json(&state, &m).await?))
}

/// `DELETE /devices/{id}/modules/{mid}` (`If-Match` optional): 204. The module's sessions end
/// and its twin is forgotten.
pub(super) async fn delete(
    caller: Caller,
    ModulePath(device, module): ModulePath,
    State(state): State<HttpState>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    caller.require(Rights::REGISTRY_WRITE)?;
    let expected = if_match(&headers)?
        .map(|e| e.parse())
        .transpose()
        .map_err(|_| ApiError::bad_request("If-Match is not a module etag"))?;
    store(&state, &device, &module)?
        .delete(&device, &module, expected)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /devices/{id}/modules`: the device's modules in id order (404 for an unknown device).
pub(super) async fn list(
    caller: Caller,
    DevicePath(device): DevicePath,
    State(state): State<HttpState>,
) -> ApiResult<Json<Value>> {
    caller.require(Rights::REGISTRY_READ)?;
    device_view(&state, &device).await?;
    let Some(modules) = state.modules() else {
        return Ok(Json(Value::Array(Vec::new())));
    };
    let mut out = Vec::new();
    for m in modules.list(&device).await? {
        out.push(module_json(&state, &m).await?);
    }
    Ok(Json(Value::Array(out)))
}

/// A module twin's etag: the module record's and both section versions.
fn twin_etag(m: &ModuleIdentity, twin: &Twin) -> String {
    format!(
        "{}-{}-{}",
        m.etag, twin.desired.version, twin.reported.version
    )
}

fn section(properties: &Value, version: u64) -> Value {
    let mut out = match properties {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    out.insert("$version".into(), Value::from(version));
    // IoT Hub's per-property update times are not kept for module twins: an empty object, so
    // the document has the shape every twin reader expects.
    out.insert("$metadata".into(), Value::Object(Map::new()));
    Value::Object(out)
}

/// IoT Hub's module twin JSON.
async fn twin_json(state: &HttpState, m: &ModuleIdentity, twin: &Twin) -> ApiResult<Value> {
    let connected = state
        .gateway()
        .is_module_connected(&m.device, &m.module)
        .await?;
    Ok(json!({
        "deviceId": m.device.as_str(),
        "moduleId": m.module.as_str(),
        "etag": twin_etag(m, twin),
        "deviceEtag": m.etag.to_string(),
        "version": twin.desired.version + twin.reported.version + 1,
        "status": "enabled",
        "connectionState": connection_state(connected),
        "authenticationType": super::json::auth_type(&m.credentials),
        "tags": {},
        "properties": {
            "desired": section(&twin.desired.properties, twin.desired.version),
            "reported": section(&twin.reported.properties, twin.reported.version),
        },
    }))
}

async fn twin_answer(
    state: &HttpState,
    device: &DeviceId,
    module: &ModuleId,
) -> ApiResult<Json<Value>> {
    let m = module_of(state, device, module).await?;
    let twin = state.gateway().get_module_twin(device, module).await?;
    Ok(Json(twin_json(state, &m, &twin).await?))
}

/// `GET /twins/{id}/modules/{mid}`.
pub(super) async fn get_twin(
    caller: Caller,
    ModulePath(device, module): ModulePath,
    State(state): State<HttpState>,
) -> ApiResult<Json<Value>> {
    caller.require(Rights::REGISTRY_READ.union(Rights::SERVICE_CONNECT))?;
    twin_answer(&state, &device, &module).await
}

/// The parts of a module twin a back end writes.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ModuleTwinIn {
    tags: Option<Map<String, Value>>,
    properties: Option<PropertiesIn>,
}

#[derive(Debug, Default, Deserialize)]
struct PropertiesIn {
    desired: Option<Map<String, Value>>,
}

async fn write_twin(
    state: &HttpState,
    device: &DeviceId,
    module: &ModuleId,
    headers: &HeaderMap,
    input: ModuleTwinIn,
    replace: bool,
) -> ApiResult<Json<Value>> {
    caller_free_checks(&input)?;
    let m = module_of(state, device, module).await?;
    let twin = state.gateway().get_module_twin(device, module).await?;
    let expected = if_match(headers)?;
    if let Some(etag) = &expected
        && *etag != twin_etag(&m, &twin)
    {
        return Err(ApiError::precondition_failed(format!(
            "the twin of module {device}/{module} changed since etag {etag} was read"
        )));
    }
    let desired = input.properties.and_then(|p| p.desired).map(strip_meta);
    let patch = if replace {
        let current = match &twin.desired.properties {
            Value::Object(map) => map.clone(),
            _ => Map::new(),
        };
        Some(replace_patch(&current, &desired.unwrap_or_default()))
    } else {
        desired.map(Value::Object)
    };
    if let Some(patch) = patch.filter(|p| p.as_object().is_some_and(|o| !o.is_empty())) {
        let version = expected.as_ref().map(|_| twin.desired.version);
        state
            .gateway()
            .patch_module_desired(device, module, patch, version)
            .await
            .map_err(|e| match e {
                crate::Error::PreconditionFailed { .. } => ApiError::precondition_failed(format!(
                    "the desired properties of module {device}/{module} changed meanwhile"
                )),
                other => other.into(),
            })?;
    }
    twin_answer(state, device, module).await
}

/// Module twins keep no tags: a write that sets some is refused rather than dropped.
fn caller_free_checks(input: &ModuleTwinIn) -> ApiResult<()> {
    if input.tags.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::bad_request(
            "module twins keep no tags here; write only properties.desired",
        ));
    }
    Ok(())
}

fn required_for_write() -> Rights {
    Rights::SERVICE_CONNECT.union(Rights::REGISTRY_WRITE)
}

/// `PATCH /twins/{id}/modules/{mid}`: merges `properties.desired` (RFC 7396) and pushes the
/// patch to the module's session; `If-Match` checks the twin's etag.
pub(super) async fn patch_twin(
    caller: Caller,
    ModulePath(device, module): ModulePath,
    State(state): State<HttpState>,
    headers: HeaderMap,
    JsonBody(input): JsonBody<ModuleTwinIn>,
) -> ApiResult<Json<Value>> {
    caller.require(required_for_write())?;
    write_twin(&state, &device, &module, &headers, input, false).await
}

/// `PUT /twins/{id}/modules/{mid}`: replaces `properties.desired`.
pub(super) async fn put_twin(
    caller: Caller,
    ModulePath(device, module): ModulePath,
    State(state): State<HttpState>,
    headers: HeaderMap,
    JsonBody(input): JsonBody<ModuleTwinIn>,
) -> ApiResult<Json<Value>> {
    caller.require(required_for_write())?;
    write_twin(&state, &device, &module, &headers, input, true).await
}

/// `POST /twins/{id}/modules/{mid}/methods`: as the device's method route, on the module's
/// session (404 `ModuleNotFound` for an unknown module, `DeviceNotOnline` when it is not
/// connected within the connect timeout).
pub(super) async fn invoke(
    caller: Caller,
    ModulePath(device, module): ModulePath,
    State(state): State<HttpState>,
    JsonBody(input): JsonBody<MethodIn>,
) -> ApiResult<Json<Value>> {
    caller.require(Rights::SERVICE_CONNECT)?;
    let call = method_call(input)?;
    module_of(&state, &device, &module).await?;
    let answer = state
        .gateway()
        .invoke_module_method(&device, &module, call)
        .await?;
    Ok(Json(answer_json(&answer)))
}
