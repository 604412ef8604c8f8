//! `--mode connections`: hold many device connections to a running gateway and count how many
//! stay up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::sync::mpsc;

use crate::Args;
use crate::tls::client_tls;

/// How many connections may be in their TCP/TLS/CONNECT handshake at once.
const CONNECTING_AT_ONCE: usize = 128;
/// How often a device refused at CONNECT (the hub's connect throttle, say) tries again.
const CONNECT_ATTEMPTS: u32 = 10;

/// `--mode connections`: opens `--devices` device connections to a running gateway, holds them
/// for `--hold`, and reports how many stayed up.
pub(crate) async fn hold_connections(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let broker = args.broker.ok_or("no broker")?;
    let tls = match &args.tls_ca {
        None => None,
        Some(ca) => Some(client_tls(ca, &args.host)?),
    };
    // The addresses the devices connect to: the broker's, and with --spread the ones after it.
    // With TLS the certificate is checked against --host whatever address was dialled.
    let targets = spread_addresses(broker.ip(), args.spread)?;

    let connecting = Arc::new(tokio::sync::Semaphore::new(CONNECTING_AT_ONCE));
    let up = Arc::new(AtomicU64::new(0));
    let refusals = Arc::new(AtomicU64::new(0));
    let (outcome_tx, mut outcome_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let mut clients = Vec::with_capacity(args.devices);
    let began = Instant::now();
    let logins = crate::fleet::fleet_logins(args)?;
    for (i, (id, login)) in logins.into_iter().enumerate() {
        let (username, token) = login.ok_or("a fleet login without credentials")?;
        let target = targets[i % targets.len()].to_string();
        let mut options = MqttOptions::new(id.clone(), target, broker.port());
        // Short enough that every device pings during the hold (at 1.5x the gateway drops it).
        options
            .set_keep_alive((args.hold / 2).clamp(Duration::from_secs(2), Duration::from_secs(30)));
        options.set_inflight(1);
        options.set_credentials(username, token);
        if let Some(config) = &tls {
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(config.clone()),
            ));
        }
        let permit = connecting.clone().acquire_owned().await?;
        let (client, eventloop) = AsyncClient::new(options, 4);
        tokio::spawn(hold_one(
            eventloop,
            client.clone(),
            id,
            permit,
            up.clone(),
            refusals.clone(),
            outcome_tx.clone(),
        ));
        clients.push(client);
    }
    drop(outcome_tx);
    let mut connected = 0u64;
    let mut failed = Vec::new();
    while let Some(outcome) = outcome_rx.recv().await {
        match outcome {
            Ok(()) => connected += 1,
            Err(e) => failed.push(e),
        }
        if connected + failed.len() as u64 == args.devices as u64 {
            break;
        }
    }
    let connect_s = began.elapsed().as_secs_f64();
    if let Some(first) = failed.first() {
        eprintln!(
            "{} devices could not connect; the first: {first}",
            failed.len()
        );
    }
    println!(
        "connected: {connected} of {} in {connect_s:.1} s ({:.0}/s), {} refusals retried",
        args.devices,
        connected as f64 / connect_s,
        refusals.load(Ordering::Relaxed)
    );
    println!("held: {connected}");
    tokio::time::sleep(args.hold).await;
    let still = up.load(Ordering::Relaxed);
    println!("still connected after {} s: {still}", args.hold.as_secs());
    for client in &clients {
        let _ = client.try_disconnect();
    }
    println!(
        "{{\"mode\":\"connections\",\"tls\":{},\"devices\":{},\"connected\":{connected},\"still_connected\":{still},\"connect_s\":{connect_s:.2},\"connects_per_s\":{:.0},\"refusals\":{}}}",
        tls.is_some(),
        args.devices,
        connected as f64 / connect_s,
        refusals.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Drives one held device: reports when it is connected (or gave up), retries a refused
/// CONNECT, and keeps `up` counting it while its connection lasts.
async fn hold_one(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    device: String,
    permit: tokio::sync::OwnedSemaphorePermit,
    up: Arc<AtomicU64>,
    refusals: Arc<AtomicU64>,
    outcome: mpsc::UnboundedSender<Result<(), String>>,
) {
    let mut permit = Some(permit);
    let mut attempts = 0;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                // What the Azure IoT device SDKs subscribe to once connected.
                let filters = [
                    format!("devices/{device}/messages/devicebound/#"),
                    "$iothub/methods/POST/#".to_string(),
                    "$iothub/twin/res/#".to_string(),
                    "$iothub/twin/PATCH/properties/desired/#".to_string(),
                ]
                .map(|path| rumqttc::SubscribeFilter::new(path, QoS::AtLeastOnce));
                if let Err(e) = client.try_subscribe_many(filters) {
                    let _ = outcome.send(Err(e.to_string()));
                    return;
                }
            }
            Ok(Event::Incoming(Incoming::SubAck(_))) if permit.is_some() => {
                up.fetch_add(1, Ordering::Relaxed);
                permit.take();
                let _ = outcome.send(Ok(()));
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                up.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            Ok(_) => {}
            Err(e) => {
                if permit.is_none() {
                    // It was up and dropped: no longer held.
                    up.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                attempts += 1;
                if attempts >= CONNECT_ATTEMPTS {
                    let _ = outcome.send(Err(e.to_string()));
                    return;
                }
                refusals.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// `base` and the `count - 1` IPv4 addresses after it.
fn spread_addresses(
    base: std::net::IpAddr,
    count: u8,
) -> Result<Vec<std::net::IpAddr>, Box<dyn std::error::Error>> {
    let std::net::IpAddr::V4(v4) = base else {
        return Ok(vec![base]);
    };
    (0..u32::from(count))
        .map(|k| {
            u32::from(v4)
                .checked_add(k)
                .map(|n| std::net::IpAddr::V4(n.into()))
                .ok_or_else(|| {
                    format!("--spread {count} runs past the last address after {v4}").into()
                })
        })
        .collect()
}
