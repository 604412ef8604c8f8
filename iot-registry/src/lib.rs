//! # iot-registry
//!
//! The device registry: the index a solution uses to discover its devices ("every traffic light
//! on this road", "all sensors of model X on floor 3"). Each device has one [`DeviceRecord`] —
//! free-form JSON metadata and tags, an etag, created/updated times and an optional reference to
//! its state in the state store. Records hold descriptive data only: there is no credential field
//! anywhere in this crate (keys live in the identity store).
//!
//! * The [`Registry`] trait: create, get, replace, merge (JSON merge patch, RFC 7396), delete,
//!   each write optionally conditional on the etag (`if_match`, failing with
//!   [`Error::PreconditionFailed`]); [`query`](Registry::query) with paging and
//!   [`count`](Registry::count).
//! * A query language in the style of Azure IoT Hub's device queries ([`Query`]), parsed with the
//!   `sqlparser` crate, with errors that name the line, the column and what was expected.
//! * Automatic indexes on every scalar path, used by a planner for `=`, `!=`, ranges, `IN`,
//!   `STARTS_WITH`, `IS_DEFINED`, `AND` (intersection), `OR` (union) and `NOT` (complement);
//!   results are the same with and without indexes.
//! * [`MemoryRegistry`] and the crash-safe [`FileRegistry`] (write-ahead log with checksummed
//!   frames, atomic snapshots).
//!
//! ```
//! use iot_core::DeviceId;
//! use iot_registry::{DeviceDocument, MemoryRegistry, Query, Registry, RegistryExt};
//! use serde_json::json;
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let registry = MemoryRegistry::new();
//! for (id, floor) in [("light-1", 2), ("light-2", 3), ("light-3", 4)] {
//!     let doc = DeviceDocument::with_metadata(json!({"building": "B7", "floor": floor, "kind": "light"}))
//!         .expect("an object");
//!     registry.create(&DeviceId::new(id)?, doc).await?;
//! }
//! // Optimistic concurrency: merge only if nobody changed the record since we read it.
//! let id = DeviceId::new("light-3")?;
//! let current = registry.get(&id).await?.expect("present");
//! registry.merge(&id, &json!({"metadata": {"retired": true}}), Some(&current.etag)).await?;
//!
//! let q = Query::parse(
//!     "SELECT * FROM devices WHERE metadata.building = 'B7' AND metadata.floor >= 3 \
//!      AND NOT IS_DEFINED(metadata.retired) ORDER BY metadata.floor LIMIT 100",
//! )?;
//! let found = registry.query_all(&q).await?;
//! assert_eq!(found.len(), 1);
//! assert_eq!(found[0].device_id.as_str(), "light-2");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! ## Feature flags
//! * `testkit` — the public conformance suite (module `testkit`: `run_all` over a
//!   `RegistryFactory`, one function per part of the contract) and the fault-injecting
//!   `FaultyRegistry`, for `Registry` implementations.
//!
//! The design (record model, merge, query semantics and limits, index planner, file format and
//! crash safety) is described in `docs/registry.md`.
#![forbid(unsafe_code)]

mod engine;
pub mod error;
mod file;
mod index;
pub mod limits;
mod memory;
pub mod merge;
mod paging;
pub mod query;
pub mod record;
mod registry;
mod stored;
#[cfg(feature = "testkit")]
pub mod testkit;
mod value;

pub use engine::RegistryConfig;
pub use error::{Error, QueryError, QueryErrorKind, Result};
pub use file::{Durability, FileRegistry, FileRegistryConfig};
pub use limits::{DocumentLimits, MAX_SUPPORTED_DEPTH, QueryLimits};
pub use memory::MemoryRegistry;
pub use merge::merge_patch;
pub use paging::{DEFAULT_PAGE_SIZE, Page, PageRequest, PageToken, SortValue};
pub use query::{Query, Select};
pub use record::{DeviceDocument, DeviceRecord, ETag};
pub use registry::{QueryOutput, Registry, RegistryExt};
