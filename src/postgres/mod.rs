//! PostgreSQL adapters (feature `postgres`): the SDK's store traits over a PostgreSQL database.
//!
//! They live in the root package rather than in the crates that define the traits so that the
//! compiler holds them to what any integrator has: the crates' public API. The six crates stay
//! free of database dependencies.
//!
//! This module holds what every adapter shares:
//!
//! * [`PgConfig`]: connection settings from a URL, with pool size and timeouts;
//! * [`PgPool`]: a connection pool whose every failure is a typed [`PgError`] that says whether a
//!   retry may help (an engine that is down is retryable, a syntax error is not);
//! * [`migrate`]: versioned, idempotent schema migrations that two processes may run at once.
//!
//! The adapters:
//!
//! * [`PgRegistry`]: the device registry, documents as `jsonb`, queries translated to SQL.
//! * [`PgIdentityStore`]: device identities, a change stream across processes (`LISTEN`/`NOTIFY`)
//!   and a lookup cache the stream keeps honest.
//! * [`PgProvisioning`]: registration and removal in one transaction when both stores share a
//!   database.
//! * [`PgInbox`]: the gateway's C2D inbox, shared by every gateway instance on the database.
//! * [`PgTwinStore`]: the gateway's device twins.
//! * [`PgStateStore`]: the stream processors' event history and last known values.
//! * [`PgAccessStore`]: the access matrix (users, roles, grants, sessions) of `iot_identity::access`.
//! * [`PgJournal`]: the provisioner's intent journal, when identities and registry live apart.
//!
//! TLS to the database is not offered yet: a URL that asks for `sslmode=require` is refused by the
//! driver with a clear error rather than silently connecting in plain text.

mod access;
mod call;
mod config;
mod error;
mod errors;
mod identity;
mod inbox;
mod journal;
mod migrate;
mod pool;
mod provisioning;
mod registry;
mod state;
mod twins;
mod values;

pub use access::{PgAccessStore, PgAccessStoreConfig, PgSubscriptionStore};
pub use config::PgConfig;
pub use error::PgError;
pub use identity::{MAX_NAMESPACE_BYTES, PgIdentityConfig, PgIdentityStore};
pub use inbox::{PgInbox, PgInboxConfig};
pub use journal::{PgJournal, PgJournalConfig};
pub use migrate::{Migration, migrate};
pub use pool::{PgClient, PgPool};
pub use provisioning::{PgProvisioning, PgProvisioningBuilder};
pub use registry::{PgRegistry, PgRegistryConfig};
pub use state::{PgStateStore, PgStateStoreConfig};
pub use twins::{PgTwinStore, PgTwinStoreConfig};
