//! The AgentPolicy controller: validates the policy, counts the sandboxes that use it (from the
//! sandbox store, not a list call) and writes `Accepted`/`Ready`, the hash and the report.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::api::{AgentPolicy, AgentPolicyStatus, AgentSandbox, MANAGER};
use crate::render::explain::explain_with;
use crate::render::{CheckedPolicy, check_policy};

use super::conditions::{Want, merge};
use super::{Ctx, Error, RESYNC};

/// The sandboxes (as store references) that use a policy (from the index kept from the
/// sandbox watch).
pub fn sandboxes_of(ctx: &Ctx, policy: &ObjectRef<AgentPolicy>) -> Vec<ObjectRef<AgentSandbox>> {
    ctx.caches.sandboxes_by_policy.sandboxes(
        policy.namespace.as_deref().unwrap_or_default(),
        &policy.name,
    )
}

/// What of a policy its sandboxes' passes read: its identity, spec (generation) and deletion.
type PolicyInputs = (Option<i64>, bool);

/// Whether a policy watch event re-runs the passes of its sandboxes: a deletion, a relist
/// (after a watch gap anything may have changed), a new policy, or a change of what the
/// passes read (`PolicyInputs`); not a status write (the sandbox count). `seen` holds each
/// policy's inputs by UID.
pub fn starts_sandbox_passes(
    seen: &mut HashMap<String, PolicyInputs>,
    event: &Result<kube::runtime::watcher::Event<AgentPolicy>, kube::runtime::watcher::Error>,
) -> bool {
    use kube::runtime::watcher::Event;
    let inputs = |p: &AgentPolicy| (p.meta().generation, p.meta().deletion_timestamp.is_some());
    match event {
        Ok(Event::Apply(p)) => {
            let Some(uid) = p.uid() else {
                return true;
            };
            seen.insert(uid, inputs(p)) != Some(inputs(p))
        }
        Ok(Event::InitApply(p)) => {
            if let Some(uid) = p.uid() {
                seen.insert(uid, inputs(p));
            }
            true
        }
        Ok(Event::Delete(p)) => {
            if let Some(uid) = p.uid() {
                seen.remove(&uid);
            }
            true
        }
        _ => true,
    }
}

/// How many sandboxes use policy `ns/name`: from the index kept from the sandbox watch (a pass
/// runs for each sandbox that comes or goes; a scan of every sandbox there made a burst
/// quadratic).
fn count_of(ctx: &Ctx, ns: &str, name: &str) -> usize {
    ctx.caches.sandboxes_by_policy.count(ns, name)
}

/// `Accepted` and `Ready`, plus kstatus' `Reconciling` and `Stalled`: a policy is checked in
/// one pass, so it is never Reconciling; an invalid one stays invalid until someone edits it
/// (Stalled, kstatus Failed), a valid one is Ready (kstatus Current).
fn policy_conditions(invalid: Option<&str>) -> Vec<Want> {
    match invalid {
        None => vec![
            Want::new("Accepted", true, "Valid", "the policy is valid"),
            Want::new("Ready", true, "Valid", "the policy is valid"),
            Want::new("Reconciling", false, "Valid", ""),
            Want::new("Stalled", false, "Valid", ""),
        ],
        Some(e) => vec![
            Want::new("Accepted", false, "Invalid", e),
            Want::new("Ready", false, "Invalid", e),
            Want::new("Reconciling", false, "Invalid", ""),
            Want::new("Stalled", true, "Invalid", e),
        ],
    }
}

pub async fn reconcile(policy: Arc<AgentPolicy>, ctx: Ctx) -> Result<Action, Error> {
    let _timer = ctx.metrics.observe_reconcile("agentpolicy");
    ctx.caches.ready().await;
    let ns = policy.namespace().ok_or(Error::Missing("namespace"))?;
    let name = policy.name_any();
    let previous = policy.status.clone().unwrap_or_default();
    let count = count_of(&ctx, &ns, &name) as i32;
    let generation = policy.meta().generation;
    // A count that changes while sandboxes come and go is written at most once a second.
    let key = policy.uid().unwrap_or_else(|| format!("{ns}/{name}"));
    if previous.observed_generation == generation
        && previous.sandbox_count != Some(count)
        && let Some(wait) = ctx.count_writes.too_soon(&key)
    {
        return Ok(Action::requeue(wait));
    }
    let now = Time(Timestamp::now());
    let status = match explain_with(&policy.spec, &ctx.facts()) {
        Ok((_, report)) => AgentPolicyStatus {
            conditions: merge(
                &previous.conditions,
                policy_conditions(None),
                generation,
                &now,
            ),
            observed_generation: generation,
            policy_hash: Some(crate::render::hash::short_hash(&policy.spec)),
            sandbox_count: Some(count),
            added: report.added,
            narrowed: report.narrowed,
            not_applicable: report.not_applicable,
            not_enforced: report.not_enforced,
        },
        Err(e) => {
            ctx.metrics
                .compile_errors
                .with_label_values(&["PolicyInvalid"])
                .inc();
            AgentPolicyStatus {
                conditions: merge(
                    &previous.conditions,
                    policy_conditions(Some(&e.to_string())),
                    generation,
                    &now,
                ),
                observed_generation: generation,
                sandbox_count: Some(count),
                ..Default::default()
            }
        }
    };
    if status != previous {
        let api: Api<AgentPolicy> = Api::namespaced(ctx.client.clone(), &ns);
        let patch =
            json!({"apiVersion": crate::api::API_VERSION, "kind": "AgentPolicy", "status": status});
        api.patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        ctx.count_writes.wrote(&key);
    }
    Ok(Action::requeue(RESYNC))
}

/// The check of each policy (validation and normalisation, the part of a compile that depends
/// on the policy alone), kept for the policy's generation: a sandbox pass compiles only its own
/// part. A spec change bumps the generation; an entry of an older generation is replaced.
#[derive(Debug, Default)]
pub struct CheckedPolicies {
    by_uid: Mutex<HashMap<String, (i64, Checked)>>,
}

/// A policy's check: what compiles, or why it does not.
pub type Checked = Arc<Result<CheckedPolicy, String>>;

impl CheckedPolicies {
    /// The check of `policy`, from the memo when its generation is known and unchanged.
    pub fn of(&self, policy: &AgentPolicy) -> Checked {
        let check = || Arc::new(check_policy(&policy.spec).map_err(|e| e.to_string()));
        let (Some(uid), Some(generation)) = (policy.uid(), policy.meta().generation) else {
            return check();
        };
        let mut memo = self.by_uid.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((g, c)) = memo.get(&uid)
            && *g == generation
        {
            return c.clone();
        }
        let c = check();
        memo.insert(uid, (generation, c.clone()));
        c
    }

    /// Forgets the policies not among `live` (UIDs).
    pub fn retain(&self, live: &std::collections::HashSet<String>) {
        let mut memo = self.by_uid.lock().unwrap_or_else(|e| e.into_inner());
        memo.retain(|uid, _| live.contains(uid));
    }
}

/// When each policy's status was last written, so that a changing sandbox count (a burst of
/// creations or deletions) costs one write a second, not one per sandbox.
#[derive(Debug, Default)]
pub struct CountWrites {
    last: Mutex<HashMap<String, Instant>>,
}

/// The shortest time between two status writes of one policy for its count alone.
pub const COUNT_INTERVAL: Duration = Duration::from_secs(1);

impl CountWrites {
    /// How long to wait before the count of policy `key` may be written again, if at all.
    pub fn too_soon(&self, key: &str) -> Option<Duration> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let since = last.get(key)?.elapsed();
        (since < COUNT_INTERVAL).then(|| COUNT_INTERVAL - since)
    }

    pub fn wrote(&self, key: &str) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        // Entries older than the interval say nothing: dropped, so deleted policies go too.
        last.retain(|_, at| at.elapsed() < COUNT_INTERVAL);
        last.insert(key.to_string(), Instant::now());
    }
}

pub fn error_policy(_policy: Arc<AgentPolicy>, error: &Error, ctx: Ctx) -> Action {
    ctx.metrics.reconcile_error("agentpolicy", error.label());
    tracing::warn!(%error, "policy reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::conditions::{KStatus, kstatus};

    fn read(invalid: Option<&str>) -> KStatus {
        let now = Time(Timestamp::from_second(1000).unwrap());
        let conditions = merge(&[], policy_conditions(invalid), Some(3), &now);
        kstatus(Some(3), Some(3), &conditions).0
    }

    #[test]
    fn a_check_is_kept_for_its_generation() {
        let policy = |generation: i64, timeout: Option<i64>| -> AgentPolicy {
            let mut p = AgentPolicy::new("p", Default::default());
            p.metadata.uid = Some("u".into());
            p.metadata.generation = Some(generation);
            p.spec.timeout_ms = timeout;
            p
        };
        let memo = CheckedPolicies::default();
        let first = memo.of(&policy(1, Some(60_000)));
        assert!(Arc::ptr_eq(&first, &memo.of(&policy(1, Some(60_000)))));
        let next = memo.of(&policy(2, Some(120_000)));
        assert!(
            !Arc::ptr_eq(&first, &next),
            "a new generation is checked again"
        );
        assert_eq!(
            next.as_ref().as_ref().map(|c| c.spec.timeout_ms),
            Ok(Some(120_000))
        );
        memo.retain(&Default::default());
        assert!(!Arc::ptr_eq(&next, &memo.of(&policy(2, Some(120_000)))));
    }

    #[test]
    fn a_count_is_written_at_most_once_an_interval() {
        let w = CountWrites::default();
        assert_eq!(w.too_soon("p"), None);
        w.wrote("p");
        let wait = w.too_soon("p").expect("too soon");
        assert!(wait <= COUNT_INTERVAL && wait > Duration::ZERO);
        assert_eq!(w.too_soon("q"), None, "another policy is not held up");
    }

    #[test]
    fn a_valid_policy_is_current_and_an_invalid_one_stalled() {
        assert_eq!(read(None), KStatus::Current);
        assert_eq!(read(Some("bad")), KStatus::Failed);
    }

    #[test]
    fn an_unobserved_generation_is_in_progress() {
        let now = Time(Timestamp::from_second(1000).unwrap());
        let conditions = merge(&[], policy_conditions(None), Some(3), &now);
        assert_eq!(
            kstatus(Some(4), Some(3), &conditions).0,
            KStatus::InProgress
        );
    }
}

#[cfg(test)]
mod status_filter_tests {
    use super::*;
    use kube::runtime::watcher::Event;

    fn policy(generation: i64, count: i32) -> AgentPolicy {
        let mut p = AgentPolicy::new("p", Default::default());
        p.metadata.namespace = Some("ns".into());
        p.metadata.uid = Some("u1".into());
        p.metadata.generation = Some(generation);
        p.status = Some(AgentPolicyStatus {
            sandbox_count: Some(count),
            ..Default::default()
        });
        p
    }

    #[test]
    fn a_status_write_re_runs_no_sandbox_but_a_spec_change_and_a_deletion_do() {
        let mut seen = HashMap::new();
        assert!(starts_sandbox_passes(
            &mut seen,
            &Ok(Event::Apply(policy(1, 0)))
        ));
        // The sandbox count written, again and again: nothing for the sandboxes.
        for count in 1..5 {
            assert!(!starts_sandbox_passes(
                &mut seen,
                &Ok(Event::Apply(policy(1, count)))
            ));
        }
        assert!(starts_sandbox_passes(
            &mut seen,
            &Ok(Event::Apply(policy(2, 5)))
        ));
        let mut deleting = policy(2, 5);
        deleting.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        assert!(starts_sandbox_passes(
            &mut seen,
            &Ok(Event::Apply(deleting))
        ));
        assert!(starts_sandbox_passes(
            &mut seen,
            &Ok(Event::Delete(policy(2, 5)))
        ));
        // A relist re-runs them all (anything may have changed during the gap).
        assert!(starts_sandbox_passes(
            &mut seen,
            &Ok(Event::InitApply(policy(2, 5)))
        ));
        assert!(!starts_sandbox_passes(
            &mut seen,
            &Ok(Event::Apply(policy(2, 6)))
        ));
    }
}
