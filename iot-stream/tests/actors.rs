//! Device actors (docs/actors.md): the building hierarchy raising a room alert and floor
//! summaries; activation, passivation and reactivation; reminders across passivation and
//! restarts; method answers; and, against a `HashMap` model, state after messages, flushes,
//! passivations and crashes.
#![allow(clippy::unwrap_used)]

mod building;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use building::{Node, NodeState, Sensor, SensorState};
use iot_core::{
    DeviceId, GroupName, Log, PartitionId, Producer, ReadLimits, Record, StoredRecord, Topics,
};
use iot_stream::actors::{
    Actor, ActorConfig, ActorContext, ActorRuntime, CommandRecord, MethodResponse, command,
};
use iot_stream::{HostConfig, MemoryStateStore, ProcessorHost, RunningGroup, StateStore};
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

fn host_config() -> HostConfig {
    HostConfig::default()
        .read_limits(ReadLimits::records(50))
        .tick_interval(Duration::from_millis(20))
}

async fn all(topics: &Topics, topic: &str) -> Vec<StoredRecord> {
    let log = topics.topic(topic).await.unwrap();
    let mut out = Vec::new();
    for p in 0..log.partition_count() {
        let end = log.next_offset(PartitionId(p)).await.unwrap();
        if end.0 > 0 {
            out.extend(
                log.read(
                    PartitionId(p),
                    iot_core::Offset(0),
                    ReadLimits::records(1_000_000),
                )
                .await
                .unwrap(),
            );
        }
        assert_eq!(
            out.iter().filter(|r| r.partition == PartitionId(p)).count() as u64,
            end.0
        );
    }
    out
}

async fn stored<S: DeserializeOwned>(
    store: &dyn StateStore,
    namespace: &str,
    id: &str,
) -> Option<S> {
    let record = store
        .last_known(&DeviceId::new(format!("{namespace}:{id}")).unwrap())
        .await
        .unwrap()?;
    Some(serde_json::from_str(record.values()["state"].as_str().unwrap()).unwrap())
}

/// Waits until `group` has committed everything in `topic`: after a restart,
/// `wait_caught_up` does not wait for the replay of what the previous run processed, and the
/// actors' states are written (and the checkpoint moved) only when they flush.
async fn wait_committed(topics: &Topics, topic: &str, group: &RunningGroup) {
    let log = topics.topic(topic).await.unwrap();
    for _ in 0..2000 {
        let mut ends = Vec::new();
        for p in 0..log.partition_count() {
            ends.push(log.next_offset(PartitionId(p)).await.unwrap());
        }
        if group.committed() == ends {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!(
        "group {} did not commit everything in {topic}",
        group.group()
    );
}

/// Waits until the sensors and every level above them have handled everything.
async fn settle(topics: &Topics, groups: &[&RunningGroup]) {
    let messages = topics.topic("actor-messages").await.unwrap();
    loop {
        let mut before = Vec::new();
        for p in 0..messages.partition_count() {
            before.push(messages.next_offset(PartitionId(p)).await.unwrap());
        }
        for g in groups {
            g.wait_caught_up().await.unwrap();
        }
        let mut after = Vec::new();
        for p in 0..messages.partition_count() {
            after.push(messages.next_offset(PartitionId(p)).await.unwrap());
        }
        if before == after {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_building_raises_one_room_alert_and_summarises_its_floors() {
    let topics = Arc::new(Topics::memory(4));
    let store = Arc::new(MemoryStateStore::new());
    let tree = building::hierarchy().await;
    // 300 sensors, 30 rooms, 3 floors.
    assert_eq!(tree.len(), 300 + 30 + 3);
    let host = ProcessorHost::new(topics.clone());
    let config = ActorConfig::default().flush_interval(Duration::from_millis(50));
    let sensors = ActorRuntime::new(
        Sensor,
        store.clone(),
        config.clone().namespace("sensor").reply_topic("telemetry"),
    )
    .unwrap()
    .with_hierarchy(tree.clone());
    // A room's method call is answered to the device's actor, which reads `telemetry`.
    let nodes = ActorRuntime::new(
        Node,
        store.clone(),
        config.namespace("node").reply_topic("telemetry"),
    )
    .unwrap()
    .with_hierarchy(tree.clone());
    let sensor_stats = sensors.stats();
    let sensors = host
        .start(
            "telemetry",
            GroupName::new("sensors").unwrap(),
            Arc::new(sensors),
            host_config(),
        )
        .await
        .unwrap();
    let nodes = host
        .start(
            "actor-messages",
            GroupName::new("nodes").unwrap(),
            Arc::new(nodes),
            host_config(),
        )
        .await
        .unwrap();
    let rounds = 6;
    Producer::new(topics.topic("telemetry").await.unwrap())
        .send_batch(building::readings(rounds))
        .await
        .unwrap();
    settle(&topics, &[&sensors, &nodes]).await;

    // One alert, for the hot room, from its window average.
    let alerts = all(&topics, building::ALERTS).await;
    let hot_room = building::room_node(building::HOT.0, building::HOT.1);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].record.key, hot_room);
    let alert: serde_json::Value = serde_json::from_slice(&alerts[0].record.payload).unwrap();
    assert!(alert["avg"].as_f64().unwrap() > building::THRESHOLD);

    // And one direct method to a sensor of that room, with a reply-to.
    let commands = all(&topics, "commands").await;
    assert_eq!(commands.len(), 1);
    let cmd = CommandRecord::from_record(&commands[0].record).unwrap();
    assert!(
        cmd.device
            .starts_with(&format!("t-{}-{}-", building::HOT.0, building::HOT.1))
    );
    assert_eq!(cmd.issuer, hot_room);
    assert_eq!(cmd.reply_to.as_deref(), Some("telemetry"));

    // The hub answers on the reply-to topic; the answer reaches the sensor's actor.
    Producer::new(topics.topic("telemetry").await.unwrap())
        .send(
            MethodResponse {
                device: cmd.device.clone(),
                command_id: cmd.id.clone(),
                status: 200,
                payload: serde_json::json!({"ok": true}),
            }
            .to_record()
            .unwrap(),
        )
        .await
        .unwrap();
    settle(&topics, &[&sensors, &nodes]).await;
    // Written once their next tick comes.
    wait_committed(&topics, "telemetry", &sensors).await;
    wait_committed(&topics, "actor-messages", &nodes).await;

    // The floor summaries: 10 rooms each; floor 2 has one room in alert.
    for f in 1..=building::FLOORS {
        let floor: NodeState = stored(&*store, "node", &building::floor_node(f))
            .await
            .unwrap();
        assert_eq!(floor.children.len(), building::ROOMS);
        let summary = floor.summary();
        let want_alerting = u32::from(f == building::HOT.0);
        assert_eq!(summary.alerting, want_alerting, "floor {f}");
        assert!(
            summary.avg > 19.0 && summary.avg < 25.0,
            "floor {f}: {summary:?}"
        );
    }
    let building_state: NodeState = stored(&*store, "node", "building=B1").await.unwrap();
    assert_eq!(building_state.children.len(), building::FLOORS);
    assert_eq!(building_state.summary().alerting, 1);
    // Each sensor counted each of its readings once, and kept its window.
    for (f, r, s) in building::sensors() {
        let id = building::sensor_id(f, r, s);
        let state: SensorState = stored(&*store, "sensor", &id).await.unwrap();
        assert_eq!(state.count, rounds as u64, "{id}");
        let want: Vec<f64> = (rounds - building::WINDOW..rounds)
            .map(|round| building::temperature(f, r, s, round))
            .collect();
        assert_eq!(Vec::from(state.window.clone()), want, "{id}");
        assert_eq!(
            state.method_status,
            (id == cmd.device).then_some(200),
            "{id}"
        );
    }
    let counts = sensor_stats.snapshot();
    assert_eq!(counts.messages, 300 * rounds as u64 + 1);
    assert_eq!(counts.activations, 300);
    sensors.shutdown().await.unwrap();
    nodes.shutdown().await.unwrap();
}

/// Counts messages and reminder firings; sets a periodic reminder on its first message.
#[derive(Debug)]
struct Counter {
    period: Duration,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Count {
    messages: u64,
    sum: i64,
    fired: u64,
}

impl Actor for Counter {
    type State = Count;

    fn on_message(
        &self,
        state: &mut Count,
        message: &StoredRecord,
        ctx: &mut ActorContext<'_>,
    ) -> iot_stream::Result<()> {
        let v: i64 = std::str::from_utf8(&message.record.payload)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| iot_stream::Error::InvalidInput {
                reason: "not a number".into(),
            })?;
        state.messages += 1;
        state.sum += v;
        if !self.period.is_zero() && ctx.reminder_due("tick").is_none() {
            ctx.set_reminder("tick", ctx.now(), Some(self.period));
        }
        Ok(())
    }

    fn on_reminder(
        &self,
        state: &mut Count,
        _reminder: &str,
        _ctx: &mut ActorContext<'_>,
    ) -> iot_stream::Result<()> {
        state.fired += 1;
        Ok(())
    }
}

async fn count_of(store: &dyn StateStore, id: &str) -> Count {
    stored(store, "counter", id).await.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_actors_are_passivated_and_reminders_wake_them_across_restarts() {
    let topics = Arc::new(Topics::memory(2));
    let store = Arc::new(MemoryStateStore::new());
    let host = ProcessorHost::new(topics.clone());
    let config = ActorConfig::default()
        .namespace("counter")
        .idle_timeout(Duration::from_millis(40))
        .flush_interval(Duration::from_millis(10));
    let start = |config: ActorConfig| {
        let runtime = ActorRuntime::new(
            Counter {
                period: Duration::from_millis(150),
            },
            store.clone(),
            config,
        )
        .unwrap();
        let stats = runtime.stats();
        let host = host.clone();
        async move {
            let group = host
                .start(
                    "input",
                    GroupName::new("counters").unwrap(),
                    Arc::new(runtime),
                    host_config(),
                )
                .await
                .unwrap();
            (group, stats)
        }
    };
    let (group, stats) = start(config.clone()).await;
    let input = Producer::new(topics.topic("input").await.unwrap());
    for i in 0..20 {
        input
            .send(Record::new(format!("c-{}", i % 4), i.to_string()))
            .await
            .unwrap();
    }
    group.wait_caught_up().await.unwrap();
    // Reminders fire while the actors sit passivated between firings.
    let before = eventually(|| async {
        let counts = stats.snapshot();
        let all = all_counts(&*store).await;
        (counts.passivations >= 4 && counts.activations > 4 && all.iter().all(|c| c.fired >= 2))
            .then_some(all)
    })
    .await;
    for c in &before {
        assert_eq!(c.messages, 5);
    }
    // A crash: the workers are dropped. A new process's runtime fires the same reminders.
    drop(group);
    let (group, stats) = start(config).await;
    let after = eventually(|| async {
        let all = all_counts(&*store).await;
        before
            .iter()
            .zip(&all)
            .all(|(b, a)| a.fired >= b.fired + 2)
            .then_some(all)
    })
    .await;
    for a in &after {
        assert_eq!(a.messages, 5, "no message counted twice");
    }
    assert!(stats.snapshot().reminders_fired >= 8);
    group.shutdown().await.unwrap();
}

/// Polls `check` until it gives a value (at most 20 s: reminders run on wall-clock time, and a
/// loaded machine slows them down).
async fn eventually<T, F, Fut>(check: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..2000 {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 20 s");
}

async fn all_counts(store: &dyn StateStore) -> Vec<Count> {
    let mut out = Vec::new();
    for i in 0..4 {
        out.push(count_of(store, &format!("c-{i}")).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_to_an_unusable_actor_id_is_dead_lettered_and_others_go_on() {
    let topics = Arc::new(Topics::memory(1));
    let store = Arc::new(MemoryStateStore::new());
    let runtime = ActorRuntime::new(
        Counter {
            period: Duration::ZERO,
        },
        store.clone(),
        ActorConfig::default()
            .namespace("counter")
            .flush_interval(Duration::ZERO),
    )
    .unwrap();
    let group = ProcessorHost::new(topics.clone())
        .start(
            "input",
            GroupName::new("counters").unwrap(),
            Arc::new(runtime),
            host_config().initial_backoff(Duration::from_millis(1)),
        )
        .await
        .unwrap();
    let input = Producer::new(topics.topic("input").await.unwrap());
    input
        .send_batch(vec![
            Record::new("a", "1"),
            Record::new("bad/id", "2"),
            Record::new("a", "not a number"),
            Record::new("a", "3"),
        ])
        .await
        .unwrap();
    group.wait_caught_up().await.unwrap();
    wait_committed(&topics, "input", &group).await;
    group.shutdown().await.unwrap();
    let a = count_of(&*store, "a").await;
    assert_eq!(
        (a.messages, a.sum),
        (2, 4),
        "each good message once, despite the retries"
    );
    let dead = all(&topics, "deadletter").await;
    let keys: BTreeSet<String> = dead.iter().map(|r| r.record.key.clone()).collect();
    assert_eq!(dead.len(), 2);
    assert_eq!(keys, BTreeSet::from(["a".to_owned(), "bad/id".to_owned()]));
    assert!(
        ActorRuntime::new(
            Counter {
                period: Duration::ZERO
            },
            store,
            ActorConfig::default().namespace("a:b")
        )
        .is_err()
    );
}

#[test]
fn command_headers_are_the_documented_ones() {
    assert_eq!(command::KIND_HEADER, "command-kind");
    assert_eq!(command::ID_HEADER, "command-id");
    assert_eq!(command::REPLY_TO_HEADER, "reply-to");
}

/// One step of the model test.
#[derive(Clone, Debug)]
enum Step {
    /// Messages (actor, value) appended and processed.
    Messages(Vec<(u8, i8)>),
    /// The process crashes (workers dropped, memory lost) and restarts.
    Crash,
    /// The group stops gracefully and restarts.
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => prop::collection::vec((0u8..6, any::<i8>()), 1..30).prop_map(Step::Messages),
        1 => Just(Step::Crash),
        1 => Just(Step::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever the flush points, passivations and crashes, every actor's stored state is the
    /// fold of its messages, each counted once (the `HashMap` model).
    #[test]
    fn state_equals_a_hashmap_model(
        steps in prop::collection::vec(step(), 1..8),
        max_dirty in 1usize..8,
        batch in 1usize..10,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let topics = Arc::new(Topics::memory(2));
            let store = Arc::new(MemoryStateStore::new());
            let host = ProcessorHost::new(topics.clone());
            let input = Producer::new(topics.topic("input").await.unwrap());
            // Flushes only when `max_dirty` actors changed (and at the end): crashes lose
            // unflushed state, which the replay must rebuild without counting anything twice.
            let config = ActorConfig::default()
                .namespace("counter")
                .idle_timeout(Duration::ZERO)
                .flush_interval(Duration::from_secs(3600))
                .max_dirty(max_dirty);
            let hc = HostConfig::default()
                .read_limits(ReadLimits::records(batch))
                .tick_interval(Duration::from_secs(3600));
            let start = |config: ActorConfig| {
                let runtime = ActorRuntime::new(Counter { period: Duration::ZERO }, store.clone(), config.clone()).unwrap();
                let host = host.clone();
                // The last run ticks, so that its states are written once it is idle.
                let hc = if config.flush_interval.is_zero() { hc.clone().tick_interval(Duration::from_millis(5)) } else { hc.clone() };
                async move {
                    host.start("input", GroupName::new("counters").unwrap(), Arc::new(runtime), hc).await.unwrap()
                }
            };
            let mut model: HashMap<String, (u64, i64)> = HashMap::new();
            let mut group = start(config.clone()).await;
            for step in steps {
                match step {
                    Step::Messages(messages) => {
                        let records = messages.iter().map(|(a, v)| {
                            let e = model.entry(format!("a-{a}")).or_default();
                            e.0 += 1;
                            e.1 += i64::from(*v);
                            Record::new(format!("a-{a}"), v.to_string())
                        }).collect();
                        input.send_batch(records).await.unwrap();
                        group.wait_caught_up().await.unwrap();
                    }
                    Step::Crash => {
                        drop(group);
                        group = start(config.clone()).await;
                    }
                    Step::Restart => {
                        group.shutdown().await.unwrap();
                        group = start(config.clone()).await;
                    }
                }
            }
            // The last run flushes after every batch; a marker message makes it write.
            drop(group);
            let last = start(config.clone().flush_interval(Duration::ZERO)).await;
            input.send(Record::new("marker", "0")).await.unwrap();
            last.wait_caught_up().await.unwrap();
            wait_committed(&topics, "input", &last).await;
            last.shutdown().await.unwrap();
            for (id, (messages, sum)) in &model {
                let got = count_of(&*store, id).await;
                assert_eq!((got.messages, got.sum), (*messages, *sum), "actor {id}");
            }
        });
    }
}
