//! Direct methods: a request from the back end, answered by the device within a timeout.

use std::time::Duration;

use bytes::Bytes;

/// A direct-method invocation as the back end makes it ([`Gateway::invoke_method`](crate::Gateway::invoke_method)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MethodCall {
    /// The method name (1 to 128 printable ASCII characters, no `/`).
    pub name: String,
    /// The request body: JSON text (empty means `null`).
    pub payload: Bytes,
    /// How long to wait for the device's answer once the request is handed to it.
    pub response_timeout: Duration,
    /// How long to wait for the device to be connected and listening for methods; zero means
    /// "answer [`DeviceOffline`](crate::Error::DeviceOffline) at once if it is not".
    pub connect_timeout: Duration,
}

impl MethodCall {
    /// A call of `name` with `payload`, a 30 s response timeout and no connect timeout.
    pub fn new(name: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        MethodCall {
            name: name.into(),
            payload: payload.into(),
            response_timeout: Duration::from_secs(30),
            connect_timeout: Duration::ZERO,
        }
    }
}

/// A direct-method request handed to a device session.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MethodRequest {
    /// Answer with a [`MethodResponse`] carrying this id (MQTT `$rid`).
    pub request_id: u64,
    /// The method name.
    pub name: String,
    /// The request body (JSON text).
    pub payload: Bytes,
}

impl MethodRequest {
    /// Request `request_id` of method `name` with `payload`, as a gateway hands it to a session
    /// ([`SessionEvent::Method`](crate::SessionEvent::Method)).
    pub fn new(request_id: u64, name: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        MethodRequest {
            request_id,
            name: name.into(),
            payload: payload.into(),
        }
    }
}

/// A device's answer to a method request, and what the back end gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MethodResponse {
    /// The request answered.
    pub request_id: u64,
    /// The device's status code (MQTT `$iothub/methods/res/{status}`).
    pub status: i32,
    /// The response body (JSON text).
    pub payload: Bytes,
}
