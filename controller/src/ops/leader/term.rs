//! One term of leadership: the caller's `lead` future, running in a task of its own.
//!
//! A separate task (rather than a future polled by the election loop) lets the election keep
//! renewing and fencing while the leader works, turns a panic of the leader into an error
//! instead of unwinding through the election, and can be aborted as a last resort.

use std::future::Future;
use std::time::Duration;
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;

/// The running leader work and the token that asks it to stop.
pub(super) struct Term {
    token: CancellationToken,
    task: JoinHandle<()>,
}

impl Term {
    /// Starts `lead` with a fresh child of `shutdown`: cancelled when the term ends, and at once
    /// (without waiting for the election loop) when the process shuts down.
    pub fn start<F, Fut>(lead: &mut F, shutdown: &CancellationToken) -> Term
    where
        F: FnMut(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let token = shutdown.child_token();
        let task = tokio::spawn(lead(token.clone()));
        Term { token, task }
    }

    /// Resolves when the leader work ends by itself. Cancel-safe.
    pub async fn ended(&mut self) -> Result<(), JoinError> {
        (&mut self.task).await
    }

    /// Cancels the leader work and waits for it to finish; past `patience` it is aborted, which
    /// drops it at its next `.await`. Either way nothing of it runs once this returns, unless it
    /// spawned tasks of its own or never yields.
    pub async fn stop(mut self, patience: Duration) {
        self.token.cancel();
        if tokio::time::timeout(patience, &mut self.task).await.is_ok() {
            return;
        }
        tracing::warn!(
            ?patience,
            "leader work did not stop when cancelled; aborting it"
        );
        self.task.abort();
        if tokio::time::timeout(patience, &mut self.task)
            .await
            .is_err()
        {
            tracing::error!("leader work does not yield; it may still be running");
        }
    }
}

/// Resolves when the term in `term` ends by itself; never when there is none.
pub(super) async fn ended(term: &mut Option<Term>) -> Result<(), JoinError> {
    match term {
        Some(term) => term.ended().await,
        None => std::future::pending().await,
    }
}
