//! User sessions on the service API: a bearer token from the access matrix
//! (`iot_identity::access`) accepted beside shared access policies, each route's permission
//! checked for the device it targets.
//!
//! A request with `Authorization: Bearer {session token}` is checked, before its handler runs,
//! against [`ROUTES`]: the route's [`Permission`] on its `{id}` device (or on the hub for routes
//! without one). A session that is not accepted is 401; a denial is 403 (and audited by the
//! access control's sink). A route missing from the table is 403 for every user: the table fails
//! closed, so a route added later is not open to users until someone decides its permission.
//!
//! **Listings.** `GET /devices`, `POST /devices/query`, `GET /statistics/devices` and the alerts
//! feed `GET /alerts/stream` ([`LISTINGS`]) are open to every user with `read` somewhere: a user with a grant over all devices sees the
//! fleet (no per-device work); any other user sees only the devices their `read` grants hold,
//! decided on each registry record as the listing pages through the registry
//! ([`RecordFilter`]: `RegistryDeviceSets`' rules, without a registry read per device).
//!
//! Routes that return keys (`GET /devices/{id}`, the module routes) need `manageDevices`, not
//! `read`: reading a device's keys is as good as managing it.

use std::sync::Arc;

use axum::http::Method;
use iot_core::DeviceId;
use iot_identity::Decision;
use iot_identity::access::{AccessControl, DeviceSet, Permission, Target, UserName};
use iot_provisioning::access::RecordFilter;

use super::auth::Caller;
use super::error::{ApiError, ApiResult};

/// (HTTP method, route pattern, permission) of every service route a user session may call.
pub const ROUTES: &[(&str, &str, Permission)] = {
    use Permission::*;
    &[
        ("GET", "/statistics/service", Read),
        ("GET", "/statistics/devices", Read),
        ("GET", "/devices", Read),
        ("GET", "/devices/", Read),
        ("POST", "/devices", ManageDevices),
        ("POST", "/devices/query", Read),
        ("PUT", "/devices/{id}", ManageDevices),
        ("GET", "/devices/{id}", ManageDevices),
        ("DELETE", "/devices/{id}", ManageDevices),
        ("DELETE", "/devices/{id}/commands", SendC2d),
        ("GET", "/twins/{id}", Read),
        ("PATCH", "/twins/{id}", UpdateTwin),
        ("PUT", "/twins/{id}", UpdateTwin),
        ("POST", "/twins/{id}/methods", InvokeMethod),
        ("GET", "/devices/{id}/modules", ManageDevices),
        ("PUT", "/devices/{id}/modules/{mid}", ManageDevices),
        ("GET", "/devices/{id}/modules/{mid}", ManageDevices),
        ("DELETE", "/devices/{id}/modules/{mid}", ManageDevices),
        ("GET", "/twins/{id}/modules/{mid}", Read),
        ("PATCH", "/twins/{id}/modules/{mid}", UpdateTwin),
        ("PUT", "/twins/{id}/modules/{mid}", UpdateTwin),
        ("POST", "/twins/{id}/modules/{mid}/methods", InvokeMethod),
        ("POST", "/devices/{id}/messages/cloudToDevice", SendC2d),
        ("GET", "/messages/serviceBound/feedback", SendC2d),
        ("GET", "/certificates", ManageDevices),
        ("PUT", "/certificates/{name}", ManageDevices),
        ("GET", "/certificates/{name}", ManageDevices),
        ("DELETE", "/certificates/{name}", ManageDevices),
        (
            "POST",
            "/certificates/{name}/generateVerificationCode",
            ManageDevices,
        ),
        ("POST", "/certificates/{name}/verify", ManageDevices),
        // The dashboard's live streams (http/live.rs) and user management (http/users.rs).
        ("GET", "/devices/{id}/telemetry/stream", Read),
        ("GET", "/alerts/stream", Read),
        ("GET", "/access/users", ManageUsers),
        ("POST", "/access/users", ManageUsers),
        ("GET", "/access/users/{name}", ManageUsers),
        ("PATCH", "/access/users/{name}", ManageUsers),
        ("DELETE", "/access/users/{name}", ManageUsers),
        ("GET", "/access/users/{name}/grants", ManageUsers),
        ("PUT", "/access/users/{name}/grants", ManageUsers),
        ("GET", "/access/roles", ManageUsers),
        // Fleet operations act on whatever devices a query matches, so they are checked on
        // the hub (a grant over every device); a twin-update job also needs updateTwin there
        // (checked in its handler). docs/fleet.md.
        ("GET", "/jobs/v2/query", Read),
        ("PUT", "/jobs/v2/{jobId}", InvokeMethod),
        ("GET", "/jobs/v2/{jobId}", Read),
        ("POST", "/jobs/v2/{jobId}/cancel", InvokeMethod),
        ("GET", "/configurations", Read),
        ("POST", "/configurations/testQueries", Read),
        ("PUT", "/configurations/{configurationId}", UpdateTwin),
        ("GET", "/configurations/{configurationId}", Read),
        ("DELETE", "/configurations/{configurationId}", UpdateTwin),
        // A user's own alert subscriptions ([`OWN`]): alerts reach them only for devices
        // their `read` grants cover.
        ("GET", "/access/me/subscriptions", Read),
        ("POST", "/access/me/subscriptions", Read),
        ("DELETE", "/access/me/subscriptions/{sid}", Read),
    ]
};

/// The routes that list, query or count devices: a user sees what their grants hold there
/// rather than being refused for lacking a grant over the whole hub.
pub const LISTINGS: &[(&str, &str)] = &[
    ("GET", "/statistics/devices"),
    ("GET", "/devices"),
    ("GET", "/devices/"),
    ("POST", "/devices/query"),
    // The alerts feed shows a user the alerts of the devices they may read (http/live.rs).
    ("GET", "/alerts/stream"),
];

/// Routes about the calling user's own records: any enabled user with a session may call them
/// (what they reach is decided by their grants elsewhere).
pub const OWN: &[(&str, &str)] = &[
    ("GET", "/access/me/subscriptions"),
    ("POST", "/access/me/subscriptions"),
    ("DELETE", "/access/me/subscriptions/{sid}"),
];

/// The devices a user may see on a listing route (see [`LISTINGS`]).
#[derive(Clone, Debug)]
pub struct DeviceScope(Arc<RecordFilter>);

impl DeviceScope {
    /// The filter deciding each registry record.
    pub fn filter(&self) -> &RecordFilter {
        &self.0
    }
}

impl PartialEq for DeviceScope {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for DeviceScope {}

fn is_listing(method: &Method, pattern: &str) -> bool {
    LISTINGS
        .iter()
        .any(|(m, p)| *m == method.as_str() && *p == pattern)
}

/// The devices `user` may use `permission` on, read once from the store: everything when a
/// grant over all devices gives it. An unknown or disabled user is refused (403).
async fn scope(
    access: &AccessControl,
    user: &UserName,
    permission: Permission,
) -> ApiResult<DeviceScope> {
    let found = access
        .store()
        .access_of(user)
        .await
        .map_err(|e| ApiError::internal(e.is_retryable(), "access store", &e))?;
    let Some(found) = found.filter(|a| !a.user.disabled) else {
        return Err(ApiError::forbidden(format!(
            "user {user} is unknown or disabled"
        )));
    };
    let sets: Vec<DeviceSet> = found
        .grants
        .into_iter()
        .filter(|(_, granted)| granted.contains(permission))
        .map(|(grant, _)| grant.devices)
        .collect();
    let filter = if sets.contains(&DeviceSet::All) {
        RecordFilter::everything()
    } else {
        RecordFilter::new(sets)
    };
    Ok(DeviceScope(Arc::new(filter)))
}

/// The permission a user needs for `method` on the route `pattern`, if users may call it.
pub fn permission_for(method: &Method, pattern: &str) -> Option<Permission> {
    ROUTES
        .iter()
        .find(|(m, p, _)| *m == method.as_str() && *p == pattern)
        .map(|(_, _, permission)| *permission)
}

/// Checks the session `token` for `method` on the route `pattern` with path device `device`.
pub(crate) async fn authorize(
    access: &AccessControl,
    token: &str,
    method: &Method,
    pattern: Option<&str>,
    device: Option<DeviceId>,
) -> ApiResult<Caller> {
    // The session first: an unusable token is 401 whatever the route.
    let session = access.session(token).await.map_err(|e| {
        if e.is_auth_failure() {
            ApiError::unauthorized("the session token is not accepted")
        } else {
            ApiError::internal(e.is_retryable(), "access store", &e)
        }
    })?;
    let Some(permission) = pattern.and_then(|p| permission_for(method, p)) else {
        return Err(ApiError::forbidden("a user session cannot call this route"));
    };
    if pattern.is_some_and(|p| OWN.iter().any(|(m, o)| *m == method.as_str() && *o == p)) {
        let user = access
            .store()
            .get_user(&session.user)
            .await
            .map_err(|e| ApiError::internal(e.is_retryable(), "access store", &e))?;
        if user.is_none_or(|u| u.disabled) {
            return Err(ApiError::forbidden(format!(
                "user {} is unknown or disabled",
                session.user
            )));
        }
        return Ok(Caller::User {
            name: session.user.to_string(),
            permission,
            scope: None,
        });
    }
    if device.is_none() && pattern.is_some_and(|p| is_listing(method, p)) {
        let scope = scope(access, &session.user, permission).await?;
        return Ok(Caller::User {
            name: session.user.to_string(),
            permission,
            scope: Some(scope),
        });
    }
    let target = device.map_or(Target::Hub, Target::Device);
    match access.check(&session.user, permission, &target).await {
        Decision::Allow => Ok(Caller::User {
            name: session.user.to_string(),
            permission,
            scope: None,
        }),
        Decision::Deny(reason) => Err(ApiError::forbidden(format!(
            "user {} may not {permission} on {target}: {reason}",
            session.user
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_route_has_one_permission() {
        for (i, (m, p, _)) in ROUTES.iter().enumerate() {
            assert!(
                ROUTES[..i].iter().all(|(m2, p2, _)| (m2, p2) != (m, p)),
                "{m} {p} twice"
            );
        }
        assert_eq!(
            permission_for(&Method::POST, "/twins/{id}/methods"),
            Some(Permission::InvokeMethod)
        );
        assert_eq!(
            permission_for(&Method::POST, "/devices/{id}/messages/events"),
            None
        );
    }
}
