//! High availability: the operator killed mid-way converges without duplicates once restarted;
//! restarts, a leader failover and a "CRDs first" upgrade replace no running pod; and of two
//! replicas with leader election exactly one reconciles and the other takes over.
//!
//! These tests start their own operators (`PALISADE_BIN`, default target/debug/palisade), each
//! scoped to its test namespace and holding its Lease there, so they must run while no other
//! operator watches all namespaces (e2e/run.sh runs them after stopping the shared one).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use palisade::api::{AgentPolicy, AgentSandbox, SandboxPhase};
use palisade_e2e::operator::{self, Operator, Options};
use palisade_e2e::{MANAGER, apply_palisade, client, install_crds, restricted_namespace, wait_for};
use serde_json::json;

async fn setup(ns: &str) -> Client {
    let client = client().await;
    install_crds(&client).await;
    operator::gvisor_runtime_class(&client).await;
    operator::delete_namespace_and_wait(&client, ns, Duration::from_secs(120)).await;
    restricted_namespace(&client, ns).await;
    operator::reset_lease(&client, ns).await;
    apply_palisade::<AgentPolicy>(&client, ns, "p", json!({"network": {"dns": "none"}})).await;
    // No operator has seen it yet: the CRD's status default says so (observedGeneration 0 is
    // not the generation), which kstatus and GitOps tools read as in progress, not current.
    let fresh = Api::<AgentPolicy>::namespaced(client.clone(), ns)
        .get("p")
        .await
        .expect("get policy");
    assert_eq!(
        fresh.status.and_then(|s| s.observed_generation),
        Some(0),
        "a policy no operator has seen should read status.observedGeneration 0"
    );
    client
}

async fn apply_sandbox(api: &Api<AgentSandbox>, name: &str) {
    let body = operator::small_sandbox(name, "p");
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .unwrap_or_else(|e| panic!("apply sandbox {name}: {e}"));
}

fn opts(name: &str, ns: &str, identity: &str) -> Options {
    let (lease_namespace, lease_name) = operator::lease_of(ns);
    Options {
        name: name.into(),
        namespace: Some(ns.into()),
        lease_namespace: Some(lease_namespace),
        lease_name: Some(lease_name),
        identity: Some(identity.into()),
        concurrency: None,
        args: Vec::new(),
    }
}

async fn running_count(api: &Api<AgentSandbox>) -> Option<usize> {
    let list = api.list(&ListParams::default()).await.ok()?;
    Some(
        list.items
            .iter()
            .filter(|s| s.status.as_ref().and_then(|st| st.phase) == Some(SandboxPhase::Running))
            .count(),
    )
}

async fn wait_running(api: &Api<AgentSandbox>, name: &str, timeout: Duration) {
    wait_for(&format!("sandbox {name} Running"), timeout, || async move {
        let s = api.get(name).await.ok()?;
        (s.status.as_ref()?.phase == Some(SandboxPhase::Running)).then_some(())
    })
    .await;
}

/// Checks that `objects` are exactly one per sandbox, named `name_of(sandbox)`, each controlled
/// by that sandbox.
fn assert_one_each(
    kind: &str,
    objects: &[ObjectMeta],
    sandboxes: &BTreeMap<String, String>,
    name_of: impl Fn(&str) -> String,
) {
    assert_eq!(
        objects.len(),
        sandboxes.len(),
        "{kind}s: expected exactly one per sandbox, found {}",
        objects.len()
    );
    let by_name: BTreeMap<&str, &ObjectMeta> = objects
        .iter()
        .map(|m| (m.name.as_deref().unwrap_or_default(), m))
        .collect();
    for (sandbox, uid) in sandboxes {
        let want = name_of(sandbox);
        let meta = by_name
            .get(want.as_str())
            .unwrap_or_else(|| panic!("no {kind} {want} for sandbox {sandbox}"));
        let controllers: Vec<_> = meta
            .owner_references
            .iter()
            .flatten()
            .filter(|o| o.controller == Some(true))
            .collect();
        assert_eq!(
            controllers.len(),
            1,
            "{kind} {want}: expected one controller"
        );
        assert_eq!(controllers[0].kind, "AgentSandbox", "{kind} {want}");
        assert_eq!(controllers[0].name, *sandbox, "{kind} {want}");
        assert_eq!(&controllers[0].uid, uid, "{kind} {want}: controller uid");
    }
}

/// Pod UID of every sandbox's pod (by pod name).
async fn pod_uids(client: &Client, ns: &str) -> BTreeMap<String, String> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("pods")
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.name_any(), p.uid().unwrap_or_default()))
        .collect()
}

/// How many of `before`'s pods are gone or were replaced (another UID under the same name).
fn replaced(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> usize {
    before
        .iter()
        .filter(|(name, uid)| after.get(*name) != Some(*uid))
        .count()
}

/// Waits until `op` leads and has reconciled every one of `n` sandboxes at least once, then
/// a little longer for anything it would do next.
async fn settled(op: &mut Operator, client: &Client, ns: &str, identity: &str, n: usize) {
    wait_for(
        &format!("{identity} to lead"),
        Duration::from_secs(60),
        || async {
            (operator::lease_holder(client, ns).await.as_deref() == Some(identity)).then_some(())
        },
    )
    .await;
    let port = op.metrics_port();
    wait_for(
        &format!("{identity} to reconcile the {n} sandboxes"),
        Duration::from_secs(60),
        || async move {
            let done = operator::metric(
                port,
                "palisade_reconcile_total",
                "controller=\"agentsandbox\"",
            )?;
            (done >= n as f64).then_some(())
        },
    )
    .await;
    assert_eq!(
        operator::http_get(port, "/readyz").map(|r| r.0),
        Some(200),
        "a leader that reconciles is ready"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(op.running(), "operator {identity} exited:\n{}", op.tail(30));
}

async fn create_running(client: &Client, ns: &str, n: usize) {
    let sandboxes: Api<AgentSandbox> = Api::namespaced(client.clone(), ns);
    for i in 0..n {
        apply_sandbox(&sandboxes, &format!("s{i:03}")).await;
    }
    wait_for(
        &format!("all {n} sandboxes Running"),
        Duration::from_secs(120),
        || async { (running_count(&sandboxes).await? == n).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn restarts_replace_no_running_pod() {
    // Finding 1: a restarted operator must not decide on caches that have not listed yet.
    const N: usize = 40;
    const RESTARTS: usize = 5;
    const POLICIES_ELSEWHERE: usize = 300;
    let ns = "ha-restarts";
    let client = setup(ns).await;
    // As installed: every namespace watched. Many policies elsewhere make the policy list the
    // slow one, as it is in a busy cluster.
    let side = "ha-restarts-side";
    restricted_namespace(&client, side).await;
    for i in 0..POLICIES_ELSEWHERE {
        apply_palisade::<AgentPolicy>(
            &client,
            side,
            &format!("p{i:03}"),
            json!({"network": {"dns": "none"}}),
        )
        .await;
    }
    let everywhere = |name: &str| Options {
        namespace: None,
        ..opts(name, ns, "restarts")
    };
    let mut op = Operator::start(&everywhere("ha-restarts-0"));
    create_running(&client, ns, N).await;
    settled(&mut op, &client, ns, "restarts", N).await;
    let mut before = pod_uids(&client, ns).await;
    assert_eq!(before.len(), N);
    let mut total = 0;
    for round in 1..=RESTARTS {
        // Alternately a graceful stop (the Lease is released) and a crash (the same identity,
        // as a restarted container keeps it, takes the Lease back at once).
        if round % 2 == 1 {
            let status = op.terminate(Duration::from_secs(30)).await;
            assert!(
                status.success(),
                "exit after SIGTERM: {status}\n{}",
                op.tail(20)
            );
        } else {
            op.kill();
        }
        op.assert_no_panic();
        op = Operator::start(&everywhere(&format!("ha-restarts-{round}")));
        settled(&mut op, &client, ns, "restarts", N).await;
        let after = pod_uids(&client, ns).await;
        let n = replaced(&before, &after);
        eprintln!("restart {round}: {n} of {N} pods replaced");
        total += n;
        before = after;
    }
    eprintln!("pods replaced over {RESTARTS} restarts: {total}");
    assert_eq!(total, 0, "restarts replaced running pods");
    let log = op.log();
    assert!(
        !log.contains("PolicyNotFound"),
        "a restart took the policy for missing"
    );
    op.kill();
    op.assert_no_panic();
    operator::delete_namespace(&client, ns).await;
    operator::delete_namespace(&client, side).await;
}

#[tokio::test]
async fn a_newer_policy_schema_replaces_no_pod() {
    // Finding 11: during a "CRDs first" upgrade, a policy uses a field the running operator
    // does not know. It keeps the sandbox as it is and says so.
    let ns = "ha-upgrade";
    let client = setup(ns).await;
    let mut op = Operator::start(&opts("ha-upgrade-1", ns, "upgrade"));
    create_running(&client, ns, 1).await;
    settled(&mut op, &client, ns, "upgrade", 1).await;
    let before = pod_uids(&client, ns).await;

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut newer =
        palisade_e2e::yaml_documents(&palisade_e2e::root().join("crds/palisade.dev_crds.yaml"))
            .into_iter()
            .find(|d| d["metadata"]["name"] == "agentpolicies.palisade.dev")
            .expect("the AgentPolicy CRD");
    newer["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["futureField"] = json!({"type": "string", "description": "a field of a newer Palisade"});
    crds.patch(
        "agentpolicies.palisade.dev",
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(newer),
    )
    .await
    .expect("a newer CRD");
    let policies: Api<AgentPolicy> = Api::namespaced(client.clone(), ns);
    wait_for(
        "the policy takes the new field",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move {
                let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
                    client,
                    ns,
                    &kube::api::ApiResource::erase::<AgentPolicy>(&()),
                );
                api.patch(
                    "p",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"futureField": "on"}})),
                )
                .await
                .ok()?;
                let p = api.get("p").await.ok()?;
                (p.data["spec"]["futureField"] == "on").then_some(())
            }
        },
    )
    .await;
    // The upgrade restarts the operator, which now lists a policy it cannot read.
    op.terminate(Duration::from_secs(30)).await;
    let mut op = Operator::start(&opts("ha-upgrade-2", ns, "upgrade"));
    let sandboxes: Api<AgentSandbox> = Api::namespaced(client.clone(), ns);
    wait_for(
        "the sandbox reports the unreadable policy",
        Duration::from_secs(60),
        || {
            let sandboxes = sandboxes.clone();
            async move {
                let s = sandboxes.get("s000").await.ok()?;
                s.status?
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "PolicyResolved" && c.reason == "PolicyUnreadable")
                    .then_some(())
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        replaced(&before, &pod_uids(&client, ns).await),
        0,
        "the pod was replaced"
    );

    // The field goes away again (or the operator is upgraded): back to normal, same pod.
    policies
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"futureField": null}})),
        )
        .await
        .expect("remove the field");
    install_crds(&client).await;
    wait_for(
        "the sandbox resolves its policy again",
        Duration::from_secs(60),
        || {
            let sandboxes = sandboxes.clone();
            async move {
                let s = sandboxes.get("s000").await.ok()?;
                s.status?
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "PolicyResolved" && c.status == "True")
                    .then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        replaced(&before, &pod_uids(&client, ns).await),
        0,
        "the pod was replaced"
    );
    op.kill();
    op.assert_no_panic();
    operator::delete_namespace(&client, ns).await;
}

#[tokio::test]
async fn kill_mid_way_then_restart_converges_without_duplicates() {
    const N: usize = 200;
    let ns = "ha-kill";
    let started = Instant::now();
    let client = setup(ns).await;
    let sandboxes: Api<AgentSandbox> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);

    let mut first = Operator::start(&opts("ha-kill-1", ns, "ha-kill-1"));
    // Create the sandboxes from 16 tasks while the operator runs.
    let mut creators = Vec::new();
    for k in 0..16 {
        let api = sandboxes.clone();
        creators.push(tokio::spawn(async move {
            for i in (k..N).step_by(16) {
                apply_sandbox(&api, &format!("s{i:03}")).await;
            }
        }));
    }
    // Kill the operator once some, but not all, pods exist.
    let at_kill = wait_for(
        "the first operator to create some pods",
        Duration::from_secs(60),
        || async {
            let n = pods.list(&ListParams::default()).await.ok()?.items.len();
            (n >= 20).then_some(n)
        },
    )
    .await;
    first.kill();
    assert!(
        at_kill < N,
        "all {N} pods existed before the kill ({at_kill}); the kill was not mid-way"
    );
    for c in creators {
        c.await.expect("create sandboxes");
    }
    let pods_after_kill = pods
        .list(&ListParams::default())
        .await
        .expect("pods")
        .items
        .len();
    eprintln!(
        "killed the first operator with {at_kill} pods ({pods_after_kill} just after) at {:?}",
        started.elapsed()
    );
    assert!(
        pods_after_kill < N,
        "all pods existed when the operator was killed"
    );

    // A new replica (another identity: it waits for the dead one's Lease to expire).
    let mut second = Operator::start(&opts("ha-kill-2", ns, "ha-kill-2"));
    let restarted = Instant::now();
    wait_for(
        &format!("all {N} sandboxes Running"),
        Duration::from_secs(180),
        || async { (running_count(&sandboxes).await? == N).then_some(()) },
    )
    .await;
    eprintln!(
        "all {N} Running {:?} after the restart ({:?} in all)",
        restarted.elapsed(),
        started.elapsed()
    );
    assert_eq!(
        operator::lease_holder(&client, ns).await.as_deref(),
        Some("ha-kill-2")
    );

    let uids: BTreeMap<String, String> = sandboxes
        .list(&ListParams::default())
        .await
        .expect("sandboxes")
        .items
        .iter()
        .map(|s| (s.name_any(), s.uid().unwrap_or_default()))
        .collect();
    assert_eq!(uids.len(), N);
    let pod_list = pods
        .list(&ListParams::default())
        .await
        .expect("pods")
        .items
        .into_iter()
        .map(|p| p.metadata)
        .collect::<Vec<_>>();
    assert_one_each("Pod", &pod_list, &uids, |s| s.to_string());
    let nps = Api::<NetworkPolicy>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("network policies")
        .items
        .into_iter()
        .map(|p| p.metadata)
        .collect::<Vec<_>>();
    assert_one_each("NetworkPolicy", &nps, &uids, |s| format!("{s}-isolation"));
    // The namespace's `default` ServiceAccount belongs to the controller manager.
    let sas = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("service accounts")
        .items
        .into_iter()
        .map(|p| p.metadata)
        .filter(|m| m.name.as_deref() != Some("default"))
        .collect::<Vec<_>>();
    assert_one_each("ServiceAccount", &sas, &uids, |s| format!("palisade-{s}"));

    second.kill();
    first.assert_no_panic();
    second.assert_no_panic();
    operator::delete_namespace(&client, ns).await;
}

#[tokio::test]
async fn two_replicas_elect_one_leader_and_fail_over() {
    let ns = "ha-failover";
    let client = setup(ns).await;
    let sandboxes: Api<AgentSandbox> = Api::namespaced(client.clone(), ns);
    let mut replicas = [
        Operator::start(&opts("ha-replica-a", ns, "replica-a")),
        Operator::start(&opts("ha-replica-b", ns, "replica-b")),
    ];
    let leader = wait_for(
        "a leader in Lease palisade-operator",
        Duration::from_secs(30),
        || async { operator::lease_holder(&client, ns).await },
    )
    .await;
    assert!(
        leader == "replica-a" || leader == "replica-b",
        "unexpected holder {leader}"
    );
    apply_sandbox(&sandboxes, "before").await;
    wait_running(&sandboxes, "before", Duration::from_secs(60)).await;
    for i in 0..40 {
        apply_sandbox(&sandboxes, &format!("s{i:03}")).await;
    }
    wait_for(
        "all 41 sandboxes Running",
        Duration::from_secs(120),
        || async { (running_count(&sandboxes).await? == 41).then_some(()) },
    )
    .await;
    let before_failover = pod_uids(&client, ns).await;
    // The hold is stable: still the same holder a few seconds later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        operator::lease_holder(&client, ns).await.as_deref(),
        Some(leader.as_str()),
        "the Lease changed hands with both replicas up"
    );
    for r in replicas.iter_mut() {
        assert!(r.running(), "a replica exited:\n{}", r.tail(30));
    }

    let (li, fi) = if leader == "replica-a" {
        (0, 1)
    } else {
        (1, 0)
    };
    let follower = if li == 0 { "replica-b" } else { "replica-a" };
    let t = Instant::now();
    let status = replicas[li].terminate(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "leader exited with {status} after SIGTERM:\n{}",
        replicas[li].tail(30)
    );
    eprintln!("leader {leader} stopped {:?} after SIGTERM", t.elapsed());
    wait_for(
        &format!("Lease moving to {follower}"),
        Duration::from_secs(30),
        || async {
            (operator::lease_holder(&client, ns).await.as_deref() == Some(follower)).then_some(())
        },
    )
    .await;
    eprintln!("Lease held by {follower} {:?} after SIGTERM", t.elapsed());
    apply_sandbox(&sandboxes, "after").await;
    wait_running(&sandboxes, "after", Duration::from_secs(60)).await;
    eprintln!(
        "new sandbox Running under {follower} {:?} after SIGTERM",
        t.elapsed()
    );
    settled(&mut replicas[fi], &client, ns, follower, 42).await;
    let n = replaced(&before_failover, &pod_uids(&client, ns).await);
    eprintln!(
        "pods replaced by the failover: {n} of {}",
        before_failover.len()
    );
    assert_eq!(n, 0, "the failover replaced running pods");
    assert!(replicas[fi].running(), "the new leader exited");
    for r in replicas.iter_mut() {
        r.kill();
        r.assert_no_panic();
    }
    operator::delete_namespace(&client, ns).await;
}
