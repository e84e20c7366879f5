//! Conditions in the kstatus shape, keeping `lastTransitionTime` when a status does not change.
//!
//! What GitOps tools read (sigs.k8s.io/cli-utils `kstatus`, used by Flux; Argo CD through the
//! health scripts in docs/gitops/), in this order: `metadata.deletionTimestamp` → Terminating;
//! `status.observedGeneration` (top level) ≠ `metadata.generation` → InProgress; a
//! `Reconciling=True` condition → InProgress; `Stalled=True` → Failed (its message is shown);
//! then `Ready`: True → Current, False → InProgress; no conditions at all → Current. So every
//! status write carries `observedGeneration`, and exactly one of `Ready`, `Reconciling` and
//! `Stalled` is True: a state the operator leaves as it is must be Ready (Current) or Stalled
//! (Failed), never "Ready=False and nothing else", which reads as InProgress for ever.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition as computed in this pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Want {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// The conditions to write: each wanted one, with the previous transition time when its status
/// did not change.
pub fn merge(
    previous: &[Condition],
    wanted: Vec<Want>,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    wanted
        .into_iter()
        .map(|w| {
            let status = if w.status { "True" } else { "False" }.to_string();
            let last = previous
                .iter()
                .find(|c| c.type_ == w.type_ && c.status == status)
                .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
            Condition {
                type_: w.type_.to_string(),
                status,
                reason: if w.reason.is_empty() {
                    "AsExpected".into()
                } else {
                    w.reason
                },
                message: w.message,
                observed_generation: generation,
                last_transition_time: last,
            }
        })
        .collect()
}

/// kstatus' verdict, for tests: see [`kstatus`].
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KStatus {
    InProgress,
    Failed,
    Current,
}

/// The kstatus rules for a custom resource (not deleted) as this crate's tests rely on them,
/// written from the library's documentation and checked against the library itself by the
/// e2e suite (`e2e/tests/gitops.rs`). Returns the verdict and its message.
#[cfg(test)]
pub fn kstatus(
    generation: Option<i64>,
    observed: Option<i64>,
    conditions: &[Condition],
) -> (KStatus, String) {
    if let (Some(g), Some(o)) = (generation, observed)
        && g != o
    {
        return (KStatus::InProgress, format!("generation {g}, observed {o}"));
    }
    for c in conditions {
        if c.type_ == "Reconciling" && c.status == "True" {
            return (KStatus::InProgress, c.message.clone());
        }
        if c.type_ == "Stalled" && c.status == "True" {
            return (KStatus::Failed, c.message.clone());
        }
    }
    match conditions.iter().find(|c| c.type_ == "Ready") {
        Some(c) if c.status == "True" => (KStatus::Current, "Resource is Ready".into()),
        Some(c) => (KStatus::InProgress, c.message.clone()),
        None => (KStatus::Current, "Resource is current".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_is_kept_while_status_holds() {
        let t0 = Time(jiff::Timestamp::from_second(1000).unwrap());
        let t1 = Time(jiff::Timestamp::from_second(2000).unwrap());
        let first = merge(
            &[],
            vec![Want::new("Ready", false, "Starting", "")],
            Some(1),
            &t0,
        );
        let same = merge(
            &first,
            vec![Want::new("Ready", false, "Starting", "still")],
            Some(2),
            &t1,
        );
        assert_eq!(same[0].last_transition_time, t0);
        let flipped = merge(
            &same,
            vec![Want::new("Ready", true, "Running", "")],
            Some(2),
            &t1,
        );
        assert_eq!(flipped[0].last_transition_time, t1);
    }
}
