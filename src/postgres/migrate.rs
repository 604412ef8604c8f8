//! Versioned schema migrations, safe to run from several processes at once.

use crate::postgres::{PgError, PgPool};

/// One step of a component's schema: applied once, in version order, inside a transaction.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// 1, 2, 3, … within the component.
    pub version: i32,
    /// SQL statements, run as one batch.
    pub sql: &'static str,
}

/// Brings `component`'s schema up to its last migration.
///
/// Every process that opens an adapter calls this; it is idempotent. One transaction holds a
/// transaction-scoped advisory lock for the whole run, so two processes starting at once apply each
/// step exactly once (the second waits, then finds nothing left to do). The versions applied are
/// kept in `iot_schema_migrations`. A database that already holds a *later* version than this
/// build knows is refused rather than used with a schema it does not understand.
pub async fn migrate(
    pool: &PgPool,
    component: &'static str,
    migrations: &[Migration],
) -> Result<(), PgError> {
    let mut client = pool.get().await?;
    let tx = client
        .transaction()
        .await
        .map_err(|e| PgError::query("begin migration", e))?;
    // One lock for every component: the bookkeeping table itself is created under it.
    tx.execute("SELECT pg_advisory_xact_lock(7351402611839262001)", &[])
        .await
        .map_err(|e| PgError::query("take the migration lock", e))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS iot_schema_migrations (
             component  text        NOT NULL,
             version    integer     NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (component, version)
         )",
    )
    .await
    .map_err(|e| PgError::query("create iot_schema_migrations", e))?;
    let row = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM iot_schema_migrations WHERE component = $1",
            &[&component],
        )
        .await
        .map_err(|e| PgError::query("read the schema version", e))?;
    let current: i32 = row.get(0);
    let known = migrations.iter().map(|m| m.version).max().unwrap_or(0);
    if current > known {
        return Err(PgError::Config {
            reason: format!(
                "the database holds {component} schema version {current}, newer than the {known} \
                 this build knows; upgrade the program before using this database"
            ),
        });
    }
    let mut ordered: Vec<&Migration> = migrations.iter().filter(|m| m.version > current).collect();
    ordered.sort_by_key(|m| m.version);
    for m in ordered {
        tx.batch_execute(m.sql)
            .await
            .map_err(|e| PgError::query("apply a schema migration", e))?;
        tx.execute(
            "INSERT INTO iot_schema_migrations (component, version) VALUES ($1, $2)",
            &[&component, &m.version],
        )
        .await
        .map_err(|e| PgError::query("record a schema migration", e))?;
        tracing::info!(
            component,
            version = m.version,
            "applied PostgreSQL schema migration"
        );
    }
    tx.commit()
        .await
        .map_err(|e| PgError::query("commit migration", e))?;
    Ok(())
}
