//! IoT Hub's CA certificate routes of the service REST API: upload, verification code, proof of
//! possession, list, delete with etags; a CA verified through them authenticates a device
//! registered with authentication type `certificateAuthority` through the same API.
#![cfg(feature = "http")]

mod http_support;

use http_support::{API, Stack};
use iot_gateway::{Gateway, SessionOptions};
use iot_identity::Presented;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::{Value, json};

fn root(cn: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("root")
}

fn signed(cn: &str, by: &CertifiedIssuer<'static, KeyPair>, client: bool) -> rcgen::Certificate {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(DnType::CommonName, cn);
    if client {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    }
    p.signed_by(&KeyPair::generate().expect("key"), by)
        .expect("certificate")
}

async fn call(
    stack: &Stack,
    method: &str,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let reply = stack
        .call_with(
            method,
            &format!("{path}?{API}"),
            "iothubowner",
            body,
            headers,
        )
        .await;
    let json = if reply.body.is_empty() {
        Value::Null
    } else {
        reply.json()
    };
    (reply.status, json)
}

#[tokio::test]
async fn the_verification_code_flow_over_rest_lets_ca_signed_devices_in() {
    let stack = Stack::start().await;
    let ca = root("rest root");
    let upload = json!({"properties": {"certificate": ca.pem()}});

    let (status, created) = call(&stack, "PUT", "/certificates/fleet", Some(&upload), &[]).await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["name"], "fleet");
    assert_eq!(created["properties"]["isVerified"], false);
    assert_eq!(created["properties"]["subject"], "CN=rest root");
    assert_eq!(created["type"], "Microsoft.Devices/IotHubs/Certificates");
    let etag = created["etag"].as_str().expect("etag").to_owned();
    // Create-only without If-Match; a stale etag is 412.
    let (status, _) = call(&stack, "PUT", "/certificates/fleet", Some(&upload), &[]).await;
    assert_eq!(status, 409);
    let (status, _) = call(
        &stack,
        "POST",
        "/certificates/fleet/generateVerificationCode",
        None,
        &[("If-Match", "\"999999\"")],
    )
    .await;
    assert_eq!(status, 412);

    let quoted = format!("\"{etag}\"");
    let (status, with_code) = call(
        &stack,
        "POST",
        "/certificates/fleet/generateVerificationCode",
        None,
        &[("If-Match", quoted.as_str())],
    )
    .await;
    assert_eq!(status, 200, "{with_code}");
    let code = with_code["properties"]["verificationCode"]
        .as_str()
        .expect("code")
        .to_owned();

    // A proof signed by another key, or naming another code, is refused.
    let impostor = root("rest root");
    for bad in [signed(&code, &impostor, false), signed("other", &ca, false)] {
        let (status, body) = call(
            &stack,
            "POST",
            "/certificates/fleet/verify",
            Some(&json!({"certificate": bad.pem()})),
            &[("If-Match", "*")],
        )
        .await;
        assert_eq!(status, 400, "{body}");
    }
    let (status, verified) = call(
        &stack,
        "POST",
        "/certificates/fleet/verify",
        Some(&json!({"certificate": signed(&code, &ca, false).pem()})),
        &[("If-Match", "*")],
    )
    .await;
    assert_eq!(status, 200, "{verified}");
    assert_eq!(verified["properties"]["isVerified"], true);
    assert!(verified["properties"].get("verificationCode").is_none());

    let (status, one) = call(&stack, "GET", "/certificates/fleet", None, &[]).await;
    assert_eq!(
        (status, &one["properties"]["isVerified"]),
        (200, &json!(true))
    );
    let (status, all) = call(&stack, "GET", "/certificates", None, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(all["value"].as_array().map(Vec::len), Some(1));

    // A CA-signed device through the registry API, then authenticated by its chain.
    let (status, device) = call(
        &stack,
        "PUT",
        "/devices/rest-ca-dev",
        Some(
            &json!({"deviceId": "rest-ca-dev", "authentication": {"type": "certificateAuthority"}}),
        ),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{device}");
    assert_eq!(device["authentication"]["type"], "certificateAuthority");
    let leaf = signed("rest-ca-dev", &ca, true);
    let chain = [leaf.der().clone()];
    let session = stack
        .hub
        .connect(
            &"rest-ca-dev".parse().expect("id"),
            Presented::CertificateChain(&chain),
            SessionOptions::default(),
        )
        .await
        .expect("a chain to the verified CA connects");
    drop(session);

    // Deleting the CA (etag checked) revokes it.
    let etag = verified["etag"].as_str().expect("etag").to_owned();
    let (status, _) = call(
        &stack,
        "DELETE",
        "/certificates/fleet",
        None,
        &[("If-Match", "\"1\"")],
    )
    .await;
    assert_eq!(status, 412);
    let quoted = format!("\"{etag}\"");
    let (status, _) = call(
        &stack,
        "DELETE",
        "/certificates/fleet",
        None,
        &[("If-Match", quoted.as_str())],
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(&stack, "GET", "/certificates/fleet", None, &[]).await;
    assert_eq!(status, 404);
    assert!(
        stack
            .hub
            .connect(
                &"rest-ca-dev".parse().expect("id"),
                Presented::CertificateChain(&chain),
                SessionOptions::default(),
            )
            .await
            .is_err(),
        "the CA is gone"
    );
}

#[tokio::test]
async fn bad_uploads_and_missing_rights_are_refused() {
    let stack = Stack::start().await;
    let ca = root("r");
    for (body, why) in [
        (json!({}), "no certificate"),
        (
            json!({"properties": {"certificate": "not a certificate"}}),
            "garbage",
        ),
        (
            json!({"properties": {"certificate": signed("leaf", &ca, true).pem()}}),
            "not a CA",
        ),
    ] {
        let (status, reply) = call(&stack, "PUT", "/certificates/bad", Some(&body), &[]).await;
        assert_eq!(status, 400, "{why}: {reply}");
    }
    let (status, _) = call(
        &stack,
        "PUT",
        "/certificates/bad%20name",
        Some(&json!({"properties": {"certificate": ca.pem()}})),
        &[],
    )
    .await;
    assert_eq!(status, 400);
    // registryRead may read, not write.
    let reply = stack
        .call_with(
            "PUT",
            &format!("/certificates/x?{API}"),
            "registryRead",
            Some(&json!({"properties": {"certificate": ca.pem()}})),
            &[],
        )
        .await;
    assert!(
        reply.status == 401 || reply.status == 403,
        "{}",
        reply.status
    );
    let reply = stack
        .call_with(
            "GET",
            &format!("/certificates?{API}"),
            "registryRead",
            None,
            &[],
        )
        .await;
    assert_eq!(reply.status, 200);
    let (status, _) = call(
        &stack,
        "POST",
        "/certificates/none/generateVerificationCode",
        None,
        &[],
    )
    .await;
    assert_eq!(status, 404);
}
