//! Compiling a sandbox: `compile(policy, sandbox, facts)` gives the plan of objects that run it,
//! in apply order, or the reason it must not run. Pure: no client, no clock.

pub mod children;
pub mod explain;
pub mod facts;
pub mod gateway;
pub mod hash;
pub mod network;
pub mod pod;
pub mod resources;
pub mod secrets;
pub mod template;

use std::fmt;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::Value;

use crate::api::policy::{AgentPolicySpec, Runtime};
use crate::api::report::EnforcementReport;
use crate::api::{AgentPolicy, AgentSandbox};
use crate::policy::legacy::{self, Network};
use crate::policy::validate::{validate_policy, validate_sandbox};
use crate::policy::{Invalid, image};

pub use facts::ClusterFacts;

/// Why a sandbox cannot run as its policy states. Each reason is a condition reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockReason {
    PolicyInvalid,
    SandboxInvalid,
    PolicyMismatch,
    OverCaps,
    ImageRefused,
    RuntimeClassMissing,
    RuntimeHandlerMismatch,
    FqdnBackendMissing,
    SeccompProfileCrdMissing,
    SeccompNotEnforced,
    ProxyUnreachable,
    TokenAudienceRefused,
    SecretRefused,
    PodMetadataRefused,
    Expired,
}

impl BlockReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockReason::PolicyInvalid => "PolicyInvalid",
            BlockReason::SandboxInvalid => "SandboxInvalid",
            BlockReason::PolicyMismatch => "PolicyMismatch",
            BlockReason::OverCaps => "OverCaps",
            BlockReason::ImageRefused => "ImageRefused",
            BlockReason::RuntimeClassMissing => "RuntimeClassMissing",
            BlockReason::RuntimeHandlerMismatch => "RuntimeHandlerMismatch",
            BlockReason::FqdnBackendMissing => "FqdnBackendMissing",
            BlockReason::SeccompProfileCrdMissing => "SeccompProfileCrdMissing",
            BlockReason::SeccompNotEnforced => "SeccompNotEnforced",
            BlockReason::ProxyUnreachable => "ProxyUnreachable",
            BlockReason::TokenAudienceRefused => "TokenAudienceRefused",
            BlockReason::SecretRefused => "SecretRefused",
            BlockReason::PodMetadataRefused => "PodMetadataRefused",
            BlockReason::Expired => "Expired",
        }
    }
}

/// A sandbox that must not run, and a message a person can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    pub reason: BlockReason,
    pub message: String,
}

impl Blocked {
    pub fn new(reason: BlockReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.message)
    }
}

impl std::error::Error for Blocked {}

/// The objects that run a sandbox, in apply order.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub service_account: ServiceAccount,
    /// Must exist before the pod.
    pub network_policy: NetworkPolicy,
    /// `cilium.io/v2` CiliumNetworkPolicy for FQDN egress.
    pub fqdn_policy: Option<Value>,
    /// `security-profiles-operator.x-k8s.io` SeccompProfile.
    pub seccomp_profile: Option<Value>,
    pub workspace_claim: Option<PersistentVolumeClaim>,
    pub service: Option<Service>,
    pub pod: Pod,
    /// Hash of the pod part; the pod is recreated when it changes.
    pub pod_hash: String,
    /// The hash of the same pod as planned before `resources.defaultRequests` (requests equal
    /// to the limits): a running pod of that hash is kept, so upgrading the operator recreates
    /// no pod for requests alone.
    pub pod_hash_before_default_requests: Option<String>,
    pub runtime_class_name: Option<String>,
    pub report: EnforcementReport,
}

impl Plan {
    /// Every object as JSON, in apply order.
    pub fn objects(&self) -> Vec<Value> {
        let mut out = vec![
            to_value(&self.service_account),
            to_value(&self.network_policy),
        ];
        out.extend(self.fqdn_policy.iter().cloned());
        out.extend(self.seccomp_profile.iter().cloned());
        out.extend(self.workspace_claim.iter().map(to_value));
        out.extend(self.service.iter().map(to_value));
        out.push(to_value(&self.pod));
        out
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// A policy checked and normalized once, shared by every sandbox that uses it.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckedPolicy {
    pub spec: AgentPolicySpec,
    pub network: Network,
    pub runtime: Runtime,
    /// Report entries that depend on the policy alone.
    pub report: EnforcementReport,
    pub hash: String,
}

/// Validates and normalizes a policy.
pub fn check_policy(spec: &AgentPolicySpec) -> Result<CheckedPolicy, Invalid> {
    validate_policy(spec)?;
    let mut report = EnforcementReport::default();
    let network = legacy::normalize(spec, &mut report)?;
    if let Some(fs) = &spec.filesystem
        && fs.clear_policy_on_exit.is_some()
    {
        report.not_applicable(
            "filesystem.clearPolicyOnExit",
            "a pod's grants end with the pod; nothing is retained to clear",
        );
    }
    if let Some(ui) = &spec.ui {
        for (field, set) in [
            ("ui.allowWindows", ui.allow_windows.is_some()),
            ("ui.clipboard", ui.clipboard.is_some()),
            ("ui.allowInputInjection", ui.allow_input_injection.is_some()),
        ] {
            if set {
                report.not_applicable(field, "a pod has no desktop: nothing is granted");
            }
        }
    }
    if let Some(v) = &spec.version {
        report.not_applicable("version", format!("MXC schema version {v}: informational"));
    }
    let runtime = spec
        .isolation
        .as_ref()
        .and_then(|i| i.runtime)
        .unwrap_or_default();
    Ok(CheckedPolicy {
        spec: spec.clone(),
        network,
        runtime,
        report,
        hash: hash::short_hash(spec),
    })
}

/// Compiles a sandbox under its policy. `run_time_ms` is how long the sandbox has run so far
/// (counted from `status.startedAt`), for `timeoutMs`.
pub fn compile(
    policy: &AgentPolicy,
    sandbox: &AgentSandbox,
    facts: &ClusterFacts,
    run_time_ms: u64,
) -> Result<Plan, Blocked> {
    let checked = check_policy(&policy.spec).map_err(|e| {
        Blocked::new(
            BlockReason::PolicyInvalid,
            format!("policy {}: {e}", name_of(&policy.metadata)),
        )
    })?;
    compile_checked(&checked, sandbox, facts, run_time_ms)
}

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

/// Compiles a sandbox under an already checked policy.
pub fn compile_checked(
    checked: &CheckedPolicy,
    sandbox: &AgentSandbox,
    facts: &ClusterFacts,
    run_time_ms: u64,
) -> Result<Plan, Blocked> {
    validate_sandbox(&sandbox.spec)
        .map_err(|e| Blocked::new(BlockReason::SandboxInvalid, e.to_string()))?;
    let spec = &checked.spec;
    let mut report = checked.report.clone();

    if let Some(images) = &spec.images {
        let img = &sandbox.spec.image;
        if !images.allowed_registries.is_empty()
            && !image::registry_allowed(img, &images.allowed_registries)
        {
            return Err(Blocked::new(
                BlockReason::ImageRefused,
                format!(
                    "image {img} is not from an allowed registry ({})",
                    images.allowed_registries.join(", ")
                ),
            ));
        }
        if images.require_digest == Some(true) && !image::has_digest(img) {
            return Err(Blocked::new(
                BlockReason::ImageRefused,
                format!(
                    "image {img} is not pinned by digest (@sha256:...), which the policy requires"
                ),
            ));
        }
    }

    if let Some(audience) = spec
        .identity
        .as_ref()
        .and_then(|i| i.token_audience.as_deref())
        .filter(|a| facts.api_audiences.iter().any(|api| api == a))
    {
        return Err(Blocked::new(
            BlockReason::TokenAudienceRefused,
            format!(
                "identity.tokenAudience {audience} is an audience of the Kubernetes API server: the projected token would be an API token; use automountToken if the agent must reach the API server"
            ),
        ));
    }
    secrets::check(&spec.secrets, &sandbox.spec)?;
    if let Some(message) = facts.pod_keys.check(
        sandbox.spec.pod_labels.keys(),
        sandbox.spec.pod_annotations.keys(),
    ) {
        return Err(Blocked::new(BlockReason::PodMetadataRefused, message));
    }
    let runtime_class_name = runtime_class(checked, facts)?;
    let deadline = match spec.timeout_ms {
        Some(t) => {
            let left = (t as u64).saturating_sub(run_time_ms);
            if left == 0 {
                return Err(Blocked::new(
                    BlockReason::Expired,
                    format!("the sandbox has used its {t} ms (timeoutMs) of run time"),
                ));
            }
            Some(left.div_ceil(1000) as i64)
        }
        None => None,
    };

    let net = network::compile_network(checked, sandbox, facts, &mut report)?;
    let resources = resources::compile_resources(spec, &sandbox.spec)?;
    let seccomp = children::seccomp(checked, sandbox, facts, &mut report)?;
    let pod_input = pod::PodInput {
        sandbox,
        spec,
        runtime_class_name: runtime_class_name.clone(),
        resources: &resources,
        seccomp: &seccomp.pod_profile,
        proxy_env: net.proxy_env.clone(),
        active_deadline_seconds: deadline,
        isolation_check_image: facts.isolation_check_image.as_deref(),
        isolation_check_open_first: facts.isolation_check_open_first,
    };
    if facts.isolation_check_image.is_none() {
        report.not_enforced(
            "network",
            "the isolation check is off (--no-isolation-check): the agent may start before the network plugin enforces the NetworkPolicy, and be unfiltered for that moment",
        );
    }
    let (pod, pod_hash, pod_hash_before_default_requests) = pod::build_pod(&pod_input)?;
    Ok(Plan {
        service_account: children::service_account(spec, sandbox),
        network_policy: net.network_policy,
        fqdn_policy: net.fqdn_policy,
        seccomp_profile: seccomp.object,
        workspace_claim: children::workspace_claim(spec, sandbox),
        service: children::service(sandbox),
        pod,
        pod_hash,
        pod_hash_before_default_requests,
        runtime_class_name,
        report,
    })
}

fn runtime_class(checked: &CheckedPolicy, facts: &ClusterFacts) -> Result<Option<String>, Blocked> {
    let runtime = checked.runtime;
    if runtime == Runtime::Runc {
        return Ok(None);
    }
    let explicit = checked
        .spec
        .isolation
        .as_ref()
        .and_then(|i| i.runtime_class_name.clone());
    let Some(class) = explicit.or_else(|| facts.runtime_class_names.get(&runtime).cloned()) else {
        return Err(Blocked::new(
            BlockReason::RuntimeClassMissing,
            format!("no RuntimeClass is configured for runtime {runtime:?}"),
        ));
    };
    match facts.handler_of(&class, runtime) {
        None => Err(Blocked::new(
            BlockReason::RuntimeClassMissing,
            format!(
                "RuntimeClass {class} (runtime {}) does not exist; install it, the sandbox starts once it appears",
                runtime_name(runtime)
            ),
        )),
        Some(handler) if !facts.handler_matches(runtime, &handler) => Err(Blocked::new(
            BlockReason::RuntimeHandlerMismatch,
            format!(
                "RuntimeClass {class} has handler {handler}, which is not a {} handler ({}); refusing to run with weaker isolation",
                runtime_name(runtime),
                facts
                    .handler_prefixes
                    .get(&runtime)
                    .map(|p| p.join(", "))
                    .unwrap_or_default()
            ),
        )),
        Some(_) => Ok(Some(class)),
    }
}

pub fn runtime_name(r: Runtime) -> &'static str {
    match r {
        Runtime::Gvisor => "gvisor",
        Runtime::Kata => "kata",
        Runtime::Runc => "runc",
    }
}
