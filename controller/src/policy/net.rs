//! Exact set arithmetic over IP addresses and ports: interval sets, CIDR parsing, and the
//! conversion of an address set back into NetworkPolicy `ipBlock`s (`cidr` + `except`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A set of integers as sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct IntervalSet(Vec<(u128, u128)>);

impl IntervalSet {
    pub fn empty() -> Self {
        Self(Vec::new())
    }

    pub fn range(lo: u128, hi: u128) -> Self {
        if lo > hi {
            Self::empty()
        } else {
            Self(vec![(lo, hi)])
        }
    }

    pub fn ranges(&self) -> &[(u128, u128)] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, x: u128) -> bool {
        // Ranges are sorted: find the last one starting at or before x.
        match self.0.partition_point(|&(lo, _)| lo <= x) {
            0 => false,
            i => self.0[i - 1].1 >= x,
        }
    }

    pub fn union(&self, other: &Self) -> Self {
        let mut all: Vec<(u128, u128)> = self.0.iter().chain(other.0.iter()).copied().collect();
        all.sort_unstable();
        let mut out: Vec<(u128, u128)> = Vec::with_capacity(all.len());
        for (lo, hi) in all {
            match out.last_mut() {
                Some(last) if last.1 == u128::MAX || lo <= last.1 + 1 => last.1 = last.1.max(hi),
                _ => out.push((lo, hi)),
            }
        }
        Self(out)
    }

    pub fn subtract(&self, other: &Self) -> Self {
        let mut out = Vec::new();
        for &(lo, hi) in &self.0 {
            let mut start = lo;
            let mut done = false;
            for &(olo, ohi) in &other.0 {
                if ohi < start || olo > hi {
                    continue;
                }
                if olo > start {
                    out.push((start, olo - 1));
                }
                if ohi >= hi {
                    done = true;
                    break;
                }
                start = ohi + 1;
            }
            if !done {
                out.push((start, hi));
            }
        }
        Self(out)
    }

    pub fn intersect(&self, other: &Self) -> Self {
        // Both are sorted, disjoint and non-adjacent, so the pieces come out that way too.
        let (a, b) = (&self.0, &other.0);
        let (mut i, mut j) = (0, 0);
        let mut out = Vec::new();
        while i < a.len() && j < b.len() {
            let (lo, hi) = (a[i].0.max(b[j].0), a[i].1.min(b[j].1));
            if lo <= hi {
                out.push((lo, hi));
            }
            if a[i].1 < b[j].1 { i += 1 } else { j += 1 }
        }
        Self(out)
    }

    pub fn is_subset(&self, other: &Self) -> bool {
        self.subtract(other).is_empty()
    }
}

/// IPv4 or IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn bits(self) -> u32 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    pub fn max(self) -> u128 {
        low_mask(self.bits())
    }
}

/// All ones in the lowest `bits` bits.
fn low_mask(bits: u32) -> u128 {
    if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

/// A parsed CIDR with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub family: Family,
    pub base: u128,
    pub prefix: u32,
}

/// Why a CIDR string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("`{0}` is not a CIDR (expected an address and a prefix length such as 10.0.0.0/8)")]
    Syntax(String),
    #[error("`{0}` has host bits set: write it as {1}")]
    HostBits(String, String),
}

impl Cidr {
    pub fn new(family: Family, base: u128, prefix: u32) -> Self {
        Self {
            family,
            base,
            prefix,
        }
    }

    /// Parses `a.b.c.d/n` or `x::y/n`, refusing host bits and non-canonical spellings so that
    /// a typo never widens a rule.
    pub fn parse(s: &str) -> Result<Self, CidrError> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| CidrError::Syntax(s.to_string()))?;
        let prefix: u32 =
            (!len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) && len.len() <= 3)
                .then(|| len.parse().ok())
                .flatten()
                .ok_or_else(|| CidrError::Syntax(s.to_string()))?;
        let ip = IpAddr::from_str(addr).map_err(|_| CidrError::Syntax(s.to_string()))?;
        let (family, value) = match ip {
            IpAddr::V4(v4) => (Family::V4, u32::from(v4) as u128),
            IpAddr::V6(v6) => (Family::V6, u128::from(v6)),
        };
        if prefix > family.bits() {
            return Err(CidrError::Syntax(s.to_string()));
        }
        let cidr = Cidr::new(family, value & !low_mask(family.bits() - prefix), prefix);
        if cidr.base != value || cidr.to_string() != s {
            return Err(CidrError::HostBits(s.to_string(), cidr.to_string()));
        }
        Ok(cidr)
    }

    pub fn last(&self) -> u128 {
        self.base | low_mask(self.family.bits() - self.prefix)
    }

    pub fn to_set(&self) -> IntervalSet {
        IntervalSet::range(self.base, self.last())
    }

    pub fn contains_cidr(&self, other: &Cidr) -> bool {
        self.family == other.family && self.base <= other.base && other.last() <= self.last()
    }

    pub fn host(family: Family, addr: u128) -> Self {
        Self::new(family, addr, family.bits())
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.family {
            Family::V4 => write!(f, "{}/{}", Ipv4Addr::from(self.base as u32), self.prefix),
            Family::V6 => write!(f, "{}/{}", Ipv6Addr::from(self.base), self.prefix),
        }
    }
}

/// A set of IP addresses of both families.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrSet {
    pub v4: IntervalSet,
    pub v6: IntervalSet,
}

impl AddrSet {
    pub fn all() -> Self {
        Self {
            v4: IntervalSet::range(0, Family::V4.max()),
            v6: IntervalSet::range(0, Family::V6.max()),
        }
    }

    pub fn from_cidr(cidr: &Cidr) -> Self {
        let mut set = Self::default();
        *set.family_mut(cidr.family) = cidr.to_set();
        set
    }

    pub fn family(&self, family: Family) -> &IntervalSet {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    fn family_mut(&mut self, family: Family) -> &mut IntervalSet {
        match family {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    pub fn union(&self, o: &Self) -> Self {
        Self {
            v4: self.v4.union(&o.v4),
            v6: self.v6.union(&o.v6),
        }
    }

    pub fn subtract(&self, o: &Self) -> Self {
        Self {
            v4: self.v4.subtract(&o.v4),
            v6: self.v6.subtract(&o.v6),
        }
    }

    pub fn intersect(&self, o: &Self) -> Self {
        Self {
            v4: self.v4.intersect(&o.v4),
            v6: self.v6.intersect(&o.v6),
        }
    }

    pub fn contains(&self, family: Family, addr: u128) -> bool {
        self.family(family).contains(addr)
    }
}

/// An `ipBlock`: a CIDR minus the CIDRs in `except` (each strictly inside it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Block {
    pub cidr: Cidr,
    pub except: Vec<Cidr>,
}

/// The exact decomposition of a set into the fewest aligned CIDRs.
pub fn exact_cidrs(family: Family, set: &IntervalSet) -> Vec<Cidr> {
    let bits = family.bits();
    let mut out = Vec::new();
    for &(lo, hi) in set.ranges() {
        let mut a = lo;
        loop {
            let mut host = if a == 0 {
                bits
            } else {
                a.trailing_zeros().min(bits)
            };
            while low_mask(host) > hi - a {
                host -= 1;
            }
            out.push(Cidr::new(family, a, bits - host));
            let end = a + low_mask(host);
            if end >= hi {
                break;
            }
            a = end + 1;
        }
    }
    out
}

/// The address set as `ipBlock`s, choosing at each prefix between listing the covered CIDRs and
/// one block with the uncovered ones in `except`, whichever needs fewer entries. Exact.
pub fn to_blocks(set: &AddrSet) -> Vec<Block> {
    let mut out = Vec::new();
    for family in [Family::V4, Family::V6] {
        let s = set.family(family);
        if !s.is_empty() {
            out.extend(best_blocks(family, s, 0, 0).1);
        }
    }
    out
}

fn best_blocks(family: Family, set: &IntervalSet, base: u128, prefix: u32) -> (usize, Vec<Block>) {
    let node = Cidr::new(family, base, prefix);
    let node_set = node.to_set();
    // `set` is already clipped to this node by the caller (or is the whole family at /0).
    let inside = set.intersect(&node_set);
    if inside.is_empty() {
        return (0, Vec::new());
    }
    if inside == node_set {
        return (
            1,
            vec![Block {
                cidr: node,
                except: Vec::new(),
            }],
        );
    }
    let child_host = family.bits() - prefix - 1;
    let right_base = base | (1u128 << child_host);
    let left_set = inside.intersect(&IntervalSet::range(base, right_base - 1));
    let right_set = inside.intersect(&IntervalSet::range(right_base, node.last()));
    // When everything lies in one half, a block here would need that whole other half in
    // `except` on top of the half's own holes: never shorter than the half's best.
    if right_set.is_empty() {
        return best_blocks(family, &left_set, base, prefix + 1);
    }
    if left_set.is_empty() {
        return best_blocks(family, &right_set, right_base, prefix + 1);
    }
    let (lc, mut left) = best_blocks(family, &left_set, base, prefix + 1);
    let (rc, right) = best_blocks(family, &right_set, right_base, prefix + 1);
    let holes = exact_cidrs(family, &node_set.subtract(&inside));
    if 1 + holes.len() < lc + rc {
        (
            1 + holes.len(),
            vec![Block {
                cidr: node,
                except: holes,
            }],
        )
    } else {
        left.extend(right);
        (lc + rc, left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(cidrs: &[&str]) -> AddrSet {
        cidrs
            .iter()
            .map(|c| AddrSet::from_cidr(&Cidr::parse(c).unwrap()))
            .fold(AddrSet::default(), |a, b| a.union(&b))
    }

    #[test]
    fn parse_refuses_host_bits_and_junk() {
        assert!(
            matches!(Cidr::parse("10.1.2.3/8"), Err(CidrError::HostBits(_, c)) if c == "10.0.0.0/8")
        );
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0.0/",
            "300.0.0.0/8",
            "10.0.0.0/+8",
            "::/129",
            "2001:DB8::/32",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Cidr::parse("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!(Cidr::parse("0.0.0.0/0").unwrap().last(), u32::MAX as u128);
    }

    #[test]
    fn interval_ops() {
        let a = IntervalSet::range(0, 100);
        let b = IntervalSet::range(10, 20).union(&IntervalSet::range(50, 60));
        assert_eq!(a.subtract(&b).ranges(), &[(0, 9), (21, 49), (61, 100)]);
        assert_eq!(a.intersect(&b), b);
        assert!(b.is_subset(&a));
        assert_eq!(
            IntervalSet::range(0, 5)
                .union(&IntervalSet::range(6, 9))
                .ranges(),
            &[(0, 9)]
        );
        assert!(a.contains(100) && !a.contains(101) && !b.contains(21) && b.contains(50));
    }

    #[test]
    fn blocks_use_except_when_shorter() {
        let all_but = AddrSet::from_cidr(&Cidr::parse("0.0.0.0/0").unwrap())
            .subtract(&set(&["10.0.0.0/8", "169.254.0.0/16"]));
        let blocks = to_blocks(&all_but);
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].cidr.to_string(), "0.0.0.0/0");
        let except: Vec<String> = blocks[0].except.iter().map(|c| c.to_string()).collect();
        assert_eq!(except, ["10.0.0.0/8", "169.254.0.0/16"]);
        let plain = to_blocks(&set(&["192.0.2.0/24", "198.51.100.0/24"]));
        assert_eq!(plain.len(), 2);
        assert!(plain.iter().all(|b| b.except.is_empty()));
    }

    #[test]
    fn blocks_are_exact() {
        let s =
            set(&["0.0.0.0/1", "::/0"]).subtract(&set(&["10.0.0.0/8", "10.1.0.0/16", "fe80::/10"]));
        let mut back = AddrSet::default();
        for b in to_blocks(&s) {
            let mut one = AddrSet::from_cidr(&b.cidr);
            for e in &b.except {
                assert!(b.cidr.contains_cidr(e) && e.prefix > b.cidr.prefix);
                one = one.subtract(&AddrSet::from_cidr(e));
            }
            back = back.union(&one);
        }
        assert_eq!(back, s);
    }
}
