//! `POST /devices/query`: IoT Hub's device queries, answered from the registry's indexes.
//!
//! A query that reads only tags and the device id runs in the registry as it is, paged by the
//! registry's continuation tokens. One that also reads reported or desired properties, the
//! status or the connection state runs in two steps: the registry answers the conjuncts it can
//! (a prefilter, from its indexes), and each candidate's twin view is then checked against the
//! whole condition with the registry's own evaluator (`Query::matches`), so the semantics are
//! the registry's in both cases. Twin properties are not indexed (they live in the gateway's
//! twin store, not in the registry), so such a query costs a twin read per candidate.
//!
//! A user session that may read only some devices ([`Caller::listing_filter`]) gets the same
//! answers over those devices alone: each registry record is decided by the user's grants before
//! anything else is read for it, pages are filled from as many registry pages as it takes, and
//! the continuation token resumes after the last record examined. Counts are then counted from
//! the records rather than asked of the registry.

mod translate;

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use iot_core::DeviceId;
use iot_registry::{DeviceRecord, PageRequest, Query};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::json::{query_view, twin_json};
use super::lookup::view_of;
use crate::http::auth::Caller;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::JsonBody;
use crate::http::policy::Rights;
use crate::http::state::HttpState;
use iot_provisioning::access::RecordFilter;
use translate::{Selection, Translated, prefilter, translate, uses_derived};

/// IoT Hub's `QuerySpecification`.
#[derive(Debug, Deserialize)]
pub(crate) struct QueryIn {
    query: String,
}

/// The page size when the caller sends no `x-ms-max-item-count` (IoT Hub's default).
const DEFAULT_PAGE: usize = 100;
/// The registry page size used while scanning for counts and groups.
const SCAN_PAGE: usize = 1_000;

fn page_request(headers: &HeaderMap, max: usize) -> ApiResult<PageRequest> {
    let max_items = match headers.get("x-ms-max-item-count") {
        None => DEFAULT_PAGE.min(max),
        Some(v) => {
            let n: u64 = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    ApiError::bad_request("x-ms-max-item-count must be a positive integer")
                })?;
            // Larger asks are lowered to the page limit, as IoT Hub does.
            usize::try_from(n).unwrap_or(usize::MAX).min(max)
        }
    };
    let continuation = match headers.get("x-ms-continuation") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::bad_request("x-ms-continuation is not ASCII"))?
                .to_owned(),
        )
        .filter(|s| !s.is_empty()),
    };
    Ok(PageRequest {
        max_items,
        continuation,
    })
}

/// One candidate with what the condition and the answer need.
struct Candidate {
    twin_json: Value,
    view: DeviceRecord,
}

async fn candidate(state: &HttpState, record: DeviceRecord) -> ApiResult<Option<Candidate>> {
    let Some(identity) = state.identity().get(&record.device_id).await? else {
        return Ok(None);
    };
    let id = record.device_id.clone();
    let view = view_of(state, (*identity).clone(), record).await?;
    let twin = match state.gateway().get_twin(&id).await {
        Ok(t) => t,
        // Deleted between the registry read and now.
        Err(crate::Error::DeviceNotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(Some(Candidate {
        twin_json: twin_json(&view, &twin),
        view: query_view(&view, &twin),
    }))
}

fn parse(text: &str) -> ApiResult<Query> {
    Query::parse(text).map_err(|e| iot_registry::Error::Query(e).into())
}

/// `POST /devices/query`.
pub(crate) async fn query(
    caller: Caller,
    State(state): State<HttpState>,
    headers: HeaderMap,
    JsonBody(input): JsonBody<QueryIn>,
) -> ApiResult<Response> {
    caller.require(Rights::REGISTRY_READ.union(Rights::SERVICE_CONNECT))?;
    if super::fleet::device_jobs::is_device_jobs_query(&input.query) {
        // Job outcomes span every device a job targeted (method answers included), and jobs are
        // the hub's (user_access.rs checks their routes on the whole hub): a user whose reads
        // are filtered must not read them here either.
        if caller.listing_filter().is_some() {
            return Err(ApiError::forbidden(
                "devices.jobs needs read on every device of the hub",
            ));
        }
        let items = super::fleet::device_jobs::answer(&state, &input.query)?;
        return Ok(answer(items, None, "deviceJob"));
    }
    let translated = translate(&input.query)?;
    let full = parse(&translated.registry_text)?;
    if full
        .order_by()
        .any(|o| o.field.root() == iot_registry::query::FieldRoot::Tags)
    {
        return Err(ApiError::bad_request(
            "ORDER BY is supported on tags and deviceId only",
        ));
    }
    let derived = uses_derived(&full.condition());
    let page = page_request(&headers, state.config().max_page_size)?;
    let filter = caller.listing_filter();
    match &translated.selection {
        Selection::Twins => twins(&state, &translated, &full, derived, page, filter).await,
        Selection::Count(alias) => {
            let n = if derived {
                scan(&state, &full, filter).await?.len() as u64
            } else if let Some(filter) = filter {
                count_held(&state, &full, filter).await?
            } else {
                state.registry().count(&full).await?
            };
            let n = translated.top.map_or(n, |top| n.min(top));
            let mut item = Map::new();
            item.insert(alias.clone(), Value::from(n));
            Ok(answer(vec![Value::Object(item)], None, "raw"))
        }
        Selection::GroupCount { path, name, alias } => {
            let mut groups: BTreeMap<String, (Option<Value>, u64)> = BTreeMap::new();
            for c in scan(&state, &full, filter).await? {
                let value = value_at(&c.view, path);
                let key = value.as_ref().map(Value::to_string).unwrap_or_default();
                groups.entry(key).or_insert((value, 0)).1 += 1;
            }
            let items = groups
                .into_values()
                .map(|(value, n)| {
                    let mut item = Map::new();
                    if let Some(v) = value {
                        item.insert(name.clone(), v);
                    }
                    item.insert(alias.clone(), Value::from(n));
                    Value::Object(item)
                })
                .collect();
            Ok(answer(items, None, "raw"))
        }
    }
}

fn answer(items: Vec<Value>, continuation: Option<String>, item_type: &'static str) -> Response {
    let mut response = Json(Value::Array(items)).into_response();
    let headers = response.headers_mut();
    headers.insert("x-ms-item-type", HeaderValue::from_static(item_type));
    if let Some(token) = continuation.and_then(|t| HeaderValue::from_str(&t).ok()) {
        headers.insert("x-ms-continuation", token);
    }
    response
}

async fn twins(
    state: &HttpState,
    translated: &Translated,
    full: &Query,
    derived: bool,
    mut page: PageRequest,
    filter: Option<&RecordFilter>,
) -> ApiResult<Response> {
    if !derived && filter.is_none() {
        // The registry pages (and applies TOP as LIMIT) itself.
        let text = match translated.top {
            Some(n) => format!("{} LIMIT {n}", translated.registry_text),
            None => translated.registry_text.clone(),
        };
        let paged = parse(&text)?;
        let mut result = state.registry().query(&paged, &page).await?;
        let continuation = result.continuation.take();
        let mut items = Vec::with_capacity(result.len());
        for record in result.into_records()? {
            if let Some(c) = candidate(state, record).await? {
                items.push(c.twin_json);
            }
        }
        return Ok(answer(items, continuation, "twin"));
    }
    // The registry answers what it can; the rest (derived fields, the user's grants) is decided
    // here, record by record.
    let pre = if derived {
        prefilter_query(full)?
    } else {
        parse(&translated.registry_text)?
    };
    let wanted = translated.top.map_or(page.max_items, |n| {
        page.max_items.min(usize::try_from(n).unwrap_or(usize::MAX))
    });
    let mut items = Vec::new();
    loop {
        page.max_items = (wanted - items.len()).max(1);
        let mut result = state.registry().query(&pre, &page).await?;
        let continuation = result.continuation.take();
        for record in result.into_records()? {
            if !held(filter, &record) {
                continue;
            }
            if let Some(c) = candidate(state, record).await?
                && (!derived || full.matches(&c.view))
            {
                items.push(c.twin_json);
            }
        }
        match continuation {
            Some(token) if items.len() < wanted => page.continuation = Some(token),
            // TOP ends the answer; otherwise the registry's token resumes after the last
            // record examined (the page was asked for no more than the items still wanted).
            Some(token) if translated.top.is_none() => {
                return Ok(answer(items, Some(token), "twin"));
            }
            _ => return Ok(answer(items, None, "twin")),
        }
    }
}

fn prefilter_query(full: &Query) -> ApiResult<Query> {
    let mut text = prefilter(&full.condition());
    let order: Vec<String> = full
        .order_by()
        .map(|o| {
            format!(
                "{}{}",
                o.field.as_str(),
                if o.descending { " DESC" } else { "" }
            )
        })
        .collect();
    if !order.is_empty() {
        text.push_str(" ORDER BY ");
        text.push_str(&order.join(", "));
    }
    parse(&text)
}

/// Whether a listing may show `record` (no filter: every record).
fn held(filter: Option<&RecordFilter>, record: &DeviceRecord) -> bool {
    filter.is_none_or(|f| f.holds(record))
}

/// How many records of `full` (a query the registry answers alone) `filter` holds.
async fn count_held(state: &HttpState, full: &Query, filter: &RecordFilter) -> ApiResult<u64> {
    let mut page = PageRequest {
        max_items: SCAN_PAGE,
        continuation: None,
    };
    let mut n = 0u64;
    loop {
        let mut result = state.registry().query(full, &page).await?;
        let continuation = result.continuation.take();
        n += result
            .into_records()?
            .iter()
            .filter(|r| filter.holds(r))
            .count() as u64;
        match continuation {
            Some(token) => page.continuation = Some(token),
            None => return Ok(n),
        }
    }
}

/// Every candidate matching `full` that `filter` holds, in registry order.
async fn scan(
    state: &HttpState,
    full: &Query,
    filter: Option<&RecordFilter>,
) -> ApiResult<Vec<Candidate>> {
    let pre = prefilter_query(full)?;
    let mut page = PageRequest {
        max_items: SCAN_PAGE,
        continuation: None,
    };
    let mut out = Vec::new();
    loop {
        let mut result = state.registry().query(&pre, &page).await?;
        let continuation = result.continuation.take();
        for record in result.into_records()? {
            if !held(filter, &record) {
                continue;
            }
            if let Some(c) = candidate(state, record).await?
                && full.matches(&c.view)
            {
                out.push(c);
            }
        }
        match continuation {
            Some(token) => page.continuation = Some(token),
            None => return Ok(out),
        }
    }
}

/// The registry query for an IoT Hub condition (the `WHERE` of `SELECT * FROM devices`).
pub(crate) fn condition_query(condition: &str) -> ApiResult<Query> {
    let translated = translate(&format!("SELECT * FROM devices WHERE {condition}"))?;
    parse(&translated.registry_text)
}

/// Every device the IoT Hub condition matches, in registry order (what a job or a
/// configuration targets): the same two steps as `POST /devices/query`.
pub(crate) async fn select_ids(state: &HttpState, condition: &str) -> ApiResult<Vec<DeviceId>> {
    let full = condition_query(condition)?;
    // Unfiltered: fleet operations are allowed only to callers with the whole hub in scope
    // (user_access.rs), so every matching device is theirs.
    Ok(scan(state, &full, None)
        .await?
        .into_iter()
        .map(|c| c.view.device_id)
        .collect())
}

/// How many devices a whole IoT Hub query over `devices` answers (its select list is not
/// read: a configuration's metric counts the devices its condition matches).
pub(crate) async fn count_devices(state: &HttpState, query: &str) -> ApiResult<u64> {
    let lower = query.to_ascii_lowercase();
    let from = lower
        .find(" from ")
        .ok_or_else(|| ApiError::bad_request("a metric query needs SELECT … FROM devices"))?;
    let after = lower[from + 6..].trim_start();
    let source_end = after.find(char::is_whitespace).unwrap_or(after.len());
    if &after[..source_end] != "devices" {
        return Err(ApiError::bad_request(
            "a metric query reads FROM devices (modules and jobs are not counted)",
        ));
    }
    let full = match lower.find(" where ") {
        Some(at) => condition_query(&query[at + 7..])?,
        None => parse(&translate("SELECT * FROM devices")?.registry_text)?,
    };
    // Unfiltered, as in `select_ids`.
    Ok(scan(state, &full, None).await?.len() as u64)
}

/// The value at a rewritten path of the query view (`deviceId`, `metadata.…`, `tags.…`).
fn value_at(record: &DeviceRecord, path: &[String]) -> Option<Value> {
    let (root, rest) = path.split_first()?;
    let mut current = match root.as_str() {
        "deviceId" => {
            return rest
                .is_empty()
                .then(|| Value::from(record.device_id.as_str()));
        }
        "metadata" => &record.metadata,
        "tags" => &record.tags,
        _ => return None,
    };
    let (last, middle) = rest.split_last()?;
    for key in middle {
        current = current.get(key)?.as_object()?;
    }
    current.get(last).cloned()
}
