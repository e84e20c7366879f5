//! Pools against a real API server with the shared operator (simulated nodes): warm sandboxes
//! are complete sandboxes, a sandbox of a pool takes one without recreating anything, two
//! sandboxes never take the same one, template changes roll only the warm ones, a pool's
//! deletion leaves its sandboxes alone, the scale subresource works, and waiting has a deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, ResourceQuota, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use palisade::api::sandbox::PoolStart;
use palisade::api::{AgentSandbox, AgentSandboxPool, SandboxPhase};
use palisade_e2e::sandboxes::{
    WAIT, apply_policy, apply_sandbox, basic_sandbox, setup, wait_phase,
};
use palisade_e2e::{apply_palisade, unique, wait_for, wait_warning};
use serde_json::{Value, json};

const POOL_LABEL: &str = "palisade.dev/pool";
const HASH_LABEL: &str = "palisade.dev/template-hash";

fn pool_spec(replicas: i32, template: Value) -> Value {
    json!({"replicas": replicas, "template": template})
}

fn claim(pool: &str) -> Value {
    json!({"poolRef": {"name": pool}})
}

async fn pool_status(client: &Client, ns: &str, name: &str) -> Option<AgentSandboxPool> {
    Api::<AgentSandboxPool>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .ok()
        .flatten()
}

/// Waits until the pool reports `ready` ready warm sandboxes of its current template, and
/// returns the warm sandboxes (name → UID).
async fn wait_ready(client: &Client, ns: &str, pool: &str, ready: i32) -> BTreeMap<String, String> {
    wait_for(
        &format!("pool {ns}/{pool} with {ready} ready"),
        WAIT * 2,
        || async {
            let p = pool_status(client, ns, pool).await?;
            let st = p.status.clone()?;
            (st.ready_replicas == ready
                && st.replicas == ready
                && st.observed_generation == p.metadata.generation)
                .then_some(())
        },
    )
    .await;
    warm_of(client, ns, pool).await
}

/// The pool's warm sandboxes not taken (name → UID).
async fn warm_of(client: &Client, ns: &str, pool: &str) -> BTreeMap<String, String> {
    Api::<AgentSandbox>::namespaced(client.clone(), ns)
        .list(&kube::api::ListParams::default().labels(&format!("{POOL_LABEL}={pool}")))
        .await
        .expect("list warm sandboxes")
        .items
        .into_iter()
        .filter(|s| {
            s.meta().deletion_timestamp.is_none()
                && !s.annotations().contains_key("palisade.dev/claimed-by")
        })
        .map(|s| (s.name_any(), s.uid().unwrap_or_default()))
        .collect()
}

fn controller_uid<K: Resource>(obj: &K) -> Option<String> {
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.clone())
}

#[tokio::test]
async fn a_sandbox_takes_a_ready_warm_sandbox_without_recreating_it_and_the_pool_refills() {
    let ns = &unique("pool-take");
    let client = setup(ns).await;
    apply_policy(&client, ns, "p", json!({"network": {"dns": "none"}})).await;
    apply_palisade::<AgentSandboxPool>(&client, ns, "warm", pool_spec(2, basic_sandbox("p"))).await;
    let warm = wait_ready(&client, ns, "warm", 2).await;
    assert_eq!(warm.len(), 2);
    // Each warm sandbox is a complete sandbox: its own ServiceAccount and NetworkPolicy, and a
    // pod behind them, on the policy's RuntimeClass.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut pod_uids = BTreeMap::new();
    for (name, uid) in &warm {
        let pod = pods.get(name).await.expect("warm pod");
        assert_eq!(controller_uid(&pod).as_deref(), Some(uid.as_str()));
        assert_eq!(
            pod.spec
                .as_ref()
                .and_then(|s| s.runtime_class_name.as_deref()),
            Some("gvisor")
        );
        pod_uids.insert(name.clone(), pod.uid().unwrap_or_default());
    }
    let nps: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let mut child_uids = BTreeMap::new();
    for name in warm.keys() {
        let np = nps
            .get(&format!("{name}-isolation"))
            .await
            .expect("warm network policy");
        let sa = sas
            .get(&format!("palisade-{name}"))
            .await
            .expect("warm service account");
        child_uids.insert(name.clone(), (np.uid(), sa.uid()));
    }

    apply_sandbox(&client, ns, "task", claim("warm")).await;
    let s = wait_phase(&client, ns, "task", SandboxPhase::Running).await;
    let task_uid = s.uid().expect("uid");
    let st = s.status.clone().expect("status");
    let recorded = st.pool.clone().expect("status.pool");
    assert_eq!(recorded.start, PoolStart::Warm, "{recorded:?}");
    let instance = recorded.instance.clone().expect("instance");
    assert!(
        warm.contains_key(&instance),
        "{instance} is not one of {warm:?}"
    );
    assert_eq!(st.pod_name.as_deref(), Some(instance.as_str()));
    assert_eq!(s.policy_name(), "p");
    // The same pod, now controlled by the sandbox, as are its NetworkPolicy and ServiceAccount.
    let pod = pods.get(&instance).await.expect("pod");
    assert_eq!(
        pod.uid(),
        pod_uids.get(&instance).cloned(),
        "the pod was recreated"
    );
    assert_eq!(controller_uid(&pod).as_deref(), Some(task_uid.as_str()));
    let np = Api::<NetworkPolicy>::namespaced(client.clone(), ns)
        .get(&format!("{instance}-isolation"))
        .await
        .expect("network policy");
    assert_eq!(controller_uid(&np).as_deref(), Some(task_uid.as_str()));
    let sa = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .get(&format!("palisade-{instance}"))
        .await
        .expect("service account");
    assert_eq!(controller_uid(&sa).as_deref(), Some(task_uid.as_str()));
    assert_eq!(
        Some(&(np.uid(), sa.uid())),
        child_uids.get(&instance),
        "the NetworkPolicy or ServiceAccount was recreated"
    );
    // The emptied warm sandbox is gone; the pool is back to two ready, one of them new.
    let sandboxes: Api<AgentSandbox> = Api::namespaced(client.clone(), ns);
    wait_for("the taken warm sandbox deleted", WAIT, || async {
        sandboxes
            .get_opt(&instance)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let refilled = wait_ready(&client, ns, "warm", 2).await;
    assert!(!refilled.contains_key(&instance));
    assert_eq!(refilled.keys().filter(|k| warm.contains_key(*k)).count(), 1);
    // The pod kept running through all this.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pod = pods.get(&instance).await.expect("pod");
    assert_eq!(pod.uid(), pod_uids.get(&instance).cloned());
    assert!(pod.metadata.deletion_timestamp.is_none());
}

#[tokio::test]
async fn a_warm_sandbox_deleted_by_hand_is_replaced_without_waiting_for_the_resync() {
    let ns = &unique("pool-gone");
    let client = setup(ns).await;
    apply_policy(&client, ns, "p", json!({"network": {"dns": "none"}})).await;
    apply_palisade::<AgentSandboxPool>(&client, ns, "warm", pool_spec(2, basic_sandbox("p"))).await;
    let warm = wait_ready(&client, ns, "warm", 2).await;
    let gone = warm.keys().next().expect("a warm sandbox").clone();
    // Deleted at once (no finalizer holds a sandbox): the watch's Delete event is all the
    // operator hears of it.
    Api::<AgentSandbox>::namespaced(client.clone(), ns)
        .delete(&gone, &DeleteParams::default())
        .await
        .expect("delete a warm sandbox");
    // The pool's last pass was when it became Ready, just before; its resync would come 30 s
    // after that. Half of it is far more than the deletion's own wake needs (under a second).
    wait_for(
        "a replacement for the deleted warm sandbox",
        Duration::from_secs(15),
        || async {
            let now = warm_of(&client, ns, "warm").await;
            (now.len() == 2 && !now.contains_key(&gone)).then_some(())
        },
    )
    .await;
    let refilled = wait_ready(&client, ns, "warm", 2).await;
    assert!(!refilled.contains_key(&gone), "{refilled:?}");
}

#[tokio::test]
async fn concurrent_sandboxes_never_take_the_same_warm_sandbox() {
    let ns = &unique("pool-race");
    let client = setup(ns).await;
    apply_policy(&client, ns, "p", json!({"network": {"dns": "none"}})).await;
    apply_palisade::<AgentSandboxPool>(&client, ns, "warm", pool_spec(20, basic_sandbox("p")))
        .await;
    let warm = wait_ready(&client, ns, "warm", 20).await;
    // No pod beyond the 20 warm ones while the sandboxes choose: refills cannot become ready
    // during the burst, so exactly 20 can start warm.
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), ns);
    let quota: ResourceQuota = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "hold"},
        "spec": {"hard": {"pods": "20"}}
    }))
    .expect("quota");
    quotas
        .create(&Default::default(), &quota)
        .await
        .expect("create the quota");
    wait_for("the quota to count the warm pods", WAIT, || async {
        let q = quotas.get("hold").await.ok()?;
        let used = q.status?.used?;
        (used.get("pods")?.0 == "20").then_some(())
    })
    .await;
    let names: Vec<String> = (0..50).map(|i| format!("task-{i}")).collect();
    futures::future::join_all(
        names
            .iter()
            .map(|n| apply_sandbox(&client, ns, n, claim("warm"))),
    )
    .await;
    let sandboxes_api: Api<AgentSandbox> = Api::namespaced(client.clone(), ns);
    for n in &names {
        wait_for(&format!("{n} to record how it starts"), WAIT, || async {
            let s = sandboxes_api.get(n).await.ok()?;
            s.status?.pool.map(|_| ())
        })
        .await;
    }
    quotas
        .delete("hold", &DeleteParams::default())
        .await
        .expect("lift the quota");
    let mut instances = BTreeMap::new();
    let (mut warm_starts, mut cold_starts) = (0, 0);
    for n in &names {
        let s = wait_phase(&client, ns, n, SandboxPhase::Running).await;
        let recorded = s
            .status
            .clone()
            .and_then(|st| st.pool)
            .expect("status.pool");
        match recorded.start {
            PoolStart::Warm => {
                warm_starts += 1;
                let instance = recorded.instance.expect("instance");
                if let Some(other) = instances.insert(instance.clone(), n.clone()) {
                    panic!("{instance} was taken by both {other} and {n}");
                }
            }
            PoolStart::Cold => cold_starts += 1,
        }
    }
    println!("50 sandboxes against 20 warm: {warm_starts} warm, {cold_starts} cold");
    assert_eq!((warm_starts, cold_starts), (20, 30));
    // Every warm sandbox that was ready was taken, by exactly one sandbox.
    for name in warm.keys() {
        assert!(instances.contains_key(name), "{name} was never taken");
    }
    // No pod is controlled by two sandboxes, and each sandbox has exactly one pod.
    let sandboxes: BTreeMap<String, String> = Api::<AgentSandbox>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .expect("sandboxes")
        .items
        .into_iter()
        .filter(|s| names.contains(&s.name_any()))
        .map(|s| (s.uid().unwrap_or_default(), s.name_any()))
        .collect();
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .expect("pods")
        .items;
    let mut owners = BTreeMap::<String, usize>::new();
    for p in &pods {
        if let Some(uid) = controller_uid(p).filter(|u| sandboxes.contains_key(u)) {
            *owners.entry(uid).or_default() += 1;
        }
    }
    assert_eq!(owners.len(), 50, "every sandbox has its pod");
    assert!(owners.values().all(|&n| n == 1), "{owners:?}");
}

#[tokio::test]
async fn a_template_change_replaces_the_warm_sandboxes_and_leaves_taken_ones() {
    let ns = &unique("pool-roll");
    let client = setup(ns).await;
    apply_policy(&client, ns, "p", json!({"network": {"dns": "none"}})).await;
    apply_palisade::<AgentSandboxPool>(&client, ns, "warm", pool_spec(2, basic_sandbox("p"))).await;
    let old = wait_ready(&client, ns, "warm", 2).await;
    apply_sandbox(&client, ns, "task", claim("warm")).await;
    let s = wait_phase(&client, ns, "task", SandboxPhase::Running).await;
    let recorded = s
        .status
        .clone()
        .and_then(|st| st.pool)
        .expect("status.pool");
    assert_eq!(recorded.start, PoolStart::Warm);
    let instance = recorded.instance.clone().expect("instance");
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod_uid = pods.get(&instance).await.expect("pod").uid();

    // While the warm sandboxes roll, the pool never has more than replicas + surge (2 + 1)
    // of them, the old ones still leaving included.
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = tokio::spawn({
        let api = Api::<AgentSandbox>::namespaced(client.clone(), ns);
        let watching = watching.clone();
        async move {
            let mut most = 0;
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                let lp = kube::api::ListParams::default().labels(&format!("{POOL_LABEL}=warm"));
                if let Ok(list) = api.list(&lp).await {
                    let untaken = list
                        .items
                        .iter()
                        .filter(|s| !s.annotations().contains_key("palisade.dev/claimed-by"))
                        .count();
                    most = most.max(untaken);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            most
        }
    });
    let mut template = basic_sandbox("p");
    template["args"] = json!(["--v2"]);
    apply_palisade::<AgentSandboxPool>(&client, ns, "warm", pool_spec(2, template)).await;
    let new = wait_for(
        "two ready warm sandboxes of the new template",
        WAIT * 2,
        || async {
            let p = pool_status(&client, ns, "warm").await?;
            let st = p.status.clone()?;
            let hash = st.template_hash.clone()?;
            let warm: Vec<AgentSandbox> = Api::<AgentSandbox>::namespaced(client.clone(), ns)
                .list(&kube::api::ListParams::default().labels(&format!("{POOL_LABEL}=warm")))
                .await
                .ok()?
                .items;
            let all_new = warm
                .iter()
                .all(|w| w.labels().get(HASH_LABEL) == Some(&hash));
            (st.ready_replicas == 2
                && st.updated_replicas == 2
                && st.replicas == 2
                && st.observed_generation == p.metadata.generation
                && all_new
                && warm.len() == 2)
                .then(|| warm.iter().map(|w| w.name_any()).collect::<BTreeSet<_>>())
        },
    )
    .await;
    assert!(
        new.iter().all(|n| !old.contains_key(n)),
        "old warm sandboxes remain: {new:?}"
    );
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let most = sampler.await.expect("sampler");
    assert!(most <= 3, "{most} warm sandboxes at once during the roll");
    for n in &new {
        let pod = pods.get(n).await.expect("new warm pod");
        let args = pod
            .spec
            .as_ref()
            .map(|s| s.containers[0].args.clone().unwrap_or_default());
        assert_eq!(args, Some(vec!["--v2".to_string()]));
    }
    // A sandbox that comes now starts from the new template, warm.
    apply_sandbox(&client, ns, "after", claim("warm")).await;
    let after = wait_phase(&client, ns, "after", SandboxPhase::Running).await;
    let after_pool = after.status.and_then(|st| st.pool).expect("status.pool");
    assert_ne!(after_pool.template_hash, recorded.template_hash);
    assert_eq!(after_pool.start, PoolStart::Warm);
    assert!(new.contains(after_pool.instance.as_deref().unwrap_or_default()));
    // The taken one is untouched: same pod, its recorded template, Running.
    let s = wait_phase(&client, ns, "task", SandboxPhase::Running).await;
    assert_eq!(
        s.status.and_then(|st| st.pool).map(|p| p.template_hash),
        Some(recorded.template_hash)
    );
    assert_eq!(pods.get(&instance).await.expect("pod").uid(), pod_uid);
}

#[tokio::test]
async fn deleting_a_pool_leaves_its_sandboxes_running() {
    let ns = &unique("pool-delete");
    let client = setup(ns).await;
    apply_policy(&client, ns, "p", json!({"network": {"dns": "none"}})).await;
    apply_palisade::<AgentSandboxPool>(&client, ns, "warm", pool_spec(1, basic_sandbox("p"))).await;
    wait_ready(&client, ns, "warm", 1).await;
    apply_sandbox(&client, ns, "hot", claim("warm")).await;
    // Fields beyond the template: a cold start, from the template, named after the sandbox.
    let mut custom = claim("warm");
    custom["env"] = json!([{"name": "TASK", "value": "7"}]);
    apply_sandbox(&client, ns, "cold", custom).await;
    let hot = wait_phase(&client, ns, "hot", SandboxPhase::Running).await;
    let cold = wait_phase(&client, ns, "cold", SandboxPhase::Running).await;
    let hot_pool = hot.status.clone().and_then(|s| s.pool).expect("pool");
    assert_eq!(hot_pool.start, PoolStart::Warm);
    let cold_pool = cold.status.clone().and_then(|s| s.pool).expect("pool");
    assert_eq!(cold_pool.start, PoolStart::Cold);
    assert!(
        cold_pool
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("env")),
        "{cold_pool:?}"
    );
    assert_eq!(
        cold.status.clone().and_then(|s| s.pod_name).as_deref(),
        Some("cold")
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let hot_pod = hot_pool.instance.clone().expect("instance");
    let uids = (
        pods.get(&hot_pod).await.expect("hot pod").uid(),
        pods.get("cold").await.expect("cold pod").uid(),
    );

    Api::<AgentSandboxPool>::namespaced(client.clone(), ns)
        .delete("warm", &DeleteParams::foreground())
        .await
        .expect("delete pool");
    wait_for("the pool and its warm sandboxes gone", WAIT, || async {
        let gone = pool_status(&client, ns, "warm").await.is_none();
        (gone && warm_of(&client, ns, "warm").await.is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for name in ["hot", "cold"] {
        wait_phase(&client, ns, name, SandboxPhase::Running).await;
    }
    assert_eq!(
        (
            pods.get(&hot_pod).await.expect("hot pod").uid(),
            pods.get("cold").await.expect("cold pod").uid()
        ),
        uids
    );
}

#[tokio::test]
async fn the_scale_subresource_sets_the_warm_count() {
    let ns = &unique("pool-scale");
    let client = setup(ns).await;
    apply_policy(&client, ns, "p", json!({"network": {"dns": "none"}})).await;
    apply_palisade::<AgentSandboxPool>(&client, ns, "warm", pool_spec(1, basic_sandbox("p"))).await;
    wait_ready(&client, ns, "warm", 1).await;
    let pools: Api<AgentSandboxPool> = Api::namespaced(client.clone(), ns);
    // What `kubectl scale --replicas=3` sends.
    pools
        .patch_scale(
            "warm",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .expect("scale");
    assert_eq!(wait_ready(&client, ns, "warm", 3).await.len(), 3);
    let scale = pools.get_scale("warm").await.expect("scale");
    assert_eq!(scale.status.as_ref().map(|s| s.replicas), Some(3));
    assert_eq!(
        scale.status.and_then(|s| s.selector).as_deref(),
        Some("palisade.dev/pool=warm")
    );
    pools
        .patch_scale(
            "warm",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await
        .expect("scale to 0");
    wait_for("no warm sandbox left", WAIT, || async {
        warm_of(&client, ns, "warm").await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn waiting_for_an_empty_pool_fails_at_the_deadline_and_a_missing_pool_blocks() {
    let ns = &unique("pool-wait");
    let client = setup(ns).await;
    apply_policy(&client, ns, "p", json!({"network": {"dns": "none"}})).await;
    // A pool that does not exist yet: blocked with the reason, started once it exists.
    apply_sandbox(&client, ns, "early", claim("later")).await;
    let s = wait_phase(&client, ns, "early", SandboxPhase::Blocked).await;
    assert!(
        s.status
            .as_ref()
            .and_then(|st| st.message.as_deref())
            .is_some_and(|m| m.contains("later")),
        "{:?}",
        s.status
    );
    apply_palisade::<AgentSandboxPool>(&client, ns, "later", pool_spec(0, basic_sandbox("p")))
        .await;
    let s = wait_phase(&client, ns, "early", SandboxPhase::Running).await;
    assert_eq!(
        s.status.and_then(|st| st.pool).map(|p| p.start),
        Some(PoolStart::Cold)
    );

    // An empty pool and whenEmpty: Wait: failed at the deadline, no pod ever created.
    apply_palisade::<AgentSandboxPool>(&client, ns, "empty", pool_spec(0, basic_sandbox("p")))
        .await;
    let mut waiting = claim("empty");
    waiting["pool"] = json!({"whenEmpty": "Wait", "waitSeconds": 3});
    apply_sandbox(&client, ns, "patient", waiting).await;
    let s = wait_phase(&client, ns, "patient", SandboxPhase::Failed).await;
    let message = s
        .status
        .as_ref()
        .and_then(|st| st.message.clone())
        .unwrap_or_default();
    assert!(message.contains("within 3 s"), "{message}");
    assert!(
        s.status
            .as_ref()
            .is_some_and(|st| st.conditions.iter().any(|c| c.reason == "PoolExhausted")),
        "{:?}",
        s.status
    );
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .expect("pods");
    assert!(pods.items.iter().all(|p| p.name_any() != "patient"));
    // Only the operator marks a warm sandbox taken or writes status.pool (the chart's
    // admission policy): a person cannot.
    let sandboxes: Api<AgentSandbox> = Api::namespaced(client.clone(), ns);
    let forged = sandboxes
        .patch(
            "early",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"palisade.dev/claimed-by": "someone"}}}),
            ),
        )
        .await;
    assert!(
        forged.is_err(),
        "a claimed-by annotation was accepted from a person"
    );
    let forged = sandboxes
        .patch_status(
            "early",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"pool": {"instance": "other"}}})),
        )
        .await;
    assert!(
        forged.is_err(),
        "a status.pool change was accepted from a person"
    );
}

#[tokio::test]
async fn a_pool_whose_warm_pods_a_quota_refuses_is_stalled_with_the_reason_and_an_event() {
    let ns = &unique("pool-stall");
    let client = setup(ns).await;
    apply_policy(&client, ns, "p", json!({"network": {"dns": "none"}})).await;
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), ns);
    let quota: ResourceQuota = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-pods"},
        "spec": {"hard": {"pods": "0"}}
    }))
    .expect("quota");
    quotas
        .create(&Default::default(), &quota)
        .await
        .expect("create the quota");
    wait_for("the quota to be counted", WAIT, || async {
        quotas.get("no-pods").await.ok()?.status?.hard.map(|_| ())
    })
    .await;
    apply_palisade::<AgentSandboxPool>(&client, ns, "held", pool_spec(1, basic_sandbox("p"))).await;
    let stalled = wait_for("the pool Stalled by the quota", WAIT * 2, || async {
        let p = pool_status(&client, ns, "held").await?;
        let c = p
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Stalled" && c.status == "True")?;
        Some(c)
    })
    .await;
    assert_eq!(stalled.reason, "WarmSandboxBlocked");
    assert!(
        stalled.message.contains("QuotaExceeded"),
        "{}",
        stalled.message
    );
    wait_warning(
        &client,
        ns,
        ("AgentSandboxPool", "held"),
        "WarmSandboxBlocked",
        WAIT,
    )
    .await;
    // Lifted: the warm sandbox starts (retried with backoff) and the pool becomes Ready.
    quotas
        .delete("no-pods", &DeleteParams::default())
        .await
        .expect("lift the quota");
    wait_for(
        "the pool Ready once the quota is lifted",
        Duration::from_secs(150),
        || async {
            let p = pool_status(&client, ns, "held").await?;
            p.status?
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(())
        },
    )
    .await;
}
