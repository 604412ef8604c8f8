//! The conformance suite for [`ModuleStore`] implementations, and the module authentication
//! rules over any store.

use std::sync::Arc;

use iot_core::{DeviceId, EndpointId, ModuleId};

use crate::MemoryIdentityStore;
use crate::auth::{Authenticator, Presented};
use crate::credentials::{Credentials, PassphraseParams, SymmetricKey};
use crate::error::Error;
use crate::identity::{ETag, NewIdentity};
use crate::module::{
    MAX_MANAGED_BY_LEN, ModuleChangeKind, ModuleStore, NewModule, authenticate_module,
};
use crate::sas;
use crate::store::IdentityStore;

use super::{fresh_id, fresh_name};

fn module_id(label: &str) -> ModuleId {
    ModuleId::new(fresh_name(label)).expect("labels of the suite make valid ids")
}

fn keys() -> (SymmetricKey, Credentials) {
    let primary = SymmetricKey::generate();
    let credentials = Credentials::SymmetricKeys {
        primary: primary.clone(),
        secondary: SymmetricKey::generate(),
    };
    (primary, credentials)
}

/// Runs every module check on `store`, authentication over a memory identity store, and then,
/// when `reopen` gives the same storage again, what survives it.
pub async fn run_modules<F, Fut>(store: Arc<dyn ModuleStore>, reopen: F)
where
    F: FnOnce(Arc<dyn ModuleStore>) -> Fut,
    Fut: std::future::Future<Output = Option<Arc<dyn ModuleStore>>>,
{
    let s = store.as_ref();
    modules_create_get_list_delete(s).await;
    modules_are_unique_per_device(s).await;
    modules_etags_and_preconditions(s).await;
    modules_change_stream(s).await;
    modules_bad_input(s).await;
    modules_authenticate_as_themselves_only(Arc::new(MemoryIdentityStore::new()), s).await;
    modules_survive_reopen(store, reopen).await;
}

/// Create, get, list in module id order, delete; a device's modules are its own.
pub async fn modules_create_get_list_delete(store: &dyn ModuleStore) {
    let device = fresh_id("mod-crud");
    let other = fresh_id("mod-crud-other");
    let (_, credentials) = keys();
    let mut names = vec![
        ModuleId::new("b-module").expect("id"),
        ModuleId::new("a-module").expect("id"),
        ModuleId::new("$edgeHub").expect("id"),
    ];
    for name in &names {
        let new = NewModule::new(device.clone(), name.clone(), credentials.clone())
            .managed_by(Some("iotEdge".into()));
        let created = store.create(new).await.expect("create");
        assert_eq!(&created.module, name);
        assert_eq!(created.device, device);
        assert_eq!(created.credentials, credentials);
        assert_eq!(created.managed_by.as_deref(), Some("iotEdge"));
        assert_eq!(created.created_at, created.updated_at);
    }
    names.sort();
    let listed: Vec<ModuleId> = store
        .list(&device)
        .await
        .expect("list")
        .iter()
        .map(|m| m.module.clone())
        .collect();
    assert_eq!(listed, names, "modules are listed in id order");
    assert!(store.list(&other).await.expect("list").is_empty());
    assert!(
        store.get(&other, &names[0]).await.expect("get").is_none(),
        "a module id on one device is not a module of another"
    );
    let got = store
        .get(&device, &names[0])
        .await
        .expect("get")
        .expect("the module exists");
    assert_eq!(
        got.endpoint(),
        EndpointId::module(device.clone(), names[0].clone())
    );
    store
        .delete(&device, &names[0], None)
        .await
        .expect("delete");
    assert!(store.get(&device, &names[0]).await.expect("get").is_none());
    assert!(matches!(
        store.delete(&device, &names[0], None).await,
        Err(Error::ModuleNotFound { .. })
    ));
    assert_eq!(
        store.delete_device(&device).await.expect("delete device"),
        2
    );
    assert!(store.list(&device).await.expect("list").is_empty());
    assert_eq!(store.delete_device(&device).await.expect("again"), 0);
}

/// A module id is unique within its device, and the same id on another device is another module.
pub async fn modules_are_unique_per_device(store: &dyn ModuleStore) {
    let (a, b) = (fresh_id("mod-uniq-a"), fresh_id("mod-uniq-b"));
    let module = module_id("m");
    let (_, credentials) = keys();
    let first = store
        .create(NewModule::new(
            a.clone(),
            module.clone(),
            credentials.clone(),
        ))
        .await
        .expect("create");
    assert!(matches!(
        store
            .create(NewModule::new(a.clone(), module.clone(), Credentials::None))
            .await,
        Err(Error::ModuleAlreadyExists { id }) if id == first.endpoint()
    ));
    let same = store
        .get(&a, &module)
        .await
        .expect("get")
        .expect("still there");
    assert_eq!(
        same.credentials, credentials,
        "a refused create changes nothing"
    );
    let other = store
        .create(NewModule::new(b.clone(), module.clone(), Credentials::None))
        .await
        .expect("the same module id on another device");
    assert_ne!(other.endpoint(), first.endpoint());
    store.delete_device(&a).await.expect("cleanup");
    store.delete_device(&b).await.expect("cleanup");
}

/// Every write gives a new etag (never reused, also across delete and re-create); a stale
/// `if_match` changes nothing; a re-created module has a new generation.
pub async fn modules_etags_and_preconditions(store: &dyn ModuleStore) {
    let device = fresh_id("mod-etag");
    let module = module_id("m");
    let created = store
        .create(NewModule::new(device.clone(), module.clone(), keys().1))
        .await
        .expect("create");
    let (_, rekey) = keys();
    let replaced = store
        .replace(&device, &module, rekey.clone(), None, Some(created.etag))
        .await
        .expect("replace with the current etag");
    assert_ne!(replaced.etag, created.etag);
    assert_eq!(replaced.generation_id, created.generation_id);
    assert_eq!(replaced.credentials, rekey);
    assert!(matches!(
        store
            .replace(&device, &module, Credentials::None, None, Some(created.etag))
            .await,
        Err(Error::ModulePreconditionFailed { actual, .. }) if actual == replaced.etag
    ));
    assert!(matches!(
        store.delete(&device, &module, Some(created.etag)).await,
        Err(Error::ModulePreconditionFailed { .. })
    ));
    assert!(matches!(
        store
            .replace(
                &device,
                &module_id("missing"),
                Credentials::None,
                None,
                None
            )
            .await,
        Err(Error::ModuleNotFound { .. })
    ));
    store
        .delete(&device, &module, Some(replaced.etag))
        .await
        .expect("delete with the current etag");
    let again = store
        .create(NewModule::new(
            device.clone(),
            module.clone(),
            Credentials::None,
        ))
        .await
        .expect("re-create");
    assert_ne!(again.generation_id, created.generation_id);
    let seen: [ETag; 2] = [created.etag, replaced.etag];
    assert!(!seen.contains(&again.etag), "etags are never reused");
    store.delete_device(&device).await.expect("cleanup");
}

/// Creates, re-keys and deletes are published once each, after the write; a `managedBy`-only
/// change does not revoke sessions.
pub async fn modules_change_stream(store: &dyn ModuleStore) {
    let device = fresh_id("mod-changes");
    let module = module_id("m");
    let id = EndpointId::module(device.clone(), module.clone());
    let mut changes = store.subscribe();
    let (_, credentials) = keys();
    store
        .create(NewModule::new(
            device.clone(),
            module.clone(),
            credentials.clone(),
        ))
        .await
        .expect("create");
    store
        .replace(&device, &module, credentials, Some("me".into()), None)
        .await
        .expect("same keys");
    store
        .replace(&device, &module, keys().1, None, None)
        .await
        .expect("new keys");
    store.delete_device(&device).await.expect("delete");
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), changes.recv())
            .await
            .expect("a change in time")
            .expect("the store is alive")
            .expect("no lag");
        if next.id == id {
            kinds.push(next.kind.clone());
            assert_eq!(
                next.revokes_sessions(),
                next.kind != ModuleChangeKind::Created
            );
        }
    }
    assert_eq!(
        kinds,
        [
            ModuleChangeKind::Created,
            ModuleChangeKind::CredentialsReplaced,
            ModuleChangeKind::Deleted
        ]
    );
}

/// Passphrases and an over-long `managedBy` are refused and change nothing.
pub async fn modules_bad_input(store: &dyn ModuleStore) {
    let device = fresh_id("mod-bad");
    let module = module_id("m");
    let params = PassphraseParams::default();
    let passphrase = Credentials::passphrase("correct horse battery staple", &params)
        .expect("hash a passphrase");
    assert!(matches!(
        store
            .create(NewModule::new(device.clone(), module.clone(), passphrase))
            .await,
        Err(Error::InvalidInput { .. })
    ));
    let long = NewModule::new(device.clone(), module.clone(), Credentials::None)
        .managed_by(Some("x".repeat(MAX_MANAGED_BY_LEN + 1)));
    assert!(matches!(
        store.create(long).await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(store.get(&device, &module).await.expect("get").is_none());
}

/// A module authenticates with its own keys only: not with its device's, not with a sibling's,
/// and its token does not authenticate its device; a disabled device's modules are refused.
pub async fn modules_authenticate_as_themselves_only(
    identity: Arc<dyn IdentityStore>,
    modules: &dyn ModuleStore,
) {
    let host = "modules.example.net";
    let device = fresh_id("mod-auth");
    let (device_key, device_credentials) = keys();
    identity
        .create(NewIdentity::new(device.clone(), device_credentials))
        .await
        .expect("device");
    let (a, b) = (module_id("a"), module_id("b"));
    let (a_key, a_credentials) = keys();
    let (b_key, b_credentials) = keys();
    let a_record = modules
        .create(NewModule::new(device.clone(), a.clone(), a_credentials))
        .await
        .expect("module a");
    modules
        .create(NewModule::new(device.clone(), b.clone(), b_credentials))
        .await
        .expect("module b");
    let auth = Authenticator::new(Arc::clone(&identity), host);
    let now = sas::unix_now();
    let token = |resource: String, key: &SymmetricKey| {
        sas::generate(&resource, key, now + 600, None)
            .expect("token")
            .as_str()
            .to_owned()
    };
    let a_token = token(sas::module_resource(host, &device, &a), &a_key);
    let ok = authenticate_module(
        &auth,
        modules,
        &device,
        &a,
        Presented::SasToken(&a_token),
        now,
    )
    .await
    .expect("a module's own token");
    assert_eq!(ok.id, device);
    assert_eq!(ok.generation_id, a_record.generation_id);

    // The device's token, and a token for the device's resource signed with the module's key.
    let device_token = token(sas::device_resource(host, &device), &device_key);
    let a_key_device_scope = token(sas::device_resource(host, &device), &a_key);
    for refused in [&device_token, &a_key_device_scope] {
        let result = authenticate_module(
            &auth,
            modules,
            &device,
            &a,
            Presented::SasToken(refused),
            now,
        )
        .await;
        assert!(
            result.as_ref().is_err_and(Error::is_auth_failure),
            "a token not scoped to the module was accepted: {result:?}"
        );
    }
    // A sibling's token (its own scope, or the first module's scope with its key).
    let b_token = token(sas::module_resource(host, &device, &b), &b_key);
    let b_key_a_scope = token(sas::module_resource(host, &device, &a), &b_key);
    for refused in [&b_token, &b_key_a_scope] {
        let result = authenticate_module(
            &auth,
            modules,
            &device,
            &a,
            Presented::SasToken(refused),
            now,
        )
        .await;
        assert!(
            result.as_ref().is_err_and(Error::is_auth_failure),
            "{result:?}"
        );
    }
    // The module's token does not authenticate the device.
    let as_device = auth
        .authenticate_at(&device, Presented::SasToken(&a_token), now)
        .await;
    assert!(as_device.as_ref().is_err_and(Error::is_auth_failure));
    // The device's key is not the module's key.
    let device_key_text = device_key.expose_base64();
    let result = authenticate_module(
        &auth,
        modules,
        &device,
        &a,
        Presented::SymmetricKey(&device_key_text),
        now,
    )
    .await;
    assert!(matches!(result, Err(Error::ModuleRefused { .. })));
    // An unknown module, and a disabled device.
    let result = authenticate_module(
        &auth,
        modules,
        &device,
        &module_id("missing"),
        Presented::SasToken(&a_token),
        now,
    )
    .await;
    assert!(matches!(result, Err(Error::ModuleRefused { .. })));
    identity
        .set_status(&device, crate::DeviceStatus::disabled("test"), None)
        .await
        .expect("disable");
    let result = authenticate_module(
        &auth,
        modules,
        &device,
        &a,
        Presented::SasToken(&a_token),
        now,
    )
    .await;
    assert!(matches!(result, Err(Error::DeviceDisabled { .. })));
    modules.delete_device(&device).await.expect("cleanup");
}

/// What a reopened store holds: every acknowledged module, with its keys, and no deleted one.
pub async fn modules_survive_reopen<F, Fut>(store: Arc<dyn ModuleStore>, reopen: F)
where
    F: FnOnce(Arc<dyn ModuleStore>) -> Fut,
    Fut: std::future::Future<Output = Option<Arc<dyn ModuleStore>>>,
{
    let device: DeviceId = fresh_id("mod-reopen");
    let (kept, gone) = (module_id("kept"), module_id("gone"));
    let kept_record = store
        .create(NewModule::new(device.clone(), kept.clone(), keys().1))
        .await
        .expect("create");
    store
        .create(NewModule::new(device.clone(), gone.clone(), keys().1))
        .await
        .expect("create");
    store.delete(&device, &gone, None).await.expect("delete");
    let Some(store) = reopen(store).await else {
        return;
    };
    let back = store
        .get(&device, &kept)
        .await
        .expect("get")
        .expect("kept across a reopen");
    assert_eq!(*back, kept_record);
    assert!(store.get(&device, &gone).await.expect("get").is_none());
    let next = store
        .replace(&device, &kept, Credentials::None, None, None)
        .await
        .expect("write after reopen");
    assert!(next.etag.as_u64() > kept_record.etag.as_u64());
    store.delete_device(&device).await.expect("cleanup");
}
