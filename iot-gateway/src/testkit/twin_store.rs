//! The conformance suite for [`TwinStore`] implementations: the invariants of the
//! [twins module](crate::twins), one public check per part.
//!
//! Every check works on a device of its own, drawn fresh ([`fresh_id`]), so the suite runs
//! against a store that already holds data, and twice against the same database.

use std::sync::Arc;

use async_trait::async_trait;
use iot_core::{DeviceId, ModuleId};
use serde_json::{Value, json};

use super::fresh_id;
use crate::error::{Error, Result};
use crate::twins::{Section, Twin, TwinLimits, TwinStore};

/// Opens the twin store under test, and opens it again for the durability check.
#[async_trait]
pub trait TwinStoreFactory: Send + Sync {
    /// The store to run the suite against. It need not be empty.
    async fn open(&self) -> Result<Arc<dyn TwinStore>>;

    /// Closes `previous` (the suite holds no other handle to it) and opens the same storage
    /// again, as a restarted process would; `None` when the store keeps nothing across a reopen.
    /// The provided method is for such stores: it drops `previous` and returns `None`.
    async fn reopen(&self, previous: Arc<dyn TwinStore>) -> Option<Result<Arc<dyn TwinStore>>> {
        drop(previous);
        None
    }
}

/// Runs every check on one store from `factory`, then [`survives_reopen`] through
/// [`TwinStoreFactory::reopen`].
pub async fn run_all(factory: &dyn TwinStoreFactory) {
    let store = factory
        .open()
        .await
        .unwrap_or_else(|e| panic!("the factory could not open a twin store: {e}"));
    let s = store.as_ref();
    unknown_device_has_the_empty_twin(s).await;
    patches_merge_and_count_versions(s).await;
    version_preconditions(s).await;
    refused_patches_change_nothing(s).await;
    remove_forgets_the_twin(s).await;
    let written = write_for_reopen(s).await;
    let reopened = factory
        .reopen(store)
        .await
        .map(|r| r.unwrap_or_else(|e| panic!("the factory could not reopen the twin store: {e}")));
    if let Some(reopened) = reopened {
        survives_reopen(reopened.as_ref(), &written).await;
    }
}

async fn patch(store: &dyn TwinStore, device: &DeviceId, section: Section, patch: Value) -> Twin {
    store
        .patch(device, section, &patch, None, TwinLimits::default())
        .await
        .unwrap_or_else(|e| panic!("patch {}: {e}", section.as_str()))
}

/// A device without a stored twin has both sections `{}` at version 0.
pub async fn unknown_device_has_the_empty_twin(store: &dyn TwinStore) {
    let twin = store.get(&fresh_id("tk-twin-none")).await.expect("get");
    assert_eq!(twin, Twin::default());
    assert_eq!(twin.desired.properties, json!({}));
}

/// A patch is an RFC 7396 merge (null removes, objects merge, other values replace); each
/// accepted patch adds one to its section's version only; the returned twin is what `get` says.
pub async fn patches_merge_and_count_versions(store: &dyn TwinStore) {
    let device = fresh_id("tk-twin-merge");
    let after = patch(
        store,
        &device,
        Section::Desired,
        json!({"a": 1, "b": {"c": 2, "d": [1, 2]}, "e": "x"}),
    )
    .await;
    assert_eq!(after.desired.version, 1);
    assert_eq!(after.reported.version, 0, "sections are independent");
    let after = patch(
        store,
        &device,
        Section::Desired,
        json!({"a": null, "b": {"c": 3, "d": [3]}}),
    )
    .await;
    assert_eq!(after.desired.version, 2);
    assert_eq!(
        after.desired.properties,
        json!({"b": {"c": 3, "d": [3]}, "e": "x"})
    );
    let after = patch(store, &device, Section::Reported, json!({"fw": "1.0"})).await;
    assert_eq!(after.reported.version, 1);
    assert_eq!(after.reported.properties, json!({"fw": "1.0"}));
    assert_eq!(after.desired.version, 2);
    assert_eq!(store.get(&device).await.expect("get"), after);
    let after = patch(store, &device, Section::Reported, json!({})).await;
    assert_eq!(
        after.reported.version, 2,
        "an empty patch is a patch: the version grows"
    );
}

/// `if_version` other than the section's version is `PreconditionFailed` (with both versions)
/// and changes nothing; the current version is accepted.
pub async fn version_preconditions(store: &dyn TwinStore) {
    let device = fresh_id("tk-twin-ifv");
    let limits = TwinLimits::default();
    patch(store, &device, Section::Desired, json!({"a": 1})).await;
    let stale = store
        .patch(&device, Section::Desired, &json!({"a": 2}), Some(0), limits)
        .await;
    match stale {
        Err(Error::PreconditionFailed {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (0, 1)),
        other => panic!("a stale version was accepted: {other:?}"),
    }
    assert!(matches!(
        store
            .patch(
                &device,
                Section::Reported,
                &json!({"r": 1}),
                Some(1),
                limits
            )
            .await,
        Err(Error::PreconditionFailed { .. })
    ));
    let twin = store.get(&device).await.expect("get");
    assert_eq!(twin.desired.properties, json!({"a": 1}), "nothing changed");
    assert_eq!((twin.desired.version, twin.reported.version), (1, 0));
    let ok = store
        .patch(&device, Section::Desired, &json!({"a": 2}), Some(1), limits)
        .await
        .expect("the current version is accepted");
    assert_eq!(ok.desired.version, 2);
}

/// A patch that is not an object is `InvalidInput`; one that would nest too deep is
/// `InvalidInput`; one that would make the section too large is `TooLarge`. None changes
/// anything.
pub async fn refused_patches_change_nothing(store: &dyn TwinStore) {
    let device = fresh_id("tk-twin-refuse");
    let before = patch(store, &device, Section::Reported, json!({"keep": true})).await;
    let limits = TwinLimits {
        max_section_bytes: 64,
        max_depth: 3,
    };
    for bad in [json!(1), json!("x"), json!([1]), json!(null)] {
        let r = store
            .patch(&device, Section::Reported, &bad, None, limits)
            .await;
        assert!(matches!(r, Err(Error::InvalidInput { .. })), "{bad}: {r:?}");
    }
    let deep = json!({"a": {"b": {"c": {"d": 1}}}});
    let r = store
        .patch(&device, Section::Reported, &deep, None, limits)
        .await;
    assert!(matches!(r, Err(Error::InvalidInput { .. })), "{r:?}");
    let big = json!({"big": "x".repeat(100)});
    let r = store
        .patch(&device, Section::Reported, &big, None, limits)
        .await;
    assert!(matches!(r, Err(Error::TooLarge { .. })), "{r:?}");
    assert_eq!(store.get(&device).await.expect("get"), before);
}

/// `remove` forgets the twin: it reads as empty and versions start again from 0. Removing an
/// unknown twin is not an error.
pub async fn remove_forgets_the_twin(store: &dyn TwinStore) {
    let device = fresh_id("tk-twin-rm");
    let other = fresh_id("tk-twin-rm-other");
    patch(store, &device, Section::Desired, json!({"a": 1})).await;
    let kept = patch(store, &other, Section::Desired, json!({"o": 1})).await;
    store.remove(&device).await.expect("remove");
    assert_eq!(store.get(&device).await.expect("get"), Twin::default());
    let again = patch(store, &device, Section::Desired, json!({"b": 2})).await;
    assert_eq!(again.desired.version, 1);
    assert_eq!(again.desired.properties, json!({"b": 2}));
    store
        .remove(&fresh_id("tk-twin-rm-nobody"))
        .await
        .expect("removing an unknown twin");
    assert_eq!(store.get(&other).await.expect("get"), kept);
}

/// What [`write_for_reopen`] left, for [`survives_reopen`].
#[derive(Debug)]
pub struct Written {
    device: DeviceId,
    removed: DeviceId,
    twin: Twin,
}

/// Patches both sections of a fresh device and removes another's twin, for [`survives_reopen`].
pub async fn write_for_reopen(store: &dyn TwinStore) -> Written {
    let device = fresh_id("tk-twin-reopen");
    let removed = fresh_id("tk-twin-reopen-rm");
    patch(store, &device, Section::Desired, json!({"a": {"b": 1}})).await;
    patch(store, &device, Section::Reported, json!({"r": [1, 2]})).await;
    let twin = patch(store, &device, Section::Desired, json!({"a": {"c": 2}})).await;
    patch(store, &removed, Section::Desired, json!({"x": 1})).await;
    store.remove(&removed).await.expect("remove");
    Written {
        device,
        removed,
        twin,
    }
}

/// A reopened store returns exactly the acknowledged twins, versions included, and keeps removed
/// twins removed.
pub async fn survives_reopen(store: &dyn TwinStore, written: &Written) {
    assert_eq!(
        store.get(&written.device).await.expect("get"),
        written.twin,
        "twins survive a reopen"
    );
    assert_eq!(
        store.get(&written.removed).await.expect("get"),
        Twin::default(),
        "a removed twin stays removed"
    );
    let next = store
        .patch(
            &written.device,
            Section::Desired,
            &json!({}),
            Some(written.twin.desired.version),
            TwinLimits::default(),
        )
        .await
        .expect("the version survives a reopen");
    assert_eq!(next.desired.version, written.twin.desired.version + 1);
}

/// Module twins (for stores that keep them: the provided methods refuse): a module's twin is
/// its own — not its device's, not a sibling's, not the same module id's on another device —
/// follows the twin rules, is forgotten by `remove_module`, and, when `reopen` gives the same
/// storage again, survives it.
pub async fn run_module_twins(factory: &dyn TwinStoreFactory) {
    let store = factory
        .open()
        .await
        .unwrap_or_else(|e| panic!("the factory could not open a twin store: {e}"));
    let s = store.as_ref();
    let (device, other) = (fresh_id("tk-mtwin"), fresh_id("tk-mtwin-other"));
    let (m, sibling) = (
        ModuleId::new("filter").expect("id"),
        ModuleId::new("$edgeHub").expect("id"),
    );
    let limits = TwinLimits::default();
    let twin = s
        .patch_module(
            &device,
            &m,
            Section::Desired,
            &json!({"rate": 5}),
            Some(0),
            limits,
        )
        .await
        .expect("patch a module twin");
    assert_eq!(twin.desired.version, 1);
    let twin = s
        .patch_module(
            &device,
            &m,
            Section::Reported,
            &json!({"ok": true}),
            None,
            limits,
        )
        .await
        .expect("patch reported");
    assert_eq!(twin.reported.properties, json!({"ok": true}));
    assert_eq!(s.get_module(&device, &m).await.expect("get"), twin);
    assert_eq!(
        s.get(&device).await.expect("get"),
        Twin::default(),
        "not the device's twin"
    );
    for (d, module) in [(&device, &sibling), (&other, &m)] {
        assert_eq!(
            s.get_module(d, module).await.expect("get"),
            Twin::default(),
            "not another module's twin"
        );
    }
    patch(s, &device, Section::Desired, json!({"device": 1})).await;
    assert_eq!(
        s.get_module(&device, &m).await.expect("get"),
        twin,
        "device patches stay apart"
    );
    assert!(matches!(
        s.patch_module(
            &device,
            &m,
            Section::Desired,
            &json!({"x": 1}),
            Some(0),
            limits
        )
        .await,
        Err(Error::PreconditionFailed { .. })
    ));
    s.patch_module(
        &device,
        &sibling,
        Section::Desired,
        &json!({"gone": 1}),
        None,
        limits,
    )
    .await
    .expect("patch sibling");
    s.remove_module(&device, &sibling)
        .await
        .expect("remove module");
    assert_eq!(
        s.get_module(&device, &sibling).await.expect("get"),
        Twin::default()
    );
    let reopened = factory
        .reopen(store)
        .await
        .map(|r| r.unwrap_or_else(|e| panic!("the factory could not reopen the twin store: {e}")));
    if let Some(reopened) = reopened {
        let r = reopened.as_ref();
        assert_eq!(
            r.get_module(&device, &m).await.expect("get"),
            twin,
            "survives a reopen"
        );
        assert_eq!(
            r.get_module(&device, &sibling).await.expect("get"),
            Twin::default()
        );
    }
}
