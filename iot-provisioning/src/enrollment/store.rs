//! The `EnrollmentStore` trait: where enrollments live.

use std::fmt;

use async_trait::async_trait;
use iot_core::DeviceId;

use super::Precondition;
use super::types::{EnrollmentGroup, GroupId, IndividualEnrollment};
use crate::error::Result;

/// Where enrollments live. Implementations: [`MemoryEnrollmentStore`](super::MemoryEnrollmentStore),
/// [`FileEnrollmentStore`](super::FileEnrollmentStore), or one's own (the conformance suite
/// `testkit::enrollment::run_all` states the contract and checks it).
///
/// The contract:
/// * A `put` stores the whole enrollment and returns it with a new
///   [`version`](IndividualEnrollment::version), greater than every version the store gave out
///   before (across deletes), if its [`Precondition`] holds; otherwise nothing changes and the
///   error says why ([`EnrollmentExists`](crate::Error::EnrollmentExists),
///   [`EnrollmentNotFound`](crate::Error::EnrollmentNotFound),
///   [`EnrollmentChanged`](crate::Error::EnrollmentChanged)). The `version` the caller passes in
///   is ignored.
/// * A `delete` of an absent enrollment is `EnrollmentNotFound`.
/// * A write is durable when it returns (as durable as the store claims to be); a read sees
///   every write that returned before it started.
/// * Lists are in id order, `after` excluded, at most `limit` items.
/// * Keys are secrets: an implementation must not log them or put them in errors.
#[async_trait]
pub trait EnrollmentStore: Send + Sync + fmt::Debug {
    /// Creates or replaces an individual enrollment.
    async fn put_individual(
        &self,
        enrollment: IndividualEnrollment,
        precondition: Precondition,
    ) -> Result<IndividualEnrollment>;

    /// The individual enrollment of `registration_id`, if any.
    async fn individual(&self, registration_id: &DeviceId) -> Result<Option<IndividualEnrollment>>;

    /// Deletes an individual enrollment. Devices registered through it keep their identity.
    async fn delete_individual(
        &self,
        registration_id: &DeviceId,
        precondition: Precondition,
    ) -> Result<()>;

    /// Individual enrollments in registration id order, after `after`, at most `limit`.
    async fn individuals(
        &self,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> Result<Vec<IndividualEnrollment>>;

    /// Creates or replaces an enrollment group.
    async fn put_group(
        &self,
        group: EnrollmentGroup,
        precondition: Precondition,
    ) -> Result<EnrollmentGroup>;

    /// The enrollment group `id`, if any.
    async fn group(&self, id: &GroupId) -> Result<Option<EnrollmentGroup>>;

    /// Deletes an enrollment group. Devices registered through it keep their identity.
    async fn delete_group(&self, id: &GroupId, precondition: Precondition) -> Result<()>;

    /// Enrollment groups in id order, after `after`, at most `limit`.
    async fn groups(&self, after: Option<&GroupId>, limit: usize) -> Result<Vec<EnrollmentGroup>>;

    /// Makes every write that returned durable, for stores whose writes return before that.
    /// The provided method is for stores whose writes are durable when they return.
    async fn sync(&self) -> Result<()> {
        Ok(())
    }
}
