//! Writing a sandbox's children: server-side apply under the `palisade` field manager with a
//! controller owner reference, never adopting an object this sandbox does not control, putting
//! back drift judged on the whole live spec, and deleting only what this sandbox controls (by
//! UID, with a UID precondition).

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
    PostParams, Preconditions,
};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

use crate::api::{AgentSandbox, ISOLATION_GATE, MANAGER, NETWORK_POLICY_UID_ANNOTATION};
use crate::render::children::base_name;

use super::Error;
use super::ownership::controlled_by;

/// What applying one child found.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// In place, as planned; its UID.
    Ok(String),
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

/// The API of `obj`'s kind in `namespace`.
pub fn api_for(client: &Client, namespace: &str, obj: &Value) -> Api<DynamicObject> {
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

/// Annotations others may put on a ServiceAccount without changing what it grants.
const SERVICE_ACCOUNT_ANNOTATIONS_KEPT: &[&str] =
    &["kubectl.kubernetes.io/last-applied-configuration"];

/// The part of an object whose drift is put back, compared whole: the spec of a policy, and
/// what a ServiceAccount grants (token automount, and annotations, which cloud workload
/// identity reads).
fn judged(kind: &str, v: &Value) -> Option<Value> {
    match kind {
        "ServiceAccount" => {
            let mut annotations = v["metadata"]["annotations"].clone();
            if let Some(map) = annotations.as_object_mut() {
                map.retain(|k, _| !SERVICE_ACCOUNT_ANNOTATIONS_KEPT.contains(&k.as_str()));
            }
            Some(normalized(&json!({
                "automountServiceAccountToken": v["automountServiceAccountToken"],
                "annotations": annotations,
            })))
        }
        "NetworkPolicy" | "CiliumNetworkPolicy" | "SeccompProfile" => Some(normalized(&v["spec"])),
        // Services and claims get server-side defaults (cluster IPs, volume names): only the
        // applied fields are compared and put back.
        _ => None,
    }
}

/// Whether `live` holds everything `desired` sets (maps key by key, lists item by item).
pub fn covers(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (_, Value::Null) => true,
        (Value::Object(l), Value::Object(d)) => d
            .iter()
            .all(|(k, dv)| covers(l.get(k).unwrap_or(&Value::Null), dv)),
        (Value::Array(l), Value::Array(d)) => {
            l.len() == d.len() && l.iter().zip(d).all(|(l, d)| covers(l, d))
        }
        (Value::Null, Value::Object(d)) => normalized(&Value::Object(d.clone())) == json!({}),
        (Value::Null, Value::Array(d)) => d.is_empty(),
        (l, d) => l == d,
    }
}

/// Whether a live child (controlled by the sandbox) differs from the planned one.
pub fn differs(desired: &Value, live: &Value) -> bool {
    let kind = desired["kind"].as_str().unwrap_or_default();
    let meta_kept = covers(&live["metadata"]["labels"], &desired["metadata"]["labels"])
        && covers(
            &live["metadata"]["finalizers"]
                .as_array()
                .map(|f| {
                    let wanted = desired["metadata"]["finalizers"].as_array();
                    Value::Array(
                        f.iter()
                            .filter(|x| wanted.is_some_and(|w| w.contains(x)))
                            .cloned()
                            .collect(),
                    )
                })
                .unwrap_or(Value::Null),
            &desired["metadata"]["finalizers"],
        );
    let body_kept = match judged(kind, desired) {
        Some(want) => judged(kind, live) == Some(want),
        None => {
            let mut d = desired.clone();
            let mut l = live.clone();
            for v in [&mut d, &mut l] {
                if let Some(m) = v.as_object_mut() {
                    m.remove("metadata");
                    m.remove("status");
                }
            }
            covers(&l, &d)
                && covers(
                    &live["metadata"]["annotations"],
                    &desired["metadata"]["annotations"],
                )
        }
    };
    !(meta_kept && body_kept)
}

/// Whether the live isolating object (`NetworkPolicy` or `CiliumNetworkPolicy`) may let the pod
/// do something the planned one does not: conservative — only a live object whose rules are
/// all among the planned ones (and which restricts at least the same directions) is known
/// not to be wider.
pub fn may_widen(live: Option<&Value>, desired: &Value) -> bool {
    let kind = desired["kind"].as_str().unwrap_or_default();
    let Some(live) = live else {
        // No NetworkPolicy: nothing is isolated. No Cilium policy: nothing is added.
        return kind == "NetworkPolicy";
    };
    let (l, d) = (normalized(&live["spec"]), normalized(&desired["spec"]));
    let rules_within = |key: &str| {
        let planned = d[key].as_array().cloned().unwrap_or_default();
        l[key]
            .as_array()
            .into_iter()
            .flatten()
            .all(|rule| planned.contains(rule))
    };
    match kind {
        "NetworkPolicy" => {
            let types = |v: &Value| -> Vec<Value> {
                v["policyTypes"].as_array().cloned().unwrap_or_default()
            };
            let restricts_as_much = types(&d).iter().all(|t| types(&l).contains(t));
            !(l["podSelector"] == d["podSelector"]
                && restricts_as_much
                && rules_within("ingress")
                && rules_within("egress"))
        }
        "CiliumNetworkPolicy" => {
            let denies = d["egressDeny"].as_array().cloned().unwrap_or_default();
            let denies_as_much = denies
                .iter()
                .all(|r| l["egressDeny"].as_array().is_some_and(|a| a.contains(r)));
            !(l["endpointSelector"] == d["endpointSelector"]
                && rules_within("egress")
                && rules_within("ingress")
                && denies_as_much)
        }
        _ => true,
    }
}

/// Kinds created with a plain create when the cache does not have them: their drift is put
/// back by replacing the whole object (`judged`), so fields the create set are never left
/// behind by a later apply.
const CREATED_FIRST: &[&str] = &["ServiceAccount", "NetworkPolicy"];

/// Applies one child (not the pod) unless `cached` (the object as the cache holds it) already
/// is what the plan says. Drift outside the applied fields is removed by replacing the object
/// with the planned one.
pub async fn apply(
    client: &Client,
    sandbox: &AgentSandbox,
    mut desired: Value,
    cached: Option<Value>,
) -> Result<Applied, Error> {
    let namespace = sandbox.namespace().ok_or(Error::Missing("namespace"))?;
    let uid = sandbox.uid().ok_or(Error::Missing("uid"))?;
    let name = desired["metadata"]["name"]
        .as_str()
        .ok_or(Error::Missing("child name"))?
        .to_string();
    let kind = desired["kind"].as_str().unwrap_or_default().to_string();
    desired["metadata"]["ownerReferences"] = serde_json::to_value(vec![
        owner_reference(sandbox).ok_or(Error::Missing("owner reference"))?,
    ])?;
    let what = format!("{kind} {name}");
    if let Some(cached) = &cached {
        let meta: kube::core::ObjectMeta =
            serde_json::from_value(cached["metadata"].clone()).unwrap_or_default();
        if controlled_by(&meta, &uid)
            && meta.deletion_timestamp.is_none()
            && !differs(&desired, cached)
        {
            return Ok(Applied::Ok(meta.uid.unwrap_or_default()));
        }
    }
    let api = api_for(client, &namespace, &desired);
    if cached.is_none() && CREATED_FIRST.contains(&kind.as_str()) {
        // Not cached: most likely absent (a new sandbox). Created in one request; one that
        // exists after all (someone else's, or ours not cached yet) is refused by the API
        // server and judged on the live object below, as if it had been cached.
        let object: DynamicObject = serde_json::from_value(desired.clone())?;
        let params = PostParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        match api.create(&params, &object).await {
            Ok(created) => return Ok(Applied::Ok(created.uid().unwrap_or_default())),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    // Cached but different, or there after all: the live object decides.
    if let Some(existing) = api.get_opt(&name).await? {
        if !controlled_by(&existing.metadata, &uid) {
            return Ok(Applied::NameConflict(what));
        }
        if existing.metadata.deletion_timestamp.is_some() {
            return Ok(Applied::Terminating(what));
        }
        if !differs(&desired, &serde_json::to_value(&existing)?) {
            return Ok(Applied::Ok(existing.uid().unwrap_or_default()));
        }
    }
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
        tracing::info!(%kind, %name, "putting back fields added by someone else");
        let mut replacement = desired.clone();
        replacement["metadata"]["resourceVersion"] = json!(live.resource_version());
        replacement["metadata"]["uid"] = json!(live.uid());
        let replacement: DynamicObject = serde_json::from_value(replacement)?;
        let replaced = api
            .replace(
                &name,
                &PostParams {
                    field_manager: Some(MANAGER.into()),
                    ..Default::default()
                },
                &replacement,
            )
            .await?;
        return Ok(Applied::Ok(replaced.uid().unwrap_or_default()));
    }
    Ok(Applied::Ok(live.uid().unwrap_or_default()))
}

/// Deletes the child `name` of `obj`'s kind if this sandbox controls it. Returns whether it was
/// there (and is now being deleted).
pub async fn prune(
    client: &Client,
    sandbox: &AgentSandbox,
    kind_of: &Value,
    name: &str,
) -> Result<bool, Error> {
    let namespace = sandbox.namespace().ok_or(Error::Missing("namespace"))?;
    let uid = sandbox.uid().ok_or(Error::Missing("uid"))?;
    let api = api_for(client, &namespace, kind_of);
    let Some(existing) = api.get_opt(name).await? else {
        return Ok(false);
    };
    if !controlled_by(&existing.metadata, &uid) {
        return Ok(false);
    }
    if existing.metadata.deletion_timestamp.is_none() {
        tracing::info!(kind = %kind_of["kind"], %name, "removing a child the plan no longer has");
        delete_precisely(&api, name, &existing.uid().unwrap_or_default()).await?;
    }
    Ok(true)
}

/// How a pod is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grace {
    /// Its own termination grace period (the agent may save its work).
    Default,
    /// At once: it may be running without its isolation.
    None,
}

/// Deletes `name` only if it is still the object with `uid` (a UID precondition): an object
/// recreated under the same name since it was read is never deleted by mistake. Gone already
/// or replaced is fine.
pub async fn delete_precisely<K>(api: &Api<K>, name: &str, uid: &str) -> Result<(), Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    delete_with(api, name, uid, Grace::Default).await
}

async fn delete_with<K>(api: &Api<K>, name: &str, uid: &str, grace: Grace) -> Result<(), Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        grace_period_seconds: (grace == Grace::None).then_some(0),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Deletes the sandbox's pod `uid`.
pub async fn delete_pod(
    client: &Client,
    sandbox: &AgentSandbox,
    uid: &str,
    grace: Grace,
) -> Result<(), Error> {
    let namespace = sandbox.namespace().ok_or(Error::Missing("namespace"))?;
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    delete_with(&api, &base_name(sandbox), uid, grace).await
}

/// Creates the planned pod behind its scheduling gate, bound to the NetworkPolicy `isolation`
/// (its UID in an annotation). Returns the new pod, or None when a pod of that name already
/// exists (the cache had not seen it yet).
pub async fn create_pod(
    client: &Client,
    sandbox: &AgentSandbox,
    mut desired: Value,
    isolation: &str,
) -> Result<Option<Pod>, Error> {
    let namespace = sandbox.namespace().ok_or(Error::Missing("namespace"))?;
    desired["metadata"]["ownerReferences"] = serde_json::to_value(vec![
        owner_reference(sandbox).ok_or(Error::Missing("owner reference"))?,
    ])?;
    desired["metadata"]["annotations"][NETWORK_POLICY_UID_ANNOTATION] = json!(isolation);
    let pod: Pod = serde_json::from_value(desired)?;
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    match api.create(&params, &pod).await {
        Ok(created) => Ok(Some(created)),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    }
}

/// Removes the isolation gate at `index` from pod `uid`, so it can be scheduled. The patch
/// tests the pod's UID and the gate first: it never applies to another pod. A gate already
/// gone (an earlier pass removed it), or a pod already gone, is fine.
pub async fn ungate(
    client: &Client,
    sandbox: &AgentSandbox,
    uid: &str,
    index: usize,
) -> Result<(), Error> {
    let namespace = sandbox.namespace().ok_or(Error::Missing("namespace"))?;
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/uid", "value": uid},
        {"op": "test", "path": format!("/spec/schedulingGates/{index}/name"), "value": ISOLATION_GATE},
        {"op": "remove", "path": format!("/spec/schedulingGates/{index}")},
    ]))?;
    let name = base_name(sandbox);
    match api
        .patch(&name, &patch_params(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(_) => Ok(()),
        // Gone meanwhile (its NetworkPolicy was deleted, say): the next pass starts again.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 422 => {
            let pod = api.get_opt(&name).await?;
            let gone = pod.as_ref().is_none_or(|p| {
                p.uid().as_deref() != Some(uid)
                    || !p
                        .spec
                        .as_ref()
                        .and_then(|s| s.scheduling_gates.as_ref())
                        .is_some_and(|g| g.iter().any(|g| g.name == ISOLATION_GATE))
            });
            if gone {
                Ok(())
            } else {
                Err(kube::Error::Api(s).into())
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Records on pod `uid` (created before pods were bound) the UID of its NetworkPolicy.
pub async fn bind_pod(
    client: &Client,
    sandbox: &AgentSandbox,
    uid: &str,
    network_policy: &str,
) -> Result<(), Error> {
    let namespace = sandbox.namespace().ok_or(Error::Missing("namespace"))?;
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let key = NETWORK_POLICY_UID_ANNOTATION.replace('/', "~1");
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/uid", "value": uid},
        {"op": "add", "path": format!("/metadata/annotations/{key}"), "value": network_policy},
    ]))?;
    api.patch(
        &base_name(sandbox),
        &patch_params(),
        &Patch::<()>::Json(patch),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_object_with_server_defaults_covers_the_plan() {
        let desired = json!({"kind": "Service", "metadata": {"labels": {"a": "1"}},
            "spec": {"clusterIP": "None", "ports": [{"port": 80, "name": "tcp-80"}]}});
        let live = json!({"kind": "Service", "metadata": {"labels": {"a": "1", "b": "2"}, "uid": "u"},
            "spec": {"clusterIP": "None", "clusterIPs": ["None"], "sessionAffinity": "None",
                     "ports": [{"port": 80, "name": "tcp-80", "protocol": "TCP", "targetPort": 80}]},
            "status": {}});
        assert!(!differs(&desired, &live));
        let mut edited = live.clone();
        edited["spec"]["ports"][0]["port"] = json!(81);
        assert!(differs(&desired, &edited));
        let mut relabelled = live.clone();
        relabelled["metadata"]["labels"]["a"] = json!("2");
        assert!(differs(&desired, &relabelled));
    }

    #[test]
    fn a_network_policy_is_judged_on_its_whole_spec_and_finalizer() {
        let desired = json!({"kind": "NetworkPolicy",
            "metadata": {"labels": {"a": "1"}, "finalizers": ["palisade.dev/isolation"]},
            "spec": {"podSelector": {"matchLabels": {"s": "x"}}, "policyTypes": ["Ingress", "Egress"]}});
        let mut live = desired.clone();
        live["metadata"]["finalizers"] = json!(["other", "palisade.dev/isolation"]);
        assert!(!differs(&desired, &live), "other finalizers are fine");
        let mut widened = live.clone();
        widened["spec"]["egress"] = json!([{}]);
        assert!(differs(&desired, &widened), "an added rule is drift");
        let mut narrowed_selector = live.clone();
        narrowed_selector["spec"]["podSelector"]["matchLabels"]["extra"] = json!("y");
        assert!(
            differs(&desired, &narrowed_selector),
            "an added selector key is drift"
        );
        let mut no_finalizer = live.clone();
        no_finalizer["metadata"]["finalizers"] = json!(["other"]);
        assert!(differs(&desired, &no_finalizer));
    }

    #[test]
    fn only_a_live_policy_within_the_plan_is_known_not_to_be_wider() {
        let np = |egress: Value| {
            json!({"kind": "NetworkPolicy", "spec": {"podSelector": {"matchLabels": {"s": "a"}},
                "policyTypes": ["Ingress", "Egress"], "egress": egress}})
        };
        let a = json!({"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}]});
        let b = json!({"to": [{"ipBlock": {"cidr": "198.51.100.0/24"}}]});
        let planned = np(json!([a, b]));
        assert!(
            !may_widen(Some(&np(json!([a.clone()]))), &planned),
            "a subset is narrower"
        );
        assert!(!may_widen(Some(&np(json!([]))), &planned));
        assert!(may_widen(
            Some(&np(json!([a.clone(), b.clone(), {}]))),
            &planned
        ));
        assert!(may_widen(
            Some(&np(json!([{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]))),
            &planned
        ));
        assert!(
            may_widen(None, &planned),
            "no NetworkPolicy isolates nothing"
        );
        let mut ingress_only = np(json!([a]));
        ingress_only["spec"]["policyTypes"] = json!(["Ingress"]);
        assert!(
            may_widen(Some(&ingress_only), &planned),
            "egress unrestricted"
        );
        let cnp = |fqdns: Value| json!({"kind": "CiliumNetworkPolicy", "spec": {"endpointSelector": {}, "egress": fqdns}});
        let planned = cnp(json!([{"toFQDNs": [{"matchName": "a.example.com"}]}]));
        assert!(!may_widen(None, &planned), "no Cilium policy adds nothing");
        assert!(may_widen(
            Some(&cnp(json!([{"toFQDNs": [{"matchName": "b.example.com"}]}]))),
            &planned
        ));
    }

    #[test]
    fn a_service_account_annotation_added_by_someone_else_is_drift() {
        let desired = json!({"kind": "ServiceAccount", "metadata": {"labels": {"a": "1"}},
            "automountServiceAccountToken": false});
        let mut live = desired.clone();
        assert!(!differs(&desired, &live));
        live["metadata"]["annotations"] =
            json!({"kubectl.kubernetes.io/last-applied-configuration": "{}"});
        assert!(!differs(&desired, &live));
        live["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] =
            json!("arn:aws:iam::1:role/admin");
        assert!(
            differs(&desired, &live),
            "a workload identity grant is drift"
        );
        let mut automount = desired.clone();
        automount["automountServiceAccountToken"] = json!(true);
        assert!(differs(&desired, &automount));
    }
}
