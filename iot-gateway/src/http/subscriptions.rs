//! `/access/me/subscriptions`: a user's own alert subscriptions (webhooks the hub's alert push
//! processor posts their alerts to, signed with the subscription's secret). Open to every user
//! session, for that user's subscriptions only; a shared access policy has no user and is
//! refused. The routes answer 404 while no store is set ([`HttpState::with_subscriptions`]).
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /access/me/subscriptions` | `[{"id","url","devices"?,"createdUs"}]` |
//! | `POST /access/me/subscriptions` `{"url", "devices"?: [ids], "secret"?}` | 201, the subscription, and `"secret"` when the hub generated it (shown once) |
//! | `DELETE /access/me/subscriptions/{sid}` | 204, or 404 when the user holds none by that id |

use std::collections::BTreeSet;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use iot_core::DeviceId;
use iot_identity::access::{
    Subscription, SubscriptionSecret, SubscriptionStore, SubscriptionView, UserName,
};
use serde::Deserialize;
use serde_json::json;

use super::auth::Caller;
use super::error::{ApiError, ApiResult, code};
use super::extract::JsonBody;
use super::state::HttpState;

/// Where a user's subscriptions are listed and created.
pub const SUBSCRIPTIONS_PATH: &str = "/access/me/subscriptions";
/// Where one of them is deleted.
pub const SUBSCRIPTION_PATH: &str = "/access/me/subscriptions/{sid}";

pub(super) fn routes() -> Router<HttpState> {
    Router::new()
        .route(SUBSCRIPTIONS_PATH, get(list).post(create))
        .route(SUBSCRIPTION_PATH, delete(remove))
}

/// A new subscription.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SubscriptionIn {
    url: String,
    #[serde(default)]
    devices: Option<BTreeSet<DeviceId>>,
    #[serde(default)]
    secret: Option<String>,
}

fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        code::NOT_FOUND,
        "alert subscriptions are not enabled on this hub",
    )
}

/// The store and the calling user (a session; a policy holder is no user).
fn own(
    caller: &Caller,
    state: &HttpState,
) -> ApiResult<(std::sync::Arc<dyn SubscriptionStore>, UserName)> {
    let store = state.subscriptions().cloned().ok_or_else(not_found)?;
    match caller {
        Caller::User { name, .. } => {
            let user = UserName::new(name.as_str())
                .map_err(|_| ApiError::unauthorized("the session's user name is not valid"))?;
            Ok((store, user))
        }
        _ => Err(ApiError::forbidden(
            "subscriptions belong to users: call with a user session (Authorization: Bearer)",
        )),
    }
}

async fn list(
    caller: Caller,
    State(state): State<HttpState>,
) -> ApiResult<Json<Vec<SubscriptionView>>> {
    let (store, user) = own(&caller, &state)?;
    let held = store.of_user(&user).await?;
    Ok(Json(held.iter().map(SubscriptionView::from).collect()))
}

async fn create(
    caller: Caller,
    State(state): State<HttpState>,
    JsonBody(input): JsonBody<SubscriptionIn>,
) -> ApiResult<Response> {
    let (store, user) = own(&caller, &state)?;
    let (secret, generated) = match input.secret {
        Some(given) => (SubscriptionSecret::new(given)?, false),
        None => (SubscriptionSecret::generate(), true),
    };
    let subscription = Subscription::new(user, input.url, input.devices, secret)?;
    store.add(subscription.clone()).await?;
    tracing::info!(user = %subscription.user, id = %subscription.id, "alert subscription added");
    let mut body = json!(SubscriptionView::from(&subscription));
    if generated && let Some(fields) = body.as_object_mut() {
        // Shown once: the hub keeps it to sign with, and never shows it again.
        fields.insert("secret".into(), subscription.secret.expose().into());
    }
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

async fn remove(
    caller: Caller,
    State(state): State<HttpState>,
    Path(sid): Path<String>,
) -> ApiResult<StatusCode> {
    let (store, user) = own(&caller, &state)?;
    if store.remove(&user, &sid).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            code::NOT_FOUND,
            "no subscription of yours has this id",
        ))
    }
}
