//! `Authenticator`: checks what a connecting device presents against an [`IdentityStore`].

use std::fmt;
use std::sync::Arc;

use iot_core::DeviceId;
use tracing::{debug, instrument};
use zeroize::Zeroizing;

use rustls_pki_types::CertificateDer;

use crate::ca::{CertificateAuthorities, ChainValidation};
use crate::credentials::{
    Credentials, KeySlot, MAX_PASSPHRASE_LEN, PassphraseHash, SymmetricKey, Thumbprint,
};
use crate::error::{Error, Result};
use crate::identity::{DeviceIdentity, DeviceStatus, ETag, GenerationId};
use crate::sas::{self, SasVerifier};
use crate::store::IdentityStore;

/// What a device presents to prove its identity.
#[derive(Clone, Copy)]
pub enum Presented<'a> {
    /// A SAS token (for example an MQTT password) scoped to `{host}/devices/{id}`.
    SasToken(&'a str),
    /// One of its symmetric keys, base64.
    SymmetricKey(&'a str),
    /// The SHA-256 thumbprint of the client certificate it completed a TLS handshake with.
    Thumbprint(Thumbprint),
    /// Its passphrase.
    Passphrase(&'a str),
    /// The certificate chain (leaf first, then intermediates) it completed a TLS handshake
    /// with. A device with thumbprint credentials is checked by the leaf's thumbprint; one with
    /// [`Credentials::CertificateAuthority`] by validating the chain against the verified CAs
    /// ([`Authenticator::with_certificate_authorities`]).
    CertificateChain(&'a [CertificateDer<'a>]),
}

impl Presented<'_> {
    fn kind_name(&self) -> &'static str {
        match self {
            Presented::SasToken(_) => "SAS token",
            Presented::SymmetricKey(_) => "symmetric key",
            Presented::Thumbprint(_) => "thumbprint",
            Presented::Passphrase(_) => "passphrase",
            Presented::CertificateChain(_) => "certificate chain",
        }
    }
}

impl fmt::Debug for Presented<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Presented::Thumbprint(t) => write!(f, "Thumbprint({t})"),
            Presented::CertificateChain(chain) => match chain.first() {
                Some(leaf) => write!(
                    f,
                    "CertificateChain(leaf {}, {} more)",
                    Thumbprint::of_der_certificate(leaf),
                    chain.len() - 1
                ),
                None => f.write_str("CertificateChain(empty)"),
            },
            other => write!(f, "{}(<redacted>)", other.kind_name()),
        }
    }
}

/// A device that proved its identity.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Authenticated {
    /// The device.
    pub id: DeviceId,
    /// The generation authenticated; a session should end if a change names another one.
    pub generation_id: GenerationId,
    /// The record's etag at authentication time.
    pub etag: ETag,
    /// Which key or certificate matched (`None` for passphrases).
    pub key: Option<KeySlot>,
    /// When the credential stops being valid, Unix seconds (SAS tokens only).
    pub expires_at: Option<u64>,
    /// The shared access policy that signed the token, when a `DeviceConnect` policy (see
    /// [`DeviceConnectPolicies`]) rather than the device's own key authenticated it.
    pub policy: Option<String>,
}

/// Hub-level shared access policies that may sign tokens for any device: IoT Hub's
/// `DeviceConnect` right, which protocol gateways use. An [`Authenticator`] given one
/// ([`Authenticator::with_device_connect_policies`]) also accepts a SAS token for
/// `{host}/devices/{id}` that names such a policy in `skn` and is signed with one of its keys;
/// the device must still exist and be enabled. The policies are asked at every authentication,
/// so a rotated key or a removed policy stops working for the next connect.
pub trait DeviceConnectPolicies: Send + Sync + fmt::Debug {
    /// The keys of `policy` (primary, secondary) if it exists and holds the `DeviceConnect`
    /// right; `None` otherwise.
    fn device_connect_keys(&self, policy: &str) -> Option<(SymmetricKey, SymmetricKey)>;
}

/// What a checked credential established: the key slot that matched, the token's expiry and
/// the policy that signed it.
type Proof = (Option<KeySlot>, Option<u64>, Option<String>);

/// Authenticates devices against any [`IdentityStore`]; used by the gateway.
///
/// The credential is checked before the status, so that a caller without valid credentials cannot
/// learn whether a device is disabled. Each refusal is a typed error
/// ([`Error::is_auth_failure`]); a gateway should answer all of them alike.
///
/// Changes are visible at once: every call reads the store, and
/// [`IdentityStore::subscribe`] tells a gateway when to re-check or cut live sessions.
#[derive(Debug, Clone)]
pub struct Authenticator {
    store: Arc<dyn IdentityStore>,
    host: String,
    verifier: SasVerifier,
    policies: Option<Arc<dyn DeviceConnectPolicies>>,
    authorities: Option<CertificateAuthorities>,
}

impl Authenticator {
    /// Authenticates devices of the hub at `host` (SAS tokens must be scoped to
    /// `{host}/devices/{id}`), with the default [`SasVerifier`].
    pub fn new(store: Arc<dyn IdentityStore>, host: impl Into<String>) -> Self {
        Authenticator {
            store,
            host: host.into(),
            verifier: SasVerifier::default(),
            policies: None,
            authorities: None,
        }
    }

    /// Authenticates devices with [`Credentials::CertificateAuthority`] by their certificate
    /// chain against the verified CAs of `authorities` (read at every authentication, so a
    /// deleted CA stops working for the next connect). Without it such devices are refused.
    pub fn with_certificate_authorities(mut self, authorities: CertificateAuthorities) -> Self {
        self.authorities = Some(authorities);
        self
    }

    /// Also accepts SAS tokens signed by a `DeviceConnect` policy of `policies` (by default
    /// only the device's own keys sign its tokens).
    pub fn with_device_connect_policies(
        mut self,
        policies: Arc<dyn DeviceConnectPolicies>,
    ) -> Self {
        self.policies = Some(policies);
        self
    }

    /// Uses `verifier` (clock skew, token size limit) for SAS tokens.
    pub fn with_verifier(mut self, verifier: SasVerifier) -> Self {
        self.verifier = verifier;
        self
    }

    /// The store authenticated against.
    pub fn store(&self) -> &Arc<dyn IdentityStore> {
        &self.store
    }

    /// The hub's host name (the first part of every SAS resource).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The SAS verifier in use.
    pub fn verifier(&self) -> &SasVerifier {
        &self.verifier
    }

    /// Authenticates `id` with `presented` at the current time.
    pub async fn authenticate(
        &self,
        id: &DeviceId,
        presented: Presented<'_>,
    ) -> Result<Authenticated> {
        self.authenticate_at(id, presented, sas::unix_now()).await
    }

    /// Authenticates `id` with `presented` as of `now` (Unix seconds; for tests and replays).
    #[instrument(level = "debug", skip_all, fields(device = %id, credential = presented.kind_name()))]
    pub async fn authenticate_at(
        &self,
        id: &DeviceId,
        presented: Presented<'_>,
        now: u64,
    ) -> Result<Authenticated> {
        let record = self
            .store
            .get(id)
            .await?
            .ok_or_else(|| Error::UnknownDevice { id: id.clone() })?;
        let (key, expires_at, policy) = match self.check_credential(&record, presented, now).await {
            Ok(found) => found,
            Err(e) => {
                debug!(kind = e.kind(), "authentication refused");
                return Err(e);
            }
        };
        if let DeviceStatus::Disabled { reason } = &record.status {
            debug!("authentication refused: device disabled");
            return Err(Error::DeviceDisabled {
                id: id.clone(),
                reason: reason.clone(),
            });
        }
        Ok(Authenticated {
            id: record.id.clone(),
            generation_id: record.generation_id,
            etag: record.etag,
            key,
            expires_at,
            policy,
        })
    }

    /// Checks a token that names a shared access policy, when this authenticator accepts them:
    /// `None` for every other credential.
    fn check_policy_token(
        &self,
        id: &DeviceId,
        presented: Presented<'_>,
        now: u64,
    ) -> Option<Result<Proof>> {
        let (Presented::SasToken(token), Some(policies)) = (presented, &self.policies) else {
            return None;
        };
        // A token that does not parse is refused by the usual path, with the same error.
        let parsed = sas::parse(token, self.verifier.max_token_len).ok()?;
        let policy = parsed.policy()?;
        let Some((primary, secondary)) = policies.device_connect_keys(policy) else {
            // Unknown, or without DeviceConnect: alike to the caller.
            return Some(Err(Error::UnknownPolicy {
                presented: Some(policy.to_owned()),
                expected: None,
            }));
        };
        let resource = sas::device_resource(&self.host, id);
        Some(
            self.verifier
                .verify(
                    token,
                    &resource,
                    &primary,
                    Some(&secondary),
                    Some(policy),
                    now,
                )
                .map(|v| (Some(v.key), Some(v.expiry), Some(policy.to_owned()))),
        )
    }

    async fn check_credential(
        &self,
        record: &DeviceIdentity,
        presented: Presented<'_>,
        now: u64,
    ) -> Result<Proof> {
        if let Some(checked) = self.check_policy_token(&record.id, presented, now) {
            return checked;
        }
        let (key, expires_at) = self.check_own_credential(record, presented, now).await?;
        Ok((key, expires_at, None))
    }

    /// Checks a credential of the device's own (its keys, certificate or passphrase).
    async fn check_own_credential(
        &self,
        record: &DeviceIdentity,
        presented: Presented<'_>,
        now: u64,
    ) -> Result<(Option<KeySlot>, Option<u64>)> {
        let id = &record.id;
        let wrong_kind = || Error::WrongCredentialKind {
            id: id.clone(),
            presented: presented.kind_name(),
            stored: record.credentials.kind_name(),
        };
        match (&record.credentials, presented) {
            (Credentials::SymmetricKeys { primary, secondary }, Presented::SasToken(token)) => {
                let resource = sas::device_resource(&self.host, id);
                let verified =
                    self.verifier
                        .verify(token, &resource, primary, Some(secondary), None, now)?;
                Ok((Some(verified.key), Some(verified.expiry)))
            }
            (Credentials::SymmetricKeys { primary, secondary }, Presented::SymmetricKey(text)) => {
                let bad = || Error::BadCredential {
                    id: id.clone(),
                    kind: "symmetric key",
                };
                let presented = SymmetricKey::from_base64(text).map_err(|_| bad())?;
                let bytes = presented.expose_bytes();
                // Both comparisons always run, in constant time.
                let (p, s) = (primary.ct_eq_bytes(bytes), secondary.ct_eq_bytes(bytes));
                match (p, s) {
                    (true, _) => Ok((Some(KeySlot::Primary), None)),
                    (false, true) => Ok((Some(KeySlot::Secondary), None)),
                    _ => Err(bad()),
                }
            }
            (Credentials::X509 { primary, secondary }, Presented::CertificateChain(chain)) => {
                let leaf = chain.first().ok_or_else(|| Error::BadCredential {
                    id: id.clone(),
                    kind: "certificate chain",
                })?;
                let t = Thumbprint::of_der_certificate(leaf);
                thumbprint_slot(id, primary, secondary, t).map(|slot| (Some(slot), None))
            }
            (Credentials::CertificateAuthority, Presented::CertificateChain(chain)) => {
                self.check_ca_chain(id, chain, now).await
            }
            (Credentials::X509 { primary, secondary }, Presented::Thumbprint(t)) => {
                thumbprint_slot(id, primary, secondary, t).map(|slot| (Some(slot), None))
            }
            (Credentials::Passphrase(hash), Presented::Passphrase(text)) => {
                if verify_passphrase(hash.clone(), text).await {
                    Ok((None, None))
                } else {
                    Err(Error::BadCredential {
                        id: id.clone(),
                        kind: "passphrase",
                    })
                }
            }
            _ => Err(wrong_kind()),
        }
    }
}

/// Which of the two thumbprints `t` is.
fn thumbprint_slot(
    id: &DeviceId,
    primary: &Thumbprint,
    secondary: &Thumbprint,
    t: Thumbprint,
) -> Result<KeySlot> {
    // Thumbprints are public; plain comparison is fine.
    if *primary == t {
        Ok(KeySlot::Primary)
    } else if *secondary == t {
        Ok(KeySlot::Secondary)
    } else {
        Err(Error::BadCredential {
            id: id.clone(),
            kind: "thumbprint",
        })
    }
}

impl Authenticator {
    /// A CA-signed device: its chain must lead to a verified CA and name it as common name.
    async fn check_ca_chain(
        &self,
        id: &DeviceId,
        chain: &[CertificateDer<'_>],
        now: u64,
    ) -> Result<(Option<KeySlot>, Option<u64>)> {
        let refused = || Error::BadCredential {
            id: id.clone(),
            kind: "certificate chain",
        };
        let Some(authorities) = &self.authorities else {
            debug!("certificate chain refused: no certificate authorities configured");
            return Err(refused());
        };
        match authorities.validate(chain, id.as_str(), now).await {
            Ok(_) => Ok((Some(KeySlot::Primary), None)),
            Err(ChainValidation::Refused(reason)) => {
                // Certificates are public; the reason helps the operator and reveals nothing.
                debug!(%reason, "certificate chain refused");
                Err(refused())
            }
            Err(ChainValidation::Store(e)) => {
                tracing::warn!(error = %e, "the CA store could not be read");
                Err(Error::Backend {
                    backend: "CA store".into(),
                    source: Box::new(e),
                    retryable: true,
                })
            }
        }
    }
}

/// argon2 takes tens of milliseconds of CPU: run it on tokio's blocking pool when there is one, so
/// it does not stall other connections.
pub(crate) async fn verify_passphrase(hash: PassphraseHash, passphrase: &str) -> bool {
    // Refuse over-long input before copying it anywhere.
    if passphrase.is_empty() || passphrase.len() > MAX_PASSPHRASE_LEN {
        return false;
    }
    let passphrase = Zeroizing::new(passphrase.to_owned());
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle
            .spawn_blocking(move || hash.verify(&passphrase))
            .await
            .unwrap_or(false),
        Err(_) => hash.verify(&passphrase),
    }
}
