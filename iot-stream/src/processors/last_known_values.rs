//! The last-known-values projection.

use std::sync::Arc;

use async_trait::async_trait;
use iot_core::{PartitionId, StoredRecord};

use super::{device_of, event_time, position_of};
use crate::error::{Error, Result};
use crate::processor::{Context, ProcessorFactory, StreamProcessor};
use crate::state::{LkvUpdate, StateStore};

/// The header that marks a record as a key frame: `key-frame: true` (or `1`). A key frame
/// replaces the device's last known values; any other record is a JSON merge patch (RFC 7396).
pub const KEY_FRAME_HEADER: &str = "key-frame";

/// Projects each device's records into its last-known-values record in a [`StateStore`].
///
/// * The payload must be a JSON object; it is merged with JSON merge patch (RFC 7396), or, with
///   header [`KEY_FRAME_HEADER`] `true`, replaces the record.
/// * Each value keeps its source time: the record's device time, or its enqueued time.
/// * Idempotent under redelivery: the record's log position is stored with the state, and a
///   record at or before it is skipped, so replaying after a crash leaves exactly the state of an
///   uninterrupted run.
/// * A payload that is not a JSON object, or a key that is not a device id, fails the record (it
///   ends in the dead-letter topic).
#[derive(Debug, Clone)]
pub struct LastKnownValues {
    store: Arc<dyn StateStore>,
}

impl LastKnownValues {
    /// A projection into `store`.
    pub fn new(store: Arc<dyn StateStore>) -> Self {
        LastKnownValues { store }
    }

    /// The update `record` makes.
    pub fn update_of(record: &StoredRecord) -> Result<LkvUpdate> {
        let patch: serde_json::Value = serde_json::from_slice(&record.record.payload)
            .map_err(|e| Error::invalid(format!("payload is not JSON: {e}")))?;
        let key_frame = matches!(
            record.record.headers.get(KEY_FRAME_HEADER),
            Some("true" | "1" | "True" | "TRUE")
        );
        Ok(LkvUpdate {
            patch,
            key_frame,
            source_time: event_time(record),
            source: Some(position_of(record)),
        })
    }
}

#[async_trait]
impl StreamProcessor for LastKnownValues {
    async fn process(&mut self, batch: &[StoredRecord], _ctx: &mut Context) -> Result<()> {
        for record in batch {
            let device = device_of(record)?;
            let update = Self::update_of(record)?;
            self.store.merge_last_known(&device, update).await?;
        }
        Ok(())
    }
}

impl ProcessorFactory for LastKnownValues {
    fn create(&self, _partition: PartitionId) -> Result<Box<dyn StreamProcessor>> {
        Ok(Box::new(self.clone()))
    }
}
