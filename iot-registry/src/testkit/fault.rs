//! A [`Registry`] wrapper that fails the Nth call, on the identity testkit's [`FaultPlan`].
//!
//! One plan can be shared with wrappers around other stores (`iot-provisioning` wraps its
//! identity store, registry and journal with one plan), so that its count numbers every call of
//! a scenario across all of them; `fail_at(n)` makes call `n` (from 1) fail once, in the plan's
//! [`FaultMode`](iot_identity::testkit::FaultMode).

use std::sync::Arc;

use async_trait::async_trait;
use iot_core::DeviceId;
use iot_identity::testkit::{FaultPlan, inject};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::paging::{Page, PageRequest};
use crate::query::Query;
use crate::record::{DeviceDocument, DeviceRecord, ETag};
use crate::registry::Registry;

/// The error an injected registry fault reports: a retryable [`Error::Backend`], as a registry
/// outside this crate would report a lost connection.
pub fn injected_fault() -> Error {
    Error::backend(
        "fault injection",
        std::io::Error::other("injected fault"),
        true,
    )
}

/// A [`Registry`] that fails the call its [`FaultPlan`] chooses and forwards every other call to
/// `inner`.
#[derive(Debug)]
pub struct FaultyRegistry<T> {
    inner: T,
    plan: Arc<FaultPlan>,
}

impl<T> FaultyRegistry<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, plan: Arc<FaultPlan>) -> Self {
        FaultyRegistry { inner, plan }
    }

    /// The wrapped registry.
    pub fn inner(&self) -> &T {
        &self.inner
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<T: Registry> Registry for FaultyRegistry<T> {
    async fn create(&self, id: &DeviceId, doc: DeviceDocument) -> Result<DeviceRecord> {
        inject(&self.plan, injected_fault, self.inner.create(id, doc)).await
    }

    async fn get(&self, id: &DeviceId) -> Result<Option<DeviceRecord>> {
        inject(&self.plan, injected_fault, self.inner.get(id)).await
    }

    async fn replace(
        &self,
        id: &DeviceId,
        doc: DeviceDocument,
        if_match: Option<&ETag>,
    ) -> Result<DeviceRecord> {
        let call = self.inner.replace(id, doc, if_match);
        inject(&self.plan, injected_fault, call).await
    }

    async fn merge(
        &self,
        id: &DeviceId,
        patch: &Value,
        if_match: Option<&ETag>,
    ) -> Result<DeviceRecord> {
        let call = self.inner.merge(id, patch, if_match);
        inject(&self.plan, injected_fault, call).await
    }

    async fn delete(&self, id: &DeviceId, if_match: Option<&ETag>) -> Result<()> {
        inject(&self.plan, injected_fault, self.inner.delete(id, if_match)).await
    }

    async fn query(&self, query: &Query, page: &PageRequest) -> Result<Page> {
        inject(&self.plan, injected_fault, self.inner.query(query, page)).await
    }

    async fn count(&self, query: &Query) -> Result<u64> {
        inject(&self.plan, injected_fault, self.inner.count(query)).await
    }

    async fn sync(&self) -> Result<()> {
        inject(&self.plan, injected_fault, self.inner.sync()).await
    }
}
