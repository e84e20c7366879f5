//! What a sandbox's status remembers about its pods, which the cluster cannot tell again: the
//! UID of the pod the operator created, consecutive pod failures (for backing off their
//! replacement), and since when the isolating NetworkPolicy could not be updated.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::AgentSandboxStatus;

/// The longest wait before replacing a failed pod.
pub const MAX_REPLACEMENT_WAIT: Duration = Duration::from_secs(300);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodRecord {
    /// The pod the operator created last.
    pub uid: Option<String>,
    /// Consecutive pods that failed without the agent finishing.
    pub failures: i32,
    pub failed_at: Option<Timestamp>,
    /// Since when the NetworkPolicy update has failed with a pod running.
    pub isolation_pending_since: Option<Timestamp>,
}

impl PodRecord {
    pub fn of(status: &AgentSandboxStatus) -> Self {
        Self {
            uid: status.pod_uid.clone(),
            failures: status.pod_failures.unwrap_or(0).max(0),
            failed_at: status.pod_failed_at.as_ref().map(|t| t.0),
            isolation_pending_since: status.network_policy_pending_since.as_ref().map(|t| t.0),
        }
    }

    pub fn write(&self, status: &mut AgentSandboxStatus) {
        status.pod_uid = self.uid.clone();
        status.pod_failures = (self.failures > 0).then_some(self.failures);
        status.pod_failed_at = self.failed_at.map(Time);
        status.network_policy_pending_since = self.isolation_pending_since.map(Time);
    }

    /// A pod failed at `now` without the agent finishing.
    pub fn failed(mut self, now: Timestamp) -> Self {
        self.failures = self.failures.saturating_add(1);
        self.failed_at = Some(now);
        self
    }

    /// A pod ran (became ready): earlier failures are forgotten.
    pub fn ran(mut self) -> Self {
        self.failures = 0;
        self.failed_at = None;
        self
    }

    /// How long to wait before creating the next pod after failures: 1 s doubling, at most
    /// [`MAX_REPLACEMENT_WAIT`]; None when it may be created now.
    pub fn wait_before_creating(&self, now: Timestamp) -> Option<Duration> {
        let at = self.failed_at.filter(|_| self.failures > 0)?;
        let wait = Duration::from_secs(1u64 << (self.failures - 1).clamp(0, 9) as u32)
            .min(MAX_REPLACEMENT_WAIT);
        let due = at.as_millisecond() + wait.as_millis() as i64;
        let left = due - now.as_millisecond();
        (left > 0).then(|| Duration::from_millis(left as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn failed_pods_are_replaced_after_a_growing_wait() {
        let r = PodRecord::default();
        assert_eq!(r.wait_before_creating(t(100)), None);
        let r = r.failed(t(100));
        assert_eq!(r.wait_before_creating(t(100)), Some(Duration::from_secs(1)));
        assert_eq!(r.wait_before_creating(t(101)), None);
        let r = r.failed(t(101)).failed(t(103)).failed(t(107));
        assert_eq!(r.failures, 4);
        assert_eq!(r.wait_before_creating(t(107)), Some(Duration::from_secs(8)));
        let mut many = r.clone();
        many.failures = 40;
        assert_eq!(
            many.wait_before_creating(t(107)),
            Some(MAX_REPLACEMENT_WAIT)
        );
        assert_eq!(r.ran().wait_before_creating(t(107)), None);
    }

    #[test]
    fn round_trips_through_the_status() {
        let r = PodRecord {
            uid: Some("u".into()),
            failures: 2,
            failed_at: Some(t(5)),
            isolation_pending_since: Some(t(9)),
        };
        let mut status = AgentSandboxStatus::default();
        r.write(&mut status);
        assert_eq!(PodRecord::of(&status), r);
    }
}
