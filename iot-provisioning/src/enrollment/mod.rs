//! Enrollments: which devices may provision themselves, how they prove it, and what they start
//! with — the records a Device Provisioning Service (DPS) registration is checked against.
//!
//! * An [`IndividualEnrollment`] admits one device by its registration id, attested by its own
//!   symmetric keys or X.509 certificate thumbprints.
//! * An [`EnrollmentGroup`] admits every device that proves membership: by a key derived from the
//!   group key and its registration id ([`GroupAttestation::device_key`], as DPS derives it), or
//!   by a certificate chain ending in the group's CA.
//! * Each carries [`EnrollmentSettings`]: enabled or disabled, the initial twin and registry
//!   tags, and the [`ReprovisionPolicy`].
//!
//! Enrollments live behind the [`EnrollmentStore`] trait, with a memory and a file backend and a
//! conformance suite (`testkit::enrollment`, feature `testkit`) for one's own. Every write is
//! conditioned by a [`Precondition`] on the version the store gave out, as DPS's etags do.
//!
//! ```
//! use iot_identity::SymmetricKey;
//! use iot_provisioning::enrollment::{
//!     EnrollmentGroup, EnrollmentStore, GroupAttestation, MemoryEnrollmentStore, Precondition,
//! };
//! use serde_json::json;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt").block_on(async {
//! let store = MemoryEnrollmentStore::new();
//! let mut group = EnrollmentGroup::new(
//!     "factory-7".parse()?,
//!     GroupAttestation::SymmetricKey { primary: SymmetricKey::generate(), secondary: SymmetricKey::generate() },
//! );
//! group.settings.tags = json!({"site": "plant-7"});
//! let stored = store.put_group(group, Precondition::Absent).await?;
//! // The key a device of this group is flashed with at the factory:
//! let device_key = stored.attestation.device_key("sensor-0001").expect("a key group");
//! # let _ = device_key;
//! // A write conditioned on an old version fails instead of overwriting a newer one.
//! let mut again = stored.clone();
//! again.settings.tags = json!({"site": "plant-8"});
//! store.put_group(again.clone(), Precondition::Version(stored.version)).await?;
//! assert!(store.put_group(again, Precondition::Version(stored.version)).await.is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).expect("example");
//! ```

mod file;
mod memory;
mod state;
mod store;
mod types;
mod wire;

pub use file::FileEnrollmentStore;
pub use memory::MemoryEnrollmentStore;
pub use store::EnrollmentStore;
pub use types::{
    Attestation, EnrollmentGroup, EnrollmentSettings, EnrollmentStatus, GroupAttestation, GroupId,
    IndividualEnrollment, ReprovisionPolicy,
};

/// What a write expects of the stored enrollment it replaces or deletes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Precondition {
    /// Whatever is stored (or nothing, for a put).
    Any,
    /// Nothing is stored under the id (create only). Not meaningful for a delete, which refuses it.
    Absent,
    /// The stored enrollment has this version (DPS's `If-Match`).
    Version(u64),
}
