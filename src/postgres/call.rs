//! One bounded call: a pooled connection, the adapter's work on it, and a deadline over both.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::postgres::{PgClient, PgError, PgPool};

/// What an adapter's call does with its connection (boxed so it may borrow the connection).
pub(crate) type Work<'c, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>;

/// Runs `work` on a pooled connection, giving up after `deadline`.
///
/// Acquiring the connection is bounded by the pool's own timeouts. The deadline covers the work:
/// a server that stops answering without closing the socket (a partition, a frozen host) would
/// otherwise hold the call forever. A connection whose work timed out is taken out of the pool
/// and closed, because its session may still be inside a transaction; the outcome of a commit cut
/// off this way is unknown, so the caller gets a retryable error and must not count the write as
/// done.
pub(crate) async fn bounded<T, E>(
    pool: &PgPool,
    deadline: Duration,
    to_error: impl Fn(PgError) -> E,
    work: impl for<'c> FnOnce(&'c mut PgClient) -> Work<'c, T, E>,
) -> Result<T, E> {
    let mut client = pool.get().await.map_err(&to_error)?;
    let outcome = tokio::time::timeout(deadline, work(&mut client)).await;
    match outcome {
        Ok(result) => result,
        Err(_) => {
            drop(deadpool_postgres::Object::take(client));
            Err(to_error(PgError::Unreachable {
                target: pool.config().target(),
                reason: format!("no answer within {deadline:?}"),
            }))
        }
    }
}
