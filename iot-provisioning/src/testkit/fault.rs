//! A wrapper for the journal that fails the Nth call, on the identity testkit's [`FaultPlan`].
//!
//! One plan is shared by the wrapped identity store ([`FaultyIdentityStore`], from
//! `iot_identity::testkit`), registry ([`FaultyRegistry`], from `iot_registry::testkit`) and
//! journal, so its call count numbers every call of a scenario across all three; `fail_at(n)`
//! makes call `n` (from 1) fail once, in the plan's [`FaultMode`] (see `iot_identity::testkit`
//! for the modes).

use std::sync::Arc;

use async_trait::async_trait;
use iot_identity::testkit::{FaultPlan, inject};

use crate::journal::{Intent, Journal};

#[cfg(doc)]
use iot_identity::testkit::{FaultMode, FaultyIdentityStore};
#[cfg(doc)]
use iot_registry::testkit::FaultyRegistry;

fn injected() -> std::io::Error {
    std::io::Error::other("injected fault")
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
