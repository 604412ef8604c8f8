//! From [`PgError`] to each crate's error: the engine's error stays the source, with whether a
//! retry may help.

use tokio_postgres::error::SqlState;

use crate::postgres::PgError;

/// The backend name every adapter reports.
const BACKEND: &str = "postgres";

/// Whether the server refused a value PostgreSQL text cannot hold (a NUL character): the
/// caller's input, not the engine, is at fault.
fn unstorable_text(e: &PgError) -> bool {
    matches!(
        e.code(),
        Some(code) if *code == SqlState::CHARACTER_NOT_IN_REPERTOIRE
            || *code == SqlState::UNTRANSLATABLE_CHARACTER
    )
}

/// For the gateway's stores.
pub(crate) fn gateway(e: PgError) -> iot_gateway::Error {
    if unstorable_text(&e) {
        return iot_gateway::Error::InvalidInput {
            reason: "text with a NUL character cannot be stored in PostgreSQL".into(),
        };
    }
    let retryable = e.is_retryable();
    iot_gateway::Error::backend(BACKEND, e, retryable)
}

/// For the stream state store.
pub(crate) fn stream(e: PgError) -> iot_stream::Error {
    if unstorable_text(&e) {
        return iot_stream::Error::InvalidInput {
            reason: "text with a NUL character cannot be stored in PostgreSQL".into(),
        };
    }
    let retryable = e.is_retryable();
    iot_stream::Error::backend(BACKEND, e, retryable)
}

/// For the provisioning intent journal.
pub(crate) fn provisioning(e: PgError) -> iot_provisioning::Error {
    let retryable = e.is_retryable();
    iot_provisioning::Error::backend(BACKEND, e, retryable)
}

/// For the identity crate's stores (the access store).
pub(crate) fn identity(e: PgError) -> iot_identity::Error {
    if unstorable_text(&e) {
        return iot_identity::Error::InvalidInput {
            reason: "text with a NUL character cannot be stored in PostgreSQL".into(),
        };
    }
    let retryable = e.is_retryable();
    iot_identity::Error::backend(BACKEND, e, retryable)
}
