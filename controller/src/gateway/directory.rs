//! Who may use the gateway, and under which rules: a snapshot built from the pods, sandboxes
//! and policies the gateway watches. A request is attributed by two factors that must agree:
//! its source address (a running, not terminating sandbox pod) and its credential (which names
//! a sandbox by UID). Rules are compiled per policy with the operator's compiler.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use crate::api::sandbox::PolicyVersion;
use crate::api::{AgentPolicy, AgentSandbox, SANDBOX_LABEL};
use crate::policy::egress::ClusterRanges;
use crate::reconcile::ownership::controlling_sandbox;
use crate::render::check_policy;
use crate::render::children::{base_name, credential_id};

use super::rules::{Denial, GatewayRules};

/// The sandbox pod a request comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub namespace: String,
    pub sandbox: String,
    pub sandbox_uid: String,
    /// What the pod's credential names: the sandbox's UID, or for a sandbox that took a warm
    /// sandbox of a pool, the warm sandbox's (the pod's environment was written for it).
    pub credential: String,
    pub pod: String,
}

/// A policy's rules, or why it has none (the sandbox is then refused everything).
pub type CompiledRules = Arc<Result<SandboxRules, String>>;

/// The rules a sandbox's requests are judged by: its policy's, and, while the operator has not
/// yet enforced the newest version of the policy for the sandbox (`status.enforcedPolicy`),
/// those of the version it enforced too. A request must pass every set: a narrowing applies
/// at once, a widening once the operator has made the pod and its NetworkPolicy for it (a pod
/// that a new version would replace or block never gets what only that version allows).
#[derive(Clone, Debug)]
pub struct SandboxRules {
    sets: Vec<Arc<GatewayRules>>,
}

impl SandboxRules {
    pub fn new(sets: Vec<Arc<GatewayRules>>) -> Self {
        SandboxRules { sets }
    }

    pub fn check_host(&self, host: &super::host::Host, port: u16) -> Result<(), Denial> {
        self.sets.iter().try_for_each(|r| r.check_host(host, port))
    }

    pub fn check_addresses(&self, ips: &[IpAddr], port: u16) -> Result<(), Denial> {
        self.sets
            .iter()
            .try_for_each(|r| r.check_addresses(ips, port))
    }

    pub fn check_address(&self, ip: IpAddr, port: u16) -> Result<(), Denial> {
        self.sets.iter().try_for_each(|r| r.check_address(ip, port))
    }

    /// Whether any set blocks host names (`blockedHosts` under allow-all egress).
    pub fn blocks_names(&self) -> bool {
        self.sets.iter().any(|r| !r.denied_names.is_empty())
    }

    /// Whether any set blocks `name`.
    pub fn name_denied(&self, name: &str) -> bool {
        self.sets.iter().any(|r| r.name_denied(name))
    }
}

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
    ) -> Result<(&Source, &SandboxRules), Denial> {
        if !self.synced {
            return Err(Denial::NotSynced);
        }
        let uid = credential.ok_or(Denial::Unauthenticated)?;
        let from = self
            .by_ip
            .get(&canonical(source))
            .ok_or(Denial::UnknownSource)?;
        if from.credential != uid {
            return Err(Denial::WrongSandbox);
        }
        match self.rules.get(&from.sandbox_uid).map(|r| r.as_ref()) {
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

/// A policy's compiled rules, or why it does not compile.
type Compiled = Result<Arc<GatewayRules>, String>;

/// Compiles policies once per resource version, and remembers, per sandbox, the rules of the
/// policy version the operator last enforced for it.
#[derive(Default)]
pub struct RulesCache {
    by_policy: HashMap<(String, String), (String, Compiled)>,
    /// Sandbox UID to the version it was last seen enforced at, and its rules.
    agreed: HashMap<String, (PolicyVersion, Arc<GatewayRules>)>,
}

impl RulesCache {
    fn rules(&mut self, policy: &AgentPolicy, ranges: ClusterRanges<'_>) -> Compiled {
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
        let rules = compile(policy, ranges).map(Arc::new);
        self.by_policy.insert(key, (version, rules.clone()));
        rules
    }

    /// The rules of sandbox `uid` under `policy` (compiled as `live`), given the version the
    /// operator says it enforces (`enforced`).
    fn sandbox_rules(
        &mut self,
        uid: &str,
        policy: &AgentPolicy,
        live: Compiled,
        enforced: Option<&PolicyVersion>,
    ) -> Result<SandboxRules, String> {
        let live = live?;
        let (Some(policy_uid), Some(generation)) =
            (&policy.metadata.uid, policy.metadata.generation)
        else {
            return Err("the AgentPolicy has no UID or generation".into());
        };
        let version = PolicyVersion {
            uid: policy_uid.clone(),
            generation,
        };
        if enforced == Some(&version) {
            self.agreed.insert(uid.to_string(), (version, live.clone()));
            return Ok(SandboxRules::new(vec![live]));
        }
        match self.agreed.get(uid) {
            Some((agreed, old)) if Some(agreed) == enforced => {
                Ok(SandboxRules::new(vec![old.clone(), live]))
            }
            _ => Err(format!(
                "the operator has not enforced generation {} of AgentPolicy {}/{} for this sandbox yet",
                version.generation,
                policy.metadata.namespace.as_deref().unwrap_or_default(),
                policy.metadata.name.as_deref().unwrap_or_default()
            )),
        }
    }

    fn retain(&mut self, policies: &[Arc<AgentPolicy>], sandboxes: &[Arc<AgentSandbox>]) {
        let sandboxes: std::collections::HashSet<&str> = sandboxes
            .iter()
            .filter_map(|s| s.metadata.uid.as_deref())
            .collect();
        self.agreed
            .retain(|uid, _| sandboxes.contains(uid.as_str()));
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
    cache.retain(policies, sandboxes);
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
    let mut sandbox_by_uid: HashMap<&str, &Arc<AgentSandbox>> = HashMap::new();
    let mut rules = HashMap::new();
    for s in sandboxes {
        let (Some(ns), Some(_), Some(uid)) = (
            s.metadata.namespace.as_deref(),
            s.metadata.name.as_deref(),
            s.metadata.uid.as_deref(),
        ) else {
            continue;
        };
        sandbox_by_uid.insert(uid, s);
        let enforced = s.status.as_ref().and_then(|st| st.enforced_policy.as_ref());
        let policy_name = s.policy_name();
        let compiled = match policy_by_key.get(&(ns, policy_name.as_str())) {
            Some(p) => {
                let live = cache.rules(p, ranges);
                cache.sandbox_rules(uid, p, live, enforced)
            }
            None => Err(format!("AgentPolicy {ns}/{policy_name} not found")),
        };
        rules.insert(uid.to_string(), Arc::new(compiled));
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
        // The pod's controlling sandbox, by UID, in the pod's namespace; its children carry
        // its name (or the warm sandbox's it took from a pool).
        let Some(sandbox) = sandbox_by_uid.get(owner.uid.as_str()) else {
            continue;
        };
        if !labelled
            || sandbox.metadata.namespace.as_deref() != Some(ns)
            || base_name(sandbox) != name
        {
            continue;
        }
        let Some(credential) = credential_id(sandbox) else {
            continue;
        };
        starting.extend(ips_in_phase(pod, "Pending"));
        for ip in ips_in_phase(pod, "Running") {
            let source = Source {
                namespace: ns.to_string(),
                sandbox: sandbox.metadata.name.clone().unwrap_or_default(),
                sandbox_uid: owner.uid.clone(),
                credential: credential.to_string(),
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
    use crate::gateway::host::Host;
    use serde_json::json;

    fn sandbox(ns: &str, name: &str, uid: &str, policy: &str) -> Arc<AgentSandbox> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox",
                "metadata": {"namespace": ns, "name": name, "uid": uid},
                "spec": {"policyRef": {"name": policy}, "image": "registry.example.com/agent:1"},
                "status": {"enforcedPolicy": {"uid": format!("p-{policy}"), "generation": 1}}
            }))
            .unwrap(),
        )
    }

    fn versioned(ns: &str, name: &str, generation: i64, fqdns: &[&str]) -> Arc<AgentPolicy> {
        let to: Vec<_> = fqdns.iter().map(|f| json!({"fqdn": f})).collect();
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "palisade.dev/v1alpha1", "kind": "AgentPolicy",
                "metadata": {"namespace": ns, "name": name, "uid": format!("p-{name}"),
                    "resourceVersion": format!("{generation}"), "generation": generation},
                "spec": {"network": {"egress": {"allow": [{"to": to, "ports": [{"port": 443}]}]}}}
            }))
            .unwrap(),
        )
    }

    fn enforcing(sandbox: &Arc<AgentSandbox>, generation: Option<i64>) -> Arc<AgentSandbox> {
        let mut s = (**sandbox).clone();
        s.status = generation.map(|g| crate::api::AgentSandboxStatus {
            enforced_policy: Some(PolicyVersion {
                uid: "p-p1".into(),
                generation: g,
            }),
            ..Default::default()
        });
        Arc::new(s)
    }

    #[test]
    fn a_policy_version_applies_once_the_operator_enforces_it_and_narrowing_at_once() {
        let pods = [Arc::new(pod("a", "s1", "u1", "10.0.0.1", "Running"))];
        let s1 = sandbox("a", "s1", "u1", "p1");
        let name = |n: &str| Host::Name(n.into());
        let mut cache = RulesCache::default();
        let allowed = |d: &Directory, n: &str| {
            d.attribute(ip("10.0.0.1"), Some("u1"))
                .map(|(_, r)| r.check_host(&name(n), 443).is_ok())
        };
        // Generation 1, enforced.
        let v1 = versioned("a", "p1", 1, &["old.example.com", "kept.example.com"]);
        let d = build(
            &pods,
            &[enforcing(&s1, Some(1))],
            &[v1],
            ClusterRanges::default(),
            &mut cache,
        );
        assert_eq!(allowed(&d, "old.example.com"), Ok(true));
        // Generation 2 adds a name and drops one; the operator has not enforced it yet: only
        // what both allow.
        let v2 = versioned("a", "p1", 2, &["new.example.com", "kept.example.com"]);
        let d = build(
            &pods,
            &[enforcing(&s1, Some(1))],
            std::slice::from_ref(&v2),
            ClusterRanges::default(),
            &mut cache,
        );
        assert_eq!(allowed(&d, "kept.example.com"), Ok(true));
        assert_eq!(
            allowed(&d, "old.example.com"),
            Ok(false),
            "the narrowing waits"
        );
        assert_eq!(
            allowed(&d, "new.example.com"),
            Ok(false),
            "the widening did not wait"
        );
        // Enforced: the new name too.
        let d = build(
            &pods,
            &[enforcing(&s1, Some(2))],
            std::slice::from_ref(&v2),
            ClusterRanges::default(),
            &mut cache,
        );
        assert_eq!(allowed(&d, "new.example.com"), Ok(true));
        // A gateway that never saw the enforced version (a restart), or a sandbox the operator
        // enforces nothing for (blocked, being replaced): refused everything.
        let fresh = build(
            &pods,
            &[enforcing(&s1, Some(1))],
            std::slice::from_ref(&v2),
            ClusterRanges::default(),
            &mut RulesCache::default(),
        );
        assert_eq!(
            allowed(&fresh, "kept.example.com").err(),
            Some(Denial::PolicyUnavailable)
        );
        let none = build(
            &pods,
            &[enforcing(&s1, None)],
            &[v2],
            ClusterRanges::default(),
            &mut cache,
        );
        assert_eq!(
            allowed(&none, "kept.example.com").err(),
            Some(Denial::PolicyUnavailable)
        );
    }

    fn policy(ns: &str, name: &str, rv: &str, fqdn: &str) -> Arc<AgentPolicy> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "palisade.dev/v1alpha1", "kind": "AgentPolicy",
                "metadata": {"namespace": ns, "name": name, "uid": format!("p-{name}"), "resourceVersion": rv, "generation": 1},
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
        assert_eq!(
            rules.sets[0].names[0].names,
            vec!["api.example.com".to_string()]
        );
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
        let set = |d: &Directory| match d.rules["u1"].as_ref() {
            Ok(r) => r.sets[0].clone(),
            Err(e) => panic!("{e}"),
        };
        assert!(Arc::ptr_eq(&set(&first), &set(&same)), "compiled again");
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
        assert_eq!(
            rules.sets[0].names[0].names,
            vec!["b.example.com".to_string()]
        );
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
