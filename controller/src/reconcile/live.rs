//! What the operator reads off a live pod, in the terms its decisions need.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::api::{ISOLATION_GATE, NETWORK_POLICY_UID_ANNOTATION, POLICY_HASH_ANNOTATION};

use super::ownership::controlled_by;

/// A pod's phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

/// A sandbox's pod as it is in the cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct LivePod {
    pub uid: String,
    /// Controlled by the sandbox being reconciled.
    pub ours: bool,
    pub deleting: bool,
    /// `palisade.dev/policy-hash`: the plan it was created from.
    pub hash: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The agent container's image.
    pub image: Option<String>,
    /// Position of the `palisade.dev/isolation` scheduling gate, while it is there.
    pub gate: Option<usize>,
    /// `palisade.dev/network-policy-uid`: the NetworkPolicy it was created behind.
    pub network_policy_uid: Option<String>,
    pub phase: PodPhase,
    pub ready: bool,
    /// `status.reason` (`Evicted`, `DeadlineExceeded`, `Preempting`, ...).
    pub reason: Option<String>,
    pub message: Option<String>,
    /// When its containers last terminated.
    pub finished_at: Option<Timestamp>,
    pub ip: Option<String>,
}

impl LivePod {
    /// Reads `pod` as the pod of the sandbox with `sandbox_uid`.
    pub fn read(pod: &Pod, sandbox_uid: &str) -> Self {
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let phase = match status.and_then(|s| s.phase.as_deref()) {
            Some("Pending") | None => PodPhase::Pending,
            Some("Running") => PodPhase::Running,
            Some("Succeeded") => PodPhase::Succeeded,
            Some("Failed") => PodPhase::Failed,
            Some(_) => PodPhase::Unknown,
        };
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let finished_at = status
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
            .map(|t| t.0)
            .max();
        let annotations = pod.annotations();
        Self {
            uid: pod.uid().unwrap_or_default(),
            ours: controlled_by(&pod.metadata, sandbox_uid),
            deleting: pod.metadata.deletion_timestamp.is_some(),
            hash: annotations.get(POLICY_HASH_ANNOTATION).cloned(),
            labels: pod.labels().clone(),
            image: spec
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone()),
            gate: spec
                .and_then(|s| s.scheduling_gates.as_ref())
                .and_then(|g| g.iter().position(|g| g.name == ISOLATION_GATE)),
            network_policy_uid: annotations.get(NETWORK_POLICY_UID_ANNOTATION).cloned(),
            phase,
            ready,
            reason: status.and_then(|s| s.reason.clone()),
            message: status.and_then(|s| s.message.clone()),
            finished_at,
            ip: status.and_then(|s| s.pod_ip.clone()),
        }
    }
}

/// The isolating NetworkPolicy as it is in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveIsolation {
    pub uid: String,
    /// Controlled by the sandbox being reconciled.
    pub ours: bool,
    pub deleting: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_what_the_decisions_need() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "a", "uid": "pod-1",
                "labels": {"palisade.dev/sandbox": "a"},
                "annotations": {"palisade.dev/policy-hash": "h1", "palisade.dev/network-policy-uid": "np-1"},
                "ownerReferences": [{"apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox",
                    "name": "a", "uid": "sb-1", "controller": true}]},
            "spec": {"containers": [{"name": "agent", "image": "ghcr.io/a/b:1"}],
                     "schedulingGates": [{"name": "other"}, {"name": "palisade.dev/isolation"}]},
            "status": {"phase": "Failed", "reason": "Evicted", "message": "low on memory",
                "podIP": "10.0.0.9",
                "containerStatuses": [{"name": "agent", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 137, "finishedAt": "2026-01-01T00:00:05Z"}}}]}
        }))
        .unwrap();
        let live = LivePod::read(&pod, "sb-1");
        assert!(live.ours && !live.deleting && !live.ready);
        assert_eq!(live.gate, Some(1));
        assert_eq!(live.hash.as_deref(), Some("h1"));
        assert_eq!(live.network_policy_uid.as_deref(), Some("np-1"));
        assert_eq!(live.phase, PodPhase::Failed);
        assert_eq!(live.reason.as_deref(), Some("Evicted"));
        assert_eq!(
            live.finished_at,
            Some("2026-01-01T00:00:05Z".parse().unwrap())
        );
        assert_eq!(live.image.as_deref(), Some("ghcr.io/a/b:1"));
        assert!(!LivePod::read(&pod, "another-sandbox").ours);
    }
}
