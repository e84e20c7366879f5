//! The network part of a policy in one shape: legacy MXC fields translated to the directional
//! form, the proxy resolved, DNS mode settled.

use crate::api::policy::{
    AgentPolicySpec, DefaultAction, DnsMode, EgressPeer, EgressPolicy, EgressRule, IngressPeer,
    IngressPolicy, IngressRule,
};
use crate::api::report::EnforcementReport;

use super::hosts::{self, ProxyAddr};
use super::net::Cidr;
use super::{Invalid, PolicyError};

/// Private ranges that legacy `allowLocalNetwork` admits as ingress sources.
pub const PRIVATE_CIDRS: &[&str] = &["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"];

/// How egress is routed through a proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Proxy {
    /// A proxy at this address: direct egress only to it (none at all when it is loopback).
    At(ProxyAddr),
    /// MXC's built-in test proxy, which does not exist on Kubernetes.
    Unavailable,
}

/// The network part of a policy, directional.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Network {
    pub egress: EgressPolicy,
    pub ingress: Option<IngressPolicy>,
    pub dns: DnsMode,
    pub proxy: Option<Proxy>,
    /// Host names blocked under allow-all egress (MXC `blockedHosts`): a NetworkPolicy cannot cut
    /// a name out, so only the egress gateway enforces them (all egress then goes through it).
    pub blocked_names: Vec<String>,
}

/// A legacy host entry as a peer: IP addresses and CIDRs become `cidr`, names `fqdn`.
pub fn host_peer(h: &str) -> EgressPeer {
    let cidr = match h.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => Some(format!("{ip}/32")),
        Ok(std::net::IpAddr::V6(ip)) => Some(format!("{ip}/128")),
        Err(_) if Cidr::parse(h).is_ok() => Some(h.to_string()),
        Err(_) => None,
    };
    match cidr {
        Some(c) => EgressPeer {
            cidr: Some(c),
            ..Default::default()
        },
        None => EgressPeer {
            fqdn: Some(h.to_string()),
            ..Default::default()
        },
    }
}

/// A host name as DNS compares it: case ignored, and a final dot (the root) dropped, so that
/// `Evil.Example.COM.` is `evil.example.com`.
pub fn dns_name(h: &str) -> String {
    h.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether a blocked host name may be reached through the allowed hosts: a name allow that
/// matches it either way round (wildcards included, case and a final dot ignored), or any
/// address allow (a name can resolve to any address).
pub fn blocked_name_reachable(blocked: &str, allowed: &[String]) -> bool {
    let b = dns_name(blocked);
    allowed.iter().any(|a| {
        let a = dns_name(a);
        match host_peer(&a).fqdn {
            Some(_) => {
                wildcard_matches(&a, &b)
                    || wildcard_matches(&b, &a)
                    || (a.starts_with("*.")
                        && b.starts_with("*.")
                        && (wildcard_matches(&a, &b[2..]) || wildcard_matches(&b, &a[2..])))
            }
            None => true,
        }
    })
}

/// Whether `name` is `pattern` or lies under a `*.` wildcard pattern.
pub fn wildcard_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name.ends_with(&format!(".{suffix}")),
        None => pattern == name,
    }
}

/// Translates the policy's network fields. Assumes [`super::validate::validate_policy`] passed.
pub fn normalize(
    spec: &AgentPolicySpec,
    report: &mut EnforcementReport,
) -> Result<Network, Invalid> {
    let mut out = Network::default();
    let Some(net) = &spec.network else {
        return Ok(out);
    };
    out.dns = net.dns.unwrap_or_default();
    if let Some(eg) = &net.egress {
        out.egress = eg.clone();
    }
    out.ingress = net.ingress.clone();

    let allow_outbound = net.allow_outbound.unwrap_or(false);
    let allowed: Vec<String> = net.allowed_hosts.clone().unwrap_or_default();
    let blocked: Vec<String> = net.blocked_hosts.clone().unwrap_or_default();
    let mut errors = Vec::new();
    if allow_outbound && allowed.is_empty() {
        out.egress.default = Some(DefaultAction::Allow);
    } else if allow_outbound {
        report.narrowed("network.allowOutbound", "with allowedHosts set, only the listed hosts are reachable (MXC: \"only these hosts\")");
    }
    for h in &allowed {
        out.egress.allow.push(EgressRule {
            to: Some(vec![host_peer(h)]),
            ports: None,
        });
    }
    let allows_everything = out.egress.default == Some(DefaultAction::Allow);
    for (i, h) in blocked.iter().enumerate() {
        let peer = host_peer(h);
        match &peer.fqdn {
            None => out.egress.deny.push(EgressRule { to: Some(vec![peer]), ports: None }),
            Some(name) if allows_everything => {
                out.blocked_names.push(dns_name(name));
                report.narrowed(
                    format!("network.blockedHosts[{i}]"),
                    format!("`{name}` (and the names under it) is cut out of allow-all egress by the egress gateway: all egress goes through the gateway, which allows every other name over TLS or plain HTTP, and direct egress is dropped; without the gateway the sandbox is blocked"),
                );
            }
            Some(name) if blocked_name_reachable(name, &allowed) => errors.push(PolicyError::new(
                format!("network.blockedHosts[{i}]"),
                format!("host name `{name}` may be reached through allowedHosts (a matching name, or an address range it may resolve into); a name cannot be cut out of those"),
            )),
            Some(name) => report.not_applicable(
                format!("network.blockedHosts[{i}]"),
                format!("`{name}` is already unreachable: egress is denied by default and no allowed host matches it"),
            ),
        }
    }
    if net.allow_local_network == Some(true) {
        let from = PRIVATE_CIDRS
            .iter()
            .map(|c| IngressPeer {
                cidr: Some(c.to_string()),
                ..Default::default()
            })
            .collect();
        out.ingress = Some(IngressPolicy {
            allow: vec![IngressRule {
                from: Some(from),
                ports: None,
            }],
            ..Default::default()
        });
    }

    let runtime_proxy = spec
        .runtime_config
        .as_ref()
        .and_then(|r| r.network_proxy.as_ref());
    let legacy_proxy = net.proxy.as_ref();
    let proxy_field = if runtime_proxy.is_some() {
        "runtimeConfig.networkProxy"
    } else {
        "network.proxy"
    };
    out.proxy = match (runtime_proxy, legacy_proxy) {
        (Some(url), _) => {
            Some(Proxy::At(hosts::parse_proxy(url).map_err(|m| {
                Invalid(vec![PolicyError::new(proxy_field, m)])
            })?))
        }
        (None, Some(p)) if p.builtin_test_server.is_some() => Some(Proxy::Unavailable),
        (None, Some(p)) => {
            let url = match (p.localhost, &p.url) {
                (Some(port), _) => format!("http://127.0.0.1:{port}"),
                (None, Some(url)) => url.clone(),
                (None, None) => {
                    return Err(Invalid(vec![PolicyError::new(
                        "network.proxy",
                        "set exactly one of localhost, builtinTestServer or url",
                    )]));
                }
            };
            Some(Proxy::At(hosts::parse_proxy(&url).map_err(|m| {
                Invalid(vec![PolicyError::new("network.proxy", m)])
            })?))
        }
        (None, None) => None,
    };
    if matches!(out.proxy, Some(Proxy::At(_)))
        && (out.egress.default == Some(DefaultAction::Allow)
            || !out.egress.allow.is_empty()
            || !out.egress.deny.is_empty())
    {
        errors.push(PolicyError::new(
            proxy_field,
            "a proxy and direct egress rules are different connectivity models: with a proxy, egress must be default deny with no allow or deny rules",
        ));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(Invalid(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::policy::{LegacyProxy, NetworkRules};

    fn spec(net: NetworkRules) -> AgentPolicySpec {
        AgentPolicySpec {
            network: Some(net),
            ..Default::default()
        }
    }

    #[test]
    fn allowed_hosts_are_an_allowlist() {
        let mut r = EnforcementReport::default();
        let n = normalize(
            &spec(NetworkRules {
                allow_outbound: Some(true),
                allowed_hosts: Some(vec![
                    "api.github.com".into(),
                    "140.82.121.0/24".into(),
                    "192.0.2.1".into(),
                ]),
                ..Default::default()
            }),
            &mut r,
        )
        .unwrap();
        assert_eq!(n.egress.default, None);
        assert_eq!(n.egress.allow.len(), 3);
        assert_eq!(
            n.egress.allow[2].to.as_ref().unwrap()[0].cidr.as_deref(),
            Some("192.0.2.1/32")
        );
        assert_eq!(
            n.egress.allow[0].to.as_ref().unwrap()[0].fqdn.as_deref(),
            Some("api.github.com")
        );
        assert_eq!(r.narrowed.len(), 1);
    }

    #[test]
    fn a_final_dot_or_capitals_do_not_make_a_blocked_name_another() {
        // Found by the mxc_import fuzz target: `evil.example.com.` is the same DNS name.
        let allowed = vec!["*.example.com".to_string()];
        assert!(blocked_name_reachable("evil.example.com.", &allowed));
        assert!(blocked_name_reachable("EVIL.Example.COM", &allowed));
        assert!(blocked_name_reachable(
            "evil.example.com",
            &["evil.example.com.".to_string()]
        ));
        assert!(!blocked_name_reachable("evil.example.org.", &allowed));
    }

    #[test]
    fn blocked_host_names_under_allow_all_are_left_to_the_gateway() {
        let mut r = EnforcementReport::default();
        let net = NetworkRules {
            allow_outbound: Some(true),
            blocked_hosts: Some(vec!["Evil.Example.com.".into()]),
            ..Default::default()
        };
        let n = normalize(&spec(net), &mut r).unwrap();
        assert_eq!(n.blocked_names, vec!["evil.example.com".to_string()]);
        assert_eq!(n.egress.default, Some(DefaultAction::Allow));
        assert!(
            r.narrowed
                .iter()
                .any(|e| e.field == "network.blockedHosts[0]"
                    && e.message.contains("egress gateway")),
            "{r:?}"
        );
        let net = NetworkRules {
            allow_outbound: Some(true),
            blocked_hosts: Some(vec!["203.0.113.0/24".into()]),
            ..Default::default()
        };
        let n = normalize(&spec(net), &mut r).unwrap();
        assert_eq!(n.egress.deny.len(), 1);
    }

    #[test]
    fn local_network_is_ingress_only() {
        let mut r = EnforcementReport::default();
        let n = normalize(
            &spec(NetworkRules {
                allow_local_network: Some(true),
                ..Default::default()
            }),
            &mut r,
        )
        .unwrap();
        assert!(n.egress.allow.is_empty() && n.egress.default.is_none());
        assert_eq!(
            n.ingress.unwrap().allow[0].from.as_ref().unwrap().len(),
            PRIVATE_CIDRS.len()
        );
    }

    #[test]
    fn legacy_proxy_forms() {
        let mut r = EnforcementReport::default();
        let n = normalize(
            &spec(NetworkRules {
                proxy: Some(LegacyProxy {
                    localhost: Some(8080),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            &mut r,
        )
        .unwrap();
        assert!(matches!(n.proxy, Some(Proxy::At(ref p)) if p.is_loopback() && p.port == 8080));
        let bad = NetworkRules {
            allow_outbound: Some(true),
            proxy: Some(LegacyProxy {
                url: Some("http://192.0.2.10:3128".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(normalize(&spec(bad), &mut r).is_err());
    }
}
