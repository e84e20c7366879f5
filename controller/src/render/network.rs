//! The sandbox's `<name>-isolation` NetworkPolicy (both directions, default deny), the DNS and
//! proxy allowances, and the Cilium policy that carries FQDN egress.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::EnvVar;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde_json::{Value, json};

use crate::api::policy::{DefaultAction, DnsMode};
use crate::api::report::EnforcementReport;
use crate::api::{AgentSandbox, SANDBOX_LABEL};
use crate::policy::egress::{CompiledEgress, compile_egress};
use crate::policy::ingress::compile_ingress;
use crate::policy::legacy::Proxy;
use crate::policy::net::{AddrSet, Cidr, Family, IntervalSet, to_blocks};
use crate::policy::peers::np_ports;
use crate::policy::services::{L4, Services};

use super::facts::{ClusterFacts, DnsEndpoints};
use super::{BlockReason, Blocked, CheckedPolicy, children::object_meta};

pub struct CompiledNetwork {
    pub network_policy: NetworkPolicy,
    pub fqdn_policy: Option<Value>,
    pub proxy_env: Vec<EnvVar>,
}

/// Finalizer on the isolation NetworkPolicy: when someone deletes it, the object (and its
/// enforcement) stays until the operator has removed the pod it isolates.
pub const ISOLATION_FINALIZER: &str = "palisade.dev/isolation";

pub fn isolation_name(sandbox: &str) -> String {
    format!("{sandbox}-isolation")
}

pub fn pod_selector(sandbox: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(
            SANDBOX_LABEL.to_string(),
            sandbox.to_string(),
        )])),
        ..Default::default()
    }
}

/// UDP and TCP port 53.
fn dns_services() -> Services {
    let port = IntervalSet::range(53, 53);
    Services {
        tcp: port.clone(),
        udp: port,
        ..Services::none()
    }
}

fn ip_cidr(ip: std::net::IpAddr) -> Cidr {
    match ip {
        std::net::IpAddr::V4(v4) => Cidr::host(Family::V4, u32::from(v4) as u128),
        std::net::IpAddr::V6(v6) => Cidr::host(Family::V6, u128::from(v6)),
    }
}

/// Services the deny rules remove from an address.
fn denied_at(egress: &CompiledEgress, cidr: &Cidr) -> Services {
    egress
        .deny
        .iter()
        .filter(|(a, _)| a.contains(cidr.family, cidr.base))
        .fold(Services::none(), |acc, (_, s)| acc.union(s))
}

pub fn compile_network(
    checked: &CheckedPolicy,
    sandbox: &AgentSandbox,
    facts: &ClusterFacts,
    report: &mut EnforcementReport,
) -> Result<CompiledNetwork, Blocked> {
    let name = sandbox.metadata.name.clone().unwrap_or_default();
    let net = &checked.network;
    let egress = compile_egress(&net.egress, &facts.cluster_cidrs, report)
        .map_err(|e| Blocked::new(BlockReason::PolicyInvalid, e.to_string()))?;
    let mut egress_rules = egress.rules.clone();
    let mut proxy_env = Vec::new();

    match &net.proxy {
        Some(Proxy::Unavailable) => {
            report.not_applicable("network.proxy.builtinTestServer", "MXC's built-in test proxy does not exist on Kubernetes; egress stays as the policy states");
        }
        Some(Proxy::At(addr)) => {
            let cidr = ip_cidr(addr.ip);
            if addr.is_loopback() {
                report.not_applicable(
                    "runtimeConfig.networkProxy",
                    format!("{} is the pod's own loopback: the proxy must run inside the pod (a sidecar); the pod has no direct egress", addr.url),
                );
            } else {
                let set = AddrSet::from_cidr(&cidr);
                let in_cluster = facts.cluster_cidrs.iter().any(|c| c.contains_cidr(&cidr));
                let metadata = crate::policy::egress::METADATA_CIDRS
                    .iter()
                    .filter_map(|c| Cidr::parse(c).ok())
                    .any(|c| c.contains_cidr(&cidr));
                if in_cluster || (metadata && net.egress.allow_metadata_access != Some(true)) {
                    return Err(Blocked::new(
                        BlockReason::ProxyUnreachable,
                        format!(
                            "proxy {} lies in the cluster's or the metadata address ranges, which an ipBlock cannot allow; use an address outside them",
                            addr.url
                        ),
                    ));
                }
                let services = Services {
                    tcp: IntervalSet::range(addr.port as u128, addr.port as u128),
                    ..Services::none()
                };
                egress_rules.push(NetworkPolicyEgressRule {
                    to: Some(crate::policy::peers::ip_block_peers(&set)),
                    ports: np_ports(&services),
                });
                report.added(
                    "runtimeConfig.networkProxy",
                    format!(
                        "direct egress only to the proxy {} (TCP {})",
                        addr.ip, addr.port
                    ),
                );
            }
            for var in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                proxy_env.push(EnvVar {
                    name: var.into(),
                    value: Some(addr.url.clone()),
                    ..Default::default()
                });
            }
            for var in ["NO_PROXY", "no_proxy"] {
                proxy_env.push(EnvVar {
                    name: var.into(),
                    value: Some("localhost,127.0.0.1,::1".into()),
                    ..Default::default()
                });
            }
            for v in &sandbox.spec.env {
                if proxy_env.iter().any(|p| p.name == v.name) {
                    return Err(Blocked::new(
                        BlockReason::SandboxInvalid,
                        format!(
                            "env {} is set by the policy's proxy and cannot be overridden",
                            v.name
                        ),
                    ));
                }
            }
        }
        None => {}
    }

    let some_egress = !egress_rules.is_empty() || !egress.fqdn.is_empty();
    let want_dns = match net.dns {
        DnsMode::Auto => some_egress,
        DnsMode::Cluster => true,
        DnsMode::None => false,
    };
    if want_dns {
        let asked = dns_services();
        match &facts.dns {
            DnsEndpoints::Selector {
                namespace_labels,
                pod_labels,
            } => {
                let services = asked.subtract(&egress.in_cluster_denied);
                if services != asked {
                    report.narrowed("network.dns", "deny rules may cover the cluster DNS service: their ports are removed from the DNS allowance");
                }
                if !services.is_empty() {
                    egress_rules.push(NetworkPolicyEgressRule {
                        to: Some(vec![NetworkPolicyPeer {
                            namespace_selector: Some(LabelSelector {
                                match_labels: Some(namespace_labels.clone()),
                                ..Default::default()
                            }),
                            pod_selector: Some(LabelSelector {
                                match_labels: Some(pod_labels.clone()),
                                ..Default::default()
                            }),
                            ip_block: None,
                        }]),
                        ports: np_ports(&services),
                    });
                    let labels: Vec<String> =
                        pod_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    report.added(
                        "network.dns",
                        format!("cluster DNS (pods {} ) on UDP and TCP 53", labels.join(","))
                            .replace(" )", ")"),
                    );
                }
            }
            DnsEndpoints::Ips(ips) => {
                for ip in ips {
                    let cidr = ip_cidr(*ip);
                    let services = asked.subtract(&denied_at(&egress, &cidr));
                    if services != asked {
                        report.narrowed("network.dns", format!("deny rules cover DNS server {ip}: their ports are removed from the DNS allowance"));
                    }
                    if !services.is_empty() {
                        egress_rules.push(NetworkPolicyEgressRule {
                            to: Some(vec![NetworkPolicyPeer {
                                ip_block: Some(IPBlock {
                                    cidr: cidr.to_string(),
                                    except: None,
                                }),
                                ..Default::default()
                            }]),
                            ports: np_ports(&services),
                        });
                        report.added("network.dns", format!("DNS server {ip} on UDP and TCP 53"));
                    }
                }
            }
        }
    }

    let fqdn_policy = if egress.fqdn.is_empty() {
        None
    } else if !facts.cilium {
        let names: Vec<&str> = egress
            .fqdn
            .iter()
            .flat_map(|f| f.names.iter().map(String::as_str))
            .collect();
        return Err(Blocked::new(
            BlockReason::FqdnBackendMissing,
            format!(
                "egress to domain names ({}) needs an FQDN-capable backend (Cilium) the operator can use: the CiliumNetworkPolicy CRD is not installed, or the operator may not create those objects",
                names.join(", ")
            ),
        ));
    } else {
        Some(cilium_policy(&name, sandbox, &egress, facts))
    };

    let ingress_rules = compile_ingress(net.ingress.as_ref(), report);
    let network_policy = NetworkPolicy {
        metadata: ObjectMeta {
            finalizers: Some(vec![ISOLATION_FINALIZER.to_string()]),
            ..object_meta(sandbox, isolation_name(&name))
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pod_selector(&name)),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            // With both policy types declared, an absent list denies everything, like an empty one;
            // absent also round-trips through the API server (an empty list would not).
            ingress: (!ingress_rules.is_empty()).then_some(ingress_rules),
            egress: (!egress_rules.is_empty()).then_some(egress_rules),
        }),
    };
    if net.egress.default == Some(DefaultAction::Allow) && facts.cluster_cidrs.is_empty() {
        report.not_enforced(
            "network.egress.default",
            "the cluster's pod and service CIDRs are unknown, so allow-all egress may also reach in-cluster addresses; give them to the operator (--cluster-cidr)",
        );
    }
    Ok(CompiledNetwork {
        network_policy,
        fqdn_policy,
        proxy_env,
    })
}

fn cilium_ports(services: &Services) -> Option<Value> {
    if services.is_all() {
        return None;
    }
    let mut ports = Vec::new();
    for p in L4::ALL {
        for &(lo, hi) in services.l4(p).ranges() {
            let mut entry = json!({"port": lo.to_string(), "protocol": p.as_k8s()});
            if hi > lo {
                entry["endPort"] = json!(hi);
            }
            ports.push(entry);
        }
    }
    Some(json!([{ "ports": ports }]))
}

fn cilium_policy(
    name: &str,
    sandbox: &AgentSandbox,
    egress: &CompiledEgress,
    facts: &ClusterFacts,
) -> Value {
    let mut rules = Vec::new();
    for allow in &egress.fqdn {
        let fqdns: Vec<Value> = allow
            .names
            .iter()
            .map(|n| {
                if n.starts_with("*.") {
                    json!({"matchPattern": n})
                } else {
                    json!({"matchName": n})
                }
            })
            .collect();
        let mut rule = json!({"toFQDNs": fqdns});
        if let Some(p) = cilium_ports(&allow.services) {
            rule["toPorts"] = p;
        }
        rules.push(rule);
    }
    // Cilium learns the addresses of names from the DNS answers it sees: DNS must go through its proxy.
    if let DnsEndpoints::Selector {
        pod_labels,
        namespace_labels,
    } = &facts.dns
    {
        let mut labels = serde_json::Map::new();
        for (k, v) in pod_labels {
            labels.insert(k.clone(), json!(v));
        }
        if let Some(ns) = namespace_labels.get("kubernetes.io/metadata.name") {
            labels.insert("k8s:io.kubernetes.pod.namespace".into(), json!(ns));
        }
        rules.push(json!({
            "toEndpoints": [{"matchLabels": labels}],
            "toPorts": [{"ports": [{"port": "53", "protocol": "ANY"}], "rules": {"dns": [{"matchPattern": "*"}]}}]
        }));
    }
    let deny: Vec<Value> = egress
        .deny
        .iter()
        .map(|(addrs, services)| {
            let set: Vec<Value> = to_blocks(addrs)
                .iter()
                .map(|b| {
                    let mut e = json!({"cidr": b.cidr.to_string()});
                    if !b.except.is_empty() {
                        e["except"] =
                            json!(b.except.iter().map(ToString::to_string).collect::<Vec<_>>());
                    }
                    e
                })
                .collect();
            let mut rule = json!({"toCIDRSet": set});
            if let Some(p) = cilium_ports(&services.expressible()) {
                rule["toPorts"] = p;
            }
            rule
        })
        .collect();
    let mut spec = json!({
        "endpointSelector": {"matchLabels": {SANDBOX_LABEL: name}},
        "egress": rules,
    });
    if !deny.is_empty() {
        spec["egressDeny"] = json!(deny);
    }
    json!({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": object_meta(sandbox, format!("{name}-fqdn")),
        "spec": spec,
    })
}
