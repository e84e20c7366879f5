//! Releasing an isolating NetworkPolicy that is being deleted: its finalizer holds the object,
//! and with it the enforcement, until the pod it isolates is gone. Whether the sandbox deleted
//! it (garbage collection) or someone else did, the pod never outlives its NetworkPolicy.
//!
//! Ownership is read from UIDs, never from labels or names: the NetworkPolicy must be the
//! controlling sandbox's `<sandbox>-isolation`, and the pod removed is that sandbox's pod that
//! was created behind this very NetworkPolicy (its UID in the pod's annotation), deleted with
//! a UID precondition. A forged NetworkPolicy (another's owner reference, our finalizer) only
//! gets its finalizer released.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::api::NETWORK_POLICY_UID_ANNOTATION;
use crate::render::network::{ISOLATION_FINALIZER, ISOLATION_SUFFIX, isolation_name};

use super::children::delete_precisely;
use super::ownership::{controlled_by, controlling_sandbox};
use super::{Ctx, Error};

/// The pod (name, UID) an isolating NetworkPolicy holds back, if any: the pod of its
/// controlling sandbox, controlled by that sandbox, and bound to this NetworkPolicy's UID
/// (pods from before the binding annotation count as bound).
pub fn isolated_pod(np: &NetworkPolicy, pod: Option<&Pod>) -> Option<(String, String)> {
    let owner = controlling_sandbox(&np.metadata)?;
    let pod_name = isolated_pod_name(np)?;
    let pod = pod?;
    if pod.name_any() != pod_name {
        return None;
    }
    let bound = pod.annotations().get(NETWORK_POLICY_UID_ANNOTATION);
    let held = match bound {
        // Created behind this very NetworkPolicy: held whoever controls it now (a sandbox
        // that took a warm sandbox moves the two one after the other).
        Some(b) => Some(b) == np.uid().as_ref(),
        // From before the binding annotation: the pod of the same sandbox, of its own name.
        None => pod_name == owner.name && controlled_by(&pod.metadata, &owner.uid),
    };
    if !held {
        return None;
    }
    Some((pod.name_any(), pod.uid()?))
}

/// The name of the pod an isolating NetworkPolicy (`<name>-isolation`) isolates.
pub fn isolated_pod_name(np: &NetworkPolicy) -> Option<String> {
    let name = np.name_any();
    let pod = name.strip_suffix(ISOLATION_SUFFIX)?;
    (isolation_name(pod) == name).then(|| pod.to_string())
}

pub async fn reconcile(np: Arc<NetworkPolicy>, ctx: Ctx) -> Result<Action, Error> {
    let _timer = ctx.metrics.observe_reconcile("isolation");
    if np.meta().deletion_timestamp.is_none()
        || !np.finalizers().iter().any(|f| f == ISOLATION_FINALIZER)
    {
        return Ok(Action::await_change());
    }
    let ns = np.namespace().ok_or(Error::Missing("namespace"))?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pod_name = match (controlling_sandbox(&np.metadata), isolated_pod_name(&np)) {
        (Some(_), Some(name)) => Some(name),
        _ => None,
    };
    // The pod cache first: while it holds the pod, no request is needed to know it is there,
    // and its watch wakes this controller when the pod is gone (`pod_gone`). Only the live
    // object may release the finalizer: the cache can lag behind a newer pod, and a pod whose
    // labels were changed is not in it.
    let cached = pod_name.as_ref().and_then(|name| {
        ctx.caches
            .pods
            .get(&ObjectRef::new(name).within(&ns))
            .map(|p| (*p).clone())
    });
    let (pod, live) = match (cached, &pod_name) {
        (Some(p), _) => (Some(p), false),
        (None, Some(name)) => (pods.get_opt(name).await?, true),
        (None, None) => (None, true),
    };
    if remove_held(&np, pod.as_ref(), &pods).await? {
        return Ok(Action::requeue(if live {
            POLL_UNCACHED
        } else {
            POLL_CACHED
        }));
    }
    if !live && let Some(name) = &pod_name {
        // The cache shows no pod this NetworkPolicy holds: confirmed on the live object.
        let pod = pods.get_opt(name).await?;
        if remove_held(&np, pod.as_ref(), &pods).await? {
            return Ok(Action::requeue(POLL_UNCACHED));
        }
    }
    release(&ctx, &np, &ns).await
}

/// Whether `pod` is the one `np` holds back; if so and it is still running, it is deleted
/// (UID precondition).
async fn remove_held(
    np: &NetworkPolicy,
    pod: Option<&Pod>,
    pods: &Api<Pod>,
) -> Result<bool, Error> {
    let Some((name, uid)) = isolated_pod(np, pod) else {
        return Ok(false);
    };
    if pod.is_some_and(|p| p.metadata.deletion_timestamp.is_none()) {
        tracing::info!(namespace = ?np.namespace(), pod = %name, "isolating NetworkPolicy is being deleted: removing its pod first");
        delete_precisely(pods, &name, &uid).await?;
    }
    Ok(true)
}

/// How often a held pod is looked at again while it terminates: one the pod cache holds wakes
/// the controller when it is gone (this is a fallback); one outside the cache is polled.
const POLL_CACHED: Duration = Duration::from_secs(30);
const POLL_UNCACHED: Duration = Duration::from_secs(1);

/// The isolating NetworkPolicy that may be waiting for a deleted pod: the one of its name.
pub fn pod_gone(pod: &Pod) -> Option<ObjectRef<NetworkPolicy>> {
    Some(ObjectRef::new(&isolation_name(&pod.name_any())).within(&pod.namespace()?))
}

async fn release(ctx: &Ctx, np: &NetworkPolicy, ns: &str) -> Result<Action, Error> {
    let remaining: Vec<String> = np
        .finalizers()
        .iter()
        .filter(|f| *f != ISOLATION_FINALIZER)
        .cloned()
        .collect();
    let api: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), ns);
    let patch = json!({"metadata": {"finalizers": remaining, "resourceVersion": np.resource_version(), "uid": np.uid()}});
    api.patch(
        &np.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(Action::await_change())
}

pub fn error_policy(np: Arc<NetworkPolicy>, error: &Error, ctx: Ctx) -> Action {
    ctx.metrics.reconcile_error("isolation", error.label());
    tracing::warn!(%error, "isolation release failed");
    let key = np.uid().unwrap_or_else(|| np.name_any());
    Action::requeue(ctx.backoff.failed(&key).min(Duration::from_secs(10)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn np(name: &str, uid: &str, owner: &str, owner_uid: &str) -> NetworkPolicy {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": uid,
                "finalizers": [ISOLATION_FINALIZER], "deletionTimestamp": "2026-01-01T00:00:00Z",
                "ownerReferences": [{"apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox",
                    "name": owner, "uid": owner_uid, "controller": true}]},
            "spec": {"podSelector": {}}
        }))
        .unwrap()
    }

    fn pod(name: &str, owner_uid: &str, bound: Option<&str>) -> Pod {
        let mut annotations = serde_json::Map::new();
        if let Some(b) = bound {
            annotations.insert(NETWORK_POLICY_UID_ANNOTATION.into(), json!(b));
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": "pod-uid", "annotations": annotations,
                "ownerReferences": [{"apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox",
                    "name": name, "uid": owner_uid, "controller": true}]}
        }))
        .unwrap()
    }

    #[test]
    fn only_the_pod_bound_to_this_network_policy_is_held() {
        let real = np("a-isolation", "np-1", "a", "sb-a");
        let p = pod("a", "sb-a", Some("np-1"));
        assert_eq!(
            isolated_pod(&real, Some(&p)),
            Some(("a".into(), "pod-uid".into()))
        );
        assert_eq!(isolated_pod(&real, None), None);
        // Pods created before the binding annotation are held too.
        assert!(isolated_pod(&real, Some(&pod("a", "sb-a", None))).is_some());
        // A pod bound to another NetworkPolicy (a recreated one) is not this one's to remove.
        assert_eq!(
            isolated_pod(&real, Some(&pod("a", "sb-a", Some("np-0")))),
            None
        );
    }

    #[test]
    fn a_forged_network_policy_removes_no_pod() {
        let victim = pod("a", "sb-a", Some("np-1"));
        // The victim's owner reference and our finalizer, under another name.
        assert_eq!(
            isolated_pod(&np("forged", "np-9", "a", "sb-a"), Some(&victim)),
            None
        );
        // Under the right name (the real one is gone), but not the NetworkPolicy the pod was bound to.
        assert_eq!(
            isolated_pod(&np("a-isolation", "np-9", "a", "sb-a"), Some(&victim)),
            None
        );
        // Owner UID of another sandbox of the same name, and not the NetworkPolicy it was bound
        // to (a NetworkPolicy's UID is the server's: a forged one never has the real one's).
        assert_eq!(
            isolated_pod(&np("a-isolation", "np-8", "a", "sb-other"), Some(&victim)),
            None
        );
        // An unbound pod of the same name under another owner.
        assert_eq!(
            isolated_pod(
                &np("a-isolation", "np-8", "a", "sb-other"),
                Some(&pod("a", "sb-a", None))
            ),
            None
        );
    }

    #[test]
    fn a_sandbox_that_took_a_warm_sandbox_holds_the_pod_bound_to_its_network_policy() {
        // Sandbox "task" (sb-t) took warm sandbox "pool-x1": its children keep that name.
        let moved = np("pool-x1-isolation", "np-1", "task", "sb-t");
        let p = pod("pool-x1", "sb-t", Some("np-1"));
        assert_eq!(
            isolated_pod(&moved, Some(&p)),
            Some(("pool-x1".into(), "pod-uid".into()))
        );
        // Halfway through the move (the pod still the warm sandbox's): held all the same.
        assert!(isolated_pod(&moved, Some(&pod("pool-x1", "sb-w", Some("np-1")))).is_some());
        // Unbound under another name than the owner's, or bound to another NetworkPolicy: not held.
        assert_eq!(
            isolated_pod(&moved, Some(&pod("pool-x1", "sb-t", None))),
            None
        );
        assert_eq!(
            isolated_pod(&moved, Some(&pod("pool-x1", "sb-t", Some("np-0")))),
            None
        );
        // A pod of another name than the NetworkPolicy's.
        assert_eq!(
            isolated_pod(&moved, Some(&pod("task", "sb-t", Some("np-1")))),
            None
        );
        assert_eq!(isolated_pod_name(&np("forged", "np-9", "a", "sb-a")), None);
    }
}
