//! The PostgreSQL adapters' shared pieces against the machine's PostgreSQL (feature `postgres`):
//! migrations run concurrently apply each step once, a newer schema is refused, an unreachable
//! server is a prompt, retryable, typed error.
#![cfg(feature = "postgres")]

use std::time::{Duration, Instant};

use iot_sdk::postgres::{Migration, PgConfig, PgError, PgPool, migrate};

const URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The shared server, or `None` (with the reason printed) when it is unreachable outside CI.
// The skip reason goes to the test's own output, where `cargo test` shows it.
#[allow(clippy::print_stderr)]
async fn shared_pool() -> Option<PgPool> {
    let url = std::env::var("IOT_TEST_POSTGRES_URL").unwrap_or_else(|_| URL.to_owned());
    let pool = PgPool::from_url(&url).expect("valid URL");
    match pool.get().await {
        Ok(_) => Some(pool),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: PostgreSQL at {url} is unreachable ({e}); CI runs this test");
            None
        }
        Err(e) => panic!("PostgreSQL at {url} is unreachable under CI: {e}"),
    }
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_nanos();
    format!("{prefix}_{}_{nanos}", std::process::id())
}

#[tokio::test]
async fn concurrent_migrations_apply_each_step_once() {
    let Some(pool) = shared_pool().await else {
        return;
    };
    let table = unique("iot_migration_probe");
    // Leaked on purpose: `Migration::sql` is `&'static str` because real migrations are constants.
    let create: &'static str =
        Box::leak(format!("CREATE TABLE {table} (n integer NOT NULL)").into_boxed_str());
    let insert: &'static str =
        Box::leak(format!("INSERT INTO {table} VALUES (1)").into_boxed_str());
    let component: &'static str = Box::leak(table.clone().into_boxed_str());
    let steps = [
        Migration {
            version: 1,
            sql: create,
        },
        Migration {
            version: 2,
            sql: insert,
        },
    ];
    let runs = (0..4).map(|_| {
        let pool = pool.clone();
        async move { migrate(&pool, component, &steps).await }
    });
    for r in futures::future::join_all(runs).await {
        r.unwrap();
    }
    // Once more, later: nothing left to do.
    migrate(&pool, component, &steps).await.unwrap();
    let client = pool.get().await.unwrap();
    let rows: i64 = client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "the insert migration ran exactly once");

    // A build that knows only version 1 refuses the database at version 2.
    let e = migrate(&pool, component, &steps[..1]).await.unwrap_err();
    assert!(matches!(e, PgError::Config { .. }), "{e}");
    assert!(!e.is_retryable());
    assert!(e.to_string().contains("newer"), "{e}");

    client
        .batch_execute(&format!(
            "DROP TABLE {table}; DELETE FROM iot_schema_migrations WHERE component = '{table}'"
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_unreachable_server_is_a_prompt_retryable_error() {
    // Port 9 (discard) on loopback: nothing listens, the connection is refused.
    let config = PgConfig::from_url("postgres://postgres:pw@127.0.0.1:9/test")
        .unwrap()
        .with_connect_timeout(Duration::from_secs(2))
        .with_acquire_timeout(Duration::from_secs(3));
    let pool = PgPool::new(config).unwrap();
    let started = Instant::now();
    let e = pool.get().await.unwrap_err();
    assert!(matches!(e, PgError::Unreachable { .. }), "{e}");
    assert!(e.is_retryable());
    assert!(e.to_string().contains("127.0.0.1:9/test"), "{e}");
    assert!(!e.to_string().contains("pw"), "no password in errors: {e}");
    assert!(started.elapsed() < Duration::from_secs(30), "no hang");
}

#[tokio::test]
async fn a_failed_statement_says_what_the_server_answered() {
    let Some(pool) = shared_pool().await else {
        return;
    };
    let client = pool.get().await.expect("client");
    let e = client
        .simple_query("SELECT * FROM a_table_that_does_not_exist")
        .await
        .expect_err("no such table");
    let e = PgError::query("read the missing table", e);
    let shown = e.to_string();
    assert!(
        shown.contains("a_table_that_does_not_exist") && shown.contains("42P01"),
        "the message and SQLSTATE are shown: {shown}"
    );
    assert!(!e.is_retryable(), "a missing table is permanent");
}
