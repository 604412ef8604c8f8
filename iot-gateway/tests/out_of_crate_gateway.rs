//! A `Gateway` an integrator would write — outside this crate, against the public API alone —
//! must pass the whole gateway conformance suite (`iot_gateway::testkit::run_all`).
//!
//! `MapGateway` is deliberately not the `Hub`: every table is a `Mutex<BTreeMap>` (sessions, the
//! per-device inbox with its locks, twins, pending method calls, feedback), devices authenticate
//! through `iot_identity::Authenticator`, telemetry goes to a `MemoryLog`, and a task follows the
//! identity store's changes to cut revoked sessions. It has no throttling and keeps nothing
//! across a restart. The values it hands to devices are built with the crate's public
//! constructors (`C2dDelivery::new`, `MethodRequest::new`, `DesiredPatch::new`/`full`,
//! `Feedback::new`), and its telemetry stamps with `message::header`.
//!
//! * `out_of_crate_gateway/gateway.rs` — the state and the service side (`Gateway`).
//! * `out_of_crate_gateway/session.rs` — one device's session (`DeviceSession`).
//! * `out_of_crate_gateway/inbox.rs` — the C2D inbox: FIFO, locks, delivery counts, expiry.

#[path = "out_of_crate_gateway/gateway.rs"]
mod gateway;
#[path = "out_of_crate_gateway/inbox.rs"]
mod inbox;
#[path = "out_of_crate_gateway/session.rs"]
mod session;

use std::sync::Arc;

use iot_core::{ReadLimits, partition_for_key};
use iot_gateway::message::header;
use iot_gateway::testkit::{self, Fixture, Limits, StoreFixture};
use iot_gateway::{CloseReason, Gateway, SessionEvent, SessionOptions};
use iot_identity::{IdentityStore, MemoryIdentityStore, Presented};

use crate::gateway::{Config, MapGateway};

const HOST: &str = "oc.gateway.test";

/// What `MapGateway` was configured with, in the suite's terms.
fn limits(config: &Config) -> Limits {
    Limits::default()
        .max_inbox_depth(config.inbox.max_depth)
        .max_delivery_count(config.inbox.max_delivery_count)
        .lock_duration(config.inbox.lock_duration)
        .max_message_bytes(config.max_message_bytes)
}

fn gateway() -> (MapGateway, StoreFixture, Limits) {
    let identity: Arc<dyn IdentityStore> = Arc::new(MemoryIdentityStore::new());
    let config = Config::default();
    let limits = limits(&config);
    let gw = MapGateway::new(Arc::clone(&identity), HOST, config).expect("gateway");
    let fixture = StoreFixture {
        identity,
        telemetry: Arc::clone(gw.telemetry_log()),
        host: HOST.into(),
    };
    (gw, fixture, limits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_crate_gateway_passes_the_suite() {
    let (gw, fx, limits) = gateway();
    testkit::run_all(&gw, &fx, limits).await;
}

#[tokio::test(flavor = "current_thread")]
async fn an_out_of_crate_gateway_passes_the_suite_boxed_on_one_thread() {
    let (gw, fx, limits) = gateway();
    let boxed: Box<dyn Gateway> = Box::new(gw);
    testkit::run_all(&boxed, &fx, limits).await;
}

/// What the suite does not look at: connection events, and a dropped session closing itself.
#[tokio::test]
async fn sessions_write_connection_events_and_close_when_dropped() {
    let (gw, fx, _) = gateway();
    let (id, token) = fx.provision("events").await;
    let connect = || gw.connect(&id, Presented::SasToken(&token), SessionOptions::default());
    let first = connect().await.expect("connect");
    let second = connect().await.expect("connect");
    assert_eq!(first.close_reason(), Some(CloseReason::TakenOver));
    drop(first);
    drop(second);
    assert!(gw.connected_devices().await.expect("list").is_empty());
    // The dropped session's disconnect event is written on a task.
    let log = gw.events_log();
    let p = partition_for_key(id.as_str(), log.partition_count());
    let events = testkit::within(async {
        loop {
            let from = log.earliest_offset(p).await.expect("earliest");
            let batch = log
                .read(p, from, ReadLimits::default())
                .await
                .expect("read");
            let events: Vec<(String, Option<String>)> = batch
                .iter()
                .filter(|r| r.record.key == id.as_str())
                .map(|r| {
                    let h = &r.record.headers;
                    let event = h.get(header::EVENT).unwrap_or_default().to_owned();
                    (event, h.get(header::REASON).map(str::to_owned))
                })
                .collect();
            if events.len() == 4 {
                break events;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    let e = |event: &str, reason: Option<&str>| (event.to_owned(), reason.map(str::to_owned));
    assert_eq!(
        events,
        [
            e("connected", None),
            e("disconnected", Some("taken-over")),
            e("connected", None),
            e("disconnected", Some("client-closed")),
        ]
    );
    // A dropped session's device can connect again and is listed.
    let again = connect().await.expect("connect");
    assert_eq!(
        gw.connected_devices().await.expect("list"),
        std::slice::from_ref(&id)
    );
    again.close().await;
    assert!(matches!(
        again.next_event().await,
        Ok(SessionEvent::Closed(CloseReason::ClientClosed))
    ));
}
