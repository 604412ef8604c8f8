//! An `EnrollmentStore` written the way an integrator would write one: outside this crate, over
//! `Mutex<BTreeMap>`s standing in for two tables of their database, with only the public API. It
//! must pass the enrollment suite twice over one "database", across reopens.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use iot_core::DeviceId;
use iot_provisioning::enrollment::{
    EnrollmentGroup, EnrollmentStore, GroupAttestation, GroupId, IndividualEnrollment, Precondition,
};
use iot_provisioning::testkit::enrollment::{EnrollmentStoreFactory, run_all};
use iot_provisioning::{Error, Result};

/// The "tables": they outlive every handle, as a database outlives a process.
#[derive(Debug, Default)]
struct Tables {
    individuals: BTreeMap<DeviceId, IndividualEnrollment>,
    groups: BTreeMap<GroupId, EnrollmentGroup>,
    /// A sequence, as a database would keep one: versions never repeat, even after deletes.
    last_version: u64,
}

#[derive(Debug)]
struct BTreeMapEnrollments {
    tables: Arc<Mutex<Tables>>,
}

impl BTreeMapEnrollments {
    fn tables(&self) -> Result<MutexGuard<'_, Tables>> {
        self.tables.lock().map_err(|_| {
            Error::backend(
                "btreemap enrollments",
                "a writer panicked holding the lock",
                false,
            )
        })
    }
}

/// The integrator's own precondition rules, written from the trait's contract.
fn check(
    kind: &'static str,
    id: &str,
    current: Option<u64>,
    precondition: Precondition,
    delete: bool,
) -> Result<()> {
    let (not_found, exists) = (
        || Error::EnrollmentNotFound {
            kind,
            id: id.to_owned(),
        },
        || Error::EnrollmentExists {
            kind,
            id: id.to_owned(),
        },
    );
    match (precondition, current) {
        (_, None) if delete => Err(not_found()),
        (Precondition::Absent, Some(_)) if delete => Err(Error::InvalidInput {
            reason: "delete if absent".into(),
        }),
        (Precondition::Any, _) | (Precondition::Absent, None) => Ok(()),
        (Precondition::Absent, Some(_)) => Err(exists()),
        (Precondition::Version(_), None) => Err(not_found()),
        (Precondition::Version(expected), Some(actual)) if expected != actual => {
            Err(Error::EnrollmentChanged {
                kind,
                id: id.to_owned(),
                expected,
                actual,
            })
        }
        (Precondition::Version(_), Some(_)) => Ok(()),
    }
}

fn object(value: &serde_json::Value, what: &str) -> Result<()> {
    if value.is_object() {
        Ok(())
    } else {
        Err(Error::InvalidInput {
            reason: format!("{what} must be a JSON object"),
        })
    }
}

#[async_trait]
impl EnrollmentStore for BTreeMapEnrollments {
    async fn put_individual(
        &self,
        mut enrollment: IndividualEnrollment,
        precondition: Precondition,
    ) -> Result<IndividualEnrollment> {
        object(&enrollment.settings.initial_twin, "initial twin")?;
        object(&enrollment.settings.tags, "tags")?;
        let mut t = self.tables()?;
        let id = enrollment.registration_id.clone();
        let current = t.individuals.get(&id).map(|e| e.version);
        check(
            "individual enrollment",
            id.as_str(),
            current,
            precondition,
            false,
        )?;
        t.last_version += 1;
        enrollment.version = t.last_version;
        t.individuals.insert(id, enrollment.clone());
        Ok(enrollment)
    }

    async fn individual(&self, id: &DeviceId) -> Result<Option<IndividualEnrollment>> {
        Ok(self.tables()?.individuals.get(id).cloned())
    }

    async fn delete_individual(&self, id: &DeviceId, precondition: Precondition) -> Result<()> {
        let mut t = self.tables()?;
        let current = t.individuals.get(id).map(|e| e.version);
        check(
            "individual enrollment",
            id.as_str(),
            current,
            precondition,
            true,
        )?;
        t.individuals.remove(id);
        Ok(())
    }

    async fn individuals(
        &self,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> Result<Vec<IndividualEnrollment>> {
        let t = self.tables()?;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(t.individuals
            .range::<DeviceId, _>((start, Bound::Unbounded))
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn put_group(
        &self,
        mut group: EnrollmentGroup,
        precondition: Precondition,
    ) -> Result<EnrollmentGroup> {
        object(&group.settings.initial_twin, "initial twin")?;
        object(&group.settings.tags, "tags")?;
        if let GroupAttestation::X509Ca { certificates } = &group.attestation {
            let pem = |c: &String| c.starts_with("-----BEGIN CERTIFICATE-----");
            if !(1..=2).contains(&certificates.len()) || !certificates.iter().all(pem) {
                return Err(Error::InvalidInput {
                    reason: "one or two PEM CA certificates".into(),
                });
            }
        }
        let mut t = self.tables()?;
        let id = group.group_id.clone();
        let current = t.groups.get(&id).map(|g| g.version);
        check(
            "enrollment group",
            id.as_str(),
            current,
            precondition,
            false,
        )?;
        t.last_version += 1;
        group.version = t.last_version;
        t.groups.insert(id, group.clone());
        Ok(group)
    }

    async fn group(&self, id: &GroupId) -> Result<Option<EnrollmentGroup>> {
        Ok(self.tables()?.groups.get(id).cloned())
    }

    async fn delete_group(&self, id: &GroupId, precondition: Precondition) -> Result<()> {
        let mut t = self.tables()?;
        let current = t.groups.get(id).map(|g| g.version);
        check("enrollment group", id.as_str(), current, precondition, true)?;
        t.groups.remove(id);
        Ok(())
    }

    async fn groups(&self, after: Option<&GroupId>, limit: usize) -> Result<Vec<EnrollmentGroup>> {
        let t = self.tables()?;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(t.groups
            .range::<GroupId, _>((start, Bound::Unbounded))
            .take(limit)
            .map(|(_, g)| g.clone())
            .collect())
    }
}

struct Database(Arc<Mutex<Tables>>);

#[async_trait]
impl EnrollmentStoreFactory for Database {
    async fn open(&self) -> Result<Arc<dyn EnrollmentStore>> {
        Ok(Arc::new(BTreeMapEnrollments {
            tables: Arc::clone(&self.0),
        }))
    }

    async fn reopen(
        &self,
        previous: Arc<dyn EnrollmentStore>,
    ) -> Option<Result<Arc<dyn EnrollmentStore>>> {
        drop(previous);
        Some(self.open().await)
    }
}

#[tokio::test]
async fn a_btreemap_enrollment_store_passes_the_suite_twice_over_one_database() {
    let database = Database(Arc::default());
    run_all(&database).await;
    run_all(&database).await;
}
