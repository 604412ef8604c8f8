//! A [`StateStore`] wrapper that fails the call a shared [`FaultPlan`] chooses.
//!
//! The plan and its rule ([`inject`]) are the identity testkit's, so one plan can number the calls
//! of a scenario across the stores of several crates.

use std::sync::Arc;

use async_trait::async_trait;
use iot_core::{DeviceId, Timestamp};
use iot_identity::testkit::{FaultPlan, inject};

use crate::error::{Error, Result};
use crate::state::{Event, LastKnown, LkvUpdate, StateStore};

/// The error an injected fault reports: a retryable [`Error::Backend`], as a store outside this
/// crate would report a lost connection.
pub fn injected_fault() -> Error {
    Error::backend(
        "fault injection",
        std::io::Error::other("injected fault"),
        true,
    )
}

/// A [`StateStore`] that fails the call its [`FaultPlan`] chooses and forwards every other call to
/// `inner`. Every method counts as one call.
#[derive(Debug)]
pub struct FaultyStateStore<T> {
    inner: T,
    plan: Arc<FaultPlan>,
}

impl<T> FaultyStateStore<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, plan: Arc<FaultPlan>) -> Self {
        FaultyStateStore { inner, plan }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &T {
        &self.inner
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<T: StateStore> StateStore for FaultyStateStore<T> {
    async fn append_events(&self, device: &DeviceId, events: Vec<Event>) -> Result<usize> {
        inject(
            &self.plan,
            injected_fault,
            self.inner.append_events(device, events),
        )
        .await
    }

    async fn read_events(
        &self,
        device: &DeviceId,
        from: Timestamp,
        to: Timestamp,
        limit: usize,
    ) -> Result<Vec<Event>> {
        inject(
            &self.plan,
            injected_fault,
            self.inner.read_events(device, from, to, limit),
        )
        .await
    }

    async fn enforce_retention(&self, before: Timestamp) -> Result<u64> {
        inject(
            &self.plan,
            injected_fault,
            self.inner.enforce_retention(before),
        )
        .await
    }

    async fn last_known(&self, device: &DeviceId) -> Result<Option<LastKnown>> {
        inject(&self.plan, injected_fault, self.inner.last_known(device)).await
    }

    async fn merge_last_known(&self, device: &DeviceId, update: LkvUpdate) -> Result<bool> {
        inject(
            &self.plan,
            injected_fault,
            self.inner.merge_last_known(device, update),
        )
        .await
    }

    async fn devices(&self) -> Result<Vec<DeviceId>> {
        inject(&self.plan, injected_fault, self.inner.devices()).await
    }
}
