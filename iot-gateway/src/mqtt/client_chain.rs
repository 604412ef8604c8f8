//! The certificate chain a device presented in the TLS handshake, kept for CONNECT.
//!
//! The TLS verifier (`tls.rs`) only checks the leaf's dates and that the device holds its key;
//! who the device is gets decided at CONNECT, against the identity store: by the leaf's
//! thumbprint for self-signed devices, or by validating the whole chain (leaf and the
//! intermediates it sent) against the hub's verified CAs for CA-signed devices
//! (`iot_identity::ca`). DPS registrations use it the same way against enrollments.

use std::sync::Arc;

use rustls_pki_types::CertificateDer;

/// The client's certificates, leaf first, as the handshake delivered them.
#[derive(Clone, Debug)]
pub(crate) struct ClientChain(Arc<[CertificateDer<'static>]>);

impl ClientChain {
    /// The chain of a TLS connection, if the client presented a certificate.
    pub(crate) fn of<S>(stream: &tokio_rustls::server::TlsStream<S>) -> Option<Self> {
        let chain = stream.get_ref().1.peer_certificates()?;
        if chain.is_empty() {
            return None;
        }
        Some(ClientChain(
            chain.iter().map(|c| c.clone().into_owned()).collect(),
        ))
    }

    /// Leaf first, then the intermediates.
    pub(crate) fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.0
    }
}
