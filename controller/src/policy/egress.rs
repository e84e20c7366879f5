//! Egress compilation: the allowed set is (allow rules, or everything) minus deny rules minus
//! metadata addresses minus cluster CIDRs, turned into NetworkPolicy rules that admit exactly
//! that set, or less where NetworkPolicy cannot express it (ICMP, other IP protocols).

use std::collections::BTreeSet;
use std::sync::LazyLock;

use k8s_openapi::api::networking::v1::{NetworkPolicyEgressRule, NetworkPolicyPeer};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::api::policy::{DefaultAction, EgressPolicy, EgressRule};
use crate::api::report::EnforcementReport;

use super::PolicyError;
use super::net::{AddrSet, Cidr, Family};
use super::peers::{ip_block_peers, np_ports};
use super::services::Services;

/// Link-local ranges and cloud metadata and host-agent addresses, removed from every allow
/// unless `allowMetadataAccess` is set. IPv4 link-local covers every provider's
/// 169.254.169.254 and the EKS Pod Identity agent's 169.254.170.23.
pub const METADATA_CIDRS: &[&str] = &[
    "169.254.0.0/16",
    "fe80::/10",
    // Alibaba Cloud instance metadata.
    "100.100.100.200/32",
    // Azure WireServer (host agent; VM extension configuration, which can carry secrets).
    "168.63.129.16/32",
    // AWS instance metadata (IMDS) over IPv6.
    "fd00:ec2::254/128",
    // AWS EKS Pod Identity agent over IPv6 (it hands out IAM credentials).
    "fd00:ec2::23/128",
    // Oracle Cloud instance metadata over IPv6.
    "fd00:c1::a9fe:a9fe/128",
    // Google Compute Engine metadata over IPv6 (IPv6-only instances).
    "fd20:ce::254/128",
];

/// Where cluster addresses are assumed to lie when the cluster's CIDRs are not known: the
/// private and shared address ranges every common network plugin uses.
pub const ASSUMED_CLUSTER_CIDRS: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
];

/// The result of compiling the egress part of a policy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CompiledEgress {
    /// NetworkPolicy egress rules (CIDR and selector destinations).
    pub rules: Vec<NetworkPolicyEgressRule>,
    /// Domain-name destinations with what they may be reached on; need an FQDN backend.
    pub fqdn: Vec<FqdnAllow>,
    /// Deny rules as address × services, for backends that can deny (Cilium `egressDeny`).
    pub deny: Vec<(AddrSet, Services)>,
    /// Services that deny rules may remove from in-cluster destinations: removed from every
    /// selector allow, DNS included.
    pub in_cluster_denied: Services,
    /// Addresses no allow reaches whatever it says (metadata unless allowed, the cluster's and
    /// the nodes' ranges): what names must not resolve to either (Cilium `egressDeny`).
    pub floor: AddrSet,
    /// What the CIDR rules reach directly, as address sets with the services allowed there
    /// (deny rules and the floor removed, before NetworkPolicy's limits): what the egress
    /// gateway lets IP literals and private addresses through on.
    pub direct: Vec<(AddrSet, Services)>,
}

/// Domain names reachable on a set of ports.
#[derive(Clone, Debug, PartialEq)]
pub struct FqdnAllow {
    pub names: Vec<String>,
    pub services: Services,
}

impl CompiledEgress {
    /// Whether any destination at all may be reached (drives `dns: auto`).
    pub fn allows_any(&self) -> bool {
        !self.rules.is_empty() || !self.fqdn.is_empty()
    }
}

/// One allow or deny rule as address and selector destinations times services.
struct Resolved {
    addrs: AddrSet,
    selectors: Vec<NetworkPolicyPeer>,
    fqdns: Vec<String>,
    services: Services,
}

fn resolve(rule: &EgressRule, field: &str) -> Result<Resolved, PolicyError> {
    let services = Services::from_rules(rule.ports.as_deref());
    let mut r = Resolved {
        addrs: AddrSet::default(),
        selectors: Vec::new(),
        fqdns: Vec::new(),
        services,
    };
    let Some(to) = &rule.to else {
        r.addrs = AddrSet::all();
        return Ok(r);
    };
    for (i, peer) in to.iter().enumerate() {
        let pf = format!("{field}.to[{i}]");
        if let Some(cidr) = &peer.cidr {
            let net = Cidr::parse(cidr)
                .map_err(|e| PolicyError::new(format!("{pf}.cidr"), e.to_string()))?;
            let mut set = AddrSet::from_cidr(&net);
            for (j, e) in peer.except.iter().flatten().enumerate() {
                let ex = Cidr::parse(e).map_err(|err| {
                    PolicyError::new(format!("{pf}.except[{j}]"), err.to_string())
                })?;
                set = set.subtract(&AddrSet::from_cidr(&ex));
            }
            r.addrs = r.addrs.union(&set);
        } else if let Some(name) = &peer.fqdn {
            r.fqdns.push(name.clone());
        } else {
            r.selectors.push(NetworkPolicyPeer {
                pod_selector: peer.pod_selector.clone().or_else(|| {
                    // A namespace selector alone means every pod of those namespaces.
                    peer.namespace_selector
                        .as_ref()
                        .map(|_| LabelSelector::default())
                }),
                namespace_selector: peer.namespace_selector.clone(),
                ip_block: None,
            });
        }
    }
    Ok(r)
}

fn cidr_set(list: &[&str]) -> AddrSet {
    list.iter()
        .filter_map(|c| Cidr::parse(c).ok())
        .fold(AddrSet::default(), |acc, c| {
            acc.union(&AddrSet::from_cidr(&c))
        })
}

static METADATA: LazyLock<AddrSet> = LazyLock::new(|| cidr_set(METADATA_CIDRS));
static ASSUMED_CLUSTER: LazyLock<AddrSet> = LazyLock::new(|| cidr_set(ASSUMED_CLUSTER_CIDRS));

/// The cluster's own address ranges, which no CIDR allow reaches.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClusterRanges<'a> {
    /// Pod and service CIDRs; when empty they are unknown, and in-cluster addresses are assumed
    /// to lie in the private ranges ([`ASSUMED_CLUSTER_CIDRS`]) for deciding which deny rules
    /// reach selector destinations.
    pub pods_and_services: &'a [Cidr],
    /// The nodes' addresses (the kubelet listens on 10250 there); empty when unknown.
    pub nodes: &'a [Cidr],
}

fn union_of(cidrs: &[Cidr]) -> AddrSet {
    cidrs
        .iter()
        .fold(AddrSet::default(), |a, c| a.union(&AddrSet::from_cidr(c)))
}

/// Compiles `egress` (directional form): the metadata floor and `ranges` are removed from every
/// CIDR allow.
pub fn compile_egress(
    egress: &EgressPolicy,
    ranges: ClusterRanges<'_>,
    report: &mut EnforcementReport,
) -> Result<CompiledEgress, PolicyError> {
    let cluster_cidrs = ranges.pods_and_services;
    let allow: Vec<Resolved> = egress
        .allow
        .iter()
        .enumerate()
        .map(|(i, r)| resolve(r, &format!("network.egress.allow[{i}]")))
        .collect::<Result<_, _>>()?;
    let deny: Vec<Resolved> = egress
        .deny
        .iter()
        .enumerate()
        .map(|(i, r)| resolve(r, &format!("network.egress.deny[{i}]")))
        .collect::<Result<_, _>>()?;

    let mut allow_boxes: Vec<(AddrSet, Services)> = allow
        .iter()
        .filter(|r| !r.addrs.is_empty())
        .map(|r| (r.addrs.clone(), r.services.clone()))
        .collect();
    if egress.default.unwrap_or_default() == DefaultAction::Allow {
        allow_boxes.push((AddrSet::all(), Services::all()));
    }
    let deny_boxes: Vec<(AddrSet, Services)> = deny
        .iter()
        .map(|r| (r.addrs.clone(), r.services.clone()))
        .collect();

    let metadata = if egress.allow_metadata_access.unwrap_or(false) {
        AddrSet::default()
    } else {
        METADATA.clone()
    };
    let cluster = union_of(cluster_cidrs);
    let nodes = union_of(ranges.nodes);
    let allowed_addrs = allow_boxes
        .iter()
        .fold(AddrSet::default(), |a, (s, _)| a.union(s));
    if !allowed_addrs.intersect(&metadata).is_empty() {
        report.narrowed(
            "network.egress",
            "link-local ranges and cloud metadata addresses (169.254.0.0/16, fe80::/10, 100.100.100.200, 168.63.129.16, fd00:ec2::254, fd00:ec2::23, fd00:c1::a9fe:a9fe, fd20:ce::254) are removed from every allow; set allowMetadataAccess to reach them",
        );
    }
    if !allowed_addrs.intersect(&cluster).is_empty() {
        report.narrowed(
            "network.egress",
            "the cluster's pod and service CIDRs are removed from CIDR allows; reach in-cluster destinations with a podSelector/namespaceSelector rule",
        );
    }
    if !allowed_addrs.intersect(&nodes).is_empty() {
        report.narrowed(
            "network.egress",
            "the nodes' addresses are removed from CIDR allows (the kubelet and other node services listen there)",
        );
    }
    let removed = metadata.union(&cluster).union(&nodes);
    if ranges.nodes.is_empty()
        && !allowed_addrs
            .subtract(&removed)
            .intersect(&ASSUMED_CLUSTER)
            .is_empty()
    {
        report.not_enforced(
            "network.egress",
            "the nodes' addresses are unknown, so CIDR allows over private ranges may reach node services such as the kubelet (10250); give them to the operator (--node-cidr)",
        );
    }

    let mut out = CompiledEgress::default();
    let mut icmp_dropped: BTreeSet<usize> = BTreeSet::new();
    let mut protocols_cut: BTreeSet<usize> = BTreeSet::new();
    let mut groups: Vec<(Services, AddrSet)> = Vec::new();
    for family in [Family::V4, Family::V6] {
        for (lo, hi) in atoms(
            family,
            allow_boxes
                .iter()
                .chain(deny_boxes.iter())
                .map(|(a, _)| a)
                .chain([&removed]),
        ) {
            if removed.contains(family, lo) {
                continue;
            }
            let granted = allow_boxes
                .iter()
                .filter(|(a, _)| a.contains(family, lo))
                .fold(Services::none(), |acc, (_, s)| acc.union(s));
            let covering_denies: Vec<usize> = deny_boxes
                .iter()
                .enumerate()
                .filter(|(_, (a, _))| a.contains(family, lo))
                .map(|(i, _)| i)
                .collect();
            let denied = covering_denies
                .iter()
                .fold(Services::none(), |acc, &i| acc.union(&deny_boxes[i].1));
            let services = granted.subtract(&denied);
            let emitted = services.expressible();
            if services.icmp && !emitted.icmp {
                icmp_dropped.extend(
                    allow
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| r.addrs.contains(family, lo) && r.services.icmp)
                        .map(|(i, _)| i),
                );
            }
            if services.other && !emitted.other {
                protocols_cut.extend(covering_denies.iter().copied());
            }
            if emitted.is_empty() {
                continue;
            }
            let mut atom = AddrSet::default();
            let range = super::net::IntervalSet::range(lo, hi);
            match family {
                Family::V4 => atom.v4 = range,
                Family::V6 => atom.v6 = range,
            }
            match groups.iter_mut().find(|(s, _)| *s == emitted) {
                Some((_, addrs)) => *addrs = addrs.union(&atom),
                None => groups.push((emitted, atom)),
            }
        }
    }
    for (services, addrs) in groups {
        out.rules.push(NetworkPolicyEgressRule {
            to: Some(ip_block_peers(&addrs)),
            ports: np_ports(&services),
        });
        out.direct.push((addrs, services));
    }

    // Selector destinations cannot have CIDRs cut out of them: deny rules that may reach
    // in-cluster addresses remove their services from every selector allow instead.
    let maybe_cluster = if cluster_cidrs.is_empty() {
        ASSUMED_CLUSTER.clone()
    } else {
        cluster.clone()
    };
    let in_cluster_denied = deny_boxes
        .iter()
        .filter(|(a, _)| !a.intersect(&maybe_cluster).is_empty())
        .fold(Services::none(), |acc, (_, s)| acc.union(s));
    for (i, r) in allow.iter().enumerate() {
        if !r.selectors.is_empty() {
            let services = r.services.subtract(&in_cluster_denied);
            if services != r.services {
                report.narrowed(
                    format!("network.egress.allow[{i}]"),
                    "deny rules may cover in-cluster addresses, and a selector cannot have CIDRs removed: their ports are removed from this in-cluster allow",
                );
            }
            let emitted = services.expressible();
            if services.icmp && !emitted.icmp {
                icmp_dropped.insert(i);
            }
            if !emitted.is_empty() {
                out.rules.push(NetworkPolicyEgressRule {
                    to: Some(r.selectors.clone()),
                    ports: np_ports(&emitted),
                });
            }
        }
        if !r.fqdns.is_empty() {
            let emitted = r.services.expressible();
            if r.services.icmp && !emitted.icmp {
                icmp_dropped.insert(i);
            }
            if !emitted.is_empty() {
                out.fqdn.push(FqdnAllow {
                    names: r.fqdns.clone(),
                    services: emitted,
                });
            }
        }
    }
    for i in icmp_dropped {
        report.narrowed(
            format!("network.egress.allow[{i}]"),
            "a NetworkPolicy cannot allow ICMP on its own: the ICMP part of this rule is dropped",
        );
    }
    for i in protocols_cut {
        report.narrowed(
            format!("network.egress.deny[{i}]"),
            "cutting this rule out of an all-protocol allow leaves TCP, UDP and SCTP for the affected destinations; other IP protocols are blocked there too",
        );
    }
    out.deny = deny_boxes;
    out.in_cluster_denied = in_cluster_denied;
    out.floor = removed;
    Ok(out)
}

/// The elementary address intervals of a family: no set's boundary falls inside one.
fn atoms<'a>(family: Family, sets: impl Iterator<Item = &'a AddrSet>) -> Vec<(u128, u128)> {
    let max = family.max();
    let mut cuts: BTreeSet<u128> = BTreeSet::from([0]);
    for set in sets {
        for &(lo, hi) in set.family(family).ranges() {
            cuts.insert(lo);
            if hi < max {
                cuts.insert(hi + 1);
            }
        }
    }
    let starts: Vec<u128> = cuts.into_iter().collect();
    starts
        .iter()
        .enumerate()
        .map(|(i, &lo)| (lo, starts.get(i + 1).map_or(max, |next| next - 1)))
        .collect()
}
