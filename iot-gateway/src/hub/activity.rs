//! When devices connected, disconnected and were last active, for IoT Hub's
//! `connectionStateUpdatedTime` and `lastActivityTime`.
//!
//! Two places, so that the hot path stays a single atomic store:
//! * a live session keeps its own last-activity time ([`LastActive`], touched by telemetry and
//!   the device's other operations);
//! * the hub keeps, per device, the time of the last connect or disconnect and the last
//!   activity of the sessions that ended ([`ActivityLog`]), written on connect and close only.
//!
//! A device's activity is the log's entry with its live session's time folded in. The log is
//! memory only — a restarted hub has seen nothing yet — and forgets a device when it is deleted.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use iot_core::{DeviceId, Timestamp};

use crate::gateway::DeviceActivity;
use crate::sync_util::lock;

/// A session's last activity, Unix microseconds (0: none yet).
#[derive(Debug, Default)]
pub(crate) struct LastActive(AtomicU64);

impl LastActive {
    pub(crate) fn touch(&self, at: Timestamp) {
        self.0.fetch_max(at.as_unix_micros(), Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> Option<Timestamp> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(Timestamp::from_unix_micros(micros)),
        }
    }
}

/// Per device: the last connection-state change and the last activity of ended sessions.
#[derive(Debug, Default)]
pub(crate) struct ActivityLog {
    devices: Mutex<HashMap<DeviceId, DeviceActivity>>,
}

fn later(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    a.max(b)
}

impl ActivityLog {
    /// `device` connected at `at` (a connect is activity too).
    pub(crate) fn connected(&self, device: &DeviceId, at: Timestamp) {
        let mut devices = lock(&self.devices);
        let entry = devices.entry(device.clone()).or_default();
        entry.connection_state_updated = Some(at);
        entry.last_activity = later(entry.last_activity, Some(at));
    }

    /// A session of `device` ended at `at`, last active at `last_active`.
    pub(crate) fn disconnected(
        &self,
        device: &DeviceId,
        at: Timestamp,
        last_active: Option<Timestamp>,
    ) {
        let mut devices = lock(&self.devices);
        let entry = devices.entry(device.clone()).or_default();
        entry.connection_state_updated = Some(at);
        entry.last_activity = later(entry.last_activity, last_active);
    }

    /// What is known of `device`, with `live` (its open session's last activity) folded in.
    pub(crate) fn get(&self, device: &DeviceId, live: Option<Timestamp>) -> DeviceActivity {
        let mut activity = lock(&self.devices).get(device).copied().unwrap_or_default();
        activity.last_activity = later(activity.last_activity, live);
        activity
    }

    /// Forgets a deleted device.
    pub(crate) fn forget(&self, device: &DeviceId) {
        lock(&self.devices).remove(device);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> Timestamp {
        Timestamp::from_unix_millis(s * 1000)
    }

    #[test]
    fn connect_touch_disconnect_and_forget() {
        let log = ActivityLog::default();
        let d: DeviceId = "d1".parse().unwrap();
        assert_eq!(log.get(&d, None), DeviceActivity::default());
        log.connected(&d, t(10));
        assert_eq!(
            log.get(&d, None),
            DeviceActivity::new(Some(t(10)), Some(t(10)))
        );
        let live = LastActive::default();
        assert_eq!(live.get(), None);
        live.touch(t(15));
        live.touch(t(12)); // out of order: the later time stays
        assert_eq!(log.get(&d, live.get()).last_activity, Some(t(15)));
        log.disconnected(&d, t(20), live.get());
        assert_eq!(
            log.get(&d, None),
            DeviceActivity::new(Some(t(20)), Some(t(15)))
        );
        log.forget(&d);
        assert_eq!(log.get(&d, None), DeviceActivity::default());
    }
}
