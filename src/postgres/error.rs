//! The PostgreSQL adapters' own error, and which of the driver's errors are worth a retry.

use tokio_postgres::error::SqlState;

/// What went wrong talking to PostgreSQL. Adapters hand it to their crate's error as a backend
/// source (`Error::backend("postgres", e, e.is_retryable())`), so the chain stays whole.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// The settings are unusable (a URL that does not parse, a pool that cannot be built).
    #[error("{reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },

    /// No connection could be had: the engine is down, unreachable, refusing connections, or every
    /// pooled connection stayed busy past the acquire timeout.
    #[error("PostgreSQL at {target} is unreachable: {reason}")]
    Unreachable {
        /// `host:port/db`.
        target: String,
        /// The driver's or the pool's explanation.
        reason: String,
    },

    /// A statement failed.
    #[error("PostgreSQL {context} failed: {}", describe(source))]
    Query {
        /// What was being done (`"insert identity"`, `"migrate registry to v2"`).
        context: &'static str,
        /// The driver's error (it carries the SQLSTATE when the server answered).
        #[source]
        source: tokio_postgres::Error,
    },
}

impl PgError {
    /// Wraps a driver error with what was being done.
    pub fn query(context: &'static str, source: tokio_postgres::Error) -> Self {
        PgError::Query { context, source }
    }

    /// Whether the same call may succeed later: a lost or refused connection, a server shutting
    /// down, a serialization failure or deadlock. Constraint violations, syntax errors and
    /// misconfiguration are permanent.
    pub fn is_retryable(&self) -> bool {
        match self {
            PgError::Config { .. } => false,
            PgError::Unreachable { .. } => true,
            PgError::Query { source, .. } => is_transient(source),
        }
    }

    /// The SQLSTATE the server answered with, if it answered.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            PgError::Query { source, .. } => source.code(),
            _ => None,
        }
    }
}

/// The driver's error as a person reads it. The driver shows a server's answer only as
/// "db error" and keeps the server's message in its source; that message and the SQLSTATE are
/// what tell a user what happened.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => e.to_string(),
    }
}

/// A driver error is transient when the server never answered (the connection broke or closed)
/// or answered with a state that names a passing condition.
pub(crate) fn is_transient(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        // No SQLSTATE: an I/O error, a closed connection, a timeout.
        None => true,
        Some(code) => {
            let class = &code.code()[..2];
            // 08: connection exception; 53: insufficient resources (too many connections);
            // 57: operator intervention (admin shutdown, crash shutdown, cannot connect now).
            matches!(class, "08" | "53" | "57")
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::LOCK_NOT_AVAILABLE
        }
    }
}
