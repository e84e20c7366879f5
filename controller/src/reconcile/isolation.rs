//! Releasing an isolation NetworkPolicy that is being deleted: its finalizer holds the object,
//! and with it the enforcement, until the pod it isolates is gone. Whether the sandbox deleted
//! it (garbage collection) or someone else did, the pod never outlives its NetworkPolicy.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::render::network::ISOLATION_FINALIZER;

use super::{Ctx, Error};

pub async fn reconcile(np: Arc<NetworkPolicy>, ctx: Ctx) -> Result<Action, Error> {
    let _timer = ctx.metrics.observe_reconcile("isolation");
    if np.meta().deletion_timestamp.is_none()
        || !np.finalizers().iter().any(|f| f == ISOLATION_FINALIZER)
    {
        return Ok(Action::await_change());
    }
    let ns = np.namespace().ok_or(Error::Missing("namespace"))?;
    let Some(owner) = np
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .cloned()
    else {
        return release(&ctx, &np, &ns).await;
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(pod) = pods.get_opt(&owner.name).await?
        && pod.owner_references().iter().any(|o| o.uid == owner.uid)
    {
        if pod.metadata.deletion_timestamp.is_none() {
            tracing::info!(namespace = %ns, pod = %owner.name, "isolation NetworkPolicy is being deleted: removing its pod first");
            pods.delete(&owner.name, &DeleteParams::default()).await?;
        }
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    release(&ctx, &np, &ns).await
}

async fn release(ctx: &Ctx, np: &NetworkPolicy, ns: &str) -> Result<Action, Error> {
    let remaining: Vec<String> = np
        .finalizers()
        .iter()
        .filter(|f| *f != ISOLATION_FINALIZER)
        .cloned()
        .collect();
    let api: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), ns);
    let patch =
        json!({"metadata": {"finalizers": remaining, "resourceVersion": np.resource_version()}});
    api.patch(
        &np.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(Action::await_change())
}

pub fn error_policy(_np: Arc<NetworkPolicy>, error: &Error, ctx: Ctx) -> Action {
    ctx.metrics.reconcile_error("isolation", error.label());
    tracing::warn!(%error, "isolation release failed");
    Action::requeue(Duration::from_secs(2))
}
