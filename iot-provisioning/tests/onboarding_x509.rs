//! X.509 attestation through enrollments (`Onboarding::register_x509`), with rcgen-made chains
//! over memory stores and a real `Provisioner`: individual enrollments by leaf thumbprint,
//! groups by a chain to the group's certificate and to a CA held verified; CN = registration
//! id; disabled enrollments, unverified CAs and key-attested enrollments refused.

use std::sync::Arc;

use iot_identity::ca::{CaCondition, CertificateAuthorities, MemoryCaStore};
use iot_identity::{Credentials, IdentityStore, MemoryIdentityStore, SymmetricKey, Thumbprint};
use iot_provisioning::Provisioner;
use iot_provisioning::enrollment::{
    Attestation, EnrollmentGroup, EnrollmentStatus, EnrollmentStore, GroupAttestation,
    IndividualEnrollment, MemoryEnrollmentStore, Precondition,
};
use iot_provisioning::onboarding::{
    EnrollmentRef, Onboarding, OnboardingConfig, OnboardingError, Substatus,
};
use iot_registry::MemoryRegistry;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::CertificateDer;

type Ca = CertifiedIssuer<'static, KeyPair>;

fn ca(cn: &str, by: Option<&Ca>) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let key = KeyPair::generate().expect("key");
    match by {
        None => CertifiedIssuer::self_signed(p, key),
        Some(issuer) => CertifiedIssuer::signed_by(p, key, issuer),
    }
    .expect("CA")
}

fn leaf(cn: &str, by: &Ca) -> CertificateDer<'static> {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.signed_by(&KeyPair::generate().expect("key"), by)
        .expect("leaf")
        .der()
        .clone()
}

fn self_signed(cn: &str) -> CertificateDer<'static> {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.self_signed(&KeyPair::generate().expect("key"))
        .expect("self-signed")
        .der()
        .clone()
}

struct Setup {
    onboarding: Onboarding,
    enrollments: Arc<MemoryEnrollmentStore>,
    identity: Arc<MemoryIdentityStore>,
    cas: CertificateAuthorities,
}

async fn setup() -> Setup {
    let identity = Arc::new(MemoryIdentityStore::new());
    let provisioner = Provisioner::builder(identity.clone(), Arc::new(MemoryRegistry::new()))
        .open()
        .await
        .expect("provisioner");
    let enrollments = Arc::new(MemoryEnrollmentStore::new());
    let cas = CertificateAuthorities::new(Arc::new(MemoryCaStore::new()));
    let onboarding = Onboarding::new(
        enrollments.clone(),
        Arc::new(provisioner),
        OnboardingConfig::new("0ne00000X50", "hub.example.net"),
    )
    .expect("onboarding")
    .with_certificate_authorities(cas.clone());
    Setup {
        onboarding,
        enrollments,
        identity,
        cas,
    }
}

async fn verify(cas: &CertificateAuthorities, name: &str, root: &Ca) {
    cas.upload(name, &root.pem(), CaCondition::Absent)
        .await
        .expect("upload");
    let code = cas
        .generate_verification_code(name, CaCondition::Any)
        .await
        .expect("code")
        .certificate
        .verification_code
        .expect("code");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(DnType::CommonName, code);
    let proof = p
        .signed_by(&KeyPair::generate().expect("key"), root)
        .expect("proof");
    cas.verify(name, &proof.pem(), CaCondition::Any)
        .await
        .expect("verify");
}

fn unauthorized(r: Result<impl std::fmt::Debug, OnboardingError>) -> bool {
    matches!(r, Err(OnboardingError::Unauthorized { .. }))
}

#[tokio::test]
async fn a_group_admits_chains_to_its_certificate_that_lead_to_a_verified_ca() {
    let s = setup().await;
    let root = ca("root", None);
    let inter = ca("inter", Some(&root));
    let group = EnrollmentGroup::new(
        "line-4".parse().expect("group"),
        GroupAttestation::X509Ca {
            certificates: vec![inter.pem()],
        },
    );
    s.enrollments
        .put_group(group, Precondition::Absent)
        .await
        .expect("group");
    let chain = [leaf("cam-1", &inter), inter.der().clone()];
    // The group's certificate matches, but no CA is verified yet.
    assert!(unauthorized(
        s.onboarding.register_x509("cam-1", &chain).await
    ));
    verify(&s.cas, "root", &root).await;
    let assignment = s
        .onboarding
        .register_x509("cam-1", &chain)
        .await
        .expect("registered");
    assert_eq!(assignment.device_id.as_str(), "cam-1");
    assert_eq!(
        assignment.enrollment,
        EnrollmentRef::Group("line-4".parse().expect("group"))
    );
    assert_eq!(assignment.substatus, Substatus::InitialAssignment);
    let stored = s
        .identity
        .get(&"cam-1".parse().expect("id"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(stored.credentials, Credentials::CertificateAuthority);
    // Idempotent.
    s.onboarding
        .register_x509("cam-1", &chain)
        .await
        .expect("again");

    // The registration id is the leaf's CN; a chain that misses the intermediate or comes from
    // another CA is refused.
    assert!(unauthorized(
        s.onboarding.register_x509("cam-2", &chain).await
    ));
    let other = ca("other", None);
    verify(&s.cas, "other", &other).await;
    assert!(unauthorized(
        s.onboarding
            .register_x509("cam-3", &[leaf("cam-3", &other)])
            .await
    ));
    assert!(unauthorized(
        s.onboarding
            .register_x509("cam-4", &[leaf("cam-4", &inter)])
            .await
    ));
    assert!(unauthorized(s.onboarding.register_x509("cam-5", &[]).await));

    // A disabled group refuses, and says so.
    let mut group = s
        .enrollments
        .group(&"line-4".parse().expect("group"))
        .await
        .expect("get")
        .expect("group");
    group.settings.status = EnrollmentStatus::Disabled;
    s.enrollments
        .put_group(group, Precondition::Any)
        .await
        .expect("disable");
    assert!(matches!(
        s.onboarding
            .register_x509("cam-6", &[leaf("cam-6", &inter), inter.der().clone()])
            .await,
        Err(OnboardingError::EnrollmentDisabled { .. })
    ));
    for id in ["cam-2", "cam-3", "cam-4", "cam-6"] {
        assert!(
            s.identity
                .get(&id.parse().expect("id"))
                .await
                .expect("get")
                .is_none()
        );
    }
}

#[tokio::test]
async fn an_individual_enrollment_admits_its_own_certificates_only() {
    let s = setup().await;
    let primary = self_signed("meter-1");
    let secondary = self_signed("meter-1");
    let enrollment = IndividualEnrollment::new(
        "meter-1".parse().expect("id"),
        Attestation::X509 {
            primary: Thumbprint::of_der_certificate(&primary),
            secondary: Some(Thumbprint::of_der_certificate(&secondary)),
        },
    );
    s.enrollments
        .put_individual(enrollment, Precondition::Absent)
        .await
        .expect("individual");
    let a = s
        .onboarding
        .register_x509("meter-1", std::slice::from_ref(&secondary))
        .await
        .expect("secondary certificate");
    assert_eq!(
        a.enrollment,
        EnrollmentRef::Individual("meter-1".parse().expect("id"))
    );
    let stored = s
        .identity
        .get(&"meter-1".parse().expect("id"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        stored.credentials,
        Credentials::X509 {
            primary: Thumbprint::of_der_certificate(&primary),
            secondary: Thumbprint::of_der_certificate(&secondary),
        }
    );
    // Another certificate with the same CN is not the enrollment's.
    assert!(unauthorized(
        s.onboarding
            .register_x509("meter-1", &[self_signed("meter-1")])
            .await
    ));
    // A key-attested individual enrollment refuses certificates.
    let keyed = IndividualEnrollment::new(
        "meter-2".parse().expect("id"),
        Attestation::SymmetricKey {
            primary: SymmetricKey::generate(),
            secondary: SymmetricKey::generate(),
        },
    );
    s.enrollments
        .put_individual(keyed, Precondition::Absent)
        .await
        .expect("individual");
    assert!(unauthorized(
        s.onboarding
            .register_x509("meter-2", &[self_signed("meter-2")])
            .await
    ));
}
