//! `/access/me/subscriptions`: each user manages their own alert subscriptions with a session;
//! the secret the hub generates is shown once; other users and shared access policies never see
//! or delete them.
#![cfg(feature = "http")]

mod http_support;

use std::sync::Arc;

use http_support::{API, Stack};
use iot_identity::PassphraseParams;
use iot_identity::access::{
    AccessConfig, AccessControl, DeviceSet, Grant, MemoryAccessStore, MemorySubscriptionStore,
    StaticDeviceSets, SubscriptionStore,
};
use serde_json::{Value, json};

#[tokio::test]
async fn users_manage_their_own_subscriptions() {
    let stack = Stack::start().await;
    let access = AccessControl::new(
        Arc::new(MemoryAccessStore::new()),
        Arc::new(StaticDeviceSets::new()),
    )
    .with_config(AccessConfig::default().password_params(PassphraseParams::INSECURE_FOR_TESTS))
    .expect("config");
    let mut bearer = Vec::new();
    for user in ["vic", "ada"] {
        access
            .create_user(user.parse().expect("name"), "a password")
            .await
            .expect("user");
        let (token, _) = access.login(user, "a password").await.expect("login");
        bearer.push(format!("Bearer {}", token.expose()));
    }
    access
        .grant(Grant::new(
            "vic".parse().expect("name"),
            "viewer".parse().expect("role"),
            DeviceSet::Device("pump-7".parse().expect("id")),
        ))
        .await
        .expect("grant");
    let (vic, ada) = (bearer[0].as_str(), bearer[1].as_str());
    let _ = stack.state.clone().with_access(access);
    let path = format!("/access/me/subscriptions?{API}");
    assert_eq!(
        stack.call("GET", &path, Some(vic), None).await.status,
        404,
        "no store, no routes"
    );
    let store = Arc::new(MemorySubscriptionStore::new());
    let _ = stack.state.clone().with_subscriptions(store.clone());

    // A generated secret is shown once; a given one is not echoed.
    let created = stack
        .call(
            "POST",
            &path,
            Some(vic),
            Some(&json!({"url": "https://hooks.example/vic", "devices": ["pump-7"]})),
        )
        .await;
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    assert_eq!(created.header("cache-control"), Some("no-store"));
    let first: Value = created.json();
    let secret = first["secret"]
        .as_str()
        .expect("a generated secret")
        .to_owned();
    assert_eq!(secret.len(), 43);
    assert_eq!(first["devices"], json!(["pump-7"]));
    let given = json!({"url": "http://127.0.0.1:9/hook", "secret": "a secret of my own choosing"});
    let second = stack.call("POST", &path, Some(vic), Some(&given)).await;
    assert_eq!(second.status, 201);
    assert!(second.json().get("secret").is_none());
    for bad in [
        json!({"url": "ftp://x"}),
        json!({"url": "http://x", "secret": "short"}),
        json!({"url": "http://x", "devices": []}),
        json!({"url": "http://x", "extra": 1}),
    ] {
        let reply = stack.call("POST", &path, Some(vic), Some(&bad)).await;
        assert_eq!(reply.status, 400, "{bad}");
    }

    // Listing shows the user's own, never a secret.
    let listed = stack.call("GET", &path, Some(vic), None).await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.json().as_array().map(Vec::len), Some(2));
    assert!(!String::from_utf8_lossy(&listed.body).contains(&secret));
    assert_eq!(
        stack.call("GET", &path, Some(ada), None).await.json(),
        json!([]),
        "another user sees none of them"
    );
    assert_eq!(
        stack.owner("GET", &path, None).await.status,
        403,
        "a policy is no user"
    );

    // Deleting: only the owner, once.
    let id = first["id"].as_str().expect("id");
    let one = format!("/access/me/subscriptions/{id}?{API}");
    assert_eq!(
        stack.call("DELETE", &one, Some(ada), None).await.status,
        404
    );
    assert_eq!(
        stack.call("DELETE", &one, Some(vic), None).await.status,
        204
    );
    assert_eq!(
        stack.call("DELETE", &one, Some(vic), None).await.status,
        404
    );
    let left = store.all().await.expect("all");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].secret.expose(), "a secret of my own choosing");

    // Deleting the user deletes their subscriptions.
    assert_eq!(
        stack
            .owner("DELETE", &format!("/access/users/vic?{API}"), None)
            .await
            .status,
        204
    );
    assert!(store.all().await.expect("all").is_empty());
}
