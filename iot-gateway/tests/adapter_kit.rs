//! The adapter kit's session cache (`iot_gateway::adapter::TokenSessions`) over a hub, from
//! outside the crate as an adapter writer uses it.

use std::sync::Arc;
use std::time::Duration;

use iot_gateway::adapter::TokenSessions;
use iot_gateway::testkit::{Fixture, StoreFixture};
use iot_gateway::{Error, Gateway, Hub, SessionOptions, Telemetry};
use iot_identity::{IdentityStore, MemoryIdentityStore};

const HOST: &str = "kit.test.local";

async fn hub() -> (Arc<Hub>, StoreFixture) {
    let identity: Arc<dyn IdentityStore> = Arc::new(MemoryIdentityStore::new());
    let hub = Arc::new(
        Hub::builder(identity.clone(), HOST)
            .build()
            .await
            .expect("hub"),
    );
    let fx = StoreFixture {
        identity,
        telemetry: hub.telemetry_log().clone(),
        host: HOST.into(),
    };
    (hub, fx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_token_same_session_other_token_new_session_bad_token_changes_nothing() {
    let (hub, fx) = hub().await;
    let (id, token) = fx.provision("kit").await;
    let (_, other_device_token) = fx.provision("kit-other").await;
    let sessions = TokenSessions::new(hub.clone(), Duration::from_secs(60));

    let first = sessions
        .session(&id, &token, SessionOptions::default())
        .await
        .expect("session");
    let again = sessions
        .session(&id, &token, SessionOptions::default())
        .await
        .expect("session");
    assert!(
        Arc::ptr_eq(&first, &again),
        "the same token reuses the session"
    );

    // A refused token: unauthorized, and the cached session is still open and still cached.
    for bad in [other_device_token.as_str(), "nonsense", ""] {
        let refused = sessions.session(&id, bad, SessionOptions::default()).await;
        assert!(
            matches!(refused, Err(Error::Unauthorized { .. })),
            "{refused:?}"
        );
    }
    assert!(first.close_reason().is_none());
    let still = sessions
        .session(&id, &token, SessionOptions::default())
        .await
        .expect("session");
    assert!(Arc::ptr_eq(&first, &still));
    still
        .send_telemetry(Telemetry::new("via the kit"))
        .await
        .expect("telemetry");
    assert_eq!(fx.telemetry_of(&id).await.len(), 1);

    // A closed session is not handed out again: the token is presented to the gateway anew.
    first.close().await;
    let reopened = sessions
        .session(&id, &token, SessionOptions::default())
        .await
        .expect("session");
    assert!(!Arc::ptr_eq(&first, &reopened));
    assert!(hub.is_connected(&id).await.expect("connected"));

    sessions.close_all().await;
    assert!(reopened.close_reason().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_are_closed() {
    let (hub, fx) = hub().await;
    let (id, token) = fx.provision("kit-idle").await;
    let sessions = TokenSessions::new(hub.clone(), Duration::from_millis(100));
    let session = sessions
        .session(&id, &token, SessionOptions::default())
        .await
        .expect("session");
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while session.close_reason().is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle session was not closed");
    assert!(!hub.is_connected(&id).await.expect("connected"));
}
