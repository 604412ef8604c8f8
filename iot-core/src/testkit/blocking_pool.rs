//! Holding tokio's blocking pool back, for tests of what a caller that went away leaves running
//! there: a store's write whose task was aborted still runs, later, in the pool.
//!
//! ```
//! use iot_core::testkit::blocking_pool::{BlockingThreadHeld, runtime_with_one_blocking_thread};
//!
//! runtime_with_one_blocking_thread().block_on(async {
//!     let held = BlockingThreadHeld::hold();
//!     let queued = tokio::task::spawn_blocking(|| 42);
//!     // `queued` waits behind the held thread until it is released.
//!     held.release().await;
//!     assert_eq!(queued.await.unwrap(), 42);
//! });
//! ```

use std::sync::mpsc;

use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

/// A multi-thread runtime (two workers) whose blocking pool has a single thread.
pub fn runtime_with_one_blocking_thread() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Keeps a blocking-pool thread busy until [`release`](Self::release). On a runtime from
/// [`runtime_with_one_blocking_thread`], work handed to the pool meanwhile waits in its queue.
#[derive(Debug)]
pub struct BlockingThreadHeld {
    release: mpsc::Sender<()>,
    task: JoinHandle<Result<(), mpsc::RecvError>>,
}

impl BlockingThreadHeld {
    /// Takes a blocking thread (inside a runtime).
    pub fn hold() -> Self {
        let (release, busy) = mpsc::channel::<()>();
        let task = tokio::task::spawn_blocking(move || busy.recv());
        BlockingThreadHeld { release, task }
    }

    /// Lets the thread go and waits until it is back in the pool.
    pub async fn release(self) {
        self.release.send(()).expect("the held thread is waiting");
        self.task.await.expect("the held thread").expect("released");
    }
}
