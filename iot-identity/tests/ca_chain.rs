//! X.509 CA authentication: chain validation with rcgen-made fixtures (root → intermediate →
//! leaf), IoT Hub's verification-code flow, and revocation through the `Authenticator`.

use std::sync::Arc;
use std::time::Duration;

use iot_identity::ca::{
    CaCondition, CaError, CertificateAuthorities, ChainError, MemoryCaStore, validate_chain,
};
use iot_identity::{
    Authenticator, Credentials, DeviceStatus, Error, IdentityStore, MemoryIdentityStore,
    NewIdentity, Presented, Thumbprint,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, UnixTime};

type Ca = CertifiedIssuer<'static, KeyPair>;

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2100, 1, 1);
    p
}

fn root(cn: &str) -> Ca {
    CertifiedIssuer::self_signed(ca_params(cn), KeyPair::generate().expect("key")).expect("root")
}

fn intermediate(cn: &str, by: &Ca) -> Ca {
    CertifiedIssuer::signed_by(ca_params(cn), KeyPair::generate().expect("key"), by)
        .expect("intermediate")
}

struct Leaf {
    cn: String,
    from: (i32, u8, u8),
    until: (i32, u8, u8),
    eku: Vec<ExtendedKeyUsagePurpose>,
    ku: Vec<KeyUsagePurpose>,
}

impl Leaf {
    fn new(cn: &str) -> Self {
        Leaf {
            cn: cn.into(),
            from: (2020, 1, 1),
            until: (2090, 1, 1),
            eku: vec![ExtendedKeyUsagePurpose::ClientAuth],
            ku: vec![KeyUsagePurpose::DigitalSignature],
        }
    }
    fn signed_by(&self, ca: &Ca) -> CertificateDer<'static> {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name
            .push(DnType::CommonName, self.cn.as_str());
        p.not_before = rcgen::date_time_ymd(self.from.0, self.from.1, self.from.2);
        p.not_after = rcgen::date_time_ymd(self.until.0, self.until.1, self.until.2);
        p.extended_key_usages = self.eku.clone();
        p.key_usages = self.ku.clone();
        p.signed_by(&KeyPair::generate().expect("key"), ca)
            .expect("leaf")
            .der()
            .clone()
    }
}

fn at(y: i32, m: u8, d: u8) -> UnixTime {
    let secs = rcgen::date_time_ymd(y, m, d).unix_timestamp();
    UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from(secs).expect("after 1970"),
    ))
}

fn secs(t: UnixTime) -> u64 {
    t.as_secs()
}

const NOW: (i32, u8, u8) = (2030, 6, 1);

fn now() -> UnixTime {
    at(NOW.0, NOW.1, NOW.2)
}

#[test]
fn a_chain_through_an_intermediate_validates_and_names_its_leaf() {
    let root = root("root");
    let inter = intermediate("inter", &root);
    let leaf = Leaf::new("device-1").signed_by(&inter);
    let chain = [leaf.clone(), inter.der().clone()];
    let ok = validate_chain(&chain, &[root.der().clone()], now()).expect("valid");
    assert_eq!(ok.common_name, "device-1");
    assert_eq!(ok.leaf, Thumbprint::of_der_certificate(&leaf));
    // The intermediate itself may be the anchor (DPS's intermediate enrollment groups).
    validate_chain(&chain, &[inter.der().clone()], now()).expect("intermediate anchor");
}

#[test]
fn chains_that_do_not_lead_to_the_anchor_are_refused() {
    let root = root("root");
    let other = self::root("other");
    let inter = intermediate("inter", &root);
    let leaf = Leaf::new("device-1").signed_by(&inter);
    // Without the intermediate the path cannot be built.
    assert_eq!(
        validate_chain(std::slice::from_ref(&leaf), &[root.der().clone()], now()),
        Err(ChainError::UnknownIssuer)
    );
    assert_eq!(
        validate_chain(
            &[leaf.clone(), inter.der().clone()],
            &[other.der().clone()],
            now()
        ),
        Err(ChainError::UnknownIssuer)
    );
    assert_eq!(
        validate_chain(&[leaf], &[], now()),
        Err(ChainError::NoTrustAnchor)
    );
    assert_eq!(
        validate_chain(&[], &[root.der().clone()], now()),
        Err(ChainError::Empty)
    );
}

#[test]
fn dates_are_checked_on_the_leaf_and_the_intermediates() {
    let root = root("root");
    let inter = intermediate("inter", &root);
    let mut leaf = Leaf::new("device-1");
    leaf.until = (2025, 1, 1);
    let expired = leaf.signed_by(&inter);
    let anchors = [root.der().clone()];
    assert_eq!(
        validate_chain(&[expired.clone(), inter.der().clone()], &anchors, now()),
        Err(ChainError::Expired)
    );
    // The same leaf was fine while it lasted.
    validate_chain(&[expired, inter.der().clone()], &anchors, at(2024, 1, 1)).expect("in date");
    let mut later = Leaf::new("device-1");
    later.from = (2040, 1, 1);
    assert_eq!(
        validate_chain(
            &[later.signed_by(&inter), inter.der().clone()],
            &anchors,
            now()
        ),
        Err(ChainError::NotValidYet)
    );
    // An expired intermediate breaks the chain too.
    let mut p = ca_params("old inter");
    p.not_after = rcgen::date_time_ymd(2025, 1, 1);
    let old = CertifiedIssuer::signed_by(p, KeyPair::generate().expect("key"), &root)
        .expect("old intermediate");
    let leaf = Leaf::new("device-1").signed_by(&old);
    assert!(validate_chain(&[leaf, old.der().clone()], &anchors, now()).is_err());
}

#[test]
fn key_usage_must_allow_client_authentication() {
    let root = root("root");
    let anchors = [root.der().clone()];
    let mut server_only = Leaf::new("device-1");
    server_only.eku = vec![ExtendedKeyUsagePurpose::ServerAuth];
    assert!(matches!(
        validate_chain(&[server_only.signed_by(&root)], &anchors, now()),
        Err(ChainError::WrongUsage(_))
    ));
    let mut no_signature = Leaf::new("device-1");
    no_signature.ku = vec![KeyUsagePurpose::KeyEncipherment];
    assert!(matches!(
        validate_chain(&[no_signature.signed_by(&root)], &anchors, now()),
        Err(ChainError::WrongUsage(_))
    ));
    // No extended key usage at all is allowed (RFC 5280: any purpose).
    let mut plain = Leaf::new("device-1");
    plain.eku.clear();
    validate_chain(&[plain.signed_by(&root)], &anchors, now()).expect("no EKU");
    // A CA certificate is not a device certificate.
    let inter = intermediate("device-1", &root);
    assert!(validate_chain(&[inter.der().clone()], &anchors, now()).is_err());
}

/// The proof of possession: a certificate whose CN is the code, signed by `by`'s key.
fn proof(code: &str, by: &Ca) -> String {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(DnType::CommonName, code);
    p.signed_by(&KeyPair::generate().expect("key"), by)
        .expect("proof")
        .pem()
}

#[tokio::test]
async fn the_verification_code_flow_marks_a_ca_verified_only_with_a_proof() {
    let cas = CertificateAuthorities::new(Arc::new(MemoryCaStore::new()));
    let root = root("fleet root");
    let impostor = self::root("fleet root");
    let uploaded = cas
        .upload("fleet", &root.pem(), CaCondition::Absent)
        .await
        .expect("upload");
    assert!(!uploaded.certificate.verified);
    assert_eq!(uploaded.certificate.subject(), "CN=fleet root");
    // Unverified: no anchor, nothing authenticates.
    assert!(
        cas.trust_anchors(secs(now()))
            .await
            .expect("anchors")
            .is_empty()
    );
    // No code issued yet.
    assert!(matches!(
        cas.verify("fleet", &proof("anything", &root), CaCondition::Any)
            .await,
        Err(CaError::ProofRefused { .. })
    ));
    let issued = cas
        .generate_verification_code("fleet", CaCondition::Version(uploaded.version))
        .await
        .expect("code");
    let code = issued
        .certificate
        .verification_code
        .clone()
        .expect("a code");
    assert_eq!(code.len(), 48);
    for (bad, why) in [
        (proof("not the code", &root), "another CN"),
        (proof(&code, &impostor), "the same subject, another key"),
        ("garbage".to_owned(), "not PEM"),
    ] {
        assert!(
            matches!(
                cas.verify("fleet", &bad, CaCondition::Any).await,
                Err(CaError::ProofRefused { .. })
            ),
            "{why}"
        );
    }
    // A stale version is refused even with a good proof.
    assert!(matches!(
        cas.verify(
            "fleet",
            &proof(&code, &root),
            CaCondition::Version(uploaded.version)
        )
        .await,
        Err(CaError::Changed { .. })
    ));
    let verified = cas
        .verify("fleet", &proof(&code, &root), CaCondition::Any)
        .await
        .expect("verified");
    assert!(verified.certificate.verified);
    assert_eq!(
        verified.certificate.verification_code, None,
        "the code is spent"
    );
    assert_eq!(
        cas.trust_anchors(secs(now())).await.expect("anchors").len(),
        1
    );
    // Uploading another certificate under the name starts over.
    let replaced = cas
        .upload("fleet", &impostor.pem(), CaCondition::Any)
        .await
        .expect("replace");
    assert!(!replaced.certificate.verified);
    assert!(
        cas.trust_anchors(secs(now()))
            .await
            .expect("anchors")
            .is_empty()
    );
}

async fn verified(cas: &CertificateAuthorities, name: &str, ca: &Ca) {
    cas.upload(name, &ca.pem(), CaCondition::Absent)
        .await
        .expect("upload");
    let code = cas
        .generate_verification_code(name, CaCondition::Any)
        .await
        .expect("code")
        .certificate
        .verification_code
        .expect("code");
    cas.verify(name, &proof(&code, ca), CaCondition::Any)
        .await
        .expect("verify");
}

#[tokio::test]
async fn ca_signed_devices_authenticate_until_revoked() {
    let store = Arc::new(MemoryIdentityStore::new());
    let cas = CertificateAuthorities::new(Arc::new(MemoryCaStore::new()));
    let auth = Authenticator::new(store.clone(), "hub.example.net")
        .with_certificate_authorities(cas.clone());
    let root = root("root");
    let unverified = self::root("unverified root");
    let inter = intermediate("inter", &root);
    verified(&cas, "root", &root).await;
    cas.upload("pending", &unverified.pem(), CaCondition::Absent)
        .await
        .expect("upload");
    let id: iot_core::DeviceId = "ca-device".parse().expect("id");
    store
        .create(NewIdentity::new(
            id.clone(),
            Credentials::CertificateAuthority,
        ))
        .await
        .expect("create");
    let leaf = Leaf::new("ca-device").signed_by(&inter);
    let chain = [leaf.clone(), inter.der().clone()];
    let t = secs(now());
    auth.authenticate_at(&id, Presented::CertificateChain(&chain), t)
        .await
        .expect("a chain to a verified CA authenticates");

    let refused = |r: Result<_, Error>| matches!(r, Err(Error::BadCredential { .. }));
    // Another CN, an unverified CA, an expired leaf, a missing intermediate.
    let other = Leaf::new("someone-else").signed_by(&inter);
    let pending = Leaf::new("ca-device").signed_by(&unverified);
    let mut old = Leaf::new("ca-device");
    old.until = (2025, 1, 1);
    let old = old.signed_by(&inter);
    for (chain, why) in [
        (vec![other, inter.der().clone()], "CN is another device"),
        (vec![pending], "CA not verified"),
        (vec![old, inter.der().clone()], "expired"),
        (vec![leaf.clone()], "no intermediate"),
    ] {
        assert!(
            refused(
                auth.authenticate_at(&id, Presented::CertificateChain(&chain), t)
                    .await
            ),
            "{why}"
        );
    }
    // A SAS token is the wrong kind for a CA device.
    assert!(matches!(
        auth.authenticate_at(&id, Presented::SasToken("SharedAccessSignature sr=x"), t)
            .await,
        Err(Error::WrongCredentialKind { .. })
    ));
    // Revocation by disabling the device…
    store
        .set_status(&id, DeviceStatus::disabled("lost"), None)
        .await
        .expect("disable");
    assert!(matches!(
        auth.authenticate_at(&id, Presented::CertificateChain(&chain), t)
            .await,
        Err(Error::DeviceDisabled { .. })
    ));
    store
        .set_status(&id, DeviceStatus::Enabled, None)
        .await
        .expect("enable");
    auth.authenticate_at(&id, Presented::CertificateChain(&chain), t)
        .await
        .expect("enabled again");
    // …and by removing the CA.
    cas.delete("root", CaCondition::Any).await.expect("delete");
    assert!(refused(
        auth.authenticate_at(&id, Presented::CertificateChain(&chain), t)
            .await
    ));
    // Without certificate authorities configured, CA devices are refused.
    let bare = Authenticator::new(store.clone(), "hub.example.net");
    assert!(refused(
        bare.authenticate_at(&id, Presented::CertificateChain(&chain), t)
            .await
    ));
}

#[tokio::test]
async fn thumbprint_devices_authenticate_with_a_presented_chain_too() {
    let store = Arc::new(MemoryIdentityStore::new());
    let auth = Authenticator::new(store.clone(), "hub.example.net");
    let root = root("self");
    let leaf = Leaf::new("thumb-device").signed_by(&root);
    let id: iot_core::DeviceId = "thumb-device".parse().expect("id");
    let t = Thumbprint::of_der_certificate(&leaf);
    store
        .create(NewIdentity::new(
            id.clone(),
            Credentials::X509 {
                primary: t,
                secondary: t,
            },
        ))
        .await
        .expect("create");
    auth.authenticate(&id, Presented::CertificateChain(&[leaf]))
        .await
        .expect("thumbprint of the leaf");
    let other = Leaf::new("thumb-device").signed_by(&root);
    assert!(
        auth.authenticate(&id, Presented::CertificateChain(&[other]))
            .await
            .is_err()
    );
}
