//! User management over HTTP: the access matrix's users and their grants, for an admin.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /access/users`, `POST /access/users` | list; create (name, password, grants) |
//! | `GET/PATCH/DELETE /access/users/{name}` | one user; new password or (dis)able; delete |
//! | `GET/PUT /access/users/{name}/grants` | the user's grants; replace them all |
//! | `GET /access/roles` | the roles and their permissions |
//!
//! The routes exist only when [`HttpState::with_access`] gave an access matrix (404 otherwise,
//! as for `/auth/login`). A user session needs `manageUsers` on the hub (the `admin` role over
//! `all`, see [`user_access::ROUTES`](super::user_access::ROUTES)); a shared access policy needs
//! `RegistryWrite`. Answers never carry a password hash; a password in a body is wiped when the
//! parsed body drops and never reaches a log, a `Debug` or an error.

use std::fmt;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::CACHE_CONTROL;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use iot_identity::access::{AccessControl, DeviceSet, Grant, RoleName, User, UserName};
use serde::{Deserialize, Serialize};
use zeroize::Zeroize as _;

use super::auth::Caller;
use super::error::{ApiError, ApiResult, code};
use super::extract::JsonBody;
use super::policy::Rights;
use super::state::HttpState;

/// The users.
pub const USERS_PATH: &str = "/access/users";
/// One user.
pub const USER_PATH: &str = "/access/users/{name}";
/// One user's grants.
pub const GRANTS_PATH: &str = "/access/users/{name}/grants";
/// The roles.
pub const ROLES_PATH: &str = "/access/roles";
/// The shortest password accepted for a new user or a password change.
pub const MIN_PASSWORD_LEN: usize = 8;
/// The longest (it is hashed whole).
pub const MAX_PASSWORD_LEN: usize = 1024;

/// The error code of a user created twice.
const USER_ALREADY_EXISTS: &str = "UserAlreadyExists";

/// The routes.
pub(super) fn routes() -> Router<HttpState> {
    Router::new()
        .route(USERS_PATH, get(list).post(create))
        .route(USER_PATH, get(get_one).patch(update).delete(delete))
        .route(GRANTS_PATH, get(grants).put(put_grants))
        .route(ROLES_PATH, get(roles))
}

/// The access matrix, after checking the caller may manage users.
fn access<'a>(state: &'a HttpState, caller: &Caller) -> ApiResult<&'a AccessControl> {
    let access = state
        .access()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, code::NOT_FOUND, "no such resource"))?;
    caller.require(Rights::REGISTRY_WRITE)?;
    Ok(access)
}

fn access_error(error: iot_identity::Error) -> ApiError {
    use iot_identity::Error as E;
    match &error {
        E::UserNotFound { .. } => {
            ApiError::new(StatusCode::NOT_FOUND, code::NOT_FOUND, error.to_string())
        }
        E::UserAlreadyExists { .. } => {
            ApiError::new(StatusCode::CONFLICT, USER_ALREADY_EXISTS, error.to_string())
        }
        E::RoleNotFound { .. } | E::InvalidInput { .. } => ApiError::bad_request(error.to_string()),
        _ => ApiError::internal(error.is_retryable(), "access store", &error),
    }
}

fn user_name(raw: &str) -> ApiResult<UserName> {
    raw.parse()
        .map_err(|e: iot_identity::Error| ApiError::bad_request(e.to_string()))
}

fn check_password(password: &str) -> ApiResult<()> {
    let chars = password.chars().count();
    if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&chars) {
        return Err(ApiError::bad_request(format!(
            "a password is {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters"
        )));
    }
    Ok(())
}

/// A grant as the routes speak it: a role over a device set (`"all"`, `{"device": id}`,
/// `{"query": "SELECT * FROM devices WHERE …"}`, `{"node": "building=HQ/floor=3"}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantJson {
    role: String,
    devices: DeviceSet,
}

impl GrantJson {
    fn to_grant(&self, user: &UserName) -> ApiResult<Grant> {
        let role: RoleName = self
            .role
            .parse()
            .map_err(|e: iot_identity::Error| ApiError::bad_request(e.to_string()))?;
        self.devices.validate().map_err(access_error)?;
        Ok(Grant::new(user.clone(), role, self.devices.clone()))
    }
}

/// A user as the routes answer it (no password hash).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UserJson {
    name: String,
    disabled: bool,
    created_at: String,
    updated_at: String,
    grants: Vec<GrantJson>,
}

async fn describe(access: &AccessControl, user: &User) -> ApiResult<UserJson> {
    let grants = access
        .store()
        .grants_of(&user.name)
        .await
        .map_err(access_error)?;
    Ok(UserJson {
        name: user.name.to_string(),
        disabled: user.disabled,
        created_at: user.created_at.to_rfc3339(),
        updated_at: user.updated_at.to_rfc3339(),
        grants: grants
            .into_iter()
            .map(|g| GrantJson {
                role: g.role.to_string(),
                devices: g.devices,
            })
            .collect(),
    })
}

fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(
        CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
}

/// `GET /access/users`.
async fn list(State(state): State<HttpState>, caller: Caller) -> ApiResult<Response> {
    let access = access(&state, &caller)?;
    let users = access.store().list_users().await.map_err(access_error)?;
    let mut out = Vec::with_capacity(users.len());
    for user in &users {
        out.push(describe(access, user).await?);
    }
    Ok(no_store(Json(out).into_response()))
}

/// The body of `POST /access/users`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUserBody {
    name: String,
    password: String,
    #[serde(default)]
    grants: Vec<GrantJson>,
}

impl Drop for NewUserBody {
    fn drop(&mut self) {
        self.password.zeroize();
    }
}

impl fmt::Debug for NewUserBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewUserBody")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .field("grants", &self.grants)
            .finish()
    }
}

/// `POST /access/users`: 201 with the user.
async fn create(
    State(state): State<HttpState>,
    caller: Caller,
    JsonBody(body): JsonBody<NewUserBody>,
) -> ApiResult<Response> {
    let access = access(&state, &caller)?;
    let name = user_name(&body.name)?;
    check_password(&body.password)?;
    // Every grant is checked (its role exists, its set is valid) before the user is created,
    // so a refused grant leaves no user behind.
    let mut grants = Vec::with_capacity(body.grants.len());
    for grant in &body.grants {
        let grant = grant.to_grant(&name)?;
        if access
            .store()
            .get_role(&grant.role)
            .await
            .map_err(access_error)?
            .is_none()
        {
            return Err(ApiError::bad_request(format!(
                "role {} does not exist",
                grant.role
            )));
        }
        grants.push(grant);
    }
    let user = access
        .create_user(name.clone(), &body.password)
        .await
        .map_err(access_error)?;
    for grant in grants {
        access.grant(grant).await.map_err(access_error)?;
    }
    tracing::info!(user = %name, by = %who(&caller), "user created");
    let json = describe(access, &user).await?;
    Ok(no_store((StatusCode::CREATED, Json(json)).into_response()))
}

fn who(caller: &Caller) -> String {
    match caller {
        Caller::User { name, .. } => format!("user {name}"),
        Caller::Service { policy, .. } => format!("policy {policy}"),
        Caller::Device { id, .. } => format!("device {id}"),
    }
}

async fn find(access: &AccessControl, name: &UserName) -> ApiResult<User> {
    access
        .store()
        .get_user(name)
        .await
        .map_err(access_error)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                code::NOT_FOUND,
                format!("user {name} not found"),
            )
        })
}

/// `GET /access/users/{name}`.
async fn get_one(
    State(state): State<HttpState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let access = access(&state, &caller)?;
    let user = find(access, &user_name(&name)?).await?;
    Ok(no_store(
        Json(describe(access, &user).await?).into_response(),
    ))
}

/// The body of `PATCH /access/users/{name}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    password: Option<String>,
    disabled: Option<bool>,
}

impl Drop for UpdateBody {
    fn drop(&mut self) {
        if let Some(p) = &mut self.password {
            p.zeroize();
        }
    }
}

impl fmt::Debug for UpdateBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpdateBody")
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("disabled", &self.disabled)
            .finish()
    }
}

/// `PATCH /access/users/{name}`: a new password (their sessions end) and/or (dis)abled.
async fn update(
    State(state): State<HttpState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<UpdateBody>,
) -> ApiResult<Response> {
    let access = access(&state, &caller)?;
    let name = user_name(&name)?;
    if let Some(password) = &body.password {
        check_password(password)?;
    }
    let mut user = find(access, &name).await?;
    if let Some(password) = &body.password {
        user = access
            .set_password(&name, password)
            .await
            .map_err(access_error)?;
    }
    if let Some(disabled) = body.disabled {
        user = access
            .store()
            .set_disabled(&name, disabled)
            .await
            .map_err(access_error)?;
    }
    tracing::info!(user = %name, by = %who(&caller), "user updated");
    Ok(no_store(
        Json(describe(access, &user).await?).into_response(),
    ))
}

/// `DELETE /access/users/{name}`: 204.
async fn delete(
    State(state): State<HttpState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let access = access(&state, &caller)?;
    let name = user_name(&name)?;
    access
        .store()
        .delete_user(&name)
        .await
        .map_err(access_error)?;
    // Their alert subscriptions go with them (a PostgreSQL store's already went by cascade).
    if let Some(subscriptions) = state.subscriptions() {
        let removed = subscriptions.delete_of(&name).await.map_err(access_error)?;
        tracing::debug!(user = %name, removed, "subscriptions of a deleted user removed");
    }
    tracing::info!(user = %name, by = %who(&caller), "user deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /access/users/{name}/grants`.
async fn grants(
    State(state): State<HttpState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let access = access(&state, &caller)?;
    let user = find(access, &user_name(&name)?).await?;
    Ok(no_store(
        Json(describe(access, &user).await?.grants).into_response(),
    ))
}

/// `PUT /access/users/{name}/grants`: the user's grants become exactly these.
async fn put_grants(
    State(state): State<HttpState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<Vec<GrantJson>>,
) -> ApiResult<Response> {
    let access = access(&state, &caller)?;
    let name = user_name(&name)?;
    let user = find(access, &name).await?;
    let wanted = body
        .iter()
        .map(|g| g.to_grant(&name))
        .collect::<ApiResult<Vec<_>>>()?;
    let held = access
        .store()
        .grants_of(&name)
        .await
        .map_err(access_error)?;
    // Add first, then remove: a refused grant leaves the user with what they had plus what
    // was added before it, never with less than they had.
    for grant in &wanted {
        if !held.contains(grant) {
            access.grant(grant.clone()).await.map_err(access_error)?;
        }
    }
    for grant in &held {
        if !wanted.contains(grant) {
            access
                .store()
                .remove_grant(grant)
                .await
                .map_err(access_error)?;
        }
    }
    tracing::info!(user = %name, by = %who(&caller), grants = wanted.len(), "grants replaced");
    Ok(no_store(
        Json(describe(access, &user).await?.grants).into_response(),
    ))
}

/// A role as `GET /access/roles` answers it.
#[derive(Serialize)]
struct RoleJson {
    name: String,
    builtin: bool,
    permissions: iot_identity::access::Permissions,
}

/// `GET /access/roles`.
async fn roles(State(state): State<HttpState>, caller: Caller) -> ApiResult<Response> {
    let access = access(&state, &caller)?;
    let roles = access.store().list_roles().await.map_err(access_error)?;
    let out: Vec<RoleJson> = roles
        .into_iter()
        .map(|r| RoleJson {
            builtin: iot_identity::access::Role::is_builtin(&r.name),
            name: r.name.to_string(),
            permissions: r.permissions,
        })
        .collect();
    Ok(Json(out).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_debug() {
        let body: NewUserBody =
            serde_json::from_str(r#"{"name":"vera","password":"hunter2-secret"}"#).expect("json");
        assert!(!format!("{body:?}").contains("hunter2"));
        let body: UpdateBody =
            serde_json::from_str(r#"{"password":"hunter2-secret"}"#).expect("json");
        assert!(!format!("{body:?}").contains("hunter2"));
    }

    #[test]
    fn grants_read_every_device_set() {
        let grants: Vec<GrantJson> = serde_json::from_str(
            r#"[{"role":"viewer","devices":"all"},{"role":"operator","devices":{"device":"pump-7"}},
                {"role":"viewer","devices":{"node":"building=HQ/floor=3"}}]"#,
        )
        .expect("json");
        assert_eq!(grants.len(), 3);
        assert_eq!(grants[0].devices, DeviceSet::All);
    }
}
