//! Workflow hooks (veto, failure, after, aborted) and the audit trail on the `audit` topic: the
//! testkit's workflow suite against the `Provisioner` over memory stores.

use std::sync::Arc;

use async_trait::async_trait;
use iot_identity::MemoryIdentityStore;
use iot_provisioning::testkit::{self, WorkflowFactory};
use iot_provisioning::{Provisioner, Provisioning, Result, Workflow};
use iot_registry::MemoryRegistry;

struct MemoryProvisioner;

#[async_trait]
impl WorkflowFactory for MemoryProvisioner {
    async fn open(&self, workflow: Workflow) -> Result<Arc<dyn Provisioning>> {
        let p = Provisioner::builder(
            Arc::new(MemoryIdentityStore::new()),
            Arc::new(MemoryRegistry::new()),
        )
        .workflow(workflow)
        .open()
        .await?;
        Ok(Arc::new(p))
    }
}

#[tokio::test]
async fn the_provisioner_runs_hooks_and_audits_every_operation() {
    testkit::run_workflow(&MemoryProvisioner).await;
}

#[tokio::test]
async fn with_actor_renames_the_actor_of_one_handle() {
    let provisioner = Provisioner::builder(
        Arc::new(MemoryIdentityStore::new()),
        Arc::new(MemoryRegistry::new()),
    )
    .actor("ops-console")
    .open()
    .await
    .expect("open");
    assert_eq!(provisioner.workflow().actor_name(), "ops-console");
    assert_eq!(
        provisioner
            .with_actor("night-shift")
            .workflow()
            .actor_name(),
        "night-shift"
    );
}
