//! A walker over AMQP 1.0's type encoding (part 1, section 1.6) that checks, without decoding
//! or allocating per value, that every declared size and count fits in the bytes present.
//!
//! Why: serde_amqp (under fe2o3-amqp) reads frames and messages through its `IoReader`, whose
//! `fill_buffer` resizes its buffer to a string's, binary's or symbol's declared length *before*
//! reading the bytes, and whose `read_bytes` does the same for whole encoded values. A 4-byte
//! length of `0xd10210ff` in a 16-byte frame thus asks for 3.5 GB. Checking the encoding first,
//! on the complete bytes, bounds every later allocation by the size of what the peer sent.
//!
//! The walk is iterative (an explicit stack bounded by the nesting limit), touches each byte at
//! most a constant number of times and skips arrays of fixed-width elements in one step, so a
//! hostile input costs time linear in its length and no stack.

use std::fmt;

/// The nesting depth (compound values, arrays, described values) the endpoints accept by
/// default: performatives nest three or four levels, messages' application properties a few
/// more.
pub const DEFAULT_MAX_DEPTH: usize = 32;

/// Why an encoding was refused; `at` is the byte offset in the checked slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AmqpEncodingError {
    /// A value runs past the end of the bytes, or past the end of the value that contains it
    /// (a declared size larger than what is left).
    Truncated {
        /// Where the value that does not fit starts.
        at: usize,
    },
    /// A format code AMQP 1.0 does not define.
    UnknownCode {
        /// Where the format code is.
        at: usize,
        /// The format code.
        code: u8,
    },
    /// A list's, map's or array's element count that its declared size could not hold (or an
    /// odd count for a map), or a size smaller than its own count field.
    BadCount {
        /// Where the compound value or array starts.
        at: usize,
    },
    /// A compound value or array whose elements end before its declared size does.
    SizeMismatch {
        /// Where the compound value or array starts.
        at: usize,
    },
    /// Nesting deeper than the limit.
    TooDeep {
        /// Where the value that would go one level deeper starts.
        at: usize,
    },
}

impl fmt::Display for AmqpEncodingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AmqpEncodingError::Truncated { at } => {
                write!(
                    f,
                    "the AMQP value at byte {at} declares more bytes than are left"
                )
            }
            AmqpEncodingError::UnknownCode { at, code } => {
                write!(f, "unknown AMQP format code {code:#04x} at byte {at}")
            }
            AmqpEncodingError::BadCount { at } => {
                write!(
                    f,
                    "the AMQP compound value at byte {at} declares an impossible count"
                )
            }
            AmqpEncodingError::SizeMismatch { at } => write!(
                f,
                "the AMQP compound value at byte {at} ends before its declared size"
            ),
            AmqpEncodingError::TooDeep { at } => {
                write!(f, "the AMQP value at byte {at} nests too deeply")
            }
        }
    }
}

impl std::error::Error for AmqpEncodingError {}

/// How a format code's value is laid out after the code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// A fixed number of bytes.
    Fixed(usize),
    /// A size field of this width, then that many bytes (binary, string, symbol).
    Variable(usize),
    /// A size field of this width, then a count field of the same width and the elements
    /// (list, map; `map` says whether the count must be even).
    Compound { width: usize, map: bool },
    /// A size field, a count field, one element constructor, then the elements without
    /// their constructors.
    Array(usize),
    /// `0x00`: a descriptor value, then the described value.
    Described,
}

/// The layout of `code`, for the codes section 1.6 defines.
fn layout(code: u8) -> Option<Layout> {
    use Layout::*;
    Some(match code {
        0x00 => Described,
        // null, true, false, uint0, ulong0, list0
        0x40..=0x45 => Fixed(0),
        // ubyte, byte, smalluint, smallulong, smallint, smalllong, boolean
        0x50..=0x56 => Fixed(1),
        0x60 | 0x61 => Fixed(2),
        // uint, int, float, char, decimal32
        0x70..=0x74 => Fixed(4),
        // ulong, long, double, timestamp, decimal64
        0x80..=0x84 => Fixed(8),
        0x94 | 0x98 => Fixed(16),
        0xa0 | 0xa1 | 0xa3 => Variable(1),
        0xb0 | 0xb1 | 0xb3 => Variable(4),
        0xc0 => Compound {
            width: 1,
            map: false,
        },
        0xc1 => Compound {
            width: 1,
            map: true,
        },
        0xd0 => Compound {
            width: 4,
            map: false,
        },
        0xd1 => Compound {
            width: 4,
            map: true,
        },
        0xe0 => Array(1),
        0xf0 => Array(4),
        _ => return None,
    })
}

/// One open container during the walk.
#[derive(Clone, Copy, Debug)]
struct Level {
    /// Where its contents end (the end of the slice at the top).
    end: usize,
    /// Values still to come.
    left: u64,
    /// For array elements: the shared format code, which the elements do not repeat.
    element: Option<u8>,
    /// Whether the values must end exactly at `end` (sized containers).
    exact: bool,
    /// Where the container starts, for errors.
    start: usize,
}

/// A size or count field of `width` (1 or 4) bytes at `pos`, if it lies before `end`.
fn field(bytes: &[u8], pos: usize, width: usize, end: usize) -> Option<u64> {
    let field = bytes.get(pos..pos.checked_add(width)?.min(end))?;
    match *field {
        [b] => Some(u64::from(b)),
        [a, b, c, d] => Some(u64::from(u32::from_be_bytes([a, b, c, d]))),
        _ => None,
    }
}

/// Checks the encoding of the value at `bytes[at..]` that must end by `end`; returns where it
/// ends.
fn value_end(
    bytes: &[u8],
    at: usize,
    end: usize,
    max_depth: usize,
) -> Result<usize, AmqpEncodingError> {
    let end = end.min(bytes.len());
    let mut stack: Vec<Level> = Vec::with_capacity(4);
    stack.push(Level {
        end,
        left: 1,
        element: None,
        exact: false,
        start: at,
    });
    let mut pos = at;
    while let Some(top) = stack.last_mut() {
        if top.left == 0 {
            if top.exact && pos != top.end {
                return Err(AmqpEncodingError::SizeMismatch { at: top.start });
            }
            stack.pop();
            continue;
        }
        top.left -= 1;
        let level = *top;
        let start = pos;
        let code = match level.element {
            Some(code) => code,
            None => {
                if pos >= level.end {
                    return Err(AmqpEncodingError::Truncated { at: start });
                }
                pos += 1;
                bytes[start]
            }
        };
        let Some(kind) = layout(code) else {
            return Err(AmqpEncodingError::UnknownCode { at: start, code });
        };
        let remaining = level.end - pos;
        match kind {
            Layout::Fixed(width) => {
                if width > remaining {
                    return Err(AmqpEncodingError::Truncated { at: start });
                }
                pos += width;
            }
            Layout::Variable(width) => {
                let size = field(bytes, pos, width, level.end)
                    .ok_or(AmqpEncodingError::Truncated { at: start })?;
                if (width as u64).saturating_add(size) > remaining as u64 {
                    return Err(AmqpEncodingError::Truncated { at: start });
                }
                pos += width + size as usize;
            }
            Layout::Described => {
                if stack.len() >= max_depth {
                    return Err(AmqpEncodingError::TooDeep { at: start });
                }
                // The descriptor and the value, inside whatever holds this one.
                stack.push(Level {
                    end: level.end,
                    left: 2,
                    element: None,
                    exact: false,
                    start,
                });
            }
            Layout::Compound { width, map } => {
                let (contents, count) = sized(bytes, pos, width, level.end, start)?;
                pos += 2 * width;
                // Each element takes at least its one-byte constructor.
                if count > contents.saturating_sub(width as u64) || (map && count % 2 == 1) {
                    return Err(AmqpEncodingError::BadCount { at: start });
                }
                if stack.len() >= max_depth {
                    return Err(AmqpEncodingError::TooDeep { at: start });
                }
                stack.push(Level {
                    end: pos + (contents as usize - width),
                    left: count,
                    element: None,
                    exact: true,
                    start,
                });
            }
            Layout::Array(width) => {
                let (contents, count) = sized(bytes, pos, width, level.end, start)?;
                pos += 2 * width;
                let array_end = pos + (contents as usize - width);
                if count == 0 {
                    // serde_amqp reads no constructor for an empty array: anything after the
                    // count would be read as the next value, so there must be nothing.
                    if pos != array_end {
                        return Err(AmqpEncodingError::SizeMismatch { at: start });
                    }
                    continue;
                }
                let element = array_constructor(bytes, &mut pos, array_end, start)?;
                let left = (array_end - pos) as u64;
                let elements = match layout(element) {
                    // Fixed-width elements are skipped in one step; zero-width ones may not
                    // outnumber the bytes either (no count can be larger than its size).
                    Some(Layout::Fixed(w)) => {
                        if (w == 0 && count > contents) || count.saturating_mul(w as u64) > left {
                            return Err(AmqpEncodingError::BadCount { at: start });
                        }
                        pos += (count * w as u64) as usize;
                        0
                    }
                    Some(
                        Layout::Variable(w) | Layout::Compound { width: w, .. } | Layout::Array(w),
                    ) => {
                        if count.saturating_mul(w as u64) > left {
                            return Err(AmqpEncodingError::BadCount { at: start });
                        }
                        count
                    }
                    Some(Layout::Described) | None => {
                        return Err(AmqpEncodingError::UnknownCode {
                            at: start,
                            code: element,
                        });
                    }
                };
                if stack.len() >= max_depth {
                    return Err(AmqpEncodingError::TooDeep { at: start });
                }
                stack.push(Level {
                    end: array_end,
                    left: elements,
                    element: Some(element),
                    exact: true,
                    start,
                });
            }
        }
    }
    Ok(pos)
}

/// The size and count fields of a compound value or array at `pos` (after its code at
/// `start`): the size, checked to fit before `end` and to hold the count field, and the count.
fn sized(
    bytes: &[u8],
    pos: usize,
    width: usize,
    end: usize,
    start: usize,
) -> Result<(u64, u64), AmqpEncodingError> {
    let size = field(bytes, pos, width, end).ok_or(AmqpEncodingError::Truncated { at: start })?;
    if (width as u64).saturating_add(size) > (end - pos) as u64 {
        return Err(AmqpEncodingError::Truncated { at: start });
    }
    if size < width as u64 {
        return Err(AmqpEncodingError::BadCount { at: start });
    }
    let count =
        field(bytes, pos + width, width, end).ok_or(AmqpEncodingError::Truncated { at: start })?;
    Ok((size, count))
}

/// An array's element constructor at `*pos`: a format code. Described constructors (`0x00`,
/// a descriptor, a code) are refused: serde_amqp reads `0x00` as the element code and then a
/// descriptor before every element, so it and this walker would disagree about where the
/// elements start.
fn array_constructor(
    bytes: &[u8],
    pos: &mut usize,
    end: usize,
    start: usize,
) -> Result<u8, AmqpEncodingError> {
    let at = *pos;
    let code = *bytes
        .get(at)
        .filter(|_| at < end)
        .ok_or(AmqpEncodingError::Truncated { at: start })?;
    if code == 0x00 {
        return Err(AmqpEncodingError::UnknownCode { at, code });
    }
    *pos += 1;
    Ok(code)
}

/// Checks that `bytes` holds one encoded AMQP value at its start and returns where that value
/// ends (the rest of `bytes` is not looked at).
///
/// ```
/// use iot_gateway::adapter::{amqp_value_end, DEFAULT_MAX_DEPTH};
///
/// // str8 "hi", then one more byte.
/// assert_eq!(amqp_value_end(&[0xa1, 2, b'h', b'i', 0x40], DEFAULT_MAX_DEPTH), Ok(4));
/// // str32 declaring 3.5 GB in 6 bytes.
/// assert!(amqp_value_end(&[0xb1, 0xd1, 0x02, 0x10, 0xff, 0x0a], DEFAULT_MAX_DEPTH).is_err());
/// ```
pub fn amqp_value_end(bytes: &[u8], max_depth: usize) -> Result<usize, AmqpEncodingError> {
    value_end(bytes, 0, bytes.len(), max_depth)
}

/// Checks that `bytes` is a sequence of complete AMQP values (a frame body, a message's
/// sections), each size and count within the bytes that hold it and nesting at most
/// `max_depth` deep.
///
/// ```
/// use iot_gateway::adapter::{check_amqp_values, DEFAULT_MAX_DEPTH};
///
/// // A described list (descriptor smallulong 0x10, the `open` performative) with one string.
/// let open = [0x00, 0x53, 0x10, 0xc0, 0x04, 0x01, 0xa1, 0x01, b'c'];
/// assert!(check_amqp_values(&open, DEFAULT_MAX_DEPTH).is_ok());
/// // The same list claiming 200 elements in 4 bytes.
/// let inflated = [0x00, 0x53, 0x10, 0xc0, 0x04, 200, 0xa1, 0x01, b'c'];
/// assert!(check_amqp_values(&inflated, DEFAULT_MAX_DEPTH).is_err());
/// ```
pub fn check_amqp_values(bytes: &[u8], max_depth: usize) -> Result<(), AmqpEncodingError> {
    let mut pos = 0;
    while pos < bytes.len() {
        pos = value_end(bytes, pos, bytes.len(), max_depth)?;
    }
    Ok(())
}

/// The start and end of each element of the list at `bytes[at..end]` (list0, list8 or list32),
/// up to `want` of them; `None` if it is no list. The list's encoding must have been checked.
pub(crate) fn list_items(
    bytes: &[u8],
    at: usize,
    end: usize,
    want: usize,
) -> Option<Vec<(usize, usize)>> {
    let (width, count) = match bytes.get(at)? {
        0x45 => return Some(Vec::new()),
        0xc0 => (1, field(bytes, at + 2, 1, end)?),
        0xd0 => (4, field(bytes, at + 5, 4, end)?),
        _ => return None,
    };
    let mut pos = at + 1 + 2 * width;
    let mut items = Vec::with_capacity(want.min(count as usize));
    for _ in 0..count.min(want as u64) {
        let next = value_end(bytes, pos, end, usize::MAX).ok()?;
        items.push((pos, next));
        pos = next;
    }
    Some(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: usize = DEFAULT_MAX_DEPTH;

    #[test]
    fn fixed_and_variable_values() {
        assert_eq!(
            check_amqp_values(&[0x40, 0x41, 0x50, 7, 0x70, 0, 0, 0, 1], D),
            Ok(())
        );
        assert_eq!(check_amqp_values(&[0xa0, 0], D), Ok(()));
        assert_eq!(check_amqp_values(&[0xb0, 0, 0, 0, 1, 9], D), Ok(()));
        assert_eq!(
            check_amqp_values(&[0x70, 0, 0], D),
            Err(AmqpEncodingError::Truncated { at: 0 })
        );
        assert_eq!(
            check_amqp_values(&[0xa1, 3, b'a'], D),
            Err(AmqpEncodingError::Truncated { at: 0 })
        );
        assert_eq!(
            check_amqp_values(&[0x40, 0x33], D),
            Err(AmqpEncodingError::UnknownCode { at: 1, code: 0x33 })
        );
    }

    #[test]
    fn the_fuzz_finding_is_refused() {
        // The body of fuzz/findings/amqp_decode/oom-8793…: str32 declaring 0xd10210ff bytes.
        assert_eq!(
            check_amqp_values(&[0xb1, 0xd1, 0x02, 0x10, 0xff, 0x0a], D),
            Err(AmqpEncodingError::Truncated { at: 0 })
        );
    }

    #[test]
    fn compound_sizes_and_counts() {
        // list8 of two smalluints.
        assert_eq!(
            check_amqp_values(&[0xc0, 5, 2, 0x52, 1, 0x52, 2], D),
            Ok(())
        );
        // Size larger than what is left.
        assert_eq!(
            check_amqp_values(&[0xc0, 9, 2, 0x52, 1, 0x52, 2], D),
            Err(AmqpEncodingError::Truncated { at: 0 })
        );
        // Count larger than the size could hold.
        assert_eq!(
            check_amqp_values(&[0xc0, 5, 5, 0x52, 1, 0x52, 2], D),
            Err(AmqpEncodingError::BadCount { at: 0 })
        );
        // Elements end before the declared size: the rest would be read as something else.
        assert_eq!(
            check_amqp_values(&[0xc0, 5, 1, 0x52, 1, 0x52, 2], D),
            Err(AmqpEncodingError::SizeMismatch { at: 0 })
        );
        // An odd map.
        assert_eq!(
            check_amqp_values(&[0xc1, 2, 1, 0x40], D),
            Err(AmqpEncodingError::BadCount { at: 0 })
        );
        // list32 with a count of 2^32 - 1 in a few bytes.
        assert_eq!(
            check_amqp_values(&[0xd0, 0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0x40], D),
            Err(AmqpEncodingError::BadCount { at: 0 })
        );
    }

    #[test]
    fn arrays() {
        // array8 of three ints.
        let ints = [0xe0, 14, 3, 0x71, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        assert_eq!(check_amqp_values(&ints, D), Ok(()));
        // One int claimed too many.
        let mut more = ints;
        more[2] = 4;
        assert_eq!(
            check_amqp_values(&more, D),
            Err(AmqpEncodingError::BadCount { at: 0 })
        );
        // array8 of two sym8.
        let syms = [0xe0, 6, 2, 0xa3, 1, b'a', 1, b'b'];
        assert_eq!(check_amqp_values(&syms, D), Ok(()));
        // The same, described by a symbol descriptor: serde_amqp reads those differently.
        let described = [0xe0, 10, 2, 0x00, 0xa3, 1, b'x', 0xa3, 1, b'a', 1, b'b'];
        assert_eq!(
            check_amqp_values(&described, D),
            Err(AmqpEncodingError::UnknownCode { at: 3, code: 0 })
        );
        // Empty arrays: as serde_amqp writes them (no constructor), and with bytes after the
        // count that serde_amqp would read as the next value.
        assert_eq!(check_amqp_values(&[0xe0, 1, 0], D), Ok(()));
        assert_eq!(
            check_amqp_values(&[0xe0, 6, 0, 0xb1, 0xff, 0xff, 0xff, 0xff], D),
            Err(AmqpEncodingError::SizeMismatch { at: 0 })
        );
        // A zero-width element type with a count far beyond the bytes (serde_amqp would loop).
        assert_eq!(
            check_amqp_values(&[0xf0, 0, 0, 0, 5, 0x7f, 0xff, 0xff, 0xff, 0x40], D),
            Err(AmqpEncodingError::BadCount { at: 0 })
        );
    }

    #[test]
    fn nesting_is_bounded_without_recursion() {
        // A million nested described values: refused at the limit, in constant stack.
        let deep = vec![0x00; 1_000_000];
        assert_eq!(
            check_amqp_values(&deep, D),
            Err(AmqpEncodingError::TooDeep { at: D - 1 })
        );
        // Nested lists: list8 in list8 … 40 deep.
        let mut nested = vec![0x45];
        for _ in 0..40 {
            let mut outer = vec![0xc0, nested.len() as u8 + 1, 1];
            outer.extend_from_slice(&nested);
            nested = outer;
        }
        assert!(matches!(
            check_amqp_values(&nested, D),
            Err(AmqpEncodingError::TooDeep { .. })
        ));
        assert_eq!(check_amqp_values(&nested, 64), Ok(()));
    }

    #[test]
    fn list_items_find_fields() {
        let list = [0xc0, 6, 3, 0x43, 0x52, 7, 0x41];
        assert_eq!(
            list_items(&list, 0, list.len(), 10),
            Some(vec![(3, 4), (4, 6), (6, 7)])
        );
        assert_eq!(list_items(&list, 0, list.len(), 1), Some(vec![(3, 4)]));
        assert_eq!(list_items(&[0x45], 0, 1, 4), Some(vec![]));
        assert_eq!(list_items(&[0x40], 0, 1, 4), None);
    }

    mod generated {
        use proptest::prelude::*;
        use serde_amqp::Value;
        use serde_amqp::described::Described;
        use serde_amqp::descriptor::Descriptor;
        use serde_amqp::primitives::{Array, OrderedMap, Symbol};

        use super::super::*;

        fn scalar() -> impl Strategy<Value = Value> {
            prop_oneof![
                key(),
                // Not empty, and not as map keys: serde_amqp's serializer writes the value that
                // follows an array key inside a map as a malformed array (`e0 07 02 70 …` for a
                // list of two), and an empty array followed by anything likewise.
                proptest::collection::vec(any::<i32>(), 1..40).prop_map(|v| {
                    Value::Array(Array::from(
                        v.into_iter().map(Value::Int).collect::<Vec<_>>(),
                    ))
                }),
            ]
        }

        fn key() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<u8>().prop_map(Value::Ubyte),
                any::<u32>().prop_map(Value::Uint),
                any::<u64>().prop_map(Value::Ulong),
                any::<i32>().prop_map(Value::Int),
                any::<i64>().prop_map(Value::Long),
                ".{0,40}".prop_map(Value::String),
                "[a-z:]{0,20}".prop_map(|s| Value::Symbol(Symbol::from(s))),
                proptest::collection::vec(any::<u8>(), 0..300)
                    .prop_map(|b| Value::Binary(serde_amqp::primitives::Binary::from(b))),
            ]
        }

        /// Values as serde_amqp encodes them: scalars, lists, maps and described values,
        /// nested up to six levels.
        fn value() -> impl Strategy<Value = Value> {
            scalar().prop_recursive(6, 200, 12, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..12).prop_map(Value::List),
                    proptest::collection::vec((key(), inner.clone()), 0..6).prop_map(|kv| {
                        Value::Map(kv.into_iter().collect::<OrderedMap<_, _>>())
                    }),
                    (any::<u64>(), inner).prop_map(|(code, value)| {
                        Value::Described(Box::new(Described {
                            descriptor: Descriptor::Code(code),
                            value,
                        }))
                    }),
                ]
            })
        }

        proptest! {
            #[test]
            fn encodings_of_serde_amqp_are_accepted_whole(v in value()) {
                let bytes = serde_amqp::to_vec(&v).unwrap();
                prop_assert_eq!(amqp_value_end(&bytes, DEFAULT_MAX_DEPTH), Ok(bytes.len()));
                prop_assert_eq!(check_amqp_values(&bytes, DEFAULT_MAX_DEPTH), Ok(()));
                // What passes decodes, and serde_amqp's encoding of that passes again (empty
                // lists and arrays do not come back as what they were, so no equality).
                let back: Value = serde_amqp::from_slice(&bytes).unwrap();
                let again = serde_amqp::to_vec(&back).unwrap();
                prop_assert_eq!(check_amqp_values(&again, DEFAULT_MAX_DEPTH), Ok(()));
            }

            #[test]
            fn truncations_are_refused(v in value(), cut in any::<prop::sample::Index>()) {
                let bytes = serde_amqp::to_vec(&v).unwrap();
                let cut = cut.index(bytes.len());
                prop_assert!(amqp_value_end(&bytes[..cut], DEFAULT_MAX_DEPTH).is_err());
            }

            #[test]
            fn inflated_sizes_are_refused(v in value(), more in 1u32..u32::MAX / 2) {
                let mut bytes = serde_amqp::to_vec(&v).unwrap();
                // The outermost size field, if the value has one (after a described value's
                // descriptor, sizes belong to the described value and are inflated there).
                let at = match bytes[0] {
                    0x00 => amqp_value_end(&bytes[1..], DEFAULT_MAX_DEPTH).unwrap() + 1,
                    _ => 0,
                };
                match layout(bytes[at]) {
                    Some(Layout::Variable(1) | Layout::Compound { width: 1, .. } | Layout::Array(1)) => {
                        let room = 255 - u32::from(bytes[at + 1]);
                        if room == 0 {
                            return Ok(());
                        }
                        bytes[at + 1] += (1 + (more - 1) % room) as u8;
                    }
                    Some(Layout::Variable(4) | Layout::Compound { width: 4, .. } | Layout::Array(4)) => {
                        let old = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().unwrap());
                        bytes[at + 1..at + 5].copy_from_slice(&old.saturating_add(more).to_be_bytes());
                    }
                    _ => return Ok(()),
                }
                prop_assert!(check_amqp_values(&bytes, DEFAULT_MAX_DEPTH).is_err());
            }
        }
    }
}
