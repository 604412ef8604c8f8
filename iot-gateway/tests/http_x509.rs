//! X.509 devices on the HTTPS device API: over a real TLS listener that asks for (never
//! requires) a client certificate, a request without an `Authorization` header is authenticated
//! by the chain of its connection — a thumbprint device by its leaf, a CA-signed device by a
//! chain (leaf + intermediate, rcgen-made) to a CA the hub holds verified with its id as the
//! leaf's common name. Telemetry lands stamped as X.509 and C2D messages are received and
//! completed across requests. Chains for another device, to an unverified CA, with another CN
//! or an expired leaf are refused; disabling the device or deleting its CA refuses the next
//! request; SAS devices and the service API work on the same listener without a certificate.
#![cfg(feature = "http")]

mod http_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_support::{API, HOST, Reply, Stack};
use iot_core::{DeviceId, Log, ReadLimits, Record, partition_for_key};
use iot_gateway::http::{HttpConfig, HttpServer};
use iot_gateway::message::header;
use iot_gateway::mqtt::SelfSigned;
use iot_gateway::{C2dMessage, Gateway};
use iot_identity::ca::{CaCondition, CertificateAuthorities};
use iot_identity::{Credentials, DeviceStatus, NewIdentity, SymmetricKey, Thumbprint, sas};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// A device's certificate chain (leaf first) and key.
struct DeviceChain {
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

fn leaf_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p
}

fn leaf_with(p: CertificateParams, by: &Ca, intermediates: &[&Ca]) -> DeviceChain {
    let key = KeyPair::generate().expect("key");
    let cert = p.signed_by(&key, by).expect("leaf");
    let mut chain = vec![cert.der().clone()];
    chain.extend(intermediates.iter().map(|c| c.der().clone()));
    DeviceChain {
        chain,
        key: PrivatePkcs8KeyDer::from(key.serialize_der()),
    }
}

fn leaf(cn: &str, by: &Ca, intermediates: &[&Ca]) -> DeviceChain {
    leaf_with(leaf_params(cn), by, intermediates)
}

fn self_signed(cn: &str) -> DeviceChain {
    let key = KeyPair::generate().expect("key");
    let cert = leaf_params(cn).self_signed(&key).expect("self-signed");
    DeviceChain {
        chain: vec![cert.der().clone()],
        key: PrivatePkcs8KeyDer::from(key.serialize_der()),
    }
}

/// Uploads `root` as `name` and proves possession of its key, as an operator would.
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

/// The memory stack of the other HTTP tests, served over HTTPS with client certificates asked.
struct Tls {
    stack: Stack,
    server: HttpServer,
    addr: SocketAddr,
    server_ca: CertificateDer<'static>,
}

impl Tls {
    async fn start() -> Tls {
        let stack = Stack::start().await;
        let pair = SelfSigned::generate(HOST).expect("certificates");
        let server = HttpServer::new(
            iot_gateway::http::router(stack.state.clone()),
            HttpConfig::default(),
        );
        let addr = server
            .listen_tls(
                "127.0.0.1:0".parse().expect("addr"),
                pair.tls_config(true).expect("tls"),
            )
            .await
            .expect("listen tls");
        let server_ca = CertificateDer::from_pem_slice(pair.ca_pem.as_bytes()).expect("CA PEM");
        Tls {
            stack,
            server,
            addr,
            server_ca,
        }
    }

    /// One request over a new TLS connection, with `device`'s certificate if given. `None` when
    /// the server ended the connection without an answer (a certificate the handshake refused).
    async fn request(
        &self,
        device: Option<&DeviceChain>,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> Option<Reply> {
        self.request_with(device, method, path, token, body, &[])
            .await
    }

    /// Like [`request`](Self::request), with more headers.
    async fn request_with(
        &self,
        device: Option<&DeviceChain>,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> Option<Reply> {
        let mut roots = RootCertStore::empty();
        roots.add(self.server_ca.clone()).expect("CA");
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
        let config = match device {
            Some(d) => builder
                .with_client_auth_cert(d.chain.clone(), PrivateKeyDer::from(d.key.clone_key()))
                .expect("client certificate"),
            None => builder.with_no_client_auth(),
        };
        let tcp = TcpStream::connect(self.addr).await.expect("connect");
        // With TLS 1.3 a refused client certificate shows after the client's side of the
        // handshake: as a failed handshake, write or read alike.
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(HOST).expect("name"), tcp)
            .await
            .ok()?;
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n");
        if let Some(token) = token {
            head.push_str(&format!("Authorization: {token}\r\n"));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        tls.write_all(head.as_bytes()).await.ok()?;
        tls.write_all(body).await.ok()?;
        let mut raw = Vec::new();
        // A read error is judged by what arrived: nothing (the handshake's refusal surfacing)
        // or a whole answer before the close.
        let _ = tokio::time::timeout(Duration::from_secs(60), tls.read_to_end(&mut raw))
            .await
            .expect("answer in time");
        if raw.is_empty() {
            return None;
        }
        Some(http_support::parse(&raw))
    }

    /// A request by certificate alone; the status (0: refused in the handshake).
    async fn status(&self, device: &DeviceChain, method: &str, path: &str, body: &[u8]) -> u16 {
        self.request(Some(device), method, path, None, body)
            .await
            .map_or(0, |r| r.status)
    }

    async fn register(&self, id: &str, credentials: Credentials) {
        self.stack
            .identity
            .create(NewIdentity::new(id.parse().expect("id"), credentials))
            .await
            .expect("identity");
    }
}

fn events(device: &str) -> String {
    format!("/devices/{device}/messages/events?{API}")
}

fn bound(device: &str, suffix: &str) -> String {
    format!("/devices/{device}/messages/deviceBound{suffix}?{API}")
}

fn id(s: &str) -> DeviceId {
    s.parse().expect("device id")
}

async fn records_of(log: &Arc<dyn Log>, key: &str) -> Vec<Record> {
    let p = partition_for_key(key, log.partition_count());
    log.read(
        p,
        log.earliest_offset(p).await.expect("earliest"),
        ReadLimits::default(),
    )
    .await
    .expect("read")
    .into_iter()
    .filter(|r| r.record.key == key)
    .map(|r| r.record)
    .collect()
}

/// Telemetry by certificate lands stamped as the device, by X.509; then a C2D message is
/// received and completed over two more requests (each on a connection of its own).
async fn telemetry_and_c2d(t: &Tls, device: &DeviceChain, name: &str) {
    let sent = t
        .request(Some(device), "POST", &events(name), None, b"{\"t\":1}")
        .await
        .expect("an answer");
    assert_eq!(sent.status, 204, "{}", String::from_utf8_lossy(&sent.body));
    let records = records_of(t.stack.hub.telemetry_log(), name).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].headers.get(header::DEVICE_ID), Some(name));
    assert!(
        records[0]
            .headers
            .get(header::AUTH_METHOD)
            .is_some_and(|m| m.contains("x509Certificate")),
        "{:?}",
        records[0].headers.get(header::AUTH_METHOD)
    );
    assert_eq!(&records[0].payload[..], b"{\"t\":1}");

    assert_eq!(t.status(device, "GET", &bound(name, ""), b"").await, 204);
    t.stack
        .hub
        .send_c2d(&id(name), C2dMessage::new(&b"open"[..]))
        .await
        .expect("send c2d");
    let got = t
        .request(Some(device), "GET", &bound(name, ""), None, b"")
        .await
        .expect("an answer");
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    assert_eq!(&got.body[..], b"open");
    let lock = got
        .header("etag")
        .expect("etag")
        .trim_matches('"')
        .to_owned();
    assert_eq!(
        t.status(device, "DELETE", &bound(name, &format!("/{lock}")), b"")
            .await,
        204
    );
    // Completed: nothing left, and the same lock cannot settle twice.
    assert_eq!(t.status(device, "GET", &bound(name, ""), b"").await, 204);
    assert_eq!(
        t.status(device, "DELETE", &bound(name, &format!("/{lock}")), b"")
            .await,
        412
    );
}

#[tokio::test]
async fn a_ca_signed_device_sends_and_receives_with_its_chain() {
    let t = Tls::start().await;
    let root = ca("fleet root", None);
    let inter = ca("fleet intermediate", Some(&root));
    verified(&t.stack.cas, "fleet", &root).await;
    t.register("ca-dev", Credentials::CertificateAuthority)
        .await;
    let device = leaf("ca-dev", &inter, &[&inter]);
    telemetry_and_c2d(&t, &device, "ca-dev").await;
    t.server.shutdown().await;
}

#[tokio::test]
async fn a_thumbprint_device_sends_and_receives_with_its_certificate() {
    let t = Tls::start().await;
    let device = self_signed("whatever the CN says");
    let thumbprint = Thumbprint::of_der_certificate(&device.chain[0]);
    t.register(
        "tp-dev",
        Credentials::X509 {
            primary: thumbprint,
            secondary: thumbprint,
        },
    )
    .await;
    telemetry_and_c2d(&t, &device, "tp-dev").await;
}

#[tokio::test]
async fn chains_that_do_not_prove_the_device_are_refused() {
    let t = Tls::start().await;
    let root = ca("fleet root", None);
    let inter = ca("fleet intermediate", Some(&root));
    let pending = ca("pending root", None);
    verified(&t.stack.cas, "fleet", &root).await;
    t.stack
        .cas
        .upload("pending", &pending.pem(), CaCondition::Absent)
        .await
        .expect("upload");
    t.register("ca-dev", Credentials::CertificateAuthority)
        .await;
    t.register("other", Credentials::CertificateAuthority).await;
    let tp = self_signed("tp");
    let thumbprint = Thumbprint::of_der_certificate(&tp.chain[0]);
    t.register(
        "tp-dev",
        Credentials::X509 {
            primary: thumbprint,
            secondary: thumbprint,
        },
    )
    .await;

    let good = leaf("ca-dev", &inter, &[&inter]);
    assert_eq!(t.status(&good, "POST", &events("ca-dev"), b"x").await, 204);

    let refused = |what: &'static str, status: u16| {
        assert_eq!(status, 401, "{what}");
    };
    // The chain names another device: a request for `other` with ca-dev's chain.
    refused(
        "another device's chain",
        t.status(&good, "POST", &events("other"), b"x").await,
    );
    // A thumbprint device's certificate for a CA device, and the reverse.
    refused(
        "thumbprint cert for a CA device",
        t.status(&tp, "POST", &events("ca-dev"), b"x").await,
    );
    refused(
        "CA chain for a thumbprint device",
        t.status(&good, "POST", &events("tp-dev"), b"x").await,
    );
    // Another CN.
    let wrong_cn = leaf("someone-else", &inter, &[&inter]);
    refused(
        "wrong CN",
        t.status(&wrong_cn, "POST", &events("ca-dev"), b"x").await,
    );
    // A CA uploaded but never verified.
    let unverified = leaf("ca-dev", &pending, &[]);
    refused(
        "unverified CA",
        t.status(&unverified, "POST", &events("ca-dev"), b"x").await,
    );
    // The intermediate left out: no path to the verified root.
    let no_inter = leaf("ca-dev", &inter, &[]);
    refused(
        "missing intermediate",
        t.status(&no_inter, "GET", &bound("ca-dev", ""), b"").await,
    );
    // An expired leaf is refused by the handshake itself (the MQTT endpoint's verifier), or
    // failing that by the chain check: never served.
    let mut old = leaf_params("ca-dev");
    old.not_before = rcgen::date_time_ymd(2020, 1, 1);
    old.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = leaf_with(old, &inter, &[&inter]);
    let status = t.status(&expired, "POST", &events("ca-dev"), b"x").await;
    assert!(status == 0 || status == 401, "expired leaf: {status}");
    // A certificate does not open the service API.
    let service = t
        .status(&good, "GET", &format!("/devices/ca-dev?{API}"), b"")
        .await;
    assert!(service == 401 || service == 403, "service API: {service}");
    assert_eq!(
        t.status(&good, "GET", &format!("/statistics/devices?{API}"), b"")
            .await,
        401
    );
    // Nothing refused reached the telemetry log.
    assert_eq!(
        records_of(t.stack.hub.telemetry_log(), "ca-dev")
            .await
            .len(),
        1
    );
    assert!(
        records_of(t.stack.hub.telemetry_log(), "other")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn disabling_the_device_or_deleting_its_ca_refuses_the_next_request() {
    let t = Tls::start().await;
    let root = ca("fleet root", None);
    verified(&t.stack.cas, "fleet", &root).await;
    t.register("ca-dev", Credentials::CertificateAuthority)
        .await;
    let device = leaf("ca-dev", &root, &[]);
    assert_eq!(
        t.status(&device, "POST", &events("ca-dev"), b"1").await,
        204
    );

    t.stack
        .identity
        .set_status(&id("ca-dev"), DeviceStatus::disabled("stolen"), None)
        .await
        .expect("disable");
    assert_eq!(
        t.status(&device, "POST", &events("ca-dev"), b"2").await,
        401
    );
    assert_eq!(
        t.status(&device, "GET", &bound("ca-dev", ""), b"").await,
        401
    );
    t.stack
        .identity
        .set_status(&id("ca-dev"), DeviceStatus::Enabled, None)
        .await
        .expect("enable");
    assert_eq!(
        t.status(&device, "POST", &events("ca-dev"), b"3").await,
        204
    );

    t.stack
        .cas
        .delete("fleet", CaCondition::Any)
        .await
        .expect("delete CA");
    assert_eq!(
        t.status(&device, "POST", &events("ca-dev"), b"4").await,
        401
    );
    let payloads: Vec<Vec<u8>> = records_of(t.stack.hub.telemetry_log(), "ca-dev")
        .await
        .into_iter()
        .map(|r| r.payload.to_vec())
        .collect();
    assert_eq!(payloads, vec![b"1".to_vec(), b"3".to_vec()]);
}

#[tokio::test]
async fn sas_devices_and_the_service_api_need_no_certificate() {
    let t = Tls::start().await;
    let owner = t.stack.token("iothubowner");
    let created = t
        .request_with(
            None,
            "PUT",
            &format!("/devices/sas-dev?{API}"),
            Some(&owner),
            json!({"deviceId": "sas-dev"}).to_string().as_bytes(),
            &[("Content-Type", "application/json")],
        )
        .await
        .expect("an answer");
    assert_eq!(
        created.status,
        200,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let key = created.json()["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .expect("key")
        .to_owned();
    let key = SymmetricKey::from_base64(&key).expect("key");
    let token = sas::generate(
        &format!("{HOST}/devices/sas-dev"),
        &key,
        sas::unix_now() + 600,
        None,
    )
    .expect("token");
    let sent = t
        .request(None, "POST", &events("sas-dev"), Some(token.as_str()), b"s")
        .await
        .expect("an answer");
    assert_eq!(sent.status, 204, "{}", String::from_utf8_lossy(&sent.body));
    // No token and no certificate: 401 as before.
    let bare = t
        .request(None, "POST", &events("sas-dev"), None, b"s")
        .await
        .expect("an answer");
    assert_eq!(bare.status, 401);
    assert_eq!(bare.error_code(), "IotHubUnauthorizedAccess");
    // A SAS device cannot use a certificate instead of its token.
    let stranger = self_signed("sas-dev");
    assert_eq!(
        t.status(&stranger, "POST", &events("sas-dev"), b"s").await,
        401
    );
    // A token wins over a certificate presented beside it: the token is what is checked.
    let with_both = t
        .request(
            Some(&stranger),
            "POST",
            &events("sas-dev"),
            Some(token.as_str()),
            b"t",
        )
        .await
        .expect("an answer");
    assert_eq!(with_both.status, 204);
    let records = records_of(t.stack.hub.telemetry_log(), "sas-dev").await;
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| {
        r.headers
            .get(header::AUTH_METHOD)
            .is_some_and(|m| m.contains("\"sas\""))
    }));
}
