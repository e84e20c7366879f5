//! What should exist for a sandbox, decided from what was observed of it. Pure: the reconciler
//! gathers [`Observed`] and carries out the [`Decision`] (`act.rs`) in the safe order.
//!
//! Destroying a running pod is the last resort, for a confirmed reason only: a decision that
//! removes a pod or blocks the sandbox because something is absent from (or present in) a cache
//! asks for [`Confirm`]ation, and the reconciler decides again on what it read directly.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use crate::api::policy::DefaultAction;
use crate::api::sandbox::RestartPolicy;
use crate::api::{AgentPolicy, AgentSandbox, AgentSandboxStatus, EnforcementReport, SandboxPhase};
use crate::policy::image;
use crate::render::children::{base_name, service_account_name};
use crate::render::network::isolation_name;
use crate::render::{
    BlockReason, CheckedPolicy, ClusterFacts, Plan, check_policy, compile_checked,
};

use super::admin::{AdminPolicies, Known, Subject};
use super::cilium::{Endpoint, Match};
use super::lifetime::Lifetime;
use super::live::{Guard, LiveIsolation, LivePod, PodPhase};
use super::ownership::controlled_by;
use super::record::PodRecord;
use super::status::{Outcome, PlanFacts, REPORT_CHARS, REPORT_ENTRIES, Standing};
use crate::render::pod::ISOLATION_CHECK;

/// What the status says of a pod that is created, let through its gate and not yet ready.
/// The pass that creates the pod says it too, so the next pass (the pod now in the cache)
/// writes no status of its own.
pub const AWAITING_READY: &str = "waiting for the pod to become ready";

/// The sandbox's policy as found.
#[derive(Clone, Copy, Debug)]
pub enum PolicyState<'a> {
    Found(&'a AgentPolicy),
    /// Found, and already checked (the operator keeps a policy's check for its generation).
    Checked(&'a AgentPolicy, &'a Result<CheckedPolicy, String>),
    Missing,
    /// It exists but does not match this operator's schema (written for a newer one).
    Unreadable(&'a str),
}

/// Everything a decision depends on.
pub struct Observed<'a> {
    pub sandbox: &'a AgentSandbox,
    pub policy: PolicyState<'a>,
    pub facts: &'a ClusterFacts,
    /// The NetworkPolicies of the sandbox's namespace.
    pub network_policies: &'a [Arc<NetworkPolicy>],
    /// The CiliumNetworkPolicies of the sandbox's namespace, as far as they are known.
    pub cilium_policies: Known<'a>,
    /// Cluster-scoped policies of an administrator that may allow the pod more (reported).
    pub admin: AdminPolicies<'a>,
    /// The sandbox's isolating NetworkPolicy, if it exists.
    pub isolation: Option<&'a LiveIsolation>,
    pub pod: Option<&'a LivePod>,
    pub now: Timestamp,
}

/// What to do with the pod when the plan runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodStep {
    /// None exists: create it behind the scheduling gate, then confirm its NetworkPolicy and
    /// remove the gate.
    Create,
    /// It waits behind the gate: confirm its NetworkPolicy and remove the gate.
    Ungate,
    /// It is what the plan says.
    Keep,
    /// It is what the plan says but was created before pods were bound to their NetworkPolicy:
    /// record the binding (the NetworkPolicy's UID).
    Bind(String),
    /// It must go (the reason is in the outcome); nothing is changed until it is gone, except
    /// that a missing NetworkPolicy is put back (that only narrows). `now`: without a grace
    /// period, because it may be running without its isolation.
    Replace { now: bool },
    /// It is being deleted; nothing is changed until it is gone (a missing NetworkPolicy is put
    /// back).
    AwaitGone,
    /// None exists, and the next one waits (failed pods are replaced with a growing delay).
    Later,
}

/// What to change in the cluster.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Nothing.
    Leave,
    /// Remove the sandbox's pod, if it has one; nothing else.
    RemovePod,
    /// The plan's children without a pod: the pod goes first.
    Pause(Box<Plan>),
    /// The plan's children, then the pod.
    Run(Box<Plan>, PodStep),
}

/// What must be read directly before a decision taken on cached evidence is carried out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Confirm {
    /// The policy is absent from the cache.
    Policy,
    /// A RuntimeClass or an optional CRD is absent, or a RuntimeClass has another handler.
    ClusterFacts,
    /// Another NetworkPolicy selects the pod, or the isolating one is foreign, missing or new.
    NetworkPolicies,
}

/// A decision, with the outcome it leads to and what the status remembers.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub step: Step,
    pub outcome: Outcome,
    pub lifetime: Lifetime,
    pub record: PodRecord,
    /// Set when the decision rests on cached evidence and is destructive.
    pub confirm: Option<Confirm>,
}

impl Decision {
    fn new(step: Step, outcome: Outcome, lifetime: Lifetime, record: PodRecord) -> Self {
        Self {
            step,
            outcome,
            lifetime,
            record,
            confirm: None,
        }
    }

    fn confirm(mut self, what: Confirm) -> Self {
        self.confirm = Some(what);
        self
    }
}

/// How long before our own expiry a pod ended by the kubelet's `activeDeadlineSeconds` still
/// counts as expired (the two clocks differ by scheduling and rounding).
const DEADLINE_SLACK_MS: i64 = 5_000;

/// What the status says the plan was, for outcomes that do not compile it again.
fn plan_facts_of(status: &AgentSandboxStatus) -> Option<PlanFacts> {
    status.policy_hash.clone().map(|pod_hash| PlanFacts {
        pod_hash,
        runtime_class_name: status.runtime_class_name.clone(),
        service: status.service_fqdn.is_some(),
        enforcement: status.enforcement.clone(),
    })
}

/// Decides what should exist for the sandbox.
pub fn decide(o: &Observed) -> Decision {
    let sandbox = o.sandbox;
    let status = sandbox.status.clone().unwrap_or_default();
    let lifetime = Lifetime::of(&status);
    let record = PodRecord::of(&status);

    // A finished agent never runs again, whatever happens to its pod; nor does an expired one.
    if let Some(phase) = status.phase.filter(|p| {
        matches!(
            p,
            SandboxPhase::Succeeded | SandboxPhase::Failed | SandboxPhase::Expired
        )
    }) && lifetime.finished_at.is_some()
    {
        let message = status.message.clone().unwrap_or_else(|| "finished".into());
        let mut outcome = Outcome::new(phase, phase_reason(phase), message);
        outcome.plan = plan_facts_of(&status);
        outcome.has_pod = o.pod.is_some_and(|p| p.ours) && phase != SandboxPhase::Expired;
        outcome.expires_at = status.expires_at.as_ref().map(|t| t.0);
        let step = if phase == SandboxPhase::Expired {
            Step::RemovePod
        } else {
            Step::Leave
        };
        return Decision::new(step, outcome, lifetime, record);
    }

    let checked_now;
    let (policy, checked) = match o.policy {
        PolicyState::Found(p) => {
            checked_now = check_policy(&p.spec).map_err(|e| e.to_string());
            (p, checked_now.as_ref())
        }
        PolicyState::Checked(p, checked) => (p, checked.as_ref()),
        PolicyState::Missing => {
            let outcome = Outcome::blocked(
                "PolicyNotFound",
                format!(
                    "AgentPolicy {}/{} does not exist",
                    sandbox.namespace().unwrap_or_default(),
                    sandbox.spec.policy_ref.name
                ),
            )
            .unresolved_policy();
            return Decision::new(Step::RemovePod, outcome, lifetime, record)
                .confirm(Confirm::Policy);
        }
        PolicyState::Unreadable(why) => return hold(o, &status, lifetime, record, why),
    };
    let checked = match checked {
        Ok(c) => c,
        Err(e) => {
            let outcome = Outcome::blocked(
                "PolicyInvalid",
                format!("AgentPolicy {}: {e}", policy.name_any()),
            )
            .unresolved_policy();
            return Decision::new(Step::RemovePod, outcome, lifetime, record);
        }
    };

    let paused = sandbox.spec.paused == Some(true);
    let lifetime = lifetime.paused(paused, o.now);
    let expires_at = lifetime.expiry(
        sandbox.spec.expires_at.as_ref().map(|t| t.0),
        checked.spec.timeout_ms,
    );
    if expires_at.is_some_and(|d| d <= o.now) {
        return expire(
            "the sandbox passed its expiresAt or used its timeoutMs of run time",
            expires_at,
            lifetime,
            record,
            o.now,
        );
    }

    let plan = match compile_checked(checked, sandbox, o.facts, lifetime.run_time_ms(o.now)) {
        Ok(p) => p,
        Err(b) if b.reason == BlockReason::Expired => {
            return expire(&b.message, expires_at, lifetime, record, o.now);
        }
        Err(b) => {
            let mut outcome = Outcome::blocked(b.reason.as_str(), b.message);
            if matches!(
                b.reason,
                BlockReason::RuntimeClassMissing | BlockReason::RuntimeHandlerMismatch
            ) {
                outcome = outcome.runtime_not_ready();
            }
            let decision = Decision::new(Step::RemovePod, outcome, lifetime, record);
            return match b.reason {
                BlockReason::RuntimeClassMissing
                | BlockReason::RuntimeHandlerMismatch
                | BlockReason::FqdnBackendMissing
                | BlockReason::SeccompProfileCrdMissing => decision.confirm(Confirm::ClusterFacts),
                _ => decision,
            };
        }
    };
    let ingress_open = checked
        .network
        .ingress
        .as_ref()
        .is_some_and(|i| i.default == Some(DefaultAction::Allow));
    let labels = pod_labels(o, &plan);
    let namespace = sandbox.namespace().unwrap_or_default();
    let service_account = service_account_name(&base_name(sandbox));
    // An administrator's cluster-scoped allowances come first: the report is bounded.
    let mut report = EnforcementReport {
        not_enforced: o.admin.report(&Subject {
            namespace: &namespace,
            pod_labels: &labels,
            service_account: &service_account,
            ingress_open,
        }),
        ..Default::default()
    };
    report.extend(plan.report.clone());
    let facts = PlanFacts {
        pod_hash: plan.pod_hash.clone(),
        runtime_class_name: plan.runtime_class_name.clone(),
        service: plan.service.is_some(),
        enforcement: Some(report.bounded(REPORT_ENTRIES, REPORT_CHARS)).filter(|r| !r.is_empty()),
    };

    if let Some(other) = widening_network_policy(o, &plan, ingress_open) {
        let outcome = Outcome::blocked(
            "AdditionalNetworkPolicy",
            format!(
                "NetworkPolicy {other} also selects the sandbox's pod; NetworkPolicies add up, so it could only widen what the sandbox may reach"
            ),
        )
        .not_isolated(None)
        .with_plan(facts);
        return Decision::new(Step::RemovePod, outcome, lifetime, record)
            .confirm(Confirm::NetworkPolicies);
    }
    let endpoint = Endpoint::new(
        &labels,
        &namespace,
        &service_account,
        o.admin.namespace_labels,
    );
    let cilium_policies = match o.cilium_policies {
        Known::Absent => &[][..],
        Known::Listed(policies) => policies,
        Known::Unreadable => {
            let outcome = Outcome::blocked(
                "NetworkPoliciesUnreadable",
                "Cilium is installed but the operator may not list CiliumNetworkPolicies: another one could widen what the sandbox may reach (grant list and watch, e.g. the chart's rbac.cilium)",
            )
            .not_isolated(None)
            .with_plan(facts);
            return Decision::new(Step::RemovePod, outcome, lifetime, record);
        }
        // Not read yet (the CRD just appeared): nothing is started until they are.
        Known::Listing => &[][..],
    };
    let cilium_listing = matches!(o.cilium_policies, Known::Listing);
    if let Some((other, how)) = super::cilium::widening_cilium_policy(
        cilium_policies,
        &crate::render::network::fqdn_policy_name(&base_name(sandbox)),
        &sandbox.uid().unwrap_or_default(),
        &endpoint,
        ingress_open,
    ) {
        let selects = match how {
            Match::Yes => "also selects the sandbox's pod",
            _ => {
                "may also select the sandbox's pod (by namespace or cluster labels the operator cannot read)"
            }
        };
        let outcome = Outcome::blocked(
            "AdditionalNetworkPolicy",
            format!(
                "CiliumNetworkPolicy {other} {selects} with allow rules; Cilium adds policies up, so it could only widen what the sandbox may reach"
            ),
        )
        .not_isolated(None)
        .with_plan(facts);
        return Decision::new(Step::RemovePod, outcome, lifetime, record);
    }
    if o.isolation.is_some_and(|np| !np.ours) {
        let outcome = Outcome::blocked(
            "NameConflict",
            format!(
                "NetworkPolicy {} exists and is not controlled by this sandbox; it is not adopted",
                isolation_name(&base_name(sandbox))
            ),
        )
        .not_isolated(None);
        return Decision::new(Step::RemovePod, outcome, lifetime, record)
            .confirm(Confirm::NetworkPolicies);
    }

    // An image rewritten by admission blocks until the sandbox or its policy changes.
    if status.phase == Some(SandboxPhase::Blocked)
        && stalled_reason(&status) == Some("ImageRewritten")
        && status.policy_hash.as_deref() == Some(plan.pod_hash.as_str())
    {
        let message = status.message.clone().unwrap_or_default();
        let outcome = Outcome::blocked("ImageRewritten", message).with_plan(facts);
        return Decision::new(Step::RemovePod, outcome, lifetime, record);
    }

    if o.isolation.is_some_and(|np| np.deleting) {
        let outcome = Outcome::new(
            SandboxPhase::Starting,
            "Replacing",
            "the isolating NetworkPolicy is being deleted: the pod is removed until it is recreated",
        )
        .not_isolated(Some("NetworkPolicyDeleted"))
        .requeue_in(Duration::from_secs(1));
        return Decision::new(Step::RemovePod, outcome, lifetime, record);
    }

    if paused {
        let mut outcome = Outcome::new(
            SandboxPhase::Paused,
            "Paused",
            "paused: no pod; the workspace is kept",
        )
        .with_plan(facts);
        outcome.expires_at = expires_at;
        return Decision::new(Step::Pause(Box::new(plan)), outcome, lifetime, record);
    }

    PodDecision {
        o,
        checked,
        plan,
        facts,
        expires_at,
        hold: cilium_listing,
    }
    .decide(lifetime, record)
}

/// The part of a decision about the pod, once the plan compiled and nothing blocks it.
struct PodDecision<'a> {
    o: &'a Observed<'a>,
    checked: &'a CheckedPolicy,
    plan: Plan,
    facts: PlanFacts,
    expires_at: Option<Timestamp>,
    /// Others' policies that could widen the pod are not read yet: no pod starts until they
    /// are (one running already is kept).
    hold: bool,
}

impl PodDecision<'_> {
    fn held(&self, lifetime: Lifetime, record: PodRecord) -> Decision {
        let outcome = self
            .starting(
                "Starting",
                "reading the namespace's CiliumNetworkPolicies before the pod starts",
            )
            .requeue_in(Duration::from_secs(2));
        self.run(PodStep::Later, outcome, lifetime, record)
    }

    /// The outcome of a pass that keeps, binds, ungates or creates a pod of this plan, with its
    /// NetworkPolicy applied first: the policy's version is enforced for the sandbox.
    fn current(&self, mut outcome: Outcome) -> Outcome {
        // The API server always sets both; without them no version can be named.
        if let PolicyState::Found(p) | PolicyState::Checked(p, _) = self.o.policy
            && let (Some(uid), Some(generation)) = (&p.metadata.uid, p.metadata.generation)
        {
            outcome.enforced_policy = Some(crate::api::sandbox::PolicyVersion {
                uid: uid.clone(),
                generation,
            });
        }
        outcome
    }

    fn starting(&self, reason: &str, message: &str) -> Outcome {
        let mut outcome = Outcome::new(SandboxPhase::Starting, reason, message);
        outcome.plan = Some(self.facts.clone());
        outcome.has_pod = true;
        outcome.expires_at = self.expires_at;
        outcome
    }

    fn run(
        &self,
        step: PodStep,
        outcome: Outcome,
        lifetime: Lifetime,
        record: PodRecord,
    ) -> Decision {
        Decision::new(
            Step::Run(Box::new(self.plan.clone()), step),
            outcome,
            lifetime,
            record,
        )
    }

    fn replace(&self, why: &str, now: bool, lifetime: Lifetime, record: PodRecord) -> Decision {
        let outcome = self
            .starting("Replacing", &format!("replacing the pod: {why}"))
            .requeue_in(Duration::from_secs(1));
        self.run(PodStep::Replace { now }, outcome, lifetime, record)
    }

    fn decide(self, lifetime: Lifetime, record: PodRecord) -> Decision {
        let o = self.o;
        let Some(pod) = o.pod else {
            if let Some(wait) = record.wait_before_creating(o.now) {
                let outcome = self
                    .starting(
                        "Backoff",
                        &format!(
                            "the last pod failed ({} in a row); the next is created in {} s",
                            record.failures,
                            wait.as_secs().max(1)
                        ),
                    )
                    .requeue_in(wait);
                return self.run(PodStep::Later, outcome, lifetime, record);
            }
            if self.hold {
                return self.held(lifetime, record);
            }
            let outcome = self.current(self.starting("Starting", "creating the pod"));
            return self.run(PodStep::Create, outcome, lifetime, record);
        };
        if !pod.ours {
            let outcome = Outcome::blocked(
                "NameConflict",
                format!(
                    "Pod {} exists and is not controlled by this sandbox; it is not adopted",
                    base_name(o.sandbox)
                ),
            );
            return Decision::new(Step::Leave, outcome, lifetime, record);
        }
        if pod.deleting {
            let outcome = self
                .starting("Replacing", "waiting for the previous pod to terminate")
                .requeue_in(Duration::from_secs(1));
            return self.run(PodStep::AwaitGone, outcome, lifetime, record);
        }
        // Only the pod the operator created is trusted: another one with the sandbox as its
        // controller (forged in the gap of a replacement) may run anything.
        if record.uid.as_ref().is_some_and(|uid| *uid != pod.uid) {
            return self.replace(
                "it is not the pod the operator created (another UID)",
                true,
                lifetime,
                record,
            );
        }
        let record = PodRecord {
            uid: Some(pod.uid.clone()),
            ..record
        };
        match pod.phase {
            PodPhase::Succeeded => {
                let at = pod.finished_at.unwrap_or(o.now);
                let mut outcome = Outcome::new(
                    SandboxPhase::Succeeded,
                    "Succeeded",
                    "the agent exited successfully",
                )
                .with_plan(self.facts.clone());
                outcome.has_pod = true;
                return Decision::new(Step::Leave, outcome, lifetime.finished(at), record);
            }
            PodPhase::Failed if pod.reason.as_deref() == Some("DeadlineExceeded") => {
                // The kubelet ended it at activeDeadlineSeconds. If the timeout was raised since
                // (a pod's deadline can only shrink), the sandbox runs on in a new pod.
                let due = lifetime.timeout_at(self.checked.spec.timeout_ms);
                let expired = due.is_none_or(|d| {
                    d.as_millisecond() <= o.now.as_millisecond() + DEADLINE_SLACK_MS
                });
                if expired {
                    return expire(
                        "the sandbox used its timeoutMs of run time",
                        self.expires_at,
                        lifetime,
                        record,
                        o.now,
                    );
                }
                return self.replace(
                    "its deadline passed, but the policy's timeoutMs has been raised since",
                    false,
                    lifetime,
                    record,
                );
            }
            PodPhase::Failed if pod.ever_ran && self.restart() == RestartPolicy::Never => {
                let at = pod.finished_at.unwrap_or(o.now);
                let message = match (&pod.reason, &pod.message) {
                    (Some(r), Some(m)) => format!("the agent failed ({r}: {m})"),
                    (Some(r), None) => format!("the agent failed ({r})"),
                    (None, Some(m)) => format!("the agent failed: {m}"),
                    (None, None) => "the agent failed".into(),
                };
                let mut outcome = Outcome::new(SandboxPhase::Failed, "Failed", message)
                    .with_plan(self.facts.clone());
                outcome.has_pod = true;
                return Decision::new(Step::Leave, outcome, lifetime.finished(at), record);
            }
            PodPhase::Failed => {
                // Stopped from outside (eviction, node shutdown, preemption) or refused by the
                // node before it ran: the sandbox runs on in a new pod, after a growing wait.
                let why = pod.reason.clone().unwrap_or_else(|| "Failed".into());
                let what = if pod.ever_ran {
                    "it was stopped from outside"
                } else if pod.isolation_check_failure.is_some() {
                    "its isolation check failed, so the agent never started"
                } else {
                    "the node refused it before it ran"
                };
                let detail = pod
                    .message
                    .clone()
                    .or_else(|| {
                        pod.isolation_check_failure
                            .as_ref()
                            .map(|m| format!("the isolation check failed: {m}"))
                    })
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                return self.replace(
                    &format!("{what} ({why}{detail})"),
                    false,
                    lifetime,
                    record.failed(o.now),
                );
            }
            _ => {}
        }
        let wanted_labels = self.plan.pod.metadata.labels.clone().unwrap_or_default();
        if !wanted_labels
            .iter()
            .all(|(k, v)| pod.labels.get(k) == Some(v))
        {
            // Its NetworkPolicy selects it by these labels: it may be running unisolated.
            return self.replace("its labels were changed", true, lifetime, record);
        }
        let current = pod.hash.as_deref() == Some(self.plan.pod_hash.as_str())
            || (pod.hash.is_some() && pod.hash == self.plan.pod_hash_before_default_requests);
        if !current {
            return self.replace(
                "its policy hash changed (a policy or sandbox edit that only a new pod can carry)",
                false,
                lifetime,
                record,
            );
        }
        if pod.guard != Guard::of(&self.plan.pod) {
            return self.replace(
                "its runtime class, identity or security context is not the planned one",
                true,
                lifetime,
                record,
            );
        }
        if let Some(Err(message)) = pod
            .image
            .as_deref()
            .map(|running| image::admitted_as(&o.sandbox.spec.image, running))
        {
            let outcome = Outcome::blocked("ImageRewritten", message).with_plan(self.facts.clone());
            return Decision::new(Step::RemovePod, outcome, lifetime, record);
        }
        match (&pod.network_policy_uid, o.isolation) {
            (Some(bound), isolation) if isolation.map(|np| &np.uid) != Some(bound) => {
                let mut d = self.replace(
                    "its isolating NetworkPolicy was deleted or replaced while it ran",
                    true,
                    lifetime,
                    record,
                );
                d.outcome = d.outcome.not_isolated(Some("NetworkPolicyReplaced"));
                return d.confirm(Confirm::NetworkPolicies);
            }
            _ => {}
        }
        if pod.gate.is_some() {
            let planned_check = self
                .plan
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.init_containers.as_ref())
                .is_some_and(|all| all.iter().any(|c| c.name == ISOLATION_CHECK));
            if planned_check && !pod.has_isolation_check {
                // Created by an operator without the check (an upgrade): its agent could start
                // before the network plugin enforces the NetworkPolicy.
                return self.replace(
                    "it was created without the isolation check",
                    false,
                    lifetime,
                    record,
                );
            }
            if self.hold {
                return self.held(lifetime, record);
            }
            let outcome = self.current(self.starting(
                "Starting",
                "confirming the isolating NetworkPolicy before the pod is scheduled",
            ));
            return self.run(PodStep::Ungate, outcome, lifetime, record);
        }
        let step = match (&pod.network_policy_uid, o.isolation) {
            (None, Some(np)) => PodStep::Bind(np.uid.clone()),
            _ => PodStep::Keep,
        };
        let waiting = match (&pod.isolation_check_failure, pod.checking_isolation) {
            _ if pod.isolation_check_waiting.is_some() => format!(
                "the isolation check cannot start ({}); the agent starts after it",
                pod.isolation_check_waiting.as_deref().unwrap_or_default()
            ),
            (_, true) => "waiting for the network plugin to enforce the isolating NetworkPolicy (the isolation check runs before the agent)".to_string(),
            (Some(failure), false) if !pod.ever_ran => format!(
                "the isolation check failed and is retried before the agent starts: {failure}"
            ),
            _ => AWAITING_READY.to_string(),
        };
        let mut outcome = self.current(self.starting("Starting", &waiting));
        outcome.pod_ip = pod.ip.clone();
        if pod.phase == PodPhase::Running && pod.ready {
            outcome.phase = SandboxPhase::Running;
            outcome.reason = "Running".into();
            outcome.message = "the pod is ready".into();
            // Run time counts from when the kubelet started the first pod, as its deadline does.
            let lifetime = lifetime.ran(pod.start_time.unwrap_or(o.now).min(o.now));
            outcome.expires_at = lifetime.expiry(
                o.sandbox.spec.expires_at.as_ref().map(|t| t.0),
                self.checked.spec.timeout_ms,
            );
            return self.run(step, outcome, lifetime, record.ran());
        }
        self.run(step, outcome, lifetime, record)
    }

    fn restart(&self) -> RestartPolicy {
        self.o.sandbox.spec.restart_policy.unwrap_or_default()
    }
}

fn phase_reason(phase: SandboxPhase) -> &'static str {
    match phase {
        SandboxPhase::Succeeded => "Succeeded",
        SandboxPhase::Expired => "Expired",
        _ => "Failed",
    }
}

/// The sandbox's time is up: no pod, for good.
fn expire(
    message: &str,
    expires_at: Option<Timestamp>,
    lifetime: Lifetime,
    record: PodRecord,
    now: Timestamp,
) -> Decision {
    let mut outcome = Outcome::new(SandboxPhase::Expired, "Expired", message);
    outcome.expires_at = expires_at;
    Decision::new(Step::RemovePod, outcome, lifetime.finished(now), record)
}

fn stalled_reason(status: &AgentSandboxStatus) -> Option<&str> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled" && c.status == "True")
        .map(|c| c.reason.as_str())
}

/// Nothing is touched: the last enforced state stays, and the status says why.
fn hold(
    o: &Observed,
    status: &AgentSandboxStatus,
    lifetime: Lifetime,
    record: PodRecord,
    why: &str,
) -> Decision {
    let phase = status.phase.unwrap_or_default();
    let mut outcome = Outcome::new(
        phase,
        "PolicyUnreadable",
        format!(
            "AgentPolicy {} does not match this operator's schema ({why}); the sandbox keeps its last enforced state until the operator is upgraded",
            o.sandbox.spec.policy_ref.name
        ),
    )
    .unresolved_policy();
    outcome.standing = Some(Standing::Stalled);
    outcome.plan = plan_facts_of(status);
    outcome.has_pod = o.pod.is_some_and(|p| p.ours);
    outcome.pod_ip = o.pod.and_then(|p| p.ip.clone());
    outcome.expires_at = status.expires_at.as_ref().map(|t| t.0);
    Decision::new(Step::Leave, outcome, lifetime, record)
}

/// Whether `selector` selects a pod with `labels`.
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
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

/// The pod's labels as policies select it: the live pod's, with the plan's.
fn pod_labels(o: &Observed, plan: &Plan) -> BTreeMap<String, String> {
    let mut labels = plan.pod.metadata.labels.clone().unwrap_or_default();
    if let Some(pod) = o.pod.filter(|p| p.ours) {
        labels.extend(pod.labels.clone());
    }
    labels
}

/// Another NetworkPolicy with allow rules that select the pod can only widen what it may do
/// (NetworkPolicies add up). Ours is the isolation policy of our name that the sandbox controls
/// (by UID); labels and owner references alone prove nothing, as anyone may copy them; a policy without allow rules (a namespace's default deny)
/// narrows nothing and widens nothing. The pod's labels are the live pod's, with the plan's.
fn widening_network_policy(o: &Observed, plan: &Plan, ingress_open: bool) -> Option<String> {
    let ns = o.sandbox.namespace()?;
    let uid = o.sandbox.uid().unwrap_or_default();
    let ours = isolation_name(&base_name(o.sandbox));
    let labels = pod_labels(o, plan);
    o.network_policies.iter().find_map(|np| {
        // Ours: the one object of our isolation policy's name, and controlled by the sandbox
        // (an owner reference alone can be copied onto any object).
        let is_ours = np.name_any() == ours && controlled_by(&np.metadata, &uid);
        if np.namespace().as_deref() != Some(ns.as_str()) || is_ours {
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
        let has = |t: &str| types.iter().any(|x| x == t);
        let egress_allows = has("Egress") && spec.egress.as_ref().is_some_and(|r| !r.is_empty());
        let ingress_allows = has("Ingress") && spec.ingress.as_ref().is_some_and(|r| !r.is_empty());
        (egress_allows || (ingress_allows && !ingress_open)).then(|| np.name_any())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::sandbox::{AgentSandboxSpec, PolicyRef};
    use crate::api::{AgentSandboxStatus, policy::AgentPolicySpec};
    use crate::render::facts::RuntimeClasses;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn sandbox(status: Option<AgentSandboxStatus>, paused: bool) -> AgentSandbox {
        let mut s = AgentSandbox::new(
            "a",
            AgentSandboxSpec {
                policy_ref: PolicyRef { name: "p".into() },
                image: "ghcr.io/acme/agent:1".into(),
                paused: paused.then_some(true),
                ..Default::default()
            },
        );
        s.metadata.namespace = Some("ns".into());
        s.metadata.uid = Some("sb".into());
        s.status = status;
        s
    }

    fn policy() -> AgentPolicy {
        let mut p = AgentPolicy::new("p", AgentPolicySpec::default());
        p.metadata.namespace = Some("ns".into());
        p
    }

    fn facts() -> ClusterFacts {
        ClusterFacts {
            runtime_classes: RuntimeClasses::Known([("gvisor".into(), "runsc".into())].into()),
            ..Default::default()
        }
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn decide_with(
        sandbox: &AgentSandbox,
        policy: PolicyState,
        isolation: Option<&LiveIsolation>,
        pod: Option<&LivePod>,
    ) -> Decision {
        let facts = facts();
        decide(&Observed {
            sandbox,
            policy,
            facts: &facts,
            network_policies: &[],
            cilium_policies: Known::Absent,
            admin: AdminPolicies::default(),
            isolation,
            pod,
            now: t(1000),
        })
    }

    #[test]
    fn an_unreadable_policy_touches_nothing_and_stalls() {
        let s = sandbox(None, false);
        let d = decide_with(
            &s,
            PolicyState::Unreadable("spec.x: unknown field"),
            None,
            None,
        );
        assert_eq!(d.step, Step::Leave);
        assert_eq!(d.outcome.standing(), Standing::Stalled);
        assert!(!d.outcome.policy_resolved);
        assert!(d.confirm.is_none());
    }

    #[test]
    fn a_missing_policy_is_confirmed_before_the_pod_goes() {
        let s = sandbox(None, false);
        let d = decide_with(&s, PolicyState::Missing, None, None);
        assert_eq!(d.step, Step::RemovePod);
        assert_eq!(d.confirm, Some(Confirm::Policy));
    }

    #[test]
    fn a_finished_sandbox_is_left_alone_whatever_else_is_missing() {
        let status = AgentSandboxStatus {
            phase: Some(SandboxPhase::Succeeded),
            finished_at: Some(Time(t(900))),
            ..Default::default()
        };
        let s = sandbox(Some(status), false);
        let d = decide_with(&s, PolicyState::Missing, None, None);
        assert_eq!(d.step, Step::Leave);
        assert_eq!(d.outcome.phase, SandboxPhase::Succeeded);
    }

    fn other_np(
        name: &str,
        owner_uid: Option<&str>,
        spec: serde_json::Value,
    ) -> Arc<NetworkPolicy> {
        let mut v = serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "ns",
                         "labels": {"app.kubernetes.io/managed-by": "palisade", "palisade.dev/sandbox": "a"}},
            "spec": spec
        });
        if let Some(uid) = owner_uid {
            v["metadata"]["ownerReferences"] = serde_json::json!([{"apiVersion": "palisade.dev/v1alpha1",
                "kind": "AgentSandbox", "name": "a", "uid": uid, "controller": true}]);
        }
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn widened_by(nps: &[Arc<NetworkPolicy>], pod: Option<&LivePod>) -> Option<String> {
        let s = sandbox(None, false);
        let p = policy();
        let facts = facts();
        let d = decide(&Observed {
            sandbox: &s,
            policy: PolicyState::Found(&p),
            facts: &facts,
            network_policies: nps,
            cilium_policies: Known::Absent,
            admin: AdminPolicies::default(),
            isolation: None,
            pod,
            now: t(1000),
        });
        (d.outcome.reason == "AdditionalNetworkPolicy").then(|| d.outcome.message.clone())
    }

    #[test]
    fn only_a_network_policy_with_allow_rules_for_the_pod_widens_it() {
        // A namespace baseline: deny everything, both ways (no rules). It must keep working.
        let deny_all = other_np(
            "default-deny-all",
            None,
            serde_json::json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        );
        assert_eq!(widened_by(std::slice::from_ref(&deny_all), None), None);
        let empty_lists = other_np(
            "deny-lists",
            None,
            serde_json::json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": []}),
        );
        assert_eq!(widened_by(&[empty_lists], None), None);
        // Allow rules selecting the pod widen it.
        let allow_all = other_np(
            "allow-all",
            None,
            serde_json::json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}),
        );
        assert!(widened_by(&[deny_all, allow_all], None).is_some());
        // Palisade's labels (and a name like another sandbox's) prove nothing: only the owner's
        // UID does.
        let forged = other_np(
            "b-isolation",
            None,
            serde_json::json!({"podSelector": {"matchLabels": {"palisade.dev/sandbox": "a"}},
                               "policyTypes": ["Egress"], "egress": [{}]}),
        );
        assert!(widened_by(&[forged], None).is_some());
        let ours = other_np(
            "a-isolation",
            Some("sb"),
            serde_json::json!({"podSelector": {"matchLabels": {"palisade.dev/sandbox": "a"}},
                               "policyTypes": ["Egress"], "egress": [{}]}),
        );
        assert_eq!(widened_by(&[ours], None), None);
        // An owner reference copied onto another object does not make it ours.
        let claims_to_be_ours = other_np(
            "anything",
            Some("sb"),
            serde_json::json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}),
        );
        assert!(widened_by(&[claims_to_be_ours], None).is_some());
    }

    #[test]
    fn an_admin_policy_allowing_the_pod_more_is_reported_and_blocks_nothing() {
        let s = sandbox(None, false);
        let p = policy();
        let facts = facts();
        let anp: Arc<kube::api::DynamicObject> = Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
                "metadata": {"name": "allow-world"},
                "spec": {"priority": 1, "subject": {"namespaces": {}},
                         "egress": [{"action": "Allow", "to": [{"networks": ["0.0.0.0/0"]}]}]}
            }))
            .unwrap(),
        );
        let anps = [anp];
        let ns_labels = BTreeMap::new();
        let d = decide(&Observed {
            sandbox: &s,
            policy: PolicyState::Found(&p),
            facts: &facts,
            network_policies: &[],
            cilium_policies: Known::Absent,
            admin: AdminPolicies {
                admin_network_policies: Known::Listed(&anps),
                namespace_labels: Some(&ns_labels),
                ..Default::default()
            },
            isolation: None,
            pod: None,
            now: t(1000),
        });
        assert!(
            matches!(d.step, Step::Run(_, PodStep::Create)),
            "{:?}",
            d.step
        );
        let report = d
            .outcome
            .plan
            .and_then(|p| p.enforcement)
            .expect("an enforcement report");
        assert!(
            report.not_enforced[0]
                .message
                .starts_with("AdminNetworkPolicies allow-world: allow this pod more egress"),
            "{report:#?}"
        );
    }

    fn decide_with_cilium(cilium: Known, pod: Option<&LivePod>) -> Decision {
        let isolation = LiveIsolation {
            uid: "np".into(),
            ours: true,
            deleting: false,
        };
        let s = sandbox(None, false);
        let p = policy();
        let facts = facts();
        decide(&Observed {
            sandbox: &s,
            policy: PolicyState::Found(&p),
            facts: &facts,
            network_policies: &[],
            cilium_policies: cilium,
            admin: AdminPolicies::default(),
            isolation: pod.map(|_| &isolation),
            pod,
            now: t(1000),
        })
    }

    #[test]
    fn cilium_policies_that_cannot_be_read_block_and_unread_ones_hold_the_pod() {
        // Cilium installed, its policies not readable: another could widen the pod.
        let d = decide_with_cilium(Known::Unreadable, None);
        assert_eq!(d.step, Step::RemovePod);
        assert_eq!(d.outcome.reason, "NetworkPoliciesUnreadable");
        // Not read yet: no pod is created, none is let through its gate; nothing is removed.
        let d = decide_with_cilium(Known::Listing, None);
        assert!(
            matches!(d.step, Step::Run(_, PodStep::Later)),
            "{:?}",
            d.step
        );
        assert!(d.outcome.message.contains("CiliumNetworkPolicies"));
        // Read: the pod is created.
        let d = decide_with_cilium(Known::Listed(&[]), None);
        let Step::Run(plan, PodStep::Create) = d.step else {
            panic!("{:?}", d.step);
        };
        // A pod waiting at its gate is let through once they are read, not before.
        let mut pod = plan.pod.clone();
        pod.metadata.uid = Some("pod".into());
        pod.metadata.owner_references = Some(vec![
            serde_json::from_value(serde_json::json!({"apiVersion": "palisade.dev/v1alpha1",
                "kind": "AgentSandbox", "name": "a", "uid": "sb", "controller": true}))
            .unwrap(),
        ]);
        pod.metadata
            .annotations
            .get_or_insert_default()
            .insert("palisade.dev/network-policy-uid".into(), "np".into());
        let gated = LivePod::read(&pod, "sb");
        assert_eq!(gated.gate, Some(0));
        let d = decide_with_cilium(Known::Listed(&[]), Some(&gated));
        assert!(
            matches!(d.step, Step::Run(_, PodStep::Ungate)),
            "{:?}",
            d.step
        );
        let d = decide_with_cilium(Known::Listing, Some(&gated));
        assert!(
            matches!(d.step, Step::Run(_, PodStep::Later)),
            "{:?}",
            d.step
        );
    }

    #[test]
    fn a_cilium_policy_that_may_select_the_pod_blocks_it() {
        // It selects by a namespace label the operator cannot read (no namespace watch).
        let cnp: Arc<kube::api::DynamicObject> = Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                "metadata": {"name": "by-tenant", "namespace": "ns"},
                "spec": {"endpointSelector": {"matchLabels": {"k8s:io.cilium.k8s.namespace.labels.tenant": "blue"}},
                         "egress": [{"toEntities": ["world"]}]}
            }))
            .unwrap(),
        );
        let cnps = [cnp];
        let d = decide_with_cilium(Known::Listed(&cnps), None);
        assert_eq!(d.step, Step::RemovePod);
        assert_eq!(d.outcome.reason, "AdditionalNetworkPolicy");
        assert!(
            d.outcome.message.contains("by-tenant may also select"),
            "{}",
            d.outcome.message
        );
    }

    fn running() -> LivePod {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "namespace": "ns", "uid": "pod",
                         "labels": {"palisade.dev/sandbox": "a"},
                         "ownerReferences": [{"apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox",
                                              "name": "a", "uid": "sb", "controller": true}]},
            "spec": {"containers": [{"name": "agent", "image": "ghcr.io/acme/agent:1"}]},
            "status": {"phase": "Running"}
        }))
        .unwrap();
        LivePod::read(&pod, "sb")
    }

    #[test]
    fn the_isolation_check_is_reported_while_it_waits_and_when_it_fails() {
        let s = sandbox(None, false);
        let p = policy();
        let np = LiveIsolation {
            uid: "np".into(),
            ours: true,
            deleting: false,
        };
        let d = decide_with(&s, PolicyState::Found(&p), Some(&np), None);
        let Step::Run(plan, PodStep::Create) = d.step else {
            panic!("{:?}", d.step);
        };
        let live = |status: serde_json::Value| {
            let mut pod = plan.pod.clone();
            pod.metadata.uid = Some("pod".into());
            pod.metadata.owner_references = Some(vec![
                serde_json::from_value(serde_json::json!({"apiVersion": "palisade.dev/v1alpha1",
                    "kind": "AgentSandbox", "name": "a", "uid": "sb", "controller": true}))
                .unwrap(),
            ]);
            pod.metadata
                .annotations
                .get_or_insert_default()
                .insert("palisade.dev/network-policy-uid".into(), "np".into());
            pod.spec.as_mut().unwrap().scheduling_gates = None;
            pod.status = Some(serde_json::from_value(status).unwrap());
            LivePod::read(&pod, "sb")
        };
        let check = |state: serde_json::Value| {
            serde_json::json!([{"name": "isolation-check", "image": "x", "imageID": "",
                "ready": false, "restartCount": 0, "state": state}])
        };
        let waiting = live(serde_json::json!({"phase": "Pending",
            "initContainerStatuses": check(serde_json::json!({"running": {}}))}));
        let d = decide_with(&s, PolicyState::Found(&p), Some(&np), Some(&waiting));
        assert_eq!(d.outcome.phase, SandboxPhase::Starting);
        assert!(
            d.outcome
                .message
                .contains("enforce the isolating NetworkPolicy"),
            "{}",
            d.outcome.message
        );
        // Under restartPolicy Never the pod fails; it is replaced, and the status says why.
        let failed = live(serde_json::json!({"phase": "Failed",
            "initContainerStatuses": check(serde_json::json!({"terminated": {"exitCode": 1,
                "message": "isolation check: the canary 10.96.0.1:443 was still reachable after 120 s\n"}}))}));
        assert!(!failed.ever_ran);
        let d = decide_with(&s, PolicyState::Found(&p), Some(&np), Some(&failed));
        assert!(
            d.outcome
                .message
                .contains("the isolation check failed: isolation check: the canary 10.96.0.1:443 was still reachable"),
            "{}",
            d.outcome.message
        );
        assert!(
            d.outcome.message.contains("its isolation check failed"),
            "{}",
            d.outcome.message
        );
        assert_ne!(d.outcome.phase, SandboxPhase::Running);
        // An image the node cannot pull is named, not hidden behind "waiting".
        let pulling = live(serde_json::json!({"phase": "Pending",
            "initContainerStatuses": check(serde_json::json!({"waiting": {"reason": "ImagePullBackOff",
                "message": "Back-off pulling image"}}))}));
        let d = decide_with(&s, PolicyState::Found(&p), Some(&np), Some(&pulling));
        assert!(
            d.outcome.message.contains(
                "the isolation check cannot start (ImagePullBackOff: Back-off pulling image)"
            ),
            "{}",
            d.outcome.message
        );
    }

    #[test]
    fn the_policy_version_is_enforced_only_where_the_pod_is_the_plans() {
        let s = sandbox(None, false);
        let mut p = policy();
        p.metadata.uid = Some("pu".into());
        p.metadata.generation = Some(3);
        let version = Some(crate::api::sandbox::PolicyVersion {
            uid: "pu".into(),
            generation: 3,
        });
        let np = LiveIsolation {
            uid: "np".into(),
            ours: true,
            deleting: false,
        };
        // Created under the plan (its NetworkPolicy first).
        let d = decide_with(&s, PolicyState::Found(&p), Some(&np), None);
        assert_eq!(d.outcome.enforced_policy, version);
        let Step::Run(plan, PodStep::Create) = d.step else {
            panic!("{:?}", d.step);
        };
        let live = |hash: Option<&str>| {
            let mut pod = plan.pod.clone();
            pod.metadata.uid = Some("pod".into());
            pod.metadata.owner_references = Some(vec![
                serde_json::from_value(serde_json::json!({"apiVersion": "palisade.dev/v1alpha1",
                    "kind": "AgentSandbox", "name": "a", "uid": "sb", "controller": true}))
                .unwrap(),
            ]);
            let annotations = pod.metadata.annotations.get_or_insert_default();
            annotations.insert("palisade.dev/network-policy-uid".into(), "np".into());
            if let Some(h) = hash {
                let key = annotations
                    .keys()
                    .find(|k| k.ends_with("policy-hash"))
                    .cloned()
                    .expect("the pod carries its hash");
                annotations.insert(key, h.into());
            }
            pod.spec.as_mut().unwrap().scheduling_gates = None;
            pod.status =
                Some(serde_json::from_value(serde_json::json!({"phase": "Running"})).unwrap());
            LivePod::read(&pod, "sb")
        };
        // The pod of the plan, kept.
        let d = decide_with(&s, PolicyState::Found(&p), Some(&np), Some(&live(None)));
        assert_eq!(d.outcome.enforced_policy, version, "{:?}", d.step);
        // A pod of another plan, being replaced: nothing is enforced for this version yet.
        let d = decide_with(
            &s,
            PolicyState::Found(&p),
            Some(&np),
            Some(&live(Some("stale"))),
        );
        assert!(
            matches!(d.step, Step::Run(_, PodStep::Replace { .. })),
            "{:?}",
            d.step
        );
        assert_eq!(d.outcome.enforced_policy, None);
        // A pod an operator before default requests created (its requests were its limits):
        // kept, so an upgrade recreates no pod for requests alone.
        let earlier = plan
            .pod_hash_before_default_requests
            .clone()
            .expect("the sandbox names no requests");
        assert_ne!(earlier, plan.pod_hash);
        let d = decide_with(
            &s,
            PolicyState::Found(&p),
            Some(&np),
            Some(&live(Some(&earlier))),
        );
        assert!(
            matches!(d.step, Step::Run(_, PodStep::Keep)),
            "{:?}",
            d.step
        );
        // The NetworkPolicy going: the pod goes first, nothing enforced.
        let going = LiveIsolation {
            deleting: true,
            ..np
        };
        let d = decide_with(&s, PolicyState::Found(&p), Some(&going), Some(&live(None)));
        assert_eq!(d.outcome.enforced_policy, None);
        // No policy: nothing.
        let d = decide_with(&s, PolicyState::Missing, None, None);
        assert_eq!(d.outcome.enforced_policy, None);
    }

    #[test]
    fn a_gated_pod_created_without_the_isolation_check_is_replaced_not_released() {
        // An operator upgrade: the old operator created the pod, the new one would release it.
        let s = sandbox(None, false);
        let p = policy();
        let np = LiveIsolation {
            uid: "np".into(),
            ours: true,
            deleting: false,
        };
        let d = decide_with(&s, PolicyState::Found(&p), Some(&np), None);
        let Step::Run(plan, PodStep::Create) = d.step else {
            panic!("{:?}", d.step);
        };
        let mut pod = plan.pod.clone();
        pod.metadata.uid = Some("pod".into());
        pod.metadata.owner_references = Some(vec![
            serde_json::from_value(serde_json::json!({"apiVersion": "palisade.dev/v1alpha1",
                "kind": "AgentSandbox", "name": "a", "uid": "sb", "controller": true}))
            .unwrap(),
        ]);
        pod.metadata
            .annotations
            .get_or_insert_default()
            .insert("palisade.dev/network-policy-uid".into(), "np".into());
        let with_check = LivePod::read(&pod, "sb");
        assert!(with_check.has_isolation_check && with_check.gate.is_some());
        let d = decide_with(&s, PolicyState::Found(&p), Some(&np), Some(&with_check));
        assert!(
            matches!(d.step, Step::Run(_, PodStep::Ungate)),
            "{:?}",
            d.step
        );
        // The operator's pod cache keeps only what is read: the same reading, the same guard.
        let mut running = pod.clone();
        running.status = Some(
            serde_json::from_value(serde_json::json!({"phase": "Running", "podIP": "10.1.2.3",
                "hostIP": "192.0.2.1", "qosClass": "Burstable", "startTime": "2026-01-01T00:00:00Z",
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:02Z"},
                    {"type": "PodScheduled", "status": "True"}],
                "initContainerStatuses": [{"name": "isolation-check", "image": "i", "imageID": "sha256:1",
                    "ready": false, "restartCount": 1,
                    "lastState": {"terminated": {"exitCode": 1, "message": "open"}},
                    "state": {"terminated": {"exitCode": 0, "startedAt": "2026-01-01T00:00:00Z"}}}],
                "containerStatuses": [{"name": "agent", "image": "a", "imageID": "sha256:2",
                    "ready": true, "restartCount": 0, "containerID": "containerd://x",
                    "state": {"running": {"startedAt": "2026-01-01T00:00:01Z"}}}]}))
            .unwrap(),
        );
        let mut slim = running.clone();
        crate::reconcile::live::keep_what_is_read(&mut slim);
        assert_eq!(LivePod::read(&slim, "sb"), LivePod::read(&running, "sb"));
        assert_eq!(Guard::of(&slim), Guard::of(&plan.pod));
        let full = serde_json::to_vec(&running).unwrap().len();
        let kept = serde_json::to_vec(&slim).unwrap().len();
        assert!(kept * 3 < full * 2, "{kept} of {full} bytes kept");
        pod.spec.as_mut().unwrap().init_containers = None;
        let without = LivePod::read(&pod, "sb");
        let d = decide_with(&s, PolicyState::Found(&p), Some(&np), Some(&without));
        assert!(
            !matches!(d.step, Step::Run(_, PodStep::Ungate)),
            "{:?}",
            d.step
        );
        assert!(
            d.outcome
                .message
                .contains("created without the isolation check"),
            "{}",
            d.outcome.message
        );
    }

    #[test]
    fn the_live_pods_labels_decide_what_selects_it() {
        // Someone added a label to the running pod that a permissive policy selects.
        let by_label = other_np(
            "team-egress",
            None,
            serde_json::json!({"podSelector": {"matchLabels": {"team": "ml"}},
                               "policyTypes": ["Egress"], "egress": [{}]}),
        );
        assert_eq!(widened_by(std::slice::from_ref(&by_label), None), None);
        let mut pod = running();
        pod.labels.insert("team".into(), "ml".into());
        assert!(widened_by(&[by_label], Some(&pod)).is_some());
    }

    #[test]
    fn a_network_policy_being_deleted_takes_the_pod_first() {
        let s = sandbox(None, false);
        let p = policy();
        let np = LiveIsolation {
            uid: "np".into(),
            ours: true,
            deleting: true,
        };
        let d = decide_with(&s, PolicyState::Found(&p), Some(&np), None);
        assert_eq!(d.step, Step::RemovePod);
        assert!(!d.outcome.network_isolated);
    }

    #[test]
    fn a_pause_is_noted_once_the_sandbox_has_run() {
        let status = AgentSandboxStatus {
            phase: Some(SandboxPhase::Running),
            started_at: Some(Time(t(500))),
            ..Default::default()
        };
        let s = sandbox(Some(status), true);
        let p = policy();
        let d = decide_with(&s, PolicyState::Found(&p), None, None);
        assert!(matches!(d.step, Step::Pause(_)));
        assert_eq!(d.outcome.phase, SandboxPhase::Paused);
        assert_eq!(d.lifetime.paused_at, Some(t(1000)));
    }
}
