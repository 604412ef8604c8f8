//! Identity records and the values that describe changes to them.

use std::fmt;
use std::str::FromStr;

use iot_core::{DeviceId, Timestamp};

use crate::credentials::Credentials;
use crate::error::{Error, Result};

/// The longest reason accepted when disabling a device, in bytes.
pub const MAX_REASON_LEN: usize = 1024;

/// Whether a device may connect.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DeviceStatus {
    /// The device may authenticate.
    #[default]
    Enabled,
    /// Every authentication of the device is refused, and its live sessions are cut.
    Disabled {
        /// Why, for operators (at most 1024 bytes).
        reason: String,
    },
}

impl DeviceStatus {
    /// Disabled with `reason`.
    pub fn disabled(reason: impl Into<String>) -> Self {
        DeviceStatus::Disabled {
            reason: reason.into(),
        }
    }

    /// Whether the device may authenticate.
    pub fn is_enabled(&self) -> bool {
        matches!(self, DeviceStatus::Enabled)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if let DeviceStatus::Disabled { reason } = self
            && reason.len() > MAX_REASON_LEN
        {
            return Err(Error::invalid(format!(
                "a disable reason is at most {MAX_REASON_LEN} bytes, got {}",
                reason.len()
            )));
        }
        Ok(())
    }
}

/// An entity tag for optimistic concurrency: every write of a record gives it a new etag, and
/// writes that pass `if_match` fail with [`Error::PreconditionFailed`] unless it is still current.
///
/// Etags are unique within a store (never reused, even across delete and re-create) and opaque to
/// callers; `Display`/`FromStr` round-trip them for HTTP headers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ETag(pub(crate) u64);

impl ETag {
    /// The etag numbered `n`. Stores outside this crate use it to give out etags; the contract
    /// (never reused within a store) is theirs to keep, for example with a counter that survives
    /// restarts.
    pub const fn from_u64(n: u64) -> Self {
        ETag(n)
    }

    /// The etag as a number (store-specific; only equality is meaningful to callers).
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ETag({self})")
    }
}

impl FromStr for ETag {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim_matches('"');
        if s.is_empty() || s.len() > 16 {
            return Err(Error::invalid("an etag is 1 to 16 hex digits"));
        }
        u64::from_str_radix(s, 16)
            .map(ETag)
            .map_err(|_| Error::invalid("an etag is 1 to 16 hex digits"))
    }
}

/// Identifies one life of a device id: a new random value each time the id is created, so that a
/// deleted and re-created device is told apart from its predecessor.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct GenerationId(pub(crate) u64);

impl GenerationId {
    /// A new random generation, for a create (64 random bits: a re-created id gets a different
    /// one with overwhelming probability).
    pub fn random() -> Self {
        GenerationId(rand::random())
    }

    /// The generation numbered `n` (a store reading back a record it wrote).
    pub const fn from_u64(n: u64) -> Self {
        GenerationId(n)
    }

    /// The id as a number.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for GenerationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for GenerationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GenerationId({self})")
    }
}

/// A device identity: system attributes only (metadata belongs to the registry).
///
/// `Debug` never shows secrets (credentials are redacted).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceIdentity {
    /// The device id (unique in the store).
    pub id: DeviceId,
    /// Which life of this id the record belongs to.
    pub generation_id: GenerationId,
    /// Changes on every write.
    pub etag: ETag,
    /// Enabled or disabled.
    pub status: DeviceStatus,
    /// How the device authenticates.
    pub credentials: Credentials,
    /// When the id was created (this generation).
    pub created_at: Timestamp,
    /// When the record last changed.
    pub updated_at: Timestamp,
    /// When the status last changed.
    pub status_updated_at: Timestamp,
}

/// The records a store writes. Every store, in this crate or outside it, builds them with these,
/// so the timestamp rules of the contract (see [`IdentityStore`](crate::IdentityStore)) live in
/// one place. A store reading records back from its own storage builds one with
/// [`created`](Self::created) and then sets the public fields to what it stored.
impl DeviceIdentity {
    /// The record `create` stores for `new`: a new life of the id, every timestamp `at`.
    /// Refuses an over-long disable reason ([`Error::InvalidInput`]).
    pub fn created(
        new: NewIdentity,
        generation_id: GenerationId,
        etag: ETag,
        at: Timestamp,
    ) -> Result<Self> {
        new.status.validate()?;
        Ok(DeviceIdentity {
            id: new.id,
            generation_id,
            etag,
            status: new.status,
            credentials: new.credentials,
            created_at: at,
            updated_at: at,
            status_updated_at: at,
        })
    }

    /// This record after a status change written at `at` with the new `etag`. Refuses an
    /// over-long disable reason ([`Error::InvalidInput`]).
    pub fn with_status(&self, status: DeviceStatus, etag: ETag, at: Timestamp) -> Result<Self> {
        status.validate()?;
        Ok(DeviceIdentity {
            etag,
            status,
            updated_at: at,
            status_updated_at: at,
            ..self.clone()
        })
    }

    /// This record after its credentials were replaced at `at` with the new `etag` (status and
    /// its timestamp stay).
    pub fn with_credentials(&self, credentials: Credentials, etag: ETag, at: Timestamp) -> Self {
        DeviceIdentity {
            etag,
            credentials,
            updated_at: at,
            ..self.clone()
        }
    }

    /// The change a write that produced this record publishes.
    pub fn change(&self, kind: ChangeKind) -> IdentityChange {
        IdentityChange {
            id: self.id.clone(),
            generation_id: self.generation_id,
            etag: self.etag,
            kind,
        }
    }
}

/// What [`IdentityStore::create`](crate::IdentityStore::create) needs.
#[derive(Clone, Debug)]
pub struct NewIdentity {
    /// The id; must not exist yet.
    pub id: DeviceId,
    /// Initial status.
    pub status: DeviceStatus,
    /// Initial credentials.
    pub credentials: Credentials,
}

impl NewIdentity {
    /// An enabled device with `credentials`.
    pub fn new(id: DeviceId, credentials: Credentials) -> Self {
        NewIdentity {
            id,
            status: DeviceStatus::Enabled,
            credentials,
        }
    }
}

/// One page of [`IdentityStore::list`](crate::IdentityStore::list).
#[derive(Clone, Debug)]
pub struct IdentityPage {
    /// Records in ascending id order.
    pub items: Vec<DeviceIdentity>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next: Option<DeviceId>,
}

/// What happened to an identity; published on the store's change stream after the write is
/// acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChangeKind {
    /// The identity was created.
    Created,
    /// The status changed (the new status is in the record).
    StatusChanged {
        /// Whether the device is now enabled.
        enabled: bool,
    },
    /// The credentials were replaced: sessions authenticated with the old ones should end.
    CredentialsReplaced,
    /// The identity was deleted.
    Deleted,
}

/// A change to one identity, as published to [`ChangeStream`](crate::ChangeStream)s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityChange {
    /// The device.
    pub id: DeviceId,
    /// The generation the change applies to.
    pub generation_id: GenerationId,
    /// The record's etag after the change (for `Deleted`, the etag of the deleting write).
    pub etag: ETag,
    /// What happened.
    pub kind: ChangeKind,
}

impl IdentityChange {
    /// Whether sessions of the device must be cut: it was disabled, deleted, or given new
    /// credentials.
    pub fn revokes_sessions(&self) -> bool {
        matches!(
            self.kind,
            ChangeKind::StatusChanged { enabled: false }
                | ChangeKind::CredentialsReplaced
                | ChangeKind::Deleted
        )
    }
}
