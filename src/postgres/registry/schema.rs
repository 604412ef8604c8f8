//! The registry's tables, indexes and helper functions, as versioned migrations.
//!
//! One row per device: the writable document as `jsonb` (`{"metadata": …, "tags": …,
//! "stateRef": …}`), the etag drawn from a sequence (never handed out twice, even across delete and
//! re-create or a restart), and the two timestamps in microseconds since the epoch, as
//! `iot_core::Timestamp` holds them (so they read back exactly). `ns` separates registries that
//! share a database (tenants, test runs).
//!
//! Strings compare by their UTF-8 bytes in the query language, which is what the `"C"` collation
//! does in a UTF-8 database: device ids and every string extracted for ordering use it.

use crate::postgres::Migration;

/// The component name under which the migrations are recorded.
pub(crate) const COMPONENT: &str = "registry";

/// Version 1: the table, a GIN index (`jsonb_path_ops`) for containment (`=` and `IN` on any path),
/// the primary key's btree for device-id order, ranges and prefixes, and small immutable SQL
/// functions that the planner inlines: each reads one class of value out of a `jsonb` and is
/// `NULL` for every other class, so that no cast can fail on a value of another class.
pub(crate) const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    sql: r#"
CREATE TABLE iot_registry_devices (
    ns         text COLLATE "C" NOT NULL,
    device_id  text COLLATE "C" NOT NULL,
    doc        jsonb  NOT NULL,
    etag       bigint NOT NULL,
    created_us bigint NOT NULL,
    updated_us bigint NOT NULL,
    PRIMARY KEY (ns, device_id)
);
CREATE INDEX iot_registry_devices_doc ON iot_registry_devices USING gin (doc jsonb_path_ops);
CREATE SEQUENCE iot_registry_etag;

CREATE FUNCTION iot_registry_num(v jsonb) RETURNS float8
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT CASE WHEN jsonb_typeof(v) = 'number' THEN v::float8 END $$;
CREATE FUNCTION iot_registry_str(v jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT CASE WHEN jsonb_typeof(v) = 'string' THEN v #>> '{}' END $$;
CREATE FUNCTION iot_registry_bool(v jsonb) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT CASE WHEN jsonb_typeof(v) = 'boolean' THEN v::boolean END $$;
-- The order of classes in ORDER BY: undefined and composites, null, booleans, numbers, strings.
CREATE FUNCTION iot_registry_rank(v jsonb) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT CASE jsonb_typeof(v) WHEN 'null' THEN 1 WHEN 'boolean' THEN 2
                 WHEN 'number' THEN 3 WHEN 'string' THEN 4 ELSE 0 END $$;
"#,
}];
