//! The hub's HTTP endpoint (feature `http`): IoT Hub's service REST API over any [`Gateway`],
//! with shared access policies.
//!
//! * [`HttpState`] — what handlers share: the gateway, provisioning (the one writer of
//!   identities and registry records), the registry and identity store (read), the
//!   [`PolicyStore`], the host name and the [`HttpConfig`].
//! * [`router`] — the whole API as one axum [`Router`]: every route of [`service::routes`], the
//!   `api-version` check, a tracing span per request, IoT Hub's error shape for unknown routes
//!   and methods, and the body limit.
//! * [`login`] — `POST /auth/login`, `POST /auth/logout`, `GET /auth/me`: user sessions of
//!   the access matrix, when [`HttpState::with_access`] gave one.
//! * [`users`] — `/access/users…`, `/access/roles`: user management for admins.
//! * [`live`] — Server-Sent Events: a device's telemetry, the alerts feed.
//! * [`ui`] — the dashboard's static assets ([`router_with_ui`]).
//! * [`WebSocketUpgrades`] — `/$iothub/websocket` on the same port: MQTT and AMQP over
//!   WebSocket handed to their endpoints by subprotocol, as IoT Hub's port 443 does.
//! * [`HttpServer`] — serves a router over plain TCP and TLS (rustls with ring, the MQTT
//!   endpoint's [`TlsConfig`](crate::mqtt::TlsConfig)), with graceful shutdown.
//! * [`Caller`] — the authentication extractor: a handler that takes a `Caller` runs only for a
//!   valid SAS token (or, over HTTPS, a device's client certificate chain), and asks for rights
//!   with [`Caller::require`].
//!
//! The routes and the JSON they speak are described in `docs/http.md`.
//!
//! [`Gateway`]: crate::Gateway

mod api_version;
pub mod auth;
pub mod config;
pub mod device;
pub mod dps;
pub mod error;
pub mod extract;
mod guard;
pub mod live;
pub mod login;
mod login_throttle;
pub mod openapi;
pub mod policy;
pub mod server;
pub mod service;
pub mod state;
pub mod subscriptions;
mod token_cache;
pub mod ui;
pub mod user_access;
pub mod users;
mod websocket;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use tracing::Instrument as _;

pub use auth::Caller;
pub use config::{DEFAULT_API_VERSIONS, HttpConfig, LoginLimit};
pub use error::{ApiError, ApiResult};
pub use policy::{PolicyError, PolicyStore, Rights, SharedAccessPolicy};
pub use server::{HttpServer, PeerAddr};
pub use state::HttpState;
pub use websocket::WebSocketUpgrades;

/// The whole HTTP API for `state`: the service routes, the device routes and the OpenAPI
/// document ([`openapi::PATH`]), wrapped in the checks every route gets.
pub fn router(state: HttpState) -> Router {
    with_common_layers(api_routes(), state)
}

/// [`router`] plus the dashboard's static assets under [`ui::UI_PATH`] (`/` redirects there).
pub fn router_with_ui(state: HttpState) -> Router {
    with_common_layers(api_routes().merge(ui::routes()), state)
}

/// Every API route, before the common layers: one list, so that the dashboard's router serves
/// exactly what the plain one does.
fn api_routes() -> Router<HttpState> {
    service::routes()
        .merge(device::routes())
        .merge(login::routes())
        .merge(users::routes())
        .merge(live::routes())
        .merge(subscriptions::routes())
        .merge(openapi::routes())
}

/// Wraps `routes` (any routes over [`HttpState`]) in what every route of the endpoint gets, in
/// this order from the outside: a tracing span per request, IoT Hub's error shape for every
/// error answer, the `api-version` check, reading the body within its size limit and read
/// timeout, and IoT Hub's error answers for unknown paths (404) and methods (405). Use it to
/// serve routes of your own beside (or instead of) [`service::routes`].
pub fn with_common_layers(routes: Router<HttpState>, state: HttpState) -> Router {
    let body_limit = state.config().max_body_bytes;
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            guard::read_body,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            api_version::check,
        ))
        .layer(middleware::from_fn(guard::error_shape))
        .layer(middleware::from_fn(trace))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        error::code::NOT_FOUND,
        "no such resource",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        error::code::METHOD_NOT_ALLOWED,
        "the resource does not support this method",
    )
}

/// One span per request: method, route (the pattern, not the path: ids stay out of span names),
/// status and peer. Headers are never recorded (they hold tokens).
async fn trace(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("-", |p| p.as_str())
        .to_owned();
    let peer = request
        .extensions()
        .get::<PeerAddr>()
        .map(|p| p.0.to_string())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "http",
        method = %request.method(),
        route,
        peer,
        status = tracing::field::Empty
    );
    let response = next.run(request).instrument(span.clone()).await;
    span.record("status", response.status().as_u16());
    span.in_scope(|| tracing::debug!("request done"));
    response
}
