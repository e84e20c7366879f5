//! A sandbox's status: what one pass found (an [`Outcome`]) turned into the status fields, the
//! kstatus conditions GitOps tools read, and the Warning event a person should see.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::report::EnforcementReport;
use crate::api::{AgentSandboxStatus, SandboxPhase};

use super::conditions::{Want, merge};
use super::lifetime::Lifetime;

/// How a sandbox reads to GitOps tools (kstatus: `Reconciling`, `Stalled` and `Ready`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Working towards the spec: `Reconciling=True` (kstatus InProgress).
    Progressing,
    /// The spec is carried out, whether that means running, paused or finished: `Ready=True`
    /// (kstatus Current).
    Settled,
    /// Cannot progress without a change by a person: `Stalled=True` (kstatus Failed).
    Stalled,
}

/// How each phase reads, unless an outcome says otherwise.
pub fn standing(phase: SandboxPhase) -> Standing {
    match phase {
        SandboxPhase::Pending | SandboxPhase::Starting => Standing::Progressing,
        // A paused sandbox is what its spec asks for (like a Deployment scaled to zero), and a
        // finished agent is done (like a complete Job): left Ready=False, kstatus would call
        // them InProgress for ever and GitOps waits would time out.
        SandboxPhase::Running | SandboxPhase::Paused | SandboxPhase::Succeeded => Standing::Settled,
        // Blocked: the spec cannot be enforced as written; the operator re-evaluates on every
        // change of what it depends on, but until someone changes something it stays so.
        // Failed: the agent failed and is not restarted. Expired: its time is used up.
        SandboxPhase::Blocked | SandboxPhase::Failed | SandboxPhase::Expired => Standing::Stalled,
    }
}

/// What the compiled plan says about the sandbox, for its status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanFacts {
    pub pod_hash: String,
    pub runtime_class_name: Option<String>,
    pub service: bool,
    /// The plan's enforcement report, bounded.
    pub enforcement: Option<EnforcementReport>,
}

/// Bounds of `status.enforcement`: entries per list, characters per message.
pub const REPORT_ENTRIES: usize = 8;
pub const REPORT_CHARS: usize = 256;

/// What one pass found, before it becomes a status.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub phase: SandboxPhase,
    /// Reason of the conditions that describe the phase.
    pub reason: String,
    pub message: String,
    /// Overrides how the phase reads (an error can stall a Running sandbox).
    pub standing: Option<Standing>,
    /// `PolicyResolved`: False when the policy is missing, invalid or unreadable.
    pub policy_resolved: bool,
    /// `RuntimeReady`: False when the RuntimeClass is missing or of the wrong runtime.
    pub runtime_ready: bool,
    /// `NetworkIsolated`: False when the isolating NetworkPolicy is not (or no longer) in place.
    pub network_isolated: bool,
    /// Reason of a False `NetworkIsolated` (else the phase's reason).
    pub isolation_reason: Option<String>,
    pub plan: Option<PlanFacts>,
    /// The pod is expected to exist (not paused, blocked or expired).
    pub has_pod: bool,
    pub pod_ip: Option<String>,
    /// The policy version the pod and its NetworkPolicy are current for (`status.enforcedPolicy`):
    /// set only where the pass keeps, binds, ungates or creates a pod of the plan.
    pub enforced_policy: Option<crate::api::sandbox::PolicyVersion>,
    /// Look again this soon (else at expiry, else the resync).
    pub requeue: Option<Duration>,
    pub expires_at: Option<Timestamp>,
    /// A workspace claim kept although the plan no longer has it.
    pub retained_claim: Option<String>,
}

impl Outcome {
    /// An outcome in `phase` whose conditions otherwise all hold.
    pub fn new(phase: SandboxPhase, reason: &str, message: impl Into<String>) -> Self {
        Self {
            phase,
            reason: reason.into(),
            message: message.into(),
            standing: None,
            policy_resolved: true,
            runtime_ready: true,
            network_isolated: true,
            isolation_reason: None,
            plan: None,
            has_pod: false,
            pod_ip: None,
            enforced_policy: None,
            requeue: None,
            expires_at: None,
            retained_claim: None,
        }
    }

    /// A sandbox that must not run: no pod, Stalled, with the reason a person can act on.
    pub fn blocked(reason: &str, message: impl Into<String>) -> Self {
        Self::new(SandboxPhase::Blocked, reason, message)
    }

    pub fn unresolved_policy(mut self) -> Self {
        self.policy_resolved = false;
        self
    }

    pub fn runtime_not_ready(mut self) -> Self {
        self.runtime_ready = false;
        self
    }

    pub fn not_isolated(mut self, reason: Option<&str>) -> Self {
        self.network_isolated = false;
        self.isolation_reason = reason.map(String::from);
        self
    }

    pub fn with_plan(mut self, plan: PlanFacts) -> Self {
        self.plan = Some(plan);
        self
    }

    pub fn requeue_in(mut self, d: Duration) -> Self {
        self.requeue = Some(d);
        self
    }

    pub fn standing(&self) -> Standing {
        self.standing.unwrap_or_else(|| standing(self.phase))
    }
}

/// The conditions of an outcome. `Ready`, `Reconciling` and `Stalled` follow kstatus: exactly
/// one of them is True, and the True one carries the message.
pub fn wanted_conditions(outcome: &Outcome) -> Vec<Want> {
    let standing = outcome.standing();
    let blocked = outcome.phase == SandboxPhase::Blocked;
    let reason = outcome.reason.as_str();
    let message = outcome.message.as_str();
    let when = |b: bool| if b { message } else { "" };
    let progressing = standing == Standing::Progressing;
    let stalled = standing == Standing::Stalled;
    let isolated = outcome.network_isolated && !blocked;
    let isolation_reason = if outcome.network_isolated {
        if blocked {
            "Blocked"
        } else {
            "NetworkPolicyApplied"
        }
    } else {
        outcome.isolation_reason.as_deref().unwrap_or(reason)
    };
    let mut wanted = vec![
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
            isolated,
            isolation_reason,
            if outcome.network_isolated {
                ""
            } else {
                message
            },
        ),
        Want::new("Reconciling", progressing, reason, when(progressing)),
        Want::new("Stalled", stalled, reason, when(stalled)),
    ];
    if let Some(claim) = &outcome.retained_claim {
        wanted.push(Want::new(
            "WorkspaceRetained",
            true,
            "NotInPlan",
            format!(
                "PersistentVolumeClaim {claim} is no longer in the policy's plan; it is kept (with its data) until the sandbox is deleted"
            ),
        ));
    }
    wanted
}

/// Where the sandbox's names live, for `serviceFQDN`.
pub struct Names<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub cluster_domain: &'a str,
}

/// The status of a pass. Conditions keep their transition time while they hold.
pub fn status(
    previous: &AgentSandboxStatus,
    outcome: &Outcome,
    lifetime: &Lifetime,
    generation: Option<i64>,
    names: &Names,
    now: Timestamp,
) -> AgentSandboxStatus {
    let plan = outcome.plan.as_ref();
    let mut status = AgentSandboxStatus {
        phase: Some(outcome.phase),
        conditions: merge(
            &previous.conditions,
            wanted_conditions(outcome),
            generation,
            &Time(now),
        ),
        observed_generation: generation,
        pod_name: outcome.has_pod.then(|| names.name.to_string()),
        pod_ip: outcome.pod_ip.clone(),
        service_fqdn: plan.filter(|p| p.service).map(|_| {
            format!(
                "{}.{}.svc.{}",
                names.name, names.namespace, names.cluster_domain
            )
        }),
        runtime_class_name: plan.and_then(|p| p.runtime_class_name.clone()),
        policy_hash: plan.map(|p| p.pod_hash.clone()),
        enforced_policy: outcome.enforced_policy.clone(),
        enforcement: plan.and_then(|p| p.enforcement.clone()),
        expires_at: outcome.expires_at.map(Time),
        message: Some(outcome.message.clone()),
        pool: previous.pool.clone(),
        ..Default::default()
    };
    lifetime.write(&mut status);
    status
}

/// The Warning event a status change deserves: when the sandbox becomes stalled, or stalls
/// for another reason or with another message. Returns (reason, note).
pub fn warning(previous: &AgentSandboxStatus, outcome: &Outcome) -> Option<(String, String)> {
    if outcome.standing() != Standing::Stalled && outcome.network_isolated {
        return None;
    }
    if matches!(outcome.phase, SandboxPhase::Failed | SandboxPhase::Expired)
        && previous.phase == Some(outcome.phase)
    {
        return None;
    }
    let same = previous.message.as_deref() == Some(outcome.message.as_str())
        && previous.phase == Some(outcome.phase);
    (!same).then(|| (outcome.reason.clone(), outcome.message.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::conditions::{KStatus, kstatus};

    fn outcome(phase: SandboxPhase, reason: &str) -> Outcome {
        Outcome::new(phase, reason, format!("{reason}: why"))
    }

    fn read(o: &Outcome) -> (KStatus, String) {
        let now = Time(Timestamp::from_second(1000).unwrap());
        let conditions = merge(&[], wanted_conditions(o), Some(2), &now);
        kstatus(Some(2), Some(2), &conditions)
    }

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
            for standing in [None, Some(Standing::Stalled), Some(Standing::Progressing)] {
                let mut o = outcome(phase, "R");
                o.standing = standing;
                let wanted = wanted_conditions(&o);
                let trues = wanted
                    .iter()
                    .filter(|w| ["Ready", "Reconciling", "Stalled"].contains(&w.type_) && w.status)
                    .count();
                assert_eq!(trues, 1, "{phase:?} {standing:?}: {wanted:?}");
            }
        }
    }

    #[test]
    fn an_error_can_stall_a_running_sandbox() {
        let mut o = outcome(SandboxPhase::Running, "QuotaExceeded");
        o.standing = Some(Standing::Stalled);
        assert_eq!(read(&o).0, KStatus::Failed);
        o.standing = Some(Standing::Progressing);
        assert_eq!(read(&o).0, KStatus::InProgress);
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

    #[test]
    fn a_warning_is_published_once_per_reason_and_message() {
        let blocked = outcome(SandboxPhase::Blocked, "PolicyNotFound");
        let before = AgentSandboxStatus::default();
        assert_eq!(
            warning(&before, &blocked),
            Some(("PolicyNotFound".into(), "PolicyNotFound: why".into()))
        );
        let after = AgentSandboxStatus {
            phase: Some(SandboxPhase::Blocked),
            message: Some("PolicyNotFound: why".into()),
            ..Default::default()
        };
        assert_eq!(warning(&after, &blocked), None);
        assert_eq!(
            warning(&before, &outcome(SandboxPhase::Running, "Running")),
            None
        );
        let unisolated =
            outcome(SandboxPhase::Running, "Running").not_isolated(Some("NetworkPolicyNotApplied"));
        assert!(warning(&before, &unisolated).is_some());
    }
}
