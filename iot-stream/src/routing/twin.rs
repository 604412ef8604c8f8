//! Where routing reads twins from: a small trait, so that conditions over `$twin` and
//! enrichments from `$twin.tags` work over the hub's twin store and registry as well as over a
//! map in tests.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::error::Result;

/// Looks up a device's (or module's) twin as routing reads it:
/// `{"tags": {…}, "properties": {"desired": {…}, "reported": {…}}}`.
///
/// # Contract
///
/// * `Ok(None)` means the device has no twin: every `$twin` path is then undefined.
/// * An error fails the batch; the processor host retries it (use a retryable error such as
///   [`Error::External`](crate::Error::External) for an unavailable store).
/// * Lookups happen once per device per batch, and only for routes or enrichments that read the
///   twin, so the implementation need not cache.
#[async_trait]
pub trait TwinLookup: Send + Sync + Debug + 'static {
    /// The twin of `device` (of its module `module` when the message came from a module: IoT
    /// Hub queries the module twin then, which does not inherit the device's tags).
    async fn twin(&self, device: &str, module: Option<&str>) -> Result<Option<Value>>;
}

#[async_trait]
impl<T: TwinLookup + ?Sized> TwinLookup for Arc<T> {
    async fn twin(&self, device: &str, module: Option<&str>) -> Result<Option<Value>> {
        (**self).twin(device, module).await
    }
}

/// Twins held in memory, for tests and for hubs that keep tags in configuration.
#[derive(Clone, Debug, Default)]
pub struct MemoryTwins {
    twins: Arc<RwLock<HashMap<TwinKey, Value>>>,
}

/// A device and, for a module twin, the module.
type TwinKey = (String, Option<String>);

impl MemoryTwins {
    /// No twins.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the twin of `device` from its parts.
    pub fn set(&self, device: &str, tags: Value, desired: Value, reported: Value) {
        self.set_twin(
            device,
            None,
            json!({"tags": tags, "properties": {"desired": desired, "reported": reported}}),
        );
    }

    /// Sets the whole twin document of `device` (or of its `module`).
    pub fn set_twin(&self, device: &str, module: Option<&str>, twin: Value) {
        self.twins
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((device.to_owned(), module.map(str::to_owned)), twin);
    }

    /// Forgets the twin of `device`.
    pub fn remove(&self, device: &str) {
        self.twins
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|(d, _), _| d != device);
    }
}

#[async_trait]
impl TwinLookup for MemoryTwins {
    async fn twin(&self, device: &str, module: Option<&str>) -> Result<Option<Value>> {
        Ok(self
            .twins
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(device.to_owned(), module.map(str::to_owned)))
            .cloned())
    }
}
