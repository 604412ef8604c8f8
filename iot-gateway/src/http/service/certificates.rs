//! IoT Hub's CA certificate routes: upload, proof of possession, list, delete.
//!
//! | route | what |
//! | --- | --- |
//! | `PUT /certificates/{name}` | upload `{"properties": {"certificate": PEM}}`, unverified; no `If-Match` creates only (409 if it exists), `*` creates or replaces, an etag replaces that version |
//! | `GET /certificates/{name}`, `GET /certificates` | one (`CertificateDescription`), all (`{"value": [...]}`) |
//! | `POST /certificates/{name}/generateVerificationCode` | a new code (`properties.verificationCode`) |
//! | `POST /certificates/{name}/verify` | `{"certificate": PEM}`: a certificate whose CN is the code, signed by the CA's key; the CA becomes verified |
//! | `DELETE /certificates/{name}` | remove (its devices are refused from their next connection) |
//!
//! Reads need `RegistryRead`, writes `RegistryWrite`. The etag is the store's version.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use iot_core::Timestamp;
use iot_identity::ca::{CaCondition, CaError, CertificateAuthorities, StoredCa};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::auth::Caller;
use crate::http::error::{ApiError, ApiResult, code};
use crate::http::extract::{JsonBody, if_match};
use crate::http::policy::Rights;
use crate::http::state::HttpState;

#[derive(Debug, Default, Deserialize)]
pub(super) struct UploadIn {
    #[serde(default)]
    properties: PropertiesIn,
}

#[derive(Debug, Default, Deserialize)]
struct PropertiesIn {
    certificate: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct VerifyIn {
    certificate: Option<String>,
}

fn authorities(state: &HttpState) -> ApiResult<&CertificateAuthorities> {
    state.certificate_authorities().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            code::NOT_FOUND,
            "this hub holds no CA certificates (no certificate authorities configured)",
        )
    })
}

/// The `If-Match` of a request as a store condition: absent or `*` → `otherwise`.
fn condition(headers: &HeaderMap, otherwise: CaCondition) -> ApiResult<CaCondition> {
    match if_match(headers)? {
        None => Ok(otherwise),
        Some(etag) => etag
            .parse()
            .map(CaCondition::Version)
            .map_err(|_| ApiError::precondition_failed(format!("no version has etag {etag}"))),
    }
}

/// `If-Match: *` and no `If-Match` differ for PUT: create-or-replace against create-only.
fn put_condition(headers: &HeaderMap) -> ApiResult<CaCondition> {
    match headers.get(axum::http::header::IF_MATCH) {
        None => Ok(CaCondition::Absent),
        Some(_) => condition(headers, CaCondition::Any),
    }
}

fn api_error(e: CaError) -> ApiError {
    match e {
        CaError::NotFound { name } => ApiError::new(
            StatusCode::NOT_FOUND,
            code::NOT_FOUND,
            format!("no certificate named {name:?}"),
        ),
        CaError::Exists { name } => ApiError::new(
            StatusCode::CONFLICT,
            code::PRECONDITION_FAILED,
            format!("a certificate named {name:?} exists (send If-Match to replace it)"),
        ),
        e @ CaError::Changed { .. } => ApiError::precondition_failed(e.to_string()),
        e @ (CaError::Invalid { .. } | CaError::ProofRefused { .. }) => {
            ApiError::bad_request(e.to_string())
        }
        e => ApiError::internal(true, "CA store", &e),
    }
}

/// PEM as sent, or bare base64 DER (as some tools send `.cer` contents) wrapped into PEM.
fn as_pem(text: &str) -> String {
    if text.contains("-----BEGIN") {
        return text.to_owned();
    }
    let body: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

fn time(secs: i64) -> String {
    crate::mqtt::rfc3339::format_millis(Timestamp::from_unix_millis(
        u64::try_from(secs).unwrap_or(0).saturating_mul(1000),
    ))
}

/// IoT Hub's `CertificateDescription` (with `verificationCode` when one is pending).
fn description(state: &HttpState, stored: &StoredCa) -> Value {
    let c = &stored.certificate;
    let mut properties = json!({
        "subject": c.subject(),
        "expiry": time(c.not_after()),
        "thumbprint": c.thumbprint().to_string(),
        "isVerified": c.verified,
        "created": time(i64::try_from(c.created).unwrap_or(0)),
        "updated": time(i64::try_from(c.updated).unwrap_or(0)),
        "certificate": c.pem(),
    });
    if let Some(code) = &c.verification_code {
        properties["verificationCode"] = json!(code);
    }
    json!({
        "properties": properties,
        "id": format!("/hubs/{}/certificates/{}", state.host(), c.name()),
        "name": c.name(),
        "etag": stored.version.to_string(),
        "type": "Microsoft.Devices/IotHubs/Certificates",
    })
}

pub(super) async fn put(
    caller: Caller,
    Path(name): Path<String>,
    State(state): State<HttpState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<UploadIn>,
) -> ApiResult<Json<Value>> {
    caller.require(Rights::REGISTRY_WRITE)?;
    let pem = body
        .properties
        .certificate
        .as_deref()
        .ok_or_else(|| ApiError::bad_request("properties.certificate is required"))?;
    let stored = authorities(&state)?
        .upload(&name, &as_pem(pem), put_condition(&headers)?)
        .await
        .map_err(api_error)?;
    tracing::info!(certificate = %name, thumbprint = %stored.certificate.thumbprint(), "CA certificate uploaded (unverified)");
    Ok(Json(description(&state, &stored)))
}

pub(super) async fn get(
    caller: Caller,
    Path(name): Path<String>,
    State(state): State<HttpState>,
) -> ApiResult<Json<Value>> {
    caller.require(Rights::REGISTRY_READ)?;
    let stored = authorities(&state)?
        .store()
        .get(&name)
        .await
        .map_err(api_error)?
        .ok_or_else(|| api_error(CaError::NotFound { name }))?;
    Ok(Json(description(&state, &stored)))
}

pub(super) async fn list(caller: Caller, State(state): State<HttpState>) -> ApiResult<Json<Value>> {
    caller.require(Rights::REGISTRY_READ)?;
    let all = authorities(&state)?
        .store()
        .list()
        .await
        .map_err(api_error)?;
    let value: Vec<Value> = all.iter().map(|s| description(&state, s)).collect();
    Ok(Json(json!({ "value": value })))
}

pub(super) async fn delete(
    caller: Caller,
    Path(name): Path<String>,
    State(state): State<HttpState>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    caller.require(Rights::REGISTRY_WRITE)?;
    authorities(&state)?
        .delete(&name, condition(&headers, CaCondition::Any)?)
        .await
        .map_err(api_error)?;
    tracing::info!(certificate = %name, "CA certificate deleted");
    Ok(StatusCode::OK)
}

pub(super) async fn generate_verification_code(
    caller: Caller,
    Path(name): Path<String>,
    State(state): State<HttpState>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    caller.require(Rights::REGISTRY_WRITE)?;
    let stored = authorities(&state)?
        .generate_verification_code(&name, condition(&headers, CaCondition::Any)?)
        .await
        .map_err(api_error)?;
    Ok(Json(description(&state, &stored)))
}

pub(super) async fn verify(
    caller: Caller,
    Path(name): Path<String>,
    State(state): State<HttpState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<VerifyIn>,
) -> ApiResult<Json<Value>> {
    caller.require(Rights::REGISTRY_WRITE)?;
    let proof = body
        .certificate
        .as_deref()
        .ok_or_else(|| ApiError::bad_request("certificate is required"))?;
    let stored = authorities(&state)?
        .verify(
            &name,
            &as_pem(proof),
            condition(&headers, CaCondition::Any)?,
        )
        .await
        .map_err(api_error)?;
    tracing::info!(certificate = %name, "CA certificate verified (proof of possession)");
    Ok(Json(description(&state, &stored)))
}
