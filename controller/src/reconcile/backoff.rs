//! Retries after a failed pass: exponential per object, with jitter so that many sandboxes
//! failing together (an API server outage, a quota) do not retry in lockstep.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;
use std::time::Duration;

/// The first retry comes after about this long.
pub const BASE: Duration = Duration::from_millis(500);
/// Retries never wait longer than this.
pub const CAP: Duration = Duration::from_secs(300);

/// Consecutive failures per object, and the objects that must be retried soon whatever the
/// count (a NetworkPolicy that may be wider than its policy, with a pod running under it).
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
    urgent: Mutex<std::collections::HashSet<String>>,
}

impl Backoff {
    /// Records a failure of `key` and returns how long to wait before the next attempt.
    pub fn failed(&self, key: &str) -> Duration {
        let n = {
            let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            let n = failures.entry(key.to_string()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        jittered(ceiling(n), random_unit())
    }

    /// Forgets the failures of `key` after a successful pass.
    pub fn succeeded(&self, key: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(key);
    }

    /// Marks the next retry of `key` as one that must not wait long.
    pub fn mark_urgent(&self, key: &str) {
        let mut urgent = self.urgent.lock().unwrap_or_else(|e| e.into_inner());
        urgent.insert(key.to_string());
    }

    /// Whether the next retry of `key` was marked urgent (the mark is consumed).
    pub fn take_urgent(&self, key: &str) -> bool {
        let mut urgent = self.urgent.lock().unwrap_or_else(|e| e.into_inner());
        urgent.remove(key)
    }

    /// Forgets every object but those `keep` says still exist.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.retain(|k, _| keep(k));
        let mut urgent = self.urgent.lock().unwrap_or_else(|e| e.into_inner());
        urgent.retain(|k| keep(k));
    }

    /// Consecutive failures of `key` so far.
    pub fn failures(&self, key: &str) -> u32 {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.get(key).copied().unwrap_or(0)
    }
}

/// The longest wait after `n` consecutive failures: BASE·2^(n−1), at most CAP.
pub fn ceiling(n: u32) -> Duration {
    let factor = 1u32 << n.saturating_sub(1).min(16);
    BASE.saturating_mul(factor).min(CAP)
}

/// A wait between half the ceiling and the ceiling, chosen by `unit` in [0, 1).
pub fn jittered(ceiling: Duration, unit: f64) -> Duration {
    ceiling.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

/// A number in [0, 1) that differs from call to call: std's hasher keys are random per
/// process and change with every `RandomState`.
fn random_unit() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x9e37_79b9_7f4a_7c15);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_up_to_the_cap() {
        assert_eq!(ceiling(1), Duration::from_millis(500));
        assert_eq!(ceiling(2), Duration::from_secs(1));
        assert_eq!(ceiling(5), Duration::from_secs(8));
        assert_eq!(ceiling(10), Duration::from_secs(256));
        assert_eq!(ceiling(11), CAP);
        assert_eq!(ceiling(u32::MAX), CAP);
    }

    #[test]
    fn waits_are_jittered_between_half_and_the_whole_ceiling() {
        let c = Duration::from_secs(8);
        assert_eq!(jittered(c, 0.0), Duration::from_secs(4));
        assert_eq!(jittered(c, 1.0), c);
        let b = Backoff::default();
        let waits: Vec<Duration> = (0..40)
            .map(|_| {
                b.succeeded("x");
                b.failed("x")
            })
            .collect();
        assert!(waits.iter().all(|w| *w >= BASE / 2 && *w <= BASE));
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(distinct.len() > 10, "jitter varies: {distinct:?}");
    }

    #[test]
    fn failures_are_counted_per_object_and_reset_on_success() {
        let b = Backoff::default();
        for _ in 0..4 {
            b.failed("a");
        }
        let w = b.failed("a");
        assert!(w >= ceiling(5) / 2 && w <= ceiling(5), "{w:?}");
        assert_eq!(b.failures("a"), 5);
        assert_eq!(b.failures("b"), 0);
        b.succeeded("a");
        assert_eq!(b.failures("a"), 0);
    }
}
