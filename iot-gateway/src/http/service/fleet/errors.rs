//! Fleet errors in IoT Hub's error shape.

use axum::http::StatusCode;

use crate::fleet::{Fleet, FleetError};
use crate::http::error::{ApiError, ApiResult, code};
use crate::http::state::HttpState;

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> Self {
        match e {
            FleetError::NotFound { kind: "job", .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "JobNotFound", e.to_string())
            }
            FleetError::NotFound {
                kind: "configuration",
                ..
            } => ApiError::new(
                StatusCode::NOT_FOUND,
                "ConfigurationNotFound",
                e.to_string(),
            ),
            FleetError::NotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, code::DEVICE_NOT_FOUND, e.to_string())
            }
            FleetError::Exists { kind: "job", .. } => {
                ApiError::new(StatusCode::CONFLICT, "JobAlreadyExists", e.to_string())
            }
            FleetError::Exists { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "ConfigurationAlreadyExists",
                e.to_string(),
            ),
            FleetError::PreconditionFailed { .. } => ApiError::precondition_failed(e.to_string()),
            FleetError::Invalid(_) => ApiError::bad_request(e.to_string()),
            FleetError::Query(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, code::BAD_QUERY, e.to_string())
            }
            FleetError::Gateway(g) => g.into(),
            FleetError::Devices(_) | FleetError::Store(_) | FleetError::Corrupt { .. } => {
                ApiError::internal(e.is_retryable(), "fleet", &e)
            }
        }
    }
}

/// The fleet engines, or 404 when this hub serves none.
pub(super) fn fleet(state: &HttpState) -> ApiResult<&Fleet> {
    state.fleet().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            code::NOT_FOUND,
            "this hub runs no jobs or configurations",
        )
    })
}
