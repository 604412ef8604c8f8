//! Where denials go: an [`AuditSink`], with one that appends to a log topic and one that keeps
//! records in memory.
//!
//! An [`AccessAuditRecord`] serializes to the same JSON as the provisioning crate's audit records
//! (`{"time", "actor", "operation", "deviceId"?, "outcome", "error", "message"}`), so one consumer
//! of an `audit` topic reads both. It never holds a secret: no password, token or digest.

use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use iot_core::{Log, Producer, Record, Timestamp, headers};
use serde::{Deserialize, Serialize};
use tracing::error;

/// One audited refusal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct AccessAuditRecord {
    /// When, Unix milliseconds.
    pub time: u64,
    /// Who asked: the user name as presented (for a failed login, possibly not a user at all).
    pub actor: String,
    /// What was asked: a permission's name (`"invokeMethod"`, ...) or `"login"`.
    pub operation: String,
    /// The device targeted, if any (none for hub-wide calls and logins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Always `"denied"`.
    pub outcome: String,
    /// The reason's kind (`"not_granted"`, `"unknown_user"`, `"user_disabled"`,
    /// `"unavailable"`, `"login_refused"`).
    pub error: String,
    /// A sentence for people.
    pub message: String,
}

impl AccessAuditRecord {
    /// A denial of `operation` to `actor` on `device` (if any) for the reason `kind`.
    pub fn denied(
        actor: &str,
        operation: &str,
        device: Option<&str>,
        kind: &str,
        message: String,
    ) -> Self {
        AccessAuditRecord {
            time: Timestamp::now().as_unix_millis(),
            actor: actor.to_owned(),
            operation: operation.to_owned(),
            device_id: device.map(str::to_owned),
            outcome: "denied".to_owned(),
            error: kind.to_owned(),
            message,
        }
    }

    /// Decodes a record's payload.
    pub fn from_payload(payload: &[u8]) -> Option<Self> {
        serde_json::from_slice(payload).ok()
    }

    /// The log record: keyed by the device (so one device's records stay in order), or by the
    /// actor for hub-wide denials.
    pub fn to_record(&self) -> Record {
        let payload = serde_json::to_vec(self).unwrap_or_default();
        let key = self.device_id.clone().unwrap_or_else(|| self.actor.clone());
        Record::new(key, payload)
            .with_header(headers::SUBJECT, "audit")
            .with_header(headers::CONTENT_TYPE, "application/json")
    }
}

/// Receives every denial. Recording must not fail the check: a sink reports its own failures
/// (to `tracing`) and returns.
#[async_trait]
pub trait AuditSink: Send + Sync + Debug + 'static {
    /// Records one denial.
    async fn record(&self, record: AccessAuditRecord);
}

#[async_trait]
impl<T: AuditSink + ?Sized> AuditSink for Arc<T> {
    async fn record(&self, record: AccessAuditRecord) {
        (**self).record(record).await;
    }
}

/// Writes denials to `tracing` only (at `warn`): the default sink.
#[derive(Debug, Default, Clone, Copy)]
pub struct TracingAuditSink;

#[async_trait]
impl AuditSink for TracingAuditSink {
    async fn record(&self, r: AccessAuditRecord) {
        tracing::warn!(
            actor = %r.actor, operation = %r.operation, device = ?r.device_id,
            reason = %r.error, "access denied"
        );
    }
}

/// Appends denials to a log (the `audit` topic beside provisioning's records).
#[derive(Debug, Clone)]
pub struct LogAuditSink {
    producer: Producer,
}

impl LogAuditSink {
    /// A sink appending to `log`.
    pub fn new(log: Arc<dyn Log>) -> Self {
        LogAuditSink {
            producer: Producer::new(log),
        }
    }
}

#[async_trait]
impl AuditSink for LogAuditSink {
    async fn record(&self, record: AccessAuditRecord) {
        if let Err(e) = self.producer.send(record.to_record()).await {
            // The check's answer stands; losing the record is reported where operators look.
            error!(error = %e, actor = %record.actor, "an access audit record could not be appended");
        }
    }
}

/// Keeps denials in memory, for tests and small tools.
#[derive(Debug, Default, Clone)]
pub struct MemoryAuditSink {
    records: Arc<Mutex<Vec<AccessAuditRecord>>>,
}

impl MemoryAuditSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every record so far, oldest first.
    pub fn records(&self) -> Vec<AccessAuditRecord> {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl AuditSink for MemoryAuditSink {
    async fn record(&self, record: AccessAuditRecord) {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(record);
    }
}
