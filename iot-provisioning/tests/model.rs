//! Random operation sequences against a simple model (a map from device to status and metadata):
//! every call's outcome and the final state must match the model, and the identity store and the
//! registry must agree after every step.

use std::collections::BTreeMap;
use std::sync::Arc;

use iot_core::DeviceId;
use iot_identity::{IdentityStore, MemoryIdentityStore};
use iot_provisioning::testkit;
use iot_provisioning::{BulkMode, Error, Provisioner, Provisioning, RegisterRequest};
use iot_registry::{MemoryRegistry, Registry, merge_patch};
use proptest::prelude::*;
use serde_json::{Value, json};

#[derive(Clone, Debug)]
enum Op {
    Register(u8, Value),
    Unregister(u8),
    Activate(u8, Option<Value>),
    Deactivate(u8, Option<Value>),
    Update(u8, Value),
    Reset(u8),
    Bulk(Vec<(u8, Value)>, bool),
}

fn metadata() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => (0..3u8, prop_oneof![Just(Value::Null), (0..5i64).prop_map(Value::from)])
            .prop_map(|(k, v)| json!({ format!("k{k}"): v })),
        1 => Just(json!([1])),
        1 => Just(json!("text")),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let dev = 0..6u8;
    prop_oneof![
        (dev.clone(), metadata()).prop_map(|(d, m)| Op::Register(d, m)),
        dev.clone().prop_map(Op::Unregister),
        (dev.clone(), proptest::option::of(metadata())).prop_map(|(d, m)| Op::Activate(d, m)),
        (dev.clone(), proptest::option::of(metadata())).prop_map(|(d, m)| Op::Deactivate(d, m)),
        (dev.clone(), metadata()).prop_map(|(d, m)| Op::Update(d, m)),
        dev.clone().prop_map(Op::Reset),
        (
            proptest::collection::vec((dev, metadata()), 0..5),
            any::<bool>()
        )
            .prop_map(|(items, aon)| Op::Bulk(items, aon)),
    ]
}

fn id(d: u8) -> DeviceId {
    DeviceId::new(format!("m{d}")).expect("id")
}

#[derive(Clone, Debug, PartialEq)]
struct Known {
    enabled: bool,
    metadata: Value,
}

/// What the model expects a call to give: `Ok(())` or the error kind.
type Expect = Result<(), &'static str>;

fn merged(known: &Known, patch: &Value) -> Value {
    let mut target = known.metadata.clone();
    merge_patch(&mut target, patch, 64).expect("merge");
    target
}

fn kind<T>(r: &Result<T, Error>) -> Expect {
    r.as_ref().map(drop).map_err(Error::kind)
}

async fn step(p: &Provisioner, model: &mut BTreeMap<u8, Known>, op: &Op) {
    match op {
        Op::Register(d, m) => {
            let r = p.register(RegisterRequest::new(id(*d), m.clone())).await;
            let expect: Expect = if !m.is_object() {
                Err("metadata_not_an_object")
            } else if model.contains_key(d) {
                Err("already_exists")
            } else {
                model.insert(
                    *d,
                    Known {
                        enabled: true,
                        metadata: m.clone(),
                    },
                );
                Ok(())
            };
            assert_eq!(kind(&r), expect, "{op:?}");
        }
        Op::Unregister(d) => {
            let r = p.unregister(&id(*d), None).await;
            let expect = if model.remove(d).is_some() {
                Ok(())
            } else {
                Err("not_found")
            };
            assert_eq!(kind(&r), expect, "{op:?}");
        }
        Op::Activate(d, m) | Op::Deactivate(d, m) => {
            let enable = matches!(op, Op::Activate(..));
            let r = if enable {
                p.activate(&id(*d), m.clone()).await
            } else {
                p.deactivate(&id(*d), m.clone()).await
            };
            let expect = match (model.get_mut(d), m) {
                (_, Some(m)) if !m.is_object() => Err("metadata_not_an_object"),
                (None, _) => Err("not_found"),
                (Some(known), m) => {
                    if let Some(m) = m {
                        known.metadata = merged(known, m);
                    }
                    known.enabled = enable;
                    Ok(())
                }
            };
            assert_eq!(kind(&r), expect, "{op:?}");
        }
        Op::Update(d, m) => {
            let r = p.update(&id(*d), m.clone(), None).await;
            let expect = match model.get_mut(d) {
                _ if !m.is_object() => Err("metadata_not_an_object"),
                None => Err("not_found"),
                Some(known) => {
                    known.metadata = merged(known, m);
                    Ok(())
                }
            };
            assert_eq!(kind(&r), expect, "{op:?}");
        }
        Op::Reset(d) => {
            let r = p.reset_credentials(&id(*d), None).await;
            let expect = match model.get(d) {
                None => Err("not_found"),
                Some(k) if !k.enabled => Err("device_disabled"),
                Some(_) => Ok(()),
            };
            assert_eq!(kind(&r), expect, "{op:?}");
        }
        Op::Bulk(items, aon) => {
            let mode = if *aon {
                BulkMode::AllOrNothing
            } else {
                BulkMode::BestEffort
            };
            let requests = items
                .iter()
                .map(|(d, m)| RegisterRequest::new(id(*d), m.clone()))
                .collect();
            let results = p.bulk(requests, mode).await.expect("bulk");
            let mut seen = std::collections::BTreeSet::new();
            let expect: Vec<Expect> = items
                .iter()
                .map(|(d, m)| {
                    if !m.is_object() {
                        Err("metadata_not_an_object")
                    } else if !seen.insert(*d) || model.contains_key(d) {
                        Err("already_exists")
                    } else {
                        Ok(())
                    }
                })
                .collect();
            let all_ok = expect.iter().all(Result::is_ok);
            let expect: Vec<Expect> = if *aon && !all_ok {
                expect.into_iter().map(|e| e.and(Err("aborted"))).collect()
            } else {
                expect
            };
            for ((d, m), e) in items.iter().zip(&expect) {
                if e.is_ok() {
                    model.insert(
                        *d,
                        Known {
                            enabled: true,
                            metadata: m.clone(),
                        },
                    );
                }
            }
            let got: Vec<Expect> = results.iter().map(kind).collect();
            assert_eq!(got, expect, "{op:?}");
        }
    }
}

async fn check_state(p: &Provisioner, model: &BTreeMap<u8, Known>) {
    for d in 0..6u8 {
        let got = p.get(&id(d)).await.expect("get").map(|dev| Known {
            enabled: dev.status.is_enabled(),
            metadata: Value::Object(dev.record.metadata),
        });
        assert_eq!(got.as_ref(), model.get(&d), "device m{d}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn provisioning_follows_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(async {
            let identity: Arc<dyn IdentityStore> = Arc::new(MemoryIdentityStore::new());
            let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
            let p = Provisioner::builder(identity.clone(), registry.clone())
                .bulk_batch(2)
                .open()
                .await
                .expect("open");
            let mut model = BTreeMap::new();
            for op in &ops {
                step(&p, &mut model, op).await;
                let n = testkit::assert_agreement(identity.as_ref(), registry.as_ref()).await;
                assert_eq!(n, model.len());
            }
            check_state(&p, &model).await;
        });
    }
}
