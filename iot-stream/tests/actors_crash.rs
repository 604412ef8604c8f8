//! Crash test of the device actors: a child process runs the building's sensors and its rooms,
//! floors and building (two actor runtimes, two consumer groups) from a `FileLog` into a
//! `FileStateStore`; the parent kills it with SIGKILL at random moments and restarts it.
//!
//! Afterwards every sensor has counted each of its readings exactly once (state and checkpoint
//! are kept consistent), every node's state equals an uninterrupted run's, the room alert and its
//! command came out at least once and, re-emitted, with the same id (the at-least-once bound of
//! docs/actors.md), and the sensors' heartbeat reminders keep firing in a run after the crashes
//! without any new message.
#![allow(clippy::unwrap_used)]

mod building;
mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use building::{Node, NodeState, Sensor, SensorState};
use common::CrashChild;
use iot_core::storage::Durability;
use iot_core::{DeviceId, GroupName, PartitionId, ReadLimits, Topics};
use iot_stream::actors::{ActorConfig, ActorRuntime, command};
use iot_stream::{
    FileStateStore, FileStateStoreConfig, HostConfig, MemoryStateStore, ProcessorHost, StateStore,
};

const CHILD: CrashChild =
    CrashChild::new("actors_crash_child", "IOT_STREAM_ACTORS_CRASH_CHILD_DIR");
const ROUNDS: usize = 8;

fn host_config() -> HostConfig {
    HostConfig::default()
        .read_limits(ReadLimits::records(20))
        .tick_interval(Duration::from_millis(30))
}

fn actor_config() -> ActorConfig {
    ActorConfig::default()
        .flush_interval(Duration::from_millis(40))
        .max_dirty(64)
        .idle_timeout(Duration::from_millis(400))
}

/// Runs both runtimes until every level has handled everything, then `linger` more.
async fn run_building(topics: Arc<Topics>, store: Arc<dyn StateStore>, linger: Duration) {
    let tree = building::hierarchy().await;
    let host = ProcessorHost::new(topics.clone());
    let sensors = ActorRuntime::new(Sensor, store.clone(), actor_config().namespace("sensor"))
        .unwrap()
        .with_hierarchy(tree.clone());
    let nodes = ActorRuntime::new(Node, store, actor_config().namespace("node"))
        .unwrap()
        .with_hierarchy(tree);
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
    let messages = topics.topic("actor-messages").await.unwrap();
    loop {
        let mut before = Vec::new();
        for p in 0..messages.partition_count() {
            before.push(messages.next_offset(PartitionId(p)).await.unwrap());
        }
        sensors.wait_caught_up().await.unwrap();
        nodes.wait_caught_up().await.unwrap();
        let mut after = Vec::new();
        for p in 0..messages.partition_count() {
            after.push(messages.next_offset(PartitionId(p)).await.unwrap());
        }
        if before == after {
            break;
        }
    }
    // Every state written (the checkpoints reach the ends only then).
    for (group, topic) in [(&sensors, "telemetry"), (&nodes, "actor-messages")] {
        let log = topics.topic(topic).await.unwrap();
        loop {
            let mut ends = Vec::new();
            for p in 0..log.partition_count() {
                ends.push(log.next_offset(PartitionId(p)).await.unwrap());
            }
            if group.committed() == ends {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Past a flush interval and the idle timeout: states written, actors passivated, and the
    // heartbeats firing on passivated actors.
    tokio::time::sleep(linger).await;
    sensors.shutdown().await.unwrap();
    nodes.shutdown().await.unwrap();
}

fn file_store() -> FileStateStoreConfig {
    FileStateStoreConfig::default()
        .durability(Durability::OsBuffered)
        .compact_after_bytes(1 << 20)
}

/// The child: runs the building until done (or killed).
#[test]
#[ignore = "started by kill_9_keeps_actor_state_exact_and_reminders_going as a child process"]
fn actors_crash_child() {
    let Some(dir) = CHILD.dir() else {
        return;
    };
    common::ack(common::STARTED);
    common::runtime().block_on(async move {
        let topics = Arc::new(common::file_topics(&dir));
        let store = FileStateStore::open(dir.join("state"), file_store())
            .await
            .unwrap();
        run_building(topics, Arc::new(store), Duration::from_millis(1200)).await;
        common::ack(common::DONE);
    });
}

async fn sensor_states(store: &dyn StateStore) -> Vec<(String, SensorState)> {
    let mut out = Vec::new();
    for (f, r, s) in building::sensors() {
        let id = building::sensor_id(f, r, s);
        out.push((id.clone(), state(store, "sensor", &id).await));
    }
    out
}

async fn state<S: serde::de::DeserializeOwned>(store: &dyn StateStore, ns: &str, id: &str) -> S {
    let record = store
        .last_known(&DeviceId::new(format!("{ns}:{id}")).unwrap())
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no state for {ns}:{id}"));
    serde_json::from_str(record.values()["state"].as_str().unwrap()).unwrap()
}

fn node_ids() -> Vec<String> {
    let mut ids = vec!["building=B1".to_owned()];
    for f in 1..=building::FLOORS {
        ids.push(building::floor_node(f));
        for r in 1..=building::ROOMS {
            ids.push(building::room_node(f, r));
        }
    }
    ids
}

#[test]
fn kill_9_keeps_actor_state_exact_and_reminders_going() {
    let rt = common::runtime();
    let dir = tempfile::tempdir().unwrap();
    let input = building::readings(ROUNDS);

    // The uninterrupted run, in memory.
    let expected = rt.block_on(async {
        let topics = Arc::new(Topics::memory(2));
        iot_core::Producer::new(topics.topic("telemetry").await.unwrap())
            .send_batch(input.clone())
            .await
            .unwrap();
        let store = Arc::new(MemoryStateStore::new());
        run_building(topics, store.clone(), Duration::from_millis(100)).await;
        store
    });

    rt.block_on(common::write_input(dir.path(), "telemetry", input));
    common::kill_repeatedly(&CHILD, dir.path());
    // A run to completion after the crashes; then the heartbeats as they stand.
    CHILD.run_to_completion(dir.path(), common::KILLS);
    let heartbeats_before: Vec<u64> = rt.block_on(async {
        let store = FileStateStore::open(dir.path().join("state"), FileStateStoreConfig::default())
            .await
            .unwrap();
        sensor_states(&store)
            .await
            .into_iter()
            .map(|(_, s)| s.heartbeats)
            .collect()
    });
    // One more run: no new message, yet every sensor's reminder fires again.
    CHILD.run_to_completion(dir.path(), common::KILLS + 1);

    rt.block_on(async {
        let store = FileStateStore::open(dir.path().join("state"), FileStateStoreConfig::default())
            .await
            .unwrap();
        for ((id, got), before) in sensor_states(&store)
            .await
            .into_iter()
            .zip(heartbeats_before)
        {
            let want: SensorState = state(&*expected, "sensor", &id).await;
            assert_eq!(
                got.count, ROUNDS as u64,
                "{id}: each reading counted exactly once"
            );
            assert_eq!((&got.window, got.sum), (&want.window, want.sum), "{id}");
            assert!(
                got.heartbeats > before,
                "{id}: its reminder fired after the restart"
            );
        }
        for id in node_ids() {
            let got: NodeState = state(&store, "node", &id).await;
            let want: NodeState = state(&*expected, "node", &id).await;
            assert_eq!(got, want, "{id}");
        }

        // The alert and the command: at least once, and every copy with the same id.
        let topics = common::file_topics(dir.path());
        let alerts = common::read_all(&topics, building::ALERTS).await;
        let hot_room = building::room_node(building::HOT.0, building::HOT.1);
        assert!(!alerts.is_empty());
        assert!(alerts.iter().all(|a| a.record.key == hot_room));
        let ids: BTreeSet<&str> = alerts
            .iter()
            .map(|a| {
                a.record
                    .headers
                    .get(iot_stream::actors::MESSAGE_ID_HEADER)
                    .unwrap()
            })
            .collect();
        assert_eq!(ids.len(), 1, "re-emitted alerts carry the first one's id");
        assert!(
            alerts.len() <= 1 + common::KILLS,
            "at most one copy per crash"
        );
        let commands = common::read_all(&topics, "commands").await;
        let ids: BTreeSet<&str> = commands
            .iter()
            .map(|c| c.record.headers.get(command::ID_HEADER).unwrap())
            .collect();
        assert!(!commands.is_empty());
        assert_eq!(ids.len(), 1);
    });
}
