//! What a layer above one [`Hub`] needs to make several hubs act as one (a cluster, a custom
//! router): hear when sessions open and close, and act on a device's live session from outside
//! the [`Gateway`](crate::Gateway) calls — close it, wake its C2D delivery, hand it a desired
//! patch written elsewhere.
//!
//! These act on this hub's own session of a device only; none of them touches a store. And
//! several hubs serving one fleet can split the hub-wide throttling quotas between them
//! ([`Hub::set_hub_quota_share`]).

use std::fmt::Debug;
use std::sync::Arc;

use iot_core::DeviceId;

use super::{Hub, HubBuilder};
use crate::error::{CloseReason, Error, Result};
use crate::twins::DesiredPatch;

/// Told when a session of the hub opens or closes.
///
/// Called synchronously from inside [`Gateway::connect`](crate::Gateway::connect) and from the
/// session's close (whatever closed it: the device, a takeover, a revocation, shutdown), so an
/// implementation must be quick and must not block: record the change and hand any I/O to a
/// task. A takeover opens the new session before it closes the old one, so `opened` of the new
/// session may come before `closed` of the old one: tell them apart by `session`.
pub trait SessionObserver: Send + Sync + Debug + 'static {
    /// A session of `device` opened; `session` is its id in this hub (unique, never reused).
    fn opened(&self, device: &DeviceId, session: u64);

    /// The session `session` of `device` closed, for `reason`.
    fn closed(&self, device: &DeviceId, session: u64, reason: &CloseReason);
}

impl HubBuilder {
    /// Tells `observer` about every session that opens and closes (default: nobody).
    pub fn session_observer(mut self, observer: Arc<dyn SessionObserver>) -> Self {
        self.observer = Some(observer);
        self
    }
}

impl Hub {
    /// The id of the live session of `device` in this hub, if it has one.
    pub fn session_id(&self, device: &DeviceId) -> Option<u64> {
        self.inner.session_of(device).map(|s| s.id)
    }

    /// Closes the live session of `device` with `reason`, as a takeover or a revocation does
    /// (its C2D locks are released, a disconnect event is written, the observer is told), if it
    /// is the session `only` names (any session of the device when `None`). A session that
    /// opened since the caller looked is left alone. Returns whether a session was closed.
    pub async fn close_device(
        &self,
        device: &DeviceId,
        only: Option<u64>,
        reason: CloseReason,
    ) -> bool {
        let Some(s) = self.inner.session_of(device) else {
            return false;
        };
        if only.is_some_and(|id| id != s.id) {
            return false;
        }
        self.inner.close_session(&s, reason).await;
        true
    }

    /// Makes the live session of `device` look in the inbox again now, as
    /// [`send_c2d`](crate::Gateway::send_c2d) does after queueing: for a message queued through
    /// another hub over the same inbox store. Returns whether the device has a session here.
    pub fn wake_c2d(&self, device: &DeviceId) -> bool {
        match self.inner.session_of(device) {
            Some(s) => {
                s.wake();
                true
            }
            None => false,
        }
    }

    /// Hands `patch` to the live session of `device`, as
    /// [`patch_desired`](crate::Gateway::patch_desired) does after writing: for a patch written
    /// through another hub over the same twin store. It joins the session's desired queue
    /// (bounded by [`HubConfig::desired_queue`](crate::HubConfig::desired_queue); past it the
    /// device gets the whole section). Returns whether the device has a session here.
    pub fn push_desired(&self, device: &DeviceId, patch: DesiredPatch) -> bool {
        match self.inner.session_of(device) {
            Some(s) => {
                s.push_desired(patch, self.inner.config.desired_queue);
                true
            }
            None => false,
        }
    }

    /// Makes this hub enforce `share` of each hub-wide quota of its
    /// [`ThrottleConfig`](crate::ThrottleConfig) (`hub_connects`, `hub_failed_connects`,
    /// `hub_telemetry`, `hub_twin`, `hub_methods`: refill rate and burst both), for hubs that
    /// serve one fleet together and give each its part so that the parts add up to the quota.
    /// Per-device and per-address budgets are not split (a device is served by one hub at a
    /// time). A bucket holding more than its new capacity is cut down at its next use; a larger
    /// share refills at the new rate. Refused unless `0 < share <= 1`.
    pub fn set_hub_quota_share(&self, share: f64) -> Result<()> {
        if !(share > 0.0 && share <= 1.0) {
            return Err(Error::invalid(format!(
                "a hub's share of the hub-wide quotas must be in (0, 1], not {share}"
            )));
        }
        self.inner.hub_share.set(share);
        Ok(())
    }

    /// The part of each hub-wide quota this hub enforces (1 unless set).
    pub fn hub_quota_share(&self) -> f64 {
        self.inner.hub_share.get()
    }
}
