//! Metadata sync: device metadata-update messages into the device registry.

use std::sync::Arc;

use async_trait::async_trait;
use iot_core::{PartitionId, StoredRecord};
use iot_registry::Registry;
use serde_json::{Value, json};

use super::device_of;
use crate::error::{Error, Result};
use crate::processor::{Context, ProcessorFactory, StreamProcessor};

/// The `subject` header value of a metadata-update message.
pub const METADATA_SUBJECT: &str = "metadata";

/// Applies device metadata-update messages to the [`Registry`]: a record whose `subject` header is
/// [`METADATA_SUBJECT`] (or the subject set with [`subject`](Self::subject)) carries a JSON object
/// that is merged (RFC 7396) into the `metadata` of the device named by its key; other records are
/// ignored.
///
/// A device missing from the registry, or a patch the registry refuses, fails the record (it is
/// not retried and ends in the dead-letter topic); registry outages are retried. Delivery is
/// at-least-once: after a restart, updates since the last checkpoint are merged again in log
/// order, which converges for the usual flat metadata.
#[derive(Debug, Clone)]
pub struct MetadataSync {
    registry: Arc<dyn Registry>,
    subject: String,
}

impl MetadataSync {
    /// Metadata sync into `registry`.
    pub fn new(registry: Arc<dyn Registry>) -> Self {
        MetadataSync {
            registry,
            subject: METADATA_SUBJECT.to_owned(),
        }
    }

    /// Treats records with this `subject` as metadata updates.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = subject.into();
        self
    }
}

fn registry_error(e: iot_registry::Error) -> Error {
    use iot_registry::Error as R;
    match e {
        R::NotFound { .. } => Error::NotFound {
            what: e.to_string(),
        },
        R::InvalidDocument { .. } | R::DocumentTooLarge { .. } | R::DocumentTooDeep { .. } => {
            Error::invalid(e.to_string())
        }
        other => Error::External {
            what: "registry",
            reason: other.to_string(),
        },
    }
}

#[async_trait]
impl StreamProcessor for MetadataSync {
    async fn process(&mut self, batch: &[StoredRecord], _ctx: &mut Context) -> Result<()> {
        for record in batch {
            if record.record.headers.get(iot_core::headers::SUBJECT) != Some(self.subject.as_str())
            {
                continue;
            }
            let device = device_of(record)?;
            let patch: Value = serde_json::from_slice(&record.record.payload)
                .map_err(|e| Error::invalid(format!("metadata update is not JSON: {e}")))?;
            if !patch.is_object() {
                return Err(Error::invalid("a metadata update must be a JSON object"));
            }
            self.registry
                .merge(&device, &json!({ "metadata": patch }), None)
                .await
                .map_err(registry_error)?;
        }
        Ok(())
    }
}

impl ProcessorFactory for MetadataSync {
    fn create(&self, _partition: PartitionId) -> Result<Box<dyn StreamProcessor>> {
        Ok(Box::new(self.clone()))
    }
}
