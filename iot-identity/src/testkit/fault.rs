//! Fault injection: a wrapper that fails the Nth call made through it.
//!
//! A [`FaultPlan`] counts calls; `fail_at(n)` makes call `n` (from 1) fail once.
//! [`FaultMode::Before`] fails without forwarding (nothing changed); [`FaultMode::After`]
//! forwards the call and then reports a failure anyway (it changed — the ambiguous failure of a
//! network store whose reply was lost); [`FaultMode::Hang`] forwards the call and then never
//! returns, so that a caller's timeout cancels the operation mid-way.
//!
//! One plan can be shared by wrappers around several stores (`iot-provisioning` wraps its
//! registry and journal with the same plan as the identity store), so that its count numbers
//! every call of a scenario across all of them. [`inject`] is the rule every such wrapper follows.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use iot_core::DeviceId;

use crate::credentials::Credentials;
use crate::error::{Error, Result};
use crate::identity::{DeviceIdentity, DeviceStatus, ETag, IdentityPage, NewIdentity};
use crate::store::{ChangeStream, IdentityStore, Lookup};

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
        Self::fail_at(0, FaultMode::Before)
    }

    /// A plan that fails call number `n` (from 1) in `mode`; `0` fails nothing.
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

    /// Counts one call; `Some(mode)` when this one must fail. Wrappers call it once per
    /// forwarded call (see [`inject`]).
    pub fn next_fault(&self) -> Option<FaultMode> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        (self.fail_at.load(Ordering::SeqCst) == n).then_some(self.mode)
    }
}

/// Runs `call` as `plan` decides: as is, not at all (`Before`), or to completion followed by
/// `fault()` (`After`) or by never returning (`Hang`).
///
/// `call` is a future, so in `Before` mode it is dropped without ever being polled and changes
/// nothing.
pub async fn inject<T, E>(
    plan: &FaultPlan,
    fault: impl FnOnce() -> E,
    call: impl Future<Output = std::result::Result<T, E>>,
) -> std::result::Result<T, E> {
    match plan.next_fault() {
        None => call.await,
        Some(FaultMode::Before) => Err(fault()),
        Some(FaultMode::After) => {
            let _ = call.await;
            Err(fault())
        }
        Some(FaultMode::Hang) => {
            let _ = call.await;
            std::future::pending().await
        }
    }
}

/// The error an injected identity-store fault reports: a retryable [`Error::Backend`], as a
/// store outside this crate would report a lost connection.
pub fn injected_fault() -> Error {
    Error::backend(
        "fault injection",
        std::io::Error::other("injected fault"),
        true,
    )
}

/// An [`IdentityStore`] that fails the call its [`FaultPlan`] chooses and forwards every other
/// call to `inner`. `subscribe` is not counted (it cannot fail).
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

    /// The wrapped store.
    pub fn inner(&self) -> &T {
        &self.inner
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<T: IdentityStore> IdentityStore for FaultyIdentityStore<T> {
    async fn create(&self, identity: NewIdentity) -> Result<DeviceIdentity> {
        inject(&self.plan, injected_fault, self.inner.create(identity)).await
    }

    fn get<'a>(&'a self, id: &'a DeviceId) -> Lookup<'a> {
        // A lookup has no effect to forward, so every mode fails it at once.
        match self.plan.next_fault() {
            Some(_) => Lookup::ready(Err(injected_fault())),
            None => self.inner.get(id),
        }
    }

    async fn set_status(
        &self,
        id: &DeviceId,
        status: DeviceStatus,
        if_match: Option<ETag>,
    ) -> Result<DeviceIdentity> {
        let call = self.inner.set_status(id, status, if_match);
        inject(&self.plan, injected_fault, call).await
    }

    async fn replace_credentials(
        &self,
        id: &DeviceId,
        credentials: Credentials,
        if_match: Option<ETag>,
    ) -> Result<DeviceIdentity> {
        let call = self.inner.replace_credentials(id, credentials, if_match);
        inject(&self.plan, injected_fault, call).await
    }

    async fn delete(&self, id: &DeviceId, if_match: Option<ETag>) -> Result<()> {
        inject(&self.plan, injected_fault, self.inner.delete(id, if_match)).await
    }

    async fn list(&self, after: Option<&DeviceId>, limit: usize) -> Result<IdentityPage> {
        inject(&self.plan, injected_fault, self.inner.list(after, limit)).await
    }

    fn subscribe(&self) -> ChangeStream {
        self.inner.subscribe()
    }

    async fn sync(&self) -> Result<()> {
        inject(&self.plan, injected_fault, self.inner.sync()).await
    }
}
