//! The device state store: raw event history and last known values per device.

mod data;
pub mod file;
mod last_known;
pub mod memory;

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use iot_core::{DeviceId, Timestamp};

use crate::error::Result;

pub use file::{FileStateStore, FileStateStoreConfig};
pub use last_known::{LastKnown, LkvUpdate, SourcePosition};
pub use memory::MemoryStateStore;

/// One raw event of a device's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// When it happened (event time).
    pub time: Timestamp,
    /// Where it came from in the log, to skip redeliveries; `None` to always store it.
    pub source: Option<SourcePosition>,
    /// The raw payload.
    pub payload: Bytes,
}

impl Event {
    /// An event at `time` with `payload` and no source position.
    pub fn new(time: Timestamp, payload: impl Into<Bytes>) -> Self {
        Event {
            time,
            source: None,
            payload: payload.into(),
        }
    }

    /// Sets the source position.
    pub fn with_source(mut self, source: SourcePosition) -> Self {
        self.source = Some(source);
        self
    }
}

/// Per-device state kept by stream processors: the raw event history (the data pump's sink) and
/// the last-known-values record (the projection of differential updates).
///
/// # Contract
///
/// Every implementation must hold these; `testkit::run_all` (feature `testkit`) checks them
/// through a `testkit::StateStoreFactory`.
///
/// * **History.** [`append_events`](StateStore::append_events) stores events of one device;
///   [`read_events`](StateStore::read_events) returns the device's events with
///   `from <= time < to`, ordered by time and, for equal times, in append order, at most
///   `limit` of them. An unknown device has no events.
/// * **Redelivery.** An event with a source position at or before the last source position
///   stored for the device in the same partition is skipped (not stored twice);
///   `append_events` returns how many it stored. The same rule makes
///   [`merge_last_known`](StateStore::merge_last_known) return `false` and change nothing.
/// * **Retention.** [`enforce_retention`](StateStore::enforce_retention) removes every event
///   with `time < before` from every device and no other; it returns how many it removed.
///   Last-known values are never removed by retention.
/// * **Last known values.** `merge_last_known` applies the update as
///   [`LastKnown::apply`] defines (RFC 7396 merge, key frames replace, a source time per value)
///   atomically; [`last_known`](StateStore::last_known) returns the record (`None` before the
///   first update). A patch that is not a JSON object is
///   [`Error::InvalidInput`](crate::Error::InvalidInput) and changes nothing.
/// * **Durability** (durable implementations): an acknowledged write survives a crash of the
///   process; a reopened store returns exactly what was acknowledged.
/// * **Errors.** A store outside this crate reports its own failures as
///   [`Error::Backend`](crate::Error::Backend) (built with [`Error::backend`](crate::Error::backend)),
///   saying whether a retry may help; callers such as the processor host retry on
///   [`Error::is_retryable`](crate::Error::is_retryable).
/// * No input makes an implementation panic.
///
/// Every type an implementation returns is public with public constructors ([`Event::new`],
/// [`SourcePosition`]'s fields, [`LastKnown::new`] + [`LastKnown::apply`]); [`LastKnown`] is
/// `Serialize`/`Deserialize`, so a database keeps it as one JSON document. Durability needs no
/// `sync` method: an acknowledged write is durable when the call returns.
#[async_trait]
pub trait StateStore: Send + Sync + Debug + 'static {
    /// Appends events to `device`'s history; returns how many were stored.
    async fn append_events(&self, device: &DeviceId, events: Vec<Event>) -> Result<usize>;

    /// The events of `device` with `from <= time < to`, by time, at most `limit`.
    async fn read_events(
        &self,
        device: &DeviceId,
        from: Timestamp,
        to: Timestamp,
        limit: usize,
    ) -> Result<Vec<Event>>;

    /// Removes events with `time < before`; returns how many.
    async fn enforce_retention(&self, before: Timestamp) -> Result<u64>;

    /// The last-known-values record of `device`.
    async fn last_known(&self, device: &DeviceId) -> Result<Option<LastKnown>>;

    /// Applies `update` to `device`'s last-known-values record; `false` if it was a redelivery.
    async fn merge_last_known(&self, device: &DeviceId, update: LkvUpdate) -> Result<bool>;

    /// The devices with any state, sorted.
    async fn devices(&self) -> Result<Vec<DeviceId>>;
}

macro_rules! forward_state_store {
    ($ptr:ident) => {
        #[deny(clippy::missing_trait_methods)]
        #[async_trait]
        impl<T: StateStore + ?Sized> StateStore for $ptr<T> {
            async fn append_events(&self, device: &DeviceId, events: Vec<Event>) -> Result<usize> {
                (**self).append_events(device, events).await
            }
            async fn read_events(
                &self,
                device: &DeviceId,
                from: Timestamp,
                to: Timestamp,
                limit: usize,
            ) -> Result<Vec<Event>> {
                (**self).read_events(device, from, to, limit).await
            }
            async fn enforce_retention(&self, before: Timestamp) -> Result<u64> {
                (**self).enforce_retention(before).await
            }
            async fn last_known(&self, device: &DeviceId) -> Result<Option<LastKnown>> {
                (**self).last_known(device).await
            }
            async fn merge_last_known(&self, device: &DeviceId, update: LkvUpdate) -> Result<bool> {
                (**self).merge_last_known(device, update).await
            }
            async fn devices(&self) -> Result<Vec<DeviceId>> {
                (**self).devices().await
            }
        }
    };
}

forward_state_store!(Arc);
forward_state_store!(Box);
