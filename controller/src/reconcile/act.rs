//! Carrying out a [`Decision`] in the safe order:
//!
//! 1. a pod that must go goes first, and nothing else changes until it is gone (a stale pod
//!    never runs under the new policy's wider children) — except that a missing isolating
//!    NetworkPolicy is put back at once, which only narrows;
//! 2. children that left the plan and could widen (the Cilium FQDN policy) are removed;
//! 3. the plan's children are applied in order, the isolating NetworkPolicy before any pod;
//! 4. other children that left the plan are removed (a workspace claim is kept);
//! 5. a new pod is created behind its scheduling gate, bound to the NetworkPolicy's UID, and
//!    let through only after that NetworkPolicy has been read back (that UID, not deleting).

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ApiResource, GroupVersionKind};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::api::{AgentSandbox, ISOLATION_GATE};
use crate::render::Plan;
use crate::render::children::{base_name, workspace_claim_name};
use crate::render::network::isolation_name;

use super::caches::OptionalStore;
use super::children::{self, Applied, Grace};
use super::decide::{Decision, PodStep, Step};
use super::live::{LiveIsolation, LivePod};
use super::ownership::controlled_by;
use super::{Ctx, Error};

/// What carrying out a decision found that changes the outcome.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Acted {
    /// A child of the plan's name belongs to someone else (`Kind name`); the sandbox's pod was
    /// removed.
    pub conflict: Option<String>,
    /// The pod could not be let through yet (why); the next pass tries again.
    pub retry: Option<String>,
    /// A workspace claim the plan no longer has, kept until the sandbox is deleted.
    pub retained_claim: Option<String>,
    /// The UID of a pod created in this pass.
    pub created: Option<String>,
}

/// A failed step: what was being done, and whether it concerned the sandbox's network
/// isolation (its NetworkPolicy or Cilium policy).
#[derive(Debug)]
pub struct Failed {
    pub during: String,
    pub isolation: bool,
    pub error: Error,
}

fn failed(during: impl Into<String>, isolation: bool) -> impl FnOnce(Error) -> Failed {
    move |error| Failed {
        during: during.into(),
        isolation,
        error,
    }
}

fn cached<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<Value>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::Serialize + 'static,
{
    let obj = store.get(&ObjectRef::new(name).within(namespace))?;
    serde_json::to_value(&*obj).ok()
}

/// An object of an optional kind as its cache holds it: `Err` when there is no complete cache.
fn cached_optional(
    store: &OptionalStore,
    ar: &ApiResource,
    namespace: &str,
    name: &str,
) -> Result<Option<Value>, ()> {
    let store = store.get().ok_or(())?;
    Ok(store
        .get(&ObjectRef::new_with(name, ar.clone()).within(namespace))
        .and_then(|o| serde_json::to_value(&*o).ok()))
}

pub fn cilium_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cilium.io", "v2", "CiliumNetworkPolicy"),
        "ciliumnetworkpolicies",
    )
}

pub fn seccomp_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            "security-profiles-operator.x-k8s.io",
            "v1beta1",
            "SeccompProfile",
        ),
        "seccompprofiles",
    )
}

/// Carries out `decision` for `sandbox`, whose pod and isolating NetworkPolicy were observed
/// as `pod` and `isolation`.
pub async fn act(
    ctx: &Ctx,
    sandbox: &AgentSandbox,
    decision: &Decision,
    pod: Option<&LivePod>,
    isolation: Option<&LiveIsolation>,
) -> Result<Acted, Failed> {
    let our_pod = pod.filter(|p| p.ours);
    let remove_pod = |grace: Grace| async move {
        if let Some(p) = our_pod.filter(|p| !p.deleting || grace == Grace::None) {
            children::delete_pod(&ctx.client, sandbox, &p.uid, grace)
                .await
                .map_err(failed("delete the pod", false))?;
        }
        Ok::<(), Failed>(())
    };
    match &decision.step {
        Step::Leave => Ok(Acted::default()),
        Step::RemovePod => {
            remove_pod(Grace::Default).await?;
            Ok(Acted::default())
        }
        Step::Pause(plan) => {
            if our_pod.is_some() {
                remove_pod(Grace::Default).await?;
                return Ok(Acted::default());
            }
            children_of(ctx, sandbox, plan)
                .await
                .map(|(acted, _)| acted)
        }
        Step::Run(plan, step @ (PodStep::Replace { .. } | PodStep::AwaitGone)) => {
            if isolation.is_none() {
                // The pod may be running with no NetworkPolicy at all: any is narrower.
                restore_isolation(ctx, sandbox, plan).await?;
            }
            if let PodStep::Replace { now } = step {
                remove_pod(if *now { Grace::None } else { Grace::Default }).await?;
            }
            Ok(Acted::default())
        }
        Step::Run(plan, step) => {
            let (mut acted, isolation_uid) = children_of(ctx, sandbox, plan).await?;
            if acted.conflict.is_some() {
                remove_pod(Grace::None).await?;
                return Ok(acted);
            }
            let Some(isolation_uid) = isolation_uid else {
                return Ok(acted);
            };
            match step {
                PodStep::Create => create(ctx, sandbox, plan, &isolation_uid, &mut acted).await?,
                PodStep::Ungate => {
                    if let Some(p) = our_pod {
                        let bound = p.network_policy_uid.clone().unwrap_or_default();
                        acted.retry =
                            let_through(ctx, sandbox, &p.uid, p.gate.unwrap_or(0), &bound).await?;
                    }
                }
                PodStep::Bind(np) => {
                    if let Some(p) = our_pod {
                        children::bind_pod(&ctx.client, sandbox, &p.uid, np)
                            .await
                            .map_err(failed("record the pod's NetworkPolicy", false))?;
                    }
                }
                _ => {}
            }
            Ok(acted)
        }
    }
}

/// Creates the pod behind its gate and lets it through once its NetworkPolicy is confirmed.
async fn create(
    ctx: &Ctx,
    sandbox: &AgentSandbox,
    plan: &Plan,
    isolation_uid: &str,
    acted: &mut Acted,
) -> Result<(), Failed> {
    let desired =
        serde_json::to_value(&plan.pod).map_err(|e| failed("create the pod", false)(e.into()))?;
    let created = children::create_pod(&ctx.client, sandbox, desired, isolation_uid)
        .await
        .map_err(failed("create the pod", false))?;
    let Some(pod) = created else {
        match existing_pod(ctx, sandbox, plan)
            .await
            .map_err(failed("read the pod", false))?
        {
            Existing::Foreign(what) => acted.conflict = Some(what),
            Existing::Relabelled(uid) => {
                // Without its labels the NetworkPolicy no longer selects it.
                children::delete_pod(&ctx.client, sandbox, &uid, Grace::None)
                    .await
                    .map_err(failed("delete the relabelled pod", false))?;
                acted.retry = Some(
                    "the pod's labels were removed (its NetworkPolicy no longer selected it): it is replaced".into(),
                );
            }
            Existing::Ours => acted.retry = Some("the pod exists already".into()),
        }
        return Ok(());
    };
    let uid = pod.uid().unwrap_or_default();
    let gate = pod
        .spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .and_then(|g| g.iter().position(|g| g.name == ISOLATION_GATE))
        .unwrap_or(0);
    acted.created = Some(uid.clone());
    acted.retry = let_through(ctx, sandbox, &uid, gate, isolation_uid).await?;
    Ok(())
}

/// Applies the plan's NetworkPolicy alone, for a pod that must go but may run without one.
async fn restore_isolation(ctx: &Ctx, sandbox: &AgentSandbox, plan: &Plan) -> Result<(), Failed> {
    let desired = serde_json::to_value(&plan.network_policy)
        .map_err(|e| failed("restore the NetworkPolicy", true)(e.into()))?;
    children::apply(&ctx.client, sandbox, desired, None)
        .await
        .map_err(failed("restore the NetworkPolicy", true))?;
    Ok(())
}

/// A pod of the sandbox's name that the cache did not show.
enum Existing {
    /// Someone else's (`Pod name`).
    Foreign(String),
    /// The sandbox's, without the labels its NetworkPolicy selects (its UID).
    Relabelled(String),
    /// The sandbox's, as planned: the cache had not seen it yet.
    Ours,
}

async fn existing_pod(ctx: &Ctx, sandbox: &AgentSandbox, plan: &Plan) -> Result<Existing, Error> {
    let ns = sandbox.namespace().ok_or(Error::Missing("namespace"))?;
    let uid = sandbox.uid().ok_or(Error::Missing("uid"))?;
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(pod) = api.get_opt(&base_name(sandbox)).await? else {
        return Ok(Existing::Ours);
    };
    if !controlled_by(&pod.metadata, &uid) {
        return Ok(Existing::Foreign(format!("Pod {}", pod.name_any())));
    }
    let wanted = plan.pod.metadata.labels.clone().unwrap_or_default();
    let kept = wanted.iter().all(|(k, v)| pod.labels().get(k) == Some(v));
    Ok(if kept || pod.metadata.deletion_timestamp.is_some() {
        Existing::Ours
    } else {
        Existing::Relabelled(pod.uid().unwrap_or_default())
    })
}

/// Reads the isolating NetworkPolicy back and removes the pod's gate if it is the one the pod
/// was bound to and is not being deleted; otherwise removes the gated pod (it never ran) so a
/// new one is created behind the NetworkPolicy that exists. Returns why it is not through.
async fn let_through(
    ctx: &Ctx,
    sandbox: &AgentSandbox,
    pod_uid: &str,
    gate: usize,
    bound: &str,
) -> Result<Option<String>, Failed> {
    let ns = sandbox.namespace().unwrap_or_default();
    let sandbox_uid = sandbox.uid().unwrap_or_default();
    let api: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let np = api
        .get_opt(&isolation_name(&base_name(sandbox)))
        .await
        .map_err(|e| failed("read the NetworkPolicy back", true)(e.into()))?;
    let confirmed = np.as_ref().is_some_and(|np| {
        np.uid().as_deref() == Some(bound)
            && !bound.is_empty()
            && np.metadata.deletion_timestamp.is_none()
            && controlled_by(&np.metadata, &sandbox_uid)
    });
    if confirmed {
        children::ungate(&ctx.client, sandbox, pod_uid, gate)
            .await
            .map_err(failed("remove the pod's scheduling gate", false))?;
        return Ok(None);
    }
    children::delete_pod(&ctx.client, sandbox, pod_uid, Grace::None)
        .await
        .map_err(failed("delete the gated pod", false))?;
    Ok(Some(
        "the isolating NetworkPolicy changed before the pod was scheduled; the pod is recreated behind the current one".into(),
    ))
}

/// Applies the plan's children (not the pod) and removes those that left it. Returns the UID
/// of the isolating NetworkPolicy once it is in place.
async fn children_of(
    ctx: &Ctx,
    sandbox: &AgentSandbox,
    plan: &Plan,
) -> Result<(Acted, Option<String>), Failed> {
    let ns = sandbox.namespace().unwrap_or_default();
    let name = base_name(sandbox);
    let uid = sandbox.uid().unwrap_or_default();
    let facts = ctx.facts();
    let c = &ctx.caches;
    let mut acted = Acted::default();

    // Widening children first: the Cilium policy adds egress to the NetworkPolicy.
    let cilium = cilium_resource();
    let fqdn_name = crate::render::network::fqdn_policy_name(&name);
    if plan.fqdn_policy.is_none() && facts.cilium {
        let kind = json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy"});
        let maybe = match cached_optional(&c.cilium_policies, &cilium, &ns, &fqdn_name) {
            Ok(found) => found.is_some(),
            Err(()) => true,
        };
        if maybe {
            children::prune(&ctx.client, sandbox, &kind, &fqdn_name)
                .await
                .map_err(failed("remove the CiliumNetworkPolicy", true))?;
        }
    }

    let mut isolation_uid = None;
    for desired in plan.objects() {
        let kind = desired["kind"].as_str().unwrap_or_default().to_string();
        let child = desired["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let cached = match kind.as_str() {
            "Pod" => continue,
            "ServiceAccount" => cached(&c.service_accounts, &ns, &child),
            "NetworkPolicy" => cached(&c.network_policies, &ns, &child),
            "Service" => cached(&c.services, &ns, &child),
            "PersistentVolumeClaim" => cached(&c.claims, &ns, &child),
            "CiliumNetworkPolicy" => cached_optional(&c.cilium_policies, &cilium, &ns, &child)
                .ok()
                .flatten(),
            "SeccompProfile" => {
                cached_optional(&c.seccomp_profiles, &seccomp_resource(), &ns, &child)
                    .ok()
                    .flatten()
            }
            _ => None,
        };
        let widening = matches!(kind.as_str(), "NetworkPolicy" | "CiliumNetworkPolicy");
        let applied = children::apply(&ctx.client, sandbox, desired, cached)
            .await
            .map_err(failed(format!("apply {kind} {child}"), widening))?;
        match applied {
            Applied::Ok(uid) if kind == "NetworkPolicy" => isolation_uid = Some(uid),
            Applied::Ok(_) => {}
            Applied::NameConflict(what) => {
                acted.conflict = Some(what);
                return Ok((acted, None));
            }
            Applied::Terminating(what) => {
                acted.retry = Some(format!(
                    "{what} is being deleted; it is recreated once gone"
                ));
                return Ok((acted, None));
            }
        }
    }

    if plan.service.is_none() && cached(&c.services, &ns, &name).is_some() {
        let kind = json!({"apiVersion": "v1", "kind": "Service"});
        children::prune(&ctx.client, sandbox, &kind, &name)
            .await
            .map_err(failed("remove the Service", false))?;
    }
    // Generated profiles carry their content's hash in their name: older ones are removed.
    if let Some(store) = c.seccomp_profiles.get() {
        let planned = plan
            .seccomp_profile
            .as_ref()
            .and_then(|p| p["metadata"]["name"].as_str().map(String::from));
        let kind = json!({"apiVersion": "security-profiles-operator.x-k8s.io/v1beta1", "kind": "SeccompProfile"});
        for old in store.state().iter().filter(|p| {
            p.namespace().as_deref() == Some(ns.as_str())
                && controlled_by(&p.metadata, &uid)
                && Some(p.name_any()) != planned
        }) {
            children::prune(&ctx.client, sandbox, &kind, &old.name_any())
                .await
                .map_err(failed("remove an old SeccompProfile", false))?;
        }
    }
    if plan.workspace_claim.is_none() {
        let claim = workspace_claim_name(&name);
        let ours = c
            .claims
            .get(&ObjectRef::new(&claim).within(&ns))
            .is_some_and(|pvc| controlled_by(pvc.meta(), &uid));
        if ours {
            acted.retained_claim = Some(claim);
        }
    }
    Ok((acted, isolation_uid))
}
