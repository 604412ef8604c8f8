//! Parquet: one file per batch, one row per record (feature `parquet`).

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, MapBuilder, StringBuilder, TimestampMicrosecondBuilder, UInt32Builder,
    UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use iot_core::StoredRecord;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::encoding::BatchEncoder;
use crate::sinks::SinkError;

/// A Parquet file per batch (Snappy-compressed, one row group), with the columns
///
/// | column | type |
/// |---|---|
/// | `partition` | uint32 |
/// | `offset` | uint64 |
/// | `enqueued_time` | timestamp[us, UTC] |
/// | `device_time` | timestamp[us, UTC], null when the device gave none |
/// | `key` | string (the device id) |
/// | `properties` | map<string, string> (headers: application and system properties, enrichments) |
/// | `body` | binary |
///
/// pyarrow, DuckDB and Spark read it as it is (`pyarrow.parquet.read_table`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Parquet;

impl Parquet {
    /// The batch as an Arrow record batch with the columns above.
    pub fn record_batch(records: &[StoredRecord]) -> Result<RecordBatch, SinkError> {
        let n = records.len();
        let mut partition = UInt32Builder::with_capacity(n);
        let mut offset = UInt64Builder::with_capacity(n);
        let mut enqueued = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut device = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut key = StringBuilder::with_capacity(n, n * 16);
        let mut properties = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        let mut body =
            BinaryBuilder::with_capacity(n, records.iter().map(|r| r.record.payload.len()).sum());
        let micros = |t: u64| i64::try_from(t).unwrap_or(i64::MAX);
        for stored in records {
            let record = &stored.record;
            partition.append_value(stored.partition.0);
            offset.append_value(stored.offset.0);
            enqueued.append_value(micros(stored.enqueued_time.as_unix_micros()));
            device.append_option(record.device_time.map(|t| micros(t.as_unix_micros())));
            key.append_value(&record.key);
            for (name, value) in record.headers.iter() {
                properties.keys().append_value(name);
                properties.values().append_value(value);
            }
            properties.append(true).map_err(rejected)?;
            body.append_value(&record.payload);
        }
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("partition", Arc::new(partition.finish())),
            ("offset", Arc::new(offset.finish())),
            ("enqueued_time", Arc::new(enqueued.finish())),
            ("device_time", Arc::new(device.finish())),
            ("key", Arc::new(key.finish())),
            ("properties", Arc::new(properties.finish())),
            ("body", Arc::new(body.finish())),
        ];
        RecordBatch::try_from_iter(columns).map_err(rejected)
    }

    /// The writer settings of every file.
    pub fn writer_properties() -> WriterProperties {
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build()
    }
}

fn rejected(e: impl std::fmt::Display) -> SinkError {
    SinkError::Rejected {
        reason: format!("Parquet encoding: {e}"),
    }
}

impl BatchEncoder for Parquet {
    fn extension(&self) -> &str {
        "parquet"
    }

    fn encode(&self, records: &[StoredRecord]) -> Result<Vec<u8>, SinkError> {
        let batch = Self::record_batch(records)?;
        let mut writer =
            ArrowWriter::try_new(Vec::new(), batch.schema(), Some(Self::writer_properties()))
                .map_err(rejected)?;
        writer.write(&batch).map_err(rejected)?;
        writer.into_inner().map_err(rejected)
    }
}
