//! Crash safety of `FileAccessStore`: a child process creates users, grants them a role and
//! deletes some (fsync durability), and is killed with SIGKILL at random moments, 12 times over
//! the same directory; after each kill the store is reopened and every acknowledged write must
//! be there, and nothing else but the one write in flight.
//!
//! The child runs on the shared kill -9 harness ([`iot_core::testkit::crash`]); it prints
//! `begin <op> <user>` before and `ack <op> <user>` after each write.

use std::collections::BTreeMap;
use std::time::Duration;

use iot_core::testkit::crash::{CrashChild, ack};
use iot_identity::access::{
    AccessStore, DeviceSet, FileAccessStore, FileAccessStoreConfig, Grant, NewUser, UserName,
};
use iot_identity::{PassphraseHash, PassphraseParams};

const CHILD: CrashChild = CrashChild::new("access_crash_child", "IOT_ACCESS_CRASH_CHILD_DIR");
const KILLS: usize = 12;

fn grant(user: &UserName) -> Grant {
    Grant::new(
        user.clone(),
        "viewer".parse().expect("role"),
        DeviceSet::All,
    )
}

#[test]
#[ignore = "the child process of kill_9_loses_no_acknowledged_access_write"]
fn access_crash_child() {
    let Some(dir) = CHILD.dir() else { return };
    let run = CHILD.round();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = FileAccessStore::open(&dir, FileAccessStoreConfig::default())
            .await
            .expect("child open");
        let hash = PassphraseHash::hash("pw", &PassphraseParams::INSECURE_FOR_TESTS).expect("hash");
        ack("ready");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        for k in 0u64.. {
            if std::time::Instant::now() > deadline {
                break;
            }
            let name: UserName = format!("r{run}-{k}").parse().expect("name");
            ack(format!("begin create {name}"));
            store
                .create_user(NewUser::new(name.clone(), hash.clone()))
                .await
                .expect("create");
            ack(format!("ack create {name}"));
            ack(format!("begin grant {name}"));
            store.add_grant(grant(&name)).await.expect("grant");
            ack(format!("ack grant {name}"));
            if k % 3 == 0 {
                ack(format!("begin delete {name}"));
                store.delete_user(&name).await.expect("delete");
                ack(format!("ack delete {name}"));
            }
        }
    });
}

/// What a user looks like in the store: absent, present without grant, present with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Known {
    Absent,
    Created,
    Granted,
}

async fn state_of(store: &FileAccessStore, name: &UserName) -> Known {
    match store.access_of(name).await.expect("read") {
        None => Known::Absent,
        Some(access) if access.grants.is_empty() => Known::Created,
        Some(_) => Known::Granted,
    }
}

#[test]
#[allow(clippy::print_stderr)]
fn kill_9_loses_no_acknowledged_access_write() {
    let dir = tempfile::tempdir().expect("dir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut model: BTreeMap<String, Known> = BTreeMap::new();
    let mut acks = 0usize;
    for run in 0..KILLS {
        let lines = CHILD.run_and_kill(dir.path(), run, 1..80);
        let mut in_flight: Option<(String, String)> = None;
        for line in &lines {
            match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["begin", op, name] => in_flight = Some((op.to_string(), name.to_string())),
                ["ack", op, name] => {
                    acks += 1;
                    in_flight = None;
                    let state = match *op {
                        "create" => Known::Created,
                        "grant" => Known::Granted,
                        "delete" => Known::Absent,
                        other => panic!("unknown op {other}"),
                    };
                    model.insert(name.to_string(), state);
                }
                _ => {}
            }
        }
        rt.block_on(async {
            let store = FileAccessStore::open(dir.path(), FileAccessStoreConfig::default())
                .await
                .unwrap_or_else(|e| panic!("reopen after kill {run}: {e}"));
            for (name, known) in &model {
                let actual = state_of(&store, &name.parse().expect("name")).await;
                if actual == *known {
                    continue;
                }
                // Only the write in flight may differ, and only by being complete.
                let (op, subject) = in_flight
                    .as_ref()
                    .unwrap_or_else(|| panic!("run {run}: {name} is {actual:?}, acknowledged {known:?}"));
                let complete = match op.as_str() {
                    "grant" => Known::Granted,
                    "delete" => Known::Absent,
                    _ => Known::Created,
                };
                assert!(
                    subject == name && actual == complete,
                    "run {run}: {name} is {actual:?}, acknowledged {known:?}, in flight {op} {subject}"
                );
            }
            // No user the model does not know, except an in-flight create.
            for user in store.list_users().await.expect("list") {
                let name = user.name.to_string();
                if !model.contains_key(&name) {
                    assert!(
                        in_flight.as_ref().is_some_and(|(op, s)| op == "create" && *s == name),
                        "run {run}: {name} was never acknowledged"
                    );
                }
            }
            // Settle the in-flight write in the model, as the store has it.
            if let Some((_, name)) = &in_flight {
                let settled = state_of(&store, &name.parse().expect("name")).await;
                model.insert(name.clone(), settled);
            }
        });
    }
    assert!(
        acks > KILLS,
        "the children wrote ({acks} acknowledged writes)"
    );
    eprintln!("{KILLS} kills, {acks} acknowledged access writes");
}
