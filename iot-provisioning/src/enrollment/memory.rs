//! `MemoryEnrollmentStore`: enrollments in memory, for tests and single-process tools.

use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use iot_core::DeviceId;

use super::state::{Change, Enrollments};
use super::types::{EnrollmentGroup, GroupId, IndividualEnrollment};
use super::{EnrollmentStore, Precondition};
use crate::error::Result;

/// Enrollments in memory; nothing survives the process. Cloning is not offered: share it in an
/// `Arc`.
#[derive(Debug, Default)]
pub struct MemoryEnrollmentStore {
    state: Mutex<Enrollments>,
}

impl MemoryEnrollmentStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, Enrollments> {
        // Every change is planned before it is applied, and applying cannot panic: a poisoned
        // lock still guards a consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl EnrollmentStore for MemoryEnrollmentStore {
    async fn put_individual(
        &self,
        enrollment: IndividualEnrollment,
        precondition: Precondition,
    ) -> Result<IndividualEnrollment> {
        let mut state = self.state();
        let stored = state.plan_put_individual(enrollment, precondition)?;
        state.apply(Change::PutIndividual(stored.clone()));
        Ok(stored)
    }

    async fn individual(&self, registration_id: &DeviceId) -> Result<Option<IndividualEnrollment>> {
        Ok(self.state().individuals.get(registration_id).cloned())
    }

    async fn delete_individual(
        &self,
        registration_id: &DeviceId,
        precondition: Precondition,
    ) -> Result<()> {
        let mut state = self.state();
        state.plan_delete_individual(registration_id, precondition)?;
        state.apply(Change::DeleteIndividual(registration_id.clone()));
        Ok(())
    }

    async fn individuals(
        &self,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> Result<Vec<IndividualEnrollment>> {
        Ok(self.state().individuals_after(after, limit))
    }

    async fn put_group(
        &self,
        group: EnrollmentGroup,
        precondition: Precondition,
    ) -> Result<EnrollmentGroup> {
        let mut state = self.state();
        let stored = state.plan_put_group(group, precondition)?;
        state.apply(Change::PutGroup(stored.clone()));
        Ok(stored)
    }

    async fn group(&self, id: &GroupId) -> Result<Option<EnrollmentGroup>> {
        Ok(self.state().groups.get(id).cloned())
    }

    async fn delete_group(&self, id: &GroupId, precondition: Precondition) -> Result<()> {
        let mut state = self.state();
        state.plan_delete_group(id, precondition)?;
        state.apply(Change::DeleteGroup(id.clone()));
        Ok(())
    }

    async fn groups(&self, after: Option<&GroupId>, limit: usize) -> Result<Vec<EnrollmentGroup>> {
        Ok(self.state().groups_after(after, limit))
    }
}
