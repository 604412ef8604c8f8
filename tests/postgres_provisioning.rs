//! `PgProvisioning` against the machine's PostgreSQL (feature `postgres`): the provisioning
//! conformance suite with the agreement check, and registration and removal as one transaction
//! (a failure of the second store's write leaves the first unchanged). Each run works in
//! namespaces of its own.
#![cfg(feature = "postgres")]

use std::sync::Arc;

use iot_identity::{Credentials, IdentityStore, NewIdentity};
use iot_provisioning::testkit::{self, ProvisioningFactory, WorkflowFactory};
use iot_provisioning::{Error, Provisioning, RegisterRequest, Workflow};
use iot_registry::{DeviceDocument, Registry};
use iot_sdk::postgres::{
    PgIdentityConfig, PgIdentityStore, PgPool, PgProvisioning, PgRegistry, PgRegistryConfig,
};
use serde_json::json;

const URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const HOST: &str = "hub.example.net";

/// The shared server, or `None` (with the reason printed) when it is unreachable outside CI.
// The skip reason goes to the test's own output, where `cargo test` shows it.
#[allow(clippy::print_stderr)]
async fn shared_pool() -> Option<PgPool> {
    let url = std::env::var("IOT_TEST_POSTGRES_URL").unwrap_or_else(|_| URL.to_owned());
    let pool = PgPool::from_url(&url).expect("valid URL");
    match pool.get().await {
        Ok(_) => Some(pool),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: PostgreSQL at {url} is unreachable ({e}); CI runs this test");
            None
        }
        Err(e) => panic!("PostgreSQL at {url} is unreachable under CI: {e}"),
    }
}

async fn stores(pool: &PgPool) -> (PgIdentityStore, PgRegistry) {
    let ns = iot_identity::testkit::fresh_name("prov");
    let identity = PgIdentityStore::open(pool.clone(), PgIdentityConfig::default().namespace(&ns))
        .await
        .expect("identity store");
    let registry = PgRegistry::open(pool.clone(), PgRegistryConfig::default().namespace(&ns))
        .await
        .expect("registry");
    (identity, registry)
}

struct Factory {
    identity: PgIdentityStore,
    registry: PgRegistry,
}

#[async_trait::async_trait]
impl ProvisioningFactory for Factory {
    async fn open(&self) -> iot_provisioning::Result<Arc<dyn Provisioning>> {
        Ok(Arc::new(
            PgProvisioning::open(self.identity.clone(), self.registry.clone(), HOST).await?,
        ))
    }

    fn host(&self) -> &str {
        HOST
    }

    fn stores(&self) -> Option<(Arc<dyn IdentityStore>, Arc<dyn Registry>)> {
        Some((
            Arc::new(self.identity.clone()),
            Arc::new(self.registry.clone()),
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_passes_and_the_stores_agree() {
    let Some(pool) = shared_pool().await else {
        return;
    };
    let (identity, registry) = stores(&pool).await;
    testkit::run_all(&Factory { identity, registry }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_whose_identity_fails_leaves_no_record() {
    let Some(pool) = shared_pool().await else {
        return;
    };
    let (identity, registry) = stores(&pool).await;
    let p = PgProvisioning::open(identity.clone(), registry.clone(), HOST)
        .await
        .expect("open");
    // An identity without a record (written around provisioning): the registry insert of the
    // registration succeeds, the identity insert conflicts, and the transaction rolls back both.
    let id = iot_identity::testkit::fresh_id("half");
    identity
        .create(NewIdentity::new(id.clone(), Credentials::None))
        .await
        .expect("identity");
    let r = p
        .register(RegisterRequest::new(id.clone(), json!({"x": 1})))
        .await;
    assert!(matches!(r, Err(Error::AlreadyExists { .. })), "{r:?}");
    assert!(
        registry.get(&id).await.expect("get").is_none(),
        "no record left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_whose_identity_fails_keeps_the_record() {
    let Some(pool) = shared_pool().await else {
        return;
    };
    let (identity, registry) = stores(&pool).await;
    let p = PgProvisioning::open(identity, registry.clone(), HOST)
        .await
        .expect("open");
    // A record without an identity: the record's delete succeeds, the identity's finds nothing,
    // and the transaction rolls back the record's delete.
    let id = iot_identity::testkit::fresh_id("orphan");
    registry
        .create(&id, DeviceDocument::default())
        .await
        .expect("record");
    let r = p.unregister(&id, None).await;
    assert!(matches!(r, Err(Error::NotFound { .. })), "{r:?}");
    assert!(
        registry.get(&id).await.expect("get").is_some(),
        "the record is kept"
    );
}

struct WorkflowOver {
    identity: PgIdentityStore,
    registry: PgRegistry,
}

#[async_trait::async_trait]
impl WorkflowFactory for WorkflowOver {
    async fn open(&self, workflow: Workflow) -> iot_provisioning::Result<Arc<dyn Provisioning>> {
        let p = PgProvisioning::builder(self.identity.clone(), self.registry.clone())
            .host(HOST)
            .workflow(workflow)
            .open()
            .await?;
        Ok(Arc::new(p))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_and_the_audit_trail_apply_as_in_the_provisioner() {
    let Some(pool) = shared_pool().await else {
        return;
    };
    let (identity, registry) = stores(&pool).await;
    testkit::run_workflow(&WorkflowOver {
        identity: identity.clone(),
        registry: registry.clone(),
    })
    .await;
    testkit::assert_agreement(&identity, &registry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_change_with_metadata_is_one_transaction() {
    let Some(pool) = shared_pool().await else {
        return;
    };
    let (identity, registry) = stores(&pool).await;
    let p = PgProvisioning::open(identity.clone(), registry.clone(), HOST)
        .await
        .expect("open");
    // A record without an identity: the merge succeeds, the status change finds nothing, and
    // the transaction rolls the merge back.
    let orphan = iot_identity::testkit::fresh_id("orphan");
    let before = registry
        .create(&orphan, DeviceDocument::default())
        .await
        .expect("record");
    let r = p.deactivate(&orphan, Some(json!({"state": "off"}))).await;
    assert!(matches!(r, Err(Error::NotFound { .. })), "{r:?}");
    let after = registry.get(&orphan).await.expect("get").expect("kept");
    assert_eq!(after.etag, before.etag, "the merge was rolled back");
    // A registered device: both change, and the result shows both.
    let id = iot_identity::testkit::fresh_id("status");
    p.register(RegisterRequest::new(id.clone(), json!({"site": "north"})))
        .await
        .expect("register");
    let device = p
        .deactivate(&id, Some(json!({"state": "off"})))
        .await
        .expect("deactivate");
    assert!(!device.status.is_enabled());
    assert_eq!(device.record.metadata.get("state"), Some(&json!("off")));
    let stored = identity.get(&id).await.expect("get").expect("identity");
    assert!(!stored.status.is_enabled(), "the identity store saw it");
    let r = p.activate(&id, Some(json!(["not", "an", "object"]))).await;
    assert!(matches!(r, Err(Error::MetadataNotAnObject { .. })), "{r:?}");
    assert!(
        !identity
            .get(&id)
            .await
            .expect("get")
            .expect("identity")
            .status
            .is_enabled(),
        "a refused activation changes nothing"
    );
}
