//! What CA operations and chain validation refuse.

use thiserror::Error;

/// A failure of a [`CaStore`](super::CaStore) or of the verification flow. Messages carry
/// certificate names and versions, never key material (a CA certificate is public).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CaError {
    /// No CA certificate of this name.
    #[error("no CA certificate named {name:?}")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// A create-only write found one.
    #[error("a CA certificate named {name:?} exists")]
    Exists {
        /// The name written.
        name: String,
    },
    /// A conditional write or delete found another version.
    #[error("CA certificate {name:?} is at version {actual}, not {expected}")]
    Changed {
        /// The name written.
        name: String,
        /// The version the caller named.
        expected: u64,
        /// The stored version.
        actual: u64,
    },
    /// A name, certificate or verification certificate was refused.
    #[error("invalid: {reason}")]
    Invalid {
        /// Why.
        reason: String,
    },
    /// The proof of possession failed: the certificate was not signed by the CA's key, or does
    /// not name the verification code.
    #[error("CA certificate {name:?} not verified: {reason}")]
    ProofRefused {
        /// The CA.
        name: String,
        /// Which check failed.
        reason: String,
    },
    /// The store could not be read or written.
    #[error("CA store I/O at {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The store's file does not hold what it should.
    #[error("CA store {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
}

impl CaError {
    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        CaError::Invalid {
            reason: reason.into(),
        }
    }
}

/// Why a device's certificate chain was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChainError {
    /// No certificate was presented.
    #[error("no certificate")]
    Empty,
    /// A certificate is not DER X.509 that webpki accepts (bad encoding, version 1, …).
    #[error("certificate not accepted: {0}")]
    BadCertificate(String),
    /// No trusted CA is in force (none verified, or all out of date).
    #[error("no verified CA certificate")]
    NoTrustAnchor,
    /// The chain does not lead to any trusted CA.
    #[error("the chain does not lead to a verified CA")]
    UnknownIssuer,
    /// A certificate of the chain has expired.
    #[error("a certificate of the chain has expired")]
    Expired,
    /// A certificate of the chain is not valid yet.
    #[error("a certificate of the chain is not valid yet")]
    NotValidYet,
    /// The leaf may not be used for client authentication (extended key usage, key usage
    /// without `digitalSignature`, or a CA certificate used as a leaf).
    #[error("the certificate may not be used for client authentication: {0}")]
    WrongUsage(String),
    /// Any other refusal by webpki (bad signature, basic constraints, path length, …).
    #[error("chain refused: {0}")]
    Invalid(String),
    /// The leaf has no common name, or more than one.
    #[error("the certificate's subject has no single common name")]
    NoCommonName,
    /// The leaf's common name is not the id it must be.
    #[error("the certificate's common name is not {expected:?}")]
    CommonNameMismatch {
        /// The device or registration id.
        expected: String,
    },
}
