//! The HTTP endpoint's scaffolding: api-version checks, IoT Hub's error shape, shared access
//! policies and SAS tokens (service, device, DeviceConnect policy), TLS, graceful shutdown.
#![cfg(feature = "http")]

mod http_support;

use http_support::{API, HOST, Stack, token_for};
use iot_gateway::http::{Rights, SharedAccessPolicy};
use iot_identity::{KeySlot, sas};
use iot_provisioning::{Provisioning, RegisterRequest};
use rustls_pki_types::pem::PemObject as _;
use serde_json::json;

#[tokio::test]
async fn api_version_is_required_and_checked() {
    let stack = Stack::start().await;
    let token = stack.token("iothubowner");
    let none = stack
        .call("GET", "/statistics/devices", Some(&token), None)
        .await;
    assert_eq!(none.status, 400);
    assert_eq!(none.error_code(), "InvalidProtocolVersion");
    let unknown = stack
        .call(
            "GET",
            "/statistics/devices?api-version=1999-01-01",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.error_code(), "InvalidProtocolVersion");
    for version in ["2021-04-12", "2020-09-30", "2021-06-30", "2018-06-30"] {
        let ok = stack
            .call(
                "GET",
                &format!("/statistics/devices?api-version={version}"),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(ok.status, 200, "{version}");
        assert_eq!(ok.json()["totalDeviceCount"], 0);
    }
}

#[tokio::test]
async fn missing_wrong_and_expired_tokens_are_401_with_the_error_body() {
    let stack = Stack::start().await;
    let path = format!("/statistics/devices?{API}");
    let missing = stack.call("GET", &path, None, None).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.error_code(), "IotHubUnauthorizedAccess");

    let owner = stack.policies.get("iothubowner").expect("policy");
    let resource = format!("{HOST}:{}", stack.addr.port());
    let expired = token_for(&resource, &owner.primary, "iothubowner", -3600);
    let reply = stack.call("GET", &path, Some(&expired), None).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.error_code(), "IotHubUnauthorizedAccess");
    assert!(
        reply.json()["Message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );

    // Signed with another policy's key, or naming an unknown policy, or for another hub.
    let other = stack.policies.get("service").expect("policy");
    for token in [
        token_for(&resource, &other.primary, "iothubowner", 3600),
        token_for(&resource, &owner.primary, "nobody", 3600),
        token_for("otherhub.example.net", &owner.primary, "iothubowner", 3600),
        "SharedAccessSignature sr=x".to_owned(),
        "Bearer abc".to_owned(),
    ] {
        let reply = stack.call("GET", &path, Some(&token), None).await;
        assert_eq!(reply.status, 401, "{token}");
        assert_eq!(reply.error_code(), "IotHubUnauthorizedAccess");
    }
    // The secondary key works too; the token text never shows up in the answer.
    let secondary = token_for(&resource, &owner.secondary, "iothubowner", 3600);
    assert_eq!(
        stack
            .call("GET", &path, Some(&secondary), None)
            .await
            .status,
        200
    );
    let body = String::from_utf8_lossy(&reply.body).into_owned();
    assert!(!body.contains("sig="), "{body}");
}

#[tokio::test]
async fn tokens_in_any_field_order_and_host_spellings_verify() {
    let stack = Stack::start().await;
    let owner = stack.policies.get("iothubowner").expect("policy");
    let path = format!("/statistics/devices?{API}");
    // Node's SDK puts skn before se; reorder the fields of a generated token.
    let plain = token_for(HOST, &owner.primary, "iothubowner", 3600);
    let body = plain
        .strip_prefix("SharedAccessSignature ")
        .expect("prefix");
    let mut fields: Vec<&str> = body.split('&').collect();
    fields.reverse();
    let reordered = format!("SharedAccessSignature {}", fields.join("&"));
    assert_eq!(
        stack
            .call("GET", &path, Some(&reordered), None)
            .await
            .status,
        200
    );
    let upper = token_for("LOCALHOST:443", &owner.primary, "iothubowner", 3600);
    assert!(upper.contains("sr=LOCALHOST%3A443"));
    assert_eq!(
        stack.call("GET", &path, Some(&upper), None).await.status,
        200
    );
}

#[tokio::test]
async fn a_policy_without_the_right_is_403() {
    let stack = Stack::start().await;
    let path = format!("/statistics/devices?{API}");
    assert_eq!(
        stack
            .call_with("GET", &path, "registryRead", None, &[])
            .await
            .status,
        200
    );
    let reply = stack.call_with("GET", &path, "service", None, &[]).await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.error_code(), "IotHubUnauthorized");
    let service = format!("/statistics/service?{API}");
    assert_eq!(
        stack
            .call_with("GET", &service, "service", None, &[])
            .await
            .status,
        200
    );
    assert_eq!(
        stack
            .call_with("GET", &service, "device", None, &[])
            .await
            .status,
        403
    );
}

#[tokio::test]
async fn rotated_and_removed_policies_stop_working_at_once() {
    let stack = Stack::start().await;
    let path = format!("/statistics/devices?{API}");
    let old = stack.token("registryRead");
    assert_eq!(stack.call("GET", &path, Some(&old), None).await.status, 200);
    stack
        .policies
        .rotate("registryRead", KeySlot::Primary)
        .await
        .expect("rotate");
    assert_eq!(stack.call("GET", &path, Some(&old), None).await.status, 401);
    assert_eq!(
        stack
            .call("GET", &path, Some(&stack.token("registryRead")), None)
            .await
            .status,
        200
    );
    stack
        .policies
        .upsert(SharedAccessPolicy::generate(
            "reader2",
            Rights::REGISTRY_READ,
        ))
        .await
        .expect("upsert");
    let reader2 = stack.token("reader2");
    assert_eq!(
        stack.call("GET", &path, Some(&reader2), None).await.status,
        200
    );
    stack.policies.remove("reader2").await.expect("remove");
    assert_eq!(
        stack.call("GET", &path, Some(&reader2), None).await.status,
        401
    );
}

#[tokio::test]
async fn device_tokens_authenticate_devices_not_back_ends() {
    let stack = Stack::start().await;
    let id: iot_core::DeviceId = "dev-1".parse().expect("id");
    let registered = stack
        .provisioner
        .register(RegisterRequest::new(id.clone(), json!({})))
        .await
        .expect("register");
    let iot_identity::Credentials::SymmetricKeys { primary, .. } = &registered.credentials else {
        panic!("keys");
    };
    let device_token = sas::generate(
        &format!("{HOST}/devices/dev-1"),
        primary,
        sas::unix_now() + 600,
        None,
    )
    .expect("token");
    let token = device_token.as_str().to_owned();
    // A device token is no back end: 403 on the service API.
    let reply = stack
        .call(
            "GET",
            &format!("/statistics/devices?{API}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(reply.status, 403);

    // The authentication itself, as the device API will use it.
    let policy = stack.policies.get("device").expect("device policy");
    let via_policy = token_for(
        &format!("{HOST}/devices/dev-1"),
        &policy.primary,
        "device",
        600,
    );
    let owner = stack.policies.get("registryRead").expect("policy");
    let not_device_connect = token_for(
        &format!("{HOST}/devices/dev-1"),
        &owner.primary,
        "registryRead",
        600,
    );
    let reply = stack
        .call(
            "GET",
            &format!("/statistics/devices?{API}"),
            Some(&via_policy),
            None,
        )
        .await;
    assert_eq!(
        reply.status, 403,
        "a DeviceConnect token authenticates as the device"
    );
    let reply = stack
        .call(
            "GET",
            &format!("/statistics/devices?{API}"),
            Some(&not_device_connect),
            None,
        )
        .await;
    assert_eq!(reply.status, 401, "a device scope needs DeviceConnect");
}

#[tokio::test]
async fn unknown_routes_and_methods_use_the_error_shape() {
    let stack = Stack::start().await;
    let reply = stack
        .owner("GET", &format!("/nothing/here?{API}"), None)
        .await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.error_code(), "NotFound");
    let reply = stack
        .owner("DELETE", &format!("/statistics/devices?{API}"), None)
        .await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.error_code(), "MethodNotAllowed");
}

#[tokio::test]
async fn tls_serves_the_same_api_and_shutdown_stops_listening() {
    let stack = Stack::start().await;
    let pair = iot_gateway::mqtt::SelfSigned::generate(HOST).expect("cert");
    let tls = pair.tls_config(false).expect("tls");
    let tls_addr = stack
        .server
        .listen_tls("127.0.0.1:0".parse().unwrap(), tls)
        .await
        .expect("listen tls");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pair.ca_pem.as_bytes()) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(tls_addr)
        .await
        .expect("connect");
    let mut stream = connector
        .connect(
            rustls_pki_types::ServerName::try_from(HOST).expect("name"),
            tcp,
        )
        .await
        .expect("handshake");
    let token = stack.token("iothubowner");
    let reply = http_support::send(
        &mut stream,
        "GET",
        &format!("/statistics/devices?{API}"),
        Some(&token),
        None,
        &[],
    )
    .await;
    assert_eq!(reply.status, 200);

    stack.server.shutdown().await;
    assert!(tokio::net::TcpStream::connect(stack.addr).await.is_err());
    assert!(tokio::net::TcpStream::connect(tls_addr).await.is_err());
}

// A verified service token is remembered (the token cache): these show that what it remembers
// never outlives what the token proves.

#[tokio::test]
async fn a_remembered_token_is_refused_once_it_expires() {
    let stack = Stack::start().await;
    let owner = stack.policies.get("iothubowner").expect("policy");
    let token = token_for(HOST, &owner.primary, "iothubowner", 30);
    let now = sas::unix_now();
    let auth = iot_gateway::http::auth::authenticate;
    assert!(auth(&stack.state, &token, now).await.is_ok());
    // Served from the cache a second time, still within the token's life and skew.
    assert!(auth(&stack.state, &token, now + 30 + 60).await.is_ok());
    let late = auth(&stack.state, &token, now + 30 + 61)
        .await
        .expect_err("expired");
    assert_eq!(late.status.as_u16(), 401);
    assert!(late.to_string().contains("expired"), "{late}");
    // And it is not brought back by an earlier clock reading either: it is checked in full.
    assert!(auth(&stack.state, &token, now).await.is_ok());
}

#[tokio::test]
async fn rotating_either_key_refuses_its_remembered_tokens_at_once() {
    let stack = Stack::start().await;
    let path = format!("/statistics/devices?{API}");
    let resource = format!("{HOST}:{}", stack.addr.port());
    let before = stack.policies.get("registryRead").expect("policy");
    let primary = token_for(&resource, &before.primary, "registryRead", 3600);
    let secondary = token_for(&resource, &before.secondary, "registryRead", 3600);
    for token in [&primary, &secondary] {
        // Twice: the second answer comes from the cache.
        for _ in 0..2 {
            assert_eq!(
                stack.call("GET", &path, Some(token), None).await.status,
                200
            );
        }
    }
    stack
        .policies
        .rotate("registryRead", KeySlot::Secondary)
        .await
        .expect("rotate");
    let reply = stack.call("GET", &path, Some(&secondary), None).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.error_code(), "IotHubUnauthorizedAccess");
    // The primary was not rotated: its token still works (checked afresh).
    assert_eq!(
        stack.call("GET", &path, Some(&primary), None).await.status,
        200
    );
    stack
        .policies
        .rotate("registryRead", KeySlot::Primary)
        .await
        .expect("rotate");
    assert_eq!(
        stack.call("GET", &path, Some(&primary), None).await.status,
        401
    );
}

#[tokio::test]
async fn a_policy_that_loses_a_right_loses_it_for_remembered_tokens_too() {
    let stack = Stack::start().await;
    let path = format!("/statistics/devices?{API}");
    let token = stack.token("registryReadWrite");
    assert_eq!(
        stack.call("GET", &path, Some(&token), None).await.status,
        200
    );
    let mut policy = stack.policies.get("registryReadWrite").expect("policy");
    policy.rights = Rights::REGISTRY_WRITE;
    stack.policies.upsert(policy).await.expect("upsert");
    let reply = stack.call("GET", &path, Some(&token), None).await;
    assert_eq!(reply.status, 403, "same keys, fewer rights");
    assert_eq!(reply.error_code(), "IotHubUnauthorized");
}

#[tokio::test]
async fn the_openapi_document_is_served_without_a_token() {
    let stack = Stack::start().await;
    let on_disk =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml"))
            .expect("docs/openapi.yaml");
    // No token, no api-version; with one it is the same document.
    for path in ["/openapi.yaml", &format!("/openapi.yaml?{API}")] {
        let reply = stack.call("GET", path, None, None).await;
        assert_eq!(reply.status, 200, "{path}");
        assert!(
            reply
                .header("content-type")
                .is_some_and(|t| t.starts_with("application/yaml")),
            "{:?}",
            reply.headers
        );
        assert_eq!(String::from_utf8_lossy(&reply.body), on_disk, "{path}");
    }
    // It describes itself, and is the only route that needs neither a token nor an api-version
    // (`/auth/login` needs no token either, but it takes an api-version like the others).
    assert!(on_disk.contains("\n  /openapi.yaml:\n"));
    let reply = stack.call("GET", "/statistics/devices", None, None).await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        stack.call("POST", "/openapi.yaml", None, None).await.status,
        405
    );
}
