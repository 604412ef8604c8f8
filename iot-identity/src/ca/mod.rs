//! Certificate authorities a hub trusts for X.509 CA authentication, held after proof of
//! possession (IoT Hub's verification-code flow), and the validation of a device's certificate
//! chain against them.
//!
//! * [`CaCertificate`]: one CA certificate by name, with whether it is verified and the
//!   verification code it awaits.
//! * [`CaStore`]: where they are kept, with conditional writes; [`MemoryCaStore`] and
//!   [`FileCaStore`], and the conformance suite `testkit::ca::run_all` (feature `testkit`).
//! * [`CertificateAuthorities`]: the flow over any store — upload (unverified), issue a
//!   verification code, check the certificate the owner signed with the CA's key whose common
//!   name is that code, and mark the CA verified — and the trust anchors (verified CAs within
//!   their dates) that device chains are validated against.
//! * [`validate_chain`]: a device chain (leaf + intermediates from the TLS handshake) checked
//!   with rustls-webpki against trust anchors: signatures, validity dates, basic constraints,
//!   extended key usage client authentication, key usage `digitalSignature`; the leaf's common
//!   name is returned for the caller to compare with the device or registration id.

mod authority;
mod chain;
mod error;
mod file;
mod memory;
mod record;
mod state;
mod store;

pub use authority::{CertificateAuthorities, ChainValidation};
pub use chain::{ValidatedChain, check_dates, common_name, validate_chain};
pub use error::{CaError, ChainError};
pub use file::FileCaStore;
pub use memory::MemoryCaStore;
pub use record::{CaCertificate, StoredCa};
pub use store::{CaCondition, CaStore};
