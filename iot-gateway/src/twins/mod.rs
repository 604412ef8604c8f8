//! Twin stores: each device's desired and reported properties with their versions.
//!
//! As with the inbox, the rules live once (a private `TwinState`) and the stores decide where the
//! state lives: [`MemoryTwinStore`] or the journaled [`FileTwinStore`]. The twin documents
//! themselves are [`Twin`], [`TwinSection`] and [`DesiredPatch`].
//!
//! # Invariants
//!
//! * A section is always a JSON object; its version starts at 0 and grows by exactly one per
//!   accepted patch.
//! * A patch is a JSON object applied as an RFC 7396 merge patch; one that would make the section
//!   larger than the limit (serialized), or nest deeper than the limit, is refused and changes
//!   nothing. [`Twin::patched`] is these rules as one function, for every store.
//! * A reopened durable store returns exactly the acknowledged twins; a removed twin stays
//!   removed.
//!
//! The `testkit` feature's `testkit::twin_store` checks them.

mod document;
mod file;
mod memory;
mod patch;
mod state;

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use iot_core::{DeviceId, ModuleId};
use serde_json::Value;

use crate::error::Result;
pub use document::{DesiredPatch, Twin, TwinSection};
pub use file::{FileTwinStore, FileTwinStoreConfig};
pub use memory::MemoryTwinStore;

/// Which section of a twin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Section {
    /// Written by the back end.
    Desired,
    /// Written by the device.
    Reported,
}

impl Section {
    /// `"desired"` or `"reported"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Desired => "desired",
            Section::Reported => "reported",
        }
    }
}

/// Limits on twin sections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TwinLimits {
    /// Largest section, serialized as JSON, in bytes. Default 32 KiB.
    pub max_section_bytes: usize,
    /// Deepest nesting of a section or patch. Default 10.
    pub max_depth: usize,
}

impl Default for TwinLimits {
    fn default() -> Self {
        TwinLimits {
            max_section_bytes: 32 * 1024,
            max_depth: 10,
        }
    }
}

/// Chainable setters: the struct is `non_exhaustive`, so callers outside this crate start from
/// [`Default`] and change what they need.
impl TwinLimits {
    /// Sets [`max_section_bytes`](Self::max_section_bytes).
    pub fn max_section_bytes(mut self, max_section_bytes: usize) -> Self {
        self.max_section_bytes = max_section_bytes;
        self
    }

    /// Sets [`max_depth`](Self::max_depth).
    pub fn max_depth(mut self, max_depth: usize) -> Self {
        self.max_depth = max_depth;
        self
    }
}

/// Where twins live. A device without a stored twin has the empty twin (both sections `{}` at
/// version 0). Implementations hold the invariants of the [module docs](self) (a `patch` is
/// [`Twin::patched`] applied atomically to the stored twin); the `testkit` feature's
/// `testkit::twin_store::run_all` checks them.
#[async_trait]
pub trait TwinStore: Send + Sync + Debug + 'static {
    /// The twin of `device`.
    async fn get(&self, device: &DeviceId) -> Result<Twin>;

    /// Merges `patch` into a section if its version is `if_version` (when given); returns the
    /// whole twin after the change.
    async fn patch(
        &self,
        device: &DeviceId,
        section: Section,
        patch: &Value,
        if_version: Option<u64>,
        limits: TwinLimits,
    ) -> Result<Twin>;

    /// Forgets the twin of `device` (it was deleted).
    async fn remove(&self, device: &DeviceId) -> Result<()>;

    /// The twin of module `module` of `device` (IoT Hub's module twin; the empty twin if none
    /// is stored). Module twins follow the same rules as device twins and are kept apart from
    /// them: no module twin is ever a device's twin or another module's. The provided method
    /// refuses ([`Error::InvalidInput`](crate::Error::InvalidInput)): a store that keeps no
    /// module twins says so instead of mixing them up.
    async fn get_module(&self, device: &DeviceId, module: &ModuleId) -> Result<Twin> {
        Err(no_module_twins(device, module))
    }

    /// [`patch`](Self::patch) for a module's twin; the provided method refuses.
    async fn patch_module(
        &self,
        device: &DeviceId,
        module: &ModuleId,
        section: Section,
        patch: &Value,
        if_version: Option<u64>,
        limits: TwinLimits,
    ) -> Result<Twin> {
        let _ = (section, patch, if_version, limits);
        Err(no_module_twins(device, module))
    }

    /// Forgets a module's twin (the module was deleted); the provided method refuses.
    async fn remove_module(&self, device: &DeviceId, module: &ModuleId) -> Result<()> {
        Err(no_module_twins(device, module))
    }
}

fn no_module_twins(device: &DeviceId, module: &ModuleId) -> crate::Error {
    crate::Error::invalid(format!(
        "this twin store keeps no module twins (module {device}/{module})"
    ))
}

macro_rules! forward_twins {
    ($ptr:ident) => {
        #[deny(clippy::missing_trait_methods)]
        #[async_trait]
        impl<T: TwinStore + ?Sized> TwinStore for $ptr<T> {
            async fn get(&self, device: &DeviceId) -> Result<Twin> {
                (**self).get(device).await
            }
            async fn patch(
                &self,
                device: &DeviceId,
                section: Section,
                patch: &Value,
                if_version: Option<u64>,
                limits: TwinLimits,
            ) -> Result<Twin> {
                (**self)
                    .patch(device, section, patch, if_version, limits)
                    .await
            }
            async fn remove(&self, device: &DeviceId) -> Result<()> {
                (**self).remove(device).await
            }
            async fn get_module(&self, device: &DeviceId, module: &ModuleId) -> Result<Twin> {
                (**self).get_module(device, module).await
            }
            async fn patch_module(
                &self,
                device: &DeviceId,
                module: &ModuleId,
                section: Section,
                patch: &Value,
                if_version: Option<u64>,
                limits: TwinLimits,
            ) -> Result<Twin> {
                (**self)
                    .patch_module(device, module, section, patch, if_version, limits)
                    .await
            }
            async fn remove_module(&self, device: &DeviceId, module: &ModuleId) -> Result<()> {
                (**self).remove_module(device, module).await
            }
        }
    };
}

forward_twins!(Arc);
forward_twins!(Box);

// The setters are the only way other crates can build these (`non_exhaustive`): each must set
// its own field and nothing else. Values differ from the defaults and from each other, so a
// setter that writes the wrong field leaves the expected one at its default and fails.
#[cfg(test)]
mod setter_tests {
    use super::*;

    #[test]
    fn each_setter_sets_its_own_field() {
        let built = TwinLimits::default().max_section_bytes(100).max_depth(3);
        let expected = TwinLimits {
            max_section_bytes: 100,
            max_depth: 3,
        };
        assert_eq!(built, expected);
    }
}
