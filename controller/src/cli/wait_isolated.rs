//! `palisade wait-isolated`: the init container of every sandbox pod (`isolation-check`).
//!
//! A network plugin programs a new pod's firewall a moment after the pod has its address (it
//! learns the address from the API); until then the pod is not filtered at all. The scheduling
//! gate guarantees the NetworkPolicy exists before the pod is placed, not that the plugin
//! enforces it yet. This command closes that window from inside the pod: it connects to a
//! canary that the sandbox's NetworkPolicy always denies and that an unfiltered pod reaches (the
//! `kubernetes` Service: the cluster's and the nodes' ranges are removed from every egress
//! allow), and returns once the canary is refused or unanswered several times in a row. Only
//! then does the kubelet start the agent. If the canary stays reachable, it fails: the pod never
//! runs the agent unfiltered.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct WaitIsolatedArgs {
    /// The canary, HOST:PORT: an address the pod's NetworkPolicy denies and an unfiltered pod
    /// reaches. Default: the `kubernetes` Service (KUBERNETES_SERVICE_HOST and
    /// KUBERNETES_SERVICE_PORT, which the kubelet sets in every container).
    #[arg(long, value_name = "HOST:PORT")]
    pub canary: Option<String>,
    /// Fail (exit 1) when the canary is still reachable after this many seconds.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub timeout_seconds: u64,
    /// Failed connections in a row that show the NetworkPolicy enforced.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub confirmations: u32,
    /// How long one connection attempt may take before it counts as unanswered.
    #[arg(long, default_value_t = 1000, value_name = "MS", value_parser = clap::value_parser!(u64).range(50..=30000))]
    pub attempt_timeout_ms: u64,
    /// Pause between attempts.
    #[arg(long, default_value_t = 50, value_name = "MS")]
    pub interval_ms: u64,
    /// Count refusals only after the canary has answered once: proof that the pod was
    /// unfiltered and then became filtered, for network plugins that program a pod after it
    /// starts (kube-router, ...). A canary stopped for another reason (a Service without
    /// endpoints, a proxy not synced yet, rules left from a deleted pod with the same address)
    /// then fails the check instead of passing it. Wrong for plugins that filter a pod from
    /// its first packet: the canary never answers there.
    #[arg(long)]
    pub require_open_first: bool,
}

/// What one connection attempt to the canary found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The canary answered: the pod is not (yet) filtered.
    Connected,
    /// Refused, unreachable, unanswered or not permitted: something stopped the connection.
    Stopped(&'static str),
    /// Failed for a reason that says nothing about filtering (no free port, no memory, ...):
    /// neither evidence of isolation nor of its absence.
    Inconclusive(ErrorKind),
}

impl Attempt {
    /// Only what network plugins answer a denied connection with counts: a refusal (a reject
    /// rule's reset or port-unreachable) or silence (a drop rule). No route, a tentative IPv6
    /// address, a local firewall (EPERM) or no free local port (EAGAIN) say nothing about the
    /// pod's NetworkPolicy.
    fn from_error(kind: ErrorKind) -> Attempt {
        match kind {
            ErrorKind::ConnectionRefused => Attempt::Stopped("refused"),
            ErrorKind::TimedOut => Attempt::Stopped("unanswered"),
            other => Attempt::Inconclusive(other),
        }
    }
}

/// Counts stopped attempts in a row; one that connects starts the count again.
#[derive(Debug)]
pub struct Confirmation {
    needed: u32,
    open_first: bool,
    in_row: u32,
    connected: u32,
}

impl Confirmation {
    /// `needed` stopped attempts in a row confirm; with `open_first`, only after one connected.
    pub fn new(needed: u32, open_first: bool) -> Self {
        Self {
            needed: needed.max(1),
            open_first,
            in_row: 0,
            connected: 0,
        }
    }

    /// Records an attempt; true once `needed` attempts in a row were stopped.
    pub fn observe(&mut self, attempt: Attempt) -> bool {
        match attempt {
            Attempt::Connected => {
                self.in_row = 0;
                self.connected += 1;
            }
            Attempt::Stopped(_) if self.open_first && self.connected == 0 => {}
            Attempt::Stopped(_) => self.in_row += 1,
            Attempt::Inconclusive(_) => self.in_row = 0,
        }
        self.in_row >= self.needed
    }

    /// Attempts that connected so far (while the pod was not yet filtered).
    pub fn connected(&self) -> u32 {
        self.connected
    }
}

/// The canary: `--canary`, else the `kubernetes` Service from the kubelet's variables.
fn canary(args: &WaitIsolatedArgs) -> Result<SocketAddr, String> {
    let text = match &args.canary {
        Some(c) => c.clone(),
        None => {
            let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| {
                "KUBERNETES_SERVICE_HOST is not set (not in a pod?): give --canary HOST:PORT"
                    .to_string()
            })?;
            let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
            if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            }
        }
    };
    text.to_socket_addrs()
        .map_err(|e| format!("canary {text}: {e}"))?
        .next()
        .ok_or_else(|| format!("canary {text} has no address"))
}

fn attempt(addr: &SocketAddr, timeout: Duration) -> Attempt {
    match TcpStream::connect_timeout(addr, timeout) {
        Ok(_) => Attempt::Connected,
        Err(e) => Attempt::from_error(e.kind()),
    }
}

pub fn run(args: WaitIsolatedArgs) -> Result<(), String> {
    let addr = canary(&args)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_seconds);
    let attempt_timeout = Duration::from_millis(args.attempt_timeout_ms);
    let mut confirmation = Confirmation::new(args.confirmations, args.require_open_first);
    loop {
        let result = attempt(&addr, attempt_timeout);
        let confirmed = confirmation.observe(result);
        if let (true, Attempt::Stopped(how)) = (confirmed, result) {
            println!(
                "isolation check: the NetworkPolicy is enforced: the canary {addr} was {how} {} times in a row after {} ms (it connected {} times before)",
                args.confirmations,
                started.elapsed().as_millis(),
                confirmation.connected()
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            let what = if args.require_open_first && confirmation.connected() == 0 {
                format!(
                    "never answered in {} s, so it cannot show the pod becoming filtered (--require-open-first; the last attempt: {result:?})",
                    args.timeout_seconds
                )
            } else if confirmation.connected() > 0 {
                format!(
                    "was still reachable after {} s ({} connections)",
                    args.timeout_seconds,
                    confirmation.connected()
                )
            } else {
                format!(
                    "gave no conclusive answer in {} s (the last attempt: {result:?})",
                    args.timeout_seconds
                )
            };
            return Err(format!(
                "isolation check: the canary {addr} {what}: either the network plugin does not enforce the sandbox's NetworkPolicy on this pod, or the policy allows the canary (the API server's addresses must lie in the operator's --cluster-cidr/--node-cidr ranges); the agent was not started"
            ));
        }
        std::thread::sleep(Duration::from_millis(args.interval_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn args(canary: String) -> WaitIsolatedArgs {
        WaitIsolatedArgs {
            canary: Some(canary),
            timeout_seconds: 1,
            confirmations: 3,
            attempt_timeout_ms: 200,
            interval_ms: 10,
            require_open_first: false,
        }
    }

    #[test]
    fn requiring_the_canary_open_first_ignores_refusals_before_it_answered() {
        let mut c = Confirmation::new(2, true);
        for _ in 0..10 {
            assert!(!c.observe(Attempt::Stopped("refused")));
        }
        assert!(!c.observe(Attempt::Connected));
        assert!(!c.observe(Attempt::Stopped("refused")));
        assert!(c.observe(Attempt::Stopped("unanswered")));
        // A canary that never answers fails the check.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = run(WaitIsolatedArgs {
            require_open_first: true,
            ..args(addr.to_string())
        })
        .unwrap_err();
        assert!(err.contains("never answered"), "{err}");
    }

    #[test]
    fn a_connection_starts_the_count_again() {
        let mut c = Confirmation::new(3, false);
        assert!(!c.observe(Attempt::Stopped("refused")));
        assert!(!c.observe(Attempt::Stopped("refused")));
        assert!(!c.observe(Attempt::Connected));
        assert!(!c.observe(Attempt::Stopped("unanswered")));
        assert!(!c.observe(Attempt::Stopped("refused")));
        assert!(c.observe(Attempt::Stopped("refused")));
        assert_eq!(c.connected(), 1);
    }

    #[test]
    fn only_a_refusal_or_silence_counts_as_filtering() {
        for kind in [ErrorKind::ConnectionRefused, ErrorKind::TimedOut] {
            assert!(matches!(Attempt::from_error(kind), Attempt::Stopped(_)));
        }
        // Failures of the pod's own stack say nothing about the network plugin.
        for kind in [
            ErrorKind::HostUnreachable,
            ErrorKind::NetworkUnreachable,
            ErrorKind::PermissionDenied,
            ErrorKind::WouldBlock,
            ErrorKind::AddrNotAvailable,
            ErrorKind::OutOfMemory,
            ErrorKind::Other,
        ] {
            assert_eq!(Attempt::from_error(kind), Attempt::Inconclusive(kind));
        }
        let mut c = Confirmation::new(2, false);
        assert!(!c.observe(Attempt::Stopped("refused")));
        assert!(!c.observe(Attempt::Inconclusive(ErrorKind::HostUnreachable)));
        assert!(!c.observe(Attempt::Stopped("refused")));
        assert!(c.observe(Attempt::Stopped("refused")));
    }

    #[test]
    fn a_reachable_canary_fails_the_check() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepts in the background so every attempt connects.
        std::thread::spawn(move || for _ in listener.incoming() {});
        let err = run(args(addr.to_string())).unwrap_err();
        assert!(err.contains("still reachable"), "{err}");
    }

    #[test]
    fn a_refused_canary_passes_the_check() {
        // A port that was just free: nothing listens there.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        run(args(addr.to_string())).unwrap();
    }

    #[test]
    fn a_canary_that_is_not_an_address_is_an_error() {
        let err = run(args("not an address".into())).unwrap_err();
        assert!(err.contains("canary"), "{err}");
    }
}
