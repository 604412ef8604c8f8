//! Settling a C2D delivery by its lock token alone, from outside the session it was handed to.
//!
//! A lock token (`{sequence}.{delivery}` in the device's inbox) names one delivery, so the inbox
//! can settle it without the session: the HTTPS device API's `DELETE …/deviceBound/{etag}`
//! (`?reject`) and `POST …/abandon` call this, so that a device connected over MQTT can reject
//! or abandon a message it received there — which MQTT cannot say — without its MQTT session
//! being taken over by an HTTPS one. The device's live session, if it still lists the token,
//! forgets it, so that its C2D window gets the slot back and the next message (or, after an
//! abandon, the same one again) is handed out.

use iot_core::{DeviceId, Timestamp};

use super::Hub;
use crate::error::Result;
use crate::inbox::Settlement;
use crate::message::LockToken;

impl Hub {
    /// Settles the delivery `token` of `device`'s C2D message: complete (feedback `success`),
    /// reject (dead-lettered, feedback `rejected`) or abandon (available again; dead-lettered
    /// after the inbox's maximum delivery count). A token that is not the message's current
    /// lock (already settled, expired, given back when its session closed) is
    /// [`Error::LockLost`](crate::Error::LockLost).
    pub async fn settle_c2d(
        &self,
        device: &DeviceId,
        token: LockToken,
        settlement: Settlement,
    ) -> Result<()> {
        let result = self.inner.inbox.settle(device, token, settlement).await;
        // Settled here or lost already: either way no session holds this delivery any more. A
        // later PUBACK for it on the MQTT connection finds it gone and is ignored.
        if let Some(session) = self.inner.session_of(device) {
            session.last_active.touch(Timestamp::now());
            session.forget_delivery(token);
        }
        if let Some(removed) = result? {
            self.inner.report(std::slice::from_ref(&removed)).await?;
        }
        Ok(())
    }
}
