//! Built-in processors. Each is also a [`ProcessorFactory`](crate::ProcessorFactory) that gives
//! every partition its own copy, so it can be passed to [`ProcessorHost::start`](crate::ProcessorHost::start) directly.

mod alert;
mod anomaly;
mod last_known_values;
mod metadata_sync;
mod pump;
mod router;

pub use alert::{Crossing, ThresholdAlert};
pub use anomaly::{AnomalyDetector, AnomalyMode, Score, SpikeAndDip};
pub use last_known_values::{KEY_FRAME_HEADER, LastKnownValues};
pub use metadata_sync::{METADATA_SUBJECT, MetadataSync};
pub use pump::{EventSink, Pump};
pub use router::{RouteBy, Router};

use iot_core::{DeviceId, StoredRecord, Timestamp};

use crate::error::{Error, Result};
use crate::state::SourcePosition;

/// The device a record is about: its key.
pub(crate) fn device_of(record: &StoredRecord) -> Result<DeviceId> {
    DeviceId::new(&record.record.key).map_err(|e| Error::invalid(format!("record key: {e}")))
}

/// The record's event time: the device time, or the enqueued time without one.
pub(crate) fn event_time(record: &StoredRecord) -> Timestamp {
    record.record.device_time.unwrap_or(record.enqueued_time)
}

/// Where the record is in the log.
pub(crate) fn position_of(record: &StoredRecord) -> SourcePosition {
    SourcePosition {
        partition: record.partition.0,
        offset: record.offset.0,
    }
}

/// A top-level numeric field of a JSON payload.
pub(crate) fn field_f64(payload: &[u8], field: &str) -> Option<f64> {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()?
        .get(field)?
        .as_f64()
}
