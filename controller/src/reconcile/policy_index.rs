//! Which sandboxes use which policy, kept from the sandbox watch: a policy's sandbox count and
//! the sandboxes a policy change concerns, without a scan of every sandbox. The policy pass
//! runs for each sandbox that comes or goes, so a scan there made a burst of N sandboxes cost
//! N² steps.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use crate::api::AgentSandbox;

/// (namespace, policy name).
type PolicyKey = (String, String);

#[derive(Debug, Default)]
struct Index {
    /// Each sandbox (by UID, else namespace/name) and the policy it was filed under, with its
    /// name.
    filed: HashMap<String, (PolicyKey, String)>,
    /// Each policy's sandboxes: name → the key they were filed under (a sandbox of the same
    /// name but another UID never removes another's entry).
    by_policy: HashMap<PolicyKey, BTreeMap<String, String>>,
}

impl Index {
    fn key(s: &AgentSandbox) -> String {
        s.uid()
            .unwrap_or_else(|| format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()))
    }

    /// Files `s`; the policy it was filed under before, if another.
    fn put(&mut self, s: &AgentSandbox) -> Option<PolicyKey> {
        let before = self.remove(s);
        let policy = (s.namespace().unwrap_or_default(), s.policy_name());
        self.by_policy
            .entry(policy.clone())
            .or_default()
            .insert(s.name_any(), Self::key(s));
        self.filed
            .insert(Self::key(s), (policy.clone(), s.name_any()));
        before.filter(|b| *b != policy)
    }

    /// Unfiles `s`; the policy it was filed under.
    fn remove(&mut self, s: &AgentSandbox) -> Option<PolicyKey> {
        let key = Self::key(s);
        let (policy, name) = self.filed.remove(&key)?;
        if let Some(names) = self.by_policy.get_mut(&policy) {
            if names.get(&name) == Some(&key) {
                names.remove(&name);
            }
            if names.is_empty() {
                self.by_policy.remove(&policy);
            }
        }
        Some(policy)
    }
}

/// The sandboxes of each policy, following the sandbox watch as its store does.
#[derive(Debug, Default)]
pub struct SandboxesByPolicy {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    live: Index,
    /// A relist in progress: swapped in when it is complete, as the store does.
    relist: Option<Index>,
}

impl SandboxesByPolicy {
    /// Follows the sandbox watch. Returns the policies (namespace, name) that lost a sandbox:
    /// deleted, moved to another policy, or not listed again by a relist. Their count changed,
    /// and no event of theirs says so.
    pub fn apply_event(&self, event: &watcher::Event<AgentSandbox>) -> Vec<(String, String)> {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        match event {
            watcher::Event::Apply(s) => inner.live.put(s).into_iter().collect(),
            watcher::Event::Delete(s) => inner.live.remove(s).into_iter().collect(),
            watcher::Event::Init => {
                inner.relist = Some(Index::default());
                Vec::new()
            }
            watcher::Event::InitApply(s) => {
                if let Some(relist) = inner.relist.as_mut() {
                    relist.put(s);
                }
                Vec::new()
            }
            watcher::Event::InitDone => {
                let Some(relist) = inner.relist.take() else {
                    return Vec::new();
                };
                let before = std::mem::replace(&mut inner.live, relist);
                // Every policy whose set of sandboxes changed.
                before
                    .by_policy
                    .into_iter()
                    .filter(|(policy, names)| inner.live.by_policy.get(policy) != Some(names))
                    .map(|(policy, _)| policy)
                    .collect()
            }
        }
    }

    /// How many sandboxes use policy `namespace/name` (those being deleted included).
    pub fn count(&self, namespace: &str, name: &str) -> usize {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner
            .live
            .by_policy
            .get(&(namespace.to_string(), name.to_string()))
            .map_or(0, BTreeMap::len)
    }

    /// The sandboxes that use policy `namespace/name`.
    pub fn sandboxes(&self, namespace: &str, name: &str) -> Vec<ObjectRef<AgentSandbox>> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner
            .live
            .by_policy
            .get(&(namespace.to_string(), name.to_string()))
            .map(|names| {
                names
                    .keys()
                    .map(|n| ObjectRef::new(n).within(namespace))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// An index of `sandboxes` (for tests and fixtures).
    pub fn of(sandboxes: &[AgentSandbox]) -> Self {
        let index = Self::default();
        index.apply_event(&watcher::Event::Init);
        for s in sandboxes {
            index.apply_event(&watcher::Event::InitApply(s.clone()));
        }
        index.apply_event(&watcher::Event::InitDone);
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sandbox(ns: &str, name: &str, uid: &str, spec: serde_json::Value) -> AgentSandbox {
        serde_json::from_value(json!({
            "apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox",
            "metadata": {"name": name, "namespace": ns, "uid": uid},
            "spec": spec,
        }))
        .expect("sandbox")
    }

    fn uses(policy: &str) -> serde_json::Value {
        json!({"policyRef": {"name": policy}, "image": "i"})
    }

    #[test]
    fn counts_follow_changes_deletions_and_relists() {
        let index = SandboxesByPolicy::of(&[
            sandbox("a", "s1", "u1", uses("p")),
            sandbox("a", "s2", "u2", uses("p")),
            sandbox("b", "s3", "u3", uses("p")),
        ]);
        assert_eq!((index.count("a", "p"), index.count("b", "p")), (2, 1));
        assert_eq!(index.count("a", "q"), 0);
        // Applied again unchanged: counted once.
        index.apply_event(&watcher::Event::Apply(sandbox("a", "s1", "u1", uses("p"))));
        assert_eq!(index.count("a", "p"), 2);
        // Moved to another policy: the one it left is told.
        let left = index.apply_event(&watcher::Event::Apply(sandbox("a", "s1", "u1", uses("q"))));
        assert_eq!(left, vec![("a".to_string(), "p".to_string())]);
        assert_eq!((index.count("a", "p"), index.count("a", "q")), (1, 1));
        let left = index.apply_event(&watcher::Event::Delete(sandbox("a", "s2", "u2", uses("p"))));
        assert_eq!(left, vec![("a".to_string(), "p".to_string())]);
        assert_eq!(index.count("a", "p"), 0);
        // A new sandbox of the same name (another UID) is not removed by the old one's deletion.
        index.apply_event(&watcher::Event::Apply(sandbox("a", "s9", "old", uses("q"))));
        index.apply_event(&watcher::Event::Apply(sandbox("a", "s9", "new", uses("q"))));
        index.apply_event(&watcher::Event::Delete(sandbox(
            "a",
            "s9",
            "old",
            uses("q"),
        )));
        assert_eq!(index.count("a", "q"), 2);
        index.apply_event(&watcher::Event::Delete(sandbox(
            "a",
            "s9",
            "new",
            uses("q"),
        )));
        assert_eq!(index.count("a", "q"), 1);
        assert_eq!(
            index.sandboxes("a", "q"),
            vec![ObjectRef::<AgentSandbox>::new("s1").within("a")]
        );
        // A relist replaces everything once complete; until then the old view holds.
        index.apply_event(&watcher::Event::Init);
        index.apply_event(&watcher::Event::InitApply(sandbox(
            "b",
            "s4",
            "u4",
            uses("p"),
        )));
        assert_eq!(index.count("a", "q"), 1);
        let mut changed = index.apply_event(&watcher::Event::InitDone);
        changed.sort();
        // a/q lost s1, b/p lost s3 (and gained s4).
        assert_eq!(
            changed,
            vec![
                ("a".to_string(), "q".to_string()),
                ("b".to_string(), "p".to_string())
            ]
        );
        assert_eq!((index.count("a", "q"), index.count("b", "p")), (0, 1));
        assert!(index.sandboxes("b", "p")[0].name == "s4");
    }

    #[test]
    fn a_sandbox_of_a_pool_counts_under_its_templates_policy_once_it_started() {
        let mut s = sandbox("a", "s", "u", json!({"poolRef": {"name": "pool"}}));
        let index = SandboxesByPolicy::of(std::slice::from_ref(&s));
        assert_eq!(index.count("a", ""), 1, "no policy until it starts");
        s.status = Some(
            serde_json::from_value(json!({"pool": {"name": "pool", "start": "Cold",
                "templateHash": "h", "template": uses("p")}}))
            .expect("status"),
        );
        index.apply_event(&watcher::Event::Apply(s));
        assert_eq!((index.count("a", ""), index.count("a", "p")), (0, 1));
    }
}
