//! The upstream forwarder: the local telemetry log, read as a consumer group, sent to the cloud
//! hub through one device client per leaf device.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iot_core::{
    DeviceId, GroupConsumer, GroupName, Log, LogExt, Offset, PartitionId, StartFrom, StoredRecord,
    Timestamp,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use super::convert;
use super::downlink;
use super::error::EdgeError;
use super::identities::UpstreamIdentities;
use super::options::ForwarderOptions;
use crate::client::{ClientError, Delivery, DeviceClient, OutboxConfig, WhenFull};
use crate::gateway::Gateway;
use crate::hub::Hub;

/// The consumer group of the twin-change log is the forwarder's group with this suffix.
pub(crate) const REPORTED_SUFFIX: &str = "-reported";

/// How long the forwarder waits before reading the local log again after an error (a read or a
/// commit failed): it starts over from the committed offsets.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// What a forwarder has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ForwarderStats {
    /// Records acknowledged by the cloud hub (a record sent again after a restart counts again).
    pub forwarded: u64,
    /// Records not forwarded: no upstream identity for their device, options that cannot work,
    /// or a message the cloud hub would refuse. Logged as warnings.
    pub skipped: u64,
    /// Batches committed to the consumer group.
    pub batches: u64,
    /// Records removed from the local log by the retention policy (forwarded or not).
    pub expired: u64,
}

#[derive(Debug, Default)]
struct Counters {
    forwarded: AtomicU64,
    skipped: AtomicU64,
    batches: AtomicU64,
    expired: AtomicU64,
}

/// One leaf's upstream link: its device client and the task passing the cloud's traffic down.
#[derive(Debug)]
struct Link {
    client: Arc<DeviceClient>,
    downlink: JoinHandle<()>,
}

type Links = Arc<Mutex<HashMap<DeviceId, Option<Link>>>>;

/// What the forwarding task needs, shared with the [`Forwarder`] handle.
#[derive(Debug)]
struct Shared {
    log: Arc<dyn Log>,
    local: Arc<dyn Gateway>,
    identities: Arc<dyn UpstreamIdentities>,
    options: Arc<ForwarderOptions>,
    group: GroupName,
    /// `None` for a leaf without a usable upstream identity (looked up once).
    links: Links,
    counters: Counters,
}

/// Forwards a local hub's telemetry to a cloud hub as the leaf devices, and the cloud's C2D
/// messages, direct methods and desired patches back to the local hub. Runs in background tasks
/// until [`shutdown`](Self::shutdown) or drop; a new forwarder with the same group on the same
/// log resumes after the last batch this one committed.
#[derive(Debug)]
pub struct Forwarder {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    retention: JoinHandle<()>,
    reported: Option<JoinHandle<()>>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
        self.retention.abort();
        if let Some(reported) = &self.reported {
            reported.abort();
        }
        for link in lock(&self.shared.links).drain().filter_map(|(_, l)| l) {
            link.downlink.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the map cannot leave it half-changed (single inserts and drains).
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Forwarder {
    /// Starts forwarding `hub`'s telemetry log and its leaves' reported-property patches (from
    /// its twin-change log); C2D messages, methods and desired patches from the cloud go to
    /// `hub`. The leaves [`identities`](UpstreamIdentities::devices) names are connected
    /// upstream at once, others on their first message.
    pub async fn start(
        hub: &Hub,
        identities: Arc<dyn UpstreamIdentities>,
        options: ForwarderOptions,
    ) -> Result<Forwarder, EdgeError> {
        Forwarder::launch(
            hub.telemetry_log().clone(),
            Some(hub.twin_changes_log().clone()),
            Arc::new(hub.clone()),
            identities,
            options,
        )
        .await
    }

    /// Starts forwarding the telemetry records of `log` (keyed by device id, as a hub writes
    /// them; for example a stream processor's output topic), with `local` as the gateway the
    /// cloud's traffic goes to. Reported properties are not forwarded (there is no twin-change
    /// log to read).
    pub async fn start_with(
        log: Arc<dyn Log>,
        local: Arc<dyn Gateway>,
        identities: Arc<dyn UpstreamIdentities>,
        options: ForwarderOptions,
    ) -> Result<Forwarder, EdgeError> {
        Forwarder::launch(log, None, local, identities, options).await
    }

    async fn launch(
        log: Arc<dyn Log>,
        twin_changes: Option<Arc<dyn Log>>,
        local: Arc<dyn Gateway>,
        identities: Arc<dyn UpstreamIdentities>,
        options: ForwarderOptions,
    ) -> Result<Forwarder, EdgeError> {
        let group = GroupName::new(&options.group)
            .map_err(|e| EdgeError::Config(format!("group {:?}: {e}", options.group)))?;
        // Checked before any leaf is connected, so that a refusal leaves nothing running.
        let reported_group = GroupName::new(format!("{group}{REPORTED_SUFFIX}"))
            .map_err(|e| EdgeError::Config(format!("group {:?}: {e}", options.group)))?;
        if options.outbox_capacity == 0 {
            return Err(EdgeError::Config("outbox_capacity must be positive".into()));
        }
        if options.batches_in_flight == 0 {
            return Err(EdgeError::Config(
                "batches_in_flight must be positive".into(),
            ));
        }
        if options.read_limits.max_records == 0 || options.read_limits.max_bytes == 0 {
            return Err(EdgeError::Config("read_limits must be positive".into()));
        }
        // A log that cannot tell the group's offsets fails the start rather than the first
        // batch, in the background.
        GroupConsumer::new(log.clone(), group.clone(), StartFrom::Earliest).await?;
        let shared = Arc::new(Shared {
            log,
            local,
            identities,
            options: Arc::new(options),
            group,
            links: Arc::default(),
            counters: Counters::default(),
        });
        for leaf in shared.identities.devices() {
            shared.link(&leaf).await;
        }
        let task = tokio::spawn(forward_forever(shared.clone()));
        let retention = tokio::spawn(retain_forever(shared.clone()));
        let reported = twin_changes
            .map(|log| tokio::spawn(report_forever(shared.clone(), log, reported_group)));
        Ok(Forwarder {
            shared,
            task,
            retention,
            reported,
        })
    }

    /// What the forwarder has done so far.
    pub fn stats(&self) -> ForwarderStats {
        let c = &self.shared.counters;
        ForwarderStats {
            forwarded: c.forwarded.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
        }
    }

    /// Records in the local log not yet committed as forwarded (by this forwarder's group).
    pub async fn backlog(&self) -> Result<u64, EdgeError> {
        let log = &self.shared.log;
        let mut backlog = 0;
        for p in log.partitions() {
            let next = log.next_offset(p).await?.get();
            let from = match log.committed(&self.shared.group, p).await? {
                Some(committed) => committed.get(),
                None => log.earliest_offset(p).await?.get(),
            };
            backlog += next.saturating_sub(from);
        }
        Ok(backlog)
    }

    /// The leaves with an upstream client now.
    pub fn leaves(&self) -> Vec<DeviceId> {
        let mut leaves: Vec<DeviceId> = lock(&self.shared.links)
            .iter()
            .filter(|(_, l)| l.is_some())
            .map(|(d, _)| d.clone())
            .collect();
        leaves.sort();
        leaves
    }

    /// Stops forwarding and disconnects every upstream client (a batch not yet acknowledged
    /// upstream is not committed: the next forwarder sends it again).
    pub async fn shutdown(self) {
        self.task.abort();
        self.retention.abort();
        if let Some(reported) = &self.reported {
            reported.abort();
        }
        let links: Vec<Link> = lock(&self.shared.links)
            .drain()
            .filter_map(|(_, l)| l)
            .collect();
        for link in links {
            link.downlink.abort();
            let _ = link.downlink.await;
            // The aborted tasks have dropped their handles, so this is normally the last one.
            if let Ok(client) = Arc::try_unwrap(link.client) {
                client.close().await;
            }
        }
    }
}

impl Shared {
    /// The upstream client of `leaf`, connecting it on first use; `None` if it has no usable
    /// upstream identity.
    async fn link(&self, leaf: &DeviceId) -> Option<Arc<DeviceClient>> {
        if let Some(known) = lock(&self.links).get(leaf) {
            return known.as_ref().map(|l| l.client.clone());
        }
        let link = match self.identities.options(leaf) {
            None => {
                warn!(leaf = %leaf, "no upstream identity; its telemetry is not forwarded");
                None
            }
            Some(options) => {
                let options = options.outbox(OutboxConfig::Memory {
                    capacity: self.options.outbox_capacity,
                    when_full: WhenFull::Wait,
                });
                match DeviceClient::connect(options).await {
                    Ok(client) => {
                        let client = Arc::new(client);
                        let downlink = downlink::spawn(
                            leaf.clone(),
                            client.clone(),
                            self.local.clone(),
                            self.options.clone(),
                        );
                        info!(leaf = %leaf, "upstream link started");
                        Some(Link { client, downlink })
                    }
                    Err(e) => {
                        error!(leaf = %leaf, error = %e,
                            "upstream options cannot work; its telemetry is not forwarded");
                        None
                    }
                }
            }
        };
        let client = link.as_ref().map(|l| l.client.clone());
        lock(&self.links).insert(leaf.clone(), link);
        client
    }

    fn skip(&self, record: &StoredRecord, why: &str) {
        self.counters.skipped.fetch_add(1, Ordering::Relaxed);
        warn!(key = %record.record.key, partition = %record.partition, offset = %record.offset,
            why, "telemetry record not forwarded");
    }

    /// Like [`skip`](Self::skip) for a device already reported as having no upstream client
    /// (when its link was first looked up): one warning per device, not one per record.
    fn skip_quietly(&self, record: &StoredRecord) {
        self.counters.skipped.fetch_add(1, Ordering::Relaxed);
        debug!(key = %record.record.key, offset = %record.offset,
            "telemetry record of a device without upstream client not forwarded");
    }

    /// After a client error: a closed client is replaced on the next attempt (the batch is
    /// then read again from the last commit).
    fn closed(&self, leaf: &DeviceId, error: &ClientError) {
        if matches!(error, ClientError::Closed) {
            warn!(leaf = %leaf, "upstream client ended; reconnecting it");
            self.forget(leaf);
        }
    }

    /// Forgets `leaf`'s link (its client ended), so that the next batch connects it anew.
    fn forget(&self, leaf: &DeviceId) {
        if let Some(Some(link)) = lock(&self.links).remove(leaf) {
            link.downlink.abort();
        }
    }

    /// Hands one batch to the leaves' upstream clients (each sends in enqueue order) and returns
    /// the acknowledgements to wait for, without waiting for them. Records of one device come
    /// from one partition in offset order, so per-device order holds upstream.
    async fn send(&self, batch: &[StoredRecord]) -> Result<Vec<(DeviceId, Delivery)>, EdgeError> {
        let mut pending = Vec::with_capacity(batch.len());
        for stored in batch {
            let Ok(leaf) = DeviceId::new(&stored.record.key) else {
                self.skip(stored, "the key is not a device id");
                continue;
            };
            let Some(client) = self.link(&leaf).await else {
                self.skip_quietly(stored);
                continue;
            };
            match client
                .enqueue_telemetry(convert::upstream_message(&stored.record))
                .await
            {
                Ok(delivery) => pending.push((leaf, delivery)),
                Err(ClientError::InvalidMessage(reason)) => self.skip(stored, &reason),
                Err(e) => {
                    self.closed(&leaf, &e);
                    return Err(e.into());
                }
            }
        }
        Ok(pending)
    }

    /// Waits until the cloud hub acknowledged every message of a sent batch.
    async fn acknowledged(&self, pending: Vec<(DeviceId, Delivery)>) -> Result<u64, EdgeError> {
        let sent = pending.len() as u64;
        for (leaf, delivery) in pending {
            if let Err(e) = delivery.acknowledged().await {
                self.closed(&leaf, &e);
                return Err(e.into());
            }
        }
        Ok(sent)
    }
}

/// A batch handed to the upstream clients and not yet committed.
struct InFlight {
    /// The consumer's position in every partition just after reading the batch: what committing
    /// it (and every batch before it) means.
    positions: Vec<Offset>,
    pending: Vec<(DeviceId, Delivery)>,
    /// One of the window's `batches_in_flight` permits, returned once the batch is committed.
    _permit: OwnedSemaphorePermit,
}

/// Reads, forwards and commits batch after batch; after an error it waits a moment and starts
/// over from the committed offsets (what was sent but not committed goes again).
async fn forward_forever(shared: Arc<Shared>) {
    loop {
        if let Err(e) = forward_from_committed(&shared).await {
            warn!(error = %e, "forwarding stopped; resuming from the committed offsets");
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

/// Two halves joined: the reader hands batch after batch to the upstream clients without
/// waiting for their acknowledgements (up to `batches_in_flight` uncommitted batches), so the
/// upstream connections stay busy while earlier batches are acknowledged; the committer waits
/// for the batches' acknowledgements in read order and commits the position after the last one
/// acknowledged, several batches with one commit when they are ready together (a commit of the
/// `FileLog` fsyncs a file per partition). Either half failing ends both; the caller starts over
/// from the committed offsets.
async fn forward_from_committed(shared: &Shared) -> Result<(), EdgeError> {
    let mut consumer = GroupConsumer::new(
        shared.log.clone(),
        shared.group.clone(),
        StartFrom::Earliest,
    )
    .await?
    .with_read_limits(shared.options.read_limits);
    let partitions: Vec<PartitionId> = shared.log.partitions().collect();
    let start: Vec<Offset> = partitions.iter().map(|p| consumer.position(*p)).collect();
    let window = Arc::new(Semaphore::new(shared.options.batches_in_flight));
    let (tx, mut rx) = mpsc::unbounded_channel::<InFlight>();

    let read = async {
        loop {
            let permit = window
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| EdgeError::Config("the batch window closed".into()))?;
            let batch = consumer.next_batch().await?;
            let positions = partitions.iter().map(|p| consumer.position(*p)).collect();
            let pending = shared.send(&batch).await?;
            let in_flight = InFlight {
                positions,
                pending,
                _permit: permit,
            };
            if tx.send(in_flight).is_err() {
                // The committer ended; its error is the one try_join reports.
                return Ok(());
            }
        }
    };

    let commit = async {
        let mut committed = start;
        while let Some(first) = rx.recv().await {
            let mut done = vec![first];
            let mut forwarded = shared.acknowledged(take_pending(&mut done[0])).await?;
            // Batches read meanwhile are usually acknowledged by now, or nearly: one commit
            // for all of them.
            while let Ok(mut next) = rx.try_recv() {
                forwarded += shared.acknowledged(take_pending(&mut next)).await?;
                done.push(next);
            }
            let Some(last) = done.last() else { continue };
            for ((p, at), was) in partitions.iter().zip(&last.positions).zip(&mut committed) {
                if at != was {
                    shared.log.commit(&shared.group, *p, *at).await?;
                    *was = *at;
                }
            }
            let c = &shared.counters;
            c.forwarded.fetch_add(forwarded, Ordering::Relaxed);
            c.batches.fetch_add(done.len() as u64, Ordering::Relaxed);
            debug!(
                batches = done.len(),
                records = forwarded,
                "batches forwarded and committed"
            );
        }
        Ok::<(), EdgeError>(())
    };

    tokio::try_join!(read, commit)?;
    Ok(())
}

fn take_pending(batch: &mut InFlight) -> Vec<(DeviceId, Delivery)> {
    std::mem::take(&mut batch.pending)
}

/// Applies the retention policy to the local log now and then. It runs beside the forwarding
/// task because it matters most while that one waits for a link that is down.
async fn retain_forever(shared: Arc<Shared>) {
    let policy = shared.options.retention;
    if policy.max_age.is_none() && policy.max_bytes.is_none() {
        return;
    }
    let mut tick = tokio::time::interval(shared.options.retention_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match shared
            .log
            .enforce_retention(&policy, Timestamp::now())
            .await
        {
            Ok(report) if report.records_removed > 0 => {
                shared
                    .counters
                    .expired
                    .fetch_add(report.records_removed, Ordering::Relaxed);
                info!(
                    records = report.records_removed,
                    bytes = report.bytes_removed,
                    "retention removed records from the edge log"
                );
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "retention pass on the edge log failed"),
        }
    }
}

/// Sends the leaves' reported-property patches upstream, in order, from the local twin-change
/// log; after an error (typically the link is down and a patch timed out) it waits a moment
/// and starts over from the committed offsets. Sending a merge patch again gives the same
/// result, so at-least-once is harmless here.
async fn report_forever(shared: Arc<Shared>, log: Arc<dyn Log>, group: GroupName) {
    loop {
        if let Err(e) = report_from_committed(&shared, &log, &group).await {
            debug!(error = %e, "reported properties: resuming from the committed offsets");
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

async fn report_from_committed(
    shared: &Shared,
    log: &Arc<dyn Log>,
    group: &GroupName,
) -> Result<(), EdgeError> {
    let mut consumer = GroupConsumer::new(log.clone(), group.clone(), StartFrom::Earliest)
        .await?
        .with_read_limits(shared.options.read_limits);
    loop {
        let batch = consumer.next_batch().await?;
        for stored in &batch {
            let record = &stored.record;
            if record.headers.get(crate::message::header::SECTION) != Some("reported") {
                continue;
            }
            let Ok(leaf) = DeviceId::new(&record.key) else {
                continue;
            };
            let Some(client) = shared.link(&leaf).await else {
                continue;
            };
            // The record is a twin change event: the patch is the body's `properties.reported`.
            let Some(patch) = serde_json::from_slice::<serde_json::Value>(&record.payload)
                .ok()
                .and_then(|body| crate::events::twin_change_patch(&body, "reported"))
            else {
                warn!(leaf = %leaf, offset = %stored.offset, "a reported change without a JSON patch");
                continue;
            };
            match client.patch_reported(&patch).await {
                Ok(_) => {}
                // The cloud refused the patch itself (too large, too deep): retrying cannot help.
                Err(ClientError::TwinStatus { status }) if status < 500 && status != 429 => {
                    warn!(leaf = %leaf, status, "the cloud refused a reported patch");
                }
                Err(e) => {
                    shared.closed(&leaf, &e);
                    return Err(e.into());
                }
            }
        }
        consumer.commit().await?;
    }
}
