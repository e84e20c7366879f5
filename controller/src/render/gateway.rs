//! Domain-name egress through `palisade gateway`: the sandbox's NetworkPolicy lets it reach
//! only the gateway (its pods on their port, its ClusterIP on the Service port) besides its CIDR
//! and selector rules, and its proxy variables carry a credential that names the sandbox.

use k8s_openapi::api::core::v1::EnvVar;
use k8s_openapi::api::networking::v1::{IPBlock, NetworkPolicyEgressRule, NetworkPolicyPeer};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::api::AgentSandbox;
use crate::api::report::EnforcementReport;
use crate::gateway::credential::CredentialKey;
use crate::policy::egress::CompiledEgress;
use crate::policy::net::{AddrSet, Cidr, Family, IntervalSet, exact_cidrs};
use crate::policy::peers::np_ports;
use crate::policy::services::{L4, Proto, Services};

use super::facts::GatewayFacts;
use super::{BlockReason, Blocked};

/// NO_PROXY lists at most this many CIDRs; beyond, direct destinations go through the gateway
/// too (which lets IP literals through by the same CIDR rules).
const NO_PROXY_CIDRS: usize = 32;

/// The proxy variables every HTTP client library reads, in both cases.
pub const PROXY_VARS: [&str; 4] = ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"];
pub const NO_PROXY_VARS: [&str; 2] = ["NO_PROXY", "no_proxy"];

pub struct GatewayEgress {
    pub rules: Vec<NetworkPolicyEgressRule>,
    pub env: Vec<EnvVar>,
}

fn tcp(port: u16) -> Services {
    Services {
        tcp: IntervalSet::range(port as u128, port as u128),
        ..Services::none()
    }
}

fn host_cidr(ip: std::net::IpAddr) -> Cidr {
    match ip {
        std::net::IpAddr::V4(v4) => Cidr::host(Family::V4, u32::from(v4) as u128),
        std::net::IpAddr::V6(v6) => Cidr::host(Family::V6, u128::from(v6)),
    }
}

/// The proxy URL for this sandbox.
pub fn proxy_url(gw: &GatewayFacts, sandbox: &AgentSandbox) -> Result<String, Blocked> {
    let host = gw.address.to_string();
    match (&gw.key, crate::render::children::credential_id(sandbox)) {
        (Some(key), Some(uid)) => {
            let key = CredentialKey::from_bytes(&key.0).map_err(|e| {
                Blocked::new(
                    BlockReason::FqdnBackendMissing,
                    format!("egress gateway: {e}"),
                )
            })?;
            Ok(key.proxy_url(uid, &host))
        }
        // Offline (render): no key and no UID yet.
        _ => Ok(format!("http://SANDBOX-UID:CREDENTIAL@{host}")),
    }
}

/// `everything`: all egress goes through the gateway (host names blocked under allow-all
/// egress), and none of the policy's CIDR rules is reached directly.
pub fn compile_gateway(
    gw: &GatewayFacts,
    sandbox: &AgentSandbox,
    egress: &CompiledEgress,
    cluster_domain: &str,
    everything: bool,
    report: &mut EnforcementReport,
) -> Result<GatewayEgress, Blocked> {
    let service_port = gw.address.port();
    let blocked_by_deny =
        |services: &Services, port: u16| services.admits(Proto::L4(L4::Tcp), port);
    let cluster_ip = host_cidr(gw.address.ip());
    let denied_at_ip = egress
        .deny
        .iter()
        .filter(|(a, _)| a.contains(cluster_ip.family, cluster_ip.base))
        .fold(Services::none(), |acc, (_, s)| acc.union(s));
    if blocked_by_deny(&egress.in_cluster_denied, gw.target_port)
        || blocked_by_deny(&denied_at_ip, service_port)
    {
        return Err(Blocked::new(
            BlockReason::PolicyInvalid,
            format!(
                "deny rules cover the egress gateway ({} and its pods on TCP {}), which egress to domain names goes through; narrow the deny rules",
                gw.address, gw.target_port
            ),
        ));
    }
    let rules = vec![
        NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector {
                    match_labels: Some(gw.namespace_labels.clone()),
                    ..Default::default()
                }),
                pod_selector: Some(LabelSelector {
                    match_labels: Some(gw.pod_labels.clone()),
                    ..Default::default()
                }),
                ip_block: None,
            }]),
            ports: np_ports(&tcp(gw.target_port)),
        },
        NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: cluster_ip.to_string(),
                    except: None,
                }),
                ..Default::default()
            }]),
            ports: np_ports(&tcp(service_port)),
        },
    ];
    let url = proxy_url(gw, sandbox)?;
    let mut no_proxy = vec![
        "localhost".to_string(),
        "127.0.0.1".into(),
        "::1".into(),
        format!(".svc.{cluster_domain}"),
        ".svc".into(),
    ];
    let direct = if everything {
        AddrSet::default()
    } else {
        egress
            .direct
            .iter()
            .fold(AddrSet::default(), |acc, (a, _)| acc.union(a))
    };
    let cidrs: Vec<Cidr> = [Family::V4, Family::V6]
        .into_iter()
        .flat_map(|f| exact_cidrs(f, direct.family(f)))
        .collect();
    if cidrs.len() <= NO_PROXY_CIDRS {
        no_proxy.extend(cidrs.iter().map(ToString::to_string));
    } else if !cidrs.is_empty() {
        report.added(
            "network.egress",
            format!("the CIDR rules make {} ranges, too many for NO_PROXY: HTTP clients send requests for those addresses through the gateway too, which passes them by the same rules", cidrs.len()),
        );
    }
    let mut env = Vec::new();
    for var in PROXY_VARS {
        env.push(EnvVar {
            name: var.into(),
            value: Some(url.clone()),
            ..Default::default()
        });
    }
    for var in NO_PROXY_VARS {
        env.push(EnvVar {
            name: var.into(),
            value: Some(no_proxy.join(",")),
            ..Default::default()
        });
    }
    for v in &sandbox.spec.env {
        if env.iter().any(|p| p.name == v.name) {
            return Err(Blocked::new(
                BlockReason::SandboxInvalid,
                format!(
                    "env {} is set for the egress gateway and cannot be overridden",
                    v.name
                ),
            ));
        }
    }
    if everything {
        report.added(
            "network.egress",
            format!(
                "all egress goes through the egress gateway at {} (HTTP_PROXY/HTTPS_PROXY carry a credential for this sandbox), which cuts the blocked host names out; the NetworkPolicy allows only the gateway's pods on TCP {} and its address on TCP {}",
                gw.address, gw.target_port, service_port
            ),
        );
        report.narrowed(
            "network.egress",
            "allow-all egress with blocked host names is carried by the egress gateway: TLS whose server name is the name asked for, or plain HTTP on port 80, over TCP; to an IP address, TLS naming a host that is not blocked or HTTP/1 whose Host is not blocked; other protocols, TLS without a server name to an address, and direct connections are dropped",
        );
        return Ok(GatewayEgress { rules, env });
    }
    let names: Vec<&str> = egress
        .fqdn
        .iter()
        .flat_map(|f| f.names.iter().map(String::as_str))
        .collect();
    report.added(
        "network.egress",
        format!(
            "domain names ({}) are reached through the egress gateway at {} (HTTP_PROXY/HTTPS_PROXY carry a credential for this sandbox); the NetworkPolicy allows the gateway's pods on TCP {} and its address on TCP {}",
            names.join(", "),
            gw.address,
            gw.target_port,
            service_port
        ),
    );
    if egress
        .fqdn
        .iter()
        .any(|f| !f.services.udp.is_empty() || !f.services.sctp.is_empty())
    {
        report.narrowed(
            "network.egress",
            "through the egress gateway, domain names carry TCP only: UDP and SCTP to names are not carried",
        );
    }
    report.narrowed(
        "network.egress",
        "through the egress gateway, a domain name carries TLS whose server name (SNI) is that name, or plain HTTP on port 80 with a matching Host header; the gateway resolves the name itself and refuses addresses in the metadata, cluster, node, private or denied ranges",
    );
    Ok(GatewayEgress { rules, env })
}
