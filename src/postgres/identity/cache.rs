//! The lookup cache in front of PostgreSQL: records by id, kept only while the change feed is
//! connected, and never filled with a read that a write may have overtaken.
//!
//! Every invalidation (a write of this process, a change notified by any process, a lost or
//! regained feed) bumps `epoch`. A lookup that misses reads the epoch, queries the database and
//! caches the row only if the epoch has not moved meanwhile: a row read before a write committed
//! can never be cached after that write's invalidation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use iot_core::DeviceId;
use iot_identity::DeviceIdentity;

#[derive(Debug)]
pub(crate) struct Cache {
    map: RwLock<HashMap<DeviceId, Arc<DeviceIdentity>>>,
    epoch: AtomicU64,
    /// Whether the change feed is connected (and caught up): only then can entries be trusted.
    live: AtomicBool,
    capacity: usize,
}

impl Cache {
    pub(crate) fn new(capacity: usize) -> Self {
        Cache {
            map: RwLock::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            live: AtomicBool::new(false),
            capacity,
        }
    }

    pub(crate) fn get(&self, id: &DeviceId) -> Option<Arc<DeviceIdentity>> {
        if self.capacity == 0 || !self.live.load(Ordering::Acquire) {
            return None;
        }
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// The epoch to hand to [`Cache::fill`] after a database read.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Caches a record read while the epoch was `epoch`, unless something was invalidated since.
    pub(crate) fn fill(&self, epoch: u64, record: &Arc<DeviceIdentity>) {
        if self.capacity == 0 || !self.live.load(Ordering::Acquire) {
            return;
        }
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        // Checked under the write lock: invalidations bump the epoch under it too.
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if map.len() >= self.capacity && !map.contains_key(&record.id) {
            // Simple and bounded: start over rather than track recency on the hot path.
            map.clear();
        }
        map.insert(record.id.clone(), Arc::clone(record));
    }

    /// Forgets `id`.
    pub(crate) fn invalidate(&self, id: &DeviceId) {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        map.remove(id);
    }

    /// Forgets everything and sets whether entries may be trusted from now on.
    pub(crate) fn reset(&self, live: bool) {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        map.clear();
        self.live.store(live, Ordering::Release);
    }

    pub(crate) fn len(&self) -> usize {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}
