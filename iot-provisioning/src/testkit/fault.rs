//! Wrappers for the registry and the journal that fail the Nth call, on the identity testkit's
//! [`FaultPlan`].
//!
//! One plan is shared by the wrapped identity store ([`FaultyIdentityStore`], from
//! `iot_identity::testkit`), registry and journal, so its call count numbers every call of a
//! scenario across all three; `fail_at(n)` makes call `n` (from 1) fail once, in the plan's
//! [`FaultMode`] (see `iot_identity::testkit` for the modes).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use iot_core::DeviceId;
use iot_identity::testkit::{FaultPlan, inject};
use iot_registry::{DeviceDocument, DeviceRecord, Page, PageRequest, Query, Registry};
use serde_json::Value;

use crate::journal::{Intent, Journal};

#[cfg(doc)]
use iot_identity::testkit::{FaultMode, FaultyIdentityStore};

fn injected() -> std::io::Error {
    std::io::Error::other("injected fault")
}

fn registry_fault() -> iot_registry::Error {
    iot_registry::Error::Io {
        operation: "injected",
        path: PathBuf::from("fault"),
        source: injected(),
    }
}

/// A [`Registry`] that fails the call its [`FaultPlan`] chooses.
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
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<T: Registry> Registry for FaultyRegistry<T> {
    async fn create(
        &self,
        id: &DeviceId,
        doc: DeviceDocument,
    ) -> iot_registry::Result<DeviceRecord> {
        inject(&self.plan, registry_fault, self.inner.create(id, doc)).await
    }

    async fn get(&self, id: &DeviceId) -> iot_registry::Result<Option<DeviceRecord>> {
        inject(&self.plan, registry_fault, self.inner.get(id)).await
    }

    async fn replace(
        &self,
        id: &DeviceId,
        doc: DeviceDocument,
        if_match: Option<&iot_registry::ETag>,
    ) -> iot_registry::Result<DeviceRecord> {
        inject(
            &self.plan,
            registry_fault,
            self.inner.replace(id, doc, if_match),
        )
        .await
    }

    async fn merge(
        &self,
        id: &DeviceId,
        patch: &Value,
        if_match: Option<&iot_registry::ETag>,
    ) -> iot_registry::Result<DeviceRecord> {
        inject(
            &self.plan,
            registry_fault,
            self.inner.merge(id, patch, if_match),
        )
        .await
    }

    async fn delete(
        &self,
        id: &DeviceId,
        if_match: Option<&iot_registry::ETag>,
    ) -> iot_registry::Result<()> {
        inject(&self.plan, registry_fault, self.inner.delete(id, if_match)).await
    }

    async fn query(&self, query: &Query, page: &PageRequest) -> iot_registry::Result<Page> {
        inject(&self.plan, registry_fault, self.inner.query(query, page)).await
    }

    async fn count(&self, query: &Query) -> iot_registry::Result<u64> {
        inject(&self.plan, registry_fault, self.inner.count(query)).await
    }
}

/// A [`Journal`] that fails the call its [`FaultPlan`] chooses.
#[derive(Debug)]
pub struct FaultyJournal<T> {
    inner: T,
    plan: Arc<FaultPlan>,
}

impl<T> FaultyJournal<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, plan: Arc<FaultPlan>) -> Self {
        FaultyJournal { inner, plan }
    }
}

/// A retryable backend error, as a journal outside this crate would report a lost connection.
fn journal_fault() -> crate::Error {
    crate::Error::backend("fault injection", injected(), true)
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<T: Journal> Journal for FaultyJournal<T> {
    async fn begin(&self, intent: &Intent) -> crate::Result<u64> {
        inject(&self.plan, journal_fault, self.inner.begin(intent)).await
    }

    async fn finish(&self, seq: u64) -> crate::Result<()> {
        inject(&self.plan, journal_fault, self.inner.finish(seq)).await
    }

    async fn finish_unsynced(&self, seq: u64) -> crate::Result<()> {
        inject(&self.plan, journal_fault, self.inner.finish_unsynced(seq)).await
    }

    async fn sync(&self) -> crate::Result<()> {
        inject(&self.plan, journal_fault, self.inner.sync()).await
    }

    async fn pending(&self) -> crate::Result<Vec<(u64, Intent)>> {
        inject(&self.plan, journal_fault, self.inner.pending()).await
    }
}
