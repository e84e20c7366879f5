//! Applying a sandbox's children: server-side apply under the `palisade` field manager with a
//! controller owner reference, never adopting an object this sandbox does not control, and
//! putting back drift judged on the whole live spec (fields added by others are removed).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

use crate::api::{AgentSandbox, MANAGER, POLICY_HASH_ANNOTATION};

use super::Error;

/// What applying one child found.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// In place, as planned.
    Ok,
    /// Someone else's object holds the name: not touched.
    NameConflict(String),
    /// Ours, but being deleted: it must be gone before it can be recreated.
    Terminating(String),
}

pub fn owner_reference(sandbox: &AgentSandbox) -> Option<OwnerReference> {
    let mut r = sandbox.controller_owner_ref(&())?;
    r.block_owner_deletion = Some(true);
    Some(r)
}

fn api_for(client: &Client, namespace: &str, obj: &Value) -> Api<DynamicObject> {
    let api_version = obj["apiVersion"].as_str().unwrap_or("v1");
    let kind = obj["kind"].as_str().unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = match kind {
        "NetworkPolicy" => "networkpolicies".to_string(),
        "CiliumNetworkPolicy" => "ciliumnetworkpolicies".to_string(),
        "SeccompProfile" => "seccompprofiles".to_string(),
        "PersistentVolumeClaim" => "persistentvolumeclaims".to_string(),
        other => format!("{}s", other.to_lowercase()),
    };
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural);
    Api::namespaced_with(client.clone(), namespace, &ar)
}

fn controlled_by(obj: &DynamicObject, uid: &str) -> bool {
    obj.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// Drops nulls and empty lists and maps, which the API server omits on output.
pub fn normalized(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), normalized(v)))
                .filter(|(_, v)| !matches!(v, Value::Null) && v != &json!([]) && v != &json!({}))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(normalized).collect()),
        other => other.clone(),
    }
}

/// The part of an object whose drift is put back: the whole spec, or the fields a
/// ServiceAccount carries at the top level.
fn judged(kind: &str, v: &Value) -> Option<Value> {
    match kind {
        "ServiceAccount" => Some(normalized(
            &json!({"automountServiceAccountToken": v["automountServiceAccountToken"]}),
        )),
        "NetworkPolicy" | "CiliumNetworkPolicy" | "SeccompProfile" => Some(normalized(&v["spec"])),
        // Services and claims get server-side defaults (cluster IPs, volume names): the applied
        // fields are put back by the apply itself.
        _ => None,
    }
}

/// Applies one child (not the pod). Drift outside the applied fields is removed by replacing
/// the object with the planned one.
pub async fn apply(
    client: &Client,
    sandbox: &AgentSandbox,
    mut desired: Value,
) -> Result<Applied, Error> {
    let namespace = sandbox.namespace().ok_or(Error::Missing("namespace"))?;
    let uid = sandbox.uid().ok_or(Error::Missing("uid"))?;
    let name = desired["metadata"]["name"]
        .as_str()
        .ok_or(Error::Missing("child name"))?
        .to_string();
    let kind = desired["kind"].as_str().unwrap_or_default().to_string();
    let api = api_for(client, &namespace, &desired);
    if let Some(existing) = api.get_opt(&name).await? {
        if !controlled_by(&existing, &uid) {
            return Ok(Applied::NameConflict(format!("{kind} {name}")));
        }
        if existing.metadata.deletion_timestamp.is_some() {
            return Ok(Applied::Terminating(format!("{kind} {name}")));
        }
    }
    desired["metadata"]["ownerReferences"] = serde_json::to_value(vec![
        owner_reference(sandbox).ok_or(Error::Missing("owner reference"))?,
    ])?;
    let live = api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&desired),
        )
        .await?;
    let live_value = serde_json::to_value(&live)?;
    if let Some(want) = judged(&kind, &desired)
        && judged(&kind, &live_value) != Some(want)
    {
        {
            tracing::info!(%kind, %name, "putting back fields added by someone else");
            let mut replacement = desired.clone();
            replacement["metadata"]["resourceVersion"] = json!(live.resource_version());
            let replacement: DynamicObject = serde_json::from_value(replacement)?;
            api.replace(
                &name,
                &PostParams {
                    field_manager: Some(MANAGER.into()),
                    ..Default::default()
                },
                &replacement,
            )
            .await?;
        }
    }
    Ok(Applied::Ok)
}

/// What the live pod is, compared with the plan.
#[derive(Debug)]
pub enum PodState {
    Missing,
    Current(Box<DynamicObject>),
    /// Controlled by this sandbox but not what the plan says (old hash, edited labels, image or
    /// tolerations): it must be replaced.
    Stale,
    NotOurs,
}

/// Compares the live pod with the planned one.
pub async fn pod_state(
    client: &Client,
    sandbox: &AgentSandbox,
    desired: &Value,
) -> Result<PodState, Error> {
    let namespace = sandbox.namespace().ok_or(Error::Missing("namespace"))?;
    let uid = sandbox.uid().ok_or(Error::Missing("uid"))?;
    let name = desired["metadata"]["name"]
        .as_str()
        .ok_or(Error::Missing("pod name"))?;
    let api = api_for(client, &namespace, desired);
    let Some(live) = api.get_opt(name).await? else {
        return Ok(PodState::Missing);
    };
    if !controlled_by(&live, &uid) {
        return Ok(PodState::NotOurs);
    }
    if live.metadata.deletion_timestamp.is_some() {
        return Ok(PodState::Stale);
    }
    let v = serde_json::to_value(&live)?;
    let same_hash = v["metadata"]["annotations"][POLICY_HASH_ANNOTATION]
        == desired["metadata"]["annotations"][POLICY_HASH_ANNOTATION];
    let labels_kept = desired["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, val)| &v["metadata"]["labels"][k] == val);
    let image_kept =
        v["spec"]["containers"][0]["image"] == desired["spec"]["containers"][0]["image"];
    let tolerations_kept = normalized(&v["spec"]["tolerations"])
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| {
            t["key"] != "node.kubernetes.io/not-ready"
                && t["key"] != "node.kubernetes.io/unreachable"
        })
        .all(|t| {
            desired["spec"]["tolerations"]
                .as_array()
                .is_some_and(|d| d.iter().any(|x| normalized(x) == *t))
        });
    if same_hash && labels_kept && image_kept && tolerations_kept {
        Ok(PodState::Current(Box::new(live)))
    } else {
        Ok(PodState::Stale)
    }
}

/// Creates the planned pod with its owner reference.
pub async fn create_pod(
    client: &Client,
    sandbox: &AgentSandbox,
    mut desired: Value,
) -> Result<(), Error> {
    let namespace = sandbox.namespace().ok_or(Error::Missing("namespace"))?;
    desired["metadata"]["ownerReferences"] = serde_json::to_value(vec![
        owner_reference(sandbox).ok_or(Error::Missing("owner reference"))?,
    ])?;
    let name = desired["metadata"]["name"]
        .as_str()
        .ok_or(Error::Missing("pod name"))?
        .to_string();
    let api = api_for(client, &namespace, &desired);
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&desired),
    )
    .await?;
    Ok(())
}

/// Deletes the sandbox's pod if it is there and ours. Returns whether one was found.
pub async fn delete_pod(client: &Client, sandbox: &AgentSandbox) -> Result<bool, Error> {
    let namespace = sandbox.namespace().ok_or(Error::Missing("namespace"))?;
    let uid = sandbox.uid().ok_or(Error::Missing("uid"))?;
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &namespace);
    let name = sandbox.name_any();
    match api.get_opt(&name).await? {
        Some(pod)
            if pod
                .owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && o.uid == uid) =>
        {
            if pod.metadata.deletion_timestamp.is_none() {
                api.delete(&name, &DeleteParams::default()).await?;
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}
