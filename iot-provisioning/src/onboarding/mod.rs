//! Registration through an enrollment: the Device Provisioning Service (DPS) side of
//! onboarding, independent of any wire protocol.
//!
//! A device presents its registration id and a SAS token scoped to
//! `{idScope}/registrations/{registrationId}`, signed with its key. [`Onboarding`] finds the
//! enrollment that admits it (the individual enrollment of that id first; else each enabled
//! symmetric-key group whose key, derived for the registration id, verifies the token), refuses
//! a disabled enrollment and bad tokens with an [`OnboardingError`], and registers the device
//! through the [`Provisioning`](crate::Provisioning) door, so that hooks and the audit trail
//! run as for every registration. The [`Assignment`] it answers carries what DPS answers: the
//! device id, the assigned hub, the substatus, the registry record's times and etag, and the
//! initial twin, which the endpoint writes through the hub (provisioning holds no twins).
//!
//! Devices with certificates attest with the chain of their TLS handshake instead
//! ([`Onboarding::attest_x509`], [`Onboarding::register_x509`]): an individual enrollment by the
//! leaf's thumbprint, an X.509 group by a chain to its certificate and to a CA held verified
//! ([`Onboarding::with_certificate_authorities`]); the registration id is the leaf's CN.
//!
//! The MQTT form of DPS's device protocol is served by `iot-gateway`'s MQTT endpoint; see
//! `docs/provisioning.md`, "Registration through an enrollment (DPS)".
//!
//! ```
//! use std::sync::Arc;
//! use iot_identity::{MemoryIdentityStore, SymmetricKey, sas};
//! use iot_provisioning::enrollment::{
//!     EnrollmentGroup, EnrollmentStore, GroupAttestation, MemoryEnrollmentStore, Precondition,
//! };
//! use iot_provisioning::onboarding::{Onboarding, OnboardingConfig, Substatus};
//! use iot_provisioning::{Provisioner, Provisioning};
//! use iot_registry::MemoryRegistry;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt").block_on(async {
//! let provisioner = Provisioner::builder(
//!     Arc::new(MemoryIdentityStore::new()),
//!     Arc::new(MemoryRegistry::new()),
//! )
//! .open()
//! .await?;
//! let enrollments = Arc::new(MemoryEnrollmentStore::new());
//! let group_key = SymmetricKey::generate();
//! enrollments
//!     .put_group(
//!         EnrollmentGroup::new(
//!             "plant-7".parse()?,
//!             GroupAttestation::SymmetricKey { primary: group_key.clone(), secondary: SymmetricKey::generate() },
//!         ),
//!         Precondition::Absent,
//!     )
//!     .await?;
//! let onboarding = Onboarding::new(
//!     enrollments,
//!     Arc::new(provisioner.clone()),
//!     OnboardingConfig::new("0ne0000A1B2", "hub.example.net"),
//! )?;
//! // The device holds the group key derived for its registration id, and signs with it.
//! let device_key = group_key.derive_for_device("sensor-1");
//! let token = sas::generate("0ne0000A1B2/registrations/sensor-1", &device_key, sas::unix_now() + 600, None)?;
//! let assignment = onboarding.register("sensor-1", token.as_str()).await?;
//! assert_eq!(assignment.assigned_hub, "hub.example.net");
//! assert_eq!(assignment.substatus, Substatus::InitialAssignment);
//! assert!(provisioner.get(&"sensor-1".parse()?).await?.is_some());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).expect("example");
//! ```

mod attest;
mod attest_x509;
mod error;
mod serialize;
mod service;
mod types;

pub use error::OnboardingError;
pub use service::{Onboarding, OnboardingConfig};
pub use types::{Assignment, Attested, EnrollmentRef, Substatus};
