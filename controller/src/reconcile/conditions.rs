//! Conditions in the kstatus shape, keeping `lastTransitionTime` when a status does not change.

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
