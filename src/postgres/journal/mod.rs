//! [`PgJournal`]: the provisioner's intent [`Journal`] in PostgreSQL, for when identities and
//! registry live in different places (when both live in one PostgreSQL database, provisioning
//! needs no journal: it changes both in one transaction).
//!
//! One row per begun intent; `finish` deletes it. The sequence numbers come from an identity
//! column: PostgreSQL logs a sequence's advance before any commit that used it, so a number is
//! never handed out twice, not even after a crash. `begin` and `finish` return after their commit,
//! durable as the server's `synchronous_commit` makes a commit; `finish_unsynced` is `finish`
//! (the trait's default): always durable, one commit per finish.
//!
//! Several provisioner processes may share the table. Each writes its intents in its own
//! instance name, and `pending` (what recovery reads) returns only that instance's: a process
//! that restarts recovers what *it* left unfinished and never rolls back a registration another
//! live process is in the middle of. An instance that never comes back leaves its intents until a
//! process opens the journal under its name.

use std::time::Duration;

use async_trait::async_trait;
use iot_provisioning::{Error, Intent, Journal, Result};

use crate::postgres::call::{Work, bounded};
use crate::postgres::values::{from_bigint, to_bigint};
use crate::postgres::{Migration, PgClient, PgError, PgPool, errors, migrate};

/// The component name in `iot_schema_migrations`.
const COMPONENT: &str = "provisioning-journal";

/// Version 1: the intent as the provisioning crate serializes it, in `json` (kept as written).
const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    sql: "
        CREATE TABLE iot_provisioning_journal (
            seq       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            instance  text        NOT NULL,
            intent    json        NOT NULL,
            begun_at  timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX iot_provisioning_journal_instance
            ON iot_provisioning_journal (instance, seq);
    ",
}];

const BEGIN: &str = "INSERT INTO iot_provisioning_journal (instance, intent) \
     VALUES ($1, $2::text::json) RETURNING seq";
const FINISH: &str = "DELETE FROM iot_provisioning_journal WHERE seq = $1";
const PENDING: &str = "SELECT seq, intent::text FROM iot_provisioning_journal \
     WHERE instance = $1 ORDER BY seq";

/// How a [`PgJournal`] is opened.
///
/// ```
/// use std::time::Duration;
/// use iot_sdk::postgres::PgJournalConfig;
///
/// let config = PgJournalConfig::default()
///     .instance("provisioner-1")
///     .call_timeout(Duration::from_secs(5));
/// assert_eq!(config.instance, "provisioner-1");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgJournalConfig {
    /// This provisioner's name, stable across its restarts and different from every other
    /// process sharing the table (see [`PgJournal`]). Default `"default"`, right for a
    /// single process.
    pub instance: String,
    /// How long one call may work on its connection before it fails with a retryable error (the
    /// wait for a connection is bounded by the pool's own timeouts). Default 30 s.
    pub call_timeout: Duration,
}

impl Default for PgJournalConfig {
    fn default() -> Self {
        PgJournalConfig {
            instance: "default".into(),
            call_timeout: Duration::from_secs(30),
        }
    }
}

impl PgJournalConfig {
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

/// A provisioning [`Journal`] in PostgreSQL, for when identities and registry live in different
/// places (when both live in one PostgreSQL database, provisioning needs no journal: it changes
/// both in one transaction).
///
/// One row per begun intent; `finish` deletes it. The sequence numbers come from an identity
/// column: PostgreSQL logs a sequence's advance before any commit that used it, so a number is
/// never handed out twice, not even after a crash. `begin` and `finish` return after their commit,
/// durable as the server's `synchronous_commit` makes a commit; `finish_unsynced` is `finish`
/// (the trait's default): always durable, one commit per finish.
///
/// Several provisioner processes may share the table. Each writes its intents in its own
/// instance name, and `pending` (what recovery reads) returns only that instance's: a process
/// that restarts recovers what *it* left unfinished and never rolls back a registration another
/// live process is in the middle of. An instance that never comes back leaves its intents until a
/// process opens the journal under its name.
#[derive(Clone, Debug)]
pub struct PgJournal {
    pool: PgPool,
    config: PgJournalConfig,
}

fn query(context: &'static str) -> impl Fn(tokio_postgres::Error) -> Error {
    move |e| errors::provisioning(PgError::query(context, e))
}

impl PgJournal {
    /// Brings the schema up to date.
    pub async fn open(pool: PgPool, config: PgJournalConfig) -> Result<Self> {
        tokio::time::timeout(config.call_timeout, migrate(&pool, COMPONENT, MIGRATIONS))
            .await
            .map_err(|_| {
                errors::provisioning(PgError::Unreachable {
                    target: pool.config().target(),
                    reason: "the schema migration did not finish in time".into(),
                })
            })?
            .map_err(errors::provisioning)?;
        tracing::info!(target = %pool.config().target(), "PostgreSQL provisioning journal opened");
        Ok(PgJournal { pool, config })
    }

    async fn call<T: Send>(
        &self,
        work: impl for<'c> FnOnce(&'c mut PgClient) -> Work<'c, T, Error>,
    ) -> Result<T> {
        bounded(
            &self.pool,
            self.config.call_timeout,
            errors::provisioning,
            work,
        )
        .await
    }
}

#[async_trait]
impl Journal for PgJournal {
    async fn begin(&self, intent: &Intent) -> Result<u64> {
        let text = serde_json::to_string(intent).map_err(|e| {
            Error::backend(
                "postgres",
                format!("cannot serialize an intent: {e}"),
                false,
            )
        })?;
        let instance = self.config.instance.clone();
        self.call(move |c| {
            Box::pin(async move {
                let st = c
                    .prepare_cached(BEGIN)
                    .await
                    .map_err(query("prepare begin"))?;
                let seq: i64 = c
                    .query_one(&st, &[&instance, &text])
                    .await
                    .map_err(query("record an intent"))?
                    .get(0);
                Ok(from_bigint(seq))
            })
        })
        .await
    }

    async fn finish(&self, seq: u64) -> Result<()> {
        // A number past bigint was never handed out: nothing to finish.
        let Some(seq) = to_bigint(seq) else {
            return Ok(());
        };
        self.call(move |c| {
            Box::pin(async move {
                let st = c
                    .prepare_cached(FINISH)
                    .await
                    .map_err(query("prepare finish"))?;
                c.execute(&st, &[&seq])
                    .await
                    .map_err(query("finish an intent"))?;
                Ok(())
            })
        })
        .await
    }

    async fn pending(&self) -> Result<Vec<(u64, Intent)>> {
        let instance = self.config.instance.clone();
        self.call(move |c| {
            Box::pin(async move {
                let st = c
                    .prepare_cached(PENDING)
                    .await
                    .map_err(query("prepare pending"))?;
                let rows = c
                    .query(&st, &[&instance])
                    .await
                    .map_err(query("read pending intents"))?;
                rows.iter()
                    .map(|r| {
                        let seq: i64 = r.get(0);
                        let text: String = r.get(1);
                        let intent = serde_json::from_str(&text).map_err(|e| {
                            Error::backend(
                                "postgres",
                                format!(
                                    "intent {seq} in iot_provisioning_journal is unreadable: {e}"
                                ),
                                false,
                            )
                        })?;
                        Ok((from_bigint(seq), intent))
                    })
                    .collect()
            })
        })
        .await
    }
}
