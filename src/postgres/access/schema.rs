//! The access store's tables, owned by the component `access`.

use crate::postgres::Migration;

/// The component name in `iot_schema_migrations`.
pub(super) const COMPONENT: &str = "access";

/// Version 1.
///
/// * `iot_access_users`: one row per user, the password as its argon2id PHC string (never the
///   password).
/// * `iot_access_roles`: custom roles, their permissions as the JSON array the identity crate
///   serializes them to. The built-in roles have rows too (`builtin`, their permissions are the
///   crate's constants, not the row's), so that grants can reference every role by a foreign key
///   and deleting a user or a role deletes its grants in the same statement.
/// * `iot_access_grants`: `(user, role, device set)`, the set as the crate's JSON
///   (`"all"`, `{"device":"pump-7"}`, `{"query":"…"}`, `{"node":"building=HQ"}`).
/// * `iot_access_sessions`: keyed by the token's SHA-256 digest; the token is never stored.
///
/// Version 2: `iot_access_subscriptions`, users' alert subscriptions (their webhook's HMAC
/// secret in clear: the hub must sign with it), deleted with their user.
///
/// Names are `COLLATE "C"`: byte order, as the crate orders them.
pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: r#"
        CREATE TABLE iot_access_users (
            name        text COLLATE "C" PRIMARY KEY,
            password    text    NOT NULL,
            disabled    boolean NOT NULL,
            created_us  bigint  NOT NULL,
            updated_us  bigint  NOT NULL
        );
        CREATE TABLE iot_access_roles (
            name        text COLLATE "C" PRIMARY KEY,
            builtin     boolean NOT NULL DEFAULT false,
            permissions text    NOT NULL
        );
        INSERT INTO iot_access_roles (name, builtin, permissions) VALUES
            ('admin', true, '[]'), ('operator', true, '[]'), ('viewer', true, '[]');
        CREATE TABLE iot_access_grants (
            user_name   text COLLATE "C" NOT NULL
                        REFERENCES iot_access_users (name) ON DELETE CASCADE,
            role        text COLLATE "C" NOT NULL
                        REFERENCES iot_access_roles (name) ON DELETE CASCADE,
            devices     text NOT NULL,
            PRIMARY KEY (user_name, role, devices)
        );
        CREATE INDEX iot_access_grants_role ON iot_access_grants (role);
        CREATE TABLE iot_access_sessions (
            digest      bytea  PRIMARY KEY,
            user_name   text COLLATE "C" NOT NULL
                        REFERENCES iot_access_users (name) ON DELETE CASCADE,
            created_us  bigint NOT NULL,
            expires_us  bigint NOT NULL
        );
        CREATE INDEX iot_access_sessions_user ON iot_access_sessions (user_name, created_us);
        CREATE INDEX iot_access_sessions_expiry ON iot_access_sessions (expires_us);
    "#,
    },
    Migration {
        version: 2,
        sql: r#"
        CREATE TABLE iot_access_subscriptions (
            id          text PRIMARY KEY,
            user_name   text COLLATE "C" NOT NULL
                        REFERENCES iot_access_users (name) ON DELETE CASCADE,
            url         text   NOT NULL,
            devices     text,
            secret      text   NOT NULL,
            created_us  bigint NOT NULL
        );
        CREATE INDEX iot_access_subscriptions_user ON iot_access_subscriptions (user_name, id);
    "#,
    },
];
