//! `AgentSandboxPool`: a template of an AgentSandbox and a number of warm sandboxes made from
//! it, each a complete sandbox (its own ServiceAccount, its NetworkPolicy before its pod, the
//! policy's RuntimeClass and seccomp) that an AgentSandbox with `poolRef` takes at once.

// kube's printcolumn attributes repeat `type_ = "string"`, which clippy takes for duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::sandbox::AgentSandboxSpec;

/// Label on a warm sandbox naming its pool.
pub const POOL_LABEL: &str = "palisade.dev/pool";
/// Label on a warm sandbox: the hash of the template it was made from.
pub const TEMPLATE_HASH_LABEL: &str = "palisade.dev/template-hash";
/// Annotation on a warm sandbox taken by a sandbox: that sandbox's UID. Written with the warm
/// sandbox's resourceVersion as a precondition, so only one sandbox can take it.
pub const CLAIMED_BY_ANNOTATION: &str = "palisade.dev/claimed-by";

/// A template of an AgentSandbox and warm sandboxes made from it, for sandboxes that start at
/// once.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "palisade.dev",
    version = "v1alpha1",
    kind = "AgentSandboxPool",
    namespaced,
    status = "AgentSandboxPoolStatus",
    shortname = "asbp",
    category = "palisade",
    doc = "AgentSandboxPool keeps warm sandboxes made from a template, each complete with its policy enforced, for AgentSandboxes that name the pool (poolRef) to take at once.",
    validation = Rule::new("size(self.metadata.name) <= 63").message("a pool's name is a label value: at most 63 characters"),
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Up-to-date",
        type_ = "integer",
        json_path = ".status.updatedReplicas"
    ),
    printcolumn(
        name = "Policy",
        type_ = "string",
        json_path = ".spec.template.policyRef.name"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentSandboxPoolSpec {
    /// The sandbox each warm sandbox is made from, and that sandboxes of the pool start from
    /// when none is ready: an AgentSandbox spec (`policyRef` and `image` required; no `poolRef`,
    /// `pool`, `paused`, `expiresAt` or `ttlSecondsAfterFinished`). A change makes the warm sandboxes of the old template stale: they
    /// are replaced and never handed out; sandboxes that already started keep theirs.
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "has(self.policyRef)", "message": "the template needs policyRef", "fieldPath": ".policyRef", "reason": "FieldValueRequired"},
        {"rule": "has(self.image)", "message": "the template needs image", "fieldPath": ".image", "reason": "FieldValueRequired"},
        {"rule": "!has(self.poolRef) && !has(self.pool)", "message": "a template cannot name a pool"},
        {"rule": "!has(self.paused) || !self.paused", "message": "a template cannot be paused"},
        {"rule": "!has(self.expiresAt) && !has(self.ttlSecondsAfterFinished)", "message": "a template has no expiresAt or ttlSecondsAfterFinished (each sandbox of the pool may set its own)"}
    ]))]
    pub template: AgentSandboxSpec,

    /// Warm sandboxes kept ready (default 1; 0 makes the pool a template only). The scale
    /// subresource sets it: `kubectl scale`, HorizontalPodAutoscaler and KEDA work.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 10_000))]
    pub replicas: i32,
}

fn one() -> i32 {
    1
}

/// Observed state of an AgentSandboxPool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentSandboxPoolStatus {
    /// Warm sandboxes not yet taken, of any template.
    #[serde(default)]
    pub replicas: i32,

    /// Warm sandboxes of the current template and policy that are Ready to be taken.
    #[serde(default)]
    pub ready_replicas: i32,

    /// Warm sandboxes of the current template.
    #[serde(default)]
    pub updated_replicas: i32,

    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready` (as many ready warm sandboxes as desired), `Reconciling`, `Stalled` (a warm
    /// sandbox cannot be enforced: the reason is the sandbox's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// Label selector of the pool's warm AgentSandboxes (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// Hash of the current template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_hash: Option<String>,
}

/// A schema for a JSON object kept as it is (`x-kubernetes-preserve-unknown-fields`).
pub fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}
