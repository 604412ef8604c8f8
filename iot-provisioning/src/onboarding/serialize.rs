//! One registration at a time per device.
//!
//! Two registrations of one device at once (a device retrying while its first attempt runs,
//! two connections with one registration id) would both find no device and both call
//! `register`; the loser's `AlreadyExists` would be answered correctly, but it would leave a
//! failed `register` record on the audit trail and run the hooks twice. Registrations of one
//! device therefore wait for each other; those of different devices do not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use iot_core::DeviceId;
use tokio::sync::OwnedMutexGuard;

/// The locks of the devices being registered now; an entry lives while someone holds or
/// waits for its lock.
#[derive(Debug, Default)]
pub(crate) struct PerDevice {
    locks: Mutex<HashMap<DeviceId, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds a device's registration lock; removes the map entry when it was the last user.
pub(crate) struct Turn<'a> {
    owner: &'a PerDevice,
    id: DeviceId,
    guard: Option<OwnedMutexGuard<()>>,
}

impl PerDevice {
    /// Waits until no other registration of `id` runs.
    pub(crate) async fn turn(&self, id: &DeviceId) -> Turn<'_> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(id.clone()).or_default().clone()
        };
        let guard = lock.lock_owned().await;
        Turn {
            owner: self,
            id: id.clone(),
            guard: Some(guard),
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = self.owner.locks.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map holds it now: nobody holds or waits for it.
        if locks
            .get(&self.id)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            locks.remove(&self.id);
        }
    }
}
