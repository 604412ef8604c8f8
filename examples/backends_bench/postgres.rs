//! The PostgreSQL half of `backends_bench`.
//!
//! `main.rs` declares `mod postgres;` and merges what [`run`] returns into its last-line JSON
//! object:
//!
//! ```text
//! let pg = postgres::run(quick).await;   // inside the tokio runtime
//! out.extend(pg);                        // out: serde_json::Map<String, serde_json::Value>
//! ```
//!
//! It needs the crate's `postgres` feature (the example's `required-features` must include it)
//! and a PostgreSQL server: URL from `IOT_BENCH_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`. Everything it writes lives in a namespace of its
//! own, dropped at the end. If the server is unreachable it prints why (stderr) and returns
//! `pg_skipped` instead of figures.
//!
//! Keys:
//! * `pg_query_p50_us` — a selective registry query (about 20 matches among `devices`) through
//!   `PgRegistry`, median microseconds; `pg_query_hand_p50_us` the same question asked by hand
//!   (one prepared statement with a containment condition, rows decoded to JSON);
//!   `pg_query_vs_hand` = hand p50 / adapter p50 (≥ 0.8 wanted); `file_query_p50_us` the same
//!   query on a `FileRegistry` holding the same fleet, and `file_vs_pg_query` = file p50 / pg p50.
//! * `pg_identity_lookup_per_s` — identity lookups per second through `PgIdentityStore` with its
//!   cache warm; `memory_identity_lookup_per_s` the same lookups on `MemoryIdentityStore`, and
//!   `pg_identity_vs_memory` their ratio.
//! * `pg_devices`, `pg_query_samples`: the sizes used.
#![allow(
    clippy::print_stderr,
    reason = "progress and skip reasons of a benchmark"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use iot_core::DeviceId;
use iot_identity::{Credentials, IdentityStore, MemoryIdentityStore, NewIdentity};
use iot_registry::{
    DeviceDocument, FileRegistry, FileRegistryConfig, PageRequest, Query, Registry,
};
use iot_sdk::postgres::{PgIdentityConfig, PgIdentityStore, PgPool, PgRegistry, PgRegistryConfig};
use serde_json::{Map, Value, json};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const QUERY: &str = "SELECT * FROM devices WHERE metadata.building = 'B7' AND metadata.floor = 3";

fn p50(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples
        .get(samples.len() / 2)
        .map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

fn document(i: u32) -> DeviceDocument {
    DeviceDocument::with_metadata(json!({
        "building": format!("B{}", i % 50),
        "floor": (i / 50) % 20,
        "model": format!("M{}", i % 7),
        "serial": format!("SN-{i:08}"),
    }))
    .unwrap_or_default()
}

fn device(i: u32) -> DeviceId {
    DeviceId::new(format!("bench-{i:07}")).unwrap_or_else(|_| unreachable!("valid ids"))
}

/// Writes the fleet with `tasks` writers at once.
async fn load(registry: Arc<dyn Registry>, devices: u32, tasks: u32) {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let r = Arc::clone(&registry);
        handles.push(tokio::spawn(async move {
            let mut i = t;
            while i < devices {
                if let Err(e) = r.create(&device(i), document(i)).await {
                    eprintln!("load: {e}");
                    return;
                }
                i += tasks;
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
}

async fn time_queries(r: &dyn Registry, q: &Query, samples: usize) -> (f64, usize) {
    let mut found = 0;
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        match r.query(q, &PageRequest::default()).await {
            Ok(page) => found = page.len(),
            Err(e) => eprintln!("query: {e}"),
        }
        times.push(start.elapsed());
    }
    (p50(times), found)
}

/// The adapter's query and the same question asked by hand (one prepared statement with the
/// values written in, rows decoded to JSON), alternately, so that both see the same load
/// of a shared machine: (adapter p50, hand p50, adapter matches, hand matches) in microseconds.
async fn time_against_hand(
    r: &dyn Registry,
    q: &Query,
    pool: &PgPool,
    namespace: &str,
    samples: usize,
) -> Option<(f64, f64, usize, usize)> {
    let client = pool.get().await.ok()?;
    // Written as one would by hand, every value in the text: with the namespace bound as a
    // parameter PostgreSQL switches to a generic plan after five runs, estimates a namespace
    // as a small share of a shared table and walks it all (measured: 2.7 ms instead of 0.4).
    // The namespace is this run's own `bench-…` name, safe to quote.
    let sql = format!(
        "SELECT device_id, doc::text, etag, created_us, updated_us FROM iot_registry_devices \
         WHERE ns = '{namespace}' \
         AND doc @> '{{\"metadata\": {{\"building\": \"B7\", \"floor\": 3}}}}'::jsonb \
         ORDER BY device_id LIMIT 1001"
    );
    let statement = client.prepare(&sql).await.ok()?;
    let (mut adapter, mut hand) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
    let (mut adapter_found, mut hand_found) = (0, 0);
    for _ in 0..samples {
        let start = Instant::now();
        match r.query(q, &PageRequest::default()).await {
            Ok(page) => adapter_found = page.len(),
            Err(e) => eprintln!("query: {e}"),
        }
        adapter.push(start.elapsed());
        let start = Instant::now();
        let rows = client.query(&statement, &[]).await.ok()?;
        let docs: Vec<(String, Value)> = rows
            .iter()
            .map(|row| {
                let id: String = row.get(0);
                let doc: &str = row.get(1);
                (id, serde_json::from_str(doc).unwrap_or(Value::Null))
            })
            .collect();
        hand_found = docs.len();
        hand.push(start.elapsed());
    }
    Some((p50(adapter), p50(hand), adapter_found, hand_found))
}

/// Lookups of `ids` in turn for about `span`; lookups per second.
async fn lookups_per_s(store: &dyn IdentityStore, ids: &[DeviceId], span: Duration) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < span {
        for id in ids.iter().take(1000) {
            if let Ok(Some(found)) = store.get(id).await {
                std::hint::black_box(found);
            }
            n += 1;
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Runs the PostgreSQL measurements; see the module docs for the keys.
pub(crate) async fn run(quick: bool) -> Map<String, Value> {
    let mut out = Map::new();
    let url = std::env::var("IOT_BENCH_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let pool = match PgPool::from_url(&url) {
        Ok(pool) => pool,
        Err(e) => {
            eprintln!("postgres: skipped: {e}");
            out.insert("pg_skipped".into(), json!(e.to_string()));
            return out;
        }
    };
    if let Err(e) = pool.get().await {
        eprintln!("postgres: skipped: {e}");
        out.insert("pg_skipped".into(), json!(e.to_string()));
        return out;
    }
    let (devices, samples, identities) = if quick {
        (5_000u32, 200usize, 1_000u32)
    } else {
        (50_000, 1_000, 10_000)
    };
    let namespace = format!(
        "bench-{}-{}",
        std::process::id(),
        iot_core::Timestamp::now().as_unix_micros()
    );
    out.insert("pg_devices".into(), json!(devices));
    out.insert("pg_query_samples".into(), json!(samples));

    // ---- registry: PgRegistry, by hand, FileRegistry ----
    let registry = match PgRegistry::open(
        pool.clone(),
        PgRegistryConfig::default().namespace(namespace.clone()),
    )
    .await
    {
        Ok(r) => Arc::new(r),
        Err(e) => {
            eprintln!("postgres: skipped: {e}");
            out.insert("pg_skipped".into(), json!(e.to_string()));
            return out;
        }
    };
    eprintln!("postgres: loading {devices} devices");
    load(registry.clone(), devices, 16).await;
    if let Ok(client) = pool.get().await {
        // What autovacuum does in a steady state: without it the GIN index's pending list (fresh
        // inserts, scanned linearly by every query) dominates the query time.
        let _ = client
            .batch_execute("VACUUM ANALYZE iot_registry_devices")
            .await;
    }
    let q = Query::parse(QUERY).unwrap_or_else(|_| unreachable!("the bench query parses"));
    // Warm up: statements prepared, pages cached.
    time_queries(registry.as_ref(), &q, 20).await;
    let Some((pg_p50, hand_p50, pg_found, hand_found)) =
        time_against_hand(registry.as_ref(), &q, &pool, &namespace, samples).await
    else {
        eprintln!("postgres: the registry query failed");
        out.insert("pg_skipped".into(), json!("the registry query failed"));
        return out;
    };
    if hand_found != pg_found {
        eprintln!("postgres: by hand found {hand_found}, the adapter {pg_found}");
    }
    out.insert("pg_query_p50_us".into(), json!(pg_p50.round()));
    out.insert("pg_query_matches".into(), json!(pg_found));
    out.insert("pg_query_hand_p50_us".into(), json!(hand_p50.round()));
    out.insert(
        "pg_query_vs_hand".into(),
        json!(((hand_p50 / pg_p50) * 100.0).round() / 100.0),
    );
    if let Ok(dir) = tempfile::tempdir()
        && let Ok(file) = FileRegistry::open(dir.path(), FileRegistryConfig::default()).await
    {
        let file: Arc<dyn Registry> = Arc::new(file);
        load(file.clone(), devices, 4).await;
        time_queries(file.as_ref(), &q, 20).await;
        let (file_p50, _) = time_queries(file.as_ref(), &q, samples).await;
        out.insert("file_query_p50_us".into(), json!(file_p50.round()));
        out.insert(
            "file_vs_pg_query".into(),
            json!(((file_p50 / pg_p50) * 1000.0).round() / 1000.0),
        );
    }

    // ---- identities: PgIdentityStore with its cache, MemoryIdentityStore ----
    match PgIdentityStore::open(
        pool.clone(),
        PgIdentityConfig::default().namespace(namespace.clone()),
    )
    .await
    {
        Ok(store) => {
            let memory = MemoryIdentityStore::new();
            let ids: Vec<DeviceId> = (0..identities).map(device).collect();
            eprintln!("postgres: creating {identities} identities");
            for id in &ids {
                let credentials = Credentials::generate_symmetric_keys();
                let _ = store
                    .create(NewIdentity::new(id.clone(), credentials.clone()))
                    .await;
                let _ = memory
                    .create(NewIdentity::new(id.clone(), credentials))
                    .await;
            }
            // Warm the cache (the creates' own notifications may evict a first fill).
            tokio::time::sleep(Duration::from_millis(200)).await;
            for _ in 0..2 {
                for id in &ids {
                    let _ = store.get(id).await;
                }
            }
            let span = if quick {
                Duration::from_millis(500)
            } else {
                Duration::from_secs(2)
            };
            let pg_rate = lookups_per_s(&store, &ids, span).await;
            let memory_rate = lookups_per_s(&memory, &ids, span).await;
            out.insert("pg_identity_lookup_per_s".into(), json!(pg_rate.round()));
            out.insert(
                "memory_identity_lookup_per_s".into(),
                json!(memory_rate.round()),
            );
            out.insert(
                "pg_identity_vs_memory".into(),
                json!(((pg_rate / memory_rate) * 100.0).round() / 100.0),
            );
            out.insert("pg_identity_cached".into(), json!(store.cached()));
        }
        Err(e) => eprintln!("postgres: identity store: {e}"),
    }

    // ---- clean up the namespace ----
    if let Ok(client) = pool.get().await {
        let _ = client
            .execute(
                "DELETE FROM iot_registry_devices WHERE ns = $1",
                &[&namespace],
            )
            .await;
        let _ = client
            .execute("DELETE FROM iot_identities WHERE ns = $1", &[&namespace])
            .await;
        let _ = client
            .execute(
                "DELETE FROM iot_identity_changes WHERE ns = $1",
                &[&namespace],
            )
            .await;
    }
    out
}
