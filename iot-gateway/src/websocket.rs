//! IoT Hub's WebSocket transport, shared by the MQTT and AMQP endpoints: path
//! `/$iothub/websocket`, a subprotocol naming what the messages carry (`mqtt`, `AMQPWSB10`), the
//! protocol's bytes in binary messages (a packet or frame may span messages and a message may
//! hold several).
//!
//! After the upgrade the WebSocket is bridged to an in-memory byte pipe of bounded size, and the
//! endpoint serves the pipe exactly as it serves TCP: a peer that stops reading still fills the
//! pipe and then the socket, so backpressure and write timeouts work the same way.
//!
//! The upgrade happens either here ([`accept`], on a listener of the endpoint's own) or in an
//! HTTP server that answered it already ([`upgraded`], the HTTPS listener dispatching by
//! subprotocol).

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderMap, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// The request path devices use.
pub(crate) const PATH: &str = "/$iothub/websocket";
/// The subprotocols MQTT is served under.
pub(crate) const MQTT: &[&str] = &["mqtt"];
/// The subprotocols AMQP 1.0 is served under: IoT Hub's and Service Bus' `AMQPWSB10` (the
/// binding's draft name, what Microsoft's SDKs ask for) and the name the OASIS AMQP WebSocket
/// Binding 1.0 settled on, `amqp` (what other AMQP clients ask for).
#[cfg(feature = "amqp")]
pub(crate) const AMQP: &[&str] = &["AMQPWSB10", "amqp"];
/// Bytes buffered in each direction of the bridge.
const PIPE_BYTES: usize = 64 * 1024;

/// The first of `served` the request's `Sec-WebSocket-Protocol` headers name (compared without
/// regard to case, as IoT Hub does), spelled as `served` spells it for the answer.
pub(crate) fn chosen_subprotocol(
    headers: &HeaderMap,
    served: &[&'static str],
) -> Option<&'static str> {
    let offered: Vec<&str> = headers
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    served.iter().copied().find(|protocol| {
        offered
            .iter()
            .any(|asked| asked.eq_ignore_ascii_case(protocol))
    })
}

/// Checks the upgrade request: the path (a query string is allowed) and one of the `served`
/// subprotocols, which the answer names.
// The error type is tungstenite's (its `Callback`'s), not ours to shrink.
#[allow(clippy::result_large_err)]
fn check_request(
    request: &Request,
    mut response: Response,
    served: &[&'static str],
) -> Result<Response, ErrorResponse> {
    let refuse = |status: StatusCode, why: String| {
        let mut answer = ErrorResponse::new(Some(why));
        *answer.status_mut() = status;
        answer
    };
    if request.uri().path() != PATH {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            format!("the WebSocket endpoint is {PATH}"),
        ));
    }
    let Some(protocol) = chosen_subprotocol(request.headers(), served) else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("the subprotocol must be one of {}", served.join(", ")),
        ));
    };
    response
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(protocol));
    Ok(response)
}

/// The limits of a WebSocket whose messages are at most `max_message` bytes.
fn config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// Performs the WebSocket upgrade on `stream` for one of the `served` subprotocols, with
/// messages bounded by `max_message` bytes.
pub(crate) async fn accept<S>(
    stream: S,
    served: &'static [&'static str],
    max_message: usize,
) -> Result<WebSocketStream<S>, tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The error type is tungstenite's (its `Callback`'s), not ours to shrink.
    #[allow(clippy::result_large_err)]
    let check = move |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        check_request(request, response, served)
    };
    tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config(max_message))).await
}

/// The WebSocket on `io`, a connection whose upgrade an HTTP server has answered already (its
/// next bytes are WebSocket frames), with messages bounded by `max_message` bytes.
pub(crate) async fn upgraded<S>(io: S, max_message: usize) -> WebSocketStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    WebSocketStream::from_raw_socket(io, Role::Server, Some(config(max_message))).await
}

/// Bridges `ws` to a byte pipe; returns the endpoint's end. The bridge ends when either side
/// closes, and then both see the end of the stream.
pub(crate) fn bridge<S>(ws: WebSocketStream<S>) -> (DuplexStream, impl Future<Output = ()> + Send)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (endpoint_end, bridge_end) = tokio::io::duplex(PIPE_BYTES);
    (endpoint_end, pump(ws, bridge_end))
}

async fn pump<S>(ws: WebSocketStream<S>, pipe: DuplexStream)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut sink, mut messages) = ws.split();
    let (mut from_endpoint, mut to_endpoint) = tokio::io::split(pipe);
    let inbound = async {
        while let Some(message) = messages.next().await {
            match message {
                Ok(Message::Binary(bytes)) => {
                    if to_endpoint.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                // Control frames are answered by tungstenite itself.
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                // Both bindings carry their bytes in binary messages only (MQTT 3.1.1 §6, the
                // AMQP WebSocket binding §2.3); anything else ends the connection.
                Ok(Message::Text(_) | Message::Close(_)) | Err(_) => break,
            }
        }
        let _ = to_endpoint.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from_endpoint.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    };
    tokio::select! {
        () = inbound => {}
        () = outbound => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, protocol: Option<&str>) -> Request {
        let mut builder = Request::builder().uri(path);
        if let Some(p) = protocol {
            builder = builder.header("Sec-WebSocket-Protocol", p);
        }
        builder.body(()).expect("request")
    }

    #[test]
    fn upgrade_rules() {
        let ok = check_request(
            &request(
                "/$iothub/websocket?iothub-no-client-cert=true",
                Some("mqtt"),
            ),
            Response::default(),
            MQTT,
        )
        .expect("accepted");
        assert_eq!(ok.headers()["Sec-WebSocket-Protocol"], "mqtt");
        assert!(
            check_request(
                &request("/$iothub/websocket", Some("wamp, MQTT")),
                Response::default(),
                MQTT,
            )
            .is_ok()
        );
        let refused = check_request(&request("/mqtt", Some("mqtt")), Response::default(), MQTT)
            .expect_err("path");
        assert_eq!(refused.status(), StatusCode::NOT_FOUND);
        let refused = check_request(
            &request("/$iothub/websocket", None),
            Response::default(),
            MQTT,
        )
        .expect_err("subprotocol");
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    }

    #[cfg(feature = "amqp")]
    #[test]
    fn amqp_answers_its_names_as_asked_and_not_mqtt() {
        // Each endpoint takes its own subprotocols only.
        let refused = check_request(
            &request("/$iothub/websocket", Some("mqtt")),
            Response::default(),
            AMQP,
        )
        .expect_err("mqtt on the AMQP endpoint");
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        let answer = |asked: &str| {
            let ok = check_request(
                &request("/$iothub/websocket", Some(asked)),
                Response::default(),
                AMQP,
            )
            .expect("accepted");
            ok.headers()["Sec-WebSocket-Protocol"]
                .to_str()
                .expect("ascii")
                .to_string()
        };
        assert_eq!(answer("AMQPWSB10"), "AMQPWSB10");
        assert_eq!(answer("amqpwsb10"), "AMQPWSB10");
        assert_eq!(answer("amqp"), "amqp");
        // IoT Hub's name wins when a client offers both.
        assert_eq!(answer("amqp, AMQPWSB10"), "AMQPWSB10");
    }
}
