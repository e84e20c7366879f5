//! `AgentPolicy`: what an agent may access. The shared fields follow MXC's SandboxPolicy (schema
//! 0.8) name for name; the Kubernetes-only knobs sit beside them.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::report::ReportEntry;

/// What an agent may access: filesystem paths, network egress and ingress, process identity and
/// syscalls, resources, lifetime and isolation. Omitted permissions stay denied.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "palisade.dev",
    version = "v1alpha1",
    kind = "AgentPolicy",
    namespaced,
    status = "AgentPolicyStatus",
    shortname = "apol",
    category = "palisade",
    doc = "AgentPolicy states what an agent may access: filesystem paths, network egress and ingress, process identity and syscalls, resources, lifetime and isolation. Its fields are a superset of MXC's SandboxPolicy; omitted permissions stay denied.",
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Sandboxes",
        type_ = "integer",
        json_path = ".status.sandboxCount"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentPolicySpec {
    /// MXC schema version this policy was written for, e.g. `0.8.0-alpha`. Informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub version: Option<String>,

    /// Filesystem access inside the sandbox. The root filesystem is always read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<FilesystemPolicy>,

    /// Network access. Without it, no egress and no ingress is allowed (and no DNS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkRules>,

    /// MXC runtime settings that apply to every process of the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_config: Option<RuntimeConfig>,

    /// MXC desktop settings (clipboard, GUI). A pod has no desktop, so nothing here is granted;
    /// they are accepted and reported as not applicable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ui: Option<UiPolicy>,

    /// Maximum total run time of the sandbox in milliseconds, across pod restarts, counted from
    /// the sandbox's `status.startedAt`. When it runs out the sandbox is expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1000, max = 31_536_000_000i64))]
    pub timeout_ms: Option<i64>,

    /// Kubernetes extension: which sandbox runtime isolates the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<IsolationPolicy>,

    /// Kubernetes extension: process identity and capabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privileges: Option<PrivilegesPolicy>,

    /// Kubernetes extension: the seccomp profile and blocked syscalls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscalls: Option<SyscallPolicy>,

    /// Kubernetes extension: resource caps. A sandbox may ask for less, never more; one that asks
    /// for nothing gets the caps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceCaps>,

    /// Kubernetes extension: the main writable volume of the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<WorkspacePolicy>,

    /// Kubernetes extension: the sandbox's ServiceAccount and API token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityPolicy>,

    /// Kubernetes extension: which container images sandboxes under this policy may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<ImagePolicy>,

    /// Kubernetes extension: the Secrets (of the sandbox's namespace), and their keys, that a
    /// sandbox under this policy may read into `env` (`valueFrom.secretKeyRef`). Default: none.
    /// A sandbox that references any other Secret is blocked (`SecretRefused`): whoever may
    /// create a sandbox must not read every Secret of the namespace through it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub secrets: Vec<SecretGrant>,
}

/// A Secret sandboxes may reference.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretGrant {
    /// Name of the Secret, in the sandbox's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// The keys of the Secret that may be referenced. Absent: every key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub keys: Option<Vec<String>>,
}

/// An absolute POSIX path inside the sandbox (`/workspace`). `.` and `..` segments are refused.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(transparent)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!self.contains('/./') && !self.contains('/../') && !self.endsWith('/.') && !self.endsWith('/..')", "message": "path must not contain '.' or '..' segments"},
    {"rule": "self == '/' || !self.endsWith('/')", "message": "path must not end with '/'"},
    {"rule": "!self.contains('//')", "message": "path must not contain '//'"}
]))]
pub struct SandboxPath(#[schemars(regex(pattern = r"^/"), length(min = 1, max = 1024))] pub String);

/// Filesystem access inside the sandbox.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilesystemPolicy {
    /// Absolute paths that are writable. Each becomes a size-limited `emptyDir` (or the persistent
    /// workspace volume when it is the workspace path). The mount starts empty: it hides whatever
    /// the image had at that path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub readwrite_paths: Vec<SandboxPath>,

    /// Absolute paths that are readable but not writable. The root filesystem is already
    /// read-only; a read-only path nested under a writable one becomes an empty read-only mount.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub readonly_paths: Vec<SandboxPath>,

    /// Absolute directory paths masked by an empty read-only volume. A file cannot be masked this
    /// way: if the image has a file at such a path, the pod fails to start (it never runs with
    /// the file readable). List directories.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub denied_paths: Vec<SandboxPath>,

    /// MXC: clear the grants when the sandbox exits. Accepted; a pod's grants end with the pod,
    /// so it has no effect on Kubernetes (reported as not applicable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_policy_on_exit: Option<bool>,
}

// `allow` or `deny`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    /// Everything not denied is allowed.
    Allow,
    /// Only what is explicitly allowed is allowed.
    #[default]
    Deny,
}

/// Network access. Use either the directional fields (`egress`, `ingress`) or the legacy MXC
/// fields (`allowOutbound`, `allowLocalNetwork`, `allowedHosts`, `blockedHosts`, `proxy`), not both.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!((has(self.egress) || has(self.ingress)) && (has(self.allowOutbound) || has(self.allowLocalNetwork) || has(self.allowedHosts) || has(self.blockedHosts) || has(self.proxy)))",
     "message": "legacy network fields (allowOutbound, allowLocalNetwork, allowedHosts, blockedHosts, proxy) cannot be mixed with egress/ingress"}
]))]
pub struct NetworkRules {
    /// Outbound traffic from the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressPolicy>,

    /// Inbound traffic to the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressPolicy>,

    /// Cluster DNS: `auto` (default) allows it only when the policy allows some egress,
    /// `cluster` always allows it, `none` never does. The allowance is reported under `added`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsMode>,

    /// Legacy MXC: allow all outbound traffic (translated to `egress.default: allow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_outbound: Option<bool>,

    /// Legacy MXC: accept inbound connections from local/private networks (10.0.0.0/8,
    /// 172.16.0.0/12, 192.168.0.0/16, fc00::/7). It never widens egress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_local_network: Option<bool>,

    /// Legacy MXC: the only hosts (names, IP addresses or CIDRs) outbound traffic may reach, on
    /// every port. Host names become `fqdn` peers, which need an FQDN-capable backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 253)))]
    pub allowed_hosts: Option<Vec<String>>,

    /// Legacy MXC: hosts outbound traffic may never reach (with `allowOutbound: true`). IP
    /// addresses and CIDRs become deny rules. A host name cannot be cut out of an allow-all
    /// egress by a NetworkPolicy: with the egress gateway, all egress then goes through it,
    /// which refuses those names and the names under them (reported as narrowed); without the
    /// gateway such a sandbox is blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 253)))]
    pub blocked_hosts: Option<Vec<String>>,

    /// Legacy MXC: an HTTP proxy outbound traffic goes through (translated to
    /// `runtimeConfig.networkProxy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<LegacyProxy>,
}

/// Legacy MXC proxy: exactly one of `localhost`, `builtinTestServer` or `url`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "[has(self.localhost), has(self.builtinTestServer), has(self.url)].filter(x, x).size() == 1", "message": "set exactly one of localhost, builtinTestServer or url"}
]))]
pub struct LegacyProxy {
    /// A proxy listening on this loopback port. In a pod, loopback is the pod's own: the proxy
    /// must run inside it (a sidecar).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub localhost: Option<i32>,

    /// MXC's test proxy. Not available on Kubernetes: reported as not applicable, egress stays
    /// as the policy states.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin_test_server: Option<bool>,

    /// `http://IP:PORT` of the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub url: Option<String>,
}

// How cluster DNS is treated.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DnsMode {
    /// Cluster DNS is allowed only when the policy allows some egress. With Cilium, egress to
    /// domain names alone allows DNS questions for those names only.
    #[default]
    Auto,
    /// Cluster DNS is always allowed, for any name.
    Cluster,
    /// Cluster DNS is never allowed. Egress to domain names through Cilium needs DNS, so a
    /// policy with both is refused.
    None,
}

/// Outbound traffic. Deny rules win over allow rules.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressPolicy {
    /// What happens to traffic no rule matches: `deny` (default) or `allow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<DefaultAction>,

    /// Traffic that is allowed (unless a deny rule matches it too). At most 32 rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub allow: Vec<EgressRule>,

    /// Traffic that is denied, whatever the allow rules say. Deny rules take CIDR peers only.
    /// At most 32 rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.all(r, !has(r.to) || r.to.all(p, has(p.cidr)))", "message": "deny rules take cidr peers only"}
    ]))]
    pub deny: Vec<EgressRule>,

    /// Allow link-local addresses (169.254.0.0/16, fe80::/10) and the cloud metadata and host
    /// agent addresses (AWS fd00:ec2::254 and fd00:ec2::23, Alibaba 100.100.100.200, Azure
    /// WireServer 168.63.129.16, Oracle fd00:c1::a9fe:a9fe, Google fd20:ce::254). Default false:
    /// they are removed from every allow rule, even with `default: allow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_metadata_access: Option<bool>,
}

/// One egress rule: destinations times ports. An omitted list matches everything; an empty one
/// is refused.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    /// Destinations (at most 16). Omitted: every destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    pub to: Option<Vec<EgressPeer>>,

    /// Protocols and ports (at most 16). Omitted: every protocol and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    pub ports: Option<Vec<PortRule>>,
}

/// A destination: exactly one of `cidr` (with optional `except`), `fqdn`, or
/// `podSelector`/`namespaceSelector`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "[has(self.cidr), has(self.fqdn), has(self.podSelector) || has(self.namespaceSelector)].filter(x, x).size() == 1",
     "message": "a peer sets exactly one of cidr, fqdn, or podSelector/namespaceSelector"},
    {"rule": "!has(self.except) || (has(self.cidr) && self.except.all(e, isCIDR(e) && cidr(self.cidr).containsCIDR(e) && cidr(e).prefixLength() > cidr(self.cidr).prefixLength()))",
     "message": "except entries must be CIDRs strictly inside cidr, of the same family"}
]))]
pub struct EgressPeer {
    /// An IPv4 or IPv6 CIDR outside the cluster, written canonically (`10.0.0.0/8`, not
    /// `10.1.2.3/8`). The cluster's pod and service ranges are removed from it: in-cluster
    /// destinations need a selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "isCIDR(self) && string(cidr(self).masked()) == self", "message": "cidr must be a canonical CIDR such as 10.0.0.0/8 (no host bits set)"}
    ]))]
    pub cidr: Option<String>,

    /// CIDRs inside `cidr` that are excluded from it (at most 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16), inner(length(max = 64)))]
    pub except: Option<Vec<String>>,

    /// A domain name (`api.example.com`) or wildcard (`*.example.com`). Needs an FQDN-capable
    /// backend (Cilium); without one the sandbox is blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 253),
        regex(
            pattern = r"^(\*\.)?([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
        )
    )]
    pub fqdn: Option<String>,

    /// In-cluster pods (in the sandbox's namespace unless `namespaceSelector` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,

    /// In-cluster namespaces whose pods are destinations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

// Transport protocol of a port rule.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP. NetworkPolicy cannot allow ICMP on its own: an ICMP allow is dropped and reported
    /// as narrowed.
    Icmp,
    /// Without a port, every protocol; with a port, TCP, UDP and SCTP on that port.
    #[default]
    Any,
}

/// A protocol and an optional port or port range.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.endPort) || (has(self.port) && self.endPort >= self.port)", "message": "endPort needs port and must be >= port"},
    {"rule": "!has(self.port) || !has(self.protocol) || self.protocol != 'icmp'", "message": "icmp takes no port"}
]))]
pub struct PortRule {
    /// `tcp`, `udp`, `icmp` or `any` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,

    /// Port number (1-65535). Omitted: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,

    /// Last port of a range starting at `port` (1-65535, at least `port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub end_port: Option<i32>,
}

/// Inbound traffic.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressPolicy {
    /// What happens to traffic no rule matches: `deny` (default) or `allow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<DefaultAction>,

    /// MXC: whether the host's loopback may reach the sandbox. Accepted; loopback stays inside
    /// the pod on Kubernetes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_loopback: Option<DefaultAction>,

    /// Sources allowed to connect. At most 32 rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub allow: Vec<IngressRule>,
}

/// One ingress rule: sources times ports.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRule {
    /// Sources (at most 16). Omitted: every source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    pub from: Option<Vec<IngressPeer>>,

    /// Protocols and ports on the sandbox (at most 16). Omitted: every protocol and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    pub ports: Option<Vec<PortRule>>,
}

/// A source: `cidr` (with optional `except`), or `podSelector`/`namespaceSelector`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.cidr) != (has(self.podSelector) || has(self.namespaceSelector))",
     "message": "a peer sets exactly one of cidr or podSelector/namespaceSelector"},
    {"rule": "!has(self.except) || (has(self.cidr) && self.except.all(e, isCIDR(e) && cidr(self.cidr).containsCIDR(e) && cidr(e).prefixLength() > cidr(self.cidr).prefixLength()))",
     "message": "except entries must be CIDRs strictly inside cidr, of the same family"}
]))]
pub struct IngressPeer {
    /// An IPv4 or IPv6 CIDR, written canonically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "isCIDR(self) && string(cidr(self).masked()) == self", "message": "cidr must be a canonical CIDR such as 10.0.0.0/8 (no host bits set)"}
    ]))]
    pub cidr: Option<String>,

    /// CIDRs inside `cidr` that are excluded from it (at most 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16), inner(length(max = 64)))]
    pub except: Option<Vec<String>>,

    /// In-cluster pods (in the sandbox's namespace unless `namespaceSelector` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,

    /// In-cluster namespaces whose pods may connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

/// MXC runtime settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuntimeConfig {
    /// All egress goes through this HTTP proxy, `http://HOST:PORT`. A loopback address
    /// (`127.0.0.1`, `localhost`, `[::1]`, as in MXC) means a proxy inside the pod: no direct
    /// egress at all. Any other IP address means direct egress only to that address and port.
    /// `HTTP_PROXY`/`HTTPS_PROXY` are set in the pod. Cannot be combined with egress rules or
    /// `egress.default: allow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub network_proxy: Option<String>,
}

/// MXC desktop settings; accepted, never granted in a pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UiPolicy {
    /// MXC: whether the agent may show windows. Not applicable in a pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_windows: Option<bool>,

    /// MXC: clipboard access (`none`, `read`, `write`, `all`). Not applicable in a pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clipboard: Option<Clipboard>,

    /// MXC: whether the agent may inject input into other windows. Not applicable in a pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_input_injection: Option<bool>,
}

// MXC clipboard access.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Clipboard {
    /// No clipboard.
    #[default]
    None,
    /// Read only.
    Read,
    /// Write only.
    Write,
    /// Read and write.
    All,
}

// Sandbox runtime.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// gVisor (`runsc`): a user-space kernel.
    #[default]
    Gvisor,
    /// Kata Containers: a lightweight virtual machine per pod.
    Kata,
    /// The node's default runtime, no RuntimeClass: the weakest isolation, for trusted agents.
    Runc,
}

/// Which runtime isolates the agent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.runtimeClassName) || !has(self.runtime) || self.runtime != 'runc'", "message": "runtime runc takes no runtimeClassName"}
]))]
pub struct IsolationPolicy {
    /// `gvisor` (default), `kata` or `runc`. Mapped to a RuntimeClass by operator configuration
    /// (defaults: gvisor→`gvisor`, kata→`kata-qemu`; runc→none). The RuntimeClass must exist and
    /// its handler must match the runtime, or the sandbox is blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,

    /// A RuntimeClass to use instead of the mapped one. Its handler must still match `runtime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub runtime_class_name: Option<String>,
}

// A Linux capability that may be added. Only `NET_BIND_SERVICE` is allowed; ALL is always
// dropped.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Capability {
    /// Bind ports below 1024.
    #[serde(rename = "NET_BIND_SERVICE")]
    NetBindService,
}

/// Capabilities to add.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CapabilitiesPolicy {
    /// Capabilities added after dropping ALL. Only `NET_BIND_SERVICE`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1))]
    pub add: Vec<Capability>,
}

/// Process identity. Root (0) is refused for all three ids.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrivilegesPolicy {
    /// User id of the agent's processes (default 65532). 0 is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2_147_483_647))]
    pub run_as_user: Option<i64>,

    /// Primary group id (default 65532). 0 is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2_147_483_647))]
    pub run_as_group: Option<i64>,

    /// Group owning the volumes (default 65532). 0 is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2_147_483_647))]
    pub fs_group: Option<i64>,

    /// Capabilities to add after dropping ALL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<CapabilitiesPolicy>,
}

// Seccomp profile kind.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SeccompKind {
    /// The container runtime's default profile.
    #[default]
    RuntimeDefault,
    /// A profile file on the node, named by `localhostProfile`.
    Localhost,
    /// A Security Profiles Operator `SeccompProfile` generated from `block` (needs that CRD).
    Generated,
}

/// The seccomp profile and blocked syscalls.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(has(self.profile) && self.profile == 'Localhost') == has(self.localhostProfile)", "message": "localhostProfile is required with profile Localhost and only allowed with it"},
    {"rule": "!has(self.block) || size(self.block) == 0 || (has(self.profile) && self.profile != 'RuntimeDefault')", "message": "block needs profile Localhost or Generated"}
]))]
pub struct SyscallPolicy {
    /// `RuntimeDefault` (default), `Localhost` or `Generated`. Never `Unconfined`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<SeccompKind>,

    /// Path of the profile relative to the kubelet's seccomp directory (profile `Localhost`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub localhost_profile: Option<String>,

    /// Syscalls that fail with EPERM (profile `Generated`, or documented by a `Localhost` profile).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(length(min = 1, max = 64), regex(pattern = r"^[a-z0-9_]+$"))
    )]
    pub block: Vec<String>,

    /// Block the sandbox when its runtime does not apply the pod's seccomp profile (gVisor
    /// without `--oci-seccomp`, Kata's guest) instead of reporting it as not enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_enforcement: Option<bool>,
}

/// Resource caps for each sandbox.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceCaps {
    /// CPU cap, e.g. `2` or `500m` (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,

    /// Memory cap, e.g. `4Gi` (default 4Gi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,

    /// Ephemeral storage cap, e.g. `8Gi` (default 8Gi). The size limits of all writable
    /// `emptyDir` volumes add up to at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage: Option<Quantity>,

    /// What a sandbox that names no requests of its own requests (the scheduler reserves it
    /// on a node): small by default (`cpu` 100m, `memory` 256Mi, `ephemeralStorage` 1Gi), so
    /// that many mostly idle sandboxes fit on a node. The caps above stay the limits. A
    /// default above a cap (or above the sandbox's own limit) is lowered to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_requests: Option<DefaultRequests>,
}

/// Requests of a sandbox that names none of its own.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DefaultRequests {
    /// CPU request, e.g. `100m` (default 100m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,

    /// Memory request, e.g. `256Mi` (default 256Mi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,

    /// Ephemeral storage request, e.g. `1Gi` (default 1Gi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage: Option<Quantity>,
}

/// The main writable volume.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.storageClassName) || (has(self.persistent) && self.persistent)", "message": "storageClassName needs persistent: true"}
]))]
pub struct WorkspacePolicy {
    /// Absolute path of the workspace (default `/workspace`). It is writable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<SandboxPath>,

    /// Size of the workspace (default 1Gi). Counts against `resources.ephemeralStorage` unless
    /// persistent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,

    /// Keep the workspace in a PersistentVolumeClaim that survives pause and pod recreation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent: Option<bool>,

    /// StorageClass of the workspace claim (persistent only). Omitted: the cluster default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

/// The sandbox's ServiceAccount and API token. Each sandbox gets its own ServiceAccount.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityPolicy {
    /// Annotations on the sandbox's ServiceAccount (e.g. for cloud workload identity).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub service_account_annotations: BTreeMap<String, String>,

    /// Mount the default Kubernetes API token (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_token: Option<bool>,

    /// Mount a projected token for this audience at `/var/run/secrets/tokens/token` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub token_audience: Option<String>,

    /// Lifetime of the projected token in seconds (600-86400, default 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 600, max = 86400))]
    pub token_expiry_seconds: Option<i64>,
}

/// Which container images may run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImagePolicy {
    /// Registries (`ghcr.io`) or repository prefixes (`ghcr.io/acme`) images must come from.
    /// Empty: any registry. Images without a registry are `docker.io/library/...`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 255)))]
    pub allowed_registries: Vec<String>,

    /// Images must be pinned by digest (`@sha256:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_digest: Option<bool>,
}

/// Observed state of an AgentPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentPolicyStatus {
    /// `Accepted` (the policy is valid) and `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The generation these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Hash of the policy spec as compiled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_hash: Option<String>,

    /// Number of AgentSandboxes that reference this policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_count: Option<i32>,

    /// Allowances the platform adds (e.g. cluster DNS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<ReportEntry>,

    /// Fields enforced more strictly than written (e.g. an ICMP allow).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub narrowed: Vec<ReportEntry>,

    /// Fields accepted that have no meaning in a pod (e.g. `ui`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_applicable: Vec<ReportEntry>,

    /// Fields asked for that the platform cannot guarantee (e.g. seccomp under gVisor).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_enforced: Vec<ReportEntry>,
}
