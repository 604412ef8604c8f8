//! Conformance suites (feature `testkit`): for [`Gateway`] implementations, and for the stores a
//! gateway is built on ([`inbox_store`] for [`InboxStore`](crate::InboxStore), [`twin_store`] for
//! [`TwinStore`](crate::TwinStore)), with fault-injecting store wrappers.
//!
//! # Gateways
//!
//! Each check is a public async function taking the gateway under test and a [`Fixture`] that
//! provisions devices and reads back what reached the log. The hub's own tests run every check
//! against a [`Hub`](crate::Hub) with memory stores and with file stores; a protocol endpoint can
//! be driven through the same checks by wrapping a client of that protocol in a `Gateway`.
//!
//! Checks never assert on timing. They wait for events (with a generous guard against hangs) and
//! prove that something did *not* happen by ordering: an expired message is followed by a live one,
//! and the live one must be the first delivered. Where nothing can follow (a session that
//! unsubscribed must hand out nothing at all), a check gives the session a short while to hand
//! something out: a correct gateway passes however slow it is, only a broken one can fail.
//!
//! [`run_all`] runs every check; [`Limits`] passes the limits the gateway was configured with.
//!
//! Beyond the [`Gateway`] contract and those limits, the checks assume what a gateway with the
//! [`Hub`](crate::Hub)'s defaults does:
//!
//! * custom property names and values follow [`validate`](crate::validate) (a name with a space,
//!   an empty one, `$…`, `iothub-…` and the system-property names are refused);
//! * C2D messages are accepted with TTLs from 1 ms, and with the default `c2d_window` (16);
//! * method calls are accepted with response and connect timeouts from 50 ms to 30 s;
//! * 40 refused connects in a row (from `peer: None`) do not exhaust the gateway's failed-attempt
//!   budget, and 20 telemetry messages in a row are not throttled;
//! * the gateway authenticates against the identity store the [`Fixture`] writes (SAS tokens
//!   for the fixture's host) and follows its changes, so `Fixture::disable` ends a session;
//! * the [`Fixture`] reads back the log the gateway writes telemetry to.
//!
//! `iot-gateway/tests/out_of_crate_gateway.rs` is a gateway written outside this crate against the
//! public API alone that passes them.
//!
//! # Protocol adapters
//!
//! [`adapter`] checks an adapter in front of a gateway through a client of its protocol: the
//! adapter writer implements [`adapter::AdapterDevice`] and runs [`adapter::run_adapter_checks`]
//! (docs/protocol-adapters.md).
//!
//! # Stores
//!
//! An integrator with an inbox or twin store of their own runs its suite once, through a factory
//! that opens their store (and, for a persistent one, opens it again so the suite can check what
//! survives):
//!
//! ```
//! use std::sync::Arc;
//! use iot_gateway::{InboxStore, MemoryInbox, Result, testkit};
//!
//! struct Memory;
//!
//! #[async_trait::async_trait]
//! impl testkit::inbox_store::InboxStoreFactory for Memory {
//!     async fn open(&self) -> Result<Arc<dyn InboxStore>> {
//!         Ok(Arc::new(MemoryInbox::new()))
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! testkit::inbox_store::run_all(&Memory).await;
//! # });
//! ```
//!
//! Every device id the store suites write is drawn fresh ([`fresh_id`]), so they run against a
//! store that already holds data, and twice against the same database. [`FaultyInboxStore`] and
//! [`FaultyTwinStore`] wrap any store and fail the call a [`FaultPlan`] chooses, before or after
//! forwarding it (the plan is the identity testkit's, shared across crates); the suites pass over
//! them when the plan only counts.

pub mod adapter;
mod c2d;
mod fault;
mod fixture;
mod helpers;
pub mod inbox_store;
mod methods;
mod sessions;
mod telemetry;
pub mod twin_store;
mod twins;

pub use c2d::*;
pub use fault::{FaultyInboxStore, FaultyTwinStore, injected_fault};
pub use fixture::{Fixture, Limits, StoreFixture, within};
pub use iot_identity::testkit::{FaultMode, FaultPlan, fresh_id, inject};
pub use methods::*;
pub use sessions::*;
pub use telemetry::*;
pub use twins::*;

use crate::gateway::Gateway;

/// Runs every check.
pub async fn run_all(gw: &dyn Gateway, fx: &dyn Fixture, limits: Limits) {
    connect_refuses_bad_credentials(gw, fx).await;
    refused_connects_spend_nothing_of_the_device(gw, fx).await;
    telemetry_in_order_with_headers(gw, fx).await;
    telemetry_stamped_from_the_session(gw, fx).await;
    telemetry_validation(gw, fx, limits).await;
    c2d_waits_for_offline_device(gw, fx).await;
    c2d_expired_never_delivered(gw, fx).await;
    c2d_abandon_redelivers_and_complete_removes(gw, fx).await;
    c2d_reject_dead_letters(gw, fx).await;
    c2d_max_delivery_count_dead_letters(gw, fx, limits).await;
    c2d_lock_expiry_redelivers(gw, fx, limits).await;
    c2d_queue_limit(gw, fx, limits).await;
    session_takeover(gw, fx).await;
    disabled_device_session_ends(gw, fx).await;
    methods_offline_timeout_and_answer(gw, fx).await;
    twin_versions_and_desired_push(gw, fx).await;
    c2d_unsubscribe_keeps_locks_and_inbox(gw, fx).await;
    c2d_unsubscribe_with_a_lookup_pending(gw, fx).await;
    c2d_resubscribe_keeps_fifo(gw, fx).await;
    feedback_completion_moves_forward_only(gw, fx).await;
    desired_unsubscribe_and_resubscribe(gw, fx).await;
    methods_unsubscribe(gw, fx).await;
}
