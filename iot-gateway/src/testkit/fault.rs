//! [`InboxStore`] and [`TwinStore`] wrappers that fail the call a shared [`FaultPlan`] chooses.
//!
//! The plan and its rule ([`inject`]) are the identity testkit's, so one plan can number the calls
//! of a scenario across the gateway's stores and the identity store it authenticates against.

use std::sync::Arc;

use async_trait::async_trait;
use iot_core::{DeviceId, ModuleId, Timestamp};
use iot_identity::testkit::{FaultPlan, inject};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::inbox::{InboxLimits, InboxMessage, InboxStore, LockOutcome, Removed, Settlement};
use crate::message::LockToken;
use crate::twins::{Section, Twin, TwinLimits, TwinStore};

/// The error an injected fault reports: a retryable [`Error::Backend`], as a store outside this
/// crate would report a lost connection.
pub fn injected_fault() -> Error {
    Error::backend(
        "fault injection",
        std::io::Error::other("injected fault"),
        true,
    )
}

/// An [`InboxStore`] that fails the call its [`FaultPlan`] chooses and forwards every other call
/// to `inner`. Every method counts as one call.
#[derive(Debug)]
pub struct FaultyInboxStore<T> {
    inner: T,
    plan: Arc<FaultPlan>,
}

impl<T> FaultyInboxStore<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, plan: Arc<FaultPlan>) -> Self {
        FaultyInboxStore { inner, plan }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &T {
        &self.inner
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<T: InboxStore> InboxStore for FaultyInboxStore<T> {
    async fn enqueue(
        &self,
        device: &DeviceId,
        message: InboxMessage,
        now: Timestamp,
        limits: InboxLimits,
    ) -> Result<(u64, Vec<Removed>)> {
        inject(
            &self.plan,
            injected_fault,
            self.inner.enqueue(device, message, now, limits),
        )
        .await
    }

    async fn lock_next(
        &self,
        device: &DeviceId,
        now: Timestamp,
        limits: InboxLimits,
    ) -> Result<LockOutcome> {
        inject(
            &self.plan,
            injected_fault,
            self.inner.lock_next(device, now, limits),
        )
        .await
    }

    async fn settle(
        &self,
        device: &DeviceId,
        token: LockToken,
        settlement: Settlement,
    ) -> Result<Option<Removed>> {
        inject(
            &self.plan,
            injected_fault,
            self.inner.settle(device, token, settlement),
        )
        .await
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<Vec<Removed>> {
        inject(&self.plan, injected_fault, self.inner.purge_expired(now)).await
    }

    async fn remove_device(&self, device: &DeviceId) -> Result<usize> {
        inject(&self.plan, injected_fault, self.inner.remove_device(device)).await
    }

    async fn depth(&self, device: &DeviceId) -> Result<usize> {
        inject(&self.plan, injected_fault, self.inner.depth(device)).await
    }
}

/// A [`TwinStore`] that fails the call its [`FaultPlan`] chooses and forwards every other call to
/// `inner`. Every method counts as one call.
#[derive(Debug)]
pub struct FaultyTwinStore<T> {
    inner: T,
    plan: Arc<FaultPlan>,
}

impl<T> FaultyTwinStore<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, plan: Arc<FaultPlan>) -> Self {
        FaultyTwinStore { inner, plan }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &T {
        &self.inner
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<T: TwinStore> TwinStore for FaultyTwinStore<T> {
    async fn get(&self, device: &DeviceId) -> Result<Twin> {
        inject(&self.plan, injected_fault, self.inner.get(device)).await
    }

    async fn patch(
        &self,
        device: &DeviceId,
        section: Section,
        patch: &Value,
        if_version: Option<u64>,
        limits: TwinLimits,
    ) -> Result<Twin> {
        inject(
            &self.plan,
            injected_fault,
            self.inner.patch(device, section, patch, if_version, limits),
        )
        .await
    }

    async fn remove(&self, device: &DeviceId) -> Result<()> {
        inject(&self.plan, injected_fault, self.inner.remove(device)).await
    }

    async fn get_module(&self, device: &DeviceId, module: &ModuleId) -> Result<Twin> {
        inject(
            &self.plan,
            injected_fault,
            self.inner.get_module(device, module),
        )
        .await
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
        inject(
            &self.plan,
            injected_fault,
            self.inner
                .patch_module(device, module, section, patch, if_version, limits),
        )
        .await
    }

    async fn remove_module(&self, device: &DeviceId, module: &ModuleId) -> Result<()> {
        inject(
            &self.plan,
            injected_fault,
            self.inner.remove_module(device, module),
        )
        .await
    }
}
