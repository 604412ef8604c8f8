//! A job: what it does, to which devices, when, and what happened on each.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A direct method a job invokes (IoT Hub's `cloudToDeviceMethod`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodSpec {
    /// The method's name.
    pub method_name: String,
    /// Its JSON payload.
    pub payload: Value,
    /// How long each device has to answer, in seconds.
    pub response_timeout_s: u64,
    /// How long to wait for each device to connect, in seconds (0: it must be connected).
    pub connect_timeout_s: u64,
}

/// A twin update a job applies (IoT Hub's `updateTwin`): RFC 7396 patches of the tags and of
/// the desired properties.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TwinUpdate {
    /// Merged into the twin's tags.
    pub tags: Option<Value>,
    /// Merged into the desired properties.
    pub desired: Option<Value>,
}

/// What a job does on each device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JobKind {
    /// IoT Hub's `scheduleDeviceMethod`.
    DeviceMethod(MethodSpec),
    /// IoT Hub's `scheduleUpdateTwin`.
    UpdateTwin(TwinUpdate),
}

impl JobKind {
    /// IoT Hub's name of the job type.
    pub fn type_name(&self) -> &'static str {
        match self {
            JobKind::DeviceMethod(_) => "scheduleDeviceMethod",
            JobKind::UpdateTwin(_) => "scheduleUpdateTwin",
        }
    }
}

/// What a caller asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The job's id.
    pub id: String,
    /// What it does.
    pub kind: JobKind,
    /// Which devices (an IoT Hub query condition, resolved when the job starts).
    pub query_condition: String,
    /// When to start, Unix milliseconds (now or earlier: at once).
    pub start_ms: u64,
    /// How long the job may run from its start, in seconds; devices not reached by then fail.
    pub max_execution_s: u64,
    /// At most this many devices started per second (`None`: the engine's default).
    pub max_devices_per_second: Option<u32>,
}

/// A job's state (IoT Hub's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobStatus {
    /// Waiting to start now.
    Queued,
    /// Waiting for its start time.
    Scheduled,
    /// Reaching devices.
    Running,
    /// Every device reached (each one's outcome may still be a failure).
    Completed,
    /// Stopped by an error or its maximum execution time.
    Failed,
    /// Cancelled by a caller.
    Cancelled,
}

impl JobStatus {
    /// IoT Hub's name (`queued`, `scheduled`, `running`, `completed`, `failed`, `cancelled`).
    pub fn name(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Scheduled => "scheduled",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// The status named `name` (IoT Hub's names, any case).
    pub fn parse(name: &str) -> Option<Self> {
        [
            JobStatus::Queued,
            JobStatus::Scheduled,
            JobStatus::Running,
            JobStatus::Completed,
            JobStatus::Failed,
            JobStatus::Cancelled,
        ]
        .into_iter()
        .find(|s| s.name().eq_ignore_ascii_case(name))
    }

    /// Whether the job is over.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// One device's state in a job (IoT Hub's device job statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceJobStatus {
    /// Not reached yet.
    Pending,
    /// Being reached now.
    Running,
    /// Reached: the method answered (whatever its status) or the twin was written.
    Completed,
    /// Not reached: offline, timed out, refused, or the job ran out of time.
    Failed,
    /// The job was cancelled before reaching it.
    Canceled,
}

impl DeviceJobStatus {
    /// IoT Hub's name.
    pub fn name(self) -> &'static str {
        match self {
            DeviceJobStatus::Pending => "pending",
            DeviceJobStatus::Running => "running",
            DeviceJobStatus::Completed => "completed",
            DeviceJobStatus::Failed => "failed",
            DeviceJobStatus::Canceled => "canceled",
        }
    }
}

/// What happened on one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceOutcome {
    /// Completed, failed or canceled.
    pub status: DeviceJobStatus,
    /// When the step started, Unix milliseconds.
    pub start_ms: u64,
    /// When it ended.
    pub end_ms: u64,
    /// The method's answer: its status and JSON payload.
    pub method_response: Option<(i32, Value)>,
    /// Why it failed: an IoT Hub error code and a description.
    pub error: Option<(String, String)>,
}

/// IoT Hub's `deviceJobStatistics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatistics {
    /// Devices the query matched.
    pub device_count: u64,
    /// Devices completed.
    pub succeeded_count: u64,
    /// Devices failed (or canceled).
    pub failed_count: u64,
    /// Devices being reached now.
    pub running_count: u64,
    /// Devices not reached yet.
    pub pending_count: u64,
}

/// A job and its progress: the document a [`JobStore`](super::JobStore) keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// What was asked.
    pub spec: JobSpec,
    /// Where it is.
    pub status: JobStatus,
    /// When it was created, Unix milliseconds.
    pub created_ms: u64,
    /// When it ended.
    pub end_ms: Option<u64>,
    /// Why it failed.
    pub failure_reason: Option<String>,
    /// The devices the query matched when the job started (kept, so that a resumed job reaches
    /// the same devices); `None` before it started.
    pub targets: Option<Vec<String>>,
    /// Each device's outcome once it has one.
    pub outcomes: BTreeMap<String, DeviceOutcome>,
}

impl Job {
    /// A new job for `spec`, created at `now_ms`.
    pub fn new(spec: JobSpec, now_ms: u64) -> Self {
        let status = if spec.start_ms > now_ms {
            JobStatus::Scheduled
        } else {
            JobStatus::Queued
        };
        Job {
            spec,
            status,
            created_ms: now_ms,
            end_ms: None,
            failure_reason: None,
            targets: None,
            outcomes: BTreeMap::new(),
        }
    }

    /// The devices without an outcome, in target order.
    pub fn pending(&self) -> Vec<String> {
        self.targets
            .iter()
            .flatten()
            .filter(|d| !self.outcomes.contains_key(*d))
            .cloned()
            .collect()
    }

    /// The statistics, with `running` devices being reached now.
    pub fn statistics(&self, running: u64) -> JobStatistics {
        let device_count = self.targets.as_ref().map_or(0, |t| t.len() as u64);
        let succeeded_count = self
            .outcomes
            .values()
            .filter(|o| o.status == DeviceJobStatus::Completed)
            .count() as u64;
        let done = self.outcomes.len() as u64;
        let running_count = running.min(device_count.saturating_sub(done));
        JobStatistics {
            device_count,
            succeeded_count,
            failed_count: done - succeeded_count,
            running_count,
            pending_count: device_count.saturating_sub(done + running_count),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn outcome(ok: bool) -> DeviceOutcome {
        DeviceOutcome {
            status: if ok {
                DeviceJobStatus::Completed
            } else {
                DeviceJobStatus::Failed
            },
            start_ms: 0,
            end_ms: 0,
            method_response: None,
            error: None,
        }
    }

    proptest! {
        /// Every target is counted once: succeeded + failed + running + pending = devices, and
        /// `pending()` lists exactly the targets without an outcome.
        #[test]
        fn statistics_account_for_every_device(
            n in 0usize..40,
            done in proptest::collection::vec(proptest::option::of(any::<bool>()), 0..40),
            running in 0u64..50,
        ) {
            let spec = JobSpec {
                id: "j".into(),
                kind: JobKind::UpdateTwin(TwinUpdate { tags: None, desired: None }),
                query_condition: "deviceId = 'x'".into(),
                start_ms: 0,
                max_execution_s: 0,
                max_devices_per_second: None,
            };
            let mut job = Job::new(spec, 0);
            let targets: Vec<String> = (0..n).map(|i| format!("d{i}")).collect();
            job.targets = Some(targets.clone());
            for (t, o) in targets.iter().zip(&done) {
                if let Some(ok) = o {
                    job.outcomes.insert(t.clone(), outcome(*ok));
                }
            }
            let s = job.statistics(running);
            prop_assert_eq!(s.device_count, n as u64);
            prop_assert_eq!(
                s.succeeded_count + s.failed_count + s.running_count + s.pending_count,
                n as u64
            );
            prop_assert_eq!(job.pending().len() as u64, n as u64 - job.outcomes.len() as u64);
            prop_assert!(job.pending().iter().all(|d| !job.outcomes.contains_key(d)));
        }
    }
}
