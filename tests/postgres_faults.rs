//! Faults: a private PostgreSQL 15 (started here on a spare port, in a temporary directory, with
//! fsync on) is stopped with `pg_ctl stop -m immediate` while the inbox, twin, state store and
//! journal adapters write, then started
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

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iot_sdk::core::{DeviceId, Timestamp};
use iot_sdk::gateway::inbox::InboxMessage;
use iot_sdk::gateway::twins::Section;
use iot_sdk::gateway::{InboxLimits, InboxStore, TwinLimits, TwinStore};
use iot_sdk::postgres::{
    PgConfig, PgInbox, PgInboxConfig, PgJournal, PgJournalConfig, PgPool, PgStateStore,
    PgStateStoreConfig, PgTwinStore, PgTwinStoreConfig,
};
use iot_sdk::provisioning::{Intent, Journal};
use iot_sdk::stream::state::{Event, StateStore};

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
    /// Writes that returned `Ok` (message ids, patch keys, event payloads, journal numbers).
    acked: Vec<String>,
    /// Calls that failed (each checked to be a retryable backend error).
    failed: usize,
}

/// Which adapter a writer writes to.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Inbox,
    Twin,
    State,
    Journal,
}

struct Writer {
    name: String,
    kind: Kind,
    device: DeviceId,
    tally: Arc<Mutex<Tally>>,
    task: tokio::task::JoinHandle<()>,
}

/// Checks a failed call's error: typed, from the PostgreSQL backend, retryable. Each crate has
/// its own error type; all three carry the engine's error the same way.
fn gateway_outage(e: &iot_sdk::gateway::Error) {
    assert!(
        matches!(e, iot_sdk::gateway::Error::Backend { backend, .. } if backend == "postgres"),
        "an outage is a backend error: {e:?}"
    );
    assert!(e.is_retryable(), "an outage is retryable: {e:?}");
}

fn stream_outage(e: &iot_sdk::stream::Error) {
    assert!(
        matches!(e, iot_sdk::stream::Error::Backend { backend, .. } if backend == "postgres"),
        "an outage is a backend error: {e:?}"
    );
    assert!(e.is_retryable(), "an outage is retryable: {e:?}");
}

fn provisioning_outage(e: &iot_sdk::provisioning::Error) {
    assert!(
        matches!(e, iot_sdk::provisioning::Error::Backend { backend, .. } if backend == "postgres"),
        "an outage is a backend error: {e:?}"
    );
    assert!(e.is_retryable(), "an outage is retryable: {e:?}");
}

async fn guarded<T>(what: &str, call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(HANG_GUARD, call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung past {HANG_GUARD:?}"))
}

/// Writes `write(0)`, `write(1)`, … until `stop`, keeping the tally; a write returns the key
/// of what it stored, or `None` after checking its error.
fn spawn_writer<F, Fut>(
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    write: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(u64) -> Fut + Send + 'static,
    Fut: Future<Output = Option<String>> + Send,
{
    tokio::spawn(async move {
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            match guarded("a write", write(i)).await {
                Some(key) => tally.lock().expect("the tally").acked.push(key),
                None => {
                    tally.lock().expect("the tally").failed += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            i += 1;
        }
    })
}

fn acked_total(writers: &[Writer]) -> usize {
    writers
        .iter()
        .map(|w| w.tally.lock().expect("the tally").acked.len())
        .sum()
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
    let state = Arc::new(
        PgStateStore::open(
            pool.clone(),
            PgStateStoreConfig::default().call_timeout(CALL_TIMEOUT),
        )
        .await
        .unwrap(),
    );
    let journal = Arc::new(
        PgJournal::open(
            pool.clone(),
            PgJournalConfig::default().call_timeout(CALL_TIMEOUT),
        )
        .await
        .unwrap(),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let limits = InboxLimits::default().max_depth(1_000_000);
    let mut writers = Vec::new();
    let kinds = [
        Kind::Inbox,
        Kind::Inbox,
        Kind::Twin,
        Kind::Twin,
        Kind::State,
        Kind::Journal,
    ];
    for (w, kind) in kinds.into_iter().enumerate() {
        let device: DeviceId = format!("fault-{w}").parse().unwrap();
        let tally = Arc::new(Mutex::new(Tally::default()));
        let (stop, t, d) = (Arc::clone(&stop), Arc::clone(&tally), device.clone());
        let task = match kind {
            Kind::Inbox => {
                let inbox = Arc::clone(&inbox);
                spawn_writer(stop, t, move |i| {
                    let (inbox, device) = (Arc::clone(&inbox), d.clone());
                    async move {
                        let id = format!("m{i}");
                        let m = InboxMessage::new(&id, "x", now(), Duration::from_secs(86_400));
                        match inbox.enqueue(&device, m, now(), limits).await {
                            Ok(_) => Some(id),
                            Err(e) => {
                                gateway_outage(&e);
                                None
                            }
                        }
                    }
                })
            }
            Kind::Twin => {
                let twins = Arc::clone(&twins);
                spawn_writer(stop, t, move |i| {
                    let (twins, device) = (Arc::clone(&twins), d.clone());
                    async move {
                        let key = format!("n{i}");
                        let patch = serde_json::json!({ key.clone(): i });
                        let limits = TwinLimits::default().max_section_bytes(1 << 24);
                        match twins
                            .patch(&device, Section::Reported, &patch, None, limits)
                            .await
                        {
                            Ok(_) => Some(key),
                            Err(e) => {
                                gateway_outage(&e);
                                None
                            }
                        }
                    }
                })
            }
            Kind::State => {
                let state = Arc::clone(&state);
                spawn_writer(stop, t, move |i| {
                    let (state, device) = (Arc::clone(&state), d.clone());
                    async move {
                        let payload = format!("e{i}");
                        let event = Event::new(now(), payload.clone());
                        match state.append_events(&device, vec![event]).await {
                            Ok(1) => Some(payload),
                            Ok(n) => panic!("one new event stored as {n}"),
                            Err(e) => {
                                stream_outage(&e);
                                None
                            }
                        }
                    }
                })
            }
            Kind::Journal => {
                let journal = Arc::clone(&journal);
                spawn_writer(stop, t, move |_| {
                    let (journal, device) = (Arc::clone(&journal), d.clone());
                    async move {
                        match journal.begin(&Intent::Unregister { id: device }).await {
                            Ok(seq) => Some(seq.to_string()),
                            Err(e) => {
                                provisioning_outage(&e);
                                None
                            }
                        }
                    }
                })
            }
        };
        writers.push(Writer {
            name: format!("{kind:?} writer {w}"),
            kind,
            device,
            tally,
            task,
        });
    }

    // Let every writer get going, then pull the plug in the middle of their writes.
    wait_for(|| {
        writers
            .iter()
            .all(|w| w.tally.lock().expect("the tally").acked.len() >= 50)
    })
    .await;
    server.stop_immediately().unwrap();
    wait_for(|| {
        writers
            .iter()
            .all(|w| w.tally.lock().expect("the tally").failed > 0)
    })
    .await;
    let acked_before_restart = acked_total(&writers);
    server.start_again().unwrap();
    // The same adapter instances carry on: every writer gets writes through again.
    let progress: Vec<usize> = writers
        .iter()
        .map(|w| w.tally.lock().expect("the tally").acked.len())
        .collect();
    wait_for(|| {
        writers
            .iter()
            .zip(&progress)
            .all(|(w, before)| w.tally.lock().expect("the tally").acked.len() >= before + 20)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in &mut writers {
        guarded(&w.name, &mut w.task).await.unwrap();
    }
    assert!(acked_total(&writers) > acked_before_restart);

    // No acknowledged write is lost.
    let check = pool.get().await.unwrap();
    let pending: HashSet<String> = journal
        .pending()
        .await
        .unwrap()
        .into_iter()
        .map(|(seq, _)| seq.to_string())
        .collect();
    for w in &writers {
        let (acked, failed) = {
            let tally = w.tally.lock().expect("the tally");
            (tally.acked.clone(), tally.failed)
        };
        let stored: HashSet<String> = match w.kind {
            Kind::Inbox => check
                .query(
                    "SELECT message_id FROM iot_inbox WHERE device = $1",
                    &[&w.device.as_str()],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect(),
            Kind::Twin => {
                let twin = twins.get(&w.device).await.unwrap();
                let props = twin.reported.properties.as_object().unwrap();
                // Each committed patch counted once; a patch whose commit outcome was unknown
                // may have landed too, so the version is at least the acknowledged count.
                assert_eq!(twin.reported.version as usize, props.len());
                assert!(twin.reported.version as usize >= acked.len());
                props.keys().cloned().collect()
            }
            Kind::State => state
                .read_events(&w.device, Timestamp::EPOCH, Timestamp::now(), usize::MAX)
                .await
                .unwrap()
                .into_iter()
                .map(|e| String::from_utf8(e.payload.to_vec()).unwrap())
                .collect(),
            Kind::Journal => pending.clone(),
        };
        let lost: Vec<_> = acked.iter().filter(|k| !stored.contains(*k)).collect();
        assert!(
            lost.is_empty(),
            "{}: acknowledged writes lost: {lost:?}",
            w.name
        );
        assert!(failed > 0, "{} met the outage", w.name);
    }
    // And the inbox still delivers, in order, after the restart.
    let first = inbox
        .lock_next(&writers[0].device, now(), limits)
        .await
        .unwrap()
        .locked
        .expect("a message to deliver");
    assert_eq!(first.message.message_id, "m0");

    // Opening an adapter while the server is down is a prompt retryable error too, and the same
    // pool opens it once the server is back.
    server.stop_immediately().unwrap();
    let config = PgInboxConfig::default().call_timeout(CALL_TIMEOUT);
    let down = guarded("open", PgInbox::open(pool.clone(), config.clone())).await;
    gateway_outage(&down.expect_err("the server is down"));
    server.start_again().unwrap();
    let reopened = guarded("open", PgInbox::open(pool.clone(), config))
        .await
        .unwrap();
    assert!(reopened.depth(&writers[0].device).await.unwrap() > 0);
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
