//! How a device proves who it is: symmetric keys, X.509 thumbprints, passphrase hashes.
//!
//! Secret material ([`SymmetricKey`], [`PassphraseHash`]) is zeroized when the last copy is dropped,
//! and its `Debug` output is redacted. No type here implements `Display` for a secret.

use std::fmt;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// A device's credentials. The store keeps exactly one kind per device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credentials {
    /// The device has no credentials and cannot authenticate (for example before provisioning).
    #[default]
    None,
    /// Two shared keys; either signs SAS tokens. Two allow rolling one while the other is in use.
    SymmetricKeys {
        /// The primary key.
        primary: SymmetricKey,
        /// The secondary key.
        secondary: SymmetricKey,
    },
    /// The SHA-256 thumbprints of two client certificates; either authenticates.
    X509 {
        /// Thumbprint of the primary certificate.
        primary: Thumbprint,
        /// Thumbprint of the secondary certificate.
        secondary: Thumbprint,
    },
    /// An argon2id hash of a passphrase (the passphrase itself is never stored).
    Passphrase(PassphraseHash),
    /// A certificate issued by a CA the hub holds verified (IoT Hub's `certificateAuthority`):
    /// the device presents its chain in the TLS handshake, the chain must lead to a verified CA
    /// and the leaf's common name must be the device id (see [`crate::ca`]). Nothing secret is
    /// stored: deleting the CA, or disabling the device, revokes it.
    CertificateAuthority,
}

impl Credentials {
    /// Two freshly generated random symmetric keys.
    pub fn generate_symmetric_keys() -> Self {
        Credentials::SymmetricKeys {
            primary: SymmetricKey::generate(),
            secondary: SymmetricKey::generate(),
        }
    }

    /// Hashes `passphrase` with `params` (see [`PassphraseHash::hash`]).
    pub fn passphrase(passphrase: &str, params: &PassphraseParams) -> Result<Self> {
        Ok(Credentials::Passphrase(PassphraseHash::hash(
            passphrase, params,
        )?))
    }

    /// A short name of the kind: `"none"`, `"symmetric key"`, `"thumbprint"`, `"passphrase"`,
    /// `"certificate authority"`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Credentials::None => "none",
            Credentials::SymmetricKeys { .. } => "symmetric key",
            Credentials::X509 { .. } => "thumbprint",
            Credentials::Passphrase(_) => "passphrase",
            Credentials::CertificateAuthority => "certificate authority",
        }
    }
}

/// Which of a device's two keys or certificates matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeySlot {
    /// The primary key or certificate.
    Primary,
    /// The secondary key or certificate.
    Secondary,
}

/// A symmetric key: 32 to 64 bytes, exchanged as standard base64.
///
/// The bytes live in one exactly sized heap buffer that never moves and is zeroized when the key
/// is dropped. Cloning copies them into a new such buffer, zeroized in turn: stores share whole
/// records (`Arc<DeviceIdentity>`) rather than cloning keys, and one buffer per key costs 48
/// bytes of heap where a shared, reference-counted one cost 96. `Debug` prints
/// `SymmetricKey(<redacted>)`; the only way to read the key is [`SymmetricKey::expose_base64`] or
/// [`SymmetricKey::expose_bytes`], whose names make every use easy to audit.
#[derive(Clone)]
pub struct SymmetricKey(Zeroizing<Box<[u8]>>);

impl SymmetricKey {
    /// Length of generated keys, in bytes.
    pub const GENERATED_LEN: usize = 32;
    /// Shortest key accepted, in bytes.
    pub const MIN_LEN: usize = 32;
    /// Longest key accepted, in bytes.
    pub const MAX_LEN: usize = 64;

    /// A new key of 32 bytes from the thread's cryptographically secure generator (ChaCha, seeded
    /// by the operating system).
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new(vec![0u8; Self::GENERATED_LEN].into_boxed_slice());
        rand::rng().fill_bytes(&mut bytes);
        SymmetricKey(bytes)
    }

    /// A key from raw bytes (32 to 64 of them).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if !(Self::MIN_LEN..=Self::MAX_LEN).contains(&bytes.len()) {
            return Err(Error::invalid(format!(
                "a symmetric key must be {} to {} bytes, got {}",
                Self::MIN_LEN,
                Self::MAX_LEN,
                bytes.len()
            )));
        }
        Ok(SymmetricKey(Zeroizing::new(Box::from(bytes))))
    }

    /// A key from standard base64 (with padding), as Azure IoT Hub shows keys.
    pub fn from_base64(encoded: &str) -> Result<Self> {
        // 64 bytes encode to 88 characters; refuse huge input before decoding it.
        if encoded.len() > 128 {
            return Err(Error::invalid("a symmetric key must be at most 64 bytes"));
        }
        let bytes = Zeroizing::new(
            STANDARD
                .decode(encoded.trim())
                .map_err(|_| Error::invalid("a symmetric key must be standard base64"))?,
        );
        Self::from_bytes(&bytes)
    }

    /// The key as standard base64. Use only to hand the key to its device (registration, reset).
    pub fn expose_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.expose_bytes()))
    }

    /// The raw key bytes, for signing.
    pub fn expose_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The key of one device of a symmetric-key group enrollment, derived from this group key
    /// the way the Azure IoT Hub Device Provisioning Service derives it: HMAC-SHA256 keyed with
    /// the group key over the registration (device) id. A fleet can then be provisioned from one
    /// secret: each device holds only its own derived key.
    pub fn derive_for_device(&self, registration_id: &str) -> SymmetricKey {
        // HMAC takes keys of any length, so `new_from_slice` cannot fail here.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.expose_bytes())
            .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()));
        mac.update(registration_id.as_bytes());
        let mut digest = mac.finalize().into_bytes();
        let key = SymmetricKey(Zeroizing::new(Box::from(&digest[..])));
        // The derived key is a secret too: clear the copy on the stack.
        zeroize::Zeroize::zeroize(&mut digest[..]);
        key
    }

    /// Constant-time comparison with raw key bytes.
    pub fn ct_eq_bytes(&self, other: &[u8]) -> bool {
        // `ct_eq` on slices of different lengths is false; the length is not secret.
        bool::from(self.expose_bytes().ct_eq(other))
    }
}

impl PartialEq for SymmetricKey {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq_bytes(other.expose_bytes())
    }
}

impl Eq for SymmetricKey {}

impl fmt::Debug for SymmetricKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SymmetricKey(<redacted>)")
    }
}

/// The SHA-256 thumbprint of an X.509 certificate (of its DER encoding).
///
/// Thumbprints are not secret; `Display` prints 64 upper-case hex digits, as Azure shows them.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Thumbprint([u8; 32]);

impl Thumbprint {
    /// The thumbprint of a DER-encoded certificate.
    pub fn of_der_certificate(der: &[u8]) -> Self {
        Thumbprint(Sha256::digest(der).into())
    }

    /// From the 32 raw bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Thumbprint(bytes)
    }

    /// The 32 raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// From 64 hex digits (either case), optionally separated by `:` or spaces as some tools print
    /// them.
    pub fn from_hex(hex: &str) -> Result<Self> {
        if hex.len() > 200 {
            return Err(Error::invalid("a SHA-256 thumbprint has 64 hex digits"));
        }
        let mut out = [0u8; 32];
        let mut count = 0usize;
        for c in hex.chars().filter(|c| !matches!(c, ':' | ' ')) {
            let digit = c
                .to_digit(16)
                .ok_or_else(|| Error::invalid("a thumbprint may only contain hex digits"))?;
            let byte = out
                .get_mut(count / 2)
                .ok_or_else(|| Error::invalid("a SHA-256 thumbprint has 64 hex digits"))?;
            // `digit` < 16, so the cast cannot truncate.
            *byte = (*byte << 4) | digit as u8;
            count += 1;
        }
        if count != 64 {
            return Err(Error::invalid(format!(
                "a SHA-256 thumbprint has 64 hex digits, got {count}"
            )));
        }
        Ok(Thumbprint(out))
    }
}

impl fmt::Display for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Thumbprint({self})")
    }
}

impl std::str::FromStr for Thumbprint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::from_hex(s)
    }
}

/// argon2id cost parameters for new passphrase hashes.
///
/// The default is the OWASP Password Storage Cheat Sheet's first recommendation for argon2id:
/// 19 MiB of memory, 2 iterations, 1 lane. Verification always uses the parameters stored in the
/// hash, so raising them later only affects new hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassphraseParams {
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Degree of parallelism (lanes).
    pub parallelism: u32,
}

impl Default for PassphraseParams {
    fn default() -> Self {
        Self::OWASP
    }
}

impl PassphraseParams {
    /// OWASP's recommendation: m = 19456 KiB, t = 2, p = 1.
    pub const OWASP: PassphraseParams = PassphraseParams {
        memory_kib: 19_456,
        iterations: 2,
        parallelism: 1,
    };

    /// Cheap parameters for tests only (m = 64 KiB, t = 1, p = 1). Never use them in production.
    pub const INSECURE_FOR_TESTS: PassphraseParams = PassphraseParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    fn argon2(&self) -> Result<Argon2<'static>> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| Error::invalid(format!("argon2 parameters {self:?} refused: {e}")))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

/// The longest passphrase accepted, in bytes (hashing cost must not depend on attacker input).
pub const MAX_PASSPHRASE_LEN: usize = 1024;

/// An argon2id hash of a passphrase with its per-record random salt, in PHC string format
/// (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`).
///
/// Not the passphrase, but still treated as secret: `Debug` is redacted and the string is zeroized
/// when the last clone is dropped.
#[derive(Clone)]
pub struct PassphraseHash(Arc<Zeroizing<String>>);

impl PassphraseHash {
    /// Hashes `passphrase` (1 to 1024 bytes) with a fresh 16-byte salt. Slow on purpose (tens of
    /// milliseconds with the default parameters): call it outside latency-critical paths.
    pub fn hash(passphrase: &str, params: &PassphraseParams) -> Result<Self> {
        if passphrase.is_empty() || passphrase.len() > MAX_PASSPHRASE_LEN {
            return Err(Error::invalid(format!(
                "a passphrase must be 1 to {MAX_PASSPHRASE_LEN} bytes"
            )));
        }
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let salt = SaltString::encode_b64(&salt)
            .map_err(|e| Error::invalid(format!("salt encoding failed: {e}")))?;
        let hash = params
            .argon2()?
            .hash_password(passphrase.as_bytes(), &salt)
            .map_err(|e| Error::invalid(format!("argon2 hashing failed: {e}")))?;
        Ok(PassphraseHash(Arc::new(Zeroizing::new(hash.to_string()))))
    }

    /// A stored PHC string; it must be an argon2id hash.
    pub fn from_phc(phc: &str) -> Result<Self> {
        if phc.len() > 512 {
            return Err(Error::invalid(
                "an argon2id PHC string is at most 512 bytes",
            ));
        }
        let parsed = PasswordHash::new(phc)
            .map_err(|e| Error::invalid(format!("not a PHC hash string: {e}")))?;
        if parsed.algorithm != Algorithm::Argon2id.ident() || parsed.hash.is_none() {
            return Err(Error::invalid(
                "only argon2id passphrase hashes are accepted",
            ));
        }
        Ok(PassphraseHash(Arc::new(Zeroizing::new(phc.to_owned()))))
    }

    /// The PHC string, for storage.
    pub fn expose_phc(&self) -> &str {
        &self.0
    }

    /// Whether `passphrase` matches, in time independent of where it differs. As slow as hashing.
    pub fn verify(&self, passphrase: &str) -> bool {
        if passphrase.is_empty() || passphrase.len() > MAX_PASSPHRASE_LEN {
            return false;
        }
        match PasswordHash::new(&self.0) {
            // `Argon2::default()` is only the verifier; the parameters come from the hash.
            Ok(hash) => Argon2::default()
                .verify_password(passphrase.as_bytes(), &hash)
                .is_ok(),
            Err(_) => false,
        }
    }
}

impl PartialEq for PassphraseHash {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.0.as_bytes().ct_eq(other.0.as_bytes()))
    }
}

impl Eq for PassphraseHash {}

impl fmt::Debug for PassphraseHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PassphraseHash(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_device_keys_match_the_provisioning_service() {
        // Reference value from Python: base64(hmac.new(group, b"sensor-0042", sha256).digest()).
        let group = SymmetricKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
            .expect("valid key");
        let derived = group.derive_for_device("sensor-0042");
        assert_eq!(
            derived.expose_base64().as_str(),
            "uRjTJ5ZkeYXfDyfZuhPgHhbqSDx4m4T3B7VVZRK8SI0="
        );
        assert_ne!(derived, group.derive_for_device("sensor-0043"));
    }

    #[test]
    fn generated_keys_are_32_random_bytes() {
        let a = SymmetricKey::generate();
        let b = SymmetricKey::generate();
        assert_eq!(a.expose_bytes().len(), 32);
        assert_ne!(a, b);
        let round = SymmetricKey::from_base64(&a.expose_base64()).ok();
        assert_eq!(round, Some(a));
    }

    #[test]
    fn key_lengths_and_encoding_are_checked() {
        assert!(SymmetricKey::from_bytes(&[1; 31]).is_err());
        assert!(SymmetricKey::from_bytes(&[1; 32]).is_ok());
        assert!(SymmetricKey::from_bytes(&[1; 64]).is_ok());
        assert!(SymmetricKey::from_bytes(&[1; 65]).is_err());
        assert!(SymmetricKey::from_base64("not base64!").is_err());
        assert!(SymmetricKey::from_base64(&"A".repeat(10_000_000)).is_err());
    }

    #[test]
    fn debug_is_redacted() {
        let key = SymmetricKey::from_bytes(&[0x41; 32]).ok();
        let creds = key.map(|k| Credentials::SymmetricKeys {
            primary: k.clone(),
            secondary: k,
        });
        let shown = format!("{creds:?}");
        assert!(shown.contains("<redacted>"));
        assert!(!shown.contains("QUFB"), "{shown}");
        let hash =
            PassphraseHash::hash("correct horse", &PassphraseParams::INSECURE_FOR_TESTS).ok();
        let shown = format!("{hash:?}");
        assert!(!shown.contains("argon2id"), "{shown}");
    }

    #[test]
    fn thumbprints_parse_in_every_common_form() {
        let t = Thumbprint::of_der_certificate(b"certificate");
        let upper = t.to_string();
        assert_eq!(upper.len(), 64);
        assert_eq!(Thumbprint::from_hex(&upper).ok(), Some(t));
        assert_eq!(Thumbprint::from_hex(&upper.to_lowercase()).ok(), Some(t));
        let colons: Vec<String> = t.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(Thumbprint::from_hex(&colons.join(":")).ok(), Some(t));
        assert!(Thumbprint::from_hex(&upper[..62]).is_err());
        assert!(Thumbprint::from_hex(&format!("{upper}00")).is_err());
        assert!(Thumbprint::from_hex(&"zz".repeat(32)).is_err());
        assert!(Thumbprint::from_hex("é").is_err());
    }

    #[test]
    fn passphrase_hash_is_salted_argon2id() {
        let p = PassphraseParams::INSECURE_FOR_TESTS;
        let a = PassphraseHash::hash("correct horse", &p).ok();
        let b = PassphraseHash::hash("correct horse", &p).ok();
        let (Some(a), Some(b)) = (a, b) else {
            panic!("hashing failed")
        };
        assert!(a.expose_phc().starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        assert_ne!(a, b, "per-record salt");
        assert!(a.verify("correct horse"));
        assert!(!a.verify("correct horsE"));
        assert!(!a.verify(""));
        assert!(!a.verify(&"x".repeat(10_000_000)));
        assert!(PassphraseHash::from_phc(a.expose_phc()).is_ok());
        assert!(PassphraseHash::from_phc("$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaA").is_err());
        assert!(PassphraseHash::from_phc("plain").is_err());
        assert!(PassphraseHash::hash("", &p).is_err());
    }

    #[test]
    fn owasp_defaults() {
        let h = PassphraseHash::hash("pass", &PassphraseParams::default()).ok();
        assert!(h.is_some_and(|h| {
            h.expose_phc()
                .starts_with("$argon2id$v=19$m=19456,t=2,p=1$")
        }));
    }
}
