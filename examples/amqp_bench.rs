//! AMQP telemetry throughput against the MQTT endpoint, in the same run: `--devices` devices
//! (100) each send `--messages` messages (1 000; 30 with `--quick`) of `--payload` bytes (100) at
//! once, up to 16 awaiting acknowledgement per device, over plain TCP loopback to a hub in memory
//! with throttling off. A message counts once the endpoint acknowledged it (accepted / PUBACK),
//! which it does once the message is in the log. Every phase has a hub of its own.
//!
//! * **MQTT**: rumqttc clients, QoS 1; rumqttc writes each PUBLISH with a system call of its own.
//! * **AMQP, lean sender** (`support/amqp_lean_sender.rs`): SASL PLAIN with the device's token,
//!   one sender link, each message one unsettled transfer written with a system call of its own,
//!   as rumqttc writes. MQTT and this phase alternate for five rounds; `amqp_vs_mqtt` is the
//!   median round's ratio (goal: at least 0.5).
//! * **AMQP, fe2o3-amqp's client** (`$cbs` put-token, one sender link), the same messages:
//!   `amqp_fe2o3_msgs_per_s`, `amqp_fe2o3_vs_mqtt`. That client costs more CPU per message than
//!   the endpoint, on the same two cores, so this figure is mostly the client's
//!   (docs/performance.md).
//! * **AMQP batches**: the same client, `--batch` (16) messages per transfer in IoT Hub's batch
//!   format (message format `0x80013700`, each message encoded in a data section of one
//!   transfer), 16 transfers awaiting their disposition. Not the 1:1 comparison `amqp_vs_mqtt`
//!   makes: its keys are `amqp_batch_msgs_per_s` and `amqp_batch_vs_mqtt`.
//!
//! Then the Event Hubs–compatible endpoint's read throughput against reading the same log in
//! process (`examples/support/eventhubs_read.rs`, also run alone by `eventhubs_bench`): 400 000
//! records, 40 000 with `--quick`.
//!
//! ```text
//! cargo run --release --example amqp_bench --features amqp,eventhubs [-- --quick] [--devices N] [--messages N] [--batch N]
//! ```
//!
//! The last line is a JSON object with `amqp_msgs_per_s`, `mqtt_msgs_per_s` (the median round's),
//! `amqp_vs_mqtt`, `amqp_fe2o3_msgs_per_s`, `amqp_fe2o3_vs_mqtt`, `amqp_batch_msgs_per_s`,
//! `amqp_batch_vs_mqtt` (both against the median round's MQTT figure), `eventhubs_read_per_s`,
//! `inprocess_read_per_s` and `eventhubs_vs_inprocess` (the goal is at least 0.3; read by a lean
//! client, see `examples/support/eventhubs_read.rs`), and the same read through fe2o3-amqp's
//! client: `eventhubs_fe2o3_read_per_s`, `eventhubs_fe2o3_vs_inprocess`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "support/amqp_lean_sender.rs"]
mod amqp_lean_sender;
#[path = "support/eventhubs_read.rs"]
mod eventhubs_read;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fe2o3_amqp::link::delivery::Sendable;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Data, Message, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{OrderedMap, SimpleValue, Value};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use iot_core::DeviceId;
use iot_gateway::adapter::AMQP_BATCH_FORMAT;
use iot_gateway::amqp::{AmqpConfig, AmqpServer};
use iot_gateway::mqtt::{MqttConfig, MqttServer};
use iot_gateway::{Hub, HubConfig, ThrottleConfig};
use iot_identity::{
    Credentials, IdentityStore, MemoryIdentityStore, NewIdentity, SymmetricKey, sas,
};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};

const HOST: &str = "bench.local";
/// Messages a device has awaiting acknowledgement at once, on both protocols.
const WINDOW: usize = 16;
/// MQTT and lean-AMQP phases alternated; the ratio is the median round's.
const ROUNDS: usize = 5;

struct Args {
    devices: usize,
    messages: usize,
    payload: usize,
    /// Messages per transfer in the batch phase.
    batch: usize,
    /// Records the Event Hubs phase reads.
    eventhubs_records: usize,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        devices: 100,
        messages: 1000,
        payload: 100,
        batch: 16,
        eventhubs_records: 400_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut number = |name: &str| -> Result<usize, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{name} needs a positive number"))
        };
        match flag.as_str() {
            "--quick" => {
                args.messages = 30;
                args.eventhubs_records = 40_000;
            }
            "--devices" => args.devices = number("--devices")?,
            "--messages" => args.messages = number("--messages")?,
            "--payload" => args.payload = number("--payload")?,
            "--batch" => args.batch = number("--batch")?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(e) => {
            eprintln!(
                "usage: amqp_bench [--quick] [--devices N] [--messages N] [--payload BYTES] [--batch N]\n{e}"
            );
            return std::process::ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Error> {
    let identity = Arc::new(MemoryIdentityStore::new());
    let mut devices = Vec::with_capacity(args.devices);
    for i in 0..args.devices {
        let id: DeviceId = format!("bench-{i}").parse()?;
        let key = SymmetricKey::generate();
        identity
            .create(NewIdentity::new(
                id.clone(),
                Credentials::SymmetricKeys {
                    primary: key.clone(),
                    secondary: SymmetricKey::generate(),
                },
            ))
            .await?;
        let token = sas::generate(
            &sas::device_resource(HOST, &id),
            &key,
            sas::unix_now() + 3600,
            None,
        )?;
        devices.push((id, token.as_str().to_owned()));
    }
    let identity = identity as Arc<dyn IdentityStore>;
    let total = (args.devices * args.messages) as f64;
    let rate = |elapsed: Duration| total / elapsed.as_secs_f64();
    let report = |what: &str, elapsed: Duration| {
        println!(
            "{what}: {} devices x {} messages in {:.2} s: {:.0} msgs/s",
            args.devices,
            args.messages,
            elapsed.as_secs_f64(),
            rate(elapsed)
        );
    };

    // MQTT and AMQP (lean sender) alternate, each phase on a hub of its own, so that neither
    // runs on a log the other filled nor always on the machine's later minutes.
    let mut rounds = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let mqtt = phase(&identity, Protocol::Mqtt, &devices, &args).await?;
        report(&format!("round {round}: mqtt"), mqtt);
        let lean = phase(&identity, Protocol::AmqpLean, &devices, &args).await?;
        report(&format!("round {round}: amqp (lean sender)"), lean);
        rounds.push((rate(lean) / rate(mqtt), rate(lean), rate(mqtt)));
    }
    rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (amqp_vs_mqtt, amqp_rate, mqtt_rate) = rounds[rounds.len() / 2];
    let fe2o3 = phase(&identity, Protocol::AmqpFe2o3 { batch: 1 }, &devices, &args).await?;
    report("amqp (fe2o3-amqp sender)", fe2o3);
    let batch = Protocol::AmqpFe2o3 { batch: args.batch };
    let batched = phase(&identity, batch, &devices, &args).await?;
    report(
        &format!("amqp batches of {} (fe2o3-amqp sender)", args.batch),
        batched,
    );
    println!(
        "amqp vs mqtt, median of {ROUNDS} rounds: {amqp_vs_mqtt:.2} ({amqp_rate:.0} vs {mqtt_rate:.0} msgs/s)"
    );
    let (fe2o3_rate, batch_rate) = (rate(fe2o3), rate(batched));

    let eventhubs = eventhubs_read::measure(args.eventhubs_records).await;
    println!(
        "event hubs: {:.0} events/s through the endpoint vs {:.0} records/s in process: {:.3}",
        eventhubs.endpoint, eventhubs.in_process, eventhubs.ratio
    );
    let hundredths = |x: f64| (x * 100.0).round() / 100.0;
    println!(
        "{}",
        serde_json::json!({
            "devices": args.devices,
            "messages_per_device": args.messages,
            "payload_bytes": args.payload,
            "amqp_msgs_per_s": amqp_rate.round(),
            "mqtt_msgs_per_s": mqtt_rate.round(),
            "amqp_vs_mqtt": hundredths(amqp_vs_mqtt),
            "amqp_fe2o3_msgs_per_s": fe2o3_rate.round(),
            "amqp_fe2o3_vs_mqtt": hundredths(fe2o3_rate / mqtt_rate),
            "amqp_batch": args.batch,
            "amqp_batch_msgs_per_s": batch_rate.round(),
            "amqp_batch_vs_mqtt": hundredths(batch_rate / mqtt_rate),
            "eventhubs_read_per_s": eventhubs.endpoint.round(),
            "inprocess_read_per_s": eventhubs.in_process.round(),
            "eventhubs_vs_inprocess": (eventhubs.ratio * 1000.0).round() / 1000.0,
            "eventhubs_fe2o3_read_per_s": eventhubs.fe2o3.round(),
            "eventhubs_fe2o3_vs_inprocess": (eventhubs.fe2o3_ratio * 1000.0).round() / 1000.0,
            "eventhubs_records": args.eventhubs_records,
        })
    );
    Ok(())
}

/// The endpoint and client a phase sends through.
#[derive(Clone, Copy)]
enum Protocol {
    Mqtt,
    /// The AMQP endpoint, with the lean sender (`support/amqp_lean_sender.rs`).
    AmqpLean,
    /// The AMQP endpoint, with fe2o3-amqp's client, `batch` messages per transfer.
    AmqpFe2o3 {
        batch: usize,
    },
}

/// One phase on a hub of its own (in memory, throttling off): the endpoint started, every
/// device connected, then all of them timed sending at once.
async fn phase(
    identity: &Arc<dyn IdentityStore>,
    protocol: Protocol,
    devices: &[(DeviceId, String)],
    args: &Args,
) -> Result<Duration, Error> {
    let mut config = HubConfig::default();
    config.throttle = ThrottleConfig::unlimited();
    let hub = Hub::builder(identity.clone(), HOST)
        .config(config)
        .build()
        .await?;
    let any = "127.0.0.1:0".parse()?;
    let elapsed = match protocol {
        Protocol::Mqtt => {
            let mqtt = MqttServer::new(Arc::new(hub.clone()), MqttConfig::default())?;
            let addr = mqtt.listen_tcp(any).await?;
            let elapsed = mqtt_phase(addr, devices, args).await;
            mqtt.shutdown().await;
            elapsed
        }
        Protocol::AmqpLean | Protocol::AmqpFe2o3 { .. } => {
            let amqp = AmqpServer::new(Arc::new(hub.clone()), AmqpConfig::default())?;
            let addr = amqp.listen_tcp(any).await?;
            let elapsed = match protocol {
                Protocol::AmqpFe2o3 { batch } => amqp_phase(addr, devices, args, batch).await,
                _ => lean_phase(addr, devices, args).await,
            };
            amqp.shutdown().await;
            elapsed
        }
    };
    hub.shutdown().await;
    elapsed
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Connects every device with the lean sender (SASL PLAIN, sender link), then times them all
/// sending at once, one message per transfer. (No barrier: a device that fails to connect
/// fails the phase instead of leaving the others waiting.)
async fn lean_phase(
    addr: std::net::SocketAddr,
    devices: &[(DeviceId, String)],
    args: &Args,
) -> Result<Duration, Error> {
    let hub = HOST.split('.').next().unwrap_or(HOST);
    let (messages, payload) = (u32::try_from(args.messages)?, args.payload);
    let connecting: Vec<_> = devices
        .iter()
        .map(|(id, token)| {
            let (id, token) = (id.clone(), token.clone());
            tokio::spawn(async move {
                amqp_lean_sender::LeanSender::connect(addr, hub, id.as_str(), &token).await
            })
        })
        .collect();
    let mut senders = Vec::with_capacity(connecting.len());
    for connected in connecting {
        senders.push(connected.await?);
    }
    let began = Instant::now();
    let sending: Vec<_> = senders
        .into_iter()
        .map(|mut sender| {
            tokio::spawn(async move {
                sender.send(messages, payload, WINDOW as u32).await;
                sender.close().await;
            })
        })
        .collect();
    for sent in sending {
        sent.await?;
    }
    Ok(began.elapsed())
}

/// Connects every device with fe2o3-amqp's client (put-token, sender link), then times them all sending at once: one
/// message per transfer when `batch` is 1, else `batch` messages per transfer in IoT Hub's
/// batch format.
async fn amqp_phase(
    addr: std::net::SocketAddr,
    devices: &[(DeviceId, String)],
    args: &Args,
    batch: usize,
) -> Result<Duration, Error> {
    let start = Arc::new(tokio::sync::Barrier::new(devices.len() + 1));
    let mut tasks = Vec::new();
    for (id, token) in devices {
        let (id, token) = (id.clone(), token.clone());
        let start = start.clone();
        let (messages, payload) = (args.messages, args.payload);
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let mut connection = Connection::builder()
                .container_id(id.as_str())
                .open_with_stream(stream)
                .await?;
            let mut session = Session::begin(&mut connection).await?;
            put_token(&mut session, &id, &token).await?;
            let mut sender = Sender::attach(
                &mut session,
                "events",
                format!("/devices/{id}/messages/events"),
            )
            .await?;
            start.wait().await;
            let mut pending = std::collections::VecDeque::new();
            let mut n = 0;
            while n < messages {
                let properties = |n: usize| Properties {
                    message_id: Some(MessageId::String(format!("{id}-{n}"))),
                    ..Properties::default()
                };
                let sendable = if batch == 1 {
                    Sendable::from(
                        Message::builder()
                            .properties(properties(n))
                            .body(Body::<Value>::Data(
                                vec![Data(vec![7u8; payload].into())].into(),
                            ))
                            .build(),
                    )
                } else {
                    // Each message as uAMQP puts it in a batch: its encoded sections.
                    let mut sections = Vec::with_capacity(batch);
                    for m in n..(n + batch).min(messages) {
                        let mut inner = serde_amqp::to_vec(&properties(m))?;
                        inner.extend(serde_amqp::to_vec(&Data(vec![7u8; payload].into()))?);
                        sections.push(Data(inner.into()));
                    }
                    Sendable::builder()
                        .message(
                            Message::builder()
                                .body(Body::<Value>::Data(sections.into()))
                                .build(),
                        )
                        .message_format(AMQP_BATCH_FORMAT)
                        .build()
                };
                n += batch;
                pending.push_back(sender.send_batchable(sendable).await?);
                if pending.len() >= WINDOW
                    && let Some(oldest) = pending.pop_front()
                {
                    oldest.await?;
                }
            }
            for outcome in pending {
                outcome.await?;
            }
            let _ = sender.close().await;
            let _ = session.end().await;
            let _ = connection.close().await;
            Ok::<(), Error>(())
        }));
    }
    start.wait().await;
    let began = Instant::now();
    for task in tasks {
        task.await??;
    }
    Ok(began.elapsed())
}

async fn put_token(
    session: &mut fe2o3_amqp::session::SessionHandle<()>,
    id: &DeviceId,
    token: &str,
) -> Result<(), Error> {
    let mut sender = Sender::attach(session, "cbs-sender", "$cbs").await?;
    let mut receiver = Receiver::builder()
        .name("cbs-receiver")
        .source("$cbs")
        .target("cbs")
        .attach(session)
        .await?;
    let mut app = OrderedMap::new();
    app.insert(
        "operation".to_string(),
        SimpleValue::String("put-token".into()),
    );
    app.insert(
        "type".to_string(),
        SimpleValue::String("servicebus.windows.net:sastoken".into()),
    );
    app.insert(
        "name".to_string(),
        SimpleValue::String(format!("{HOST}/devices/{id}")),
    );
    let request = Message::builder()
        .properties(Properties {
            message_id: Some(MessageId::String("put".into())),
            reply_to: Some("cbs".into()),
            ..Properties::default()
        })
        .application_properties(ApplicationProperties(app))
        .body(Body::Value(AmqpValue(Value::String(token.to_owned()))))
        .build();
    sender.send(request).await?;
    let reply = receiver.recv::<Body<Value>>().await?;
    receiver.accept(&reply).await?;
    let status = reply
        .message()
        .application_properties
        .as_ref()
        .and_then(|ApplicationProperties(map)| map.get("status-code").cloned());
    if status != Some(SimpleValue::Int(200)) {
        return Err(format!("put-token for {id} answered {status:?}").into());
    }
    let _ = sender.close().await;
    let _ = receiver.close().await;
    Ok(())
}

/// Connects every device over MQTT, then times them all publishing at QoS 1.
async fn mqtt_phase(
    addr: std::net::SocketAddr,
    devices: &[(DeviceId, String)],
    args: &Args,
) -> Result<Duration, Error> {
    let start = Arc::new(tokio::sync::Barrier::new(devices.len() + 1));
    let mut tasks = Vec::new();
    for (id, token) in devices {
        let (id, token) = (id.clone(), token.clone());
        let start = start.clone();
        let (messages, payload) = (args.messages, args.payload);
        tasks.push(tokio::spawn(async move {
            let mut options = MqttOptions::new(id.as_str(), addr.ip().to_string(), addr.port());
            options.set_keep_alive(Duration::from_secs(60));
            options.set_inflight(WINDOW as u16);
            options.set_credentials(format!("{HOST}/{id}/?api-version=2021-04-12"), token);
            let (client, mut eventloop) = AsyncClient::new(options, 64);
            // Wait for the CONNACK before the clock starts.
            loop {
                if let Event::Incoming(Incoming::ConnAck(_)) = eventloop.poll().await? {
                    break;
                }
            }
            start.wait().await;
            let topic = format!("devices/{id}/messages/events/");
            let publisher = tokio::spawn(async move {
                for _ in 0..messages {
                    if client
                        .publish(topic.as_str(), QoS::AtLeastOnce, false, vec![7u8; payload])
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                client
            });
            let mut acked = 0;
            while acked < messages {
                if let Event::Incoming(Incoming::PubAck(_)) = eventloop.poll().await? {
                    acked += 1;
                }
            }
            let client = publisher.await?;
            let _ = client.disconnect().await;
            Ok::<(), Error>(())
        }));
    }
    start.wait().await;
    let began = Instant::now();
    for task in tasks {
        task.await??;
    }
    Ok(began.elapsed())
}
