//! Fleet operations over the service API against a hub with memory stores and device sessions
//! that answer methods: jobs (method and twin update, scheduled, throttled, cancelled, resumed
//! after a stop) and automatic device configurations (priority, re-evaluation on tag changes,
//! metrics). Microsoft's Python SDK against the hub example is in scripts/fleet/interop.sh.
#![cfg(feature = "http")]

mod http_support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_support::{API, HOST, Stack};
use iot_core::DeviceId;
use iot_gateway::fleet::{
    ConfigurationEngine, ConfigurationsConfig, FileJobStore, Fleet, JobEngine, JobKind, JobSpec,
    JobStore, JobsConfig, MemoryConfigurationStore, MemoryJobStore, MethodSpec, TwinUpdate,
};
use iot_gateway::{
    DeviceSession, Gateway, MethodResponse, SessionEvent, SessionOptions, Subscription,
};
use iot_identity::{Presented, SymmetricKey, sas};
use serde_json::{Value, json};
use tokio::time::Instant;

const PATIENCE: Duration = Duration::from_secs(20);

fn id(s: &str) -> DeviceId {
    s.parse().expect("device id")
}

/// When each device was invoked (a method), by device.
type Calls = Arc<Mutex<BTreeMap<String, Vec<Instant>>>>;

struct Rig {
    stack: Stack,
    jobs: JobEngine,
    configurations: ConfigurationEngine,
    calls: Calls,
    desired: Arc<Mutex<BTreeMap<String, Vec<Value>>>>,
    sessions: Vec<tokio::task::JoinHandle<()>>,
}

async fn rig(jobs_store: Arc<dyn JobStore>, config: JobsConfig) -> Rig {
    let stack = Stack::start().await;
    let devices = stack.state.fleet_devices();
    let jobs = JobEngine::open(jobs_store, devices.clone(), config)
        .await
        .expect("jobs");
    let configurations = ConfigurationEngine::open(
        Arc::new(MemoryConfigurationStore::new()),
        devices,
        ConfigurationsConfig::default(),
    )
    .await
    .expect("configurations");
    let _ = stack.state.clone().with_fleet(Fleet {
        jobs: jobs.clone(),
        configurations: configurations.clone(),
    });
    Rig {
        stack,
        jobs,
        configurations,
        calls: Calls::default(),
        desired: Arc::default(),
        sessions: Vec::new(),
    }
}

impl Rig {
    /// Creates `device` with `tags`; when `online`, connects it and answers every method with
    /// status 200 and `{"device": …, "method": …}` after `delay`, recording desired patches.
    async fn device(&mut self, device: &str, tags: Value, online: bool, delay: Duration) {
        let created = self
            .stack
            .owner(
                "PUT",
                &format!("/devices/{device}?{API}"),
                Some(&json!({"deviceId": device})),
            )
            .await;
        assert_eq!(
            created.status,
            200,
            "{}",
            String::from_utf8_lossy(&created.body)
        );
        let key = created.json()["authentication"]["symmetricKey"]["primaryKey"]
            .as_str()
            .expect("key")
            .to_owned();
        if tags.as_object().is_some_and(|t| !t.is_empty()) {
            let patched = self
                .stack
                .owner(
                    "PATCH",
                    &format!("/twins/{device}?{API}"),
                    Some(&json!({"tags": tags})),
                )
                .await;
            assert_eq!(patched.status, 200);
        }
        if !online {
            return;
        }
        let token = sas::generate(
            &format!("{HOST}/devices/{device}"),
            &SymmetricKey::from_base64(&key).expect("key"),
            sas::unix_now() + 600,
            None,
        )
        .expect("token");
        let session = self
            .stack
            .hub
            .connect(
                &id(device),
                Presented::SasToken(token.as_str()),
                SessionOptions::default(),
            )
            .await
            .expect("connect");
        session
            .subscribe(Subscription::Methods)
            .await
            .expect("methods");
        session
            .subscribe(Subscription::DesiredPatches)
            .await
            .expect("desired");
        let calls = self.calls.clone();
        let desired = self.desired.clone();
        let name = device.to_owned();
        self.sessions.push(tokio::spawn(async move {
            let session: Box<dyn DeviceSession> = session;
            while let Ok(event) = session.next_event().await {
                match event {
                    SessionEvent::Method(request) => {
                        calls
                            .lock()
                            .expect("calls")
                            .entry(name.clone())
                            .or_default()
                            .push(Instant::now());
                        tokio::time::sleep(delay).await;
                        let payload =
                            serde_json::to_vec(&json!({"device": name, "method": request.name}))
                                .expect("json");
                        let _ = session
                            .respond_method(MethodResponse {
                                request_id: request.request_id,
                                status: 200,
                                payload: payload.into(),
                            })
                            .await;
                    }
                    SessionEvent::DesiredPatch(p) => desired
                        .lock()
                        .expect("desired")
                        .entry(name.clone())
                        .or_default()
                        .push(p.patch),
                    SessionEvent::Closed(_) => break,
                    _ => {}
                }
            }
        }));
    }

    async fn put_job(&self, job: &str, body: Value) -> Value {
        let reply = self
            .stack
            .owner("PUT", &format!("/jobs/v2/{job}?{API}"), Some(&body))
            .await;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        reply.json()
    }

    async fn get_job(&self, job: &str) -> Value {
        let reply = self
            .stack
            .owner("GET", &format!("/jobs/v2/{job}?{API}"), None)
            .await;
        assert_eq!(reply.status, 200);
        reply.json()
    }

    async fn device_jobs(&self, job: &str) -> BTreeMap<String, Value> {
        let reply = self
            .stack
            .owner(
                "POST",
                &format!("/devices/query?{API}"),
                Some(&json!({"query": format!("SELECT * FROM devices.jobs WHERE devices.jobs.jobId = '{job}'")})),
            )
            .await;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.header("x-ms-item-type"), Some("deviceJob"));
        reply
            .json()
            .as_array()
            .expect("items")
            .iter()
            .map(|d| (d["deviceId"].as_str().expect("id").to_owned(), d.clone()))
            .collect()
    }

    fn invoked(&self) -> BTreeMap<String, usize> {
        self.calls
            .lock()
            .expect("calls")
            .iter()
            .map(|(d, c)| (d.clone(), c.len()))
            .collect()
    }
}

fn method_job(condition: &str) -> Value {
    json!({
        "jobId": null,
        "type": "scheduleDeviceMethod",
        "cloudToDeviceMethod": {"methodName": "reboot", "payload": {"delay": 1}, "responseTimeoutInSeconds": 5},
        "queryCondition": condition,
    })
}

fn stats(job: &Value) -> (u64, u64, u64, u64, u64) {
    let s = &job["deviceJobStatistics"];
    let n = |k: &str| s[k].as_u64().expect("count");
    (
        n("deviceCount"),
        n("succeededCount"),
        n("failedCount"),
        n("runningCount"),
        n("pendingCount"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_job_reaches_the_matched_devices_with_outcomes() {
    let mut rig = rig(Arc::new(MemoryJobStore::new()), JobsConfig::default()).await;
    for d in ["b1", "b2"] {
        rig.device(d, json!({"building": "43"}), true, Duration::ZERO)
            .await;
    }
    rig.device("b3", json!({"building": "43"}), false, Duration::ZERO)
        .await;
    rig.device("other", json!({"building": "44"}), true, Duration::ZERO)
        .await;

    let mut body = method_job("tags.building = '43'");
    body["jobId"] = json!("j1");
    let created = rig.put_job("j1", body).await;
    assert_eq!(created["type"], "scheduleDeviceMethod");
    assert!(
        matches!(created["status"].as_str(), Some("queued" | "running")),
        "{created}"
    );
    // The same id again is a conflict.
    let again = rig
        .stack
        .owner(
            "PUT",
            &format!("/jobs/v2/j1?{API}"),
            Some(&method_job("tags.building = '43'")),
        )
        .await;
    assert_eq!(again.status, 409);

    rig.jobs.wait("j1", PATIENCE).await.expect("job ends");
    let job = rig.get_job("j1").await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(stats(&job), (3, 2, 1, 0, 0), "{job}");
    assert!(job["endTime"].is_string());

    let outcomes = rig.device_jobs("j1").await;
    assert_eq!(outcomes.len(), 3);
    for d in ["b1", "b2"] {
        let o = &outcomes[d];
        assert_eq!(o["status"], "completed", "{o}");
        assert_eq!(o["outcome"]["deviceMethodResponse"]["status"], 200);
        assert_eq!(
            o["outcome"]["deviceMethodResponse"]["payload"],
            json!({"device": d, "method": "reboot"})
        );
    }
    assert_eq!(outcomes["b3"]["status"], "failed");
    assert_eq!(outcomes["b3"]["error"]["code"], "DeviceNotOnline");
    // The device outside the condition was not invoked; the others once.
    assert_eq!(
        rig.invoked(),
        BTreeMap::from([("b1".into(), 1), ("b2".into(), 1)])
    );

    // The job query filters by type and status.
    let listed = rig
        .stack
        .owner(
            "GET",
            &format!("/jobs/v2/query?jobType=scheduleDeviceMethod&jobStatus=completed&{API}"),
            None,
        )
        .await
        .json();
    assert_eq!(listed["items"].as_array().expect("items").len(), 1);
    let none = rig
        .stack
        .owner(
            "GET",
            &format!("/jobs/v2/query?jobType=scheduleUpdateTwin&{API}"),
            None,
        )
        .await
        .json();
    assert_eq!(none["items"], json!([]));
    // Rights: registryRead may read jobs, not create them.
    let read = rig
        .stack
        .call_with(
            "GET",
            &format!("/jobs/v2/j1?{API}"),
            "registryRead",
            None,
            &[],
        )
        .await;
    assert_eq!(read.status, 200);
    let create = rig
        .stack
        .call_with(
            "PUT",
            &format!("/jobs/v2/j2?{API}"),
            "registryRead",
            Some(&method_job("deviceId = 'b1'")),
            &[],
        )
        .await;
    assert_eq!(create.status, 403);
    // A condition the query language refuses is 400 before anything runs.
    let bad = rig
        .stack
        .owner(
            "PUT",
            &format!("/jobs/v2/j3?{API}"),
            Some(&method_job("tags.building = ")),
        )
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(
        rig.stack
            .owner("GET", &format!("/jobs/v2/nope?{API}"), None)
            .await
            .error_code(),
        "JobNotFound"
    );
    // api-version is checked as on every service route.
    let unversioned = rig.stack.owner("GET", "/jobs/v2/j1", None).await;
    assert_eq!(unversioned.status, 400);
    assert_eq!(unversioned.error_code(), "InvalidProtocolVersion");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_job_waits_for_its_start_time() {
    let mut rig = rig(Arc::new(MemoryJobStore::new()), JobsConfig::default()).await;
    rig.device("s1", json!({}), true, Duration::ZERO).await;
    let start =
        iot_core::Timestamp::from_unix_millis(iot_core::Timestamp::now().as_unix_millis() + 1_500);
    let mut body = method_job("deviceId IN ['s1']");
    body["startTime"] = json!(iot_core::time::format_rfc3339(start.as_unix_micros() as i64));
    let created_at = Instant::now();
    let created = rig.put_job("later", body).await;
    assert_eq!(created["status"], "scheduled", "{created}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(rig.get_job("later").await["status"], "scheduled");
    assert!(rig.invoked().is_empty(), "nothing before the start time");
    rig.jobs.wait("later", PATIENCE).await.expect("job ends");
    let calls = rig.calls.lock().expect("calls")["s1"].clone();
    assert_eq!(calls.len(), 1);
    assert!(
        calls[0] - created_at >= Duration::from_millis(1_300),
        "invoked {:?} after creation",
        calls[0] - created_at
    );
    assert_eq!(rig.get_job("later").await["status"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_throttle_spaces_device_steps() {
    let mut rig = rig(Arc::new(MemoryJobStore::new()), JobsConfig::default()).await;
    for i in 0..6 {
        rig.device(
            &format!("t{i}"),
            json!({"fleet": "t"}),
            true,
            Duration::ZERO,
        )
        .await;
    }
    let mut body = method_job("tags.fleet = 't'");
    body["maxDevicesPerSecond"] = json!(5);
    rig.put_job("paced", body).await;
    rig.jobs.wait("paced", PATIENCE).await.expect("job ends");
    let mut times: Vec<Instant> = rig
        .calls
        .lock()
        .expect("calls")
        .values()
        .flatten()
        .copied()
        .collect();
    times.sort();
    assert_eq!(times.len(), 6);
    // Six starts at 5 per second are five 200 ms slots apart; the devices see them a little
    // later each (scheduling), so the bounds leave room for a loaded machine. Unthrottled, all
    // six arrive within a few milliseconds.
    let span = times[5] - times[0];
    assert!(span >= Duration::from_millis(800), "{span:?}");
    for w in times.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(100),
            "{:?}",
            w[1] - w[0]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_job() {
    let mut rig = rig(Arc::new(MemoryJobStore::new()), JobsConfig::default()).await;
    for i in 0..8 {
        rig.device(
            &format!("c{i}"),
            json!({"fleet": "c"}),
            true,
            Duration::ZERO,
        )
        .await;
    }
    let mut body = method_job("tags.fleet = 'c'");
    body["maxDevicesPerSecond"] = json!(4);
    rig.put_job("stop-me", body).await;
    let deadline = Instant::now() + PATIENCE;
    while stats(&rig.get_job("stop-me").await).1 < 2 {
        assert!(Instant::now() < deadline, "two devices reached");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancelled = rig
        .stack
        .owner("POST", &format!("/jobs/v2/stop-me/cancel?{API}"), None)
        .await;
    assert_eq!(cancelled.status, 200);
    assert_eq!(cancelled.json()["status"], "cancelled");
    let at_cancel: usize = rig.invoked().values().sum();
    let job = rig.jobs.wait("stop-me", PATIENCE).await.expect("ends");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let total: usize = rig.invoked().values().sum();
    // A step that had started may finish; nothing starts after the cancel.
    assert!(
        total <= at_cancel + 1,
        "{total} invoked, {at_cancel} at cancel"
    );
    assert!(total < 8, "the job stopped before the end");
    let outcomes = rig.device_jobs("stop-me").await;
    let canceled = outcomes
        .values()
        .filter(|o| o["status"] == "canceled")
        .count();
    assert_eq!(canceled, 8 - total, "{outcomes:?}");
    assert_eq!(job.status.name(), "cancelled");
    assert_eq!(rig.get_job("stop-me").await["status"], "cancelled");
}

/// Opens a `FileJobStore` on `dir` once the engine dropped before lets go of it (after the
/// last write it started has ended).
async fn job_store_when_free(dir: &std::path::Path) -> FileJobStore {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match FileJobStore::open(dir).await {
            Ok(store) => return store,
            Err(e) => {
                assert!(Instant::now() < deadline, "{e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_engine_resumes_without_reinvoking_done_devices() {
    let dir = tempfile::tempdir().expect("dir");
    let config = JobsConfig {
        max_in_flight: 2,
        ..JobsConfig::default()
    };
    let mut rig = rig(Arc::new(MemoryJobStore::new()), JobsConfig::default()).await;
    for i in 0..8 {
        rig.device(
            &format!("r{i}"),
            json!({"fleet": "r"}),
            true,
            Duration::from_millis(50),
        )
        .await;
    }
    // An engine of its own over files (the one the HTTP routes serve stays aside).
    let store = FileJobStore::open(dir.path()).await.expect("store");
    let jobs = JobEngine::open(
        Arc::new(store),
        rig.stack.state.fleet_devices(),
        config.clone(),
    )
    .await
    .expect("jobs");
    let spec = JobSpec {
        id: "resume".into(),
        kind: JobKind::DeviceMethod(MethodSpec {
            method_name: "reboot".into(),
            payload: json!(null),
            response_timeout_s: 5,
            connect_timeout_s: 0,
        }),
        query_condition: "tags.fleet = 'r'".into(),
        start_ms: 0,
        max_execution_s: 0,
        max_devices_per_second: Some(5),
    };
    jobs.create(spec).await.expect("create");
    let deadline = Instant::now() + PATIENCE;
    while jobs.get("resume").expect("job").0.outcomes.len() < 3 {
        assert!(Instant::now() < deadline, "three devices reached");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The process "stops": its job tasks end where they are.
    jobs.shutdown();
    let (before, _) = jobs.get("resume").expect("job");
    let done_before: Vec<String> = before.outcomes.keys().cloned().collect();
    assert!(
        done_before.len() >= 3 && done_before.len() < 8,
        "{done_before:?}"
    );
    drop(jobs);
    // A new engine over the same directory (the old one releases its lock once its tasks end).
    let store = job_store_when_free(dir.path()).await;
    let jobs = JobEngine::open(
        Arc::new(store),
        rig.stack.state.fleet_devices(),
        config.clone(),
    )
    .await
    .expect("reopen");
    let job = jobs
        .wait("resume", PATIENCE)
        .await
        .expect("resumed job ends");
    assert_eq!(job.status.name(), "completed", "{:?}", job.failure_reason);
    assert_eq!(job.outcomes.len(), 8);
    let invoked = rig.invoked();
    assert_eq!(invoked.len(), 8, "every device reached: {invoked:?}");
    for d in &done_before {
        assert_eq!(
            invoked[d], 1,
            "{d} was done before the stop and not invoked again"
        );
    }
    // At least once: only steps in flight at the stop (at most max_in_flight) ran twice.
    let twice = invoked.values().filter(|n| **n > 1).count();
    assert!(twice <= config.max_in_flight, "{invoked:?}");
}

fn tag_job(id: &str, condition: &str) -> JobSpec {
    JobSpec {
        id: id.into(),
        kind: JobKind::UpdateTwin(TwinUpdate {
            tags: Some(json!({"touched": id})),
            desired: None,
        }),
        query_condition: condition.into(),
        start_ms: 0,
        max_execution_s: 0,
        max_devices_per_second: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_jobs_past_their_history_are_removed() {
    let dir = tempfile::tempdir().expect("dir");
    let mut rig = rig(Arc::new(MemoryJobStore::new()), JobsConfig::default()).await;
    rig.device("h1", json!({"fleet": "h"}), false, Duration::ZERO)
        .await;
    let config = JobsConfig {
        history: Duration::from_millis(500),
        ..JobsConfig::default()
    };
    let open = |store: FileJobStore| {
        JobEngine::open(
            Arc::new(store),
            rig.stack.state.fleet_devices(),
            config.clone(),
        )
    };
    let jobs = open(FileJobStore::open(dir.path()).await.expect("store"))
        .await
        .expect("jobs");
    jobs.create(tag_job("old", "tags.fleet = 'h'"))
        .await
        .expect("create");
    let old = jobs.wait("old", PATIENCE).await.expect("old ends");
    assert_eq!(old.status.name(), "completed");
    // Within its history the job is answered; a scheduled one never expires however long ago
    // it was created.
    assert!(jobs.get("old").is_ok());
    let mut scheduled = tag_job("later", "tags.fleet = 'h'");
    scheduled.start_ms = u64::MAX / 2;
    jobs.create(scheduled).await.expect("schedule");
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Past it, it is no longer answered, even before it is removed.
    assert!(jobs.get("old").is_err());
    assert!(
        jobs.query(None, None)
            .iter()
            .all(|(j, _)| j.spec.id != "old")
    );
    assert!(jobs.cancel("old").await.is_err());
    // A new job removes it from the store; the same id can be used again.
    jobs.create(tag_job("new", "tags.fleet = 'h'"))
        .await
        .expect("create");
    let ids = |jobs: Vec<iot_gateway::fleet::Job>| {
        let mut ids: Vec<String> = jobs.into_iter().map(|j| j.spec.id).collect();
        ids.sort();
        ids
    };
    jobs.wait("new", PATIENCE).await.expect("new ends");
    jobs.shutdown();
    drop(jobs);
    let store = job_store_when_free(dir.path()).await;
    assert_eq!(
        ids(store.load_all().await.expect("load")),
        vec!["later".to_owned(), "new".to_owned()]
    );
    // An engine opened later removes what went past its history meanwhile.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let jobs = open(store).await.expect("reopen");
    assert_eq!(jobs.remove_past_history().await.expect("nothing left"), 0);
    assert!(jobs.get("new").is_err());
    let files = std::fs::read_dir(dir.path())
        .expect("list")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".json"))
        })
        .count();
    assert_eq!(files, 1, "only the scheduled job's file is left");
    assert_eq!(
        jobs.get("later").expect("scheduled").0.status.name(),
        "scheduled"
    );
    jobs.create(tag_job("old", "tags.fleet = 'h'"))
        .await
        .expect("the id is free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twin_update_job_writes_tags_and_desired_properties() {
    let mut rig = rig(Arc::new(MemoryJobStore::new()), JobsConfig::default()).await;
    rig.device("u1", json!({"site": "a"}), true, Duration::ZERO)
        .await;
    rig.device("u2", json!({"site": "a"}), false, Duration::ZERO)
        .await;
    rig.device("u3", json!({"site": "b"}), false, Duration::ZERO)
        .await;
    // A configuration for the ring the job will put devices in.
    put_configuration(
        &rig,
        "early-ring",
        "tags.ring = 'early'",
        1,
        json!({"properties.desired.ring": {"cadence": "fast"}}),
    )
    .await;
    rig.configurations.evaluate_all().await.expect("evaluate");
    rig.put_job(
        "twin",
        json!({
            "type": "scheduleUpdateTwin",
            "updateTwin": {"tags": {"ring": "early"}, "properties": {"desired": {"fw": "2.0"}}, "etag": "*"},
            "queryCondition": "tags.site = 'a'",
        }),
    )
    .await;
    let job = rig.jobs.wait("twin", PATIENCE).await.expect("ends");
    assert_eq!(job.statistics(0).succeeded_count, 2);
    for (d, touched) in [("u1", true), ("u2", true), ("u3", false)] {
        let twin = rig
            .stack
            .owner("GET", &format!("/twins/{d}?{API}"), None)
            .await
            .json();
        assert_eq!(twin["tags"]["ring"] == "early", touched, "{twin}");
        assert_eq!(
            twin["properties"]["desired"]["fw"] == "2.0",
            touched,
            "{twin}"
        );
    }
    // The job's tag change re-evaluated the configurations for those devices (not waiting for
    // the sweep, which is a minute away).
    let deadline = Instant::now() + Duration::from_secs(5);
    for d in ["u1", "u2"] {
        while desired_of(&rig, d).await["ring"]["cadence"] != "fast" {
            assert!(
                Instant::now() < deadline,
                "{d} got the early-ring configuration"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(desired_of(&rig, "u3").await.get("ring").is_none());
    // The connected device got the desired patch.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let seen = rig.desired.lock().expect("desired").get("u1").cloned();
        if seen.is_some_and(|p| p.iter().any(|p| p["fw"] == "2.0")) {
            break;
        }
        assert!(Instant::now() < deadline, "u1 saw the desired patch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn put_configuration(
    rig: &Rig,
    id: &str,
    condition: &str,
    priority: i64,
    content: Value,
) -> Value {
    let reply = rig
        .stack
        .owner(
            "PUT",
            &format!("/configurations/{id}?{API}"),
            Some(&json!({
                "id": id,
                "content": {"deviceContent": content},
                "targetCondition": condition,
                "priority": priority,
                "labels": {"team": "ops"},
                "metrics": {"queries": {"reportedMode": "SELECT deviceId FROM devices WHERE properties.reported.mode = 'eco'"}},
            })),
        )
        .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()
}

async fn get_configuration(rig: &Rig, id: &str) -> Value {
    rig.stack
        .owner("GET", &format!("/configurations/{id}?{API}"), None)
        .await
        .json()
}

async fn desired_of(rig: &Rig, device: &str) -> Value {
    rig.stack
        .owner("GET", &format!("/twins/{device}?{API}"), None)
        .await
        .json()["properties"]["desired"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_highest_priority_configuration_wins_each_device() {
    let mut rig = rig(Arc::new(MemoryJobStore::new()), JobsConfig::default()).await;
    rig.device("p1", json!({"building": "43"}), true, Duration::ZERO)
        .await;
    rig.device(
        "p2",
        json!({"building": "43", "ring": "early"}),
        false,
        Duration::ZERO,
    )
    .await;
    rig.device("p3", json!({"building": "44"}), false, Duration::ZERO)
        .await;

    put_configuration(
        &rig,
        "base",
        "tags.building = '43'",
        1,
        json!({"properties.desired.settings": {"interval": 60}}),
    )
    .await;
    put_configuration(
        &rig,
        "early",
        "tags.ring = 'early'",
        10,
        json!({"properties.desired.settings": {"interval": 5}}),
    )
    .await;
    rig.configurations.evaluate_all().await.expect("evaluate");
    assert_eq!(desired_of(&rig, "p1").await["settings"]["interval"], 60);
    assert_eq!(desired_of(&rig, "p2").await["settings"]["interval"], 5);
    assert!(desired_of(&rig, "p3").await.get("settings").is_none());
    let base = get_configuration(&rig, "base").await;
    assert_eq!(
        base["systemMetrics"]["results"]["targetedCount"], 2,
        "{base}"
    );
    assert_eq!(
        base["systemMetrics"]["results"]["appliedCount"], 1,
        "{base}"
    );
    assert_eq!(base["labels"]["team"], "ops");
    assert_eq!(base["metrics"]["results"]["reportedMode"], 0);
    let early = get_configuration(&rig, "early").await;
    assert_eq!(early["systemMetrics"]["results"]["appliedCount"], 1);

    // A tie in priority goes to the configuration created last.
    put_configuration(
        &rig,
        "tie",
        "tags.building = '43'",
        1,
        json!({"properties.desired.settings": {"interval": 30}}),
    )
    .await;
    rig.configurations.evaluate_all().await.expect("evaluate");
    assert_eq!(desired_of(&rig, "p1").await["settings"]["interval"], 30);
    assert_eq!(
        get_configuration(&rig, "base").await["systemMetrics"]["results"]["appliedCount"],
        0
    );

    // A tag change through the service API re-evaluates that device at once (no sweep).
    let patched = rig
        .stack
        .owner(
            "PATCH",
            &format!("/twins/p3?{API}"),
            Some(&json!({"tags": {"ring": "early"}})),
        )
        .await;
    assert_eq!(patched.status, 200);
    let deadline = Instant::now() + PATIENCE;
    while desired_of(&rig, "p3").await["settings"]["interval"] != 5 {
        assert!(Instant::now() < deadline, "p3 got the early configuration");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The connected device saw each patch it was given.
    let seen = rig.desired.lock().expect("desired")["p1"].clone();
    assert!(
        seen.iter().any(|p| p["settings"]["interval"] == 30),
        "{seen:?}"
    );

    // Etags: a stale If-Match is refused; create-over-existing is 409; delete frees devices.
    let stale = rig
        .stack
        .call_with(
            "PUT",
            &format!("/configurations/tie?{API}"),
            "iothubowner",
            Some(&json!({"id": "tie", "targetCondition": "tags.building = '43'", "priority": 1, "content": {"deviceContent": {}}})),
            &[("If-Match", "\"nope\"")],
        )
        .await;
    assert_eq!(stale.status, 412);
    let exists = rig
        .stack
        .owner(
            "PUT",
            &format!("/configurations/tie?{API}"),
            Some(&json!({"id": "tie", "targetCondition": "tags.building = '43'", "content": {"deviceContent": {}}})),
        )
        .await;
    assert_eq!(exists.status, 409);
    let deleted = rig
        .stack
        .owner("DELETE", &format!("/configurations/tie?{API}"), None)
        .await;
    assert_eq!(deleted.status, 204);
    rig.configurations.evaluate_all().await.expect("evaluate");
    assert_eq!(
        get_configuration(&rig, "base").await["systemMetrics"]["results"]["appliedCount"],
        1
    );
    let listed = rig
        .stack
        .owner("GET", &format!("/configurations?top=10&{API}"), None)
        .await
        .json();
    assert_eq!(listed.as_array().expect("list").len(), 2);
    let tested = rig
        .stack
        .owner(
            "POST",
            &format!("/configurations/testQueries?{API}"),
            Some(&json!({"targetCondition": "tags.x = ", "customMetricQueries": {"ok": "SELECT deviceId FROM devices WHERE tags.a = 1"}})),
        )
        .await
        .json();
    assert_ne!(tested["targetConditionError"], "");
    assert_eq!(tested["customMetricQueryErrors"], json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_sessions_need_grants_over_the_whole_hub() {
    use iot_identity::PassphraseParams;
    use iot_identity::access::{
        AccessConfig, AccessControl, AccessStore, DeviceSet, Grant, MemoryAccessStore, Permission,
        Role, StaticDeviceSets,
    };
    let mut rig = rig(Arc::new(MemoryJobStore::new()), JobsConfig::default()).await;
    rig.device("h1", json!({"zone": "h"}), true, Duration::ZERO)
        .await;
    let store = Arc::new(MemoryAccessStore::new());
    store
        .put_role(Role::new(
            "caller".parse().expect("role"),
            [Permission::Read, Permission::InvokeMethod],
        ))
        .await
        .expect("role");
    let access = AccessControl::new(store, Arc::new(StaticDeviceSets::new()))
        .with_config(AccessConfig::default().password_params(PassphraseParams::INSECURE_FOR_TESTS))
        .expect("config");
    let mut tokens = BTreeMap::new();
    for (user, role, devices) in [
        ("vera", "viewer", DeviceSet::All),
        ("olga", "operator", DeviceSet::Device(id("h1"))),
        ("carl", "caller", DeviceSet::All),
        ("otto", "operator", DeviceSet::All),
    ] {
        access
            .create_user(user.parse().expect("name"), &format!("{user}'s password"))
            .await
            .expect("user");
        access
            .grant(Grant::new(
                user.parse().expect("name"),
                role.parse().expect("role"),
                devices,
            ))
            .await
            .expect("grant");
        let (token, _) = access
            .login(user, &format!("{user}'s password"))
            .await
            .expect("login");
        tokens.insert(user, format!("Bearer {}", token.expose()));
    }
    let _ = rig.stack.state.clone().with_access(access);
    let twin_job = json!({
        "type": "scheduleUpdateTwin",
        "updateTwin": {"properties": {"desired": {"x": 1}}},
        "queryCondition": "tags.zone = 'h'",
    });
    let call = |user: &'static str, method: &'static str, path: String, body: Option<Value>| {
        let stack = &rig.stack;
        let token = tokens[user].clone();
        async move {
            stack
                .call(method, &path, Some(&token), body.as_ref())
                .await
                .status
        }
    };
    // The viewer reads jobs and configurations but creates neither.
    assert_eq!(
        call("vera", "GET", format!("/jobs/v2/query?{API}"), None).await,
        200
    );
    assert_eq!(
        call("vera", "GET", format!("/configurations?{API}"), None).await,
        200
    );
    assert_eq!(
        call(
            "vera",
            "PUT",
            format!("/jobs/v2/v1?{API}"),
            Some(method_job("tags.zone = 'h'"))
        )
        .await,
        403
    );
    // An operator of one device may invoke it, but not run a job (a job is hub-wide).
    assert_eq!(
        call(
            "olga",
            "PUT",
            format!("/jobs/v2/o1?{API}"),
            Some(method_job("tags.zone = 'h'"))
        )
        .await,
        403
    );
    // invokeMethod over every device runs a method job, not a twin job (that needs updateTwin).
    assert_eq!(
        call(
            "carl",
            "PUT",
            format!("/jobs/v2/c1?{API}"),
            Some(method_job("tags.zone = 'h'"))
        )
        .await,
        200
    );
    assert_eq!(
        call(
            "carl",
            "PUT",
            format!("/jobs/v2/c2?{API}"),
            Some(twin_job.clone())
        )
        .await,
        403
    );
    assert_eq!(
        call(
            "carl",
            "PUT",
            format!("/configurations/c3?{API}"),
            Some(json!({"targetCondition": "tags.zone = 'h'", "content": {"deviceContent": {}}}))
        )
        .await,
        403
    );
    // The hub-wide operator does both.
    assert_eq!(
        call("otto", "PUT", format!("/jobs/v2/t1?{API}"), Some(twin_job)).await,
        200
    );
    assert_eq!(
        call(
            "otto",
            "PUT",
            format!("/configurations/t2?{API}"),
            Some(json!({"targetCondition": "tags.zone = 'h'", "content": {"deviceContent": {}}}))
        )
        .await,
        200
    );
    rig.jobs.wait("c1", PATIENCE).await.expect("c1 ends");
    assert_eq!(rig.invoked(), BTreeMap::from([("h1".into(), 1)]));
    // Job outcomes through the query route: the hub-wide viewer reads them, the operator of
    // one device does not (they span every device a job targeted, method answers included).
    let outcomes = json!({"query": "SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'c1'"});
    assert_eq!(
        call(
            "vera",
            "POST",
            format!("/devices/query?{API}"),
            Some(outcomes.clone())
        )
        .await,
        200
    );
    assert_eq!(
        call(
            "olga",
            "POST",
            format!("/devices/query?{API}"),
            Some(outcomes)
        )
        .await,
        403
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_maximum_execution_time_fails_the_devices_not_reached() {
    let mut rig = rig(Arc::new(MemoryJobStore::new()), JobsConfig::default()).await;
    for i in 0..5 {
        rig.device(
            &format!("m{i}"),
            json!({"fleet": "m"}),
            true,
            Duration::ZERO,
        )
        .await;
    }
    // Two devices per second for at most one second: the fourth and fifth are never started.
    let mut body = method_job("tags.fleet = 'm'");
    body["maxDevicesPerSecond"] = json!(2);
    body["maxExecutionTimeInSeconds"] = json!(1);
    rig.put_job("short", body).await;
    rig.jobs.wait("short", PATIENCE).await.expect("ends");
    let job = rig.get_job("short").await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(job["failureReason"].is_string());
    let (count, succeeded, failed, running, pending) = stats(&job);
    assert_eq!((count, running, pending), (5, 0, 0), "{job}");
    assert_eq!(succeeded + failed, 5);
    assert!((2..=3).contains(&succeeded), "{job}");
    let outcomes = rig.device_jobs("short").await;
    let timed_out = outcomes
        .values()
        .filter(|o| o["error"]["code"] == "JobTimeout")
        .count() as u64;
    assert_eq!(timed_out, failed);
    let invoked: usize = rig.invoked().values().sum();
    assert_eq!(
        invoked as u64, succeeded,
        "devices past the deadline were not invoked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_before_a_stop_closes_its_devices_on_open() {
    let rig = rig(Arc::new(MemoryJobStore::new()), JobsConfig::default()).await;
    let store = Arc::new(MemoryJobStore::new());
    let spec = JobSpec {
        id: "was-cancelled".into(),
        kind: JobKind::DeviceMethod(MethodSpec {
            method_name: "reboot".into(),
            payload: json!(null),
            response_timeout_s: 5,
            connect_timeout_s: 0,
        }),
        query_condition: "deviceId = 'x'".into(),
        start_ms: 0,
        max_execution_s: 0,
        max_devices_per_second: None,
    };
    let mut job = iot_gateway::fleet::Job::new(spec, 0);
    job.targets = Some(vec!["x".into(), "y".into()]);
    job.status = iot_gateway::fleet::JobStatus::Cancelled;
    store.save(&job).await.expect("save");
    let jobs = JobEngine::open(
        store.clone(),
        rig.stack.state.fleet_devices(),
        JobsConfig::default(),
    )
    .await
    .expect("open");
    let (job, _) = jobs.get("was-cancelled").expect("job");
    assert_eq!(job.statistics(0).pending_count, 0);
    assert_eq!(job.statistics(0).failed_count, 2);
    let saved = store.load_all().await.expect("load");
    assert!(saved[0].pending().is_empty(), "written back");
    assert!(rig.invoked().is_empty());
}
