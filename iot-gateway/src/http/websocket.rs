//! IoT Hub's port 443 carries three things: the HTTPS REST API, MQTT over WebSocket and AMQP
//! over WebSocket, the last two on the path `/$iothub/websocket` and told apart by the
//! subprotocol the client asks for (`mqtt`, `AMQPWSB10`). [`WebSocketUpgrades`] adds that path
//! to an HTTP router: it answers the upgrade itself (`101 Switching Protocols`, naming the
//! subprotocol) and hands the upgraded connection to the endpoint that serves the subprotocol.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::server::PeerAddr;
use crate::mqtt::MqttServer;
use crate::mqtt::client_chain::ClientChain;
use crate::websocket;

/// The endpoints reachable by a WebSocket upgrade on `/$iothub/websocket`, by subprotocol:
/// MQTT ([`mqtt`](Self::mqtt), subprotocol `mqtt`) and, with feature `amqp`, AMQP 1.0
/// ([`amqp`](Self::amqp), subprotocols `AMQPWSB10` and `amqp`). Other requests to the router
/// are served as before.
///
/// The upgraded connection leaves the HTTP server (and its connection limit) and is counted by
/// the endpoint instead; the endpoint's shutdown closes it. The HTTP server must serve
/// connections with upgrades on ([`HttpServer`](super::HttpServer) does).
///
/// ```no_run
/// # fn run(state: iot_gateway::http::HttpState, mqtt: iot_gateway::mqtt::MqttServer, amqp: iot_gateway::amqp::AmqpServer) {
/// use iot_gateway::http::{HttpConfig, HttpServer, WebSocketUpgrades};
///
/// let router = WebSocketUpgrades::new()
///     .mqtt(mqtt)
///     .amqp(amqp)
///     .add_to(iot_gateway::http::router(state));
/// let https = HttpServer::new(router, HttpConfig::default());
/// // https.listen_tls("0.0.0.0:443".parse()?, tls): REST, MQTT and AMQP over WebSocket.
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct WebSocketUpgrades {
    mqtt: Option<MqttServer>,
    #[cfg(feature = "amqp")]
    amqp: Option<crate::amqp::AmqpServer>,
}

impl WebSocketUpgrades {
    /// No endpoints yet: every upgrade is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Upgrades asking for the subprotocol `mqtt` go to `server`
    /// ([`MqttServer::serve_upgraded`], with the TLS client certificate for X.509 devices).
    pub fn mqtt(mut self, server: MqttServer) -> Self {
        self.mqtt = Some(server);
        self
    }

    /// Upgrades asking for the subprotocol `AMQPWSB10` (or `amqp`) go to `server`
    /// ([`AmqpServer::serve_upgraded`](crate::amqp::AmqpServer::serve_upgraded)).
    #[cfg(feature = "amqp")]
    pub fn amqp(mut self, server: crate::amqp::AmqpServer) -> Self {
        self.amqp = Some(server);
        self
    }

    /// `router` with the path `/$iothub/websocket` answered here. The route is added after the
    /// router's own layers (the `api-version` check and the like), which do not apply to it:
    /// devices authenticate inside the protocol, as on the endpoints' own listeners.
    pub fn add_to(self, router: Router) -> Router {
        router.route(websocket::PATH, any(upgrade).with_state(Arc::new(self)))
    }

    /// The endpoint for the first subprotocol asked for that one of them serves.
    fn chosen(&self, headers: &HeaderMap) -> Option<Endpoint> {
        let mut served: Vec<&'static str> = Vec::new();
        if self.mqtt.is_some() {
            served.extend_from_slice(websocket::MQTT);
        }
        #[cfg(feature = "amqp")]
        if self.amqp.is_some() {
            served.extend_from_slice(websocket::AMQP);
        }
        let protocol = websocket::chosen_subprotocol(headers, &served)?;
        if websocket::MQTT.contains(&protocol) {
            return self.mqtt.clone().map(|s| Endpoint::Mqtt(protocol, s));
        }
        #[cfg(feature = "amqp")]
        if websocket::AMQP.contains(&protocol) {
            return self.amqp.clone().map(|s| Endpoint::Amqp(protocol, s));
        }
        None
    }
}

/// Where an upgrade goes, with the subprotocol named in the answer.
enum Endpoint {
    Mqtt(&'static str, MqttServer),
    #[cfg(feature = "amqp")]
    Amqp(&'static str, crate::amqp::AmqpServer),
}

impl Endpoint {
    fn protocol(&self) -> &'static str {
        match *self {
            Endpoint::Mqtt(protocol, _) => protocol,
            #[cfg(feature = "amqp")]
            Endpoint::Amqp(protocol, _) => protocol,
        }
    }
}

/// A plain-text refusal (the WebSocket clients show the status, not a JSON body).
fn refuse(status: StatusCode, why: &'static str) -> Response {
    (status, why).into_response()
}

/// Whether `name`'s comma-separated values include `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(token))
}

/// Answers an upgrade request (RFC 6455 §4.2) and serves the connection once hyper hands it
/// over.
async fn upgrade(State(endpoints): State<Arc<WebSocketUpgrades>>, request: Request) -> Response {
    let headers = request.headers();
    if request.method() != Method::GET
        || !has_token(headers, header::UPGRADE, "websocket")
        || !has_token(headers, header::CONNECTION, "upgrade")
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            "this path takes WebSocket upgrades only",
        );
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        let mut answer = refuse(
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket version 13 is served",
        );
        answer.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return answer;
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return refuse(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing");
    };
    let accept = derive_accept_key(key.as_bytes());
    let Some(endpoint) = endpoints.chosen(headers) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "no endpoint here serves the subprotocols asked for",
        );
    };
    let peer = request
        .extensions()
        .get::<PeerAddr>()
        .map_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), |p| p.0);
    let chain = request.extensions().get::<ClientChain>().cloned();
    let protocol = endpoint.protocol();
    let on_upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        let io = match on_upgrade.await {
            Ok(upgraded) => TokioIo::new(upgraded),
            Err(e) => {
                tracing::debug!(%peer, error = %e, "WebSocket upgrade failed");
                return;
            }
        };
        match endpoint {
            Endpoint::Mqtt(_, server) => server.serve_upgraded_with(io, peer, chain).await,
            #[cfg(feature = "amqp")]
            Endpoint::Amqp(_, server) => server.serve_upgraded(io, peer).await,
        }
    });
    let mut answer = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let answer_headers = answer.headers_mut();
    answer_headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    answer_headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        answer_headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    answer_headers.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(protocol),
    );
    answer
}
