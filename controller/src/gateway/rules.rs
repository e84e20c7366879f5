//! What one sandbox may reach through the gateway, taken from its compiled egress (the same
//! compiler that writes its NetworkPolicy), and the decisions on a host, a port and the
//! addresses a name resolved to.

use std::net::IpAddr;

use crate::policy::egress::CompiledEgress;
use crate::policy::net::AddrSet;
use crate::policy::services::{L4, Proto, Services};

use super::addr::{forms, in_set, is_private, is_special};
use super::host::{Host, name_matches};

/// Why the gateway refused. The names are stable: they appear in audit lines, metrics and
/// the sandbox's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Denial {
    /// No `fqdn` allow names the host.
    NoMatchingRule,
    /// A rule names the host, but not on this port.
    PortNotAllowed,
    /// The host is one of the policy's blocked names.
    NameDenied,
    /// An IP literal that no CIDR allow covers on this port.
    AddressNotAllowed,
    /// A name resolved to an address that is never dialled (loopback, multicast, ...).
    SpecialAddress,
    /// A name resolved into the floor: metadata, the cluster's or the nodes' ranges.
    FloorAddress,
    /// A name resolved into a deny rule's addresses on this port.
    DeniedAddress,
    /// A name resolved to a private address that no CIDR allow covers.
    PrivateAddress,
    /// The name did not resolve, or to no address.
    ResolveFailed,
    /// The connection to the checked address failed.
    UpstreamFailed,
    /// The tunnel's first bytes are not a TLS ClientHello.
    NotTls,
    /// The ClientHello names no server.
    SniMissing,
    /// The ClientHello names another server than the CONNECT target.
    SniMismatch,
    /// The ClientHello offers Encrypted Client Hello, which hides the real server name.
    EchOffered,
    /// A plain HTTP request whose Host header differs from its target, or not on port 80.
    HostMismatch,
    /// Not an HTTP request the gateway serves.
    BadRequest,
    /// No credential, or one the gateway did not issue.
    Unauthenticated,
    /// A valid credential from another sandbox's address.
    WrongSandbox,
    /// The source address is no running sandbox pod.
    UnknownSource,
    /// The gateway has not listed pods, sandboxes and policies yet.
    NotSynced,
    /// The sandbox's policy is missing or does not compile.
    PolicyUnavailable,
    /// The policy changed and no longer allows an open tunnel.
    PolicyChanged,
    /// A tunnel carried nothing for the idle limit.
    Idle,
    /// The gateway stopped (its drain time was over) while the tunnel was open.
    Shutdown,
    /// The gateway's connection limits (in all, or from this source) were reached.
    Overloaded,
}

impl Denial {
    pub fn as_str(self) -> &'static str {
        match self {
            Denial::NoMatchingRule => "NoMatchingRule",
            Denial::PortNotAllowed => "PortNotAllowed",
            Denial::NameDenied => "NameDenied",
            Denial::AddressNotAllowed => "AddressNotAllowed",
            Denial::SpecialAddress => "SpecialAddress",
            Denial::FloorAddress => "FloorAddress",
            Denial::DeniedAddress => "DeniedAddress",
            Denial::PrivateAddress => "PrivateAddress",
            Denial::ResolveFailed => "ResolveFailed",
            Denial::UpstreamFailed => "UpstreamFailed",
            Denial::NotTls => "NotTls",
            Denial::SniMissing => "SniMissing",
            Denial::SniMismatch => "SniMismatch",
            Denial::EchOffered => "EchOffered",
            Denial::HostMismatch => "HostMismatch",
            Denial::BadRequest => "BadRequest",
            Denial::Unauthenticated => "Unauthenticated",
            Denial::WrongSandbox => "WrongSandbox",
            Denial::UnknownSource => "UnknownSource",
            Denial::NotSynced => "NotSynced",
            Denial::PolicyUnavailable => "PolicyUnavailable",
            Denial::PolicyChanged => "PolicyChanged",
            Denial::Idle => "Idle",
            Denial::Shutdown => "Shutdown",
            Denial::Overloaded => "Overloaded",
        }
    }

    pub const ALL: [Denial; 25] = [
        Denial::NoMatchingRule,
        Denial::PortNotAllowed,
        Denial::NameDenied,
        Denial::AddressNotAllowed,
        Denial::SpecialAddress,
        Denial::FloorAddress,
        Denial::DeniedAddress,
        Denial::PrivateAddress,
        Denial::ResolveFailed,
        Denial::UpstreamFailed,
        Denial::NotTls,
        Denial::SniMissing,
        Denial::SniMismatch,
        Denial::EchOffered,
        Denial::HostMismatch,
        Denial::BadRequest,
        Denial::Unauthenticated,
        Denial::WrongSandbox,
        Denial::UnknownSource,
        Denial::NotSynced,
        Denial::PolicyUnavailable,
        Denial::PolicyChanged,
        Denial::Idle,
        Denial::Shutdown,
        Denial::Overloaded,
    ];
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Domain names and the TCP ports they may be reached on.
#[derive(Clone, Debug, PartialEq)]
pub struct NameRule {
    /// Validated `fqdn` patterns (exact names or `*.` one label).
    pub names: Vec<String>,
    pub services: Services,
}

/// One sandbox's gateway rules.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct GatewayRules {
    pub names: Vec<NameRule>,
    /// Every name may be reached (allow-all egress narrowed to the gateway so that blocked
    /// names can be enforced), on these services.
    pub any_name: Option<Services>,
    /// Names refused whatever else allows them (`blockedHosts`).
    pub denied_names: Vec<String>,
    /// What CIDR rules reach directly (floor and deny rules already removed).
    pub direct: Vec<(AddrSet, Services)>,
    /// Deny rules: addresses and the services denied there.
    pub deny: Vec<(AddrSet, Services)>,
    /// Metadata unless allowed, the cluster's and the nodes' ranges.
    pub floor: AddrSet,
}

impl GatewayRules {
    pub fn from_egress(egress: &CompiledEgress) -> Self {
        GatewayRules {
            names: egress
                .fqdn
                .iter()
                .map(|f| NameRule {
                    names: f.names.clone(),
                    services: f.services.clone(),
                })
                .collect(),
            any_name: None,
            denied_names: Vec::new(),
            direct: egress.direct.clone(),
            deny: egress.deny.clone(),
            floor: egress.floor.clone(),
        }
    }

    /// The rules of a policy's network part: its compiled egress, and, for host names blocked
    /// under allow-all egress, every other name. The operator's compiler and the gateway both
    /// call this.
    pub fn for_network(
        network: &crate::policy::legacy::Network,
        ranges: crate::policy::egress::ClusterRanges<'_>,
    ) -> Result<Self, String> {
        let egress = crate::policy::egress::compile_egress(
            &network.egress,
            ranges,
            &mut crate::api::report::EnforcementReport::default(),
        )
        .map_err(|e| e.to_string())?;
        let mut rules = GatewayRules::from_egress(&egress);
        if !network.blocked_names.is_empty() {
            rules.any_name = Some(Services::all());
            rules.denied_names = network.blocked_names.clone();
        }
        Ok(rules)
    }

    /// Rules that refuse everything (an unknown or broken policy).
    pub fn deny_all() -> Self {
        GatewayRules::default()
    }

    /// Whether the host may be asked for on this TCP port, before resolving.
    pub fn check_host(&self, host: &Host, port: u16) -> Result<(), Denial> {
        match host {
            Host::Ip(ip) => self.check_literal(*ip, port),
            Host::Name(name) => self.check_name(name, port),
        }
    }

    /// Whether `name` (normalised) is a blocked name or under one: a blocked name blocks the
    /// names under it too (stricter than the name alone).
    pub fn name_denied(&self, name: &str) -> bool {
        self.denied_names.iter().any(|d| {
            let base = d.strip_prefix("*.").unwrap_or(d);
            name == base
                || name
                    .strip_suffix(base)
                    .is_some_and(|head| head.ends_with('.'))
        })
    }

    fn check_name(&self, name: &str, port: u16) -> Result<(), Denial> {
        if self.name_denied(name) {
            return Err(Denial::NameDenied);
        }
        let mut named = false;
        let matching = self
            .names
            .iter()
            .filter(|r| r.names.iter().any(|p| name_matches(p, name)))
            .map(|r| &r.services)
            .chain(self.any_name.iter());
        for services in matching {
            named = true;
            if services.admits(Proto::L4(L4::Tcp), port) {
                return Ok(());
            }
        }
        Err(if named {
            Denial::PortNotAllowed
        } else {
            Denial::NoMatchingRule
        })
    }

    fn direct_admits(&self, ip: IpAddr, port: u16) -> bool {
        forms(ip).iter().all(|&form| {
            self.direct
                .iter()
                .any(|(set, s)| in_set(set, form) && s.admits(Proto::L4(L4::Tcp), port))
        })
    }

    /// An IP literal: only where a CIDR rule reaches it on this port.
    fn check_literal(&self, ip: IpAddr, port: u16) -> Result<(), Denial> {
        self.check_never(ip, port)?;
        if self.direct_admits(ip, port) {
            Ok(())
        } else {
            Err(Denial::AddressNotAllowed)
        }
    }

    /// An address a name resolved to: never special, in the floor or in a deny rule on this
    /// port; private only where a CIDR rule reaches it. Every form of the address (the IPv4
    /// inside an IPv6 one) is judged.
    pub fn check_address(&self, ip: IpAddr, port: u16) -> Result<(), Denial> {
        self.check_never(ip, port)?;
        if forms(ip).into_iter().any(is_private) && !self.direct_admits(ip, port) {
            return Err(Denial::PrivateAddress);
        }
        Ok(())
    }

    /// Addresses no rule reaches: special ones, the floor, deny rules on this port.
    fn check_never(&self, ip: IpAddr, port: u16) -> Result<(), Denial> {
        for form in forms(ip) {
            if is_special(form) {
                return Err(Denial::SpecialAddress);
            }
            if in_set(&self.floor, form) {
                return Err(Denial::FloorAddress);
            }
            if self
                .deny
                .iter()
                .any(|(set, s)| in_set(set, form) && s.admits(Proto::L4(L4::Tcp), port))
            {
                return Err(Denial::DeniedAddress);
            }
        }
        Ok(())
    }

    /// Every address a name resolved to must pass: one bad answer refuses the request, so
    /// that a resolver cannot mix a trusted answer with a rebinding one.
    pub fn check_addresses(&self, ips: &[IpAddr], port: u16) -> Result<(), Denial> {
        if ips.is_empty() {
            return Err(Denial::ResolveFailed);
        }
        ips.iter().try_for_each(|&ip| self.check_address(ip, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::policy::EgressPolicy;
    use crate::api::report::EnforcementReport;
    use crate::policy::egress::{ClusterRanges, compile_egress};
    use crate::policy::net::Cidr;

    fn rules(yaml: &str, cluster: &[&str]) -> GatewayRules {
        let egress: EgressPolicy = serde_yaml::from_str(yaml).unwrap();
        let cidrs: Vec<Cidr> = cluster.iter().map(|c| Cidr::parse(c).unwrap()).collect();
        let compiled = compile_egress(
            &egress,
            ClusterRanges {
                pods_and_services: &cidrs,
                nodes: &[],
            },
            &mut EnforcementReport::default(),
        )
        .unwrap();
        GatewayRules::from_egress(&compiled)
    }

    fn name(s: &str) -> Host {
        Host::Name(s.into())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const NAMES: &str = r#"
allow:
  - to: [{fqdn: api.example.com}, {fqdn: "*.pkg.example.com"}]
    ports: [{port: 443}]
  - to: [{fqdn: plain.example.com}]
    ports: [{port: 80}]
  - to: [{cidr: 10.20.0.0/16}]
    ports: [{port: 443}]
deny:
  - to: [{cidr: 203.0.113.0/24}]
"#;

    #[test]
    fn names_need_a_rule_and_its_port() {
        let r = rules(NAMES, &["10.96.0.0/12"]);
        assert_eq!(r.check_host(&name("api.example.com"), 443), Ok(()));
        assert_eq!(r.check_host(&name("a.pkg.example.com"), 443), Ok(()));
        assert_eq!(
            r.check_host(&name("api.example.com"), 80),
            Err(Denial::PortNotAllowed)
        );
        for other in [
            "pkg.example.com",
            "a.b.pkg.example.com",
            "evilapi.example.com",
        ] {
            assert_eq!(
                r.check_host(&name(other), 443),
                Err(Denial::NoMatchingRule),
                "{other}"
            );
        }
    }

    #[test]
    fn literals_need_a_cidr_rule() {
        let r = rules(NAMES, &["10.96.0.0/12"]);
        assert_eq!(r.check_host(&Host::Ip(ip("10.20.1.1")), 443), Ok(()));
        assert_eq!(
            r.check_host(&Host::Ip(ip("10.20.1.1")), 80),
            Err(Denial::AddressNotAllowed)
        );
        assert_eq!(
            r.check_host(&Host::Ip(ip("192.0.2.1")), 443),
            Err(Denial::AddressNotAllowed)
        );
        assert_eq!(
            r.check_host(&Host::Ip(ip("::ffff:10.20.1.1")), 443),
            Err(Denial::AddressNotAllowed),
            "a CIDR rule over IPv4 does not cover the mapped IPv6 form"
        );
    }

    #[test]
    fn resolved_addresses_respect_the_floor_denies_and_private_ranges() {
        let r = rules(NAMES, &["10.96.0.0/12"]);
        assert_eq!(r.check_addresses(&[ip("192.0.2.10")], 443), Ok(()));
        for (addr, why) in [
            ("169.254.169.254", Denial::FloorAddress),
            ("::ffff:169.254.169.254", Denial::FloorAddress),
            ("64:ff9b::a9fe:a9fe", Denial::FloorAddress),
            ("fd00:ec2::254", Denial::FloorAddress),
            ("10.96.0.1", Denial::FloorAddress),
            ("127.0.0.1", Denial::SpecialAddress),
            ("::ffff:127.0.0.1", Denial::SpecialAddress),
            ("0.0.0.0", Denial::SpecialAddress),
            ("203.0.113.5", Denial::DeniedAddress),
            ("::ffff:203.0.113.5", Denial::DeniedAddress),
            ("192.168.1.1", Denial::PrivateAddress),
            ("10.1.2.3", Denial::PrivateAddress),
        ] {
            assert_eq!(r.check_addresses(&[ip(addr)], 443), Err(why), "{addr}");
            assert_eq!(
                r.check_addresses(&[ip("192.0.2.10"), ip(addr)], 443),
                Err(why),
                "one bad answer among good ones: {addr}"
            );
        }
        // A private address a CIDR rule reaches on that port.
        assert_eq!(r.check_addresses(&[ip("10.20.3.4")], 443), Ok(()));
        assert_eq!(
            r.check_addresses(&[ip("10.20.3.4")], 8443),
            Err(Denial::PrivateAddress)
        );
        assert_eq!(r.check_addresses(&[], 443), Err(Denial::ResolveFailed));
    }

    #[test]
    fn allow_metadata_access_never_lets_a_name_reach_the_gateways_own_metadata() {
        // The sandbox may reach its node's metadata directly; a name resolving there would
        // reach the gateway's node instead: only a CIDR allow covering the address admits it.
        let with_access = format!("allowMetadataAccess: true\n{NAMES}");
        let r = rules(&with_access, &["10.96.0.0/12"]);
        for addr in [
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "169.254.170.23",
            "fe80::1",
            "fd00:ec2::254",
            "100.100.100.200",
            "168.63.129.16",
        ] {
            assert_eq!(
                r.check_addresses(&[ip(addr)], 443),
                Err(Denial::PrivateAddress),
                "{addr}"
            );
        }
        let covered = format!(
            "allowMetadataAccess: true\n{}",
            NAMES.replace("{cidr: 10.20.0.0/16}", "{cidr: 169.254.169.254/32}")
        );
        let r = rules(&covered, &["10.96.0.0/12"]);
        assert_eq!(r.check_addresses(&[ip("169.254.169.254")], 443), Ok(()));
        assert_eq!(
            r.check_addresses(&[ip("169.254.170.23")], 443),
            Err(Denial::PrivateAddress)
        );
    }

    #[test]
    fn names_and_any_name_respect_denied_names() {
        let mut r = rules("{}", &[]);
        r.any_name = Some(Services::all());
        r.denied_names = vec!["evil.example.com".into(), "*.bad.example.com".into()];
        assert_eq!(r.check_host(&name("ok.example.com"), 443), Ok(()));
        assert_eq!(
            r.check_host(&name("a.evil.example.com"), 443),
            Err(Denial::NameDenied)
        );
        assert_eq!(
            r.check_host(&name("a.b.bad.example.com"), 443),
            Err(Denial::NameDenied)
        );
        assert_eq!(r.check_host(&name("notevil.example.com"), 443), Ok(()));
        assert_eq!(
            r.check_host(&name("evil.example.com"), 443),
            Err(Denial::NameDenied)
        );
        assert_eq!(
            r.check_host(&name("x.bad.example.com"), 443),
            Err(Denial::NameDenied)
        );
    }

    #[test]
    fn nothing_passes_deny_all() {
        let r = GatewayRules::deny_all();
        assert_eq!(
            r.check_host(&name("api.example.com"), 443),
            Err(Denial::NoMatchingRule)
        );
        assert_eq!(
            r.check_host(&Host::Ip(ip("192.0.2.1")), 443),
            Err(Denial::AddressNotAllowed)
        );
    }
}
