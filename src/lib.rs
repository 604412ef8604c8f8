//! # iot-sdk
//!
//! The building blocks of the reference IoT architecture as Rust crates. This facade re-exports each
//! of them under a short name; depend on the individual crates if you need only some.
//!
//! | module | crate | what it holds |
//! |---|---|---|
//! | [`core`] | `iot-core` | device ids, records, errors, the partitioned [`Log`](core::Log) |
//! | [`identity`] | `iot-identity` | device identity store and credentials |
//! | [`registry`] | `iot-registry` | device metadata registry and queries |
//! | [`provisioning`] | `iot-provisioning` | the provisioning API |
//! | [`stream`] | `iot-stream` | stream processors and the device state store |
//! | [`gateway`] | `iot-gateway` | the cloud gateway |
//!
//! [`commands`] executes the actors' commands topic on the hub (`docs/actors.md`, "The hub
//! side").
//!
//! [`routing`] adapts the hub's registry and twin store to IoT Hub message routing
//! (`stream::routing`, `docs/routing.md`).
//!
//! See `examples/quickstart.rs` for a tour (`cargo run --example quickstart`).
//!
//! ## Feature flags
//!
//! * `testkit` — turns on the `testkit` feature of every crate: the conformance suites an
//!   integrator runs against their own implementation of a trait, and fault-injecting wrappers.
//!   `docs/integrating.md` walks through it.
//! * `postgres` — the `postgres` module: the store traits over PostgreSQL.
//! * `cluster` — the `cluster` module: several gateway instances as one hub over NATS and
//!   PostgreSQL (`docs/cluster.md`); turns on `nats` and `postgres`.
//! * `http` — the gateway's HTTP endpoint (`gateway::http`): IoT Hub's service REST API with
//!   shared access policies; `docs/http.md` describes it, and `examples/hub.rs` runs it.
//! * `alert-push` — push notifications of alerts to users' webhooks, filtered by the access
//!   matrix (`alert_push`, docs/access.md).
//! * `eventhubs` — the `eventhubs` module: an Event Hubs-compatible endpoint over the hub's
//!   telemetry log (AMQP 1.0, `docs/eventhubs.md`); turns on `http`.
#![forbid(unsafe_code)]

#[cfg(feature = "cluster")]
pub mod cluster;
#[cfg(feature = "nats")]
pub mod nats;

#[cfg(feature = "alert-push")]
pub mod alert_push;

pub use iot_core as core;
pub use iot_gateway as gateway;
pub use iot_identity as identity;
pub use iot_provisioning as provisioning;
pub use iot_registry as registry;
pub use iot_stream as stream;

pub mod commands;
#[cfg(feature = "eventhubs")]
pub mod eventhubs;
pub mod events;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod routing;
