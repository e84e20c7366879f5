//! Carrying out a [`Decision`] in the safe order:
//!
//! 1. a pod that must go goes first, and nothing else changes until it is gone (a stale pod
//!    never runs under the new policy's wider children);
//! 2. children that left the plan and could widen (the Cilium FQDN policy) are removed;
//! 3. the plan's children are applied in order, the isolating NetworkPolicy before any pod;
//! 4. other children that left the plan are removed (a workspace claim is kept);
//! 5. a new pod is created behind its scheduling gate, bound to the NetworkPolicy's UID, and
//!    let through only after that NetworkPolicy has been read back (that UID, not deleting).

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::Value;

use crate::api::AgentSandbox;
use crate::render::Plan;
use crate::render::children::workspace_claim_name;
use crate::render::network::isolation_name;

use super::children::{self, Applied};
use super::decide::{Decision, PodStep, Step};
use super::live::LivePod;
use super::ownership::controlled_by;
use super::{Ctx, Error};

/// What carrying out a decision found that changes the outcome.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Acted {
    /// A child of the plan's name belongs to someone else (`Kind name`).
    pub conflict: Option<String>,
    /// The pod could not be let through yet (why); the next pass tries again.
    pub retry: Option<String>,
    /// A workspace claim the plan no longer has, kept until the sandbox is deleted.
    pub retained_claim: Option<String>,
}

/// A failed step: what was being done, and whether it was the isolating NetworkPolicy.
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

/// Carries out `decision` for `sandbox`, whose pod was observed as `pod`.
pub async fn act(
    ctx: &Ctx,
    sandbox: &AgentSandbox,
    decision: &Decision,
    pod: Option<&LivePod>,
) -> Result<Acted, Failed> {
    let our_pod = pod.filter(|p| p.ours);
    let remove_pod = || async {
        if let Some(p) = our_pod.filter(|p| !p.deleting) {
            children::delete_pod(&ctx.client, sandbox, &p.uid)
                .await
                .map_err(failed("delete the pod", false))?;
        }
        Ok::<(), Failed>(())
    };
    match &decision.step {
        Step::Leave => Ok(Acted::default()),
        Step::RemovePod => {
            remove_pod().await?;
            Ok(Acted::default())
        }
        Step::Pause(plan) => {
            if our_pod.is_some() {
                remove_pod().await?;
                return Ok(Acted::default());
            }
            children_of(ctx, sandbox, plan)
                .await
                .map(|(acted, _)| acted)
        }
        Step::Run(_, PodStep::Replace) => {
            remove_pod().await?;
            Ok(Acted::default())
        }
        Step::Run(_, PodStep::AwaitGone) => Ok(Acted::default()),
        Step::Run(plan, step) => {
            let (mut acted, isolation_uid) = children_of(ctx, sandbox, plan).await?;
            if acted.conflict.is_some() {
                remove_pod().await?;
                return Ok(acted);
            }
            let Some(isolation_uid) = isolation_uid else {
                return Ok(acted);
            };
            match step {
                PodStep::Create => {
                    let desired = serde_json::to_value(&plan.pod)
                        .map_err(|e| failed("create the pod", false)(e.into()))?;
                    match children::create_pod(&ctx.client, sandbox, desired, &isolation_uid)
                        .await
                        .map_err(failed("create the pod", false))?
                    {
                        Some(uid) => {
                            acted.retry =
                                let_through(ctx, sandbox, &uid, 0, &isolation_uid).await?;
                        }
                        None => match existing_pod(ctx, sandbox, plan)
                            .await
                            .map_err(failed("read the pod", false))?
                        {
                            Existing::Foreign(what) => acted.conflict = Some(what),
                            Existing::Relabelled(uid) => {
                                // Without its labels the NetworkPolicy no longer selects it.
                                children::delete_pod(&ctx.client, sandbox, &uid)
                                    .await
                                    .map_err(failed("delete the relabelled pod", false))?;
                                acted.retry = Some(
                                    "the pod's labels were removed (its NetworkPolicy no longer selected it): it is replaced".into(),
                                );
                            }
                            Existing::Ours => {
                                acted.retry = Some("the pod exists already".into());
                            }
                        },
                    }
                }
                PodStep::Ungate => {
                    if let Some(p) = our_pod {
                        let bound = p.network_policy_uid.clone().unwrap_or_default();
                        acted.retry =
                            let_through(ctx, sandbox, &p.uid, p.gate.unwrap_or(0), &bound).await?;
                    }
                }
                _ => {}
            }
            Ok(acted)
        }
    }
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
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(pod) = api.get_opt(&sandbox.name_any()).await? else {
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
    let ns = sandbox
        .namespace()
        .ok_or_else(|| failed("read the NetworkPolicy", true)(Error::Missing("namespace")))?;
    let sandbox_uid = sandbox.uid().unwrap_or_default();
    let api: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let np = api
        .get_opt(&isolation_name(&sandbox.name_any()))
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
    children::delete_pod(&ctx.client, sandbox, pod_uid)
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
    let name = sandbox.name_any();
    let facts = ctx.facts();
    let mut acted = Acted::default();

    // Widening children first: the Cilium policy adds egress to the NetworkPolicy.
    if plan.fqdn_policy.is_none() && facts.cilium {
        let kind = serde_json::json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy"});
        children::prune(&ctx.client, sandbox, &kind, &format!("{name}-fqdn"))
            .await
            .map_err(failed("remove the CiliumNetworkPolicy", true))?;
    }

    let c = &ctx.caches;
    let mut isolation_uid = None;
    for desired in plan.objects() {
        let kind = desired["kind"].as_str().unwrap_or_default().to_string();
        let child = desired["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if kind == "Pod" {
            continue;
        }
        let cached = match kind.as_str() {
            "ServiceAccount" => cached(&c.service_accounts, &ns, &child),
            "NetworkPolicy" => cached(&c.network_policies, &ns, &child),
            "Service" => cached(&c.services, &ns, &child),
            "PersistentVolumeClaim" => cached(&c.claims, &ns, &child),
            _ => None,
        };
        let is_isolation = kind == "NetworkPolicy";
        let applied = children::apply(&ctx.client, sandbox, desired, cached)
            .await
            .map_err(failed(format!("apply {kind} {child}"), is_isolation))?;
        match applied {
            Applied::Ok(uid) if is_isolation => isolation_uid = Some(uid),
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

    if plan.service.is_none() {
        let kind = serde_json::json!({"apiVersion": "v1", "kind": "Service"});
        if cached(&c.services, &ns, &name).is_some() {
            children::prune(&ctx.client, sandbox, &kind, &name)
                .await
                .map_err(failed("remove the Service", false))?;
        }
    }
    if plan.seccomp_profile.is_none() && facts.seccomp_profile_crd {
        let kind = serde_json::json!({"apiVersion": "security-profiles-operator.x-k8s.io/v1beta1", "kind": "SeccompProfile"});
        children::prune(&ctx.client, sandbox, &kind, &format!("{name}-seccomp"))
            .await
            .map_err(failed("remove the SeccompProfile", false))?;
    }
    if plan.workspace_claim.is_none() {
        let claim = workspace_claim_name(&name);
        let uid = sandbox.uid().unwrap_or_default();
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
