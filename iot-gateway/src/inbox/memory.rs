//! `MemoryInbox`: the inbox held in memory (lost on restart).

use std::sync::Mutex;

use async_trait::async_trait;
use iot_core::{DeviceId, Timestamp};

use super::state::InboxState;
use super::{InboxLimits, InboxMessage, InboxStore, LockOutcome, Removed, Settlement};
use crate::error::Result;
use crate::message::LockToken;
use crate::sync_util::lock;
use iot_core::storage::Journaled;

/// An [`InboxStore`] in memory: for tests and for gateways that may lose queued messages on
/// restart.
#[derive(Debug, Default)]
pub struct MemoryInbox {
    state: Mutex<InboxState>,
}

impl MemoryInbox {
    /// An empty inbox.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl InboxStore for MemoryInbox {
    async fn enqueue(
        &self,
        device: &DeviceId,
        message: InboxMessage,
        now: Timestamp,
        limits: InboxLimits,
    ) -> Result<(u64, Vec<Removed>)> {
        let mut state = lock(&self.state);
        let (ops, seq, removed) = state.plan_enqueue(device, message, now, limits)?;
        ops.into_iter().for_each(|op| state.apply(op));
        Ok((seq, removed))
    }

    async fn lock_next(
        &self,
        device: &DeviceId,
        now: Timestamp,
        limits: InboxLimits,
    ) -> Result<LockOutcome> {
        let mut state = lock(&self.state);
        let (ops, outcome) = state.plan_lock_next(device, now, limits);
        ops.into_iter().for_each(|op| state.apply(op));
        Ok(outcome)
    }

    async fn settle(
        &self,
        device: &DeviceId,
        token: LockToken,
        settlement: Settlement,
    ) -> Result<Option<Removed>> {
        let mut state = lock(&self.state);
        let (op, removed) = state.plan_settle(device, token, settlement)?;
        state.apply(op);
        Ok(removed)
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<Vec<Removed>> {
        let mut state = lock(&self.state);
        let (ops, removed) = state.plan_purge(now);
        ops.into_iter().for_each(|op| state.apply(op));
        Ok(removed)
    }

    async fn remove_device(&self, device: &DeviceId) -> Result<usize> {
        let mut state = lock(&self.state);
        let ops = state.plan_remove_device(device);
        let n = ops.len();
        ops.into_iter().for_each(|op| state.apply(op));
        Ok(n)
    }

    async fn depth(&self, device: &DeviceId) -> Result<usize> {
        Ok(lock(&self.state).depth(device))
    }
}
