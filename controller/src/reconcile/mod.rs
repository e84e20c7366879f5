//! The controllers: AgentSandbox (owns ServiceAccount, NetworkPolicy, Service, PVC, Pod),
//! AgentPolicy (validates, reports, and re-queues the sandboxes that use it) and the release of
//! isolating NetworkPolicies. They observe, decide (pure: `decide.rs` over the compiler), act
//! in the safe order (`act.rs`) and write status (`status.rs`).

pub mod act;
pub mod admin;
pub mod backoff;
pub mod caches;
pub mod children;
pub mod cilium;
pub mod claim;
pub mod conditions;
pub mod controllers;
pub mod decide;
pub mod facts;
pub mod isolation;
pub mod lenient;
pub mod lifetime;
pub mod live;
pub mod np_index;
pub mod ownership;
pub mod policy;
pub mod policy_index;
pub mod pool;
pub mod record;
pub mod relist;
pub mod sandbox;
pub mod status;
pub mod written;

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::runtime::events::Recorder;

use crate::ops::metrics::Metrics;
use crate::render::facts::ClusterFacts;

pub use caches::Caches;

/// Why a reconcile pass failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Serialize(#[from] serde_json::Error),
    #[error("object has no {0}")]
    Missing(&'static str),
}

impl Error {
    /// The namespace is being deleted, so nothing can be created in it: not a failure of the
    /// operator (the sandbox goes away with its namespace).
    pub fn namespace_terminating(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(s)) if s.code == 403
            && s.details.as_ref().is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating")))
    }

    /// A short, stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "Conflict",
            Error::Kube(kube::Error::Api(_)) => "ApiError",
            Error::Kube(_) => "KubeError",
            Error::Serialize(_) => "SerializeError",
            Error::Missing(_) => "MissingField",
        }
    }

    /// The condition reason a person reads: what kind of refusal or failure this is.
    pub fn reason(&self) -> &'static str {
        let Error::Kube(kube::Error::Api(s)) = self else {
            return match self {
                Error::Kube(_) => "ApiUnreachable",
                _ => "InternalError",
            };
        };
        let message = s.message.to_ascii_lowercase();
        match s.code {
            403 if message.contains("exceeded quota") => "QuotaExceeded",
            _ if message.contains("admission webhook")
                || message.contains("validatingadmissionpolicy")
                || message.contains("violates podsecurity") =>
            {
                "AdmissionDenied"
            }
            403 if message.contains("forbidden: maximum")
                || message.contains("forbidden: minimum") =>
            {
                "LimitRangeRefused"
            }
            401 | 403 => "Forbidden",
            400 | 422 => "Invalid",
            409 => "Conflict",
            429 => "Throttled",
            _ => "ApiError",
        }
    }

    /// Whether only a person can make the next attempt succeed (a quota, an admission policy,
    /// missing permissions, an object the API server refuses): the sandbox reads as Stalled
    /// while it is retried.
    pub fn needs_a_person(&self) -> bool {
        matches!(
            self.reason(),
            "QuotaExceeded" | "AdmissionDenied" | "LimitRangeRefused" | "Forbidden" | "Invalid"
        )
    }

    /// The API server's own words, or the error.
    pub fn message(&self) -> String {
        match self {
            Error::Kube(kube::Error::Api(s)) => s.message.clone(),
            other => other.to_string(),
        }
    }
}

/// Operator settings that shape the facts the compiler sees.
#[derive(Clone, Debug, Default)]
pub struct OperatorConfig {
    /// Base facts: RuntimeClass mapping, handler prefixes, DNS, cluster CIDRs, seccomp.
    pub facts: ClusterFacts,
    /// The one namespace watched, if not all: where the operator's rights are asked about.
    pub namespace: Option<String>,
    /// The egress gateway, when configured (`--gateway-service`): where it lives and the key of
    /// the sandboxes' credentials. Its address is read from its Service.
    pub gateway: Option<GatewaySettings>,
}

/// The egress gateway as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewaySettings {
    pub placement: crate::cli::facts_args::GatewayPlacement,
    /// The gateway's Service in `placement.namespace`.
    pub service: String,
    pub key: crate::render::facts::KeyBytes,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub caches: Caches,
    pub optional_crds: facts::OptionalCrds,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub backoff: backoff::Backoff,
    /// Status writes the sandbox cache has not shown yet.
    pub written: written::Written,
    /// Warm sandboxes created and not yet in the cache, per pool.
    pub pool_expectations: pool::Expectations,
    /// Takes of warm sandboxes whose children this process moved.
    pub moved: claim::Moved,
    /// When each policy's sandbox count was last written.
    pub count_writes: policy::CountWrites,
    /// Each policy's check, for its current generation.
    pub checked_policies: policy::CheckedPolicies,
    /// Cancelled when this term of the controllers ends: a reconcile still waiting for the
    /// caches gives up.
    pub stop: tokio_util::sync::CancellationToken,
}

pub type Ctx = Arc<Context>;

/// How soon to look again when nothing is scheduled: a safety net, not polling.
pub const RESYNC: Duration = Duration::from_secs(300);

/// How long a sandbox's pod may keep running while its NetworkPolicy cannot be brought to what
/// the policy says (it may be wider): after that the pod is removed (fail closed).
pub const FAIL_CLOSED_AFTER: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(body: serde_json::Value) -> Error {
        Error::Kube(kube::Error::Api(
            serde_json::from_value::<kube::core::Status>(body)
                .expect("status")
                .boxed(),
        ))
    }

    #[test]
    fn creating_in_a_namespace_being_deleted_is_told_apart_from_rbac_denials() {
        let terminating = api_error(serde_json::json!({
            "status": "Failure", "code": 403, "reason": "Forbidden",
            "message": "pods \"agent\" is forbidden: unable to create new content in namespace x because it is being terminated",
            "details": {"name": "agent", "kind": "pods",
                        "causes": [{"reason": "NamespaceTerminating", "message": "namespace x is being terminated", "field": "metadata.namespace"}]}
        }));
        assert!(terminating.namespace_terminating());
        let rbac = api_error(serde_json::json!({
            "status": "Failure", "code": 403, "reason": "Forbidden",
            "message": "pods \"agent\" is forbidden: User \"system:serviceaccount:a:b\" cannot delete resource \"pods\"",
            "details": {"name": "agent", "kind": "pods"}
        }));
        assert!(!rbac.namespace_terminating());
        assert!(!Error::Missing("uid").namespace_terminating());
    }
}

#[cfg(test)]
mod error_tests {
    use super::*;

    fn api(code: u16, message: &str) -> Error {
        Error::Kube(kube::Error::Api(
            serde_json::from_value::<kube::core::Status>(serde_json::json!({
                "status": "Failure", "code": code, "message": message, "reason": "x"
            }))
            .expect("status")
            .boxed(),
        ))
    }

    #[test]
    fn refusals_are_told_apart_for_people() {
        let cases = [
            (
                403,
                "pods \"a\" is forbidden: exceeded quota: q, requested: pods=1",
                "QuotaExceeded",
                true,
            ),
            (
                400,
                "admission webhook \"k.example.com\" denied the request: no",
                "AdmissionDenied",
                true,
            ),
            (
                403,
                "pods \"a\" is forbidden: ValidatingAdmissionPolicy 'p' with binding 'b' denied request",
                "AdmissionDenied",
                true,
            ),
            (
                403,
                "pods \"a\" is forbidden: violates PodSecurity \"restricted:latest\"",
                "AdmissionDenied",
                true,
            ),
            (
                403,
                "pods \"a\" is forbidden: maximum cpu usage per Container is 1",
                "LimitRangeRefused",
                true,
            ),
            (
                403,
                "pods is forbidden: User \"x\" cannot create resource",
                "Forbidden",
                true,
            ),
            (422, "Pod \"a\" is invalid: spec", "Invalid", true),
            (409, "the object has been modified", "Conflict", false),
            (500, "etcdserver: request timed out", "ApiError", false),
            (429, "too many requests", "Throttled", false),
        ];
        for (code, message, reason, person) in cases {
            let e = api(code, message);
            assert_eq!(e.reason(), reason, "{message}");
            assert_eq!(e.needs_a_person(), person, "{message}");
            assert_eq!(e.message(), message);
        }
        assert_eq!(Error::Missing("uid").reason(), "InternalError");
    }
}
