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

use super::facts::{ClusterFacts, DnsEndpoints, FqdnBackend, GatewayFacts};
use super::{BlockReason, Blocked, CheckedPolicy, children::object_meta};

pub struct CompiledNetwork {
    pub network_policy: NetworkPolicy,
    pub fqdn_policy: Option<Value>,
    pub proxy_env: Vec<EnvVar>,
}

/// Finalizer on the isolation NetworkPolicy: when someone deletes it, the object (and its
/// enforcement) stays until the operator has removed the pod it isolates.
pub const ISOLATION_FINALIZER: &str = "palisade.dev/isolation";

/// Suffix of a sandbox's isolating NetworkPolicy's name.
pub const ISOLATION_SUFFIX: &str = "-isolation";

pub fn isolation_name(sandbox: &str) -> String {
    format!("{sandbox}{ISOLATION_SUFFIX}")
}

/// The sandbox's CiliumNetworkPolicy for egress to domain names.
pub fn fqdn_policy_name(sandbox: &str) -> String {
    format!("{sandbox}-fqdn")
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
    let name = crate::render::children::base_name(sandbox);
    let net = &checked.network;
    let egress = compile_egress(&net.egress, facts.ranges(), report)
        .map_err(|e| Blocked::new(BlockReason::PolicyInvalid, e.to_string()))?;
    if !net.blocked_names.is_empty() {
        return all_through_gateway(checked, sandbox, facts, &egress, report);
    }
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
                let in_cluster = facts
                    .cluster_cidrs
                    .iter()
                    .chain(&facts.node_cidrs)
                    .any(|c| c.contains_cidr(&cidr));
                let metadata = crate::policy::egress::METADATA_CIDRS
                    .iter()
                    .filter_map(|c| Cidr::parse(c).ok())
                    .any(|c| c.contains_cidr(&cidr));
                if in_cluster || (metadata && net.egress.allow_metadata_access != Some(true)) {
                    return Err(Blocked::new(
                        BlockReason::ProxyUnreachable,
                        format!(
                            "proxy {} lies in the cluster's, the nodes' or the metadata address ranges, which an ipBlock cannot allow; use an address outside them",
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

    // With FQDN egress, Cilium's policy carries DNS for the allowed names only (see
    // `cilium_policy`); the NetworkPolicy allows DNS for any name only when asked for, or when
    // other egress may need names.
    let want_dns = match net.dns {
        DnsMode::Auto => !egress_rules.is_empty(),
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
    } else {
        match choose_backend(facts, &egress)? {
            Backend::Cilium => Some(cilium_policy(
                &name, sandbox, &egress, facts, net.dns, want_dns, report,
            )?),
            Backend::Gateway(gw) => {
                if !proxy_env.is_empty() {
                    return Err(Blocked::new(
                        BlockReason::PolicyInvalid,
                        "a policy with runtimeConfig.networkProxy cannot also reach domain names through the egress gateway: both set HTTP_PROXY",
                    ));
                }
                let through = super::gateway::compile_gateway(
                    gw,
                    sandbox,
                    &egress,
                    &facts.cluster_domain,
                    false,
                    report,
                )?;
                egress_rules.extend(through.rules);
                proxy_env = through.env;
                if !want_dns {
                    report.added(
                        "network.dns",
                        "none: the egress gateway resolves the domain names itself, so the sandbox gets no DNS for them and DNS cannot carry data out",
                    );
                }
                None
            }
        }
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

/// Allow-all egress with host names blocked: only the egress gateway can cut names out, so all
/// egress goes through it and the NetworkPolicy allows nothing else (no DNS either: the gateway
/// resolves). Without the gateway the sandbox is blocked.
fn all_through_gateway(
    checked: &CheckedPolicy,
    sandbox: &AgentSandbox,
    facts: &ClusterFacts,
    egress: &CompiledEgress,
    report: &mut EnforcementReport,
) -> Result<CompiledNetwork, Blocked> {
    let net = &checked.network;
    let gw = match (&facts.gateway, facts.fqdn_backend) {
        (Some(gw), FqdnBackend::Auto | FqdnBackend::Gateway) => gw,
        _ => {
            return Err(Blocked::new(
                BlockReason::FqdnBackendMissing,
                format!(
                    "host names blocked under allow-all egress ({}) need the egress gateway (palisade gateway, the chart's gateway.enabled, with --fqdn-backend auto or gateway): a NetworkPolicy cannot cut a name out of allow-all egress",
                    net.blocked_names.join(", ")
                ),
            ));
        }
    };
    let name = crate::render::children::base_name(sandbox);
    let through =
        super::gateway::compile_gateway(gw, sandbox, egress, &facts.cluster_domain, true, report)?;
    match net.dns {
        DnsMode::Cluster => report.narrowed(
            "network.dns",
            "all egress goes through the egress gateway, which resolves names itself: cluster DNS is not opened",
        ),
        DnsMode::Auto | DnsMode::None => report.added(
            "network.dns",
            "none: the egress gateway resolves names itself, so DNS cannot carry data out",
        ),
    }
    if facts.cluster_cidrs.is_empty() {
        report.not_enforced(
            "network.egress.default",
            "the cluster's pod and service CIDRs are unknown, so names the gateway resolves may lead to in-cluster addresses outside the private ranges; give them to the operator and the gateway (--cluster-cidr)",
        );
    }
    let ingress_rules = compile_ingress(net.ingress.as_ref(), report);
    Ok(CompiledNetwork {
        network_policy: NetworkPolicy {
            metadata: ObjectMeta {
                finalizers: Some(vec![ISOLATION_FINALIZER.to_string()]),
                ..object_meta(sandbox, isolation_name(&name))
            },
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(pod_selector(&name)),
                policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
                ingress: (!ingress_rules.is_empty()).then_some(ingress_rules),
                egress: Some(through.rules),
            }),
        },
        fqdn_policy: None,
        proxy_env: through.env,
    })
}

enum Backend<'a> {
    Cilium,
    Gateway(&'a GatewayFacts),
}

/// The backend for domain-name egress, as configured and as the cluster has it.
fn choose_backend<'a>(
    facts: &'a ClusterFacts,
    egress: &CompiledEgress,
) -> Result<Backend<'a>, Blocked> {
    let names: Vec<&str> = egress
        .fqdn
        .iter()
        .flat_map(|f| f.names.iter().map(String::as_str))
        .collect();
    let missing = |what: &str| {
        Blocked::new(
            BlockReason::FqdnBackendMissing,
            format!("egress to domain names ({}) needs {what}", names.join(", ")),
        )
    };
    match (facts.fqdn_backend, facts.cilium, &facts.gateway) {
        (FqdnBackend::Cilium | FqdnBackend::Auto, true, _) => Ok(Backend::Cilium),
        (FqdnBackend::Gateway | FqdnBackend::Auto, _, Some(gw)) => Ok(Backend::Gateway(gw)),
        (FqdnBackend::Cilium, false, _) => Err(missing(
            "Cilium, the configured backend: the CiliumNetworkPolicy CRD is not installed, or the operator may not create those objects",
        )),
        (FqdnBackend::Gateway, _, None) => Err(missing(
            "the egress gateway, the configured backend: it is not deployed, its Service has no ClusterIP, or the operator has no credential key",
        )),
        (FqdnBackend::Auto, false, None) => Err(missing(
            "an FQDN-capable backend the operator can use: the egress gateway (palisade gateway, the chart's gateway.enabled) or Cilium (its CiliumNetworkPolicy CRD, with the operator allowed to create those objects)",
        )),
    }
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

/// Names the pod's resolver may ask for when it looks `name` up: the name itself and, since
/// Kubernetes gives pods `ndots:5`, the name under each cluster search domain first.
fn lookups(name: &str, namespace: &str, domain: &str) -> Vec<String> {
    vec![
        name.to_string(),
        format!("{name}.{namespace}.svc.{domain}"),
        format!("{name}.svc.{domain}"),
        format!("{name}.{domain}"),
    ]
}

fn dns_match(name: &str) -> Value {
    if name.contains('*') {
        json!({"matchPattern": name})
    } else {
        json!({"matchName": name})
    }
}

fn cilium_policy(
    name: &str,
    sandbox: &AgentSandbox,
    egress: &CompiledEgress,
    facts: &ClusterFacts,
    dns: DnsMode,
    dns_for_any_name: bool,
    report: &mut EnforcementReport,
) -> Result<Value, Blocked> {
    let mut rules = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for allow in &egress.fqdn {
        let fqdns: Vec<Value> = allow
            .names
            .iter()
            .map(|n| {
                names.push(n);
                dns_match(n)
            })
            .collect();
        let mut rule = json!({"toFQDNs": fqdns});
        if let Some(p) = cilium_ports(&allow.services) {
            rule["toPorts"] = p;
        }
        rules.push(rule);
    }
    names.sort_unstable();
    names.dedup();

    // Cilium learns the addresses of names from the DNS answers its proxy sees: without DNS,
    // FQDN egress never works. The proxy answers only for the allowed names (and their
    // search-domain forms), so DNS carries no other question out of the sandbox.
    if dns == DnsMode::None {
        return Err(Blocked::new(
            BlockReason::PolicyInvalid,
            format!(
                "egress to domain names ({}) needs DNS: Cilium learns their addresses from the answers its DNS proxy sees. Set network.dns to auto (DNS for these names only) or cluster",
                names.join(", ")
            ),
        ));
    }
    let namespace = sandbox.metadata.namespace.as_deref().unwrap_or("default");
    let questions: Vec<Value> = names
        .iter()
        .flat_map(|n| lookups(n, namespace, &facts.cluster_domain))
        .map(|q| dns_match(&q))
        .collect();
    let asked = dns_services();
    let (peer, services) = match &facts.dns {
        DnsEndpoints::Selector {
            pod_labels,
            namespace_labels,
        } => {
            let mut labels = serde_json::Map::new();
            for (k, v) in pod_labels {
                labels.insert(k.clone(), json!(v));
            }
            if let Some(ns) = namespace_labels.get("kubernetes.io/metadata.name") {
                labels.insert("k8s:io.kubernetes.pod.namespace".into(), json!(ns));
            }
            (
                json!({"toEndpoints": [{"matchLabels": labels}]}),
                asked.subtract(&egress.in_cluster_denied),
            )
        }
        DnsEndpoints::Ips(ips) => {
            let cidrs: Vec<Cidr> = ips.iter().map(|ip| ip_cidr(*ip)).collect();
            let denied = cidrs
                .iter()
                .fold(Services::none(), |acc, c| acc.union(&denied_at(egress, c)));
            (
                json!({"toCIDR": cidrs.iter().map(ToString::to_string).collect::<Vec<_>>()}),
                asked.subtract(&denied),
            )
        }
    };
    if services.is_empty() {
        return Err(Blocked::new(
            BlockReason::PolicyInvalid,
            "deny rules cover the cluster DNS service on port 53, which egress to domain names needs",
        ));
    }
    let mut dns_rule = peer;
    let mut ports = Vec::new();
    for p in [L4::Udp, L4::Tcp] {
        if !services.l4(p).is_empty() {
            ports.push(json!({"port": "53", "protocol": p.as_k8s()}));
        }
    }
    dns_rule["toPorts"] = json!([{"ports": ports, "rules": {"dns": questions}}]);
    rules.push(dns_rule);
    if dns_for_any_name {
        // An L4-only allow on port 53 (the NetworkPolicy's) lets every question through
        // Cilium's proxy, whatever the L7 rule says.
        report.added(
            "network.dns",
            "DNS for any name, through Cilium's DNS proxy: the policy's other egress (or dns: cluster) opens cluster DNS; with only domain-name egress and dns: auto, DNS would answer the allowed names only",
        );
    } else {
        report.added(
            "network.dns",
            format!(
                "DNS through Cilium's DNS proxy for the allowed names only ({}), and their cluster search-domain forms",
                names.join(", ")
            ),
        );
    }
    if services != asked {
        report.narrowed("network.dns", "deny rules cover the cluster DNS service on some of port 53's protocols: those are not allowed");
    }

    // What names may never resolve to: the floor (metadata, cluster and node ranges) and the
    // deny rules, as `egressDeny`, which wins over every allow. The DNS servers themselves stay
    // reachable on port 53.
    let dns_hosts = match &facts.dns {
        DnsEndpoints::Ips(ips) => ips.iter().fold(AddrSet::default(), |a, ip| {
            a.union(&AddrSet::from_cidr(&ip_cidr(*ip)))
        }),
        DnsEndpoints::Selector { .. } => AddrSet::default(),
    };
    // Each entry: addresses and the services denied there (`None`: everything).
    let mut deny_boxes: Vec<(AddrSet, Option<Services>)> = Vec::new();
    let floor_only = egress.floor.subtract(&dns_hosts);
    if !floor_only.is_empty() {
        deny_boxes.push((floor_only, None));
    }
    let floor_dns = egress.floor.intersect(&dns_hosts);
    if !floor_dns.is_empty() {
        let others = Services::all().subtract(&services).expressible();
        deny_boxes.push((floor_dns, Some(others)));
    }
    for (i, (addrs, denied)) in egress.deny.iter().enumerate() {
        if denied.is_all() {
            deny_boxes.push((addrs.clone(), None));
        } else if denied.icmp || denied.other {
            // egressDeny cannot pair ports with ICMP or other protocols: deny everything there.
            report.narrowed(
                format!("network.egress.deny[{i}]"),
                "for domain-name egress (Cilium), this rule denies every protocol and port at its addresses: ICMP and other protocols cannot be denied beside ports",
            );
            deny_boxes.push((addrs.clone(), None));
        } else {
            deny_boxes.push((addrs.clone(), Some(denied.clone())));
        }
    }
    let deny: Vec<Value> = deny_boxes
        .iter()
        .filter(|(_, services)| services.as_ref().is_none_or(|s| !s.is_empty()))
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
            if let Some(p) = services.as_ref().and_then(cilium_ports) {
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
    Ok(json!({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": object_meta(sandbox, fqdn_policy_name(name)),
        "spec": spec,
    }))
}
