//! Which labels and annotations a sandbox may put on its pod: an allowlist. Keys that other
//! components act on can change the pod's isolation (Multus attaches interfaces NetworkPolicy
//! does not govern, Calico picks an address another workload trusts, runtimes read their
//! configuration from annotations, meshes inject sidecars holding the pod's identity), so only
//! keys known not to are allowed, plus what the operator's configuration adds — never keys of
//! the domains below.

use std::fmt;

/// Key prefixes (DNS domains, with their subdomains) no configuration can allow: Kubernetes,
/// Palisade, network plugins, meshes and runtimes act on them.
pub const REFUSED_DOMAINS: &[&str] = &[
    "kubernetes.io",
    "k8s.io",
    "palisade.dev",
    // Multus (k8s.v1.cni.cncf.io/networks) and other CNI meta-plugins.
    "cni.cncf.io",
    "multus-cni.io",
    "projectcalico.org",
    "cilium.io",
    "antrea.io",
    "ovn.org",
    "weave.works",
    "istio.io",
    "linkerd.io",
    "kuma.io",
    "openshift.io",
    "katacontainers.io",
    "gvisor.dev",
    "crio.io",
];

/// Unprefixed key beginnings that runtimes read (`io.katacontainers.config.hypervisor.*`,
/// `dev.gvisor.*`, CRI-O's and containerd's own).
pub const REFUSED_NAME_PREFIXES: &[&str] = &[
    "io.katacontainers.",
    "dev.gvisor.",
    "io.kubernetes.",
    "io.containerd.",
    "io.cri-containerd.",
    "io.podman.",
    "run.oci.",
];

/// Annotations allowed without configuration: they only inform scrapers and the autoscaler.
pub const DEFAULT_ANNOTATIONS: &[&str] = &[
    "prometheus.io/*",
    "cluster-autoscaler.kubernetes.io/safe-to-evict",
];

/// Labels allowed without configuration: none (a label can make a pod a Service's endpoint or
/// a peer another NetworkPolicy trusts; the operator's configuration names the safe ones).
pub const DEFAULT_LABELS: &[&str] = &[];

/// A configured key: exact (`team`, `example.com/owner`) or every key under a prefix
/// (`example.com/*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyPattern {
    Exact(String),
    Prefix(String),
}

impl KeyPattern {
    pub fn matches(&self, key: &str) -> bool {
        match self {
            KeyPattern::Exact(k) => k == key,
            KeyPattern::Prefix(p) => key
                .split_once('/')
                .is_some_and(|(prefix, name)| prefix == p && !name.is_empty()),
        }
    }
}

impl fmt::Display for KeyPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyPattern::Exact(k) => f.write_str(k),
            KeyPattern::Prefix(p) => write!(f, "{p}/*"),
        }
    }
}

fn under_refused_domain(prefix: &str) -> bool {
    let prefix = prefix.to_ascii_lowercase();
    REFUSED_DOMAINS
        .iter()
        .any(|d| prefix == *d || prefix.ends_with(&format!(".{d}")))
}

/// Keys no configuration may allow: under a refused domain (`k8s.io/x`, or an unprefixed
/// `cpu-quota.crio.io`), or beginning like a runtime's (`io.katacontainers.`).
pub fn always_refused(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, _)) => under_refused_domain(prefix),
        None => {
            let k = key.to_ascii_lowercase();
            under_refused_domain(&k) || REFUSED_NAME_PREFIXES.iter().any(|p| k.starts_with(p))
        }
    }
}

/// Annotations no configuration may allow: the refused keys, but for the built-in defaults.
pub fn annotation_refused(key: &str) -> bool {
    !DEFAULT_ANNOTATIONS.contains(&key) && always_refused(key)
}

/// Parses a configured pattern, refusing those that would allow keys of a refused domain.
pub fn parse_pattern(s: &str) -> Result<KeyPattern, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("an empty key pattern".into());
    }
    let pattern = match s.strip_suffix("/*") {
        Some(prefix) if !prefix.is_empty() && !prefix.contains(['/', '*']) => {
            KeyPattern::Prefix(prefix.to_string())
        }
        Some(_) => return Err(format!("`{s}`: expected KEY or PREFIX/*")),
        None if s.contains('*') => {
            return Err(format!("`{s}`: `*` may only end a prefix (example.com/*)"));
        }
        None => KeyPattern::Exact(s.to_string()),
    };
    let refused = match &pattern {
        KeyPattern::Prefix(p) => under_refused_domain(p),
        KeyPattern::Exact(k) => always_refused(k),
    };
    if refused {
        return Err(format!(
            "`{s}` is refused: keys of Kubernetes, Palisade, network plugins, meshes and runtimes can change a sandbox's isolation"
        ));
    }
    Ok(pattern)
}

/// The labels and annotations a sandbox may set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodKeyAllowlist {
    pub labels: Vec<KeyPattern>,
    pub annotations: Vec<KeyPattern>,
}

impl Default for PodKeyAllowlist {
    fn default() -> Self {
        let parse = |list: &[&str]| -> Vec<KeyPattern> {
            list.iter()
                .map(|p| match p.strip_suffix("/*") {
                    Some(prefix) => KeyPattern::Prefix(prefix.into()),
                    None => KeyPattern::Exact(p.to_string()),
                })
                .collect()
        };
        Self {
            labels: parse(DEFAULT_LABELS),
            annotations: parse(DEFAULT_ANNOTATIONS),
        }
    }
}

/// The keys of `keys` the allowlist refuses, `never` deciding which no pattern can allow.
pub fn refused<'a>(
    allowed: &[KeyPattern],
    keys: impl Iterator<Item = &'a String>,
    never: fn(&str) -> bool,
) -> Vec<String> {
    keys.filter(|k| never(k) || !allowed.iter().any(|p| p.matches(k)))
        .cloned()
        .collect()
}

fn list(patterns: &[KeyPattern]) -> String {
    if patterns.is_empty() {
        "none".into()
    } else {
        patterns
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl PodKeyAllowlist {
    /// A message for the refused labels and annotations of a sandbox, if any.
    pub fn check<'a>(
        &self,
        labels: impl Iterator<Item = &'a String>,
        annotations: impl Iterator<Item = &'a String>,
    ) -> Option<String> {
        let mut parts = Vec::new();
        let l = refused(&self.labels, labels, always_refused);
        if !l.is_empty() {
            parts.push(format!(
                "podLabels {} (allowed: {}; the operator's --pod-label-allow adds keys)",
                l.join(", "),
                list(&self.labels)
            ));
        }
        let a = refused(&self.annotations, annotations, annotation_refused);
        if !a.is_empty() {
            parts.push(format!(
                "podAnnotations {} (allowed: {}; the operator's --pod-annotation-allow adds keys)",
                a.join(", "),
                list(&self.annotations)
            ));
        }
        (!parts.is_empty()).then(|| {
            format!(
                "{} not allowed: other components act on such keys and could change the pod's isolation",
                parts.join("; ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_plugin_runtime_and_kubernetes_keys_are_always_refused() {
        for k in [
            "k8s.v1.cni.cncf.io/networks",
            "v1.multus-cni.io/default-network",
            "cni.projectcalico.org/ipAddrs",
            "policy.cilium.io/proxy-visibility",
            "sidecar.istio.io/inject",
            "linkerd.io/inject",
            "io.katacontainers.config.hypervisor.kernel_params",
            "dev.gvisor.internal.nvproxy",
            "container.apparmor.security.beta.kubernetes.io/agent",
            "seccomp.security.alpha.kubernetes.io/pod",
            "node.kubernetes.io/x",
            "app.kubernetes.io/name",
            "x.k8s.io/y",
            "palisade.dev/sandbox",
            "team.palisade.dev/x",
            "K8S.V1.CNI.CNCF.IO/networks",
        ] {
            assert!(always_refused(k), "{k}");
            assert!(parse_pattern(k).is_err(), "{k} may not be configured");
        }
        assert!(parse_pattern("cni.projectcalico.org/*").is_err());
        assert!(parse_pattern("kubernetes.io/*").is_err());
        assert!(!annotation_refused(
            "cluster-autoscaler.kubernetes.io/safe-to-evict"
        ));
        assert!(
            always_refused("cluster-autoscaler.kubernetes.io/safe-to-evict"),
            "not as a label"
        );
        assert!(always_refused("cpu-quota.crio.io"));
        assert!(always_refused("K8S.IO/x"));
        assert!(!always_refused("example.com/owner"));
        assert!(!always_refused("team"));
        // A lookalike domain is not a subdomain.
        assert!(!always_refused("notkubernetes.io/x"));
    }

    #[test]
    fn the_default_allowlist_is_small_and_configuration_extends_it() {
        let mut allow = PodKeyAllowlist::default();
        let keys = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(
            allow
                .check(
                    keys(&[]).iter(),
                    keys(&[
                        "prometheus.io/scrape",
                        "cluster-autoscaler.kubernetes.io/safe-to-evict"
                    ])
                    .iter()
                )
                .is_none()
        );
        let msg = allow
            .check(
                keys(&["team"]).iter(),
                keys(&["k8s.v1.cni.cncf.io/networks"]).iter(),
            )
            .expect("refused");
        assert!(
            msg.contains("podLabels team") && msg.contains("k8s.v1.cni.cncf.io/networks"),
            "{msg}"
        );
        allow.labels.push(parse_pattern("team").unwrap());
        allow
            .annotations
            .push(parse_pattern("example.com/*").unwrap());
        assert!(
            allow
                .check(keys(&["team"]).iter(), keys(&["example.com/owner"]).iter())
                .is_none()
        );
        assert!(
            allow
                .check(keys(&["team2"]).iter(), keys(&["example.com"]).iter())
                .is_some()
        );
        assert!(parse_pattern("example.com/a*").is_err());
        assert!(parse_pattern("*").is_err());
        assert!(parse_pattern("/*").is_err());
    }
}
