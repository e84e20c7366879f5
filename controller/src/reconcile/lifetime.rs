//! A sandbox's run time, for `timeoutMs` (total run time across pod restarts, paused time not
//! counted) and `expiresAt` (absolute). What cannot be read back from the cluster (when it
//! first ran, how long it was paused, when it finished) is kept in its status.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::AgentSandboxStatus;

/// The time-keeping fields of a sandbox's status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lifetime {
    /// When the sandbox first ran.
    pub started_at: Option<Timestamp>,
    /// When the current pause began.
    pub paused_at: Option<Timestamp>,
    /// Earlier pauses, in milliseconds.
    pub paused_ms: i64,
    /// When the agent finished.
    pub finished_at: Option<Timestamp>,
}

impl Lifetime {
    pub fn of(status: &AgentSandboxStatus) -> Self {
        Self {
            started_at: status.started_at.as_ref().map(|t| t.0),
            paused_at: status.paused_at.as_ref().map(|t| t.0),
            paused_ms: status.paused_ms.unwrap_or(0).max(0),
            finished_at: status.finished_at.as_ref().map(|t| t.0),
        }
    }

    /// Writes the fields into a status.
    pub fn write(&self, status: &mut AgentSandboxStatus) {
        status.started_at = self.started_at.map(Time);
        status.paused_at = self.paused_at.map(Time);
        status.paused_ms = (self.paused_ms > 0).then_some(self.paused_ms);
        status.finished_at = self.finished_at.map(Time);
    }

    /// Run time so far: since `startedAt`, without the time spent paused.
    pub fn run_time_ms(&self, now: Timestamp) -> u64 {
        let Some(started) = self.started_at else {
            return 0;
        };
        let until = self.paused_at.unwrap_or(now);
        let ms = until.as_millisecond() - started.as_millisecond() - self.paused_ms;
        ms.max(0) as u64
    }

    /// When `timeoutMs` runs out, if the sandbox has started and is not paused.
    pub fn timeout_at(&self, timeout_ms: Option<i64>) -> Option<Timestamp> {
        if self.paused_at.is_some() {
            return None;
        }
        let (started, timeout) = self.started_at.zip(timeout_ms)?;
        Some(later(started, self.paused_ms.saturating_add(timeout)))
    }

    /// When the sandbox expires: the earlier of `expiresAt` and the end of `timeoutMs`.
    pub fn expiry(
        &self,
        expires_at: Option<Timestamp>,
        timeout_ms: Option<i64>,
    ) -> Option<Timestamp> {
        match (expires_at, self.timeout_at(timeout_ms)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The sandbox ran at `now` (its pod was ready): it has started.
    pub fn ran(mut self, now: Timestamp) -> Self {
        self.started_at.get_or_insert(now);
        self
    }

    /// The sandbox is paused (`true`) or not at `now`: a pause that begins is noted, one that
    /// ends is added to the paused time. Pauses before the first run do not matter.
    pub fn paused(mut self, paused: bool, now: Timestamp) -> Self {
        match (paused, self.paused_at) {
            (true, None) if self.started_at.is_some() => self.paused_at = Some(now),
            (false, Some(since)) => {
                let ms = (now.as_millisecond() - since.as_millisecond()).max(0);
                self.paused_ms = self.paused_ms.saturating_add(ms);
                self.paused_at = None;
            }
            _ => {}
        }
        self
    }

    /// The agent finished at `at` (kept if it was already recorded).
    pub fn finished(mut self, at: Timestamp) -> Self {
        self.finished_at.get_or_insert(at);
        self
    }
}

fn later(t: Timestamp, ms: i64) -> Timestamp {
    t.checked_add(SignedDuration::from_millis(ms))
        .unwrap_or(Timestamp::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn expiry_is_the_earlier_of_expires_at_and_the_timeout() {
        let not_started = Lifetime::default();
        assert_eq!(
            not_started.expiry(None, Some(5_000)),
            None,
            "no timeout before the first run"
        );
        let started = Lifetime::default().ran(t(100));
        assert_eq!(started.expiry(None, Some(5_000)), Some(t(105)));
        assert_eq!(started.expiry(Some(t(103)), Some(5_000)), Some(t(103)));
        assert_eq!(started.expiry(Some(t(200)), Some(5_000)), Some(t(105)));
        assert_eq!(started.expiry(Some(t(200)), None), Some(t(200)));
    }

    #[test]
    fn paused_time_does_not_count_against_the_timeout() {
        let l = Lifetime::default().ran(t(100));
        assert_eq!(l.run_time_ms(t(110)), 10_000);
        // Paused from 110 to 150: no timeout while paused, and 40 s more afterwards.
        let paused = l.clone().paused(true, t(110));
        assert_eq!(paused.timeout_at(Some(30_000)), None);
        assert_eq!(
            paused.run_time_ms(t(140)),
            10_000,
            "the clock stops while paused"
        );
        assert_eq!(
            paused.expiry(Some(t(120)), Some(30_000)),
            Some(t(120)),
            "expiresAt still applies"
        );
        let resumed = paused.paused(false, t(150));
        assert_eq!(resumed.paused_ms, 40_000);
        assert_eq!(resumed.paused_at, None);
        assert_eq!(resumed.run_time_ms(t(160)), 20_000);
        assert_eq!(resumed.timeout_at(Some(30_000)), Some(t(170)));
        // A second pause adds up.
        let again = resumed.paused(true, t(160)).paused(false, t(165));
        assert_eq!(again.paused_ms, 45_000);
        assert_eq!(again.timeout_at(Some(30_000)), Some(t(175)));
    }

    #[test]
    fn a_pause_before_the_first_run_is_not_noted_and_marks_stick() {
        let l = Lifetime::default().paused(true, t(5));
        assert_eq!(l.paused_at, None);
        let l = l.ran(t(10)).ran(t(20));
        assert_eq!(l.started_at, Some(t(10)), "startedAt is the first run");
        let l = l.finished(t(30)).finished(t(40));
        assert_eq!(l.finished_at, Some(t(30)));
    }

    #[test]
    fn round_trips_through_the_status() {
        let l = Lifetime::default()
            .ran(t(1))
            .paused(true, t(2))
            .paused(false, t(4))
            .finished(t(9));
        let mut status = AgentSandboxStatus::default();
        l.write(&mut status);
        assert_eq!(status.paused_ms, Some(2_000));
        assert_eq!(Lifetime::of(&status), l);
    }
}
