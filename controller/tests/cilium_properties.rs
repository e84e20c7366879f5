//! Properties of the CiliumNetworkPolicy that carries domain-name egress: whatever the names
//! resolve to, the floor (metadata addresses unless allowed, the cluster's and the nodes'
//! ranges) and the policy's deny rules are denied beside them (`egressDeny` wins over every
//! allow in Cilium), and DNS answers only the allowed names.
//!
//! The deny rules are read back with a small evaluator written here, independent of the
//! compiler's address arithmetic.

use std::net::IpAddr;

use palisade::api::policy::*;
use palisade::api::sandbox::{AgentSandboxSpec, PolicyRef};
use palisade::api::{AgentPolicy, AgentSandbox};
use palisade::policy::net::Cidr;
use palisade::render::facts::{ClusterFacts, DnsEndpoints};
use palisade::render::{BlockReason, compile};
use proptest::prelude::*;
use serde_json::Value;

const METADATA: &[&str] = &[
    "169.254.169.254",
    "169.254.170.23",
    "169.254.0.0",
    "169.254.255.255",
    "fe80::1",
    "100.100.100.200",
    "168.63.129.16",
    "fd00:ec2::254",
    "fd00:ec2::23",
    "fd00:c1::a9fe:a9fe",
    "fd20:ce::254",
];
const NAMES: &[&str] = &[
    "api.example.com",
    "*.example.com",
    "metadata.google.internal",
    "pypi.org",
    "*.rebind.example.net",
];
const CLUSTER: &[&str] = &["10.244.0.0/16", "10.96.0.0/12", "fd00:10::/64"];
const NODES: &[&str] = &["192.168.10.0/24", "172.18.0.0/16", "2001:db8:1::/64"];
const DENIES: &[&str] = &[
    "203.0.113.0/24",
    "198.51.100.7/32",
    "8.8.0.0/16",
    "2001:db8:9::/48",
];
const DNS_IPS: &[&str] = &["169.254.20.10", "10.96.0.10", "192.0.2.53"];

/// An address and prefix length.
type Net = (IpAddr, u8);

/// A parsed `egressDeny` entry: CIDR with excepts, and ports (empty: every protocol and port).
struct Deny {
    blocks: Vec<(IpAddr, u8, Vec<Net>)>,
    ports: Vec<(String, u16, u16)>,
}

fn parse_net(s: &str) -> (IpAddr, u8) {
    let (a, p) = s.split_once('/').unwrap_or((s, ""));
    let addr: IpAddr = a.parse().expect("address");
    let prefix = if p.is_empty() {
        if addr.is_ipv4() { 32 } else { 128 }
    } else {
        p.parse().expect("prefix")
    };
    (addr, prefix)
}

fn bits(a: IpAddr) -> (u128, u32) {
    match a {
        IpAddr::V4(v) => (u32::from(v) as u128, 32),
        IpAddr::V6(v) => (u128::from(v), 128),
    }
}

fn in_net(a: IpAddr, (net, prefix): (IpAddr, u8)) -> bool {
    let ((x, w), (n, wn)) = (bits(a), bits(net));
    if w != wn {
        return false;
    }
    let host = w - prefix as u32;
    if host >= 128 {
        return true;
    }
    (x >> host) == (n >> host)
}

fn parse_denies(cnp: &Value) -> Vec<Deny> {
    cnp["spec"]["egressDeny"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|r| Deny {
                    blocks: r["toCIDRSet"]
                        .as_array()
                        .expect("toCIDRSet")
                        .iter()
                        .map(|b| {
                            let (a, p) = parse_net(b["cidr"].as_str().expect("cidr"));
                            let except = b["except"]
                                .as_array()
                                .map(|e| e.iter().map(|x| parse_net(x.as_str().unwrap())).collect())
                                .unwrap_or_default();
                            (a, p, except)
                        })
                        .collect(),
                    ports: r["toPorts"]
                        .as_array()
                        .map(|tp| {
                            tp.iter()
                                .flat_map(|t| t["ports"].as_array().cloned().unwrap_or_default())
                                .map(|p| {
                                    let lo: u16 = p["port"].as_str().unwrap().parse().unwrap();
                                    let hi = p["endPort"].as_u64().map_or(lo, |h| h as u16);
                                    (p["protocol"].as_str().unwrap().to_string(), lo, hi)
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn denied(denies: &[Deny], a: IpAddr, proto: &str, port: u16) -> bool {
    denies.iter().any(|d| {
        let addr = d
            .blocks
            .iter()
            .any(|(n, p, except)| in_net(a, (*n, *p)) && !except.iter().any(|e| in_net(a, *e)));
        addr && (d.ports.is_empty()
            || d.ports
                .iter()
                .any(|(pr, lo, hi)| pr == proto && (*lo..=*hi).contains(&port)))
    })
}

/// Addresses worth probing in a CIDR: first, second, middle and last.
fn probes(net: &str) -> Vec<IpAddr> {
    let (a, p) = parse_net(net);
    let (base, w) = bits(a);
    let host = w - p as u32;
    let size: u128 = if host >= 128 {
        u128::MAX
    } else {
        (1u128 << host) - 1
    };
    [0, 1.min(size), size / 2, size]
        .iter()
        .map(|off| {
            let x = base + off;
            if w == 32 {
                IpAddr::V4((x as u32).into())
            } else {
                IpAddr::V6(x.into())
            }
        })
        .collect()
}

#[derive(Clone, Debug)]
struct Case {
    names: Vec<&'static str>,
    fqdn_ports: Option<Vec<u16>>,
    metadata_allowed: bool,
    cluster: Vec<&'static str>,
    nodes: Vec<&'static str>,
    denies: Vec<(&'static str, Option<u16>)>,
    dns_ips: Vec<&'static str>,
    dns: DnsMode,
}

fn arb_case() -> impl Strategy<Value = Case> {
    (
        prop::sample::subsequence(NAMES, 1..=NAMES.len()),
        prop::option::of(prop::collection::vec(
            prop::sample::select(&[53u16, 80, 443, 8443][..]),
            1..3,
        )),
        any::<bool>(),
        prop::sample::subsequence(CLUSTER, 0..=CLUSTER.len()),
        prop::sample::subsequence(NODES, 0..=NODES.len()),
        prop::collection::vec(
            (
                prop::sample::select(DENIES),
                prop::option::of(prop::sample::select(&[443u16, 80][..])),
            ),
            0..3,
        ),
        prop::sample::subsequence(DNS_IPS, 0..=2),
        prop::sample::select(&[DnsMode::Auto, DnsMode::Cluster][..]),
    )
        .prop_map(
            |(names, fqdn_ports, metadata_allowed, cluster, nodes, denies, dns_ips, dns)| Case {
                names,
                fqdn_ports,
                metadata_allowed,
                cluster,
                nodes,
                denies,
                dns_ips,
                dns,
            },
        )
}

fn spec(case: &Case) -> AgentPolicySpec {
    let ports = case.fqdn_ports.as_ref().map(|ps| {
        ps.iter()
            .map(|p| PortRule {
                protocol: Some(Protocol::Tcp),
                port: Some(*p as i32),
                end_port: None,
            })
            .collect()
    });
    AgentPolicySpec {
        network: Some(NetworkRules {
            egress: Some(EgressPolicy {
                allow: vec![EgressRule {
                    to: Some(
                        case.names
                            .iter()
                            .map(|n| EgressPeer {
                                fqdn: Some(n.to_string()),
                                ..Default::default()
                            })
                            .collect(),
                    ),
                    ports,
                }],
                deny: case
                    .denies
                    .iter()
                    .map(|(c, port)| EgressRule {
                        to: Some(vec![EgressPeer {
                            cidr: Some(c.to_string()),
                            ..Default::default()
                        }]),
                        ports: port.map(|p| {
                            vec![PortRule {
                                protocol: Some(Protocol::Tcp),
                                port: Some(p as i32),
                                end_port: None,
                            }]
                        }),
                    })
                    .collect(),
                allow_metadata_access: Some(case.metadata_allowed),
                ..Default::default()
            }),
            dns: Some(case.dns),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn facts(case: &Case) -> ClusterFacts {
    let mut f = ClusterFacts {
        cilium: true,
        cluster_cidrs: case
            .cluster
            .iter()
            .map(|c| Cidr::parse(c).unwrap())
            .collect(),
        node_cidrs: case.nodes.iter().map(|c| Cidr::parse(c).unwrap()).collect(),
        ..Default::default()
    };
    if !case.dns_ips.is_empty() {
        f.dns = DnsEndpoints::Ips(case.dns_ips.iter().map(|a| a.parse().unwrap()).collect());
    }
    f
}

fn sandbox() -> AgentSandbox {
    let mut s = AgentSandbox::new(
        "agent",
        AgentSandboxSpec {
            policy_ref: PolicyRef { name: "p".into() },
            image: "ghcr.io/acme/agent:1".into(),
            ..Default::default()
        },
    );
    s.metadata.namespace = Some("team".into());
    s
}

fn policy(spec: AgentPolicySpec) -> AgentPolicy {
    let mut p = AgentPolicy::new("p", spec);
    p.metadata.namespace = Some("team".into());
    p
}

/// The DNS questions the Cilium policy lets through.
fn dns_questions(cnp: &Value) -> Vec<String> {
    cnp["spec"]["egress"]
        .as_array()
        .expect("egress")
        .iter()
        .flat_map(|r| r["toPorts"].as_array().cloned().unwrap_or_default())
        .flat_map(|tp| tp["rules"]["dns"].as_array().cloned().unwrap_or_default())
        .map(|q| {
            q["matchName"]
                .as_str()
                .or(q["matchPattern"].as_str())
                .expect("matchName or matchPattern")
                .to_string()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn names_never_reach_the_floor_or_a_denied_address(case in arb_case()) {
        let plan = compile(&policy(spec(&case)), &sandbox(), &facts(&case), 0)
            .map_err(|b| TestCaseError::fail(format!("blocked: {b:?}")))?;
        let cnp = plan.fqdn_policy.expect("a Cilium policy for domain names");
        let denies = parse_denies(&cnp);
        let dns_hosts: Vec<IpAddr> = case.dns_ips.iter().map(|a| a.parse().unwrap()).collect();

        let mut floor: Vec<IpAddr> = Vec::new();
        if !case.metadata_allowed {
            floor.extend(METADATA.iter().map(|a| a.parse::<IpAddr>().unwrap()));
        }
        for c in case.cluster.iter().chain(&case.nodes) {
            floor.extend(probes(c));
        }
        for h in &dns_hosts {
            let link_local = in_net(*h, parse_net("169.254.0.0/16"));
            if (link_local && !case.metadata_allowed)
                || case.cluster.iter().chain(&case.nodes).any(|c| in_net(*h, parse_net(c)))
            {
                floor.push(*h);
            }
        }
        for a in &floor {
            for proto in ["TCP", "UDP"] {
                for port in [1u16, 53, 443, 10250, 65535] {
                    let dns_server = dns_hosts.contains(a) && port == 53;
                    prop_assert_eq!(
                        denied(&denies, *a, proto, port),
                        !dns_server,
                        "{} {}/{} in the floor: denied must be {} (dns servers {:?})\n{}",
                        a, proto, port, !dns_server, dns_hosts,
                        serde_json::to_string_pretty(&cnp["spec"]).unwrap()
                    );
                }
            }
        }
        for (c, port) in &case.denies {
            for a in probes(c) {
                for p in [443u16, 80, 22] {
                    if port.is_none_or(|q| q == p) {
                        prop_assert!(denied(&denies, a, "TCP", p), "{} TCP/{} is denied by the policy", a, p);
                    }
                }
            }
        }
        // Outside the floor and the denies, nothing is denied (the names stay reachable).
        for a in ["1.1.1.1", "2606:4700::1111"] {
            let a: IpAddr = a.parse().unwrap();
            if !case.denies.iter().any(|(c, _)| in_net(a, parse_net(c))) {
                prop_assert!(!denied(&denies, a, "TCP", 443));
            }
        }

        // DNS answers the allowed names and their search-domain forms, nothing else.
        let questions = dns_questions(&cnp);
        prop_assert!(!questions.is_empty());
        for q in &questions {
            let ok = case.names.iter().any(|n| {
                q == n
                    || *q == format!("{n}.team.svc.cluster.local")
                    || *q == format!("{n}.svc.cluster.local")
                    || *q == format!("{n}.cluster.local")
            });
            prop_assert!(ok, "DNS question {} is not an allowed name", q);
        }
        for n in &case.names {
            prop_assert!(questions.iter().any(|q| q == n), "{} is not answered", n);
        }
        // The NetworkPolicy does not open DNS for every name beside it, unless asked to.
        let np_dns = plan
            .network_policy
            .spec
            .as_ref()
            .and_then(|s| s.egress.as_ref())
            .is_some_and(|rules| {
                rules.iter().any(|r| {
                    r.ports.iter().flatten().any(|p| {
                        p.port == Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(53))
                    })
                })
            });
        prop_assert_eq!(np_dns, case.dns == DnsMode::Cluster);
    }
}

#[test]
fn domain_names_without_dns_are_refused() {
    let case = Case {
        names: vec!["*.example.com"],
        fqdn_ports: None,
        metadata_allowed: false,
        cluster: vec![],
        nodes: vec![],
        denies: vec![],
        dns_ips: vec![],
        dns: DnsMode::None,
    };
    let blocked = compile(&policy(spec(&case)), &sandbox(), &facts(&case), 0)
        .expect_err("domain names need DNS");
    assert_eq!(blocked.reason, BlockReason::PolicyInvalid);
    assert!(
        blocked.message.contains("network.dns"),
        "{}",
        blocked.message
    );
}

#[test]
fn a_rebinding_wildcard_under_auto_dns_gets_the_floor_and_named_dns_only() {
    // The reproduction from the review: `*.example.com`, no deny rules.
    let case = Case {
        names: vec!["*.example.com"],
        fqdn_ports: None,
        metadata_allowed: false,
        cluster: vec![],
        nodes: vec![],
        denies: vec![],
        dns_ips: vec![],
        dns: DnsMode::Auto,
    };
    let plan = compile(&policy(spec(&case)), &sandbox(), &facts(&case), 0).expect("compiles");
    let cnp = plan.fqdn_policy.expect("cilium");
    let denies = parse_denies(&cnp);
    assert!(denied(
        &denies,
        "169.254.169.254".parse().unwrap(),
        "TCP",
        80
    ));
    assert!(denied(&denies, "fd00:ec2::254".parse().unwrap(), "TCP", 80));
    let questions = dns_questions(&cnp);
    assert!(!questions.iter().any(|q| q == "*"), "{questions:?}");
    assert!(questions.iter().any(|q| q == "*.example.com"));
    assert!(
        plan.report.added.iter().any(|a| a.field == "network.dns"),
        "{:?}",
        plan.report
    );
}

#[test]
fn other_egress_opens_dns_for_any_name_and_the_report_says_so() {
    let case = Case {
        names: vec!["api.example.com"],
        fqdn_ports: None,
        metadata_allowed: false,
        cluster: vec![],
        nodes: vec![],
        denies: vec![],
        dns_ips: vec![],
        dns: DnsMode::Auto,
    };
    let mut spec = spec(&case);
    let egress = spec.network.as_mut().unwrap().egress.as_mut().unwrap();
    egress.allow.push(EgressRule {
        to: Some(vec![EgressPeer {
            cidr: Some("203.0.113.0/24".into()),
            ..Default::default()
        }]),
        ports: None,
    });
    let plan = compile(&policy(spec), &sandbox(), &facts(&case), 0).expect("compiles");
    let dns: Vec<_> = plan
        .report
        .added
        .iter()
        .filter(|e| e.field == "network.dns")
        .map(|e| e.message.as_str())
        .collect();
    assert!(
        dns.iter().any(|m| m.contains("any name")),
        "the NetworkPolicy's port-53 allow lets every question through Cilium: {dns:?}"
    );
    assert!(
        !dns.iter().any(|m| m.contains("allowed names only (")),
        "{dns:?}"
    );
}
