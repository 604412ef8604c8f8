//! The hub side of the actors' commands: records an actor writes to `commands` reach a device
//! session on an in-process hub, and method answers and failures come back on the reply topic.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use iot_sdk::commands::{CommandConfig, CommandExecutor};
use iot_sdk::core::{
    GroupName, PartitionId, Producer, ReadLimits, Record, Topics, partition_for_key,
};
use iot_sdk::gateway::testkit::{Fixture, StoreFixture, within};
use iot_sdk::gateway::{DeviceSession, Gateway, Hub, SessionEvent, SessionOptions, Subscription};
use iot_sdk::identity::{IdentityStore, MemoryIdentityStore, Presented};
use iot_sdk::stream::actors::command::{Command, CommandRecord, MethodResponse};
use iot_sdk::stream::{HostConfig, ProcessorHost, RunningGroup};
use serde_json::json;
use tokio::sync::mpsc;

const HOST: &str = "hub.test.local";
const REPLIES: &str = "actor-messages";

/// What the device saw, in order.
#[derive(Debug, PartialEq)]
enum Seen {
    C2d { id: String, body: String },
    Method { name: String },
    Desired(serde_json::Value),
}

/// Answers every method with 200 `{"ok": true, "name": …}` and reports what it saw.
fn run_device(session: Box<dyn DeviceSession>) -> mpsc::UnboundedReceiver<Seen> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match session.next_event().await {
                Ok(SessionEvent::C2d(delivery)) => {
                    let body = String::from_utf8_lossy(&delivery.payload).into_owned();
                    session.complete(delivery.lock_token).await.unwrap();
                    let _ = tx.send(Seen::C2d {
                        id: delivery.message_id,
                        body,
                    });
                }
                Ok(SessionEvent::Method(request)) => {
                    let _ = tx.send(Seen::Method {
                        name: request.name.clone(),
                    });
                    session
                        .respond_method(iot_sdk::gateway::MethodResponse {
                            request_id: request.request_id,
                            status: 200,
                            payload: format!(r#"{{"ok":true,"name":"{}"}}"#, request.name).into(),
                        })
                        .await
                        .unwrap();
                }
                Ok(SessionEvent::DesiredPatch(patch)) => {
                    let _ = tx.send(Seen::Desired(patch.patch));
                }
                _ => return,
            }
        }
    });
    rx
}

async fn send(topics: &Topics, command: CommandRecord) {
    let log = topics.topic("commands").await.unwrap();
    Producer::new(log)
        .send(command.to_record().unwrap())
        .await
        .unwrap();
}

fn command(device: &str, id: &str, command: Command) -> CommandRecord {
    CommandRecord {
        device: device.into(),
        id: id.into(),
        issuer: "room".into(),
        reply_to: Some(REPLIES.into()),
        command,
    }
}

async fn replies(topics: &Topics) -> Vec<MethodResponse> {
    let log = topics.topic(REPLIES).await.unwrap();
    let mut out = Vec::new();
    for p in 0..log.partition_count() {
        let p = PartitionId(p);
        let from = log.earliest_offset(p).await.unwrap();
        for stored in log.read(p, from, ReadLimits::default()).await.unwrap() {
            out.push(
                MethodResponse::from_record(&stored.record)
                    .unwrap()
                    .unwrap(),
            );
        }
    }
    out.sort_by(|a, b| a.command_id.cmp(&b.command_id));
    out
}

async fn start(host: &ProcessorHost, hub: &Arc<Hub>) -> RunningGroup {
    let executor = CommandExecutor::new(hub.clone())
        .with_config(CommandConfig::default().default_method_timeout(Duration::from_secs(5)));
    host.start(
        "commands",
        GroupName::new("hub-commands").unwrap(),
        Arc::new(executor),
        HostConfig::default(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn commands_reach_the_device_and_answers_come_back_on_the_reply_topic() {
    let identity: Arc<dyn IdentityStore> = Arc::new(MemoryIdentityStore::new());
    let hub = Arc::new(Hub::builder(identity.clone(), HOST).build().await.unwrap());
    let fx = StoreFixture {
        identity,
        telemetry: hub.telemetry_log().clone(),
        host: HOST.into(),
    };
    let (online, token) = fx.provision("sensor").await;
    let (offline, _) = fx.provision("asleep").await;
    let session = hub
        .connect(
            &online,
            Presented::SasToken(&token),
            SessionOptions::default(),
        )
        .await
        .unwrap();
    for kind in [
        Subscription::C2d,
        Subscription::Methods,
        Subscription::DesiredPatches,
    ] {
        session.subscribe(kind).await.unwrap();
    }
    let mut seen = run_device(session);
    let topics = hub.topics().clone();
    let host = ProcessorHost::new(topics.clone());
    let group = start(&host, &hub).await;

    let online_id = online.as_str();
    send(
        &topics,
        command(
            online_id,
            "room@p0:o1#0",
            Command::C2d {
                body: r#"{"led":"on"}"#.into(),
                properties: BTreeMap::new(),
            },
        ),
    )
    .await;
    send(
        &topics,
        command(
            online_id,
            "room@p0:o1#1",
            Command::DirectMethod {
                method: "reboot".into(),
                payload: json!({"delay": 1}),
                timeout_ms: 0,
            },
        ),
    )
    .await;
    send(
        &topics,
        command(
            online_id,
            "room@p0:o1#2",
            Command::DesiredPatch {
                patch: json!({"fan": {"speed": 3}}),
            },
        ),
    )
    .await;
    send(
        &topics,
        command(
            offline.as_str(),
            "room@p0:o2#0",
            Command::DirectMethod {
                method: "reboot".into(),
                payload: json!({}),
                timeout_ms: 30_000,
            },
        ),
    )
    .await;
    send(
        &topics,
        command(
            "nobody",
            "room@p0:o3#0",
            Command::C2d {
                body: "x".into(),
                properties: BTreeMap::new(),
            },
        ),
    )
    .await;
    within(group.wait_caught_up()).await.unwrap();

    // The device saw its three commands in the order they were written.
    assert_eq!(
        within(seen.recv()).await.unwrap(),
        Seen::C2d {
            id: "room@p0:o1#0".into(),
            body: r#"{"led":"on"}"#.into()
        }
    );
    assert_eq!(
        within(seen.recv()).await.unwrap(),
        Seen::Method {
            name: "reboot".into()
        }
    );
    assert_eq!(
        within(seen.recv()).await.unwrap(),
        Seen::Desired(json!({"fan": {"speed": 3}}))
    );
    assert_eq!(
        hub.twins().get(&online).await.unwrap().desired.properties,
        json!({"fan": {"speed": 3}})
    );

    // The method's answer, the offline device's 404 and the unknown device's 404 came back,
    // keyed by the device with the command's id; the C2D and the patch that went through did
    // not answer.
    let answers = replies(&topics).await;
    let summary: Vec<(&str, &str, i32)> = answers
        .iter()
        .map(|r| (r.command_id.as_str(), r.device.as_str(), r.status))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("room@p0:o1#1", online_id, 200),
            ("room@p0:o2#0", offline.as_str(), 404),
            ("room@p0:o3#0", "nobody", 404),
        ]
    );
    assert_eq!(answers[0].payload, json!({"ok": true, "name": "reboot"}));
    assert!(answers[1].payload["error"].is_string());

    // A restarted consumer resumes after what it committed: nothing is executed again.
    group.shutdown().await.unwrap();
    let group = start(&host, &hub).await;
    send(
        &topics,
        command(
            online_id,
            "room@p0:o4#0",
            Command::C2d {
                body: "second".into(),
                properties: BTreeMap::new(),
            },
        ),
    )
    .await;
    within(group.wait_caught_up()).await.unwrap();
    assert_eq!(
        within(seen.recv()).await.unwrap(),
        Seen::C2d {
            id: "room@p0:o4#0".into(),
            body: "second".into()
        }
    );
    assert_eq!(replies(&topics).await.len(), 3);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(seen.try_recv().is_err(), "a command ran twice");
    group.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_unanswered_method_times_out_without_holding_other_devices() {
    let identity: Arc<dyn IdentityStore> = Arc::new(MemoryIdentityStore::new());
    let hub = Arc::new(Hub::builder(identity.clone(), HOST).build().await.unwrap());
    let fx = StoreFixture {
        identity,
        telemetry: hub.telemetry_log().clone(),
        host: HOST.into(),
    };
    let topics = hub.topics().clone();
    let partitions = topics.topic("commands").await.unwrap().partition_count();
    let (mute, mute_token) = fx.provision("mute").await;
    // Both devices in one partition, so that their commands share a worker (and a batch).
    let (chatty, chatty_token) = loop {
        let (id, token) = fx.provision("chatty").await;
        if partition_for_key(id.as_str(), partitions)
            == partition_for_key(mute.as_str(), partitions)
        {
            break (id, token);
        }
    };
    // The mute device listens for methods and never answers.
    let mute_session = hub
        .connect(
            &mute,
            Presented::SasToken(&mute_token),
            SessionOptions::default(),
        )
        .await
        .unwrap();
    mute_session.subscribe(Subscription::Methods).await.unwrap();
    let mute_task = tokio::spawn(async move {
        while let Ok(event) = mute_session.next_event().await {
            if matches!(event, SessionEvent::Closed(_)) {
                return;
            }
        }
    });
    let chatty_session = hub
        .connect(
            &chatty,
            Presented::SasToken(&chatty_token),
            SessionOptions::default(),
        )
        .await
        .unwrap();
    chatty_session
        .subscribe(Subscription::Methods)
        .await
        .unwrap();
    let mut seen = run_device(chatty_session);

    for (device, id) in [(&mute, "a@p0:o1#0"), (&chatty, "a@p0:o2#0")] {
        send(
            &topics,
            command(
                device.as_str(),
                id,
                Command::DirectMethod {
                    method: "ping".into(),
                    payload: json!(null),
                    timeout_ms: 3_000,
                },
            ),
        )
        .await;
    }
    // Written before the consumer starts: one batch, the mute device's call first.
    let host = ProcessorHost::new(topics.clone());
    let started = tokio::time::Instant::now();
    let group = start(&host, &hub).await;
    // The chatty device gets its call while the mute one's is still pending.
    assert_eq!(
        within(seen.recv()).await.unwrap(),
        Seen::Method {
            name: "ping".into()
        }
    );
    assert!(started.elapsed() < Duration::from_millis(3_000));
    within(group.wait_caught_up()).await.unwrap();
    let statuses: Vec<(String, i32)> = replies(&topics)
        .await
        .into_iter()
        .map(|r| (r.command_id, r.status))
        .collect();
    assert_eq!(
        statuses,
        vec![("a@p0:o1#0".into(), 504), ("a@p0:o2#0".into(), 200)]
    );
    mute_task.abort();
    group.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_record_that_is_no_command_is_dead_lettered_and_a_command_runs_once() {
    let identity: Arc<dyn IdentityStore> = Arc::new(MemoryIdentityStore::new());
    let hub = Arc::new(Hub::builder(identity.clone(), HOST).build().await.unwrap());
    let fx = StoreFixture {
        identity,
        telemetry: hub.telemetry_log().clone(),
        host: HOST.into(),
    };
    let (device, token) = fx.provision("d").await;
    let session = hub
        .connect(
            &device,
            Presented::SasToken(&token),
            SessionOptions::default(),
        )
        .await
        .unwrap();
    session.subscribe(Subscription::C2d).await.unwrap();
    let mut seen = run_device(session);
    let topics = hub.topics().clone();
    let log = topics.topic("commands").await.unwrap();
    // Same key, so both land in one partition (and most likely one batch).
    let producer = Producer::new(log);
    producer
        .send(
            command(
                device.as_str(),
                "c-1",
                Command::C2d {
                    body: "once".into(),
                    properties: BTreeMap::new(),
                },
            )
            .to_record()
            .unwrap(),
        )
        .await
        .unwrap();
    // The actor's re-emission of c-1 (same id) in the same batch.
    producer
        .send(
            command(
                device.as_str(),
                "c-1",
                Command::C2d {
                    body: "once".into(),
                    properties: BTreeMap::new(),
                },
            )
            .to_record()
            .unwrap(),
        )
        .await
        .unwrap();
    producer
        .send(Record::new(device.as_str(), "not a command"))
        .await
        .unwrap();
    let host = ProcessorHost::new(topics.clone());
    let group = start(&host, &hub).await;
    within(group.wait_caught_up()).await.unwrap();
    assert_eq!(
        within(seen.recv()).await.unwrap(),
        Seen::C2d {
            id: "c-1".into(),
            body: "once".into()
        }
    );
    let dead = topics.topic("deadletter").await.unwrap();
    let mut dead_count = 0;
    for p in 0..dead.partition_count() {
        dead_count += dead.next_offset(PartitionId(p)).await.unwrap().get();
    }
    assert_eq!(dead_count, 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        seen.try_recv().is_err(),
        "c-1 ran twice (its copy, or the retried batch)"
    );
    group.shutdown().await.unwrap();
}
