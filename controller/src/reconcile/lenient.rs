//! Watches that survive objects which no longer deserialize (written before a schema change,
//! say): the stream is read as untyped objects, and one that does not convert is logged and
//! skipped instead of breaking the watch.

use futures::{Stream, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

fn convert<K: DeserializeOwned>(obj: DynamicObject) -> Option<K> {
    let name = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
    let value = match serde_json::to_value(&obj) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(object = %name, error = %e, "skipping an object that does not serialize");
            return None;
        }
    };
    match serde_path_to_error::deserialize(value) {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::warn!(object = %name, field = %e.path(), error = %e.inner(), "skipping an object that does not match the schema");
            None
        }
    }
}

/// A watch of `K` (namespace-scoped when `namespace` is given) yielding typed events; objects
/// that fail to deserialize are dropped with a warning.
pub fn watch<K>(
    client: Client,
    namespace: Option<&str>,
    config: watcher::Config,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Send + 'static,
{
    let ar = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client, ns, &ar),
        None => Api::all_with(client, &ar),
    };
    watcher::watcher(api, config)
        .default_backoff()
        .filter_map(|event| async move {
            match event {
                Err(e) => Some(Err(e)),
                Ok(Event::Apply(o)) => convert(o).map(|k| Ok(Event::Apply(k))),
                Ok(Event::Delete(o)) => convert(o).map(|k| Ok(Event::Delete(k))),
                Ok(Event::InitApply(o)) => convert(o).map(|k| Ok(Event::InitApply(k))),
                Ok(Event::Init) => Some(Ok(Event::Init)),
                Ok(Event::InitDone) => Some(Ok(Event::InitDone)),
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AgentSandbox;

    #[test]
    fn a_broken_object_is_skipped_and_a_good_one_converts() {
        let good: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox",
            "metadata": {"name": "ok", "namespace": "a"},
            "spec": {"policyRef": {"name": "p"}, "image": "a:1"}
        }))
        .unwrap();
        let broken: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox",
            "metadata": {"name": "old", "namespace": "a"},
            "spec": {"policyRef": "p-as-a-string", "image": "a:1"}
        }))
        .unwrap();
        assert!(convert::<AgentSandbox>(good).is_some());
        assert!(convert::<AgentSandbox>(broken).is_none());
    }
}
