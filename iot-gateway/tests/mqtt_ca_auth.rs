//! X.509 CA authentication over real TLS: a device registered CA-signed connects with a chain
//! (leaf + intermediate, rcgen-made) that leads to a CA the hub holds verified, with its id as
//! the leaf's common name; chains that do not (no intermediate, an unverified CA, another CN)
//! are refused at CONNECT; thumbprint devices keep working beside them; disabling the device
//! cuts its session and refuses it, and deleting the CA refuses its devices' next connection.
//!
//! The client is tokio-rustls with a raw MQTT CONNECT, so no external tools are needed.
#![cfg(feature = "mqtt")]

mod mqtt_support;

use std::net::SocketAddr;
use std::sync::Arc;

use iot_gateway::mqtt::{MqttConfig, MqttServer, SelfSigned};
use iot_gateway::{Gateway, Hub};
use iot_identity::ca::{CaCondition, CertificateAuthorities, MemoryCaStore};
use iot_identity::{
    Credentials, DeviceStatus, IdentityStore, MemoryIdentityStore, NewIdentity, Thumbprint,
};
use mqtt_support::raw::{packet, string};
use mqtt_support::{HOST, PATIENCE};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

type Ca = CertifiedIssuer<'static, KeyPair>;

fn ca(cn: &str, by: Option<&Ca>) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let key = KeyPair::generate().expect("key");
    match by {
        None => CertifiedIssuer::self_signed(p, key),
        Some(issuer) => CertifiedIssuer::signed_by(p, key, issuer),
    }
    .expect("CA")
}

/// A device's certificate chain and key.
struct DeviceChain {
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

fn leaf(cn: &str, by: &Ca, intermediates: &[&Ca]) -> DeviceChain {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = p.signed_by(&key, by).expect("leaf");
    let mut chain = vec![cert.der().clone()];
    chain.extend(intermediates.iter().map(|c| c.der().clone()));
    DeviceChain {
        chain,
        key: PrivatePkcs8KeyDer::from(key.serialize_der()),
    }
}

async fn verified(cas: &CertificateAuthorities, name: &str, root: &Ca) {
    cas.upload(name, &root.pem(), CaCondition::Absent)
        .await
        .expect("upload");
    let code = cas
        .generate_verification_code(name, CaCondition::Any)
        .await
        .expect("code")
        .certificate
        .verification_code
        .expect("code");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(DnType::CommonName, code);
    let proof = p
        .signed_by(&KeyPair::generate().expect("key"), root)
        .expect("proof");
    cas.verify(name, &proof.pem(), CaCondition::Any)
        .await
        .expect("verify");
}

struct Setup {
    hub: Hub,
    identity: Arc<MemoryIdentityStore>,
    cas: CertificateAuthorities,
    server: MqttServer,
    addr: SocketAddr,
    server_ca: CertificateDer<'static>,
}

async fn setup() -> Setup {
    let identity = Arc::new(MemoryIdentityStore::new());
    let cas = CertificateAuthorities::new(Arc::new(MemoryCaStore::new()));
    let hub = Hub::builder(identity.clone(), HOST)
        .certificate_authorities(cas.clone())
        .build()
        .await
        .expect("hub");
    let gateway: Arc<dyn Gateway> = Arc::new(hub.clone());
    let server = MqttServer::new(gateway, MqttConfig::default()).expect("server");
    let pair = SelfSigned::generate(HOST).expect("certificates");
    let addr = server
        .listen_tls(
            "127.0.0.1:0".parse().expect("addr"),
            pair.tls_config(true).expect("tls"),
        )
        .await
        .expect("listen tls");
    let server_ca = CertificateDer::from_pem_slice(pair.ca_pem.as_bytes()).expect("CA PEM");
    Setup {
        hub,
        identity,
        cas,
        server,
        addr,
        server_ca,
    }
}

async fn handshake(s: &Setup, device: &DeviceChain) -> TlsStream<TcpStream> {
    let mut roots = RootCertStore::empty();
    roots.add(s.server_ca.clone()).expect("CA");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(
        device.chain.clone(),
        PrivateKeyDer::from(device.key.clone_key()),
    )
    .expect("client certificate");
    let tcp = TcpStream::connect(s.addr).await.expect("connect");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(HOST).expect("name"), tcp)
        .await
        .expect("handshake")
}

/// CONNECT as `id` with no password; the CONNACK's return code.
async fn connect_code(tls: &mut TlsStream<TcpStream>, id: &str) -> u8 {
    let mut body = Vec::new();
    string(b"MQTT", &mut body);
    body.push(4);
    body.push(0b1000_0010);
    body.extend_from_slice(&30u16.to_be_bytes());
    string(id.as_bytes(), &mut body);
    string(
        format!("{HOST}/{id}/?api-version=2021-04-12").as_bytes(),
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

async fn connects(s: &Setup, device: &DeviceChain, id: &str) -> u8 {
    let mut tls = handshake(s, device).await;
    connect_code(&mut tls, id).await
}

async fn register(s: &Setup, id: &str, credentials: Credentials) {
    s.identity
        .create(NewIdentity::new(id.parse().expect("id"), credentials))
        .await
        .expect("identity");
}

#[tokio::test]
async fn a_chain_to_a_verified_ca_connects_and_others_are_refused() {
    let s = setup().await;
    let root = ca("fleet root", None);
    let inter = ca("fleet intermediate", Some(&root));
    let pending = ca("pending root", None);
    verified(&s.cas, "fleet", &root).await;
    s.cas
        .upload("pending", &pending.pem(), CaCondition::Absent)
        .await
        .expect("upload");
    register(&s, "ca-dev", Credentials::CertificateAuthority).await;

    let good = leaf("ca-dev", &inter, &[&inter]);
    assert_eq!(
        connects(&s, &good, "ca-dev").await,
        0,
        "leaf + intermediate"
    );
    let mut without = leaf("ca-dev", &inter, &[]);
    without.chain.truncate(1);
    assert_eq!(connects(&s, &without, "ca-dev").await, 5, "no intermediate");
    let unverified = leaf("ca-dev", &pending, &[]);
    assert_eq!(
        connects(&s, &unverified, "ca-dev").await,
        5,
        "CA not verified"
    );
    let other_cn = leaf("someone-else", &inter, &[&inter]);
    assert_eq!(
        connects(&s, &other_cn, "ca-dev").await,
        5,
        "CN is not the device id"
    );

    // Thumbprint authentication keeps working on the same listener.
    let self_signed = ca("thumb", None);
    let thumb = leaf("thumb-dev", &self_signed, &[]);
    let t = Thumbprint::of_der_certificate(&thumb.chain[0]);
    register(
        &s,
        "thumb-dev",
        Credentials::X509 {
            primary: t,
            secondary: t,
        },
    )
    .await;
    assert_eq!(connects(&s, &thumb, "thumb-dev").await, 0, "by thumbprint");
    // A CA-signed leaf is not a thumbprint device's certificate.
    let wrong = leaf("thumb-dev", &inter, &[&inter]);
    assert_eq!(connects(&s, &wrong, "thumb-dev").await, 5);

    s.server.shutdown().await;
    s.hub.shutdown().await;
}

#[tokio::test]
async fn disabling_the_device_or_deleting_the_ca_revokes_it() {
    let s = setup().await;
    let root = ca("fleet root", None);
    verified(&s.cas, "fleet", &root).await;
    register(&s, "ca-dev", Credentials::CertificateAuthority).await;
    let device = leaf("ca-dev", &root, &[]);

    // Disabling cuts the open session and refuses the next one.
    let mut session = handshake(&s, &device).await;
    assert_eq!(connect_code(&mut session, "ca-dev").await, 0);
    let id = "ca-dev".parse().expect("id");
    s.identity
        .set_status(&id, DeviceStatus::disabled("stolen"), None)
        .await
        .expect("disable");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, session.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the session of a disabled device is cut");
    assert_eq!(connects(&s, &device, "ca-dev").await, 5, "disabled");
    s.identity
        .set_status(&id, DeviceStatus::Enabled, None)
        .await
        .expect("enable");
    assert_eq!(connects(&s, &device, "ca-dev").await, 0, "enabled again");

    // Deleting the CA refuses every device it issued from the next connection on.
    s.cas
        .delete("fleet", CaCondition::Any)
        .await
        .expect("delete");
    assert_eq!(connects(&s, &device, "ca-dev").await, 5, "CA deleted");
    // Uploading it again is not enough: it must be proved again.
    s.cas
        .upload("fleet", &root.pem(), CaCondition::Absent)
        .await
        .expect("upload");
    assert_eq!(
        connects(&s, &device, "ca-dev").await,
        5,
        "CA not verified again"
    );

    s.server.shutdown().await;
    s.hub.shutdown().await;
}
