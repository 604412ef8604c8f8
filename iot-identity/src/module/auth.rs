//! Authenticating a module: its own credentials, checked against the [`ModuleStore`], while its
//! device exists and is enabled.

use iot_core::{DeviceId, EndpointId, ModuleId};
use tracing::debug;

use super::ModuleStore;
use crate::auth::{Authenticated, Authenticator, Presented};
use crate::credentials::{Credentials, KeySlot, SymmetricKey, Thumbprint};
use crate::error::{Error, Result};
use crate::identity::DeviceStatus;
use crate::sas;

/// Authenticates module `module` of `device` with `presented` as of `now` (Unix seconds), through
/// `auth` (its hub name, SAS verifier and device identity store) and `modules`.
///
/// The module's own credentials only: a SAS token must be scoped to
/// `{host}/devices/{device}/modules/{module}` and signed with one of the module's keys, so a
/// device's token or key never authenticates its modules, and a module's never its device or a
/// sibling. The credential is checked before the device's status, so a caller without valid
/// credentials cannot learn whether the device is disabled. The result names the device and
/// carries the module record's generation and etag (a session ends when they change).
///
/// ```
/// use std::sync::Arc;
/// use iot_identity::{authenticate_module, sas, Authenticator, Credentials, IdentityStore,
///     MemoryIdentityStore, MemoryModuleStore, ModuleStore, NewIdentity, NewModule, Presented,
///     SymmetricKey};
///
/// # tokio::runtime::Builder::new_current_thread().build().expect("rt").block_on(async {
/// let devices = Arc::new(MemoryIdentityStore::new());
/// let modules = MemoryModuleStore::new();
/// let device = "edge-1".parse()?;
/// devices.create(NewIdentity::new(device, Credentials::generate_symmetric_keys())).await?;
/// let key = SymmetricKey::generate();
/// let credentials = Credentials::SymmetricKeys { primary: key.clone(), secondary: SymmetricKey::generate() };
/// modules.create(NewModule::new("edge-1".parse()?, "filter".parse()?, credentials)).await?;
///
/// let resource = sas::module_resource("hub.example.net", &"edge-1".parse()?, &"filter".parse()?);
/// let token = sas::generate(&resource, &key, sas::unix_now() + 600, None)?;
/// let auth = Authenticator::new(devices, "hub.example.net");
/// let who = authenticate_module(&auth, &modules, &"edge-1".parse()?, &"filter".parse()?,
///     Presented::SasToken(token.as_str()), sas::unix_now()).await?;
/// assert_eq!(who.id.as_str(), "edge-1");
/// # Ok::<(), iot_identity::Error>(())
/// # }).expect("example");
/// ```
pub async fn authenticate_module(
    auth: &Authenticator,
    modules: &dyn ModuleStore,
    device: &DeviceId,
    module: &ModuleId,
    presented: Presented<'_>,
    now: u64,
) -> Result<Authenticated> {
    let id = || EndpointId::module(device.clone(), module.clone());
    let refused = |what: &'static str| {
        debug!(module = %id(), what, "module authentication refused");
        Error::ModuleRefused { id: id(), what }
    };
    let Some(record) = modules.get(device, module).await? else {
        return Err(refused("unknown module"));
    };
    let (key, expires_at) = match (&record.credentials, presented) {
        (Credentials::SymmetricKeys { primary, secondary }, Presented::SasToken(token)) => {
            let resource = sas::module_resource(auth.host(), device, module);
            let verified =
                auth.verifier()
                    .verify(token, &resource, primary, Some(secondary), None, now)?;
            (Some(verified.key), Some(verified.expiry))
        }
        (Credentials::SymmetricKeys { primary, secondary }, Presented::SymmetricKey(text)) => {
            let presented =
                SymmetricKey::from_base64(text).map_err(|_| refused("bad symmetric key"))?;
            let bytes = presented.expose_bytes();
            // Both comparisons always run, in constant time.
            match (primary.ct_eq_bytes(bytes), secondary.ct_eq_bytes(bytes)) {
                (true, _) => (Some(KeySlot::Primary), None),
                (false, true) => (Some(KeySlot::Secondary), None),
                _ => return Err(refused("bad symmetric key")),
            }
        }
        (
            Credentials::X509 { primary, secondary },
            presented @ (Presented::Thumbprint(_) | Presented::CertificateChain(_)),
        ) => {
            // Over TLS the endpoint hands over the chain; a module's certificate is matched by
            // its leaf's thumbprint, as a device's is.
            let t = match presented {
                Presented::Thumbprint(t) => t,
                Presented::CertificateChain(chain) => match chain.first() {
                    Some(leaf) => Thumbprint::of_der_certificate(leaf),
                    None => return Err(refused("empty certificate chain")),
                },
                _ => return Err(refused("wrong credential kind")),
            };
            // Thumbprints are public; plain comparison is fine.
            if *primary == t {
                (Some(KeySlot::Primary), None)
            } else if *secondary == t {
                (Some(KeySlot::Secondary), None)
            } else {
                return Err(refused("bad thumbprint"));
            }
        }
        _ => return Err(refused("wrong credential kind")),
    };
    let Some(identity) = auth.store().get(device).await? else {
        // The device went away and left the module behind (the writer deletes both).
        return Err(refused("unknown module"));
    };
    if let DeviceStatus::Disabled { reason } = &identity.status {
        return Err(Error::DeviceDisabled {
            id: device.clone(),
            reason: reason.clone(),
        });
    }
    Ok(Authenticated {
        id: device.clone(),
        generation_id: record.generation_id,
        etag: record.etag,
        key,
        expires_at,
        policy: None,
    })
}
