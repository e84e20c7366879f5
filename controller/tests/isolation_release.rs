//! Releasing an isolating NetworkPolicy that is being deleted, against a scripted API server:
//! its pod is deleted (UID precondition) on the pod cache's evidence, no request is made while
//! the cached pod terminates, and the finalizer goes only after a direct read shows the pod
//! gone: never on the cache alone.

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::controller::Action;
use palisade::api::NETWORK_POLICY_UID_ANNOTATION;
use palisade::reconcile::Error;
use palisade::reconcile::facts::OptionalCrds;
use palisade::reconcile::isolation::reconcile;
use palisade::render::network::ISOLATION_FINALIZER;
use serde_json::{Value, json};
use support::apimock::{Seen, Step, join, mock_client, serve};
use support::context::{Cached, context};

const NP_PATH: &str = "/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies/agent-isolation";
const POD_PATH: &str = "/api/v1/namespaces/ns/pods/agent";
const SANDBOX_UID: &str = "sb-uid";
const NP_UID: &str = "np-uid";
const POD_UID: &str = "pod-uid";

fn owner() -> Value {
    json!([{"apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox", "name": "agent",
        "uid": SANDBOX_UID, "controller": true}])
}

fn terminating_np() -> NetworkPolicy {
    serde_json::from_value(json!({
        "metadata": {"name": "agent-isolation", "namespace": "ns", "uid": NP_UID,
            "resourceVersion": "7", "finalizers": [ISOLATION_FINALIZER, "other.example/keep"],
            "deletionTimestamp": "2026-01-01T00:00:00Z", "ownerReferences": owner()},
        "spec": {"podSelector": {}}
    }))
    .expect("np")
}

fn pod_json(bound_to: &str, terminating: bool) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "agent", "namespace": "ns", "uid": POD_UID,
            "labels": {"app.kubernetes.io/managed-by": "palisade"},
            "annotations": {NETWORK_POLICY_UID_ANNOTATION: bound_to},
            "ownerReferences": owner()},
        "spec": {"containers": [{"name": "agent", "image": "a"}]}});
    if terminating {
        p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    }
    p
}

fn pod(bound_to: &str, terminating: bool) -> Pod {
    serde_json::from_value(pod_json(bound_to, terminating)).expect("pod")
}

async fn run(pods: Vec<Pod>, steps: Vec<Step>) -> (Result<Action, Error>, Vec<Seen>) {
    let (client, handle) = mock_client();
    let cache = Cached {
        pods,
        ..Default::default()
    };
    let ctx = context(client, cache, OptionalCrds::default());
    let verifier = tokio::spawn(serve(handle, steps));
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        reconcile(Arc::new(terminating_np()), ctx.clone()),
    )
    .await
    .expect("reconcile timed out");
    drop(ctx);
    (result, join(verifier).await)
}

/// The pod's DELETE, which must carry its UID as a precondition.
fn delete_pod() -> Step {
    Step::delete(POD_PATH)
        .check(|s| assert_eq!(s.body["preconditions"]["uid"], POD_UID, "{}", s.body))
        .respond(200, json!({"kind": "Status", "status": "Success"}))
}

fn released(seen: &[Seen]) -> bool {
    seen.iter()
        .any(|s| s.method == Method::PATCH && s.path == NP_PATH)
}

#[tokio::test]
async fn a_cached_running_pod_is_deleted_precisely_and_the_finalizer_kept() {
    let (result, seen) = run(vec![pod(NP_UID, false)], vec![delete_pod()]).await;
    result.expect("ok");
    assert_eq!(seen.len(), 1, "only the pod's DELETE: {seen:?}");
}

#[tokio::test]
async fn a_cached_terminating_pod_costs_no_request() {
    // Its deletion wakes the controller (the pod watch); until then nothing is asked.
    let (result, seen) = run(vec![pod(NP_UID, true)], vec![]).await;
    result.expect("ok");
    assert!(seen.is_empty(), "{seen:?}");
}

#[tokio::test]
async fn a_pod_missing_from_the_cache_but_live_keeps_the_finalizer() {
    // Its labels were removed (it left the label-filtered cache), or the cache lags: the
    // direct read finds it, so it is deleted and the NetworkPolicy stays.
    let (result, seen) = run(
        vec![],
        vec![
            Step::get(POD_PATH).respond(200, pod_json(NP_UID, false)),
            delete_pod(),
        ],
    )
    .await;
    result.expect("ok");
    assert!(!released(&seen), "{seen:?}");
}

#[tokio::test]
async fn a_cache_showing_another_pod_is_confirmed_before_release() {
    // The cache still has an older pod (bound to another NetworkPolicy) while the live one is
    // bound to this one: no release.
    let (result, seen) = run(
        vec![pod("an-older-np", false)],
        vec![Step::get(POD_PATH).respond(200, pod_json(NP_UID, true))],
    )
    .await;
    result.expect("ok");
    assert!(!released(&seen), "{seen:?}");
    // The live one still running: it is removed first.
    let (result, seen) = run(
        vec![pod("an-older-np", false)],
        vec![
            Step::get(POD_PATH).respond(200, pod_json(NP_UID, false)),
            delete_pod(),
        ],
    )
    .await;
    result.expect("ok");
    assert!(!released(&seen), "{seen:?}");
}

#[tokio::test]
async fn the_finalizer_goes_once_the_pod_is_confirmed_gone() {
    let (result, seen) = run(
        vec![],
        vec![
            Step::get(POD_PATH).not_found(),
            Step::new(Method::PATCH, NP_PATH)
                .check(|s| {
                    assert_eq!(
                        s.body["metadata"]["finalizers"],
                        json!(["other.example/keep"]),
                        "only our finalizer goes: {}",
                        s.body
                    );
                    assert_eq!(s.body["metadata"]["resourceVersion"], "7");
                    assert_eq!(s.body["metadata"]["uid"], NP_UID);
                })
                .respond(
                    200,
                    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                    "metadata": {"name": "agent-isolation", "namespace": "ns", "uid": NP_UID},
                    "spec": {"podSelector": {}}}),
                ),
        ],
    )
    .await;
    result.expect("ok");
    assert!(released(&seen));
}
