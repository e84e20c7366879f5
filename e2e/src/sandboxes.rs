//! Helpers for suites that drive sandboxes through the shared operator: a namespace with the
//! RuntimeClasses the fake nodes serve, waiting for phases, and reading conditions.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use palisade::api::{AgentPolicy, AgentSandbox, SandboxPhase};
use serde_json::{Value, json};

use crate::{MANAGER, apply_palisade, client, install_crds, restricted_namespace, wait_for};

/// How long a sandbox may take to reach a phase.
pub const WAIT: Duration = Duration::from_secs(60);

/// A client, the CRDs, RuntimeClasses `gvisor` (handler runsc) and `kata-qemu` on their fake
/// nodes, and the `restricted` namespace `ns`.
pub async fn setup(ns: &str) -> Client {
    let client = client().await;
    install_crds(&client).await;
    let rcs = json!([
        {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "gvisor"}, "handler": "runsc",
         "scheduling": {"nodeSelector": {"palisade.dev/runtime": "gvisor"}}},
        {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "kata-qemu"}, "handler": "kata-qemu",
         "scheduling": {"nodeSelector": {"palisade.dev/runtime": "kata"}}}
    ]);
    let api: Api<RuntimeClass> = Api::all(client.clone());
    for rc in rcs.as_array().into_iter().flatten() {
        let name = rc["metadata"]["name"].as_str().unwrap_or_default();
        api.patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(rc),
        )
        .await
        .expect("RuntimeClass");
    }
    restricted_namespace(&client, ns).await;
    client
}

pub async fn apply_policy(client: &Client, ns: &str, name: &str, spec: Value) {
    apply_palisade::<AgentPolicy>(client, ns, name, spec).await
}

pub async fn apply_sandbox(client: &Client, ns: &str, name: &str, spec: Value) {
    apply_palisade::<AgentSandbox>(client, ns, name, spec).await
}

/// A sandbox of `policy` running the example agent image.
pub fn basic_sandbox(policy: &str) -> Value {
    json!({"policyRef": {"name": policy}, "image": "ghcr.io/palisade-dev/examples/agent:0.1.0"})
}

/// Waits until the sandbox is in `phase`.
pub async fn wait_phase(
    client: &Client,
    ns: &str,
    name: &str,
    phase: SandboxPhase,
) -> AgentSandbox {
    let api: Api<AgentSandbox> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("sandbox {ns}/{name} {phase:?}"), WAIT, || {
        let api = api.clone();
        let name = name.to_string();
        async move {
            let s = api.get(&name).await.ok()?;
            (s.status.as_ref()?.phase == Some(phase)).then_some(s)
        }
    })
    .await
}

/// Status and reason of a condition.
pub fn condition(s: &AgentSandbox, type_: &str) -> Option<(String, String)> {
    s.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// The UID of pod `name`, if it exists and is not being deleted.
pub async fn live_pod_uid(client: &Client, ns: &str, name: &str) -> Option<String> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .and_then(|p| p.uid())
}

/// Sets the phase (and reason) of a sandbox's pod, as a kubelet would.
pub async fn set_pod_phase(
    client: &Client,
    ns: &str,
    name: &str,
    phase: &str,
    reason: Option<&str>,
) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut status = json!({"phase": phase, "conditions": [{"type": "Ready", "status": "False"}],
                            "message": format!("set by the e2e suite ({phase})")});
    if let Some(r) = reason {
        status["reason"] = json!(r);
    }
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await
    .expect("pod status");
}

/// Sets the pod's phase (as [`set_pod_phase`]) until `done` holds, setting it again whenever
/// the simulated kubelet (kwok), busy with an earlier update, put the pod back to Running.
pub async fn set_pod_phase_until<F, Fut>(
    client: &Client,
    ns: &str,
    name: &str,
    phase: &str,
    reason: Option<&str>,
    what: &str,
    mut done: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if done().await {
            return;
        }
        let current = pods
            .get_opt(name)
            .await
            .ok()
            .flatten()
            .and_then(|p| p.status?.phase);
        if current.as_deref() == Some("Running") {
            set_pod_phase(client, ns, name, phase, reason).await;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
