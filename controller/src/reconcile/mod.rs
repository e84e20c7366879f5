//! The controllers: AgentSandbox (owns ServiceAccount, NetworkPolicy, Service, PVC, Pod) and
//! AgentPolicy (validates, reports, and re-queues the sandboxes that use it). They fetch,
//! call the compiler, apply, and write status; every decision about isolation is the
//! compiler's.

pub mod children;
pub mod conditions;
pub mod facts;
pub mod isolation;
pub mod lenient;
pub mod policy;
pub mod sandbox;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::Client;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;

use crate::api::{AgentPolicy, AgentSandbox};
use crate::ops::metrics::Metrics;
use crate::render::facts::ClusterFacts;

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
}

/// Operator settings that shape the facts the compiler sees.
#[derive(Clone, Debug, Default)]
pub struct OperatorConfig {
    /// Base facts: RuntimeClass mapping, handler prefixes, DNS, cluster CIDRs, seccomp.
    pub facts: ClusterFacts,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub policies: Store<AgentPolicy>,
    pub sandboxes: Store<AgentSandbox>,
    pub runtime_classes: Store<RuntimeClass>,
    pub network_policies: Store<NetworkPolicy>,
    pub optional_crds: facts::OptionalCrds,
    pub recorder: Recorder,
    pub metrics: Metrics,
}

pub type Ctx = Arc<Context>;

/// How soon to look again when nothing is scheduled: a safety net, not polling.
pub const RESYNC: Duration = Duration::from_secs(300);

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
