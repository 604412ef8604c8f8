//! Wrappers that fail the Nth call made through any of them.
//!
//! One [`FaultPlan`] is shared by the wrapped identity store, registry and journal, so its call
//! count numbers every call of a scenario across all three; `fail_at(n)` makes call `n` (from 1)
//! fail once. [`FaultMode::Before`] fails without forwarding (nothing changed);
//! [`FaultMode::After`] forwards the call and then reports a failure anyway (it changed — the
//! ambiguous failure of a network store whose reply was lost). [`FaultMode::Hang`] forwards the
//! call and then never returns, so that a caller's timeout cancels the operation mid-way.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use iot_core::DeviceId;
use iot_identity::{
    ChangeStream, Credentials, DeviceIdentity, DeviceStatus, ETag, IdentityPage, IdentityStore,
    Lookup, NewIdentity,
};
use iot_registry::{DeviceDocument, DeviceRecord, Page, PageRequest, Query, Registry};
use serde_json::Value;

use crate::journal::{Intent, Journal};

/// Whether an injected failure happens before or after the call takes effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultMode {
    /// The call is not forwarded.
    Before,
    /// The call is forwarded, then reported as failed.
    After,
    /// The call is forwarded, then never returns (the caller's future is dropped mid-operation,
    /// as by a timeout or a disconnected client). `IdentityStore::get` fails instead.
    Hang,
}

/// Counts calls and decides which one fails.
#[derive(Debug)]
pub struct FaultPlan {
    calls: AtomicU64,
    fail_at: AtomicU64,
    mode: FaultMode,
}

impl FaultPlan {
    /// A plan that fails nothing (it only counts).
    pub fn counting() -> Arc<Self> {
        Arc::new(FaultPlan {
            calls: AtomicU64::new(0),
            fail_at: AtomicU64::new(0),
            mode: FaultMode::Before,
        })
    }

    /// A plan that fails call number `n` (from 1) in `mode`.
    pub fn fail_at(n: u64, mode: FaultMode) -> Arc<Self> {
        Arc::new(FaultPlan {
            calls: AtomicU64::new(0),
            fail_at: AtomicU64::new(n),
            mode,
        })
    }

    /// How many calls were made.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Stops failing (for the recovery phase of a test).
    pub fn disarm(&self) {
        self.fail_at.store(0, Ordering::SeqCst);
    }

    /// Counts a call; `Some(mode)` when this one must fail.
    fn next(&self) -> Option<FaultMode> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        (self.fail_at.load(Ordering::SeqCst) == n).then_some(self.mode)
    }
}

fn injected() -> std::io::Error {
    std::io::Error::other("injected fault")
}

fn identity_fault() -> iot_identity::Error {
    iot_identity::Error::Io {
        operation: "injected",
        path: PathBuf::from("fault"),
        source: injected(),
    }
}

fn registry_fault() -> iot_registry::Error {
    iot_registry::Error::Io {
        operation: "injected",
        path: PathBuf::from("fault"),
        source: injected(),
    }
}

/// Runs `$call` unless the plan fails it before; fails it after if so planned.
macro_rules! faulty {
    ($plan:expr, $fault:expr, $call:expr) => {
        match $plan.next() {
            Some(FaultMode::Before) => Err($fault),
            Some(FaultMode::After) => {
                let _ = $call;
                Err($fault)
            }
            Some(FaultMode::Hang) => {
                let _ = $call;
                std::future::pending::<()>().await;
                Err($fault)
            }
            None => $call,
        }
    };
}

/// An [`IdentityStore`] that fails the call its [`FaultPlan`] chooses.
#[derive(Debug)]
pub struct FaultyIdentityStore<T> {
    inner: T,
    plan: Arc<FaultPlan>,
}

impl<T> FaultyIdentityStore<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, plan: Arc<FaultPlan>) -> Self {
        FaultyIdentityStore { inner, plan }
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<T: IdentityStore> IdentityStore for FaultyIdentityStore<T> {
    async fn create(&self, identity: NewIdentity) -> iot_identity::Result<DeviceIdentity> {
        faulty!(
            self.plan,
            identity_fault(),
            self.inner.create(identity).await
        )
    }

    fn get<'a>(&'a self, id: &'a DeviceId) -> Lookup<'a> {
        match self.plan.next() {
            Some(_) => Lookup::ready(Err(identity_fault())),
            None => self.inner.get(id),
        }
    }

    async fn set_status(
        &self,
        id: &DeviceId,
        status: DeviceStatus,
        if_match: Option<ETag>,
    ) -> iot_identity::Result<DeviceIdentity> {
        faulty!(
            self.plan,
            identity_fault(),
            self.inner.set_status(id, status, if_match).await
        )
    }

    async fn replace_credentials(
        &self,
        id: &DeviceId,
        credentials: Credentials,
        if_match: Option<ETag>,
    ) -> iot_identity::Result<DeviceIdentity> {
        faulty!(
            self.plan,
            identity_fault(),
            self.inner
                .replace_credentials(id, credentials, if_match)
                .await
        )
    }

    async fn delete(&self, id: &DeviceId, if_match: Option<ETag>) -> iot_identity::Result<()> {
        faulty!(
            self.plan,
            identity_fault(),
            self.inner.delete(id, if_match).await
        )
    }

    async fn list(
        &self,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> iot_identity::Result<IdentityPage> {
        faulty!(
            self.plan,
            identity_fault(),
            self.inner.list(after, limit).await
        )
    }

    fn subscribe(&self) -> ChangeStream {
        self.inner.subscribe()
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
        faulty!(
            self.plan,
            registry_fault(),
            self.inner.create(id, doc).await
        )
    }

    async fn get(&self, id: &DeviceId) -> iot_registry::Result<Option<DeviceRecord>> {
        faulty!(self.plan, registry_fault(), self.inner.get(id).await)
    }

    async fn replace(
        &self,
        id: &DeviceId,
        doc: DeviceDocument,
        if_match: Option<&iot_registry::ETag>,
    ) -> iot_registry::Result<DeviceRecord> {
        faulty!(
            self.plan,
            registry_fault(),
            self.inner.replace(id, doc, if_match).await
        )
    }

    async fn merge(
        &self,
        id: &DeviceId,
        patch: &Value,
        if_match: Option<&iot_registry::ETag>,
    ) -> iot_registry::Result<DeviceRecord> {
        faulty!(
            self.plan,
            registry_fault(),
            self.inner.merge(id, patch, if_match).await
        )
    }

    async fn delete(
        &self,
        id: &DeviceId,
        if_match: Option<&iot_registry::ETag>,
    ) -> iot_registry::Result<()> {
        faulty!(
            self.plan,
            registry_fault(),
            self.inner.delete(id, if_match).await
        )
    }

    async fn query(&self, query: &Query, page: &PageRequest) -> iot_registry::Result<Page> {
        faulty!(
            self.plan,
            registry_fault(),
            self.inner.query(query, page).await
        )
    }

    async fn count(&self, query: &Query) -> iot_registry::Result<u64> {
        faulty!(self.plan, registry_fault(), self.inner.count(query).await)
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

fn journal_fault() -> crate::Error {
    crate::Error::Journal {
        operation: "injected",
        path: PathBuf::from("fault"),
        source: injected(),
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<T: Journal> Journal for FaultyJournal<T> {
    async fn begin(&self, intent: &Intent) -> crate::Result<u64> {
        faulty!(self.plan, journal_fault(), self.inner.begin(intent).await)
    }

    async fn finish(&self, seq: u64) -> crate::Result<()> {
        faulty!(self.plan, journal_fault(), self.inner.finish(seq).await)
    }

    async fn finish_unsynced(&self, seq: u64) -> crate::Result<()> {
        faulty!(
            self.plan,
            journal_fault(),
            self.inner.finish_unsynced(seq).await
        )
    }

    async fn sync(&self) -> crate::Result<()> {
        faulty!(self.plan, journal_fault(), self.inner.sync().await)
    }

    async fn pending(&self) -> crate::Result<Vec<(u64, Intent)>> {
        faulty!(self.plan, journal_fault(), self.inner.pending().await)
    }
}
