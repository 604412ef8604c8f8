//! What a connection has proved: claims-based security (`$cbs` put-token) or SASL PLAIN with a
//! policy's key. A receive link or a management request is served while the connection holds
//! a claim that has not expired; a receive link whose claim expires is closed.

use std::sync::Mutex;

/// The claims of one connection.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    /// Unix seconds until which the connection may read the entity; `None`: never authorized.
    until: Mutex<Option<u64>>,
}

impl Claims {
    /// Records a claim valid until `expires` (a later put-token renews it).
    pub(crate) fn grant(&self, expires: u64) {
        let mut until = self.until.lock().unwrap_or_else(|e| e.into_inner());
        *until = Some(until.map_or(expires, |u| u.max(expires)));
    }

    /// Until when the connection is authorized, if it is as of `now`.
    pub(crate) fn valid_until(&self, now: u64) -> Option<u64> {
        let until = *self.until.lock().unwrap_or_else(|e| e.into_inner());
        until.filter(|u| *u > now)
    }
}

/// Unix seconds now.
pub(crate) fn unix_now() -> u64 {
    iot_core::Timestamp::now().as_unix_millis() / 1000
}
