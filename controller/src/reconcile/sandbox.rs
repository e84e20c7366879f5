//! The AgentSandbox controller: observe (from caches), decide (pure, `decide.rs`), confirm a
//! destructive decision taken on cached evidence by reading directly, act in the safe order
//! (`act.rs`), and write what it found to the status (`status.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::ApiResource;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::api::{AgentPolicy, AgentSandbox, MANAGER, SandboxPhase};
use crate::render::ClusterFacts;
use crate::render::network::isolation_name;

use super::act::{Acted, Failed, act};
use super::backoff::Backoff;
use super::children;
use super::decide::{Decision, Observed, PolicyState, decide, selects};
use super::live::{LiveIsolation, LivePod};
use super::ownership::{controlled_by, controlling_sandbox};
use super::status::{Names, Outcome, Standing, status, warning};
use super::{Ctx, Error, FAIL_CLOSED_AFTER, RESYNC};

/// What was read for one pass, owned, so a decision can borrow from it.
struct Reading {
    policy: Option<AgentPolicy>,
    unreadable: Option<String>,
    runtime_classes: Option<BTreeMap<String, String>>,
    network_policies: Vec<Arc<NetworkPolicy>>,
    isolation: Option<LiveIsolation>,
    pod: Option<LivePod>,
}

impl Reading {
    fn observed<'a>(
        &'a self,
        sandbox: &'a AgentSandbox,
        facts: &'a ClusterFacts,
        now: Timestamp,
    ) -> Observed<'a> {
        Observed {
            sandbox,
            policy: match (&self.policy, &self.unreadable) {
                (Some(p), _) => PolicyState::Found(p),
                (None, Some(why)) => PolicyState::Unreadable(why),
                (None, None) => PolicyState::Missing,
            },
            facts,
            network_policies: &self.network_policies,
            isolation: self.isolation.as_ref(),
            pod: self.pod.as_ref(),
            now,
        }
    }
}

fn isolation_of(np: &NetworkPolicy, sandbox_uid: &str) -> LiveIsolation {
    LiveIsolation {
        uid: np.uid().unwrap_or_default(),
        ours: controlled_by(&np.metadata, sandbox_uid),
        deleting: np.metadata.deletion_timestamp.is_some(),
    }
}

/// What the caches hold about the sandbox.
fn observe(ctx: &Ctx, sandbox: &AgentSandbox, ns: &str, uid: &str) -> Reading {
    let c = &ctx.caches;
    let name = sandbox.name_any();
    let policy = c
        .policies
        .get(&ObjectRef::new(&sandbox.spec.policy_ref.name).within(ns))
        .map(|p| (*p).clone());
    let network_policies: Vec<Arc<NetworkPolicy>> = c
        .network_policies
        .state()
        .into_iter()
        .filter(|np| np.namespace().as_deref() == Some(ns))
        .collect();
    let isolation = c
        .network_policies
        .get(&ObjectRef::new(&isolation_name(&name)).within(ns))
        .map(|np| isolation_of(&np, uid));
    let pod = c
        .pods
        .get(&ObjectRef::new(&name).within(ns))
        .map(|p| LivePod::read(&p, uid));
    Reading {
        policy,
        unreadable: None,
        runtime_classes: None,
        network_policies,
        isolation,
        pod,
    }
}

/// The same, read directly from the API server, for a decision that must not rest on caches.
async fn read_directly(
    ctx: &Ctx,
    sandbox: &AgentSandbox,
    ns: &str,
    uid: &str,
) -> Result<Reading, Error> {
    let name = sandbox.name_any();
    let ar = ApiResource::erase::<AgentPolicy>(&());
    let policies: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &ar);
    let (policy, unreadable) = match policies.get_opt(&sandbox.spec.policy_ref.name).await? {
        None => (None, None),
        Some(obj) => match serde_json::to_value(&obj)
            .map_err(|e| e.to_string())
            .and_then(|v| {
                serde_path_to_error::deserialize::<_, AgentPolicy>(v)
                    .map_err(|e| format!("{}: {}", e.path(), e.inner()))
            }) {
            Ok(p) => (Some(p), None),
            Err(why) => (None, Some(why)),
        },
    };
    let runtime_classes = Api::<RuntimeClass>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|rc| (rc.name_any(), rc.handler))
        .collect();
    if let Err(e) = ctx
        .optional_crds
        .refresh(&ctx.client, ctx.config.namespace.as_deref())
        .await
    {
        tracing::warn!(error = %e, "could not re-check the optional CRDs");
    }
    let network_policies: Vec<Arc<NetworkPolicy>> =
        Api::<NetworkPolicy>::namespaced(ctx.client.clone(), ns)
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .map(Arc::new)
            .collect();
    let isolation = network_policies
        .iter()
        .find(|np| np.name_any() == isolation_name(&name))
        .map(|np| isolation_of(np, uid));
    let pod = Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .get_opt(&name)
        .await?
        .map(|p| LivePod::read(&p, uid));
    Ok(Reading {
        policy,
        unreadable,
        runtime_classes: Some(runtime_classes),
        network_policies,
        isolation,
        pod,
    })
}

/// Reconciles one sandbox.
pub async fn reconcile(sandbox: Arc<AgentSandbox>, ctx: Ctx) -> Result<Action, Error> {
    let _timer = ctx.metrics.observe_reconcile("agentsandbox");
    ctx.caches.ready().await;
    if sandbox.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = sandbox.namespace().ok_or(Error::Missing("namespace"))?;
    let uid = sandbox.uid().ok_or(Error::Missing("uid"))?;
    let name = sandbox.name_any();
    let now = Timestamp::now();

    let mut reading = observe(&ctx, &sandbox, &ns, &uid);
    let facts = ctx.facts();
    let mut decision = decide(&reading.observed(&sandbox, &facts, now));
    if let Some(what) = &decision.confirm {
        tracing::debug!(sandbox = %name, ?what, "confirming a destructive decision by reading directly");
        reading = read_directly(&ctx, &sandbox, &ns, &uid).await?;
        let facts = match &reading.runtime_classes {
            Some(rcs) => ctx.facts_with(rcs.clone()),
            None => ctx.facts(),
        };
        decision = decide(&reading.observed(&sandbox, &facts, now));
    }
    if decision.outcome.phase == SandboxPhase::Blocked {
        ctx.metrics
            .compile_errors
            .with_label_values(&[decision.outcome.reason.as_str()])
            .inc();
    }

    let previous = sandbox.status.clone().unwrap_or_default();
    let result = act(&ctx, &sandbox, &decision, reading.pod.as_ref()).await;
    let (outcome, failure) = match result {
        Ok(acted) => (
            after(&ctx, &sandbox, &decision, acted, reading.pod.as_ref()).await?,
            None,
        ),
        Err(failed) => {
            let outcome = after_failure(
                &ctx,
                &sandbox,
                &decision,
                &failed,
                reading.pod.as_ref(),
                now,
            )
            .await;
            (outcome, Some(failed))
        }
    };

    let generation = sandbox.meta().generation;
    let new_status = status(
        &previous,
        &outcome,
        &decision.lifetime,
        generation,
        &Names {
            name: &name,
            namespace: &ns,
            cluster_domain: &ctx.config.facts.cluster_domain,
        },
        now,
    );
    if new_status != previous {
        if let Some((reason, note)) = warning(&previous, &outcome) {
            let event = Event {
                type_: EventType::Warning,
                reason,
                note: Some(note),
                action: "Reconcile".into(),
                secondary: None,
            };
            if let Err(e) = ctx.recorder.publish(&event, &sandbox.object_ref(&())).await {
                tracing::warn!(error = %e, "could not publish an event");
            }
        }
        let api: Api<AgentSandbox> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"apiVersion": crate::api::API_VERSION, "kind": "AgentSandbox", "status": new_status});
        api.patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        // Counted once: only the pass whose status write recorded startedAt.
        if previous.started_at.is_none()
            && let Some(started) = decision.lifetime.started_at
        {
            let created = sandbox
                .meta()
                .creation_timestamp
                .as_ref()
                .map_or(started, |t| t.0);
            let ms = (started.as_millisecond() - created.as_millisecond()).max(0);
            ctx.metrics.start_latency.observe(ms as f64 / 1000.0);
        }
    }
    if let Some(failed) = failure {
        return Err(failed.error);
    }
    ctx.backoff.succeeded(&uid);

    // ttlSecondsAfterFinished: the sandbox deletes itself some time after the agent finished.
    let mut requeue = outcome
        .requeue
        .or(outcome.expires_at.map(|e| until(e, now)));
    if let (Some(ttl), Some(done)) = (
        sandbox.spec.ttl_seconds_after_finished,
        decision.lifetime.finished_at,
    ) {
        let due = done
            .checked_add(jiff::SignedDuration::from_secs(ttl as i64))
            .unwrap_or(done);
        if due <= now {
            let api: Api<AgentSandbox> = Api::namespaced(ctx.client.clone(), &ns);
            children::delete_precisely(&api, &name, &uid).await?;
            return Ok(Action::await_change());
        }
        requeue = Some(until(due, now));
    }
    Ok(match requeue {
        Some(d) => Action::requeue(d.max(Duration::from_millis(500))),
        None => Action::requeue(RESYNC),
    })
}

fn until(t: Timestamp, now: Timestamp) -> Duration {
    let ms = t.as_millisecond() - now.as_millisecond();
    Duration::from_millis(ms.max(0) as u64)
}

/// The outcome once the decision was carried out.
async fn after(
    ctx: &Ctx,
    sandbox: &AgentSandbox,
    decision: &Decision,
    acted: Acted,
    pod: Option<&LivePod>,
) -> Result<Outcome, Error> {
    let mut outcome = decision.outcome.clone();
    if let Some(what) = acted.conflict {
        // Someone else's object holds a child's name: never adopted; no pod runs without it.
        if let Some(p) = pod.filter(|p| p.ours && !p.deleting) {
            children::delete_pod(&ctx.client, sandbox, &p.uid).await?;
        }
        let isolation = what.starts_with("NetworkPolicy");
        outcome = Outcome::blocked(
            "NameConflict",
            format!("{what} exists and is not controlled by this sandbox; it is not adopted"),
        );
        if isolation {
            outcome = outcome.not_isolated(None);
        }
        return Ok(outcome);
    }
    if let Some(why) = acted.retry {
        outcome.reason = "Replacing".into();
        outcome.message = why;
        outcome.requeue = Some(Duration::from_secs(1));
    }
    outcome.retained_claim = acted.retained_claim;
    Ok(outcome)
}

/// The outcome when a step failed: the error is in the conditions (Stalled when only a person
/// can fix it); a NetworkPolicy that cannot be brought to what the policy says fails closed.
async fn after_failure(
    ctx: &Ctx,
    sandbox: &AgentSandbox,
    decision: &Decision,
    failed: &Failed,
    pod: Option<&LivePod>,
    now: Timestamp,
) -> Outcome {
    let error = &failed.error;
    tracing::warn!(sandbox = %sandbox.name_any(), during = %failed.during, %error, "reconcile step failed");
    let mut outcome = decision.outcome.clone();
    outcome.reason = error.reason().to_string();
    outcome.message = format!("could not {}: {}", failed.during, error.message());
    outcome.standing = Some(if error.needs_a_person() {
        Standing::Stalled
    } else {
        Standing::Progressing
    });
    if failed.isolation
        && let Some(p) = pod.filter(|p| p.ours && !p.deleting)
    {
        let previous = sandbox.status.clone().unwrap_or_default();
        let since = previous
            .conditions
            .iter()
            .find(|c| {
                c.type_ == "NetworkIsolated"
                    && c.status == "False"
                    && c.reason == "NetworkPolicyNotApplied"
            })
            .map_or(now, |c| c.last_transition_time.0);
        let failing_ms = (now.as_millisecond() - since.as_millisecond()).max(0) as u128;
        outcome = outcome.not_isolated(Some("NetworkPolicyNotApplied"));
        ctx.backoff.mark_urgent(&sandbox.uid().unwrap_or_default());
        if failing_ms >= FAIL_CLOSED_AFTER.as_millis() {
            match children::delete_pod(&ctx.client, sandbox, &p.uid).await {
                Ok(()) => {
                    outcome.message = format!(
                        "{}; the pod was removed after {} s (fail closed) and is recreated once the NetworkPolicy can be applied",
                        outcome.message,
                        FAIL_CLOSED_AFTER.as_secs()
                    );
                    outcome.phase = SandboxPhase::Starting;
                    outcome.has_pod = false;
                    outcome.pod_ip = None;
                }
                Err(e) => tracing::warn!(error = %e, "could not remove the pod to fail closed"),
            }
        } else {
            outcome.message = format!(
                "{}; the pod is removed if this lasts {} s",
                outcome.message,
                FAIL_CLOSED_AFTER.as_secs()
            );
        }
    }
    outcome
}

/// Errors requeue with exponential backoff and jitter per sandbox; the metrics say what failed.
pub fn error_policy(sandbox: Arc<AgentSandbox>, error: &Error, ctx: Ctx) -> Action {
    if error.namespace_terminating() {
        // The sandbox is deleted with its namespace; look again later in case it is not.
        tracing::debug!(%error, "namespace is being deleted");
        return Action::requeue(Duration::from_secs(30));
    }
    ctx.metrics.reconcile_error("agentsandbox", error.label());
    tracing::warn!(%error, "reconcile failed");
    let key = sandbox.uid().unwrap_or_else(|| sandbox.name_any());
    Action::requeue(retry_delay(&ctx.backoff, &key))
}

/// The wait before retrying sandbox `key` after one more failure: exponential with jitter; but
/// while a NetworkPolicy may be wider than the policy (marked urgent), never past a third of
/// the fail-closed deadline, so it is looked at again in time.
pub fn retry_delay(backoff: &Backoff, key: &str) -> Duration {
    let wait = backoff.failed(key);
    if backoff.take_urgent(key) {
        wait.min(FAIL_CLOSED_AFTER / 3)
    } else {
        wait
    }
}

/// The sandboxes a change to `np` may concern: its controlling sandbox for one of ours (owner
/// UID, never labels); for any other, the sandboxes whose pod it selects and those it may have
/// been blocking (it may no longer select them).
pub fn affected_by_network_policy(ctx: &Ctx, np: &NetworkPolicy) -> Vec<ObjectRef<AgentSandbox>> {
    let ns = np.namespace();
    if let Some(owner) = controlling_sandbox(&np.metadata) {
        let owned = ctx
            .caches
            .sandboxes
            .get(&ObjectRef::new(&owner.name).within(ns.as_deref().unwrap_or_default()))
            .filter(|s| s.uid().as_deref() == Some(owner.uid.as_str()));
        if let Some(s) = owned {
            return vec![ObjectRef::from_obj(&*s)];
        }
    }
    let selector = np
        .spec
        .as_ref()
        .and_then(|s| s.pod_selector.clone())
        .unwrap_or_default();
    ctx.caches
        .sandboxes
        .state()
        .iter()
        .filter(|s| s.namespace() == ns)
        .filter(|s| {
            let mut labels = s.spec.pod_labels.clone();
            labels.extend(crate::render::children::child_labels(&s.name_any()));
            let blocked_by_one = s.status.as_ref().is_some_and(|st| {
                st.conditions
                    .iter()
                    .any(|c| c.type_ == "NetworkIsolated" && c.reason == "AdditionalNetworkPolicy")
            });
            blocked_by_one || selects(&selector, &labels)
        })
        .map(|s| ObjectRef::from_obj(&**s))
        .collect()
}
