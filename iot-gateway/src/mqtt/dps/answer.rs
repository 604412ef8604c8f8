//! The JSON bodies DPS answers with.

use iot_provisioning::onboarding::{Assignment, OnboardingError};
use serde_json::{Value, json};

use super::super::rfc3339;

/// `{"operationId", "status": "assigning"}`: the registration is accepted; the device polls for
/// its result.
pub(crate) fn assigning(operation_id: &str) -> Value {
    json!({"operationId": operation_id, "status": "assigning"})
}

/// `{"operationId", "status": "assigned", "registrationState": {...}}`, as DPS answers a
/// finished registration. `initialTwin` is ours: the desired properties the enrollment gave
/// the device's twin (DPS's SDKs ignore fields they do not know).
pub(crate) fn assigned(operation_id: &str, assignment: &Assignment) -> Value {
    json!({
        "operationId": operation_id,
        "status": "assigned",
        "registrationState": {
            "registrationId": assignment.registration_id.as_str(),
            "createdDateTimeUtc": rfc3339::format_millis(assignment.created),
            "assignedHub": assignment.assigned_hub,
            "deviceId": assignment.device_id.as_str(),
            "status": "assigned",
            "substatus": assignment.substatus.as_str(),
            "lastUpdatedDateTimeUtc": rfc3339::format_millis(assignment.updated),
            "etag": assignment.etag.as_str(),
            "initialTwin": {"properties": {"desired": assignment.initial_twin}},
        },
    })
}

/// The status and body of a refused or failed registration, and the retry-after for the
/// failures worth retrying (the Azure SDKs retry answers of 429 and above).
pub(crate) fn refused(e: &OnboardingError) -> (u16, Value, Option<u32>) {
    let (status, code, retry_after) = match e {
        OnboardingError::Unauthorized { .. }
        | OnboardingError::EnrollmentDisabled { .. }
        | OnboardingError::InvalidRegistrationId { .. } => (401, 401002, None),
        OnboardingError::Provisioning { .. } if e.is_retryable() => (503, 503000, Some(2)),
        // A hook's veto, a device id taken by another kind of identity: final.
        _ => (403, 403000, None),
    };
    (status, error_body(code, &e.to_string()), retry_after)
}

/// DPS's error body.
pub(crate) fn error_body(code: u32, message: &str) -> Value {
    json!({"errorCode": code, "message": message})
}
