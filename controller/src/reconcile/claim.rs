//! A sandbox of a pool (`spec.poolRef`) before its normal pass: it takes a ready warm sandbox of
//! the pool, or starts cold from the template, and records which in `status.pool` along with
//! the template (later changes of the pool leave it as it is).
//!
//! Taking a warm sandbox: its `palisade.dev/claimed-by` annotation is written with its
//! resourceVersion as a precondition (two sandboxes can never both take it), `status.pool`
//! records it, its children (pod, NetworkPolicy, ServiceAccount, Service, workspace, Cilium
//! policy, seccomp profile) get this sandbox as their controller, each with its
//! resourceVersion as a precondition, and the emptied warm sandbox is deleted. The pod never
//! stops and never runs without its NetworkPolicy: nothing is recreated, only owners change.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::api::pool::{CLAIMED_BY_ANNOTATION, POOL_LABEL, TEMPLATE_HASH_LABEL};
use crate::api::sandbox::{PoolStart, SandboxPoolStatus, WhenEmpty};
use crate::api::{AgentSandbox, AgentSandboxStatus, MANAGER, SandboxPhase};
use crate::render::children::{service_account_name, workspace_claim_name};
use crate::render::network::{fqdn_policy_name, isolation_name};
use crate::render::template::{merge, template_hash};

use super::children::{delete_precisely, owner_reference};
use super::lifetime::Lifetime;
use super::ownership::controlled_by;
use super::status::{Names, Outcome, status};
use super::{Ctx, Error};

/// Annotation on a taken warm sandbox: when it was taken (for the pool to clean up a warm
/// sandbox whose taker went away before moving its children).
pub const CLAIMED_AT_ANNOTATION: &str = "palisade.dev/claimed-at";
/// Warm sandboxes one pass tries to take at most.
const MAX_TRIES: usize = 5;
/// How long after its creation a sandbox that lost every warm sandbox it tried to others looks
/// again instead of starting cold.
const CONTENTION_WINDOW: jiff::SignedDuration = jiff::SignedDuration::from_secs(5);
/// How long `whenEmpty: Wait` waits by default.
pub const DEFAULT_WAIT_SECONDS: i32 = 60;

/// What the normal pass runs with.
pub enum Prepared {
    /// The sandbox as the pass should see it: for a sandbox of a pool, the template's spec with
    /// its own fields on top.
    Run(Arc<AgentSandbox>),
    /// Nothing more this pass.
    Done(Action),
}

/// Whether `sandbox` is a warm sandbox some sandbox has taken: it is left alone (its children
/// are moving to the one that took it) until its pool deletes it.
pub fn taken(sandbox: &AgentSandbox) -> bool {
    sandbox.annotations().contains_key(CLAIMED_BY_ANNOTATION)
        && sandbox.labels().contains_key(POOL_LABEL)
        && super::ownership::controller_of(sandbox.meta())
            .is_some_and(|o| o.kind == "AgentSandboxPool")
}

/// Readies a sandbox of a pool for its pass (see the module's documentation).
pub async fn prepare(
    ctx: &Ctx,
    sandbox: Arc<AgentSandbox>,
    now: Timestamp,
) -> Result<Prepared, Error> {
    let Some(pool_ref) = sandbox.spec.pool_ref.clone() else {
        return Ok(Prepared::Run(sandbox));
    };
    let ns = sandbox.namespace().ok_or(Error::Missing("namespace"))?;
    let uid = sandbox.uid().ok_or(Error::Missing("uid"))?;
    let previous = sandbox.status.clone().unwrap_or_default();
    if let Some(recorded) = &previous.pool {
        if recorded.start == PoolStart::Warm {
            // Moved by an earlier pass of this process: only the caches are behind.
            if !ctx.moved.done(&uid, recorded) {
                moving_failed(
                    ctx,
                    &sandbox,
                    take_children(ctx, &sandbox, recorded, None).await,
                    now,
                )
                .await?;
            }
            if moving(ctx, &ns, &uid, recorded) {
                return Ok(Prepared::Done(Action::requeue(SETTLE)));
            }
            ctx.moved.forget(&uid);
        }
        return Ok(Prepared::Run(with_template(sandbox)?));
    }
    // Failed waiting for a warm sandbox: final.
    if previous.phase == Some(SandboxPhase::Failed) {
        return Ok(Prepared::Done(Action::await_change()));
    }

    // A warm sandbox taken in an earlier pass that ended before recording it.
    let warm_of_pool = |s: &&Arc<AgentSandbox>| {
        s.namespace().as_deref() == Some(ns.as_str())
            && s.labels().get(POOL_LABEL) == Some(&pool_ref.name)
    };
    let sandboxes = ctx.caches.sandboxes.state();
    if let Some(mine) = sandboxes
        .iter()
        .filter(warm_of_pool)
        .find(|s| s.annotations().get(CLAIMED_BY_ANNOTATION) == Some(&uid))
    {
        // A warm sandbox's spec is the template it was made from.
        let template = mine.spec.clone();
        let recorded = SandboxPoolStatus {
            name: pool_ref.name.clone(),
            start: PoolStart::Warm,
            reason: None,
            instance: Some(mine.name_any()),
            instance_uid: mine.uid(),
            template_hash: mine
                .labels()
                .get(TEMPLATE_HASH_LABEL)
                .cloned()
                .unwrap_or_default(),
            template: serde_json::to_value(&template)?,
        };
        return record(ctx, &sandbox, recorded, None).await;
    }

    // A sandbox that controls a pod already started once (its status.pool was lost): it does
    // not take another one; a person must look.
    if ctx
        .caches
        .pods
        .state()
        .iter()
        .any(|p| p.namespace().as_deref() == Some(ns.as_str()) && controlled_by(p.meta(), &uid))
    {
        let outcome = Outcome::blocked(
            "PoolStateLost",
            "the sandbox controls a pod but its status.pool is gone: it takes no other warm sandbox; delete and recreate the sandbox",
        );
        if let Some(again) = write(ctx, &sandbox, &outcome, now).await? {
            return Ok(Prepared::Done(again));
        }
        return Ok(Prepared::Done(Action::await_change()));
    }
    let claim = sandbox.spec.pool.clone().unwrap_or_default();
    let wait = claim.wait_seconds.unwrap_or(DEFAULT_WAIT_SECONDS);
    let waits = claim.when_empty == Some(WhenEmpty::Wait);
    let created = sandbox
        .meta()
        .creation_timestamp
        .as_ref()
        .map_or(now, |t| t.0);
    let deadline = created
        .checked_add(jiff::SignedDuration::from_secs(wait as i64))
        .unwrap_or(created);
    let exhausted = || {
        Outcome::new(
            SandboxPhase::Failed,
            "PoolExhausted",
            format!(
                "no warm sandbox of pool {} was ready within {wait} s (whenEmpty: Wait)",
                pool_ref.name
            ),
        )
    };

    let Some(pool) = ctx
        .caches
        .pools
        .get(&ObjectRef::new(&pool_ref.name).within(&ns))
    else {
        if waits && now >= deadline {
            if let Some(again) = write(ctx, &sandbox, &exhausted(), now).await? {
                return Ok(Prepared::Done(again));
            }
            return Ok(Prepared::Done(Action::await_change()));
        }
        let outcome = Outcome::blocked(
            "PoolNotFound",
            format!(
                "AgentSandboxPool {ns}/{} not found; the sandbox starts once it exists",
                pool_ref.name
            ),
        );
        if let Some(again) = write(ctx, &sandbox, &outcome, now).await? {
            return Ok(Prepared::Done(again));
        }
        let left = (deadline.as_millisecond() - now.as_millisecond()).max(0) as u64;
        let again = if waits {
            Duration::from_millis(left).min(Duration::from_secs(60))
        } else {
            Duration::from_secs(60)
        };
        return Ok(Prepared::Done(Action::requeue(
            again.max(Duration::from_millis(200)),
        )));
    };
    let template = pool.spec.template.clone();
    let hash = template_hash(&template);
    let merged = merge(&template, &sandbox.spec).map_err(|_| Error::Missing("template"))?;
    let mut recorded = SandboxPoolStatus {
        name: pool_ref.name.clone(),
        start: PoolStart::Cold,
        reason: None,
        instance: None,
        instance_uid: None,
        template_hash: hash.clone(),
        template: serde_json::to_value(&template)?,
    };
    if !merged.custom.is_empty() {
        recorded.reason = Some(format!(
            "the sandbox sets {} beyond the pool's template: a warm sandbox does not fit",
            merged.custom.join(", ")
        ));
        return record(ctx, &sandbox, recorded, None).await;
    }

    let current_policy = ctx
        .caches
        .policies
        .get(&ObjectRef::new(&template.policy_ref.name).within(&ns))
        .and_then(|p| Some((p.uid()?, p.metadata.generation?)));
    let pool_uid = pool.uid().unwrap_or_default();
    // A pool being deleted hands out nothing: the garbage collector may delete a warm sandbox
    // it still controls, and the children not yet moved with it, in the middle of a take.
    let deleting = pool.meta().deletion_timestamp.is_some();
    let mut candidates: Vec<&Arc<AgentSandbox>> = sandboxes
        .iter()
        .filter(|_| !deleting)
        .filter(warm_of_pool)
        .filter(|s| fit(s, &pool_uid, &hash, current_policy.as_ref()))
        .collect();
    // Sandboxes taking at the same time start at different candidates.
    if !candidates.is_empty() {
        let mut h = DefaultHasher::new();
        uid.hash(&mut h);
        let start = (h.finish() % candidates.len() as u64) as usize;
        candidates.rotate_left(start);
    }
    let api: Api<AgentSandbox> = Api::namespaced(ctx.client.clone(), &ns);
    let fit_in_cache = candidates.len();
    // A few tries: under contention the next pass sees a fresher cache.
    for candidate in candidates.into_iter().take(MAX_TRIES) {
        if let Some(taken) = take(&api, candidate, &uid, now, |s| {
            fit(s, &pool_uid, &hash, current_policy.as_ref())
        })
        .await?
        {
            recorded.start = PoolStart::Warm;
            recorded.instance = Some(taken.name_any());
            recorded.instance_uid = taken.uid();
            return record(ctx, &sandbox, recorded, Some(&taken)).await;
        }
    }

    // Every try lost to another sandbox, and the cache shows fit warm sandboxes not tried:
    // while the sandbox is young, look again (with a fresher cache, after a wait that grows
    // with its age) rather than start cold past warm sandboxes still free.
    if fit_in_cache > MAX_TRIES && now < created + CONTENTION_WINDOW {
        let age = (now.as_millisecond() - created.as_millisecond()).max(0) as u64;
        let jitter = uid
            .bytes()
            .fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(b as u64))
            % 100;
        let wait = Duration::from_millis(200 + age / 2 + jitter).min(Duration::from_millis(1600));
        return Ok(Prepared::Done(Action::requeue(wait)));
    }
    if waits {
        if now >= deadline {
            if let Some(again) = write(ctx, &sandbox, &exhausted(), now).await? {
                return Ok(Prepared::Done(again));
            }
            return Ok(Prepared::Done(Action::await_change()));
        }
        let outcome = Outcome::new(
            SandboxPhase::Pending,
            "WaitingForPool",
            format!(
                "waiting for a warm sandbox of pool {} (until {wait} s after creation)",
                pool_ref.name
            ),
        );
        if let Some(again) = write(ctx, &sandbox, &outcome, now).await? {
            return Ok(Prepared::Done(again));
        }
        let left = (deadline.as_millisecond() - now.as_millisecond()).max(0) as u64;
        return Ok(Prepared::Done(Action::requeue(
            Duration::from_millis(left).min(Duration::from_millis(500)),
        )));
    }
    recorded.reason = Some(format!(
        "no warm sandbox of pool {} was ready",
        pool_ref.name
    ));
    record(ctx, &sandbox, recorded, None).await
}

/// Whether a warm sandbox can be handed out: the pool's own, of the current template, not
/// taken, not being deleted, Ready for its current generation, and enforcing the policy's
/// current version.
pub fn fit(s: &AgentSandbox, pool_uid: &str, hash: &str, policy: Option<&(String, i64)>) -> bool {
    let Some(status) = s.status.as_ref() else {
        return false;
    };
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let enforced = match (policy, status.enforced_policy.as_ref()) {
        (Some((uid, generation)), Some(e)) => e.uid == *uid && e.generation == *generation,
        _ => false,
    };
    controlled_by(s.meta(), pool_uid)
        && s.labels().get(TEMPLATE_HASH_LABEL).map(String::as_str) == Some(hash)
        && !taken(s)
        && s.meta().deletion_timestamp.is_none()
        && status.phase == Some(SandboxPhase::Running)
        && ready
        && status.observed_generation == s.meta().generation
        && enforced
}

/// Marks `candidate` taken by `uid`, with its resourceVersion as a precondition. On a conflict
/// (the cache was behind), reads it again and tries once more if it is still `fit`.
async fn take(
    api: &Api<AgentSandbox>,
    candidate: &AgentSandbox,
    uid: &str,
    now: Timestamp,
    fit: impl Fn(&AgentSandbox) -> bool,
) -> Result<Option<AgentSandbox>, Error> {
    let name = candidate.name_any();
    let mut version = candidate.resource_version();
    for attempt in 0..2 {
        let patch = json!({"metadata": {
            "resourceVersion": version,
            "annotations": {CLAIMED_BY_ANNOTATION: uid, CLAIMED_AT_ANNOTATION: now.to_string()},
        }});
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(taken) => return Ok(Some(taken)),
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt == 0 => {
                match api.get_opt(&name).await? {
                    Some(fresh) if fit(&fresh) && fresh.uid() == candidate.uid() => {
                        version = fresh.resource_version();
                    }
                    _ => return Ok(None),
                }
            }
            Err(kube::Error::Api(s)) if s.code == 409 => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// Records how the sandbox starts, and goes on with the pass (with the recorded template).
/// `taken` is the warm sandbox as this pass's take returned it.
async fn record(
    ctx: &Ctx,
    sandbox: &AgentSandbox,
    recorded: SandboxPoolStatus,
    taken: Option<&AgentSandbox>,
) -> Result<Prepared, Error> {
    let start = recorded.start;
    let mut st = sandbox.status.clone().unwrap_or_default();
    st.pool = Some(recorded);
    let Some(written) = apply_status(ctx, sandbox, st).await? else {
        return Ok(Prepared::Done(Action::requeue(STALE)));
    };
    let written = Arc::new(written);
    if start == PoolStart::Warm
        && let Some(recorded) = written.status.as_ref().and_then(|s| s.pool.as_ref())
    {
        let now = Timestamp::now();
        moving_failed(
            ctx,
            &written,
            take_children(ctx, &written, recorded, taken).await,
            now,
        )
        .await?;
        let ns = written.namespace().unwrap_or_default();
        let uid = written.uid().unwrap_or_default();
        if moving(ctx, &ns, &uid, recorded) {
            return Ok(Prepared::Done(Action::requeue(SETTLE)));
        }
    }
    Ok(Prepared::Run(with_template(written)?))
}

/// A move of the taken warm sandbox's children that failed is said in status (Stalled when only
/// a person can fix it) before the error goes to the retry with backoff: the sandbox does not
/// sit silent with `status.pool` recorded and nothing running.
async fn moving_failed(
    ctx: &Ctx,
    sandbox: &AgentSandbox,
    result: Result<(), Error>,
    now: Timestamp,
) -> Result<(), Error> {
    let Err(error) = result else {
        return Ok(());
    };
    // A sandbox that runs already (an operator restarted after the move) keeps its status; the
    // retry's metrics and log say it.
    let running = sandbox
        .status
        .as_ref()
        .is_some_and(|st| st.pod_name.is_some() || st.enforced_policy.is_some());
    if error.namespace_terminating() || running {
        return Err(error);
    }
    let mut outcome = Outcome::new(
        SandboxPhase::Starting,
        error.reason(),
        format!(
            "could not move the taken warm sandbox's children to this sandbox: {}",
            error.message()
        ),
    );
    outcome.standing = Some(if error.needs_a_person() {
        super::status::Standing::Stalled
    } else {
        super::status::Standing::Progressing
    });
    if let Err(e) = write(ctx, sandbox, &outcome, now).await {
        tracing::warn!(sandbox = %sandbox.name_any(), error = %e, "could not say in status that the move failed");
    }
    Err(error)
}

/// How soon to look again while the caches catch up with a move.
const SETTLE: Duration = Duration::from_millis(15);

/// Whether the caches still show the pod or its NetworkPolicy under the warm sandbox taken:
/// a pass on them would take the pod for another's (NameConflict).
fn moving(ctx: &Ctx, ns: &str, taker: &str, recorded: &SandboxPoolStatus) -> bool {
    let (Some(instance), Some(from)) = (&recorded.instance, &recorded.instance_uid) else {
        return false;
    };
    let c = &ctx.caches;
    // A warm sandbox still there and not taken by a pool's sandbox: nothing moves (see
    // take_children), so nothing to wait for; unless this process moved its children (the
    // cache has not seen the take yet).
    let refused = !ctx.moved.done(taker, recorded)
        && c.sandboxes
            .get(&ObjectRef::new(instance).within(ns))
            .is_some_and(|w| w.uid().as_deref() == Some(from.as_str()) && !taken(&w));
    if refused {
        return false;
    }
    let pod = c
        .pods
        .get(&ObjectRef::new(instance).within(ns))
        .is_some_and(|p| controlled_by(p.meta(), from));
    let np = c
        .network_policies
        .get(&ObjectRef::new(&isolation_name(instance)).within(ns))
        .is_some_and(|p| controlled_by(p.meta(), from));
    pod || np
}

/// The sandbox with the recorded template's spec and its own fields on top.
fn with_template(sandbox: Arc<AgentSandbox>) -> Result<Arc<AgentSandbox>, Error> {
    let Some(template) = sandbox.pool_template() else {
        return Ok(sandbox);
    };
    let merged = merge(&template, &sandbox.spec).map_err(|_| Error::Missing("template"))?;
    let mut view = (*sandbox).clone();
    view.spec = merged.spec;
    view.spec.pool_ref = sandbox.spec.pool_ref.clone();
    Ok(Arc::new(view))
}

/// Writes a status for a pass that stops here. `Some` (look again soon) when the sandbox was
/// newer on the server than in the cache: nothing was written.
async fn write(
    ctx: &Ctx,
    sandbox: &AgentSandbox,
    outcome: &Outcome,
    now: Timestamp,
) -> Result<Option<Action>, Error> {
    let previous = sandbox.status.clone().unwrap_or_default();
    let name = sandbox.name_any();
    let ns = sandbox.namespace().unwrap_or_default();
    let new = status(
        &previous,
        outcome,
        &Lifetime::of(&previous),
        sandbox.meta().generation,
        &Names {
            name: &name,
            namespace: &ns,
            cluster_domain: &ctx.config.facts.cluster_domain,
        },
        now,
    );
    let own = AgentSandboxStatus {
        egress_denials: None,
        ..previous
    };
    if new != own && apply_status(ctx, sandbox, new).await?.is_none() {
        return Ok(Some(Action::requeue(STALE)));
    }
    Ok(None)
}

/// How soon a pass that found its sandbox newer on the server than in the cache looks again.
const STALE: Duration = Duration::from_millis(200);

/// Applies the status, conditional on the sandbox's resourceVersion as the pass read it: a pass
/// on a stale copy (one that does not show a take recorded since) must not record another
/// start over it, nor drop `status.pool`. `None` when the server had a newer version.
async fn apply_status(
    ctx: &Ctx,
    sandbox: &AgentSandbox,
    mut st: AgentSandboxStatus,
) -> Result<Option<AgentSandbox>, Error> {
    // The gateway writes egressDenials; the operator never applies (so never owns) that field.
    st.egress_denials = None;
    let ns = sandbox.namespace().unwrap_or_default();
    let api: Api<AgentSandbox> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = json!({"apiVersion": crate::api::API_VERSION, "kind": "AgentSandbox",
        "metadata": {"resourceVersion": sandbox.resource_version()}, "status": st});
    let written = match api
        .patch_status(
            &sandbox.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(w) => w,
        Err(kube::Error::Api(e)) if e.code == 409 => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if let Some(uid) = sandbox.uid() {
        ctx.written.wrote(
            &uid,
            sandbox.meta().resource_version.as_deref(),
            written.meta().resource_version.as_deref(),
        );
    }
    Ok(Some(written))
}

/// Moves the children of the warm sandbox taken to `sandbox` (those still controlled by the
/// warm sandbox), then deletes the warm sandbox. Runs while the warm sandbox is in the cache,
/// and acts only on a warm sandbox of this sandbox's pool that this very sandbox took (its
/// annotation, which only the operator may write, written under a resourceVersion
/// precondition and never rewritten): as `taken` (this pass took it) or the cache shows it
/// with that annotation, else as read directly. The children are moved as the caches show
/// them, each under its cached resourceVersion (a 409 is settled on the live object); the
/// Cilium policy and seccomp profiles are read directly. Once done, later passes of this
/// process only wait for the caches (`Moved`).
async fn take_children(
    ctx: &Ctx,
    sandbox: &AgentSandbox,
    recorded: &SandboxPoolStatus,
    taken: Option<&AgentSandbox>,
) -> Result<(), Error> {
    let (Some(instance), Some(from)) = (&recorded.instance, &recorded.instance_uid) else {
        return Ok(());
    };
    let ns = sandbox.namespace().ok_or(Error::Missing("namespace"))?;
    let Some(cached) = ctx
        .caches
        .sandboxes
        .get(&ObjectRef::new(instance).within(&ns))
        .filter(|w| w.uid().as_deref() == Some(from.as_str()))
    else {
        return Ok(());
    };
    let uid = sandbox.uid().ok_or(Error::Missing("uid"))?;
    let client = &ctx.client;
    let sandboxes: Api<AgentSandbox> = Api::namespaced(client.clone(), &ns);
    let ours = |w: &AgentSandbox| {
        w.uid().as_deref() == Some(from.as_str())
            && w.annotations().get(CLAIMED_BY_ANNOTATION) == Some(&uid)
    };
    let warm = match taken.filter(|w| ours(w)) {
        Some(w) => w.clone(),
        None if ours(&cached) => (*cached).clone(),
        None => match sandboxes
            .get_opt(instance)
            .await?
            .filter(|w| w.uid().as_deref() == Some(from.as_str()))
        {
            Some(w) => w,
            None => return Ok(()),
        },
    };
    let pool = sandbox.spec.pool_ref.as_ref().map(|r| r.name.as_str());
    let of_pool = super::ownership::controller_of(warm.meta())
        .is_some_and(|o| o.kind == "AgentSandboxPool" && Some(o.name.as_str()) == pool)
        && warm.labels().get(POOL_LABEL).map(String::as_str) == pool;
    if !of_pool || warm.annotations().get(CLAIMED_BY_ANNOTATION) != Some(&uid) {
        tracing::warn!(sandbox = %sandbox.name_any(), warm = %instance, "status.pool names a warm sandbox this sandbox did not take: nothing is moved");
        return Ok(());
    }
    let to = owner_reference(sandbox).ok_or(Error::Missing("uid"))?;
    // The children as the caches hold them: a warm sandbox is Ready, so its children were
    // in the caches before it could be taken. One missing there (its labels removed) stays
    // with the warm sandbox and goes with it; the sandbox creates its own, gated as ever.
    let c = &ctx.caches;
    let children = [
        (
            ApiResource::erase::<Pod>(&()),
            instance.clone(),
            c.pods
                .get(&ObjectRef::new(instance).within(&ns))
                .map(|o| o.metadata.clone()),
        ),
        (
            ApiResource::erase::<NetworkPolicy>(&()),
            isolation_name(instance),
            c.network_policies
                .get(&ObjectRef::new(&isolation_name(instance)).within(&ns))
                .map(|o| o.metadata.clone()),
        ),
        (
            ApiResource::erase::<ServiceAccount>(&()),
            service_account_name(instance),
            c.service_accounts
                .get(&ObjectRef::new(&service_account_name(instance)).within(&ns))
                .map(|o| o.metadata.clone()),
        ),
        (
            ApiResource::erase::<Service>(&()),
            instance.clone(),
            c.services
                .get(&ObjectRef::new(instance).within(&ns))
                .map(|o| o.metadata.clone()),
        ),
        (
            ApiResource::erase::<PersistentVolumeClaim>(&()),
            workspace_claim_name(instance),
            c.claims
                .get(&ObjectRef::new(&workspace_claim_name(instance)).within(&ns))
                .map(|o| o.metadata.clone()),
        ),
    ];
    for (ar, name, cached) in children {
        move_cached(client, &ar, &ns, &name, from, &to, cached).await?;
    }
    let facts = ctx.facts();
    if facts.cilium {
        let ar = super::act::cilium_resource();
        move_dynamic(client, &ar, &ns, &fqdn_policy_name(instance), from, &to).await?;
    }
    if facts.seccomp_profile_crd {
        let ar = super::act::seccomp_resource();
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
        let selector = format!("{}={instance}", crate::api::SANDBOX_LABEL);
        for p in api.list(&ListParams::default().labels(&selector)).await? {
            move_dynamic(client, &ar, &ns, &p.name_any(), from, &to).await?;
        }
    }
    // Emptied: the warm sandbox goes.
    delete_precisely(&sandboxes, instance, from).await?;
    ctx.moved.moved(&uid, recorded);
    Ok(())
}

/// Takes whose children this process has moved and whose warm sandbox it deleted, by the
/// taker's UID (with the warm sandbox's UID): the taker's next passes make no request until
/// the caches show the move. Forgotten once they do, or when the taker goes; a restarted
/// operator starts empty and moves again (every move is conditional, so a second one changes
/// nothing).
#[derive(Debug, Default)]
pub struct Moved(std::sync::Mutex<std::collections::HashMap<String, String>>);

impl Moved {
    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn moved(&self, taker: &str, recorded: &SandboxPoolStatus) {
        if let Some(warm) = &recorded.instance_uid {
            self.map().insert(taker.to_string(), warm.clone());
        }
    }

    /// Whether this process moved the children of the warm sandbox `recorded` names.
    pub fn done(&self, taker: &str, recorded: &SandboxPoolStatus) -> bool {
        recorded.instance_uid.is_some() && self.map().get(taker) == recorded.instance_uid.as_ref()
    }

    /// Forgets `taker`'s take (settled, or the taker is gone).
    pub fn forget(&self, taker: &str) {
        self.map().remove(taker);
    }

    /// Forgets every taker whose UID is not among `live` (deleted without a pass seeing it).
    pub fn retain(&self, live: &std::collections::HashSet<String>) {
        self.map().retain(|taker, _| live.contains(taker));
    }
}

fn owner_patch(version: Option<String>, to: &OwnerReference) -> serde_json::Value {
    json!({"metadata": {"resourceVersion": version, "ownerReferences": [to]}})
}

/// Gives `name` (of kind `ar`) the controller `to` if the cache shows `from` controlling it,
/// under the cached resourceVersion as a precondition; a cache behind the object (409) is
/// settled on the live object.
async fn move_cached(
    client: &kube::Client,
    ar: &ApiResource,
    ns: &str,
    name: &str,
    from: &str,
    to: &OwnerReference,
    cached: Option<ObjectMeta>,
) -> Result<(), Error> {
    let Some(meta) = cached else {
        return Ok(());
    };
    if !controlled_by(&meta, from) {
        return Ok(());
    }
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
    match api
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&owner_patch(meta.resource_version, to)),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            move_dynamic(client, ar, ns, name, from, to).await
        }
        Err(e) => Err(e.into()),
    }
}

/// Gives `name` (of kind `ar`) the controller `to` if `from` controls it, under its
/// resourceVersion as a precondition.
async fn move_dynamic(
    client: &kube::Client,
    ar: &ApiResource,
    ns: &str,
    name: &str,
    from: &str,
    to: &OwnerReference,
) -> Result<(), Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
    let Some(obj) = api.get_opt(name).await? else {
        return Ok(());
    };
    if !controlled_by(obj.meta(), from) {
        return Ok(());
    }
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(&owner_patch(obj.resource_version(), to)),
    )
    .await?;
    Ok(())
}
