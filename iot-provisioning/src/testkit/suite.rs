//! The conformance suite: public async functions over any [`Provisioning`].

use std::time::Duration;

use iot_core::DeviceId;
use iot_identity::{Credentials, SasVerifier, SymmetricKey, sas};
use iot_registry::ETag;
use serde_json::{Value, json};

use crate::error::Error;
use crate::provisioning::Provisioning;
use crate::types::{BulkMode, RegisterRequest, Registered};

/// Every check of the suite on `p` (what [`run_all`](super::run_all) runs on the implementation
/// its factory opens). `host` is the host the implementation scopes tokens to.
pub async fn run_checks(p: &dyn Provisioning, host: &str) {
    register_and_get(p).await;
    register_assigns_ids_and_keys(p).await;
    duplicate_id(p).await;
    metadata_must_be_an_object(p).await;
    unknown_id(p).await;
    stale_etag(p).await;
    activate_and_deactivate(p).await;
    update_merges(p).await;
    reset_credentials(p).await;
    unregister(p).await;
    bulk_best_effort_with_mixed_items(p).await;
    bulk_all_or_nothing_with_mixed_items(p).await;
    bulk_all_or_nothing_all_valid(p).await;
    issue_token(p, host).await;
}

/// A fresh id with a random part, so suites can share an instance (the identity testkit's).
pub use iot_identity::testkit::fresh_id;

async fn register(p: &dyn Provisioning, id: &DeviceId, metadata: Value) -> Registered {
    p.register(RegisterRequest::new(id.clone(), metadata))
        .await
        .expect("register")
}

fn keys(credentials: &Credentials) -> (SymmetricKey, SymmetricKey) {
    match credentials {
        Credentials::SymmetricKeys { primary, secondary } => (primary.clone(), secondary.clone()),
        other => panic!("expected symmetric keys, got {}", other.kind_name()),
    }
}

/// Register returns the device and its keys; get returns the device without them.
pub async fn register_and_get(p: &dyn Provisioning) {
    let id = fresh_id("reg");
    let reg = register(p, &id, json!({"building": "B7", "floor": 3})).await;
    assert_eq!(reg.device.id, id);
    assert!(reg.device.status.is_enabled());
    assert_eq!(reg.device.record.metadata.get("floor"), Some(&json!(3)));
    let (primary, secondary) = keys(&reg.credentials);
    assert_eq!(primary.expose_bytes().len(), 32);
    assert_ne!(primary, secondary);
    let shown = format!("{reg:?}");
    assert!(
        !shown.contains(primary.expose_base64().as_str()),
        "keys in Debug"
    );
    let got = p.get(&id).await.expect("get").expect("exists");
    assert_eq!(got, reg.device);
    let given = Credentials::SymmetricKeys {
        primary: SymmetricKey::generate(),
        secondary: SymmetricKey::generate(),
    };
    let id2 = fresh_id("given");
    let reg2 = p
        .register(RegisterRequest::new(id2, json!({})).with_credentials(given.clone()))
        .await
        .expect("register with keys");
    assert_eq!(reg2.credentials, given);
}

/// Without an id the service assigns a unique one; without keys two are generated.
pub async fn register_assigns_ids_and_keys(p: &dyn Provisioning) {
    let a = p
        .register(RegisterRequest::assigned(json!({"kind": "assigned"})))
        .await
        .expect("register a");
    let b = p
        .register(RegisterRequest::assigned(json!({"kind": "assigned"})))
        .await
        .expect("register b");
    assert_ne!(a.device.id, b.device.id);
    assert_ne!(keys(&a.credentials).0, keys(&b.credentials).0);
    assert!(p.get(&a.device.id).await.expect("get").is_some());
}

/// A second register of an id fails and changes nothing.
pub async fn duplicate_id(p: &dyn Provisioning) {
    let id = fresh_id("dup");
    let first = register(p, &id, json!({"v": 1})).await;
    let second = p
        .register(RegisterRequest::new(id.clone(), json!({"v": 2})))
        .await;
    assert!(
        matches!(&second, Err(Error::AlreadyExists { id: e }) if e == &id),
        "{second:?}"
    );
    let now = p.get(&id).await.expect("get").expect("exists");
    assert_eq!(now, first.device);
}

/// Metadata that is not a JSON object is refused by every call that takes metadata.
pub async fn metadata_must_be_an_object(p: &dyn Provisioning) {
    let id = fresh_id("meta");
    for bad in [json!([1, 2]), json!("text"), json!(7), json!(null)] {
        let r = p
            .register(RegisterRequest::new(id.clone(), bad.clone()))
            .await;
        assert!(matches!(r, Err(Error::MetadataNotAnObject { .. })), "{r:?}");
    }
    assert!(p.get(&id).await.expect("get").is_none());
    register(p, &id, json!({"ok": true})).await;
    let r = p.update(&id, json!([1]), None).await;
    assert!(matches!(r, Err(Error::MetadataNotAnObject { .. })), "{r:?}");
    let r = p.activate(&id, Some(json!("x"))).await;
    assert!(matches!(r, Err(Error::MetadataNotAnObject { .. })), "{r:?}");
    let r = p.deactivate(&id, Some(json!(1))).await;
    assert!(matches!(r, Err(Error::MetadataNotAnObject { .. })), "{r:?}");
    let now = p.get(&id).await.expect("get").expect("exists");
    assert!(now.status.is_enabled());
    assert_eq!(now.record.metadata.get("ok"), Some(&json!(true)));
}

/// Every call on an unknown id is `NotFound`.
pub async fn unknown_id(p: &dyn Provisioning) {
    let id = fresh_id("ghost");
    let nf = |r: &Result<(), Error>| matches!(r, Err(Error::NotFound { .. }));
    let r = p.unregister(&id, None).await;
    assert!(nf(&r), "unregister {r:?}");
    let r = p.activate(&id, None).await.map(drop);
    assert!(nf(&r), "activate {r:?}");
    let r = p.deactivate(&id, Some(json!({"a": 1}))).await.map(drop);
    assert!(nf(&r), "deactivate {r:?}");
    let r = p.update(&id, json!({"a": 1}), None).await.map(drop);
    assert!(nf(&r), "update {r:?}");
    let r = p.reset_credentials(&id, None).await.map(drop);
    assert!(nf(&r), "reset {r:?}");
    let r = p.issue_token(&id, Duration::from_secs(60)).await.map(drop);
    assert!(nf(&r), "token {r:?}");
    assert!(p.get(&id).await.expect("get").is_none());
}

/// A stale etag fails update and unregister and changes nothing.
pub async fn stale_etag(p: &dyn Provisioning) {
    let id = fresh_id("etag");
    let reg = register(p, &id, json!({"v": 1})).await;
    let old = reg.device.record.etag.clone();
    let updated = p
        .update(&id, json!({"v": 2}), Some(&old))
        .await
        .expect("update with the current etag");
    assert_ne!(updated.record.etag, old);
    let r = p.update(&id, json!({"v": 3}), Some(&old)).await;
    assert!(matches!(r, Err(Error::PreconditionFailed { .. })), "{r:?}");
    let r = p.unregister(&id, Some(&old)).await;
    assert!(matches!(r, Err(Error::PreconditionFailed { .. })), "{r:?}");
    let r = p.unregister(&id, Some(&ETag::new("nonsense"))).await;
    assert!(matches!(r, Err(Error::PreconditionFailed { .. })), "{r:?}");
    let now = p.get(&id).await.expect("get").expect("still there");
    assert_eq!(now.record.metadata.get("v"), Some(&json!(2)));
    p.unregister(&id, Some(&updated.record.etag))
        .await
        .expect("unregister with the current etag");
}

/// Deactivate revokes access and merges metadata; activate grants it back.
pub async fn activate_and_deactivate(p: &dyn Provisioning) {
    let id = fresh_id("status");
    register(p, &id, json!({"a": 1, "b": 2})).await;
    let off = p
        .deactivate(&id, Some(json!({"b": null, "c": "stolen"})))
        .await
        .expect("deactivate");
    assert!(!off.status.is_enabled());
    assert_eq!(off.record.metadata.get("a"), Some(&json!(1)));
    assert_eq!(off.record.metadata.get("b"), None);
    assert_eq!(off.record.metadata.get("c"), Some(&json!("stolen")));
    let off_again = p.deactivate(&id, None).await.expect("deactivate again");
    assert!(!off_again.status.is_enabled());
    let on = p
        .activate(&id, Some(json!({"c": "found"})))
        .await
        .expect("activate");
    assert!(on.status.is_enabled());
    assert_eq!(on.record.metadata.get("c"), Some(&json!("found")));
    let on = p.activate(&id, None).await.expect("activate again");
    assert!(on.status.is_enabled());
}

/// Update merges (RFC 7396): objects merge, `null` removes.
pub async fn update_merges(p: &dyn Provisioning) {
    let id = fresh_id("upd");
    register(p, &id, json!({"geo": {"lat": 1, "lon": 2}, "fw": "1.0"})).await;
    let d = p
        .update(
            &id,
            json!({"geo": {"lat": 5}, "fw": null, "new": [1, 2]}),
            None,
        )
        .await
        .expect("update");
    assert_eq!(
        Value::Object(d.record.metadata.clone()),
        json!({"geo": {"lat": 5, "lon": 2}, "new": [1, 2]})
    );
}

/// Reset returns new keys for an enabled device and is refused for a disabled one.
pub async fn reset_credentials(p: &dyn Provisioning) {
    let id = fresh_id("reset");
    let reg = register(p, &id, json!({})).await;
    let new = p.reset_credentials(&id, None).await.expect("reset");
    assert_ne!(keys(&new).0, keys(&reg.credentials).0);
    let given = Credentials::generate_symmetric_keys();
    let back = p
        .reset_credentials(&id, Some(given.clone()))
        .await
        .expect("reset to given keys");
    assert_eq!(back, given);
    p.deactivate(&id, None).await.expect("deactivate");
    let r = p.reset_credentials(&id, None).await;
    assert!(matches!(r, Err(Error::DeviceDisabled { .. })), "{r:?}");
}

/// Unregister removes the device; the id can be registered again.
pub async fn unregister(p: &dyn Provisioning) {
    let id = fresh_id("unreg");
    let first = register(p, &id, json!({"life": 1})).await;
    p.unregister(&id, None).await.expect("unregister");
    assert!(p.get(&id).await.expect("get").is_none());
    let r = p.unregister(&id, None).await;
    assert!(matches!(r, Err(Error::NotFound { .. })), "{r:?}");
    let second = register(p, &id, json!({"life": 2})).await;
    assert_ne!(second.device.generation_id, first.device.generation_id);
    assert_ne!(second.device.record.etag, first.device.record.etag);
}

fn mixed_batch(existing: &DeviceId) -> (Vec<RegisterRequest>, DeviceId, DeviceId) {
    let a = fresh_id("bulk-a");
    let b = fresh_id("bulk-b");
    let requests = vec![
        RegisterRequest::new(a.clone(), json!({"n": 0})),
        RegisterRequest::new(existing.clone(), json!({"n": 1})),
        RegisterRequest::new(fresh_id("bulk-bad"), json!(["not", "an", "object"])),
        RegisterRequest::new(b.clone(), json!({"n": 3})),
        RegisterRequest::new(a.clone(), json!({"n": 4})),
    ];
    (requests, a, b)
}

/// Best effort: valid items are registered; each invalid one has its own error.
pub async fn bulk_best_effort_with_mixed_items(p: &dyn Provisioning) {
    let existing = fresh_id("bulk-existing");
    register(p, &existing, json!({"keep": true})).await;
    let (requests, a, b) = mixed_batch(&existing);
    let results = p.bulk(requests, BulkMode::BestEffort).await.expect("bulk");
    assert_eq!(results.len(), 5);
    assert!(matches!(&results[0], Ok(r) if r.device.id == a));
    assert!(
        matches!(&results[1], Err(Error::AlreadyExists { .. })),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(&results[2], Err(Error::MetadataNotAnObject { .. })),
        "{:?}",
        results[2]
    );
    assert!(matches!(&results[3], Ok(r) if r.device.id == b));
    assert!(
        matches!(&results[4], Err(Error::AlreadyExists { .. })),
        "{:?}",
        results[4]
    );
    let got_a = p.get(&a).await.expect("get").expect("a registered");
    assert_eq!(got_a.record.metadata.get("n"), Some(&json!(0)));
    assert!(p.get(&b).await.expect("get").is_some());
    let kept = p.get(&existing).await.expect("get").expect("exists");
    assert_eq!(kept.record.metadata.get("keep"), Some(&json!(true)));
}

/// All or nothing: one bad item fails every item, valid ones with `Aborted`; nothing is written.
pub async fn bulk_all_or_nothing_with_mixed_items(p: &dyn Provisioning) {
    let existing = fresh_id("aon-existing");
    register(p, &existing, json!({"keep": true})).await;
    let (requests, a, b) = mixed_batch(&existing);
    let results = p
        .bulk(requests, BulkMode::AllOrNothing)
        .await
        .expect("bulk");
    assert_eq!(results.len(), 5);
    assert!(results.iter().all(Result::is_err));
    assert!(
        matches!(&results[0], Err(Error::Aborted { .. })),
        "{:?}",
        results[0]
    );
    assert!(
        matches!(&results[1], Err(Error::AlreadyExists { .. })),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(&results[2], Err(Error::MetadataNotAnObject { .. })),
        "{:?}",
        results[2]
    );
    assert!(
        matches!(&results[3], Err(Error::Aborted { .. })),
        "{:?}",
        results[3]
    );
    assert!(
        matches!(&results[4], Err(Error::AlreadyExists { .. })),
        "{:?}",
        results[4]
    );
    assert!(p.get(&a).await.expect("get").is_none());
    assert!(p.get(&b).await.expect("get").is_none());
    assert!(p.get(&existing).await.expect("get").is_some());
    // Only existing devices make the request fail: the same request with the duplicate left out
    // but an id taken in the store fails too.
    let taken = vec![
        RegisterRequest::new(fresh_id("aon-new"), json!({})),
        RegisterRequest::new(existing.clone(), json!({})),
    ];
    let results = p.bulk(taken, BulkMode::AllOrNothing).await.expect("bulk");
    assert!(
        matches!(&results[0], Err(Error::Aborted { .. })),
        "{:?}",
        results[0]
    );
    assert!(
        matches!(&results[1], Err(Error::AlreadyExists { .. })),
        "{:?}",
        results[1]
    );
}

/// All or nothing with only valid items registers them all, each with its own keys.
pub async fn bulk_all_or_nothing_all_valid(p: &dyn Provisioning) {
    let requests: Vec<RegisterRequest> = (0..20)
        .map(|i| RegisterRequest::new(fresh_id("aon-ok"), json!({"i": i})))
        .collect();
    let ids: Vec<DeviceId> = requests.iter().filter_map(|r| r.id.clone()).collect();
    let results = p
        .bulk(requests, BulkMode::AllOrNothing)
        .await
        .expect("bulk");
    let registered: Vec<&Registered> = results
        .iter()
        .map(|r| r.as_ref().expect("registered"))
        .collect();
    for (r, id) in registered.iter().zip(&ids) {
        assert_eq!(&r.device.id, id);
        assert!(p.get(id).await.expect("get").is_some());
    }
    assert_ne!(
        keys(&registered[0].credentials).0,
        keys(&registered[1].credentials).0
    );
}

/// Issued tokens are scoped to the device's endpoint and verify with its key; disabled devices
/// and zero lifetimes are refused.
pub async fn issue_token(p: &dyn Provisioning, host: &str) {
    let id = fresh_id("token");
    let reg = register(p, &id, json!({})).await;
    let token = p
        .issue_token(&id, Duration::from_secs(3600))
        .await
        .expect("token");
    let now = sas::unix_now();
    assert!((now + 3590..=now + 3610).contains(&token.expiry()));
    let (primary, secondary) = keys(&reg.credentials);
    let resource = sas::device_resource(host, &id);
    SasVerifier::default()
        .verify(
            token.as_str(),
            &resource,
            &primary,
            Some(&secondary),
            None,
            now,
        )
        .expect("the token verifies for the device's resource");
    let other = sas::device_resource(host, &fresh_id("other"));
    assert!(
        SasVerifier::default()
            .verify(
                token.as_str(),
                &other,
                &primary,
                Some(&secondary),
                None,
                now
            )
            .is_err()
    );
    let r = p.issue_token(&id, Duration::ZERO).await;
    assert!(matches!(r, Err(Error::InvalidInput { .. })), "{r:?}");
    p.deactivate(&id, None).await.expect("deactivate");
    let r = p.issue_token(&id, Duration::from_secs(60)).await;
    assert!(matches!(r, Err(Error::DeviceDisabled { .. })), "{r:?}");
}
