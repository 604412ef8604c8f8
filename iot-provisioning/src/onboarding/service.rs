//! The onboarding service: registration through an enrollment, by the one door.

use std::sync::Arc;

use iot_core::DeviceId;
use iot_identity::ca::CertificateAuthorities;
use iot_identity::{SasVerifier, sas};
use rustls_pki_types::CertificateDer;
use serde_json::Value;

use super::attest::attest;
use super::attest_x509::attest_x509;
use super::error::OnboardingError;
use super::serialize::PerDevice;
use super::types::{Assignment, Attested, Substatus};
use crate::enrollment::EnrollmentStore;
use crate::error::Error;
use crate::provisioning::Provisioning;
use crate::types::{Device, RegisterRequest};

/// What the onboarding service answers for.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OnboardingConfig {
    /// The DPS id scope devices name in their tokens and usernames (`0ne00000001`, …).
    pub id_scope: String,
    /// The hub every device is assigned to: a bare host name (the Azure device SDKs connect
    /// to port 8883 of exactly this name).
    pub assigned_hub: String,
    /// Token checks (clock skew, longest token).
    pub verifier: SasVerifier,
}

impl OnboardingConfig {
    /// A service for `id_scope` that assigns devices to `assigned_hub`.
    pub fn new(id_scope: impl Into<String>, assigned_hub: impl Into<String>) -> Self {
        OnboardingConfig {
            id_scope: id_scope.into(),
            assigned_hub: assigned_hub.into(),
            verifier: SasVerifier::default(),
        }
    }
}

/// Registration of devices through their enrollments, as DPS registers them: a device proves
/// it belongs to an enrollment with a SAS token, and is registered through the
/// [`Provisioning`] door (hooks and audit run) with its key as credentials and the
/// enrollment's tags as metadata.
///
/// Registering again is idempotent: a device that exists gets its assignment again without a
/// second registration (see [`register`](Self::register) for the reprovisioning policy).
#[derive(Clone, Debug)]
pub struct Onboarding {
    enrollments: Arc<dyn EnrollmentStore>,
    provisioning: Arc<dyn Provisioning>,
    config: OnboardingConfig,
    /// Registrations of one device wait for each other (see `serialize`).
    in_progress: Arc<PerDevice>,
    /// The verified CAs X.509 group registrations must chain to.
    authorities: Option<CertificateAuthorities>,
}

impl Onboarding {
    /// A service over these enrollments, registering through `provisioning`. Refuses an empty
    /// id scope and an assigned hub that is not a bare host name.
    pub fn new(
        enrollments: Arc<dyn EnrollmentStore>,
        provisioning: Arc<dyn Provisioning>,
        config: OnboardingConfig,
    ) -> crate::Result<Self> {
        let scope_ok = !config.id_scope.is_empty()
            && config
                .id_scope
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !scope_ok {
            return Err(Error::invalid(
                "the id scope must be letters, digits, '-' and '.'",
            ));
        }
        let hub_ok = !config.assigned_hub.is_empty()
            && config
                .assigned_hub
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !hub_ok {
            return Err(Error::invalid(
                "the assigned hub must be a bare host name (no scheme, port or path)",
            ));
        }
        Ok(Onboarding {
            enrollments,
            provisioning,
            config,
            in_progress: Arc::default(),
            authorities: None,
        })
    }

    /// Admits X.509 enrollment groups' devices only with a chain that also leads to a CA
    /// `authorities` holds verified (DPS's proof of possession). Without it, X.509 groups
    /// admit nobody; individual X.509 enrollments (by thumbprint) need no CA.
    pub fn with_certificate_authorities(mut self, authorities: CertificateAuthorities) -> Self {
        self.authorities = Some(authorities);
        self
    }

    /// Checks that the certificate chain a device completed its TLS handshake with (leaf
    /// first) proves `registration_id` belongs to an enabled X.509 enrollment: the leaf's
    /// common name is the registration id; an individual enrollment's thumbprint matches the
    /// leaf, or the chain leads to an X.509 group's certificate and to a verified CA.
    pub async fn attest_x509(
        &self,
        registration_id: &str,
        chain: &[CertificateDer<'_>],
    ) -> Result<Attested, OnboardingError> {
        let registration_id = parse_registration_id(registration_id)?;
        attest_x509(
            self.enrollments.as_ref(),
            self.authorities.as_ref(),
            &registration_id,
            chain,
            sas::unix_now(),
        )
        .await
    }

    /// [`register`](Self::register) for a device that attests with its certificate chain
    /// ([`attest_x509`](Self::attest_x509)). Its identity is registered CA-signed
    /// (`Credentials::CertificateAuthority`) for a group, or with the individual enrollment's
    /// thumbprints.
    pub async fn register_x509(
        &self,
        registration_id: &str,
        chain: &[CertificateDer<'_>],
    ) -> Result<Assignment, OnboardingError> {
        let attested = self.attest_x509(registration_id, chain).await?;
        self.register_attested(attested).await
    }

    /// What the service answers for.
    pub fn config(&self) -> &OnboardingConfig {
        &self.config
    }

    /// The enrollments it checks registrations against.
    pub fn enrollments(&self) -> &Arc<dyn EnrollmentStore> {
        &self.enrollments
    }

    /// Checks that `token` proves `registration_id` belongs to an enabled enrollment, without
    /// registering anything: what an endpoint checks when the device connects.
    pub async fn attest(
        &self,
        registration_id: &str,
        token: &str,
    ) -> Result<Attested, OnboardingError> {
        let registration_id = parse_registration_id(registration_id)?;
        attest(
            self.enrollments.as_ref(),
            &self.config.verifier,
            &self.config.id_scope,
            &registration_id,
            token,
            sas::unix_now(),
        )
        .await
    }

    /// Registers the device `registration_id` proves (with `token`) to belong to an enrollment.
    ///
    /// * A device that does not exist is registered through the provisioner with its two keys
    ///   (the individual enrollment's, or both group keys derived for it) and the enrollment's
    ///   tags as metadata: substatus `initialAssignment`, and the endpoint writes the initial
    ///   twin ([`Assignment::apply_initial_twin`]).
    /// * A device that exists is not registered again. There is one hub, so the reprovisioning
    ///   policy decides only what happens to its data: `update_hub_assignment: false` keeps
    ///   everything (`initialAssignment`, its earlier assignment); `true` with
    ///   `migrate_device_data: true` keeps it too (`deviceDataMigrated`); with
    ///   `migrate_device_data: false` the enrollment's tags are merged into its record again and
    ///   the initial twin applied again (`deviceDataReset`).
    /// * Registrations of one device wait for each other (in this process): one registers,
    ///   the next finds the device. Should another process register it in between, the
    ///   `AlreadyExists` is answered as for a device that exists.
    pub async fn register(
        &self,
        registration_id: &str,
        token: &str,
    ) -> Result<Assignment, OnboardingError> {
        let attested = self.attest(registration_id, token).await?;
        self.register_attested(attested).await
    }

    /// Registers (or answers again for) a device that proved its enrollment.
    async fn register_attested(&self, attested: Attested) -> Result<Assignment, OnboardingError> {
        let _turn = self.in_progress.turn(&attested.device_id).await;
        let failed = |source: Error| OnboardingError::Provisioning {
            registration_id: attested.registration_id.clone(),
            source,
        };
        let existing = self
            .provisioning
            .get(&attested.device_id)
            .await
            .map_err(failed)?;
        let existing = match existing {
            Some(device) => device,
            None => {
                let request = RegisterRequest::new(
                    attested.device_id.clone(),
                    attested.settings.tags.clone(),
                )
                .with_credentials(attested.credentials.clone());
                match self.provisioning.register(request).await {
                    Ok(registered) => {
                        tracing::info!(
                            registration = %attested.registration_id,
                            device = %attested.device_id,
                            enrollment = %attested.enrollment,
                            "device registered through its enrollment"
                        );
                        return Ok(self.assignment(
                            &attested,
                            &registered.device,
                            Substatus::InitialAssignment,
                            true,
                        ));
                    }
                    // Registered by a concurrent call since `get`: answer as for a device
                    // that exists.
                    Err(Error::AlreadyExists { .. }) => self
                        .provisioning
                        .get(&attested.device_id)
                        .await
                        .map_err(failed)?
                        .ok_or_else(|| {
                            failed(Error::NotFound {
                                id: attested.device_id.clone(),
                            })
                        })?,
                    Err(e) => return Err(failed(e)),
                }
            }
        };
        let policy = attested.settings.reprovision;
        let (substatus, device, reset) = if !policy.update_hub_assignment {
            (Substatus::InitialAssignment, existing, false)
        } else if policy.migrate_device_data {
            (Substatus::DeviceDataMigrated, existing, false)
        } else {
            let device = self
                .provisioning
                .update(&attested.device_id, attested.settings.tags.clone(), None)
                .await
                .map_err(failed)?;
            (Substatus::DeviceDataReset, device, true)
        };
        tracing::debug!(
            registration = %attested.registration_id,
            device = %attested.device_id,
            substatus = substatus.as_str(),
            "device registered again"
        );
        Ok(self.assignment(&attested, &device, substatus, reset))
    }

    fn assignment(
        &self,
        attested: &Attested,
        device: &Device,
        substatus: Substatus,
        apply_initial_twin: bool,
    ) -> Assignment {
        Assignment {
            registration_id: attested.registration_id.clone(),
            device_id: device.id.clone(),
            assigned_hub: self.config.assigned_hub.clone(),
            substatus,
            enrollment: attested.enrollment.clone(),
            created: device.record.created,
            updated: device.record.updated,
            etag: device.record.etag.clone(),
            initial_twin: attested.settings.initial_twin.clone(),
            apply_initial_twin: apply_initial_twin
                && has_properties(&attested.settings.initial_twin),
        }
    }
}

fn has_properties(twin: &Value) -> bool {
    twin.as_object().is_some_and(|o| !o.is_empty())
}

fn parse_registration_id(registration_id: &str) -> Result<DeviceId, OnboardingError> {
    DeviceId::new(registration_id).map_err(|e| OnboardingError::InvalidRegistrationId {
        registration_id: registration_id.chars().take(128).collect(),
        reason: e.to_string(),
    })
}
