//! Claims-based security: what the SAS tokens a connection presented (on `$cbs` or as its
//! PLAIN password) allow it, and until when.
//!
//! * A **device token** (`sr={host}/devices/{id}`) is handed to
//!   [`Gateway::connect`](crate::Gateway::connect), which checks it against the identity store
//!   (or a `DeviceConnect` policy) and opens the device's session. The grant is that session
//!   and the token's expiry. Presenting a newer token for the same device renews the grant: a
//!   new session is opened with it (the gateway ends the old one, whose unsettled C2D messages
//!   are delivered again), and the links it authorized switch to it.
//! * A **service token** (`sr={host}`, `skn={policy}`) is checked like the HTTP service API
//!   checks it ([`crate::http::auth::authenticate`]): the grant is the policy's rights until the
//!   token expires.
//!
//! A link is authorized by the grant current when it attaches and follows its renewals; once
//! the grant's expiry passes without renewal, the link is closed with
//! `amqp:unauthorized-access` ([`lapsed`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use iot_core::DeviceId;
use iot_identity::Presented;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::gateway::{DeviceSession, Gateway, SessionOptions};
use crate::http::{Caller, HttpState, Rights};

/// The longest token taken.
const MAX_TOKEN: usize = 4096;

/// A device's session, until the token's expiry.
#[derive(Clone, Debug)]
pub(super) struct DeviceGrant {
    pub(super) session: Arc<dyn DeviceSession>,
    pub(super) expires_at: Instant,
}

/// A shared access policy's rights, until the token's expiry.
#[derive(Clone, Debug)]
pub(super) struct ServiceGrant {
    pub(super) rights: Rights,
    pub(super) expires_at: Instant,
}

/// Why a token was refused: IoT Hub's CBS status codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refused {
    pub(super) status: i32,
    pub(super) description: String,
}

impl Refused {
    fn unauthorized(description: &str) -> Self {
        Refused {
            status: 401,
            description: description.to_string(),
        }
    }
}

/// Something with an expiry the links watch.
pub(super) trait Expiring {
    fn expires_at(&self) -> Instant;
}

impl Expiring for DeviceGrant {
    fn expires_at(&self) -> Instant {
        self.expires_at
    }
}

impl Expiring for ServiceGrant {
    fn expires_at(&self) -> Instant {
        self.expires_at
    }
}

/// Completes once the grant in `grant` has expired without a renewal (or was withdrawn).
pub(super) async fn lapsed<G: Expiring + Clone>(grant: &mut watch::Receiver<Option<G>>) {
    lapsed_unless(grant, |_| true).await;
}

/// Completes once the service grant has expired without a renewal, was withdrawn, or was
/// renewed by a token whose policy lacks `right` (a weaker policy does not keep links that
/// the stronger one authorized).
pub(super) async fn lapsed_or_lacks(
    grant: &mut watch::Receiver<Option<ServiceGrant>>,
    right: Rights,
) {
    lapsed_unless(grant, |g| g.rights.contains(right)).await;
}

/// Completes once the grant has expired without a renewal, was withdrawn, or no longer `holds`.
async fn lapsed_unless<G: Expiring + Clone>(
    grant: &mut watch::Receiver<Option<G>>,
    holds: impl Fn(&G) -> bool,
) {
    loop {
        let current = grant
            .borrow_and_update()
            .as_ref()
            .filter(|g| holds(g))
            .map(G::expires_at);
        let Some(expires_at) = current else {
            return;
        };
        tokio::select! {
            () = tokio::time::sleep_until(expires_at) => {
                let renewed = grant.borrow().as_ref().filter(|g| holds(g)).map(G::expires_at);
                if renewed.is_none_or(|at| at <= Instant::now()) {
                    return;
                }
            }
            changed = grant.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// The grants of one connection.
#[derive(Debug)]
pub(super) struct Claims {
    gateway: Arc<dyn Gateway>,
    service_auth: Option<HttpState>,
    peer: IpAddr,
    devices: Mutex<HashMap<DeviceId, watch::Sender<Option<DeviceGrant>>>>,
    service: watch::Sender<Option<ServiceGrant>>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The instant a token with `se = expiry` (Unix seconds) expires.
fn instant_of(expiry: u64) -> Instant {
    let left = expiry.saturating_sub(now_unix());
    Instant::now() + Duration::from_secs(left.min(365 * 24 * 3600))
}

/// The device a token's resource names (`{host}/devices/{id}`), `None` for a hub-scoped one;
/// `Err` for anything else (modules, other paths).
fn device_of(resource: &str) -> Result<Option<DeviceId>, Refused> {
    let decoded = percent_encoding::percent_decode_str(resource).decode_utf8_lossy();
    let path = decoded.split_once('/').map(|(_, path)| path);
    match path.map(|p| p.trim_end_matches('/')) {
        None | Some("") => Ok(None),
        Some(path) => match path.split('/').collect::<Vec<_>>().as_slice() {
            ["devices", id] => DeviceId::new(*id)
                .map(Some)
                .map_err(|_| Refused::unauthorized("the token names an invalid device id")),
            _ => Err(Refused::unauthorized(
                "the token's resource is neither the hub nor one of its devices",
            )),
        },
    }
}

impl Claims {
    pub(super) fn new(
        gateway: Arc<dyn Gateway>,
        service_auth: Option<HttpState>,
        peer: IpAddr,
    ) -> Self {
        Claims {
            gateway,
            service_auth,
            peer,
            devices: Mutex::new(HashMap::new()),
            service: watch::channel(None).0,
        }
    }

    /// Verifies `token` and records what it grants (renewing an earlier grant of the same
    /// device or of the service side).
    pub(super) async fn put_token(&self, token: &str) -> Result<(), Refused> {
        let parsed = iot_identity::sas::parse(token, MAX_TOKEN)
            .map_err(|_| Refused::unauthorized("malformed SAS token"))?;
        let expires_at = instant_of(parsed.expiry());
        match device_of(parsed.resource())? {
            Some(device) => {
                let options = SessionOptions::default().peer(Some(self.peer));
                let session = self
                    .gateway
                    .connect(&device, Presented::SasToken(token), options)
                    .await
                    .map_err(|e| match e {
                        crate::Error::Unauthorized { .. } => {
                            Refused::unauthorized("the token was refused")
                        }
                        crate::Error::Throttled { .. } => Refused {
                            status: 429,
                            description: "throttled".into(),
                        },
                        other => {
                            tracing::warn!(error = %other, "AMQP put-token failed at the gateway");
                            Refused {
                                status: 500,
                                description: "internal error".into(),
                            }
                        }
                    })?;
                let grant = DeviceGrant {
                    session: Arc::from(session),
                    expires_at,
                };
                let old = {
                    let mut devices = lock(&self.devices);
                    let sender = devices
                        .entry(device)
                        .or_insert_with(|| watch::channel(None).0);
                    sender.send_replace(Some(grant))
                };
                // The gateway took the old session over already; closing it is idempotent.
                if let Some(old) = old {
                    old.session.close().await;
                }
                Ok(())
            }
            None => {
                let Some(state) = &self.service_auth else {
                    return Err(Refused::unauthorized(
                        "this endpoint takes no service tokens",
                    ));
                };
                match crate::http::auth::authenticate(state, token, now_unix()).await {
                    Ok(Caller::Service { rights, .. }) => {
                        self.service
                            .send_replace(Some(ServiceGrant { rights, expires_at }));
                        Ok(())
                    }
                    _ => Err(Refused::unauthorized("the token was refused")),
                }
            }
        }
    }

    /// The grant of `device`, if one is current.
    pub(super) fn device(&self, device: &DeviceId) -> Option<watch::Receiver<Option<DeviceGrant>>> {
        let devices = lock(&self.devices);
        let sender = devices.get(device)?;
        let live = sender
            .borrow()
            .as_ref()
            .is_some_and(|g| g.expires_at > Instant::now() && g.session.close_reason().is_none());
        live.then(|| sender.subscribe())
    }

    /// The service grant, if one is current and holds `right`.
    pub(super) fn service(&self, right: Rights) -> Option<watch::Receiver<Option<ServiceGrant>>> {
        let live = self
            .service
            .borrow()
            .as_ref()
            .is_some_and(|g| g.expires_at > Instant::now() && g.rights.contains(right));
        live.then(|| self.service.subscribe())
    }

    /// Whether the connection holds any current grant (a device's or the service's).
    pub(super) fn holds_any(&self) -> bool {
        let now = Instant::now();
        let service = self
            .service
            .borrow()
            .as_ref()
            .is_some_and(|g| g.expires_at > now);
        service
            || lock(&self.devices)
                .values()
                .any(|sender| sender.borrow().as_ref().is_some_and(|g| g.expires_at > now))
    }

    /// Ends every device session of the connection (it closed).
    pub(super) async fn close_all(&self) {
        let grants: Vec<DeviceGrant> = lock(&self.devices)
            .drain()
            .filter_map(|(_, sender)| sender.send_replace(None))
            .collect();
        for grant in grants {
            grant.session.close().await;
        }
        self.service.send_replace(None);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_weaker_service_renewal_ends_the_service_links_a_stronger_one_does_not() {
        use std::pin::pin;
        use std::task::{Context, Poll, Waker};

        let grant = |rights| ServiceGrant {
            rights,
            expires_at: Instant::now() + Duration::from_secs(3600),
        };
        let (tx, mut rx) = watch::channel(Some(grant(Rights::SERVICE_CONNECT)));
        let mut watching = pin!(lapsed_or_lacks(&mut rx, Rights::SERVICE_CONNECT));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(watching.as_mut().poll(&mut cx).is_pending());
        // Renewed with the right again: the links stay.
        tx.send_replace(Some(grant(
            Rights::SERVICE_CONNECT.union(Rights::REGISTRY_READ),
        )));
        assert!(watching.as_mut().poll(&mut cx).is_pending());
        // Renewed by a registryRead token: they end.
        tx.send_replace(Some(grant(Rights::REGISTRY_READ)));
        assert_eq!(watching.as_mut().poll(&mut cx), Poll::Ready(()));
    }

    #[test]
    fn resources_name_the_hub_or_a_device() {
        assert_eq!(device_of("hub.example").expect("hub"), None);
        assert_eq!(device_of("hub.example/").expect("hub"), None);
        assert_eq!(
            device_of("hub.example%2Fdevices%2Fd1").expect("device"),
            Some(DeviceId::new("d1").expect("id"))
        );
        assert!(device_of("hub.example/devices/d1/modules/m").is_err());
        assert!(device_of("hub.example/twins").is_err());
    }
}
