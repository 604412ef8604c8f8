//! Retention that runs by itself: a [`RetentionRule`] per topic, applied every
//! [`RetentionSchedule::interval`] by a task ([`spawn`]), with the guarantee that records a
//! protected consumer group has not committed are never removed unless the rule allows it.
//!
//! [`Log::enforce_retention`] applies a [`RetentionPolicy`] to every partition and knows nothing
//! of consumer groups. [`enforce`] keeps what the groups of a rule still need by turning the
//! rule into a single age bound that removes less:
//!
//! * in each partition it finds the first offset the policy keeps (`K`: by age, and by size from
//!   the byte sizes of the records) and the lowest committed position of the protected groups
//!   (`F`; a group that never committed protects the whole partition);
//! * the record at `min(K, F)` (the last record if that is the end of the partition) has an
//!   enqueued time `T`; every record enqueued before `T` lies before `min(K, F)`, because the
//!   enqueued time never decreases within a partition;
//! * the log is asked to remove what was enqueued before the smallest `T` over all partitions.
//!
//! An age bound stays correct while devices keep appending: a record appended during the pass
//! gets an enqueued time no earlier than the records already there. (A size bound would not:
//! new records push the oldest out, committed or not.) The price is that it may keep more than
//! the policy requires: the most-behind partition bounds the whole topic, records that share
//! the enqueued time of the first kept one stay, and the last record of a fully committed
//! partition stays until a newer one arrives. The log's own granularity applies on top (a
//! `FileLog` removes whole segments).
//!
//! Commits are assumed not to move backwards during a pass (a group that rewinds below what a
//! concurrent pass already removed reads from the earliest offset, as after any retention).

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::error::Result;
use crate::limits::ReadLimits;
use crate::log::{Log, RetentionPolicy, RetentionReport};
use crate::names::GroupName;
use crate::offset::{Offset, PartitionId};
use crate::timestamp::Timestamp;
use crate::topics::Topics;

/// What may remove a record a protected consumer group has not committed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Uncommitted {
    /// Never remove a record at or after a protected group's committed position (default).
    #[default]
    Keep,
    /// Apply the policy as it is, whatever the groups have committed.
    Remove,
}

/// The retention of one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetentionRule {
    /// The topic.
    pub topic: String,
    /// Age and size bounds.
    pub policy: RetentionPolicy,
    /// The consumer groups whose uncommitted records are kept (with [`Uncommitted::Keep`]).
    /// Groups not listed are not protected.
    pub groups: Vec<GroupName>,
    /// Whether the policy may remove what `groups` have not committed.
    pub uncommitted: Uncommitted,
}

impl RetentionRule {
    /// `policy` for `topic`, protecting no group yet.
    pub fn new(topic: impl Into<String>, policy: RetentionPolicy) -> Self {
        RetentionRule {
            topic: topic.into(),
            policy,
            groups: Vec::new(),
            uncommitted: Uncommitted::Keep,
        }
    }

    /// Also keeps what `group` has not committed.
    pub fn protect(mut self, group: GroupName) -> Self {
        self.groups.push(group);
        self
    }

    /// Lets the policy remove records protected groups have not committed.
    pub fn remove_uncommitted(mut self) -> Self {
        self.uncommitted = Uncommitted::Remove;
        self
    }
}

/// Retention rules and how often they run.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetentionSchedule {
    /// Time between two passes. Default 60 s.
    pub interval: Duration,
    /// One rule per topic. Default: none (the task does nothing).
    pub rules: Vec<RetentionRule>,
}

impl Default for RetentionSchedule {
    fn default() -> Self {
        RetentionSchedule {
            interval: Duration::from_secs(60),
            rules: Vec::new(),
        }
    }
}

impl RetentionSchedule {
    /// A schedule running `rules` every `interval`.
    pub fn new(interval: Duration, rules: Vec<RetentionRule>) -> Self {
        RetentionSchedule { interval, rules }
    }
}

/// Applies `rule` to `log` once, as of `now` (see the [module docs](self)).
pub async fn enforce(
    log: &dyn Log,
    rule: &RetentionRule,
    now: Timestamp,
) -> Result<RetentionReport> {
    let policy = rule.policy;
    if policy.max_age.is_none() && policy.max_bytes.is_none() {
        return Ok(RetentionReport::default());
    }
    if rule.uncommitted == Uncommitted::Remove || rule.groups.is_empty() {
        return log.enforce_retention(&policy, now).await;
    }
    let age_cutoff = policy.max_age.map(|age| now.saturating_sub(age));
    // The smallest per-partition bound; `None` while no partition holds a record.
    let mut cutoff: Option<Timestamp> = None;
    for p in 0..log.partition_count() {
        let partition = PartitionId(p);
        let earliest = log.earliest_offset(partition).await?;
        let next = log.next_offset(partition).await?;
        if earliest >= next {
            continue;
        }
        let mut floor = next;
        for group in &rule.groups {
            let committed = log.committed(group, partition).await?.unwrap_or(Offset(0));
            floor = floor.min(committed);
        }
        let floor = floor.max(earliest);
        let floor_time = time_at(log, partition, floor, next).await?;
        // Records enqueued before `policy_time` are ones the policy removes.
        let mut policy_time = age_cutoff.unwrap_or(Timestamp::from_unix_micros(0));
        if let Some(max) = policy.max_bytes {
            // Nothing of this partition can go when the floor is its first record: skip the scan.
            let keep = if floor > earliest {
                first_within_size(log, partition, earliest, next, max).await?
            } else {
                earliest
            };
            policy_time = policy_time.max(time_at(log, partition, keep, next).await?);
        }
        let bound = floor_time.min(policy_time);
        cutoff = Some(cutoff.map_or(bound, |c| c.min(bound)));
    }
    let Some(cutoff) = cutoff else {
        return Ok(RetentionReport::default());
    };
    let micros = now.as_unix_micros().saturating_sub(cutoff.as_unix_micros());
    let bounded = RetentionPolicy {
        max_age: Some(Duration::from_micros(micros)),
        max_bytes: None,
    };
    debug!(topic = rule.topic.as_str(), cutoff = %cutoff, "retention bounded by the protected groups");
    log.enforce_retention(&bounded, now).await
}

/// The enqueued time of the record at `offset`, or of the last record when `offset` is the end
/// (so that records appended meanwhile, which are no older, are kept).
async fn time_at(
    log: &dyn Log,
    partition: PartitionId,
    offset: Offset,
    next: Offset,
) -> Result<Timestamp> {
    let at = if offset >= next {
        Offset(next.0 - 1)
    } else {
        offset
    };
    let one = ReadLimits {
        max_records: 1,
        ..ReadLimits::default()
    };
    let records = log.read(partition, at, one).await?;
    Ok(records
        .first()
        .map_or(Timestamp::from_unix_micros(0), |r| r.enqueued_time))
}

/// The first offset from which the records up to `next` hold at most `max` bytes.
async fn first_within_size(
    log: &dyn Log,
    partition: PartitionId,
    earliest: Offset,
    next: Offset,
    max: u64,
) -> Result<Offset> {
    let mut total = 0u64;
    scan(log, partition, earliest, next, |size| {
        total += size;
        true
    })
    .await?;
    let mut keep = earliest;
    scan(log, partition, earliest, next, |size| {
        if total <= max {
            return false;
        }
        total -= size;
        keep = Offset(keep.0 + 1);
        true
    })
    .await?;
    Ok(keep)
}

/// Calls `each` with the size of every record in `from..next` until it returns `false`.
async fn scan(
    log: &dyn Log,
    partition: PartitionId,
    from: Offset,
    next: Offset,
    mut each: impl FnMut(u64) -> bool,
) -> Result<()> {
    let mut at = from;
    while at < next {
        let batch = log.read(partition, at, ReadLimits::default()).await?;
        let Some(last) = batch.last() else {
            return Ok(());
        };
        at = Offset(last.offset.0 + 1);
        for record in batch.iter().filter(|r| r.offset < next) {
            if !each(record.record.size_bytes() as u64) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Runs `schedule` over `topics` until the returned task is aborted: every interval, each rule
/// once. A failing rule is logged and tried again at the next pass.
pub fn spawn(topics: Arc<Topics>, schedule: RetentionSchedule) -> JoinHandle<()> {
    tokio::spawn(async move {
        if schedule.rules.is_empty() {
            return;
        }
        let mut ticks = tokio::time::interval(schedule.interval.max(Duration::from_millis(10)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            run_once(&topics, &schedule).await;
        }
    })
}

/// One pass of every rule of `schedule` over `topics`, as of now; what each removed.
pub async fn run_once(
    topics: &Topics,
    schedule: &RetentionSchedule,
) -> Vec<(String, RetentionReport)> {
    let mut reports = Vec::with_capacity(schedule.rules.len());
    for rule in &schedule.rules {
        let outcome = match topics.topic(&rule.topic).await {
            Ok(log) => enforce(log.as_ref(), rule, Timestamp::now()).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(report) => {
                if report.records_removed > 0 {
                    debug!(
                        topic = rule.topic.as_str(),
                        records = report.records_removed,
                        bytes = report.bytes_removed,
                        "retention removed records"
                    );
                }
                reports.push((rule.topic.clone(), report));
            }
            Err(e) => warn!(topic = rule.topic.as_str(), error = %e, "retention pass failed"),
        }
    }
    reports
}
