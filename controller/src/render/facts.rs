//! What the compiler knows about the cluster. The operator reads these from the API server;
//! `palisade render` takes them from flags and otherwise assumes the mapped RuntimeClasses exist.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::api::policy::Runtime;
use crate::policy::egress::ClusterRanges;
use crate::policy::net::Cidr;
use crate::policy::pod_keys::PodKeyAllowlist;

/// Where cluster DNS answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsEndpoints {
    /// Pods matching `pod_labels` in namespaces matching `namespace_labels`.
    Selector {
        namespace_labels: BTreeMap<String, String>,
        pod_labels: BTreeMap<String, String>,
    },
    /// Fixed addresses, such as a NodeLocal DNSCache (169.254.20.10).
    Ips(Vec<IpAddr>),
}

impl Default for DnsEndpoints {
    fn default() -> Self {
        DnsEndpoints::Selector {
            namespace_labels: BTreeMap::from([(
                "kubernetes.io/metadata.name".into(),
                "kube-system".into(),
            )]),
            pod_labels: BTreeMap::from([("k8s-app".into(), "kube-dns".into())]),
        }
    }
}

/// Which backend carries egress to domain names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FqdnBackend {
    /// Cilium when its CRD is installed and usable, else the gateway when deployed, else none
    /// (sandboxes with domain names are blocked).
    #[default]
    Auto,
    /// Cilium `toFQDNs` only.
    Cilium,
    /// `palisade gateway` only.
    Gateway,
}

/// The key of the sandboxes' proxy credentials; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyBytes(pub std::sync::Arc<Vec<u8>>);

impl std::fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyBytes(..)")
    }
}

/// Where sandboxes reach the egress gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayFacts {
    /// The gateway Service's ClusterIP and port: the proxy URL's host, so that sandboxes need
    /// no DNS to find it.
    pub address: std::net::SocketAddr,
    /// Labels of the gateway's namespace and pods, and the pods' port (the NetworkPolicy
    /// allows egress to those pods on that port, and to the ClusterIP on the Service port).
    pub namespace_labels: BTreeMap<String, String>,
    pub pod_labels: BTreeMap<String, String>,
    pub target_port: u16,
    /// The credential key; `None` offline, where the URL carries a placeholder.
    pub key: Option<KeyBytes>,
}

/// Which RuntimeClasses exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuntimeClasses {
    /// Offline: every mapped class exists with a matching handler, except those listed.
    AssumeMapped { missing: BTreeSet<String> },
    /// Read from the cluster: class name → handler.
    Known(BTreeMap<String, String>),
}

/// Cluster facts the compilation depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterFacts {
    /// RuntimeClass name for each runtime (runc has none).
    pub runtime_class_names: BTreeMap<Runtime, String>,
    /// Handler prefixes a RuntimeClass must have for each runtime (`runsc`, `kata`).
    pub handler_prefixes: BTreeMap<Runtime, Vec<String>>,
    pub runtime_classes: RuntimeClasses,
    /// Runtimes whose nodes apply the pod's seccomp profile (runc always does).
    pub seccomp_applied: BTreeSet<Runtime>,
    pub dns: DnsEndpoints,
    /// The cluster's pod and service CIDRs; empty when unknown.
    pub cluster_cidrs: Vec<Cidr>,
    /// The nodes' address ranges; empty when unknown.
    pub node_cidrs: Vec<Cidr>,
    /// Security Profiles Operator's `SeccompProfile` CRD is installed.
    pub seccomp_profile_crd: bool,
    /// Cilium's `CiliumNetworkPolicy` CRD is installed (FQDN egress).
    pub cilium: bool,
    /// The FQDN backend chosen by configuration.
    pub fqdn_backend: FqdnBackend,
    /// The egress gateway, when deployed and found.
    pub gateway: Option<GatewayFacts>,
    /// Cluster DNS domain for Service names.
    pub cluster_domain: String,
    /// Audiences the API server accepts tokens for: `identity.tokenAudience` may name none of
    /// them (such a token would be an API token by another name).
    pub api_audiences: Vec<String>,
    /// The pod labels and annotations sandboxes may set.
    pub pod_keys: PodKeyAllowlist,
    /// Image of the `isolation-check` init container (`palisade wait-isolated`), which holds
    /// the agent back until the network plugin enforces the pod's NetworkPolicy; `None` when
    /// turned off (reported as not enforced).
    pub isolation_check_image: Option<String>,
    /// The check requires the canary to answer before it counts refusals (`--isolation-check-mode
    /// transition`), for network plugins that program a pod after it starts.
    pub isolation_check_open_first: bool,
}

/// The operator's image of this version, which also runs the isolation check.
pub const DEFAULT_OPERATOR_IMAGE: &str =
    concat!("ghcr.io/palisade-dev/palisade:", env!("CARGO_PKG_VERSION"));

/// Audiences of the API server in common clusters (its `--api-audiences`, which default to the
/// service account issuer); operator configuration adds the cluster's own.
pub const DEFAULT_API_AUDIENCES: &[&str] = &[
    "https://kubernetes.default.svc",
    "https://kubernetes.default.svc.cluster.local",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "kubernetes",
    "api",
];

impl Default for ClusterFacts {
    fn default() -> Self {
        Self {
            runtime_class_names: BTreeMap::from([
                (Runtime::Gvisor, "gvisor".into()),
                (Runtime::Kata, "kata-qemu".into()),
            ]),
            handler_prefixes: BTreeMap::from([
                (Runtime::Gvisor, vec!["runsc".into()]),
                (Runtime::Kata, vec!["kata".into()]),
            ]),
            runtime_classes: RuntimeClasses::AssumeMapped {
                missing: BTreeSet::new(),
            },
            seccomp_applied: BTreeSet::from([Runtime::Runc]),
            dns: DnsEndpoints::default(),
            cluster_cidrs: Vec::new(),
            node_cidrs: Vec::new(),
            seccomp_profile_crd: false,
            cilium: false,
            fqdn_backend: FqdnBackend::Auto,
            gateway: None,
            cluster_domain: "cluster.local".into(),
            api_audiences: DEFAULT_API_AUDIENCES
                .iter()
                .map(|a| a.to_string())
                .collect(),
            pod_keys: PodKeyAllowlist::default(),
            isolation_check_image: Some(DEFAULT_OPERATOR_IMAGE.into()),
            isolation_check_open_first: false,
        }
    }
}

impl ClusterFacts {
    /// The cluster's own ranges, removed from every CIDR allow.
    pub fn ranges(&self) -> ClusterRanges<'_> {
        ClusterRanges {
            pods_and_services: &self.cluster_cidrs,
            nodes: &self.node_cidrs,
        }
    }

    /// The handler of `class`, if it exists; offline, the expected one for mapped classes.
    pub fn handler_of(&self, class: &str, runtime: Runtime) -> Option<String> {
        match &self.runtime_classes {
            RuntimeClasses::Known(map) => map.get(class).cloned(),
            RuntimeClasses::AssumeMapped { missing } if missing.contains(class) => None,
            RuntimeClasses::AssumeMapped { .. } => self
                .handler_prefixes
                .get(&runtime)
                .and_then(|p| p.first().cloned()),
        }
    }

    pub fn handler_matches(&self, runtime: Runtime, handler: &str) -> bool {
        self.handler_prefixes
            .get(&runtime)
            .is_some_and(|prefixes| prefixes.iter().any(|p| handler.starts_with(p.as_str())))
    }
}
