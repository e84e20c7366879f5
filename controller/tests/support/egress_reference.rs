//! A reference evaluator of egress policies, independent of the crate's set arithmetic: the
//! addresses, CIDRs and packets of the property tests (`egress_properties.rs`) and the policy as
//! written (MXC semantics). The e2e isolation suite (`e2e/tests/isolation.rs`) includes this
//! file too and compares what a sandbox on the real node could reach with it.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use palisade::api::policy::{
    DefaultAction, EgressPeer, EgressPolicy, EgressRule, PortRule, Protocol,
};

// ---------------------------------------------------------------------------------------------
// Addresses and CIDRs, independent of the crate.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fam {
    V4,
    V6,
}

impl Fam {
    pub fn bits(self) -> u32 {
        match self {
            Fam::V4 => 32,
            Fam::V6 => 128,
        }
    }
}

/// All ones in the lowest `bits` bits.
pub fn low_mask(bits: u32) -> u128 {
    if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addr {
    pub fam: Fam,
    pub val: u128,
}

impl Addr {
    pub fn v4(s: &str) -> Self {
        Self {
            fam: Fam::V4,
            val: u32::from(s.parse::<Ipv4Addr>().unwrap()) as u128,
        }
    }

    pub fn v6(s: &str) -> Self {
        Self {
            fam: Fam::V6,
            val: u128::from(s.parse::<Ipv6Addr>().unwrap()),
        }
    }

    pub fn parse(s: &str) -> Self {
        match s.parse::<IpAddr>().unwrap() {
            IpAddr::V4(a) => Self {
                fam: Fam::V4,
                val: u32::from(a) as u128,
            },
            IpAddr::V6(a) => Self {
                fam: Fam::V6,
                val: u128::from(a),
            },
        }
    }

    /// This address moved by `delta`, wrapping around inside its family.
    pub fn offset(self, delta: i64) -> Self {
        let val = self.val.wrapping_add(delta as i128 as u128) & low_mask(self.fam.bits());
        Self { val, ..self }
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.fam {
            Fam::V4 => write!(f, "{}", Ipv4Addr::from(self.val as u32)),
            Fam::V6 => write!(f, "{}", Ipv6Addr::from(self.val)),
        }
    }
}

/// A CIDR with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    pub fam: Fam,
    pub base: u128,
    pub prefix: u32,
}

impl Net {
    /// The CIDR of `prefix` bits containing `addr`.
    pub fn around(addr: Addr, prefix: u32) -> Self {
        let prefix = prefix.min(addr.fam.bits());
        Self {
            fam: addr.fam,
            base: addr.val & !low_mask(addr.fam.bits() - prefix),
            prefix,
        }
    }

    pub fn host_mask(&self) -> u128 {
        low_mask(self.fam.bits() - self.prefix)
    }

    pub fn last(&self) -> u128 {
        self.base | self.host_mask()
    }

    pub fn contains(&self, a: Addr) -> bool {
        a.fam == self.fam && a.val & !self.host_mask() == self.base
    }

    /// `other` lies inside this CIDR and is smaller (what the API server wants of an `except`).
    pub fn strictly_contains(&self, other: &Net) -> bool {
        other.fam == self.fam
            && other.prefix > self.prefix
            && self.contains(Addr {
                fam: other.fam,
                val: other.base,
            })
    }

    /// Formatted the way `Ipv4Addr`/`Ipv6Addr` display, which is what `Cidr::parse` expects.
    pub fn text(&self) -> String {
        format!(
            "{}/{}",
            Addr {
                fam: self.fam,
                val: self.base
            },
            self.prefix
        )
    }

    /// Strict parse: an address, `/`, a decimal prefix length in range, no host bits set.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}`: no prefix length"))?;
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) || len.len() > 3 {
            return Err(format!("`{s}`: bad prefix length"));
        }
        let prefix: u32 = len.parse().map_err(|_| format!("`{s}`: bad prefix"))?;
        let a = match addr.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => Addr {
                fam: Fam::V4,
                val: u32::from(a) as u128,
            },
            Ok(IpAddr::V6(a)) => Addr {
                fam: Fam::V6,
                val: u128::from(a),
            },
            Err(_) => return Err(format!("`{s}`: bad address")),
        };
        if prefix > a.fam.bits() {
            return Err(format!("`{s}`: prefix length too long"));
        }
        let net = Net::around(a, prefix);
        if net.base != a.val {
            return Err(format!("`{s}`: host bits set"));
        }
        Ok(net)
    }
}

/// Link-local and cloud metadata ranges, written out here independently of the crate.
pub static METADATA: LazyLock<Vec<Net>> = LazyLock::new(|| {
    [
        "169.254.0.0/16",
        "100.100.100.200/32",
        "168.63.129.16/32",
        "fe80::/10",
        "fd00:ec2::254/128",
        "fd00:ec2::23/128",
        "fd00:c1::a9fe:a9fe/128",
        "fd20:ce::254/128",
    ]
    .iter()
    .map(|s| Net::parse(s).unwrap())
    .collect()
});

// ---------------------------------------------------------------------------------------------
// Packets.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
    Icmp,
    /// Any other IP protocol (GRE, ESP, ...): no ports.
    Other,
}

impl Proto {
    pub fn is_l4(self) -> bool {
        matches!(self, Proto::Tcp | Proto::Udp | Proto::Sctp)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub dst: Addr,
    pub proto: Proto,
    /// Destination port; meaningless for ICMP and other protocols.
    pub port: u16,
}

impl std::fmt::Display for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.proto.is_l4() {
            write!(f, "{:?} {} port {}", self.proto, self.dst, self.port)
        } else {
            write!(f, "{:?} {}", self.proto, self.dst)
        }
    }
}

pub fn pkt(dst: &str, proto: Proto, port: u16) -> Packet {
    Packet {
        dst: Addr::parse(dst),
        proto,
        port,
    }
}

// ---------------------------------------------------------------------------------------------
// Reference evaluator 1: the policy as written (MXC semantics).
// ---------------------------------------------------------------------------------------------

pub fn port_rule_matches(r: &PortRule, p: &Packet) -> bool {
    let in_range = |start: i32| {
        let end = r.end_port.unwrap_or(start);
        start <= p.port as i32 && p.port as i32 <= end
    };
    match (r.protocol.unwrap_or(Protocol::Any), r.port) {
        (Protocol::Any, None) => true,
        (Protocol::Any, Some(start)) => p.proto.is_l4() && in_range(start),
        (Protocol::Tcp, port) => p.proto == Proto::Tcp && port.is_none_or(in_range),
        (Protocol::Udp, port) => p.proto == Proto::Udp && port.is_none_or(in_range),
        (Protocol::Icmp, _) => p.proto == Proto::Icmp,
    }
}

pub fn peer_matches(peer: &EgressPeer, p: &Packet) -> bool {
    // Only CIDR peers are generated; FQDN and selector peers never name an address here.
    let Some(cidr) = &peer.cidr else {
        return false;
    };
    Net::parse(cidr).unwrap().contains(p.dst)
        && !peer
            .except
            .iter()
            .flatten()
            .any(|e| Net::parse(e).unwrap().contains(p.dst))
}

pub fn rule_matches(r: &EgressRule, p: &Packet) -> bool {
    let to =
        r.to.as_ref()
            .is_none_or(|peers| peers.iter().any(|peer| peer_matches(peer, p)));
    let ports = r
        .ports
        .as_ref()
        .is_none_or(|ports| ports.iter().any(|pr| port_rule_matches(pr, p)));
    to && ports
}

pub fn policy_allows(e: &EgressPolicy, p: &Packet) -> bool {
    let allowed =
        e.default == Some(DefaultAction::Allow) || e.allow.iter().any(|r| rule_matches(r, p));
    allowed && !e.deny.iter().any(|r| rule_matches(r, p))
}

/// Destinations the compiler must never open, whatever the policy says.
pub fn removed(e: &EgressPolicy, cluster: &[Net], a: Addr) -> bool {
    let metadata =
        !e.allow_metadata_access.unwrap_or(false) && METADATA.iter().any(|n| n.contains(a));
    metadata || cluster.iter().any(|n| n.contains(a))
}
