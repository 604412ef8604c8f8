//! A device for an example to print commands for: its primary key, provisioning it with fresh
//! keys first if the identity store does not hold it yet (so an example can be restarted over the
//! same store and print the same connection string).
//!
//! Shared by the examples through `#[path = "…/support/device_key.rs"] mod device_key;`.

use iot_core::DeviceId;
use iot_identity::{Credentials, IdentityStore, NewIdentity, SymmetricKey};

/// The device's primary key, provisioning the device first if it does not exist.
#[allow(
    clippy::print_stdout,
    reason = "the examples print what they provision"
)]
pub(crate) async fn device_key(
    identity: &dyn IdentityStore,
    device: &DeviceId,
) -> Result<SymmetricKey, Box<dyn std::error::Error>> {
    if let Some(existing) = identity.get(device).await? {
        return match &existing.credentials {
            Credentials::SymmetricKeys { primary, .. } => Ok(primary.clone()),
            other => Err(format!(
                "{device} authenticates with a {}, not a key",
                other.kind_name()
            )
            .into()),
        };
    }
    let key = SymmetricKey::generate();
    identity
        .create(NewIdentity::new(
            device.clone(),
            Credentials::SymmetricKeys {
                primary: key.clone(),
                secondary: SymmetricKey::generate(),
            },
        ))
        .await?;
    println!("provisioned: {device}");
    Ok(key)
}
