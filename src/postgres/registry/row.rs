//! Rows to records, documents to the text PostgreSQL stores, and errors to the crate's.

use iot_core::{DeviceId, Timestamp};
use iot_registry::{DeviceDocument, DeviceRecord, ETag, Error, Result};
use serde_json::Value;
use tokio_postgres::Row;

use crate::postgres::PgError;

/// A PostgreSQL failure as the registry reports it.
pub(crate) fn backend(e: PgError) -> Error {
    let retryable = e.is_retryable();
    Error::backend("postgres", e, retryable)
}

/// A row that does not decode: the table holds something this build did not write.
fn corrupt(reason: String) -> Error {
    Error::backend("postgres", reason, false)
}

/// The etag of write number `n` (the sequence's value), as the crate's registries spell theirs.
pub(crate) fn etag(n: i64) -> ETag {
    ETag::new(format!("{n:x}"))
}

/// A record from the columns `device_id, doc::text, etag, created_us, updated_us`.
pub(crate) fn record(row: &Row) -> Result<DeviceRecord> {
    let id: &str = row.get(0);
    let doc: &str = row.get(1);
    let tag: i64 = row.get(2);
    let created: i64 = row.get(3);
    let updated: i64 = row.get(4);
    let device_id = DeviceId::new(id)
        .map_err(|e| corrupt(format!("stored device id {id:?} is invalid: {e}")))?;
    let document: DeviceDocument = serde_json::from_str(doc)
        .map_err(|e| corrupt(format!("stored document of {id} does not decode: {e}")))?;
    let micros = |t: i64| Timestamp::from_unix_micros(u64::try_from(t).unwrap_or(0));
    Ok(DeviceRecord::new(
        device_id,
        document,
        etag(tag),
        micros(created),
        micros(updated),
    ))
}

/// The document as the text bound to a `$n::text::jsonb` parameter. PostgreSQL text (and so
/// `jsonb`) cannot hold U+0000: a document with it is refused as invalid rather than failing in
/// the database.
pub(crate) fn document_text(doc: &DeviceDocument) -> Result<String> {
    let mut stack: Vec<&Value> = doc.metadata.values().chain(doc.tags.values()).collect();
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) if s.contains('\0') => {
                return Err(Error::InvalidDocument {
                    path: "$".into(),
                    reason: "the PostgreSQL registry cannot store the character U+0000".into(),
                });
            }
            Value::Array(items) => stack.extend(items),
            Value::Object(m) => stack.extend(m.values()),
            _ => {}
        }
    }
    serde_json::to_string(doc).map_err(|e| Error::InvalidDocument {
        path: "$".into(),
        reason: format!("cannot be encoded: {e}"),
    })
}
