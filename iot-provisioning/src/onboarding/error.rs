//! Why a registration through an enrollment was refused or failed.

use iot_core::DeviceId;

/// Why [`Onboarding`](super::Onboarding) refused or failed a registration. No variant carries a
/// key or a token: a refusal says which check failed, never with what.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OnboardingError {
    /// The registration id is not a valid device id.
    #[error("registration id {registration_id:?} is not valid: {reason}")]
    InvalidRegistrationId {
        /// The id presented (shortened if long).
        registration_id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The device did not prove that it belongs to an enrollment: no enrollment admits the
    /// registration id, or the token is malformed, expired, scoped to another resource or
    /// signed with another key.
    #[error("registration {registration_id} is not authorized: {reason}")]
    Unauthorized {
        /// The registration id.
        registration_id: DeviceId,
        /// Which check failed (never a key or the token).
        reason: String,
    },
    /// The token verified against an enrollment that is disabled.
    #[error("registration {registration_id} is refused: {enrollment} is disabled")]
    EnrollmentDisabled {
        /// The registration id.
        registration_id: DeviceId,
        /// The enrollment (`individual enrollment dev-1`, `enrollment group g1`).
        enrollment: String,
    },
    /// The registration went to the provisioner (or the enrollment store) and failed there:
    /// a hook vetoed it, a store failed…
    #[error("registration {registration_id} failed: {source}")]
    Provisioning {
        /// The registration id.
        registration_id: DeviceId,
        /// The provisioner's or the enrollment store's error.
        #[source]
        source: crate::Error,
    },
}

impl OnboardingError {
    /// A stable name for the kind of failure (`"unauthorized"`, `"enrollment_disabled"`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            OnboardingError::InvalidRegistrationId { .. } => "invalid_registration_id",
            OnboardingError::Unauthorized { .. } => "unauthorized",
            OnboardingError::EnrollmentDisabled { .. } => "enrollment_disabled",
            OnboardingError::Provisioning { .. } => "provisioning",
        }
    }

    /// Whether the same registration may succeed later (a store failure, pending recovery).
    pub fn is_retryable(&self) -> bool {
        match self {
            OnboardingError::Provisioning { source, .. } => source.is_retryable(),
            _ => false,
        }
    }
}
