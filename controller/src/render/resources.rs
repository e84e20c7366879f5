//! Resource caps: a sandbox may ask for less than its policy's caps, never more; one that asks
//! for nothing gets the caps as limits and the policy's small default requests (so idle
//! sandboxes pack densely; the scheduler never reserves a cap it will not be asked for).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::api::policy::AgentPolicySpec;
use crate::api::sandbox::AgentSandboxSpec;
use crate::policy::quantity::{self, Nanos};

use super::{BlockReason, Blocked};

pub const DEFAULT_CPU: &str = "2";
pub const DEFAULT_MEMORY: &str = "4Gi";
pub const DEFAULT_EPHEMERAL_STORAGE: &str = "8Gi";

/// What a sandbox without requests of its own requests, unless its policy says otherwise.
pub const DEFAULT_CPU_REQUEST: &str = "100m";
pub const DEFAULT_MEMORY_REQUEST: &str = "256Mi";
pub const DEFAULT_EPHEMERAL_STORAGE_REQUEST: &str = "1Gi";

/// The container's requests and limits, and the ephemeral storage the emptyDirs may share.
#[derive(Clone, Debug, PartialEq)]
pub struct CompiledResources {
    pub requirements: ResourceRequirements,
    /// The ephemeral-storage limit in bytes: the emptyDir size limits add up to at most this.
    pub ephemeral_bytes: i128,
    /// The resources whose request is a default (the sandbox named none): before default
    /// requests, the request was the limit.
    pub defaulted_requests: Vec<String>,
}

fn cap(q: &Option<Quantity>, default: &str) -> (Quantity, Nanos) {
    let q = q.clone().unwrap_or_else(|| Quantity(default.to_string()));
    let n = quantity::nanos(&q).unwrap_or(0);
    (q, n)
}

pub fn compile_resources(
    policy: &AgentPolicySpec,
    sandbox: &AgentSandboxSpec,
) -> Result<CompiledResources, Blocked> {
    let caps = policy.resources.clone().unwrap_or_default();
    let defaults = caps.default_requests.clone().unwrap_or_default();
    let caps = [
        (
            "cpu",
            cap(&caps.cpu, DEFAULT_CPU),
            cap(&defaults.cpu, DEFAULT_CPU_REQUEST),
        ),
        (
            "memory",
            cap(&caps.memory, DEFAULT_MEMORY),
            cap(&defaults.memory, DEFAULT_MEMORY_REQUEST),
        ),
        (
            "ephemeral-storage",
            cap(&caps.ephemeral_storage, DEFAULT_EPHEMERAL_STORAGE),
            cap(
                &defaults.ephemeral_storage,
                DEFAULT_EPHEMERAL_STORAGE_REQUEST,
            ),
        ),
    ];
    let asked = sandbox.resources.clone().unwrap_or_default();
    let mut limits = BTreeMap::new();
    let mut requests = BTreeMap::new();
    let mut ephemeral = 0;
    let mut defaulted_requests = Vec::new();
    for (name, (cap_q, cap_n), (default_q, default_n)) in caps {
        for (kind, map) in [("limits", &asked.limits), ("requests", &asked.requests)] {
            if let Some(q) = map.get(name) {
                let n = quantity::nanos(q).unwrap_or(i128::MAX);
                if n > cap_n {
                    return Err(Blocked::new(
                        BlockReason::OverCaps,
                        format!(
                            "resources.{kind}.{name} {} is above the policy's cap of {}",
                            q.0, cap_q.0
                        ),
                    ));
                }
            }
        }
        let limit = asked.limits.get(name).cloned().unwrap_or(cap_q);
        let limit_n = quantity::nanos(&limit).unwrap_or(0);
        // No request of its own: the policy's default request, at most the limit.
        if !asked.requests.contains_key(name) {
            defaulted_requests.push(name.to_string());
        }
        let request = asked.requests.get(name).cloned().unwrap_or_else(|| {
            if default_n <= limit_n {
                default_q
            } else {
                limit.clone()
            }
        });
        if quantity::nanos(&request).unwrap_or(0) > limit_n {
            return Err(Blocked::new(
                BlockReason::SandboxInvalid,
                format!(
                    "resources.requests.{name} {} is above its limit {}",
                    request.0, limit.0
                ),
            ));
        }
        if name == "ephemeral-storage" {
            ephemeral = limit_n / 1_000_000_000;
        }
        limits.insert(name.to_string(), limit);
        requests.insert(name.to_string(), request);
    }
    Ok(CompiledResources {
        requirements: ResourceRequirements {
            limits: Some(limits),
            requests: Some(requests),
            ..Default::default()
        },
        ephemeral_bytes: ephemeral,
        defaulted_requests,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::policy::{DefaultRequests, ResourceCaps};

    fn q(s: &str) -> Quantity {
        Quantity(s.to_string())
    }

    fn compiled(policy: serde_json::Value, sandbox: serde_json::Value) -> ResourceRequirements {
        let policy: AgentPolicySpec = serde_json::from_value(policy).expect("policy");
        let mut spec = serde_json::json!({"policyRef": {"name": "p"}, "image": "i"});
        spec["resources"] = sandbox;
        let sandbox: AgentSandboxSpec = serde_json::from_value(spec).expect("sandbox");
        compile_resources(&policy, &sandbox)
            .expect("compiles")
            .requirements
    }

    fn get(map: &Option<BTreeMap<String, Quantity>>, k: &str) -> String {
        map.as_ref().and_then(|m| m.get(k)).expect(k).0.clone()
    }

    #[test]
    fn a_sandbox_without_requests_gets_small_defaults_and_the_caps_as_limits() {
        let r = compiled(serde_json::json!({}), serde_json::Value::Null);
        assert_eq!(get(&r.requests, "cpu"), DEFAULT_CPU_REQUEST);
        assert_eq!(get(&r.requests, "memory"), DEFAULT_MEMORY_REQUEST);
        assert_eq!(
            get(&r.requests, "ephemeral-storage"),
            DEFAULT_EPHEMERAL_STORAGE_REQUEST
        );
        assert_eq!(get(&r.limits, "cpu"), DEFAULT_CPU);
        assert_eq!(get(&r.limits, "memory"), DEFAULT_MEMORY);
    }

    #[test]
    fn the_policy_sets_default_requests_and_a_default_never_exceeds_the_limit() {
        let policy = serde_json::to_value(AgentPolicySpec {
            resources: Some(ResourceCaps {
                cpu: Some(q("1")),
                default_requests: Some(DefaultRequests {
                    cpu: Some(q("2")),
                    memory: Some(q("64Mi")),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .expect("json");
        let r = compiled(policy.clone(), serde_json::Value::Null);
        assert_eq!(get(&r.requests, "cpu"), "1", "lowered to the cap");
        assert_eq!(get(&r.requests, "memory"), "64Mi");
        // The sandbox's own limit below the default: the request follows the limit.
        let r = compiled(
            policy.clone(),
            serde_json::json!({"limits": {"memory": "32Mi"}}),
        );
        assert_eq!(get(&r.requests, "memory"), "32Mi");
        assert_eq!(get(&r.limits, "memory"), "32Mi");
        // Its own request wins.
        let r = compiled(policy, serde_json::json!({"requests": {"memory": "100Mi"}}));
        assert_eq!(get(&r.requests, "memory"), "100Mi");
    }
}
