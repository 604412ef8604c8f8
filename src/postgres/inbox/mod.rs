//! [`PgInbox`]: the gateway's C2D inbox ([`InboxStore`]) in a PostgreSQL table, shared by every
//! gateway instance that opens it.
//!
//! One row per queued message. The calls that must see a device's whole queue at once (queueing
//! against the depth limit, locking the next message in FIFO order) take a transaction-scoped
//! advisory lock on that device alone, so they serialise per device and never across devices.
//! Settlements touch one row. `purge_expired` skips rows another transaction holds
//! (`FOR UPDATE SKIP LOCKED`): whoever holds them meets the expiry itself and reports it, so
//! every removal is reported exactly once.

mod rows;
mod schema;
mod sql;

use std::time::Duration;

use async_trait::async_trait;
use iot_core::{DeviceId, Timestamp};
use iot_gateway::inbox::{InboxMessage, LockOutcome, Locked, Removed, Settlement};
use iot_gateway::{Error, FeedbackStatus, InboxLimits, InboxStore, LockToken, Result};

use crate::postgres::call::{Work, bounded};
use crate::postgres::values::{from_bigint, from_micros, to_bigint, to_micros};
use crate::postgres::{PgClient, PgError, PgPool, errors, migrate};

/// How a [`PgInbox`] is opened.
///
/// ```
/// use std::time::Duration;
/// use iot_sdk::postgres::PgInboxConfig;
///
/// let config = PgInboxConfig::default()
///     .instance("gateway-eu-1")
///     .call_timeout(Duration::from_secs(5));
/// assert_eq!(config.instance, "gateway-eu-1");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgInboxConfig {
    /// This gateway instance's name, stable across its restarts and different from every other
    /// instance sharing the database. Locks are held in its name: opening the inbox releases the
    /// locks the same instance held before it restarted (their sessions died with it) and leaves
    /// other instances' locks alone; those lapse at their lock time if their instance never comes
    /// back. Default `"default"`, right for a single instance.
    pub instance: String,
    /// How long one call may work on its connection before it fails with a retryable error (the
    /// wait for a connection is bounded by the pool's own timeouts). Default 30 s.
    pub call_timeout: Duration,
}

impl Default for PgInboxConfig {
    fn default() -> Self {
        PgInboxConfig {
            instance: "default".into(),
            call_timeout: Duration::from_secs(30),
        }
    }
}

impl PgInboxConfig {
    /// Sets [`instance`](Self::instance).
    pub fn instance(mut self, name: impl Into<String>) -> Self {
        self.instance = name.into();
        self
    }

    /// Sets [`call_timeout`](Self::call_timeout).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }
}

/// An [`InboxStore`] in PostgreSQL.
///
/// Every acknowledged change is committed before the call returns, with the durability the
/// server gives a commit (`synchronous_commit` as configured there). A call that fails because the
/// server went away is retryable and may or may not have taken effect, as with any database: an
/// enqueue retried after such a failure can queue the message twice.
///
/// The table is shared by every gateway instance that opens it. One row per queued message. The calls that must see a device's whole queue at once (queueing
/// against the depth limit, locking the next message in FIFO order) take a transaction-scoped
/// advisory lock on that device alone, so they serialise per device and never across devices.
/// Settlements touch one row. `purge_expired` skips rows another transaction holds
/// (`FOR UPDATE SKIP LOCKED`): whoever holds them meets the expiry itself and reports it, so
/// every removal is reported exactly once.
#[derive(Clone, Debug)]
pub struct PgInbox {
    pool: PgPool,
    config: PgInboxConfig,
}

fn query(context: &'static str) -> impl Fn(tokio_postgres::Error) -> Error {
    move |e| errors::gateway(PgError::query(context, e))
}

impl PgInbox {
    /// Brings the schema up to date and releases the locks this instance held before it
    /// restarted.
    pub async fn open(pool: PgPool, config: PgInboxConfig) -> Result<Self> {
        tokio::time::timeout(
            config.call_timeout,
            migrate(&pool, schema::COMPONENT, schema::MIGRATIONS),
        )
        .await
        .map_err(|_| {
            errors::gateway(PgError::Unreachable {
                target: pool.config().target(),
                reason: "the schema migration did not finish in time".into(),
            })
        })?
        .map_err(errors::gateway)?;
        let inbox = PgInbox { pool, config };
        let owner = inbox.config.instance.clone();
        let released = inbox
            .call(move |c| {
                Box::pin(async move {
                    let st = c
                        .prepare_cached(sql::RELEASE_OWN_LOCKS)
                        .await
                        .map_err(query("prepare release locks"))?;
                    c.execute(&st, &[&owner])
                        .await
                        .map_err(query("release this instance's locks"))
                })
            })
            .await?;
        tracing::info!(
            instance = %inbox.config.instance,
            target = %inbox.pool.config().target(),
            released,
            "PostgreSQL inbox opened"
        );
        Ok(inbox)
    }

    /// The instance name locks are held in.
    pub fn instance(&self) -> &str {
        &self.config.instance
    }

    async fn call<T: Send>(
        &self,
        work: impl for<'c> FnOnce(&'c mut PgClient) -> Work<'c, T, Error>,
    ) -> Result<T> {
        bounded(&self.pool, self.config.call_timeout, errors::gateway, work).await
    }
}

/// What `lock_next` decided from the queue's head.
#[derive(Default)]
struct Plan {
    expired: Vec<i64>,
    dead: Vec<i64>,
    lock: Option<(i64, i64)>,
    next_due: Option<i64>,
}

/// The inbox rules over `(seq, expires_at, delivery_count, locked_until)` in FIFO order.
fn plan_lock(queue: &[(i64, i64, i64, Option<i64>)], now: i64, max_delivery: i64) -> Plan {
    let mut plan = Plan::default();
    for &(seq, expires_at, delivery_count, locked_until) in queue {
        if expires_at <= now {
            plan.expired.push(seq);
        } else if let Some(until) = locked_until
            && until > now
        {
            plan.next_due = Some(plan.next_due.map_or(until, |d| d.min(until)));
        } else if delivery_count >= max_delivery {
            plan.dead.push(seq);
        } else {
            plan.lock = Some((seq, delivery_count + 1));
            plan.next_due = None;
            break;
        }
    }
    plan
}

/// Takes the transaction-scoped lock on one device's queue: writers of that device wait for each
/// other, other devices' writers do not.
async fn lock_device(tx: &deadpool_postgres::Transaction<'_>, device: &str) -> Result<()> {
    let st = tx
        .prepare_cached(sql::LOCK_DEVICE)
        .await
        .map_err(query("prepare device lock"))?;
    tx.execute(&st, &[&device])
        .await
        .map_err(query("lock the device's queue"))?;
    Ok(())
}

fn lock_lost(device: &DeviceId, token: LockToken) -> Error {
    Error::LockLost {
        device: device.clone(),
        token: token.to_string(),
    }
}

fn removed_sorted(
    rows: &[tokio_postgres::Row],
    status: impl Fn(i64) -> FeedbackStatus,
) -> Result<Vec<Removed>> {
    let mut out = Vec::with_capacity(rows.len());
    let mut ordered: Vec<&tokio_postgres::Row> = rows.iter().collect();
    ordered.sort_by_key(|r| r.get::<_, i64>("seq"));
    for row in ordered {
        out.push(rows::removed(row, status(row.get("seq")))?);
    }
    Ok(out)
}

#[async_trait]
impl InboxStore for PgInbox {
    async fn enqueue(
        &self,
        device: &DeviceId,
        message: InboxMessage,
        now: Timestamp,
        limits: InboxLimits,
    ) -> Result<(u64, Vec<Removed>)> {
        let device = device.clone();
        self.call(move |c| {
            Box::pin(async move {
                let id = device.as_str();
                let tx = c.transaction().await.map_err(query("begin enqueue"))?;
                lock_device(&tx, id).await?;
                let st = tx
                    .prepare_cached(sql::DELETE_EXPIRED_OF_DEVICE)
                    .await
                    .map_err(query("prepare expiry"))?;
                let expired = tx
                    .query(&st, &[&id, &to_micros(now)])
                    .await
                    .map_err(query("remove the device's expired messages"))?;
                let st = tx
                    .prepare_cached(sql::DEPTH)
                    .await
                    .map_err(query("prepare depth"))?;
                let depth: i64 = tx
                    .query_one(&st, &[&id])
                    .await
                    .map_err(query("count the queue"))?
                    .get(0);
                if usize::try_from(depth).unwrap_or(usize::MAX) >= limits.max_depth {
                    // Dropping the transaction rolls the expiry back too: a refused enqueue
                    // changes nothing.
                    return Err(Error::QueueFull {
                        device: device.clone(),
                        queue: "inbox",
                        limit: limits.max_depth,
                    });
                }
                let names: Vec<&str> = message.properties.iter().map(|(k, _)| k.as_str()).collect();
                let values: Vec<&str> =
                    message.properties.iter().map(|(_, v)| v.as_str()).collect();
                let st = tx
                    .prepare_cached(sql::INSERT)
                    .await
                    .map_err(query("prepare insert"))?;
                let seq: i64 = tx
                    .query_one(
                        &st,
                        &[
                            &id,
                            &message.message_id,
                            &message.correlation_id,
                            &message.content_type,
                            &message.content_encoding,
                            &names,
                            &values,
                            &message.payload.as_ref(),
                            &rows::ack_to_str(message.ack),
                            &to_micros(message.enqueued_at),
                            &to_micros(message.expires_at),
                        ],
                    )
                    .await
                    .map_err(query("insert a message"))?
                    .get(0);
                let removed = removed_sorted(&expired, |_| FeedbackStatus::Expired)?;
                tx.commit().await.map_err(query("commit enqueue"))?;
                Ok((from_bigint(seq), removed))
            })
        })
        .await
    }

    async fn lock_next(
        &self,
        device: &DeviceId,
        now: Timestamp,
        limits: InboxLimits,
    ) -> Result<LockOutcome> {
        let device = device.clone();
        let owner = self.config.instance.clone();
        self.call(move |c| {
            Box::pin(async move {
                let id = device.as_str();
                let now_us = to_micros(now);
                let tx = c.transaction().await.map_err(query("begin lock_next"))?;
                lock_device(&tx, id).await?;
                let st = tx
                    .prepare_cached(sql::QUEUE_HEAD)
                    .await
                    .map_err(query("prepare queue read"))?;
                let queue: Vec<(i64, i64, i64, Option<i64>)> = tx
                    .query(&st, &[&id])
                    .await
                    .map_err(query("read the device's queue"))?
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                    .collect();
                let plan = plan_lock(&queue, now_us, i64::from(limits.max_delivery_count));
                let mut removed = Vec::new();
                if !plan.expired.is_empty() || !plan.dead.is_empty() {
                    let gone: Vec<i64> = plan.expired.iter().chain(&plan.dead).copied().collect();
                    let st = tx
                        .prepare_cached(sql::DELETE_SEQS)
                        .await
                        .map_err(query("prepare removal"))?;
                    let rows = tx
                        .query(&st, &[&gone])
                        .await
                        .map_err(query("remove messages"))?;
                    removed = removed_sorted(&rows, |seq| {
                        if plan.expired.contains(&seq) {
                            FeedbackStatus::Expired
                        } else {
                            FeedbackStatus::DeliveryCountExceeded
                        }
                    })?;
                }
                let mut locked = None;
                if let Some((seq, delivery)) = plan.lock {
                    let until = now.saturating_add(limits.lock_duration);
                    let st = tx
                        .prepare_cached(sql::LOCK_MESSAGE)
                        .await
                        .map_err(query("prepare lock"))?;
                    let row = tx
                        .query_one(&st, &[&seq, &delivery, &to_micros(until), &owner])
                        .await
                        .map_err(query("lock a message"))?;
                    let token = LockToken {
                        sequence: from_bigint(seq),
                        delivery: u32::try_from(delivery).unwrap_or(u32::MAX),
                    };
                    locked = Some(Locked::new(token, rows::message(&row)?, until));
                }
                tx.commit().await.map_err(query("commit lock_next"))?;
                Ok(LockOutcome::new(
                    locked,
                    removed,
                    plan.next_due.map(from_micros),
                ))
            })
        })
        .await
    }

    async fn settle(
        &self,
        device: &DeviceId,
        token: LockToken,
        settlement: Settlement,
    ) -> Result<Option<Removed>> {
        // A sequence number past bigint was never handed out: no row can hold that lock.
        let Some(seq) = to_bigint(token.sequence) else {
            return Err(lock_lost(device, token));
        };
        let delivery = i64::from(token.delivery);
        let device = device.clone();
        self.call(move |c| {
            Box::pin(async move {
                let id = device.as_str();
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                    [&id, &seq, &delivery];
                let status = match settlement {
                    Settlement::Abandon => {
                        let st = c
                            .prepare_cached(sql::UNLOCK)
                            .await
                            .map_err(query("prepare abandon"))?;
                        let n = c
                            .execute(&st, &params)
                            .await
                            .map_err(query("abandon a message"))?;
                        return if n == 1 {
                            Ok(None)
                        } else {
                            Err(lock_lost(&device, token))
                        };
                    }
                    Settlement::Complete => FeedbackStatus::Success,
                    Settlement::Reject => FeedbackStatus::Rejected,
                    // A settlement added to the gateway later: refuse it rather than guess.
                    _ => {
                        return Err(Error::InvalidInput {
                            reason: format!(
                                "settlement {settlement:?} is not supported by the PostgreSQL inbox"
                            ),
                        });
                    }
                };
                let st = c
                    .prepare_cached(sql::DELETE_LOCKED)
                    .await
                    .map_err(query("prepare settle"))?;
                match c
                    .query_opt(&st, &params)
                    .await
                    .map_err(query("settle a message"))?
                {
                    Some(row) => Ok(Some(rows::removed(&row, status)?)),
                    None => Err(lock_lost(&device, token)),
                }
            })
        })
        .await
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<Vec<Removed>> {
        self.call(move |c| {
            Box::pin(async move {
                let st = c
                    .prepare_cached(sql::PURGE_EXPIRED)
                    .await
                    .map_err(query("prepare purge"))?;
                let rows = c
                    .query(&st, &[&to_micros(now)])
                    .await
                    .map_err(query("purge expired messages"))?;
                removed_sorted(&rows, |_| FeedbackStatus::Expired)
            })
        })
        .await
    }

    async fn remove_device(&self, device: &DeviceId) -> Result<usize> {
        let device = device.clone();
        self.call(move |c| {
            Box::pin(async move {
                let st = c
                    .prepare_cached(sql::DELETE_DEVICE)
                    .await
                    .map_err(query("prepare remove"))?;
                let n = c
                    .execute(&st, &[&device.as_str()])
                    .await
                    .map_err(query("remove a device's messages"))?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            })
        })
        .await
    }

    async fn depth(&self, device: &DeviceId) -> Result<usize> {
        let device = device.clone();
        self.call(move |c| {
            Box::pin(async move {
                let st = c
                    .prepare_cached(sql::DEPTH)
                    .await
                    .map_err(query("prepare depth"))?;
                let n: i64 = c
                    .query_one(&st, &[&device.as_str()])
                    .await
                    .map_err(query("count the queue"))?
                    .get(0);
                Ok(usize::try_from(n).unwrap_or(0))
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_follows_the_inbox_rules() {
        // seq, expires_at, delivery_count, locked_until
        let queue = [
            (1, 5, 0, None),       // expired
            (2, 100, 1, Some(50)), // locked past now
            (3, 100, 3, None),     // delivered too often
            (4, 100, 1, Some(10)), // lock lapsed: available
            (5, 100, 0, None),
        ];
        let plan = plan_lock(&queue, 10, 3);
        assert_eq!(plan.expired, [1]);
        assert_eq!(plan.dead, [3]);
        assert_eq!(plan.lock, Some((4, 2)));
        assert_eq!(plan.next_due, None, "a lock was taken");
        let plan = plan_lock(&queue[..2], 10, 3);
        assert_eq!((plan.lock, plan.next_due), (None, Some(50)));
    }
}
