//! IoT Hub's service REST API: what a back end calls with a shared access policy.

mod statistics;

use axum::Router;
use axum::routing::get;

use super::state::HttpState;

/// Every service route, over [`HttpState`]. Wrap it with
/// [`with_common_layers`](super::with_common_layers) (as [`router`](super::router) does).
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/statistics/service", get(statistics::service))
        .route("/statistics/devices", get(statistics::devices))
}
