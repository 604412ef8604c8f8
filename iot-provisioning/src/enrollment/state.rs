//! The enrollments of a store and the rules every write follows, shared by the memory and file
//! stores so that both decide the same way: a write is planned against the state (its
//! precondition checked, its version drawn), then applied.

use std::collections::BTreeMap;
use std::ops::Bound;

use iot_core::DeviceId;

use super::Precondition;
use super::types::{EnrollmentGroup, GroupId, IndividualEnrollment};
use crate::error::{Error, Result};

/// Every enrollment of a store, and the last version given out. Versions are drawn from one
/// counter for the whole store, so an enrollment deleted and created again never repeats a
/// version an old reader may hold.
#[derive(Debug, Default, Clone)]
pub(crate) struct Enrollments {
    pub(crate) individuals: BTreeMap<DeviceId, IndividualEnrollment>,
    pub(crate) groups: BTreeMap<GroupId, EnrollmentGroup>,
    pub(crate) last_version: u64,
}

/// One planned write.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    PutIndividual(IndividualEnrollment),
    DeleteIndividual(DeviceId),
    PutGroup(EnrollmentGroup),
    DeleteGroup(GroupId),
}

const INDIVIDUAL: &str = "individual enrollment";
const GROUP: &str = "enrollment group";

impl Enrollments {
    /// The stored form of `enrollment` if `precondition` holds; validates it first.
    pub(crate) fn plan_put_individual(
        &self,
        mut enrollment: IndividualEnrollment,
        precondition: Precondition,
    ) -> Result<IndividualEnrollment> {
        let id = enrollment.registration_id.as_str();
        enrollment.settings.validate(id)?;
        let current = self
            .individuals
            .get(&enrollment.registration_id)
            .map(|e| e.version);
        check_put(INDIVIDUAL, id, current, precondition)?;
        enrollment.version = self.next_version()?;
        Ok(enrollment)
    }

    pub(crate) fn plan_delete_individual(
        &self,
        id: &DeviceId,
        precondition: Precondition,
    ) -> Result<()> {
        let current = self.individuals.get(id).map(|e| e.version);
        check_delete(INDIVIDUAL, id.as_str(), current, precondition)
    }

    pub(crate) fn plan_put_group(
        &self,
        mut group: EnrollmentGroup,
        precondition: Precondition,
    ) -> Result<EnrollmentGroup> {
        let id = group.group_id.as_str();
        group.settings.validate(id)?;
        group.attestation.validate(id)?;
        let current = self.groups.get(&group.group_id).map(|g| g.version);
        check_put(GROUP, id, current, precondition)?;
        group.version = self.next_version()?;
        Ok(group)
    }

    pub(crate) fn plan_delete_group(&self, id: &GroupId, precondition: Precondition) -> Result<()> {
        let current = self.groups.get(id).map(|g| g.version);
        check_delete(GROUP, id.as_str(), current, precondition)
    }

    /// Applies a planned (or replayed) change.
    pub(crate) fn apply(&mut self, change: Change) {
        match change {
            Change::PutIndividual(e) => {
                self.last_version = self.last_version.max(e.version);
                self.individuals.insert(e.registration_id.clone(), e);
            }
            Change::DeleteIndividual(id) => {
                self.individuals.remove(&id);
            }
            Change::PutGroup(g) => {
                self.last_version = self.last_version.max(g.version);
                self.groups.insert(g.group_id.clone(), g);
            }
            Change::DeleteGroup(id) => {
                self.groups.remove(&id);
            }
        }
    }

    /// Up to `limit` individual enrollments after `after`, in registration id order.
    pub(crate) fn individuals_after(
        &self,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> Vec<IndividualEnrollment> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.individuals
            .range::<DeviceId, _>((start, Bound::Unbounded))
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Up to `limit` groups after `after`, in id order.
    pub(crate) fn groups_after(
        &self,
        after: Option<&GroupId>,
        limit: usize,
    ) -> Vec<EnrollmentGroup> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.groups
            .range::<GroupId, _>((start, Bound::Unbounded))
            .take(limit)
            .map(|(_, g)| g.clone())
            .collect()
    }

    fn next_version(&self) -> Result<u64> {
        self.last_version
            .checked_add(1)
            .ok_or_else(|| Error::invalid("the enrollment store has used every version number"))
    }
}

fn check_put(
    kind: &'static str,
    id: &str,
    current: Option<u64>,
    precondition: Precondition,
) -> Result<()> {
    match (precondition, current) {
        (Precondition::Any, _) | (Precondition::Absent, None) => Ok(()),
        (Precondition::Absent, Some(_)) => Err(Error::EnrollmentExists {
            kind,
            id: id.to_owned(),
        }),
        (Precondition::Version(_), None) => Err(Error::EnrollmentNotFound {
            kind,
            id: id.to_owned(),
        }),
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

fn check_delete(
    kind: &'static str,
    id: &str,
    current: Option<u64>,
    precondition: Precondition,
) -> Result<()> {
    let Some(actual) = current else {
        return Err(Error::EnrollmentNotFound {
            kind,
            id: id.to_owned(),
        });
    };
    match precondition {
        Precondition::Any => Ok(()),
        Precondition::Absent => Err(Error::invalid(format!(
            "deleting {kind} {id} on the condition that it does not exist"
        ))),
        Precondition::Version(expected) if expected != actual => Err(Error::EnrollmentChanged {
            kind,
            id: id.to_owned(),
            expected,
            actual,
        }),
        Precondition::Version(_) => Ok(()),
    }
}
