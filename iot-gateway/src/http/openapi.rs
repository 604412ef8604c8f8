//! `GET /openapi.yaml`: the OpenAPI document of the service and device APIs
//! (`docs/openapi.yaml`, compiled in), so that tools find the description of the API they are
//! talking to at the endpoint itself.
//!
//! It needs no token and no `api-version`: it describes the API (IoT Hub's, which Microsoft
//! publishes) and holds no hub data, so a client can read it before it has credentials.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::state::HttpState;

/// Where the document is served.
pub const PATH: &str = "/openapi.yaml";

/// The document, as `docs/openapi.yaml` was when the crate was built.
pub const DOCUMENT: &str = include_str!("../../../docs/openapi.yaml");

/// The document's route.
pub(super) fn routes() -> Router<HttpState> {
    Router::new().route(PATH, get(document))
}

async fn document() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/yaml; charset=utf-8")],
        DOCUMENT,
    )
}
