//! Who is calling: a SAS token in `Authorization`, checked against a shared access policy or a
//! device's keys.
//!
//! Handlers take a [`Caller`] argument (an axum extractor): the request is authenticated before
//! the handler runs, and a failure is answered with 401 in IoT Hub's error shape. The handler
//! then asks for the rights its operation needs with [`Caller::require`] (403 when missing) or
//! for a device with [`Caller::device`].
//!
//! Accepted tokens (`SharedAccessSignature sr=…&sig=…&se=…[&skn=…]`, fields in any order):
//!
//! | `sr` | `skn` | who |
//! | --- | --- | --- |
//! | `{host}` | a policy | the back end, with the policy's rights |
//! | `{host}/devices/{id}` | a policy with `DeviceConnect` | device `id` (protocol-gateway style) |
//! | `{host}/devices/{id}` | none | device `id`, signed with one of its own keys |
//!
//! `{host}` may carry a port (`localhost:8443`, percent-encoded in the token as
//! `localhost%3A8443`): the Python service SDK signs for the host *and port* of its connection
//! string. The port is not compared — the scope check is about which hub, and a hub is one host
//! name. Host names compare case-insensitively. Signatures are compared in constant time
//! (`iot_identity::sas`), and a token never reaches a log or an error.
//!
//! **User sessions.** `Authorization: Bearer {token}` carries a session of the access matrix
//! (`iot_identity::access`), accepted when the state has one ([`HttpState::with_access`]);
//! the route's permission is checked for the device it names before the handler runs (see
//! [`user_access`](super::user_access)).
//!
//! **X.509.** Over HTTPS with client certificates asked for (see
//! [`HttpServer::listen_tls`](super::HttpServer::listen_tls)), a request *without* an
//! `Authorization` header whose connection presented a certificate chain is authenticated as
//! the device its path names (`/devices/{id}/…`) by that chain, with the same
//! [`Authenticator`] the MQTT endpoint uses: a thumbprint device by its leaf's thumbprint, a
//! CA-signed device by a chain to a verified CA of
//! [`HttpState::certificate_authorities`] with its id as the leaf's common name, within its
//! dates and key usage. Every request is checked afresh (the store and the CAs are read each
//! time), so disabling the device or deleting its CA refuses the next request. A request that
//! carries a token is checked by its token alone, certificate or not.

use axum::extract::FromRequestParts;
use axum::extract::RawPathParams;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use iot_core::DeviceId;
use iot_identity::sas::{self, SasVerifier};
use iot_identity::{Authenticator, Credentials, DeviceStatus, Presented};

use super::error::{ApiError, ApiResult};
use super::policy::Rights;
use super::state::HttpState;
use crate::mqtt::client_chain::ClientChain;

/// Put into a request's extensions when its caller was authenticated by the certificate chain
/// of its TLS connection (not by a token): the device API then opens the device's session
/// with that chain, as the MQTT endpoint does, instead of a token it signs.
#[derive(Clone, Debug)]
pub(crate) struct ByCertificate(pub(crate) ClientChain);

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Caller {
    /// A back end holding a shared access policy.
    Service {
        /// The policy's name.
        policy: String,
        /// What it may do.
        rights: Rights,
    },
    /// A device, with its own key or through a `DeviceConnect` policy.
    Device {
        /// The device.
        id: DeviceId,
        /// The policy that signed the token, when not the device's own key.
        policy: Option<String>,
    },
    /// A user of the access matrix, by a session token (`Authorization: Bearer …`), already
    /// allowed `permission` on the route's device by the matrix (see
    /// [`user_access`](super::user_access)).
    User {
        /// The user's name.
        name: String,
        /// The permission the route needed and the matrix granted.
        permission: iot_identity::access::Permission,
        /// On listing routes (`GET /devices`, twin queries, counts), the devices the user may
        /// see; `None` on every other route.
        scope: Option<super::user_access::DeviceScope>,
    },
}

impl Caller {
    /// Succeeds when the caller is a back end whose policy holds at least one of `any_of`;
    /// otherwise 403.
    pub fn require(&self, any_of: Rights) -> ApiResult<()> {
        match self {
            Caller::Service { rights, .. } if rights.intersects(any_of) => Ok(()),
            Caller::Service { policy, .. } => Err(ApiError::forbidden(format!(
                "policy {policy} lacks the right this operation needs ({any_of})"
            ))),
            Caller::Device { .. } => Err(ApiError::forbidden(
                "a device token cannot call the service API",
            )),
            // The route's permission was checked against the access matrix, for the device
            // the route names, before the handler ran: a user reaching a handler is allowed.
            Caller::User { .. } => Ok(()),
        }
    }

    /// The devices a listing may show this caller, or `None` for every device: a back end's
    /// policy and a user with a grant over all devices see the whole fleet. A user on a route
    /// with no scope set (never a listing route) sees nothing: the filter fails closed.
    pub fn listing_filter(&self) -> Option<&iot_provisioning::access::RecordFilter> {
        static NOTHING: std::sync::LazyLock<iot_provisioning::access::RecordFilter> =
            std::sync::LazyLock::new(iot_provisioning::access::RecordFilter::default);
        match self {
            Caller::User { scope: Some(s), .. } => {
                (!s.filter().is_everything()).then(|| s.filter())
            }
            Caller::User { scope: None, .. } => Some(&NOTHING),
            Caller::Service { .. } | Caller::Device { .. } => None,
        }
    }

    /// The device, when the caller is device `path_id` (the id in the request's path);
    /// otherwise 401 — a device token for another device proves nothing about this one.
    pub fn device(&self, path_id: &DeviceId) -> ApiResult<&DeviceId> {
        match self {
            Caller::Device { id, .. } if id == path_id => Ok(id),
            Caller::Device { .. } => Err(ApiError::unauthorized(
                "the token is scoped to another device",
            )),
            Caller::Service { .. } | Caller::User { .. } => Err(ApiError::unauthorized(
                "the device API needs a device-scoped token",
            )),
        }
    }
}

impl FromRequestParts<HttpState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &HttpState) -> ApiResult<Self> {
        let Some(header) = parts.headers.get(AUTHORIZATION) else {
            let Some(chain) = parts.extensions.get::<ClientChain>().cloned() else {
                return Err(ApiError::unauthorized(
                    "the Authorization header is missing",
                ));
            };
            let id = path_device(parts, state).await?;
            let caller = authenticate_chain(state, &id, &chain).await?;
            tracing::debug!(device = %id, "authenticated by client certificate");
            parts.extensions.insert(ByCertificate(chain));
            return Ok(caller);
        };
        let token = header
            .to_str()
            .map_err(|_| ApiError::unauthorized("the Authorization header is not ASCII"))?;
        if let Some(session) = bearer(token) {
            // Owned (and wiped after), since reading the path's parameters needs `parts`.
            let session = zeroize::Zeroizing::new(session.to_owned());
            return user(parts, state, &session).await;
        }
        let caller = authenticate(state, token, sas::unix_now()).await?;
        match &caller {
            Caller::Service { policy, .. } => tracing::debug!(policy, "authenticated"),
            Caller::Device { id, .. } => tracing::debug!(device = %id, "authenticated"),
            Caller::User { .. } => {}
        }
        Ok(caller)
    }
}

/// The session token of `Bearer {token}` (scheme case-insensitive), if that is the header.
pub(super) fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// A user session: checked against the access matrix for this route and its device.
async fn user(parts: &mut Parts, state: &HttpState, token: &str) -> ApiResult<Caller> {
    let Some(access) = state.access() else {
        return Err(ApiError::unauthorized(
            "user sessions are not enabled on this hub",
        ));
    };
    let pattern = parts
        .extensions
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let device = match RawPathParams::from_request_parts(parts, state).await {
        Ok(params) => params
            .iter()
            .find_map(|(name, value)| (name == "id").then(|| DeviceId::new(value)))
            .transpose()
            .map_err(|e| ApiError::bad_request(format!("invalid device id: {e}")))?,
        Err(_) => None,
    };
    let caller =
        super::user_access::authorize(access, token, &parts.method, pattern.as_deref(), device)
            .await?;
    if let Caller::User {
        name, permission, ..
    } = &caller
    {
        tracing::debug!(user = %name, %permission, "user session allowed");
    }
    Ok(caller)
}

/// The device a request's path names (its `{id}`): whom a certificate chain must prove.
async fn path_device(parts: &mut Parts, state: &HttpState) -> ApiResult<DeviceId> {
    let no_device =
        || ApiError::unauthorized("a client certificate authenticates device routes only");
    let params = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|_| no_device())?;
    let raw = params
        .iter()
        .find_map(|(name, value)| (name == "id").then_some(value))
        .ok_or_else(no_device)?;
    DeviceId::new(raw).map_err(|e| ApiError::bad_request(format!("invalid device id: {e}")))
}

/// Authenticates device `id` by the certificate chain of the request's connection.
///
/// The authenticator is built per request over the state's identity store and CAs: both are
/// shared handles onto the hub's stores, so this is the check the hub makes at connect.
pub(crate) async fn authenticate_chain(
    state: &HttpState,
    id: &DeviceId,
    chain: &ClientChain,
) -> ApiResult<Caller> {
    let mut authenticator = Authenticator::new(state.identity().clone(), state.host());
    if let Some(authorities) = state.certificate_authorities() {
        authenticator = authenticator.with_certificate_authorities(authorities.clone());
    }
    match authenticator
        .authenticate(id, Presented::CertificateChain(chain.certificates()))
        .await
    {
        Ok(_) => Ok(Caller::Device {
            id: id.clone(),
            policy: None,
        }),
        // All refusals alike: the caller learns nothing about the device or its CA.
        Err(e) if e.is_auth_failure() => Err(ApiError::unauthorized(
            "the client certificate does not authenticate this device",
        )),
        Err(e) => Err(e.into()),
    }
}

/// What a token's resource names, once its host is checked.
enum Scope {
    Hub,
    Device(DeviceId),
}

fn scope(host: &str, resource: &str) -> Option<Scope> {
    let (authority, rest) = resource.split_once('/').unwrap_or((resource, ""));
    let name = match authority.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => authority,
    };
    if !name.eq_ignore_ascii_case(host) {
        return None;
    }
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return Some(Scope::Hub);
    }
    let id = rest.strip_prefix("devices/")?;
    // Module scopes (`devices/{id}/modules/{m}`) and other paths are not served.
    if id.contains('/') {
        return None;
    }
    DeviceId::new(id).ok().map(Scope::Device)
}

/// Authenticates `token` as of `now` (Unix seconds).
///
/// A token signed by a shared access policy that verified before is answered from the state's
/// token cache while it has not expired and the policy set has not changed since (see
/// `token_cache.rs`); every other token is checked in full.
pub async fn authenticate(state: &HttpState, token: &str, now: u64) -> ApiResult<Caller> {
    // Read before the policy: a verdict reached with the policies of this generation.
    let generation = state.policies().generation();
    if let Some(caller) = state.tokens().get(token, now, generation) {
        return Ok(caller);
    }
    let verifier = SasVerifier::default();
    let parsed = sas::parse(token, verifier.max_token_len)
        .map_err(|e| ApiError::unauthorized(format!("malformed SAS token: {e}")))?;
    let scope = scope(state.host(), parsed.resource()).ok_or_else(|| {
        ApiError::unauthorized("the token's resource (sr) is not this hub or one of its devices")
    })?;
    let refused = |e: iot_identity::Error| match e {
        iot_identity::Error::TokenExpired { .. } => ApiError::unauthorized("the token expired"),
        _ => ApiError::unauthorized("the token's signature or policy does not match"),
    };
    if let Some(name) = parsed.policy() {
        let policy = state
            .policies()
            .get(name)
            .ok_or_else(|| ApiError::unauthorized("the token names an unknown policy"))?;
        verifier
            .verify(
                token,
                parsed.resource(),
                &policy.primary,
                Some(&policy.secondary),
                Some(name),
                now,
            )
            .map_err(refused)?;
        let caller = match scope {
            Scope::Hub => Caller::Service {
                policy: policy.name,
                rights: policy.rights,
            },
            Scope::Device(id) if policy.rights.contains(Rights::DEVICE_CONNECT) => Caller::Device {
                id,
                policy: Some(policy.name),
            },
            Scope::Device(_) => {
                return Err(ApiError::unauthorized(
                    "a device-scoped token needs a policy with DeviceConnect",
                ));
            }
        };
        let valid_until = parsed
            .expiry()
            .saturating_add(verifier.clock_skew.as_secs());
        state
            .tokens()
            .insert(token, caller.clone(), valid_until, now, generation);
        return Ok(caller);
    }
    let Scope::Device(id) = scope else {
        return Err(ApiError::unauthorized(
            "a hub-scoped token must name a shared access policy (skn)",
        ));
    };
    let identity =
        state.identity().get(&id).await?.ok_or_else(|| {
            ApiError::unauthorized("the token's signature or policy does not match")
        })?;
    let Credentials::SymmetricKeys { primary, secondary } = &identity.credentials else {
        return Err(ApiError::unauthorized("the device has no symmetric keys"));
    };
    verifier
        .verify(
            token,
            parsed.resource(),
            primary,
            Some(secondary),
            None,
            now,
        )
        .map_err(refused)?;
    if let DeviceStatus::Disabled { .. } = identity.status {
        return Err(ApiError::unauthorized("the device is disabled"));
    }
    Ok(Caller::Device { id, policy: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_accepts_a_port_and_any_case() {
        assert!(matches!(scope("localhost", "localhost"), Some(Scope::Hub)));
        assert!(matches!(
            scope("localhost", "LocalHost:8443"),
            Some(Scope::Hub)
        ));
        assert!(matches!(
            scope("localhost", "localhost:8443/"),
            Some(Scope::Hub)
        ));
        assert!(matches!(
            scope("localhost", "localhost/devices/d1"),
            Some(Scope::Device(id)) if id.as_str() == "d1"
        ));
        assert!(scope("localhost", "otherhost").is_none());
        assert!(scope("localhost", "localhost:x").is_none());
        assert!(scope("localhost", "localhost/devices/d1/modules/m").is_none());
        assert!(scope("localhost", "localhost/twins").is_none());
    }
}
