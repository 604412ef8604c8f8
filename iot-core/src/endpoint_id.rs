//! The key of everything a hub keeps per connected identity: a device, or one of its modules.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::device_id::DeviceId;
use crate::module_id::ModuleId;

/// A device, or a module of a device: what authenticates, holds a session, has a twin and
/// answers direct methods. A module is told apart from its device by `module` alone, so it is
/// never mistaken for its device (or for another module) by a key that happens to look alike.
///
/// `Display` is IoT Hub's client id: `{deviceId}` or `{deviceId}/{moduleId}` (unambiguous, since
/// neither id may contain `/`). Cloning is cheap (both ids are shared strings).
///
/// ```
/// use iot_core::{DeviceId, EndpointId, ModuleId};
///
/// let device: DeviceId = "edge-1".parse()?;
/// let module = EndpointId::module(device.clone(), "filter".parse::<ModuleId>()?);
/// assert_eq!(module.to_string(), "edge-1/filter");
/// assert_ne!(module, EndpointId::device(device));
/// # Ok::<(), iot_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EndpointId {
    /// The device (the module's device, for a module).
    pub device: DeviceId,
    /// The module, or `None` for the device itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<ModuleId>,
}

impl EndpointId {
    /// The device itself.
    pub fn device(device: DeviceId) -> Self {
        EndpointId {
            device,
            module: None,
        }
    }

    /// Module `module` of `device`.
    pub fn module(device: DeviceId, module: ModuleId) -> Self {
        EndpointId {
            device,
            module: Some(module),
        }
    }

    /// Whether this is a module.
    pub fn is_module(&self) -> bool {
        self.module.is_some()
    }
}

impl From<DeviceId> for EndpointId {
    fn from(device: DeviceId) -> Self {
        EndpointId::device(device)
    }
}

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.module {
            Some(module) => write!(f, "{}/{module}", self.device),
            None => write!(f, "{}", self.device),
        }
    }
}

impl fmt::Debug for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EndpointId({self})")
    }
}
