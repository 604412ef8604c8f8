//! Moving file work off the async executor.

use std::io;
use std::path::PathBuf;

use crate::storage::error::{StorageError, StorageResult};

/// Runs blocking file work (reads, writes, fsyncs, removals) on tokio's blocking pool when called
/// inside a runtime, inline otherwise (a synchronous caller, such as an `open_blocking`).
///
/// A panic in `f` is returned as an I/O error rather than unwinding into the caller's task.
pub async fn run_blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, E>
where
    T: Send + 'static,
    E: From<StorageError> + Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.spawn_blocking(f).await.map_err(|e| {
            E::from(StorageError::io(
                "run blocking file work",
                PathBuf::new(),
                io::Error::other(e.to_string()),
            ))
        })?,
        Err(_) => f(),
    }
}

/// [`run_blocking`] for work that returns the kit's own error.
pub async fn run_blocking_storage<T: Send + 'static>(
    f: impl FnOnce() -> StorageResult<T> + Send + 'static,
) -> StorageResult<T> {
    run_blocking(f).await
}
