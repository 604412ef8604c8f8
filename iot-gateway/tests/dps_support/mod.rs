//! A hub with an onboarding service behind its MQTT endpoint: identity store shared by the
//! hub and the provisioner, memory registry, enrollments in memory, the audit trail on a
//! memory log.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::Arc;

use iot_core::{Log, LogExt, MemoryLog, Offset, ReadLimits};
use iot_gateway::Hub;
use iot_gateway::mqtt::{MqttConfig, MqttServer};
use iot_identity::{MemoryIdentityStore, SymmetricKey, sas};
use iot_provisioning::enrollment::{
    EnrollmentGroup, EnrollmentStore, GroupAttestation, MemoryEnrollmentStore, Precondition,
};
use iot_provisioning::onboarding::{Onboarding, OnboardingConfig};
use iot_provisioning::{AuditRecord, Provisioner, Workflow};
use iot_registry::MemoryRegistry;

/// The id scope devices are given.
pub const SCOPE: &str = "0ne00DPS001";

pub struct Dps {
    pub hub: Hub,
    pub identity: Arc<MemoryIdentityStore>,
    pub provisioner: Provisioner,
    pub enrollments: Arc<MemoryEnrollmentStore>,
    pub onboarding: Arc<Onboarding>,
    pub audit: Arc<dyn Log>,
}

impl Dps {
    /// The stack over `hub` (whose identity store is `identity`), assigning devices to `host`.
    pub async fn new(hub: Hub, identity: Arc<MemoryIdentityStore>, host: &str) -> Dps {
        let audit: Arc<dyn Log> = Arc::new(MemoryLog::new(4).expect("log"));
        let provisioner = Provisioner::builder(identity.clone(), Arc::new(MemoryRegistry::new()))
            .workflow(Workflow::new().audit_log(audit.clone()).actor("dps"))
            .open()
            .await
            .expect("provisioner");
        let enrollments = Arc::new(MemoryEnrollmentStore::new());
        let onboarding = Arc::new(
            Onboarding::new(
                enrollments.clone(),
                Arc::new(provisioner.clone()),
                OnboardingConfig::new(SCOPE, host),
            )
            .expect("onboarding"),
        );
        Dps {
            hub,
            identity,
            provisioner,
            enrollments,
            onboarding,
            audit,
        }
    }

    /// Admits X.509 enrollment groups' devices whose chains lead to a CA `authorities` holds
    /// verified (the onboarding service is rebuilt over the same stores).
    pub fn with_certificate_authorities(
        mut self,
        authorities: iot_identity::ca::CertificateAuthorities,
    ) -> Dps {
        let config = self.onboarding.config().clone();
        self.onboarding = Arc::new(
            Onboarding::new(
                self.enrollments.clone(),
                Arc::new(self.provisioner.clone()),
                config,
            )
            .expect("onboarding")
            .with_certificate_authorities(authorities),
        );
        self
    }

    /// An MQTT server over the hub serving DPS too.
    pub fn server(&self, config: MqttConfig) -> MqttServer {
        MqttServer::with_onboarding(Arc::new(self.hub.clone()), config, self.onboarding.clone())
            .expect("server")
    }

    /// A symmetric-key group; returns its primary key.
    pub async fn group(&self, id: &str, edit: impl FnOnce(&mut EnrollmentGroup)) -> SymmetricKey {
        let key = SymmetricKey::generate();
        let mut group = EnrollmentGroup::new(
            id.parse().expect("group id"),
            GroupAttestation::SymmetricKey {
                primary: key.clone(),
                secondary: SymmetricKey::generate(),
            },
        );
        edit(&mut group);
        self.enrollments
            .put_group(group, Precondition::Any)
            .await
            .expect("put group");
        key
    }

    /// The `register` records on the audit trail, per device.
    pub async fn registers(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for partition in self.audit.partitions() {
            let mut offset = Offset(0);
            loop {
                let batch = self
                    .audit
                    .read(partition, offset, ReadLimits::default())
                    .await
                    .expect("read audit");
                let Some(last) = batch.last() else { break };
                offset = Offset(last.offset.0 + 1);
                for r in &batch {
                    let record = AuditRecord::from_payload(&r.record.payload).expect("audit");
                    if record.operation == "register" {
                        *counts.entry(record.device_id).or_default() += 1;
                    }
                }
            }
        }
        counts
    }
}

/// DPS's registration token: resource `{scope}/registrations/{id}`, no key name (as the Azure
/// SDKs send it).
pub fn registration_token(registration_id: &str, key: &SymmetricKey) -> String {
    sas::generate(
        &format!("{SCOPE}/registrations/{registration_id}"),
        key,
        sas::unix_now() + 3600,
        None,
    )
    .expect("token")
    .as_str()
    .to_string()
}

/// The CONNECT username the Python SDK sends.
pub fn registration_username(registration_id: &str) -> String {
    format!("{SCOPE}/registrations/{registration_id}/api-version=2019-03-31&ClientVersion=rumqttc")
}
