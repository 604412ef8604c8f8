//! The change feed: a dedicated connection that `LISTEN`s on the identity channel, turns every
//! notification of this store's namespace into a change on the store's [`ChangeSender`], and
//! invalidates the lookup cache.
//!
//! After the connection is lost it reconnects (backing off up to 2 s), listens again and catches
//! up from the change table: every change with a sequence above the highest one delivered (less a
//! window, for writes that drew their number earlier and committed later) that was not delivered
//! yet. While it is disconnected the cache is off, so lookups read the database.

use std::collections::{HashSet, VecDeque};
use std::sync::Weak;
use std::time::Duration;

use iot_identity::IdentityChange;
use tokio::sync::mpsc::UnboundedReceiver;

use super::Shared;
use super::codec;
use super::schema::{CHANNEL, RETENTION_MICROS};
use crate::postgres::{PgError, PgPool};

/// How far below the highest sequence delivered a catch-up looks for late committers.
const CATCH_UP_WINDOW: i64 = 10_000;
/// How many delivered sequences are remembered to drop duplicates.
const REMEMBERED: usize = 16_384;
/// How often the connection is probed (a silent network loss shows up here) and old change rows
/// are pruned.
const PROBE_EVERY: Duration = Duration::from_secs(5);
const PRUNE_EVERY: u32 = 12;

/// What the feed has delivered.
#[derive(Debug, Default)]
pub(crate) struct Delivered {
    /// Nothing at or below this was written after the store opened.
    floor: i64,
    highest: i64,
    recent: HashSet<i64>,
    order: VecDeque<i64>,
}

impl Delivered {
    pub(crate) fn starting_at(floor: i64) -> Self {
        Delivered {
            floor,
            highest: floor,
            ..Delivered::default()
        }
    }

    /// Records `seq`; false if it was delivered already.
    fn first_time(&mut self, seq: i64) -> bool {
        if !self.recent.insert(seq) {
            return false;
        }
        self.order.push_back(seq);
        if self.order.len() > REMEMBERED
            && let Some(old) = self.order.pop_front()
        {
            self.recent.remove(&old);
        }
        self.highest = self.highest.max(seq);
        true
    }

    fn catch_up_from(&self) -> i64 {
        self.floor.max(self.highest.saturating_sub(CATCH_UP_WINDOW))
    }
}

/// A connection listening on the channel, and its notifications.
pub(crate) type Listening = (
    tokio_postgres::Client,
    UnboundedReceiver<tokio_postgres::Notification>,
);

pub(crate) async fn listen(pool: &PgPool) -> Result<Listening, PgError> {
    let (client, notifications) = pool.connect_dedicated().await?;
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(|e| PgError::query("listen for identity changes", e))?;
    Ok((client, notifications))
}

/// The highest change sequence written so far (the floor of a new feed).
pub(crate) async fn current_floor(client: &tokio_postgres::Client) -> Result<i64, PgError> {
    let row = client
        .query_one(
            "SELECT coalesce(max(seq), 0) FROM iot_identity_changes",
            &[],
        )
        .await
        .map_err(|e| PgError::query("read the change feed position", e))?;
    Ok(row.get(0))
}

fn deliver(shared: &Shared, delivered: &mut Delivered, change: IdentityChange) {
    let seq = i64::try_from(change.etag.as_u64()).unwrap_or(i64::MAX);
    if !delivered.first_time(seq) {
        return;
    }
    shared.cache.invalidate(&change.id);
    shared.changes.send(change);
}

async fn catch_up(
    shared: &Shared,
    client: &tokio_postgres::Client,
    delivered: &mut Delivered,
) -> Result<(), PgError> {
    let rows = client
        .query(
            "SELECT seq, device_id, generation, kind FROM iot_identity_changes \
             WHERE ns = $1 AND seq > $2 ORDER BY seq",
            &[&shared.namespace, &delivered.catch_up_from()],
        )
        .await
        .map_err(|e| PgError::query("catch up on identity changes", e))?;
    for row in &rows {
        if let Some(change) = codec::change_row(row) {
            deliver(shared, delivered, change);
        }
    }
    Ok(())
}

async fn prune(client: &tokio_postgres::Client) -> Result<(), PgError> {
    let now = codec::to_micros(iot_core::Timestamp::now());
    client
        .execute(
            "DELETE FROM iot_identity_changes WHERE at_us < $1",
            &[&now.saturating_sub(RETENTION_MICROS)],
        )
        .await
        .map_err(|e| PgError::query("prune identity changes", e))?;
    Ok(())
}

/// Follows one connection until it fails. Returns when the connection is lost or the store is
/// gone (`Ok(false)`).
async fn follow(
    shared: &Weak<Shared>,
    (client, mut notifications): Listening,
    delivered: &mut Delivered,
    first: bool,
) -> Result<bool, PgError> {
    {
        let Some(s) = shared.upgrade() else {
            return Ok(false);
        };
        if !first {
            catch_up(&s, &client, delivered).await?;
        }
        s.cache.reset(true);
    }
    let mut probe = tokio::time::interval(PROBE_EVERY);
    probe.tick().await;
    let mut probes = 0u32;
    loop {
        tokio::select! {
            n = notifications.recv() => {
                let Some(n) = n else {
                    return Err(PgError::Unreachable {
                        target: String::new(),
                        reason: "the listening connection closed".into(),
                    });
                };
                let Some(s) = shared.upgrade() else {
                    return Ok(false);
                };
                match codec::parse_payload(n.payload()) {
                    Some((ns, change)) if ns == s.namespace => deliver(&s, delivered, change),
                    Some(_) => {}
                    None => tracing::warn!("ignored a malformed identity change notification"),
                }
            }
            _ = probe.tick() => {
                if shared.strong_count() == 0 {
                    return Ok(false);
                }
                client
                    .simple_query("SELECT 1")
                    .await
                    .map_err(|e| PgError::query("probe the listening connection", e))?;
                probes += 1;
                if probes.is_multiple_of(PRUNE_EVERY) {
                    prune(&client).await?;
                }
            }
        }
    }
}

/// Runs the feed until the store is dropped: follows the connection it was given, then
/// reconnects after every loss.
pub(crate) async fn run(shared: Weak<Shared>, pool: PgPool, first: Listening, floor: i64) {
    let mut delivered = Delivered::starting_at(floor);
    let mut next = Some(first);
    let mut backoff = Duration::from_millis(50);
    let mut is_first = true;
    loop {
        let listening = match next.take() {
            Some(l) => Ok(l),
            None => listen(&pool).await,
        };
        let outcome = match listening {
            Ok(l) => {
                backoff = Duration::from_millis(50);
                follow(&shared, l, &mut delivered, is_first).await
            }
            Err(e) => Err(e),
        };
        is_first = false;
        match outcome {
            Ok(false) => return,
            Ok(true) => {}
            Err(e) => {
                let Some(s) = shared.upgrade() else {
                    return;
                };
                s.cache.reset(false);
                tracing::warn!(error = %e, "identity change feed lost; reconnecting");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
