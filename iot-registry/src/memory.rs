//! `MemoryRegistry`: the registry held in memory only.

use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use iot_core::{DeviceId, Timestamp};
use serde_json::Value;
use tracing::instrument;

use crate::engine::{Engine, RegistryConfig};
use crate::error::Result;
use crate::paging::{Page, PageRequest};
use crate::query::Query;
use crate::record::{DeviceDocument, DeviceRecord, ETag};
use crate::registry::Registry;

/// A [`Registry`] in memory: fast, indexed, gone when dropped. For tests, tools, and as the
/// model the durable registries are checked against.
#[derive(Debug)]
pub struct MemoryRegistry {
    engine: RwLock<Engine>,
}

impl MemoryRegistry {
    /// An empty registry with the default configuration.
    pub fn new() -> Self {
        // The default configuration is valid.
        match Self::with_config(RegistryConfig::default()) {
            Ok(r) => r,
            Err(_) => unreachable!("the default configuration is valid"),
        }
    }

    /// An empty registry with `config`.
    pub fn with_config(config: RegistryConfig) -> Result<Self> {
        Ok(MemoryRegistry {
            engine: RwLock::new(Engine::new(config)?),
        })
    }

    /// How many records the registry holds.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the registry holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many distinct paths are indexed.
    pub fn indexed_paths(&self) -> usize {
        self.read().indexed_paths()
    }

    // Every critical section leaves the engine consistent before anything in it can panic.
    fn read(&self) -> RwLockReadGuard<'_, Engine> {
        self.engine.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Engine> {
        self.engine.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn commit(&self, engine: &mut Engine, change: crate::engine::Change) -> Result<()> {
        let version = engine.next_version();
        engine.apply(change, version);
        Ok(())
    }
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    #[instrument(skip_all, fields(device = %id))]
    async fn create(&self, id: &DeviceId, doc: DeviceDocument) -> Result<DeviceRecord> {
        let mut engine = self.write();
        let change = engine.prepare_create(id, doc, Timestamp::now())?;
        self.commit(&mut engine, change)?;
        get_written(&engine, id)
    }

    async fn get(&self, id: &DeviceId) -> Result<Option<DeviceRecord>> {
        self.read().get(id)
    }

    #[instrument(skip_all, fields(device = %id))]
    async fn replace(
        &self,
        id: &DeviceId,
        doc: DeviceDocument,
        if_match: Option<&ETag>,
    ) -> Result<DeviceRecord> {
        let mut engine = self.write();
        let change = engine.prepare_replace(id, doc, if_match, Timestamp::now())?;
        self.commit(&mut engine, change)?;
        get_written(&engine, id)
    }

    #[instrument(skip_all, fields(device = %id))]
    async fn merge(
        &self,
        id: &DeviceId,
        patch: &Value,
        if_match: Option<&ETag>,
    ) -> Result<DeviceRecord> {
        let mut engine = self.write();
        let change = engine.prepare_merge(id, patch, if_match, Timestamp::now())?;
        self.commit(&mut engine, change)?;
        get_written(&engine, id)
    }

    #[instrument(skip_all, fields(device = %id))]
    async fn delete(&self, id: &DeviceId, if_match: Option<&ETag>) -> Result<()> {
        let mut engine = self.write();
        let change = engine.prepare_delete(id, if_match)?;
        self.commit(&mut engine, change)
    }

    async fn query(&self, query: &Query, page: &PageRequest) -> Result<Page> {
        self.read().query(query, page)
    }

    async fn count(&self, query: &Query) -> Result<u64> {
        Ok(self.read().count(query))
    }
}

/// The record just written (present: the write lock is still held).
pub(crate) fn get_written(engine: &Engine, id: &DeviceId) -> Result<DeviceRecord> {
    engine
        .get(id)?
        .ok_or_else(|| crate::Error::NotFound { id: id.clone() })
}
