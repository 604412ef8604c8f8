//! The two DPS requests: register, and ask for a registration's result.
//!
//! Both run the same checks first (`api-version`, id scope, token); a registration then goes to
//! [`Onboarding::register`](iot_provisioning::onboarding::Onboarding::register), and its answer
//! is built by the MQTT form's code (`mqtt::dps::answer`), so the two forms answer alike.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri, header};
use axum::response::Response;
use iot_provisioning::onboarding::OnboardingError;
use serde_json::Value;

use super::DpsEndpoint;
use super::reply;
use crate::mqtt::dps::{answer, write_initial_twin};

/// DPS's error codes used here (status × 1000 + a detail, as DPS numbers them).
mod code {
    pub(super) const BAD_REQUEST: u32 = 400004;
    pub(super) const UNAUTHORIZED: u32 = 401002;
    pub(super) const OPERATION_NOT_FOUND: u32 = 404201;
    pub(super) const METHOD_NOT_ALLOWED: u32 = 405000;
}

/// `PUT /{idScope}/registrations/{registrationId}/register`.
pub(super) async fn register(
    State(dps): State<DpsEndpoint>,
    path: Result<Path<(String, String)>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Ok(Path((id_scope, registration_id))) = path else {
        return bad_request("the path does not name an id scope and a registration id");
    };
    let token = match check(&dps, &uri, &headers, &id_scope) {
        Ok(token) => token,
        Err(refusal) => return refusal,
    };
    let Ok(body) = body else {
        return bad_request("the request body could not be read");
    };
    let named = serde_json::from_slice::<Value>(&body).ok().and_then(|b| {
        b.get("registrationId")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    if named.as_deref() != Some(registration_id.as_str()) {
        return bad_request(
            "the body must be a JSON object whose registrationId is the path's registration id",
        );
    }
    match dps.0.onboarding.register(&registration_id, token).await {
        Ok(assignment) => {
            if assignment.apply_initial_twin {
                write_initial_twin(dps.0.gateway.as_ref(), &assignment).await;
            }
            let operation_id = format!("{:032x}", rand::random::<u128>());
            dps.0.operations.insert(
                assignment.registration_id.as_str(),
                &operation_id,
                answer::assigned(&operation_id, &assignment),
            );
            reply::json(
                202,
                answer::assigning(&operation_id),
                Some(dps.0.config.retry_after_secs),
            )
        }
        Err(e) => {
            tracing::debug!(error = %e, kind = e.kind(), "DPS registration refused");
            let (status, body, retry_after) = answer::refused(&e);
            reply::error(status, body, retry_after)
        }
    }
}

/// `GET /{idScope}/registrations/{registrationId}/operations/{operationId}`: the result of a
/// registration, for a token of the same registration.
pub(super) async fn operation_status(
    State(dps): State<DpsEndpoint>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let Ok(Path((id_scope, registration_id, operation_id))) = path else {
        return bad_request(
            "the path does not name an id scope, a registration id and an operation id",
        );
    };
    let token = match check(&dps, &uri, &headers, &id_scope) {
        Ok(token) => token,
        Err(refusal) => return refusal,
    };
    match dps.0.onboarding.attest(&registration_id, token).await {
        // The token is genuine (a disabled enrollment is found only after the signature
        // verified): the device may read the result of what it did.
        Ok(_) | Err(OnboardingError::EnrollmentDisabled { .. }) => {}
        Err(e) => {
            tracing::debug!(error = %e, kind = e.kind(), "DPS status request refused");
            let (status, body, retry_after) = answer::refused(&e);
            return reply::error(status, body, retry_after);
        }
    }
    match dps.0.operations.get(&registration_id, &operation_id) {
        Some(body) => reply::json(200, body, None),
        None => reply::error(
            404,
            answer::error_body(
                code::OPERATION_NOT_FOUND,
                "no such operation for this registration (or it has expired)",
            ),
            None,
        ),
    }
}

/// Any other method on a DPS route.
pub(super) async fn method_not_allowed() -> Response {
    reply::error(
        405,
        answer::error_body(
            code::METHOD_NOT_ALLOWED,
            "the resource does not support this method",
        ),
        None,
    )
}

/// The checks both requests share: a DPS `api-version`, this endpoint's id scope, and a token
/// in `Authorization` (verified by the onboarding service). Returns the token.
#[allow(clippy::result_large_err)] // the refusal is the answer itself, built once
fn check<'h>(
    dps: &DpsEndpoint,
    uri: &Uri,
    headers: &'h HeaderMap,
    id_scope: &str,
) -> Result<&'h str, Response> {
    let version = uri.query().and_then(|query| {
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(name, _)| *name == "api-version")
            .map(|(_, value)| value)
    });
    match version {
        Some(v) if dps.0.config.api_versions.iter().any(|known| known == v) => {}
        Some(v) => {
            return Err(bad_request(&format!(
                "api-version {:?} is not supported; use one of {}",
                v.chars().take(32).collect::<String>(),
                dps.0.config.api_versions.join(", ")
            )));
        }
        None => return Err(bad_request("the api-version query parameter is missing")),
    }
    if id_scope != dps.0.onboarding.config().id_scope {
        return Err(unauthorized("unknown id scope"));
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| unauthorized("no Authorization header with a SAS token"))
}

fn bad_request(message: &str) -> Response {
    reply::error(400, answer::error_body(code::BAD_REQUEST, message), None)
}

fn unauthorized(message: &str) -> Response {
    reply::error(401, answer::error_body(code::UNAUTHORIZED, message), None)
}
