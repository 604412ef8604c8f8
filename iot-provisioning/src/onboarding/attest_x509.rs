//! X.509 attestation: which enrollment a registration belongs to, proved by the certificate
//! chain the device completed its TLS handshake with.
//!
//! As in DPS, the registration id is the leaf's common name. The individual enrollment of that
//! id decides if there is one: its attestation must be X.509 and the leaf's thumbprint one of
//! its certificates'. Otherwise each X.509 enrollment group is tried, paged in id order: the
//! chain must lead to one of the group's certificates (a root or an intermediate) and — the
//! proof of possession DPS asks of CA certificates — to a CA the service holds verified
//! ([`CertificateAuthorities`]). The TLS handshake has already proved the device holds the
//! leaf's key.

use std::time::Duration;

use iot_core::DeviceId;
use iot_identity::ca::{
    CertificateAuthorities, ChainValidation, check_dates, common_name, validate_chain,
};
use iot_identity::{Credentials, KeySlot, Thumbprint};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};

use super::error::OnboardingError;
use super::types::{Attested, EnrollmentRef};
use crate::enrollment::{Attestation, EnrollmentStatus, EnrollmentStore, GroupAttestation};

/// Enrollment groups read per page.
const GROUP_PAGE: usize = 256;

/// Finds the enrollment that admits the device presenting `chain` as `registration_id`.
pub(crate) async fn attest_x509(
    store: &dyn EnrollmentStore,
    authorities: Option<&CertificateAuthorities>,
    registration_id: &DeviceId,
    chain: &[CertificateDer<'_>],
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
    let leaf = chain
        .first()
        .ok_or_else(|| unauthorized("no client certificate".into()))?;
    let named = common_name(leaf).map_err(|e| unauthorized(e.to_string()))?;
    if named != registration_id.as_str() {
        return Err(unauthorized(
            "the certificate's common name is not the registration id".into(),
        ));
    }
    let not_after = check_dates(leaf, now).map_err(|e| unauthorized(e.to_string()))?;
    let expiry = u64::try_from(not_after).unwrap_or(0);

    if let Some(enrollment) = store
        .individual(registration_id)
        .await
        .map_err(store_failed)?
    {
        let Attestation::X509 { primary, secondary } = &enrollment.attestation else {
            return Err(unauthorized(
                "the individual enrollment attests by key, not by X.509 certificate".into(),
            ));
        };
        let presented = Thumbprint::of_der_certificate(leaf);
        let key = if presented == *primary {
            KeySlot::Primary
        } else if Some(presented) == *secondary {
            KeySlot::Secondary
        } else {
            return Err(unauthorized(
                "the certificate is not the individual enrollment's".into(),
            ));
        };
        let reference = EnrollmentRef::Individual(enrollment.registration_id.clone());
        if enrollment.settings.status == EnrollmentStatus::Disabled {
            return Err(OnboardingError::EnrollmentDisabled {
                registration_id: registration_id.clone(),
                enrollment: reference.to_string(),
            });
        }
        let device_id = enrollment.assigned_device_id().clone();
        return Ok(Attested {
            registration_id: registration_id.clone(),
            device_id,
            enrollment: reference,
            settings: enrollment.settings,
            key,
            expiry,
            credentials: Credentials::X509 {
                primary: *primary,
                secondary: secondary.unwrap_or(*primary),
            },
        });
    }

    let time = UnixTime::since_unix_epoch(Duration::from_secs(now));
    let mut disabled = None;
    let mut refusal = "no X.509 enrollment group admits this certificate chain".to_owned();
    let mut after = None;
    loop {
        let page = store
            .groups(after.as_ref(), GROUP_PAGE)
            .await
            .map_err(store_failed)?;
        let full = page.len() == GROUP_PAGE;
        for group in page {
            after = Some(group.group_id.clone());
            let GroupAttestation::X509Ca { certificates } = &group.attestation else {
                continue;
            };
            let anchors: Vec<CertificateDer<'static>> = certificates
                .iter()
                .filter_map(|pem| CertificateDer::from_pem_slice(pem.as_bytes()).ok())
                .collect();
            if let Err(e) = validate_chain(chain, &anchors, time) {
                refusal = format!("enrollment group {}: {e}", group.group_id);
                continue;
            }
            let reference = EnrollmentRef::Group(group.group_id.clone());
            // Membership alone is not enough: the chain must also lead to a CA whose owner
            // proved possession of its key.
            let Some(authorities) = authorities else {
                refusal = "no verified CA certificates are configured".into();
                continue;
            };
            match authorities
                .validate(chain, registration_id.as_str(), now)
                .await
            {
                Ok(_) => {}
                Err(ChainValidation::Refused(e)) => {
                    refusal = format!("{reference}: not verified: {e}");
                    continue;
                }
                Err(ChainValidation::Store(e)) => {
                    return Err(store_failed(crate::Error::backend("CA store", e, true)));
                }
            }
            if group.settings.status == EnrollmentStatus::Disabled {
                disabled.get_or_insert(reference);
                continue;
            }
            return Ok(Attested {
                registration_id: registration_id.clone(),
                device_id: registration_id.clone(),
                enrollment: reference,
                settings: group.settings,
                key: KeySlot::Primary,
                expiry,
                credentials: Credentials::CertificateAuthority,
            });
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
        None => Err(unauthorized(refusal)),
    }
}
