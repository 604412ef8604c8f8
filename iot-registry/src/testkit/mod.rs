//! The conformance suite for [`Registry`] implementations (feature `testkit`), and a
//! fault-injecting wrapper.
//!
//! An integrator with a registry of their own runs the whole suite once, through a
//! [`RegistryFactory`] that opens their registry (and, for a persistent one, opens it again so
//! the suite can check what survives):
//!
//! ```
//! use std::sync::Arc;
//! use iot_registry::{MemoryRegistry, Registry, RegistryConfig, Result, testkit};
//!
//! struct Memory;
//!
//! #[async_trait::async_trait]
//! impl testkit::RegistryFactory for Memory {
//!     async fn open(&self) -> Result<Arc<dyn Registry>> {
//!         Ok(Arc::new(MemoryRegistry::with_config(
//!             RegistryConfig::default().limits(testkit::suite_limits()),
//!         )?))
//!     }
//! }
//!
//! # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
//! # rt.block_on(async {
//! testkit::run_all(&Memory).await;
//! # });
//! ```
//!
//! Every id the suite writes is drawn fresh (a random suffix), and every query it checks is
//! restricted to the records of its own run, so it runs against a registry that already holds
//! data, and twice against the same database. The public functions of the suite check one part
//! of the contract each, for a test per part.
//!
//! [`FaultyRegistry`] wraps any registry and fails the call a [`FaultPlan`] chooses, before or
//! after forwarding it; the suite passes over it when the plan only counts. The plan and its
//! modes are the identity testkit's, so that one plan can number the calls to several stores.
#![allow(clippy::panic, clippy::expect_used)]

mod fault;
mod suite;

use std::sync::Arc;

use async_trait::async_trait;
use iot_core::DeviceId;

use crate::error::Result;
use crate::limits::DocumentLimits;
use crate::registry::Registry;

pub use fault::{FaultyRegistry, injected_fault};
pub use iot_identity::testkit::{FaultMode, FaultPlan, inject};
pub use suite::*;

/// Opens the registry under test, and opens it again for the durability check.
#[async_trait]
pub trait RegistryFactory: Send + Sync {
    /// The registry to run the suite against. It need not be empty.
    async fn open(&self) -> Result<Arc<dyn Registry>>;

    /// The document limits the registry enforces; [`document_limits`] needs
    /// `max_document_bytes` under 1 MB. The provided method returns [`suite_limits`].
    fn limits(&self) -> DocumentLimits {
        suite_limits()
    }

    /// Closes `previous` (the suite holds no other handle to it) and opens the same storage
    /// again, as a restarted process would; `None` when the registry keeps nothing across a
    /// reopen. The provided method is for such registries: it drops `previous` and returns
    /// `None`.
    async fn reopen(&self, previous: Arc<dyn Registry>) -> Option<Result<Arc<dyn Registry>>> {
        drop(previous);
        None
    }
}

/// The default [`DocumentLimits`] with documents of at most 256 KiB, so that the suite's 1 MB
/// document is over the limit.
pub fn suite_limits() -> DocumentLimits {
    DocumentLimits {
        max_document_bytes: 256 * 1024,
        ..DocumentLimits::default()
    }
}

/// Runs the whole suite on one registry from `factory`: every contract check, then (when the
/// factory can reopen it) [`write_for_reopen`] and [`check_after_reopen`] across a reopen.
pub async fn run_all(factory: &dyn RegistryFactory) {
    let registry = factory
        .open()
        .await
        .unwrap_or_else(|e| panic!("the factory could not open a registry: {e}"));
    let r = registry.as_ref();
    records_and_etags(r).await;
    concurrent_if_match(r).await;
    merge_patch_rfc7396(r).await;
    document_limits(r, factory.limits()).await;
    queries_match_brute_force(r).await;
    query_misuse(r).await;
    let written = write_for_reopen(r).await;
    if let Some(reopened) = factory.reopen(registry).await {
        let reopened =
            reopened.unwrap_or_else(|e| panic!("the factory could not reopen the registry: {e}"));
        check_after_reopen(reopened.as_ref(), &written).await;
    }
}

/// A device id `label-` followed by 12 random hex digits: fresh in every run.
pub fn fresh_id(label: &str) -> DeviceId {
    DeviceId::new(fresh_name(label)).expect("labels of the suite make valid ids")
}

/// The text of a [`fresh_id`].
pub fn fresh_name(label: &str) -> String {
    iot_identity::testkit::fresh_name(label)
}
