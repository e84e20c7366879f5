//! Watches that survive objects which no longer deserialize (written for a newer schema, say):
//! the stream is read as untyped objects, and one that does not convert is logged and passed on
//! as deleted (a placeholder with its metadata), so no cache keeps a stale copy of it: a reader
//! finds it absent and confirms what it is by reading it directly.

use futures::{Stream, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::ObjectMeta;
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

/// A stand-in for an object that does not convert: only its metadata, enough to remove it from
/// a cache and to trigger what depends on it.
pub trait Placeholder {
    fn placeholder(metadata: ObjectMeta) -> Self;
}

impl Placeholder for crate::api::AgentPolicy {
    fn placeholder(metadata: ObjectMeta) -> Self {
        Self {
            metadata,
            spec: Default::default(),
            status: None,
        }
    }
}

impl Placeholder for crate::api::AgentSandboxPool {
    fn placeholder(metadata: ObjectMeta) -> Self {
        Self {
            metadata,
            spec: Default::default(),
            status: None,
        }
    }
}

impl Placeholder for crate::api::AgentSandbox {
    fn placeholder(metadata: ObjectMeta) -> Self {
        Self {
            metadata,
            spec: Default::default(),
            status: None,
        }
    }
}

/// A watch of `K` (namespace-scoped when `namespace` is given) yielding typed events; an
/// object that fails to deserialize is logged and yielded as deleted.
pub fn watch<K>(
    client: Client,
    namespace: Option<&str>,
    config: watcher::Config,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Placeholder + Clone + Send + 'static,
{
    let ar = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client, ns, &ar),
        None => Api::all_with(client, &ar),
    };
    watcher::watcher(api, config)
        .default_backoff()
        .filter_map(|event| async move { typed(event) })
}

/// One event of an untyped watch as an event of `K`; see [`watch`].
fn typed<K, E>(event: Result<Event<DynamicObject>, E>) -> Option<Result<Event<K>, E>>
where
    K: DeserializeOwned + Placeholder,
{
    match event {
        Err(e) => Some(Err(e)),
        Ok(Event::Apply(o)) => {
            let meta = o.metadata.clone();
            Some(Ok(match convert(o) {
                Some(k) => Event::Apply(k),
                None => Event::Delete(K::placeholder(meta)),
            }))
        }
        Ok(Event::Delete(o)) => {
            let meta = o.metadata.clone();
            Some(Ok(Event::Delete(
                convert(o).unwrap_or_else(|| K::placeholder(meta)),
            )))
        }
        Ok(Event::InitApply(o)) => convert(o).map(|k| Ok(Event::InitApply(k))),
        Ok(Event::Init) => Some(Ok(Event::Init)),
        Ok(Event::InitDone) => Some(Ok(Event::InitDone)),
    }
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
        assert!(convert::<AgentSandbox>(broken.clone()).is_none());
        let stand_in = AgentSandbox::placeholder(broken.metadata.clone());
        assert_eq!(stand_in.metadata.name.as_deref(), Some("old"));
    }

    #[tokio::test]
    async fn an_object_that_stops_converting_leaves_the_cache() {
        use futures::StreamExt;
        use kube::runtime::reflector;
        // What the watcher yields: a good policy, then an update it cannot read.
        let readable: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "palisade.dev/v1alpha1", "kind": "AgentPolicy",
            "metadata": {"name": "p", "namespace": "a"}, "spec": {}
        }))
        .unwrap();
        let mut newer = readable.clone();
        newer.data["spec"]["futureField"] = serde_json::json!(true);
        let events = futures::stream::iter(vec![
            Ok(Event::Init),
            Ok(Event::InitApply(readable)),
            Ok(Event::InitDone),
            Ok(Event::Apply(newer)),
        ]);
        let typed = events.filter_map(
            |e: Result<Event<DynamicObject>, watcher::Error>| async move {
                typed::<crate::api::AgentPolicy, _>(e)
            },
        );
        let (store, writer) = reflector::store::<crate::api::AgentPolicy>();
        let seen: Vec<_> = reflector::reflector(writer, typed).collect().await;
        assert_eq!(seen.len(), 4);
        assert!(
            store.is_empty(),
            "a stale copy of the policy stayed in the cache"
        );
    }
}
