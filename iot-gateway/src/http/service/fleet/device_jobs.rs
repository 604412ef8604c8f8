//! `SELECT * FROM devices.jobs [WHERE devices.jobs.jobId = '…']` on `POST /devices/query`:
//! each device's outcome in each job, in IoT Hub's device job shape.

use iot_core::Timestamp;
use serde_json::{Map, Value, json};

use super::errors::fleet;
use crate::fleet::{DeviceJobStatus, Job, JobStatus};
use crate::http::error::{ApiError, ApiResult};
use crate::http::state::HttpState;
use crate::rfc3339::format_millis;

/// Whether `text` queries `devices.jobs`.
pub(crate) fn is_device_jobs_query(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .any(|w| w[0] == "from" && w[1] == "devices.jobs")
}

/// The `jobId` a device jobs query names (`… WHERE devices.jobs.jobId = 'x'`), if any.
fn job_filter(text: &str) -> ApiResult<Option<String>> {
    let lower = text.to_ascii_lowercase();
    let Some(at) = lower.find(" where ") else {
        return Ok(None);
    };
    let condition = text[at + 7..].trim();
    let bad = || {
        ApiError::bad_request("a devices.jobs query supports WHERE devices.jobs.jobId = '…' only")
    };
    let (field, value) = condition.split_once('=').ok_or_else(bad)?;
    let field = field.trim();
    if !field.eq_ignore_ascii_case("devices.jobs.jobId") && !field.eq_ignore_ascii_case("jobId") {
        return Err(bad());
    }
    let value = value.trim();
    let inner = value
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .or_else(|| value.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
        .ok_or_else(bad)?;
    Ok(Some(inner.replace("''", "'")))
}

fn time(ms: u64) -> String {
    format_millis(Timestamp::from_unix_millis(ms))
}

/// IoT Hub's device job documents of `job`: one per target device.
fn device_jobs(job: &Job, out: &mut Vec<Value>) {
    for device in job.targets.iter().flatten() {
        let mut doc = Map::new();
        doc.insert("deviceId".into(), json!(device));
        doc.insert("jobId".into(), json!(job.spec.id));
        doc.insert("jobType".into(), json!(job.spec.kind.type_name()));
        doc.insert("createdDateTimeUtc".into(), json!(time(job.created_ms)));
        match job.outcomes.get(device) {
            Some(o) => {
                doc.insert("status".into(), json!(o.status.name()));
                doc.insert("startTimeUtc".into(), json!(time(o.start_ms)));
                doc.insert("endTimeUtc".into(), json!(time(o.end_ms)));
                doc.insert("lastUpdatedDateTimeUtc".into(), json!(time(o.end_ms)));
                if let Some((status, payload)) = &o.method_response {
                    doc.insert(
                        "outcome".into(),
                        json!({"deviceMethodResponse": {"status": status, "payload": payload}}),
                    );
                }
                if let Some((code, description)) = &o.error {
                    doc.insert(
                        "error".into(),
                        json!({"code": code, "description": description}),
                    );
                }
            }
            None => {
                let status = if job.status == JobStatus::Scheduled {
                    "scheduled"
                } else {
                    DeviceJobStatus::Pending.name()
                };
                doc.insert("status".into(), json!(status));
                doc.insert("lastUpdatedDateTimeUtc".into(), json!(time(job.created_ms)));
            }
        }
        out.push(Value::Object(doc));
    }
}

/// The answer's items.
pub(crate) fn answer(state: &HttpState, text: &str) -> ApiResult<Vec<Value>> {
    let filter = job_filter(text)?;
    let jobs = &fleet(state)?.jobs;
    let mut items = Vec::new();
    match filter {
        Some(id) => {
            let (job, _) = jobs.get(&id)?;
            device_jobs(&job, &mut items);
        }
        None => {
            for (job, _) in jobs.query(None, None) {
                device_jobs(&job, &mut items);
            }
        }
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_jobs_queries_are_recognised() {
        assert!(is_device_jobs_query(
            "SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'j1'"
        ));
        assert!(!is_device_jobs_query("SELECT * FROM devices"));
        assert_eq!(
            job_filter("SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'j''1'")
                .expect("filter"),
            Some("j'1".into())
        );
        assert!(job_filter("SELECT * FROM devices.jobs WHERE status = 'x'").is_err());
    }
}
