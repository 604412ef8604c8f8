//! Property test: random operation sequences against both stores and a `BTreeMap` model; the file
//! store is also reopened at random points and must come back identical.

use std::collections::BTreeMap;

use iot_core::DeviceId;
use iot_identity::{
    Credentials, DeviceIdentity, DeviceStatus, ETag, Error, FileIdentityStore,
    FileIdentityStoreConfig, IdentityStore, MemoryIdentityStore, NewIdentity,
};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Precondition {
    None,
    Current,
    Stale,
}

#[derive(Clone, Debug)]
enum Op {
    Create(u8),
    Disable(u8, Precondition),
    Enable(u8, Precondition),
    Replace(u8, Precondition),
    Delete(u8, Precondition),
    Reopen,
}

fn precondition() -> impl Strategy<Value = Precondition> {
    prop_oneof![
        Just(Precondition::None),
        Just(Precondition::Current),
        Just(Precondition::Stale)
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let id = 0u8..6;
    prop_oneof![
        3 => id.clone().prop_map(Op::Create),
        2 => (id.clone(), precondition()).prop_map(|(i, p)| Op::Disable(i, p)),
        1 => (id.clone(), precondition()).prop_map(|(i, p)| Op::Enable(i, p)),
        2 => (id.clone(), precondition()).prop_map(|(i, p)| Op::Replace(i, p)),
        2 => (id, precondition()).prop_map(|(i, p)| Op::Delete(i, p)),
        1 => Just(Op::Reopen),
    ]
}

/// The model's view of a record.
#[derive(Clone, Debug, PartialEq)]
struct Model {
    enabled: bool,
    credentials: Credentials,
    etag: ETag,
}

fn id(i: u8) -> DeviceId {
    format!("dev-{i}").parse().expect("id")
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Ok,
    NotFound,
    AlreadyExists,
    PreconditionFailed,
}

fn outcome<T>(r: Result<T, Error>) -> (Outcome, Option<T>) {
    match r {
        Ok(v) => (Outcome::Ok, Some(v)),
        Err(Error::NotFound { .. }) => (Outcome::NotFound, None),
        Err(Error::AlreadyExists { .. }) => (Outcome::AlreadyExists, None),
        Err(Error::PreconditionFailed { .. }) => (Outcome::PreconditionFailed, None),
        Err(e) => panic!("unexpected error {e}"),
    }
}

async fn run(ops: Vec<Op>, file: bool) {
    let dir = tempfile::tempdir().expect("dir");
    let options = FileIdentityStoreConfig::default().compact_after_wal_bytes(1024);
    let open = || async {
        let s: Box<dyn IdentityStore> = if file {
            Box::new(
                FileIdentityStore::open(dir.path(), options)
                    .await
                    .expect("open"),
            )
        } else {
            Box::new(MemoryIdentityStore::new())
        };
        s
    };
    let mut store = open().await;
    let mut model: BTreeMap<u8, Model> = BTreeMap::new();
    for op in ops {
        let etag_for = |i: u8, p: &Precondition, model: &BTreeMap<u8, Model>| match p {
            Precondition::None => None,
            Precondition::Current => {
                Some(model.get(&i).map_or("1".parse().expect("etag"), |m| m.etag))
            }
            Precondition::Stale => Some("0".parse().expect("etag")),
        };
        let expect = |i: u8, p: &Precondition, model: &BTreeMap<u8, Model>| match (model.get(&i), p)
        {
            (None, _) => Outcome::NotFound,
            (Some(_), Precondition::Stale) => Outcome::PreconditionFailed,
            _ => Outcome::Ok,
        };
        let apply = |model: &mut BTreeMap<u8, Model>, i: u8, r: Option<DeviceIdentity>| {
            if let Some(r) = r {
                model.insert(
                    i,
                    Model {
                        enabled: r.status.is_enabled(),
                        credentials: r.credentials,
                        etag: r.etag,
                    },
                );
            }
        };
        match op {
            Op::Create(i) => {
                let creds = Credentials::generate_symmetric_keys();
                let (got, r) = outcome(store.create(NewIdentity::new(id(i), creds.clone())).await);
                let want = if model.contains_key(&i) {
                    Outcome::AlreadyExists
                } else {
                    Outcome::Ok
                };
                assert_eq!(got, want, "create {i}");
                if let Some(r) = &r {
                    assert_eq!(r.credentials, creds);
                }
                apply(&mut model, i, r);
            }
            Op::Disable(i, ref p) | Op::Enable(i, ref p) => {
                let enable = matches!(op, Op::Enable(..));
                let status = if enable {
                    DeviceStatus::Enabled
                } else {
                    DeviceStatus::disabled("model")
                };
                let want = expect(i, p, &model);
                let (got, r) = outcome(
                    store
                        .set_status(&id(i), status, etag_for(i, p, &model))
                        .await,
                );
                assert_eq!(got, want, "{op:?}");
                if let Some(r) = &r {
                    assert_eq!(r.status.is_enabled(), enable);
                }
                apply(&mut model, i, r);
            }
            Op::Replace(i, ref p) => {
                let creds = Credentials::generate_symmetric_keys();
                let want = expect(i, p, &model);
                let (got, r) = outcome(
                    store
                        .replace_credentials(&id(i), creds.clone(), etag_for(i, p, &model))
                        .await,
                );
                assert_eq!(got, want, "{op:?}");
                if let Some(r) = &r {
                    assert_eq!(r.credentials, creds);
                }
                apply(&mut model, i, r);
            }
            Op::Delete(i, ref p) => {
                let want = expect(i, p, &model);
                let (got, _) = outcome(store.delete(&id(i), etag_for(i, p, &model)).await);
                assert_eq!(got, want, "{op:?}");
                if got == Outcome::Ok {
                    model.remove(&i);
                }
            }
            Op::Reopen => {
                if file {
                    drop(store);
                    store = open().await;
                }
            }
        }
        // The store agrees with the model after every step.
        let page = store.list(None, 100).await.expect("list");
        let actual: BTreeMap<u8, Model> = page
            .items
            .into_iter()
            .map(|r| {
                let i: u8 = r.id.as_str()[4..].parse().expect("model id");
                (
                    i,
                    Model {
                        enabled: r.status.is_enabled(),
                        credentials: r.credentials,
                        etag: r.etag,
                    },
                )
            })
            .collect();
        assert_eq!(actual, model);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn memory_store_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt").block_on(run(ops, false));
    }

    #[test]
    fn file_store_matches_the_model_across_reopens(ops in proptest::collection::vec(op(), 1..60)) {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt").block_on(run(ops, true));
    }
}
