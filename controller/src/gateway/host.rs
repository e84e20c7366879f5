//! Destination hosts as the gateway compares them: a request's host is normalised once (case,
//! a final dot, international names to punycode) and then matched exactly, with the same
//! semantics Palisade validates for `fqdn` peers: an exact name, or `*.` standing for exactly
//! one label.

use std::net::IpAddr;

/// What a request names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// A DNS name, lower case, ASCII (punycode), without a final dot.
    Name(String),
    /// An IP address literal (`192.0.2.1`, `[2001:db8::1]`).
    Ip(IpAddr),
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Parses the host of a CONNECT target, a URI or a `Host` header (without the port).
/// Refuses anything that is not an IP literal or a valid DNS name after IDNA processing.
pub fn parse_host(raw: &str) -> Result<Host, String> {
    if let Some(inner) = raw.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return match inner.parse::<std::net::Ipv6Addr>() {
            Ok(ip) => Ok(Host::Ip(IpAddr::V6(ip))),
            Err(_) => Err(format!("`{raw}` is not an IPv6 literal")),
        };
    }
    if let Ok(ip) = raw.parse::<std::net::Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    let bare = raw.strip_suffix('.').unwrap_or(raw);
    if bare.is_empty() || bare.ends_with('.') {
        return Err(format!("`{raw}` is not a host name"));
    }
    let ascii = idna::domain_to_ascii_strict(bare)
        .map_err(|_| format!("`{raw}` is not a valid host name"))?;
    // Only letters, digits and hyphens, 1-63 per label, at most 253 in all: what DNS
    // resolvers and Palisade's `fqdn` validation agree on (no `_`, no `*`).
    let valid = ascii.len() <= 253
        && ascii.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    // A name made of numbers only (`1.2.3`, `0x7f.1`) is how some resolvers spell addresses.
    let numeric = ascii
        .split('.')
        .next_back()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    if !valid || numeric {
        return Err(format!("`{raw}` is not a valid host name"));
    }
    Ok(Host::Name(ascii))
}

/// Splits `host:port` (a CONNECT target or an authority); IPv6 literals are bracketed.
pub fn split_authority(authority: &str) -> Option<(&str, Option<u16>)> {
    if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        return match rest.strip_prefix(':') {
            Some(p) => Some((host, Some(parse_port(p)?))),
            None if rest.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, p)) if !host.contains(':') => Some((host, Some(parse_port(p)?))),
        Some(_) => None,
        None => Some((authority, None)),
    }
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok().filter(|&n| n != 0)
}

/// Whether `name` (normalised) matches `pattern` (a validated `fqdn` peer): the same name, or
/// for `*.suffix` exactly one more label in front of `suffix`.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .strip_suffix(suffix)
            .and_then(|head| head.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        None => pattern == name,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    /// A DNS label IDNA accepts as it is (no `--` in positions 3 and 4, which IDNA reserves).
    fn label() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9]{0,6}(-[a-z0-9]{1,5})?"
    }

    proptest! {
        // Case and a final dot never change what a name is; parsing is idempotent.
        #[test]
        fn normalisation_is_stable(labels in proptest::collection::vec(label(), 2..5), upper in any::<bool>(), dot in any::<bool>()) {
            let name = labels.join(".");
            let mut raw = if upper { name.to_ascii_uppercase() } else { name.clone() };
            if dot {
                raw.push('.');
            }
            let parsed = parse_host(&raw).unwrap();
            prop_assert_eq!(&parsed, &Host::Name(name.clone()));
            prop_assert_eq!(parse_host(&parsed.to_string()).unwrap(), parsed);
        }

        // `*.suffix` matches exactly one label in front of the suffix: never the suffix
        // itself, two labels, or a name that merely ends with the same characters.
        #[test]
        fn a_wildcard_covers_one_label_exactly(suffix in proptest::collection::vec(label(), 1..3), a in label(), b in label()) {
            let suffix = suffix.join(".");
            let pattern = format!("*.{suffix}");
            let one = format!("{a}.{suffix}");
            let two = format!("{a}.{b}.{suffix}");
            let glued = format!("{a}{suffix}");
            prop_assert!(name_matches(&pattern, &one));
            prop_assert!(!name_matches(&pattern, &suffix));
            prop_assert!(!name_matches(&pattern, &two));
            prop_assert!(!name_matches(&pattern, &glued));
            prop_assert!(!name_matches(&suffix, &one));
            prop_assert!(name_matches(&suffix, &suffix));
        }
    }

    use super::*;

    fn name(s: &str) -> String {
        match parse_host(s) {
            Ok(Host::Name(n)) => n,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn names_are_normalised() {
        assert_eq!(name("API.Example.COM"), "api.example.com");
        assert_eq!(name("api.example.com."), "api.example.com");
        assert_eq!(name("bücher.example.com"), "xn--bcher-kva.example.com");
        assert_eq!(
            name("xn--bcher-kva.example.com"),
            "xn--bcher-kva.example.com"
        );
        for bad in [
            "",
            ".",
            "a..b",
            "api.example.com..",
            "a b.com",
            "a_b.example.com",
            "*.example.com",
            "-a.example.com",
            "1.2.3",
            "0x7f.1",
            "127.1",
            "a.example.com:80",
            &"a".repeat(64),
        ] {
            assert!(parse_host(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn literals_are_addresses() {
        assert_eq!(
            parse_host("192.0.2.1"),
            Ok(Host::Ip("192.0.2.1".parse().unwrap()))
        );
        assert_eq!(
            parse_host("[2001:db8::1]"),
            Ok(Host::Ip("2001:db8::1".parse().unwrap()))
        );
        assert!(parse_host("2001:db8::1").is_err());
        assert!(parse_host("[example.com]").is_err());
    }

    #[test]
    fn authorities_split() {
        assert_eq!(
            split_authority("a.example.com:443"),
            Some(("a.example.com", Some(443)))
        );
        assert_eq!(
            split_authority("a.example.com"),
            Some(("a.example.com", None))
        );
        assert_eq!(
            split_authority("[2001:db8::1]:443"),
            Some(("[2001:db8::1]", Some(443)))
        );
        for bad in [
            "a:0",
            "a:65536",
            "a:+1",
            "a:",
            "2001:db8::1",
            "[::1]x",
            "a: 1",
        ] {
            assert_eq!(
                split_authority(bad).and_then(|(_, p)| p.map(|_| ())),
                None,
                "{bad}"
            );
        }
    }

    #[test]
    fn wildcards_stand_for_one_label() {
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "evilexample.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", ".example.com"));
        assert!(name_matches("api.example.com", "api.example.com"));
        assert!(!name_matches("api.example.com", "x.api.example.com"));
    }
}
