//! The AgentSandboxPool controller: keeps `spec.replicas` warm sandboxes of the current
//! template (each an AgentSandbox the pool controls, made a complete sandbox by the sandbox
//! controller), replaces those of an older template (deleted, never handed out), removes taken
//! warm sandboxes whose taker went away, and reports in status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::api::pool::{CLAIMED_BY_ANNOTATION, POOL_LABEL, TEMPLATE_HASH_LABEL};
use crate::api::{
    AgentSandbox, AgentSandboxPool, AgentSandboxPoolStatus, MANAGED_BY_LABEL, MANAGER, SandboxPhase,
};
use crate::render::children::{service_account_name, workspace_claim_name};
use crate::render::network::isolation_name;
use crate::render::template::template_hash;

use super::claim::{CLAIMED_AT_ANNOTATION, fit};
use super::conditions::{Want, merge};
use super::ownership::controlled_by;
use super::{Ctx, Error};

/// A full pool looks again this often (a warm sandbox gone while the watch was down is not an
/// event it gets).
const RESYNC_POOL: Duration = Duration::from_secs(30);
/// Warm sandboxes created in one pass at most (the next pass creates more).
const CREATE_PER_PASS: usize = 100;
/// A warm sandbox being deleted counts against the surge for this long at most.
pub const LEAVING_FOR: Duration = Duration::from_secs(120);
/// A taken warm sandbox whose taker is gone is deleted this long after it was taken.
const ORPHAN_AFTER: Duration = Duration::from_secs(120);

/// One warm sandbox as the pool sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Warm {
    pub name: String,
    pub uid: String,
    /// Its resourceVersion: deleted only as seen (a sandbox taking it meanwhile wins).
    pub version: Option<String>,
    pub created: Option<Timestamp>,
    pub current: bool,
    pub ready: bool,
    pub deleting: bool,
    /// Being deleted for longer than [`LEAVING_FOR`] (a pod stuck terminating on a lost node,
    /// a finalizer nobody removes): no longer counted against the surge, so it cannot hold
    /// the pool below its replicas.
    pub stuck: bool,
    /// Its agent finished or it expired (a warm pod has run out its deadline), or a name it
    /// needs is held by another object (NameConflict, e.g. a pod a sandbox took from an earlier
    /// warm sandbox of the same name): replaced, under a new name.
    pub finished: bool,
    /// Taken by a sandbox (its UID), and when.
    pub taken: Option<(String, Option<Timestamp>)>,
    /// Created by an earlier pass and not in the cache yet (counted, never deleted).
    pub expected: bool,
    /// Blocked, or Stalled (only a person can fix it: a quota, an admission policy): why (the
    /// pool is Stalled).
    pub blocked: Option<String>,
}

/// What a pass does.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PoolPlan {
    pub create: usize,
    /// (name, UID, resourceVersion) of warm sandboxes to delete.
    pub delete: Vec<(String, String, Option<String>)>,
    pub status: Counts,
    /// Warm sandboxes not of the current set still there (stale, extra, finished, leaving):
    /// they hold creation back beyond the surge.
    pub waiting_for_old: usize,
}

/// How many warm sandboxes a pool may have beyond `spec.replicas` while old ones leave (after
/// a template change, or while stale or finished ones are deleted): a quarter, at least one,
/// like a Deployment's default maxSurge. A roll never doubles the pool's pods at once.
pub fn surge(desired: usize) -> usize {
    desired.div_ceil(4).max(1)
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts {
    pub replicas: i32,
    pub ready: i32,
    pub updated: i32,
    pub stalled: Option<String>,
}

/// What the pool knows of a taker: whether it exists, and the UID of the warm sandbox its
/// `status.pool` records.
pub enum Taker {
    Gone,
    Recorded(Option<String>),
}

/// The pass, from the warm sandboxes and what their takers recorded.
pub fn plan(
    desired: i32,
    warm: &[Warm],
    taker: impl Fn(&str) -> Taker,
    now: Timestamp,
) -> PoolPlan {
    let mut p = PoolPlan::default();
    let mut current = Vec::new();
    let gone = |w: &Warm| (w.name.clone(), w.uid.clone(), w.version.clone());
    for w in warm.iter().filter(|w| !w.deleting) {
        match &w.taken {
            Some((by, at)) => {
                let old = at.is_none_or(|at| {
                    now.as_millisecond() - at.as_millisecond() > ORPHAN_AFTER.as_millis() as i64
                });
                // Its taker moves its children and deletes it; one that went away, or that
                // recorded another warm sandbox, never will.
                let kept = matches!(taker(by), Taker::Recorded(Some(ref uid)) if *uid == w.uid);
                if old && !kept {
                    p.delete.push(gone(w));
                }
            }
            None if w.expected => current.push(w),
            None if !w.current || w.finished => p.delete.push(gone(w)),
            None => current.push(w),
        }
    }
    let desired = desired.max(0) as usize;
    // Warm sandboxes that still hold (or may hold) a pod and are not the current ones: stale,
    // finished, extra, or on their way out. New ones are created only within the surge.
    let untaken = warm
        .iter()
        .filter(|w| w.taken.is_none() && !w.stuck)
        .count();
    let leaving = untaken.saturating_sub(current.len());
    let room = (desired + surge(desired)).saturating_sub(current.len() + leaving);
    p.waiting_for_old = leaving;
    if current.len() > desired {
        // Remove the not ready first, then the newest; never one just created.
        let mut extra: Vec<&&Warm> = current.iter().filter(|w| !w.expected).collect();
        extra.sort_by_key(|w| (w.ready, std::cmp::Reverse(w.created)));
        for w in extra.into_iter().take(current.len() - desired) {
            p.delete.push(gone(w));
        }
    } else {
        p.create = (desired - current.len()).min(room).min(CREATE_PER_PASS);
    }
    let untaken = warm
        .iter()
        .filter(|w| !w.deleting && w.taken.is_none() && !w.expected);
    p.status = Counts {
        replicas: untaken.clone().count() as i32,
        ready: current.iter().filter(|w| w.ready).count() as i32,
        updated: current.iter().filter(|w| !w.expected).count() as i32,
        stalled: current.iter().find_map(|w| w.blocked.clone()),
    };
    p
}

/// Warm sandboxes created but not yet in the cache, per pool: counted so that a pass right
/// after a create does not create again.
#[derive(Default)]
pub struct Expectations(
    std::sync::Mutex<std::collections::HashMap<String, Vec<(String, std::time::Instant)>>>,
);

/// How long a created warm sandbox is expected before the cache is taken at its word.
const EXPECT_FOR: Duration = Duration::from_secs(30);

impl Expectations {
    fn created(&self, pool: &str, name: String) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(pool.to_string())
            .or_default()
            .push((name, std::time::Instant::now()));
    }

    /// A warm sandbox deleted: no longer expected, whether a pass saw it or not.
    pub fn forget(&self, pool: &str, name: &str) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = m.get_mut(pool) {
            list.retain(|(n, _)| n != name);
            if list.is_empty() {
                m.remove(pool);
            }
        }
    }

    /// Names still expected (not in `seen`, created less than 30 s ago).
    fn pending(&self, pool: &str, seen: &dyn Fn(&str) -> bool) -> Vec<String> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(list) = m.get_mut(pool) else {
            return Vec::new();
        };
        list.retain(|(n, at)| !seen(n) && at.elapsed() < EXPECT_FOR);
        let out = list.iter().map(|(n, _)| n.clone()).collect();
        if list.is_empty() {
            m.remove(pool);
        }
        out
    }
}

pub async fn reconcile(pool: Arc<AgentSandboxPool>, ctx: Ctx) -> Result<Action, Error> {
    let _timer = ctx.metrics.observe_reconcile("agentsandboxpool");
    tokio::select! {
        () = ctx.caches.ready() => {}
        () = ctx.stop.cancelled() => return Ok(Action::await_change()),
    }
    if pool.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = pool.namespace().ok_or(Error::Missing("namespace"))?;
    let name = pool.name_any();
    let uid = pool.uid().ok_or(Error::Missing("uid"))?;
    let now = Timestamp::now();
    let hash = template_hash(&pool.spec.template);
    let policy = ctx
        .caches
        .policies
        .get(&ObjectRef::new(&pool.spec.template.policy_ref.name).within(&ns))
        .and_then(|p| Some((p.uid()?, p.metadata.generation?)));
    let sandboxes = ctx.caches.sandboxes.state();
    // A NameConflict with a child another sandbox took from an earlier warm sandbox of the
    // same name is replaced under a new name; any other (an object outside Palisade, a webhook
    // that rewrites owners) stalls the pool with its reason, never a loop of replacements.
    let replaceable_conflict = |s: &AgentSandbox| {
        s.status.as_ref().is_some_and(name_conflict)
            && held_by_another_sandbox(&ctx, &ns, &s.name_any(), &s.uid().unwrap_or_default())
    };
    let warm: Vec<Warm> = sandboxes
        .iter()
        .filter(|s| s.namespace().as_deref() == Some(ns.as_str()) && controlled_by(s.meta(), &uid))
        .map(|s| {
            let status = s.status.as_ref();
            Warm {
                name: s.name_any(),
                uid: s.uid().unwrap_or_default(),
                version: s.resource_version(),
                created: s.meta().creation_timestamp.as_ref().map(|t| t.0),
                expected: false,
                current: s.labels().get(TEMPLATE_HASH_LABEL) == Some(&hash),
                ready: fit(s, &uid, &hash, policy.as_ref()),
                deleting: s.meta().deletion_timestamp.is_some(),
                stuck: s.meta().deletion_timestamp.as_ref().is_some_and(|t| {
                    now.as_millisecond() - t.0.as_millisecond() > LEAVING_FOR.as_millis() as i64
                }),
                finished: matches!(
                    status.and_then(|st| st.phase),
                    Some(SandboxPhase::Succeeded | SandboxPhase::Failed | SandboxPhase::Expired)
                ) || replaceable_conflict(s),
                taken: s.annotations().get(CLAIMED_BY_ANNOTATION).map(|t| {
                    let at = s
                        .annotations()
                        .get(CLAIMED_AT_ANNOTATION)
                        .and_then(|a| a.parse().ok());
                    (t.clone(), at)
                }),
                // A NameConflict the caches do not explain yet (they may lag the read that
                // found it) stalls the pool only once it has lasted a while.
                blocked: status
                    .filter(|st| {
                        !replaceable_conflict(s)
                            && !conflict_since(st).is_some_and(|t| {
                                now.as_millisecond() - t.as_millisecond()
                                    < CONFLICT_GRACE.as_millis() as i64
                            })
                    })
                    .and_then(|st| stalled(&s.name_any(), st)),
            }
        })
        .collect();
    let mut warm = warm;
    let names: std::collections::HashSet<String> = warm.iter().map(|w| w.name.clone()).collect();
    for name in ctx.pool_expectations.pending(&uid, &|n| names.contains(n)) {
        warm.push(Warm {
            name,
            uid: String::new(),
            version: None,
            created: None,
            current: true,
            ready: false,
            deleting: false,
            stuck: false,
            finished: false,
            taken: None,
            blocked: None,
            expected: true,
        });
    }
    let takers: std::collections::HashMap<String, Option<String>> = sandboxes
        .iter()
        .filter(|s| s.namespace().as_deref() == Some(ns.as_str()))
        .filter_map(|s| {
            let recorded = s
                .status
                .as_ref()
                .and_then(|st| st.pool.as_ref())
                .and_then(|p| p.instance_uid.clone());
            Some((s.uid()?, recorded))
        })
        .collect();
    let p = plan(
        pool.spec.replicas,
        &warm,
        |t| match takers.get(t) {
            Some(recorded) => Taker::Recorded(recorded.clone()),
            None => Taker::Gone,
        },
        now,
    );

    let api: Api<AgentSandbox> = Api::namespaced(ctx.client.clone(), &ns);
    for (warm_name, warm_uid, version) in &p.delete {
        delete_as_seen(&api, warm_name, warm_uid, version.clone()).await?;
    }
    // A refused create (a quota on AgentSandboxes, an admission policy) is said in status
    // before the error goes to the retry.
    let mut refused = None;
    for _ in 0..p.create {
        match create_warm(&ctx, &api, &pool, &ns, &hash).await {
            Ok(created) => ctx.pool_expectations.created(&uid, created.name_any()),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let mut p = p;
    if let Some(e) = refused.as_ref().filter(|e| e.needs_a_person()) {
        p.status.stalled.get_or_insert_with(|| {
            format!(
                "could not create a warm sandbox: {}: {}",
                e.reason(),
                e.message()
            )
        });
    }

    let previous = pool.status.clone().unwrap_or_default();
    let generation = pool.meta().generation;
    let desired = pool.spec.replicas;
    let wants = match &p.status.stalled {
        Some(why) => vec![
            Want::new("Ready", false, "WarmSandboxBlocked", why.clone()),
            Want::new("Stalled", true, "WarmSandboxBlocked", why.clone()),
            Want::new("Reconciling", false, "WarmSandboxBlocked", why.clone()),
        ],
        None if p.status.ready >= desired && p.delete.is_empty() && p.create == 0 => {
            vec![
                Want::new(
                    "Ready",
                    true,
                    "Ready",
                    format!("{desired} warm sandboxes ready"),
                ),
                Want::new("Stalled", false, "Ready", String::new()),
                Want::new("Reconciling", false, "Ready", String::new()),
            ]
        }
        None => {
            let mut why = format!("{} of {desired} warm sandboxes ready", p.status.ready);
            if p.waiting_for_old > 0 {
                why.push_str(&format!(
                    "; {} old ones still leaving (at most {} beyond the replicas at once)",
                    p.waiting_for_old,
                    surge(desired.max(0) as usize)
                ));
            }
            vec![
                Want::new("Ready", false, "Filling", why.clone()),
                Want::new("Stalled", false, "Filling", String::new()),
                Want::new("Reconciling", true, "Filling", why),
            ]
        }
    };
    let status = AgentSandboxPoolStatus {
        replicas: p.status.replicas,
        ready_replicas: p.status.ready,
        updated_replicas: p.status.updated,
        observed_generation: generation,
        conditions: merge(&previous.conditions, wants, generation, &Time(now)),
        selector: Some(format!("{POOL_LABEL}={name}")),
        template_hash: Some(hash),
    };
    if status != previous {
        if let Some(why) = &p.status.stalled
            && previous
                .conditions
                .iter()
                .all(|c| !(c.type_ == "Stalled" && c.status == "True" && c.message == *why))
        {
            let event = Event {
                type_: EventType::Warning,
                reason: "WarmSandboxBlocked".into(),
                note: Some(why.clone()),
                action: "Reconcile".into(),
                secondary: None,
            };
            if let Err(e) = ctx.recorder.publish(&event, &pool.object_ref(&())).await {
                tracing::warn!(error = %e, "could not publish an event");
            }
        }
        let pools: Api<AgentSandboxPool> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"apiVersion": crate::api::API_VERSION, "kind": "AgentSandboxPool", "status": status});
        pools
            .patch_status(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
    }
    // Passes are triggered by the sandbox cache's updates and by warm sandboxes' deletions and
    // relists; a pool not yet full looks again soon, a full one every 30 s (nothing is written
    // while nothing changes).
    if let Some(e) = refused {
        return Err(e);
    }
    Ok(
        if p.create > 0 || !p.delete.is_empty() || p.status.ready < desired || p.waiting_for_old > 0
        {
            Action::requeue(Duration::from_secs(1))
        } else {
            Action::requeue(RESYNC_POOL)
        },
    )
}

/// Whether a warm sandbox is blocked because a name it needs is held by another object.
fn name_conflict(st: &crate::api::sandbox::AgentSandboxStatus) -> bool {
    st.phase == Some(SandboxPhase::Blocked)
        && st
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.reason == "NameConflict")
}

/// How long a NameConflict the caches do not explain waits before it stalls the pool.
const CONFLICT_GRACE: Duration = Duration::from_secs(15);

/// Since when a warm sandbox has been blocked by a NameConflict.
fn conflict_since(st: &crate::api::sandbox::AgentSandboxStatus) -> Option<Timestamp> {
    if st.phase != Some(SandboxPhase::Blocked) {
        return None;
    }
    st.conditions
        .iter()
        .find(|c| c.type_ == "Ready" && c.reason == "NameConflict")
        .map(|c| c.last_transition_time.0)
}

/// Why a warm sandbox cannot become ready without a person: Blocked (the policy cannot be
/// enforced here), or Stalled (a quota, an admission policy, missing permissions refuse its
/// children). The pool is Stalled with it.
fn stalled(name: &str, st: &crate::api::sandbox::AgentSandboxStatus) -> Option<String> {
    if st.phase == Some(SandboxPhase::Blocked) {
        return Some(st.message.clone().unwrap_or_default());
    }
    st.conditions
        .iter()
        .find(|c| c.type_ == "Stalled" && c.status == "True")
        .map(|c| format!("warm sandbox {name}: {}: {}", c.reason, c.message))
}

/// Deletes a warm sandbox only as it was seen (UID and resourceVersion preconditions): one a
/// sandbox took meanwhile is not deleted. Gone or changed already is fine.
async fn delete_as_seen(
    api: &Api<AgentSandbox>,
    name: &str,
    uid: &str,
    version: Option<String>,
) -> Result<(), Error> {
    // Foreground: the warm sandbox stays (deleting) until its pod and other children are gone,
    // so the pool counts it against the surge while its pod still runs.
    let params = kube::api::DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some(uid.to_string()),
            resource_version: version,
        }),
        propagation_policy: Some(kube::api::PropagationPolicy::Foreground),
        ..Default::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Characters of a warm sandbox's name suffix (those of the API server's generated names: no
/// vowels, no look-alikes).
const SUFFIX_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// Names tried for one warm sandbox before the pass gives up (the next pass tries again).
const NAME_TRIES: usize = 8;

/// A name for a new warm sandbox of `pool`: the pool's name (cut so that the children's names
/// stay within label limits) and five random characters.
pub fn warm_name(pool: &str, random: &[u8; 5]) -> String {
    let prefix: String = pool.chars().take(40).collect();
    let prefix = prefix.trim_end_matches(['-', '.']);
    let suffix: String = random
        .iter()
        .map(|b| SUFFIX_CHARS[*b as usize % SUFFIX_CHARS.len()] as char)
        .collect();
    format!("{prefix}-{suffix}")
}

/// The children a sandbox named `name` would have (pod, ServiceAccount, NetworkPolicy,
/// Service, workspace claim), as the caches hold them: children keep their names when a
/// sandbox takes them from a warm sandbox.
fn children_named(ctx: &Ctx, ns: &str, name: &str) -> [Option<ObjectMeta>; 5] {
    fn at<K: Resource<DynamicType = ()>>(name: &str, ns: &str) -> ObjectRef<K> {
        ObjectRef::new(name).within(ns)
    }
    let c = &ctx.caches;
    [
        c.pods.get(&at(name, ns)).map(|o| o.metadata.clone()),
        c.service_accounts
            .get(&at(&service_account_name(name), ns))
            .map(|o| o.metadata.clone()),
        c.network_policies
            .get(&at(&isolation_name(name), ns))
            .map(|o| o.metadata.clone()),
        c.services.get(&at(name, ns)).map(|o| o.metadata.clone()),
        c.claims
            .get(&at(&workspace_claim_name(name), ns))
            .map(|o| o.metadata.clone()),
    ]
}

/// Whether a name is free for a new warm sandbox as far as the caches know: no sandbox has it,
/// and none of the names it would need is held (by children a sandbox took from an earlier
/// warm sandbox of that name, or anything else). An object outside the caches that holds one
/// is met as a NameConflict, and that warm sandbox is replaced under another name.
fn name_free(ctx: &Ctx, ns: &str, name: &str) -> bool {
    ctx.caches
        .sandboxes
        .get(&ObjectRef::new(name).within(ns))
        .is_none()
        && children_named(ctx, ns, name).iter().all(Option::is_none)
}

/// Whether one of the names warm sandbox `name` (UID `uid`) needs is held by a child another
/// sandbox controls (as the caches of the operator's children show).
fn held_by_another_sandbox(ctx: &Ctx, ns: &str, name: &str, uid: &str) -> bool {
    children_named(ctx, ns, name).iter().any(|meta| {
        meta.as_ref()
            .and_then(super::ownership::controlling_sandbox)
            .is_some_and(|o| o.uid != uid)
    })
}

/// Creates a warm sandbox under a name no object the caches know uses (an API server's
/// generated name may be one a taken warm sandbox's children still carry); a name taken
/// meanwhile (409) is tried again under another.
async fn create_warm(
    ctx: &Ctx,
    api: &Api<AgentSandbox>,
    pool: &AgentSandboxPool,
    ns: &str,
    hash: &str,
) -> Result<AgentSandbox, Error> {
    let random = ring::rand::SystemRandom::new();
    let mut last = None;
    for _ in 0..NAME_TRIES {
        let bytes: [u8; 5] = ring::rand::generate(&random)
            .map_err(|_| Error::Missing("random bytes"))?
            .expose();
        let name = warm_name(&pool.name_any(), &bytes);
        if !name_free(ctx, ns, &name) {
            continue;
        }
        match api
            .create(&PostParams::default(), &warm_sandbox(pool, hash, &name)?)
            .await
        {
            Err(kube::Error::Api(s)) if s.code == 409 => last = Some(kube::Error::Api(s)),
            other => return Ok(other?),
        }
    }
    Err(last.map_or(Error::Missing("a free warm sandbox name"), Error::from))
}

/// A warm sandbox of the pool named `name`: the template, controlled by the pool, labelled
/// with its name and the template's hash.
fn warm_sandbox(pool: &AgentSandboxPool, hash: &str, name: &str) -> Result<AgentSandbox, Error> {
    let owner = pool
        .controller_owner_ref(&())
        .ok_or(Error::Missing("uid"))?;
    let pool_name = pool.name_any();
    let mut sandbox = AgentSandbox::new(name, pool.spec.template.clone());
    sandbox.metadata.namespace = pool.namespace();
    sandbox.metadata.labels = Some(BTreeMap::from([
        (POOL_LABEL.to_string(), pool_name),
        (TEMPLATE_HASH_LABEL.to_string(), hash.to_string()),
        (MANAGED_BY_LABEL.to_string(), MANAGER.to_string()),
    ]));
    sandbox.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            block_owner_deletion: Some(true),
            ..owner
        },
    ]);
    Ok(sandbox)
}

/// The pools whose warm sandbox changed (the owner of a warm sandbox).
pub fn pool_of(s: &AgentSandbox) -> Option<ObjectRef<AgentSandboxPool>> {
    let owner = super::ownership::controller_of(s.meta())?;
    (owner.kind == "AgentSandboxPool")
        .then(|| ObjectRef::new(&owner.name).within(&s.namespace().unwrap_or_default()))
}

/// Which pools a sandbox watch event wakes once the sandbox cache holds it. The shared store
/// tells its subscribers of changes only: a warm sandbox deleted at once (no finalizer holds
/// it) would otherwise wait for the pool's resync to be replaced, and a relist, which re-sends
/// what it found, says nothing to a pool left with no warm sandbox at all.
#[derive(Debug, PartialEq)]
pub enum Wake {
    Pool(ObjectRef<AgentSandboxPool>),
    Every,
}

/// The pools to wake for a sandbox watch event. A deleted warm sandbox is no longer expected
/// by its pool (one deleted before any pass saw it would otherwise count as on its way for
/// 30 s, and the woken pass would create nothing).
pub fn on_sandbox_event(
    event: &kube::runtime::watcher::Event<AgentSandbox>,
    expected: &Expectations,
) -> Option<Wake> {
    match event {
        kube::runtime::watcher::Event::Delete(s) => {
            let owner = super::ownership::controller_of(s.meta())
                .filter(|o| o.kind == "AgentSandboxPool")?;
            expected.forget(&owner.uid, &s.name_any());
            pool_of(s).map(Wake::Pool)
        }
        kube::runtime::watcher::Event::InitDone => Some(Wake::Every),
        _ => None,
    }
}

pub fn error_policy(pool: Arc<AgentSandboxPool>, error: &Error, ctx: Ctx) -> Action {
    ctx.metrics
        .reconcile_error("agentsandboxpool", error.label());
    tracing::warn!(pool = %pool.name_any(), %error, "pool reconcile failed");
    let key = pool.uid().unwrap_or_else(|| pool.name_any());
    Action::requeue(ctx.backoff.failed(&key).min(Duration::from_secs(30)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(name: &str, current: bool, ready: bool) -> Warm {
        Warm {
            name: name.into(),
            uid: format!("{name}-uid"),
            version: Some("1".into()),
            created: None,
            expected: false,
            current,
            ready,
            deleting: false,
            stuck: false,
            finished: false,
            taken: None,
            blocked: None,
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(10_000).unwrap()
    }

    #[test]
    fn a_deleted_warm_sandbox_wakes_its_pool_unexpected_and_a_relist_wakes_every_pool() {
        use kube::runtime::watcher::Event as WatchEvent;
        let mut warm = AgentSandbox::new("p-x1", Default::default());
        warm.metadata.namespace = Some("ns".into());
        warm.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: crate::api::API_VERSION.into(),
                kind: "AgentSandboxPool".into(),
                name: "p".into(),
                uid: "pool-uid".into(),
                controller: Some(true),
                ..Default::default()
            },
        ]);
        let expected = Expectations::default();
        expected.created("pool-uid", "p-x1".into());
        expected.created("pool-uid", "p-x2".into());
        // Changes reach the pool through the store's subscription, not this way.
        assert_eq!(
            on_sandbox_event(&WatchEvent::Apply(warm.clone()), &expected),
            None
        );
        assert_eq!(
            on_sandbox_event(&WatchEvent::InitApply(warm.clone()), &expected),
            None
        );
        assert_eq!(expected.pending("pool-uid", &|_| false).len(), 2);
        assert_eq!(
            on_sandbox_event(&WatchEvent::Delete(warm.clone()), &expected),
            Some(Wake::Pool(ObjectRef::new("p").within("ns")))
        );
        // Deleted before any pass saw it: expected no more (the other one still is).
        assert_eq!(
            expected.pending("pool-uid", &|_| false),
            vec!["p-x2".to_string()]
        );
        assert_eq!(
            on_sandbox_event(&WatchEvent::InitDone, &expected),
            Some(Wake::Every)
        );
        // A sandbox of no pool, or one owned by a pool without being controlled by it.
        let mut other = warm.clone();
        other.metadata.owner_references = None;
        assert_eq!(
            on_sandbox_event(&WatchEvent::Delete(other), &expected),
            None
        );
        let mut not_controlled = warm;
        if let Some(o) = not_controlled.metadata.owner_references.as_mut() {
            o[0].controller = None;
        }
        assert_eq!(
            on_sandbox_event(&WatchEvent::Delete(not_controlled), &expected),
            None
        );
    }

    #[test]
    fn an_empty_pool_is_filled_and_a_full_one_left_alone() {
        let p = plan(3, &[], |_| Taker::Gone, now());
        assert_eq!(p.create, 3);
        assert!(p.delete.is_empty());
        let full = [w("a", true, true), w("b", true, true), w("c", true, true)];
        let p = plan(3, &full, |_| Taker::Gone, now());
        assert_eq!((p.create, p.delete.len()), (0, 0));
        assert_eq!(
            p.status,
            Counts {
                replicas: 3,
                ready: 3,
                updated: 3,
                stalled: None
            }
        );
    }

    #[test]
    fn stale_warm_sandboxes_are_deleted_never_counted_and_replaced() {
        let warm = [
            w("old1", false, true),
            w("old2", false, true),
            w("new", true, true),
        ];
        let p = plan(2, &warm, |_| Taker::Gone, now());
        assert_eq!(
            p.delete.iter().map(|d| d.0.as_str()).collect::<Vec<_>>(),
            vec!["old1", "old2"]
        );
        assert_eq!(p.create, 0, "the old ones still there use up the surge");
        assert_eq!(p.waiting_for_old, 2);
        assert_eq!(p.status.ready, 1);
        assert_eq!(p.status.updated, 1);
        // Once they are gone, the replacement comes.
        let p = plan(2, &warm[2..], |_| Taker::Gone, now());
        assert_eq!((p.create, p.waiting_for_old), (1, 0));
    }

    #[test]
    fn a_roll_never_has_more_than_a_quarter_more_warm_sandboxes_than_the_replicas() {
        assert_eq!(
            (surge(0), surge(1), surge(4), surge(5), surge(100)),
            (1, 1, 1, 2, 25)
        );
        // 8 replicas, all of an old template: all are deleted, and while they are there (their
        // pods terminating) at most 8 + 2 warm sandboxes exist.
        let old: Vec<Warm> = (0..8).map(|i| w(&format!("old{i}"), false, true)).collect();
        let p = plan(8, &old, |_| Taker::Gone, now());
        assert_eq!((p.delete.len(), p.create), (8, 2));
        let mut leaving = old.clone();
        for o in &mut leaving {
            o.deleting = true;
        }
        let mut pending = w("new0", true, false);
        pending.expected = true;
        let mut state = leaving[..6].to_vec();
        state.push(pending);
        let p = plan(8, &state, |_| Taker::Gone, now());
        assert!(p.delete.is_empty());
        assert_eq!(p.create, 3, "8 + 2 = 6 leaving + 1 coming + 3 more");
        let p = plan(8, &[w("a", true, true)], |_| Taker::Gone, now());
        assert_eq!(p.create, 7, "nothing leaving: the whole gap at once");
        // A taken warm sandbox (emptied, its pod now the taker's) does not count.
        let mut taken = w("t", true, true);
        taken.taken = Some(("x".into(), Some(now())));
        taken.deleting = true;
        let p = plan(2, &[taken], |_| Taker::Gone, now());
        assert_eq!(p.create, 2);
    }

    #[test]
    fn warm_sandboxes_stuck_deleting_no_longer_hold_the_pool_below_its_replicas() {
        // 2 replicas; 3 old ones deleting (their pods stuck terminating) and no current one.
        let mut leaving: Vec<Warm> = (0..3).map(|i| w(&format!("old{i}"), false, true)).collect();
        for o in &mut leaving {
            o.deleting = true;
        }
        let p = plan(2, &leaving, |_| Taker::Gone, now());
        assert_eq!(p.create, 0, "2 + 1 allowed, 3 still leaving");
        for o in &mut leaving {
            o.stuck = true;
        }
        let p = plan(2, &leaving, |_| Taker::Gone, now());
        assert_eq!((p.create, p.waiting_for_old), (2, 0));
    }

    #[test]
    fn warm_names_fit_the_label_limits_and_use_the_generated_alphabet() {
        let long = "p".repeat(70);
        let n = warm_name(&long, &[0, 1, 2, 26, 27]);
        assert_eq!(n, format!("{}-bcd9b", "p".repeat(40)));
        assert_eq!(warm_name("pool-.", &[255; 5]), "pool-qqqqq");
        // With every child's suffix, the longest stays within 63 characters.
        assert!(crate::render::network::isolation_name(&n).len() <= 63);
        assert!(crate::render::children::service_account_name(&n).len() <= 63);
    }

    #[test]
    fn a_warm_sandbox_in_a_name_conflict_is_replaced_and_a_stalled_one_stalls_the_pool() {
        let young = crate::api::sandbox::AgentSandboxStatus {
            phase: Some(SandboxPhase::Blocked),
            conditions: vec![cond("Ready", "False", "NameConflict")],
            ..Default::default()
        };
        assert_eq!(
            conflict_since(&young),
            Some(Timestamp::from_second(0).unwrap())
        );
        let mut conflict = crate::api::sandbox::AgentSandboxStatus {
            phase: Some(SandboxPhase::Blocked),
            message: Some("Pod x exists and is not controlled by this sandbox".into()),
            ..Default::default()
        };
        conflict
            .conditions
            .push(cond("Ready", "False", "NameConflict"));
        assert!(name_conflict(&conflict));
        let mut quota = crate::api::sandbox::AgentSandboxStatus {
            phase: Some(SandboxPhase::Starting),
            ..Default::default()
        };
        assert!(stalled("w", &quota).is_none());
        quota
            .conditions
            .push(cond("Stalled", "True", "QuotaExceeded"));
        assert!(!name_conflict(&quota));
        assert_eq!(
            stalled("w", &quota).as_deref(),
            Some("warm sandbox w: QuotaExceeded: said QuotaExceeded")
        );
        let blocked = crate::api::sandbox::AgentSandboxStatus {
            phase: Some(SandboxPhase::Blocked),
            message: Some("RuntimeClass gvisor not found".into()),
            ..Default::default()
        };
        assert_eq!(
            stalled("w", &blocked).as_deref(),
            Some("RuntimeClass gvisor not found")
        );
    }

    fn cond(
        type_: &str,
        status: &str,
        reason: &str,
    ) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: format!("said {reason}"),
            last_transition_time: Time(Timestamp::from_second(0).unwrap()),
            observed_generation: None,
        }
    }

    #[test]
    fn taken_ones_are_not_counted_and_removed_only_when_their_taker_is_long_gone() {
        let mut taken = w("t", true, true);
        taken.taken = Some(("taker".into(), Some(now())));
        let one = std::slice::from_ref(&taken);
        let p = plan(1, one, |_| Taker::Gone, now());
        assert_eq!(p.create, 1, "a taken warm sandbox is no longer the pool's");
        assert!(p.delete.is_empty(), "its taker may not be in the cache yet");
        let later = Timestamp::from_second(10_000 + 121).unwrap();
        let p = plan(1, one, |_| Taker::Gone, later);
        assert_eq!(
            p.delete,
            vec![("t".into(), "t-uid".into(), Some("1".into()))]
        );
        let p = plan(1, one, |_| Taker::Recorded(Some("t-uid".into())), later);
        assert!(
            p.delete.is_empty(),
            "its taker moves its children and deletes it"
        );
        // A taker that recorded another warm sandbox, or none, long after: removed.
        let p = plan(1, one, |_| Taker::Recorded(Some("other".into())), later);
        assert_eq!(p.delete.len(), 1);
        let p = plan(1, one, |_| Taker::Recorded(None), later);
        assert_eq!(p.delete.len(), 1);
    }

    #[test]
    fn scaling_down_removes_not_ready_ones_first() {
        let warm = [w("a", true, true), w("b", true, false), w("c", true, true)];
        let p = plan(1, &warm, |_| Taker::Gone, now());
        assert_eq!(p.delete.len(), 2);
        assert_eq!(p.delete[0].0, "b");
        let p = plan(0, &warm, |_| Taker::Gone, now());
        assert_eq!(p.delete.len(), 3);
    }

    #[test]
    fn sandboxes_created_but_not_yet_cached_are_counted_and_never_deleted() {
        let mut pending = w("new", true, false);
        pending.expected = true;
        let p = plan(
            2,
            &[w("a", true, true), pending.clone()],
            |_| Taker::Gone,
            now(),
        );
        assert_eq!((p.create, p.delete.len()), (0, 0));
        let p = plan(0, &[pending], |_| Taker::Gone, now());
        assert!(p.delete.is_empty());
    }

    #[test]
    fn scaling_down_keeps_the_oldest_ready_ones() {
        let mut old = w("old", true, true);
        old.created = Some(Timestamp::from_second(1).unwrap());
        let mut new = w("new", true, true);
        new.created = Some(Timestamp::from_second(2).unwrap());
        let p = plan(1, &[new, old], |_| Taker::Gone, now());
        assert_eq!(p.delete.len(), 1);
        assert_eq!(p.delete[0].0, "new");
    }

    #[test]
    fn a_finished_or_expired_warm_sandbox_is_replaced() {
        let mut done = w("a", true, false);
        done.finished = true;
        let p = plan(1, &[done], |_| Taker::Gone, now());
        assert_eq!(
            p.delete,
            vec![("a".into(), "a-uid".into(), Some("1".into()))]
        );
        assert_eq!(p.create, 1);
    }

    #[test]
    fn a_blocked_warm_sandbox_stalls_the_pool() {
        let mut b = w("a", true, false);
        b.blocked = Some("RuntimeClass gvisor not found".into());
        let p = plan(1, &[b], |_| Taker::Gone, now());
        assert_eq!(
            p.status.stalled.as_deref(),
            Some("RuntimeClass gvisor not found")
        );
        assert_eq!(p.create, 0);
    }
}
