//! Who may use the gateway, and under which rules: a snapshot built from the pods, sandboxes
//! and policies the gateway watches. A request is attributed by two factors that must agree:
//! its source address (a running, not terminating sandbox pod) and its credential (which names
//! a sandbox by UID). Rules are compiled per policy with the operator's compiler.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use crate::api::{AgentPolicy, AgentSandbox, SANDBOX_LABEL};
use crate::policy::egress::ClusterRanges;
use crate::reconcile::ownership::controlling_sandbox;
use crate::render::check_policy;

use super::rules::{Denial, GatewayRules};

/// The sandbox pod a request comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub namespace: String,
    pub sandbox: String,
    pub sandbox_uid: String,
    pub pod: String,
}

/// A policy's rules, or why it has none (the sandbox is then refused everything).
pub type CompiledRules = Arc<Result<GatewayRules, String>>;

/// One consistent view of pods, sandboxes and policies.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    /// Every watched kind has listed at least once.
    pub synced: bool,
    pub by_ip: HashMap<IpAddr, Source>,
    /// Sandbox UID to its policy's rules.
    pub rules: HashMap<String, CompiledRules>,
    /// Addresses of sandbox pods that are not Running yet (Pending, with an address): never
    /// attributed, but a request from one waits longer for the pod to be reported Running
    /// (the kubelet reports it a moment, sometimes seconds, after the agent has started).
    pub starting: std::collections::HashSet<IpAddr>,
}

impl Directory {
    /// Whether `source` is the address of a sandbox pod that has not been reported Running.
    pub fn is_starting(&self, source: IpAddr) -> bool {
        self.starting.contains(&canonical(source))
    }

    /// The source and rules of a request from `source` carrying a credential for `credential`
    /// (a sandbox UID), or why it is refused.
    pub fn attribute(
        &self,
        source: IpAddr,
        credential: Option<&str>,
    ) -> Result<(&Source, &GatewayRules), Denial> {
        if !self.synced {
            return Err(Denial::NotSynced);
        }
        let uid = credential.ok_or(Denial::Unauthenticated)?;
        let from = self
            .by_ip
            .get(&canonical(source))
            .ok_or(Denial::UnknownSource)?;
        if from.sandbox_uid != uid {
            return Err(Denial::WrongSandbox);
        }
        match self.rules.get(uid).map(|r| r.as_ref()) {
            Some(Ok(rules)) => Ok((from, rules)),
            _ => Err(Denial::PolicyUnavailable),
        }
    }
}

/// IPv4 clients may appear as IPv4-mapped IPv6 on a dual-stack listener.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// Compiles policies once per resource version.
#[derive(Default)]
pub struct RulesCache {
    by_policy: HashMap<(String, String), (String, CompiledRules)>,
}

impl RulesCache {
    fn rules(&mut self, policy: &AgentPolicy, ranges: ClusterRanges<'_>) -> CompiledRules {
        let key = (
            policy.metadata.namespace.clone().unwrap_or_default(),
            policy.metadata.name.clone().unwrap_or_default(),
        );
        let version = format!(
            "{}/{}",
            policy.metadata.uid.as_deref().unwrap_or_default(),
            policy
                .metadata
                .resource_version
                .as_deref()
                .unwrap_or_default()
        );
        if let Some((v, rules)) = self.by_policy.get(&key)
            && *v == version
        {
            return rules.clone();
        }
        let rules = Arc::new(compile(policy, ranges));
        self.by_policy.insert(key, (version, rules.clone()));
        rules
    }

    fn retain(&mut self, policies: &[Arc<AgentPolicy>]) {
        let live: std::collections::HashSet<(String, String)> = policies
            .iter()
            .map(|p| {
                (
                    p.metadata.namespace.clone().unwrap_or_default(),
                    p.metadata.name.clone().unwrap_or_default(),
                )
            })
            .collect();
        self.by_policy.retain(|k, _| live.contains(k));
    }
}

fn compile(policy: &AgentPolicy, ranges: ClusterRanges<'_>) -> Result<GatewayRules, String> {
    let checked = check_policy(&policy.spec).map_err(|e| e.to_string())?;
    GatewayRules::for_network(&checked.network, ranges)
}

/// The addresses of a pod that is not terminating and in `phase`.
fn ips_in_phase(pod: &Pod, phase: &str) -> Vec<IpAddr> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    if status.phase.as_deref() != Some(phase) || pod.metadata.deletion_timestamp.is_some() {
        return Vec::new();
    }
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if let Some(ip) = status.pod_ip.as_deref().and_then(|p| p.parse().ok())
        && !ips.contains(&ip)
    {
        ips.push(ip);
    }
    ips
}

/// Builds the directory. A pod counts only if it is the sandbox's own (named like it, labelled
/// with it, controlled by its UID), running and not terminating; an address two such pods
/// claim is nobody's.
pub fn build(
    pods: &[Arc<Pod>],
    sandboxes: &[Arc<AgentSandbox>],
    policies: &[Arc<AgentPolicy>],
    ranges: ClusterRanges<'_>,
    cache: &mut RulesCache,
) -> Directory {
    cache.retain(policies);
    let policy_by_key: BTreeMap<(&str, &str), &Arc<AgentPolicy>> = policies
        .iter()
        .map(|p| {
            (
                (
                    p.metadata.namespace.as_deref().unwrap_or_default(),
                    p.metadata.name.as_deref().unwrap_or_default(),
                ),
                p,
            )
        })
        .collect();
    let mut sandbox_by_key: BTreeMap<(&str, &str), &Arc<AgentSandbox>> = BTreeMap::new();
    let mut rules = HashMap::new();
    for s in sandboxes {
        let (Some(ns), Some(name), Some(uid)) = (
            s.metadata.namespace.as_deref(),
            s.metadata.name.as_deref(),
            s.metadata.uid.as_deref(),
        ) else {
            continue;
        };
        sandbox_by_key.insert((ns, name), s);
        let compiled = match policy_by_key.get(&(ns, s.spec.policy_ref.name.as_str())) {
            Some(p) => cache.rules(p, ranges),
            None => Arc::new(Err(format!(
                "AgentPolicy {ns}/{} not found",
                s.spec.policy_ref.name
            ))),
        };
        rules.insert(uid.to_string(), compiled);
    }
    let mut by_ip: HashMap<IpAddr, Source> = HashMap::new();
    let mut starting = std::collections::HashSet::new();
    let mut contested: Vec<IpAddr> = Vec::new();
    for pod in pods {
        let (Some(ns), Some(name)) = (
            pod.metadata.namespace.as_deref(),
            pod.metadata.name.as_deref(),
        ) else {
            continue;
        };
        let labelled = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SANDBOX_LABEL))
            .is_some_and(|v| v == name);
        let Some(owner) = controlling_sandbox(&pod.metadata) else {
            continue;
        };
        let Some(sandbox) = sandbox_by_key.get(&(ns, name)) else {
            continue;
        };
        if !labelled || sandbox.metadata.uid.as_deref() != Some(owner.uid.as_str()) {
            continue;
        }
        starting.extend(ips_in_phase(pod, "Pending"));
        for ip in ips_in_phase(pod, "Running") {
            let source = Source {
                namespace: ns.to_string(),
                sandbox: name.to_string(),
                sandbox_uid: owner.uid.clone(),
                pod: name.to_string(),
            };
            if by_ip.insert(ip, source).is_some() {
                contested.push(ip);
            }
        }
    }
    for ip in contested {
        by_ip.remove(&ip);
    }
    starting.retain(|ip| !by_ip.contains_key(ip));
    Directory {
        synced: true,
        by_ip,
        rules,
        starting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sandbox(ns: &str, name: &str, uid: &str, policy: &str) -> Arc<AgentSandbox> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox",
                "metadata": {"namespace": ns, "name": name, "uid": uid},
                "spec": {"policyRef": {"name": policy}, "image": "registry.example.com/agent:1"}
            }))
            .unwrap(),
        )
    }

    fn policy(ns: &str, name: &str, rv: &str, fqdn: &str) -> Arc<AgentPolicy> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "palisade.dev/v1alpha1", "kind": "AgentPolicy",
                "metadata": {"namespace": ns, "name": name, "uid": format!("p-{name}"), "resourceVersion": rv},
                "spec": {"network": {"egress": {"allow": [{"to": [{"fqdn": fqdn}], "ports": [{"port": 443}]}]}}}
            }))
            .unwrap(),
        )
    }

    fn pod(ns: &str, name: &str, owner_uid: &str, ip: &str, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name,
                "labels": {SANDBOX_LABEL: name},
                "ownerReferences": [{"apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox",
                    "name": name, "uid": owner_uid, "controller": true}]},
            "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]}
        }))
        .unwrap()
    }

    fn dir(pods: Vec<Pod>) -> Directory {
        build(
            &pods.into_iter().map(Arc::new).collect::<Vec<_>>(),
            &[
                sandbox("a", "s1", "u1", "p1"),
                sandbox("a", "s2", "u2", "p1"),
                sandbox("a", "s3", "u3", "missing"),
            ],
            &[policy("a", "p1", "1", "api.example.com")],
            ClusterRanges::default(),
            &mut RulesCache::default(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn source_and_credential_must_agree() {
        let d = dir(vec![
            pod("a", "s1", "u1", "10.0.0.1", "Running"),
            pod("a", "s2", "u2", "10.0.0.2", "Running"),
            pod("a", "s3", "u3", "10.0.0.3", "Running"),
        ]);
        let (source, rules) = d.attribute(ip("10.0.0.1"), Some("u1")).unwrap();
        assert_eq!(source.sandbox, "s1");
        assert_eq!(rules.names[0].names, vec!["api.example.com".to_string()]);
        assert_eq!(
            d.attribute(ip("::ffff:10.0.0.1"), Some("u1"))
                .map(|(s, _)| s.pod.clone()),
            Ok("s1".into())
        );
        assert_eq!(
            d.attribute(ip("10.0.0.1"), Some("u2")).err(),
            Some(Denial::WrongSandbox)
        );
        assert_eq!(
            d.attribute(ip("10.0.0.1"), None).err(),
            Some(Denial::Unauthenticated)
        );
        assert_eq!(
            d.attribute(ip("10.0.0.9"), Some("u1")).err(),
            Some(Denial::UnknownSource)
        );
        assert_eq!(
            d.attribute(ip("10.0.0.3"), Some("u3")).err(),
            Some(Denial::PolicyUnavailable)
        );
        assert_eq!(
            Directory::default()
                .attribute(ip("10.0.0.1"), Some("u1"))
                .err(),
            Some(Denial::NotSynced)
        );
    }

    #[test]
    fn only_the_sandboxs_own_running_pod_counts() {
        let mut terminating = pod("a", "s1", "u1", "10.0.0.1", "Running");
        terminating.metadata.deletion_timestamp =
            serde_json::from_value(json!("2026-01-01T00:00:00Z")).ok();
        let mut unlabelled = pod("a", "s1", "u1", "10.0.0.1", "Running");
        unlabelled.metadata.labels = None;
        for (case, p) in [
            ("pending", pod("a", "s1", "u1", "10.0.0.1", "Pending")),
            ("succeeded", pod("a", "s1", "u1", "10.0.0.1", "Succeeded")),
            ("terminating", terminating),
            ("unlabelled", unlabelled),
            ("forged owner", pod("a", "s1", "u2", "10.0.0.1", "Running")),
            (
                "other namespace",
                pod("b", "s1", "u1", "10.0.0.1", "Running"),
            ),
            (
                "another name",
                pod("a", "s1-copy", "u1", "10.0.0.1", "Running"),
            ),
        ] {
            assert_eq!(
                dir(vec![p]).attribute(ip("10.0.0.1"), Some("u1")).err(),
                Some(Denial::UnknownSource),
                "{case}"
            );
        }
        // Two pods claiming one address: neither is believed.
        let d = dir(vec![
            pod("a", "s1", "u1", "10.0.0.1", "Running"),
            pod("a", "s2", "u2", "10.0.0.1", "Running"),
        ]);
        assert_eq!(
            d.attribute(ip("10.0.0.1"), Some("u1")).err(),
            Some(Denial::UnknownSource)
        );
    }

    #[test]
    fn policies_compile_once_per_version() {
        let mut cache = RulesCache::default();
        let sandboxes = [sandbox("a", "s1", "u1", "p1")];
        let first = build(
            &[],
            &sandboxes,
            &[policy("a", "p1", "1", "a.example.com")],
            ClusterRanges::default(),
            &mut cache,
        );
        let same = build(
            &[],
            &sandboxes,
            &[policy("a", "p1", "1", "a.example.com")],
            ClusterRanges::default(),
            &mut cache,
        );
        assert!(Arc::ptr_eq(&first.rules["u1"], &same.rules["u1"]));
        let changed = build(
            &[],
            &sandboxes,
            &[policy("a", "p1", "2", "b.example.com")],
            ClusterRanges::default(),
            &mut cache,
        );
        let Ok(rules) = changed.rules["u1"].as_ref() else {
            panic!()
        };
        assert_eq!(rules.names[0].names, vec!["b.example.com".to_string()]);
    }

    #[test]
    fn a_pending_pod_is_starting_never_a_source() {
        let mut p = pod("a", "s1", "u1", "10.0.0.1", "Pending");
        let d = dir(vec![p.clone()]);
        assert!(d.is_starting(ip("10.0.0.1")));
        assert_eq!(
            d.attribute(ip("10.0.0.1"), Some("u1")).err(),
            Some(Denial::UnknownSource)
        );
        let running = dir(vec![pod("a", "s1", "u1", "10.0.0.1", "Running")]);
        assert!(!running.is_starting(ip("10.0.0.1")));
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::UNIX_EPOCH,
        ));
        assert!(
            !dir(vec![p]).is_starting(ip("10.0.0.1")),
            "a terminating pod is not starting"
        );
    }
}
