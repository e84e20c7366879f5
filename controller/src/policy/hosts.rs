//! Host names, wildcard domains and proxy addresses as they appear in policies.

use std::net::{IpAddr, SocketAddr};

/// Whether `name` is a DNS name (`api.example.com`) or a one-level wildcard (`*.example.com`),
/// lower case.
pub fn is_domain(name: &str) -> bool {
    let bare = name.strip_prefix("*.").unwrap_or(name);
    !bare.is_empty()
        && name.len() <= 253
        && bare.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A proxy address: an IP address (or `localhost`) and a TCP port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyAddr {
    pub ip: IpAddr,
    pub port: u16,
    /// The URL as written, for `HTTP_PROXY`/`HTTPS_PROXY`.
    pub url: String,
}

impl ProxyAddr {
    /// A loopback proxy runs inside the pod (the pod has no host loopback).
    pub fn is_loopback(&self) -> bool {
        self.ip.is_loopback()
    }
}

/// Parses `http(s)://HOST:PORT` or `HOST:PORT` where HOST is an IP address or `localhost`.
/// Other host names are refused: a NetworkPolicy cannot name one.
pub fn parse_proxy(s: &str) -> Result<ProxyAddr, String> {
    let (scheme, rest) = match s.split_once("://") {
        Some((scheme, rest)) => (scheme, rest),
        None => ("http", s),
    };
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "`{s}`: only http:// and https:// proxies are supported"
        ));
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let bad = || {
        format!(
            "`{s}` is not HOST:PORT with an IP address or localhost as HOST (e.g. http://192.0.2.10:3128); a NetworkPolicy cannot name other hosts"
        )
    };
    let addr = match rest.strip_prefix("localhost:") {
        Some(port) => SocketAddr::new(
            IpAddr::from([127, 0, 0, 1]),
            port.parse().map_err(|_| bad())?,
        ),
        None => rest.parse::<SocketAddr>().map_err(|_| bad())?,
    };
    if addr.port() == 0 {
        return Err(bad());
    }
    Ok(ProxyAddr {
        ip: addr.ip(),
        port: addr.port(),
        url: format!("{scheme}://{rest}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        assert!(
            is_domain("api.example.com") && is_domain("*.example.com") && is_domain("localhost")
        );
        for bad in [
            "",
            "*.",
            "a..b",
            "-a.com",
            "A.com",
            "*.*.a.com",
            "a_b.com",
            "http://a.com",
        ] {
            assert!(!is_domain(bad), "{bad}");
        }
    }

    #[test]
    fn proxies() {
        assert_eq!(
            parse_proxy("192.0.2.10:3128").unwrap().url,
            "http://192.0.2.10:3128"
        );
        assert_eq!(parse_proxy("[2001:db8::1]:8080").unwrap().port, 8080);
        assert!(parse_proxy("http://localhost:8080").unwrap().is_loopback());
        assert!(
            !parse_proxy("https://192.0.2.10:3128")
                .unwrap()
                .is_loopback()
        );
        assert!(parse_proxy("proxy.corp:3128").is_err());
        assert!(parse_proxy("socks5://192.0.2.10:3128").is_err());
        assert!(parse_proxy("192.0.2.10").is_err());
    }
}
