//! The object-storage endpoint: an endpoint's batches as objects in any `object_store` store
//! (local files built in; S3 and Azure Blob with features `s3` and `azure`, configured by a
//! [`StoreConfig`] URL), named as IoT Hub names blobs, encoded as JSON lines or (feature
//! `parquet`) Parquet.

mod encoding;
mod json_lines;
mod naming;
#[cfg(feature = "parquet")]
mod parquet;
mod store;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

pub use encoding::BatchEncoder;
pub use json_lines::JsonLines;
pub use naming::ObjectNaming;
#[cfg(feature = "parquet")]
pub use parquet::Parquet;
pub use store::{StoreConfig, StoreConfigError};

use super::{Sink, SinkBatch, SinkError};

/// Writes each batch as one object named by [`ObjectNaming`] (the batch's first record: its
/// partition, minute and offset) and encoded by a [`BatchEncoder`].
///
/// One `put` per batch: stores make a put atomic (local files: a staged file renamed into place,
/// so a crash leaves either no object or the whole object, plus possibly a stray `…#<n>`
/// staging file), and a batch written again after a crash has the same records and the same
/// name, so it replaces the first copy: no batch is stored twice, none is missing.
pub struct ObjectSink {
    name: String,
    store: Arc<dyn ObjectStore>,
    naming: ObjectNaming,
    encoder: Arc<dyn BatchEncoder>,
}

impl fmt::Debug for ObjectSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The store's Display names its kind and bucket, never credentials.
        f.debug_struct("ObjectSink")
            .field("name", &self.name)
            .field("store", &self.store.to_string())
            .field("naming", &self.naming)
            .field("encoder", &self.encoder.extension())
            .finish()
    }
}

impl ObjectSink {
    /// A sink named `name` (for logs and dead letters) writing to `store`.
    pub fn new(
        name: impl Into<String>,
        store: Arc<dyn ObjectStore>,
        naming: ObjectNaming,
        encoder: Arc<dyn BatchEncoder>,
    ) -> Self {
        ObjectSink {
            name: name.into(),
            store,
            naming,
            encoder,
        }
    }

    /// A sink writing under directory `root` of the local file system, syncing each object to
    /// disk before it counts as written.
    pub fn local(
        name: impl Into<String>,
        root: impl AsRef<std::path::Path>,
        naming: ObjectNaming,
        encoder: Arc<dyn BatchEncoder>,
    ) -> crate::Result<Self> {
        let root = root.as_ref();
        let store = object_store::local::LocalFileSystem::new_with_prefix(root)
            .map_err(|e| crate::Error::invalid(format!("object store at {}: {e}", root.display())))?
            .with_fsync(true);
        Ok(Self::new(name, Arc::new(store), naming, encoder))
    }

    /// A sink writing to the store `config` names (`file:///dir`, `s3://bucket/prefix`,
    /// `az://container/prefix`). No request is made here; [`StoreConfig::connect`] checks the
    /// store first.
    pub fn from_config(
        name: impl Into<String>,
        config: &StoreConfig,
        naming: ObjectNaming,
        encoder: Arc<dyn BatchEncoder>,
    ) -> Result<Self, StoreConfigError> {
        Ok(Self::new(name, config.build()?, naming, encoder))
    }

    /// The name the batch starting with `first` is stored under.
    pub fn object_name(&self, first: &iot_core::StoredRecord) -> String {
        self.naming.name(first, self.encoder.extension())
    }
}

#[async_trait]
impl Sink for ObjectSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn write(&self, batch: SinkBatch<'_>) -> Result<(), SinkError> {
        let Some(first) = batch.first() else {
            return Ok(());
        };
        let name = self.object_name(first);
        let path = Path::parse(&name).map_err(|e| SinkError::Rejected {
            reason: format!("object name {name}: {e}"),
        })?;
        let bytes = self.encoder.encode(batch.records)?;
        self.store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|e| match e {
                object_store::Error::InvalidPath { .. } => SinkError::Rejected {
                    reason: format!("put {name}: {e}"),
                },
                _ => SinkError::Unavailable {
                    reason: format!("put {name}: {e}"),
                },
            })?;
        Ok(())
    }
}
