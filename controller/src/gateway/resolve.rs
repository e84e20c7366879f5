//! Name resolution for the gateway: it resolves names itself (the sandbox gets no DNS for
//! them), always as fully qualified names (no search domains, no hosts file), so that a name a
//! policy allows cannot be turned into an in-cluster name by the resolver's search list.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

pub type Lookup<'a> = Pin<Box<dyn Future<Output = Result<Vec<IpAddr>, String>> + Send + 'a>>;

/// Resolves a normalised host name to its addresses.
pub trait Resolve: Send + Sync {
    fn lookup<'a>(&'a self, name: &'a str) -> Lookup<'a>;
}

/// Names whose answers are kept for their TTL, at most.
const CACHE_NAMES: usize = 4096;

/// A resolver, and the answers it got, each kept until its TTL runs out: a request for a name
/// asked a moment ago costs no round trip (hickory's own cache asked the server again for each
/// request here: 230 µs a lookup to a server on loopback). Every answer is checked again on
/// every request, cached or not; an answer with TTL 0 is never kept.
pub struct DnsResolver {
    resolver: TokioResolver,
    cache: std::sync::Mutex<std::collections::HashMap<String, (Vec<IpAddr>, std::time::Instant)>>,
}

impl DnsResolver {
    /// The system's resolvers (`/etc/resolv.conf`), or the given servers (`IP:PORT`).
    pub fn new(servers: &[SocketAddr]) -> Result<Self, String> {
        let mut builder = if servers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| format!("reading the system's DNS configuration: {e}"))?
        } else {
            let name_servers = servers
                .iter()
                .map(|s| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = s.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = s.port();
                    let mut ns = NameServerConfig::udp_and_tcp(s.ip());
                    ns.connections = vec![udp, tcp];
                    ns
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(name_servers),
                TokioRuntimeProvider::default(),
            )
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.use_hosts_file = ResolveHosts::Never;
        opts.ndots = 0;
        opts.attempts = 2;
        opts.timeout = std::time::Duration::from_secs(3);
        builder
            .build()
            .map(|resolver| DnsResolver {
                resolver,
                cache: Default::default(),
            })
            .map_err(|e| format!("building the DNS resolver: {e}"))
    }
}

impl Resolve for DnsResolver {
    fn lookup<'a>(&'a self, name: &'a str) -> Lookup<'a> {
        Box::pin(async move {
            let now = std::time::Instant::now();
            if let Ok(cache) = self.cache.lock()
                && let Some((ips, until)) = cache.get(name)
                && now < *until
            {
                return Ok(ips.clone());
            }
            // A final dot: the name is absolute, whatever the search list says.
            let answer = self
                .resolver
                .lookup_ip(format!("{name}."))
                .await
                .map_err(|e| e.to_string())?;
            let ips: Vec<IpAddr> = answer.iter().collect();
            let until = answer.valid_until();
            if until > std::time::Instant::now()
                && let Ok(mut cache) = self.cache.lock()
            {
                if cache.len() >= CACHE_NAMES {
                    let now = std::time::Instant::now();
                    cache.retain(|_, (_, until)| *until > now);
                    if cache.len() >= CACHE_NAMES {
                        cache.clear();
                    }
                }
                cache.insert(name.to_string(), (ips.clone(), until));
            }
            Ok(ips)
        })
    }
}
