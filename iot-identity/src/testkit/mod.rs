//! The conformance suite for [`IdentityStore`] implementations (feature `testkit`), and a
//! fault-injecting wrapper.
//!
//! An integrator with a store of their own runs the whole suite once, through a
//! [`StoreFactory`] that opens their store (and, for a persistent one, opens it again so the
//! suite can check what survives):
//!
//! ```
//! use std::sync::Arc;
//! use iot_identity::{IdentityStore, MemoryIdentityStore, Result, testkit};
//!
//! struct Memory;
//!
//! #[async_trait::async_trait]
//! impl testkit::StoreFactory for Memory {
//!     async fn open(&self) -> Result<Arc<dyn IdentityStore>> {
//!         Ok(Arc::new(MemoryIdentityStore::new()))
//!     }
//! }
//!
//! # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
//! # rt.block_on(async {
//! testkit::run_all(&Memory).await;
//! # });
//! ```
//!
//! Every id the suite writes is drawn fresh (a random suffix), so it runs against a store that
//! already holds data, and twice against the same database. The public functions of the suite
//! check one part of the contract each, for a test per part. They need a tokio runtime with
//! timers enabled.
//!
//! [`access`] is the suite for [`AccessStore`](crate::access::AccessStore) implementations
//! (users, roles, grants, sessions).
//!
//! [`FaultyIdentityStore`] wraps any store and fails the call a [`FaultPlan`] chooses, before or
//! after forwarding it; the suite passes over it when the plan only counts.

pub mod access;
pub mod ca;
mod fault;
mod modules;
pub mod subscriptions;
mod suite;

use std::sync::Arc;

use async_trait::async_trait;
use iot_core::DeviceId;

use crate::error::Result;
use crate::store::IdentityStore;

pub use fault::{FaultMode, FaultPlan, FaultyIdentityStore, inject, injected_fault};
pub use modules::*;
pub use suite::*;

/// Opens the store under test, and opens it again for the durability check.
#[async_trait]
pub trait StoreFactory: Send + Sync {
    /// The store to run the suite against. It need not be empty.
    async fn open(&self) -> Result<Arc<dyn IdentityStore>>;

    /// Closes `previous` (the suite holds no other handle to it) and opens the same storage
    /// again, as a restarted process would; `None` when the store keeps nothing across a reopen.
    /// The provided method is for such stores: it drops `previous` and returns `None`.
    async fn reopen(
        &self,
        previous: Arc<dyn IdentityStore>,
    ) -> Option<Result<Arc<dyn IdentityStore>>> {
        drop(previous);
        None
    }
}

/// Runs the whole suite: every contract check on one store from `factory`, authentication
/// through an [`Authenticator`](crate::Authenticator) over it, then [`survives_reopen`].
pub async fn run_all(factory: &dyn StoreFactory) {
    let store = factory
        .open()
        .await
        .unwrap_or_else(|e| panic!("the factory could not open a store: {e}"));
    let s = store.as_ref();
    create_get_delete(s).await;
    create_is_unique(s).await;
    etags_and_preconditions(s).await;
    status_changes(s).await;
    credentials_round_trip(s).await;
    generation_changes_when_an_id_is_reused(s).await;
    paged_listing(s).await;
    change_stream(s).await;
    bad_input(s).await;
    authentication_follows_the_store(Arc::clone(&store)).await;
    survives_reopen(store, |store| async move {
        factory.reopen(store).await.map(|reopened| {
            reopened.unwrap_or_else(|e| panic!("the factory could not reopen the store: {e}"))
        })
    })
    .await;
}

/// A device id `label-` followed by 12 random hex digits: fresh in every run.
pub fn fresh_id(label: &str) -> DeviceId {
    DeviceId::new(fresh_name(label)).expect("labels of the suite make valid ids")
}

/// The text of a [`fresh_id`].
pub fn fresh_name(label: &str) -> String {
    format!("{label}-{:012x}", rand::random::<u64>() >> 16)
}
