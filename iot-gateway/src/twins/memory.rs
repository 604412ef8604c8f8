//! `MemoryTwinStore`: twins in memory.

use std::sync::Mutex;

use async_trait::async_trait;
use iot_core::{DeviceId, ModuleId};
use serde_json::Value;

use super::Twin;
use super::state::{Op, TwinState};
use super::{Section, TwinLimits, TwinStore};
use crate::error::Result;
use crate::sync_util::lock;
use iot_core::storage::Journaled;

/// A [`TwinStore`] in memory (lost on restart).
#[derive(Debug, Default)]
pub struct MemoryTwinStore {
    state: Mutex<TwinState>,
}

impl MemoryTwinStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl TwinStore for MemoryTwinStore {
    async fn get(&self, device: &DeviceId) -> Result<Twin> {
        Ok(lock(&self.state).get(device))
    }

    async fn patch(
        &self,
        device: &DeviceId,
        section: Section,
        patch: &Value,
        if_version: Option<u64>,
        limits: TwinLimits,
    ) -> Result<Twin> {
        let mut state = lock(&self.state);
        let twin = state.plan_patch(device, section, patch, if_version, limits)?;
        state.apply(Op::Put {
            device: device.clone(),
            twin: twin.clone(),
        });
        Ok(twin)
    }

    async fn remove(&self, device: &DeviceId) -> Result<()> {
        lock(&self.state).apply(Op::Remove {
            device: device.clone(),
        });
        Ok(())
    }

    async fn get_module(&self, device: &DeviceId, module: &ModuleId) -> Result<Twin> {
        Ok(lock(&self.state).get_module(device, module))
    }

    async fn patch_module(
        &self,
        device: &DeviceId,
        module: &ModuleId,
        section: Section,
        patch: &Value,
        if_version: Option<u64>,
        limits: TwinLimits,
    ) -> Result<Twin> {
        let mut state = lock(&self.state);
        let twin = state.plan_module_patch(device, module, section, patch, if_version, limits)?;
        state.apply(Op::PutModule {
            device: device.clone(),
            module: module.clone(),
            twin: twin.clone(),
        });
        Ok(twin)
    }

    async fn remove_module(&self, device: &DeviceId, module: &ModuleId) -> Result<()> {
        lock(&self.state).apply(Op::RemoveModule {
            device: device.clone(),
            module: module.clone(),
        });
        Ok(())
    }
}
