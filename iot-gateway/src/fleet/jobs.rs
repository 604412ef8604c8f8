//! The job engine: runs each job from its start time over the devices its query matched,
//! paced by its throttle, recording each device's outcome durably as it comes.
//!
//! Durability: the job document (status, the resolved device list, every outcome) is written
//! through the [`JobStore`] on each change. A process that stops mid-job resumes it on
//! [`JobEngine::open`] with the devices that have no outcome yet. A device whose step had
//! started but whose outcome was not yet written when the process died is reached again: jobs
//! are at least once per device, and the devices reached twice are at most the steps in flight
//! at the crash ([`JobsConfig::max_in_flight`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iot_core::{DeviceId, Timestamp};
use serde_json::Value;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::devices::FleetDevices;
use super::error::{FleetError, FleetResult};
use super::job::{DeviceJobStatus, DeviceOutcome, Job, JobKind, JobSpec, JobStatus};
use super::pacer::Pacer;
use super::store::JobStore;
use crate::method::MethodCall;
use crate::sync_util::lock;

/// How the engine runs jobs.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// Device steps of one job in flight at once (a method waits for its device's answer, so
    /// steps overlap).
    pub max_in_flight: usize,
    /// The throttle of jobs that name none: devices started per second (`None`: no limit).
    pub default_devices_per_second: Option<u32>,
    /// The longest `maxExecutionTimeInSeconds` accepted (and the value of jobs that name none).
    pub max_execution: Duration,
    /// How long an ended job is kept after its end (IoT Hub keeps job history 30 days). Past
    /// it, the job is no longer answered and is removed from memory and from the store when the
    /// engine opens and whenever a job is created, so a long-running hub holds the jobs of one
    /// history window, not every job it ever ran.
    pub history: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            max_in_flight: 16,
            default_devices_per_second: Some(100),
            max_execution: Duration::from_secs(2 * 24 * 3600),
            history: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Runs and answers for jobs. Cloning shares the engine.
#[derive(Debug, Clone)]
pub struct JobEngine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn JobStore>,
    devices: Arc<dyn FleetDevices>,
    config: JobsConfig,
    jobs: Mutex<BTreeMap<String, Entry>>,
    /// Serializes writes to the store so that an older snapshot never lands after a newer one.
    writes: tokio::sync::Mutex<()>,
    /// The running jobs' tasks, for [`JobEngine::shutdown`].
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

#[derive(Debug)]
struct Entry {
    job: Job,
    cancel: watch::Sender<bool>,
    running: BTreeSet<String>,
}

fn now_ms() -> u64 {
    Timestamp::now().as_unix_millis()
}

impl JobEngine {
    /// Opens the engine over `store`: every job that had not ended is resumed (a scheduled one
    /// waits for its start time again, a running one goes on with the devices that have no
    /// outcome yet).
    pub async fn open(
        store: Arc<dyn JobStore>,
        devices: Arc<dyn FleetDevices>,
        config: JobsConfig,
    ) -> FleetResult<Self> {
        let saved = store.load_all().await?;
        let engine = JobEngine {
            inner: Arc::new(Inner {
                store,
                devices,
                config,
                jobs: Mutex::new(BTreeMap::new()),
                writes: tokio::sync::Mutex::new(()),
                tasks: Mutex::new(Vec::new()),
            }),
        };
        let mut resume = Vec::new();
        let mut finish_cancelled = Vec::new();
        {
            let mut jobs = lock(&engine.inner.jobs);
            for job in saved {
                let (cancel, _) = watch::channel(false);
                if !job.status.is_terminal() {
                    resume.push(job.spec.id.clone());
                } else if job.status == JobStatus::Cancelled && !job.pending().is_empty() {
                    // Cancelled while the process stopped, before its devices were closed.
                    finish_cancelled.push(job.spec.id.clone());
                }
                jobs.insert(
                    job.spec.id.clone(),
                    Entry {
                        job,
                        cancel,
                        running: BTreeSet::new(),
                    },
                );
            }
        }
        for id in finish_cancelled {
            engine.inner.close_pending(
                &id,
                DeviceJobStatus::Canceled,
                "JobCancelled",
                "the job was cancelled",
            );
            engine.inner.save(&id).await?;
        }
        for id in resume {
            tracing::info!(job = %id, "resuming job");
            engine.spawn(id);
        }
        engine.remove_past_history().await?;
        Ok(engine)
    }

    /// Removes the ended jobs past their history ([`JobsConfig::history`]) from memory and
    /// from the store; returns how many. The engine calls it when it opens and on each
    /// [`create`](Self::create); a caller may run it on a timer of its own.
    pub async fn remove_past_history(&self) -> FleetResult<usize> {
        let now = now_ms();
        let expired: Vec<String> = lock(&self.inner.jobs)
            .values()
            .filter(|e| e.running.is_empty() && self.inner.past_history(&e.job, now))
            .map(|e| e.job.spec.id.clone())
            .collect();
        for id in &expired {
            // Under the store's write order: a save of this job that cloned it before the
            // removal lands before the delete, and one after finds no job to write.
            let _order = self.inner.writes.lock().await;
            lock(&self.inner.jobs).remove(id);
            self.inner.store.delete(id).await?;
            tracing::debug!(job = %id, "job past its history removed");
        }
        if !expired.is_empty() {
            tracing::info!(
                jobs = expired.len(),
                "ended jobs past their history removed"
            );
        }
        Ok(expired.len())
    }

    /// Creates and starts (or schedules) a job.
    pub async fn create(&self, spec: JobSpec) -> FleetResult<Job> {
        self.validate(&spec)?;
        self.remove_past_history().await?;
        let job = Job::new(spec, now_ms());
        let id = job.spec.id.clone();
        {
            let mut jobs = lock(&self.inner.jobs);
            if jobs.contains_key(&id) {
                return Err(FleetError::Exists { kind: "job", id });
            }
            let (cancel, _) = watch::channel(false);
            jobs.insert(
                id.clone(),
                Entry {
                    job: job.clone(),
                    cancel,
                    running: BTreeSet::new(),
                },
            );
        }
        if let Err(e) = self.inner.save(&id).await {
            lock(&self.inner.jobs).remove(&id);
            return Err(e);
        }
        tracing::info!(job = %id, kind = job.spec.kind.type_name(), status = job.status.name(), "job created");
        self.spawn(id);
        Ok(job)
    }

    fn validate(&self, spec: &JobSpec) -> FleetResult<()> {
        if spec.id.is_empty()
            || spec.id.len() > 128
            || !spec
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:+%#*?!(),=@;$'".contains(&b))
        {
            return Err(FleetError::Invalid(
                "jobId must be 1 to 128 ASCII letters, digits or -_.:+%#*?!(),=@;$'".into(),
            ));
        }
        if spec.query_condition.trim().is_empty() {
            return Err(FleetError::Invalid("queryCondition is required".into()));
        }
        self.inner.devices.check_condition(&spec.query_condition)?;
        if spec.max_execution_s > self.inner.config.max_execution.as_secs() {
            return Err(FleetError::Invalid(format!(
                "maxExecutionTimeInSeconds must be at most {}",
                self.inner.config.max_execution.as_secs()
            )));
        }
        match &spec.kind {
            JobKind::DeviceMethod(m) if m.method_name.is_empty() || m.method_name.len() > 256 => {
                Err(FleetError::Invalid(
                    "methodName must be 1 to 256 characters".into(),
                ))
            }
            JobKind::UpdateTwin(t) if t.tags.is_none() && t.desired.is_none() => Err(
                FleetError::Invalid("updateTwin needs tags or properties.desired".into()),
            ),
            _ => Ok(()),
        }
    }

    /// The job `id` with its running devices counted.
    pub fn get(&self, id: &str) -> FleetResult<(Job, u64)> {
        let mut jobs = lock(&self.inner.jobs);
        let entry = self.inner.answered(&mut jobs, id)?;
        Ok((entry.job.clone(), entry.running.len() as u64))
    }

    /// Every job (newest first) of `kind` (IoT Hub's type name) and `status`, when given.
    pub fn query(&self, kind: Option<&str>, status: Option<JobStatus>) -> Vec<(Job, u64)> {
        let jobs = lock(&self.inner.jobs);
        let now = now_ms();
        let mut out: Vec<(Job, u64)> = jobs
            .values()
            .filter(|e| !self.inner.past_history(&e.job, now))
            .filter(|e| kind.is_none_or(|k| e.job.spec.kind.type_name().eq_ignore_ascii_case(k)))
            .filter(|e| status.is_none_or(|s| e.job.status == s))
            .map(|e| (e.job.clone(), e.running.len() as u64))
            .collect();
        out.sort_by_key(|j| std::cmp::Reverse(j.0.created_ms));
        out
    }

    /// Cancels job `id`: it reaches no further device (steps in flight finish and are
    /// recorded); devices not reached are `canceled`. A job that had ended is returned as it
    /// is.
    pub async fn cancel(&self, id: &str) -> FleetResult<Job> {
        {
            let mut jobs = lock(&self.inner.jobs);
            let entry = self.inner.answered(&mut jobs, id)?;
            if entry.job.status.is_terminal() {
                return Ok(entry.job.clone());
            }
            entry.job.status = JobStatus::Cancelled;
            entry.job.end_ms = Some(now_ms());
            let _ = entry.cancel.send(true);
        }
        self.inner.save(id).await?;
        tracing::info!(job = %id, "job cancelled");
        Ok(self.get(id)?.0)
    }

    /// Waits until job `id` has ended (tests and tools).
    pub async fn wait(&self, id: &str, timeout: Duration) -> FleetResult<Job> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (job, running) = self.get(id)?;
            if job.status.is_terminal() && running == 0 {
                return Ok(job);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(FleetError::Invalid(format!(
                    "job {id} is still {} after {timeout:?}",
                    job.status.name()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn spawn(&self, id: String) {
        let inner = self.inner.clone();
        let Some(cancel) = lock(&inner.jobs).get(&id).map(|e| e.cancel.subscribe()) else {
            return;
        };
        let tasks = self.inner.clone();
        let handle = tokio::spawn(async move {
            if let Err(e) = inner.run(&id, cancel).await {
                tracing::warn!(job = %id, error = %e, "job failed");
                inner
                    .finish(&id, JobStatus::Failed, Some(e.to_string()))
                    .await;
            }
        });
        let mut handles = lock(&tasks.tasks);
        handles.retain(|h| !h.is_finished());
        handles.push(handle.abort_handle());
    }

    /// Stops every running job where it is, as a process exit would (steps in flight are
    /// dropped; their outcomes are not written). A job engine opened later over the same store
    /// resumes them. Jobs created after this call run as usual.
    pub fn shutdown(&self) {
        for handle in lock(&self.inner.tasks).drain(..) {
            handle.abort();
        }
    }
}

/// Waits for `cancel` to turn true; never returns if it cannot (the sender is gone).
async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    if cancel.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl Inner {
    /// Whether `job` ended more than the history ago.
    fn past_history(&self, job: &Job, now_ms: u64) -> bool {
        let history = u64::try_from(self.config.history.as_millis()).unwrap_or(u64::MAX);
        job.status.is_terminal()
            && job
                .end_ms
                .is_some_and(|end| end.saturating_add(history) <= now_ms)
    }

    /// Job `id` in `jobs`, unless it is past its history (then, as with no job, `NotFound`).
    fn answered<'a>(
        &self,
        jobs: &'a mut BTreeMap<String, Entry>,
        id: &str,
    ) -> FleetResult<&'a mut Entry> {
        let now = now_ms();
        jobs.get_mut(id)
            .filter(|e| !self.past_history(&e.job, now))
            .ok_or_else(|| FleetError::NotFound {
                kind: "job",
                id: id.to_owned(),
            })
    }

    async fn save(&self, id: &str) -> FleetResult<()> {
        let _order = self.writes.lock().await;
        let Some(job) = lock(&self.jobs).get(id).map(|e| e.job.clone()) else {
            return Ok(());
        };
        self.store.save(&job).await
    }

    fn with<R>(&self, id: &str, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
        lock(&self.jobs).get_mut(id).map(f)
    }

    async fn run(self: &Arc<Self>, id: &str, mut cancel: watch::Receiver<bool>) -> FleetResult<()> {
        // 1. Wait for the start time.
        let Some(spec) = self.with(id, |e| e.job.spec.clone()) else {
            return Ok(());
        };
        let wait = spec.start_ms.saturating_sub(now_ms());
        if wait > 0 {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(wait)) => {}
                () = cancelled(&mut cancel) => return Ok(()),
            }
        }
        if *cancel.borrow() {
            return Ok(());
        }
        // 2. Resolve the devices once: a resumed job keeps the list it started with.
        let resolved = self.with(id, |e| e.job.targets.is_some()).unwrap_or(true);
        if !resolved {
            let devices = self.devices.select(&spec.query_condition).await?;
            let targets: Vec<String> = devices.iter().map(|d| d.as_str().to_owned()).collect();
            tracing::info!(job = %id, devices = targets.len(), "job started");
            self.with(id, |e| {
                e.job.targets = Some(targets);
                if !e.job.status.is_terminal() {
                    e.job.status = JobStatus::Running;
                }
            });
        } else {
            self.with(id, |e| {
                if !e.job.status.is_terminal() {
                    e.job.status = JobStatus::Running;
                }
            });
        }
        self.save(id).await?;
        // 3. Reach each device without an outcome, paced and bounded.
        let max_execution = if spec.max_execution_s == 0 {
            self.config.max_execution.as_millis() as u64
        } else {
            spec.max_execution_s.saturating_mul(1000)
        };
        let deadline_ms = spec
            .start_ms
            .max(self.with(id, |e| e.job.created_ms).unwrap_or(0))
            + max_execution;
        let mut pacer = Pacer::new(
            spec.max_devices_per_second
                .or(self.config.default_devices_per_second),
        );
        let slots = Arc::new(Semaphore::new(self.config.max_in_flight.max(1)));
        let mut steps = JoinSet::new();
        let pending = self.with(id, |e| e.job.pending()).unwrap_or_default();
        let mut timed_out = false;
        for device in pending {
            if *cancel.borrow() {
                break;
            }
            tokio::select! {
                () = pacer.wait() => {}
                () = cancelled(&mut cancel) => break,
            }
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                () = cancelled(&mut cancel) => break,
            };
            if now_ms() >= deadline_ms {
                timed_out = true;
                break;
            }
            let inner = self.clone();
            let id = id.to_owned();
            let kind = spec.kind.clone();
            self.with(&id, |e| e.running.insert(device.clone()));
            steps.spawn(async move {
                let outcome = inner.step(&device, &kind).await;
                inner.with(&id, |e| {
                    e.running.remove(&device);
                    e.job.outcomes.insert(device.clone(), outcome);
                });
                if let Err(e) = inner.save(&id).await {
                    tracing::warn!(job = %id, device = %device, error = %e, "outcome not saved");
                }
                drop(permit);
            });
            // Reap finished steps as we go, so the set stays small.
            while steps.try_join_next().is_some() {}
        }
        while steps.join_next().await.is_some() {}
        // 4. The end.
        if *cancel.borrow()
            || self
                .with(id, |e| e.job.status == JobStatus::Cancelled)
                .unwrap_or(true)
        {
            self.close_pending(
                id,
                DeviceJobStatus::Canceled,
                "JobCancelled",
                "the job was cancelled",
            );
            self.save(id).await?;
            return Ok(());
        }
        if timed_out {
            self.close_pending(
                id,
                DeviceJobStatus::Failed,
                "JobTimeout",
                "the job reached maxExecutionTimeInSeconds before this device",
            );
            self.finish(
                id,
                JobStatus::Failed,
                Some("the job ran out of its maxExecutionTimeInSeconds".into()),
            )
            .await;
            return Ok(());
        }
        self.finish(id, JobStatus::Completed, None).await;
        Ok(())
    }

    fn close_pending(&self, id: &str, status: DeviceJobStatus, code: &str, description: &str) {
        let now = now_ms();
        self.with(id, |e| {
            for device in e.job.pending() {
                e.job.outcomes.insert(
                    device,
                    DeviceOutcome {
                        status,
                        start_ms: now,
                        end_ms: now,
                        method_response: None,
                        error: Some((code.to_owned(), description.to_owned())),
                    },
                );
            }
        });
    }

    async fn finish(&self, id: &str, status: JobStatus, reason: Option<String>) {
        let changed = self
            .with(id, |e| {
                if e.job.status.is_terminal() {
                    return false;
                }
                e.job.status = status;
                e.job.end_ms = Some(now_ms());
                e.job.failure_reason = reason;
                true
            })
            .unwrap_or(false);
        if changed {
            tracing::info!(job = %id, status = status.name(), "job ended");
            if let Err(e) = self.save(id).await {
                tracing::warn!(job = %id, error = %e, "job end not saved");
            }
        }
    }

    async fn step(&self, device: &str, kind: &JobKind) -> DeviceOutcome {
        let start_ms = now_ms();
        let result = match DeviceId::new(device) {
            Err(e) => Err(("ArgumentInvalid".to_owned(), e.to_string())),
            Ok(device) => match kind {
                JobKind::DeviceMethod(m) => {
                    let payload = serde_json::to_vec(&m.payload).unwrap_or_default();
                    let mut call = MethodCall::new(m.method_name.clone(), payload);
                    call.response_timeout = Duration::from_secs(m.response_timeout_s);
                    call.connect_timeout = Duration::from_secs(m.connect_timeout_s);
                    match self.devices.invoke_method(&device, call).await {
                        Ok(answer) => {
                            let payload = if answer.payload.is_empty() {
                                Value::Null
                            } else {
                                serde_json::from_slice(&answer.payload).unwrap_or(Value::Null)
                            };
                            Ok(Some((answer.status, payload)))
                        }
                        Err(e) => Err((error_code(&e).to_owned(), e.to_string())),
                    }
                }
                JobKind::UpdateTwin(t) => self
                    .devices
                    .update_twin(&device, t.tags.clone(), t.desired.clone())
                    .await
                    .map(|()| None)
                    .map_err(|e| {
                        let code = match &e {
                            FleetError::Gateway(g) => error_code(g),
                            _ => "ServerError",
                        };
                        (code.to_owned(), e.to_string())
                    }),
            },
        };
        let end_ms = now_ms();
        match result {
            Ok(method_response) => DeviceOutcome {
                status: DeviceJobStatus::Completed,
                start_ms,
                end_ms,
                method_response,
                error: None,
            },
            Err(error) => DeviceOutcome {
                status: DeviceJobStatus::Failed,
                start_ms,
                end_ms,
                method_response: None,
                error: Some(error),
            },
        }
    }
}

/// IoT Hub's error code for a failed step.
fn error_code(e: &crate::Error) -> &'static str {
    match e {
        crate::Error::DeviceNotFound { .. } => "DeviceNotFound",
        crate::Error::DeviceOffline { .. } => "DeviceNotOnline",
        crate::Error::TimedOut { .. } => "GatewayTimeout",
        crate::Error::Throttled { .. } => "ThrottleBacklogLimitExceeded",
        _ => "ServerError",
    }
}
