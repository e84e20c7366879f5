//! The local fence: until when this replica may act as leader, judged from the last renewal of
//! the Lease that it has itself seen succeed.
//!
//! `kube-lease-manager` reports a change of holder only once it has *seen* another holder, which
//! after a network partition is after that holder has taken over; while renewals merely fail it
//! keeps reporting "leader". The fence closes that gap: it reads the Lease, and when it does not
//! see a fresh renewal of ours in time it tells the caller to stop leading, a safety margin
//! before any other replica may consider the lease expired.

use k8s_openapi::api::coordination::v1::LeaseSpec;
use std::time::{Duration, SystemTime};

/// The time windows of one election, all derived from the lease duration `D`:
///
/// ```text
/// R (renewed)        R+D-G (manager renews)   R+D-G/2 (fence closes)   R+D (others may take it)
/// |------------------------|-----------------------|------------------------|
/// ```
///
/// `G` = `D/3` (at least 1 s, as the Lease API counts whole seconds). The fence closes `G/2`
/// before expiry; of that margin, up to `G/4` goes to stopping the leader's work and the rest
/// covers clock skew between nodes (renewal times are written by the holder's clock and judged
/// by the others'), which must therefore stay below `G/4`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Timing {
    /// Lease duration `D`, whole seconds.
    pub duration: Duration,
    /// How long before expiry the manager renews: `G`.
    pub grace: Duration,
}

impl Timing {
    /// Shortest lease accepted: `G` is whole seconds and must stay below `D`, and a shorter
    /// lease would leave under half a second to notice a renewal.
    pub const MIN_DURATION: Duration = Duration::from_secs(3);

    /// Derives the windows from the configured lease duration (sub-second parts dropped).
    pub fn new(lease_duration: Duration) -> Result<Timing, String> {
        let seconds = lease_duration.as_secs();
        if seconds < Self::MIN_DURATION.as_secs() {
            return Err(format!(
                "lease duration {lease_duration:?} is shorter than {:?}",
                Self::MIN_DURATION
            ));
        }
        if i32::try_from(seconds).is_err() {
            return Err(format!("lease duration {lease_duration:?} is too long"));
        }
        Ok(Timing {
            duration: Duration::from_secs(seconds),
            grace: Duration::from_secs((seconds / 3).max(1)),
        })
    }

    /// Time kept back before expiry: see the type's documentation.
    pub fn margin(&self) -> Duration {
        self.grace / 2
    }

    /// Spacing of the fence's reads while it waits for a renewal, and the bound on one read.
    pub fn poll(&self) -> Duration {
        self.grace / 8
    }

    /// How long the leader's work may take to stop once the lease is lost, before it is
    /// aborted: a share of the margin, the rest of which is left to clock skew.
    pub fn stop_patience(&self) -> Duration {
        self.grace / 4
    }
}

/// What the fence last learnt from the Lease.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Fence {
    /// Last renewal of ours seen on the Lease (our clock wrote it).
    renewed: Option<SystemTime>,
    /// The last read showed another holder: the manager has yet to notice, and nothing will
    /// change soon, so reads slow down.
    other_holder: bool,
}

impl Fence {
    /// Takes in a read of the Lease: `None` when the Lease is gone.
    ///
    /// A read showing another holder (or none) forgets our renewal at once: the lease is lost.
    pub fn observe(&mut self, spec: Option<&LeaseSpec>, identity: &str) {
        let holder = spec.and_then(|spec| spec.holder_identity.as_deref());
        self.other_holder = holder.is_some_and(|holder| holder != identity);
        self.renewed = spec
            .filter(|_| holder == Some(identity))
            .and_then(|spec| spec.renew_time.as_ref())
            .map(|renewed| SystemTime::from(renewed.0));
    }

    /// Forgets everything, as when the manager reports the lease lost.
    pub fn clear(&mut self) {
        *self = Fence::default();
    }

    /// Until when this replica may act as leader; `None` when it may not at all.
    pub fn valid_until(&self, timing: &Timing) -> Option<SystemTime> {
        self.renewed?
            .checked_add(timing.duration)?
            .checked_sub(timing.margin())
    }

    /// Whether this replica may act as leader at `now`.
    pub fn is_open(&self, timing: &Timing, now: SystemTime) -> bool {
        self.valid_until(timing).is_some_and(|until| now < until)
    }

    /// When to read the Lease next: just after the manager's renewal is due, and then every
    /// [`Timing::poll`] until it shows up; soon when nothing of ours has been seen yet, but only
    /// every grace period while another replica holds the Lease.
    pub fn next_read(&self, timing: &Timing, now: SystemTime) -> Duration {
        if self.other_holder {
            return timing.grace;
        }
        let soonest = timing.poll();
        let renewal_due = self
            .renewed
            .and_then(|renewed| renewed.checked_add(timing.duration - timing.grace + soonest))
            .and_then(|due| due.duration_since(now).ok());
        renewal_due.map_or(soonest, |wait| wait.max(soonest))
    }

    /// Bound for one read of the Lease: never past the point where the fence closes, so a hung
    /// request cannot keep the leader running beyond it.
    pub fn read_timeout(&self, timing: &Timing, now: SystemTime) -> Duration {
        let left = self
            .valid_until(timing)
            .and_then(|until| until.duration_since(now).ok());
        match left {
            Some(left) => left.min(timing.poll()),
            None => timing.poll(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use k8s_openapi::jiff::Timestamp;

    fn spec(holder: &str, renewed: SystemTime) -> LeaseSpec {
        let renewed = Timestamp::try_from(renewed).expect("representable time");
        LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            renew_time: Some(MicroTime(renewed)),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        }
    }

    fn secs(seconds: f64) -> Duration {
        // Through whole milliseconds, so sums compare exactly.
        Duration::from_millis((seconds * 1000.0).round() as u64)
    }

    #[test]
    fn timing_derives_grace_and_rejects_short_or_huge_leases() {
        let timing = Timing::new(secs(15.7)).expect("valid");
        assert_eq!(timing.duration, secs(15.0));
        assert_eq!(timing.grace, secs(5.0));
        assert_eq!(timing.margin(), secs(2.5));
        assert_eq!(Timing::new(secs(3.0)).map(|t| t.grace), Ok(secs(1.0)));
        assert!(Timing::new(secs(2.9)).is_err());
        assert!(Timing::new(Duration::from_secs(u64::from(u32::MAX))).is_err());
    }

    #[test]
    fn fence_opens_only_on_our_own_renewal_and_closes_before_expiry() {
        let timing = Timing::new(secs(15.0)).expect("valid");
        let renewed = SystemTime::now();
        let mut fence = Fence::default();
        assert!(!fence.is_open(&timing, renewed));

        fence.observe(Some(&spec("other", renewed)), "me");
        assert!(!fence.is_open(&timing, renewed));
        assert_eq!(fence.next_read(&timing, renewed), timing.grace);

        fence.observe(Some(&spec("me", renewed)), "me");
        assert!(fence.is_open(&timing, renewed + secs(12.4)));
        assert!(!fence.is_open(&timing, renewed + secs(12.5)));

        fence.observe(None, "me");
        assert!(!fence.is_open(&timing, renewed));
    }

    #[test]
    fn reads_follow_the_renewal_schedule() {
        let timing = Timing::new(secs(15.0)).expect("valid");
        let renewed = SystemTime::now();
        let mut fence = Fence::default();
        assert_eq!(fence.next_read(&timing, renewed), timing.poll());

        fence.observe(Some(&spec("me", renewed)), "me");
        // The manager renews at R+10 s; look 5/8 s later.
        assert_eq!(fence.next_read(&timing, renewed), secs(10.625));
        // Renewal late: keep looking every poll interval.
        assert_eq!(
            fence.next_read(&timing, renewed + secs(11.0)),
            timing.poll()
        );
        // A read never outlives the fence.
        assert_eq!(fence.read_timeout(&timing, renewed + secs(12.3)), secs(0.2));
        assert_eq!(fence.read_timeout(&timing, renewed), timing.poll());
    }
}
