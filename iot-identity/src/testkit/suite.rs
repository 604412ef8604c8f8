//! The suite's checks, one public function per part of the [`IdentityStore`] contract.
//!
//! Each takes any store and panics with a message on a violation. Every id is drawn fresh (a
//! random suffix), so the functions can run in any order, concurrently, repeatedly, and against a
//! store that already holds data.

use std::sync::Arc;
use std::time::Duration;

use iot_core::DeviceId;

use super::{fresh_id, fresh_name};
use crate::auth::{Authenticator, Presented};
use crate::credentials::{Credentials, PassphraseParams, SymmetricKey, Thumbprint};
use crate::error::Error;
use crate::identity::{ChangeKind, DeviceIdentity, DeviceStatus, ETag, NewIdentity};
use crate::sas;
use crate::store::{ChangeEvent, ChangeStream, IdentityStore, MAX_PAGE_SIZE};

fn id(s: &str) -> DeviceId {
    DeviceId::new(s).expect("test ids are valid")
}

fn keys() -> Credentials {
    Credentials::generate_symmetric_keys()
}

async fn create(store: &dyn IdentityStore, name: &str, credentials: Credentials) -> DeviceIdentity {
    store
        .create(NewIdentity::new(id(name), credentials))
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"))
}

/// Create, get (fields and timestamps), delete, and the errors for missing ids.
pub async fn create_get_delete(store: &dyn IdentityStore) {
    let before = iot_core::Timestamp::now();
    let name = fresh_name("tk-cgd");
    let created = create(store, &name, keys()).await;
    assert_eq!(created.id.as_str(), name);
    assert!(created.status.is_enabled());
    assert!(created.created_at >= before);
    assert_eq!(created.created_at, created.updated_at);
    assert_eq!(created.created_at, created.status_updated_at);
    let got = store.get(&created.id).await.expect("get");
    assert_eq!(
        got.as_deref(),
        Some(&created),
        "get returns what create returned"
    );
    let missing = fresh_id("tk-cgd-missing");
    assert_eq!(store.get(&missing).await.expect("get missing"), None);

    store.delete(&created.id, None).await.expect("delete");
    assert_eq!(store.get(&created.id).await.expect("get deleted"), None);
    assert!(matches!(
        store.delete(&missing, None).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        store
            .set_status(&missing, DeviceStatus::Enabled, None)
            .await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        store
            .replace_credentials(&missing, Credentials::None, None)
            .await,
        Err(Error::NotFound { .. })
    ));
}

/// A second create of an id fails and changes nothing; of concurrent creates exactly one wins.
pub async fn create_is_unique(store: &dyn IdentityStore) {
    let first = create(store, &fresh_name("tk-uniq"), keys()).await;
    let again = store
        .create(NewIdentity::new(first.id.clone(), Credentials::None))
        .await;
    assert!(
        matches!(again, Err(Error::AlreadyExists { .. })),
        "{again:?}"
    );
    assert_eq!(
        store.get(&first.id).await.expect("get").as_deref(),
        Some(&first)
    );

    let contested = fresh_id("tk-uniq-race");
    let racer = || store.create(NewIdentity::new(contested.clone(), keys()));
    let results = tokio::join!(racer(), racer(), racer(), racer(), racer(), racer());
    let results = [
        results.0, results.1, results.2, results.3, results.4, results.5,
    ];
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "exactly one concurrent create succeeds");
    assert!(
        results
            .iter()
            .all(|r| r.is_ok() || matches!(r, Err(Error::AlreadyExists { .. })))
    );
}

/// Every write gives a new etag; `if_match` with a stale etag fails and changes nothing.
pub async fn etags_and_preconditions(store: &dyn IdentityStore) {
    let name = fresh_name("tk-etag");
    let v1 = create(store, &name, keys()).await;
    let v2 = store
        .set_status(&v1.id, DeviceStatus::disabled("maintenance"), Some(v1.etag))
        .await
        .expect("write with the current etag");
    assert_ne!(v1.etag, v2.etag);
    let stale = store
        .set_status(&v1.id, DeviceStatus::Enabled, Some(v1.etag))
        .await;
    match stale {
        Err(Error::PreconditionFailed {
            expected, actual, ..
        }) => {
            assert_eq!((expected, actual), (v1.etag, v2.etag));
        }
        other => panic!("stale etag accepted: {other:?}"),
    }
    assert!(matches!(
        store
            .replace_credentials(&v1.id, keys(), Some(v1.etag))
            .await,
        Err(Error::PreconditionFailed { .. })
    ));
    assert!(matches!(
        store.delete(&v1.id, Some(v1.etag)).await,
        Err(Error::PreconditionFailed { .. })
    ));
    assert_eq!(
        store.get(&v1.id).await.expect("get").as_deref(),
        Some(&v2),
        "nothing changed"
    );
    let v3 = store
        .replace_credentials(&v1.id, keys(), None)
        .await
        .expect("unconditional write");
    assert!(v3.etag != v2.etag && v3.etag != v1.etag);
    store
        .delete(&v1.id, Some(v3.etag))
        .await
        .expect("delete with the current etag");
    let again = create(store, &name, keys()).await;
    assert!(
        ![v1.etag, v2.etag, v3.etag].contains(&again.etag),
        "etags are not reused after delete and re-create"
    );
    let parsed: ETag = again
        .etag
        .to_string()
        .parse()
        .expect("etag round-trips as text");
    assert_eq!(parsed, again.etag);
}

/// Disable with a reason, enable again; timestamps follow.
pub async fn status_changes(store: &dyn IdentityStore) {
    let v1 = create(store, &fresh_name("tk-status"), keys()).await;
    // Timestamps have microsecond resolution; make sure the clock moves.
    std::thread::sleep(Duration::from_millis(2));
    let v2 = store
        .set_status(&v1.id, DeviceStatus::disabled("lost in the field"), None)
        .await
        .expect("disable");
    assert_eq!(v2.status, DeviceStatus::disabled("lost in the field"));
    assert_eq!(
        v2.credentials, v1.credentials,
        "status changes keep credentials"
    );
    assert_eq!(v2.generation_id, v1.generation_id);
    assert_eq!(v2.created_at, v1.created_at);
    assert!(v2.status_updated_at > v1.status_updated_at);
    assert!(v2.updated_at > v1.updated_at);
    let got = store.get(&v1.id).await.expect("get").expect("exists");
    assert_eq!(got.status, v2.status);
    let v3 = store
        .set_status(&v1.id, DeviceStatus::Enabled, None)
        .await
        .expect("enable");
    assert!(v3.status.is_enabled());
}

/// Every credential kind is stored and returned intact; replacing keeps status and generation.
pub async fn credentials_round_trip(store: &dyn IdentityStore) {
    let thumb = |s: &[u8]| Thumbprint::of_der_certificate(s);
    let kinds = [
        Credentials::None,
        keys(),
        Credentials::X509 {
            primary: thumb(b"one"),
            secondary: thumb(b"two"),
        },
        Credentials::passphrase("open sesame", &PassphraseParams::INSECURE_FOR_TESTS)
            .expect("hash"),
        Credentials::SymmetricKeys {
            primary: SymmetricKey::from_bytes(&[0xA5; 64]).expect("64-byte key"),
            secondary: SymmetricKey::from_bytes(&[0x5A; 32]).expect("32-byte key"),
        },
        Credentials::CertificateAuthority,
    ];
    let prefix = fresh_name("tk-cred");
    for (i, credentials) in kinds.iter().enumerate() {
        let name = format!("{prefix}-{i}");
        let created = create(store, &name, credentials.clone()).await;
        assert_eq!(&created.credentials, credentials);
        let got = store.get(&created.id).await.expect("get").expect("exists");
        assert_eq!(&got.credentials, credentials, "{}", credentials.kind_name());
    }
    let subject = id(&format!("{prefix}-1"));
    let disabled = store
        .set_status(&subject, DeviceStatus::disabled("rolling"), None)
        .await
        .expect("disable");
    let replacement = keys();
    let replaced = store
        .replace_credentials(&subject, replacement.clone(), None)
        .await
        .expect("replace");
    assert_eq!(replaced.credentials, replacement);
    assert_eq!(replaced.status, disabled.status);
    assert_eq!(replaced.generation_id, disabled.generation_id);
    assert_eq!(replaced.status_updated_at, disabled.status_updated_at);
}

/// Re-creating a deleted id gives it a new generation id.
pub async fn generation_changes_when_an_id_is_reused(store: &dyn IdentityStore) {
    let name = fresh_name("tk-gen");
    let first = create(store, &name, keys()).await;
    store.delete(&first.id, None).await.expect("delete");
    let second = create(store, &name, keys()).await;
    assert_ne!(first.generation_id, second.generation_id);
    let third = store
        .set_status(&second.id, DeviceStatus::disabled("x"), None)
        .await
        .expect("disable");
    assert_eq!(
        third.generation_id, second.generation_id,
        "other writes keep it"
    );
}

/// Pages are in id order, bounded by the limit, complete, and `next` is `None` on the last page.
pub async fn paged_listing(store: &dyn IdentityStore) {
    // Every name of this run starts with `prefix`, and `prefix` itself sorts before all of them,
    // so listing can start after it and skip what earlier runs left in the store.
    let prefix = fresh_id("tk-list");
    let mine = format!("{prefix}-");
    let mut names: Vec<String> = (0..25).map(|i| format!("{mine}{i:03}")).collect();
    // Create out of order, and include characters that sort before digits and letters.
    names.push(format!("{mine}!"));
    names.push(format!("{mine}$"));
    for name in names.iter().rev() {
        create(store, name, Credentials::None).await;
    }
    names.sort();
    for limit in [1, 4, 7, 27, 1000] {
        let mut seen = Vec::new();
        let mut after = Some(prefix.clone());
        let mut pages = 0;
        loop {
            let page = store.list(after.as_ref(), limit).await.expect("list");
            pages += 1;
            assert!(pages < 10_000, "listing does not end");
            assert!(page.items.len() <= limit);
            assert!(
                page.items.windows(2).all(|w| w[0].id < w[1].id),
                "ascending order"
            );
            if let (Some(a), Some(first)) = (&after, page.items.first()) {
                assert!(first.id > *a, "pages start after `after`");
            }
            seen.extend(
                page.items
                    .iter()
                    .filter(|r| r.id.as_str().starts_with(&mine))
                    .map(|r| r.id.to_string()),
            );
            match page.next {
                Some(next) => {
                    assert_eq!(page.items.last().map(|r| &r.id), Some(&next));
                    after = Some(next);
                }
                None => break,
            }
        }
        assert_eq!(seen, names, "limit {limit}");
    }
    assert!(matches!(
        store.list(None, 0).await,
        Err(Error::InvalidInput { .. })
    ));
    let capped = store.list(None, usize::MAX).await.expect("huge limit");
    assert!(capped.items.len() <= MAX_PAGE_SIZE);
    let past_end = store
        .list(Some(&id("zzzzzzzz")), 10)
        .await
        .expect("after the last id");
    assert!(past_end.items.iter().all(|r| r.id.as_str() > "zzzzzzzz"));
}

async fn next_change(stream: &mut ChangeStream) -> ChangeEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.recv())
        .await
        .expect("a change arrives within 10 s")
        .expect("the stream is open")
}

/// Every write is published, in order, with the record's new etag.
pub async fn change_stream(store: &dyn IdentityStore) {
    let mut stream = store.subscribe();
    let created = create(store, &fresh_name("tk-change"), keys()).await;
    let disabled = store
        .set_status(&created.id, DeviceStatus::disabled("stolen"), None)
        .await
        .expect("disable");
    let enabled = store
        .set_status(&created.id, DeviceStatus::Enabled, None)
        .await
        .expect("enable");
    let replaced = store
        .replace_credentials(&created.id, keys(), None)
        .await
        .expect("replace");
    store.delete(&created.id, None).await.expect("delete");
    let expected = [
        (ChangeKind::Created, Some(created.etag)),
        (
            ChangeKind::StatusChanged { enabled: false },
            Some(disabled.etag),
        ),
        (
            ChangeKind::StatusChanged { enabled: true },
            Some(enabled.etag),
        ),
        (ChangeKind::CredentialsReplaced, Some(replaced.etag)),
        (ChangeKind::Deleted, None),
    ];
    for (kind, etag) in expected {
        // Other tests may write to the same store concurrently; skip their changes.
        let change = loop {
            match next_change(&mut stream).await {
                ChangeEvent::Changed(c) if c.id == created.id => break c,
                ChangeEvent::Changed(_) => continue,
                ChangeEvent::Lagged { missed } => panic!("lagged by {missed} in a short test"),
            }
        };
        assert_eq!(change.kind, kind);
        assert_eq!(change.generation_id, created.generation_id);
        if let Some(etag) = etag {
            assert_eq!(change.etag, etag);
        }
        assert_eq!(
            change.revokes_sessions(),
            matches!(
                kind,
                ChangeKind::StatusChanged { enabled: false }
                    | ChangeKind::CredentialsReplaced
                    | ChangeKind::Deleted
            )
        );
    }
    // Failed writes publish nothing.
    let _ = store.delete(&created.id, None).await;
    let twice = fresh_id("tk-change-twice");
    let _ = store
        .create(NewIdentity::new(twice.clone(), Credentials::None))
        .await;
    let _ = store
        .create(NewIdentity::new(twice.clone(), Credentials::None))
        .await;
    let mut created_twice = 0;
    while let Some(ChangeEvent::Changed(c)) = stream.try_recv() {
        assert_ne!(c.id, created.id, "a failed delete was published");
        if c.id == twice {
            created_twice += 1;
        }
    }
    assert!(created_twice <= 1, "a failed create was published");
}

/// Over-long disable reasons are refused; huge and odd inputs give errors, not panics.
pub async fn bad_input(store: &dyn IdentityStore) {
    let v = create(store, &fresh_name("tk-bad"), keys()).await;
    let long = DeviceStatus::disabled("x".repeat(crate::identity::MAX_REASON_LEN + 1));
    assert!(matches!(
        store.set_status(&v.id, long.clone(), None).await,
        Err(Error::InvalidInput { .. })
    ));
    let refused = fresh_id("tk-bad-refused");
    let new = NewIdentity {
        id: refused.clone(),
        status: long,
        credentials: Credentials::None,
    };
    assert!(matches!(
        store.create(new).await,
        Err(Error::InvalidInput { .. })
    ));
    assert_eq!(store.get(&refused).await.expect("get"), None);
    let ok_reason = DeviceStatus::disabled("é".repeat(crate::identity::MAX_REASON_LEN / 2));
    let stored = store
        .set_status(&v.id, ok_reason.clone(), None)
        .await
        .expect("1024-byte reason");
    assert_eq!(stored.status, ok_reason);
    let mut max_id = fresh_name("tk-bad-max");
    max_id.extend(std::iter::repeat_n('m', DeviceId::MAX_LEN - max_id.len()));
    create(store, &max_id, keys()).await;
    assert!(store.get(&id(&max_id)).await.expect("get").is_some());
}

/// An [`Authenticator`] over `store` sees every change at once: new keys, disabling and deletion.
pub async fn authentication_follows_the_store(store: Arc<dyn IdentityStore>) {
    let host = "hub.example.net";
    let auth = Authenticator::new(Arc::clone(&store), host);
    let primary = SymmetricKey::generate();
    let secondary = SymmetricKey::generate();
    let device = fresh_id("tk-auth");
    store
        .create(NewIdentity::new(
            device.clone(),
            Credentials::SymmetricKeys {
                primary: primary.clone(),
                secondary: secondary.clone(),
            },
        ))
        .await
        .expect("create");
    let resource = sas::device_resource(host, &device);
    let now = sas::unix_now();
    let token = sas::generate(&resource, &secondary, now + 600, None).expect("token");
    let ok = auth
        .authenticate(&device, Presented::SasToken(token.as_str()))
        .await
        .expect("valid token");
    assert_eq!(ok.key, Some(crate::KeySlot::Secondary));
    store
        .set_status(&device, DeviceStatus::disabled("compromised"), None)
        .await
        .expect("disable");
    assert!(matches!(
        auth.authenticate(&device, Presented::SasToken(token.as_str()))
            .await,
        Err(Error::DeviceDisabled { .. })
    ));
    store
        .set_status(&device, DeviceStatus::Enabled, None)
        .await
        .expect("enable");
    store
        .replace_credentials(&device, keys(), None)
        .await
        .expect("roll keys");
    assert!(matches!(
        auth.authenticate(&device, Presented::SasToken(token.as_str()))
            .await,
        Err(Error::BadSignature)
    ));
    store.delete(&device, None).await.expect("delete");
    assert!(matches!(
        auth.authenticate(&device, Presented::SasToken(token.as_str()))
            .await,
        Err(Error::UnknownDevice { .. })
    ));
}

/// What a reopened store must give back: every acknowledged write, and no etag or generation
/// handed out again. `reopen` closes `store` (the caller's only handle) and opens the same
/// storage again; `None` means the store keeps nothing across a reopen and the check is skipped.
pub async fn survives_reopen<F, Fut>(store: Arc<dyn IdentityStore>, reopen: F)
where
    F: FnOnce(Arc<dyn IdentityStore>) -> Fut,
    Fut: std::future::Future<Output = Option<Arc<dyn IdentityStore>>>,
{
    let plain = create(store.as_ref(), &fresh_name("tk-reopen"), keys()).await;
    let disabled = create(store.as_ref(), &fresh_name("tk-reopen"), keys()).await;
    let disabled = store
        .set_status(&disabled.id, DeviceStatus::disabled("parked"), None)
        .await
        .expect("disable");
    let rolled = create(store.as_ref(), &fresh_name("tk-reopen"), Credentials::None).await;
    let rolled = store
        .replace_credentials(&rolled.id, keys(), None)
        .await
        .expect("replace");
    let gone = create(store.as_ref(), &fresh_name("tk-reopen"), keys()).await;
    store.delete(&gone.id, None).await.expect("delete");
    store.sync().await.expect("sync");
    let given_out = [plain.etag, disabled.etag, rolled.etag, gone.etag];

    let Some(store) = reopen(store).await else {
        return;
    };
    for record in [&plain, &disabled, &rolled] {
        let got = store.get(&record.id).await.expect("get after reopen");
        assert_eq!(
            got.as_deref(),
            Some(record),
            "{} is kept across a reopen",
            record.id
        );
    }
    assert_eq!(
        store.get(&gone.id).await.expect("get after reopen"),
        None,
        "a delete is kept across a reopen"
    );
    let again = create(store.as_ref(), gone.id.as_str(), keys()).await;
    assert_ne!(
        again.generation_id, gone.generation_id,
        "a re-created id gets a new generation after a reopen too"
    );
    let written = store
        .set_status(&plain.id, DeviceStatus::disabled("after reopen"), None)
        .await
        .expect("write after reopen");
    for etag in [again.etag, written.etag] {
        assert!(
            !given_out.contains(&etag),
            "etag {etag} was given out before the reopen"
        );
    }
}
