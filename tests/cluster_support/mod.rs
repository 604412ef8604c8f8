//! Gateway instances as processes of their own (`iot-cluster-node`, feature `cluster-node`) over
//! the machine's NATS and PostgreSQL, for the multi-process cluster tests and the benchmark.
//!
//! Each [`NodeProcess`] is one `iot-cluster-node` child with its endpoints on spare ports (or the
//! ones asked for), killed when dropped. [`ProcessCluster`] starts N of them under one hub name
//! (a fresh one per run, so runs never see each other) and one service key.
#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test target uses the part of the harness it needs"
)]
#![allow(
    clippy::unwrap_used,
    clippy::print_stderr,
    reason = "test support: a failed unwrap is a failed test; it reports what a node printed"
)]

pub mod http;

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The node binary cargo built for this test target.
pub fn node_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_iot-cluster-node"))
}

/// A loopback port nobody listens on right now.
pub fn spare_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// A hub name no other run uses (identity namespace, stream and subject prefix).
pub fn unique_name(prefix: &str) -> String {
    let n = RandomState::new().hash_one((std::time::SystemTime::now(), std::process::id()));
    format!("{prefix}{:010x}", n & 0xff_ffff_ffff)
}

/// What every node of a [`ProcessCluster`] is started with, beyond its own id and ports.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub nats: String,
    pub postgres: String,
    pub host: String,
    /// C2D lock duration.
    pub lock: Duration,
    pub heartbeat: Duration,
    pub lease: Duration,
    /// Serve MQTT over TLS too, with this certificate and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    pub no_throttle: bool,
    /// Extra `RUST_LOG` for the children (default `warn`).
    pub log: Option<String>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            nats: std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
            postgres: std::env::var("PG_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
            host: "localhost".into(),
            lock: Duration::from_secs(60),
            heartbeat: Duration::from_millis(200),
            lease: Duration::from_millis(1000),
            tls: None,
            no_throttle: false,
            log: None,
        }
    }
}

/// The addresses one node serves.
#[derive(Debug, Clone)]
pub struct NodeAddrs {
    pub mqtt: SocketAddr,
    /// Only when started with TLS.
    pub mqtts: Option<SocketAddr>,
    pub http: SocketAddr,
}

/// One running `iot-cluster-node`.
#[derive(Debug)]
pub struct NodeProcess {
    pub instance: String,
    pub addrs: NodeAddrs,
    child: Child,
    /// Everything the child printed on stdout and stderr so far (for failure reports).
    output: Arc<Mutex<Vec<String>>>,
}

impl NodeProcess {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and wait until it is gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (a graceful stop), and wait up to 10 s for it to exit.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
    }

    /// What the child printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// N nodes of one hub. Dropping it kills the nodes and deletes the hub's streams from NATS, so
/// runs (each under a fresh name) do not fill the shared server.
#[derive(Debug)]
pub struct ProcessCluster {
    /// The hub name: identity/registry namespace, NATS stream prefix, `{name}.cluster` subjects.
    pub name: String,
    /// The `iothubowner` key (base64) every node shares.
    pub service_key: String,
    pub options: NodeOptions,
    pub nodes: Vec<NodeProcess>,
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        self.nodes.clear();
        // On a thread of its own: the drop may run inside a test's tokio runtime.
        let (url, name) = (self.options.nats.clone(), self.name.clone());
        let cleaned = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(delete_streams(&url, &name))
        })
        .join();
        if let Ok(Err(e)) = cleaned {
            eprintln!("could not delete the streams of {}: {e}", self.name);
        }
    }
}

/// Deletes the streams (log partitions, key-value buckets) of hub `name`.
async fn delete_streams(
    url: &str,
    name: &str,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use futures::TryStreamExt;
    let client = async_nats::connect(url).await?;
    let js = async_nats::jetstream::new(client);
    let names: Vec<String> = js.stream_names().try_collect().await?;
    for stream in names {
        if stream.starts_with(&format!("{name}-")) || stream.starts_with(&format!("KV_{name}-")) {
            js.delete_stream(&stream).await?;
        }
    }
    Ok(())
}

impl ProcessCluster {
    /// `n` nodes `gw0`…, each on spare ports, that all hear each other. TLS nodes listen for
    /// MQTTS on `mqtts_ports[i]` when given (127.0.0.1:8883 for the Azure SDK), else a spare port.
    pub fn start(name: &str, n: usize, options: NodeOptions, mqtts_ports: &[u16]) -> Self {
        let service_key = iot_sdk::identity::SymmetricKey::generate()
            .expose_base64()
            .to_string();
        let mut cluster = ProcessCluster {
            name: name.to_owned(),
            service_key,
            options,
            nodes: Vec::new(),
        };
        let mut starting = Vec::new();
        for i in 0..n {
            let mqtts = mqtts_ports.get(i).copied();
            starting.push(cluster.spawn(&format!("gw{i}"), n - 1, mqtts));
        }
        for pending in starting {
            let node = pending.wait_ready();
            cluster.nodes.push(node);
        }
        cluster
    }

    /// Starts one more node of this hub (or restarts one under an old id) that waits for
    /// `peers` others; returns when it is ready.
    pub fn add(&mut self, instance: &str, peers: usize, mqtts_port: Option<u16>) -> usize {
        let node = self.spawn(instance, peers, mqtts_port).wait_ready();
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn spawn(&self, instance: &str, peers: usize, mqtts_port: Option<u16>) -> Starting {
        let o = &self.options;
        let mut command = Command::new(node_binary());
        command
            .arg("--instance")
            .arg(instance)
            .arg("--name")
            .arg(&self.name)
            .arg("--nats")
            .arg(&o.nats)
            .arg("--postgres")
            .arg(&o.postgres)
            .arg("--host")
            .arg(&o.host)
            .arg("--mqtt")
            .arg(format!("127.0.0.1:{}", spare_port()))
            .arg("--http")
            .arg(format!("127.0.0.1:{}", spare_port()))
            .arg("--service-key")
            .arg(&self.service_key)
            .arg("--peers")
            .arg(peers.to_string())
            .arg("--lock")
            .arg(o.lock.as_secs().max(1).to_string())
            .arg("--heartbeat-ms")
            .arg(o.heartbeat.as_millis().to_string())
            .arg("--lease-ms")
            .arg(o.lease.as_millis().to_string())
            .env("RUST_LOG", o.log.as_deref().unwrap_or("warn"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some((cert, key)) = &o.tls {
            let port = mqtts_port.unwrap_or_else(spare_port);
            command
                .arg("--mqtts")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--tls-cert")
                .arg(cert)
                .arg("--tls-key")
                .arg(key);
        }
        if o.no_throttle {
            command.arg("--no-throttle");
        }
        let mut child = command.spawn().unwrap();
        let output = Arc::new(Mutex::new(Vec::new()));
        let (lines, receiver) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = Arc::clone(&output);
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    output.lock().unwrap().push(line.clone());
                    let _ = lines.send(line);
                }
            });
        }
        Starting {
            instance: instance.to_owned(),
            child: Some(child),
            output,
            lines: receiver,
        }
    }

    /// The node running as `instance`.
    pub fn node(&self, instance: &str) -> &NodeProcess {
        self.nodes.iter().find(|n| n.instance == instance).unwrap()
    }

    /// The node running as `instance`, mutably (to kill it).
    pub fn node_mut(&mut self, instance: &str) -> &mut NodeProcess {
        self.nodes
            .iter_mut()
            .find(|n| n.instance == instance)
            .unwrap()
    }
}

/// A node started but not yet ready.
struct Starting {
    instance: String,
    child: Option<Child>,
    output: Arc<Mutex<Vec<String>>>,
    lines: mpsc::Receiver<String>,
}

impl Starting {
    /// Reads the node's endpoint lines until `ready:` (60 s at most: a cold start on a loaded
    /// 2-core machine opens the stores and streams first).
    fn wait_ready(mut self) -> NodeProcess {
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut mqtt, mut mqtts, mut http) = (None, None, None);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let addr = |prefix: &str| {
                        line.strip_prefix(prefix)
                            .and_then(|rest| rest.trim().parse::<SocketAddr>().ok())
                    };
                    if let Some(a) = addr("mqtt: ") {
                        mqtt = Some(a);
                    } else if let Some(a) = addr("mqtts: ") {
                        mqtts = Some(a);
                    } else if let Some(a) = addr("http: ") {
                        http = Some(a);
                    } else if line.starts_with("ready: ") {
                        break;
                    }
                }
                Err(e) => {
                    let mut child = self.child.take().unwrap();
                    let _ = child.kill();
                    let status = child.wait();
                    // Disconnected: the node closed its output, i.e. it exited (a port in use,
                    // an unreachable store), which is not the same failure as a slow start.
                    let why = match e {
                        mpsc::RecvTimeoutError::Timeout => "not ready within 60 s".to_owned(),
                        mpsc::RecvTimeoutError::Disconnected => {
                            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                            format!("exited before it was ready ({status})")
                        }
                    };
                    panic!(
                        "node {} {why}; it printed:\n{}",
                        self.instance,
                        self.output.lock().unwrap().join("\n")
                    );
                }
            }
        }
        NodeProcess {
            instance: self.instance.clone(),
            addrs: NodeAddrs {
                mqtt: mqtt.unwrap(),
                mqtts,
                http: http.unwrap(),
            },
            child: self.child.take().unwrap(),
            output: Arc::clone(&self.output),
        }
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A self-signed CA and server certificate for `localhost`/127.0.0.1, written into `dir`:
/// (ca.pem, server.pem, server-key.pem).
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    iot_sdk::gateway::mqtt::SelfSigned::generate("localhost")
        .unwrap()
        .write_to(dir)
        .unwrap()
}
