//! What provisioning calls take and return.

use iot_core::DeviceId;
use iot_identity::{Credentials, DeviceIdentity, DeviceStatus, GenerationId};
use iot_registry::DeviceRecord;
use serde_json::Value;

use crate::error::Result;

/// A device to register.
#[derive(Clone, Debug)]
pub struct RegisterRequest {
    /// The id; when `None` the provisioner assigns one.
    pub id: Option<DeviceId>,
    /// The credentials; when `None`, two random 32-byte symmetric keys are generated.
    pub credentials: Option<Credentials>,
    /// The registry metadata: must be a JSON object.
    pub metadata: Value,
}

impl RegisterRequest {
    /// A request for `id` with generated keys and `metadata`.
    pub fn new(id: DeviceId, metadata: Value) -> Self {
        RegisterRequest {
            id: Some(id),
            credentials: None,
            metadata,
        }
    }

    /// A request with a service-assigned id and generated keys.
    pub fn assigned(metadata: Value) -> Self {
        RegisterRequest {
            id: None,
            credentials: None,
            metadata,
        }
    }

    /// The same request with `credentials` instead of generated keys.
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }
}

/// A device as provisioning sees it: its identity's system attributes (never its credentials)
/// and its registry record.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Device {
    /// The device id.
    pub id: DeviceId,
    /// Enabled or disabled.
    pub status: DeviceStatus,
    /// Which life of the id this is.
    pub generation_id: GenerationId,
    /// The registry record (metadata, tags, etag).
    pub record: DeviceRecord,
}

impl Device {
    /// The device made of its identity (status and generation; never its credentials) and its
    /// registry record. `Provisioning` implementations outside this crate build the devices they
    /// return with it.
    pub fn new(identity: &DeviceIdentity, record: DeviceRecord) -> Self {
        Device {
            id: identity.id.clone(),
            status: identity.status.clone(),
            generation_id: identity.generation_id,
            record,
        }
    }
}

/// What [`register`](crate::Provisioning::register) returns: one of the two calls that ever
/// return credentials. `Debug` redacts keys.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Registered {
    /// The device as stored.
    pub device: Device,
    /// Its credentials (generated ones, or those passed in). Hand them to the device.
    pub credentials: Credentials,
}

impl Registered {
    /// A registered `device` with the `credentials` to hand to it (for `Provisioning`
    /// implementations outside this crate).
    pub fn new(device: Device, credentials: Credentials) -> Self {
        Registered {
            device,
            credentials,
        }
    }
}

/// How [`bulk`](crate::Provisioning::bulk) treats a request with failing items.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BulkMode {
    /// Either every item is registered or none is: one invalid item (or a store failure) fails
    /// them all, the others with [`Error::Aborted`](crate::Error::Aborted).
    AllOrNothing,
    /// Every valid item is registered; each invalid one gets its own error.
    BestEffort,
}

/// The result of one item of a bulk request, in request order.
pub type BulkItemResult = Result<Registered>;
