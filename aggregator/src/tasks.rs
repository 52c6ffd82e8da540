//! [`Tasks`]: the owner of every task the aggregator spawns — the fleet follower, each
//! node's batcher and its batch calls, each `WatchEvents` feeder.
//!
//! Why one owner: a task nobody joins can outlive `serve` (still holding the ledger's sled
//! handles, or writing to a stream whose server is gone), and four ad-hoc stop signals
//! are four ways to get shutdown wrong. Every task is spawned through [`Tasks::spawn`]
//! onto one `TaskTracker` and watches one `CancellationToken`. Shutdown is
//! [`Tasks::cancel`] (every loop sees it at its next `select!` and returns) followed by
//! [`Tasks::join`], which waits for all of them; a batch call still in flight ends by its
//! own deadline. Tasks that end on their own (a node's batcher when the node leaves the
//! fleet) simply leave the tracker.

use std::future::Future;

use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

/// Spawns and joins the aggregator's tasks; cheap to clone (clones share the same set).
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    /// Cancelled once, at shutdown.
    token: CancellationToken,
    /// Every task spawned through [`Tasks::spawn`].
    tracker: TaskTracker,
}

impl Tasks {
    /// An empty set, not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns `task` as one of the set; it should return once [`Tasks::cancelled`] fires.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Resolves once shutdown has begun.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// Whether shutdown has begun.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Tells every task to stop.
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// Waits for every task spawned so far (and any they spawn meanwhile) to finish; no
    /// new task joins the set afterwards without being waited for by a later `join`.
    pub async fn join(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// `cancel` + `join` returns only after every task (and a task it spawned) has ended.
    #[tokio::test]
    async fn join_waits_for_every_task() {
        let tasks = Tasks::new();
        let ended = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let (inner, ended) = (tasks.clone(), ended.clone());
            tasks.spawn(async move {
                inner.cancelled().await;
                let ended2 = ended.clone();
                inner.spawn(async move {
                    tokio::task::yield_now().await;
                    ended2.fetch_add(1, Ordering::SeqCst);
                });
                ended.fetch_add(1, Ordering::SeqCst);
            });
        }
        tokio::task::yield_now().await;
        assert_eq!(
            ended.load(Ordering::SeqCst),
            0,
            "nothing ends before cancel"
        );
        tasks.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), tasks.join())
            .await
            .expect("join");
        assert_eq!(ended.load(Ordering::SeqCst), 6);
    }
}
