//! The AgentSandbox controller: resolve the policy, compile, apply the children in order (the
//! NetworkPolicy before the pod), and derive the status from what is in the cluster. Anything
//! that cannot be enforced exactly removes the pod and blocks the sandbox.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::api::policy::DefaultAction;
use crate::api::{AgentPolicy, AgentSandbox, AgentSandboxStatus, MANAGER, SandboxPhase};
use crate::render::network::isolation_name;
use crate::render::{BlockReason, Plan, check_policy, compile_checked};

use super::children::{self, Applied, PodState};
use super::conditions::{Want, merge};
use super::{Ctx, Error, RESYNC};

/// What this pass found, before it becomes a status.
struct Outcome {
    phase: SandboxPhase,
    reason: String,
    message: String,
    policy_resolved: bool,
    runtime_ready: bool,
    network_isolated: bool,
    plan: Option<Plan>,
    pod: Option<Pod>,
    requeue: Option<Duration>,
    /// The policy's timeoutMs, for the expiry written to status.
    timeout_ms: Option<i64>,
}

impl Outcome {
    fn blocked(reason: &str, message: impl Into<String>) -> Self {
        Self {
            phase: SandboxPhase::Blocked,
            reason: reason.into(),
            message: message.into(),
            policy_resolved: true,
            runtime_ready: true,
            network_isolated: true,
            plan: None,
            pod: None,
            requeue: None,
            timeout_ms: None,
        }
    }
}

/// When a sandbox expires: the earlier of `expiresAt` and `startedAt + timeoutMs`.
fn expiry(
    expires_at: Option<Timestamp>,
    started: Option<Timestamp>,
    timeout_ms: Option<i64>,
) -> Option<Timestamp> {
    let by_timeout = started.zip(timeout_ms).map(|(s, ms)| {
        s.checked_add(jiff::SignedDuration::from_millis(ms))
            .unwrap_or(s)
    });
    match (expires_at, by_timeout) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn seconds_until(t: Timestamp, now: Timestamp) -> Duration {
    let ms = t.as_millisecond() - now.as_millisecond();
    Duration::from_millis(ms.max(0) as u64)
}

/// Whether `selector` selects a pod with `labels`.
pub fn selects(
    selector: &LabelSelector,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_labels && by_expressions
}

/// The sandboxes a change to `np` may concern: for one of ours, none (its owner is triggered
/// through `owns`); for any other, the sandboxes whose pod it selects and those it may have
/// been blocking (it may no longer select them).
pub fn affected_by_network_policy(
    ctx: &Ctx,
    np: &k8s_openapi::api::networking::v1::NetworkPolicy,
) -> Vec<ObjectRef<AgentSandbox>> {
    let ours = np
        .labels()
        .get(crate::api::MANAGED_BY_LABEL)
        .map(String::as_str)
        == Some(MANAGER)
        && np.labels().contains_key(crate::api::SANDBOX_LABEL);
    if ours {
        return Vec::new();
    }
    let selector = np
        .spec
        .as_ref()
        .and_then(|s| s.pod_selector.clone())
        .unwrap_or_default();
    ctx.sandboxes
        .state()
        .iter()
        .filter(|s| s.namespace() == np.namespace())
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

/// Another NetworkPolicy selecting the pod can only widen what it may do (they add up).
fn additional_network_policy(
    ctx: &Ctx,
    sandbox: &AgentSandbox,
    plan: &Plan,
    ingress_open: bool,
) -> Option<String> {
    let ns = sandbox.namespace()?;
    let ours = isolation_name(&sandbox.name_any());
    let labels = plan.pod.metadata.labels.clone().unwrap_or_default();
    ctx.network_policies.state().iter().find_map(|np| {
        if np.namespace().as_deref() != Some(ns.as_str()) || np.name_any() == ours {
            return None;
        }
        let spec = np.spec.as_ref()?;
        if !selects(
            spec.pod_selector
                .as_ref()
                .unwrap_or(&LabelSelector::default()),
            &labels,
        ) {
            return None;
        }
        let types = spec.policy_types.clone().unwrap_or_else(|| {
            let mut t = vec!["Ingress".to_string()];
            if spec.egress.is_some() {
                t.push("Egress".into());
            }
            t
        });
        let widens = types.iter().any(|t| t == "Egress")
            || (types.iter().any(|t| t == "Ingress") && !ingress_open);
        widens.then(|| np.name_any())
    })
}

async fn decide(sandbox: &AgentSandbox, ctx: &Ctx, now: Timestamp) -> Result<Outcome, Error> {
    let ns = sandbox.namespace().ok_or(Error::Missing("namespace"))?;
    let status = sandbox.status.clone().unwrap_or_default();
    let policy_ref = ObjectRef::<AgentPolicy>::new(&sandbox.spec.policy_ref.name).within(&ns);
    let Some(policy) = ctx.policies.get(&policy_ref) else {
        children::delete_pod(&ctx.client, sandbox).await?;
        let mut o = Outcome::blocked(
            "PolicyNotFound",
            format!(
                "AgentPolicy {ns}/{} does not exist",
                sandbox.spec.policy_ref.name
            ),
        );
        o.policy_resolved = false;
        return Ok(o);
    };
    let checked = match check_policy(&policy.spec) {
        Ok(c) => c,
        Err(e) => {
            children::delete_pod(&ctx.client, sandbox).await?;
            ctx.metrics
                .compile_errors
                .with_label_values(&["PolicyInvalid"])
                .inc();
            let mut o = Outcome::blocked(
                "PolicyInvalid",
                format!("AgentPolicy {}: {e}", policy.name_any()),
            );
            o.policy_resolved = false;
            return Ok(o);
        }
    };

    let started = status.started_at.as_ref().map(|t| t.0);
    let deadline = expiry(
        sandbox.spec.expires_at.as_ref().map(|t| t.0),
        started,
        checked.spec.timeout_ms,
    );
    if deadline.is_some_and(|d| d <= now) {
        children::delete_pod(&ctx.client, sandbox).await?;
        let mut o = Outcome::blocked(
            "Expired",
            "the sandbox passed its expiresAt or used its timeoutMs of run time",
        );
        o.phase = SandboxPhase::Expired;
        return Ok(o);
    }

    let run_time_ms = started.map_or(0, |s| {
        (now.as_millisecond() - s.as_millisecond()).max(0) as u64
    });
    let plan = match compile_checked(&checked, sandbox, &ctx.facts(), run_time_ms) {
        Ok(p) => p,
        Err(b) => {
            children::delete_pod(&ctx.client, sandbox).await?;
            ctx.metrics
                .compile_errors
                .with_label_values(&[b.reason.as_str()])
                .inc();
            let mut o = Outcome::blocked(b.reason.as_str(), b.message);
            o.runtime_ready = !matches!(
                b.reason,
                BlockReason::RuntimeClassMissing | BlockReason::RuntimeHandlerMismatch
            );
            if b.reason == BlockReason::Expired {
                o.phase = SandboxPhase::Expired;
            }
            return Ok(o);
        }
    };

    let ingress_open = checked
        .network
        .ingress
        .as_ref()
        .is_some_and(|i| i.default == Some(DefaultAction::Allow));
    if let Some(other) = additional_network_policy(ctx, sandbox, &plan, ingress_open) {
        children::delete_pod(&ctx.client, sandbox).await?;
        let mut o = Outcome::blocked(
            "AdditionalNetworkPolicy",
            format!(
                "NetworkPolicy {other} also selects the sandbox's pod; NetworkPolicies add up, so it could only widen what the sandbox may reach"
            ),
        );
        o.network_isolated = false;
        return Ok(o);
    }

    // Children in apply order; the NetworkPolicy is in place before the pod is created.
    let mut objects = plan.objects();
    let pod_desired = objects.pop().ok_or(Error::Missing("pod in plan"))?;
    for obj in objects {
        let applied = children::apply(&ctx.client, sandbox, obj).await?;
        if let Applied::Terminating(what) = &applied {
            // Someone deleted a child (say, the NetworkPolicy): the pod goes first, then the
            // object, then both come back in order.
            children::delete_pod(&ctx.client, sandbox).await?;
            return Ok(Outcome {
                phase: SandboxPhase::Starting,
                reason: "Replacing".into(),
                message: format!(
                    "{what} is being deleted: the pod is removed until it is recreated"
                ),
                policy_resolved: true,
                runtime_ready: true,
                network_isolated: false,
                plan: None,
                pod: None,
                requeue: Some(Duration::from_secs(1)),
                timeout_ms: checked.spec.timeout_ms,
            });
        }
        if let Applied::NameConflict(what) = applied {
            children::delete_pod(&ctx.client, sandbox).await?;
            let mut o = Outcome::blocked(
                "NameConflict",
                format!("{what} exists and is not controlled by this sandbox; it is not adopted"),
            );
            o.network_isolated = !what.starts_with("NetworkPolicy");
            return Ok(o);
        }
    }

    let mut outcome = Outcome {
        phase: SandboxPhase::Starting,
        reason: "Starting".into(),
        message: "waiting for the pod to become ready".into(),
        policy_resolved: true,
        runtime_ready: true,
        network_isolated: true,
        plan: None,
        pod: None,
        requeue: deadline.map(|d| seconds_until(d, now)),
        timeout_ms: checked.spec.timeout_ms,
    };
    if sandbox.spec.paused == Some(true) {
        children::delete_pod(&ctx.client, sandbox).await?;
        outcome.phase = SandboxPhase::Paused;
        outcome.reason = "Paused".into();
        outcome.message = "paused: no pod; the workspace is kept".into();
        outcome.plan = Some(plan);
        return Ok(outcome);
    }
    match children::pod_state(&ctx.client, sandbox, &pod_desired).await? {
        PodState::NotOurs => {
            return Ok(Outcome::blocked(
                "NameConflict",
                format!(
                    "Pod {} exists and is not controlled by this sandbox; it is not adopted",
                    sandbox.name_any()
                ),
            ));
        }
        PodState::Stale => {
            children::delete_pod(&ctx.client, sandbox).await?;
            outcome.message = "replacing the pod: its policy hash, labels or image changed".into();
            outcome.requeue = Some(Duration::from_secs(2));
        }
        PodState::Missing => {
            children::create_pod(&ctx.client, sandbox, pod_desired).await?;
        }
        PodState::Current(live) => {
            let pod: Pod = serde_json::from_value(serde_json::to_value(&*live)?)?;
            let phase = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            let ready = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            match phase.as_str() {
                "Running" if ready => {
                    outcome.phase = SandboxPhase::Running;
                    outcome.reason = "Running".into();
                    outcome.message = "the pod is ready".into();
                }
                "Succeeded" => {
                    outcome.phase = SandboxPhase::Succeeded;
                    outcome.reason = "Succeeded".into();
                    outcome.message = "the agent exited successfully".into();
                }
                "Failed" => {
                    outcome.phase = SandboxPhase::Failed;
                    outcome.reason = "Failed".into();
                    outcome.message = pod
                        .status
                        .as_ref()
                        .and_then(|s| s.message.clone())
                        .unwrap_or_else(|| "the agent failed".into());
                }
                _ => {}
            }
            outcome.pod = Some(pod);
        }
    }
    outcome.plan = Some(plan);
    Ok(outcome)
}

fn finished_at(pod: &Pod) -> Option<Timestamp> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .filter_map(|c| {
            c.state
                .as_ref()?
                .terminated
                .as_ref()?
                .finished_at
                .as_ref()
                .map(|t| t.0)
        })
        .max()
}

/// How a phase reads to GitOps tools (kstatus: `Reconciling`, `Stalled` and `Ready`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Standing {
    /// Working towards the spec: `Reconciling=True` (kstatus InProgress).
    Progressing,
    /// The spec is carried out, whether that means running, paused or finished: `Ready=True`
    /// (kstatus Current).
    Settled,
    /// Cannot progress without a change by a person: `Stalled=True` (kstatus Failed).
    Stalled,
}

fn standing(phase: SandboxPhase) -> Standing {
    match phase {
        SandboxPhase::Pending | SandboxPhase::Starting => Standing::Progressing,
        // A paused sandbox is what its spec asks for (like a Deployment scaled to zero), and a
        // finished agent is done (like a complete Job): left Ready=False, kstatus would call
        // them InProgress for ever and GitOps waits would time out.
        SandboxPhase::Running | SandboxPhase::Paused | SandboxPhase::Succeeded => Standing::Settled,
        // Blocked: the spec cannot be enforced as written (missing policy or RuntimeClass,
        // name conflict, …); the operator re-evaluates on every change of what it depends
        // on, but until someone changes something it stays so. Failed: the agent failed and
        // is not restarted. Expired: its time is used up (like a Job past its deadline).
        SandboxPhase::Blocked | SandboxPhase::Failed | SandboxPhase::Expired => Standing::Stalled,
    }
}

/// The conditions of an outcome. `Ready`, `Reconciling` and `Stalled` follow kstatus: exactly
/// one of `Ready`, `Reconciling` and `Stalled` is True, and the True one carries the message.
fn wanted_conditions(outcome: &Outcome) -> Vec<Want> {
    let standing = standing(outcome.phase);
    let blocked = outcome.phase == SandboxPhase::Blocked;
    let reason = outcome.reason.as_str();
    let message = outcome.message.as_str();
    let when = |b: bool| if b { message } else { "" };
    let progressing = standing == Standing::Progressing;
    let stalled = standing == Standing::Stalled;
    vec![
        Want::new("Ready", standing == Standing::Settled, reason, message),
        Want::new(
            "PolicyResolved",
            outcome.policy_resolved,
            if outcome.policy_resolved {
                "Resolved"
            } else {
                reason
            },
            "",
        ),
        Want::new(
            "RuntimeReady",
            outcome.runtime_ready,
            if outcome.runtime_ready {
                "RuntimeClassReady"
            } else {
                reason
            },
            "",
        ),
        Want::new(
            "NetworkIsolated",
            outcome.network_isolated && !blocked,
            if outcome.network_isolated {
                if blocked {
                    "Blocked"
                } else {
                    "NetworkPolicyApplied"
                }
            } else {
                reason
            },
            "",
        ),
        Want::new("Reconciling", progressing, reason, when(progressing)),
        Want::new("Stalled", stalled, reason, when(stalled)),
    ]
}

/// Reconciles one sandbox.
pub async fn reconcile(sandbox: Arc<AgentSandbox>, ctx: Ctx) -> Result<Action, Error> {
    let _timer = ctx.metrics.observe_reconcile("agentsandbox");
    if sandbox.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let now = Timestamp::now();
    let outcome = decide(&sandbox, &ctx, now).await?;
    let previous = sandbox.status.clone().unwrap_or_default();
    let ns = sandbox.namespace().ok_or(Error::Missing("namespace"))?;
    let name = sandbox.name_any();

    let mut started_at = previous.started_at.clone();
    let mut start_latency = None;
    if started_at.is_none() && outcome.phase == SandboxPhase::Running {
        started_at = Some(Time(now));
        let created = sandbox
            .meta()
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(now);
        start_latency =
            Some((now.as_millisecond() - created.as_millisecond()).max(0) as f64 / 1000.0);
    }
    let expires = expiry(
        sandbox.spec.expires_at.as_ref().map(|t| t.0),
        started_at.as_ref().map(|t| t.0),
        outcome.timeout_ms,
    );
    let mut requeue = outcome.requeue.or(expires.map(|e| seconds_until(e, now)));

    // ttlSecondsAfterFinished: the sandbox deletes itself some time after the agent finished.
    if let (Some(ttl), Some(pod)) = (sandbox.spec.ttl_seconds_after_finished, &outcome.pod)
        && matches!(
            outcome.phase,
            SandboxPhase::Succeeded | SandboxPhase::Failed
        )
    {
        {
            let done = finished_at(pod).unwrap_or(now);
            let due = done
                .checked_add(jiff::SignedDuration::from_secs(ttl as i64))
                .unwrap_or(done);
            if due <= now {
                let api: Api<AgentSandbox> = Api::namespaced(ctx.client.clone(), &ns);
                api.delete(&name, &DeleteParams::background()).await?;
                return Ok(Action::await_change());
            }
            requeue = Some(seconds_until(due, now));
        }
    }

    let blocked = matches!(outcome.phase, SandboxPhase::Blocked);
    let generation = sandbox.meta().generation;
    let time = Time(now);
    let wanted = wanted_conditions(&outcome);
    // Compare without transition times first, so an unchanged status is not written.
    let pod_ip = outcome
        .pod
        .as_ref()
        .and_then(|p| p.status.as_ref()?.pod_ip.clone());
    let new_status = AgentSandboxStatus {
        phase: Some(outcome.phase),
        conditions: merge(&previous.conditions, wanted, generation, &time),
        observed_generation: generation,
        pod_name: outcome
            .plan
            .as_ref()
            .filter(|_| outcome.phase != SandboxPhase::Paused)
            .map(|_| name.clone()),
        pod_ip,
        service_fqdn: outcome
            .plan
            .as_ref()
            .and_then(|p| p.service.as_ref())
            .map(|_| format!("{name}.{ns}.svc.{}", ctx.config.facts.cluster_domain)),
        runtime_class_name: outcome
            .plan
            .as_ref()
            .and_then(|p| p.runtime_class_name.clone()),
        policy_hash: outcome.plan.as_ref().map(|p| p.pod_hash.clone()),
        started_at,
        expires_at: expires.map(Time),
        message: Some(outcome.message.clone()),
    };
    if new_status != previous {
        if blocked
            && (previous.phase != Some(SandboxPhase::Blocked)
                || previous.message.as_deref() != Some(outcome.message.as_str()))
        {
            let event = Event {
                type_: EventType::Warning,
                reason: outcome.reason.clone(),
                note: Some(outcome.message.clone()),
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
        if let Some(seconds) = start_latency {
            ctx.metrics.start_latency.observe(seconds);
        }
    }
    Ok(match requeue {
        Some(d) => Action::requeue(d.max(Duration::from_millis(500))),
        None => Action::requeue(RESYNC),
    })
}

/// Errors requeue with backoff-ish delays; the metrics say what failed.
pub fn error_policy(_sandbox: Arc<AgentSandbox>, error: &Error, ctx: Ctx) -> Action {
    if error.namespace_terminating() {
        // The sandbox is deleted with its namespace; look again later in case it is not.
        tracing::debug!(%error, "namespace is being deleted");
        return Action::requeue(Duration::from_secs(30));
    }
    ctx.metrics.reconcile_error("agentsandbox", error.label());
    tracing::warn!(%error, "reconcile failed");
    Action::requeue(Duration::from_secs(
        if matches!(error, Error::Kube(kube::Error::Api(s)) if s.code == 409) {
            1
        } else {
            5
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_the_earlier_of_expires_at_and_the_timeout() {
        let t = |s: i64| Timestamp::from_second(s).unwrap();
        assert_eq!(
            expiry(None, None, Some(5_000)),
            None,
            "no timeout before the sandbox started"
        );
        assert_eq!(expiry(None, Some(t(100)), Some(5_000)), Some(t(105)));
        assert_eq!(
            expiry(Some(t(103)), Some(t(100)), Some(5_000)),
            Some(t(103))
        );
        assert_eq!(
            expiry(Some(t(200)), Some(t(100)), Some(5_000)),
            Some(t(105))
        );
        assert_eq!(expiry(Some(t(200)), None, None), Some(t(200)));
    }

    fn outcome(phase: SandboxPhase, reason: &str) -> Outcome {
        let mut o = Outcome::blocked(reason, format!("{reason}: why"));
        o.phase = phase;
        o
    }

    fn read(o: &Outcome) -> (KStatus, String) {
        let now = Time(Timestamp::from_second(1000).unwrap());
        let conditions = merge(&[], wanted_conditions(o), Some(2), &now);
        kstatus(Some(2), Some(2), &conditions)
    }

    use crate::reconcile::conditions::{KStatus, kstatus};

    #[test]
    fn every_phase_reads_as_intended_to_kstatus() {
        use SandboxPhase::*;
        let cases = [
            (Pending, "Pending", KStatus::InProgress),
            (Starting, "Starting", KStatus::InProgress),
            (Starting, "Replacing", KStatus::InProgress),
            (Running, "Running", KStatus::Current),
            (Paused, "Paused", KStatus::Current),
            (Succeeded, "Succeeded", KStatus::Current),
            (Failed, "Failed", KStatus::Failed),
            (Expired, "Expired", KStatus::Failed),
            (Blocked, "PolicyNotFound", KStatus::Failed),
            (Blocked, "PolicyInvalid", KStatus::Failed),
            (Blocked, "RuntimeClassMissing", KStatus::Failed),
            (Blocked, "NameConflict", KStatus::Failed),
            (Blocked, "AdditionalNetworkPolicy", KStatus::Failed),
        ];
        for (phase, reason, want) in cases {
            let (got, message) = read(&outcome(phase, reason));
            assert_eq!(got, want, "{phase:?}/{reason}");
            if want != KStatus::Current {
                assert_eq!(message, format!("{reason}: why"), "{phase:?}/{reason}");
            }
        }
    }

    #[test]
    fn exactly_one_of_ready_reconciling_and_stalled_is_true() {
        use SandboxPhase::*;
        for phase in [
            Pending, Starting, Running, Paused, Succeeded, Failed, Blocked, Expired,
        ] {
            let wanted = wanted_conditions(&outcome(phase, "R"));
            let trues = wanted
                .iter()
                .filter(|w| ["Ready", "Reconciling", "Stalled"].contains(&w.type_) && w.status)
                .count();
            assert_eq!(trues, 1, "{phase:?}: {wanted:?}");
        }
    }

    #[test]
    fn a_new_generation_is_in_progress_until_observed() {
        let now = Time(Timestamp::from_second(1000).unwrap());
        let conditions = merge(
            &[],
            wanted_conditions(&outcome(SandboxPhase::Running, "Running")),
            Some(1),
            &now,
        );
        assert_eq!(
            kstatus(Some(2), Some(1), &conditions).0,
            KStatus::InProgress
        );
    }
}
