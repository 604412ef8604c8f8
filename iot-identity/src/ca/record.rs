//! One CA certificate as the hub holds it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::error::CaError;
use crate::credentials::Thumbprint;

/// The longest certificate name (IoT Hub's names are at most 256 characters; ours are ids).
pub(crate) const MAX_NAME_LEN: usize = 128;
/// The largest CA certificate accepted, DER bytes.
pub(crate) const MAX_CERTIFICATE_LEN: usize = 16 * 1024;

/// A CA certificate by name: its DER, and where it stands in the verification flow.
///
/// A new upload is unverified; [`CertificateAuthorities`](super::CertificateAuthorities)
/// issues a verification code and marks it verified once the owner proves to hold its key.
/// Only verified CAs authenticate devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaCertificate {
    name: String,
    der: Vec<u8>,
    subject: String,
    thumbprint: Thumbprint,
    not_before: i64,
    not_after: i64,
    /// Whether the owner proved possession of the CA's private key.
    pub verified: bool,
    /// The code the proof must name (as its certificate's common name), once issued.
    pub verification_code: Option<String>,
    /// When it was first uploaded, Unix seconds.
    pub created: u64,
    /// When it last changed, Unix seconds.
    pub updated: u64,
}

/// A [`CaCertificate`] with the version the store gave it (the etag writes are conditioned on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCa {
    /// The certificate.
    pub certificate: CaCertificate,
    /// Drawn from one counter per store: never reused, even after a delete.
    pub version: u64,
}

impl CaCertificate {
    /// An unverified CA certificate from PEM text holding exactly one certificate, which must be
    /// a CA (basic constraints `cA: TRUE`).
    pub fn from_pem(name: &str, pem: &str, now: u64) -> Result<Self, CaError> {
        let mut certs = CertificateDer::pem_slice_iter(pem.as_bytes());
        let first = certs
            .next()
            .ok_or_else(|| CaError::invalid("no certificate in the PEM"))?
            .map_err(|e| CaError::invalid(format!("PEM: {e}")))?;
        if certs.next().is_some() {
            return Err(CaError::invalid("the PEM holds more than one certificate"));
        }
        Self::from_der(name, first.as_ref(), now)
    }

    /// An unverified CA certificate from DER.
    pub fn from_der(name: &str, der: &[u8], now: u64) -> Result<Self, CaError> {
        check_name(name)?;
        if der.len() > MAX_CERTIFICATE_LEN {
            return Err(CaError::invalid(format!(
                "a CA certificate is at most {MAX_CERTIFICATE_LEN} bytes"
            )));
        }
        let parsed = match X509Certificate::from_der(der) {
            Ok(([], parsed)) => parsed,
            Ok(_) => return Err(CaError::invalid("bytes after the certificate")),
            Err(e) => return Err(CaError::invalid(format!("not an X.509 certificate: {e}"))),
        };
        if !parsed.is_ca() {
            return Err(CaError::invalid(
                "not a CA certificate (basic constraints cA is not TRUE)",
            ));
        }
        let validity = parsed.validity();
        Ok(CaCertificate {
            name: name.to_owned(),
            der: der.to_vec(),
            subject: parsed.subject().to_string(),
            thumbprint: Thumbprint::of_der_certificate(der),
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            verified: false,
            verification_code: None,
            created: now,
            updated: now,
        })
    }

    /// The name it is held under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The certificate, DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The certificate as PEM text.
    pub fn pem(&self) -> String {
        let body = STANDARD.encode(&self.der);
        let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in body.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        pem
    }

    /// Its subject, as RFC 4514 prints it (`CN=…, O=…`).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The SHA-256 thumbprint of its DER.
    pub fn thumbprint(&self) -> Thumbprint {
        self.thumbprint
    }

    /// `notBefore`, Unix seconds.
    pub fn not_before(&self) -> i64 {
        self.not_before
    }

    /// `notAfter`, Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// Whether `now` (Unix seconds) lies within its validity dates.
    pub fn in_date(&self, now: u64) -> bool {
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        self.not_before <= now && now <= self.not_after
    }
}

/// Names are ids: 1 to 128 of `A-Z a-z 0-9 - _ .`, so they fit a URL path segment as they are.
pub(crate) fn check_name(name: &str) -> Result<(), CaError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(CaError::invalid(format!(
            "a certificate name is 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 - _ ."
        )))
    }
}
