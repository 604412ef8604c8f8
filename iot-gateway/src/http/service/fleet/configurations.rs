//! `PUT/GET/DELETE /configurations/{configurationId}`, `GET /configurations`,
//! `POST /configurations/testQueries`.
//!
//! Rights: writing needs RegistryWrite, reading RegistryRead (as device identities). A user
//! session needs `updateTwin` over the whole hub to write one (a configuration writes the
//! desired properties of whichever devices its condition matches) and `read` to read them.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use iot_core::Timestamp;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::errors::fleet;
use crate::fleet::{Configuration, ConfigurationEngine, ConfigurationSpec};
use crate::http::auth::Caller;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::JsonBody;
use crate::http::policy::Rights;
use crate::http::state::HttpState;
use crate::rfc3339::format_millis;

/// IoT Hub's `ConfigurationContent`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ContentIn {
    device_content: Option<Map<String, Value>>,
    modules_content: Option<Map<String, Value>>,
    module_content: Option<Map<String, Value>>,
}

/// IoT Hub's `ConfigurationMetrics` as written (only the queries are read).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct MetricsIn {
    queries: Option<BTreeMap<String, String>>,
}

/// IoT Hub's `Configuration` as written.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConfigurationIn {
    id: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    content: Option<ContentIn>,
    target_condition: Option<String>,
    priority: Option<i64>,
    metrics: Option<MetricsIn>,
    etag: Option<String>,
}

fn spec_of(id: String, input: ConfigurationIn) -> ApiResult<ConfigurationSpec> {
    if let Some(body_id) = &input.id
        && *body_id != id
    {
        return Err(ApiError::bad_request(
            "id in the body differs from the one in the path",
        ));
    }
    let content = input.content.unwrap_or_default();
    if content
        .modules_content
        .as_ref()
        .is_some_and(|m| !m.is_empty())
        || content
            .module_content
            .as_ref()
            .is_some_and(|m| !m.is_empty())
    {
        return Err(ApiError::bad_request(
            "module configurations (modulesContent, moduleContent) are not supported",
        ));
    }
    Ok(ConfigurationSpec {
        id,
        labels: input.labels.unwrap_or_default(),
        device_content: content.device_content.unwrap_or_default(),
        target_condition: input.target_condition.unwrap_or_default(),
        priority: input.priority.unwrap_or(0),
        metrics_queries: input.metrics.and_then(|m| m.queries).unwrap_or_default(),
    })
}

fn time(ms: u64) -> String {
    format_millis(Timestamp::from_unix_millis(ms))
}

/// IoT Hub's `Configuration` answer, with its metrics as of the last evaluation.
async fn configuration_json(engine: &ConfigurationEngine, c: &Configuration) -> Value {
    let system = engine.system_metrics(&c.spec.id);
    let custom = engine.custom_metrics(&c.spec.id).await.unwrap_or_default();
    json!({
        "id": c.spec.id,
        "schemaVersion": "1.0",
        "labels": c.spec.labels,
        "content": {"deviceContent": c.spec.device_content},
        "targetCondition": c.spec.target_condition,
        "createdTimeUtc": time(c.created_ms),
        "lastUpdatedTimeUtc": time(c.updated_ms),
        "priority": c.spec.priority,
        "systemMetrics": {
            "results": {
                "targetedCount": system.targeted_count,
                "appliedCount": system.applied_count,
            },
            "queries": {
                "targetedCount": format!("SELECT deviceId FROM devices WHERE {}", c.spec.target_condition),
                "appliedCount": format!("SELECT deviceId FROM devices WHERE configurations.[[{}]].status = 'Applied'", c.spec.id),
            },
        },
        "metrics": {"results": custom, "queries": c.spec.metrics_queries},
        "etag": c.etag,
    })
}

/// The `If-Match` etag, quotes removed (`*` kept: it means "whatever the current one is").
fn if_match(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get(axum::http::header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::bad_request("If-Match is not ASCII"))?
        .trim();
    let text = text.strip_prefix("W/").unwrap_or(text);
    let text = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    Ok(Some(text.to_owned()).filter(|t| !t.is_empty()))
}

/// `PUT /configurations/{configurationId}`: creates one (no `If-Match`; 409 if it exists) or
/// replaces one (`If-Match: *` or its etag).
pub(crate) async fn put(
    caller: Caller,
    Path(id): Path<String>,
    State(state): State<HttpState>,
    headers: HeaderMap,
    JsonBody(input): JsonBody<ConfigurationIn>,
) -> ApiResult<Json<Value>> {
    caller.require(Rights::REGISTRY_WRITE)?;
    // The body's etag stands in for If-Match when the header is absent.
    let etag = if_match(&headers)?.or_else(|| input.etag.clone().filter(|e| !e.is_empty()));
    let spec = spec_of(id, input)?;
    let engine = &fleet(&state)?.configurations;
    let written = engine.put(spec, etag.as_deref()).await?;
    Ok(Json(configuration_json(engine, &written).await))
}

/// `GET /configurations/{configurationId}`.
pub(crate) async fn get(
    caller: Caller,
    Path(id): Path<String>,
    State(state): State<HttpState>,
) -> ApiResult<Json<Value>> {
    caller.require(Rights::REGISTRY_READ)?;
    let engine = &fleet(&state)?.configurations;
    let c = engine.get(&id)?;
    Ok(Json(configuration_json(engine, &c).await))
}

/// `DELETE /configurations/{configurationId}` (`If-Match` optional).
pub(crate) async fn delete(
    caller: Caller,
    Path(id): Path<String>,
    State(state): State<HttpState>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    caller.require(Rights::REGISTRY_WRITE)?;
    let etag = if_match(&headers)?;
    fleet(&state)?
        .configurations
        .delete(&id, etag.as_deref())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /configurations?top=n`.
#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    top: Option<usize>,
}

/// The most configurations one answer lists (and the default `top`).
const MAX_TOP: usize = 100;

/// `GET /configurations`.
pub(crate) async fn list(
    caller: Caller,
    Query(q): Query<ListQuery>,
    State(state): State<HttpState>,
) -> ApiResult<Json<Value>> {
    caller.require(Rights::REGISTRY_READ)?;
    let top = q.top.unwrap_or(MAX_TOP);
    if top == 0 || top > MAX_TOP {
        return Err(ApiError::bad_request(format!(
            "top must be between 1 and {MAX_TOP}"
        )));
    }
    let engine = &fleet(&state)?.configurations;
    let mut out = Vec::new();
    for c in engine.list(top) {
        out.push(configuration_json(engine, &c).await);
    }
    Ok(Json(Value::Array(out)))
}

/// IoT Hub's `ConfigurationQueriesTestInput`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TestIn {
    target_condition: Option<String>,
    custom_metric_queries: Option<BTreeMap<String, String>>,
}

/// `POST /configurations/testQueries`: each query's error, empty when it is valid.
pub(crate) async fn test_queries(
    caller: Caller,
    State(state): State<HttpState>,
    JsonBody(input): JsonBody<TestIn>,
) -> ApiResult<Json<Value>> {
    caller.require(Rights::REGISTRY_READ)?;
    let engine = &fleet(&state)?.configurations;
    let (condition_error, metric_errors) = engine
        .test_queries(
            input.target_condition.as_deref().unwrap_or(""),
            &input.custom_metric_queries.unwrap_or_default(),
        )
        .await;
    Ok(Json(json!({
        "targetConditionError": condition_error,
        "customMetricQueryErrors": metric_errors,
    })))
}
