//! What a CoAP request asks for, read from its options: the method, the device address (Uri-Path),
//! the SAS token and the properties (Uri-Query), and the payload's Content-Format.
//!
//! Anything this adapter does not understand in a way that matters is refused with the code
//! RFC 7252 names for it: an unknown *critical* option (odd number) is 4.02 Bad Option
//! (§5.4.1) — Block1/Block2 among them, since block-wise transfer is not supported; unknown
//! elective options are ignored.

use coap_lite::{CoapOption, MessageClass, Packet, RequestType, ResponseType};

use crate::adapter::{Address, PropertyError, properties};

/// The Uri-Query name that carries the SAS token: `?sas=SharedAccessSignature sr=…` (in a URI,
/// percent-encoded as one query parameter).
pub const SAS_QUERY: &str = "sas";

/// The Uri-Query flag that turns a `DELETE …/devicebound/{lockToken}` into a reject.
pub const REJECT_QUERY: &str = "reject";

/// The elective option (from the experimental range, RFC 7252 §12.2) that carries a C2D
/// message's properties in a response: IoT Hub's URL-encoded property bag, the same text as an
/// MQTT C2D topic's last level, with the delivery's lock token as `iothub-locktoken`.
pub const PROPERTIES_OPTION: u16 = 65000;

/// Options this adapter reads or may safely ignore.
const UNDERSTOOD: [u16; 9] = [
    3,   // Uri-Host
    4,   // ETag (elective)
    6,   // Observe (elective): GET …/devicebound with 0 registers, 1 deregisters
    7,   // Uri-Port
    11,  // Uri-Path
    12,  // Content-Format
    15,  // Uri-Query
    17,  // Accept
    258, // No-Response (elective)
];

/// A request, checked.
#[derive(Debug)]
pub(super) struct Request {
    pub(super) method: RequestType,
    pub(super) address: Address,
    /// The SAS token, if the request carried one.
    pub(super) token: Option<String>,
    /// Every other Uri-Query pair, in order.
    pub(super) query: Vec<(String, String)>,
    /// The Content-Format option, when present.
    pub(super) content_format: Option<u16>,
    /// The Observe option (RFC 7641): 0 registers, 1 deregisters.
    pub(super) observe: Option<u32>,
}

/// Why a request is refused: the response code and a short diagnostic payload.
#[derive(Debug)]
pub(super) struct Refusal {
    pub(super) code: ResponseType,
    pub(super) diagnostic: String,
}

impl Refusal {
    pub(super) fn new(code: ResponseType, diagnostic: impl Into<String>) -> Self {
        Refusal {
            code,
            diagnostic: diagnostic.into(),
        }
    }
}

impl From<PropertyError> for Refusal {
    fn from(e: PropertyError) -> Self {
        Refusal::new(ResponseType::BadRequest, e.to_string())
    }
}

/// Reads a request packet.
pub(super) fn parse(packet: &Packet) -> Result<Request, Refusal> {
    let MessageClass::Request(method) = packet.header.code else {
        return Err(Refusal::new(ResponseType::BadRequest, "not a request"));
    };
    for (number, _) in packet.options() {
        let critical = number % 2 == 1;
        if critical && !UNDERSTOOD.contains(number) {
            return Err(Refusal::new(
                ResponseType::BadOption,
                format!("option {number} is not supported"),
            ));
        }
    }
    let path: Vec<&str> = match packet.get_option(CoapOption::UriPath) {
        None => Vec::new(),
        Some(segments) => segments
            .iter()
            .map(|s| std::str::from_utf8(s))
            .collect::<Result<_, _>>()
            .map_err(|_| Refusal::new(ResponseType::BadRequest, "Uri-Path is not UTF-8"))?,
    };
    let address = Address::parse(path.iter().copied())
        .map_err(|e| Refusal::new(ResponseType::NotFound, e.to_string()))?;
    let mut token = None;
    let mut rest = Vec::new();
    if let Some(queries) = packet.get_option(CoapOption::UriQuery) {
        for q in queries {
            let q = std::str::from_utf8(q)
                .map_err(|_| Refusal::new(ResponseType::BadRequest, "Uri-Query is not UTF-8"))?;
            match q.split_once('=') {
                Some((SAS_QUERY, value)) => {
                    if token.replace(value.to_owned()).is_some() {
                        return Err(Refusal::new(
                            ResponseType::BadRequest,
                            "more than one SAS token",
                        ));
                    }
                }
                _ => rest.push(q),
            }
        }
    }
    let query = properties::plain_pairs(rest)?;
    let content_format = match packet.get_first_option(CoapOption::ContentFormat) {
        None => None,
        Some(bytes) => Some(uint(bytes).ok_or_else(|| {
            Refusal::new(ResponseType::BadRequest, "Content-Format is not a uint")
        })?),
    };
    let observe = packet
        .get_observe_value()
        .transpose()
        .map_err(|_| Refusal::new(ResponseType::BadRequest, "Observe is not a uint"))?;
    Ok(Request {
        method,
        address,
        token,
        query,
        content_format,
        observe,
    })
}

/// A CoAP uint option of at most two bytes (RFC 7252 §3.2).
fn uint(bytes: &[u8]) -> Option<u16> {
    match bytes {
        [] => Some(0),
        [b] => Some(u16::from(*b)),
        [a, b] => Some(u16::from_be_bytes([*a, *b])),
        _ => None,
    }
}

/// The media type of a Content-Format (RFC 7252 §12.3 and the CoRE registry's common ones).
pub(super) fn media_type(format: u16) -> Option<&'static str> {
    Some(match format {
        0 => "text/plain; charset=utf-8",
        40 => "application/link-format",
        41 => "application/xml",
        42 => "application/octet-stream",
        47 => "application/exi",
        50 => "application/json",
        60 => "application/cbor",
        _ => return None,
    })
}
