//! Three `Hub` instances in one process as one cluster (feature `cluster`): each with its own
//! PostgreSQL identity store, inbox and twin store on the machine's server, its own NATS log and
//! its own NATS connection, as three processes would have. One test per promise of
//! docs/cluster.md, all through the `Gateway` and `DeviceSession` API, and one NATS outage (on a
//! nats-server of the test's own).
//!
//! Every test has its own NATS subject and stream prefix and its own identity namespace and
//! device ids, so runs never see each other. Outside CI a missing server skips the test (it
//! says so); under CI (`CI` set) it fails.
#![cfg(feature = "cluster")]
#![allow(
    clippy::print_stderr,
    reason = "tests say why they skip and what they saw"
)]
#![allow(
    clippy::unwrap_used,
    reason = "the helpers are part of the tests: a failed unwrap is a failed test"
)]

mod nats_support;
mod pg_support;

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iot_sdk::cluster::{ClusterConfig, ClusterHub};
use iot_sdk::core::{DeviceId, Topics};
use iot_sdk::gateway::{
    C2dMessage, CloseReason, DeviceSession, Error, Gateway, Hub, HubConfig, MethodCall,
    MethodResponse, SessionEvent, SessionOptions, Subscription,
};
use iot_sdk::identity::{
    Credentials, DeviceStatus, IdentityStore, NewIdentity, Presented, SymmetricKey,
};
use iot_sdk::nats::{NatsLogConfig, NatsLogFactory, NatsStorage};
use iot_sdk::postgres::{
    PgIdentityConfig, PgIdentityStore, PgInbox, PgInboxConfig, PgPool, PgTwinStore,
    PgTwinStoreConfig,
};
use nats_support::{OwnServer, nats_server_binary};

const HOST: &str = "cluster.test.local";
/// How long a test waits for something that should take milliseconds before it fails: a guard
/// against hanging, not a measurement (the latencies are printed).
const PATIENCE: Duration = Duration::from_secs(10);

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A name no other run uses.
fn run_prefix() -> String {
    let n = std::collections::hash_map::RandomState::new()
        .hash_one((std::time::SystemTime::now(), std::process::id()));
    format!("c{:012x}", n & 0xffff_ffff_ffff)
}

struct Instance {
    gateway: ClusterHub,
    identity: Arc<PgIdentityStore>,
}

struct Cluster {
    prefix: String,
    nodes: Vec<Instance>,
    client: async_nats::Client,
}

impl Cluster {
    /// Three instances, each with its own stores and connections, that all hear each other.
    async fn start() -> Option<Cluster> {
        let pool = pg_support::shared_pool().await?;
        Self::start_on(pool, 3, &nats_url(), true).await
    }

    /// `n` instances coordinating over the NATS server at `url`; their log is on it too when
    /// `nats_log`, else in memory (per instance).
    async fn start_on(pool: PgPool, n: usize, url: &str, nats_log: bool) -> Option<Cluster> {
        Self::start_with(pool, &vec![url.to_owned(); n], url, nats_log).await
    }

    /// One instance per entry of `own`, each coordinating over its own connection to that URL
    /// (the same server as `url`, or a way to it), the logs on `url` when `nats_log`.
    async fn start_with(
        pool: PgPool,
        own: &[String],
        url: &str,
        nats_log: bool,
    ) -> Option<Cluster> {
        let n = own.len();
        let client = match async_nats::connect(url).await {
            Ok(c) => c,
            Err(e) => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "NATS unreachable under CI: {e}"
                );
                eprintln!(
                    "skipped: NATS at {} is unreachable ({e}); CI runs this test",
                    nats_url()
                );
                return None;
            }
        };
        let prefix = run_prefix();
        let mut nodes = Vec::new();
        for i in 0..n {
            let identity = Arc::new(
                PgIdentityStore::open(pool.clone(), PgIdentityConfig::default().namespace(&prefix))
                    .await
                    .unwrap(),
            );
            let inbox = PgInbox::open(
                pool.clone(),
                PgInboxConfig::default().instance(format!("{prefix}-{i}")),
            )
            .await
            .unwrap();
            let twins = PgTwinStore::open(pool.clone(), PgTwinStoreConfig::default())
                .await
                .unwrap();
            let topics = if nats_log {
                let log = NatsLogConfig::from_url(url)
                    .unwrap()
                    .prefix(prefix.clone())
                    .storage(NatsStorage::Memory);
                Topics::new(NatsLogFactory::connect(log).await.unwrap(), 1)
            } else {
                Topics::memory(1)
            };
            let mut config = HubConfig::default();
            config.partitions = 1;
            let builder = Hub::builder(identity.clone(), HOST)
                .topics(Arc::new(topics))
                .inbox(Arc::new(inbox))
                .twins(Arc::new(twins))
                .config(config);
            // Each instance on its own connection, as a process would be.
            let own = async_nats::connect(own[i].as_str()).await.unwrap();
            let cluster = ClusterConfig::new(format!("gw{i}"))
                .prefix(format!("{prefix}.cluster"))
                .timing(Duration::from_millis(100), Duration::from_millis(1000));
            let gateway = ClusterHub::start(own, builder, cluster).await.unwrap();
            nodes.push(Instance { gateway, identity });
        }
        let cluster = Cluster {
            prefix,
            nodes,
            client,
        };
        for node in &cluster.nodes {
            eventually("every instance hears the others", || async {
                node.gateway.peers().len() == n - 1
            })
            .await;
        }
        Some(cluster)
    }

    fn at(&self, i: usize) -> &ClusterHub {
        &self.nodes[i].gateway
    }

    /// A device of this run, created through instance 0's identity store; returns its key.
    async fn device(&self, name: &str) -> (DeviceId, SymmetricKey) {
        let id: DeviceId = format!("{}-{name}", self.prefix).parse().unwrap();
        let key = SymmetricKey::generate();
        let credentials = Credentials::SymmetricKeys {
            primary: key.clone(),
            secondary: SymmetricKey::generate(),
        };
        self.nodes[0]
            .identity
            .create(NewIdentity::new(id.clone(), credentials))
            .await
            .unwrap();
        (id, key)
    }

    async fn connect(
        &self,
        i: usize,
        device: &DeviceId,
        key: &SymmetricKey,
    ) -> Box<dyn DeviceSession> {
        self.at(i)
            .connect(
                device,
                Presented::SymmetricKey(&key.expose_base64()),
                SessionOptions::default(),
            )
            .await
            .unwrap()
    }

    /// Shuts every instance down and deletes the run's streams.
    async fn stop(self) {
        for node in &self.nodes {
            node.gateway.shutdown().await;
        }
        self.delete_streams().await;
    }

    async fn delete_streams(&self) {
        use futures::TryStreamExt;
        let js = async_nats::jetstream::new(self.client.clone());
        let names: Vec<String> = js.stream_names().try_collect().await.unwrap();
        for name in names {
            if name.starts_with(&format!("{}-", self.prefix))
                || name.starts_with(&format!("KV_{}-", self.prefix))
            {
                js.delete_stream(&name).await.unwrap();
            }
        }
    }
}

/// Waits (up to [`PATIENCE`]) for `condition`, checking it every 10 ms; fails the test if it
/// never holds.
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !condition().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The next event of `session`, failing the test after [`PATIENCE`].
async fn next(session: &dyn DeviceSession) -> SessionEvent {
    tokio::time::timeout(PATIENCE, session.next_event())
        .await
        .expect("an event in time")
        .unwrap()
}

/// Waits until every instance sees `device` held by instance `i`.
async fn held_by(cluster: &Cluster, device: &DeviceId, i: usize) {
    let name = cluster.at(i).instance().to_owned();
    for node in &cluster.nodes {
        eventually("every instance knows the holder", || async {
            node.gateway.holder(device).as_deref() == Some(name.as_str())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_c2d_message_sent_through_any_instance_reaches_the_device_on_its_holder() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let (device, key) = cluster.device("c2d").await;
    let session = cluster.connect(0, &device, &key).await;
    session.subscribe(Subscription::C2d).await.unwrap();
    held_by(&cluster, &device, 0).await;

    // The session is waiting in `next_event` when the message is queued through another
    // instance: only the wake-up can make it look again.
    let waiting = tokio::spawn(async move {
        let event = next(session.as_ref()).await;
        (session, event)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = Instant::now();
    cluster
        .at(2)
        .send_c2d(&device, C2dMessage::new("reboot"))
        .await
        .unwrap();
    let (session, event) = waiting.await.unwrap();
    eprintln!(
        "C2D through instance 2 reached instance 0's session after {:?}",
        sent.elapsed()
    );
    let SessionEvent::C2d(message) = event else {
        panic!("expected a C2D message, got {event:?}");
    };
    assert_eq!(&message.payload[..], b"reboot");
    // Inbox semantics are the shared inbox's: locked while unsettled, gone once completed.
    assert_eq!(cluster.at(1).pending_c2d(&device).await.unwrap(), 1);
    session.complete(message.lock_token).await.unwrap();
    assert_eq!(cluster.at(1).pending_c2d(&device).await.unwrap(), 0);
    session.close().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_invoked_on_any_instance_is_answered_by_the_holder() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let (device, key) = cluster.device("method").await;
    let (mute, mute_key) = cluster.device("mute").await;
    let (absent, absent_key) = cluster.device("absent").await;

    let session: Arc<dyn DeviceSession> = cluster.connect(0, &device, &key).await.into();
    session.subscribe(Subscription::Methods).await.unwrap();
    let quiet: Arc<dyn DeviceSession> = cluster.connect(0, &mute, &mute_key).await.into();
    quiet.subscribe(Subscription::Methods).await.unwrap();
    held_by(&cluster, &device, 0).await;
    held_by(&cluster, &mute, 0).await;

    let device_side = {
        let session = session.clone();
        tokio::spawn(async move {
            let SessionEvent::Method(request) = next(session.as_ref()).await else {
                panic!("expected a method request");
            };
            assert_eq!(request.name, "reboot");
            assert_eq!(&request.payload[..], b"{\"delay\":5}");
            session
                .respond_method(MethodResponse {
                    request_id: request.request_id,
                    status: 200,
                    payload: "{\"ok\":true}".into(),
                })
                .await
                .unwrap();
        })
    };
    let mut call = MethodCall::new("reboot", "{\"delay\":5}");
    call.response_timeout = Duration::from_secs(5);
    let answer = cluster.at(1).invoke_method(&device, call).await.unwrap();
    device_side.await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(&answer.payload[..], b"{\"ok\":true}");

    // A device that does not answer: the holder's timeout, reported through the caller.
    let mut call = MethodCall::new("reboot", "");
    call.response_timeout = Duration::from_millis(300);
    let err = cluster.at(2).invoke_method(&mute, call).await.unwrap_err();
    assert!(
        matches!(err, Error::TimedOut { after, .. } if after == Duration::from_millis(300)),
        "{err:?}"
    );

    // A device no instance holds is offline, after the connect timeout.
    let mut call = MethodCall::new("reboot", "");
    call.connect_timeout = Duration::from_millis(200);
    let err = cluster
        .at(1)
        .invoke_method(&absent, call)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DeviceOffline { .. }), "{err:?}");

    // Bad input is refused at once, whichever instance is asked.
    let err = cluster
        .at(1)
        .invoke_method(&device, MethodCall::new("a/b", ""))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");

    // A call waiting for an offline device is answered once it connects to another instance.
    let waiting = {
        let gateway = cluster.at(2).clone();
        let absent = absent.clone();
        tokio::spawn(async move {
            let mut call = MethodCall::new("hello", "");
            call.connect_timeout = Duration::from_secs(10);
            call.response_timeout = Duration::from_secs(5);
            gateway.invoke_method(&absent, call).await
        })
    };
    let late = cluster.connect(1, &absent, &absent_key).await;
    late.subscribe(Subscription::Methods).await.unwrap();
    let SessionEvent::Method(request) = next(late.as_ref()).await else {
        panic!("expected the waiting call");
    };
    late.respond_method(MethodResponse {
        request_id: request.request_id,
        status: 201,
        payload: Default::default(),
    })
    .await
    .unwrap();
    assert_eq!(waiting.await.unwrap().unwrap().status, 201);

    session.close().await;
    quiet.close().await;
    late.close().await;
    cluster.stop().await;
}

/// A call can reach NATS in the moment before the server notices that the holder's process
/// died: the server hands it to the dead connection and nobody answers. Staged with a proxy in
/// front of instance 1's NATS connection: the proxy holds what the server sends instance 1 (so
/// the server still believes it alive), the call goes in, then the proxy cuts the connection
/// for good. When the call times out, the caller finds nobody serving instance 1 any more: the
/// device is offline, not slow to answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_handed_to_a_holder_that_then_dies_answers_offline() {
    let Some(pool) = pg_support::shared_pool().await else {
        return;
    };
    let upstream = nats_url().trim_start_matches("nats://").to_owned();
    let proxy = HoldingProxy::start(upstream).await;
    let own = [nats_url(), proxy.url()];
    let Some(cluster) = Cluster::start_with(pool, &own, &nats_url(), true).await else {
        return;
    };
    let (device, key) = cluster.device("dies").await;
    let session = cluster.connect(1, &device, &key).await;
    session.subscribe(Subscription::Methods).await.unwrap();
    held_by(&cluster, &device, 1).await;

    proxy.hold();
    let mut call = MethodCall::new("reboot", "");
    call.response_timeout = Duration::from_millis(500);
    let started = Instant::now();
    let invoke = cluster.at(0).invoke_method(&device, call);
    let die = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.cut();
    };
    let (answer, ()) = tokio::join!(invoke, die);
    let err = answer.unwrap_err();
    assert!(matches!(err, Error::DeviceOffline { .. }), "{err:?}");
    // It waited for an answer: NATS had routed the call to instance 1, not refused it.
    assert!(started.elapsed() >= Duration::from_millis(500));
    drop(session);
    // Instance 1 shuts down with NATS out of its reach: bounded, not waiting for NATS.
    cluster.stop().await;
}

/// A TCP relay in front of a NATS server that can hold what the server sends its client (the
/// server still believes the client alive) and cut every connection for good, refusing new
/// ones, as a `kill -9` of the client's process would.
struct HoldingProxy {
    addr: std::net::SocketAddr,
    hold: tokio::sync::watch::Sender<bool>,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl HoldingProxy {
    async fn start(upstream: String) -> HoldingProxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (hold, held) = tokio::sync::watch::channel(false);
        let tasks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let relays = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                let mut held = held.clone();
                let down = tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match server_read.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        // While held, what the server sent waits here.
                        while *held.borrow() {
                            if held.changed().await.is_err() {
                                return;
                            }
                        }
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
                relays.lock().unwrap().extend([up, down]);
            }
        });
        tasks.lock().unwrap().push(accept);
        HoldingProxy { addr, hold, tasks }
    }

    fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    fn hold(&self) {
        self.hold.send_replace(true);
    }

    /// Closes every relayed connection (dropping both ends' sockets) and the listener.
    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desired_patch_made_on_any_instance_is_pushed_by_the_holder() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let (device, key) = cluster.device("desired").await;
    let session = cluster.connect(0, &device, &key).await;
    session
        .subscribe(Subscription::DesiredPatches)
        .await
        .unwrap();
    held_by(&cluster, &device, 0).await;

    let twin = cluster
        .at(2)
        .patch_desired(&device, serde_json::json!({"fan": "on"}), None)
        .await
        .unwrap();
    assert_eq!(twin.desired.version, 1);
    let SessionEvent::DesiredPatch(patch) = next(session.as_ref()).await else {
        panic!("expected a desired patch");
    };
    assert_eq!(patch.version, 1);
    assert_eq!(patch.patch, serde_json::json!({"fan": "on"}));
    // One caller's patches arrive in version order.
    for level in 2..=4 {
        cluster
            .at(1)
            .patch_desired(&device, serde_json::json!({ "level": level }), None)
            .await
            .unwrap();
    }
    for version in 2..=4 {
        let SessionEvent::DesiredPatch(patch) = next(session.as_ref()).await else {
            panic!("expected a desired patch");
        };
        assert_eq!(patch.version, version);
        assert_eq!(patch.patch, serde_json::json!({ "level": version }));
    }
    // The twin is the shared store's: every instance reads the same.
    assert_eq!(
        cluster
            .at(0)
            .get_twin(&device)
            .await
            .unwrap()
            .desired
            .version,
        4
    );
    session.close().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_connecting_to_another_instance_closes_its_first_session() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let (device, key) = cluster.device("takeover").await;
    let first = cluster.connect(0, &device, &key).await;
    held_by(&cluster, &device, 0).await;

    let connecting = Instant::now();
    let second = cluster.connect(1, &device, &key).await;
    let event = next(first.as_ref()).await;
    eprintln!(
        "the session on instance 0 closed {:?} after the connect to instance 1 began",
        connecting.elapsed()
    );
    assert_eq!(event, SessionEvent::Closed(CloseReason::TakenOver));
    held_by(&cluster, &device, 1).await;
    assert_eq!(second.close_reason(), None);
    assert_eq!(
        cluster.at(2).connected_devices().await.unwrap(),
        vec![device.clone()]
    );

    // And back: the newest session wins wherever it opens.
    let third = cluster.connect(0, &device, &key).await;
    assert_eq!(
        next(second.as_ref()).await,
        SessionEvent::Closed(CloseReason::TakenOver)
    );
    held_by(&cluster, &device, 0).await;
    assert_eq!(third.close_reason(), None);
    third.close().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_or_rekeying_a_device_anywhere_cuts_its_session_everywhere() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let (disabled, key_d) = cluster.device("disabled").await;
    let (rekeyed, key_r) = cluster.device("rekeyed").await;
    let on_a = cluster.connect(0, &disabled, &key_d).await;
    let on_b = cluster.connect(1, &rekeyed, &key_r).await;

    // Written through instance 2's identity store.
    let store = &cluster.nodes[2].identity;
    let written = Instant::now();
    store
        .set_status(
            &disabled,
            DeviceStatus::Disabled {
                reason: "test".into(),
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        next(on_a.as_ref()).await,
        SessionEvent::Closed(CloseReason::Disabled)
    );
    eprintln!(
        "disabled through instance 2: instance 0's session closed after {:?}",
        written.elapsed()
    );

    let written = Instant::now();
    store
        .replace_credentials(
            &rekeyed,
            Credentials::SymmetricKeys {
                primary: SymmetricKey::generate(),
                secondary: SymmetricKey::generate(),
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        next(on_b.as_ref()).await,
        SessionEvent::Closed(CloseReason::CredentialsReplaced)
    );
    eprintln!(
        "re-keyed through instance 2: instance 1's session closed after {:?}",
        written.elapsed()
    );
    for node in &cluster.nodes {
        eventually("the cut devices are offline everywhere", || async {
            node.gateway.connected_devices().await.unwrap().is_empty()
        })
        .await;
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_state_is_cluster_wide_and_lapses_with_an_instance_lease() {
    let Some(mut cluster) = Cluster::start().await else {
        return;
    };
    let (d0, k0) = cluster.device("d0").await;
    let (d1, k1) = cluster.device("d1").await;
    let (d2, k2) = cluster.device("d2").await;
    let s0 = cluster.connect(0, &d0, &k0).await;
    let s1 = cluster.connect(1, &d1, &k1).await;
    let s2 = cluster.connect(2, &d2, &k2).await;
    let mut all = vec![d0.clone(), d1.clone(), d2.clone()];
    all.sort();
    for node in &cluster.nodes {
        eventually("every instance lists every device", || async {
            node.gateway.connected_devices().await.unwrap() == all
        })
        .await;
        assert!(node.gateway.is_connected(&d1).await.unwrap());
    }

    // A device that disconnects is offline everywhere.
    s1.close().await;
    for node in &cluster.nodes {
        eventually("d1 is offline everywhere", || async {
            !node.gateway.is_connected(&d1).await.unwrap()
        })
        .await;
    }

    // An instance that stops heartbeating (its coordination dropped without a goodbye, as if
    // its process died; its session object stays open): its devices go offline when its lease
    // lapses, and a method call to them is answered "offline".
    let dead = cluster.nodes.remove(2);
    let stopped = Instant::now();
    drop(dead.gateway);
    for node in &cluster.nodes {
        eventually("d2 goes offline with its instance's lease", || async {
            !node.gateway.is_connected(&d2).await.unwrap()
        })
        .await;
        assert_eq!(node.gateway.peers().len(), 1);
    }
    eprintln!(
        "instance 2's devices were dropped {:?} after it stopped",
        stopped.elapsed()
    );
    let err = cluster
        .at(0)
        .invoke_method(&d2, MethodCall::new("m", ""))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DeviceOffline { .. }), "{err:?}");
    assert!(cluster.at(1).is_connected(&d0).await.unwrap());
    s0.close().await;
    s2.close().await;
    cluster.stop().await;
}

/// NATS (a server of the test's own, the coordination's only one; the logs are in memory) dies
/// and comes back. What was published during the outage is lost: here a wake-up (the message is
/// written into the shared inbox behind the hub's back, as a `send_c2d` whose notice was lost)
/// and a takeover (the device connects to the other instance while NATS is down). Once NATS is
/// back, the message reaches the waiting session and the older session is closed, with no
/// restart of anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_lost_while_nats_was_down_is_repaired_when_it_is_back() {
    let Some(pool) = pg_support::shared_pool().await else {
        return;
    };
    let Some(binary) = nats_server_binary() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "nats-server missing under CI"
        );
        eprintln!("skipped: no nats-server binary (NATS_SERVER or PATH); CI runs this test");
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let mut server = OwnServer::start(binary, store.path());
    let cluster = Cluster::start_on(pool, 2, &server.url(), false)
        .await
        .unwrap();
    let (waiting_for_c2d, k1) = cluster.device("c2d").await;
    let (moving, k2) = cluster.device("moving").await;
    let s1: Arc<dyn DeviceSession> = cluster.connect(0, &waiting_for_c2d, &k1).await.into();
    s1.subscribe(Subscription::C2d).await.unwrap();
    let old = cluster.connect(0, &moving, &k2).await;
    held_by(&cluster, &moving, 0).await;
    let waiting = {
        let s1 = s1.clone();
        tokio::spawn(async move { next(s1.as_ref()).await })
    };

    server.kill();
    let now = iot_sdk::core::Timestamp::now();
    let inbox = cluster.at(1).hub().inbox();
    inbox
        .enqueue(
            &waiting_for_c2d,
            iot_sdk::gateway::inbox::InboxMessage::new(
                "m-1",
                "during",
                now,
                Duration::from_secs(60),
            ),
            now,
            cluster.at(1).hub().config().inbox,
        )
        .await
        .unwrap();
    let new = cluster.connect(1, &moving, &k2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        old.close_reason(),
        None,
        "nobody could have told instance 0 yet"
    );
    server.spawn();

    let SessionEvent::C2d(message) = waiting.await.unwrap() else {
        panic!("expected the C2D message queued during the outage");
    };
    assert_eq!(&message.payload[..], b"during");
    assert_eq!(
        next(old.as_ref()).await,
        SessionEvent::Closed(CloseReason::TakenOver)
    );
    held_by(&cluster, &moving, 1).await;
    assert_eq!(new.close_reason(), None);
    s1.close().await;
    new.close().await;
    for node in &cluster.nodes {
        node.gateway.shutdown().await;
    }
}

/// Hub-wide throttling quotas are split between the instances by the devices each holds
/// (`(held here + 1) / (held by all + instances)`, renewed every heartbeat): the parts add up to
/// the whole quota, and follow the devices as they come and go.
#[tokio::test]
async fn hub_wide_quotas_are_split_between_the_instances_by_the_devices_they_hold() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let share = |i: usize| cluster.nodes[i].gateway.hub().hub_quota_share();
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    eventually("three instances, no devices: a third each", || async {
        (0..3).all(|i| close(share(i), 1.0 / 3.0))
    })
    .await;
    let (d0, k0) = cluster.device("q0").await;
    let (d1, k1) = cluster.device("q1").await;
    let _s0 = cluster.connect(0, &d0, &k0).await;
    let s1 = cluster.connect(0, &d1, &k1).await;
    // Two devices on instance 0: (2 + 1) / (2 + 3) there, 1/5 on each other.
    eventually("instance 0 holds two devices: 3/5, 1/5, 1/5", || async {
        close(share(0), 0.6) && close(share(1), 0.2) && close(share(2), 0.2)
    })
    .await;
    assert!(close(share(0) + share(1) + share(2), 1.0));
    s1.close().await;
    eventually("one device left: 2/4, 1/4, 1/4", || async {
        close(share(0), 0.5) && close(share(1), 0.25) && close(share(2), 0.25)
    })
    .await;
}
