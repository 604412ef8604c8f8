//! DPS's device protocol over HTTPS, on the hub's HTTP endpoint: devices register through their
//! enrollments as with the Device Provisioning Service's REST form.
//!
//! * `PUT /{idScope}/registrations/{registrationId}/register?api-version=…` with
//!   `{"registrationId", "payload"?}` and
//!   `Authorization: SharedAccessSignature sr={idScope}%2Fregistrations%2F{registrationId}&sig=…&se=…&skn=registration`.
//!   The registration runs through [`Onboarding::register`] — the service the MQTT form uses,
//!   so the provisioner's hooks and audit trail run — and a new device's twin gets the
//!   enrollment's initial twin through the gateway. The answer is DPS's `202`
//!   `{"operationId", "status": "assigning"}` with `retry-after`.
//! * `GET /{idScope}/registrations/{registrationId}/operations/{operationId}?api-version=…`,
//!   with a token for the same registration, answers `200` `{"operationId", "status":
//!   "assigned", "registrationState": {…}}` — the same body as the MQTT form's, built by the
//!   same code (`registrationState` with `assignedHub`, `deviceId`, `status`, `substatus`,
//!   times, etag and `initialTwin`).
//! * Refusals carry DPS's error body (`errorCode`, `trackingId`, `message`, `timestampUtc`) and
//!   the code in `x-ms-error-code`: `401` (no, bad or expired token, unknown id scope, disabled
//!   enrollment, invalid registration id), `403` (a hook vetoed), `503` with `retry-after` (a
//!   store failed), `400` (an unknown `api-version`, a body that is not JSON naming the path's
//!   registration id), `404` (an unknown operation, or one of another registration), `405`,
//!   `413` (a body over the limit).
//!
//! Finished operations are kept in memory ([`DpsHttpConfig::max_operations`], for
//! [`DpsHttpConfig::operation_ttl`]) for the status request that follows a registration.
//!
//! ```no_run
//! # async fn run(
//! #     state: iot_gateway::http::HttpState,
//! #     onboarding: std::sync::Arc<iot_provisioning::onboarding::Onboarding>,
//! #     tls: iot_gateway::mqtt::TlsConfig,
//! # ) -> std::io::Result<()> {
//! use iot_gateway::http::dps::{DpsEndpoint, DpsHttpConfig};
//! use iot_gateway::http::HttpServer;
//!
//! let dps = DpsEndpoint::new(onboarding, state.gateway().clone(), DpsHttpConfig::default());
//! // IoT Hub's service and device APIs, and DPS's, on one listener.
//! let router = iot_gateway::http::dps::router(state.clone(), dps);
//! let server = HttpServer::new(router, state.config().clone());
//! server.listen_tls("127.0.0.1:443".parse().expect("address"), tls).await?;
//! # Ok(()) }
//! ```

mod config;
mod handlers;
mod operations;
mod reply;

use std::fmt;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, put};
use iot_provisioning::onboarding::Onboarding;
use tracing::Instrument as _;

pub use config::{DEFAULT_DPS_API_VERSIONS, DpsHttpConfig};

use super::state::HttpState;
use crate::gateway::Gateway;
use operations::Operations;

/// The register route.
pub const REGISTER_PATH: &str = "/{id_scope}/registrations/{registration_id}/register";
/// The operation status route.
pub const OPERATION_PATH: &str =
    "/{id_scope}/registrations/{registration_id}/operations/{operation_id}";

/// What the DPS routes share: the onboarding service (the one the MQTT endpoint's DPS form
/// uses), the gateway (initial twins are written through it), and the finished operations.
///
/// Cloning is cheap (one `Arc`).
#[derive(Clone)]
pub struct DpsEndpoint(Arc<Inner>);

struct Inner {
    onboarding: Arc<Onboarding>,
    gateway: Arc<dyn Gateway>,
    config: DpsHttpConfig,
    operations: Operations,
}

impl fmt::Debug for DpsEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpsEndpoint")
            .field("id_scope", &self.0.onboarding.config().id_scope)
            .field("config", &self.0.config)
            .finish_non_exhaustive()
    }
}

impl DpsEndpoint {
    /// DPS's HTTPS form over `onboarding`, writing initial twins through `gateway` (the hub the
    /// devices are assigned to).
    pub fn new(
        onboarding: Arc<Onboarding>,
        gateway: Arc<dyn Gateway>,
        config: DpsHttpConfig,
    ) -> Self {
        let operations = Operations::new(config.max_operations, config.operation_ttl);
        DpsEndpoint(Arc::new(Inner {
            onboarding,
            gateway,
            config,
            operations,
        }))
    }

    /// The onboarding service.
    pub fn onboarding(&self) -> &Arc<Onboarding> {
        &self.0.onboarding
    }

    /// The configuration.
    pub fn config(&self) -> &DpsHttpConfig {
        &self.0.config
    }
}

/// The two DPS routes alone, with their own checks: the body read within `state`'s
/// [`HttpConfig`](super::HttpConfig) limits (size, read timeout), DPS's `api-version`s, DPS's
/// error body for every refusal, and a tracing span per request. Merge the result with a router
/// that has a fallback ([`router`] does this with [`super::router`]).
pub fn routes(dps: DpsEndpoint, state: &HttpState) -> Router {
    let body_limit = state.config().max_body_bytes;
    Router::new()
        .route(
            REGISTER_PATH,
            put(handlers::register).fallback(handlers::method_not_allowed),
        )
        .route(
            OPERATION_PATH,
            get(handlers::operation_status).fallback(handlers::method_not_allowed),
        )
        .with_state(dps)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            super::guard::read_body,
        ))
        .layer(middleware::from_fn(trace))
}

/// The hub's whole HTTP API ([`super::router`]) and DPS's device routes on one router, for one
/// listener.
pub fn router(state: HttpState, dps: DpsEndpoint) -> Router {
    routes(dps, &state).merge(super::router(state))
}

/// One span per DPS request: method, route and status (never the path's ids or a header).
async fn trace(request: Request, next: Next) -> Response {
    let route = if request.uri().path().ends_with("/register") {
        "register"
    } else {
        "operation-status"
    };
    let span = tracing::info_span!(
        "dps-http",
        method = %request.method(),
        route,
        status = tracing::field::Empty
    );
    let response = next.run(request).instrument(span.clone()).await;
    span.record("status", response.status().as_u16());
    span.in_scope(|| tracing::debug!("request done"));
    response
}
