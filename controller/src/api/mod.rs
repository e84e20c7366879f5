//! The custom resources: `AgentPolicy` and `AgentSandbox` (`palisade.dev/v1alpha1`).

pub mod crd;
pub mod policy;
pub mod pool;
pub mod report;
pub mod sandbox;

pub use policy::{AgentPolicy, AgentPolicySpec, AgentPolicyStatus};
pub use pool::{AgentSandboxPool, AgentSandboxPoolSpec, AgentSandboxPoolStatus};
pub use report::{EnforcementReport, ReportEntry};
pub use sandbox::{AgentSandbox, AgentSandboxSpec, AgentSandboxStatus, SandboxPhase};

/// The API group of every Palisade kind.
pub const GROUP: &str = "palisade.dev";
/// The only served version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of every Palisade kind.
pub const API_VERSION: &str = "palisade.dev/v1alpha1";
/// Label on every object the operator creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`], and the server-side apply field manager.
pub const MANAGER: &str = "palisade";
/// Label naming the sandbox an object belongs to.
pub const SANDBOX_LABEL: &str = "palisade.dev/sandbox";
/// Pod annotation holding the hash of the compiled pod.
pub const POLICY_HASH_ANNOTATION: &str = "palisade.dev/policy-hash";
/// Pod annotation naming the UID of the isolating NetworkPolicy the pod was created behind.
pub const NETWORK_POLICY_UID_ANNOTATION: &str = "palisade.dev/network-policy-uid";
/// Scheduling gate every sandbox pod is created with; the operator removes it only after it
/// has read back the pod's NetworkPolicy.
pub const ISOLATION_GATE: &str = "palisade.dev/isolation";
/// Every sandbox's ServiceAccount is named with this prefix (`palisade-<sandbox>`): the chart's
/// admission policy lets the operator's pods run under such accounts only, so stolen operator
/// credentials cannot start a pod under some other controller's account.
pub const SERVICE_ACCOUNT_PREFIX: &str = "palisade-";
