//! `MemoryStateStore`: the state store in memory.

use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use iot_core::{DeviceId, Timestamp};

use super::data::StateData;
use super::{Event, LastKnown, LkvUpdate, StateStore};
use crate::error::Result;

/// A [`StateStore`] in memory: for tests, examples and the edge where state may be rebuilt from
/// the log. Nothing survives the value being dropped.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use iot_core::{DeviceId, Timestamp};
/// use iot_stream::{Event, MemoryStateStore, StateStore};
///
/// let store = MemoryStateStore::new();
/// let dev = DeviceId::new("dev-1")?;
/// store.append_events(&dev, vec![Event::new(Timestamp::from_unix_millis(5), "21.5")]).await?;
/// let all = store.read_events(&dev, Timestamp::EPOCH, Timestamp::from_unix_millis(10), 100).await?;
/// assert_eq!(all[0].payload, "21.5");
/// # Ok::<(), iot_stream::Error>(()) }).unwrap();
/// ```
#[derive(Debug, Default)]
pub struct MemoryStateStore {
    data: Mutex<StateData>,
}

impl MemoryStateStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn data(&self) -> MutexGuard<'_, StateData> {
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl StateStore for MemoryStateStore {
    async fn append_events(&self, device: &DeviceId, events: Vec<Event>) -> Result<usize> {
        let mut data = self.data();
        let fresh = data.fresh_events(device, events);
        Ok(data.append(device, fresh))
    }

    async fn read_events(
        &self,
        device: &DeviceId,
        from: Timestamp,
        to: Timestamp,
        limit: usize,
    ) -> Result<Vec<Event>> {
        Ok(self.data().read(device, from, to, limit))
    }

    async fn enforce_retention(&self, before: Timestamp) -> Result<u64> {
        Ok(self.data().retention(before))
    }

    async fn last_known(&self, device: &DeviceId) -> Result<Option<LastKnown>> {
        Ok(self.data().devices.get(device).and_then(|d| d.lkv.clone()))
    }

    async fn merge_last_known(&self, device: &DeviceId, update: LkvUpdate) -> Result<bool> {
        let mut data = self.data();
        if !data.would_apply(device, &update)? {
            return Ok(false);
        }
        data.merge(device, &update)
    }

    async fn devices(&self) -> Result<Vec<DeviceId>> {
        Ok(self.data().devices())
    }
}
