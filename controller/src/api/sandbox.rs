//! `AgentSandbox`: an agent workload bound to an `AgentPolicy`. Nothing in it can loosen the
//! policy: there is no free-form pod spec, and pod labels and annotations are an allowlist.

// kube's printcolumn attributes repeat `type_ = "string"`, which clippy takes for duplicates.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An agent workload (image, command, environment) run under an AgentPolicy.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "palisade.dev",
    version = "v1alpha1",
    kind = "AgentSandbox",
    namespaced,
    status = "AgentSandboxStatus",
    shortname = "asb",
    category = "palisade",
    doc = "AgentSandbox runs an agent workload (image, command, environment) in a hardened pod compiled from the AgentPolicy it references.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Policy", type_ = "string", json_path = ".spec.policyRef.name"),
    printcolumn(
        name = "Pool",
        type_ = "string",
        json_path = ".spec.poolRef.name",
        priority = 1
    ),
    printcolumn(
        name = "Runtime",
        type_ = "string",
        json_path = ".status.runtimeClassName"
    ),
    printcolumn(name = "Pod IP", type_ = "string", json_path = ".status.podIP"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.poolRef) || has(self.policyRef)", "message": "policyRef is required unless poolRef names a pool (whose template gives it)", "fieldPath": ".policyRef", "reason": "FieldValueRequired"},
    {"rule": "has(self.poolRef) || has(self.image)", "message": "image is required unless poolRef names a pool (whose template gives it)", "fieldPath": ".image", "reason": "FieldValueRequired"},
    {"rule": "!has(self.pool) || has(self.poolRef)", "message": "pool applies only with poolRef"},
    {"rule": "has(self.poolRef) == has(oldSelf.poolRef)", "message": "poolRef cannot be added or removed"}
]))]
pub struct AgentSandboxSpec {
    /// The AgentPolicy (in the same namespace) this sandbox runs under. Required unless
    /// `poolRef` is set: then the pool's template names it.
    #[serde(default, skip_serializing_if = "PolicyRef::is_unset")]
    pub policy_ref: PolicyRef,

    /// Container image of the agent. The policy's `images` rules apply. Required unless
    /// `poolRef` is set: then the pool's template gives it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: String,

    /// An AgentSandboxPool in the same namespace. The sandbox takes one of the pool's ready warm
    /// sandboxes (its pod, NetworkPolicy, ServiceAccount, Service and workspace move to this
    /// sandbox, which then keeps their names) or, when none is ready or this spec sets fields
    /// beyond the template (say `env` or `args`), starts cold from the template (see `pool`).
    /// The template is read once, when the sandbox starts: later changes of the pool leave the
    /// sandbox as it is. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self == oldSelf", "message": "poolRef is immutable"}
    ]))]
    pub pool_ref: Option<PoolRef>,

    /// With `poolRef`: what to do when the pool has no ready warm sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolClaim>,

    /// Entrypoint; the image's when omitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub command: Vec<String>,

    /// Arguments to the entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub args: Vec<String>,

    /// Environment variables: literal values or keys of Secrets and ConfigMaps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub env: Vec<EnvVar>,

    /// Working directory; the image's when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096), regex(pattern = r"^/"))]
    pub working_dir: Option<String>,

    /// Ports the agent listens on. Ingress to them is still governed by the policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub ports: Vec<SandboxPort>,

    /// Requests and limits for `cpu`, `memory` and `ephemeral-storage`, within the policy's caps.
    /// Omitted: the caps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<SandboxResources>,

    /// Create a headless Service so the sandbox has a stable DNS name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<bool>,

    /// Remove the pod but keep the sandbox and its persistent workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,

    /// Absolute time after which the sandbox is expired and its pod removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,

    /// Seconds after the agent finished (Succeeded or Failed) before the sandbox is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 31_536_000))]
    pub ttl_seconds_after_finished: Option<i32>,

    /// `Always` (default), `OnFailure` or `Never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,

    /// Extra node labels the pod must match (the RuntimeClass adds its own).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,

    /// Extra labels on the pod: only keys the operator allows (none by default; its
    /// `--pod-label-allow` adds keys), since a label can make the pod a Service's endpoint or a
    /// peer another policy trusts. Keys of Kubernetes (`kubernetes.io`, `k8s.io`), Palisade,
    /// network plugins, meshes and runtimes are always refused. A sandbox with another key is
    /// blocked (`PodMetadataRefused`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": r"self.all(k, !k.lowerAscii().matches('^([^/]*\\.)?(kubernetes\\.io|k8s\\.io|palisade\\.dev|cni\\.cncf\\.io|multus-cni\\.io|projectcalico\\.org|cilium\\.io|antrea\\.io|ovn\\.org|weave\\.works|istio\\.io|linkerd\\.io|kuma\\.io|openshift\\.io|katacontainers\\.io|gvisor\\.dev|crio\\.io)(/|$)') && !k.lowerAscii().matches('^(io\\.katacontainers\\.|dev\\.gvisor\\.|io\\.kubernetes\\.|io\\.containerd\\.|io\\.cri-containerd\\.|io\\.podman\\.|run\\.oci\\.)'))",
         "message": "pod labels of Kubernetes, Palisade, network plugins, meshes and runtimes are refused"}
    ]))]
    pub pod_labels: BTreeMap<String, String>,

    /// Extra annotations on the pod: only keys the operator allows (by default `prometheus.io/*`
    /// and `cluster-autoscaler.kubernetes.io/safe-to-evict`; its `--pod-annotation-allow` adds
    /// keys). Keys of Kubernetes, Palisade, network plugins (Multus, Calico, Cilium, ...),
    /// meshes and runtimes (Kata, gVisor, CRI-O, containerd), AppArmor and seccomp are always
    /// refused. A sandbox with another key is blocked (`PodMetadataRefused`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": r"self.all(k, k == 'cluster-autoscaler.kubernetes.io/safe-to-evict' || (!k.lowerAscii().matches('^([^/]*\\.)?(kubernetes\\.io|k8s\\.io|palisade\\.dev|cni\\.cncf\\.io|multus-cni\\.io|projectcalico\\.org|cilium\\.io|antrea\\.io|ovn\\.org|weave\\.works|istio\\.io|linkerd\\.io|kuma\\.io|openshift\\.io|katacontainers\\.io|gvisor\\.dev|crio\\.io)(/|$)') && !k.lowerAscii().matches('^(io\\.katacontainers\\.|dev\\.gvisor\\.|io\\.kubernetes\\.|io\\.containerd\\.|io\\.cri-containerd\\.|io\\.podman\\.|run\\.oci\\.)')))",
         "message": "pod annotations of Kubernetes, Palisade, network plugins, meshes, runtimes, AppArmor and seccomp are refused"}
    ]))]
    pub pod_annotations: BTreeMap<String, String>,
}

/// Reference to an AgentPolicy in the sandbox's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyRef {
    /// Name of the AgentPolicy.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

impl PolicyRef {
    /// No policy named (a sandbox of a pool, whose template names it).
    pub fn is_unset(&self) -> bool {
        self.name.is_empty()
    }
}

/// Reference to an AgentSandboxPool in the sandbox's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolRef {
    /// Name of the AgentSandboxPool.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// How a sandbox of a pool starts when the pool has no ready warm sandbox.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolClaim {
    /// `Cold` (default): start cold from the pool's template at once. `Wait`: wait for a warm
    /// sandbox until `waitSeconds` have passed since the sandbox was created, then fail
    /// (phase `Failed`, reason `PoolExhausted`); it never waits longer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when_empty: Option<WhenEmpty>,

    /// With `whenEmpty: Wait`: how long to wait, in seconds (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86_400))]
    pub wait_seconds: Option<i32>,
}

/// What a sandbox of an empty pool does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum WhenEmpty {
    /// Start cold from the template.
    #[default]
    Cold,
    /// Wait for a warm sandbox, up to `waitSeconds`.
    Wait,
}

/// How a sandbox of a pool started: what `status.pool` records.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxPoolStatus {
    /// The AgentSandboxPool.
    pub name: String,

    /// `Warm`: the sandbox took a warm sandbox of the pool. `Cold`: it started from the
    /// template (`reason` says why).
    pub start: PoolStart,

    /// Why the sandbox started cold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,

    /// The warm sandbox taken: its children (pod, NetworkPolicy, ServiceAccount, ...) keep its
    /// name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,

    /// The UID of the warm sandbox taken (its pod's proxy credential names it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_uid: Option<String>,

    /// Hash of the template the sandbox started from.
    pub template_hash: String,

    /// The template as it was when the sandbox started (an AgentSandbox spec): later changes of
    /// the pool, or its deletion, leave the sandbox as it is.
    #[schemars(schema_with = "crate::api::pool::any_object")]
    pub template: serde_json::Value,
}

/// How a sandbox of a pool started.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PoolStart {
    /// It took a warm sandbox.
    Warm,
    /// It started from the template.
    #[default]
    Cold,
}

/// An environment variable.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(has(self.value) && has(self.valueFrom))", "message": "set value or valueFrom, not both"}
]))]
pub struct EnvVar {
    /// Name of the variable.
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    )]
    pub name: String,

    /// Literal value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,

    /// Value from a key of a Secret or ConfigMap in the sandbox's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

/// Where an environment variable's value comes from: exactly one key reference.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.secretKeyRef) != has(self.configMapKeyRef)", "message": "set exactly one of secretKeyRef or configMapKeyRef"}
]))]
pub struct EnvVarSource {
    /// A key of a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeyRef>,

    /// A key of a ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeyRef>,
}

/// A key of a Secret or ConfigMap.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyRef {
    /// Name of the Secret or ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
    /// Start even when the object or key is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// A port the agent listens on.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SandboxPort {
    /// Name of the port (also the Service port name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 15),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: Option<String>,

    /// Port number (1-65535).
    #[schemars(range(min = 1, max = 65535))]
    pub container_port: i32,

    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<PortProtocol>,
}

// Protocol of a container port.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[allow(clippy::upper_case_acronyms)]
pub enum PortProtocol {
    /// TCP.
    #[default]
    TCP,
    /// UDP.
    UDP,
    /// SCTP.
    SCTP,
}

/// Requests and limits, in the shape of Kubernetes `ResourceRequirements`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SandboxResources {
    /// Minimum resources (`cpu`, `memory`, `ephemeral-storage`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.all(k, k in ['cpu', 'memory', 'ephemeral-storage'])", "message": "only cpu, memory and ephemeral-storage may be requested"}
    ]))]
    pub requests: BTreeMap<String, Quantity>,

    /// Maximum resources (`cpu`, `memory`, `ephemeral-storage`), at most the policy's caps.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.all(k, k in ['cpu', 'memory', 'ephemeral-storage'])", "message": "only cpu, memory and ephemeral-storage may be limited"}
    ]))]
    pub limits: BTreeMap<String, Quantity>,
}

// Restart policy of the sandbox's pod.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RestartPolicy {
    /// Restart the agent whenever it exits.
    #[default]
    Always,
    /// Restart the agent when it fails.
    OnFailure,
    /// Never restart the agent.
    Never,
}

// Lifecycle phase of a sandbox.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum SandboxPhase {
    /// Accepted, nothing created yet.
    #[default]
    Pending,
    /// Children created, the pod is not ready yet.
    Starting,
    /// The pod is ready.
    Running,
    /// Paused: no pod, workspace kept.
    Paused,
    /// The agent exited successfully.
    Succeeded,
    /// The agent failed.
    Failed,
    /// The sandbox cannot run as its policy states; see `message` and the `Stalled` condition.
    Blocked,
    /// `expiresAt` or the policy's `timeoutMs` has passed.
    Expired,
}

/// Observed state of an AgentSandbox, recomputed from the cluster on every pass.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentSandboxStatus {
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<SandboxPhase>,

    /// `Ready`, `PolicyResolved`, `RuntimeReady`, `NetworkIsolated`, `Reconciling`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Name of the sandbox's pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,

    /// IP address of the sandbox's pod.
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,

    /// DNS name of the sandbox's headless Service.
    #[serde(
        default,
        rename = "serviceFQDN",
        skip_serializing_if = "Option::is_none"
    )]
    pub service_fqdn: Option<String>,

    /// RuntimeClass the pod runs on (empty for runc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Option<String>,

    /// Hash of the compiled pod; the pod is recreated when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_hash: Option<String>,

    /// The version of the AgentPolicy the running pod and its NetworkPolicy were last made
    /// for (absent while none is: blocked, paused, being replaced). The egress gateway allows a
    /// newer version of the policy only once it is here; until then a request must pass both
    /// versions, so a narrowing applies at once and a widening once the operator enforces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced_policy: Option<PolicyVersion>,

    /// When the sandbox first started running (the base of `timeoutMs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,

    /// When the sandbox expires: the earlier of `expiresAt` and the moment its `timeoutMs` of
    /// run time (paused time not counted) runs out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,

    /// When the agent finished (phase `Succeeded` or `Failed`). A finished sandbox never runs
    /// again, even when its pod is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,

    /// When the current pause began; unset while the sandbox is not paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_at: Option<Time>,

    /// Milliseconds spent paused since `startedAt` (earlier pauses), which do not count against
    /// the policy's `timeoutMs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_ms: Option<i64>,

    /// UID of the pod the operator created for this sandbox. A pod of the sandbox's name with
    /// another UID is not trusted and is replaced.
    #[serde(default, rename = "podUID", skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,

    /// Consecutive pods that failed without the agent finishing (evicted, rejected by the
    /// node): each replacement waits longer (1 s doubling to 5 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_failures: Option<i32>,

    /// When the last of those pods failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_failed_at: Option<Time>,

    /// Since when the isolating NetworkPolicy could not be brought to what the policy says while
    /// a pod ran under one that may be wider; the pod is removed 30 s later (fail closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy_pending_since: Option<Time>,

    /// This sandbox's enforcement report, computed with the cluster's live facts: allowances
    /// the platform added (`added`), what is enforced more strictly than written (`narrowed`),
    /// what has no meaning in a pod (`notApplicable`) and what the platform cannot guarantee
    /// here (`notEnforced`, e.g. the syscall filter under gVisor, or a cluster administrator's
    /// CiliumClusterwideNetworkPolicies, AdminNetworkPolicies and ClusterNetworkPolicies that
    /// allow the pod more, listed first). At most 8 entries per list and 256 characters per
    /// message; `palisade render` lists all of the policy's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcement: Option<crate::api::report::EnforcementReport>,

    /// A sentence for people: why the sandbox is in this phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// Requests the egress gateway refused for this sandbox (written by the gateway, not the
    /// operator): how many, and the hosts refused most recently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_denials: Option<EgressDenials>,

    /// For a sandbox of a pool: how it started (warm or cold), from which warm sandbox, and the
    /// template it started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<SandboxPoolStatus>,
}

/// One version of an AgentPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyVersion {
    /// The AgentPolicy's UID.
    pub uid: String,

    /// Its `metadata.generation` (changes with its spec).
    #[serde(default)]
    pub generation: i64,
}

/// What the egress gateway refused for one sandbox.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressDenials {
    /// Requests refused in all.
    #[serde(default)]
    pub total: i64,

    /// The hosts refused most recently, newest first (at most 8), each with its count.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub hosts: Vec<EgressDenial>,
}

/// Refused requests to one host and port.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressDenial {
    /// The host asked for (a name or an address), at most 253 characters.
    #[schemars(length(max = 253))]
    pub host: String,

    /// The port asked for.
    pub port: i32,

    /// Why the last request was refused (`NoMatchingRule`, `PortNotAllowed`, `FloorAddress`,
    /// `PrivateAddress`, `DeniedAddress`, `SniMismatch`, ...; the gateway's audit lines and
    /// README list them all).
    #[schemars(length(max = 64))]
    pub reason: String,

    /// Requests to this host and port refused.
    pub count: i64,

    /// When the last one was refused.
    pub last_time: Time,
}

impl AgentSandbox {
    /// The template recorded when this sandbox of a pool started, if it did.
    pub fn pool_template(&self) -> Option<AgentSandboxSpec> {
        let pool = self.status.as_ref()?.pool.as_ref()?;
        serde_json::from_value(pool.template.clone()).ok()
    }

    /// The name of the AgentPolicy the sandbox runs under: its own `policyRef`, or, for a
    /// sandbox of a pool that names none, the one of the template it started from (empty until
    /// it started).
    pub fn policy_name(&self) -> String {
        if !self.spec.policy_ref.is_unset() {
            return self.spec.policy_ref.name.clone();
        }
        self.pool_template()
            .map(|t| t.policy_ref.name)
            .unwrap_or_default()
    }
}
