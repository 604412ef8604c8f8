//! A pool of PostgreSQL connections with typed failures.

use std::fmt;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::postgres::{PgConfig, PgError};

/// A pooled connection: derefs to [`tokio_postgres::Client`] and caches prepared statements
/// (`prepare_cached`). It returns to the pool when dropped.
pub type PgClient = deadpool_postgres::Object;

/// A pool of connections to one database. Cloning shares the pool.
///
/// Opening the pool connects nothing; the first [`get`](PgPool::get) does, so a process can start
/// while the database is still coming up. A connection that broke (the server restarted) is
/// dropped when it next leaves the pool and a fresh one is opened in its place: after an outage
/// the adapters carry on without a restart of the process.
#[derive(Clone)]
pub struct PgPool {
    pool: Pool,
    config: PgConfig,
}

impl PgPool {
    /// Builds the pool.
    pub fn new(config: PgConfig) -> Result<Self, PgError> {
        let manager = Manager::from_config(
            config.driver.clone(),
            NoTls,
            ManagerConfig {
                // Fast: a connection is checked with `is_closed()` only. A connection that the
                // server dropped still fails its next statement, with a retryable error.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size())
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.acquire_timeout()))
            .create_timeout(Some(config.connect_timeout()))
            .recycle_timeout(Some(config.connect_timeout()))
            .build()
            .map_err(|e| PgError::Config {
                reason: format!("cannot build the PostgreSQL pool: {e}"),
            })?;
        Ok(Self { pool, config })
    }

    /// Connects (lazily) to the URL with the default settings.
    pub fn from_url(url: &str) -> Result<Self, PgError> {
        Self::new(PgConfig::from_url(url)?)
    }

    /// A connection from the pool, opening one if none is idle.
    pub async fn get(&self) -> Result<PgClient, PgError> {
        self.pool.get().await.map_err(|e| self.pool_error(e))
    }

    /// The settings the pool was built with (for dedicated connections such as `LISTEN`).
    pub fn config(&self) -> &PgConfig {
        &self.config
    }

    /// Opens a connection outside the pool, driven by a task of its own, for sessions that must
    /// keep their connection (`LISTEN`). The returned receiver yields the server's notifications
    /// and closes when the connection ends.
    pub async fn connect_dedicated(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
        ),
        PgError,
    > {
        use futures::StreamExt as _;

        let (client, mut connection) = self
            .config
            .driver
            .connect(NoTls)
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let target = self.config.target();
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                        if tx.send(n).is_err() {
                            break;
                        }
                    }
                    Ok(tokio_postgres::AsyncMessage::Notice(notice)) => {
                        tracing::debug!(%target, notice = %notice, "PostgreSQL notice");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(%target, error = %e, "dedicated PostgreSQL connection ended");
                        break;
                    }
                }
            }
        });
        Ok((client, rx))
    }

    fn pool_error(&self, e: PoolError) -> PgError {
        match e {
            PoolError::Backend(e) if e.code().is_some() => PgError::query("connect", e),
            PoolError::Backend(e) => self.unreachable(e.to_string()),
            PoolError::Timeout(kind) => self.unreachable(format!("timed out ({kind:?})")),
            other => self.unreachable(other.to_string()),
        }
    }

    fn unreachable(&self, reason: String) -> PgError {
        PgError::Unreachable {
            target: self.config.target(),
            reason,
        }
    }
}

impl fmt::Debug for PgPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.pool.status();
        f.debug_struct("PgPool")
            .field("config", &self.config)
            .field("size", &status.size)
            .field("available", &status.available)
            .finish()
    }
}
