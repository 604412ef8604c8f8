//! The conformance suite for [`StateStore`] implementations (feature `testkit`), and a
//! fault-injecting wrapper.
//!
//! An integrator with a store of their own runs the whole suite once, through a
//! [`StateStoreFactory`] that opens their store (and, for a persistent one, opens it again so the
//! suite can check what survives):
//!
//! ```
//! use std::sync::Arc;
//! use iot_stream::{MemoryStateStore, Result, StateStore, testkit};
//!
//! struct Memory;
//!
//! #[async_trait::async_trait]
//! impl testkit::StateStoreFactory for Memory {
//!     async fn open(&self) -> Result<Arc<dyn StateStore>> {
//!         Ok(Arc::new(MemoryStateStore::new()))
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! testkit::run_all(&Memory).await;
//! # });
//! ```
//!
//! Every device id the suite writes is drawn fresh (a random suffix), so the suite runs against a
//! store that already holds data, and twice against the same database. Retention is global (it
//! cuts every device), so its check counts what the store holds below the cut-off before
//! asserting how much was removed.
//!
//! [`FaultyStateStore`] wraps any store and fails the call a [`FaultPlan`] chooses, before or
//! after forwarding it; the suite passes over it when the plan only counts.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

mod fault;
mod suite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::Result;
use crate::state::StateStore;

pub use fault::{FaultyStateStore, injected_fault};
pub use iot_identity::testkit::{FaultMode, FaultPlan, fresh_id, inject};
pub use suite::*;

/// Opens the store under test, and opens it again for the durability check.
#[async_trait]
pub trait StateStoreFactory: Send + Sync {
    /// The store to run the suite against. It need not be empty.
    async fn open(&self) -> Result<Arc<dyn StateStore>>;

    /// Closes `previous` (the suite holds no other handle to it) and opens the same storage
    /// again, as a restarted process would; `None` when the store keeps nothing across a reopen.
    /// The provided method is for such stores: it drops `previous` and returns `None`.
    async fn reopen(&self, previous: Arc<dyn StateStore>) -> Option<Result<Arc<dyn StateStore>>> {
        drop(previous);
        None
    }
}

/// Runs the whole suite on one store from `factory`, then [`survives_reopen`] through
/// [`StateStoreFactory::reopen`].
pub async fn run_all(factory: &dyn StateStoreFactory) {
    let store = factory
        .open()
        .await
        .unwrap_or_else(|e| panic!("the factory could not open a store: {e}"));
    let s = store.as_ref();
    history_by_time_range(s).await;
    history_skips_redeliveries(s).await;
    last_known_values_merge_and_key_frames(s).await;
    last_known_values_are_idempotent(s).await;
    bad_updates_change_nothing(s).await;
    // Last: it removes old events of every device, including the checks' above.
    retention_removes_only_older_events(s).await;
    let written = write_for_reopen(s).await;
    let reopened = factory
        .reopen(store)
        .await
        .map(|r| r.unwrap_or_else(|e| panic!("the factory could not reopen the store: {e}")));
    if let Some(reopened) = reopened {
        survives_reopen(reopened.as_ref(), &written).await;
    }
}
