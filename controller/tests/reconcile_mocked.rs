//! The AgentSandbox reconciler against a scripted, mocked API server: the exact requests it
//! makes, in order. The NetworkPolicy is in place before any pod write and the pod is let
//! through only once that NetworkPolicy was read back; nothing is written after a failed
//! child apply; someone else's objects are never adopted; a converged sandbox costs no request;
//! and no running pod is removed on the evidence of a cache alone.

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::runtime::controller::Action;
use palisade::api::policy::AgentPolicySpec;
use palisade::api::sandbox::{AgentSandboxSpec, PolicyRef, RestartPolicy};
use palisade::api::{
    AgentPolicy, AgentSandbox, AgentSandboxStatus, ISOLATION_GATE, NETWORK_POLICY_UID_ANNOTATION,
    POLICY_HASH_ANNOTATION,
};
use palisade::reconcile::facts::OptionalCrds;
use palisade::reconcile::sandbox::{error_policy, reconcile, retry_delay};
use palisade::reconcile::{Context, Error};
use palisade::render::{Plan, compile};
use serde_json::{Value, json};
use support::apimock::{Seen, Step, join, mock_client, serve};
use support::context::{Cached, context};

const NS: &str = "ns";
const NAME: &str = "agent";
const UID: &str = "0b6c1f4e-5a0d-4c7e-9a57-2d7a3b1c9e01";
const POLICY: &str = "p";
const NP_UID: &str = "np-uid-1";
const POD_UID: &str = "pod-uid-1";

const SA_PATH: &str = "/api/v1/namespaces/ns/serviceaccounts/palisade-agent";
const SAS_PATH: &str = "/api/v1/namespaces/ns/serviceaccounts";
const NP_PATH: &str = "/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies/agent-isolation";
const NPS_PATH: &str = "/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies";
const POD_PATH: &str = "/api/v1/namespaces/ns/pods/agent";
const PODS_PATH: &str = "/api/v1/namespaces/ns/pods";
const SVC_PATH: &str = "/api/v1/namespaces/ns/services/agent";
const POLICY_PATH: &str = "/apis/palisade.dev/v1alpha1/namespaces/ns/agentpolicies/p";
const RCS_PATH: &str = "/apis/node.k8s.io/v1/runtimeclasses";
const CRD_PATH: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/";
const STATUS_PATH: &str = "/apis/palisade.dev/v1alpha1/namespaces/ns/agentsandboxes/agent/status";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/ns/events";

fn sandbox_with(
    spec: impl FnOnce(&mut AgentSandboxSpec),
    status: Option<AgentSandboxStatus>,
) -> AgentSandbox {
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
    spec(&mut s.spec);
    s.metadata.namespace = Some(NS.into());
    s.metadata.uid = Some(UID.into());
    s.metadata.generation = Some(1);
    s.metadata.resource_version = Some("1".into());
    s.status = status;
    s
}

fn sandbox() -> AgentSandbox {
    sandbox_with(|_| {}, None)
}

fn policy_with(spec: Value) -> AgentPolicy {
    let spec: AgentPolicySpec = serde_json::from_value(spec).expect("policy spec");
    let mut p = AgentPolicy::new(POLICY, spec);
    p.metadata.namespace = Some(NS.into());
    p.metadata.uid = Some("policy-uid".into());
    p
}

fn policy() -> AgentPolicy {
    policy_with(json!({}))
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

fn plan_of(s: &AgentSandbox, p: &AgentPolicy) -> Plan {
    let facts = context(mock_client().0, base_cache(), OptionalCrds::default()).facts();
    compile(p, s, &facts, 0).expect("fixture compiles")
}

/// A child of the plan as the API server holds it: ours, with a UID.
fn live<T: serde::de::DeserializeOwned>(mut v: Value, uid: &str) -> T {
    v["metadata"]["ownerReferences"] = json!([our_owner_reference()]);
    v["metadata"]["uid"] = json!(uid);
    v["metadata"]["resourceVersion"] = json!("5");
    serde_json::from_value(v).expect("live object")
}

fn live_np(plan: &Plan, uid: &str) -> NetworkPolicy {
    live(serde_json::to_value(&plan.network_policy).unwrap(), uid)
}

fn live_sa(plan: &Plan) -> ServiceAccount {
    live(
        serde_json::to_value(&plan.service_account).unwrap(),
        "sa-uid",
    )
}

/// The plan's pod as it runs: ungated, bound to `NP_UID`, in `phase`.
fn running_pod(plan: &Plan, hash: &str, phase: &str, ready: bool) -> Value {
    let mut pod = serde_json::to_value(&plan.pod).expect("pod json");
    pod["metadata"]["ownerReferences"] = json!([our_owner_reference()]);
    pod["metadata"]["uid"] = json!(POD_UID);
    pod["metadata"]["resourceVersion"] = json!("7");
    pod["metadata"]["annotations"][POLICY_HASH_ANNOTATION] = json!(hash);
    pod["metadata"]["annotations"][NETWORK_POLICY_UID_ANNOTATION] = json!(NP_UID);
    pod["spec"]
        .as_object_mut()
        .unwrap()
        .remove("schedulingGates");
    pod["spec"]["nodeName"] = json!("node-1");
    pod["status"] = json!({"phase": phase, "podIP": "10.1.2.3",
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]});
    pod
}

fn pod_of(v: Value) -> Pod {
    serde_json::from_value(v).expect("pod")
}

fn base_cache() -> Cached {
    Cached {
        policies: vec![policy()],
        sandboxes: vec![sandbox()],
        runtime_classes: vec![runtime_class()],
        ..Default::default()
    }
}

/// The caches of a sandbox that converged: its children and a running pod.
fn converged_cache(s: &AgentSandbox, p: &AgentPolicy) -> (Cached, Plan) {
    let plan = plan_of(s, p);
    let pod = running_pod(&plan, &plan.pod_hash, "Running", true);
    let cache = Cached {
        policies: vec![p.clone()],
        sandboxes: vec![s.clone()],
        network_policies: vec![live_np(&plan, NP_UID)],
        service_accounts: vec![live_sa(&plan)],
        pods: vec![pod_of(pod)],
        ..base_cache()
    };
    (cache, plan)
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

/// A create (POST to the collection) under the `palisade` field manager.
fn create(path: &'static str) -> Step {
    Step::post(path).query("fieldManager", "palisade")
}

/// A DELETE that must carry a UID precondition.
fn delete_precisely(path: &'static str, uid: &'static str) -> Step {
    Step::delete(path)
        .check(move |s| {
            assert_eq!(
                s.body["preconditions"]["uid"], uid,
                "DELETE {path} without the UID precondition: {}",
                s.body
            )
        })
        .respond(200, json!({"kind": "Status", "status": "Success"}))
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

/// What the reconciler reads directly to confirm a decision taken on cached evidence.
#[derive(Clone, Copy)]
enum Confirming {
    Policy,
    ClusterFacts,
    NetworkPolicies,
}

/// The direct reads that confirm a decision taken on cached evidence, answered from `server`.
fn confirmation(what: Confirming, server: Server) -> Vec<Step> {
    let mut steps = match what {
        Confirming::Policy => vec![match server.policy {
            Some(p) => Step::get(POLICY_PATH).respond(200, p),
            None => Step::get(POLICY_PATH).not_found(),
        }],
        Confirming::ClusterFacts => vec![
            Step::get(RCS_PATH).respond(
                200,
                json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClassList",
                    "metadata": {"resourceVersion": "1"}, "items": server.runtime_classes}),
            ),
            Step::get(format!(
                "{CRD_PATH}seccompprofiles.security-profiles-operator.x-k8s.io"
            ))
            .not_found(),
            Step::get(format!("{CRD_PATH}ciliumnetworkpolicies.cilium.io")).not_found(),
        ],
        Confirming::NetworkPolicies => vec![Step::get(NPS_PATH).respond(
            200,
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicyList",
                "metadata": {"resourceVersion": "1"}, "items": server.network_policies}),
        )],
    };
    steps.push(match server.pod {
        Some(p) => Step::get(POD_PATH).respond(200, p),
        None => Step::get(POD_PATH).not_found(),
    });
    steps
}

/// What the API server really holds, for the confirming reads.
#[derive(Default)]
struct Server {
    policy: Option<Value>,
    runtime_classes: Vec<Value>,
    network_policies: Vec<Value>,
    pod: Option<Value>,
}

/// Runs one reconcile of `s` against the script; returns its result and every request seen.
async fn run_with(
    s: AgentSandbox,
    cache: Cached,
    crds: OptionalCrds,
    steps: Vec<Step>,
) -> (Result<Action, Error>, Vec<Seen>, Arc<Context>) {
    let (client, handle) = mock_client();
    let ctx = context(client, cache.clone(), crds.clone());
    let verifier = tokio::spawn(serve(handle, steps));
    let result = tokio::time::timeout(Duration::from_secs(20), reconcile(Arc::new(s), ctx.clone()))
        .await
        .expect("reconcile timed out");
    // The caller keeps a context on another client, so the verifier sees every client go away.
    let keep = Arc::new(Context {
        client: mock_client().0,
        config: ctx.config.clone(),
        caches: ctx.caches.clone(),
        optional_crds: crds,
        recorder: kube::runtime::events::Recorder::new(
            mock_client().0,
            kube::runtime::events::Reporter {
                controller: "palisade".into(),
                instance: None,
            },
        ),
        metrics: ctx.metrics.clone(),
        backoff: Default::default(),
        written: Default::default(),
        pool_expectations: Default::default(),
        moved: Default::default(),
        count_writes: Default::default(),
        checked_policies: Default::default(),
        stop: Default::default(),
    });
    for _ in 0..ctx.backoff.failures(UID) {
        keep.backoff.failed(UID);
    }
    drop(ctx);
    let seen = join(verifier).await;
    (result, seen, keep)
}

fn position(seen: &[Seen], pred: impl Fn(&Seen) -> bool) -> Option<usize> {
    seen.iter().position(pred)
}

fn is_pod_write(s: &Seen) -> bool {
    s.path.starts_with(PODS_PATH) && s.method != Method::GET
}

fn deleted(seen: &[Seen], path: &str) -> bool {
    seen.iter()
        .any(|s| s.path == path && s.method == Method::DELETE)
}

#[tokio::test]
async fn a_new_sandbox_gets_its_network_policy_then_a_gated_pod_let_through_after_read_back() {
    let s = sandbox();
    let plan = plan_of(&s, &policy());
    let hash = plan.pod_hash.clone();
    let np_reply = serde_json::to_value(live_np(&plan, NP_UID)).unwrap();
    let np_read = np_reply.clone();
    let steps = vec![
        // Not cached: created in one request each (no read first).
        create(SAS_PATH)
            .check(|s| {
                assert_eq!(s.body["kind"], "ServiceAccount");
                assert_eq!(s.body["metadata"]["ownerReferences"][0]["uid"], UID);
                assert_eq!(s.body["metadata"]["ownerReferences"][0]["controller"], true);
            })
            .reply_with(|s| (201, s.body.clone())),
        create(NPS_PATH)
            .check(|s| {
                assert_eq!(s.body["kind"], "NetworkPolicy");
                assert_eq!(s.body["metadata"]["ownerReferences"][0]["uid"], UID);
                let types = s.body["spec"]["policyTypes"].as_array().expect("types");
                assert!(types.contains(&json!("Ingress")) && types.contains(&json!("Egress")));
            })
            .respond(201, np_reply),
        Step::post(PODS_PATH)
            .check(move |s| {
                assert_eq!(s.body["kind"], "Pod");
                assert_eq!(s.body["metadata"]["ownerReferences"][0]["uid"], UID);
                assert_eq!(s.body["metadata"]["annotations"][POLICY_HASH_ANNOTATION], json!(hash));
                assert_eq!(
                    s.body["metadata"]["annotations"][NETWORK_POLICY_UID_ANNOTATION],
                    NP_UID,
                    "the pod is bound to the NetworkPolicy it was created behind"
                );
                assert_eq!(
                    s.body["spec"]["schedulingGates"],
                    json!([{"name": ISOLATION_GATE}]),
                    "the pod is created gated"
                );
            })
            .reply_with(|s| {
                let mut pod = s.body.clone();
                pod["metadata"]["uid"] = json!(POD_UID);
                (201, pod)
            }),
        Step::get(NP_PATH).respond(200, np_read),
        Step::new(Method::PATCH, POD_PATH).respond(200, json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": NAME}})).check(|s| {
            assert_eq!(
                s.body,
                json!([
                    {"op": "test", "path": "/metadata/uid", "value": POD_UID},
                    {"op": "test", "path": "/spec/schedulingGates/0/name", "value": ISOLATION_GATE},
                    {"op": "remove", "path": "/spec/schedulingGates/0"}
                ]),
                "the gate is removed from that pod only"
            );
        }),
        status_apply().check(|s| {
            let st = &s.body["status"];
            assert_eq!(st["phase"], "Starting", "{st}");
            assert_eq!(st["podName"], NAME);
            assert_eq!(condition(st, "NetworkIsolated")["status"], "True");
            assert_eq!(condition(st, "Reconciling")["status"], "True");
        }),
    ];
    let (result, seen, _) = run_with(s, base_cache(), OptionalCrds::default(), steps).await;
    result.expect("reconcile succeeds");
    let np_apply = position(&seen, |s| s.path == NPS_PATH && s.method == Method::POST).unwrap();
    assert!(np_apply < position(&seen, is_pod_write).unwrap());

    // The next pass finds that pod in the cache, through its gate and not yet running: the
    // status already says so, so it writes nothing (one status write fewer per sandbox).
    let written: AgentSandboxStatus =
        serde_json::from_value(seen.last().expect("a status write").body["status"].clone())
            .expect("status");
    let mut pending = running_pod(&plan, &plan.pod_hash, "Pending", false);
    pending["status"] = json!({"phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "True"}]});
    let cache = Cached {
        network_policies: vec![live_np(&plan, NP_UID)],
        service_accounts: vec![live_sa(&plan)],
        pods: vec![pod_of(pending)],
        ..base_cache()
    };
    let s = sandbox_with(|_| {}, Some(written));
    let (result, seen, _) = run_with(s, cache, OptionalCrds::default(), vec![]).await;
    result.expect("ok");
    assert!(seen.is_empty(), "{seen:?}");
}

#[tokio::test]
async fn a_converged_sandbox_costs_no_request() {
    let (cache, plan) = converged_cache(&sandbox(), &policy());
    // First pass: the status is written once.
    let (result, seen, _) = run_with(
        sandbox(),
        cache.clone(),
        OptionalCrds::default(),
        vec![status_apply().check(|s| {
            let st = &s.body["status"];
            assert_eq!(st["phase"], "Running", "{st}");
            assert_eq!(st["podIP"], "10.1.2.3");
            assert!(st["startedAt"].is_string());
            // The sandbox's own report, with this cluster's facts: gVisor does not apply the
            // pod's seccomp profile here (review finding 7: it never reached the cluster).
            let not_enforced = st["enforcement"]["notEnforced"].to_string();
            assert!(not_enforced.contains("syscalls"), "{st}");
        })],
    )
    .await;
    result.expect("ok");
    let written: AgentSandboxStatus =
        serde_json::from_value(seen[0].body["status"].clone()).expect("status");
    // Second pass, with that status: nothing at all.
    let s = sandbox_with(|_| {}, Some(written));
    let (result, seen, _) = run_with(s, cache, OptionalCrds::default(), vec![]).await;
    result.expect("ok");
    assert!(seen.is_empty(), "{seen:?}");
    let _ = plan;
}

#[tokio::test]
async fn a_policy_missing_from_the_cache_but_on_the_server_removes_no_pod() {
    // Finding 1: the policy store has not seen the policy (a lagging or partial list); the
    // pod runs. The absence is confirmed by a direct read, which finds the policy.
    let (mut cache, plan) = converged_cache(&sandbox(), &policy());
    cache.policies.clear();
    let pod = running_pod(&plan, &plan.pod_hash, "Running", true);
    let mut steps = confirmation(
        Confirming::Policy,
        Server {
            policy: Some(serde_json::to_value(policy()).unwrap()),
            network_policies: vec![],
            pod: Some(pod),
            ..Default::default()
        },
    );
    steps.push(status_apply().check(|s| assert_eq!(s.body["status"]["phase"], "Running")));
    let (result, seen, _) = run_with(sandbox(), cache, OptionalCrds::default(), steps).await;
    result.expect("ok");
    assert!(
        !deleted(&seen, POD_PATH),
        "a running pod was removed on cache evidence"
    );
}

#[tokio::test]
async fn a_confirmed_missing_policy_blocks_and_removes_the_pod_precisely() {
    let (mut cache, plan) = converged_cache(&sandbox(), &policy());
    cache.policies.clear();
    let pod = running_pod(&plan, &plan.pod_hash, "Running", true);
    let mut steps = confirmation(
        Confirming::Policy,
        Server {
            policy: None,
            network_policies: vec![],
            pod: Some(pod),
            ..Default::default()
        },
    );
    steps.extend([
        delete_precisely(POD_PATH, POD_UID),
        event_post("PolicyNotFound"),
        status_apply().check(|s| {
            let st = &s.body["status"];
            assert_eq!(st["phase"], "Blocked", "{st}");
            assert_eq!(condition(st, "PolicyResolved")["reason"], "PolicyNotFound");
            assert_eq!(condition(st, "Stalled")["status"], "True");
            assert!(st.get("podName").is_none_or(Value::is_null), "{st}");
        }),
    ]);
    let (result, _, _) = run_with(sandbox(), cache, OptionalCrds::default(), steps).await;
    result.expect("a missing policy is a status, not an error");
}

#[tokio::test]
async fn a_policy_this_operator_cannot_read_keeps_the_pod_and_reports() {
    // Finding 11: a "CRDs first" upgrade; the policy uses a field this operator does not know.
    let (mut cache, plan) = converged_cache(&sandbox(), &policy());
    cache.policies.clear();
    let mut newer = serde_json::to_value(policy()).unwrap();
    newer["spec"]["network"] = json!({"egress": {"default": "deny", "futureField": true}});
    let mut steps = confirmation(
        Confirming::Policy,
        Server {
            policy: Some(newer),
            network_policies: vec![],
            pod: Some(running_pod(&plan, &plan.pod_hash, "Running", true)),
            ..Default::default()
        },
    );
    steps.extend([
        event_post("PolicyUnreadable"),
        status_apply().check(|s| {
            let st = &s.body["status"];
            assert_eq!(condition(st, "PolicyResolved")["status"], "False", "{st}");
            assert_eq!(condition(st, "Stalled")["reason"], "PolicyUnreadable");
            assert!(
                st["message"].as_str().unwrap().contains("futureField"),
                "{st}"
            );
        }),
    ]);
    let (result, seen, _) = run_with(sandbox(), cache, OptionalCrds::default(), steps).await;
    result.expect("ok");
    assert!(!deleted(&seen, POD_PATH));
}

#[tokio::test]
async fn admission_additions_are_not_drift() {
    // Finding 2: a RuntimeClass's scheduling tolerations, DefaultTolerationSeconds and a
    // digest pinned by a policy engine are added to the pod by admission.
    let (mut cache, plan) = converged_cache(&sandbox(), &policy());
    let mut pod = running_pod(&plan, &plan.pod_hash, "Running", true);
    pod["spec"]["tolerations"] = json!([
        {"key": "sandbox.gke.io/runtime", "operator": "Equal", "value": "gvisor", "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
    ]);
    pod["spec"]["containers"][0]["image"] =
        json!(format!("ghcr.io/acme/agent:1@sha256:{}", "c".repeat(64)));
    cache.pods = vec![pod_of(pod)];
    let (result, seen, _) = run_with(
        sandbox(),
        cache,
        OptionalCrds::default(),
        vec![status_apply().check(|s| assert_eq!(s.body["status"]["phase"], "Running"))],
    )
    .await;
    result.expect("ok");
    assert!(!deleted(&seen, POD_PATH), "{seen:?}");
}

#[tokio::test]
async fn an_image_from_another_repository_blocks_and_stays_blocked() {
    let (mut cache, plan) = converged_cache(&sandbox(), &policy());
    let mut pod = running_pod(&plan, &plan.pod_hash, "Running", true);
    pod["spec"]["containers"][0]["image"] = json!("mirror.example.com/acme/agent:1");
    cache.pods = vec![pod_of(pod)];
    let (result, seen, _) = run_with(
        sandbox(),
        cache.clone(),
        OptionalCrds::default(),
        vec![
            delete_precisely(POD_PATH, POD_UID),
            event_post("ImageRewritten"),
            status_apply().check(|s| {
                let st = &s.body["status"];
                assert_eq!(st["phase"], "Blocked", "{st}");
                assert!(
                    st["message"]
                        .as_str()
                        .unwrap()
                        .contains("mirror.example.com")
                );
            }),
        ],
    )
    .await;
    result.expect("ok");
    let blocked: AgentSandboxStatus =
        serde_json::from_value(seen.last().unwrap().body["status"].clone()).unwrap();
    // The pod is gone; the next pass does not start another one to be rewritten again.
    cache.pods.clear();
    let (result, seen, _) = run_with(
        sandbox_with(|_| {}, Some(blocked)),
        cache,
        OptionalCrds::default(),
        vec![],
    )
    .await;
    result.expect("ok");
    assert!(seen.is_empty(), "{seen:?}");
}

#[tokio::test]
async fn children_that_left_the_plan_are_removed_widening_first_and_a_claim_is_kept() {
    // Finding 3: the policy dropped its fqdn allows (Cilium policy), the sandbox its Service,
    // and the policy its persistent workspace.
    let (mut cache, plan) = converged_cache(&sandbox(), &policy());
    let service: Service = live(
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": NAME, "namespace": NS,
            "labels": {"app.kubernetes.io/managed-by": "palisade", "palisade.dev/sandbox": NAME}},
            "spec": {"clusterIP": "None"}}),
        "svc-uid",
    );
    cache.services = vec![service];
    cache.claims = vec![live(
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "agent-workspace", "namespace": NS}, "spec": {}}),
        "pvc-uid",
    )];
    let crds = OptionalCrds::default();
    crds.cilium.store(true, std::sync::atomic::Ordering::SeqCst);
    let cnp_path = "/apis/cilium.io/v2/namespaces/ns/ciliumnetworkpolicies/agent-fqdn";
    let cnp = json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "agent-fqdn", "namespace": NS, "uid": "cnp-uid",
            "ownerReferences": [our_owner_reference()]},
        "spec": {"egress": [{"toFQDNs": [{"matchName": "example.com"}]}]}});
    let (result, seen, _) = run_with(
        sandbox(),
        cache,
        crds,
        vec![
            Step::get(cnp_path).respond(200, cnp),
            delete_precisely(cnp_path, "cnp-uid"),
            Step::get(SVC_PATH).respond(
                200,
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": NAME, "namespace": NS,
                    "uid": "svc-uid", "ownerReferences": [our_owner_reference()]}}),
            ),
            delete_precisely(SVC_PATH, "svc-uid"),
            status_apply().check(|s| {
                let st = &s.body["status"];
                assert_eq!(st["phase"], "Running", "{st}");
                assert_eq!(condition(st, "WorkspaceRetained")["status"], "True");
                assert!(condition(st, "WorkspaceRetained")["message"]
                    .as_str()
                    .unwrap()
                    .contains("agent-workspace"));
            }),
        ],
    )
    .await;
    result.expect("ok");
    assert!(
        !seen
            .iter()
            .any(|s| s.path.contains("persistentvolumeclaims"))
    );
    let _ = plan;
}

#[tokio::test]
async fn a_stale_pod_goes_before_anything_is_widened() {
    // Finding 4: the policy now allows more egress and changes the pod (its identity): the old
    // pod must be gone before the wider NetworkPolicy is applied.
    let old_policy = policy();
    let (mut cache, old_plan) = converged_cache(&sandbox(), &old_policy);
    let new_policy = policy_with(json!({
        "network": {"egress": {"allow": [{"to": [{"cidr": "198.51.100.0/24"}]}]}},
        "privileges": {"runAsUser": 1000}
    }));
    cache.policies = vec![new_policy];
    let stale = running_pod(&old_plan, &old_plan.pod_hash, "Running", true);
    cache.pods = vec![pod_of(stale)];
    let (result, seen, _) = run_with(
        sandbox(),
        cache,
        OptionalCrds::default(),
        vec![
            delete_precisely(POD_PATH, POD_UID),
            status_apply().check(|s| {
                let st = &s.body["status"];
                assert_eq!(st["phase"], "Starting", "{st}");
                assert!(
                    st["message"]
                        .as_str()
                        .unwrap()
                        .contains("replacing the pod")
                );
            }),
        ],
    )
    .await;
    assert_eq!(result.expect("ok"), Action::requeue(Duration::from_secs(1)));
    assert!(
        !seen.iter().any(|s| s.path == NP_PATH),
        "the NetworkPolicy was touched before the pod was gone"
    );
}

#[tokio::test]
async fn a_network_policy_replaced_before_the_gate_opens_sends_the_pod_back() {
    // Finding 5: the NetworkPolicy was deleted and recreated between the apply and the pod's
    // creation: the read back finds another UID, and the gated pod (which never ran) is removed.
    let s = sandbox();
    let plan = plan_of(&s, &policy());
    let np = serde_json::to_value(live_np(&plan, NP_UID)).unwrap();
    let other = serde_json::to_value(live_np(&plan, "np-uid-2")).unwrap();
    let steps = vec![
        create(SAS_PATH).reply_with(|s| (201, s.body.clone())),
        create(NPS_PATH).respond(201, np),
        Step::post(PODS_PATH).reply_with(|s| {
            let mut pod = s.body.clone();
            pod["metadata"]["uid"] = json!(POD_UID);
            (201, pod)
        }),
        Step::get(NP_PATH).respond(200, other),
        delete_precisely(POD_PATH, POD_UID),
        status_apply().check(|s| assert_eq!(s.body["status"]["phase"], "Starting")),
    ];
    let (result, seen, _) = run_with(s, base_cache(), OptionalCrds::default(), steps).await;
    result.expect("ok");
    assert!(
        !seen
            .iter()
            .any(|s| s.path == POD_PATH && s.method == Method::PATCH),
        "the gate was opened"
    );
}

#[tokio::test]
async fn a_pod_whose_network_policy_was_replaced_while_it_ran_is_replaced() {
    // Finding 5: someone stripped the finalizer and deleted the NetworkPolicy; it was recreated
    // (another UID). The running pod ran without it and is replaced, once confirmed.
    let (mut cache, plan) = converged_cache(&sandbox(), &policy());
    cache.network_policies = vec![live_np(&plan, "np-uid-2")];
    let pod = running_pod(&plan, &plan.pod_hash, "Running", true);
    let mut steps = confirmation(
        Confirming::NetworkPolicies,
        Server {
            policy: None,
            network_policies: vec![serde_json::to_value(live_np(&plan, "np-uid-2")).unwrap()],
            pod: Some(pod),
            ..Default::default()
        },
    );
    steps.extend([
        delete_precisely(POD_PATH, POD_UID),
        event_post("Replacing"),
        status_apply().check(|s| {
            let st = &s.body["status"];
            assert_eq!(
                condition(st, "NetworkIsolated")["reason"],
                "NetworkPolicyReplaced",
                "{st}"
            );
        }),
    ]);
    let (result, _, _) = run_with(sandbox(), cache, OptionalCrds::default(), steps).await;
    result.expect("ok");
}

#[tokio::test]
async fn a_finished_sandbox_never_runs_again() {
    // Finding 7: the Succeeded pod was deleted (pod GC, a drain, by hand).
    let (mut cache, plan) = converged_cache(&sandbox(), &policy());
    cache.pods = vec![pod_of(running_pod(
        &plan,
        &plan.pod_hash,
        "Succeeded",
        false,
    ))];
    let s = sandbox_with(|s| s.restart_policy = Some(RestartPolicy::Never), None);
    let (result, seen, _) = run_with(
        s.clone(),
        cache.clone(),
        OptionalCrds::default(),
        vec![status_apply().check(|s| {
            let st = &s.body["status"];
            assert_eq!(st["phase"], "Succeeded", "{st}");
            assert!(st["finishedAt"].is_string(), "{st}");
        })],
    )
    .await;
    result.expect("ok");
    let finished: AgentSandboxStatus =
        serde_json::from_value(seen[0].body["status"].clone()).unwrap();
    cache.pods.clear();
    let s = sandbox_with(
        |s| s.restart_policy = Some(RestartPolicy::Never),
        Some(finished),
    );
    let (result, seen, _) = run_with(
        s,
        cache,
        OptionalCrds::default(),
        vec![status_apply().check(|s| {
            let st = &s.body["status"];
            assert_eq!(st["phase"], "Succeeded", "{st}");
            assert!(st.get("podName").is_none_or(Value::is_null), "{st}");
        })],
    )
    .await;
    result.expect("ok");
    assert!(
        !seen.iter().any(is_pod_write),
        "a finished sandbox ran again: {seen:?}"
    );
}

#[tokio::test]
async fn an_evicted_pod_of_a_long_running_sandbox_is_replaced() {
    let (mut cache, plan) = converged_cache(&sandbox(), &policy());
    let mut pod = running_pod(&plan, &plan.pod_hash, "Failed", false);
    pod["status"]["reason"] = json!("Evicted");
    pod["status"]["message"] = json!("The node was low on resource: memory.");
    cache.pods = vec![pod_of(pod.clone())];
    let (result, _, _) = run_with(
        sandbox(),
        cache.clone(),
        OptionalCrds::default(),
        vec![
            delete_precisely(POD_PATH, POD_UID),
            status_apply().check(|s| {
                let st = &s.body["status"];
                assert_eq!(st["phase"], "Starting", "{st}");
                assert!(st["message"].as_str().unwrap().contains("Evicted"));
            }),
        ],
    )
    .await;
    result.expect("ok");
    // The same under restartPolicy Never: the agent ran once, it is finished.
    let mut ran = pod;
    ran["status"]["containerStatuses"] = json!([{"name": "agent", "image": "x", "imageID": "",
        "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": 137, "startedAt": "2026-01-01T00:00:00Z"}}}]);
    cache.pods = vec![pod_of(ran)];
    let s = sandbox_with(|s| s.restart_policy = Some(RestartPolicy::Never), None);
    let (result, seen, _) = run_with(
        s,
        cache,
        OptionalCrds::default(),
        vec![
            event_post("Failed"),
            status_apply().check(|s| assert_eq!(s.body["status"]["phase"], "Failed")),
        ],
    )
    .await;
    result.expect("ok");
    assert!(!deleted(&seen, POD_PATH));
}

#[tokio::test]
async fn a_timeout_is_expired_not_failed() {
    // Finding 10: the kubelet ends the pod at activeDeadlineSeconds (the time left).
    let (mut cache, plan) = converged_cache(&sandbox(), &policy());
    let mut pod = running_pod(&plan, &plan.pod_hash, "Failed", false);
    pod["status"]["reason"] = json!("DeadlineExceeded");
    cache.pods = vec![pod_of(pod)];
    let (result, _, _) = run_with(
        sandbox(),
        cache,
        OptionalCrds::default(),
        vec![
            delete_precisely(POD_PATH, POD_UID),
            event_post("Expired"),
            status_apply().check(|s| assert_eq!(s.body["status"]["phase"], "Expired")),
        ],
    )
    .await;
    result.expect("ok");
}

#[tokio::test]
async fn a_refused_network_policy_update_is_reported_then_fails_closed() {
    // Finding 8: the NetworkPolicy must change (the policy narrowed) but the API server refuses.
    let wide = policy_with(
        json!({"network": {"egress": {"allow": [{"to": [{"cidr": "198.51.100.0/24"}]}]}}}),
    );
    let narrowed = policy_with(
        json!({"network": {"egress": {"allow": [{"to": [{"cidr": "198.51.100.0/25"}]}]}}}),
    );
    let (mut cache, plan) = converged_cache(&sandbox(), &wide);
    cache.policies = vec![narrowed.clone()];
    let new_plan = plan_of(&sandbox(), &narrowed);
    assert_eq!(
        new_plan.pod_hash, plan.pod_hash,
        "fixture: only the NetworkPolicy changes"
    );
    let live = serde_json::to_value(live_np(&plan, NP_UID)).unwrap();
    let refused = || {
        vec![
            Step::get(NP_PATH).respond(200, live.clone()),
            Step::apply(NP_PATH).fail(403, "Forbidden"),
        ]
    };
    let mut steps = refused();
    steps.extend([
        event_post("Forbidden"),
        status_apply().check(|s| {
            let st = &s.body["status"];
            assert_eq!(condition(st, "NetworkIsolated")["status"], "False", "{st}");
            assert_eq!(
                condition(st, "NetworkIsolated")["reason"],
                "NetworkPolicyNotApplied"
            );
            assert_eq!(condition(st, "Stalled")["reason"], "Forbidden");
            assert!(
                st["message"]
                    .as_str()
                    .unwrap()
                    .contains("removed if this lasts 30 s"),
                "{st}"
            );
        }),
    ]);
    let (result, seen, ctx) =
        run_with(sandbox(), cache.clone(), OptionalCrds::default(), steps).await;
    let err = result.expect_err("the refusal is an error, retried");
    assert!(
        !deleted(&seen, POD_PATH),
        "the pod is kept while the refusal is young"
    );
    let _ = error_policy(Arc::new(sandbox()), &err, ctx.clone());
    assert_eq!(
        ctx.backoff.failures(UID),
        1,
        "the error policy counts the failure"
    );
    let waits: Vec<Duration> = (0..12)
        .map(|_| {
            ctx.backoff.mark_urgent(UID);
            retry_delay(&ctx.backoff, UID)
        })
        .collect();
    assert!(
        waits[1] > waits[0] / 2 && waits[3] > waits[0],
        "backoff grows: {waits:?}"
    );
    assert!(
        waits.iter().all(|w| *w <= Duration::from_secs(10)),
        "retried within a third of the fail-closed deadline: {waits:?}"
    );
    assert!(
        retry_delay(&ctx.backoff, UID) > Duration::from_secs(10),
        "other failures back off further"
    );

    // 31 s later it still fails: the pod goes.
    let mut status: AgentSandboxStatus =
        serde_json::from_value(seen.last().unwrap().body["status"].clone()).unwrap();
    let since = status
        .network_policy_pending_since
        .as_mut()
        .expect("the status remembers since when the NetworkPolicy is pending");
    since.0 -= jiff::SignedDuration::from_secs(31);
    let mut steps = refused();
    steps.extend([
        delete_precisely(POD_PATH, POD_UID),
        event_post("Forbidden"),
        status_apply().check(|s| {
            let st = &s.body["status"];
            assert!(
                st["message"].as_str().unwrap().contains("fail closed"),
                "{st}"
            );
            assert!(st.get("podName").is_none_or(Value::is_null), "{st}");
        }),
    ]);
    let (result, _, _) = run_with(
        sandbox_with(|_| {}, Some(status)),
        cache,
        OptionalCrds::default(),
        steps,
    )
    .await;
    result.expect_err("still an error");
}

#[tokio::test]
async fn a_network_policy_owned_by_someone_else_is_not_adopted_and_blocks() {
    for owners in [
        json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "other", "uid": "someone-else", "controller": true}]),
        json!([]),
        json!([{"apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox", "name": NAME, "uid": UID, "controller": false}]),
    ] {
        let s = sandbox();
        let plan = plan_of(&s, &policy());
        let mut foreign = serde_json::to_value(&plan.network_policy).unwrap();
        foreign["metadata"]["ownerReferences"] = owners;
        foreign["metadata"]["uid"] = json!("np-foreign");
        let mut cache = base_cache();
        cache.service_accounts = vec![live_sa(&plan)];
        cache.network_policies = vec![serde_json::from_value(foreign.clone()).unwrap()];
        cache.pods = vec![pod_of(running_pod(&plan, &plan.pod_hash, "Running", true))];
        let mut steps = confirmation(
            Confirming::NetworkPolicies,
            Server {
                policy: None,
                network_policies: vec![foreign],
                pod: Some(running_pod(&plan, &plan.pod_hash, "Running", true)),
                ..Default::default()
            },
        );
        steps.extend([
            delete_precisely(POD_PATH, POD_UID),
            event_post("NameConflict"),
            status_apply().check(|s| {
                let st = &s.body["status"];
                assert_eq!(st["phase"], "Blocked", "{st}");
                assert_eq!(condition(st, "NetworkIsolated")["status"], "False");
                assert!(
                    st["message"]
                        .as_str()
                        .unwrap()
                        .contains("NetworkPolicy agent-isolation")
                );
            }),
        ]);
        let (result, seen, _) = run_with(s, cache, OptionalCrds::default(), steps).await;
        result.expect("a name conflict is a status, not an error");
        assert!(
            !seen
                .iter()
                .any(|s| s.path == NP_PATH && s.method != Method::GET)
        );
    }
}

#[tokio::test]
async fn failed_network_policy_apply_writes_no_pod() {
    // The create fails; or it finds one (409), which is gone when read, and the apply fails.
    let creates: Vec<Vec<Step>> = vec![
        vec![create(NPS_PATH).fail(500, "InternalError")],
        vec![
            create(NPS_PATH).fail(409, "AlreadyExists"),
            Step::get(NP_PATH).not_found(),
            Step::apply(NP_PATH).fail(409, "Conflict"),
        ],
    ];
    for np_steps in creates {
        let mut steps = vec![create(SAS_PATH).reply_with(|s| (201, s.body.clone()))];
        steps.extend(np_steps);
        steps.extend([status_apply().check(|s| {
            let st = &s.body["status"];
            assert_eq!(condition(st, "Reconciling")["status"], "True", "{st}");
        })]);
        let (result, seen, _) =
            run_with(sandbox(), base_cache(), OptionalCrds::default(), steps).await;
        result.expect_err("a failed NetworkPolicy apply fails the reconcile");
        assert!(!seen.iter().any(|s| s.path.starts_with(PODS_PATH)));
    }
}

#[tokio::test]
async fn a_quota_refusal_reaches_status_and_events() {
    // Finding 8: API errors are visible to people.
    let s = sandbox();
    let plan = plan_of(&s, &policy());
    let mut cache = base_cache();
    cache.service_accounts = vec![live_sa(&plan)];
    cache.network_policies = vec![live_np(&plan, NP_UID)];
    let steps = vec![
        Step::post(PODS_PATH).respond(
            403,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403, "reason": "Forbidden",
                "message": "pods \"agent\" is forbidden: exceeded quota: compute, requested: limits.cpu=2, used: limits.cpu=8, limited: limits.cpu=8"}),
        ),
        event_post("QuotaExceeded"),
        status_apply().check(|s| {
            let st = &s.body["status"];
            assert_eq!(condition(st, "Stalled")["status"], "True", "{st}");
            assert_eq!(condition(st, "Stalled")["reason"], "QuotaExceeded");
            assert!(st["message"].as_str().unwrap().contains("exceeded quota"));
        }),
    ];
    let (result, _, _) = run_with(s, cache, OptionalCrds::default(), steps).await;
    result.expect_err("retried");
}

/// The harness itself: a request the script does not expect fails the test.
#[tokio::test]
#[should_panic(expected = "unexpected request after the script")]
async fn harness_rejects_unexpected_requests() {
    let _ = run_with(
        sandbox(),
        base_cache(),
        OptionalCrds::default(),
        vec![create(SAS_PATH).fail(500, "InternalError")],
    )
    .await;
}

/// The harness itself: a request out of order fails the test.
#[tokio::test]
#[should_panic(
    expected = "step 1/1: unexpected request POST /api/v1/namespaces/ns/serviceaccounts"
)]
async fn harness_rejects_requests_out_of_order() {
    let _ = run_with(
        sandbox(),
        base_cache(),
        OptionalCrds::default(),
        vec![Step::get(NP_PATH).not_found()],
    )
    .await;
}

#[tokio::test]
async fn a_pod_whose_labels_were_removed_is_replaced() {
    // The label-filtered cache no longer shows it, and the NetworkPolicy no longer selects it.
    let s = sandbox();
    let plan = plan_of(&s, &policy());
    let mut cache = base_cache();
    cache.service_accounts = vec![live_sa(&plan)];
    cache.network_policies = vec![live_np(&plan, NP_UID)];
    let mut relabelled = running_pod(&plan, &plan.pod_hash, "Running", true);
    relabelled["metadata"]["labels"] = json!({"app": "something-else"});
    let steps = vec![
        Step::post(PODS_PATH).fail(409, "AlreadyExists"),
        Step::get(POD_PATH).respond(200, relabelled),
        delete_precisely(POD_PATH, POD_UID),
        status_apply().check(|s| {
            let st = &s.body["status"];
            assert_eq!(st["phase"], "Starting", "{st}");
            assert!(
                st["message"]
                    .as_str()
                    .unwrap()
                    .contains("labels were removed"),
                "{st}"
            );
        }),
    ];
    let (result, _, _) = run_with(s, cache, OptionalCrds::default(), steps).await;
    result.expect("ok");
}

fn delete_at_once(path: &'static str, uid: &'static str) -> Step {
    delete_precisely(path, uid).check(|s| {
        assert_eq!(
            s.body["gracePeriodSeconds"], 0,
            "a pod that may run without its isolation goes at once: {}",
            s.body
        )
    })
}

fn delete_gracefully(path: &'static str, uid: &'static str) -> Step {
    delete_precisely(path, uid).check(|s| {
        assert!(
            s.body.get("gracePeriodSeconds").is_none_or(Value::is_null),
            "a stale pod gets its grace period: {}",
            s.body
        )
    })
}

#[tokio::test]
async fn an_image_edit_replaces_the_pod_and_blocks_nothing() {
    let (mut cache, _) = converged_cache(&sandbox(), &policy());
    let edited = sandbox_with(|s| s.image = "ghcr.io/acme/agent:2".into(), None);
    cache.sandboxes = vec![edited.clone()];
    let (result, _, _) = run_with(
        edited,
        cache,
        OptionalCrds::default(),
        vec![
            delete_gracefully(POD_PATH, POD_UID),
            status_apply().check(|s| {
                let st = &s.body["status"];
                assert_eq!(st["phase"], "Starting", "{st}");
                assert!(
                    st["message"]
                        .as_str()
                        .unwrap()
                        .contains("policy hash changed"),
                    "{st}"
                );
            }),
        ],
    )
    .await;
    result.expect("ok");
}

#[tokio::test]
async fn a_pod_the_operator_did_not_create_is_replaced_at_once() {
    // A pod with the sandbox as its controller, but not the UID the operator recorded (forged
    // during a replacement): its spec cannot be trusted.
    let (cache, _) = converged_cache(&sandbox(), &policy());
    let status = AgentSandboxStatus {
        pod_uid: Some("the-pod-we-created".into()),
        ..Default::default()
    };
    let (result, _, _) = run_with(
        sandbox_with(|_| {}, Some(status)),
        cache,
        OptionalCrds::default(),
        vec![
            delete_at_once(POD_PATH, POD_UID),
            status_apply().check(|s| {
                assert!(
                    s.body["status"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("not the pod the operator created")
                )
            }),
        ],
    )
    .await;
    result.expect("ok");
}

#[tokio::test]
async fn a_pod_that_lost_its_network_policy_goes_at_once_and_the_policy_comes_back_first() {
    // Someone stripped the finalizer and deleted the NetworkPolicy: the pod runs with none.
    let (mut cache, plan) = converged_cache(&sandbox(), &policy());
    cache.network_policies.clear();
    let pod = running_pod(&plan, &plan.pod_hash, "Running", true);
    let mut steps = confirmation(
        Confirming::NetworkPolicies,
        Server {
            policy: None,
            network_policies: vec![],
            pod: Some(pod),
            ..Default::default()
        },
    );
    let restored = serde_json::to_value(live_np(&plan, "np-uid-2")).unwrap();
    steps.extend([
        create(NPS_PATH).respond(201, restored),
        delete_at_once(POD_PATH, POD_UID),
        event_post("Replacing"),
        status_apply(),
    ]);
    let (result, seen, _) = run_with(sandbox(), cache, OptionalCrds::default(), steps).await;
    result.expect("ok");
    let restored_at = position(&seen, |s| s.path == NPS_PATH && s.method == Method::POST).unwrap();
    assert!(restored_at < position(&seen, |s| s.method == Method::DELETE).unwrap());
}

#[tokio::test]
async fn failed_pods_are_replaced_after_a_growing_wait() {
    let (mut cache, _) = converged_cache(&sandbox(), &policy());
    cache.pods.clear();
    let status = AgentSandboxStatus {
        phase: Some(palisade::api::SandboxPhase::Starting),
        pod_failures: Some(4),
        pod_failed_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::now(),
        )),
        ..Default::default()
    };
    let (result, seen, _) = run_with(
        sandbox_with(|_| {}, Some(status)),
        cache,
        OptionalCrds::default(),
        vec![status_apply().check(|s| {
            let st = &s.body["status"];
            assert_eq!(condition(st, "Reconciling")["reason"], "Backoff", "{st}");
            assert!(
                st["message"].as_str().unwrap().contains("4 in a row"),
                "{st}"
            );
        })],
    )
    .await;
    assert!(result.is_ok());
    assert!(
        !seen.iter().any(is_pod_write),
        "a pod was created before its wait: {seen:?}"
    );
}

#[tokio::test]
async fn an_expired_sandbox_stays_expired() {
    // The kubelet ended it at its deadline and the pod is gone; the sandbox never runs again.
    let (mut cache, _) = converged_cache(&sandbox(), &policy());
    cache.pods.clear();
    let status = AgentSandboxStatus {
        phase: Some(palisade::api::SandboxPhase::Expired),
        message: Some("the sandbox used its timeoutMs of run time".into()),
        finished_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::now(),
        )),
        ..Default::default()
    };
    let (result, seen, _) = run_with(
        sandbox_with(|_| {}, Some(status)),
        cache,
        OptionalCrds::default(),
        vec![status_apply().check(|s| assert_eq!(s.body["status"]["phase"], "Expired"))],
    )
    .await;
    result.expect("ok");
    assert!(
        !seen.iter().any(is_pod_write),
        "an expired sandbox ran again: {seen:?}"
    );
}

#[tokio::test]
async fn a_gate_already_removed_is_not_an_error() {
    // The pass that created the pod removed the gate; the cache still shows it gated.
    let (mut cache, plan) = converged_cache(&sandbox(), &policy());
    let mut gated = running_pod(&plan, &plan.pod_hash, "Pending", false);
    gated["spec"]["schedulingGates"] = json!([{"name": ISOLATION_GATE}]);
    cache.pods = vec![pod_of(gated)];
    let np = serde_json::to_value(live_np(&plan, NP_UID)).unwrap();
    let ungated = running_pod(&plan, &plan.pod_hash, "Pending", false);
    let (result, _, _) = run_with(
        sandbox(),
        cache,
        OptionalCrds::default(),
        vec![
            Step::get(NP_PATH).respond(200, np),
            Step::new(Method::PATCH, POD_PATH).fail(422, "Invalid"),
            Step::get(POD_PATH).respond(200, ungated),
            status_apply().check(|s| {
                let st = &s.body["status"];
                assert_eq!(condition(st, "Stalled")["status"], "False", "{st}");
            }),
        ],
    )
    .await;
    result.expect("a race with our own earlier pass is not an error");
}

#[tokio::test]
async fn a_refused_cilium_policy_update_fails_closed_too() {
    // Only the domain list changes (the pod stays); the Cilium policy update is refused.
    let fqdn = |name: &str| {
        policy_with(
            json!({"network": {"egress": {"allow": [{"to": [{"fqdn": name}], "ports": [{"protocol": "tcp", "port": 443}]}]}}}),
        )
    };
    let crds = OptionalCrds::default();
    crds.cilium.store(true, std::sync::atomic::Ordering::SeqCst);
    let facts_ctx = context(mock_client().0, base_cache(), crds.clone());
    let facts = facts_ctx.facts();
    let old = compile(&fqdn("a.example.com"), &sandbox(), &facts, 0).expect("compiles");
    let new = compile(&fqdn("b.example.com"), &sandbox(), &facts, 0).expect("compiles");
    assert_eq!(
        old.pod_hash, new.pod_hash,
        "fixture: only the Cilium policy changes"
    );
    assert_eq!(
        old.network_policy, new.network_policy,
        "fixture: only the Cilium policy changes"
    );
    let pod = running_pod(&old, &old.pod_hash, "Running", true);
    let cache = Cached {
        policies: vec![fqdn("b.example.com")],
        sandboxes: vec![sandbox()],
        network_policies: vec![live_np(&old, NP_UID)],
        service_accounts: vec![live_sa(&old)],
        pods: vec![pod_of(pod)],
        ..base_cache()
    };
    let cnp_path = "/apis/cilium.io/v2/namespaces/ns/ciliumnetworkpolicies/agent-fqdn";
    let mut live_cnp = old.fqdn_policy.clone().expect("a Cilium policy");
    live_cnp["metadata"]["ownerReferences"] = json!([our_owner_reference()]);
    live_cnp["metadata"]["uid"] = json!("cnp-uid");
    let (result, _, _) = run_with(
        sandbox(),
        cache,
        crds,
        vec![
            Step::get(cnp_path).respond(200, live_cnp),
            Step::apply(cnp_path).fail(400, "BadRequest").respond(
                400,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 400,
                       "reason": "BadRequest", "message": "admission webhook \"cnp.example.com\" denied the request"}),
            ),
            event_post("AdmissionDenied"),
            status_apply().check(|s| {
                let st = &s.body["status"];
                assert_eq!(condition(st, "NetworkIsolated")["reason"], "NetworkPolicyNotApplied", "{st}");
                assert!(st["networkPolicyPendingSince"].is_string(), "{st}");
            }),
        ],
    )
    .await;
    result.expect_err("retried");
}

#[tokio::test]
async fn a_runtime_class_missing_from_the_cache_but_on_the_server_removes_no_pod() {
    let (mut cache, plan) = converged_cache(&sandbox(), &policy());
    cache.runtime_classes.clear();
    let mut steps = confirmation(
        Confirming::ClusterFacts,
        Server {
            runtime_classes: vec![serde_json::to_value(runtime_class()).unwrap()],
            pod: Some(running_pod(&plan, &plan.pod_hash, "Running", true)),
            ..Default::default()
        },
    );
    steps.push(status_apply().check(|s| assert_eq!(s.body["status"]["phase"], "Running")));
    let (result, seen, _) = run_with(sandbox(), cache, OptionalCrds::default(), steps).await;
    result.expect("ok");
    assert!(!deleted(&seen, POD_PATH));
}

#[tokio::test]
async fn a_service_account_of_the_reserved_name_that_is_not_ours_is_not_adopted() {
    // Someone created palisade-agent first: the pod must not run under an account Palisade
    // does not control (it may carry role bindings).
    let s = sandbox();
    let plan = plan_of(&s, &policy());
    let mut foreign = serde_json::to_value(&plan.service_account).unwrap();
    foreign["metadata"]["ownerReferences"] = json!([]);
    foreign["metadata"]["uid"] = json!("sa-foreign");
    let steps = vec![
        create(SAS_PATH).fail(409, "AlreadyExists"),
        Step::get(SA_PATH).respond(200, foreign),
        event_post("NameConflict"),
        status_apply().check(|s| {
            let st = &s.body["status"];
            assert_eq!(st["phase"], "Blocked", "{st}");
            assert!(
                st["message"].as_str().unwrap().contains("palisade-agent"),
                "{st}"
            );
        }),
    ];
    let (result, seen, _) = run_with(s, base_cache(), OptionalCrds::default(), steps).await;
    result.expect("a name conflict is a status, not an error");
    assert!(!seen.iter().any(is_pod_write), "{seen:?}");
    assert!(
        !seen
            .iter()
            .any(|s| s.path == SA_PATH && s.method != Method::GET)
    );
}
