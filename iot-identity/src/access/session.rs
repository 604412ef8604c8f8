//! Sessions: an opaque random token handed to the user once, stored only as its SHA-256 digest.
//!
//! A token is 32 bytes from the operating system's CSPRNG, so a fast digest is as strong as a
//! slow one here (nobody can guess the input), and the digest can be the store's lookup key: the
//! store and its files never hold a usable token, and a lookup reveals nothing an attacker could
//! use to forge one.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use iot_core::Timestamp;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use super::names::UserName;
use crate::error::{Error, Result};

/// Bytes of randomness in a token.
const TOKEN_BYTES: usize = 32;
/// The length of a token's text (unpadded URL-safe base64 of 32 bytes).
pub const TOKEN_LEN: usize = 43;

/// A session token as given to a user at login: 43 characters of URL-safe base64. It is a
/// bearer secret: `Debug` is redacted, the text is zeroized on drop, and it is shown only
/// through [`expose`](Self::expose).
pub struct SessionToken(Zeroizing<String>);

impl SessionToken {
    /// A new random token.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; TOKEN_BYTES]);
        rand::rng().fill_bytes(&mut bytes[..]);
        SessionToken(Zeroizing::new(URL_SAFE_NO_PAD.encode(&bytes[..])))
    }

    /// The token's text, to hand to the user (a cookie, a bearer header).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The digest the store keeps.
    pub fn digest(&self) -> SessionDigest {
        SessionDigest::of(&self.0)
    }
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionToken(<redacted>)")
    }
}

/// The SHA-256 digest of a session token: what a store keeps and looks sessions up by.
/// Comparisons are constant-time.
#[derive(Clone, Copy)]
pub struct SessionDigest([u8; 32]);

impl SessionDigest {
    /// The digest of a presented token's text. Text that cannot be a token (wrong length or
    /// alphabet) is refused before hashing, so a lookup costs nothing for garbage.
    pub fn of_presented(token: &str) -> Result<Self> {
        if token.len() != TOKEN_LEN
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::SessionRefused {
                what: "malformed token",
            });
        }
        Ok(Self::of(token))
    }

    fn of(token: &str) -> Self {
        SessionDigest(Sha256::digest(token.as_bytes()).into())
    }

    /// From the 32 raw bytes (for stores).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        SessionDigest(bytes)
    }

    /// The 32 raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// From 64 hex digits (for stores that keep it as text).
    pub fn from_hex(hex: &str) -> Result<Self> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return Err(Error::invalid("a session digest has 64 hex digits"));
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            let text = std::str::from_utf8(pair)
                .map_err(|_| Error::invalid("a session digest has 64 hex digits"))?;
            *byte = u8::from_str_radix(text, 16)
                .map_err(|_| Error::invalid("a session digest has 64 hex digits"))?;
        }
        Ok(SessionDigest(out))
    }

    /// 64 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl PartialEq for SessionDigest {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}

impl Eq for SessionDigest {}

impl PartialOrd for SessionDigest {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Ordered for the stores' maps. The digest of a random token is no secret worth timing: knowing
/// it does not give the token.
impl Ord for SessionDigest {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

impl fmt::Debug for SessionDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A prefix is enough to tell sessions apart in logs.
        write!(f, "SessionDigest({}…)", &self.to_hex()[..8])
    }
}

/// A logged-in session.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Session {
    /// The digest of its token (the store's key).
    pub digest: SessionDigest,
    /// Whose session it is.
    pub user: UserName,
    /// When the user logged in.
    pub created_at: Timestamp,
    /// When it stops being accepted.
    pub expires_at: Timestamp,
}

impl Session {
    /// A session of `user` for the token with `digest`, from `created_at` to `expires_at`.
    pub fn new(
        digest: SessionDigest,
        user: UserName,
        created_at: Timestamp,
        expires_at: Timestamp,
    ) -> Self {
        Session {
            digest,
            user,
            created_at,
            expires_at,
        }
    }

    /// Whether the session has expired at `now`.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        now >= self.expires_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_redacted_and_hashed() {
        let a = SessionToken::generate();
        let b = SessionToken::generate();
        assert_eq!(a.expose().len(), TOKEN_LEN);
        assert_ne!(a.expose(), b.expose());
        assert!(!format!("{a:?}").contains(a.expose()));
        let digest = SessionDigest::of_presented(a.expose()).ok();
        assert_eq!(digest, Some(a.digest()));
        assert_ne!(a.digest(), b.digest());
        assert_eq!(
            SessionDigest::from_hex(&a.digest().to_hex()).ok(),
            Some(a.digest())
        );
        assert!(SessionDigest::of_presented("short").is_err());
        assert!(SessionDigest::of_presented(&"!".repeat(TOKEN_LEN)).is_err());
        assert!(SessionDigest::from_hex("zz").is_err());
        assert!(SessionDigest::from_hex(&"é".repeat(32)).is_err());
    }
}
