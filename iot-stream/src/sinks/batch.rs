//! Cutting an endpoint's records into batches, deterministically.

use std::time::Duration;

use iot_core::StoredRecord;

use crate::error::{Error, Result};

/// When a sink's batch is complete: whichever limit is reached first.
///
/// Batches are cut by the records alone — their count, their [size](iot_core::Record::size_bytes)
/// and their enqueued times — never by when the sink happened to read them. A batch starts at a
/// record `S` and takes the following records while it has fewer than `max_records`, stays within
/// `max_bytes` and the record was enqueued before `S.enqueued_time + max_age`. So a restart that
/// replays the log from `S` cuts exactly the batches the crashed run cut, and a sink that names
/// its output after the batch's first offset rewrites the same objects instead of adding new
/// ones.
///
/// The age limit also closes a batch when no further record comes: once the host's clock passes
/// `S.enqueued_time + max_age` (and no record is waiting to be read), no later record can join
/// it, because the log stamps records in non-decreasing time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Most records in a batch. Default 10 000.
    pub max_records: usize,
    /// Most bytes (sum of `Record::size_bytes`) in a batch; one larger record makes a batch of its
    /// own. Default 64 MiB.
    pub max_bytes: usize,
    /// Longest span of enqueued times in a batch, and how long a batch waits for more records.
    /// Default 60 s (IoT Hub's smallest batch frequency for storage endpoints).
    pub max_age: Duration,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        BatchPolicy {
            max_records: 10_000,
            max_bytes: 64 << 20,
            max_age: Duration::from_secs(60),
        }
    }
}

impl BatchPolicy {
    /// Every record is a batch of its own (for sinks that push each message).
    pub fn per_record() -> Self {
        BatchPolicy {
            max_records: 1,
            ..Self::default()
        }
    }

    /// Refuses limits that would make no batch.
    pub fn validate(&self) -> Result<()> {
        if self.max_records == 0 || self.max_bytes == 0 {
            return Err(Error::invalid(
                "BatchPolicy: max_records and max_bytes must be at least 1",
            ));
        }
        Ok(())
    }

    /// Whether `next` may join the open batch that starts with `first` and holds `count` records
    /// of `bytes` bytes.
    pub(crate) fn admits(
        &self,
        first: &StoredRecord,
        count: usize,
        bytes: usize,
        next: &StoredRecord,
    ) -> bool {
        count < self.max_records
            && bytes.saturating_add(next.record.size_bytes()) <= self.max_bytes
            && next.enqueued_time < self.deadline(first)
    }

    /// When the batch that starts with `first` is closed by age.
    pub(crate) fn deadline(&self, first: &StoredRecord) -> iot_core::Timestamp {
        first.enqueued_time.saturating_add(self.max_age)
    }
}
