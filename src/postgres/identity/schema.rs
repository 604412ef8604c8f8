//! The identity store's tables, as versioned migrations.
//!
//! `iot_identities` holds one row per device: the generation, the etag (from a sequence, never
//! handed out twice), the status (a `NULL` reason is enabled), the credentials exactly as the
//! crate's file store keeps them (raw key bytes, thumbprint bytes, the argon2id PHC string; no
//! passphrase is ever stored) and the three timestamps in microseconds.
//!
//! `iot_identity_changes` is the change feed: one row per write, keyed by the write's etag, written
//! in the write's transaction and announced with `NOTIFY iot_identity`. The notification carries
//! the whole change; the rows are there for a listener that lost its connection to catch up, and
//! are pruned after [`RETENTION_MICROS`].

use crate::postgres::Migration;

/// The component name under which the migrations are recorded.
pub(crate) const COMPONENT: &str = "identity";

/// The channel the writes notify.
pub(crate) const CHANNEL: &str = "iot_identity";

/// How long change rows are kept for listeners catching up after an outage (10 minutes).
pub(crate) const RETENTION_MICROS: i64 = 10 * 60 * 1_000_000;

pub(crate) const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    sql: r#"
CREATE TABLE iot_identities (
    ns                text COLLATE "C" NOT NULL,
    device_id         text COLLATE "C" NOT NULL,
    generation        bigint   NOT NULL,
    etag              bigint   NOT NULL,
    disabled_reason   text,
    cred_kind         smallint NOT NULL,
    cred_primary      bytea,
    cred_secondary    bytea,
    cred_phc          text,
    created_us        bigint   NOT NULL,
    updated_us        bigint   NOT NULL,
    status_updated_us bigint   NOT NULL,
    PRIMARY KEY (ns, device_id)
);
CREATE SEQUENCE iot_identity_etag;
CREATE TABLE iot_identity_changes (
    seq        bigint   PRIMARY KEY,
    ns         text COLLATE "C" NOT NULL,
    device_id  text COLLATE "C" NOT NULL,
    generation bigint   NOT NULL,
    kind       smallint NOT NULL,
    at_us      bigint   NOT NULL
);
CREATE INDEX iot_identity_changes_at ON iot_identity_changes (at_us);
"#,
}];
