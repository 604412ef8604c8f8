//! Our SAS tokens against tokens made by Microsoft's `azure-iot-device` Python SDK
//! (`scripts/sas_vectors.py` wrote `tests/vectors/sas_azure_iot_device.json`).

use iot_identity::{Error, SasVerifier, SymmetricKey, sas};
use serde_json::Value;

const VECTORS: &str = include_str!("vectors/sas_azure_iot_device.json");

struct Vector {
    resource: String,
    key: SymmetricKey,
    expiry: u64,
    policy: Option<String>,
    token: String,
}

fn vectors() -> Vec<Vector> {
    let doc: Value = serde_json::from_str(VECTORS).expect("vectors are JSON");
    assert!(
        doc["generator"]
            .as_str()
            .is_some_and(|g| g.starts_with("azure-iot-device ")),
        "vectors come from the Azure SDK"
    );
    let list = doc["vectors"].as_array().expect("a vector list");
    assert!(list.len() >= 20, "the vector file is complete");
    list.iter()
        .map(|v| Vector {
            resource: v["resource"].as_str().expect("resource").to_owned(),
            key: SymmetricKey::from_base64(v["key"].as_str().expect("key")).expect("valid key"),
            expiry: v["expiry"].as_u64().expect("expiry"),
            policy: v["policy"].as_str().map(str::to_owned),
            token: v["token"].as_str().expect("token").to_owned(),
        })
        .collect()
}

#[test]
fn our_generator_reproduces_the_sdk_byte_for_byte() {
    for v in vectors() {
        let ours =
            sas::generate(&v.resource, &v.key, v.expiry, v.policy.as_deref()).expect("generate");
        assert_eq!(ours.as_str(), v.token, "resource {}", v.resource);
    }
}

#[test]
fn our_verifier_accepts_the_sdk_tokens() {
    let verifier = SasVerifier::default();
    for v in vectors() {
        let verified = verifier
            .verify(
                &v.token,
                &v.resource,
                &v.key,
                None,
                v.policy.as_deref(),
                v.expiry,
            )
            .unwrap_or_else(|e| panic!("{}: {e}", v.resource));
        assert_eq!(verified.expiry, v.expiry);
        let parsed = sas::parse(&v.token, 4096).expect("parse");
        assert_eq!(parsed.resource(), v.resource);
        assert_eq!(parsed.policy(), v.policy.as_deref());
    }
}

#[test]
fn sdk_tokens_are_refused_for_other_scopes_keys_and_times() {
    let verifier = SasVerifier::default();
    for v in vectors() {
        let policy = v.policy.as_deref();
        let other_device = format!("{}x", v.resource);
        assert!(matches!(
            verifier.verify(&v.token, &other_device, &v.key, None, policy, 0),
            Err(Error::WrongScope { .. })
        ));
        let other_key = SymmetricKey::generate();
        assert!(matches!(
            verifier.verify(&v.token, &v.resource, &other_key, None, policy, 0),
            Err(Error::BadSignature)
        ));
        if v.expiry < u64::MAX - 61 {
            assert!(matches!(
                verifier.verify(&v.token, &v.resource, &v.key, None, policy, v.expiry + 61),
                Err(Error::TokenExpired { .. })
            ));
        }
    }
}
