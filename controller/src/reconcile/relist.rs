//! Children deleted while a watch was down: the relist that follows does not list them again,
//! and no Delete event tells of them (the store just drops them). The sandbox they belonged to
//! and whatever waited for their deletion are woken here, at the end of the relist, instead of
//! at the next resync minutes later.

use std::collections::HashMap;

use kube::ResourceExt;
use kube::runtime::watcher;

use super::ownership::controlling_sandbox;

/// A child no longer there: its namespace and name, and the sandbox that controlled it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gone {
    pub namespace: String,
    pub name: String,
    pub sandbox: Option<String>,
}

type Seen = HashMap<(String, String), Option<String>>;

/// The children a watch has shown (namespace, name → controlling sandbox), following it.
#[derive(Debug, Default)]
pub struct RelistGone {
    live: Seen,
    relist: Option<Seen>,
}

impl RelistGone {
    /// Follows one event; at the end of a relist, the children it did not list again.
    pub fn apply<K: kube::Resource<DynamicType = ()>>(
        &mut self,
        event: &watcher::Event<K>,
    ) -> Vec<Gone> {
        let key = |o: &K| (o.namespace().unwrap_or_default(), o.name_any());
        let owner = |o: &K| controlling_sandbox(o.meta()).map(|r| r.name.clone());
        match event {
            watcher::Event::Apply(o) => {
                self.live.insert(key(o), owner(o));
            }
            watcher::Event::Delete(o) => {
                self.live.remove(&key(o));
            }
            watcher::Event::Init => self.relist = Some(Seen::new()),
            watcher::Event::InitApply(o) => {
                if let Some(relist) = self.relist.as_mut() {
                    relist.insert(key(o), owner(o));
                }
            }
            watcher::Event::InitDone => {
                if let Some(relist) = self.relist.take() {
                    let before = std::mem::replace(&mut self.live, relist);
                    return before
                        .into_iter()
                        .filter(|(k, _)| !self.live.contains_key(k))
                        .map(|((namespace, name), sandbox)| Gone {
                            namespace,
                            name,
                            sandbox,
                        })
                        .collect();
                }
            }
        }
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    fn pod(name: &str, owner: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns",
                "ownerReferences": [{"apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox",
                    "name": owner, "uid": "u", "controller": true}]}
        }))
        .expect("pod")
    }

    #[test]
    fn a_relist_reports_the_children_deleted_while_the_watch_was_down() {
        let mut seen = RelistGone::default();
        assert!(
            seen.apply(&watcher::Event::Apply(pod("a", "sa")))
                .is_empty()
        );
        assert!(
            seen.apply(&watcher::Event::Apply(pod("b", "sb")))
                .is_empty()
        );
        assert!(
            seen.apply(&watcher::Event::Apply(pod("c", "sc")))
                .is_empty()
        );
        // c's deletion was seen: not reported again.
        assert!(
            seen.apply(&watcher::Event::Delete(pod("c", "sc")))
                .is_empty()
        );
        seen.apply(&watcher::Event::<Pod>::Init);
        seen.apply(&watcher::Event::InitApply(pod("a", "sa")));
        seen.apply(&watcher::Event::InitApply(pod("d", "sd")));
        let gone = seen.apply(&watcher::Event::<Pod>::InitDone);
        assert_eq!(
            gone,
            vec![Gone {
                namespace: "ns".into(),
                name: "b".into(),
                sandbox: Some("sb".into())
            }]
        );
        // The next relist starts from what this one listed.
        seen.apply(&watcher::Event::<Pod>::Init);
        seen.apply(&watcher::Event::InitApply(pod("a", "sa")));
        let gone = seen.apply(&watcher::Event::<Pod>::InitDone);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].name, "d");
    }
}
