//! Metadata sync: device metadata-update messages into the device registry, through the
//! provisioning API.

use std::sync::Arc;

use async_trait::async_trait;
use iot_core::{PartitionId, StoredRecord};
use iot_provisioning::Provisioning;
use serde_json::Value;
use tracing::debug;

use super::device_of;
use crate::error::{Error, Result};
use crate::processor::{Context, ProcessorFactory, StreamProcessor};

/// The `subject` header value of a metadata-update message.
pub const METADATA_SUBJECT: &str = "metadata";

/// Applies device metadata-update messages through [`Provisioning::update`]: a record whose
/// `subject` header is [`METADATA_SUBJECT`] (or the subject set with [`subject`](Self::subject))
/// carries a JSON object that is merged (RFC 7396) into the `metadata` of the device named by its
/// key; other records are ignored.
///
/// The update goes through the same door as every other change to a device, not around it: the
/// provisioner's workflow hooks run for it (and may veto it) and it leaves a record on the
/// `audit` topic. Give it a provisioner with its own actor
/// ([`Provisioner::with_actor`](iot_provisioning::Provisioner::with_actor), e.g.
/// `"metadata-sync"`) so the audit trail tells device-sent updates from operators' ones.
///
/// A device that does not exist, a patch the registry refuses, or a hook's veto fails the record
/// (it is not retried and ends in the dead-letter topic); store outages and failing hooks are
/// retried. Delivery is at-least-once: after a restart, updates since the last checkpoint are
/// applied again in log order (hooks and audit records included), which converges for the usual
/// flat metadata.
#[derive(Debug, Clone)]
pub struct MetadataSync {
    provisioning: Arc<dyn Provisioning>,
    subject: String,
}

impl MetadataSync {
    /// Metadata sync through `provisioning`.
    pub fn new(provisioning: Arc<dyn Provisioning>) -> Self {
        MetadataSync {
            provisioning,
            subject: METADATA_SUBJECT.to_owned(),
        }
    }

    /// Treats records with this `subject` as metadata updates.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = subject.into();
        self
    }
}

/// Maps a provisioning error to the stream kind that decides between retry and dead letter.
fn provisioning_error(e: iot_provisioning::Error) -> Error {
    use iot_provisioning::Error as P;
    use iot_registry::Error as R;
    match e {
        P::NotFound { .. } => Error::NotFound {
            what: e.to_string(),
        },
        // What no retry can change: the message itself is refused.
        P::Vetoed { .. }
        | P::MetadataNotAnObject { .. }
        | P::InvalidInput { .. }
        | P::Registry(
            R::InvalidDocument { .. } | R::DocumentTooLarge { .. } | R::DocumentTooDeep { .. },
        ) => Error::invalid(e.to_string()),
        // Store outages, pending recovery, a hook whose backend is down: worth retrying.
        other => Error::External {
            what: "provisioning",
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
            self.provisioning
                .update(&device, patch, None)
                .await
                .map_err(provisioning_error)?;
            debug!(device = %device, offset = record.offset.0, "metadata update applied");
        }
        Ok(())
    }
}

impl ProcessorFactory for MetadataSync {
    fn create(&self, _partition: PartitionId) -> Result<Box<dyn StreamProcessor>> {
        Ok(Box::new(self.clone()))
    }
}
