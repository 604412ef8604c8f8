//! MQTT over WebSocket, as IoT Hub serves it: path `/$iothub/websocket`, subprotocol `mqtt`, MQTT
//! packets carried in binary messages (a packet may span messages and a message may hold several).
//!
//! After the upgrade the WebSocket is bridged to an in-memory byte pipe of bounded size, and the
//! session runs on the pipe exactly as on TCP: a device that stops reading still fills the pipe
//! and then the socket, so backpressure and the write timeout work the same way.

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The request path devices use.
pub(crate) const PATH: &str = "/$iothub/websocket";
/// The subprotocol devices ask for.
const SUBPROTOCOL: &str = "mqtt";
/// Bytes buffered in each direction of the bridge.
const PIPE_BYTES: usize = 64 * 1024;

/// Checks the upgrade request: the path (a query string is allowed) and the `mqtt` subprotocol,
/// which the answer names.
// The signature is tungstenite's `Callback`; its error type is not ours to shrink.
#[allow(clippy::result_large_err)]
fn check_request(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    let refuse = |status: StatusCode, why: &str| {
        let mut answer = ErrorResponse::new(Some(why.to_string()));
        *answer.status_mut() = status;
        answer
    };
    if request.uri().path() != PATH {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            "MQTT is served on /$iothub/websocket",
        ));
    }
    let asks_for_mqtt = request
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|protocol| protocol.trim().eq_ignore_ascii_case(SUBPROTOCOL));
    if !asks_for_mqtt {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "the subprotocol must be mqtt",
        ));
    }
    response.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    Ok(response)
}

/// Performs the WebSocket upgrade on `stream`, with messages bounded by `max_message` bytes.
pub(crate) async fn accept<S>(
    stream: S,
    max_message: usize,
) -> Result<WebSocketStream<S>, tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    tokio_tungstenite::accept_hdr_async_with_config(stream, check_request, Some(config)).await
}

/// Bridges `ws` to a byte pipe; returns the session's end. The bridge ends when either side
/// closes, and then both see the end of the stream.
pub(crate) fn bridge<S>(ws: WebSocketStream<S>) -> (DuplexStream, impl Future<Output = ()> + Send)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (session_end, bridge_end) = tokio::io::duplex(PIPE_BYTES);
    (session_end, pump(ws, bridge_end))
}

async fn pump<S>(ws: WebSocketStream<S>, pipe: DuplexStream)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut sink, mut messages) = ws.split();
    let (mut from_session, mut to_session) = tokio::io::split(pipe);
    let inbound = async {
        while let Some(message) = messages.next().await {
            match message {
                Ok(Message::Binary(bytes)) => {
                    if to_session.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                // Control frames are answered by tungstenite itself.
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                // MQTT rides in binary messages only (MQTT 3.1.1 §6); anything else ends it.
                Ok(Message::Text(_) | Message::Close(_)) | Err(_) => break,
            }
        }
        let _ = to_session.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from_session.read(&mut buf).await {
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
        )
        .expect("accepted");
        assert_eq!(ok.headers()["Sec-WebSocket-Protocol"], "mqtt");
        assert!(
            check_request(
                &request("/$iothub/websocket", Some("wamp, MQTT")),
                Response::default()
            )
            .is_ok()
        );
        let refused =
            check_request(&request("/mqtt", Some("mqtt")), Response::default()).expect_err("path");
        assert_eq!(refused.status(), StatusCode::NOT_FOUND);
        let refused = check_request(&request("/$iothub/websocket", None), Response::default())
            .expect_err("subprotocol");
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    }
}
