//! Client certificates over real TLS: a device registered by thumbprint connects with a
//! certificate inside its validity dates, and the same device's expired certificate fails the
//! TLS handshake (alert `certificate_expired`) although its thumbprint is registered.
//!
//! The client is tokio-rustls with a raw MQTT CONNECT, so no external tools are needed.
#![cfg(feature = "mqtt")]

mod mqtt_support;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use iot_gateway::mqtt::SelfSigned;
use iot_identity::{Credentials, IdentityStore, NewIdentity, Thumbprint};
use mqtt_support::raw::{packet, string};
use mqtt_support::{Fixture, HOST, PATIENCE};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{AlertDescription, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const DEVICE: &str = "x509-dates";

/// A UTC date as (year, month, day).
type Date = (i32, u8, u8);

/// A device's self-signed certificate and its key.
struct DeviceCert {
    der: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl DeviceCert {
    /// `dates` overrides rcgen's default validity (1975 to 4096) with (notBefore, notAfter).
    fn new(dates: Option<(Date, Date)>) -> DeviceCert {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec![DEVICE.to_string()]).expect("params");
        if let Some((from, until)) = dates {
            params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
            params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
        }
        let cert = params.self_signed(&key).expect("self-signed");
        DeviceCert {
            der: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        }
    }

    fn thumbprint(&self) -> Thumbprint {
        Thumbprint::of_der_certificate(&self.der)
    }
}

/// A TLS listener that asks for client certificates, next to the fixture's TCP one; returns its
/// address and the CA that signed its server certificate.
async fn tls_listener(fx: &Fixture) -> (SocketAddr, CertificateDer<'static>) {
    let pair = SelfSigned::generate(HOST).expect("certificates");
    let addr = fx
        .server
        .listen_tls(
            "127.0.0.1:0".parse().expect("addr"),
            pair.tls_config(true).expect("tls"),
        )
        .await
        .expect("listen tls");
    let ca = CertificateDer::from_pem_slice(pair.ca_pem.as_bytes()).expect("CA PEM");
    (addr, ca)
}

/// The TLS handshake with `cert` as the client certificate, over `version` (TLS 1.2 or 1.3).
async fn handshake(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    cert: &DeviceCert,
    version: &'static rustls::SupportedProtocolVersion,
) -> io::Result<TlsStream<TcpStream>> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).expect("CA");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .expect("protocol version")
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![cert.der.clone()],
        PrivateKeyDer::from(cert.key.clone_key()),
    )
    .expect("client certificate");
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(HOST).expect("name"), tcp)
        .await
}

/// CONNECT with the IoT Hub user name and no password (the certificate authenticates), then
/// the CONNACK's return code.
async fn connect_code(tls: &mut TlsStream<TcpStream>) -> u8 {
    let mut body = Vec::new();
    string(b"MQTT", &mut body);
    body.push(4);
    body.push(0b1000_0010); // user name, clean session
    body.extend_from_slice(&30u16.to_be_bytes());
    string(DEVICE.as_bytes(), &mut body);
    string(
        format!("{HOST}/{DEVICE}/?api-version=2021-04-12").as_bytes(),
        &mut body,
    );
    tls.write_all(&packet(0x10, &body)).await.expect("CONNECT");
    let mut connack = [0u8; 4];
    tokio::time::timeout(PATIENCE, tls.read_exact(&mut connack))
        .await
        .expect("CONNACK in time")
        .expect("CONNACK");
    assert_eq!(connack[..3], [0x20, 0x02, 0x00], "CONNACK header");
    connack[3]
}

/// The alert that rustls reports in `error`, if it is one the server sent.
fn received_alert(error: &io::Error) -> Option<AlertDescription> {
    match error.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}

/// Registers the device with both certificates' thumbprints, so that only the dates can tell
/// them apart.
async fn register(fx: &Fixture, primary: &DeviceCert, secondary: &DeviceCert) {
    fx.identity
        .create(NewIdentity::new(
            DEVICE.parse().expect("id"),
            Credentials::X509 {
                primary: primary.thumbprint(),
                secondary: secondary.thumbprint(),
            },
        ))
        .await
        .expect("identity");
}

#[tokio::test]
async fn a_certificate_within_its_dates_connects() {
    let fx = Fixture::start().await;
    let (addr, ca) = tls_listener(&fx).await;
    let valid = DeviceCert::new(None);
    let expired = DeviceCert::new(Some(((2000, 1, 1), (2001, 1, 1))));
    register(&fx, &valid, &expired).await;

    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let mut tls = handshake(addr, &ca, &valid, version)
            .await
            .expect("handshake");
        assert_eq!(connect_code(&mut tls).await, 0, "{version:?}: accepted");
    }

    // The thumbprint still decides who the device is: a valid certificate that is not
    // registered passes TLS and is refused at CONNECT (5, not authorized).
    let stranger = DeviceCert::new(None);
    let mut tls = handshake(addr, &ca, &stranger, &rustls::version::TLS13)
        .await
        .expect("handshake");
    assert_eq!(connect_code(&mut tls).await, 5);
}

#[tokio::test]
async fn an_expired_certificate_fails_the_handshake() {
    let fx = Fixture::start().await;
    let (addr, ca) = tls_listener(&fx).await;
    let valid = DeviceCert::new(None);
    let expired = DeviceCert::new(Some(((2000, 1, 1), (2001, 1, 1))));
    register(&fx, &valid, &expired).await;

    // TLS 1.2: the server checks the certificate before its Finished, so the client's
    // handshake itself fails.
    let error = handshake(addr, &ca, &expired, &rustls::version::TLS12)
        .await
        .expect_err("TLS 1.2 handshake with an expired certificate");
    assert_eq!(
        received_alert(&error),
        Some(AlertDescription::CertificateExpired),
        "{error}"
    );

    // TLS 1.3: the client is done after its own Finished; the server's alert is the first thing
    // it reads, before any MQTT (a server that accepted would wait for CONNECT instead, and end
    // the connection only at its connect timeout, without that alert).
    let read = async {
        let mut tls = handshake(addr, &ca, &expired, &rustls::version::TLS13).await?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map(|_| byte)
    };
    let error = tokio::time::timeout(PATIENCE, read)
        .await
        .expect("the server answered in time")
        .expect_err("TLS 1.3 connection with an expired certificate");
    assert_eq!(
        received_alert(&error),
        Some(AlertDescription::CertificateExpired),
        "{error}"
    );

    // The refusal left the device and the listener as they were.
    let mut tls = handshake(addr, &ca, &valid, &rustls::version::TLS13)
        .await
        .expect("handshake");
    assert_eq!(connect_code(&mut tls).await, 0);
}
