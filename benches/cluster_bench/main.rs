//! `cluster_bench` (issue 16): the same QoS 1 telemetry load on one `iot-cluster-node` process
//! and on two, and direct methods through the devices' own node against through the other one.
//!
//! ```sh
//! cargo bench --features cluster-node --bench cluster_bench                 # 1 000 devices
//! cargo test --features cluster-node --bench cluster_bench -- --quick        # CI: tiny, debug
//! ```
//!
//! * **Single**: one node (`--no-throttle`); 1 000 devices connect to it (untimed), then each
//!   publishes 100 QoS 1 messages of 100 bytes with 16 in flight (as `examples/mqtt_load`
//!   does); msgs/s from the first send to the last PUBACK.
//! * **Cluster**: two nodes of a new hub, the devices split half and half, the same load.
//!   `cluster_vs_single` is the ratio of the two rates. On a 2-core machine the nodes, NATS,
//!   PostgreSQL and this load generator share the cores in both runs.
//! * **Lost**: after each run the hub's telemetry log is read back from JetStream; every
//!   PUBACKed message must be there (`lost` sums both runs).
//! * **Methods**: with the two nodes up and idle, devices on node 0 answer direct methods;
//!   `POST /twins/{id}/methods` through node 0's REST API (local) and through node 1's (routed
//!   to node 0 over NATS), one call at a time, alternating; p50/p99 of each in ms.
//!
//! Each run has a hub name of its own (identity namespace, stream prefix, subjects); its
//! identities are created before the nodes start, and its streams are deleted after it.
//! Progress goes to stderr, the table to stdout, and the last line is one JSON object.
//!
//! Flags (anything else, such as the `--bench` cargo passes, is ignored): `--quick`,
//! `--devices N`, `--messages N` (per device), `--methods N`, `--nats-server-pid PID` (for the
//! CPU accounting when several nats-servers run), `--independent` (a third run: two single-node
//! hubs side by side, the same two processes without shared log streams, for comparison).
//! `CLUSTER_BENCH_NODE_LOG` sets the nodes' `RUST_LOG`.
#![forbid(unsafe_code)]
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    reason = "a benchmark reports on stdout and stops on setup failures"
)]

#[path = "../../tests/cluster_support/mod.rs"]
mod cluster_support;
mod cpu;
mod fleet;
mod http;
mod load;
mod lost;
mod methods;

use cluster_support::{NodeOptions, ProcessCluster, unique_name};
use iot_sdk::postgres::PgPool;

use crate::cpu::{Probe, Tracked};
use crate::fleet::Fleet;
use crate::load::Outcome;
use crate::methods::{Latencies, Responder, percentile};

#[derive(Debug, Clone)]
struct Settings {
    quick: bool,
    devices: usize,
    messages: u32,
    methods: usize,
    /// Devices on node 0 answering methods.
    responders: usize,
    nats_server_pid: Option<u32>,
    /// Also run two single-node hubs side by side (see [`run_independent`]).
    independent: bool,
}

impl Settings {
    fn parse() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick");
        let value = |name: &str| -> Option<u64> {
            let at = args.iter().position(|a| a == name)?;
            args.get(at + 1)?.parse().ok()
        };
        Settings {
            quick,
            devices: value("--devices").map_or(if quick { 20 } else { 1000 }, |v| v as usize),
            messages: value("--messages").map_or(if quick { 10 } else { 100 }, |v| v as u32),
            methods: value("--methods").map_or(if quick { 10 } else { 200 }, |v| v as usize),
            responders: if quick { 2 } else { 4 },
            nats_server_pid: value("--nats-server-pid").map(|v| v as u32),
            independent: args.iter().any(|a| a == "--independent"),
        }
    }
}

/// One throughput run.
#[derive(Debug)]
struct Run {
    nodes: usize,
    outcome: Outcome,
    lost: u64,
    cpu: Vec<(String, f64)>,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let settings = Settings::parse();
    let options = NodeOptions {
        no_throttle: true,
        // `RUST_LOG` of the nodes: warnings, and why the MQTT endpoint closed a connection
        // (logged at info), so that a run with refused or cut-off devices says why.
        log: Some(
            std::env::var("CLUSTER_BENCH_NODE_LOG")
                .unwrap_or_else(|_| "warn,iot_gateway::mqtt::server=info".into()),
        ),
        ..NodeOptions::default()
    };
    let pool = PgPool::from_url(&options.postgres)?;
    let load_before = load_average();
    eprintln!(
        "cluster_bench: {} devices x {} messages; load average {load_before}",
        settings.devices, settings.messages
    );

    let (single, _) = run_hub(&settings, &options, &pool, 1).await?;
    let (cluster, latencies) = run_hub(&settings, &options, &pool, 2).await?;
    let independent = if settings.independent {
        Some(run_independent(&settings, &options, &pool).await?)
    } else {
        None
    };
    let mut latencies = latencies.ok_or("the cluster run measured no methods")?;
    let load_after = load_average();

    let single_rate = single.outcome.msgs_per_s();
    let cluster_rate = cluster.outcome.msgs_per_s();
    let ratio = cluster_rate / single_rate;
    let lost = single.lost + cluster.lost + independent.as_ref().map_or(0, |r| r.lost);
    let (local_p50, local_p99) = (
        percentile(&mut latencies.local, 0.50),
        percentile(&mut latencies.local, 0.99),
    );
    let (cross_p50, cross_p99) = (
        percentile(&mut latencies.cross, 0.50),
        percentile(&mut latencies.cross, 0.99),
    );

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "cluster_bench{}: {} devices x {} QoS 1 messages of {} B (16 in flight per device), \
         nodes with --no-throttle; nodes, NATS, PostgreSQL and the load generator share {cores} cores",
        if settings.quick { " --quick" } else { "" },
        settings.devices,
        settings.messages,
        load::PAYLOAD
    );
    println!("load average before: {load_before}; after: {load_after}");
    println!();
    println!(
        "| run | nodes | sent | acked | msgs/s | timed s | connect s | lost | refused at connect | closed during run | CPU s over the timed part |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut runs = vec![("single", &single), ("cluster", &cluster)];
    if let Some(run) = &independent {
        runs.push(("2 independent hubs", run));
    }
    for (label, run) in runs {
        let cpu: Vec<String> = run
            .cpu
            .iter()
            .map(|(name, s)| format!("{name} {s:.2}"))
            .collect();
        println!(
            "| {label} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {} | {} | {} | {} |",
            run.nodes,
            run.outcome.sent,
            run.outcome.acked,
            run.outcome.msgs_per_s(),
            run.outcome.elapsed.as_secs_f64(),
            run.outcome.connect.as_secs_f64(),
            run.lost,
            run.outcome.refused,
            run.outcome.errors - run.outcome.refused,
            cpu.join(", ")
        );
    }
    println!();
    println!("cluster / single: {ratio:.3}");
    if single.outcome.errors + cluster.outcome.errors > 0 {
        println!(
            "(not a like-for-like ratio: devices were refused or cut off, so fewer messages were \
             sent in that run)"
        );
    }
    if let Some(run) = &independent {
        println!(
            "2 independent single-node hubs / single: {:.3} (what two processes get from this \
             machine when they share no stream)",
            run.outcome.msgs_per_s() / single_rate
        );
    }
    println!(
        "direct methods, {} calls each way: local p50 {local_p50:.2} ms p99 {local_p99:.2} ms; \
         cross-instance p50 {cross_p50:.2} ms p99 {cross_p99:.2} ms",
        settings.methods
    );
    println!(
        "{{\"single_msgs_per_s\":{single_rate:.0},\"cluster_msgs_per_s\":{cluster_rate:.0},\
         \"cluster_vs_single\":{ratio:.3},\"method_local_p50_ms\":{local_p50:.3},\
         \"method_cross_p50_ms\":{cross_p50:.3},\"method_local_p99_ms\":{local_p99:.3},\
         \"method_cross_p99_ms\":{cross_p99:.3},\"lost\":{lost},\"device_errors\":{},\
         \"devices\":{},\"messages_per_device\":{}}}",
        single.outcome.errors + cluster.outcome.errors,
        settings.devices,
        settings.messages
    );
    let errors = single.outcome.errors + cluster.outcome.errors;
    if errors > 0 {
        eprintln!(
            "WARNING: {errors} device connections were refused or closed by a node (their \
             unacknowledged messages are not counted; see the nodes' warnings above)"
        );
    }
    // Nothing acknowledged may be missing: that, not the rates, fails the bench.
    if lost > 0 {
        return Err(format!("{lost} acknowledged messages missing from the log").into());
    }
    Ok(())
}

/// One hub of `nodes` node processes: identities, nodes, the load, the log check, and with two
/// nodes the method round trips; then the nodes stop and the hub's streams go.
async fn run_hub(
    settings: &Settings,
    options: &NodeOptions,
    pool: &PgPool,
    nodes: usize,
) -> Result<(Run, Option<Latencies>), Box<dyn std::error::Error>> {
    let name = unique_name("cb");
    let devices = Fleet::new("dev");
    let responders = Fleet::new("meth");
    eprintln!("[{name}] creating {} identities", settings.devices);
    devices.create(pool, &name, settings.devices).await?;
    eprintln!("[{name}] starting {nodes} node(s)");
    let mut cluster = {
        let (name, options) = (name.clone(), options.clone());
        tokio::task::spawn_blocking(move || ProcessCluster::start(&name, nodes, options, &[]))
            .await?
    };
    let measured = measure_hub(settings, options, &name, &devices, &responders, &cluster).await;
    tokio::task::block_in_place(|| {
        for node in &mut cluster.nodes {
            node.terminate();
        }
    });
    // Whatever happened, the run's streams go.
    lost::delete_streams(&options.nats, &name).await?;
    measured
}

/// The load, the log check and (with two nodes) the methods, on a started hub.
async fn measure_hub(
    settings: &Settings,
    options: &NodeOptions,
    name: &str,
    devices: &Fleet,
    responders: &Fleet,
    cluster: &ProcessCluster,
) -> Result<(Run, Option<Latencies>), Box<dyn std::error::Error>> {
    let nodes = cluster.nodes.len();
    // Devices 0..n/2 on node 0, the rest on node 1 (all on node 0 when it is alone).
    let logins = (0..settings.devices)
        .map(|i| {
            let node = (i * nodes / settings.devices).min(nodes - 1);
            devices.login(i, cluster.nodes[node].addrs.mqtt)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ids: Vec<String> = logins.iter().map(|l| l.id.clone()).collect();
    let mut tracked: Vec<Tracked> = cluster
        .nodes
        .iter()
        .map(|n| Tracked {
            name: format!("node {}", n.instance),
            pid: n.pid(),
        })
        .collect();
    if let Some(pid) = cpu::nats_server_pid(settings.nats_server_pid) {
        tracked.push(Tracked {
            name: "nats".into(),
            pid,
        });
    }
    tracked.push(Tracked {
        name: "bench".into(),
        pid: std::process::id(),
    });
    let mut probe = Probe::new(tracked);
    eprintln!(
        "[{name}] load: {} devices on {nodes} node(s)",
        settings.devices
    );
    let outcome = match load::run(logins, settings.messages, &mut probe).await {
        Ok(outcome) => outcome,
        Err(e) => {
            for node in &cluster.nodes {
                report_node_warnings(node);
            }
            return Err(e);
        }
    };
    eprintln!(
        "[{name}] {} acked in {:.2} s: {:.0} msgs/s; checking the log",
        outcome.acked,
        outcome.elapsed.as_secs_f64(),
        outcome.msgs_per_s()
    );
    if outcome.errors > 0 {
        for node in &cluster.nodes {
            report_node_warnings(node);
        }
    }
    let lost = lost::count(&options.nats, name, &ids, &outcome.acked_per_device).await?;
    let cpu = probe.result.take().map(|(cpu, _)| cpu).unwrap_or_default();

    let latencies = if nodes > 1 {
        eprintln!("[{name}] methods: {} each way", settings.methods);
        let token = methods::service_token(&cluster.service_key)?;
        let mut local = http::Connection::open(cluster.nodes[0].addrs.http).await?;
        let mut cross = http::Connection::open(cluster.nodes[1].addrs.http).await?;
        let mut answering = Vec::new();
        let mut ids = Vec::new();
        for i in 0..settings.responders {
            let id = responders.id(i);
            methods::register(&mut local, &token, &id, &responders.key(i)).await?;
            let login = responders.login(i, cluster.nodes[0].addrs.mqtt)?;
            answering.push(Responder::start(login).await?);
            ids.push(id);
        }
        let latencies =
            methods::measure(&mut local, &mut cross, &token, &ids, settings.methods).await?;
        for responder in &answering {
            responder.stop();
        }
        Some(latencies)
    } else {
        None
    };

    Ok((
        Run {
            nodes,
            outcome,
            lost,
            cpu,
        },
        latencies,
    ))
}

/// `--independent`: two hubs of one node each (names, streams and identities of their own), the
/// devices split half and half, the same load at the same time. Not a cluster — nothing is
/// shared but the machine and the NATS and PostgreSQL servers — but the same two node processes
/// without the shared log partitions: the ceiling the cluster run could reach here.
async fn run_independent(
    settings: &Settings,
    options: &NodeOptions,
    pool: &PgPool,
) -> Result<Run, Box<dyn std::error::Error>> {
    let names = [unique_name("cb"), unique_name("cb")];
    let devices = Fleet::new("dev");
    let half = settings.devices / 2;
    let ranges = [0..half, half..settings.devices];
    let mut hubs = Vec::new();
    for (name, range) in names.iter().zip(&ranges) {
        eprintln!("[{name}] creating {} identities", range.len());
        devices.create_range(pool, name, range.clone()).await?;
    }
    for name in &names {
        eprintln!("[{name}] starting 1 node");
        let (name, options) = (name.clone(), options.clone());
        hubs.push(
            tokio::task::spawn_blocking(move || ProcessCluster::start(&name, 1, options, &[]))
                .await?,
        );
    }
    let mut logins = Vec::new();
    for (hub, range) in hubs.iter().zip(&ranges) {
        for i in range.clone() {
            logins.push(devices.login(i, hub.nodes[0].addrs.mqtt)?);
        }
    }
    let ids: Vec<String> = logins.iter().map(|l| l.id.clone()).collect();
    let mut tracked: Vec<Tracked> = hubs
        .iter()
        .map(|h| Tracked {
            name: format!("node {}", h.name),
            pid: h.nodes[0].pid(),
        })
        .collect();
    if let Some(pid) = cpu::nats_server_pid(settings.nats_server_pid) {
        tracked.push(Tracked {
            name: "nats".into(),
            pid,
        });
    }
    tracked.push(Tracked {
        name: "bench".into(),
        pid: std::process::id(),
    });
    let mut probe = Probe::new(tracked);
    eprintln!("load: {} devices on two independent hubs", settings.devices);
    let outcome = load::run(logins, settings.messages, &mut probe).await?;
    eprintln!(
        "{} acked in {:.2} s: {:.0} msgs/s; checking the logs",
        outcome.acked,
        outcome.elapsed.as_secs_f64(),
        outcome.msgs_per_s()
    );
    let mut lost = 0;
    for ((name, range), hub) in names.iter().zip(&ranges).zip(&hubs) {
        if outcome.errors > 0 {
            report_node_warnings(&hub.nodes[0]);
        }
        lost += lost::count(
            &options.nats,
            name,
            &ids[range.clone()],
            &outcome.acked_per_device[range.clone()],
        )
        .await?;
    }
    let cpu = probe.result.take().map(|(cpu, _)| cpu).unwrap_or_default();
    tokio::task::block_in_place(|| {
        for hub in &mut hubs {
            for node in &mut hub.nodes {
                node.terminate();
            }
        }
    });
    for name in &names {
        lost::delete_streams(&options.nats, name).await?;
    }
    Ok(Run {
        nodes: 2,
        outcome,
        lost,
        cpu,
    })
}

/// What a node logged at `warn` and `error`, and the connections its MQTT endpoint closed with
/// an error, grouped by message (numbers masked) on stderr: why it refused or cut off devices.
fn report_node_warnings(node: &cluster_support::NodeProcess) {
    let output = node.output();
    if std::env::var_os("CLUSTER_BENCH_NODE_LOG").is_some() {
        let file = std::env::temp_dir().join(format!("cluster_bench-{}.log", node.instance));
        if std::fs::write(&file, &output).is_ok() {
            eprintln!(
                "node {}: its whole output is in {}",
                node.instance,
                file.display()
            );
        }
    }
    let output = strip_ansi(&output);
    let mut seen: Vec<(String, usize)> = Vec::new();
    for line in output.lines().filter(|l| {
        ["WARN", "ERROR", "error="]
            .iter()
            .any(|what| l.contains(what))
    }) {
        // Drop the timestamp and mask numbers (ports, offsets, ids) so that equal causes group.
        let message = line.split_once("Z ").map_or(line, |(_, rest)| rest);
        let mut masked = String::new();
        for c in message.chars().take(300) {
            if c.is_ascii_digit() {
                if !masked.ends_with('N') {
                    masked.push('N');
                }
            } else {
                masked.push(c);
            }
        }
        let message = masked;
        match seen.iter_mut().find(|(m, _)| *m == message) {
            Some((_, n)) => *n += 1,
            None => seen.push((message, 1)),
        }
    }
    eprintln!(
        "node {}: {} warnings and connections closed on an error",
        node.instance,
        seen.iter().map(|(_, n)| n).sum::<usize>()
    );
    for (message, n) in seen.iter().take(10) {
        eprintln!("  {n} x {message}");
    }
}

/// `text` without terminal colour sequences (`ESC [ … m`), which tracing puts around fields.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The first three fields of /proc/loadavg.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
