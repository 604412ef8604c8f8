//! A device's certificate chain validated against trusted CAs with rustls-webpki.

use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::error::ChainError;
use crate::credentials::Thumbprint;

/// A chain that validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatedChain {
    /// The leaf's subject common name (the device or registration id it claims).
    pub common_name: String,
    /// The SHA-256 thumbprint of the leaf.
    pub leaf: Thumbprint,
    /// The leaf's `notAfter`, Unix seconds.
    pub not_after: i64,
}

/// Validates `chain` (leaf first, then the intermediates the device sent, in any order) against
/// `anchors` (trusted CA certificates, DER) at `now`.
///
/// webpki builds a path from the leaf through the intermediates to an anchor, checking every
/// signature, every certificate's dates (the anchor's own dates are the caller's to check),
/// basic constraints and path length, and that the leaf allows client authentication (its
/// extended key usage, when it has one, includes `clientAuth`). On top of that the leaf's key
/// usage, when present, must include `digitalSignature` (it signs the TLS handshake), and its
/// subject must hold exactly one common name, which is returned.
pub fn validate_chain(
    chain: &[CertificateDer<'_>],
    anchors: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<ValidatedChain, ChainError> {
    let (leaf, intermediates) = chain.split_first().ok_or(ChainError::Empty)?;
    let trust: Vec<_> = anchors
        .iter()
        .filter_map(|a| webpki::anchor_from_trusted_cert(a).ok())
        .map(|a| a.to_owned())
        .collect();
    if trust.is_empty() {
        return Err(ChainError::NoTrustAnchor);
    }
    let end_entity =
        EndEntityCert::try_from(leaf).map_err(|e| ChainError::BadCertificate(e.to_string()))?;
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &trust,
            intermediates,
            now,
            KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(from_webpki)?;
    let parsed = parse(leaf)?;
    if let Ok(Some(usage)) = parsed.key_usage()
        && !usage.value.digital_signature()
    {
        return Err(ChainError::WrongUsage(
            "key usage without digitalSignature".into(),
        ));
    }
    Ok(ValidatedChain {
        common_name: single_common_name(&parsed)?,
        leaf: Thumbprint::of_der_certificate(leaf),
        not_after: parsed.validity().not_after.timestamp(),
    })
}

/// Checks that `cert` is one X.509 certificate whose validity dates (inclusive) contain `now`,
/// Unix seconds; its `notAfter` on success. For certificates known by thumbprint, where no
/// chain is built.
pub fn check_dates(cert: &CertificateDer<'_>, now: u64) -> Result<i64, ChainError> {
    let parsed = parse(cert)?;
    let validity = parsed.validity();
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    if now < validity.not_before.timestamp() {
        return Err(ChainError::NotValidYet);
    }
    if now > validity.not_after.timestamp() {
        return Err(ChainError::Expired);
    }
    Ok(validity.not_after.timestamp())
}

/// The single common name of a certificate's subject.
pub fn common_name(cert: &CertificateDer<'_>) -> Result<String, ChainError> {
    single_common_name(&parse(cert)?)
}

fn parse<'a>(cert: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, ChainError> {
    match X509Certificate::from_der(cert.as_ref()) {
        Ok(([], parsed)) => Ok(parsed),
        Ok(_) => Err(ChainError::BadCertificate(
            "bytes after the certificate".into(),
        )),
        Err(e) => Err(ChainError::BadCertificate(e.to_string())),
    }
}

fn single_common_name(cert: &X509Certificate<'_>) -> Result<String, ChainError> {
    let mut names = cert.subject().iter_common_name();
    let first = names.next().ok_or(ChainError::NoCommonName)?;
    if names.next().is_some() {
        return Err(ChainError::NoCommonName);
    }
    first
        .as_str()
        .map(str::to_owned)
        .map_err(|_| ChainError::NoCommonName)
}

// `RequiredEkuNotFound` is deprecated but still returned by older paths: map both.
#[allow(deprecated)]
fn from_webpki(e: webpki::Error) -> ChainError {
    use webpki::Error as W;
    match e {
        W::UnknownIssuer => ChainError::UnknownIssuer,
        W::CertExpired { .. } => ChainError::Expired,
        W::CertNotValidYet { .. } => ChainError::NotValidYet,
        W::RequiredEkuNotFound | W::RequiredEkuNotFoundContext(_) | W::CaUsedAsEndEntity => {
            ChainError::WrongUsage(e.to_string())
        }
        W::BadDer | W::UnsupportedCertVersion | W::BadDerTime => {
            ChainError::BadCertificate(e.to_string())
        }
        other => ChainError::Invalid(format!("{other:?}")),
    }
}
