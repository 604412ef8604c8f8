//! Direct methods through a node's REST API to devices held by node 0: the same calls through
//! node 0 (answered by its own hub) and through node 1 (routed to node 0 over NATS
//! request/reply), timed from the request's first byte to the answer's last.

use std::time::{Duration, Instant};

use iot_sdk::identity::{SymmetricKey, sas};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};

use crate::fleet::{HOST, Login};
use crate::http::Connection;

const API: &str = "api-version=2021-04-12";
/// A guard against a hung setup, not a measurement.
const PATIENCE: Duration = Duration::from_secs(30);

/// A connected device that answers every direct method with status 200 and the request's
/// payload, as a device SDK's method handler would.
#[derive(Debug)]
pub(crate) struct Responder {
    client: AsyncClient,
}

impl Responder {
    /// Connects `login`, subscribes to methods, and returns once the subscription is granted.
    pub(crate) async fn start(login: Login) -> Result<Self, Box<dyn std::error::Error>> {
        let mut options = MqttOptions::new(
            login.id.clone(),
            login.broker.ip().to_string(),
            login.broker.port(),
        );
        options.set_keep_alive(Duration::from_secs(60));
        options.set_credentials(login.username, login.token);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        client
            .subscribe("$iothub/methods/POST/#", QoS::AtMostOnce)
            .await?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let answering = client.clone();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        if let Some(ready) = ready_tx.take() {
                            let _ = ready.send(());
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        // `$iothub/methods/POST/{name}/?$rid={rid}`
                        let Some(rid) = p.topic.split("$rid=").nth(1) else {
                            continue;
                        };
                        let topic = format!("$iothub/methods/res/200/?$rid={rid}");
                        // The request channel has room (one call at a time), so this does not
                        // hold up the event loop.
                        if answering
                            .publish(topic, QoS::AtMostOnce, false, p.payload.to_vec())
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        tokio::time::timeout(PATIENCE, ready_rx).await??;
        Ok(Responder { client })
    }

    pub(crate) fn stop(&self) {
        let _ = self.client.try_disconnect();
    }
}

/// Registers `id` with `key` through the service API (`PUT /devices/{id}`): the identity and
/// the registry record the method route looks the device up in.
pub(crate) async fn register(
    connection: &mut Connection,
    token: &str,
    id: &str,
    key: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let body = serde_json::json!({
        "deviceId": id,
        "authentication": {"type": "sas", "symmetricKey": {"primaryKey": key, "secondaryKey": key}},
    })
    .to_string();
    let answer = connection
        .send_json("PUT", &format!("/devices/{id}?{API}"), token, &body)
        .await?;
    if answer.status != 200 {
        return Err(format!(
            "PUT /devices/{id}: {} {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        )
        .into());
    }
    Ok(())
}

/// Round trips in milliseconds.
#[derive(Debug, Default)]
pub(crate) struct Latencies {
    pub(crate) local: Vec<f64>,
    pub(crate) cross: Vec<f64>,
}

/// The service token for `iothubowner`, valid for an hour.
pub(crate) fn service_token(key_base64: &str) -> Result<String, Box<dyn std::error::Error>> {
    let key = SymmetricKey::from_base64(key_base64)?;
    let token = sas::generate(HOST, &key, sas::unix_now() + 3600, Some("iothubowner"))?;
    Ok(token.as_str().to_owned())
}

/// Invokes `calls` methods through `local` (the devices' own node) and as many through `cross`
/// (the other node), alternating which goes first so that neither side gets the quieter
/// moments; every answer must be 200 with the payload echoed.
pub(crate) async fn measure(
    local: &mut Connection,
    cross: &mut Connection,
    token: &str,
    devices: &[String],
    calls: usize,
) -> Result<Latencies, Box<dyn std::error::Error>> {
    // Untimed: until both nodes route to the devices (node 1 learns them from node 0's
    // announcements), and the connections and caches are warm.
    for device in devices {
        for connection in [&mut *local, &mut *cross] {
            let deadline = Instant::now() + PATIENCE;
            while invoke(connection, token, device, 0, 5).await?.is_none() {
                if Instant::now() > deadline {
                    return Err(format!("{device} never answered a method (404 for 30 s)").into());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let mut latencies = Latencies::default();
    for i in 0..calls {
        let device = &devices[i % devices.len()];
        let order = if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_local in order {
            let connection = if is_local { &mut *local } else { &mut *cross };
            let began = Instant::now();
            invoke(connection, token, device, i as u64 + 1, 0)
                .await?
                .ok_or_else(|| format!("method {i} to {device} was not answered"))?;
            let ms = began.elapsed().as_secs_f64() * 1000.0;
            if is_local {
                latencies.local.push(ms);
            } else {
                latencies.cross.push(ms);
            }
        }
    }
    Ok(latencies)
}

/// One `POST /twins/{id}/methods`; `None` when the device is not (yet) reachable (404).
async fn invoke(
    connection: &mut Connection,
    token: &str,
    device: &str,
    n: u64,
    connect_timeout_s: u64,
) -> Result<Option<()>, Box<dyn std::error::Error>> {
    let body = format!(
        r#"{{"methodName":"echo","payload":{{"n":{n}}},"responseTimeoutInSeconds":10,"connectTimeoutInSeconds":{connect_timeout_s}}}"#
    );
    let answer = connection
        .send_json(
            "POST",
            &format!("/twins/{device}/methods?{API}"),
            token,
            &body,
        )
        .await?;
    match answer.status {
        200 => {
            let v: serde_json::Value = serde_json::from_slice(&answer.body)?;
            if v["status"] != 200 || v["payload"]["n"] != n {
                return Err(format!("unexpected method answer: {v}").into());
            }
            Ok(Some(()))
        }
        404 => {
            tracing::debug!(device, body = %String::from_utf8_lossy(&answer.body), "not reachable yet");
            Ok(None)
        }
        status => Err(format!(
            "method to {device}: {status} {}",
            String::from_utf8_lossy(&answer.body)
        )
        .into()),
    }
}

/// The value at quantile `q` (nearest rank) of `samples`, sorted in place.
pub(crate) fn percentile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples[i]
}
