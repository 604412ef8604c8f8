//! `PUT/GET /jobs/v2/{jobId}`, `POST /jobs/v2/{jobId}/cancel`, `GET /jobs/v2/query`.
//!
//! Rights: a method job needs ServiceConnect (as `POST /twins/{id}/methods`), a twin-update job
//! ServiceConnect or RegistryWrite (as `PATCH /twins/{id}`); reading jobs RegistryRead or
//! ServiceConnect. A user session needs `invokeMethod` over the whole hub to create or cancel a
//! job (user_access.rs), and `updateTwin` over the whole hub as well for a twin-update job: a
//! job reaches devices a query picks when it starts, so only a grant over every device covers it.

use axum::Json;
use axum::extract::{Path, Query, State};
use iot_core::Timestamp;
use iot_identity::Decision;
use iot_identity::access::{Permission, Target, UserName};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::errors::fleet;
use crate::fleet::{Job, JobKind, JobSpec, JobStatus, MethodSpec, TwinUpdate};
use crate::http::auth::Caller;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::JsonBody;
use crate::http::policy::Rights;
use crate::http::state::HttpState;
use crate::rfc3339::format_millis;

/// IoT Hub's `CloudToDeviceMethod` in a job.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MethodIn {
    method_name: String,
    #[serde(default)]
    payload: Value,
    response_timeout_in_seconds: Option<u64>,
    connect_timeout_in_seconds: Option<u64>,
}

/// IoT Hub's `JobRequest` (and our `maxDevicesPerSecond`, the job's throttle).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JobIn {
    job_id: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    cloud_to_device_method: Option<MethodIn>,
    update_twin: Option<Value>,
    query_condition: Option<String>,
    start_time: Option<String>,
    max_execution_time_in_seconds: Option<u64>,
    max_devices_per_second: Option<u32>,
}

fn time(ms: u64) -> String {
    format_millis(Timestamp::from_unix_millis(ms))
}

fn method_spec(m: MethodIn) -> ApiResult<MethodSpec> {
    let response = m.response_timeout_in_seconds.unwrap_or(30);
    if !(5..=300).contains(&response) {
        return Err(ApiError::bad_request(
            "responseTimeoutInSeconds must be between 5 and 300",
        ));
    }
    let connect = m.connect_timeout_in_seconds.unwrap_or(0);
    if connect > 300 {
        return Err(ApiError::bad_request(
            "connectTimeoutInSeconds must be between 0 and 300",
        ));
    }
    Ok(MethodSpec {
        method_name: m.method_name,
        payload: m.payload,
        response_timeout_s: response,
        connect_timeout_s: connect,
    })
}

fn twin_update(twin: Value) -> ApiResult<TwinUpdate> {
    let tags = twin.get("tags").filter(|t| !t.is_null()).cloned();
    let desired = twin
        .get("properties")
        .and_then(|p| p.get("desired"))
        .filter(|d| !d.is_null())
        .cloned();
    for (name, part) in [("tags", &tags), ("properties.desired", &desired)] {
        if part.as_ref().is_some_and(|p| !p.is_object()) {
            return Err(ApiError::bad_request(format!(
                "updateTwin.{name} must be an object"
            )));
        }
    }
    Ok(TwinUpdate { tags, desired })
}

fn spec_of(id: String, input: JobIn) -> ApiResult<JobSpec> {
    if let Some(body_id) = &input.job_id
        && *body_id != id
    {
        return Err(ApiError::bad_request(
            "jobId in the body differs from the one in the path",
        ));
    }
    let kind = match input.kind.as_deref() {
        Some("scheduleDeviceMethod") => {
            JobKind::DeviceMethod(method_spec(input.cloud_to_device_method.ok_or_else(
                || ApiError::bad_request("a scheduleDeviceMethod job needs cloudToDeviceMethod"),
            )?)?)
        }
        Some("scheduleUpdateTwin") => {
            JobKind::UpdateTwin(twin_update(input.update_twin.ok_or_else(|| {
                ApiError::bad_request("a scheduleUpdateTwin job needs updateTwin")
            })?)?)
        }
        _ => {
            return Err(ApiError::bad_request(
                "type must be scheduleDeviceMethod or scheduleUpdateTwin",
            ));
        }
    };
    let now = Timestamp::now().as_unix_millis();
    let start_ms = match input.start_time.as_deref() {
        None | Some("") => now,
        Some(text) => Timestamp::parse_rfc3339(text)
            .map_err(|_| ApiError::bad_request("startTime is not an ISO 8601 date and time"))?
            .as_unix_millis(),
    };
    Ok(JobSpec {
        id,
        kind,
        query_condition: input.query_condition.unwrap_or_default(),
        start_ms,
        max_execution_s: input.max_execution_time_in_seconds.unwrap_or(0),
        max_devices_per_second: input.max_devices_per_second,
    })
}

/// IoT Hub's `JobResponse`.
pub(super) fn job_json(job: &Job, running: u64) -> Value {
    let spec = &job.spec;
    let mut out = Map::new();
    out.insert("jobId".into(), json!(spec.id));
    out.insert("queryCondition".into(), json!(spec.query_condition));
    out.insert("createdTime".into(), json!(time(job.created_ms)));
    out.insert("startTime".into(), json!(time(spec.start_ms)));
    if let Some(end) = job.end_ms {
        out.insert("endTime".into(), json!(time(end)));
    }
    out.insert(
        "maxExecutionTimeInSeconds".into(),
        json!(spec.max_execution_s),
    );
    out.insert("type".into(), json!(spec.kind.type_name()));
    match &spec.kind {
        JobKind::DeviceMethod(m) => {
            out.insert(
                "cloudToDeviceMethod".into(),
                json!({
                    "methodName": m.method_name,
                    "payload": m.payload,
                    "responseTimeoutInSeconds": m.response_timeout_s,
                    "connectTimeoutInSeconds": m.connect_timeout_s,
                }),
            );
        }
        JobKind::UpdateTwin(t) => {
            let mut twin = Map::new();
            if let Some(tags) = &t.tags {
                twin.insert("tags".into(), tags.clone());
            }
            if let Some(desired) = &t.desired {
                twin.insert("properties".into(), json!({"desired": desired}));
            }
            twin.insert("etag".into(), json!("*"));
            out.insert("updateTwin".into(), Value::Object(twin));
        }
    }
    if let Some(rate) = spec.max_devices_per_second {
        out.insert("maxDevicesPerSecond".into(), json!(rate));
    }
    out.insert("status".into(), json!(job.status.name()));
    if let Some(reason) = &job.failure_reason {
        out.insert("failureReason".into(), json!(reason));
        out.insert("statusMessage".into(), json!(reason));
    }
    let s = job.statistics(running);
    out.insert(
        "deviceJobStatistics".into(),
        json!({
            "deviceCount": s.device_count,
            "failedCount": s.failed_count,
            "succeededCount": s.succeeded_count,
            "runningCount": s.running_count,
            "pendingCount": s.pending_count,
        }),
    );
    Value::Object(out)
}

/// A user session's extra permission over the whole hub (beyond the route's own).
async fn require_user(state: &HttpState, caller: &Caller, permission: Permission) -> ApiResult<()> {
    let Caller::User { name, .. } = caller else {
        return Ok(());
    };
    let access = state
        .access()
        .ok_or_else(|| ApiError::unauthorized("user sessions are not enabled on this hub"))?;
    let user = UserName::new(name.clone())
        .map_err(|_| ApiError::forbidden("the session's user name is not valid"))?;
    match access.check(&user, permission, &Target::Hub).await {
        Decision::Allow => Ok(()),
        Decision::Deny(reason) => Err(ApiError::forbidden(format!(
            "user {user} may not {permission} on the hub: {reason}"
        ))),
    }
}

/// `PUT /jobs/v2/{jobId}`: creates a job (it starts at `startTime`, at once when absent or
/// past).
pub(crate) async fn put(
    caller: Caller,
    Path(id): Path<String>,
    State(state): State<HttpState>,
    JsonBody(input): JsonBody<JobIn>,
) -> ApiResult<Json<Value>> {
    let spec = spec_of(id, input)?;
    match spec.kind {
        JobKind::DeviceMethod(_) => caller.require(Rights::SERVICE_CONNECT)?,
        JobKind::UpdateTwin(_) => {
            caller.require(Rights::SERVICE_CONNECT.union(Rights::REGISTRY_WRITE))?;
            require_user(&state, &caller, Permission::UpdateTwin).await?;
        }
    }
    let job = fleet(&state)?.jobs.create(spec).await?;
    Ok(Json(job_json(&job, 0)))
}

/// `GET /jobs/v2/{jobId}`.
pub(crate) async fn get(
    caller: Caller,
    Path(id): Path<String>,
    State(state): State<HttpState>,
) -> ApiResult<Json<Value>> {
    caller.require(Rights::REGISTRY_READ.union(Rights::SERVICE_CONNECT))?;
    let (job, running) = fleet(&state)?.jobs.get(&id)?;
    Ok(Json(job_json(&job, running)))
}

/// `POST /jobs/v2/{jobId}/cancel`.
pub(crate) async fn cancel(
    caller: Caller,
    Path(id): Path<String>,
    State(state): State<HttpState>,
) -> ApiResult<Json<Value>> {
    caller.require(Rights::SERVICE_CONNECT.union(Rights::REGISTRY_WRITE))?;
    let jobs = &fleet(&state)?.jobs;
    jobs.cancel(&id).await?;
    let (job, running) = jobs.get(&id)?;
    Ok(Json(job_json(&job, running)))
}

/// The filters of `GET /jobs/v2/query`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JobQuery {
    job_type: Option<String>,
    job_status: Option<String>,
}

/// `GET /jobs/v2/query?jobType=…&jobStatus=…`: IoT Hub's `QueryResult` of `JobResponse`s,
/// newest first (one page).
pub(crate) async fn query(
    caller: Caller,
    Query(filter): Query<JobQuery>,
    State(state): State<HttpState>,
) -> ApiResult<Json<Value>> {
    caller.require(Rights::REGISTRY_READ.union(Rights::SERVICE_CONNECT))?;
    let kind = filter.job_type.filter(|t| !t.is_empty());
    if let Some(k) = &kind
        && !["scheduleDeviceMethod", "scheduleUpdateTwin"]
            .iter()
            .any(|t| t.eq_ignore_ascii_case(k))
    {
        return Err(ApiError::bad_request(format!("unknown jobType {k:?}")));
    }
    let status = match filter.job_status.as_deref() {
        None | Some("") => None,
        Some(name) => Some(
            JobStatus::parse(name)
                .ok_or_else(|| ApiError::bad_request(format!("unknown jobStatus {name:?}")))?,
        ),
    };
    let items: Vec<Value> = fleet(&state)?
        .jobs
        .query(kind.as_deref(), status)
        .iter()
        .map(|(job, running)| job_json(job, *running))
        .collect();
    Ok(Json(json!({"type": "jobResponse", "items": items})))
}
