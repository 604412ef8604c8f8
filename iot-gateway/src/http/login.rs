//! User sessions over HTTP: `POST /auth/login`, `POST /auth/logout` and `GET /auth/me`, for a
//! dashboard that signs users in to the access matrix (`iot_identity::access`) and then calls the
//! service API with `Authorization: Bearer {token}` (see [`user_access`](super::user_access)).
//!
//! The routes exist only when [`HttpState::with_access`] gave an access matrix; without one
//! every method on them is 404, as for any unknown path.
//!
//! * A refused login is 401 with one message whatever the reason (unknown user, wrong password,
//!   disabled user): [`AccessControl::login`] takes as long for each and audits the refusal.
//! * Failed logins are budgeted per user name and per peer address
//!   ([`HttpConfig::login_limit`](super::HttpConfig::login_limit), see
//!   [`login_throttle`](super::login_throttle)); over budget is 429 with `Retry-After`, before
//!   any password is hashed.
//! * The login body is at most [`LOGIN_BODY_MAX`] bytes. The password is wiped from the parsed
//!   body when it is dropped (the request's raw bytes pass through hyper's buffers, which
//!   nothing here can wipe), and neither it nor a token reaches a log, a `Debug` or an error.
//!   Answers carrying a token or grants say `Cache-Control: no-store`.

use std::fmt;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest as _, Request, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use iot_identity::access::{AccessControl, Permissions, Session};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize as _, Zeroizing};

use super::auth::bearer;
use super::error::{ApiError, ApiResult, code};
use super::extract::JsonBody;
use super::server::PeerAddr;
use super::state::HttpState;

/// Where users log in.
pub const LOGIN_PATH: &str = "/auth/login";
/// Where users log out.
pub const LOGOUT_PATH: &str = "/auth/logout";
/// Where a session tells who it is.
pub const ME_PATH: &str = "/auth/me";
/// The largest login body, in bytes: a user name and a password fit many times over, and a
/// password is hashed whole, so its length is bounded well below the endpoint's body limit.
pub const LOGIN_BODY_MAX: usize = 4096;

/// The one answer to every refused login.
const REFUSED: &str = "the user name or password is wrong, or the user is disabled";

/// The routes. Each answers 404 for every method while no access matrix is set.
pub(super) fn routes() -> Router<HttpState> {
    Router::new()
        .route(
            LOGIN_PATH,
            hidden(post(login)).layer(DefaultBodyLimit::max(LOGIN_BODY_MAX)),
        )
        .route(LOGOUT_PATH, hidden(post(logout)))
        .route(ME_PATH, hidden(get(me)))
}

/// `methods`, with other methods 404 while user sessions are off (405 once they are on), so
/// that a hub without them does not show the routes at all.
fn hidden(methods: MethodRouter<HttpState>) -> MethodRouter<HttpState> {
    methods.fallback(|State(state): State<HttpState>| async move {
        match state.access() {
            None => not_found(),
            Some(_) => ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                code::METHOD_NOT_ALLOWED,
                "the resource does not support this method",
            ),
        }
    })
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, code::NOT_FOUND, "no such resource")
}

fn access(state: &HttpState) -> ApiResult<&AccessControl> {
    state.access().ok_or_else(not_found)
}

/// The body of `POST /auth/login`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    user: String,
    password: String,
}

impl Drop for LoginBody {
    fn drop(&mut self) {
        self.password.zeroize();
    }
}

impl fmt::Debug for LoginBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginBody")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The answer to a successful login.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LoginAnswer<'a> {
    token: &'a str,
    expires_at: String,
}

/// `POST /auth/login`: a new session and its token.
async fn login(State(state): State<HttpState>, request: Request) -> ApiResult<Response> {
    let access = access(&state)?;
    let peer = request.extensions().get::<PeerAddr>().map(|p| p.0.ip());
    // serde's messages may quote a value (a password sent as a number): say only what is wanted.
    let JsonBody(body) = JsonBody::<LoginBody>::from_request(request, &state)
        .await
        .map_err(|e| match e.status {
            StatusCode::BAD_REQUEST => {
                ApiError::bad_request(r#"the body must be {"user": string, "password": string}"#)
            }
            _ => e,
        })?;
    let attempt = match state.logins().attempt(&body.user, peer) {
        Ok(attempt) => attempt,
        Err(wait) => return Ok(throttled(wait.as_secs().saturating_add(1))),
    };
    match access.login(&body.user, &body.password).await {
        Ok((token, session)) => {
            state.logins().give_back(attempt);
            tracing::info!(user = %session.user, "user logged in");
            let answer = LoginAnswer {
                token: token.expose(),
                expires_at: session.expires_at.to_rfc3339(),
            };
            // The token leaves through hyper's buffers, which nothing here can wipe; the
            // `SessionToken` itself is zeroized when it drops at the end of this arm.
            let mut response = axum::Json(answer).into_response();
            no_store(&mut response);
            Ok(response)
        }
        // The access control audited the refusal; the answer says nothing more than it did.
        Err(e) if e.is_auth_failure() => Err(ApiError::unauthorized(REFUSED)),
        Err(e) => {
            // The store failed, not the guess: that attempt does not count against anyone.
            state.logins().give_back(attempt);
            Err(ApiError::internal(e.is_retryable(), "access store", &e))
        }
    }
}

/// 429 with `Retry-After`: the same for every user name, known or not.
fn throttled(retry_after_secs: u64) -> Response {
    tracing::warn!(retry_after_secs, "login refused: too many failed logins");
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        code::THROTTLED,
        format!("too many failed logins; retry in {retry_after_secs} s"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

/// `POST /auth/logout`: ends the session of the bearer token.
async fn logout(State(state): State<HttpState>, headers: HeaderMap) -> ApiResult<StatusCode> {
    let access = access(&state)?;
    let token = session_token(&headers)?;
    match access.logout(&token).await {
        Ok(true) => {
            tracing::debug!("user logged out");
            Ok(StatusCode::NO_CONTENT)
        }
        Ok(false) => Err(ApiError::unauthorized("the session token is not accepted")),
        Err(e) => Err(session_error(&e)),
    }
}

/// What `GET /auth/me` answers: who the session is and what they were granted.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Me {
    user: String,
    /// The hub's host name, as device connection strings name it (`HostName=`).
    hub: String,
    expires_at: String,
    /// The distinct roles of the user's grants, by name.
    roles: Vec<String>,
    /// Every permission some grant gives on some device.
    permissions: Permissions,
    grants: Vec<GrantSummary>,
}

#[derive(Serialize)]
struct GrantSummary {
    role: String,
    devices: iot_identity::access::DeviceSet,
    permissions: Permissions,
}

/// `GET /auth/me`: the session's user, roles and grants (no password hash, no token).
async fn me(State(state): State<HttpState>, headers: HeaderMap) -> ApiResult<Response> {
    let access = access(&state)?;
    let token = session_token(&headers)?;
    let session = access
        .session(&token)
        .await
        .map_err(|e| session_error(&e))?;
    let mut me = describe(access, &session).await?;
    state.host().clone_into(&mut me.hub);
    let mut response = axum::Json(me).into_response();
    no_store(&mut response);
    Ok(response)
}

async fn describe(access: &AccessControl, session: &Session) -> ApiResult<Me> {
    let Some(user_access) = access
        .store()
        .access_of(&session.user)
        .await
        .map_err(|e| ApiError::internal(e.is_retryable(), "access store", &e))?
    else {
        // Deleted since the session was read: the session is gone with it.
        return Err(ApiError::unauthorized("the session token is not accepted"));
    };
    let mut roles: Vec<String> = Vec::new();
    let mut permissions = Permissions::NONE;
    let mut grants = Vec::with_capacity(user_access.grants.len());
    for (grant, granted) in user_access.grants {
        let role = grant.role.to_string();
        if !roles.contains(&role) {
            roles.push(role.clone());
        }
        permissions = granted.iter().fold(permissions, Permissions::with);
        grants.push(GrantSummary {
            role,
            devices: grant.devices,
            permissions: granted,
        });
    }
    roles.sort();
    Ok(Me {
        user: session.user.to_string(),
        hub: String::new(),
        expires_at: session.expires_at.to_rfc3339(),
        roles,
        permissions,
        grants,
    })
}

/// The session token of `Authorization: Bearer {token}` (wiped on drop); 401 without one.
fn session_token(headers: &HeaderMap) -> ApiResult<Zeroizing<String>> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .map(|t| Zeroizing::new(t.to_owned()))
        .ok_or_else(|| {
            ApiError::unauthorized("this route needs Authorization: Bearer {session token}")
        })
}

fn session_error(error: &iot_identity::Error) -> ApiError {
    if error.is_auth_failure() {
        ApiError::unauthorized("the session token is not accepted")
    } else {
        ApiError::internal(error.is_retryable(), "access store", error)
    }
}

/// A token or a user's grants are not for caches (a proxy's, or the browser's back button).
fn no_store(response: &mut Response) {
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_stays_out_of_debug() {
        let body: LoginBody =
            serde_json::from_str(r#"{"user":"ann","password":"hunter2-secret"}"#).expect("json");
        let text = format!("{body:?}");
        assert!(text.contains("ann"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
