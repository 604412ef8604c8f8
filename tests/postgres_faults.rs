//! Faults: a private PostgreSQL 15 (started here on a spare port, in a temporary directory, with
//! fsync on) is stopped with `pg_ctl stop -m immediate` while the adapters write, then started
//! again on the same port and data directory (feature `postgres`).
//!
//! What must hold: every call during the outage ends, within its timeout, with a typed retryable
//! error (no panic, no hung task); the same adapter instances carry on once the server is back,
//! without a restart of the process; no write that returned `Ok` is lost.
//!
//! The server binaries (`initdb`, `pg_ctl`) come from `IOT_TEST_PG_BIN`, PostgreSQL 15's Debian
//! directory, or `PATH`. Tests run as root in CI and PostgreSQL refuses to run as root, so then the
//! server runs as the `postgres` user through `runuser`. Without the binaries the test is skipped
//! with a printed reason, except under CI, where it fails.
#![cfg(feature = "postgres")]

mod pg_support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iot_sdk::core::Timestamp;
use iot_sdk::gateway::inbox::InboxMessage;
use iot_sdk::gateway::twins::Section;
use iot_sdk::gateway::{Error, InboxLimits, InboxStore, TwinLimits, TwinStore};
use iot_sdk::postgres::{PgConfig, PgInbox, PgInboxConfig, PgPool, PgTwinStore, PgTwinStoreConfig};

/// How long one adapter call may take (its own deadline); the test's guard against a hung call
/// is well above it.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const HANG_GUARD: Duration = Duration::from_secs(30);

/// A private PostgreSQL server; stopped (immediately) when dropped.
struct Server {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

fn find_bin() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("IOT_TEST_PG_BIN") {
        candidates.push(dir.into());
    }
    candidates.push("/usr/lib/postgresql/15/bin".into());
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    candidates
        .into_iter()
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn spare_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a spare port");
    listener.local_addr().expect("local address").port()
}

impl Server {
    /// Initialises a cluster and starts it, or says why it cannot (binaries missing).
    fn start() -> Result<Server, String> {
        let bin = find_bin().ok_or("no initdb/pg_ctl found (set IOT_TEST_PG_BIN)")?;
        let as_postgres = running_as_root();
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        if as_postgres {
            // The server's user must own its directory (tempdir makes it 0700 for root).
            let out = Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .output()
                .map_err(|e| format!("chown: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "cannot hand the data directory to the postgres user: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        let server = Server {
            bin,
            dir,
            port: spare_port(),
            as_postgres,
        };
        let data = server.data();
        server.run(
            "initdb",
            &[
                "-D",
                data.to_str().expect("utf-8 path"),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
            ],
        )?;
        server.start_again()?;
        Ok(server)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let program = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", program.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Starts the server on its port and data directory; waits until it accepts connections.
    fn start_again(&self) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on \
             -c max_connections=50",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().expect("utf-8 path"),
                "-o",
                &options,
                "-l",
                log.to_str().expect("utf-8 path"),
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
    }

    /// `pg_ctl stop -m immediate`: every backend is killed, nothing is flushed beyond what was
    /// already durable; the next start runs crash recovery.
    fn stop_immediately(&self) -> Result<(), String> {
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().expect("utf-8 path"),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        )
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop_immediately();
    }
}

#[allow(clippy::print_stderr)]
fn server_or_skip() -> Option<Server> {
    match Server::start() {
        Ok(server) => Some(server),
        Err(reason) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: cannot start a private PostgreSQL ({reason}); CI runs this test");
            None
        }
        Err(reason) => panic!("cannot start a private PostgreSQL under CI: {reason}"),
    }
}

fn now() -> Timestamp {
    Timestamp::now()
}

/// What one writer saw.
#[derive(Debug, Default)]
struct Tally {
    /// Writes that returned `Ok` (message ids, or patch numbers).
    acked: Vec<String>,
    /// Calls that failed (each checked to be a retryable backend error).
    failed: usize,
}

/// Checks a failed call's error: typed, from the PostgreSQL backend, retryable.
fn check_outage_error(e: &Error) {
    assert!(
        matches!(e, Error::Backend { backend, .. } if backend == "postgres"),
        "an outage is a backend error: {e:?}"
    );
    assert!(e.is_retryable(), "an outage is retryable: {e:?}");
}

async fn guarded<T>(what: &str, call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(HANG_GUARD, call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung past {HANG_GUARD:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_an_immediate_stop_and_the_adapters_carry_on() {
    let Some(server) = server_or_skip() else {
        return;
    };
    let config = PgConfig::from_url(&server.url())
        .unwrap()
        .with_pool_size(8)
        .with_connect_timeout(Duration::from_secs(2))
        .with_acquire_timeout(Duration::from_secs(3));
    let pool = PgPool::new(config).unwrap();
    let inbox = Arc::new(
        PgInbox::open(
            pool.clone(),
            PgInboxConfig::default().call_timeout(CALL_TIMEOUT),
        )
        .await
        .unwrap(),
    );
    let twins = Arc::new(
        PgTwinStore::open(
            pool.clone(),
            PgTwinStoreConfig::default().call_timeout(CALL_TIMEOUT),
        )
        .await
        .unwrap(),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let limits = InboxLimits::default().max_depth(1_000_000);
    let mut writers = Vec::new();
    for w in 0..3 {
        let (inbox, stop) = (Arc::clone(&inbox), Arc::clone(&stop));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let t = Arc::clone(&tally);
        let device: iot_sdk::core::DeviceId = format!("fault-inbox-{w}").parse().unwrap();
        writers.push((
            format!("inbox writer {w}"),
            device.clone(),
            true,
            tally,
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("w{w}-{i}");
                    let m = InboxMessage::new(&id, "x", now(), Duration::from_secs(86_400));
                    match guarded("enqueue", inbox.enqueue(&device, m, now(), limits)).await {
                        Ok(_) => t.lock().unwrap().acked.push(id),
                        Err(e) => {
                            check_outage_error(&e);
                            t.lock().unwrap().failed += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    i += 1;
                }
            }),
        ));
    }
    for w in 0..3 {
        let (twins, stop) = (Arc::clone(&twins), Arc::clone(&stop));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let t = Arc::clone(&tally);
        let device: iot_sdk::core::DeviceId = format!("fault-twin-{w}").parse().unwrap();
        writers.push((
            format!("twin writer {w}"),
            device.clone(),
            false,
            tally,
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("n{i}");
                    let patch = serde_json::json!({ key.clone(): i });
                    let limits = TwinLimits::default().max_section_bytes(1 << 24);
                    let call = twins.patch(&device, Section::Reported, &patch, None, limits);
                    match guarded("twin patch", call).await {
                        Ok(_) => t.lock().unwrap().acked.push(key),
                        Err(e) => {
                            check_outage_error(&e);
                            t.lock().unwrap().failed += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    i += 1;
                }
            }),
        ));
    }

    let acked_total =
        |writers: &[(String, iot_sdk::core::DeviceId, bool, Arc<Mutex<Tally>>, _)]| {
            writers
                .iter()
                .map(|w| w.3.lock().unwrap().acked.len())
                .sum::<usize>()
        };
    // Let every writer get going, then pull the plug in the middle of their writes.
    wait_for(|| acked_total(&writers) >= 300).await;
    server.stop_immediately().unwrap();
    wait_for(|| writers.iter().all(|w| w.3.lock().unwrap().failed > 0)).await;
    let acked_before_restart = acked_total(&writers);
    server.start_again().unwrap();
    // The same adapter instances carry on: every writer gets writes through again.
    let progress: Vec<usize> = writers
        .iter()
        .map(|w| w.3.lock().unwrap().acked.len())
        .collect();
    wait_for(|| {
        writers
            .iter()
            .zip(&progress)
            .all(|(w, before)| w.3.lock().unwrap().acked.len() >= before + 20)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for (name, _, _, _, task) in &mut writers {
        guarded(name, task).await.unwrap();
    }
    assert!(acked_total(&writers) > acked_before_restart);

    // No acknowledged write is lost.
    let check = pool.get().await.unwrap();
    for (name, device, is_inbox, tally, _) in &writers {
        let (acked, failed) = {
            let tally = tally.lock().unwrap();
            (tally.acked.clone(), tally.failed)
        };
        if *is_inbox {
            let rows = check
                .query(
                    "SELECT message_id FROM iot_inbox WHERE device = $1",
                    &[&device.as_str()],
                )
                .await
                .unwrap();
            let stored: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
            let lost: Vec<_> = acked.iter().filter(|id| !stored.contains(*id)).collect();
            assert!(
                lost.is_empty(),
                "{name}: acknowledged messages lost: {lost:?}"
            );
        } else {
            let twin = twins.get(device).await.unwrap();
            let props = twin.reported.properties.as_object().unwrap();
            let lost: Vec<_> = acked.iter().filter(|k| !props.contains_key(*k)).collect();
            assert!(
                lost.is_empty(),
                "{name}: acknowledged patches lost: {lost:?}"
            );
            // Each committed patch counted once; a patch whose commit outcome was unknown may
            // have landed too, so the version is at least the acknowledged count.
            assert!(twin.reported.version >= acked.len() as u64);
            assert_eq!(twin.reported.version as usize, props.len());
        }
        assert!(failed > 0, "{name} met the outage");
    }
    // And the inbox still works end to end after the restart.
    let device: iot_sdk::core::DeviceId = "fault-inbox-0".parse().unwrap();
    let first = inbox
        .lock_next(&device, now(), limits)
        .await
        .unwrap()
        .locked
        .expect("a message to deliver");
    assert_eq!(
        first.message.message_id,
        writers[0].3.lock().unwrap().acked[0]
    );
}

/// Waits (polling, with a hang guard) until `done` holds.
async fn wait_for(mut done: impl FnMut() -> bool) {
    guarded("waiting for the writers", async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}
