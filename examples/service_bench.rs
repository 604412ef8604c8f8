//! The HTTP endpoint under load, beside a trivial handler on the same server stack, in one run.
//!
//! ```sh
//! cargo run --release --features http --example service_bench              # 1 000 000 devices for the query
//! cargo run --release --features http --example service_bench -- --quick   # 10 000 devices, short runs (CI)
//! ```
//!
//! * **Twin GET** and **telemetry POST** (`/devices/{id}/messages/events`, 100-byte body, two
//!   `iothub-*` headers) are driven by `wrk` (Debian package `wrk`) with keep-alive connections;
//!   the **peer** is a trivial axum handler (`GET` answers a small JSON body, `POST` reads the body
//!   and answers 204) served by the same [`HttpServer`] (same accept loop, hyper connection
//!   builder, plain TCP) on another port, measured by the same `wrk` command in the same run.
//!   Each pair is measured alternately, best of `ROUNDS`. The hub uses memory stores and no
//!   throttling (the throttle would measure itself).
//! * **Query**: `--devices` devices are registered through the provisioner with a `site` tag
//!   (100 sites); `SELECT * FROM devices WHERE tags.site = 'site-7'` (one page of 100) is timed
//!   via `POST /devices/query` over a socket and in-process against the registry, p50 of each.
//!
//! Last line, one JSON object: `twin_get_rps`, `twin_get_vs_peer` (target ≥ 0.5),
//! `telemetry_post_rps`, `telemetry_post_vs_peer` (target ≥ 0.3), `query_rest_p50_ms`,
//! `query_inprocess_p50_ms`.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    reason = "a benchmark reports on stdout and stops on setup failures"
)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use iot_sdk::gateway::http::{HttpConfig, HttpServer, HttpState, PolicyStore, SharedAccessPolicy};
use iot_sdk::gateway::{Hub, HubConfig, ThrottleConfig};
use iot_sdk::identity::{Credentials, IdentityStore, MemoryIdentityStore, sas};
use iot_sdk::provisioning::{Provisioner, Provisioning, RegisterRequest};
use iot_sdk::registry::query::Query;
use iot_sdk::registry::{MemoryRegistry, PageRequest, Registry};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ROUNDS: usize = 2;
const HOST: &str = "localhost";
const API: &str = "api-version=2021-04-12";
const QUERY: &str = "SELECT * FROM devices WHERE tags.site = 'site-7'";

/// Options.
#[derive(Parser, Debug)]
#[command(about = "HTTP endpoint throughput beside a trivial handler on the same stack")]
struct Args {
    /// A short run for CI: 10 000 devices, 2-second load runs.
    #[arg(long)]
    quick: bool,
    /// Devices registered for the query (default 1 000 000; 10 000 with --quick).
    #[arg(long)]
    devices: Option<usize>,
    /// Seconds per wrk run (default 5; 2 with --quick).
    #[arg(long)]
    seconds: Option<u64>,
    /// Concurrent keep-alive connections of wrk.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Query repetitions for the p50s.
    #[arg(long, default_value_t = 50)]
    query_runs: usize,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let devices = args
        .devices
        .unwrap_or(if args.quick { 10_000 } else { 1_000_000 })
        .max(100);
    let seconds = args.seconds.unwrap_or(if args.quick { 2 } else { 5 });
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("service_bench needs wrk (apt-get install wrk)");
        std::process::exit(2);
    }

    let identity: Arc<dyn IdentityStore> = Arc::new(MemoryIdentityStore::new());
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let provisioner = Arc::new(
        Provisioner::builder(identity.clone(), registry.clone())
            .open()
            .await
            .unwrap(),
    );
    let mut hub_config = HubConfig::default();
    hub_config.throttle = ThrottleConfig::unlimited();
    let hub = Hub::builder(identity.clone(), HOST)
        .config(hub_config)
        .build()
        .await
        .unwrap();
    let policies = Arc::new(PolicyStore::memory(SharedAccessPolicy::defaults()));
    let config = HttpConfig::default();
    let state = HttpState::new(
        Arc::new(hub.clone()),
        provisioner.clone() as Arc<dyn Provisioning>,
        registry.clone(),
        identity.clone(),
        policies.clone(),
        HOST,
        config.clone(),
    );
    let server = HttpServer::new(iot_sdk::gateway::http::router(state), config.clone());
    let addr = server
        .listen_tcp("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let peer = HttpServer::new(peer_router(), config);
    let peer_addr = peer
        .listen_tcp("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();

    // The device the load runs use, and the devices the query runs over.
    let started = Instant::now();
    register(&provisioner, devices).await;
    println!(
        "registered {devices} devices in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let owner = policies.get("iothubowner").unwrap();
    let owner_token = sas::generate(
        &format!("{HOST}:{}", addr.port()),
        &owner.primary,
        sas::unix_now() + 3600,
        Some("iothubowner"),
    )
    .unwrap();
    let bench_id = "dev-0000000".parse().unwrap();
    let stored = identity.get(&bench_id).await.unwrap().unwrap();
    let Credentials::SymmetricKeys { primary, .. } = &stored.credentials else {
        panic!("generated keys expected")
    };
    let device_token = sas::generate(
        &format!("{HOST}/devices/dev-0000000"),
        primary,
        sas::unix_now() + 3600,
        None,
    )
    .unwrap();

    let dir = std::env::temp_dir().join(format!("service_bench_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let post_script = dir.join("post.lua");
    std::fs::write(
        &post_script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = \"{}\"\nwrk.headers[\"Authorization\"] = \"{}\"\n\
             wrk.headers[\"iothub-messageid\"] = \"m-1\"\nwrk.headers[\"iothub-app-temp\"] = \"21\"\n",
            "x".repeat(100),
            device_token.as_str()
        ),
    )
    .unwrap();
    let owner_header = format!("Authorization: {}", owner_token.as_str());

    let load = |url: String, header: Option<String>, script: Option<std::path::PathBuf>| {
        let connections = args.connections;
        move || {
            wrk(
                &url,
                header.as_deref(),
                script.as_deref(),
                connections,
                seconds,
            )
        }
    };
    let twin = load(
        format!("http://{addr}/twins/dev-0000000?{API}"),
        Some(owner_header.clone()),
        None,
    );
    let peer_get = load(format!("http://{peer_addr}/peer"), None, None);
    let telemetry = load(
        format!("http://{addr}/devices/dev-0000000/messages/events?{API}"),
        None,
        Some(post_script.clone()),
    );
    let peer_post = load(
        format!("http://{peer_addr}/peer"),
        None,
        Some(post_script.clone()),
    );
    let (twin_rps, peer_get_rps) = alternate(twin, peer_get).await;
    println!("twin GET: {twin_rps:.0} req/s; peer GET: {peer_get_rps:.0} req/s");
    let (telemetry_rps, peer_post_rps) = alternate(telemetry, peer_post).await;
    println!("telemetry POST: {telemetry_rps:.0} req/s; peer POST: {peer_post_rps:.0} req/s");

    let rest = query_rest(addr, owner_token.as_str(), args.query_runs).await;
    let inprocess = query_inprocess(&registry, args.query_runs).await;
    println!(
        "query over {devices} devices (100 per page): REST p50 {rest:.2} ms, in-process p50 {inprocess:.2} ms"
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average: {}", load.trim());
    let _ = std::fs::remove_dir_all(&dir);
    server.shutdown().await;
    peer.shutdown().await;
    println!(
        "{}",
        json!({
            "twin_get_rps": twin_rps.round(),
            "twin_get_vs_peer": ratio(twin_rps, peer_get_rps),
            "telemetry_post_rps": telemetry_rps.round(),
            "telemetry_post_vs_peer": ratio(telemetry_rps, peer_post_rps),
            "query_rest_p50_ms": (rest * 100.0).round() / 100.0,
            "query_inprocess_p50_ms": (inprocess * 100.0).round() / 100.0,
        })
    );
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        (a / b * 1000.0).round() / 1000.0
    } else {
        0.0
    }
}

fn peer_router() -> axum::Router {
    use axum::routing::get;
    axum::Router::new().route(
        "/peer",
        get(|| async { axum::Json(json!({"deviceId": "peer", "version": 1})) }).post(
            |body: axum::body::Bytes| async move {
                std::hint::black_box(body.len());
                axum::http::StatusCode::NO_CONTENT
            },
        ),
    )
}

/// Registers `n` devices `dev-0000000…` with a `site` tag, 64 at a time.
async fn register(provisioner: &Arc<Provisioner>, n: usize) {
    let mut next = 0;
    while next < n {
        let end = (next + 64).min(n);
        let mut tasks = Vec::with_capacity(end - next);
        for i in next..end {
            let provisioner = provisioner.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("dev-{i:07}").parse().unwrap();
                let tags = json!({"site": format!("site-{}", i % 100)});
                provisioner
                    .register(RegisterRequest::new(id, tags))
                    .await
                    .unwrap();
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        next = end;
    }
}

/// Runs `a` and `b` alternately `ROUNDS` times each; the best requests/s of each.
async fn alternate<A, B>(a: A, b: B) -> (f64, f64)
where
    A: Fn() -> f64 + Send + Clone + 'static,
    B: Fn() -> f64 + Send + Clone + 'static,
{
    let (mut best_a, mut best_b) = (0.0f64, 0.0f64);
    for _ in 0..ROUNDS {
        let run = a.clone();
        best_a = best_a.max(tokio::task::spawn_blocking(run).await.unwrap());
        let run = b.clone();
        best_b = best_b.max(tokio::task::spawn_blocking(run).await.unwrap());
    }
    (best_a, best_b)
}

/// One wrk run; its requests/s. Non-2xx answers make the run count as 0.
fn wrk(
    url: &str,
    header: Option<&str>,
    script: Option<&std::path::Path>,
    connections: usize,
    seconds: u64,
) -> f64 {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t", "2", "-c", &connections.to_string()])
        .args(["-d", &format!("{seconds}s")]);
    if let Some(h) = header {
        cmd.args(["-H", h]);
    }
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    cmd.arg(url);
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") {
        eprintln!("wrk saw error answers from {url}:\n{text}");
        return 0.0;
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn p50(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(0.0)
}

/// `POST /devices/query` over one keep-alive connection; p50 in ms.
async fn query_rest(addr: SocketAddr, token: &str, runs: usize) -> f64 {
    let body = json!({ "query": QUERY }).to_string();
    let request = format!(
        "POST /devices/query?{API} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {token}\r\n\
         Content-Type: application/json\r\nx-ms-max-item-count: 100\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        stream.write_all(request.as_bytes()).await.unwrap();
        let items = read_response(&mut stream).await;
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(items, 100, "a full page of twins");
    }
    p50(samples)
}

/// Reads one HTTP/1.1 response with a Content-Length body; the number of JSON array items.
async fn read_response(stream: &mut TcpStream) -> usize {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap();
        if buf.len() >= end + 4 + length {
            let items: Vec<serde_json::Value> =
                serde_json::from_slice(&buf[end + 4..end + 4 + length]).unwrap();
            return items.len();
        }
    }
}

/// The same query against the registry, in-process; p50 in ms.
async fn query_inprocess(registry: &Arc<dyn Registry>, runs: usize) -> f64 {
    // The registry's own language: IoT Hub's `tags.x` is the record's `metadata.x`.
    let query = Query::parse("SELECT * FROM devices WHERE metadata.site = 'site-7'").unwrap();
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let page = registry
            .query(&query, &PageRequest::first(100))
            .await
            .unwrap();
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(page.len(), 100);
    }
    p50(samples)
}
