//! The AgentSandbox controller: observe (from caches), decide (pure, `decide.rs`), confirm a
//! destructive decision taken on cached evidence by reading directly, act in the safe order
//! (`act.rs`), and write what it found to the status (`status.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use std::sync::atomic::Ordering;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::ApiResource;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::api::{AgentPolicy, AgentSandbox, AgentSandboxStatus, MANAGER, SandboxPhase};
use crate::render::children::base_name;
use crate::render::network::isolation_name;
use crate::render::{CheckedPolicy, ClusterFacts};

use super::act::{Acted, Failed, act};
use super::admin::{AdminKind, AdminPolicies, Read};
use super::backoff::Backoff;
use super::caches::OptionalStore;
use super::children::{self, Grace, may_widen};
use super::decide::{Confirm, Decision, Observed, PolicyState, Step, decide, selects};
use super::facts::ReadOnly;
use super::live::{LiveIsolation, LivePod};
use super::np_index;
use super::ownership::{controlled_by, controlling_sandbox};
use super::record::PodRecord;
use super::status::{Names, Outcome, Standing, status, warning};
use super::written::Written;
use super::{Ctx, Error, FAIL_CLOSED_AFTER, RESYNC};

/// What was read for one pass, owned, so a decision can borrow from it.
struct Reading {
    policy: Option<AgentPolicy>,
    /// The cached policy's check (none for a policy read directly: checked in the pass).
    checked: Option<Arc<Result<CheckedPolicy, String>>>,
    unreadable: Option<String>,
    runtime_classes: Option<BTreeMap<String, String>>,
    network_policies: Vec<Arc<NetworkPolicy>>,
    cilium_policies: Read,
    /// Cluster-scoped policies: CiliumClusterwide, AdminNetworkPolicy, ClusterNetworkPolicy.
    admin: [Read; 3],
    namespace_labels: Option<BTreeMap<String, String>>,
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
                (Some(p), _) => match &self.checked {
                    Some(checked) => PolicyState::Checked(p, checked),
                    None => PolicyState::Found(p),
                },
                (None, Some(why)) => PolicyState::Unreadable(why),
                (None, None) => PolicyState::Missing,
            },
            facts,
            network_policies: &self.network_policies,
            cilium_policies: self.cilium_policies.known(),
            admin: AdminPolicies {
                cilium_clusterwide: self.admin[0].known(),
                admin_network_policies: self.admin[1].known(),
                cluster_network_policies: self.admin[2].known(),
                namespace_labels: self.namespace_labels.as_ref(),
            },
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

/// What the operator holds of a kind it reads: all of it, or those of `namespace`.
fn read(kind: &ReadOnly, store: &OptionalStore, namespace: Option<&str>) -> Read {
    if !kind.installed.load(Ordering::SeqCst) {
        Read::Absent
    } else if !kind.readable.load(Ordering::SeqCst) {
        Read::Unreadable
    } else {
        store.get().map_or(Read::Listing, |s| {
            Read::Listed(
                s.state()
                    .into_iter()
                    .filter(|p| namespace.is_none() || p.namespace().as_deref() == namespace)
                    .collect(),
            )
        })
    }
}

/// What the caches hold about the sandbox.
fn observe(ctx: &Ctx, sandbox: &AgentSandbox, ns: &str, uid: &str) -> Reading {
    let c = &ctx.caches;
    let name = base_name(sandbox);
    let policy = c
        .policies
        .get(&ObjectRef::new(&sandbox.spec.policy_ref.name).within(ns))
        .map(|p| (*p).clone());
    // The namespace's NetworkPolicies that may select the pod: every one but the other
    // sandboxes' isolating ones (which select only their own pods), and the one of our
    // isolating name, whoever controls it.
    let mut network_policies = c.other_network_policies.in_namespace(ns);
    if let Some(own) = c
        .network_policies
        .get(&ObjectRef::new(&isolation_name(&name)).within(ns))
        && np_index::isolating_shape(&own)
    {
        network_policies.push(own);
    }
    let crds = &ctx.optional_crds;
    let admin = AdminKind::ALL.map(|kind| read(crds.admin(kind), c.admin(kind), None));
    let cilium_policies = read(&crds.cilium_policies, &c.cilium_policies, Some(ns));
    let namespace_labels = c.namespaces.get().and_then(|store| {
        let namespace = ObjectRef::new_with(ns, ApiResource::erase::<Namespace>(&()));
        store.get(&namespace).map(|n| n.labels().clone())
    });
    let isolation = c
        .network_policies
        .get(&ObjectRef::new(&isolation_name(&name)).within(ns))
        .map(|np| isolation_of(&np, uid));
    let pod = c
        .pods
        .get(&ObjectRef::new(&name).within(ns))
        .map(|p| LivePod::read(&p, uid));
    let checked = policy.as_ref().map(|p| ctx.checked_policies.of(p));
    Reading {
        policy,
        checked,
        unreadable: None,
        runtime_classes: None,
        network_policies,
        cilium_policies,
        admin,
        namespace_labels,
        isolation,
        pod,
    }
}

/// Reads directly from the API server what a decision taken on cached evidence rests on (and
/// the pod it would destroy), in place of the cached reading.
async fn confirm(
    ctx: &Ctx,
    sandbox: &AgentSandbox,
    ns: &str,
    uid: &str,
    what: &Confirm,
    mut reading: Reading,
) -> Result<Reading, Error> {
    let name = base_name(sandbox);
    match what {
        Confirm::Policy => {
            let ar = ApiResource::erase::<AgentPolicy>(&());
            let policies: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &ar);
            reading.checked = None;
            (reading.policy, reading.unreadable) =
                match policies.get_opt(&sandbox.spec.policy_ref.name).await? {
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
        }
        Confirm::ClusterFacts => {
            reading.runtime_classes = Some(
                Api::<RuntimeClass>::all(ctx.client.clone())
                    .list(&ListParams::default())
                    .await?
                    .items
                    .into_iter()
                    .map(|rc| (rc.name_any(), rc.handler))
                    .collect(),
            );
            ctx.optional_crds
                .refresh_backends(&ctx.client, ctx.config.namespace.as_deref())
                .await?;
        }
        Confirm::NetworkPolicies => {
            reading.network_policies = Api::<NetworkPolicy>::namespaced(ctx.client.clone(), ns)
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .map(Arc::new)
                .collect();
            reading.isolation = reading
                .network_policies
                .iter()
                .find(|np| np.name_any() == isolation_name(&name))
                .map(|np| isolation_of(np, uid));
        }
    }
    reading.pod = Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .get_opt(&name)
        .await?
        .map(|p| LivePod::read(&p, uid));
    Ok(reading)
}

/// Whether a decision taken on cached evidence would change anything: remove a pod, or turn
/// the status into what it does not say yet. Otherwise it needs no confirming.
fn destructive(decision: &Decision, reading: &Reading, previous: &AgentSandboxStatus) -> bool {
    let has_pod = reading.pod.as_ref().is_some_and(|p| p.ours && !p.deleting);
    let same_status = previous.phase == Some(decision.outcome.phase)
        && previous.message.as_deref() == Some(decision.outcome.message.as_str());
    has_pod || !same_status
}

/// Reconciles one sandbox.
pub async fn reconcile(sandbox: Arc<AgentSandbox>, ctx: Ctx) -> Result<Action, Error> {
    let _timer = ctx.metrics.observe_reconcile("agentsandbox");
    tokio::select! {
        () = ctx.caches.ready() => {}
        () = ctx.stop.cancelled() => return Ok(Action::await_change()),
    }
    let uid = sandbox.uid().ok_or(Error::Missing("uid"))?;
    if sandbox.meta().deletion_timestamp.is_some() {
        ctx.written.forget(&uid);
        ctx.moved.forget(&uid);
        return Ok(Action::await_change());
    }
    // A warm sandbox another sandbox took: its children are moving to that one.
    if super::claim::taken(&sandbox) {
        return Ok(Action::await_change());
    }
    // Our last status write is not in the cache yet: deciding from the older status could
    // undo what it recorded (a finished agent run again). Look again shortly.
    if ctx
        .written
        .behind(&uid, sandbox.meta().resource_version.as_deref())
    {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let ns = sandbox.namespace().ok_or(Error::Missing("namespace"))?;
    let name = sandbox.name_any();
    let now = Timestamp::now();
    // A sandbox of a pool takes a warm sandbox or starts cold from the template first.
    let sandbox = match super::claim::prepare(&ctx, sandbox, now).await? {
        super::claim::Prepared::Run(s) => s,
        super::claim::Prepared::Done(action) => return Ok(action),
    };
    let previous = sandbox.status.clone().unwrap_or_default();

    let mut reading = observe(&ctx, &sandbox, &ns, &uid);
    let facts = ctx.facts();
    let mut decision = decide(&reading.observed(&sandbox, &facts, now));
    if let Some(what) = decision.confirm.clone()
        && destructive(&decision, &reading, &previous)
    {
        tracing::debug!(sandbox = %name, ?what, "confirming a destructive decision by reading directly");
        reading = confirm(&ctx, &sandbox, &ns, &uid, &what, reading).await?;
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

    let result = act(
        &ctx,
        &sandbox,
        &decision,
        reading.pod.as_ref(),
        reading.isolation.as_ref(),
    )
    .await;
    let mut record = decision.record.clone();
    let (outcome, failure) = match result {
        Ok(acted) => {
            record.isolation_pending_since = None;
            if let Some(created) = &acted.created {
                record.uid = Some(created.clone());
            }
            (after(&decision, acted, enforced_before(&sandbox)), None)
        }
        // The sandbox goes with its namespace: nothing to report.
        Err(failed) if failed.error.namespace_terminating() => return Err(failed.error),
        Err(failed) => {
            let outcome = after_failure(
                &ctx,
                &sandbox,
                &decision,
                &failed,
                &reading,
                &mut record,
                now,
            )
            .await;
            (outcome, Some(failed))
        }
    };

    let generation = sandbox.meta().generation;
    let mut new_status = status(
        &previous,
        &outcome,
        &decision.lifetime,
        generation,
        &Names {
            name: &base_name(&sandbox),
            namespace: &ns,
            cluster_domain: &ctx.config.facts.cluster_domain,
        },
        now,
    );
    record.write(&mut new_status);
    // The gateway writes egressDenials; the operator never applies (so never owns) that field.
    let previous_own = AgentSandboxStatus {
        egress_denials: None,
        ..previous.clone()
    };
    if new_status != previous_own {
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
        let written = api
            .patch_status(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        ctx.written.wrote(
            &uid,
            sandbox.meta().resource_version.as_deref(),
            written.meta().resource_version.as_deref(),
        );
        // Counted once: only the pass whose status write recorded startedAt.
        if previous.started_at.is_none()
            && let Some(started) = decision.lifetime.started_at
        {
            let created = sandbox
                .meta()
                .creation_timestamp
                .as_ref()
                .map_or(started, |t| t.0);
            let ms = (now.as_millisecond() - created.as_millisecond()).max(0);
            let seconds = ms as f64 / 1000.0;
            ctx.metrics.start_latency.observe(seconds);
            if let Some(pool) = previous.pool.as_ref() {
                let start = match pool.start {
                    crate::api::sandbox::PoolStart::Warm => "warm",
                    crate::api::sandbox::PoolStart::Cold => "cold",
                };
                ctx.metrics
                    .claim_latency
                    .with_label_values(&[start])
                    .observe(seconds);
            }
            if sandbox.labels().contains_key(crate::api::pool::POOL_LABEL) {
                ctx.metrics.refill_latency.observe(seconds);
            }
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

/// The policy version the status said was enforced before this pass.
fn enforced_before(sandbox: &AgentSandbox) -> Option<crate::api::sandbox::PolicyVersion> {
    sandbox
        .status
        .as_ref()
        .and_then(|s| s.enforced_policy.clone())
}

/// The outcome once the decision was carried out. A pass that stopped before every child was
/// applied (a retry) keeps the policy version enforced before: the new one is not, yet.
fn after(
    decision: &Decision,
    acted: Acted,
    before: Option<crate::api::sandbox::PolicyVersion>,
) -> Outcome {
    let mut outcome = decision.outcome.clone();
    if let Some(what) = acted.conflict {
        // Someone else's object holds a child's name: never adopted; no pod runs without it
        // (the pod was removed).
        let isolation = what.starts_with("NetworkPolicy");
        outcome = Outcome::blocked(
            "NameConflict",
            format!("{what} exists and is not controlled by this sandbox; it is not adopted"),
        );
        if isolation {
            outcome = outcome.not_isolated(None);
        }
        return outcome;
    }
    if let Some(why) = acted.retry {
        outcome.reason = "Retrying".into();
        outcome.message = why;
        outcome.requeue = Some(Duration::from_secs(1));
        outcome.enforced_policy = before;
    } else if acted.created.is_some() {
        // Created and let through: say now what the next pass will find, and write once.
        outcome.message = super::decide::AWAITING_READY.into();
    }
    outcome.retained_claim = acted.retained_claim;
    outcome
}

/// The outcome when a step failed: the error is in the conditions (Stalled when only a person
/// can fix it). When the isolating NetworkPolicy (or Cilium policy) cannot be brought to what
/// the policy says and the live one may be wider, the pod is removed after
/// [`FAIL_CLOSED_AFTER`] (fail closed).
async fn after_failure(
    ctx: &Ctx,
    sandbox: &AgentSandbox,
    decision: &Decision,
    failed: &Failed,
    reading: &Reading,
    record: &mut PodRecord,
    now: Timestamp,
) -> Outcome {
    let error = &failed.error;
    tracing::warn!(sandbox = %sandbox.name_any(), during = %failed.during, %error, "reconcile step failed");
    let mut outcome = decision.outcome.clone();
    // The children may not be what the decision planned: the version enforced before stays.
    outcome.enforced_policy = enforced_before(sandbox);
    outcome.reason = error.reason().to_string();
    outcome.message = format!("could not {}: {}", failed.during, error.message());
    outcome.standing = Some(if error.needs_a_person() {
        Standing::Stalled
    } else {
        Standing::Progressing
    });
    let running = reading.pod.as_ref().filter(|p| p.ours && !p.deleting);
    let Some(pod) =
        running.filter(|_| failed.isolation && isolation_may_widen(ctx, sandbox, decision))
    else {
        record.isolation_pending_since = None;
        return outcome;
    };
    let since = *record.isolation_pending_since.get_or_insert(now);
    outcome = outcome.not_isolated(Some("NetworkPolicyNotApplied"));
    ctx.backoff.mark_urgent(&sandbox.uid().unwrap_or_default());
    let failing_ms = (now.as_millisecond() - since.as_millisecond()).max(0) as u128;
    if failing_ms < FAIL_CLOSED_AFTER.as_millis() {
        outcome.message = format!(
            "{}; the pod is removed if this lasts {} s",
            outcome.message,
            FAIL_CLOSED_AFTER.as_secs()
        );
        return outcome;
    }
    match children::delete_pod(&ctx.client, sandbox, &pod.uid, Grace::None).await {
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
    outcome
}

/// Whether the sandbox's live NetworkPolicy and Cilium policy (as cached) may allow more than
/// the planned ones.
fn isolation_may_widen(ctx: &Ctx, sandbox: &AgentSandbox, decision: &Decision) -> bool {
    let plan = match &decision.step {
        Step::Run(plan, _) | Step::Pause(plan) => plan,
        _ => return false,
    };
    let ns = sandbox.namespace().unwrap_or_default();
    let np_name = isolation_name(&base_name(sandbox));
    let live_np = ctx
        .caches
        .network_policies
        .get(&ObjectRef::new(&np_name).within(&ns))
        .and_then(|np| serde_json::to_value(&*np).ok());
    let desired_np = serde_json::to_value(&plan.network_policy).unwrap_or_default();
    if may_widen(live_np.as_ref(), &desired_np) {
        return true;
    }
    let Some(desired_cnp) = &plan.fqdn_policy else {
        // A Cilium policy that left the plan is removed first; while that fails it may widen.
        return ctx.facts().cilium;
    };
    match ctx.caches.cilium_policies.get() {
        Some(store) => {
            let name = desired_cnp["metadata"]["name"].as_str().unwrap_or_default();
            let live = store
                .get(&ObjectRef::new_with(name, super::act::cilium_resource()).within(&ns))
                .and_then(|o| serde_json::to_value(&*o).ok());
            may_widen(live.as_ref(), desired_cnp)
        }
        None => true,
    }
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
    let mut out = Vec::new();
    let mut own_base = None;
    // Its owner (a sandbox's isolation policy), and every sandbox it selects: an owner
    // reference or Palisade's labels on it prove nothing about what else it selects.
    if let Some(owner) = controlling_sandbox(&np.metadata) {
        let owned = ctx
            .caches
            .sandboxes
            .get(&ObjectRef::new(&owner.name).within(ns.as_deref().unwrap_or_default()))
            .filter(|s| s.uid().as_deref() == Some(owner.uid.as_str()));
        if let Some(s) = owned {
            out.push(ObjectRef::from_obj(&*s));
            own_base = Some(base_name(&s));
        }
    }
    let selector = np
        .spec
        .as_ref()
        .and_then(|s| s.pod_selector.clone())
        .unwrap_or_default();
    // The common case, each sandbox's own isolation policy: it selects only its pod, so only
    // its owner is affected (no scan of every sandbox per event).
    if out.len() == 1
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(Vec::is_empty)
        && selector
            .match_labels
            .as_ref()
            .is_some_and(|m| m.len() == 1 && m.get(crate::api::SANDBOX_LABEL) == own_base.as_ref())
    {
        return out;
    }
    for s in ctx
        .caches
        .sandboxes
        .state()
        .iter()
        .filter(|s| s.namespace() == ns)
    {
        // Children carry the sandbox's name, or the warm sandbox's it took; the pod's labels
        // are the template's with the sandbox's own on top.
        let name = base_name(s);
        let mut labels = s
            .pool_template()
            .filter(|_| s.spec.pool_ref.is_some())
            .map(|t| t.pod_labels)
            .unwrap_or_default();
        labels.extend(s.spec.pod_labels.clone());
        labels.extend(crate::render::children::child_labels(&name));
        if let Some(pod) = ctx
            .caches
            .pods
            .get(&ObjectRef::new(&name).within(ns.as_deref().unwrap_or_default()))
        {
            labels.extend(pod.labels().clone());
        }
        let blocked_by_one = s.status.as_ref().is_some_and(|st| {
            st.conditions
                .iter()
                .any(|c| c.type_ == "NetworkIsolated" && c.reason == "AdditionalNetworkPolicy")
        });
        let r = ObjectRef::from_obj(&**s);
        if (blocked_by_one || selects(&selector, &labels)) && !out.contains(&r) {
            out.push(r);
        }
    }
    out
}

/// The sandboxes of a pool that have not started yet (they wait for it, or for a warm sandbox).
pub fn waiting_for_pool(
    ctx: &Ctx,
    pool: &crate::api::AgentSandboxPool,
) -> Vec<ObjectRef<AgentSandbox>> {
    let name = pool.name_any();
    ctx.caches
        .sandboxes
        .state()
        .iter()
        .filter(|s| {
            s.namespace() == pool.namespace()
                && s.spec.pool_ref.as_ref().is_some_and(|r| r.name == name)
                && s.status.as_ref().is_none_or(|st| st.pool.is_none())
        })
        .map(|s| ObjectRef::from_obj(&**s))
        .collect()
}

/// Whether a sandbox watch event starts a pass. The operator's own status writes do not (a pass
/// that needs its write in the cache waits for it, see `written`), nor does a relist of an
/// unchanged sandbox; any change of what `decision_inputs` covers does, and so does a status
/// written by anyone else (the operator puts back a status it did not write). `seen` holds
/// each sandbox's inputs and version.
pub fn starts_pass(
    seen: &mut SeenSandboxes,
    written: &Written,
    event: &Result<watcher::Event<AgentSandbox>, watcher::Error>,
) -> bool {
    let s = match event {
        Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => s,
        Ok(watcher::Event::Delete(s)) => {
            if let Some(uid) = s.uid() {
                seen.live.remove(&uid);
            }
            return true;
        }
        // A relist: what it does not list again was deleted unseen, and is forgotten at its end.
        Ok(watcher::Event::Init) => {
            // A relist that restarts keeps what the first one had not listed again yet.
            let live = std::mem::take(&mut seen.live);
            seen.before_relist
                .get_or_insert_with(HashMap::new)
                .extend(live);
            return true;
        }
        Ok(watcher::Event::InitDone) => {
            seen.before_relist = None;
            return true;
        }
        _ => return true,
    };
    let Some(uid) = s.uid() else { return true };
    let inputs = decision_inputs(s);
    let version = s.resource_version();
    let before = match (event, seen.before_relist.as_mut()) {
        (Ok(watcher::Event::InitApply(_)), Some(old)) => old.remove(&uid),
        _ => None,
    };
    let before = before.or_else(|| seen.live.remove(&uid));
    seen.live.insert(uid.clone(), (inputs, version.clone()));
    match before {
        Some((before, _)) if before != inputs => true,
        Some((_, seen_version)) if seen_version == version => false,
        Some(_) => !written.is_own(&uid, version.as_deref()),
        None => true,
    }
}

/// Each sandbox's decision inputs and resourceVersion as last seen by [`starts_pass`], by UID;
/// during a relist, the view before it (what the relist does not list again is forgotten).
#[derive(Debug, Default)]
pub struct SeenSandboxes {
    live: HashMap<String, (u64, Option<String>)>,
    before_relist: Option<HashMap<String, (u64, Option<String>)>>,
}

impl SeenSandboxes {
    /// How many sandboxes are remembered.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

/// What of a sandbox, besides its status, starts a pass when it changes.
pub fn decision_inputs(s: &AgentSandbox) -> u64 {
    use std::hash::{Hash, Hasher};
    let m = s.meta();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    m.generation.hash(&mut h);
    m.labels.hash(&mut h);
    m.annotations.hash(&mut h);
    m.finalizers.hash(&mut h);
    m.deletion_timestamp.as_ref().map(|t| t.0).hash(&mut h);
    for r in m.owner_references.iter().flatten() {
        (&r.uid, r.controller).hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::sandbox::PolicyVersion;
    use crate::reconcile::decide::Step;
    use crate::reconcile::status::Outcome;

    #[test]
    fn a_status_write_alone_starts_no_pass() {
        let base: AgentSandbox = serde_json::from_value(serde_json::json!({
            "apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox",
            "metadata": {"name": "a", "namespace": "ns", "uid": "u", "generation": 1,
                "resourceVersion": "10"},
            "spec": {"policyRef": {"name": "p"}, "image": "i"}
        }))
        .expect("sandbox");
        let mut status_only = base.clone();
        status_only.metadata.resource_version = Some("11".into());
        status_only.status = Some(AgentSandboxStatus {
            phase: Some(SandboxPhase::Running),
            ..Default::default()
        });
        assert_eq!(decision_inputs(&base), decision_inputs(&status_only));
        // As events: the operator's own status write starts no pass, anyone else's does, and
        // so does a relist of a sandbox whose version moved on unseen; a relist of the same
        // version does not.
        let written = Written::default();
        let mut seen = SeenSandboxes::default();
        let apply = |s: &AgentSandbox| Ok(watcher::Event::Apply(s.clone()));
        assert!(
            starts_pass(&mut seen, &written, &apply(&base)),
            "first seen"
        );
        written.wrote("u", Some("10"), Some("11"));
        assert!(
            !starts_pass(&mut seen, &written, &apply(&status_only)),
            "own write"
        );
        assert!(!starts_pass(
            &mut seen,
            &written,
            &Ok(watcher::Event::InitApply(status_only.clone()))
        ));
        let mut forged = status_only.clone();
        forged.metadata.resource_version = Some("12".into());
        assert!(
            starts_pass(&mut seen, &written, &apply(&forged)),
            "someone else's write"
        );
        let changed = |f: &dyn Fn(&mut AgentSandbox)| {
            let mut s = base.clone();
            f(&mut s);
            decision_inputs(&s) != decision_inputs(&base)
        };
        assert!(changed(&|s| s.metadata.generation = Some(2)));
        assert!(changed(&|s| {
            s.metadata.annotations = Some([("k".to_string(), "v".to_string())].into())
        }));
        assert!(changed(&|s| {
            s.metadata.labels = Some([("k".to_string(), "v".to_string())].into())
        }));
        assert!(changed(&|s| {
            s.metadata.deletion_timestamp = Some(Timestamp::now().into())
        }));
    }

    #[test]
    fn a_pass_that_stopped_early_keeps_the_version_enforced_before() {
        let version = |generation| PolicyVersion {
            uid: "p".into(),
            generation,
        };
        let mut outcome = Outcome::new(SandboxPhase::Running, "Running", "the pod is ready");
        outcome.enforced_policy = Some(version(2));
        let decision = Decision {
            step: Step::Leave,
            outcome,
            lifetime: Default::default(),
            record: Default::default(),
            confirm: None,
        };
        // Every child applied: the decision's version.
        let done = after(&decision, Acted::default(), Some(version(1)));
        assert_eq!(done.enforced_policy, Some(version(2)));
        // A child still being deleted: the NetworkPolicy of version 2 may not be there.
        let retry = || Acted {
            retry: Some("ServiceAccount a is being deleted".into()),
            ..Default::default()
        };
        assert_eq!(
            after(&decision, retry(), Some(version(1))).enforced_policy,
            Some(version(1))
        );
        assert_eq!(after(&decision, retry(), None).enforced_policy, None);
        // A name held by someone else: blocked, nothing enforced.
        let conflict = Acted {
            conflict: Some("NetworkPolicy a".into()),
            ..Default::default()
        };
        assert_eq!(
            after(&decision, conflict, Some(version(1))).enforced_policy,
            None
        );
    }

    #[test]
    fn a_relist_forgets_sandboxes_deleted_unseen_and_starts_no_pass_for_unchanged_ones() {
        let sandbox = |name: &str, rv: &str| -> AgentSandbox {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox",
                "metadata": {"name": name, "namespace": "ns", "uid": name, "generation": 1,
                    "resourceVersion": rv},
                "spec": {"policyRef": {"name": "p"}, "image": "i"}
            }))
            .expect("sandbox")
        };
        let written = Written::default();
        let mut seen = SeenSandboxes::default();
        let event = |e: watcher::Event<AgentSandbox>| Ok(e);
        for s in ["a", "b"] {
            assert!(starts_pass(
                &mut seen,
                &written,
                &event(watcher::Event::Apply(sandbox(s, "1")))
            ));
        }
        assert_eq!(seen.len(), 2);
        // The watch was down; b was deleted meanwhile. The relist lists a, unchanged.
        assert!(starts_pass(
            &mut seen,
            &written,
            &event(watcher::Event::Init)
        ));
        assert!(!starts_pass(
            &mut seen,
            &written,
            &event(watcher::Event::InitApply(sandbox("a", "1")))
        ));
        assert!(starts_pass(
            &mut seen,
            &written,
            &event(watcher::Event::InitDone)
        ));
        assert_eq!(seen.len(), 1, "b is forgotten");
        // A relist that finds a newer version someone else wrote starts a pass.
        assert!(starts_pass(
            &mut seen,
            &written,
            &event(watcher::Event::Init)
        ));
        assert!(starts_pass(
            &mut seen,
            &written,
            &event(watcher::Event::InitApply(sandbox("a", "2")))
        ));
    }
}
