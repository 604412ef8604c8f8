//! The conformance suite against the `Provisioner` over every store pairing it ships with, through
//! `Box<dyn Provisioning>`, and over the fault wrappers with no fault planned; the two stores must
//! agree afterwards every time.

use std::sync::Arc;

use iot_identity::{
    FileIdentityStore, FileIdentityStoreConfig, IdentityStore, MemoryIdentityStore,
};
use iot_provisioning::testkit::{
    self, FaultPlan, FaultyIdentityStore, FaultyJournal, FaultyRegistry,
};
use iot_provisioning::{FileJournal, FileJournalConfig, MemoryJournal, Provisioner, Provisioning};
use iot_registry::{FileRegistry, FileRegistryConfig, MemoryRegistry, Registry};

const HOST: &str = "hub.example.net";

async fn check(identity: Arc<dyn IdentityStore>, registry: Arc<dyn Registry>, p: Provisioner) {
    testkit::run_checks(&p, HOST).await;
    let devices = testkit::assert_agreement(identity.as_ref(), registry.as_ref()).await;
    assert!(devices > 20, "the suite registered {devices} devices");
}

#[tokio::test]
async fn memory_stores() {
    let identity: Arc<dyn IdentityStore> = Arc::new(MemoryIdentityStore::new());
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let p = Provisioner::builder(identity.clone(), registry.clone())
        .host(HOST)
        .open()
        .await
        .expect("open");
    check(identity, registry, p).await;
}

#[tokio::test]
async fn file_stores_and_file_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file_identity = FileIdentityStore::open(
        dir.path().join("identity"),
        FileIdentityStoreConfig::default(),
    )
    .await
    .expect("identity store");
    let file_registry =
        FileRegistry::open(dir.path().join("registry"), FileRegistryConfig::default())
            .await
            .expect("registry");
    let identity: Arc<dyn IdentityStore> = Arc::new(file_identity.clone());
    let registry: Arc<dyn Registry> = Arc::new(file_registry.clone());
    let journal = Arc::new(
        FileJournal::open(dir.path().join("journal"), FileJournalConfig::default())
            .await
            .expect("journal"),
    );
    let p = Provisioner::builder(identity.clone(), registry.clone())
        .journal(journal)
        .sync_stores()
        .host(HOST)
        .bulk_batch(3)
        .open()
        .await
        .expect("open");
    check(identity, registry, p).await;
}

#[tokio::test]
async fn boxed_trait_object() {
    let identity: Arc<dyn IdentityStore> = Arc::new(MemoryIdentityStore::new());
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let p: Box<dyn Provisioning> = Box::new(
        Provisioner::builder(identity.clone(), registry.clone())
            .host(HOST)
            .open()
            .await
            .expect("open"),
    );
    testkit::run_checks(&p, HOST).await;
    testkit::assert_agreement(identity.as_ref(), registry.as_ref()).await;
}

#[tokio::test]
async fn fault_wrappers_without_faults() {
    let plan = FaultPlan::counting();
    let identity: Arc<dyn IdentityStore> = Arc::new(FaultyIdentityStore::new(
        MemoryIdentityStore::new(),
        plan.clone(),
    ));
    let registry: Arc<dyn Registry> =
        Arc::new(FaultyRegistry::new(MemoryRegistry::new(), plan.clone()));
    let journal = Arc::new(FaultyJournal::new(MemoryJournal::new(), plan.clone()));
    let p = Provisioner::builder(identity.clone(), registry.clone())
        .journal(journal)
        .host(HOST)
        .open()
        .await
        .expect("open");
    check(identity, registry, p).await;
    assert!(plan.calls() > 100);
}
