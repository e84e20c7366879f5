//! The NetworkPolicies that may select a given sandbox's pod, by namespace, without a scan of
//! every NetworkPolicy per pass.
//!
//! A sandbox's isolating NetworkPolicy selects exactly `palisade.dev/sandbox: <sandbox>`; the
//! operator sets that label on the sandbox's pod only (sandboxes may not set `palisade.dev/`
//! labels). So a NetworkPolicy of that shape, named after the sandbox it selects, can select no
//! other sandbox's pod: these are looked up by name. Every other NetworkPolicy (the namespace's
//! own, whatever it selects, and any of that shape under another name) is kept here by
//! namespace and judged on every pass of the sandboxes there. What is skipped is skipped by its
//! selector, never by who seems to own it: labels and owner references can be copied.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::ResourceExt;
use kube::runtime::watcher;

use crate::api::SANDBOX_LABEL;
use crate::render::network::isolation_name;

type ByNamespace = HashMap<String, BTreeMap<String, Arc<NetworkPolicy>>>;

/// The NetworkPolicies that are not a sandbox's isolating one, by namespace and name.
#[derive(Debug, Default)]
pub struct OtherNetworkPolicies {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    live: ByNamespace,
    /// A relist in progress: swapped in when it is complete, as the store does.
    relist: Option<ByNamespace>,
}

/// Whether `np` has the isolating shape: named `<sandbox>-isolation` and selecting exactly
/// `palisade.dev/sandbox: <sandbox>`, so that it selects that sandbox's pod and no other.
pub fn isolating_shape(np: &NetworkPolicy) -> bool {
    let Some(selector) = np.spec.as_ref().and_then(|s| s.pod_selector.as_ref()) else {
        return false;
    };
    if selector
        .match_expressions
        .as_ref()
        .is_some_and(|e| !e.is_empty())
    {
        return false;
    }
    let Some(labels) = &selector.match_labels else {
        return false;
    };
    match (labels.len(), labels.get(SANDBOX_LABEL)) {
        (1, Some(sandbox)) => isolation_name(sandbox) == np.name_any(),
        _ => false,
    }
}

fn put(map: &mut ByNamespace, np: &NetworkPolicy) {
    let ns = np.namespace().unwrap_or_default();
    let name = np.name_any();
    if isolating_shape(np) {
        remove(map, &ns, &name);
    } else {
        map.entry(ns)
            .or_default()
            .insert(name, Arc::new(np.clone()));
    }
}

fn remove(map: &mut ByNamespace, ns: &str, name: &str) {
    if let Some(names) = map.get_mut(ns) {
        names.remove(name);
        if names.is_empty() {
            map.remove(ns);
        }
    }
}

impl OtherNetworkPolicies {
    /// Follows the NetworkPolicy watch, as its store does.
    pub fn apply_event(&self, event: &watcher::Event<NetworkPolicy>) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        match event {
            watcher::Event::Apply(np) => put(&mut inner.live, np),
            watcher::Event::Delete(np) => remove(
                &mut inner.live,
                &np.namespace().unwrap_or_default(),
                &np.name_any(),
            ),
            watcher::Event::Init => inner.relist = Some(ByNamespace::new()),
            watcher::Event::InitApply(np) => {
                if let Some(relist) = inner.relist.as_mut() {
                    put(relist, np);
                }
            }
            watcher::Event::InitDone => {
                if let Some(relist) = inner.relist.take() {
                    inner.live = relist;
                }
            }
        }
    }

    /// The NetworkPolicies of `namespace` that are not of the isolating shape.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<NetworkPolicy>> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner
            .live
            .get(namespace)
            .map(|names| names.values().cloned().collect())
            .unwrap_or_default()
    }

    /// An index of `nps` (for tests and fixtures).
    pub fn of(nps: &[NetworkPolicy]) -> Self {
        let index = Self::default();
        index.apply_event(&watcher::Event::Init);
        for np in nps {
            index.apply_event(&watcher::Event::InitApply(np.clone()));
        }
        index.apply_event(&watcher::Event::InitDone);
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn np(ns: &str, name: &str, selector: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"podSelector": selector}
        }))
        .expect("np")
    }

    fn names(index: &OtherNetworkPolicies, ns: &str) -> Vec<String> {
        index
            .in_namespace(ns)
            .iter()
            .map(|n| n.name_any())
            .collect()
    }

    #[test]
    fn only_a_policy_selecting_exactly_the_sandbox_of_its_name_is_left_out() {
        let own = np(
            "a",
            "s-isolation",
            json!({"matchLabels": {SANDBOX_LABEL: "s"}}),
        );
        assert!(isolating_shape(&own));
        let cases = [
            // The shape under another name may select a sandbox that is not its namesake.
            np("a", "copy", json!({"matchLabels": {SANDBOX_LABEL: "s"}})),
            np(
                "a",
                "t-isolation",
                json!({"matchLabels": {SANDBOX_LABEL: "s"}}),
            ),
            np("a", "all", json!({})),
            np(
                "a",
                "u-isolation",
                json!({"matchLabels": {SANDBOX_LABEL: "u"},
                "matchExpressions": [{"key": "x", "operator": "Exists"}]}),
            ),
            np(
                "a",
                "v-isolation",
                json!({"matchLabels": {SANDBOX_LABEL: "v", "team": "x"}}),
            ),
        ];
        for c in &cases {
            assert!(!isolating_shape(c), "{}", c.name_any());
        }
        let mut all = vec![own];
        all.extend(cases);
        let index = OtherNetworkPolicies::of(&all);
        assert_eq!(
            names(&index, "a"),
            ["all", "copy", "t-isolation", "u-isolation", "v-isolation"]
        );
        assert!(index.in_namespace("b").is_empty());
    }

    #[test]
    fn it_follows_changes_deletions_and_relists() {
        let index = OtherNetworkPolicies::of(&[np("a", "x", json!({}))]);
        // Edited into the isolating shape: out; edited back: in.
        let shaped = np(
            "a",
            "x-isolation",
            json!({"matchLabels": {SANDBOX_LABEL: "x"}}),
        );
        index.apply_event(&watcher::Event::Apply(shaped.clone()));
        let mut widened = shaped.clone();
        widened.spec.as_mut().expect("spec").pod_selector = Some(Default::default());
        index.apply_event(&watcher::Event::Apply(widened.clone()));
        assert_eq!(names(&index, "a"), ["x", "x-isolation"]);
        index.apply_event(&watcher::Event::Apply(shaped));
        assert_eq!(names(&index, "a"), ["x"]);
        index.apply_event(&watcher::Event::Delete(np("a", "x", json!({}))));
        assert!(index.in_namespace("a").is_empty());
        // A relist replaces everything once complete, not before.
        index.apply_event(&watcher::Event::Apply(np("a", "old", json!({}))));
        index.apply_event(&watcher::Event::Init);
        index.apply_event(&watcher::Event::InitApply(np("a", "new", json!({}))));
        assert_eq!(names(&index, "a"), ["old"]);
        index.apply_event(&watcher::Event::InitDone);
        assert_eq!(names(&index, "a"), ["new"]);
    }
}
