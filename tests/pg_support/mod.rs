//! What the PostgreSQL adapter tests share: the shared server (or a skip), and fresh names.
#![allow(dead_code, unreachable_pub)]

use iot_sdk::postgres::PgPool;

const URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The shared server, or `None` (with the reason printed) when it is unreachable outside CI.
// The skip reason goes to the test's own output, where `cargo test` shows it.
#[allow(clippy::print_stderr)]
pub async fn shared_pool() -> Option<PgPool> {
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

/// A name no earlier run used: `prefix-<pid>-<nanos>`.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}
