//! # iot-identity
//!
//! The device identity store: the authority on which devices exist and how they prove who they are.
//! The gateway authenticates every connection against it (through an [`Authenticator`]); the
//! provisioning API is its only writer.
//!
//! * [`IdentityStore`] — the trait (create, get, set status, replace credentials, delete, paged
//!   listing, and a [`ChangeStream`] of changes so a gateway can cut the sessions of a disabled or
//!   deleted device at once), with [`MemoryIdentityStore`] and the crash-safe
//!   [`FileIdentityStore`].
//! * [`Credentials`] — symmetric keys, X.509 thumbprints, argon2id passphrase hashes, or none.
//!   Secrets are zeroized on drop and redacted in `Debug`; comparisons are constant-time.
//! * [`sas`] — SAS tokens byte-compatible with Azure IoT Hub and its device SDKs.
//! * [`Authenticator`] — checks a device's SAS token, key, certificate thumbprint or passphrase.
//! * [`access`] — the access matrix of the solution layer: users with argon2id passwords and
//!   sessions, roles, grants of roles over device sets, and checks whose denials are audited
//!   ([`AccessControl`], [`MemoryAccessStore`], [`FileAccessStore`]).
//! * [`ModuleStore`] — module identities (`devices/{id}/modules/{moduleId}`) with keys of their
//!   own, [`MemoryModuleStore`] and the journaled [`FileModuleStore`]; [`authenticate_module`].
//!
//! ```
//! use std::sync::Arc;
//! use iot_identity::{Authenticator, Credentials, IdentityStore, MemoryIdentityStore, NewIdentity,
//!     Presented, SymmetricKey, sas};
//!
//! # let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
//! # rt.block_on(async {
//! let store = Arc::new(MemoryIdentityStore::new());
//! let key = SymmetricKey::generate();
//! let id = "sensor-1".parse()?;
//! store.create(NewIdentity::new(id, Credentials::SymmetricKeys {
//!     primary: key.clone(),
//!     secondary: SymmetricKey::generate(),
//! })).await?;
//!
//! // The device signs a token for its resource; the gateway checks it.
//! let resource = "hub.example.net/devices/sensor-1";
//! let token = sas::generate(resource, &key, sas::unix_now() + 3600, None)?;
//! let auth = Authenticator::new(store.clone(), "hub.example.net");
//! let device = auth.authenticate(&"sensor-1".parse()?, Presented::SasToken(token.as_str())).await?;
//! assert_eq!(device.id.as_str(), "sensor-1");
//! # Ok::<(), iot_identity::Error>(())
//! # }).expect("example");
//! ```
//!
//! ## Feature flags
//!
//! * `testkit` — the public conformance suite [`testkit`] for `IdentityStore` implementations
//!   (`run_all` over a `StoreFactory`), and a fault-injecting wrapper; `testkit::ca` is the
//!   suite for `CaStore` implementations (the CA certificates of X.509 CA authentication,
//!   [`ca`]).
#![forbid(unsafe_code)]

pub mod access;
pub mod auth;
pub mod ca;
pub mod credentials;
pub mod error;
pub mod file;
pub mod identity;
mod index;
pub mod memory;
pub mod module;
pub mod sas;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use access::{
    AccessControl, AccessStore, Decision, DeviceSet, FileAccessStore, Grant, MemoryAccessStore,
    Permission, Role, Target,
};
pub use auth::{Authenticated, Authenticator, DeviceConnectPolicies, Presented};
pub use ca::{
    CaCertificate, CaCondition, CaError, CaStore, CertificateAuthorities, FileCaStore,
    MemoryCaStore,
};
pub use credentials::{
    Credentials, KeySlot, PassphraseHash, PassphraseParams, SymmetricKey, Thumbprint,
};
pub use error::{Error, MalformedToken, Result};
pub use file::{Durability, FileIdentityStore, FileIdentityStoreConfig, Recovery};
pub use identity::{
    ChangeKind, DeviceIdentity, DeviceStatus, ETag, GenerationId, IdentityChange, IdentityPage,
    NewIdentity,
};
pub use memory::MemoryIdentityStore;
pub use module::{
    FileModuleStore, FileModuleStoreConfig, MemoryModuleStore, ModuleChange, ModuleChangeKind,
    ModuleChanges, ModuleIdentity, ModuleStore, NewModule, authenticate_module,
};
pub use sas::{SasToken, SasVerifier, VerifiedToken};
pub use store::{
    ChangeEvent, ChangeSender, ChangeStream, IdentityStore, Lookup, LookupResult, MAX_PAGE_SIZE,
};
