//! How a batch becomes an object's bytes.

use std::fmt::Debug;

use iot_core::StoredRecord;

use crate::sinks::SinkError;

/// Encodes a batch as one object.
///
/// # Contract
///
/// The same records always encode to an object with the same content (so a batch written again
/// after a crash is the same object). A batch that cannot be encoded is
/// [`SinkError::Rejected`]; encoding must not panic on any record content.
pub trait BatchEncoder: Send + Sync + Debug + 'static {
    /// The object name's extension (`parquet`, `json`).
    fn extension(&self) -> &str;

    /// The object's bytes.
    fn encode(&self, records: &[StoredRecord]) -> Result<Vec<u8>, SinkError>;
}
