//! Binary encoding of mutations. Each payload is the body of one frame of the storage kit
//! ([`iot_core::storage::frame`]), which checks its length and checksum before it gets here.
//! A payload is one mutation:
//!
//! ```text
//! Put:    0x01, seq u64, id (u8 len + bytes), generation u64, created u64, updated u64,
//!         status_updated u64, status (0x00 | 0x01 + u16 len + reason), credentials
//! Delete: 0x02, seq u64, id (u8 len + bytes)
//! credentials: 0x00 none
//!            | 0x01 u8 len + primary key, u8 len + secondary key
//!            | 0x02 32-byte primary thumbprint, 32-byte secondary thumbprint
//!            | 0x03 u16 len + argon2id PHC string
//!            | 0x04 (certificate authority: nothing stored)
//! ```
//!
//! All integers are little-endian; timestamps are microseconds since the Unix epoch; a Put's seq is
//! the record's etag.
//!
//! Decoding never allocates by a length read from the payload: every length is checked against
//! the bytes the payload still holds first, so a crafted length is an error, not an allocation.

use std::sync::Arc;

use iot_core::{DeviceId, Timestamp};
use zeroize::Zeroizing;

use crate::credentials::{Credentials, PassphraseHash, SymmetricKey, Thumbprint};
use crate::identity::{DeviceIdentity, DeviceStatus, ETag, GenerationId};
use crate::index::Mutation;

/// The largest payload a valid frame can have (a record is at most about 1.8 KiB). Frames that
/// claim more are corrupt, and the encoder refuses to write one.
pub(crate) const MAX_PAYLOAD: usize = 16 * 1024;
/// The smallest payload of a Put: tag, seq, a one-byte id, generation, three timestamps, status
/// and credential tags. Bounds how many records a snapshot of a given size can hold.
pub(crate) const MIN_PUT_PAYLOAD: usize = 1 + 8 + 2 + 8 + 3 * 8 + 1 + 1;

const PUT: u8 = 1;
const DELETE: u8 = 2;

/// Encodes a mutation as a payload.
pub(crate) fn encode(mutation: &Mutation, out: &mut Vec<u8>) {
    match mutation {
        Mutation::Put(r) => {
            out.push(PUT);
            out.extend_from_slice(&r.etag.0.to_le_bytes());
            put_id(out, &r.id);
            out.extend_from_slice(&r.generation_id.0.to_le_bytes());
            for t in [r.created_at, r.updated_at, r.status_updated_at] {
                out.extend_from_slice(&t.as_unix_micros().to_le_bytes());
            }
            match &r.status {
                DeviceStatus::Enabled => out.push(0),
                DeviceStatus::Disabled { reason } => {
                    out.push(1);
                    put_u16_bytes(out, reason.as_bytes());
                }
            }
            match &r.credentials {
                Credentials::None => out.push(0),
                Credentials::SymmetricKeys { primary, secondary } => {
                    out.push(1);
                    for key in [primary, secondary] {
                        let bytes = key.expose_bytes();
                        // Keys are at most 64 bytes.
                        out.push(u8::try_from(bytes.len()).unwrap_or(u8::MAX));
                        out.extend_from_slice(bytes);
                    }
                }
                Credentials::X509 { primary, secondary } => {
                    out.push(2);
                    out.extend_from_slice(primary.as_bytes());
                    out.extend_from_slice(secondary.as_bytes());
                }
                Credentials::Passphrase(hash) => {
                    out.push(3);
                    put_u16_bytes(out, hash.expose_phc().as_bytes());
                }
                Credentials::CertificateAuthority => out.push(4),
            }
        }
        Mutation::Delete { id, seq } => {
            out.push(DELETE);
            out.extend_from_slice(&seq.to_le_bytes());
            put_id(out, id);
        }
    }
}

fn put_id(out: &mut Vec<u8>, id: &DeviceId) {
    // Device ids are at most 128 ASCII bytes.
    out.push(u8::try_from(id.as_str().len()).unwrap_or(u8::MAX));
    out.extend_from_slice(id.as_str().as_bytes());
}

fn put_u16_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Reasons are at most 1024 bytes and PHC strings at most 512.
    out.extend_from_slice(&u16::try_from(bytes.len()).unwrap_or(u16::MAX).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Decodes a payload; the error says what is wrong.
pub(crate) fn decode(payload: &[u8]) -> Result<Mutation, String> {
    let mut r = Reader { buf: payload };
    let mutation = match r.u8()? {
        PUT => {
            let seq = r.u64()?;
            let id = r.id()?;
            let generation_id = GenerationId(r.u64()?);
            let created_at = Timestamp::from_unix_micros(r.u64()?);
            let updated_at = Timestamp::from_unix_micros(r.u64()?);
            let status_updated_at = Timestamp::from_unix_micros(r.u64()?);
            let status = match r.u8()? {
                0 => DeviceStatus::Enabled,
                1 => {
                    let len = usize::from(r.u16()?);
                    let reason = std::str::from_utf8(r.bytes(len)?)
                        .map_err(|_| "disable reason is not UTF-8")?;
                    DeviceStatus::disabled(reason)
                }
                other => return Err(format!("unknown status tag {other}")),
            };
            let credentials = match r.u8()? {
                0 => Credentials::None,
                1 => {
                    let mut key = || -> Result<SymmetricKey, String> {
                        let len = usize::from(r.u8()?);
                        SymmetricKey::from_bytes(r.bytes(len)?).map_err(|e| e.to_string())
                    };
                    let primary = key()?;
                    let secondary = key()?;
                    Credentials::SymmetricKeys { primary, secondary }
                }
                2 => Credentials::X509 {
                    primary: Thumbprint::from_bytes(r.array()?),
                    secondary: Thumbprint::from_bytes(r.array()?),
                },
                3 => {
                    let len = usize::from(r.u16()?);
                    let phc = Zeroizing::new(
                        std::str::from_utf8(r.bytes(len)?)
                            .map_err(|_| "passphrase hash is not UTF-8")?
                            .to_owned(),
                    );
                    Credentials::Passphrase(
                        PassphraseHash::from_phc(&phc).map_err(|e| e.to_string())?,
                    )
                }
                4 => Credentials::CertificateAuthority,
                other => return Err(format!("unknown credential tag {other}")),
            };
            Mutation::Put(Arc::new(DeviceIdentity {
                id,
                generation_id,
                etag: ETag(seq),
                status,
                credentials,
                created_at,
                updated_at,
                status_updated_at,
            }))
        }
        DELETE => {
            let seq = r.u64()?;
            let id = r.id()?;
            Mutation::Delete { id, seq }
        }
        other => return Err(format!("unknown mutation tag {other}")),
    };
    if !r.buf.is_empty() {
        return Err(format!(
            "{} unexpected bytes after the mutation",
            r.buf.len()
        ));
    }
    Ok(mutation)
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err("payload ends early".into());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        self.bytes(N)?
            .try_into()
            .map_err(|_| "payload ends early".into())
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn id(&mut self) -> Result<DeviceId, String> {
        let len = usize::from(self.u8()?);
        let text = std::str::from_utf8(self.bytes(len)?).map_err(|_| "device id is not UTF-8")?;
        DeviceId::new(text).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::PassphraseParams;

    fn record(credentials: Credentials, status: DeviceStatus) -> Mutation {
        Mutation::Put(Arc::new(DeviceIdentity {
            id: DeviceId::new("dev-1:(x)").unwrap(),
            generation_id: GenerationId(42),
            etag: ETag(7),
            status,
            credentials,
            created_at: Timestamp::from_unix_micros(1),
            updated_at: Timestamp::from_unix_micros(2),
            status_updated_at: Timestamp::from_unix_micros(3),
        }))
    }

    fn round_trip(m: &Mutation) -> Mutation {
        let mut payload = Vec::new();
        encode(m, &mut payload);
        decode(&payload).unwrap()
    }

    #[test]
    fn every_kind_round_trips() {
        let hash = PassphraseHash::hash("pw", &PassphraseParams::INSECURE_FOR_TESTS).unwrap();
        let t = Thumbprint::of_der_certificate(b"c");
        for m in [
            record(Credentials::None, DeviceStatus::Enabled),
            record(
                Credentials::generate_symmetric_keys(),
                DeviceStatus::disabled("stolen"),
            ),
            record(
                Credentials::X509 {
                    primary: t,
                    secondary: t,
                },
                DeviceStatus::Enabled,
            ),
            record(Credentials::Passphrase(hash), DeviceStatus::disabled("")),
        ] {
            let back = round_trip(&m);
            match (&m, &back) {
                (Mutation::Put(a), Mutation::Put(b)) => assert_eq!(a, b),
                _ => panic!("kind changed"),
            }
        }
        let del = Mutation::Delete {
            id: DeviceId::new("x").unwrap(),
            seq: 9,
        };
        assert!(matches!(round_trip(&del), Mutation::Delete { seq: 9, .. }));
    }

    #[test]
    fn damaged_payloads_are_refused_without_panic() {
        let mut payload = Vec::new();
        encode(
            &record(
                Credentials::generate_symmetric_keys(),
                DeviceStatus::disabled("r"),
            ),
            &mut payload,
        );
        for cut in 0..payload.len() {
            assert!(
                decode(&payload[..cut]).is_err(),
                "prefix of {cut} bytes accepted"
            );
        }
        let mut longer = payload.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
        for i in 0..payload.len() {
            let mut bad = payload.clone();
            bad[i] ^= 0xff;
            let _ = decode(&bad); // must not panic; may or may not decode
        }
    }
}
