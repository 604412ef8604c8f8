//! Device identities: `PUT/GET/DELETE /devices/{id}`, `GET /devices`, bulk `POST /devices`.
//!
//! Every write goes through [`Provisioning`](iot_provisioning::Provisioning): a new device is
//! registered (identity and registry record together), a status change is activate /
//! deactivate, new keys are a credential reset, a delete is unregister.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header::IF_MATCH};
use iot_core::DeviceId;
use iot_identity::{Credentials, SymmetricKey, Thumbprint};
use iot_provisioning::RegisterRequest;
use serde::Deserialize;
use serde_json::{Value, json};

use super::json::{DeviceView, device_etag, device_json};
use super::lookup::{device_view, view_of};
use crate::http::auth::Caller;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{DevicePath, JsonBody, if_match};
use crate::http::policy::Rights;
use crate::http::state::HttpState;

/// IoT Hub's `Device` as a back end writes it (unknown members are ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct DeviceIn {
    device_id: Option<String>,
    status: Option<String>,
    authentication: Option<AuthIn>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct AuthIn {
    #[serde(rename = "type")]
    kind: Option<String>,
    symmetric_key: Option<KeysIn>,
    x509_thumbprint: Option<ThumbprintsIn>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeysIn {
    primary_key: Option<String>,
    secondary_key: Option<String>,
}

impl std::fmt::Debug for KeysIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeysIn(<redacted>)")
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ThumbprintsIn {
    primary_thumbprint: Option<String>,
    secondary_thumbprint: Option<String>,
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// The credentials a body asks for: `None` to keep (or, for a new device, generate) keys.
pub(super) fn credentials(auth: Option<&AuthIn>) -> ApiResult<Option<Credentials>> {
    let Some(auth) = auth else { return Ok(None) };
    let kind = auth.kind.as_deref().unwrap_or("sas");
    match kind {
        "sas" => {
            let keys = auth.symmetric_key.as_ref();
            let primary = keys.and_then(|k| non_empty(&k.primary_key));
            let secondary = keys.and_then(|k| non_empty(&k.secondary_key));
            let key = |text: Option<&str>| -> ApiResult<SymmetricKey> {
                match text {
                    Some(t) => SymmetricKey::from_base64(t).map_err(|_| {
                        ApiError::bad_request("a symmetric key must be 32 to 64 bytes in base64")
                    }),
                    None => Ok(SymmetricKey::generate()),
                }
            };
            if primary.is_none() && secondary.is_none() {
                return Ok(None);
            }
            Ok(Some(Credentials::SymmetricKeys {
                primary: key(primary)?,
                secondary: key(secondary)?,
            }))
        }
        "selfSigned" => {
            let prints = auth.x509_thumbprint.as_ref();
            let parse = |text: Option<&str>| -> ApiResult<Option<Thumbprint>> {
                text.map(|t| {
                    Thumbprint::from_hex(t).map_err(|_| {
                        ApiError::bad_request("a thumbprint must be a SHA-256 in 64 hex digits")
                    })
                })
                .transpose()
            };
            let primary = parse(prints.and_then(|p| non_empty(&p.primary_thumbprint)))?
                .ok_or_else(|| ApiError::bad_request("selfSigned needs a primaryThumbprint"))?;
            let secondary =
                parse(prints.and_then(|p| non_empty(&p.secondary_thumbprint)))?.unwrap_or(primary);
            Ok(Some(Credentials::X509 { primary, secondary }))
        }
        "certificateAuthority" => Ok(Some(Credentials::CertificateAuthority)),
        other => Err(ApiError::bad_request(format!(
            "authentication type {:?} is not supported (use sas, selfSigned or certificateAuthority)",
            other.chars().take(32).collect::<String>()
        ))),
    }
}

fn wants_enabled(status: Option<&str>) -> ApiResult<Option<bool>> {
    match status {
        None => Ok(None),
        Some(s) if s.eq_ignore_ascii_case("enabled") => Ok(Some(true)),
        Some(s) if s.eq_ignore_ascii_case("disabled") => Ok(Some(false)),
        Some(_) => Err(ApiError::bad_request("status must be enabled or disabled")),
    }
}

/// How a write treats an existing device.
pub(super) enum WriteMode {
    /// Create only: an existing device is 409.
    Create,
    /// Create or update.
    Upsert,
    /// Update only if the device's etag is this one (412 otherwise, 404 if absent).
    IfMatch(String),
}

/// Creates or updates `id` as `input` asks, through provisioning, and tells the configuration
/// engine (a new device may be the target of a configuration).
pub(super) async fn write_device(
    state: &HttpState,
    id: &DeviceId,
    input: &DeviceIn,
    mode: WriteMode,
) -> ApiResult<DeviceView> {
    let view = write_device_record(state, id, input, mode).await?;
    super::twins::fleet_notify(state, id);
    Ok(view)
}

async fn write_device_record(
    state: &HttpState,
    id: &DeviceId,
    input: &DeviceIn,
    mode: WriteMode,
) -> ApiResult<DeviceView> {
    if let Some(body_id) = non_empty(&input.device_id)
        && body_id != id.as_str()
    {
        return Err(ApiError::bad_request(
            "the deviceId in the body differs from the one in the path",
        ));
    }
    let creds = credentials(input.authentication.as_ref())?;
    let enabled = wants_enabled(input.status.as_deref())?;
    let provisioning = state.provisioning();
    let existing = match device_view(state, id).await {
        Ok(view) => Some(view),
        Err(e) if e.status == StatusCode::NOT_FOUND => None,
        Err(e) => return Err(e),
    };
    let Some(current) = existing else {
        if let WriteMode::IfMatch(_) = mode {
            return Err(ApiError::device_not_found(id.as_str()));
        }
        let mut request = RegisterRequest::new(id.clone(), json!({}));
        if let Some(c) = creds {
            request = request.with_credentials(c);
        }
        provisioning.register(request).await?;
        if enabled == Some(false) {
            provisioning.deactivate(id, None).await?;
        }
        return device_view(state, id).await;
    };
    match mode {
        WriteMode::Create => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                crate::http::error::code::DEVICE_ALREADY_EXISTS,
                format!("A device with ID '{id}' is already registered."),
            ));
        }
        WriteMode::IfMatch(etag) if etag != device_etag(&current.identity, &current.record) => {
            return Err(ApiError::precondition_failed(format!(
                "device {id} changed since etag {etag} was read"
            )));
        }
        _ => {}
    }
    let is_enabled = current.identity.status.is_enabled();
    let new_keys = creds.filter(|c| *c != current.identity.credentials);
    // Credentials can only be reset on an enabled device: enable first, disable last.
    if enabled == Some(true) && !is_enabled {
        provisioning.activate(id, None).await?;
    }
    if let Some(c) = new_keys {
        provisioning.reset_credentials(id, Some(c)).await?;
    }
    if enabled == Some(false) && is_enabled {
        provisioning.deactivate(id, None).await?;
    }
    device_view(state, id).await
}

/// `PUT /devices/{id}`: no `If-Match` creates (409 if it exists); `If-Match: "*"` creates or
/// updates; `If-Match: "{etag}"` updates that version only. Answers 200 with the device.
pub(super) async fn put(
    caller: Caller,
    DevicePath(id): DevicePath,
    State(state): State<HttpState>,
    headers: HeaderMap,
    JsonBody(input): JsonBody<DeviceIn>,
) -> ApiResult<Json<Value>> {
    caller.require(Rights::REGISTRY_WRITE)?;
    let mode = match (headers.contains_key(IF_MATCH), if_match(&headers)?) {
        (false, _) => WriteMode::Create,
        (true, None) => WriteMode::Upsert,
        (true, Some(etag)) => WriteMode::IfMatch(etag),
    };
    let view = write_device(&state, &id, &input, mode).await?;
    Ok(Json(device_json(&view)))
}

/// `GET /devices/{id}`.
pub(super) async fn get(
    caller: Caller,
    DevicePath(id): DevicePath,
    State(state): State<HttpState>,
) -> ApiResult<Json<Value>> {
    caller.require(Rights::REGISTRY_READ)?;
    Ok(Json(device_json(&device_view(&state, &id).await?)))
}

/// Unregisters `id` if its etag is `etag` (when given).
pub(super) async fn delete_device(
    state: &HttpState,
    id: &DeviceId,
    etag: Option<&str>,
) -> ApiResult<()> {
    let view = device_view(state, id).await?;
    if let Some(etag) = etag
        && etag != device_etag(&view.identity, &view.record)
    {
        return Err(ApiError::precondition_failed(format!(
            "device {id} changed since etag {etag} was read"
        )));
    }
    state
        .provisioning()
        .unregister(id, Some(&view.record.etag))
        .await?;
    Ok(())
}

/// `DELETE /devices/{id}` (`If-Match` optional, `"*"` for any version): 204.
pub(super) async fn delete(
    caller: Caller,
    DevicePath(id): DevicePath,
    State(state): State<HttpState>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    caller.require(Rights::REGISTRY_WRITE)?;
    delete_device(&state, &id, if_match(&headers)?.as_deref()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub(super) struct ListParams {
    top: Option<usize>,
}

/// `GET /devices?top=N`: up to `N` devices (default and most 1 000), in id order.
pub(super) async fn list(
    caller: Caller,
    State(state): State<HttpState>,
    Query(params): Query<ListParams>,
) -> ApiResult<Json<Value>> {
    caller.require(Rights::REGISTRY_READ)?;
    let top = params
        .top
        .unwrap_or(iot_identity::MAX_PAGE_SIZE)
        .clamp(1, iot_identity::MAX_PAGE_SIZE);
    // A user who may see only some devices: identity pages are walked until `top` of theirs
    // are found (or the fleet ends); everyone else gets the first page as it is.
    let filter = caller.listing_filter();
    let mut out = Vec::with_capacity(top.min(64));
    let mut after = None;
    loop {
        let page = state.identity().list(after.as_ref(), top).await?;
        for identity in page.items {
            let Some(record) = state.registry().get(&identity.id).await? else {
                continue;
            };
            if filter.is_some_and(|f| !f.holds(&record)) {
                continue;
            }
            out.push(device_json(&view_of(&state, identity, record).await?));
            if out.len() == top {
                return Ok(Json(Value::Array(out)));
            }
        }
        match page.next {
            Some(next) if filter.is_some() => after = Some(next),
            _ => return Ok(Json(Value::Array(out))),
        }
    }
}

/// One item of a bulk request (IoT Hub's `ExportImportDevice`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct BulkItem {
    id: String,
    import_mode: Option<String>,
    #[serde(rename = "eTag")]
    etag: Option<String>,
    status: Option<String>,
    authentication: Option<AuthIn>,
}

/// `POST /devices`: create, update or delete up to `max_bulk_devices` devices; each item
/// succeeds or fails on its own, and the answer lists the failures (IoT Hub's
/// `BulkRegistryOperationResult`).
pub(super) async fn bulk(
    caller: Caller,
    State(state): State<HttpState>,
    JsonBody(items): JsonBody<Vec<BulkItem>>,
) -> ApiResult<Json<Value>> {
    caller.require(Rights::REGISTRY_WRITE)?;
    let max = state.config().max_bulk_devices;
    if items.len() > max {
        return Err(ApiError::bad_request(format!(
            "a bulk request holds at most {max} devices"
        )));
    }
    let mut errors = Vec::new();
    for item in items {
        let result = bulk_item(&state, &item).await;
        if let Err(e) = result {
            errors.push(json!({
                "deviceId": item.id,
                "errorCode": e.code,
                "errorStatus": e.message,
            }));
        }
    }
    Ok(Json(json!({
        "isSuccessful": errors.is_empty(),
        "errors": errors,
        "warnings": [],
    })))
}

async fn bulk_item(state: &HttpState, item: &BulkItem) -> ApiResult<()> {
    let id = DeviceId::new(&item.id)
        .map_err(|e| ApiError::bad_request(format!("invalid device id: {e}")))?;
    let input = DeviceIn {
        device_id: Some(item.id.clone()),
        status: item.status.clone(),
        authentication: None,
    };
    let input = DeviceIn {
        authentication: item.authentication.as_ref().map(|a| AuthIn {
            kind: a.kind.clone(),
            symmetric_key: a.symmetric_key.as_ref().map(|k| KeysIn {
                primary_key: k.primary_key.clone(),
                secondary_key: k.secondary_key.clone(),
            }),
            x509_thumbprint: a.x509_thumbprint.as_ref().map(|t| ThumbprintsIn {
                primary_thumbprint: t.primary_thumbprint.clone(),
                secondary_thumbprint: t.secondary_thumbprint.clone(),
            }),
        }),
        ..input
    };
    let etag = || {
        item.etag
            .clone()
            .map(|e| e.trim_matches('"').to_owned())
            .ok_or_else(|| ApiError::bad_request("this importMode needs an eTag"))
    };
    match item.import_mode.as_deref().unwrap_or("create") {
        "create" => write_device(state, &id, &input, WriteMode::Create)
            .await
            .map(drop),
        "update" | "createOrUpdate" => write_device(state, &id, &input, WriteMode::Upsert)
            .await
            .map(drop),
        "updateIfMatchETag" => write_device(state, &id, &input, WriteMode::IfMatch(etag()?))
            .await
            .map(drop),
        "delete" => delete_device(state, &id, None).await,
        "deleteIfMatchETag" => delete_device(state, &id, Some(&etag()?)).await,
        other => Err(ApiError::bad_request(format!(
            "unknown importMode {:?}",
            other.chars().take(32).collect::<String>()
        ))),
    }
}
