//! Live streams for a dashboard: Server-Sent Events over the hub's logs, pushed as records land
//! (the log's `wait_for`, no polling loop).
//!
//! * `GET /devices/{id}/telemetry/stream` — one device's telemetry, from the hub's telemetry log
//!   ([`HttpState::with_telemetry_stream`]). Needs `read` on the device for a user session, or
//!   `ServiceConnect` / `RegistryRead` for a shared access policy.
//! * `GET /alerts/stream` — the records of an alerts topic (what a rule writes with
//!   `INTO alerts`, [`HttpState::with_alerts_stream`]). A user session with `read` over all
//!   devices gets every alert; a user whose `read` grants hold only some devices gets only the
//!   alerts of those devices (the listings' [`RecordFilter`], decided on the device's registry
//!   record as each alert passes; grants are read once, when the stream opens). An alert's
//!   device is the record's key, else its payload's `deviceId` ([`alert_device`]); an alert
//!   whose device has no registry record reaches only users who read every device.
//!
//! Each stream first replays the recent past — the device's records among the last `backlog`
//! records of its partition (default [`DEFAULT_BACKLOG`], at most [`MAX_BACKLOG`]); for alerts,
//! the records of the last `sinceSeconds` (default one hour) among the last `backlog` of each
//! partition — then follows the log. Events are `event: telemetry` or `event: alert` with
//! `id: {partition}-{offset}` and one line of JSON:
//!
//! ```json
//! {"deviceId":"pump-7","partition":0,"offset":41,"enqueuedTimeMs":1765000000000,
//!  "deviceTimeMs":null,"properties":{"content-type":"application/json"},"body":{"temperature":21.5}}
//! ```
//!
//! `body` is the payload parsed as JSON, or its text when it is not JSON. A comment line
//! (`: keep-alive`) every [`KEEP_ALIVE`] keeps proxies from closing an idle stream and finds a
//! closed client: the tasks reading the log end with the response.
//!
//! [`HttpState::close_streams`] ends every stream (before a graceful shutdown).
//!
//! Browsers' `EventSource` cannot send an `Authorization` header, and a session token in a URL
//! would land in logs and history; the dashboard reads the stream with `fetch` and parses the
//! events itself (`ui/sse.js`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use iot_core::{
    DeviceId, Log, Offset, PartitionId, ReadLimits, StoredRecord, Timestamp, partition_for_key,
};
use iot_provisioning::access::RecordFilter;
use iot_registry::Registry;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::auth::{Caller, authenticate, bearer};
use super::error::{ApiError, ApiResult, code};
use super::extract::DevicePath;
use super::policy::Rights;
use super::state::HttpState;

/// One device's live telemetry.
pub const TELEMETRY_STREAM_PATH: &str = "/devices/{id}/telemetry/stream";
/// The live alerts feed.
pub const ALERTS_STREAM_PATH: &str = "/alerts/stream";
/// Records of the partition scanned for the replay, unless `backlog` says otherwise.
pub const DEFAULT_BACKLOG: u64 = 500;
/// The most records a replay scans per partition.
pub const MAX_BACKLOG: u64 = 10_000;
/// How often an idle stream sends a comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How often an open stream checks its caller's credential again.
pub const RECHECK: Duration = Duration::from_secs(15);
/// Events buffered per stream before the log readers wait for the client.
const BUFFER: usize = 256;

/// The routes (404 while the state has no log for them).
pub(super) fn routes() -> Router<HttpState> {
    Router::new()
        .route(TELEMETRY_STREAM_PATH, get(telemetry))
        .route(ALERTS_STREAM_PATH, get(alerts))
}

/// The query parameters of both streams (`api-version` is checked elsewhere).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StreamQuery {
    backlog: Option<u64>,
    since_seconds: Option<u64>,
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, code::NOT_FOUND, "no such resource")
}

fn log_error(error: &iot_core::Error) -> ApiError {
    ApiError::internal(error.is_retryable(), "log", error)
}

/// Where a replay of `backlog` records of `partition` starts.
async fn replay_start(log: &dyn Log, partition: PartitionId, backlog: u64) -> ApiResult<Offset> {
    let next = log
        .next_offset(partition)
        .await
        .map_err(|e| log_error(&e))?;
    let earliest = log
        .earliest_offset(partition)
        .await
        .map_err(|e| log_error(&e))?;
    Ok(Offset(next.0.saturating_sub(backlog).max(earliest.0)))
}

/// `GET /devices/{id}/telemetry/stream`.
async fn telemetry(
    State(state): State<HttpState>,
    caller: Caller,
    headers: HeaderMap,
    DevicePath(device): DevicePath,
    Query(query): Query<StreamQuery>,
) -> ApiResult<Response> {
    caller.require(Rights::SERVICE_CONNECT.union(Rights::REGISTRY_READ))?;
    let log = state.telemetry_stream().ok_or_else(not_found)?.clone();
    let partition = partition_for_key(device.as_str(), log.partition_count());
    let backlog = query.backlog.unwrap_or(DEFAULT_BACKLOG).min(MAX_BACKLOG);
    let from = replay_start(log.as_ref(), partition, backlog).await?;
    let (tx, rx) = mpsc::channel(BUFFER);
    let key = device.as_str().to_owned();
    let credential = Credential::of(
        &state,
        &headers,
        TELEMETRY_STREAM_PATH,
        Some(device.clone()),
    );
    let task = tokio::spawn(follow(
        log,
        partition,
        from,
        "telemetry",
        Keep {
            record: Box::new(move |stored| stored.record.key == key),
            scope: None,
        },
        tx,
        state.streams_closed().clone(),
        credential,
    ));
    tracing::debug!(device = %device, "telemetry stream opened");
    Ok(event_stream(rx, vec![task]))
}

/// `GET /alerts/stream`.
async fn alerts(
    State(state): State<HttpState>,
    caller: Caller,
    headers: HeaderMap,
    Query(query): Query<StreamQuery>,
) -> ApiResult<Response> {
    caller.require(Rights::SERVICE_CONNECT.union(Rights::REGISTRY_READ))?;
    let log = state.alerts_stream().ok_or_else(not_found)?.clone();
    // A user who reads only some devices (the route is a listing, `user_access::LISTINGS`).
    let scope = caller.listing_filter().map(|filter| {
        Arc::new(AlertScope {
            filter: filter.clone(),
            registry: state.registry().clone(),
        })
    });
    let backlog = query.backlog.unwrap_or(DEFAULT_BACKLOG).min(MAX_BACKLOG);
    let since =
        Timestamp::now().saturating_sub(Duration::from_secs(query.since_seconds.unwrap_or(3600)));
    let (tx, rx) = mpsc::channel(BUFFER);
    let credential = Credential::of(&state, &headers, ALERTS_STREAM_PATH, None);
    let mut tasks = Vec::new();
    for p in 0..log.partition_count() {
        let partition = PartitionId(p);
        let from = replay_start(log.as_ref(), partition, backlog).await?;
        tasks.push(tokio::spawn(follow(
            log.clone(),
            partition,
            from,
            "alert",
            Keep {
                record: Box::new(move |stored| stored.enqueued_time >= since),
                scope: scope.clone(),
            },
            tx.clone(),
            state.streams_closed().clone(),
            credential.clone(),
        )));
    }
    Ok(event_stream(rx, tasks))
}

/// The device an alert is about: the payload's `deviceId`, else the record's key (what
/// `SELECT deviceId, … INTO alerts` writes; the alert push processor reads it the same way).
pub fn alert_device(stored: &StoredRecord) -> Option<DeviceId> {
    // The key first: a record-by-record rule keeps the sending device's key, which the gateway
    // set from its authentication, while the payload's `deviceId` is whatever the device wrote.
    DeviceId::new(&stored.record.key).ok().or_else(|| {
        serde_json::from_slice::<Value>(&stored.record.payload)
            .ok()
            .and_then(|v| v.get("deviceId")?.as_str().map(str::to_owned))
            .and_then(|id| DeviceId::new(&id).ok())
    })
}

/// The devices a user's alerts stream shows: their `read` grants as a [`RecordFilter`], decided
/// on each alert's device's registry record.
#[derive(Debug)]
struct AlertScope {
    filter: RecordFilter,
    registry: Arc<dyn Registry>,
}

impl AlertScope {
    /// Whether the alert's device is in the scope. Without a device or a registry record, or
    /// when the registry fails, no (fail closed).
    async fn holds(&self, stored: &StoredRecord) -> bool {
        let Some(device) = alert_device(stored) else {
            return false;
        };
        match self.registry.get(&device).await {
            Ok(record) => record.is_some_and(|r| self.filter.holds(&r)),
            Err(e) => {
                tracing::warn!(error = %e, device = %device, "alerts stream: registry read failed");
                false
            }
        }
    }
}

/// Which records a stream sends: those `record` accepts and, when set, `scope` holds.
struct Keep {
    record: Box<dyn Fn(&StoredRecord) -> bool + Send + Sync>,
    scope: Option<Arc<AlertScope>>,
}

impl Keep {
    async fn keeps(&self, stored: &StoredRecord) -> bool {
        if !(self.record)(stored) {
            return false;
        }
        match &self.scope {
            Some(scope) => scope.holds(stored).await,
            None => true,
        }
    }
}

/// The credential a stream was opened with, checked again every [`RECHECK`] while it is open:
/// the stream ends once the route would refuse it — a session logged out, expired, of a user
/// disabled or deleted, or without the grant any more; a SAS token expired or its policy gone.
/// (A user's alerts scope is the one decided at opening; a narrower grant applies on reopening.)
#[derive(Clone)]
struct Credential {
    state: HttpState,
    /// The `Authorization` header, wiped when the stream ends.
    header: Arc<zeroize::Zeroizing<String>>,
    pattern: &'static str,
    device: Option<DeviceId>,
}

impl Credential {
    /// The request's credential; `None` without an `Authorization` header (client certificates
    /// are devices', which these routes refuse).
    fn of(
        state: &HttpState,
        headers: &HeaderMap,
        pattern: &'static str,
        device: Option<DeviceId>,
    ) -> Option<Self> {
        let header = headers.get(AUTHORIZATION)?.to_str().ok()?;
        Some(Credential {
            state: state.clone(),
            header: Arc::new(zeroize::Zeroizing::new(header.to_owned())),
            pattern,
            device,
        })
    }

    /// Whether the route would still accept it now.
    async fn still_accepted(&self) -> bool {
        if let Some(token) = bearer(&self.header) {
            let Some(access) = self.state.access() else {
                return false;
            };
            let device = self.device.clone();
            return super::user_access::authorize(
                access,
                token,
                &Method::GET,
                Some(self.pattern),
                device,
            )
            .await
            .is_ok();
        }
        match authenticate(&self.state, &self.header, iot_identity::sas::unix_now()).await {
            Ok(caller) => caller
                .require(Rights::SERVICE_CONNECT.union(Rights::REGISTRY_READ))
                .is_ok(),
            Err(_) => false,
        }
    }
}

/// Reads `partition` from `from` on, forever, sending each record `keep` keeps as an event
/// named `event`; ends when the client is gone, the log fails, `closed` is cancelled or the
/// `credential` is no longer accepted.
#[allow(clippy::too_many_arguments)]
async fn follow(
    log: Arc<dyn Log>,
    partition: PartitionId,
    mut next: Offset,
    event: &'static str,
    keep: Keep,
    tx: mpsc::Sender<Bytes>,
    closed: CancellationToken,
    credential: Option<Credential>,
) {
    let mut checked = tokio::time::Instant::now();
    loop {
        if closed.is_cancelled() {
            return;
        }
        if checked.elapsed() >= RECHECK {
            if let Some(credential) = &credential
                && !credential.still_accepted().await
            {
                tracing::debug!(
                    event,
                    "live stream ended: its credential is no longer accepted"
                );
                return;
            }
            checked = tokio::time::Instant::now();
        }
        let records = match log.read(partition, next, ReadLimits::default()).await {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!(error = %e, partition = partition.0, "live stream: log read failed");
                return;
            }
        };
        for stored in &records {
            next = Offset(stored.offset.0.saturating_add(1));
            if !keep.keeps(stored).await {
                continue;
            }
            if tx.send(encode(event, stored)).await.is_err() {
                return;
            }
        }
        if !records.is_empty() {
            continue;
        }
        tokio::select! {
            waited = log.wait_for(partition, next) => {
                if let Err(e) = waited {
                    tracing::warn!(error = %e, partition = partition.0, "live stream: wait failed");
                    return;
                }
            }
            () = closed.cancelled() => return,
            () = tokio::time::sleep(KEEP_ALIVE) => {
                if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// One SSE event: `id`, `event`, and the record as one line of JSON.
fn encode(event: &str, stored: &StoredRecord) -> Bytes {
    let record = &stored.record;
    let body = serde_json::from_slice::<Value>(&record.payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&record.payload).into_owned()));
    let properties: Map<String, Value> = record
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    let data = json!({
        "deviceId": record.key,
        "partition": stored.partition.0,
        "offset": stored.offset.0,
        "enqueuedTimeMs": stored.enqueued_time.as_unix_millis(),
        "deviceTimeMs": record.device_time.map(Timestamp::as_unix_millis),
        "properties": properties,
        "body": body,
    });
    // serde_json writes no raw newline, so the data is one `data:` line.
    Bytes::from(format!(
        "id: {}-{}\nevent: {event}\ndata: {data}\n\n",
        stored.partition.0, stored.offset.0
    ))
}

/// Aborts the log readers when the response body is dropped (the client went away).
struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// A `text/event-stream` response of what `rx` receives.
fn event_stream(rx: mpsc::Receiver<Bytes>, tasks: Vec<JoinHandle<()>>) -> Response {
    let guard = AbortOnDrop(tasks);
    let first = futures::stream::once(async {
        Ok::<_, Infallible>(Bytes::from_static(b"retry: 3000\n\n"))
    });
    let rest = futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, Infallible>(chunk), (rx, guard)))
    });
    let mut response = Body::from_stream(futures::StreamExt::chain(first, rest)).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Tells nginx-style proxies not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
