//! The audit trail: one record per operation (per item of a bulk request) on the `audit` topic.
//!
//! A record is keyed by the device id (so one device's records stay in order) and its payload is
//! JSON: `{"time", "actor", "operation", "deviceId", "outcome": "ok" | "error", "error"?,
//! "message"?}`. It never holds a secret: only kinds and messages of errors (which carry none)
//! and no credential, token or metadata value. The record is appended after the operation, with
//! its outcome; if the append fails the operation still stands and the failure is logged.

use std::sync::Arc;

use iot_core::{DeviceId, Log, Producer, Record, Timestamp, headers};
use serde::{Deserialize, Serialize};
use tracing::error;

use crate::error::Error;
use crate::hooks::Operation;

/// One audit record, as written to the `audit` topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct AuditRecord {
    /// When the operation finished, Unix milliseconds.
    pub time: u64,
    /// Who asked.
    pub actor: String,
    /// What was asked (`"register"`, …).
    pub operation: String,
    /// The device (empty in the access matrix's records of hub-wide denials and logins, which
    /// leave it out: `iot_identity::access::AccessAuditRecord` writes the same shape).
    #[serde(default)]
    pub device_id: String,
    /// `"ok"` or `"error"`.
    pub outcome: String,
    /// The error's kind ([`Error::kind`]), if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The error's message, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl AuditRecord {
    pub(crate) fn new(
        actor: &str,
        operation: Operation,
        id: &DeviceId,
        outcome: Result<(), &Error>,
    ) -> Self {
        AuditRecord {
            time: Timestamp::now().as_unix_millis(),
            actor: actor.to_owned(),
            operation: operation.name().to_owned(),
            device_id: id.as_str().to_owned(),
            outcome: if outcome.is_ok() { "ok" } else { "error" }.to_owned(),
            error: outcome.err().map(|e| e.kind().to_owned()),
            message: outcome.err().map(|e| e.to_string()),
        }
    }

    /// Decodes a record's payload.
    pub fn from_payload(payload: &[u8]) -> Option<Self> {
        serde_json::from_slice(payload).ok()
    }

    fn to_record(&self) -> Record {
        let payload = serde_json::to_vec(self).unwrap_or_default();
        Record::new(self.device_id.clone(), payload)
            .with_header(headers::SUBJECT, "audit")
            .with_header(headers::CONTENT_TYPE, "application/json")
    }
}

/// Appends audit records to a log (or nowhere).
#[derive(Clone, Debug, Default)]
pub(crate) struct AuditTrail {
    producer: Option<Producer>,
}

impl AuditTrail {
    pub(crate) fn new(log: Option<Arc<dyn Log>>) -> Self {
        AuditTrail {
            producer: log.map(Producer::new),
        }
    }

    pub(crate) async fn write(&self, records: Vec<AuditRecord>) {
        let Some(producer) = &self.producer else {
            return;
        };
        if records.is_empty() {
            return;
        }
        let count = records.len();
        let batch = records.iter().map(AuditRecord::to_record).collect();
        if let Err(e) = producer.send_batch(batch).await {
            error!(error = %e, records = count, "audit records could not be appended");
        }
    }
}
