//! The whole operator loop (watches, caches, controllers) against a fake API server: no
//! reconcile runs before every cache has listed (a half-filled cache once cost running agents
//! their pods), readiness waits for the caches, and a shutdown lets in-flight reconciles finish.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::Method;
use palisade::api::policy::AgentPolicySpec;
use palisade::api::sandbox::{AgentSandboxSpec, PolicyRef};
use palisade::api::{AgentPolicy, AgentSandbox, NETWORK_POLICY_UID_ANNOTATION};
use palisade::ops::metrics::Metrics;
use palisade::reconcile::OperatorConfig;
use palisade::reconcile::controllers::{self, Settings};
use palisade::render::facts::RuntimeClasses;
use palisade::render::{ClusterFacts, compile};
use serde_json::{Value, json};
use support::apimock::mock_client;
use support::fakeapi::{Fake, Lists, Reply, serve};
use tokio_util::sync::CancellationToken;

const UID: &str = "sb-uid";

fn owner() -> Value {
    json!([{"apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox", "name": "agent", "uid": UID,
            "controller": true, "blockOwnerDeletion": true}])
}

/// The objects of one converged sandbox: what each list answers.
fn cluster() -> Lists {
    let mut sandbox = AgentSandbox::new(
        "agent",
        AgentSandboxSpec {
            policy_ref: PolicyRef { name: "p".into() },
            image: "ghcr.io/acme/agent:1".into(),
            ..Default::default()
        },
    );
    sandbox.metadata.namespace = Some("ns".into());
    sandbox.metadata.uid = Some(UID.into());
    sandbox.metadata.generation = Some(1);
    let mut policy = AgentPolicy::new("p", AgentPolicySpec::default());
    policy.metadata.namespace = Some("ns".into());
    let facts = ClusterFacts {
        runtime_classes: RuntimeClasses::Known([("gvisor".into(), "runsc".into())].into()),
        ..Default::default()
    };
    let plan = compile(&policy, &sandbox, &facts, 0).expect("compiles");
    let with_meta = |mut v: Value, uid: &str| {
        v["metadata"]["ownerReferences"] = owner();
        v["metadata"]["uid"] = json!(uid);
        v["metadata"]["resourceVersion"] = json!("3");
        v
    };
    let mut pod = with_meta(serde_json::to_value(&plan.pod).unwrap(), "pod-uid");
    pod["metadata"]["annotations"][NETWORK_POLICY_UID_ANNOTATION] = json!("np-uid");
    pod["spec"]
        .as_object_mut()
        .unwrap()
        .remove("schedulingGates");
    pod["status"] =
        json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]});
    let mut items = std::collections::BTreeMap::new();
    items.insert(
        "agentsandboxes".to_string(),
        vec![serde_json::to_value(&sandbox).unwrap()],
    );
    items.insert(
        "agentpolicies".to_string(),
        vec![serde_json::to_value(&policy).unwrap()],
    );
    items.insert(
        "runtimeclasses".to_string(),
        vec![json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "gvisor"}, "handler": "runsc"})],
    );
    items.insert(
        "networkpolicies".to_string(),
        vec![with_meta(
            serde_json::to_value(&plan.network_policy).unwrap(),
            "np-uid",
        )],
    );
    items.insert(
        "serviceaccounts".to_string(),
        vec![with_meta(
            serde_json::to_value(&plan.service_account).unwrap(),
            "sa-uid",
        )],
    );
    items.insert("pods".to_string(), vec![pod]);
    Lists {
        items,
        held: Vec::new(),
    }
}

fn sandbox_reply(body: &Value) -> Value {
    json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox",
           "metadata": {"name": "agent", "namespace": "ns", "uid": UID},
           "spec": {"policyRef": {"name": "p"}, "image": "ghcr.io/acme/agent:1"},
           "status": body["status"]})
}

fn settings() -> Settings {
    let mut facts = ClusterFacts::default();
    facts
        .seccomp_applied
        .insert(palisade::api::policy::Runtime::Runc);
    Settings {
        namespace: None,
        concurrency: 4,
        config: OperatorConfig {
            facts,
            namespace: None,
            gateway: None,
        },
        instance: "test".into(),
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

fn writes(fake: &Fake) -> Vec<String> {
    fake.seen()
        .iter()
        .filter(|s| s.method != Method::GET)
        .map(|s| format!("{} {}", s.method, s.path))
        .collect()
}

#[tokio::test]
async fn no_reconcile_runs_before_every_cache_has_listed() {
    let (client, handle) = mock_client();
    let fake = Arc::new(Fake::default());
    let mut lists = cluster();
    // The policies are listed last (the API server is slow to answer that list).
    lists.held = vec!["agentpolicies".into()];
    let server = tokio::spawn(serve(handle, fake.clone(), lists, |s| {
        if s.path.ends_with("/status") {
            Reply::Now((200, sandbox_reply(&s.body)))
        } else if s.method == Method::POST {
            Reply::Now((201, s.body.clone()))
        } else {
            Reply::Now((
                404,
                json!({"kind": "Status", "code": 404, "status": "Failure", "reason": "NotFound"}),
            ))
        }
    }));
    let ready = Arc::new(AtomicBool::new(false));
    let stop = CancellationToken::new();
    let synced = ready.clone();
    let run = tokio::spawn(controllers::run(
        client,
        settings(),
        Metrics::new(),
        move || synced.store(true, Ordering::SeqCst),
        stop.clone(),
    ));
    until("every other cache to list", || {
        let listed = fake.listed();
        [
            "agentsandboxes",
            "pods",
            "networkpolicies",
            "serviceaccounts",
            "runtimeclasses",
        ]
        .iter()
        .all(|r| listed.iter().any(|l| l == r))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        writes(&fake).is_empty(),
        "the operator wrote while the policy cache was empty: {:?}",
        writes(&fake)
    );
    assert!(
        !ready.load(Ordering::SeqCst),
        "ready before the caches synced"
    );

    fake.release_lists();
    until("the sandbox's status", || {
        writes(&fake)
            .iter()
            .any(|w| w.ends_with("/agentsandboxes/agent/status"))
    })
    .await;
    assert!(ready.load(Ordering::SeqCst));
    let writes = writes(&fake);
    assert!(
        !writes.iter().any(|w| w.starts_with("DELETE")),
        "a running pod was removed: {writes:?}"
    );
    let status = fake
        .seen()
        .into_iter()
        .find(|s| s.path.ends_with("/status"))
        .expect("status");
    assert_eq!(status.body["status"]["phase"], "Running", "{}", status.body);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the operator stops")
        .expect("no panic");
    server.abort();
}

#[tokio::test]
async fn a_shutdown_lets_in_flight_reconciles_finish() {
    let (client, handle) = mock_client();
    let fake = Arc::new(Fake::default());
    let server = tokio::spawn(serve(handle, fake.clone(), cluster(), |s| {
        if s.path.ends_with("/agentsandboxes/agent/status") {
            Reply::Park
        } else if s.path.ends_with("/status") {
            Reply::Now((200, s.body.clone()))
        } else if s.method == Method::POST {
            Reply::Now((201, s.body.clone()))
        } else {
            Reply::Now((
                404,
                json!({"kind": "Status", "code": 404, "status": "Failure", "reason": "NotFound"}),
            ))
        }
    }));
    let stop = CancellationToken::new();
    let run = tokio::spawn(controllers::run(
        client,
        settings(),
        Metrics::new(),
        || {},
        stop.clone(),
    ));
    until("a reconcile in flight (its status write held)", || {
        !fake.parked.lock().unwrap().is_empty()
    })
    .await;
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !run.is_finished(),
        "the operator stopped with a reconcile in flight"
    );
    let (seen, answer) = fake.parked.lock().unwrap().remove(0);
    answer
        .send((200, sandbox_reply(&seen.body)))
        .expect("reconcile waits");
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the operator stops once the reconcile finished")
        .expect("no panic");
    server.abort();
}
