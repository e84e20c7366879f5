//! The AgentSandbox reconciler against a scripted, mocked API server: the exact requests it
//! makes, in order, for the happy path and for the failure paths (the NetworkPolicy is in
//! place before any pod write; nothing else is written after a failed child apply; someone
//! else's objects are never adopted).

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use palisade::api::policy::AgentPolicySpec;
use palisade::api::sandbox::{AgentSandboxSpec, PolicyRef};
use palisade::api::{AgentPolicy, AgentSandbox, POLICY_HASH_ANNOTATION};
use palisade::ops::metrics::Metrics;
use palisade::reconcile::facts::OptionalCrds;
use palisade::reconcile::sandbox::{error_policy, reconcile};
use palisade::reconcile::{Context, Error, OperatorConfig};
use palisade::render::{Plan, compile};
use serde_json::{Value, json};
use support::apimock::{Seen, Step, join, mock_client, serve};

const NS: &str = "ns";
const NAME: &str = "agent";
const UID: &str = "0b6c1f4e-5a0d-4c7e-9a57-2d7a3b1c9e01";
const POLICY: &str = "p";

const SA_PATH: &str = "/api/v1/namespaces/ns/serviceaccounts/agent";
const NP_PATH: &str = "/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies/agent-isolation";
const POD_PATH: &str = "/api/v1/namespaces/ns/pods/agent";
const PODS_PATH: &str = "/api/v1/namespaces/ns/pods";
const STATUS_PATH: &str = "/apis/palisade.dev/v1alpha1/namespaces/ns/agentsandboxes/agent/status";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/ns/events";

fn sandbox() -> AgentSandbox {
    let mut s = AgentSandbox::new(
        NAME,
        AgentSandboxSpec {
            policy_ref: PolicyRef {
                name: POLICY.into(),
            },
            image: "ghcr.io/acme/agent:1".into(),
            ..Default::default()
        },
    );
    s.metadata.namespace = Some(NS.into());
    s.metadata.uid = Some(UID.into());
    s.metadata.generation = Some(1);
    s.metadata.resource_version = Some("1".into());
    s
}

fn policy() -> AgentPolicy {
    let mut p = AgentPolicy::new(POLICY, AgentPolicySpec::default());
    p.metadata.namespace = Some(NS.into());
    p.metadata.uid = Some("policy-uid".into());
    p
}

fn runtime_class() -> RuntimeClass {
    RuntimeClass {
        metadata: ObjectMeta {
            name: Some("gvisor".into()),
            ..Default::default()
        },
        handler: "runsc".into(),
        ..Default::default()
    }
}

fn store_of<K>(objects: Vec<K>) -> Store<K>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    let (reader, mut writer) = reflector::store::<K>();
    for o in objects {
        writer.apply_watcher_event(&watcher::Event::Apply(o));
    }
    reader
}

fn context(client: kube::Client, with_policy: bool) -> Arc<Context> {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "palisade".into(),
            instance: None,
        },
    );
    Arc::new(Context {
        client,
        config: OperatorConfig::default(),
        policies: store_of(if with_policy { vec![policy()] } else { vec![] }),
        sandboxes: store_of(vec![sandbox()]),
        runtime_classes: store_of(vec![runtime_class()]),
        network_policies: store_of(Vec::<NetworkPolicy>::new()),
        optional_crds: OptionalCrds::default(),
        recorder,
        metrics: Metrics::new(),
    })
}

/// The plan the reconciler compiles, for building live objects that match (or do not).
fn plan(ctx: &Context) -> Plan {
    let plan = compile(&policy(), &sandbox(), &ctx.facts(), 0).expect("fixture compiles");
    assert!(plan.workspace_claim.is_none() && plan.service.is_none());
    assert_eq!(
        plan.objects().len(),
        3,
        "fixture plan is ServiceAccount, NetworkPolicy, Pod"
    );
    plan
}

fn our_owner_reference() -> OwnerReference {
    OwnerReference {
        api_version: "palisade.dev/v1alpha1".into(),
        kind: "AgentSandbox".into(),
        name: NAME.into(),
        uid: UID.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A live pod controlled by this sandbox, with the given policy hash.
fn our_pod(plan: &Plan, hash: &str) -> Value {
    let mut pod = serde_json::to_value(&plan.pod).expect("pod json");
    pod["metadata"]["ownerReferences"] = json!([our_owner_reference()]);
    pod["metadata"]["uid"] = json!("pod-uid");
    pod["metadata"]["resourceVersion"] = json!("7");
    pod["metadata"]["annotations"][POLICY_HASH_ANNOTATION] = json!(hash);
    pod
}

/// The status answer: the sandbox with the status that was applied.
fn status_reply(s: &Seen) -> (u16, Value) {
    let mut v = serde_json::to_value(sandbox()).expect("sandbox json");
    v["status"] = s.body["status"].clone();
    (200, v)
}

fn status_apply() -> Step {
    Step::apply(STATUS_PATH)
        .check(|s| {
            assert_eq!(s.body["apiVersion"], "palisade.dev/v1alpha1");
            assert_eq!(s.body["kind"], "AgentSandbox");
        })
        .reply_with(status_reply)
}

fn event_post(reason: &'static str) -> Step {
    Step::post(EVENTS_PATH)
        .check(move |s| {
            assert_eq!(s.body["reason"], reason, "event {}", s.body);
            assert_eq!(s.body["type"], "Warning");
            assert_eq!(s.body["regarding"]["name"], NAME);
        })
        .reply_with(|s| (201, s.body.clone()))
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

/// Runs one reconcile against the script; returns its result and every request seen.
async fn run(
    with_policy: bool,
    script: impl FnOnce(&Context) -> Vec<Step>,
) -> (Result<Action, Error>, Vec<Seen>, Arc<Context>) {
    let (client, handle) = mock_client();
    let ctx = context(client, with_policy);
    let steps = script(&ctx);
    let verifier = tokio::spawn(serve(handle, steps));
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        reconcile(Arc::new(sandbox()), ctx.clone()),
    )
    .await
    .expect("reconcile timed out");
    // The caller keeps a context without a client, so the verifier sees every client go away.
    let keep = Arc::new(Context {
        client: mock_client().0,
        config: ctx.config.clone(),
        policies: ctx.policies.clone(),
        sandboxes: ctx.sandboxes.clone(),
        runtime_classes: ctx.runtime_classes.clone(),
        network_policies: ctx.network_policies.clone(),
        optional_crds: ctx.optional_crds.clone(),
        recorder: Recorder::new(
            mock_client().0,
            Reporter {
                controller: "palisade".into(),
                instance: None,
            },
        ),
        metrics: ctx.metrics.clone(),
    });
    drop(ctx);
    let seen = join(verifier).await;
    (result, seen, keep)
}

fn position(seen: &[Seen], pred: impl Fn(&Seen) -> bool) -> Option<usize> {
    seen.iter().position(pred)
}

fn is_pod_write(s: &Seen) -> bool {
    s.path.starts_with(PODS_PATH) && s.method != http::Method::GET
}

#[tokio::test]
async fn happy_path_applies_children_then_creates_pod_then_writes_starting() {
    let (result, seen, _) = run(true, |ctx| {
        let plan = plan(ctx);
        let hash = plan.pod_hash.clone();
        vec![
            Step::get(SA_PATH).not_found(),
            Step::apply(SA_PATH)
                .check(|s| {
                    assert_eq!(s.body["kind"], "ServiceAccount");
                    assert_eq!(s.body["metadata"]["ownerReferences"][0]["uid"], UID);
                    assert_eq!(s.body["metadata"]["ownerReferences"][0]["controller"], true);
                })
                .echo(),
            Step::get(NP_PATH).not_found(),
            Step::apply(NP_PATH)
                .check(|s| {
                    assert_eq!(s.body["kind"], "NetworkPolicy");
                    assert_eq!(s.body["metadata"]["name"], "agent-isolation");
                    assert_eq!(s.body["metadata"]["ownerReferences"][0]["uid"], UID);
                    let types = s.body["spec"]["policyTypes"].as_array().expect("types");
                    assert!(types.contains(&json!("Ingress")) && types.contains(&json!("Egress")));
                })
                .echo(),
            Step::get(POD_PATH).not_found(),
            Step::apply(POD_PATH)
                .check(move |s| {
                    assert_eq!(s.body["kind"], "Pod");
                    assert_eq!(s.body["metadata"]["ownerReferences"][0]["uid"], UID);
                    assert_eq!(
                        s.body["metadata"]["annotations"][POLICY_HASH_ANNOTATION],
                        json!(hash)
                    );
                })
                .echo(),
            status_apply().check(|s| {
                let st = &s.body["status"];
                assert_eq!(st["phase"], "Starting", "{st}");
                assert_eq!(st["podName"], NAME);
                assert_eq!(condition(st, "Ready")["status"], "False");
                assert_eq!(condition(st, "NetworkIsolated")["status"], "True");
                assert_eq!(
                    condition(st, "NetworkIsolated")["reason"],
                    "NetworkPolicyApplied"
                );
                assert_eq!(condition(st, "Reconciling")["status"], "True");
                assert_eq!(condition(st, "Stalled")["status"], "False");
            }),
        ]
    })
    .await;
    let action = result.expect("reconcile succeeds");
    assert!(action != Action::await_change());
    let np_apply = position(&seen, |s| {
        s.path == NP_PATH && s.method == http::Method::PATCH
    })
    .expect("NetworkPolicy applied");
    let first_pod_write = position(&seen, is_pod_write).expect("pod written");
    assert!(
        np_apply < first_pod_write,
        "the NetworkPolicy must be applied before any pod write"
    );
}

#[tokio::test]
async fn failed_network_policy_apply_writes_no_pod_and_no_status() {
    for (code, reason, label) in [
        (500, "InternalError", "ApiError"),
        (409, "Conflict", "Conflict"),
    ] {
        let (result, seen, _) = run(true, |ctx| {
            plan(ctx);
            vec![
                Step::get(SA_PATH).not_found(),
                Step::apply(SA_PATH).echo(),
                Step::get(NP_PATH).not_found(),
                Step::apply(NP_PATH).fail(code, reason),
                // Nothing after: a pod request or a status write fails the script.
            ]
        })
        .await;
        let err = result.expect_err("a failed NetworkPolicy apply fails the reconcile");
        assert_eq!(err.label(), label, "{err}");
        assert!(!seen.iter().any(|s| s.path.starts_with(PODS_PATH)));
        assert!(!seen.iter().any(|s| s.path == STATUS_PATH));
    }
}

#[tokio::test]
async fn forbidden_service_account_apply_stops_the_pass() {
    let (result, seen, _) = run(true, |ctx| {
        plan(ctx);
        vec![
            Step::get(SA_PATH).not_found(),
            Step::apply(SA_PATH).fail(403, "Forbidden"),
        ]
    })
    .await;
    let err = result.expect_err("a forbidden apply fails the reconcile");
    assert_eq!(err.label(), "ApiError");
    assert!(matches!(&err, Error::Kube(kube::Error::Api(s)) if s.code == 403));
    assert_eq!(seen.len(), 2);
}

#[tokio::test]
async fn network_policy_owned_by_someone_else_is_not_adopted_and_blocks() {
    // Someone else's controller, no owner at all, and our uid without `controller: true`.
    let owner_variants = [
        json!([{
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "other",
            "uid": "someone-else",
            "controller": true
        }]),
        json!([]),
        json!([{
            "apiVersion": "palisade.dev/v1alpha1",
            "kind": "AgentSandbox",
            "name": NAME,
            "uid": UID,
            "controller": false
        }]),
    ];
    for owners in owner_variants {
        let (result, seen, _) = run(true, |ctx| {
            let plan = plan(ctx);
            let foreign = json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {
                    "name": "agent-isolation",
                    "namespace": NS,
                    "uid": "np-uid",
                    "resourceVersion": "3",
                    "ownerReferences": owners
                },
                "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}]}
            });
            let pod = our_pod(&plan, &plan.pod_hash);
            vec![
                Step::get(SA_PATH).not_found(),
                Step::apply(SA_PATH).echo(),
                Step::get(NP_PATH).respond(200, foreign),
                // No PATCH or PUT of the NetworkPolicy: the sandbox's own pod is removed instead.
                Step::get(POD_PATH).respond(200, pod.clone()),
                Step::delete(POD_PATH).respond(200, pod),
                event_post("NameConflict"),
                status_apply().check(|s| {
                    let st = &s.body["status"];
                    assert_eq!(st["phase"], "Blocked", "{st}");
                    assert_eq!(condition(st, "Ready")["reason"], "NameConflict");
                    assert_eq!(condition(st, "Stalled")["status"], "True");
                    assert_eq!(condition(st, "Stalled")["reason"], "NameConflict");
                    assert_eq!(condition(st, "NetworkIsolated")["status"], "False");
                    assert_eq!(condition(st, "NetworkIsolated")["reason"], "NameConflict");
                    assert!(
                        st["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("NetworkPolicy agent-isolation")),
                        "{st}"
                    );
                }),
            ]
        })
        .await;
        result.expect("a name conflict is a status, not an error");
        assert!(
            !seen
                .iter()
                .any(|s| s.path == NP_PATH && s.method != http::Method::GET)
        );
        assert!(!seen.iter().any(|s| s.path.starts_with(PODS_PATH)
            && (s.method == http::Method::PATCH || s.method == http::Method::POST)));
    }
}

#[tokio::test]
async fn missing_policy_blocks_without_writing_children() {
    let (result, seen, _) = run(false, |_| {
        vec![
            Step::get(POD_PATH).not_found(),
            event_post("PolicyNotFound"),
            status_apply().check(|s| {
                let st = &s.body["status"];
                assert_eq!(st["phase"], "Blocked", "{st}");
                assert_eq!(condition(st, "PolicyResolved")["status"], "False");
                assert_eq!(condition(st, "PolicyResolved")["reason"], "PolicyNotFound");
                assert_eq!(condition(st, "Stalled")["status"], "True");
                assert_eq!(condition(st, "Stalled")["reason"], "PolicyNotFound");
                assert!(st.get("podName").is_none_or(Value::is_null), "{st}");
            }),
        ]
    })
    .await;
    result.expect("a missing policy is a status, not an error");
    assert!(
        seen.iter()
            .filter(|s| s.path != STATUS_PATH && s.path != EVENTS_PATH)
            .all(|s| s.method == http::Method::GET)
    );
}

#[tokio::test]
async fn stale_pod_is_deleted_not_recreated() {
    let (result, seen, _) = run(true, |ctx| {
        let plan = plan(ctx);
        let stale = our_pod(&plan, "0000000000000000");
        vec![
            Step::get(SA_PATH).not_found(),
            Step::apply(SA_PATH).echo(),
            Step::get(NP_PATH).not_found(),
            Step::apply(NP_PATH).echo(),
            Step::get(POD_PATH).respond(200, stale.clone()),
            Step::get(POD_PATH).respond(200, stale.clone()),
            Step::delete(POD_PATH).respond(200, stale),
            status_apply().check(|s| {
                let st = &s.body["status"];
                assert_eq!(st["phase"], "Starting", "{st}");
                assert!(
                    st["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("replacing the pod")),
                    "{st}"
                );
            }),
        ]
    })
    .await;
    let action = result.expect("replacing a pod is not an error");
    assert_eq!(action, Action::requeue(Duration::from_secs(2)));
    assert!(
        seen.iter()
            .any(|s| s.path == POD_PATH && s.method == http::Method::DELETE)
    );
    assert!(!seen.iter().any(|s| s.path.starts_with(PODS_PATH)
        && (s.method == http::Method::PATCH || s.method == http::Method::POST)));
}

#[tokio::test]
async fn error_policy_requeues_and_counts_the_error() {
    let (result, _, ctx) = run(true, |ctx| {
        plan(ctx);
        vec![
            Step::get(SA_PATH).not_found(),
            Step::apply(SA_PATH).fail(403, "Forbidden"),
        ]
    })
    .await;
    let err = result.expect_err("forbidden");
    let action = error_policy(Arc::new(sandbox()), &err, ctx.clone());
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
    let action = error_policy(Arc::new(sandbox()), &err, ctx.clone());
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));

    let (result, _, ctx2) = run(true, |ctx| {
        plan(ctx);
        vec![
            Step::get(SA_PATH).not_found(),
            Step::apply(SA_PATH).echo(),
            Step::get(NP_PATH).not_found(),
            Step::apply(NP_PATH).fail(409, "Conflict"),
        ]
    })
    .await;
    let conflict = result.expect_err("conflict");
    // A conflict is retried sooner.
    assert_eq!(
        error_policy(Arc::new(sandbox()), &conflict, ctx2.clone()),
        Action::requeue(Duration::from_secs(1))
    );

    let text = ctx.metrics.encode();
    assert!(
        text.lines().any(|l| l
            == r#"palisade_reconcile_errors_total{controller="agentsandbox",reason="ApiError"} 2"#),
        "{text}"
    );
    let text2 = ctx2.metrics.encode();
    assert!(
        text2.lines().any(|l| l
            == r#"palisade_reconcile_errors_total{controller="agentsandbox",reason="Conflict"} 1"#),
        "{text2}"
    );
}

/// The harness itself: a request the script does not expect fails the test.
#[tokio::test]
#[should_panic(
    expected = "unexpected request after the script: PATCH /api/v1/namespaces/ns/serviceaccounts/agent"
)]
async fn harness_rejects_unexpected_requests() {
    let _ = run(true, |_| vec![Step::get(SA_PATH).not_found()]).await;
}

/// The harness itself: a request out of order fails the test.
#[tokio::test]
#[should_panic(
    expected = "step 1/1: unexpected request GET /api/v1/namespaces/ns/serviceaccounts/agent"
)]
async fn harness_rejects_requests_out_of_order() {
    let _ = run(true, |_| vec![Step::get(NP_PATH).not_found()]).await;
}
