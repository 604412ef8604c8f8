//! CA certificates in memory.

use std::sync::Mutex;

use async_trait::async_trait;

use super::error::CaError;
use super::record::{CaCertificate, StoredCa};
use super::state::CaState;
use super::store::{CaCondition, CaStore};

/// A [`CaStore`] in memory: a mutex over the map.
#[derive(Debug, Default)]
pub struct MemoryCaStore {
    state: Mutex<CaState>,
}

impl MemoryCaStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut CaState) -> T) -> T {
        // A panic while holding the lock cannot leave the map half-changed (each change is one
        // insert or remove), so a poisoned lock is safe to use.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut state)
    }
}

#[async_trait]
impl CaStore for MemoryCaStore {
    async fn get(&self, name: &str) -> Result<Option<StoredCa>, CaError> {
        Ok(self.with(|s| s.certificates.get(name).cloned()))
    }

    async fn list(&self) -> Result<Vec<StoredCa>, CaError> {
        Ok(self.with(|s| s.certificates.values().cloned().collect()))
    }

    async fn put(
        &self,
        certificate: CaCertificate,
        condition: CaCondition,
    ) -> Result<StoredCa, CaError> {
        self.with(|s| s.put(certificate, condition))
    }

    async fn delete(&self, name: &str, condition: CaCondition) -> Result<(), CaError> {
        self.with(|s| s.delete(name, condition))
    }
}
