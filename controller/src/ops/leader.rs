//! Leader election through a `coordination.k8s.io/v1` Lease, so that of several replicas only
//! one reconciles at a time.
//!
//! Semantics of [`run_with_leadership`]:
//! - **Only the leader reconciles.** `lead` is started when this replica holds the Lease *and*
//!   has itself seen its hold renewed recently; standbys run nothing but the election.
//! - **Losing the lease stops reconciling before another replica can acquire it.** The Lease
//!   is renewed by `kube-lease-manager`; a separate fence (see `fence.rs`) reads it back and
//!   cancels `lead` half a grace period before the hold could expire unless it has seen a fresh
//!   renewal, so a partitioned leader stops on its own before a standby may take over. That
//!   holds as long as clocks between nodes differ by less than a quarter of the grace period
//!   (grace = a third of the lease duration) and `lead` stops within the other quarter once its
//!   token is cancelled (after that it is aborted).
//! - A replica that stepped down while its renewals failed resumes (with a new `lead`) if its
//!   renewals succeed again before anyone else took the Lease.
//! - **On shutdown** `lead` is cancelled and awaited first, then the Lease is released, so a
//!   standby finds it free at its next check instead of waiting for it to expire.
//!
//! Shutdown is a [`CancellationToken`] rather than a `watch` channel: each term's token is a
//! child of it, so a shutdown reaches the leader's work directly, with no extra plumbing.

mod fence;
mod term;

#[cfg(test)]
mod fake_api;
#[cfg(test)]
mod tests;

use fence::{Fence, Timing};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseManagerError, LeaseParams};
use std::future::Future;
use std::time::{Duration, SystemTime};
use term::Term;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Lease duration used when the operator is not told otherwise: the client-go default.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);

/// Where and as whom to campaign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderConfig {
    /// Namespace of the Lease: the operator's own.
    pub namespace: String,
    /// Name of the Lease, shared by all replicas.
    pub lease_name: String,
    /// This replica's name as the Lease holder; unique among replicas (see [`default_identity`]).
    pub identity: String,
    /// How long a hold lasts without renewal: the longest a crashed leader leaves the operator
    /// without one. Whole seconds, at least 3.
    pub lease_duration: Duration,
}

/// Why the election ended other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The configuration cannot work.
    #[error("invalid leader election settings: {0}")]
    Config(String),
    /// The Lease could not be read or created.
    #[error("lease {lease}: {source}")]
    Lease {
        /// `namespace/name` of the Lease.
        lease: String,
        /// What the lease manager reported.
        #[source]
        source: LeaseManagerError,
    },
    /// The lease manager's task stopped while the election was running.
    #[error("the manager of lease {lease} stopped unexpectedly")]
    ManagerStopped {
        /// `namespace/name` of the Lease.
        lease: String,
    },
    /// `lead` returned while still leader: the work that must run while leading is gone, so the
    /// replica should exit and let another take over.
    #[error("the leader's work ended while holding lease {lease}")]
    LeadEnded {
        /// `namespace/name` of the Lease.
        lease: String,
    },
    /// `lead` panicked while leader.
    #[error("the leader's work panicked while holding lease {lease}")]
    LeadPanicked {
        /// `namespace/name` of the Lease.
        lease: String,
    },
}

/// This replica's identity: `POD_NAME` (from the downward API) when set, else hostname and pid.
///
/// A container restarted in the same Pod keeps its identity, so it takes the Lease back at once:
/// the previous holder of that identity is dead.
pub fn default_identity() -> String {
    if let Some(pod) = std::env::var("POD_NAME")
        .ok()
        .filter(|name| !name.is_empty())
    {
        return pod;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|host| host.trim().to_owned())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "palisade".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Campaigns for the Lease until `shutdown` is cancelled, running `lead` during each term of
/// leadership (see the module documentation for the guarantees).
///
/// `lead` receives a token that is cancelled when the term ends; it should then stop promptly.
/// Returns `Ok(())` after a shutdown, once `lead` has stopped and the Lease is released (a
/// failed release is only logged: the hold then expires by itself).
///
/// # Errors
/// See [`LeaderError`]; in every case `lead` has been stopped and the Lease released first.
pub async fn run_with_leadership<F, Fut>(
    client: Client,
    config: LeaderConfig,
    shutdown: CancellationToken,
    lead: F,
) -> Result<(), LeaderError>
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let timing = validate(&config)?;
    let lease = format!("{}/{}", config.namespace, config.lease_name);
    let params = LeaseParams::new(
        config.identity.clone(),
        timing.duration.as_secs(),
        timing.grace.as_secs(),
    );
    let manager = tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        manager = LeaseManager::new(
            client.clone(),
            &config.lease_name,
            &config.namespace,
            params,
            LeaseCreateMode::AutoCreate,
        ) => manager.map_err(|source| LeaderError::Lease { lease: lease.clone(), source })?,
    };
    let (held, manager_task) = manager.watch().await;
    tracing::info!(%lease, identity = %config.identity, "campaigning for leadership");

    let mut election = Election {
        api: Api::namespaced(client, &config.namespace),
        config,
        lease,
        timing,
        fence: Fence::default(),
        held,
        term: None,
    };
    let outcome = election.campaign(&shutdown, lead).await;
    if let Some(term) = election.term.take() {
        tracing::info!(lease = %election.lease, "stepping down");
        term.stop(timing.grace).await;
    }
    // Dropping the receiver is what tells the manager's task to release the Lease and finish.
    let Election { lease, held, .. } = election;
    drop(held);
    release(manager_task, timing.grace, &lease).await;
    outcome
}

/// Checks the configuration before anything touches the cluster, so that the lease manager's
/// own assertions (which panic) can never fire.
fn validate(config: &LeaderConfig) -> Result<Timing, LeaderError> {
    for (field, value) in [
        ("namespace", &config.namespace),
        ("lease name", &config.lease_name),
        ("identity", &config.identity),
    ] {
        if value.is_empty() {
            return Err(LeaderError::Config(format!("the {field} is empty")));
        }
    }
    Timing::new(config.lease_duration).map_err(LeaderError::Config)
}

/// State of one campaign.
struct Election {
    api: Api<Lease>,
    config: LeaderConfig,
    lease: String,
    timing: Timing,
    fence: Fence,
    /// Whether the lease manager believes this replica holds the Lease.
    held: watch::Receiver<bool>,
    term: Option<Term>,
}

impl Election {
    /// Runs terms of leadership until shutdown or an error; may return with a term running.
    async fn campaign<F, Fut>(
        &mut self,
        shutdown: &CancellationToken,
        mut lead: F,
    ) -> Result<(), LeaderError>
    where
        F: FnMut(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut next_read: Option<Instant> = None;
        loop {
            let fence_closes = match self.term {
                Some(_) => self.fence.valid_until(&self.timing).map(instant_at),
                None => None,
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                ended = term::ended(&mut self.term) => {
                    self.term = None;
                    let lease = self.lease.clone();
                    return Err(match ended {
                        Err(error) if error.is_panic() => LeaderError::LeadPanicked { lease },
                        _ => LeaderError::LeadEnded { lease },
                    });
                }
                () = sleep_until(fence_closes) => {
                    self.step_down("no renewal of the lease seen in time").await;
                }
                changed = self.held.changed() => {
                    if changed.is_err() {
                        return Err(LeaderError::ManagerStopped { lease: self.lease.clone() });
                    }
                    if *self.held.borrow_and_update() {
                        tracing::info!(lease = %self.lease, "acquired the lease; confirming");
                        next_read = Some(Instant::now());
                    } else {
                        self.fence.clear();
                        next_read = None;
                        self.step_down("the lease is held by another replica").await;
                    }
                }
                () = sleep_until(next_read) => {
                    self.read_lease().await;
                    let now = SystemTime::now();
                    next_read = Some(Instant::now() + self.fence.next_read(&self.timing, now));
                    if !self.fence.is_open(&self.timing, now) {
                        self.step_down("no fresh renewal of ours on the lease").await;
                    } else if self.term.is_none() {
                        tracing::info!(lease = %self.lease, "leading");
                        self.term = Some(Term::start(&mut lead, shutdown));
                    }
                }
            }
        }
    }

    /// Reads the Lease into the fence; a failed read leaves the fence as it was, to close on
    /// time if reads keep failing.
    async fn read_lease(&mut self) {
        let patience = self.fence.read_timeout(&self.timing, SystemTime::now());
        match tokio::time::timeout(patience, self.api.get_opt(&self.config.lease_name)).await {
            Ok(Ok(lease)) => {
                let spec = lease.as_ref().and_then(|lease| lease.spec.as_ref());
                self.fence.observe(spec, &self.config.identity);
            }
            Ok(Err(error)) => tracing::debug!(lease = %self.lease, %error, "cannot read the lease"),
            Err(_) => {
                tracing::debug!(lease = %self.lease, ?patience, "reading the lease timed out")
            }
        }
    }

    /// Ends the running term, if any, saying `why`.
    async fn step_down(&mut self, why: &str) {
        if let Some(term) = self.term.take() {
            tracing::warn!(lease = %self.lease, "lost leadership: {why}; stopping the leader's work");
            term.stop(self.timing.stop_patience()).await;
        }
    }
}

/// Waits for the lease manager's task to release the Lease (after its channel was dropped).
async fn release(
    manager_task: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
    patience: Duration,
    lease: &str,
) {
    let abort = manager_task.abort_handle();
    match tokio::time::timeout(patience, manager_task).await {
        Ok(Ok(Ok(_))) => tracing::info!(%lease, "left the election, releasing the lease if held"),
        Ok(Ok(Err(error))) => {
            tracing::warn!(%lease, %error, "could not release the lease; it will expire");
        }
        Ok(Err(error)) => tracing::warn!(%lease, %error, "the lease manager failed"),
        Err(_) => {
            abort.abort();
            tracing::warn!(%lease, "releasing the lease timed out; it will expire");
        }
    }
}

/// The monotonic instant of wall-clock time `at` (now, when `at` is past).
fn instant_at(at: SystemTime) -> Instant {
    let left = at.duration_since(SystemTime::now()).unwrap_or_default();
    Instant::now() + left
}

/// Sleeps until `at`; forever when there is no `at`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
