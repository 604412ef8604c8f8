//! The `Provisioning` trait.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use iot_core::DeviceId;
use iot_identity::{Credentials, SasToken};
use iot_registry::ETag;
use serde_json::Value;

use crate::error::Result;
use crate::types::{BulkItemResult, BulkMode, Device, RegisterRequest, Registered};

/// The one door through which devices enter and leave: every change to the identity store and
/// the registry goes through it.
///
/// # Contract
///
/// [`testkit`](crate::testkit) (feature `testkit`) checks these on any implementation.
///
/// * **Agreement.** A device exists in the identity store exactly when it has a registry record,
///   whenever no call is in flight — also after any store failure or crash, once recovery ran.
/// * **Secrets.** Only [`register`](Provisioning::register), [`bulk`](Provisioning::bulk) and
///   [`reset_credentials`](Provisioning::reset_credentials) return credentials; nothing else
///   (the [`Device`] view, errors, audit records) contains any.
/// * **Register** assigns an id when none is given (`AlreadyExists` for a taken one), generates
///   two random 32-byte symmetric keys when none are given, and refuses metadata that is not a
///   JSON object (`MetadataNotAnObject`), writing nothing.
/// * **Unknown ids** are `NotFound` for every call but `register`; a stale `if_match` (the
///   registry record's etag) is `PreconditionFailed` and changes nothing.
/// * **Activate / deactivate** grant or revoke access at once (the identity's status) and merge
///   the metadata, if given, into the record (JSON merge patch).
/// * **Update** merges metadata into the record.
/// * **Reset credentials** of a disabled device is `DeviceDisabled`.
/// * **Bulk** returns one result per request, in order. `AllOrNothing`: if any item fails,
///   none is registered, and valid items report `Aborted`. `BestEffort`: each valid item is
///   registered, each invalid one reports its own error.
#[async_trait]
pub trait Provisioning: Send + Sync + Debug + 'static {
    /// Registers a device; returns it with its credentials.
    async fn register(&self, request: RegisterRequest) -> Result<Registered>;

    /// Removes a device from both stores.
    async fn unregister(&self, id: &DeviceId, if_match: Option<&ETag>) -> Result<()>;

    /// Enables the device (at once), merging `metadata` into its record if given.
    async fn activate(&self, id: &DeviceId, metadata: Option<Value>) -> Result<Device>;

    /// Disables the device (its sessions are cut at once), merging `metadata` if given.
    async fn deactivate(&self, id: &DeviceId, metadata: Option<Value>) -> Result<Device>;

    /// Merges `metadata` into the device's record.
    async fn update(
        &self,
        id: &DeviceId,
        metadata: Value,
        if_match: Option<&ETag>,
    ) -> Result<Device>;

    /// Replaces the device's credentials (generating two keys when `None`); returns the new ones.
    async fn reset_credentials(
        &self,
        id: &DeviceId,
        credentials: Option<Credentials>,
    ) -> Result<Credentials>;

    /// Registers many devices; one result per request, in order.
    async fn bulk(
        &self,
        requests: Vec<RegisterRequest>,
        mode: BulkMode,
    ) -> Result<Vec<BulkItemResult>>;

    /// The device, if it exists.
    async fn get(&self, id: &DeviceId) -> Result<Option<Device>>;

    /// A SAS token for the device's endpoint, valid for `lifetime`, signed with its primary
    /// key — for devices that cannot sign their own. The device must be enabled and have
    /// symmetric keys.
    async fn issue_token(&self, id: &DeviceId, lifetime: Duration) -> Result<SasToken>;
}

macro_rules! forward_provisioning {
    ($ptr:ident) => {
        #[deny(clippy::missing_trait_methods)]
        #[async_trait]
        impl<T: Provisioning + ?Sized> Provisioning for $ptr<T> {
            async fn register(&self, request: RegisterRequest) -> Result<Registered> {
                (**self).register(request).await
            }
            async fn unregister(&self, id: &DeviceId, if_match: Option<&ETag>) -> Result<()> {
                (**self).unregister(id, if_match).await
            }
            async fn activate(&self, id: &DeviceId, metadata: Option<Value>) -> Result<Device> {
                (**self).activate(id, metadata).await
            }
            async fn deactivate(&self, id: &DeviceId, metadata: Option<Value>) -> Result<Device> {
                (**self).deactivate(id, metadata).await
            }
            async fn update(
                &self,
                id: &DeviceId,
                metadata: Value,
                if_match: Option<&ETag>,
            ) -> Result<Device> {
                (**self).update(id, metadata, if_match).await
            }
            async fn reset_credentials(
                &self,
                id: &DeviceId,
                credentials: Option<Credentials>,
            ) -> Result<Credentials> {
                (**self).reset_credentials(id, credentials).await
            }
            async fn bulk(
                &self,
                requests: Vec<RegisterRequest>,
                mode: BulkMode,
            ) -> Result<Vec<BulkItemResult>> {
                (**self).bulk(requests, mode).await
            }
            async fn get(&self, id: &DeviceId) -> Result<Option<Device>> {
                (**self).get(id).await
            }
            async fn issue_token(&self, id: &DeviceId, lifetime: Duration) -> Result<SasToken> {
                (**self).issue_token(id, lifetime).await
            }
        }
    };
}

forward_provisioning!(Arc);
forward_provisioning!(Box);
