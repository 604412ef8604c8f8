//! kill -9 at random points: a child process provisions devices through a `Provisioner` over the
//! file-backed identity store, registry and journal (every operation kind, single and bulk, with
//! tiny compaction thresholds so kills also land in compactions) and is killed with SIGKILL at a
//! random moment, 25 times over the same directories. After each kill a new provisioner opens
//! the directories (running recovery), and then:
//!
//! * the identity store and the registry hold exactly the same devices;
//! * a device is disabled exactly when its record says `state: off` (status and metadata change
//!   together, so a half-done activate or deactivate would show here);
//! * every acknowledged registration not followed by an unregister still exists;
//! * no device exists that a child never began to register.
//!
//! The child runs on the shared kill -9 harness ([`iot_core::testkit::crash`]); it prints
//! `begin reg <id>`, `ack reg <id>` and `begin unreg <id>` lines.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use iot_core::DeviceId;
use iot_core::testkit::crash::{CrashChild, ack};
use iot_identity::{Durability, FileIdentityStore, FileIdentityStoreConfig, IdentityStore};
use iot_provisioning::testkit;
use iot_provisioning::{
    BulkMode, FileJournal, FileJournalConfig, Journal, Provisioner, Provisioning, RegisterRequest,
};
use iot_registry::{FileRegistry, FileRegistryConfig, Registry};
use rand::Rng;
use serde_json::json;

const CHILD: CrashChild = CrashChild::new("crash_child", "IOT_PROVISIONING_CRASH_CHILD_DIR");
const KILLS: usize = 25;

struct Opened {
    identity: Arc<dyn IdentityStore>,
    registry: Arc<dyn Registry>,
    provisioner: Provisioner,
}

async fn open(dir: &Path) -> Opened {
    let identity: Arc<dyn IdentityStore> = Arc::new(
        FileIdentityStore::open(
            dir.join("identity"),
            FileIdentityStoreConfig::with_durability(Durability::OsBuffered)
                .compact_after_wal_bytes(16 * 1024),
        )
        .await
        .expect("identity store"),
    );
    let registry: Arc<dyn Registry> = Arc::new(
        FileRegistry::open(
            dir.join("registry"),
            FileRegistryConfig::default()
                .durability(iot_registry::Durability::OsBuffered)
                .compact_after_bytes(16 * 1024),
        )
        .await
        .expect("registry"),
    );
    let journal = Arc::new(
        FileJournal::open(dir.join("journal"), FileJournalConfig::default())
            .await
            .expect("journal"),
    );
    let provisioner = Provisioner::builder(identity.clone(), registry.clone())
        .journal(journal)
        .bulk_batch(4)
        .open()
        .await
        .expect("provisioner (recovery)");
    Opened {
        identity,
        registry,
        provisioner,
    }
}

#[test]
#[ignore = "the child process of kill_9_at_random_points_leaves_the_stores_in_agreement"]
fn crash_child() {
    let Some(dir) = CHILD.dir() else { return };
    let run = CHILD.round();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let opened = open(&dir).await;
        let p = opened.provisioner;
        ack("ready");
        let mut rng = rand::rng();
        let mut mine: Vec<DeviceId> = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        for k in 0u64.. {
            if std::time::Instant::now() > deadline {
                break;
            }
            let name = |i: u64| DeviceId::new(format!("r{run}-{k}-{i}")).expect("id");
            match rng.random_range(0..8) {
                0 | 1 => {
                    let id = name(0);
                    ack(format!("begin reg {id}"));
                    if p.register(RegisterRequest::new(id.clone(), json!({"k": k})))
                        .await
                        .is_ok()
                    {
                        ack(format!("ack reg {id}"));
                        mine.push(id);
                    }
                }
                2 | 3 => {
                    let mode = if k % 2 == 0 {
                        BulkMode::BestEffort
                    } else {
                        BulkMode::AllOrNothing
                    };
                    let mut requests: Vec<RegisterRequest> = (0..6)
                        .map(|i| RegisterRequest::new(name(i), json!({"k": k, "i": i})))
                        .collect();
                    if k % 3 == 0 {
                        // An invalid item: all-or-nothing fails whole, best effort skips it.
                        requests.push(RegisterRequest::new(name(99), json!("not an object")));
                    }
                    for r in &requests {
                        ack(format!("begin reg {}", r.id.as_ref().expect("id")));
                    }
                    if let Ok(results) = p.bulk(requests, mode).await {
                        for r in results.into_iter().flatten() {
                            ack(format!("ack reg {}", r.device.id));
                            mine.push(r.device.id);
                        }
                    }
                }
                4 if !mine.is_empty() => {
                    let id = mine.swap_remove(rng.random_range(0..mine.len()));
                    ack(format!("begin unreg {id}"));
                    let _ = p.unregister(&id, None).await;
                }
                5 if !mine.is_empty() => {
                    let id = &mine[rng.random_range(0..mine.len())];
                    let _ = p
                        .deactivate(id, Some(json!({"state": "off", "k": k})))
                        .await;
                }
                6 if !mine.is_empty() => {
                    let id = &mine[rng.random_range(0..mine.len())];
                    let _ = p.activate(id, Some(json!({"state": "on", "k": k}))).await;
                }
                _ if !mine.is_empty() => {
                    let id = &mine[rng.random_range(0..mine.len())];
                    let _ = p.update(id, json!({"touched": k}), None).await;
                    let _ = p.reset_credentials(id, None).await;
                }
                _ => {}
            }
        }
    });
}

#[test]
#[allow(clippy::print_stderr)]
fn kill_9_at_random_points_leaves_the_stores_in_agreement() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut begun: BTreeSet<String> = BTreeSet::new();
    let mut alive: BTreeSet<String> = BTreeSet::new();
    let mut acks = 0usize;
    let mut interrupted = 0usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for run in 0..KILLS {
        // The child signals "ready" once recovery is done, then provisions until killed.
        let lines = CHILD.run_and_kill(dir.path(), run, 5..250);
        for line in &lines {
            match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["begin", "reg", id] => {
                    begun.insert(id.to_string());
                }
                ["ack", "reg", id] => {
                    acks += 1;
                    alive.insert(id.to_string());
                }
                ["begin", "unreg", id] => {
                    alive.remove(*id);
                }
                _ => {}
            }
        }
        rt.block_on(async {
            // What the kill left unfinished (the provisioner opened next resolves it).
            let journal =
                FileJournal::open(dir.path().join("journal"), FileJournalConfig::default())
                    .await
                    .expect("journal");
            interrupted += journal.pending().await.expect("pending").len();
            drop(journal);
            let opened = open(dir.path()).await;
            let devices =
                testkit::assert_agreement(opened.identity.as_ref(), opened.registry.as_ref()).await;
            let (ids, _) =
                testkit::ids_in_both(opened.identity.as_ref(), opened.registry.as_ref()).await;
            for id in &ids {
                assert!(
                    begun.contains(id.as_str()),
                    "run {run}: {id} was never registered"
                );
                let device = opened
                    .provisioner
                    .get(id)
                    .await
                    .expect("get")
                    .expect("exists in both");
                let off = device.record.metadata.get("state") == Some(&json!("off"));
                assert_eq!(
                    off,
                    !device.status.is_enabled(),
                    "run {run}: {id} has status {:?} but metadata {:?}",
                    device.status,
                    device.record.metadata
                );
            }
            for id in &alive {
                assert!(
                    ids.contains(&DeviceId::new(id).expect("id")),
                    "run {run}: acknowledged {id} is gone"
                );
            }
            eprintln!("run {run}: {devices} devices agree");
        });
    }
    assert!(
        acks > KILLS,
        "the children provisioned ({acks} acknowledged registrations)"
    );
    // Kills landed between an intent and its finish, so recovery had work to do.
    assert!(interrupted > 0, "no kill interrupted an operation");
    eprintln!(
        "{KILLS} kills, {acks} acknowledged registrations, {interrupted} interrupted intents resolved"
    );
}
