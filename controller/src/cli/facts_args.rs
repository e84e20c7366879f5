//! Flags that state cluster facts for offline compilation.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use clap::Args;

use crate::api::policy::Runtime;
use crate::policy::net::Cidr;
use crate::policy::pod_keys::{KeyPattern, parse_pattern};
use crate::render::facts::{ClusterFacts, DnsEndpoints, FqdnBackend, GatewayFacts, RuntimeClasses};

#[derive(Args, Debug, Clone, Default)]
pub struct FactsArgs {
    /// RuntimeClass for a runtime, RUNTIME=NAME (gvisor=gvisor and kata=kata-qemu by default).
    #[arg(long = "runtime-class", env = "PALISADE_RUNTIME_CLASS", value_delimiter = ',', value_name = "RUNTIME=NAME", value_parser = parse_runtime_class)]
    pub runtime_class: Vec<(Runtime, String)>,
    /// Cluster DNS server address (e.g. a NodeLocal DNSCache 169.254.20.10) instead of the
    /// kube-system/k8s-app=kube-dns pods. Repeatable.
    #[arg(
        long = "dns-ip",
        env = "PALISADE_DNS_IP",
        value_delimiter = ',',
        value_name = "IP"
    )]
    pub dns_ip: Vec<IpAddr>,
    /// A pod or service CIDR of the cluster, removed from every CIDR allow. Repeatable.
    #[arg(long = "cluster-cidr", env = "PALISADE_CLUSTER_CIDR", value_delimiter = ',', value_name = "CIDR", value_parser = parse_cidr)]
    pub cluster_cidr: Vec<Cidr>,
    /// A range holding the nodes' addresses, removed from every CIDR allow so that sandboxes do
    /// not reach the kubelet or other node services. Repeatable.
    #[arg(long = "node-cidr", env = "PALISADE_NODE_CIDR", value_delimiter = ',', value_name = "CIDR", value_parser = parse_cidr)]
    pub node_cidr: Vec<Cidr>,
    /// An audience of the API server (its --api-audiences / service account issuer), which
    /// identity.tokenAudience may not name; added to the common in-cluster ones. Repeatable.
    #[arg(
        long = "api-audience",
        env = "PALISADE_API_AUDIENCE",
        value_delimiter = ',',
        value_name = "AUDIENCE"
    )]
    pub api_audience: Vec<String>,
    /// A pod label key sandboxes may set (`team`, `example.com/owner`, or `example.com/*`),
    /// besides the defaults (none). Keys of Kubernetes, Palisade, network plugins, meshes and
    /// runtimes are refused. Repeatable.
    #[arg(long = "pod-label-allow", env = "PALISADE_POD_LABEL_ALLOW", value_delimiter = ',', value_name = "KEY", value_parser = parse_pattern)]
    pub pod_label_allow: Vec<KeyPattern>,
    /// A pod annotation key sandboxes may set, besides prometheus.io/* and
    /// cluster-autoscaler.kubernetes.io/safe-to-evict (same forms and refusals). Repeatable.
    #[arg(long = "pod-annotation-allow", env = "PALISADE_POD_ANNOTATION_ALLOW", value_delimiter = ',', value_name = "KEY", value_parser = parse_pattern)]
    pub pod_annotation_allow: Vec<KeyPattern>,
    /// The nodes of this runtime apply the pod's seccomp profile (e.g. runsc --oci-seccomp).
    #[arg(long = "seccomp-applied", env = "PALISADE_SECCOMP_APPLIED", value_delimiter = ',', value_name = "RUNTIME", value_parser = parse_runtime)]
    pub seccomp_applied: Vec<Runtime>,
    /// Image of the sandbox pods' `isolation-check` init container (`palisade wait-isolated`),
    /// which starts the agent only once the network plugin enforces the pod's NetworkPolicy.
    /// Default: the operator image of this version (the chart passes its own image).
    #[arg(long, env = "PALISADE_ISOLATION_CHECK_IMAGE", value_name = "IMAGE")]
    pub isolation_check_image: Option<String>,
    /// Start agents without the isolation check, for network plugins that filter a pod from
    /// its first packet. Every sandbox then reports that its NetworkPolicy may not be enforced
    /// while it starts.
    #[arg(
        long,
        env = "PALISADE_NO_ISOLATION_CHECK",
        conflicts_with = "isolation_check_image"
    )]
    pub no_isolation_check: bool,
    /// What the isolation check waits for: `denied` (the canary, the kubernetes Service, is
    /// refused or unanswered three times in a row) or `transition` (it answered first, then was
    /// denied: proof that the pod became filtered, for plugins that program a pod after it
    /// starts, such as kube-router; wrong for plugins that filter from the first packet).
    #[arg(long, env = "PALISADE_ISOLATION_CHECK_MODE", value_enum, default_value_t = CheckMode::Denied)]
    pub isolation_check_mode: CheckMode,
    /// What carries egress to domain names: `auto` (Cilium when installed and usable, else the
    /// egress gateway when deployed), `cilium` or `gateway`. Without one, such sandboxes are
    /// blocked.
    #[arg(long, env = "PALISADE_FQDN_BACKEND", value_enum, default_value_t = FqdnBackend::Auto)]
    pub fqdn_backend: FqdnBackend,
    /// Namespace of the egress gateway (default: the operator's own; offline: palisade-system).
    #[arg(long, env = "PALISADE_GATEWAY_NAMESPACE", value_name = "NAMESPACE")]
    pub gateway_namespace: Option<String>,
    /// A label of the egress gateway's pods, KEY=VALUE (default:
    /// app.kubernetes.io/name=palisade-gateway). Repeatable.
    #[arg(long = "gateway-pod-label", env = "PALISADE_GATEWAY_POD_LABEL", value_delimiter = ',', value_name = "KEY=VALUE", value_parser = parse_label)]
    pub gateway_pod_label: Vec<(String, String)>,
    /// The port the egress gateway's pods listen on.
    #[arg(long, env = "PALISADE_GATEWAY_TARGET_PORT", default_value_t = 3128)]
    pub gateway_target_port: u16,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}`: expected KEY=VALUE")),
    }
}

/// Where the gateway lives, without its address (which the operator reads from its Service).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayPlacement {
    pub namespace: String,
    pub pod_labels: BTreeMap<String, String>,
    pub target_port: u16,
}

impl GatewayPlacement {
    pub fn at(
        &self,
        address: std::net::SocketAddr,
        key: Option<crate::render::facts::KeyBytes>,
    ) -> GatewayFacts {
        GatewayFacts {
            address,
            namespace_labels: BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                self.namespace.clone(),
            )]),
            pod_labels: self.pod_labels.clone(),
            target_port: self.target_port,
            key,
        }
    }
}

/// What the isolation check waits for.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CheckMode {
    /// The canary refused or unanswered.
    #[default]
    Denied,
    /// The canary answered, then was refused or unanswered.
    Transition,
}

fn parse_runtime(s: &str) -> Result<Runtime, String> {
    match s {
        "gvisor" => Ok(Runtime::Gvisor),
        "kata" => Ok(Runtime::Kata),
        "runc" => Ok(Runtime::Runc),
        _ => Err(format!(
            "unknown runtime `{s}` (expected gvisor, kata or runc)"
        )),
    }
}

fn parse_runtime_class(s: &str) -> Result<(Runtime, String), String> {
    let (r, name) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected RUNTIME=NAME, e.g. gvisor=gvisor-runsc"))?;
    let runtime = parse_runtime(r)?;
    if runtime == Runtime::Runc {
        return Err("runc uses no RuntimeClass".into());
    }
    if name.is_empty() {
        return Err(format!("`{s}`: the RuntimeClass name is empty"));
    }
    Ok((runtime, name.to_string()))
}

pub(crate) fn parse_cidr(s: &str) -> Result<Cidr, String> {
    Cidr::parse(s).map_err(|e| e.to_string())
}

impl FactsArgs {
    pub fn facts(&self) -> ClusterFacts {
        let mut facts = ClusterFacts::default();
        for (runtime, name) in &self.runtime_class {
            facts.runtime_class_names.insert(*runtime, name.clone());
        }
        if !self.dns_ip.is_empty() {
            facts.dns = DnsEndpoints::Ips(self.dns_ip.clone());
        }
        facts.cluster_cidrs = self.cluster_cidr.clone();
        facts.node_cidrs = self.node_cidr.clone();
        facts
            .pod_keys
            .labels
            .extend(self.pod_label_allow.iter().cloned());
        facts
            .pod_keys
            .annotations
            .extend(self.pod_annotation_allow.iter().cloned());
        facts
            .api_audiences
            .extend(self.api_audience.iter().filter(|a| !a.is_empty()).cloned());
        facts
            .seccomp_applied
            .extend(self.seccomp_applied.iter().copied());
        facts.isolation_check_open_first = self.isolation_check_mode == CheckMode::Transition;
        facts.fqdn_backend = self.fqdn_backend;
        if self.no_isolation_check {
            facts.isolation_check_image = None;
        } else if let Some(image) = self
            .isolation_check_image
            .as_ref()
            .filter(|i| !i.is_empty())
        {
            facts.isolation_check_image = Some(image.clone());
        }
        facts
    }
}

impl FactsArgs {
    /// Where the gateway lives; `namespace` when no namespace is given.
    pub fn gateway_placement(&self, namespace: &str) -> GatewayPlacement {
        let pod_labels = if self.gateway_pod_label.is_empty() {
            BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                "palisade-gateway".to_string(),
            )])
        } else {
            self.gateway_pod_label.iter().cloned().collect()
        };
        GatewayPlacement {
            namespace: self
                .gateway_namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| namespace.to_string()),
            pod_labels,
            target_port: self.gateway_target_port,
        }
    }
}

/// Facts `palisade render` cannot see offline; the operator reads them from the cluster.
#[derive(Args, Debug, Clone, Default)]
pub struct OfflineFactsArgs {
    /// Treat this RuntimeClass as missing (offline, mapped classes are assumed to exist).
    #[arg(long = "missing-runtime-class", value_name = "NAME")]
    pub missing_runtime_class: Vec<String>,
    /// The Security Profiles Operator (SeccompProfile CRD) is installed.
    #[arg(long)]
    pub seccomp_profile_crd: bool,
    /// Cilium (CiliumNetworkPolicy CRD) is installed, so FQDN egress can be enforced.
    #[arg(long)]
    pub cilium: bool,
    /// The egress gateway's Service address, IP:PORT: domain names go through it (with
    /// --fqdn-backend auto, when Cilium is not given). The proxy URL's credential is shown as a
    /// placeholder.
    #[arg(long, value_name = "IP:PORT")]
    pub gateway: Option<std::net::SocketAddr>,
}

impl OfflineFactsArgs {
    /// Adds these to `facts`.
    pub fn apply(&self, mut facts: ClusterFacts) -> ClusterFacts {
        facts.runtime_classes = RuntimeClasses::AssumeMapped {
            missing: self
                .missing_runtime_class
                .iter()
                .cloned()
                .collect::<BTreeSet<_>>(),
        };
        facts.seccomp_profile_crd = self.seccomp_profile_crd;
        facts.cilium = self.cilium;
        facts
    }
}
