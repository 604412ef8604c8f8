//! IoT Hub's service REST API: what a back end calls with a shared access policy.
//!
//! | route | operation | right |
//! | --- | --- | --- |
//! | `PUT/GET/DELETE /devices/{id}` | device identity | RegistryWrite / RegistryRead |
//! | `GET /devices`, `POST /devices` | list, bulk create/update/delete | RegistryRead / RegistryWrite |
//! | `POST /devices/query` | IoT Hub query over twins | RegistryRead or ServiceConnect |
//! | `GET /statistics/devices`, `GET /statistics/service` | counts | RegistryRead / ServiceConnect |
//! | `GET/PATCH/PUT /twins/{id}` | twin | read: RegistryRead or ServiceConnect; write: ServiceConnect or RegistryWrite |
//! | `POST /twins/{id}/methods` | direct method | ServiceConnect |
//! | `DELETE /devices/{id}/commands` | purge the C2D queue | ServiceConnect |
//! | `POST /devices/{id}/messages/cloudToDevice` | send C2D (our extension) | ServiceConnect |
//! | `GET /messages/serviceBound/feedback` | read C2D feedback (our extension) | ServiceConnect |
//! | `PUT/GET/DELETE /certificates/{name}`, `GET /certificates` | CA certificates (X.509 CA authentication) | RegistryWrite / RegistryRead |
//! | `POST /certificates/{name}/generateVerificationCode`, `POST /certificates/{name}/verify` | proof of possession | RegistryWrite |
//! | `PUT/GET /jobs/v2/{jobId}`, `POST /jobs/v2/{jobId}/cancel`, `GET /jobs/v2/query` | jobs (docs/fleet.md) | create: ServiceConnect (methods) or ServiceConnect/RegistryWrite (twins); read: RegistryRead or ServiceConnect |
//! | `PUT/GET/DELETE /configurations/{configurationId}`, `GET /configurations`, `POST /configurations/testQueries` | automatic device configurations | RegistryWrite / RegistryRead |
//! | `/devices/{id}/modules…`, `/twins/{id}/modules/{mid}…` | module identities, twins, methods | see `modules.rs` |

mod c2d;
mod c2d_send;
mod certificates;
mod devices;
mod fleet;
mod json;
mod lookup;
mod methods;
mod modules;
pub(crate) mod query;
mod statistics;
mod twin_doc;
pub(crate) mod twins;

use axum::Router;
use axum::routing::{get, post, put};

use super::state::HttpState;

pub use fleet::HubDevices;

/// Every service route, over [`HttpState`]. Wrap it with
/// [`with_common_layers`](super::with_common_layers) (as [`router`](super::router) does).
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/statistics/service", get(statistics::service))
        .route("/statistics/devices", get(statistics::devices))
        .route("/devices", get(devices::list).post(devices::bulk))
        // Node's Registry.list asks for `/devices/`.
        .route("/devices/", get(devices::list))
        .route("/devices/query", post(query::query))
        .route(
            "/devices/{id}",
            put(devices::put).get(devices::get).delete(devices::delete),
        )
        .route("/devices/{id}/commands", axum::routing::delete(c2d::purge))
        .route(
            "/twins/{id}",
            get(twins::get).patch(twins::patch).put(twins::put),
        )
        .route("/twins/{id}/methods", post(methods::invoke))
        .route("/devices/{id}/modules", get(modules::list))
        .route(
            "/devices/{id}/modules/{mid}",
            put(modules::put).get(modules::get).delete(modules::delete),
        )
        .route(
            "/twins/{id}/modules/{mid}",
            get(modules::get_twin)
                .patch(modules::patch_twin)
                .put(modules::put_twin),
        )
        .route("/twins/{id}/modules/{mid}/methods", post(modules::invoke))
        .route("/devices/{id}/messages/cloudToDevice", post(c2d_send::send))
        .route("/messages/serviceBound/feedback", get(c2d_send::feedback))
        .route("/certificates", get(certificates::list))
        .route(
            "/certificates/{name}",
            put(certificates::put)
                .get(certificates::get)
                .delete(certificates::delete),
        )
        .route(
            "/certificates/{name}/generateVerificationCode",
            post(certificates::generate_verification_code),
        )
        .route("/certificates/{name}/verify", post(certificates::verify))
        // Fleet operations (docs/fleet.md). The path parameters are not `{id}`: a user
        // session's permission is checked on the hub, not on a device of that name.
        .route("/jobs/v2/query", get(fleet::jobs::query))
        .route(
            "/jobs/v2/{jobId}",
            put(fleet::jobs::put).get(fleet::jobs::get),
        )
        .route("/jobs/v2/{jobId}/cancel", post(fleet::jobs::cancel))
        .route("/configurations", get(fleet::configurations::list))
        .route(
            "/configurations/testQueries",
            post(fleet::configurations::test_queries),
        )
        .route(
            "/configurations/{configurationId}",
            put(fleet::configurations::put)
                .get(fleet::configurations::get)
                .delete(fleet::configurations::delete),
        )
}
