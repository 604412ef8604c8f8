//! IoT Hub's error answer: a status, an error code, and the JSON body the service SDKs read.
//!
//! IoT Hub answers a failed request with
//!
//! ```json
//! {"Message":"ErrorCode:DeviceNotFound;Device x not found.","ExceptionMessage":"Tracking ID:…-TimeStamp:…"}
//! ```
//!
//! and the same code in the `iothub-errorcode` header. The SDKs surface `Message` to the user
//! (Python's `HttpOperationError`, Node's `translateError`, which also reads the header), so the
//! code is in both places. Messages never carry a secret, a token or a payload.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use iot_core::Timestamp;
use serde_json::json;

/// IoT Hub's error codes used by this endpoint (the names its SDKs and docs use).
pub mod code {
    /// 400: a malformed argument (id, JSON, header).
    pub const ARGUMENT_INVALID: &str = "ArgumentInvalid";
    /// 400: the `api-version` is missing or not one the hub speaks.
    pub const INVALID_PROTOCOL_VERSION: &str = "InvalidProtocolVersion";
    /// 400: a query the language does not accept.
    pub const BAD_QUERY: &str = "SqlQueryInvalid";
    /// 401: no token, a malformed, expired or wrongly signed one, or an unknown policy.
    pub const UNAUTHORIZED: &str = "IotHubUnauthorizedAccess";
    /// 403: the caller authenticated but its policy lacks the right the operation needs.
    pub const FORBIDDEN: &str = "IotHubUnauthorized";
    /// 404: the device does not exist.
    pub const DEVICE_NOT_FOUND: &str = "DeviceNotFound";
    /// 404: the module does not exist.
    pub const MODULE_NOT_FOUND: &str = "ModuleNotFound";
    /// 409: the module exists already.
    pub const MODULE_ALREADY_EXISTS: &str = "ModuleAlreadyExistsOnDevice";
    /// 404: a direct method found no connected device (IoT Hub's 404103).
    pub const DEVICE_NOT_ONLINE: &str = "DeviceNotOnline";
    /// 404: no such route.
    pub const NOT_FOUND: &str = "NotFound";
    /// 405: the route exists, the method does not.
    pub const METHOD_NOT_ALLOWED: &str = "MethodNotAllowed";
    /// 409: the device exists already.
    pub const DEVICE_ALREADY_EXISTS: &str = "DeviceAlreadyExists";
    /// 412: `If-Match` named an older etag.
    pub const PRECONDITION_FAILED: &str = "PreconditionFailed";
    /// 403: a bounded queue (the C2D inbox, pending methods) is full.
    pub const QUEUE_FULL: &str = "DeviceMaximumQueueDepthExceeded";
    /// 408: the request body arrived too slowly.
    pub const REQUEST_TIMEOUT: &str = "RequestTimeout";
    /// 412: a C2D lock token that is not held (settled, expired, or never handed out).
    pub const LOCK_LOST: &str = "DeviceMessageLockLost";
    /// 413: a body or document over its limit.
    pub const MESSAGE_TOO_LARGE: &str = "MessageTooLarge";
    /// 415: a body that is not JSON where JSON is required.
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "UnsupportedMediaType";
    /// 429: a token bucket is empty.
    pub const THROTTLED: &str = "ThrottleBacklogLimitExceeded";
    /// 500: a store failed.
    pub const SERVER_ERROR: &str = "ServerError";
    /// 503: a store failed in a way a retry may fix.
    pub const SERVICE_UNAVAILABLE: &str = "ServiceUnavailable";
    /// 504: the device did not answer a direct method in time (IoT Hub's 504101).
    pub const GATEWAY_TIMEOUT: &str = "GatewayTimeout";
}

/// A failed request, answered with IoT Hub's error shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// IoT Hub's error code ([`code`]).
    pub code: &'static str,
    /// What went wrong, for a person (no secrets).
    pub message: String,
}

/// What handlers return.
pub type ApiResult<T> = std::result::Result<T, ApiError>;

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 `ArgumentInvalid`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code::ARGUMENT_INVALID, message)
    }

    /// 401 `IotHubUnauthorizedAccess`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code::UNAUTHORIZED, message)
    }

    /// 403 `IotHubUnauthorized`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code::FORBIDDEN, message)
    }

    /// 404 `ModuleNotFound`.
    pub fn module_not_found(module: &iot_core::EndpointId) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            code::MODULE_NOT_FOUND,
            format!("Module {module} not found."),
        )
    }

    /// 404 `DeviceNotFound`.
    pub fn device_not_found(device: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            code::DEVICE_NOT_FOUND,
            format!("Device {device} not found."),
        )
    }

    /// 412 `PreconditionFailed`.
    pub fn precondition_failed(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            code::PRECONDITION_FAILED,
            message,
        )
    }

    /// 500 or 503 for a store failure; the details go to the log, not to the caller.
    pub fn internal(retryable: bool, context: &str, error: &dyn std::error::Error) -> Self {
        tracing::error!(%error, context, "request failed in a store");
        if retryable {
            Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                code::SERVICE_UNAVAILABLE,
                format!("{context}: temporarily unavailable, retry"),
            )
        } else {
            Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                code::SERVER_ERROR,
                format!("{context}: internal error"),
            )
        }
    }

    /// The JSON body IoT Hub sends.
    pub fn body(&self) -> serde_json::Value {
        let now = Timestamp::now();
        json!({
            "Message": format!("ErrorCode:{};{}", self.code, self.message),
            "ExceptionMessage": format!(
                "Tracking ID:{:016x}-TimeStamp:{}",
                rand::random::<u64>(),
                now.to_rfc3339()
            ),
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body();
        let mut response = (self.status, axum::Json(body)).into_response();
        response
            .headers_mut()
            .insert("iothub-errorcode", HeaderValue::from_static(self.code));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        response
    }
}

impl From<crate::Error> for ApiError {
    fn from(error: crate::Error) -> Self {
        use crate::Error as E;
        match &error {
            E::Unauthorized { .. } => ApiError::unauthorized(error.to_string()),
            E::DeviceNotFound { device } => ApiError::device_not_found(device.as_str()),
            E::ModuleNotFound { module } => ApiError::module_not_found(module),
            E::DeviceOffline { device } => ApiError::new(
                StatusCode::NOT_FOUND,
                code::DEVICE_NOT_ONLINE,
                format!("Timed out waiting for device {device} to connect."),
            ),
            E::TimedOut { .. } => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                code::GATEWAY_TIMEOUT,
                error.to_string(),
            ),
            E::Throttled { .. } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                code::THROTTLED,
                error.to_string(),
            ),
            E::QueueFull { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, code::QUEUE_FULL, error.to_string())
            }
            E::TooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                code::MESSAGE_TOO_LARGE,
                error.to_string(),
            ),
            E::InvalidProperty { .. } | E::InvalidInput { .. } => {
                ApiError::bad_request(error.to_string())
            }
            E::PreconditionFailed { .. } => ApiError::precondition_failed(error.to_string()),
            _ => ApiError::internal(false, "gateway", &error),
        }
    }
}

impl From<iot_provisioning::Error> for ApiError {
    fn from(error: iot_provisioning::Error) -> Self {
        use iot_provisioning::Error as E;
        match &error {
            E::NotFound { id } => ApiError::device_not_found(id.as_str()),
            E::AlreadyExists { id } => ApiError::new(
                StatusCode::CONFLICT,
                code::DEVICE_ALREADY_EXISTS,
                format!("A device with ID '{id}' is already registered."),
            ),
            E::PreconditionFailed { .. } => ApiError::precondition_failed(error.to_string()),
            E::MetadataNotAnObject { .. } | E::InvalidInput { .. } => {
                ApiError::bad_request(error.to_string())
            }
            E::DeviceDisabled { .. } => ApiError::bad_request(error.to_string()),
            E::Vetoed { .. } => ApiError::forbidden(error.to_string()),
            E::Registry(inner) => registry_error(inner, &error),
            _ => ApiError::internal(error.is_retryable(), "provisioning", &error),
        }
    }
}

fn registry_error(inner: &iot_registry::Error, outer: &dyn std::error::Error) -> ApiError {
    use iot_registry::Error as R;
    match inner {
        R::InvalidDocument { .. } | R::DocumentTooDeep { .. } | R::InvalidInput { .. } => {
            ApiError::bad_request(inner.to_string())
        }
        R::DocumentTooLarge { .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            code::MESSAGE_TOO_LARGE,
            inner.to_string(),
        ),
        R::PreconditionFailed { .. } => ApiError::precondition_failed(inner.to_string()),
        R::NotFound { id } => ApiError::device_not_found(id.as_str()),
        _ => ApiError::internal(inner.is_retryable(), "registry", outer),
    }
}

impl From<iot_registry::Error> for ApiError {
    fn from(error: iot_registry::Error) -> Self {
        use iot_registry::Error as R;
        match &error {
            R::Query(_) | R::InvalidContinuation { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, code::BAD_QUERY, error.to_string())
            }
            _ => registry_error(&error, &error),
        }
    }
}

impl From<iot_identity::Error> for ApiError {
    fn from(error: iot_identity::Error) -> Self {
        use iot_identity::Error as E;
        // Only the module store's answers reach a caller as such; device identities are
        // written through provisioning, whose errors say it in its own words.
        match &error {
            E::ModuleNotFound { id } => ApiError::module_not_found(id),
            E::ModuleAlreadyExists { id } => ApiError::new(
                StatusCode::CONFLICT,
                code::MODULE_ALREADY_EXISTS,
                format!("A module with ID '{id}' is already registered."),
            ),
            E::ModulePreconditionFailed { .. } => ApiError::precondition_failed(error.to_string()),
            E::InvalidInput { .. } => ApiError::bad_request(error.to_string()),
            _ => ApiError::internal(error.is_retryable(), "identity store", &error),
        }
    }
}
