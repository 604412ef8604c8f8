//! Scheduled retention (`iot_core::retention`): it never removes a record a protected consumer
//! group has not committed unless the rule allows it, never removes a record the policy keeps,
//! and runs by itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use iot_core::retention::{self, RetentionRule, RetentionSchedule};
use iot_core::{
    GroupName, Log, MemoryLog, Offset, PartitionId, ReadLimits, Record, RetentionPolicy,
    StoredRecord, Timestamp, Topics,
};
use proptest::prelude::*;

const PARTITIONS: u32 = 2;

fn groups() -> [GroupName; 2] {
    [
        GroupName::new("archive").unwrap(),
        GroupName::new("routing").unwrap(),
    ]
}

#[derive(Clone, Debug)]
enum Op {
    Append {
        partition: u32,
        sizes: Vec<usize>,
    },
    /// Moves a group forward by a fraction (per mille) of what it has not committed.
    Commit {
        group: usize,
        partition: u32,
        permille: u64,
    },
    Retain {
        /// Per mille of the partition's time span kept by age, if bounded by age.
        age_permille: Option<u64>,
        max_bytes: Option<u64>,
        remove_uncommitted: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..PARTITIONS, prop::collection::vec(0usize..200, 1..8))
            .prop_map(|(partition, sizes)| Op::Append { partition, sizes }),
        2 => (0..2usize, 0..PARTITIONS, 0..=1000u64)
            .prop_map(|(group, partition, permille)| Op::Commit { group, partition, permille }),
        2 => (
            prop::option::of(0..=1200u64),
            prop::option::of(0..4000u64),
            any::<bool>(),
        )
            .prop_map(|(age_permille, max_bytes, remove_uncommitted)| Op::Retain {
                age_permille,
                max_bytes,
                remove_uncommitted,
            }),
    ]
}

async fn records(log: &MemoryLog, p: PartitionId) -> Vec<StoredRecord> {
    let mut out = Vec::new();
    let mut from = log.earliest_offset(p).await.unwrap();
    loop {
        let batch = log.read(p, from, ReadLimits::default()).await.unwrap();
        let Some(last) = batch.last() else { break };
        from = Offset(last.offset.0 + 1);
        out.extend(batch);
    }
    out
}

/// The model of the policy: the first offset it keeps in a partition holding `held`.
fn policy_keeps_from(
    held: &[StoredRecord],
    next: Offset,
    policy: &RetentionPolicy,
    now: Timestamp,
) -> Offset {
    let cutoff = policy.max_age.map(|age| now.saturating_sub(age));
    let mut bytes: u64 = held.iter().map(|r| r.record.size_bytes() as u64).sum();
    for r in held {
        let too_old = cutoff.is_some_and(|c| r.enqueued_time < c);
        let too_big = policy.max_bytes.is_some_and(|max| bytes > max);
        if !(too_old || too_big) {
            return r.offset;
        }
        bytes -= r.record.size_bytes() as u64;
    }
    next
}

async fn run(ops: Vec<Op>) {
    let log = MemoryLog::new(PARTITIONS).unwrap();
    let groups = groups();
    for op in ops {
        match op {
            Op::Append { partition, sizes } => {
                let batch = sizes
                    .into_iter()
                    .map(|n| Record::new("dev", vec![b'x'; n]))
                    .collect();
                log.append(PartitionId(partition), batch).await.unwrap();
            }
            Op::Commit {
                group,
                partition,
                permille,
            } => {
                let p = PartitionId(partition);
                let next = log.next_offset(p).await.unwrap().0;
                let at = log
                    .committed(&groups[group], p)
                    .await
                    .unwrap()
                    .map_or(0, |o| o.0);
                let to = at + (next - at) * permille / 1000;
                log.commit(&groups[group], p, Offset(to)).await.unwrap();
            }
            Op::Retain {
                age_permille,
                max_bytes,
                remove_uncommitted,
            } => {
                let now = Timestamp::now();
                let mut before = Vec::new();
                let mut oldest = now;
                for p in 0..PARTITIONS {
                    let held = records(&log, PartitionId(p)).await;
                    if let Some(first) = held.first() {
                        oldest = oldest.min(first.enqueued_time);
                    }
                    before.push(held);
                }
                let span = now.as_unix_micros() - oldest.as_unix_micros();
                let policy = RetentionPolicy {
                    max_age: age_permille.map(|m| Duration::from_micros(span * m / 1000)),
                    max_bytes,
                };
                let mut rule = RetentionRule::new("t", policy);
                for g in &groups {
                    rule = rule.protect(g.clone());
                }
                if remove_uncommitted {
                    rule = rule.remove_uncommitted();
                }
                retention::enforce(&log, &rule, now).await.unwrap();
                for p in 0..PARTITIONS {
                    let partition = PartitionId(p);
                    let held = &before[p as usize];
                    let next = log.next_offset(partition).await.unwrap();
                    let earliest_before = held.first().map_or(next, |r| r.offset);
                    let earliest = log.earliest_offset(partition).await.unwrap();
                    let keeps = policy_keeps_from(held, next, &policy, now).max(earliest_before);
                    assert!(
                        earliest <= keeps,
                        "partition {p}: removed up to {earliest:?}, the policy keeps from {keeps:?}"
                    );
                    if remove_uncommitted {
                        assert_eq!(
                            earliest, keeps,
                            "without protection the policy applies as it is"
                        );
                        continue;
                    }
                    let mut floor = next;
                    for g in &groups {
                        let c = log
                            .committed(g, partition)
                            .await
                            .unwrap()
                            .unwrap_or(Offset(0));
                        floor = floor.min(c);
                    }
                    let floor = floor.max(earliest_before);
                    assert!(
                        earliest <= floor,
                        "partition {p}: removed up to {earliest:?}, but a group has only committed {floor:?}"
                    );
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn never_removes_what_a_protected_group_has_not_committed(ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops));
    }
}

/// Appends `n` records one by one, a millisecond apart, so each has its own enqueued time.
async fn append_spaced(log: &dyn Log, p: PartitionId, n: usize) {
    for i in 0..n {
        log.append(p, vec![Record::new("dev", format!("{i}"))])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn a_lagging_group_holds_retention_back_until_it_commits_or_the_rule_allows() {
    let log = MemoryLog::new(1).unwrap();
    let p = PartitionId(0);
    append_spaced(&log, p, 10).await;
    let [archive, routing] = groups();
    log.commit(&archive, p, Offset(10)).await.unwrap();
    log.commit(&routing, p, Offset(4)).await.unwrap();
    let everything_old = RetentionPolicy {
        max_age: Some(Duration::ZERO),
        max_bytes: None,
    };
    let rule = RetentionRule::new("t", everything_old)
        .protect(archive.clone())
        .protect(routing.clone());
    let later = Timestamp::now().saturating_add(Duration::from_secs(1));
    retention::enforce(&log, &rule, later).await.unwrap();
    assert_eq!(
        log.earliest_offset(p).await.unwrap(),
        Offset(4),
        "routing's uncommitted records stay"
    );

    log.commit(&routing, p, Offset(10)).await.unwrap();
    retention::enforce(&log, &rule, later).await.unwrap();
    assert_eq!(
        log.earliest_offset(p).await.unwrap(),
        Offset(9),
        "all committed: all but the newest record go (it bounds records appended meanwhile)"
    );

    append_spaced(&log, p, 5).await;
    let size_only = RetentionPolicy {
        max_age: None,
        max_bytes: Some(0),
    };
    let rule = RetentionRule::new("t", size_only).protect(routing.clone());
    retention::enforce(&log, &rule, Timestamp::now())
        .await
        .unwrap();
    assert_eq!(
        log.earliest_offset(p).await.unwrap(),
        Offset(10),
        "by size, up to the commit"
    );
    retention::enforce(&log, &rule.remove_uncommitted(), Timestamp::now())
        .await
        .unwrap();
    assert_eq!(
        log.earliest_offset(p).await.unwrap(),
        Offset(15),
        "a rule that allows it removes uncommitted records"
    );
}

#[tokio::test]
async fn the_task_runs_every_interval_by_itself() {
    let topics = Arc::new(Topics::memory(1));
    let log = topics.topic("telemetry").await.unwrap();
    let p = PartitionId(0);
    append_spaced(log.as_ref(), p, 5).await;
    let group = GroupName::new("archive").unwrap();
    log.commit(&group, p, Offset(3)).await.unwrap();
    let rule = RetentionRule::new(
        "telemetry",
        RetentionPolicy {
            max_age: Some(Duration::from_millis(1)),
            max_bytes: None,
        },
    )
    .protect(group);
    let task = retention::spawn(
        topics.clone(),
        RetentionSchedule::new(Duration::from_millis(20), vec![rule]),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while log.earliest_offset(p).await.unwrap() < Offset(3) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention did not run"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        log.earliest_offset(p).await.unwrap(),
        Offset(3),
        "and no further"
    );
    task.abort();
}
