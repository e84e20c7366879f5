//! Resource caps: a sandbox may ask for less than its policy's caps, never more; one that asks
//! for nothing gets the caps as limits.

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

/// The container's requests and limits, and the ephemeral storage the emptyDirs may share.
#[derive(Clone, Debug, PartialEq)]
pub struct CompiledResources {
    pub requirements: ResourceRequirements,
    /// The ephemeral-storage limit in bytes: the emptyDir size limits add up to at most this.
    pub ephemeral_bytes: i128,
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
    let caps = [
        ("cpu", cap(&caps.cpu, DEFAULT_CPU)),
        ("memory", cap(&caps.memory, DEFAULT_MEMORY)),
        (
            "ephemeral-storage",
            cap(&caps.ephemeral_storage, DEFAULT_EPHEMERAL_STORAGE),
        ),
    ];
    let asked = sandbox.resources.clone().unwrap_or_default();
    let mut limits = BTreeMap::new();
    let mut requests = BTreeMap::new();
    let mut ephemeral = 0;
    for (name, (cap_q, cap_n)) in caps {
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
        let request = asked
            .requests
            .get(name)
            .cloned()
            .unwrap_or_else(|| limit.clone());
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
    })
}
