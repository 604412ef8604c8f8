//! Writes to different devices run side by side; writes to one device, recovery and bulk batches
//! do not overlap with what they must not overlap with.
//!
//! * While one device's registration hangs at any of its store or journal calls, another
//!   device's registration completes; once the hung call is dropped, the next write resolves what
//!   it left, and the stores agree.
//! * Many callers writing overlapping devices over file-backed stores, with calls cancelled at
//!   random points, leave the stores in agreement, and every acknowledged registration of a
//!   device that nobody unregisters survives a restart's recovery.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Stores, faulty};
use iot_core::DeviceId;
use iot_identity::{Durability, FileIdentityStore, FileIdentityStoreConfig};
use iot_provisioning::testkit::{self, FaultMode, FaultPlan};
use iot_provisioning::{
    FileJournal, FileJournalConfig, Provisioner, Provisioning, RegisterRequest,
};
use iot_registry::{FileRegistry, FileRegistryConfig};
use rand::Rng;
use serde_json::json;

fn id(s: &str) -> DeviceId {
    DeviceId::new(s).expect("id")
}

fn req(s: &str) -> RegisterRequest {
    RegisterRequest::new(id(s), json!({"name": s}))
}

async fn open(s: &Stores) -> Provisioner {
    Provisioner::builder(s.identity.clone(), s.registry.clone())
        .journal(s.journal.clone())
        .open()
        .await
        .expect("open")
}

#[tokio::test]
async fn another_device_is_written_while_one_device_hangs_at_any_call() {
    let clean = faulty(FaultPlan::counting());
    let p = open(&clean).await;
    let before = clean.plan.calls();
    p.register(req("slow")).await.expect("register");
    let calls = clean.plan.calls() - before;
    assert!(calls >= 4, "a registration makes {calls} calls");

    let mut hung = 0;
    for n in before + 1..=before + calls {
        let run = faulty(FaultPlan::fail_at(n, FaultMode::Hang));
        let p = open(&run).await;
        let slow = tokio::spawn({
            let p = p.clone();
            async move { p.register(req("slow")).await }
        });
        // Wait until the slow registration is stuck in its hanging call.
        tokio::time::timeout(Duration::from_secs(10), async {
            while run.plan.calls() < n {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("N={n}: the hanging call was never reached"));
        // Another device's registration completes meanwhile. Devices share one of 256 stripe
        // locks by a hash of their id (writer.rs), so one other id in 256 waits behind the hung
        // one, as documented: then the next candidate is tried (its cancelled wait for the lock
        // began nothing).
        let mut fast = None;
        for candidate in ["fast", "fast-b", "fast-c"] {
            let write = p.register(req(candidate));
            if let Ok(result) = tokio::time::timeout(Duration::from_secs(2), write).await {
                result.unwrap_or_else(|e| panic!("N={n}: {e}"));
                fast = Some(candidate);
                break;
            }
        }
        let fast =
            fast.unwrap_or_else(|| panic!("N={n}: other devices' writes waited for the hung one"));
        // (The identity store's `get` fails instead of hanging: then the slow call is over,
        // with an error.)
        let hanging = !slow.is_finished();
        hung += usize::from(hanging);

        // The caller gives up on the hung call; the next write resolves what it left.
        slow.abort();
        match slow.await {
            Err(cancelled) => assert!(hanging && cancelled.is_cancelled(), "N={n}"),
            Ok(result) => assert!(
                !hanging && result.is_err(),
                "N={n}: the registration succeeded through its fault"
            ),
        }
        run.plan.disarm();
        p.update(&id(fast), json!({"after": n}), None)
            .await
            .unwrap_or_else(|e| panic!("N={n}: {e}"));
        testkit::assert_agreement(run.identity.as_ref(), run.registry.as_ref()).await;
        assert!(p.get(&id(fast)).await.expect("get").is_some());
        // A registration that never returned rolled back, whatever call before its finish it
        // hung in; hung in the finish itself (which took effect), it stands, as one killed
        // between its finish and its return does.
        let last = n == before + calls;
        assert_eq!(
            p.get(&id("slow")).await.expect("get").is_some(),
            last,
            "N={n} of {calls}: the unacknowledged registration's fate"
        );
    }
    assert!(hung as u64 + 2 >= calls, "{hung} of {calls} calls hung");
}

async fn file_stores(dir: &std::path::Path) -> Stores {
    let identity = FileIdentityStore::open(
        dir.join("identity"),
        FileIdentityStoreConfig::with_durability(Durability::Fsync),
    )
    .await
    .expect("identity");
    let registry = FileRegistry::open(
        dir.join("registry"),
        FileRegistryConfig::default().durability(iot_registry::Durability::Fsync),
    )
    .await
    .expect("registry");
    let journal = FileJournal::open(dir.join("journal"), FileJournalConfig::default())
        .await
        .expect("journal");
    Stores {
        identity: Arc::new(identity),
        registry: Arc::new(registry),
        journal: Arc::new(journal),
        plan: FaultPlan::counting(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_with_cancelled_calls_leave_the_stores_in_agreement() {
    const WRITERS: usize = 16;
    const OPS: usize = 25;
    let dir = tempfile::tempdir().expect("dir");
    // Devices k0..k9 are never unregistered: an acknowledged registration of one must survive.
    // Devices u0..u9 are registered and unregistered by anyone.
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    {
        let stores = file_stores(dir.path()).await;
        let p = open(&stores).await;
        let tasks: Vec<_> = (0..WRITERS)
            .map(|_| {
                let p = p.clone();
                let acked = Arc::clone(&acked);
                tokio::spawn(async move {
                    for _ in 0..OPS {
                        let (op, n, micros) = {
                            let mut rng = rand::rng();
                            (
                                rng.random_range(0..6u8),
                                rng.random_range(0..10u8),
                                // A third of the calls run to the end.
                                rng.random_range(0..30_000u64),
                            )
                        };
                        let kept = format!("k{n}");
                        let churned = format!("u{n}");
                        let limit = Duration::from_micros(if micros > 20_000 {
                            60_000_000
                        } else {
                            micros
                        });
                        let call = async {
                            match op {
                                0 => p.register(req(&kept)).await.map(|r| {
                                    acked.lock().expect("acked").insert(r.device.id);
                                }),
                                1 => p
                                    .update(&id(&kept), json!({"n": micros}), None)
                                    .await
                                    .map(drop),
                                2 => p
                                    .deactivate(&id(&kept), Some(json!({"off": true})))
                                    .await
                                    .map(drop),
                                3 => p
                                    .activate(&id(&kept), Some(json!({"off": null})))
                                    .await
                                    .map(drop),
                                4 => p.register(req(&churned)).await.map(drop),
                                _ => p.unregister(&id(&churned), None).await,
                            }
                        };
                        // Errors (not found, already exists, a cancelled call's leftovers) are
                        // part of the game; only agreement and acknowledged registrations count.
                        let _ = tokio::time::timeout(limit, call).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("writer");
        }
        // Whatever a cancelled call left is resolved by the next write (or recovery).
        p.recover().await.expect("recover");
        testkit::assert_agreement(stores.identity.as_ref(), stores.registry.as_ref()).await;
    }
    // A restart over the same directories.
    let stores = file_stores(dir.path()).await;
    let p = open(&stores).await;
    testkit::assert_agreement(stores.identity.as_ref(), stores.registry.as_ref()).await;
    let acked = acked.lock().expect("acked").clone();
    for device in &acked {
        assert!(
            p.get(device).await.expect("get").is_some(),
            "{device} was acknowledged, then lost"
        );
    }
    assert!(!acked.is_empty(), "some registration was acknowledged");
}
