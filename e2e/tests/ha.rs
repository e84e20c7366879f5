//! High availability: the operator killed mid-way converges without duplicates once restarted,
//! and of two replicas with leader election exactly one reconciles and the other takes over.
//!
//! These tests start their own operators (`PALISADE_BIN`, default target/debug/palisade), each
//! scoped to its test namespace and holding its Lease there, so they must run while no other
//! operator watches all namespaces (e2e/run.sh runs them after stopping the shared one).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
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
    assert_one_each("ServiceAccount", &sas, &uids, |s| s.to_string());

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
    assert!(replicas[fi].running(), "the new leader exited");
    for r in replicas.iter_mut() {
        r.kill();
        r.assert_no_panic();
    }
    operator::delete_namespace(&client, ns).await;
}
