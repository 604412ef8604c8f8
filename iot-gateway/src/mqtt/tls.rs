//! TLS for the endpoint (MQTT on 8883): certificates from PEM files, optional client
//! certificates that authenticate devices by X.509 thumbprint, and a self-signed CA for
//! development.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use iot_identity::Thumbprint;
use rustls::CertificateError;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::error::Error;

/// The TLS side of an MQTT listener: the server's certificate chain and key, and whether
/// devices may present client certificates.
///
/// A client certificate is not checked against a CA: as with IoT Hub's self-signed X.509
/// devices, the TLS handshake proves the device holds the certificate's key, and the gateway
/// then looks the certificate's SHA-256 thumbprint up in the identity store
/// ([`Presented::Thumbprint`](iot_identity::Presented::Thumbprint)). Its validity dates are
/// checked, though: a certificate that is not X.509, or whose `notBefore`/`notAfter` does not
/// include the time of the handshake, fails the handshake (TLS alert `bad_certificate` or
/// `certificate_expired`). A device that sends a password authenticates with it instead.
#[derive(Clone)]
pub struct TlsConfig {
    server: Arc<rustls::ServerConfig>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The private key stays out of Debug output.
        f.debug_struct("TlsConfig").finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Loads a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or
    /// SEC1). With `client_certificates`, devices may authenticate with a certificate.
    pub fn from_pem_files(
        cert_chain: &Path,
        private_key: &Path,
        client_certificates: bool,
    ) -> Result<Self, Error> {
        let chain_pem = fs::read(cert_chain)
            .map_err(|e| config_error(format!("reading {}: {e}", cert_chain.display())))?;
        let key_pem = fs::read(private_key)
            .map_err(|e| config_error(format!("reading {}: {e}", private_key.display())))?;
        Self::from_pem(&chain_pem, &key_pem, client_certificates)
    }

    /// Like [`from_pem_files`](Self::from_pem_files), from PEM text in memory.
    pub fn from_pem(
        cert_chain_pem: &[u8],
        private_key_pem: &[u8],
        client_certificates: bool,
    ) -> Result<Self, Error> {
        let chain = CertificateDer::pem_slice_iter(cert_chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| config_error(format!("certificate chain: {e}")))?;
        if chain.is_empty() {
            return Err(config_error("no certificate in the certificate PEM".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(private_key_pem)
            .map_err(|e| config_error(format!("private key: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error(e.to_string()))?;
        let builder = if client_certificates {
            builder.with_client_cert_verifier(Arc::new(ThumbprintClientCerts {
                algorithms: provider.signature_verification_algorithms,
            }))
        } else {
            builder.with_no_client_auth()
        };
        let server = builder
            .with_single_cert(chain, key)
            .map_err(|e| config_error(format!("certificate and key: {e}")))?;
        Ok(TlsConfig {
            server: Arc::new(server),
        })
    }

    /// Uses a rustls configuration built elsewhere (its own client verifier, resumption, ...).
    pub fn from_rustls(server: Arc<rustls::ServerConfig>) -> Self {
        TlsConfig { server }
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server.clone())
    }
}

fn config_error(reason: String) -> Error {
    Error::Config(format!("TLS: {reason}"))
}

/// Accepts any X.509 client certificate that is within its validity dates and whose key signed
/// the handshake; identity is decided later by thumbprint. Offered, never required, so that
/// password devices are unaffected.
#[derive(Debug)]
struct ThumbprintClientCerts {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for ThumbprintClientCerts {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // No chain to a CA (the thumbprint is the identity), so intermediates play no part; the
        // dates are the only thing a certificate says about itself that the gateway enforces.
        check_validity(end_entity, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Refuses `cert` unless it parses as one X.509 certificate whose validity period (inclusive at
/// both ends, as RFC 5280 reads it) contains `now`.
fn check_validity(cert: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
    // Thumbprints are public (they are what the identity store holds), so they may be logged;
    // the operator needs one to tell which device's certificate was refused.
    let thumbprint = Thumbprint::of_der_certificate(cert);
    let parsed = match X509Certificate::from_der(cert.as_ref()) {
        Ok(([], parsed)) => parsed,
        Ok((rest, _)) => {
            tracing::debug!(
                %thumbprint,
                trailing_bytes = rest.len(),
                "client certificate refused: bytes after the certificate"
            );
            return Err(CertificateError::BadEncoding.into());
        }
        Err(e) => {
            tracing::debug!(%thumbprint, error = %e, "client certificate refused: not X.509");
            return Err(CertificateError::BadEncoding.into());
        }
    };
    let validity = parsed.validity();
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    // Certificate times are signed (dates before 1970 are legal); `now` never is.
    let time = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    if time < not_before {
        tracing::info!(
            %thumbprint,
            not_before = %validity.not_before,
            "client certificate refused: not valid yet"
        );
        return Err(CertificateError::NotValidYetContext {
            time: now,
            not_before: unix_time(not_before),
        }
        .into());
    }
    if time > not_after {
        tracing::info!(
            %thumbprint,
            not_after = %validity.not_after,
            "client certificate refused: expired"
        );
        return Err(CertificateError::ExpiredContext {
            time: now,
            not_after: unix_time(not_after),
        }
        .into());
    }
    Ok(())
}

/// `secs` since the epoch as rustls's time; a date before 1970 only appears in an error report,
/// where the epoch itself says enough.
fn unix_time(secs: i64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

/// A throw-away certificate authority and a server certificate it signed, for development and
/// tests: clients trust `ca_pem` and connect to the host the server certificate names.
pub struct SelfSigned {
    /// The CA certificate (give this to clients as their trust root).
    pub ca_pem: String,
    /// The server certificate, signed by the CA.
    pub cert_pem: String,
    /// The server certificate's private key (PKCS#8).
    pub key_pem: String,
}

impl fmt::Debug for SelfSigned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SelfSigned")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl SelfSigned {
    /// A CA and a server certificate for `host` (also valid for `localhost` and 127.0.0.1).
    pub fn generate(host: &str) -> Result<Self, Error> {
        let fail = |e: rcgen::Error| config_error(format!("generating certificates: {e}"));
        let ca_key = rcgen::KeyPair::generate().map_err(fail)?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "iot-sdk development CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(fail)?;

        let mut names = vec![host.to_string()];
        for extra in ["localhost", "127.0.0.1"] {
            if !names.iter().any(|n| n == extra) {
                names.push(extra.to_string());
            }
        }
        let key = rcgen::KeyPair::generate().map_err(fail)?;
        let mut params = rcgen::CertificateParams::new(names).map_err(fail)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, host);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &ca).map_err(fail)?;
        Ok(SelfSigned {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes `ca.pem`, `server.pem` and `server-key.pem` (mode 0600 where supported) into
    /// `dir`; returns their paths in that order.
    pub fn write_to(&self, dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf), Error> {
        fs::create_dir_all(dir).map_err(Error::Io)?;
        let ca = dir.join("ca.pem");
        let cert = dir.join("server.pem");
        let key = dir.join("server-key.pem");
        fs::write(&ca, &self.ca_pem).map_err(Error::Io)?;
        fs::write(&cert, &self.cert_pem).map_err(Error::Io)?;
        write_private(&key, self.key_pem.as_bytes())?;
        Ok((ca, cert, key))
    }

    /// The server side of this pair as a [`TlsConfig`].
    pub fn tls_config(&self, client_certificates: bool) -> Result<TlsConfig, Error> {
        TlsConfig::from_pem(
            self.cert_pem.as_bytes(),
            self.key_pem.as_bytes(),
            client_certificates,
        )
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    fs::write(path, bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_pair_loads() {
        let pair = SelfSigned::generate("gateway.test").expect("generate");
        assert!(pair.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        pair.tls_config(false).expect("server config");
        pair.tls_config(true)
            .expect("server config with client certs");
        assert!(!format!("{pair:?}").contains("PRIVATE KEY"));
    }

    /// A self-signed client certificate valid from `not_before` through `not_after` (UTC dates).
    fn client_cert(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["device-1".to_string()]).expect("params");
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        params.self_signed(&key).expect("self-signed").der().clone()
    }

    /// Midnight UTC of a date, plus `offset` seconds (which may be negative).
    fn at(date: (i32, u8, u8), offset: i64) -> UnixTime {
        let secs = rcgen::date_time_ymd(date.0, date.1, date.2).unix_timestamp() + offset;
        UnixTime::since_unix_epoch(Duration::from_secs(
            u64::try_from(secs).expect("after 1970"),
        ))
    }

    fn verify(cert: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
        let verifier = ThumbprintClientCerts {
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        };
        verifier.verify_client_cert(cert, &[], now).map(|_| ())
    }

    const FROM: (i32, u8, u8) = (2020, 1, 1);
    const UNTIL: (i32, u8, u8) = (2021, 1, 1);

    #[test]
    fn verifier_accepts_a_certificate_within_its_dates_inclusive() {
        let cert = client_cert(FROM, UNTIL);
        verify(&cert, at((2020, 6, 1), 0)).expect("mid-period");
        verify(&cert, at(FROM, 0)).expect("first second");
        verify(&cert, at(UNTIL, 0)).expect("last second");
    }

    #[test]
    fn verifier_refuses_an_expired_certificate() {
        let cert = client_cert(FROM, UNTIL);
        let now = at(UNTIL, 1);
        assert_eq!(
            verify(&cert, now),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ExpiredContext {
                    time: now,
                    not_after: at(UNTIL, 0),
                }
            ))
        );
        assert!(verify(&cert, at((2030, 1, 1), 0)).is_err());
    }

    #[test]
    fn verifier_refuses_a_certificate_not_valid_yet() {
        let cert = client_cert(FROM, UNTIL);
        let now = at(FROM, -1);
        assert_eq!(
            verify(&cert, now),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidYetContext {
                    time: now,
                    not_before: at(FROM, 0),
                }
            ))
        );
    }

    #[test]
    fn verifier_refuses_what_is_not_one_x509_certificate() {
        let now = at((2020, 6, 1), 0);
        let cert = client_cert(FROM, UNTIL);
        let mut trailing = cert.to_vec();
        trailing.push(0);
        let truncated = &cert.as_ref()[..cert.as_ref().len() - 1];
        for bytes in [
            &b"not a certificate"[..],
            &[][..],
            // A DER SEQUENCE that is not a certificate.
            &[0x30, 0x03, 0x02, 0x01, 0x05][..],
            &trailing[..],
            truncated,
        ] {
            assert_eq!(
                verify(&CertificateDer::from(bytes), now),
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::BadEncoding
                )),
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn bad_pem_is_a_config_error() {
        assert!(matches!(
            TlsConfig::from_pem(b"nope", b"nope", false),
            Err(Error::Config(_))
        ));
    }
}
