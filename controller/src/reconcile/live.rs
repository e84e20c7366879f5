//! What the operator reads off a live pod, in the terms its decisions need.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::api::{ISOLATION_GATE, NETWORK_POLICY_UID_ANNOTATION, POLICY_HASH_ANNOTATION};
use crate::render::pod::ISOLATION_CHECK;

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

/// The fields of a pod that carry its isolation, read the same way from the planned and the
/// live pod: a live pod whose fields differ (a forged pod, an edit the API server allowed, a
/// mutating webhook) is not running as the policy says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Guard {
    runtime_class: Option<String>,
    service_account: Option<String>,
    automount: Option<bool>,
    host_namespaces: bool,
    pod_non_root: Option<bool>,
    pod_seccomp: Option<(String, Option<String>)>,
    privileged: bool,
    escalation: Option<bool>,
    read_only_root: Option<bool>,
    non_root: Option<bool>,
    added_capabilities: Vec<String>,
    drops_all: bool,
    seccomp: Option<(String, Option<String>)>,
}

impl Guard {
    /// Reads the guard of `pod`'s agent container (named `agent`).
    pub fn of(pod: &Pod) -> Self {
        let Some(spec) = pod.spec.as_ref() else {
            return Self::default();
        };
        let psc = spec.security_context.as_ref();
        let agent = spec.containers.iter().find(|c| c.name == "agent");
        let sc = agent.and_then(|c| c.security_context.as_ref());
        let seccomp = |p: Option<&k8s_openapi::api::core::v1::SeccompProfile>| {
            p.map(|p| (p.type_.clone(), p.localhost_profile.clone()))
        };
        let caps = sc.and_then(|s| s.capabilities.as_ref());
        let mut added: Vec<String> = caps.and_then(|c| c.add.clone()).unwrap_or_default();
        added.sort();
        Self {
            runtime_class: spec.runtime_class_name.clone(),
            service_account: spec.service_account_name.clone(),
            automount: spec.automount_service_account_token,
            host_namespaces: spec.host_network == Some(true)
                || spec.host_pid == Some(true)
                || spec.host_ipc == Some(true),
            pod_non_root: psc.and_then(|s| s.run_as_non_root),
            pod_seccomp: seccomp(psc.and_then(|s| s.seccomp_profile.as_ref())),
            privileged: sc.and_then(|s| s.privileged) == Some(true),
            escalation: sc.and_then(|s| s.allow_privilege_escalation),
            read_only_root: sc.and_then(|s| s.read_only_root_filesystem),
            non_root: sc.and_then(|s| s.run_as_non_root),
            added_capabilities: added,
            drops_all: caps
                .and_then(|c| c.drop.as_ref())
                .is_some_and(|d| d.iter().any(|x| x == "ALL")),
            seccomp: seccomp(sc.and_then(|s| s.seccomp_profile.as_ref())),
        }
    }
}

/// Drops from a cached pod what [`LivePod::read`] and [`Guard::of`] never read (environment,
/// commands, volumes, tolerations, image digests, most of the status): the operator's pod
/// cache holds one per sandbox, and these are most of a pod's size. Everything the decisions
/// read stays exactly as it was (a test reads a pod before and after).
pub fn keep_what_is_read(pod: &mut Pod) {
    use k8s_openapi::api::core::v1::{Container, ContainerStatus, PodSpec, PodStatus};
    pod.metadata.managed_fields = None;
    let container = |c: &mut Container| Container {
        name: std::mem::take(&mut c.name),
        image: c.image.take(),
        security_context: c.security_context.take(),
        ..Default::default()
    };
    if let Some(spec) = pod.spec.as_mut() {
        *spec = PodSpec {
            containers: spec.containers.iter_mut().map(container).collect(),
            // Of the init containers only the names are read.
            init_containers: spec.init_containers.as_mut().map(|all| {
                all.iter_mut()
                    .map(|c| Container {
                        name: std::mem::take(&mut c.name),
                        ..Default::default()
                    })
                    .collect()
            }),
            runtime_class_name: spec.runtime_class_name.take(),
            service_account_name: spec.service_account_name.take(),
            automount_service_account_token: spec.automount_service_account_token.take(),
            host_network: spec.host_network.take(),
            host_pid: spec.host_pid.take(),
            host_ipc: spec.host_ipc.take(),
            security_context: spec.security_context.take(),
            scheduling_gates: spec.scheduling_gates.take(),
            ..Default::default()
        };
    }
    let container_status = |c: &mut ContainerStatus| ContainerStatus {
        name: std::mem::take(&mut c.name),
        state: c.state.take(),
        last_state: c.last_state.take(),
        ..Default::default()
    };
    if let Some(status) = pod.status.as_mut() {
        *status = PodStatus {
            phase: status.phase.take(),
            reason: status.reason.take(),
            message: status.message.take(),
            pod_ip: status.pod_ip.take(),
            start_time: status.start_time.take(),
            conditions: status.conditions.take().map(|all| {
                all.into_iter()
                    .filter(|c| c.type_ == "Ready")
                    .map(|c| k8s_openapi::api::core::v1::PodCondition {
                        type_: c.type_,
                        status: c.status,
                        ..Default::default()
                    })
                    .collect()
            }),
            container_statuses: status
                .container_statuses
                .as_mut()
                .map(|all| all.iter_mut().map(container_status).collect()),
            init_container_statuses: status
                .init_container_statuses
                .as_mut()
                .map(|all| all.iter_mut().map(container_status).collect()),
            ..Default::default()
        };
    }
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
    /// When the kubelet accepted it (`status.startTime`).
    pub start_time: Option<Timestamp>,
    /// Whether a container of it ever started (a pod the node refused never ran).
    pub ever_ran: bool,
    /// The `isolation-check` init container is running: the network plugin does not yet
    /// enforce the pod's NetworkPolicy.
    pub checking_isolation: bool,
    /// Why the `isolation-check` init container last failed, if it did.
    pub isolation_check_failure: Option<String>,
    /// Why the `isolation-check` init container waits to start, when it is not the usual
    /// (`ImagePullBackOff`, `ErrImagePull`, `CrashLoopBackOff`, ...), with the kubelet's message.
    pub isolation_check_waiting: Option<String>,
    /// The pod has the `isolation-check` init container.
    pub has_isolation_check: bool,
    pub guard: Guard,
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
        let check = status
            .and_then(|s| s.init_container_statuses.as_ref())
            .and_then(|all| all.iter().find(|c| c.name == ISOLATION_CHECK));
        let checking_isolation = check
            .and_then(|c| c.state.as_ref())
            .is_some_and(|st| st.running.is_some());
        let isolation_check_failure = check.and_then(|c| {
            [c.state.as_ref(), c.last_state.as_ref()]
                .into_iter()
                .flatten()
                .filter_map(|st| st.terminated.as_ref())
                .find(|t| t.exit_code != 0)
                .map(|t| {
                    t.message
                        .as_deref()
                        .map(str::trim)
                        .filter(|m| !m.is_empty())
                        .map_or_else(|| format!("exit code {}", t.exit_code), str::to_string)
                })
        });
        let isolation_check_waiting = check
            .and_then(|c| c.state.as_ref()?.waiting.as_ref())
            .filter(|w| {
                !matches!(
                    w.reason.as_deref(),
                    None | Some("PodInitializing" | "ContainerCreating")
                )
            })
            .map(|w| match (&w.reason, &w.message) {
                (Some(r), Some(m)) => format!("{r}: {m}"),
                (Some(r), None) => r.clone(),
                (None, _) => "waiting".into(),
            });
        let has_isolation_check = spec
            .and_then(|s| s.init_containers.as_ref())
            .is_some_and(|all| all.iter().any(|c| c.name == ISOLATION_CHECK));
        let annotations = pod.annotations();
        Self {
            uid: pod.uid().unwrap_or_default(),
            ours: controlled_by(&pod.metadata, sandbox_uid),
            deleting: pod.metadata.deletion_timestamp.is_some(),
            hash: annotations.get(POLICY_HASH_ANNOTATION).cloned(),
            labels: pod.labels().clone(),
            image: spec
                .and_then(|s| s.containers.iter().find(|c| c.name == "agent"))
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
            start_time: status.and_then(|s| s.start_time.as_ref()).map(|t| t.0),
            ever_ran: status
                .and_then(|s| s.container_statuses.as_ref())
                .into_iter()
                .flatten()
                .any(|c| {
                    let started = |st: Option<&k8s_openapi::api::core::v1::ContainerState>| {
                        st.is_some_and(|st| {
                            st.running.is_some()
                                || st
                                    .terminated
                                    .as_ref()
                                    .is_some_and(|t| t.started_at.is_some())
                        })
                    };
                    started(c.state.as_ref()) || started(c.last_state.as_ref())
                }),
            checking_isolation,
            isolation_check_failure,
            isolation_check_waiting,
            has_isolation_check,
            guard: Guard::of(pod),
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
                    "state": {"terminated": {"exitCode": 137, "startedAt": "2026-01-01T00:00:01Z",
                                             "finishedAt": "2026-01-01T00:00:05Z"}}}]}
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
        assert!(live.ever_ran);
        assert!(!LivePod::read(&pod, "another-sandbox").ours);
    }
}
