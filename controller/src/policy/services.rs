//! Sets of (protocol, port): what a rule's `ports` list means, with exact union and difference.

use crate::api::policy::{PortRule, Protocol};

use super::net::IntervalSet;

/// Protocols a NetworkPolicy port entry can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L4 {
    Tcp,
    Udp,
    Sctp,
}

impl L4 {
    pub const ALL: [L4; 3] = [L4::Tcp, L4::Udp, L4::Sctp];

    pub fn as_k8s(self) -> &'static str {
        match self {
            L4::Tcp => "TCP",
            L4::Udp => "UDP",
            L4::Sctp => "SCTP",
        }
    }
}

pub const MIN_PORT: u128 = 1;
pub const MAX_PORT: u128 = 65535;

/// A set of protocol/port pairs: port ranges for TCP, UDP and SCTP, plus ICMP and every other
/// IP protocol (which carry no ports).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Services {
    pub tcp: IntervalSet,
    pub udp: IntervalSet,
    pub sctp: IntervalSet,
    pub icmp: bool,
    pub other: bool,
}

impl Services {
    pub fn all() -> Self {
        let ports = IntervalSet::range(MIN_PORT, MAX_PORT);
        Self {
            tcp: ports.clone(),
            udp: ports.clone(),
            sctp: ports,
            icmp: true,
            other: true,
        }
    }

    pub fn none() -> Self {
        Self::default()
    }

    pub fn l4(&self, p: L4) -> &IntervalSet {
        match p {
            L4::Tcp => &self.tcp,
            L4::Udp => &self.udp,
            L4::Sctp => &self.sctp,
        }
    }

    fn l4_mut(&mut self, p: L4) -> &mut IntervalSet {
        match p {
            L4::Tcp => &mut self.tcp,
            L4::Udp => &mut self.udp,
            L4::Sctp => &mut self.sctp,
        }
    }

    /// What a rule's `ports` means: omitted is everything.
    pub fn from_rules(ports: Option<&[PortRule]>) -> Self {
        match ports {
            None => Self::all(),
            Some(rules) => rules
                .iter()
                .map(Self::from_rule)
                .fold(Self::none(), |a, b| a.union(&b)),
        }
    }

    /// One port rule. `any` without a port is every protocol; with a port, TCP, UDP and SCTP.
    pub fn from_rule(rule: &PortRule) -> Self {
        let ports = match rule.port {
            None => IntervalSet::range(MIN_PORT, MAX_PORT),
            Some(p) => {
                let lo = p.clamp(1, 65535) as u128;
                let hi = rule.end_port.map_or(lo, |e| e.clamp(1, 65535) as u128);
                IntervalSet::range(lo, hi)
            }
        };
        let mut s = Self::none();
        match rule.protocol.unwrap_or_default() {
            Protocol::Tcp => s.tcp = ports,
            Protocol::Udp => s.udp = ports,
            Protocol::Icmp => s.icmp = true,
            Protocol::Any if rule.port.is_none() => s = Self::all(),
            Protocol::Any => {
                for p in L4::ALL {
                    *s.l4_mut(p) = ports.clone();
                }
            }
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        self.tcp.is_empty()
            && self.udp.is_empty()
            && self.sctp.is_empty()
            && !self.icmp
            && !self.other
    }

    pub fn is_all(&self) -> bool {
        *self == Self::all()
    }

    /// The part a NetworkPolicy can express: everything, or TCP/UDP/SCTP ports only.
    pub fn expressible(&self) -> Self {
        if self.is_all() {
            return self.clone();
        }
        Self {
            icmp: false,
            other: false,
            ..self.clone()
        }
    }

    pub fn union(&self, o: &Self) -> Self {
        Self {
            tcp: self.tcp.union(&o.tcp),
            udp: self.udp.union(&o.udp),
            sctp: self.sctp.union(&o.sctp),
            icmp: self.icmp || o.icmp,
            other: self.other || o.other,
        }
    }

    pub fn subtract(&self, o: &Self) -> Self {
        Self {
            tcp: self.tcp.subtract(&o.tcp),
            udp: self.udp.subtract(&o.udp),
            sctp: self.sctp.subtract(&o.sctp),
            icmp: self.icmp && !o.icmp,
            other: self.other && !o.other,
        }
    }

    pub fn intersect(&self, o: &Self) -> Self {
        Self {
            tcp: self.tcp.intersect(&o.tcp),
            udp: self.udp.intersect(&o.udp),
            sctp: self.sctp.intersect(&o.sctp),
            icmp: self.icmp && o.icmp,
            other: self.other && o.other,
        }
    }

    pub fn admits(&self, packet: Proto, port: u16) -> bool {
        match packet {
            Proto::L4(p) => self.l4(p).contains(port as u128),
            Proto::Icmp => self.icmp,
            Proto::Other => self.other,
        }
    }
}

/// The protocol of a packet, for evaluating policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    L4(L4),
    Icmp,
    Other,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(protocol: Protocol, port: Option<i32>, end: Option<i32>) -> PortRule {
        PortRule {
            protocol: Some(protocol),
            port,
            end_port: end,
        }
    }

    #[test]
    fn any_with_port_is_tcp_udp_sctp() {
        let s = Services::from_rule(&rule(Protocol::Any, Some(53), None));
        assert!(s.admits(Proto::L4(L4::Udp), 53) && s.admits(Proto::L4(L4::Sctp), 53));
        assert!(!s.icmp && !s.other && !s.admits(Proto::L4(L4::Tcp), 54));
        assert!(Services::from_rule(&rule(Protocol::Any, None, None)).is_all());
        assert!(Services::from_rules(None).is_all());
    }

    #[test]
    fn icmp_deny_leaves_l4_everything() {
        let s = Services::all().subtract(&Services::from_rule(&rule(Protocol::Icmp, None, None)));
        assert!(!s.icmp && s.other && !s.is_all());
        assert_eq!(s.expressible().tcp, IntervalSet::range(1, 65535));
        assert!(!s.expressible().other);
    }

    #[test]
    fn port_ranges_subtract() {
        let s = Services::from_rule(&rule(Protocol::Tcp, Some(1000), Some(2000)))
            .subtract(&Services::from_rule(&rule(Protocol::Tcp, Some(1500), None)));
        assert_eq!(s.tcp.ranges(), &[(1000, 1499), (1501, 2000)]);
    }
}
