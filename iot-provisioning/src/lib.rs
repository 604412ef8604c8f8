//! # iot-provisioning
//!
//! Provisioning is how devices enter and leave the system, and the one door through which the
//! identity store and the registry change. [`Provisioning`] is the API (register, unregister,
//! activate, deactivate, update, reset credentials, bulk registration, token issuing);
//! [`Provisioner`] implements it over any [`IdentityStore`](iot_identity::IdentityStore) and
//! [`Registry`](iot_registry::Registry), keeping the two in agreement across store failures and
//! crashes with an intent [`Journal`] (see [`provisioner`] for the order of writes and the
//! recovery rules, and `docs/provisioning.md`). Every operation runs the workflow [`Hook`]s and
//! appends an [`AuditRecord`] to the `audit` topic of the log.
//!
//! ```
//! use std::sync::Arc;
//! use iot_identity::MemoryIdentityStore;
//! use iot_provisioning::{Provisioner, Provisioning, RegisterRequest};
//! use iot_registry::{MemoryRegistry, RegistryExt};
//! use serde_json::json;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt").block_on(async {
//! let provisioner = Provisioner::builder(
//!     Arc::new(MemoryIdentityStore::new()),
//!     Arc::new(MemoryRegistry::new()),
//! )
//! .open()
//! .await?;
//! let registered = provisioner
//!     .register(RegisterRequest::new("sensor-1".parse()?, json!({"building": "B7"})))
//!     .await?;
//! // The keys are returned once, here; the registry record holds none.
//! assert_eq!(registered.credentials.kind_name(), "symmetric key");
//! let found = provisioner.registry().run("SELECT COUNT() FROM devices WHERE metadata.building = 'B7'").await?;
//! assert_eq!(found, iot_registry::QueryOutput::Count(1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).expect("example");
//! ```
//!
//! ## Feature flags
//!
//! * `testkit` — the public conformance suite [`testkit`] for `Provisioning` implementations,
//!   the agreement check, and fault-injecting store wrappers.
#![forbid(unsafe_code)]

pub mod access;
pub mod audit;
pub mod enrollment;
pub mod error;
pub mod hooks;
pub mod journal;
pub mod onboarding;
pub mod provisioner;
pub mod provisioning;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod types;
pub mod workflow;

pub use access::{RecordFilter, RegistryDeviceSets};
pub use audit::AuditRecord;
pub use error::{Error, Result};
pub use hooks::{Hook, HookContext, HookError, Operation};
pub use iot_core::storage::Recovery;
pub use journal::{FileJournal, FileJournalConfig, Intent, Journal, MemoryJournal};
pub use provisioner::{DEFAULT_BULK_BATCH, Provisioner, ProvisionerBuilder};
pub use provisioning::Provisioning;
pub use types::{BulkItemResult, BulkMode, Device, RegisterRequest, Registered};
pub use workflow::Workflow;
