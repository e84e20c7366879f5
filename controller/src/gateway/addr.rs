//! Addresses the gateway never dials whatever a policy says, and the IPv4 addresses hidden in
//! IPv6 ones (mapped, compatible, NAT64, 6to4), which are judged as the IPv4 address too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use crate::policy::egress::{ASSUMED_CLUSTER_CIDRS, METADATA_CIDRS};
use crate::policy::net::{AddrSet, Cidr, Family};

/// Addresses that are never a remote service: unspecified, loopback, multicast, broadcast and
/// reserved ranges, and the IPv6 discard prefix.
const SPECIAL_CIDRS: &[&str] = &[
    "0.0.0.0/8",
    "192.0.0.0/24",
    "192.88.99.0/24",
    "127.0.0.0/8",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "ff00::/8",
    "100::/64",
];

/// Private and shared ranges: dialled for a name only where a CIDR allow covers them.
/// IPv6 prefixes that translate to IPv4 in ways the gateway cannot see through (local-use
/// NAT64, Teredo) are treated as private too.
const PRIVATE_EXTRA_CIDRS: &[&str] = &["64:ff9b:1::/48", "2001::/32", "198.18.0.0/15", "fec0::/10"];

fn set_of(list: &[&str]) -> AddrSet {
    list.iter()
        .filter_map(|c| Cidr::parse(c).ok())
        .fold(AddrSet::default(), |a, c| a.union(&AddrSet::from_cidr(&c)))
}

static SPECIAL: LazyLock<AddrSet> = LazyLock::new(|| set_of(SPECIAL_CIDRS));
/// Link-local and metadata addresses join them: `allowMetadataAccess` lets a sandbox reach its
/// own node's metadata service directly, but a name resolving there would reach the gateway's
/// node (its identity), so only a CIDR allow that covers the address lets a name go there.
static PRIVATE: LazyLock<AddrSet> = LazyLock::new(|| {
    set_of(ASSUMED_CLUSTER_CIDRS)
        .union(&set_of(PRIVATE_EXTRA_CIDRS))
        .union(&set_of(METADATA_CIDRS))
});

/// An address as the policy's address sets index it.
pub fn key(ip: IpAddr) -> (Family, u128) {
    match ip {
        IpAddr::V4(v4) => (Family::V4, u32::from(v4) as u128),
        IpAddr::V6(v6) => (Family::V6, u128::from(v6)),
    }
}

pub fn in_set(set: &AddrSet, ip: IpAddr) -> bool {
    let (f, a) = key(ip);
    set.contains(f, a)
}

/// Never dialled.
pub fn is_special(ip: IpAddr) -> bool {
    in_set(&SPECIAL, ip)
}

/// Private or shared address space.
pub fn is_private(ip: IpAddr) -> bool {
    in_set(&PRIVATE, ip)
}

/// The IPv4 address carried inside an IPv6 one, where a translator or the host's stack would
/// deliver to it: IPv4-mapped (`::ffff:a.b.c.d`), IPv4-translated (`::ffff:0:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`), the NAT64 well-known prefix (`64:ff9b::/96`) and 6to4
/// (`2002:AABB:CCDD::/48`).
pub fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..5] == [0; 5] && (s[5] == 0xffff || (s[5] == 0 && u32::from(tail) > 1)) {
        return Some(tail);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || s[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return Some(tail);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

/// The address and, for IPv6 carrying an IPv4 address, that address too: each is judged.
pub fn forms(ip: IpAddr) -> Vec<IpAddr> {
    match ip {
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => vec![ip, IpAddr::V4(v4)],
            None => vec![ip],
        },
        IpAddr::V4(_) => vec![ip],
    }
}

/// The address to dial: IPv4-mapped addresses are dialled as IPv4.
pub fn dial_form(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        IpAddr::V4(_) => ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_inside_ipv6_is_found() {
        for (v6, v4) in [
            ("::ffff:169.254.169.254", "169.254.169.254"),
            ("::169.254.169.254", "169.254.169.254"),
            ("64:ff9b::a9fe:a9fe", "169.254.169.254"),
            ("2002:a9fe:a9fe::1", "169.254.169.254"),
            ("::ffff:127.0.0.1", "127.0.0.1"),
            ("::ffff:0:a9fe:a9fe", "169.254.169.254"),
        ] {
            let IpAddr::V6(a) = ip(v6) else { panic!() };
            assert_eq!(embedded_v4(a), Some(v4.parse().unwrap()), "{v6}");
            assert!(forms(ip(v6)).contains(&ip(v4)));
        }
        for plain in ["2001:db8::1", "::1", "::", "fe80::1"] {
            let IpAddr::V6(a) = ip(plain) else { panic!() };
            assert_eq!(embedded_v4(a), None, "{plain}");
        }
        assert_eq!(dial_form(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(dial_form(ip("2001:db8::1")), ip("2001:db8::1"));
    }

    #[test]
    fn special_and_private_ranges() {
        for s in [
            "127.0.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "224.0.0.1",
            "255.255.255.255",
            "ff02::1",
        ] {
            assert!(is_special(ip(s)), "{s}");
        }
        for s in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "fd00::1",
            "64:ff9b:1::1",
        ] {
            assert!(is_private(ip(s)), "{s}");
        }
        for s in ["192.0.2.1", "2001:db8::1", "203.0.113.9"] {
            assert!(!is_special(ip(s)) && !is_private(ip(s)), "{s}");
        }
    }
}
