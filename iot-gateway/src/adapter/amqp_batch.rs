//! IoT Hub's batched AMQP message: message format `0x80013700` on the `transfer`, and a body of
//! `data` sections each holding one whole encoded AMQP message (header, annotations,
//! properties, application properties, body). Microsoft's uAMQP (under the C SDK and Python's
//! uamqp) sends telemetry batches this way. An endpoint decodes those inner messages itself,
//! so the frame guard checks their encoding as it checks the outer message's.

use super::amqp_encoding::{AmqpEncodingError, amqp_value_end, check_amqp_values};

/// The message format of a batched message (IoT Hub's and Event Hubs' `0x80013700`).
pub const AMQP_BATCH_FORMAT: u32 = 0x8001_3700;

/// The `data` section's descriptor code (`amqp:data:binary`).
const DATA_CODE: u64 = 0x75;

/// Checks, in an encoded message that has passed [`check_amqp_values`], that every `data`
/// section's contents are a sequence of well-formed AMQP values (an encoded message), nested at
/// most `max_depth` deep. Other sections are left alone: whether a batch may hold them is the
/// endpoint's decision, not an encoding question.
///
/// ```
/// use iot_gateway::adapter::{DEFAULT_MAX_DEPTH, check_amqp_batch};
///
/// // One data section holding a message whose data section holds "hi".
/// let inner = [0x00, 0x53, 0x75, 0xa0, 2, b'h', b'i'];
/// let mut batch = vec![0x00, 0x53, 0x75, 0xa0, inner.len() as u8];
/// batch.extend_from_slice(&inner);
/// assert!(check_amqp_batch(&batch, DEFAULT_MAX_DEPTH).is_ok());
/// // An inner message whose binary declares 3.5 GB.
/// let hostile = [0x00, 0x53, 0x75, 0xa0, 9, 0x00, 0x53, 0x75, 0xb0, 0xd1, 0x02, 0x10, 0xff, 0x0a];
/// assert!(check_amqp_batch(&hostile, DEFAULT_MAX_DEPTH).is_err());
/// ```
pub fn check_amqp_batch(message: &[u8], max_depth: usize) -> Result<(), AmqpEncodingError> {
    let mut pos = 0;
    while pos < message.len() {
        let end = pos + amqp_value_end(&message[pos..], max_depth)?;
        if let Some(contents) = data_contents(&message[pos..end]) {
            check_amqp_values(contents, max_depth)
                // Offsets in the whole message.
                .map_err(|e| shift(e, pos + (end - pos - contents.len())))?;
        }
        pos = end;
    }
    Ok(())
}

/// The bytes of a `data` section (an already checked value), or `None` for any other value.
fn data_contents(section: &[u8]) -> Option<&[u8]> {
    let (code, value) = match section {
        [0x00, 0x53, code, value @ ..] => (u64::from(*code), value),
        [0x00, 0x80, a, b, c, d, e, f, g, h, value @ ..] => {
            (u64::from_be_bytes([*a, *b, *c, *d, *e, *f, *g, *h]), value)
        }
        [0x00, 0xa3, n, rest @ ..] => {
            let n = usize::from(*n);
            let name = rest.get(..n)?;
            (
                if name == b"amqp:data:binary" {
                    DATA_CODE
                } else {
                    0
                },
                &rest[n..],
            )
        }
        _ => return None,
    };
    if code != DATA_CODE {
        return None;
    }
    match value {
        [0xa0, _, contents @ ..] => Some(contents),
        [0xb0, _, _, _, _, contents @ ..] => Some(contents),
        _ => None,
    }
}

/// `e` with its offset moved by `by`.
fn shift(e: AmqpEncodingError, by: usize) -> AmqpEncodingError {
    use AmqpEncodingError as E;
    match e {
        E::Truncated { at } => E::Truncated { at: at + by },
        E::UnknownCode { at, code } => E::UnknownCode { at: at + by, code },
        E::BadCount { at } => E::BadCount { at: at + by },
        E::SizeMismatch { at } => E::SizeMismatch { at: at + by },
        E::TooDeep { at } => E::TooDeep { at: at + by },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::DEFAULT_MAX_DEPTH as D;

    /// A data section around `bytes` (vbin8 or vbin32 by size).
    fn data(bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![0x00, 0x53, 0x75];
        if bytes.len() < 256 {
            out.extend_from_slice(&[0xa0, bytes.len() as u8]);
        } else {
            out.push(0xb0);
            out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        }
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn every_data_section_is_walked_small_or_large() {
        let good = data(b"payload");
        let mut batch = vec![0x00, 0x53, 0x73, 0x45]; // an empty properties section first
        batch.extend(data(&good));
        batch.extend(data(&data(&[1; 300])));
        assert_eq!(check_amqp_values(&batch, D), Ok(()));
        assert_eq!(check_amqp_batch(&batch, D), Ok(()));
        // The second inner message declares a string of 3.5 GB.
        batch.extend(data(&[0xb1, 0xd1, 0x02, 0x10, 0xff, 0x0a]));
        assert_eq!(check_amqp_values(&batch, D), Ok(()));
        assert!(matches!(
            check_amqp_batch(&batch, D),
            Err(AmqpEncodingError::Truncated { at }) if at == batch.len() - 6
        ));
    }

    #[test]
    fn data_sections_named_by_symbol_or_ulong_are_walked_too() {
        let bad = [0x70, 0, 0];
        let mut by_name = vec![0x00, 0xa3, 16];
        by_name.extend_from_slice(b"amqp:data:binary");
        by_name.extend_from_slice(&[0xa0, 3]);
        by_name.extend_from_slice(&bad);
        assert!(check_amqp_batch(&by_name, D).is_err());
        let mut by_ulong = vec![0x00, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x75, 0xa0, 3];
        by_ulong.extend_from_slice(&bad);
        assert!(check_amqp_batch(&by_ulong, D).is_err());
        // The same bytes in an amqp-value section are a binary, not a message.
        let value = [0x00, 0x53, 0x77, 0xa0, 3, 0x70, 0, 0];
        assert_eq!(check_amqp_batch(&value, D), Ok(()));
    }

    #[test]
    fn inner_nesting_is_bounded() {
        let deep = vec![0x00; 100];
        assert!(matches!(
            check_amqp_batch(&data(&deep), D),
            Err(AmqpEncodingError::TooDeep { .. })
        ));
    }
}
