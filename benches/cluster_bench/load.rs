//! The QoS 1 telemetry load: every device publishes its messages with several in flight, as
//! `examples/mqtt_load` drives a gateway; the rate is from the first send to the last PUBACK.
//!
//! Each payload starts with the message's number within its device (4 bytes, big-endian), so the
//! log check can tell which messages of which device landed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Outgoing, QoS};
use tokio::sync::{Barrier, Notify, Semaphore};

use crate::cpu::Probe;
use crate::fleet::Login;

/// Payload bytes per message (mqtt_load's default).
pub(crate) const PAYLOAD: usize = 100;
/// QoS 1 publishes in flight per device (mqtt_load's setting).
const IN_FLIGHT: u16 = 16;
/// Connections in their CONNECT handshake at once (each is an identity lookup on the node).
const CONNECTING_AT_ONCE: usize = 64;
/// A guard against a hung run, not a measurement.
const PATIENCE: Duration = Duration::from_secs(180);

/// What one load run did.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    /// PUBACKs per device, in login order.
    pub(crate) acked_per_device: Vec<u64>,
    /// Devices refused at CONNECT.
    pub(crate) refused: u64,
    /// Connections that failed (refusals included).
    pub(crate) errors: u64,
    /// From the first send to the last PUBACK.
    pub(crate) elapsed: Duration,
    /// Connecting every device (untimed for the rate).
    pub(crate) connect: Duration,
}

impl Outcome {
    pub(crate) fn msgs_per_s(&self) -> f64 {
        self.acked as f64 / self.elapsed.as_secs_f64()
    }
}

/// The payload of message `seq`.
pub(crate) fn payload(seq: u32) -> Vec<u8> {
    let mut payload = vec![b'x'; PAYLOAD];
    payload[..4].copy_from_slice(&seq.to_be_bytes());
    payload
}

/// The message number a payload carries.
pub(crate) fn seq_of(payload: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(payload.get(..4)?.try_into().ok()?))
}

/// Connects every device of `logins`, then lets all of them publish `messages` QoS 1 messages
/// at once; returns when every message is acknowledged (or the run failed).
pub(crate) async fn run(
    logins: Vec<Login>,
    messages: u32,
    probe: &mut Probe,
) -> Result<Outcome, Box<dyn std::error::Error>> {
    let devices = logins.len();
    let errors = Arc::new(AtomicU64::new(0));
    let closing = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(devices + 1));
    let connecting = Arc::new(Semaphore::new(CONNECTING_AT_ONCE));
    let mut publishers = Vec::with_capacity(devices);
    let mut counters = Vec::with_capacity(devices);
    let connect_began = Instant::now();
    let (connected_tx, mut connected_rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    for login in logins {
        let permit = connecting.clone().acquire_owned().await?;
        let mut options = MqttOptions::new(
            login.id.clone(),
            login.broker.ip().to_string(),
            login.broker.port(),
        );
        options.set_keep_alive(Duration::from_secs(60));
        options.set_inflight(IN_FLIGHT);
        options.set_credentials(login.username, login.token);
        let topic = format!("devices/{}/messages/events/", login.id);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let acked = Arc::new(AtomicU64::new(0));
        let progress = Arc::new(Notify::new());
        let failed = Arc::new(AtomicBool::new(false));
        counters.push(acked.clone());
        {
            let (acked, progress, failed, errors, closing) = (
                acked.clone(),
                progress.clone(),
                failed.clone(),
                errors.clone(),
                closing.clone(),
            );
            let connected_tx = connected_tx.clone();
            let mut permit = Some(permit);
            tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                            permit.take();
                            let _ = connected_tx.send(true);
                        }
                        Ok(Event::Incoming(Incoming::PubAck(_))) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                            progress.notify_one();
                        }
                        Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                        Ok(_) => {}
                        // The server closes the socket when it reads our DISCONNECT; rumqttc may
                        // see that before it reports the DISCONNECT as sent.
                        Err(_) if closing.load(Ordering::Relaxed) => return,
                        Err(e) => {
                            eprintln!("device {}: {e}", login.id);
                            errors.fetch_add(1, Ordering::Relaxed);
                            failed.store(true, Ordering::Relaxed);
                            if permit.take().is_some() {
                                let _ = connected_tx.send(false);
                            }
                            progress.notify_one();
                            return;
                        }
                    }
                }
            });
        }
        let start = start.clone();
        publishers.push(tokio::spawn(async move {
            start.wait().await;
            let mut sent = 0u64;
            for seq in 0..messages {
                if client
                    .publish(topic.as_str(), QoS::AtLeastOnce, false, payload(seq))
                    .await
                    .is_err()
                {
                    break;
                }
                sent += 1;
            }
            // Until every message is acknowledged, or the connection failed. The timeout only
            // covers a notification that raced the check.
            while acked.load(Ordering::Relaxed) < sent && !failed.load(Ordering::Relaxed) {
                let _ = tokio::time::timeout(Duration::from_millis(100), progress.notified()).await;
            }
            (client, sent)
        }));
    }
    drop(connected_tx);
    // A device refused at CONNECT takes no part in the run (its publisher finds its client
    // gone); it is counted, not retried, so that a refusal shows in the figures.
    let (mut connected, mut refused) = (0usize, 0u64);
    while connected + (refused as usize) < devices {
        match tokio::time::timeout(PATIENCE, connected_rx.recv()).await {
            Ok(Some(true)) => connected += 1,
            Ok(Some(false)) => refused += 1,
            _ => return Err(format!("{connected} of {devices} devices connected").into()),
        }
    }
    let connect = connect_began.elapsed();
    probe.start();
    start.wait().await;
    let began = Instant::now();
    let mut clients = Vec::with_capacity(devices);
    let mut sent = 0;
    for publisher in publishers {
        let left = PATIENCE.saturating_sub(began.elapsed());
        match tokio::time::timeout(left, publisher).await {
            Ok(Ok((client, n))) => {
                sent += n;
                clients.push(client);
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err("the run did not finish in time".into()),
        }
    }
    let elapsed = began.elapsed();
    probe.stop();
    closing.store(true, Ordering::Relaxed);
    for client in &clients {
        let _ = client.try_disconnect();
    }
    let acked_per_device: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    Ok(Outcome {
        sent,
        acked: acked_per_device.iter().sum(),
        acked_per_device,
        refused,
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        connect,
    })
}
