//! The `api-version` query parameter every IoT Hub request carries.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, code};
use super::state::HttpState;

/// Passes requests whose `api-version` is one the endpoint speaks; answers any other (or none)
/// with 400 `InvalidProtocolVersion`, as IoT Hub does. The OpenAPI document
/// ([`openapi::PATH`](super::openapi::PATH)) and the dashboard's static assets
/// ([`ui`](super::ui)) are not versioned and pass without one.
pub(super) async fn check(
    State(state): State<HttpState>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path == super::openapi::PATH || super::ui::is_ui_path(path) {
        return next.run(request).await;
    }
    let version = request.uri().query().and_then(|query| {
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(name, _)| *name == "api-version")
            .map(|(_, value)| value)
    });
    match version {
        Some(v) if state.config().api_versions.iter().any(|known| known == v) => {
            next.run(request).await
        }
        Some(v) => ApiError::new(
            StatusCode::BAD_REQUEST,
            code::INVALID_PROTOCOL_VERSION,
            format!(
                "api-version {:?} is not supported; use one of {}",
                v.chars().take(32).collect::<String>(),
                state.config().api_versions.join(", ")
            ),
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::BAD_REQUEST,
            code::INVALID_PROTOCOL_VERSION,
            "the api-version query parameter is missing",
        )
        .into_response(),
    }
}
