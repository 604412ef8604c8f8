//! The hooks a layer above a `Hub` uses (hub/hooks.rs): the session observer, closing one
//! session by id, waking C2D delivery and pushing a desired patch written elsewhere.
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use iot_core::{DeviceId, Timestamp};
use iot_gateway::inbox::InboxMessage;
use iot_gateway::{
    CloseReason, DesiredPatch, DeviceSession, Gateway, Hub, SessionEvent, SessionObserver,
    SessionOptions, Subscription,
};
use iot_identity::{
    Credentials, IdentityStore, MemoryIdentityStore, NewIdentity, Presented, SymmetricKey,
};

#[derive(Debug, Default)]
struct Recorder {
    seen: Mutex<Vec<(String, u64, Option<CloseReason>)>>,
}

impl SessionObserver for Recorder {
    fn opened(&self, device: &DeviceId, session: u64) {
        self.seen
            .lock()
            .unwrap()
            .push((device.to_string(), session, None));
    }

    fn closed(&self, device: &DeviceId, session: u64, reason: &CloseReason) {
        self.seen
            .lock()
            .unwrap()
            .push((device.to_string(), session, Some(reason.clone())));
    }
}

async fn hub_with(observer: Arc<Recorder>) -> (Hub, DeviceId, SymmetricKey) {
    let identities = Arc::new(MemoryIdentityStore::new());
    let key = SymmetricKey::generate();
    let device: DeviceId = "dev-1".parse().unwrap();
    identities
        .create(NewIdentity::new(
            device.clone(),
            Credentials::SymmetricKeys {
                primary: key.clone(),
                secondary: SymmetricKey::generate(),
            },
        ))
        .await
        .unwrap();
    let hub = Hub::builder(identities, "hub.test.local")
        .session_observer(observer)
        .build()
        .await
        .unwrap();
    (hub, device, key)
}

async fn connect(hub: &Hub, device: &DeviceId, key: &SymmetricKey) -> Box<dyn DeviceSession> {
    hub.connect(
        device,
        Presented::SymmetricKey(&key.expose_base64()),
        SessionOptions::default(),
    )
    .await
    .unwrap()
}

async fn next(session: &dyn DeviceSession) -> SessionEvent {
    tokio::time::timeout(Duration::from_secs(10), session.next_event())
        .await
        .expect("an event in time")
        .unwrap()
}

#[tokio::test]
async fn the_observer_hears_every_open_and_close_and_close_device_closes_only_the_session_named() {
    let recorder = Arc::new(Recorder::default());
    let (hub, device, key) = hub_with(recorder.clone()).await;
    let first = connect(&hub, &device, &key).await;
    let id1 = hub.session_id(&device).unwrap();
    let second = connect(&hub, &device, &key).await;
    let id2 = hub.session_id(&device).unwrap();
    assert_ne!(id1, id2);
    assert_eq!(first.close_reason(), Some(CloseReason::TakenOver));

    // A close aimed at the session that is gone leaves the new one alone.
    assert!(
        !hub.close_device(&device, Some(id1), CloseReason::TakenOver)
            .await
    );
    assert_eq!(second.close_reason(), None);
    assert!(
        hub.close_device(&device, Some(id2), CloseReason::TakenOver)
            .await
    );
    assert_eq!(
        next(second.as_ref()).await,
        SessionEvent::Closed(CloseReason::TakenOver)
    );
    assert_eq!(hub.session_id(&device), None);
    assert!(
        !hub.close_device(&device, None, CloseReason::TakenOver)
            .await
    );

    let name = device.to_string();
    assert_eq!(
        *recorder.seen.lock().unwrap(),
        vec![
            (name.clone(), id1, None),
            (name.clone(), id2, None),
            (name.clone(), id1, Some(CloseReason::TakenOver)),
            (name, id2, Some(CloseReason::TakenOver)),
        ]
    );
}

#[tokio::test]
async fn wake_c2d_and_push_desired_reach_the_live_session_only() {
    let (hub, device, key) = hub_with(Arc::new(Recorder::default())).await;
    assert!(!hub.wake_c2d(&device));
    assert!(!hub.push_desired(&device, DesiredPatch::new(1, serde_json::json!({"a": 1}))));

    let session: Arc<dyn DeviceSession> = connect(&hub, &device, &key).await.into();
    session.subscribe(Subscription::C2d).await.unwrap();
    session
        .subscribe(Subscription::DesiredPatches)
        .await
        .unwrap();
    assert!(hub.push_desired(&device, DesiredPatch::new(4, serde_json::json!({"a": 1}))));
    let SessionEvent::DesiredPatch(patch) = next(session.as_ref()).await else {
        panic!("expected the desired patch");
    };
    assert_eq!(patch.version, 4);

    // A message written into the inbox behind the hub's back (as another hub over the same
    // store would) reaches the waiting session once it is woken.
    let waiting = {
        let session = session.clone();
        tokio::spawn(async move { next(session.as_ref()).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let now = Timestamp::now();
    hub.inbox()
        .enqueue(
            &device,
            InboxMessage::new("m-1", "hello", now, Duration::from_secs(60)),
            now,
            hub.config().inbox,
        )
        .await
        .unwrap();
    assert!(hub.wake_c2d(&device));
    let SessionEvent::C2d(message) = waiting.await.unwrap() else {
        panic!("expected the C2D message");
    };
    assert_eq!(&message.payload[..], b"hello");
}
