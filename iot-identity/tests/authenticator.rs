//! The `Authenticator`: every credential kind, every typed refusal, and no secret in any output.

use std::sync::Arc;
use std::time::Duration;

use iot_core::DeviceId;
use iot_identity::{
    Authenticator, Credentials, DeviceStatus, Error, IdentityStore, KeySlot, MemoryIdentityStore,
    NewIdentity, PassphraseParams, Presented, SasVerifier, SymmetricKey, Thumbprint, sas,
};

const HOST: &str = "hub.example.net";

fn id(s: &str) -> DeviceId {
    s.parse().expect("valid id")
}

struct Fixture {
    auth: Authenticator,
    primary: SymmetricKey,
    secondary: SymmetricKey,
    cert: Thumbprint,
}

async fn fixture() -> Fixture {
    let store = Arc::new(MemoryIdentityStore::new());
    let primary = SymmetricKey::generate();
    let secondary = SymmetricKey::generate();
    let cert = Thumbprint::of_der_certificate(b"client certificate");
    let other_cert = Thumbprint::of_der_certificate(b"second certificate");
    let creates = [
        (
            "keys",
            Credentials::SymmetricKeys {
                primary: primary.clone(),
                secondary: secondary.clone(),
            },
        ),
        (
            "x509",
            Credentials::X509 {
                primary: cert,
                secondary: other_cert,
            },
        ),
        (
            "pass",
            Credentials::passphrase("open sesame", &PassphraseParams::INSECURE_FOR_TESTS)
                .expect("hash"),
        ),
        ("none", Credentials::None),
    ];
    for (name, credentials) in creates {
        store
            .create(NewIdentity::new(id(name), credentials))
            .await
            .expect("create");
    }
    let auth = Authenticator::new(store, HOST).with_verifier(SasVerifier {
        clock_skew: Duration::from_secs(30),
        ..SasVerifier::default()
    });
    Fixture {
        auth,
        primary,
        secondary,
        cert,
    }
}

fn token(device: &str, key: &SymmetricKey, expiry: u64) -> String {
    let resource = sas::device_resource(HOST, &id(device));
    sas::generate(&resource, key, expiry, None)
        .expect("token")
        .as_str()
        .to_owned()
}

#[tokio::test]
async fn each_credential_kind_authenticates() {
    let f = fixture().await;
    let now = 1_800_000_000;
    let ok = f
        .auth
        .authenticate_at(
            &id("keys"),
            Presented::SasToken(&token("keys", &f.primary, now + 60)),
            now,
        )
        .await;
    let ok = ok.expect("primary token");
    assert_eq!(
        (ok.key, ok.expires_at),
        (Some(KeySlot::Primary), Some(now + 60))
    );
    let ok = f
        .auth
        .authenticate_at(
            &id("keys"),
            Presented::SasToken(&token("keys", &f.secondary, now)),
            now,
        )
        .await;
    assert_eq!(ok.expect("secondary token").key, Some(KeySlot::Secondary));
    let b64 = f.secondary.expose_base64();
    let ok = f
        .auth
        .authenticate(&id("keys"), Presented::SymmetricKey(&b64))
        .await;
    assert_eq!(ok.expect("key").key, Some(KeySlot::Secondary));
    let ok = f
        .auth
        .authenticate(&id("x509"), Presented::Thumbprint(f.cert))
        .await;
    assert_eq!(ok.expect("thumbprint").key, Some(KeySlot::Primary));
    let ok = f
        .auth
        .authenticate(&id("pass"), Presented::Passphrase("open sesame"))
        .await;
    assert_eq!(ok.expect("passphrase").key, None);
}

#[tokio::test]
async fn each_failure_is_its_own_typed_error() {
    let f = fixture().await;
    let now = 1_800_000_000;
    let at = |device: &'static str, presented: Presented<'static>| {
        let auth = f.auth.clone();
        async move { auth.authenticate_at(&id(device), presented, now).await }
    };
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };

    let expired = leak(token("keys", &f.primary, now - 31));
    assert!(matches!(
        at("keys", Presented::SasToken(expired)).await,
        Err(Error::TokenExpired { .. })
    ));
    let in_skew = leak(token("keys", &f.primary, now - 30));
    assert!(
        at("keys", Presented::SasToken(in_skew)).await.is_ok(),
        "within the clock skew"
    );

    // A token for device A never authenticates device B, nor A on another host.
    let for_a = leak(token("keys", &f.primary, now + 60));
    let other_store = Arc::new(MemoryIdentityStore::new());
    other_store
        .create(NewIdentity::new(
            id("keys2"),
            Credentials::SymmetricKeys {
                primary: f.primary.clone(),
                secondary: f.secondary.clone(),
            },
        ))
        .await
        .expect("create");
    let same_keys = Authenticator::new(other_store, HOST);
    assert!(matches!(
        same_keys
            .authenticate_at(&id("keys2"), Presented::SasToken(for_a), now)
            .await,
        Err(Error::WrongScope { .. })
    ));
    let other_host = Authenticator::new(Arc::clone(f.auth.store()), "other.example.net");
    assert!(matches!(
        other_host
            .authenticate_at(&id("keys"), Presented::SasToken(for_a), now)
            .await,
        Err(Error::WrongScope { .. })
    ));

    let forged = leak(token("keys", &SymmetricKey::generate(), now + 60));
    assert!(matches!(
        at("keys", Presented::SasToken(forged)).await,
        Err(Error::BadSignature)
    ));
    assert!(matches!(
        at("keys", Presented::SasToken("garbage")).await,
        Err(Error::MalformedToken { .. })
    ));
    let with_policy = leak(
        sas::generate(
            &sas::device_resource(HOST, &id("keys")),
            &f.primary,
            now + 60,
            Some("device"),
        )
        .expect("token")
        .as_str()
        .to_owned(),
    );
    assert!(matches!(
        at("keys", Presented::SasToken(with_policy)).await,
        Err(Error::UnknownPolicy { .. })
    ));
    assert!(matches!(
        at("ghost", Presented::SasToken(for_a)).await,
        Err(Error::UnknownDevice { .. })
    ));

    let wrong_key = leak(SymmetricKey::generate().expose_base64().to_string());
    assert!(matches!(
        at("keys", Presented::SymmetricKey(wrong_key)).await,
        Err(Error::BadCredential { .. })
    ));
    assert!(matches!(
        at("keys", Presented::SymmetricKey("not base64")).await,
        Err(Error::BadCredential { .. })
    ));
    let other_cert = Thumbprint::of_der_certificate(b"mallory");
    assert!(matches!(
        at("x509", Presented::Thumbprint(other_cert)).await,
        Err(Error::BadCredential { .. })
    ));
    assert!(matches!(
        at("pass", Presented::Passphrase("open sesamE")).await,
        Err(Error::BadCredential { .. })
    ));
    let huge = leak("p".repeat(10 * 1024 * 1024));
    assert!(matches!(
        at("pass", Presented::Passphrase(huge)).await,
        Err(Error::BadCredential { .. })
    ));
    assert!(matches!(
        at("x509", Presented::SasToken(for_a)).await,
        Err(Error::WrongCredentialKind { .. })
    ));
    assert!(matches!(
        at("none", Presented::Passphrase("x")).await,
        Err(Error::WrongCredentialKind { .. })
    ));
    let huge_token = leak("SharedAccessSignature ".to_owned() + &"a".repeat(10 * 1024 * 1024));
    assert!(matches!(
        at("keys", Presented::SasToken(huge_token)).await,
        Err(Error::MalformedToken { .. })
    ));

    // Disabled is reported only to a caller whose credential is valid.
    f.auth
        .store()
        .set_status(&id("keys"), DeviceStatus::disabled("stolen"), None)
        .await
        .expect("disable");
    assert!(matches!(
        at("keys", Presented::SasToken(for_a)).await,
        Err(Error::DeviceDisabled { .. })
    ));
    assert!(matches!(
        at("keys", Presented::SasToken(forged)).await,
        Err(Error::BadSignature)
    ));
    for e in [Error::BadSignature, Error::UnknownDevice { id: id("x") }] {
        assert!(e.is_auth_failure());
    }
}

/// Policies as a protocol gateway's hub would have them: `gateway` holds DeviceConnect,
/// `reader` does not (the store answers `None` for it, as for an unknown name).
#[derive(Debug)]
struct Policies {
    gateway: (SymmetricKey, SymmetricKey),
}

impl iot_identity::DeviceConnectPolicies for Policies {
    fn device_connect_keys(&self, policy: &str) -> Option<(SymmetricKey, SymmetricKey)> {
        (policy == "gateway").then(|| self.gateway.clone())
    }
}

fn policy_token(device: &str, key: &SymmetricKey, policy: &str, expiry: u64) -> String {
    let resource = sas::device_resource(HOST, &id(device));
    sas::generate(&resource, key, expiry, Some(policy))
        .expect("token")
        .as_str()
        .to_owned()
}

#[tokio::test]
async fn a_device_connect_policy_signs_for_any_device_only_when_configured() {
    let store = Arc::new(MemoryIdentityStore::new());
    for name in ["keys", "x509"] {
        let credentials = match name {
            "keys" => Credentials::SymmetricKeys {
                primary: SymmetricKey::generate(),
                secondary: SymmetricKey::generate(),
            },
            _ => Credentials::X509 {
                primary: Thumbprint::of_der_certificate(b"a"),
                secondary: Thumbprint::of_der_certificate(b"b"),
            },
        };
        store
            .create(NewIdentity::new(id(name), credentials))
            .await
            .expect("create");
    }
    let gateway = (SymmetricKey::generate(), SymmetricKey::generate());
    let plain = Authenticator::new(store.clone(), HOST);
    let auth = plain
        .clone()
        .with_device_connect_policies(Arc::new(Policies {
            gateway: gateway.clone(),
        }));
    let now = sas::unix_now();
    let good = policy_token("keys", &gateway.0, "gateway", now + 600);

    // Without policies the token is refused, as before.
    assert!(matches!(
        plain
            .authenticate_at(&id("keys"), Presented::SasToken(&good), now)
            .await,
        Err(Error::UnknownPolicy { .. })
    ));
    // With them: any device, whatever its own credential kind; the policy is reported.
    let who = auth
        .authenticate_at(&id("keys"), Presented::SasToken(&good), now)
        .await
        .expect("policy token");
    assert_eq!(who.policy.as_deref(), Some("gateway"));
    assert_eq!(who.key, Some(KeySlot::Primary));
    assert_eq!(who.expires_at, Some(now + 600));
    let x509 = policy_token("x509", &gateway.1, "gateway", now + 600);
    let who = auth
        .authenticate_at(&id("x509"), Presented::SasToken(&x509), now)
        .await
        .expect("secondary key");
    assert_eq!(who.key, Some(KeySlot::Secondary));
    // The device's own token still works and names no policy.
    let own = auth
        .authenticate_at(
            &id("x509"),
            Presented::Thumbprint(Thumbprint::of_der_certificate(b"a")),
            now,
        )
        .await
        .expect("own credential");
    assert_eq!(own.policy, None);

    // Refusals: another policy (or one without DeviceConnect), a wrong key, another device's
    // scope, expiry, an unknown device, a disabled one.
    let refusals = [
        (
            "keys",
            policy_token("keys", &gateway.0, "reader", now + 600),
            "unknown_policy",
        ),
        (
            "keys",
            policy_token("keys", &SymmetricKey::generate(), "gateway", now + 600),
            "bad_signature",
        ),
        ("x509", good.clone(), "wrong_scope"),
        (
            "keys",
            policy_token("keys", &gateway.0, "gateway", now - 3600),
            "expired",
        ),
        (
            "ghost",
            policy_token("ghost", &gateway.0, "gateway", now + 600),
            "unknown_device",
        ),
    ];
    for (device, token, kind) in refusals {
        let e = auth
            .authenticate_at(&id(device), Presented::SasToken(&token), now)
            .await
            .expect_err(kind);
        assert_eq!(e.kind(), kind, "{device}: {e}");
    }
    store
        .set_status(
            &id("keys"),
            DeviceStatus::Disabled {
                reason: "test".into(),
            },
            None,
        )
        .await
        .expect("disable");
    let e = auth
        .authenticate_at(&id("keys"), Presented::SasToken(&good), now)
        .await
        .expect_err("disabled");
    assert_eq!(e.kind(), "disabled_device");
}
