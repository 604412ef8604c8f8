//! Which enrollment a registration belongs to, proved by the SAS token the device presents.
//!
//! DPS's symmetric-key attestation: the token's resource is `{idScope}/registrations/{registrationId}`,
//! its key name (`skn`) is `registration` or absent (the Azure device SDKs leave it out), and
//! it is signed with the device's key — an individual enrollment's own key, or a group key
//! derived for the registration id. Signatures are compared in constant time
//! ([`SasVerifier`]).

use iot_core::DeviceId;
use iot_identity::{Credentials, SasVerifier, SymmetricKey, VerifiedToken, sas};

use super::error::OnboardingError;
use super::types::{Attested, EnrollmentRef};
use crate::enrollment::{
    Attestation, EnrollmentStatus, EnrollmentStore, GroupAttestation, IndividualEnrollment,
};

/// The key name DPS's tokens may carry.
pub(crate) const KEY_NAME: &str = "registration";

/// Enrollment groups read per page while looking for the one whose key signed a token.
const GROUP_PAGE: usize = 256;

/// The resource a registration's token is scoped to.
pub(crate) fn registration_resource(id_scope: &str, registration_id: &DeviceId) -> String {
    format!("{id_scope}/registrations/{registration_id}")
}

/// Finds the enrollment whose key signed `token` for `registration_id`: the individual
/// enrollment of that id if there is one (then no group is considered, as DPS does), else the
/// first enabled symmetric-key group whose derived key verifies it.
pub(crate) async fn attest(
    store: &dyn EnrollmentStore,
    verifier: &SasVerifier,
    id_scope: &str,
    registration_id: &DeviceId,
    token: &str,
    now: u64,
) -> Result<Attested, OnboardingError> {
    let unauthorized = |reason: String| OnboardingError::Unauthorized {
        registration_id: registration_id.clone(),
        reason,
    };
    let store_failed = |source| OnboardingError::Provisioning {
        registration_id: registration_id.clone(),
        source,
    };
    let policy = match sas::parse(token, verifier.max_token_len) {
        Err(e) => return Err(unauthorized(format!("malformed token: {e}"))),
        Ok(parsed) => match parsed.policy() {
            None => None,
            Some(KEY_NAME) => Some(KEY_NAME),
            Some(_) => return Err(unauthorized(format!("the key name must be {KEY_NAME:?}"))),
        },
    };
    let resource = registration_resource(id_scope, registration_id);
    let verify = |primary: &SymmetricKey, secondary: &SymmetricKey| {
        verifier.verify(token, &resource, primary, Some(secondary), policy, now)
    };

    if let Some(enrollment) = store
        .individual(registration_id)
        .await
        .map_err(store_failed)?
    {
        return attest_individual(enrollment, registration_id, verify);
    }

    // A disabled group whose key verifies is remembered: if no enabled group admits the
    // device, the refusal says the enrollment is disabled rather than that nothing matched.
    let mut disabled = None;
    let mut after = None;
    loop {
        let page = store
            .groups(after.as_ref(), GROUP_PAGE)
            .await
            .map_err(store_failed)?;
        let full = page.len() == GROUP_PAGE;
        for group in page {
            after = Some(group.group_id.clone());
            let GroupAttestation::SymmetricKey { primary, secondary } = &group.attestation else {
                continue;
            };
            if group.settings.status == EnrollmentStatus::Disabled && disabled.is_some() {
                continue;
            }
            let keys = (
                primary.derive_for_device(registration_id.as_str()),
                secondary.derive_for_device(registration_id.as_str()),
            );
            match verify(&keys.0, &keys.1) {
                Ok(verified) => {
                    let enrollment = EnrollmentRef::Group(group.group_id.clone());
                    if group.settings.status == EnrollmentStatus::Disabled {
                        disabled = Some(enrollment);
                        continue;
                    }
                    return Ok(attested(
                        registration_id,
                        registration_id.clone(),
                        enrollment,
                        group.settings,
                        verified,
                        keys,
                    ));
                }
                // Another group's device, or a forged token: try the next group.
                Err(iot_identity::Error::BadSignature) => {}
                // Scope, expiry and syntax do not depend on the key: no group will do.
                Err(e) => return Err(unauthorized(e.to_string())),
            }
        }
        if !full {
            break;
        }
    }
    match disabled {
        Some(enrollment) => Err(OnboardingError::EnrollmentDisabled {
            registration_id: registration_id.clone(),
            enrollment: enrollment.to_string(),
        }),
        None => Err(unauthorized(
            "no enabled enrollment admits this registration with this token".to_string(),
        )),
    }
}

fn attest_individual(
    enrollment: IndividualEnrollment,
    registration_id: &DeviceId,
    verify: impl Fn(&SymmetricKey, &SymmetricKey) -> iot_identity::Result<VerifiedToken>,
) -> Result<Attested, OnboardingError> {
    let Attestation::SymmetricKey { primary, secondary } = &enrollment.attestation else {
        return Err(OnboardingError::Unauthorized {
            registration_id: registration_id.clone(),
            reason: "the individual enrollment attests by X.509 certificate, not by key".into(),
        });
    };
    let verified = verify(primary, secondary).map_err(|e| OnboardingError::Unauthorized {
        registration_id: registration_id.clone(),
        reason: e.to_string(),
    })?;
    let reference = EnrollmentRef::Individual(enrollment.registration_id.clone());
    if enrollment.settings.status == EnrollmentStatus::Disabled {
        return Err(OnboardingError::EnrollmentDisabled {
            registration_id: registration_id.clone(),
            enrollment: reference.to_string(),
        });
    }
    let keys = (primary.clone(), secondary.clone());
    let device_id = enrollment.assigned_device_id().clone();
    Ok(attested(
        registration_id,
        device_id,
        reference,
        enrollment.settings,
        verified,
        keys,
    ))
}

fn attested(
    registration_id: &DeviceId,
    device_id: DeviceId,
    enrollment: EnrollmentRef,
    settings: crate::enrollment::EnrollmentSettings,
    verified: VerifiedToken,
    keys: (SymmetricKey, SymmetricKey),
) -> Attested {
    Attested {
        registration_id: registration_id.clone(),
        device_id,
        enrollment,
        settings,
        key: verified.key,
        expiry: verified.expiry,
        credentials: Credentials::SymmetricKeys {
            primary: keys.0,
            secondary: keys.1,
        },
    }
}
