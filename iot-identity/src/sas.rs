//! Shared access signature (SAS) tokens in Azure IoT Hub's format.
//!
//! ```text
//! SharedAccessSignature sr={url-encoded resource}&sig={url-encoded base64(HMAC-SHA256(key, sr + "\n" + se))}&se={expiry}[&skn={policy}]
//! ```
//!
//! `sr` is the resource percent-encoded with every byte except `A-Z a-z 0-9 - . _ ~` escaped
//! (upper-case hex), exactly as Azure's device SDKs do (Python's `urllib.parse.quote(uri,
//! safe="")`); `se` is the expiry in Unix seconds; the signature is over `sr` *as it appears in the
//! token*, so tokens from SDKs that escape slightly differently (lower-case hex, fewer escapes)
//! still verify. A device's resource is `{host}/devices/{deviceId}` ([`device_resource`]).
//!
//! Generation is byte-for-byte compatible with the `azure-iot-device` Python SDK; the test vectors
//! in `tests/vectors/` are produced by it (`scripts/sas_vectors.py`).

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use iot_core::DeviceId;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::credentials::{KeySlot, SymmetricKey};
use crate::error::{Error, MalformedToken, Result, shorten};

/// Everything but RFC 3986's unreserved characters is escaped, as `quote(s, safe="")` does.
const SR_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

const PREFIX: &str = "SharedAccessSignature ";

/// The longest policy name accepted.
const MAX_POLICY_LEN: usize = 64;

/// The resource a device's tokens are scoped to: `{host}/devices/{deviceId}`.
pub fn device_resource(host: &str, id: &DeviceId) -> String {
    format!("{host}/devices/{id}")
}

/// The resource a module's tokens are scoped to: `{host}/devices/{deviceId}/modules/{moduleId}`.
pub fn module_resource(host: &str, device: &DeviceId, module: &iot_core::ModuleId) -> String {
    format!("{host}/devices/{device}/modules/{module}")
}

/// The current time in Unix seconds (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A generated SAS token. A bearer credential until it expires: `Debug` is redacted and the text is
/// zeroized on drop.
#[derive(Clone)]
pub struct SasToken {
    token: Zeroizing<String>,
    expiry: u64,
}

impl SasToken {
    /// The token text, e.g. for an MQTT password.
    pub fn as_str(&self) -> &str {
        &self.token
    }

    /// The expiry, Unix seconds.
    pub fn expiry(&self) -> u64 {
        self.expiry
    }
}

impl fmt::Debug for SasToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SasToken")
            .field("token", &"<redacted>")
            .field("expiry", &self.expiry)
            .finish()
    }
}

/// Creates a token for `resource` (unencoded, e.g. `myhub.azure-devices.net/devices/dev-1`) that
/// expires at `expiry` (Unix seconds), signed with `key`, optionally naming a shared access
/// `policy` (letters, digits, `.`, `_`, `-`; at most 64).
pub fn generate(
    resource: &str,
    key: &SymmetricKey,
    expiry: u64,
    policy: Option<&str>,
) -> Result<SasToken> {
    if resource.is_empty() {
        return Err(Error::invalid("a SAS resource must not be empty"));
    }
    if resource.len() > 1024 {
        return Err(Error::invalid("a SAS resource is at most 1024 bytes"));
    }
    if let Some(p) = policy
        && !valid_policy(p)
    {
        return Err(Error::invalid(
            "a policy name is 1 to 64 letters, digits, '.', '_' or '-'",
        ));
    }
    let sr = utf8_percent_encode(resource, SR_ENCODE).to_string();
    let expiry_text = expiry.to_string();
    let signature = sign(key, &sr, &expiry_text);
    let encoded_sig = utf8_percent_encode(&STANDARD.encode(signature), SR_ENCODE).to_string();
    let mut token = Zeroizing::new(String::with_capacity(
        PREFIX.len() + sr.len() + encoded_sig.len() + 64,
    ));
    token.push_str(PREFIX);
    token.push_str("sr=");
    token.push_str(&sr);
    token.push_str("&sig=");
    token.push_str(&encoded_sig);
    token.push_str("&se=");
    token.push_str(&expiry_text);
    if let Some(p) = policy {
        token.push_str("&skn=");
        token.push_str(p);
    }
    Ok(SasToken { token, expiry })
}

fn sign(key: &SymmetricKey, sr: &str, expiry: &str) -> [u8; 32] {
    mac(key, sr, expiry).finalize().into_bytes().into()
}

fn mac(key: &SymmetricKey, sr: &str, expiry: &str) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail; fall back to an empty key rather than
    // panic (the signature would then simply not match).
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.expose_bytes())
        .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()));
    mac.update(sr.as_bytes());
    mac.update(b"\n");
    mac.update(expiry.as_bytes());
    mac
}

fn valid_policy(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= MAX_POLICY_LEN
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A token split into its fields. Parsing checks the syntax only; [`SasVerifier::verify`] checks
/// scope, expiry and signature.
#[derive(Clone)]
pub struct ParsedToken<'a> {
    resource_raw: &'a str,
    resource: Cow<'a, str>,
    signature: [u8; 32],
    expiry_raw: &'a str,
    expiry: u64,
    policy: Option<&'a str>,
}

impl ParsedToken<'_> {
    /// The resource the token is scoped to, percent-decoded.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The expiry, Unix seconds.
    pub fn expiry(&self) -> u64 {
        self.expiry
    }

    /// The shared access policy named by `skn`, if any.
    pub fn policy(&self) -> Option<&str> {
        self.policy
    }
}

impl fmt::Debug for ParsedToken<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedToken")
            .field("resource", &self.resource)
            .field("signature", &"<redacted>")
            .field("expiry", &self.expiry)
            .field("policy", &self.policy)
            .finish()
    }
}

/// Parses `token` (at most `max_len` bytes) into its fields.
///
/// Fields may come in any order; each of `sr`, `sig`, `se` must appear exactly once and `skn` at
/// most once; no other field is allowed. Percent-escapes must be well formed (either hex case).
pub fn parse(token: &str, max_len: usize) -> Result<ParsedToken<'_>, MalformedToken> {
    if token.is_empty() {
        return Err(MalformedToken::Empty);
    }
    if token.len() > max_len {
        return Err(MalformedToken::TooLong {
            len: token.len(),
            max: max_len,
        });
    }
    let body = token
        .strip_prefix(PREFIX)
        .ok_or(MalformedToken::MissingPrefix)?;
    let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
    for field in body.split('&') {
        let (name, value) = field.split_once('=').ok_or(MalformedToken::BadField)?;
        let (slot, name): (&mut Option<&str>, &'static str) = match name {
            "sr" => (&mut sr, "sr"),
            "sig" => (&mut sig, "sig"),
            "se" => (&mut se, "se"),
            "skn" => (&mut skn, "skn"),
            other => return Err(MalformedToken::UnknownField(shorten(other, 32))),
        };
        if slot.is_some() {
            return Err(MalformedToken::DuplicateField(name));
        }
        if value.is_empty() {
            return Err(MalformedToken::BadField);
        }
        *slot = Some(value);
    }
    let resource_raw = sr.ok_or(MalformedToken::MissingField("sr"))?;
    let sig_raw = sig.ok_or(MalformedToken::MissingField("sig"))?;
    let expiry_raw = se.ok_or(MalformedToken::MissingField("se"))?;

    let resource = decode(resource_raw, "sr")?;
    let signature = decode_signature(sig_raw)?;
    let expiry = parse_expiry(expiry_raw)?;
    let policy = match skn {
        Some(p) if valid_policy(p) => Some(p),
        Some(_) => return Err(MalformedToken::BadPolicyName),
        None => None,
    };
    Ok(ParsedToken {
        resource_raw,
        resource,
        signature,
        expiry_raw,
        expiry,
        policy,
    })
}

/// Percent-decodes `raw`, refusing malformed escapes (which `percent_decode_str` would pass through
/// literally) and invalid UTF-8.
fn decode<'a>(raw: &'a str, field: &'static str) -> Result<Cow<'a, str>, MalformedToken> {
    let bytes = raw.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%' {
            let well_formed = bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
            if !well_formed {
                return Err(MalformedToken::BadEncoding(field));
            }
        }
    }
    percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| MalformedToken::BadEncoding(field))
}

fn decode_signature(raw: &str) -> Result<[u8; 32], MalformedToken> {
    let text = decode(raw, "sig")?;
    // base64 of 32 bytes is 44 characters; anything else cannot be a valid signature.
    if text.len() != 44 {
        return Err(MalformedToken::BadSignatureEncoding);
    }
    let mut out = [0u8; 32];
    // The default engine refuses non-canonical trailing bits, so no two texts decode alike.
    match STANDARD.decode_slice(text.as_bytes(), &mut out) {
        Ok(32) => Ok(out),
        _ => Err(MalformedToken::BadSignatureEncoding),
    }
}

fn parse_expiry(raw: &str) -> Result<u64, MalformedToken> {
    // `u64::from_str` would accept a leading '+'; only digits are allowed here.
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(MalformedToken::BadExpiry);
    }
    raw.parse::<u64>()
        .map_err(|_| MalformedToken::ExpiryOverflow)
}

/// What a successful verification established.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifiedToken {
    /// When the token expires, Unix seconds (sessions should end then).
    pub expiry: u64,
    /// Which key signed it.
    pub key: KeySlot,
}

/// Checks SAS tokens: syntax, scope, policy, expiry and signature, each failure its own error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SasVerifier {
    /// How far past its expiry a token is still accepted, for clocks that disagree. Default 60 s.
    pub clock_skew: Duration,
    /// The longest token accepted, in bytes. Default 4096 (device tokens are about 150 bytes).
    pub max_token_len: usize,
}

impl Default for SasVerifier {
    fn default() -> Self {
        SasVerifier {
            clock_skew: Duration::from_secs(60),
            max_token_len: 4096,
        }
    }
}

impl SasVerifier {
    /// Verifies `token` for `expected_resource` (unencoded) at `now` (Unix seconds) against the
    /// keys (primary first), accepting only `expected_policy` in `skn` (`None`: the token must not
    /// name a policy).
    ///
    /// Errors: [`Error::MalformedToken`], [`Error::WrongScope`], [`Error::UnknownPolicy`],
    /// [`Error::TokenExpired`], [`Error::BadSignature`]. Signatures are compared in constant time.
    pub fn verify(
        &self,
        token: &str,
        expected_resource: &str,
        primary: &SymmetricKey,
        secondary: Option<&SymmetricKey>,
        expected_policy: Option<&str>,
        now: u64,
    ) -> Result<VerifiedToken> {
        let parsed = parse(token, self.max_token_len)?;
        if parsed.resource != expected_resource {
            return Err(Error::WrongScope {
                expected: shorten(expected_resource, 256),
                actual: shorten(&parsed.resource, 256),
            });
        }
        if parsed.policy != expected_policy {
            return Err(Error::UnknownPolicy {
                presented: parsed.policy.map(|p| p.to_owned()),
                expected: expected_policy.map(|p| p.to_owned()),
            });
        }
        let skew = self.clock_skew.as_secs();
        if now > parsed.expiry.saturating_add(skew) {
            return Err(Error::TokenExpired {
                expiry: parsed.expiry,
                now,
                skew_secs: skew,
            });
        }
        // `verify_slice` compares in constant time. Which key matched is not secret, so the
        // secondary is only tried when the primary fails.
        let check = |key: &SymmetricKey| {
            mac(key, parsed.resource_raw, parsed.expiry_raw)
                .verify_slice(&parsed.signature)
                .is_ok()
        };
        if check(primary) {
            return Ok(VerifiedToken {
                expiry: parsed.expiry,
                key: KeySlot::Primary,
            });
        }
        if secondary.is_some_and(check) {
            return Ok(VerifiedToken {
                expiry: parsed.expiry,
                key: KeySlot::Secondary,
            });
        }
        Err(Error::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SymmetricKey {
        match SymmetricKey::from_bytes(&[7u8; 32]) {
            Ok(k) => k,
            Err(e) => panic!("{e}"),
        }
    }

    const RES: &str = "hub.example.net/devices/dev-1";

    fn token(expiry: u64, policy: Option<&str>) -> String {
        match generate(RES, &key(), expiry, policy) {
            Ok(t) => t.as_str().to_owned(),
            Err(e) => panic!("{e}"),
        }
    }

    fn verify(t: &str, now: u64) -> Result<VerifiedToken> {
        SasVerifier::default().verify(t, RES, &key(), None, None, now)
    }

    #[test]
    fn generates_the_documented_format() {
        let t = token(1_700_000_000, None);
        assert!(t.starts_with("SharedAccessSignature sr=hub.example.net%2Fdevices%2Fdev-1&sig="));
        assert!(t.ends_with("&se=1700000000"));
        assert!(token(5, Some("device")).ends_with("&se=5&skn=device"));
        assert!(generate(RES, &key(), 5, Some("a&b")).is_err());
        assert!(generate("", &key(), 5, None).is_err());
    }

    #[test]
    fn verifies_and_reports_each_failure() {
        let t = token(1_000, None);
        assert_eq!(
            verify(&t, 1_000).map(|v| v.key).ok(),
            Some(KeySlot::Primary)
        );
        assert!(verify(&t, 1_060).is_ok(), "within the clock skew");
        assert!(matches!(verify(&t, 1_061), Err(Error::TokenExpired { .. })));
        let other = SasVerifier::default().verify(
            &t,
            "hub.example.net/devices/dev-2",
            &key(),
            None,
            None,
            0,
        );
        assert!(matches!(other, Err(Error::WrongScope { .. })));
        let wrong = SymmetricKey::generate();
        let bad = SasVerifier::default().verify(&t, RES, &wrong, None, None, 0);
        assert!(matches!(bad, Err(Error::BadSignature)));
        let second = SasVerifier::default().verify(&t, RES, &wrong, Some(&key()), None, 0);
        assert_eq!(second.map(|v| v.key).ok(), Some(KeySlot::Secondary));
        let with_policy = token(1_000, Some("device"));
        assert!(matches!(
            verify(&with_policy, 0),
            Err(Error::UnknownPolicy { .. })
        ));
        let ok = SasVerifier::default().verify(&with_policy, RES, &key(), None, Some("device"), 0);
        assert!(ok.is_ok());
        let missing = SasVerifier::default().verify(&t, RES, &key(), None, Some("device"), 0);
        assert!(matches!(missing, Err(Error::UnknownPolicy { .. })));
    }

    #[test]
    fn accepts_lower_case_escapes_and_any_field_order() {
        // The Azure IoT C SDK escapes with lower-case hex; the signature covers `sr` as sent.
        let sr = "hub.example.net%2fdevices%2fdev-1";
        let sig = STANDARD.encode(sign(&key(), sr, "1000"));
        let sig = utf8_percent_encode(&sig, SR_ENCODE)
            .to_string()
            .to_lowercase_escapes();
        let t = format!("SharedAccessSignature se=1000&sig={sig}&sr={sr}");
        assert!(verify(&t, 0).is_ok(), "{:?}", verify(&t, 0));
    }

    trait LowerEscapes {
        fn to_lowercase_escapes(&self) -> String;
    }

    impl LowerEscapes for String {
        fn to_lowercase_escapes(&self) -> String {
            let mut out = String::new();
            let mut countdown = 0;
            for c in self.chars() {
                if c == '%' {
                    countdown = 2;
                    out.push(c);
                } else if countdown > 0 {
                    countdown -= 1;
                    out.push(c.to_ascii_lowercase());
                } else {
                    out.push(c);
                }
            }
            out
        }
    }

    #[test]
    fn bad_input_gets_typed_errors() {
        let good = token(1_000, None);
        let sig_part = good
            .split('&')
            .find(|f| f.starts_with("sig="))
            .unwrap_or_default()
            .to_owned();
        let cases: Vec<(String, MalformedToken)> = vec![
            (String::new(), MalformedToken::Empty),
            (
                "x".repeat(10 * 1024 * 1024),
                MalformedToken::TooLong {
                    len: 10 * 1024 * 1024,
                    max: 4096,
                },
            ),
            ("sr=a&sig=b&se=1".into(), MalformedToken::MissingPrefix),
            (
                "SharedAccessSignature sr=a&se=1".into(),
                MalformedToken::MissingField("sig"),
            ),
            (
                format!("SharedAccessSignature {sig_part}&se=1"),
                MalformedToken::MissingField("sr"),
            ),
            (
                format!("SharedAccessSignature sr=a&{sig_part}"),
                MalformedToken::MissingField("se"),
            ),
            (
                format!("SharedAccessSignature sr=a&sr=a&{sig_part}&se=1"),
                MalformedToken::DuplicateField("sr"),
            ),
            (
                format!("SharedAccessSignature sr=a&{sig_part}&se=1&se=1"),
                MalformedToken::DuplicateField("se"),
            ),
            (
                format!("SharedAccessSignature sr=a&{sig_part}&se=1&x=1"),
                MalformedToken::UnknownField("x".into()),
            ),
            (
                format!("SharedAccessSignature sr=a&{sig_part}&se"),
                MalformedToken::BadField,
            ),
            (
                format!("SharedAccessSignature sr=&{sig_part}&se=1"),
                MalformedToken::BadField,
            ),
            (
                "SharedAccessSignature sr=a&sig=not*base64&se=1".into(),
                MalformedToken::BadSignatureEncoding,
            ),
            (
                format!("SharedAccessSignature sr=a&sig={}&se=1", "A".repeat(44)),
                MalformedToken::BadSignatureEncoding,
            ),
            (
                format!("SharedAccessSignature sr=%zz&{sig_part}&se=1"),
                MalformedToken::BadEncoding("sr"),
            ),
            (
                format!("SharedAccessSignature sr=%ff&{sig_part}&se=1"),
                MalformedToken::BadEncoding("sr"),
            ),
            (
                format!("SharedAccessSignature sr=a&{sig_part}&se=+1"),
                MalformedToken::BadExpiry,
            ),
            (
                format!("SharedAccessSignature sr=a&{sig_part}&se=-1"),
                MalformedToken::BadExpiry,
            ),
            (
                format!("SharedAccessSignature sr=a&{sig_part}&se=99999999999999999999999"),
                MalformedToken::ExpiryOverflow,
            ),
            (
                format!("SharedAccessSignature sr=a&{sig_part}&se=1&skn=a%20b"),
                MalformedToken::BadPolicyName,
            ),
        ];
        for (input, expected) in cases {
            match verify(&input, 0) {
                Err(Error::MalformedToken { reason }) => {
                    assert_eq!(reason, expected, "{}", shorten(&input, 80))
                }
                other => panic!("{} gave {other:?}", shorten(&input, 80)),
            }
        }
        // A huge token within a raised limit is still refused cleanly.
        let verifier = SasVerifier {
            max_token_len: usize::MAX,
            ..SasVerifier::default()
        };
        let huge = format!("{good}&{}", "x".repeat(10 * 1024 * 1024));
        assert!(matches!(
            verifier.verify(&huge, RES, &key(), None, None, 0),
            Err(Error::MalformedToken { .. })
        ));
    }

    #[test]
    fn errors_never_contain_the_signature() {
        let good = token(1_000, None);
        let sig = good
            .split("sig=")
            .nth(1)
            .and_then(|s| s.split('&').next())
            .unwrap_or_default();
        let errors = [
            verify(&good, 5_000),
            SasVerifier::default().verify(&good, "x/devices/y", &key(), None, None, 0),
            SasVerifier::default().verify(&good, RES, &SymmetricKey::generate(), None, None, 0),
        ];
        for e in errors {
            let e = e.err().map(|e| format!("{e} {e:?}")).unwrap_or_default();
            assert!(!e.is_empty() && !e.contains(sig), "{e}");
        }
        let shown = format!("{:?}", generate(RES, &key(), 1, None));
        assert!(!shown.contains(sig) && shown.contains("<redacted>"));
    }
}
