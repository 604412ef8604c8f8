//! IoT Hub's proof-of-possession flow over a [`CaStore`], and the trust anchors it yields.

use std::sync::Arc;
use std::time::Duration;

use rand::RngCore as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use subtle::ConstantTimeEq as _;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::chain::{ValidatedChain, validate_chain};
use super::error::{CaError, ChainError};
use super::record::{CaCertificate, StoredCa};
use super::store::{CaCondition, CaStore};

/// The CAs a hub trusts for device certificates, over any [`CaStore`].
///
/// 1. [`upload`](Self::upload) a CA certificate: it is held unverified and authenticates
///    nobody.
/// 2. [`generate_verification_code`](Self::generate_verification_code): a fresh random code.
/// 3. The owner makes a certificate whose subject common name is the code, signs it with the
///    CA's private key, and hands it to [`verify`](Self::verify): if the CA's key signed it and
///    it names the code, the CA is verified and the code is spent.
///
/// Only verified CAs within their dates are trust anchors ([`validate`](Self::validate)), so
/// deleting a CA (or uploading another certificate under its name) revokes every device
/// certificate it issued, from the next connection on.
#[derive(Clone, Debug)]
pub struct CertificateAuthorities {
    store: Arc<dyn CaStore>,
}

impl CertificateAuthorities {
    /// The flow over `store`.
    pub fn new(store: Arc<dyn CaStore>) -> Self {
        CertificateAuthorities { store }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn CaStore> {
        &self.store
    }

    /// Stores `pem` (one CA certificate) under `name`, unverified, if `condition` holds.
    /// Replacing a certificate starts its verification again.
    pub async fn upload(
        &self,
        name: &str,
        pem: &str,
        condition: CaCondition,
    ) -> Result<StoredCa, CaError> {
        let now = crate::sas::unix_now();
        let mut certificate = CaCertificate::from_pem(name, pem, now)?;
        if let Some(old) = self.store.get(name).await? {
            certificate.created = old.certificate.created;
        }
        self.store.put(certificate, condition).await
    }

    /// Issues a new verification code for `name` (replacing any earlier one) if `condition`
    /// holds; the stored certificate carries it.
    pub async fn generate_verification_code(
        &self,
        name: &str,
        condition: CaCondition,
    ) -> Result<StoredCa, CaError> {
        let stored = self.existing(name).await?;
        let mut certificate = stored.certificate;
        let mut code = [0u8; 24];
        rand::rng().fill_bytes(&mut code);
        certificate.verification_code = Some(code.iter().map(|b| format!("{b:02X}")).collect());
        certificate.updated = crate::sas::unix_now();
        self.store
            .put(certificate, condition_or(condition, stored.version))
            .await
    }

    /// Checks the proof of possession `proof_pem` for `name` and marks the CA verified: the
    /// proof must be one certificate, within its dates, whose subject common name is the
    /// current verification code, issued by the CA's subject and signed by the CA's key.
    pub async fn verify(
        &self,
        name: &str,
        proof_pem: &str,
        condition: CaCondition,
    ) -> Result<StoredCa, CaError> {
        let stored = self.existing(name).await?;
        let refused = |reason: &str| CaError::ProofRefused {
            name: name.to_owned(),
            reason: reason.to_owned(),
        };
        let code = stored
            .certificate
            .verification_code
            .clone()
            .ok_or_else(|| refused("no verification code was issued"))?;
        let proof = CertificateDer::from_pem_slice(proof_pem.as_bytes())
            .map_err(|_| refused("the proof is not a PEM certificate"))?;
        let named = super::chain::common_name(&proof)
            .map_err(|_| refused("the proof has no single common name"))?;
        // The code is a one-time challenge: compare it as a secret.
        if !bool::from(named.as_bytes().ct_eq(code.as_bytes())) {
            return Err(refused(
                "the proof's common name is not the verification code",
            ));
        }
        check_signed_by(&proof, stored.certificate.der(), crate::sas::unix_now())
            .map_err(|reason| refused(&reason))?;
        let mut certificate = stored.certificate;
        certificate.verified = true;
        certificate.verification_code = None;
        certificate.updated = crate::sas::unix_now();
        self.store
            .put(certificate, condition_or(condition, stored.version))
            .await
    }

    /// Removes the CA `name` (devices it issued are refused from the next connection on).
    pub async fn delete(&self, name: &str, condition: CaCondition) -> Result<(), CaError> {
        self.store.delete(name, condition).await
    }

    /// The verified CAs within their dates at `now` (Unix seconds), DER.
    pub async fn trust_anchors(&self, now: u64) -> Result<Vec<CertificateDer<'static>>, CaError> {
        Ok(self
            .store
            .list()
            .await?
            .into_iter()
            .filter(|s| s.certificate.verified && s.certificate.in_date(now))
            .map(|s| CertificateDer::from(s.certificate.der().to_vec()))
            .collect())
    }

    /// Validates a device's chain (leaf first) against the trust anchors at `now` and checks
    /// that its common name is `expected_id`.
    pub async fn validate(
        &self,
        chain: &[CertificateDer<'_>],
        expected_id: &str,
        now: u64,
    ) -> Result<ValidatedChain, ChainValidation> {
        let anchors = self
            .trust_anchors(now)
            .await
            .map_err(ChainValidation::Store)?;
        let time = UnixTime::since_unix_epoch(Duration::from_secs(now));
        let validated = validate_chain(chain, &anchors, time).map_err(ChainValidation::Refused)?;
        if validated.common_name != expected_id {
            return Err(ChainValidation::Refused(ChainError::CommonNameMismatch {
                expected: expected_id.to_owned(),
            }));
        }
        Ok(validated)
    }

    async fn existing(&self, name: &str) -> Result<StoredCa, CaError> {
        self.store
            .get(name)
            .await?
            .ok_or_else(|| CaError::NotFound {
                name: name.to_owned(),
            })
    }
}

/// Why [`CertificateAuthorities::validate`] failed: the chain, or the store.
#[derive(Debug, thiserror::Error)]
pub enum ChainValidation {
    /// The chain was refused.
    #[error(transparent)]
    Refused(ChainError),
    /// The CAs could not be read.
    #[error(transparent)]
    Store(CaError),
}

/// A caller's `Any` becomes "the version just read", so that a concurrent change is not lost.
fn condition_or(condition: CaCondition, read: u64) -> CaCondition {
    match condition {
        CaCondition::Any => CaCondition::Version(read),
        other => other,
    }
}

/// Whether `proof` is within its dates, names `ca`'s subject as issuer and carries a signature
/// that `ca`'s public key verifies.
fn check_signed_by(proof: &CertificateDer<'_>, ca: &[u8], now: u64) -> Result<(), String> {
    let (_, proof) =
        X509Certificate::from_der(proof.as_ref()).map_err(|_| "the proof is not X.509")?;
    let (_, ca) = X509Certificate::from_der(ca).map_err(|_| "the CA is not X.509")?;
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let validity = proof.validity();
    if now < validity.not_before.timestamp() || now > validity.not_after.timestamp() {
        return Err("the proof is outside its validity dates".into());
    }
    if proof.issuer() != ca.subject() {
        return Err("the proof's issuer is not the CA's subject".into());
    }
    proof
        .verify_signature(Some(ca.public_key()))
        .map_err(|_| "the proof is not signed by the CA's key".to_owned())
}
