//! Taking a warm sandbox, against a scripted API server: the exact requests a claim makes.
//! The take is conditional (the warm sandbox's resourceVersion), then recorded, then each child
//! moves under its cached resourceVersion and the emptied warm sandbox goes; the warm sandbox
//! is not read again when this pass took it or the cache shows the take, and later passes make
//! no request while the caches catch up with the move. An operator restarted in between (which
//! remembers no move) and a cache that has not seen the take read the warm sandbox first.

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use kube::runtime::controller::Action;
use palisade::api::pool::{CLAIMED_BY_ANNOTATION, POOL_LABEL, TEMPLATE_HASH_LABEL};
use palisade::api::{AgentPolicy, AgentSandbox, AgentSandboxPool, AgentSandboxStatus};
use palisade::reconcile::Context;
use palisade::reconcile::facts::OptionalCrds;
use palisade::reconcile::sandbox::reconcile;
use palisade::render::template::template_hash;
use serde_json::{Value, json};
use support::apimock::{Seen, Step, join, mock_client, serve};
use support::context::{Cached, context};

const NS: &str = "ns";
const TAKER: &str = "agent";
const TAKER_UID: &str = "taker-uid";
const WARM: &str = "pool-w1";
const WARM_UID: &str = "warm-uid";
const POOL_UID: &str = "pool-uid";

const SANDBOXES: &str = "/apis/palisade.dev/v1alpha1/namespaces/ns/agentsandboxes";

fn template() -> Value {
    json!({"policyRef": {"name": "p"}, "image": "ghcr.io/acme/agent:1"})
}

fn policy() -> AgentPolicy {
    serde_json::from_value(
        json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "AgentPolicy",
        "metadata": {"name": "p", "namespace": NS, "uid": "policy-uid", "generation": 1},
        "spec": {"isolation": {"runtime": "runc"}, "network": {"dns": "none"}}}),
    )
    .expect("policy")
}

fn pool() -> AgentSandboxPool {
    serde_json::from_value(
        json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandboxPool",
        "metadata": {"name": "pool", "namespace": NS, "uid": POOL_UID, "generation": 1},
        "spec": {"replicas": 1, "template": template()}}),
    )
    .expect("pool")
}

/// The pool's ready warm sandbox as JSON (`annotations` added when taken).
fn warm_json(annotations: Value) -> Value {
    let hash = template_hash(&serde_json::from_value(template()).expect("template"));
    json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox",
        "metadata": {"name": WARM, "namespace": NS, "uid": WARM_UID, "generation": 1,
            "resourceVersion": "10",
            "labels": {POOL_LABEL: "pool", TEMPLATE_HASH_LABEL: hash},
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandboxPool",
                "name": "pool", "uid": POOL_UID, "controller": true, "blockOwnerDeletion": true}]},
        "spec": template(),
        "status": {"phase": "Running", "observedGeneration": 1,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Running", "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "enforcedPolicy": {"uid": "policy-uid", "generation": 1}}})
}

fn warm(annotations: Value) -> AgentSandbox {
    serde_json::from_value(warm_json(annotations)).expect("warm sandbox")
}

fn taker(status: Option<AgentSandboxStatus>) -> AgentSandbox {
    let mut s: AgentSandbox = serde_json::from_value(
        json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox",
        "metadata": {"name": TAKER, "namespace": NS, "uid": TAKER_UID, "generation": 1,
            "resourceVersion": "1"},
        "spec": {"poolRef": {"name": "pool"}}}),
    )
    .expect("taker");
    s.status = status;
    s
}

/// A child of the warm sandbox as the cache holds it.
fn child<K: serde::de::DeserializeOwned>(api_version: &str, kind: &str, name: &str, rv: &str) -> K {
    serde_json::from_value(json!({"apiVersion": api_version, "kind": kind,
        "metadata": {"name": name, "namespace": NS, "uid": format!("{name}-uid"),
            "resourceVersion": rv, "labels": {"palisade.dev/sandbox": WARM},
            "ownerReferences": [{"apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox",
                "name": WARM, "uid": WARM_UID, "controller": true, "blockOwnerDeletion": true}]},
        "spec": if kind == "NetworkPolicy" { json!({"podSelector": {}}) } else { json!(null) }}))
    .expect("child")
}

/// The caches while the warm sandbox's children are still its own; `warm_annotations` as the
/// cache shows the warm sandbox.
fn cached(warm_annotations: Value) -> Cached {
    Cached {
        policies: vec![policy()],
        sandboxes: vec![warm(warm_annotations), taker(None)],
        pools: vec![pool()],
        pods: vec![child("v1", "Pod", WARM, "20")],
        network_policies: vec![child(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            &format!("{WARM}-isolation"),
            "21",
        )],
        service_accounts: vec![child(
            "v1",
            "ServiceAccount",
            &format!("palisade-{WARM}"),
            "22",
        )],
        ..Default::default()
    }
}

/// A move of one child to the taker, under the cached resourceVersion `rv`.
fn moved(path: &str, rv: &'static str) -> Step {
    Step::new(Method::PATCH, path.to_string())
        .check(move |s| {
            let meta = &s.body["metadata"];
            assert_eq!(meta["resourceVersion"], rv, "{}", s.body);
            assert_eq!(meta["ownerReferences"][0]["uid"], TAKER_UID, "{}", s.body);
            assert_eq!(meta["ownerReferences"][0]["controller"], true, "{}", s.body);
        })
        .respond(200, json!({"metadata": {"name": "moved"}}))
}

fn moves_and_delete() -> Vec<Step> {
    vec![
        moved(&format!("/api/v1/namespaces/ns/pods/{WARM}"), "20"),
        moved(
            &format!("/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies/{WARM}-isolation"),
            "21",
        ),
        moved(
            &format!("/api/v1/namespaces/ns/serviceaccounts/palisade-{WARM}"),
            "22",
        ),
        Step::delete(format!("{SANDBOXES}/{WARM}"))
            .check(|s| {
                assert_eq!(s.body["preconditions"]["uid"], WARM_UID, "{}", s.body);
            })
            .respond(
                200,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            ),
    ]
}

/// Runs one pass per sandbox in `passes` on one context (one operator process), against
/// `steps`; returns each pass's action and every request.
async fn passes(
    cache: Cached,
    passes: Vec<AgentSandbox>,
    steps: Vec<Step>,
) -> (Vec<Action>, Vec<Seen>, Arc<Context>) {
    let (client, handle) = mock_client();
    let ctx = context(client, cache.clone(), OptionalCrds::default());
    let verifier = tokio::spawn(serve(handle, steps));
    let mut actions = Vec::new();
    for s in passes {
        let action =
            tokio::time::timeout(Duration::from_secs(20), reconcile(Arc::new(s), ctx.clone()))
                .await
                .expect("reconcile timed out")
                .expect("reconcile succeeds");
        actions.push(action);
    }
    let keep = context(mock_client().0, cache, OptionalCrds::default());
    drop(ctx);
    (actions, join(verifier).await, keep)
}

/// The status.pool the take records (from the status write the script saw).
fn recorded(seen: &[Seen]) -> AgentSandboxStatus {
    let write = seen
        .iter()
        .find(|s| s.path.ends_with("/agentsandboxes/agent/status"))
        .expect("a status write");
    serde_json::from_value(write.body["status"].clone()).expect("status")
}

/// The take: the warm sandbox annotated under its resourceVersion, then status.pool recorded.
fn take_steps() -> Vec<Step> {
    vec![
        Step::new(Method::PATCH, format!("{SANDBOXES}/{WARM}"))
            .check(|s| {
                let meta = &s.body["metadata"];
                assert_eq!(
                    meta["resourceVersion"], "10",
                    "taken under its resourceVersion"
                );
                assert_eq!(meta["annotations"][CLAIMED_BY_ANNOTATION], TAKER_UID);
            })
            .respond(200, warm_json(json!({CLAIMED_BY_ANNOTATION: TAKER_UID}))),
        Step::apply(format!("{SANDBOXES}/{TAKER}/status"))
            .check(|s| {
                let pool = &s.body["status"]["pool"];
                assert_eq!(pool["start"], "Warm", "{}", s.body);
                assert_eq!(pool["instance"], WARM);
                assert_eq!(pool["instanceUid"], WARM_UID, "{}", s.body);
                assert_eq!(
                    s.body["metadata"]["resourceVersion"], "1",
                    "conditional on the sandbox as the pass read it"
                );
            })
            .reply_with(|s| {
                let mut v = serde_json::to_value(taker(None)).expect("taker json");
                v["status"] = s.body["status"].clone();
                v["metadata"]["resourceVersion"] = json!("2");
                (200, v)
            }),
    ]
}

/// The status a take records.
fn warm_record() -> AgentSandboxStatus {
    let hash = template_hash(&serde_json::from_value(template()).expect("template"));
    serde_json::from_value(json!({
        "pool": {"name": "pool", "start": "Warm", "instance": WARM, "instanceUid": WARM_UID,
            "templateHash": hash, "template": template()}}))
    .expect("status")
}

/// A requeue soon (not the resync, not waiting for a change).
fn soon(action: &Action) -> bool {
    *action == Action::requeue(Duration::from_millis(15))
}

#[tokio::test]
async fn a_claim_takes_moves_and_deletes_without_reading_the_warm_sandbox_again() {
    let mut steps = take_steps();
    steps.extend(moves_and_delete());
    let (actions, seen, _) = passes(cached(json!({})), vec![taker(None)], steps).await;
    // The caches still show the children under the warm sandbox: look again soon.
    assert!(soon(&actions[0]), "{:?}", actions[0]);
    assert_eq!(recorded(&seen).pool, warm_record().pool);
    assert!(
        !seen.iter().any(|s| s.method == Method::GET),
        "no read of the warm sandbox: {:?}",
        seen.iter().map(Seen::describe).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn passes_after_the_move_make_no_request_while_the_caches_catch_up() {
    let mut steps = take_steps();
    steps.extend(moves_and_delete());
    // One process: the take, then three passes of the taker with the status it recorded, the
    // caches unchanged (neither the take nor the moves seen yet).
    let mut next = taker(Some(warm_record()));
    next.metadata.resource_version = Some("2".into());
    let (actions, seen, _) = passes(
        cached(json!({})),
        vec![taker(None), next.clone(), next.clone(), next],
        steps,
    )
    .await;
    assert_eq!(
        seen.len(),
        6,
        "the take's six requests and none after: {:?}",
        seen.iter().map(Seen::describe).collect::<Vec<_>>()
    );
    for action in &actions {
        assert!(soon(action), "it looks again soon: {action:?}");
    }
}

#[tokio::test]
async fn a_restarted_operator_whose_cache_has_not_seen_the_take_reads_the_warm_sandbox_first() {
    // The take and its record happened before a restart; the new process remembers no move
    // and its cache shows the warm sandbox as not taken: it reads it, then moves.
    let mut s = taker(Some(warm_record()));
    s.metadata.resource_version = Some("2".into());
    let mut steps = vec![
        Step::get(format!("{SANDBOXES}/{WARM}"))
            .respond(200, warm_json(json!({CLAIMED_BY_ANNOTATION: TAKER_UID}))),
    ];
    steps.extend(moves_and_delete());
    let (_, seen, _) = passes(cached(json!({})), vec![s.clone()], steps).await;
    assert_eq!(seen[0].method, Method::GET);
}

#[tokio::test]
async fn a_restarted_operator_whose_cache_shows_the_take_moves_without_reading() {
    let mut s = taker(Some(warm_record()));
    s.metadata.resource_version = Some("2".into());
    let (_, seen, _) = passes(
        cached(json!({CLAIMED_BY_ANNOTATION: TAKER_UID})),
        vec![s],
        moves_and_delete(),
    )
    .await;
    assert_eq!(seen.len(), 4);
}

#[tokio::test]
async fn a_pool_being_deleted_hands_out_no_warm_sandbox() {
    let mut cache = cached(json!({}));
    cache.pools[0].metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-01-01T00:00:00Z".parse().expect("time"),
        ));
    cache.pools[0].metadata.finalizers = Some(vec!["foregroundDeletion".into()]);
    // No take: the sandbox records a cold start (then runs its normal pass, not scripted here).
    let steps = vec![
        Step::apply(format!("{SANDBOXES}/{TAKER}/status"))
            .check(|s| {
                let pool = &s.body["status"]["pool"];
                assert_eq!(pool["start"], "Cold", "{}", s.body);
            })
            .respond(
                500,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": "stop here", "reason": "InternalError", "code": 500}),
            ),
    ];
    let (client, handle) = mock_client();
    let ctx = context(client, cache, OptionalCrds::default());
    let verifier = tokio::spawn(serve(handle, steps));
    let result = reconcile(Arc::new(taker(None)), ctx.clone()).await;
    assert!(result.is_err(), "the scripted status write fails");
    drop(ctx);
    let seen = join(verifier).await;
    assert!(
        !seen.iter().any(|s| s.path.ends_with(WARM)),
        "the warm sandbox is not taken: {:?}",
        seen.iter().map(Seen::describe).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_take_is_not_recorded_over_a_newer_sandbox_and_nothing_moves() {
    // The server has a newer taker than the cache (a start recorded since, say): the record is
    // refused and the pass looks again soon, moving nothing.
    let mut steps = take_steps();
    steps[1] = Step::apply(format!("{SANDBOXES}/{TAKER}/status")).fail(409, "Conflict");
    let (actions, seen, _) = passes(cached(json!({})), vec![taker(None)], steps).await;
    assert_eq!(actions[0], Action::requeue(Duration::from_millis(200)));
    assert_eq!(
        seen.len(),
        2,
        "{:?}",
        seen.iter().map(Seen::describe).collect::<Vec<_>>()
    );
}

/// Runs one pass of `s` against `steps`, whatever it returns; every request.
async fn one_pass(
    cache: Cached,
    s: AgentSandbox,
    steps: Vec<Step>,
) -> (Result<Action, palisade::reconcile::Error>, Vec<Seen>) {
    let (client, handle) = mock_client();
    let ctx = context(client, cache, OptionalCrds::default());
    let verifier = tokio::spawn(serve(handle, steps));
    let result = tokio::time::timeout(Duration::from_secs(20), reconcile(Arc::new(s), ctx.clone()))
        .await
        .expect("reconcile timed out");
    drop(ctx);
    (result, join(verifier).await)
}

/// Takes that lose, `n` times: the warm sandbox changed (409) and, read again, another
/// sandbox has it. Which warm sandboxes are tried first depends on the taker's UID.
fn lost_takes(n: usize) -> Vec<Step> {
    (0..n)
        .flat_map(|_| {
            [
                Step::new(Method::PATCH, format!("{SANDBOXES}/pool-w"))
                    .any_under()
                    .fail(409, "Conflict"),
                Step::get(format!("{SANDBOXES}/pool-w"))
                    .any_under()
                    .respond(
                        200,
                        warm_json(json!({CLAIMED_BY_ANNOTATION: "someone-else"})),
                    ),
            ]
        })
        .collect()
}

/// The caches with `n` fit warm sandboxes (pool-w1 … pool-wn).
fn cached_with_warm(n: usize) -> Cached {
    let mut cache = cached(json!({}));
    for i in 2..=n {
        let mut more = warm(json!({}));
        more.metadata.name = Some(format!("pool-w{i}"));
        more.metadata.uid = Some(format!("warm-uid-{i}"));
        cache.sandboxes.push(more);
    }
    cache
}

#[tokio::test]
async fn a_young_sandbox_that_lost_every_try_looks_again_while_untried_warm_sandboxes_remain() {
    // Six fit in the cache, five tried and lost; created just now (no creationTimestamp reads
    // as now): no cold start is recorded, the pass looks again soon with a fresher cache.
    let (result, seen) = one_pass(cached_with_warm(6), taker(None), lost_takes(5)).await;
    let tried: std::collections::BTreeSet<&str> = seen
        .iter()
        .filter(|s| s.method == Method::PATCH)
        .map(|s| s.path.as_str())
        .collect();
    assert_eq!(
        tried.len(),
        5,
        "five different warm sandboxes tried: {tried:?}"
    );
    let action = result.expect("the pass succeeds");
    assert!(
        (200..=400).any(|ms| action == Action::requeue(Duration::from_millis(ms))),
        "{action:?}"
    );
    assert!(
        !seen.iter().any(|s| s.path.ends_with("/status")),
        "nothing recorded: {:?}",
        seen.iter().map(Seen::describe).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_sandbox_that_lost_every_warm_sandbox_the_cache_shows_starts_cold_at_once() {
    // One fit in the cache, tried and lost: nothing untried is left, so it starts cold now.
    let mut steps = lost_takes(1);
    steps.push(
        Step::apply(format!("{SANDBOXES}/{TAKER}/status"))
            .check(|s| {
                assert_eq!(s.body["status"]["pool"]["start"], "Cold", "{}", s.body);
            })
            .fail(500, "InternalError"),
    );
    let (result, seen) = one_pass(cached(json!({})), taker(None), steps).await;
    assert!(result.is_err(), "the scripted status write fails");
    assert_eq!(seen.len(), 3);
}

#[tokio::test]
async fn an_older_sandbox_that_lost_every_warm_sandbox_starts_cold() {
    let mut s = taker(None);
    s.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::now() - jiff::SignedDuration::from_secs(30),
    ));
    let mut steps = lost_takes(5);
    steps.push(
        Step::apply(format!("{SANDBOXES}/{TAKER}/status"))
            .check(|s| {
                let pool = &s.body["status"]["pool"];
                assert_eq!(pool["start"], "Cold", "{}", s.body);
            })
            .fail(500, "InternalError"),
    );
    let (result, seen) = one_pass(cached_with_warm(6), s, steps).await;
    assert!(result.is_err(), "the scripted status write fails");
    assert_eq!(seen.len(), 11);
}

#[tokio::test]
async fn a_move_the_api_server_refuses_is_said_in_status_and_retried() {
    // The take and its record succeed; moving the pod is refused (permissions): the sandbox's
    // status says so (Stalled: only a person can fix it) and the pass fails for a retry.
    let mut steps = take_steps();
    steps.push(
        Step::new(Method::PATCH, format!("/api/v1/namespaces/ns/pods/{WARM}"))
            .fail(403, "Forbidden"),
    );
    steps.push(
        Step::apply(format!("{SANDBOXES}/{TAKER}/status"))
            .check(|s| {
                let st = &s.body["status"];
                assert_eq!(st["pool"]["start"], "Warm", "status.pool kept: {st}");
                let stalled = st["conditions"]
                    .as_array()
                    .and_then(|c| c.iter().find(|c| c["type"] == "Stalled"))
                    .cloned()
                    .unwrap_or_default();
                assert_eq!(stalled["status"], "True", "{st}");
                assert_eq!(stalled["reason"], "Forbidden", "{st}");
                assert!(
                    st["message"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("could not move the taken warm sandbox's children"),
                    "{st}"
                );
                assert_eq!(
                    s.body["metadata"]["resourceVersion"], "2",
                    "on the sandbox as the take recorded it"
                );
            })
            .reply_with(|s| {
                let mut v = serde_json::to_value(taker(None)).expect("taker json");
                v["status"] = s.body["status"].clone();
                v["metadata"]["resourceVersion"] = json!("3");
                (200, v)
            }),
    );
    let (result, seen) = one_pass(cached(json!({})), taker(None), steps).await;
    let error = result.expect_err("the pass fails for a retry with backoff");
    assert_eq!(error.reason(), "Forbidden");
    assert_eq!(
        seen.len(),
        4,
        "{:?}",
        seen.iter().map(Seen::describe).collect::<Vec<_>>()
    );
}
