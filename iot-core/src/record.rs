//! Records: what producers append and what readers get back.

use bytes::Bytes;

use crate::headers::{HeaderCache, Headers};
use crate::offset::{Offset, PartitionId};
use crate::timestamp::Timestamp;

/// A record to append to the log.
///
/// The log never looks inside the payload. The key (normally the device id) chooses the partition
/// when appended through a [`Producer`](crate::Producer); it may be empty.
///
/// ```
/// use iot_core::{headers, Record, Timestamp};
///
/// let record = Record::new("sensor-17", r#"{"temp":21.5}"#)
///     .with_header(headers::CONTENT_TYPE, "application/json")
///     .with_device_time(Timestamp::from_unix_millis(1_700_000_000_000));
/// assert_eq!(record.headers.get("content-type"), Some("application/json"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Record {
    /// The partitioning key, normally a device id.
    pub key: String,
    /// Ordered string headers; see [`headers`](crate::headers) for the well-known names.
    pub headers: Headers,
    /// When the device says the event happened, if it said.
    pub device_time: Option<Timestamp>,
    /// The opaque body.
    pub payload: Bytes,
}

/// Fixed bytes a record costs in the log's size accounting besides its strings and payload:
/// key length, header count, device-time flag and value, payload length.
const RECORD_OVERHEAD: usize = 4 + 4 + 1 + 8 + 4;
/// Fixed bytes per header: name length and value length.
const HEADER_OVERHEAD: usize = 4 + 4;

impl Record {
    /// A record with `key` and `payload`, no headers and no device time.
    pub fn new(key: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Record {
            key: key.into(),
            headers: Headers::new(),
            device_time: None,
            payload: payload.into(),
        }
    }

    /// Adds or replaces a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Replaces all headers.
    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// Sets the device time.
    pub fn with_device_time(mut self, time: Timestamp) -> Self {
        self.device_time = Some(time);
        self
    }

    /// A copy equal to [`clone`](Clone::clone)'s whose header names and values are shared
    /// through `cache` with the copies made before ([`Headers::clone_shared`]), with room for
    /// `additional` more headers: for a processor that sends copies of many records whose
    /// headers repeat, one allocation fewer per header.
    ///
    /// ```
    /// use iot_core::{headers::HeaderCache, Record};
    ///
    /// let mut cache = HeaderCache::new();
    /// let record = Record::new("sensor-17", "{}").with_header("content-type", "application/json");
    /// let mut copy = record.clone_sharing(&mut cache, 1);
    /// assert_eq!(copy, record);
    /// copy.headers.insert("customer", "contoso");
    /// ```
    pub fn clone_sharing(&self, cache: &mut HeaderCache, additional: usize) -> Record {
        Record {
            key: self.key.clone(),
            headers: self.headers.clone_shared(cache, additional),
            device_time: self.device_time,
            payload: self.payload.clone(),
        }
    }

    /// The record's size as the log counts it against limits, read budgets and retention: key,
    /// header names and values, and payload, plus a small fixed overhead. This is also its encoded
    /// size in a `FileLog` segment.
    pub fn size_bytes(&self) -> usize {
        RECORD_OVERHEAD
            + self.key.len()
            + self.headers.size_bytes(HEADER_OVERHEAD)
            + self.payload.len()
    }
}

/// A record as stored: the appended [`Record`] with the position and time the log gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredRecord {
    /// The partition that holds it.
    pub partition: PartitionId,
    /// Its offset within the partition.
    pub offset: Offset,
    /// When the log accepted it. Never decreases within a partition.
    pub enqueued_time: Timestamp,
    /// What was appended.
    pub record: Record,
}

impl StoredRecord {
    /// Assembles a stored record; used by `Log` implementations.
    pub fn new(
        partition: PartitionId,
        offset: Offset,
        enqueued_time: Timestamp,
        record: Record,
    ) -> Self {
        StoredRecord {
            partition,
            offset,
            enqueued_time,
            record,
        }
    }
}
