//! A running sandbox is never lost, needlessly recreated, or left weaker than its policy, on a
//! real API server with the shared operator (e2e/run.sh): admission additions are not drift,
//! no scheduled pod ever lacks its NetworkPolicy, ownership is read from UIDs, children that
//! leave the plan go, finished agents do not run again, paused time is not run time, and API
//! refusals reach status and events.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, ResourceQuota, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use palisade::api::{AgentSandbox, NETWORK_POLICY_UID_ANNOTATION, SandboxPhase};
use palisade_e2e::sandboxes::{
    WAIT, apply_policy, apply_sandbox, basic_sandbox, condition, live_pod_uid, set_pod_phase_until,
    setup, wait_phase,
};
use palisade_e2e::{apply_cluster, unique, wait_for, wait_warning};
use serde_json::json;

async fn running_pod_uid(client: &Client, ns: &str, name: &str) -> String {
    wait_phase(client, ns, name, SandboxPhase::Running).await;
    live_pod_uid(client, ns, name).await.expect("a running pod")
}

#[tokio::test]
async fn a_runtime_class_that_adds_tolerations_keeps_one_pod() {
    // Finding 2: RuntimeClass admission merges scheduling.tolerations into the pod (as GKE
    // Sandbox's gvisor class does); the operator must not take them for drift.
    let ns = &unique("hard-tolerations");
    let class = unique("gvisor-tolerating");
    let client = setup(ns).await;
    let rc = json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": class},
        "handler": "runsc",
        "scheduling": {"nodeSelector": {"palisade.dev/runtime": "gvisor"},
                       "tolerations": [{"key": "sandbox.palisade.dev/runtime", "operator": "Equal",
                                        "value": "gvisor", "effect": "NoSchedule"}]}});
    apply_cluster::<RuntimeClass>(&client, &class, rc).await;
    apply_policy(
        &client,
        ns,
        "p",
        json!({"isolation": {"runtimeClassName": class}, "network": {"dns": "none"}}),
    )
    .await;
    apply_sandbox(&client, ns, "agent", basic_sandbox("p")).await;
    let uid = running_pod_uid(&client, ns, "agent").await;
    let pod = Api::<Pod>::namespaced(client.clone(), ns)
        .get("agent")
        .await
        .expect("pod");
    let tolerations =
        serde_json::to_string(&pod.spec.as_ref().expect("spec").tolerations).expect("json");
    assert!(
        tolerations.contains("sandbox.palisade.dev/runtime"),
        "admission added the RuntimeClass's toleration: {tolerations}"
    );
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        assert_eq!(
            live_pod_uid(&client, ns, "agent").await.as_deref(),
            Some(uid.as_str()),
            "the pod was replaced after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Api::<RuntimeClass>::all(client.clone())
        .delete(&class, &DeleteParams::default())
        .await
        .expect("delete RuntimeClass");
}

/// A tiny deterministic generator, for "random" moments that a failure can be replayed with.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[tokio::test]
async fn no_scheduled_pod_is_ever_seen_without_its_network_policy() {
    // Finding 5: NetworkPolicies deleted at random moments while sandboxes are created and
    // recreated. A pod is let through its scheduling gate only once its NetworkPolicy was read
    // back, and the NetworkPolicy's finalizer holds it until the pod is gone: so every pod that
    // is scheduled throughout an observation has its NetworkPolicy, the one it was bound to.
    const SANDBOXES: usize = 4;
    let ns = &unique("hard-np-loop");
    let client = setup(ns).await;
    let user = |u: i64| json!({"network": {"dns": "none"}, "privileges": {"runAsUser": u}});
    apply_policy(&client, ns, "p", user(1000)).await;
    for i in 0..SANDBOXES {
        apply_sandbox(&client, ns, &format!("s{i}"), basic_sandbox("p")).await;
    }
    for i in 0..SANDBOXES {
        wait_phase(&client, ns, &format!("s{i}"), SandboxPhase::Running).await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let nps: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7);
    eprintln!("random seed {seed}");

    let run_for = Duration::from_secs(45);
    let deleter = {
        let nps = nps.clone();
        tokio::spawn(async move {
            let mut rng = Lcg(seed);
            let started = Instant::now();
            let mut deleted = 0;
            while started.elapsed() < run_for {
                tokio::time::sleep(Duration::from_millis(200 + rng.below(1200))).await;
                let name = format!("s{}-isolation", rng.below(SANDBOXES as u64));
                if nps.delete(&name, &DeleteParams::default()).await.is_ok() {
                    deleted += 1;
                }
            }
            deleted
        })
    };
    let editor = {
        let client = client.clone();
        let ns = ns.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut u = 1000;
            while started.elapsed() < run_for {
                tokio::time::sleep(Duration::from_secs(4)).await;
                u += 1;
                // A new identity: every pod is recreated.
                apply_policy(&client, &ns, "p", user(u)).await;
            }
        })
    };

    let started = Instant::now();
    let mut checks = 0;
    let mut scheduled_seen = 0;
    let mut pod_uids = std::collections::BTreeSet::new();
    while started.elapsed() < run_for {
        let before = pods.list(&ListParams::default()).await.expect("pods");
        let policies = nps
            .list(&ListParams::default())
            .await
            .expect("network policies");
        let after = pods.list(&ListParams::default()).await.expect("pods");
        let np_uids: BTreeMap<String, String> = policies
            .items
            .iter()
            .map(|np| (np.name_any(), np.uid().unwrap_or_default()))
            .collect();
        let after_uids: std::collections::BTreeSet<String> =
            after.items.iter().filter_map(|p| p.uid()).collect();
        for pod in &before.items {
            let uid = pod.uid().unwrap_or_default();
            let scheduled = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some();
            if !scheduled || !after_uids.contains(&uid) {
                continue;
            }
            scheduled_seen += 1;
            pod_uids.insert(uid.clone());
            let bound = pod.annotations().get(NETWORK_POLICY_UID_ANNOTATION);
            let np = np_uids.get(&format!("{}-isolation", pod.name_any()));
            assert!(
                np.is_some() && np == bound,
                "pod {} ({uid}) was scheduled throughout an observation, but its NetworkPolicy was {np:?} (bound to {bound:?}) — seed {seed}",
                pod.name_any()
            );
        }
        checks += 1;
    }
    let deleted = deleter.await.expect("deleter");
    editor.await.expect("editor");
    eprintln!(
        "{checks} observations, {scheduled_seen} scheduled pods checked, {} distinct pods, {deleted} NetworkPolicies deleted",
        pod_uids.len()
    );
    assert!(deleted >= 15, "only {deleted} NetworkPolicies deleted");
    assert!(
        pod_uids.len() > 2 * SANDBOXES,
        "pods were recreated during the run ({} distinct)",
        pod_uids.len()
    );
    // Once the deletions stop, every sandbox runs again.
    for i in 0..SANDBOXES {
        wait_phase(&client, ns, &format!("s{i}"), SandboxPhase::Running).await;
    }
}

#[tokio::test]
async fn a_network_policy_deleted_without_its_finalizer_gets_the_pod_replaced() {
    // Finding 5: someone strips the finalizer and deletes the NetworkPolicy. The pod that ran
    // without it is replaced by one bound to the recreated NetworkPolicy.
    let ns = &unique("hard-stripped");
    let client = setup(ns).await;
    apply_policy(&client, ns, "p", json!({"network": {"dns": "none"}})).await;
    apply_sandbox(&client, ns, "agent", basic_sandbox("p")).await;
    let old_pod = running_pod_uid(&client, ns, "agent").await;
    let nps: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    let old_np = nps.get("agent-isolation").await.expect("np").uid();
    nps.patch(
        "agent-isolation",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("strip finalizer");
    nps.delete("agent-isolation", &DeleteParams::default())
        .await
        .expect("delete");
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for("a new pod bound to the new NetworkPolicy", WAIT, || {
        let (pods, nps, old_pod, old_np) =
            (pods.clone(), nps.clone(), old_pod.clone(), old_np.clone());
        async move {
            let np = nps.get_opt("agent-isolation").await.ok()??;
            let pod = pods.get_opt("agent").await.ok()??;
            let bound = pod
                .annotations()
                .get(NETWORK_POLICY_UID_ANNOTATION)
                .cloned();
            (np.uid() != old_np && pod.uid() != Some(old_pod) && bound == np.uid()).then_some(())
        }
    })
    .await;
    wait_phase(&client, ns, "agent", SandboxPhase::Running).await;
}

#[tokio::test]
async fn a_relabelled_network_policy_is_still_released() {
    // Finding 9: the release of the finalizer does not depend on labels someone can remove.
    let ns = &unique("hard-relabel");
    let client = setup(ns).await;
    apply_policy(&client, ns, "p", json!({"network": {"dns": "none"}})).await;
    apply_sandbox(&client, ns, "agent", basic_sandbox("p")).await;
    running_pod_uid(&client, ns, "agent").await;
    let nps: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    let old_np = nps.get("agent-isolation").await.expect("np").uid();
    nps.patch(
        "agent-isolation",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": null}})),
    )
    .await
    .expect("remove labels");
    nps.delete("agent-isolation", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for("the NetworkPolicy released and recreated", WAIT, || {
        let (nps, old_np) = (nps.clone(), old_np.clone());
        async move {
            let np = nps.get_opt("agent-isolation").await.ok()??;
            (np.uid() != old_np && np.metadata.deletion_timestamp.is_none()).then_some(())
        }
    })
    .await;
    wait_phase(&client, ns, "agent", SandboxPhase::Running).await;
}

#[tokio::test]
async fn a_forged_network_policy_removes_no_pod() {
    // Finding 9: a NetworkPolicy with another sandbox's owner reference, Palisade's labels and
    // finalizer, deleted: the operator must not remove that sandbox's pod.
    let ns = &unique("hard-forged");
    let client = setup(ns).await;
    apply_policy(&client, ns, "p", json!({"network": {"dns": "none"}})).await;
    apply_sandbox(&client, ns, "victim", basic_sandbox("p")).await;
    let pod_uid = running_pod_uid(&client, ns, "victim").await;
    let victim = Api::<AgentSandbox>::namespaced(client.clone(), ns)
        .get("victim")
        .await
        .expect("sandbox");
    let forged: NetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "forged", "finalizers": ["palisade.dev/isolation"],
            "labels": {"app.kubernetes.io/managed-by": "palisade", "palisade.dev/sandbox": "victim"},
            "ownerReferences": [{"apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox",
                "name": "victim", "uid": victim.uid(), "controller": true}]},
        "spec": {"podSelector": {"matchLabels": {"nothing": "selected"}}, "policyTypes": ["Ingress"]}
    }))
    .expect("forged");
    let nps: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    nps.create(&PostParams::default(), &forged)
        .await
        .expect("create the forged NetworkPolicy");
    nps.delete("forged", &DeleteParams::default())
        .await
        .expect("delete it");
    wait_for("the forged NetworkPolicy released", WAIT, || {
        let nps = nps.clone();
        async move { nps.get_opt("forged").await.ok()?.is_none().then_some(()) }
    })
    .await;
    for _ in 0..10 {
        assert_eq!(
            live_pod_uid(&client, ns, "victim").await.as_deref(),
            Some(pod_uid.as_str()),
            "the victim's pod was removed"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn a_service_that_leaves_the_plan_is_removed() {
    // Finding 3.
    let ns = &unique("hard-prune");
    let client = setup(ns).await;
    apply_policy(&client, ns, "p", json!({"network": {"dns": "none"}})).await;
    let mut with_service = basic_sandbox("p");
    with_service["service"] = json!(true);
    with_service["ports"] = json!([{"containerPort": 8080}]);
    apply_sandbox(&client, ns, "agent", with_service).await;
    let pod_uid = running_pod_uid(&client, ns, "agent").await;
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    services.get("agent").await.expect("the Service");
    let mut without = basic_sandbox("p");
    without["ports"] = json!([{"containerPort": 8080}]);
    apply_sandbox(&client, ns, "agent", without).await;
    wait_for("the Service removed", WAIT, || {
        let services = services.clone();
        async move {
            services
                .get_opt("agent")
                .await
                .ok()?
                .is_none()
                .then_some(())
        }
    })
    .await;
    // The status follows the Service's removal in the same pass, a moment later.
    let sandboxes: Api<AgentSandbox> = Api::namespaced(client.clone(), ns);
    wait_for("serviceFQDN gone from the status", WAIT, || {
        let sandboxes = sandboxes.clone();
        async move {
            let st = sandboxes.get("agent").await.ok()?.status?;
            (st.phase == Some(SandboxPhase::Running) && st.service_fqdn.is_none()).then_some(())
        }
    })
    .await;
    assert_eq!(
        live_pod_uid(&client, ns, "agent").await.as_deref(),
        Some(pod_uid.as_str()),
        "dropping the Service does not recreate the pod"
    );
}

#[tokio::test]
async fn a_finished_agent_does_not_run_again_and_an_evicted_one_does() {
    // Finding 7.
    let ns = &unique("hard-finished");
    let client = setup(ns).await;
    apply_policy(&client, ns, "p", json!({"network": {"dns": "none"}})).await;
    let mut once = basic_sandbox("p");
    once["restartPolicy"] = json!("Never");
    apply_sandbox(&client, ns, "once", once).await;
    apply_sandbox(&client, ns, "service", basic_sandbox("p")).await;
    running_pod_uid(&client, ns, "once").await;
    let evicted = running_pod_uid(&client, ns, "service").await;

    let sandboxes: Api<AgentSandbox> = Api::namespaced(client.clone(), ns);
    set_pod_phase_until(
        &client,
        ns,
        "once",
        "Succeeded",
        None,
        "sandbox once Succeeded",
        || async {
            let s = sandboxes.get("once").await.ok();
            s.and_then(|s| s.status?.phase) == Some(SandboxPhase::Succeeded)
        },
    )
    .await;
    let s = wait_phase(&client, ns, "once", SandboxPhase::Succeeded).await;
    assert!(
        s.status.and_then(|st| st.finished_at).is_some(),
        "finishedAt recorded"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.delete("once", &DeleteParams::default())
        .await
        .expect("delete the finished pod");
    wait_for("the finished pod gone", WAIT, || {
        let pods = pods.clone();
        async move { pods.get_opt("once").await.ok()?.is_none().then_some(()) }
    })
    .await;

    set_pod_phase_until(
        &client,
        ns,
        "service",
        "Failed",
        Some("Evicted"),
        "the evicted pod replaced",
        || async {
            live_pod_uid(&client, ns, "service")
                .await
                .is_some_and(|uid| uid != evicted)
        },
    )
    .await;
    wait_phase(&client, ns, "service", SandboxPhase::Running).await;

    // By now the finished one has had every chance to start again.
    assert!(
        pods.get_opt("once").await.expect("get").is_none(),
        "a finished agent ran again"
    );
    let s = wait_phase(&client, ns, "once", SandboxPhase::Succeeded).await;
    assert_eq!(
        condition(&s, "Ready"),
        Some(("True".into(), "Succeeded".into()))
    );
}

#[tokio::test]
async fn paused_time_is_not_run_time_and_a_timeout_is_expired() {
    // Finding 10: timeoutMs counts run time only, and a timeout reads Expired, not Failed.
    let ns = &unique("hard-timeout");
    let client = setup(ns).await;
    apply_policy(
        &client,
        ns,
        "p",
        json!({"network": {"dns": "none"}, "timeoutMs": 20000}),
    )
    .await;
    apply_policy(
        &client,
        ns,
        "no-timeout",
        json!({"network": {"dns": "none"}}),
    )
    .await;
    apply_sandbox(&client, ns, "agent", basic_sandbox("p")).await;
    apply_sandbox(&client, ns, "deadline", basic_sandbox("no-timeout")).await;
    running_pod_uid(&client, ns, "agent").await;
    let started = Instant::now();
    let mut paused = basic_sandbox("p");
    paused["paused"] = json!(true);
    apply_sandbox(&client, ns, "agent", paused).await;
    wait_phase(&client, ns, "agent", SandboxPhase::Paused).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    apply_sandbox(&client, ns, "agent", basic_sandbox("p")).await;
    wait_phase(&client, ns, "agent", SandboxPhase::Running).await;
    // 26 s after it first ran, of which about 15 paused: not expired.
    tokio::time::sleep(Duration::from_secs(26).saturating_sub(started.elapsed())).await;
    let s = Api::<AgentSandbox>::namespaced(client.clone(), ns)
        .get("agent")
        .await
        .expect("sandbox");
    let status = s.status.expect("status");
    assert_eq!(
        status.phase,
        Some(SandboxPhase::Running),
        "expired counting paused time: {:?}",
        status.message
    );
    assert!(
        status.paused_ms.unwrap_or(0) >= 14_000,
        "{:?}",
        status.paused_ms
    );
    wait_phase(&client, ns, "agent", SandboxPhase::Expired).await;

    // The kubelet ends a pod at its activeDeadlineSeconds: the sandbox is Expired, for good.
    running_pod_uid(&client, ns, "deadline").await;
    let api: Api<AgentSandbox> = Api::namespaced(client.clone(), ns);
    set_pod_phase_until(
        &client,
        ns,
        "deadline",
        "Failed",
        Some("DeadlineExceeded"),
        "sandbox deadline Expired",
        || async {
            let s = api.get("deadline").await.ok();
            s.and_then(|s| s.status?.phase) == Some(SandboxPhase::Expired)
        },
    )
    .await;
    let s = wait_phase(&client, ns, "deadline", SandboxPhase::Expired).await;
    assert_eq!(
        condition(&s, "Stalled"),
        Some(("True".into(), "Expired".into()))
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    for name in ["agent", "deadline"] {
        wait_for(&format!("pod {name} gone"), WAIT, || {
            let pods = pods.clone();
            async move { pods.get_opt(name).await.ok()?.is_none().then_some(()) }
        })
        .await;
    }
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for name in ["agent", "deadline"] {
            assert!(
                pods.get_opt(name).await.expect("get").is_none(),
                "expired sandbox {name} runs again"
            );
            let phase = api
                .get(name)
                .await
                .expect("sandbox")
                .status
                .and_then(|s| s.phase);
            assert_eq!(phase, Some(SandboxPhase::Expired), "{name}");
        }
    }
}

#[tokio::test]
async fn an_api_refusal_reaches_status_and_events() {
    // Finding 8: a quota refuses the pod; the sandbox says so, and runs once it is lifted.
    let ns = &unique("hard-quota");
    let client = setup(ns).await;
    let quota: ResourceQuota = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-pods"},
        "spec": {"hard": {"pods": "0"}}
    }))
    .expect("quota");
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), ns);
    quotas
        .create(&PostParams::default(), &quota)
        .await
        .expect("quota");
    // The quota controller fills in its usage before pods are refused by count.
    wait_for("the quota in force", WAIT, || {
        let quotas = quotas.clone();
        async move { quotas.get("no-pods").await.ok()?.status?.hard.map(|_| ()) }
    })
    .await;
    apply_policy(&client, ns, "p", json!({"network": {"dns": "none"}})).await;
    apply_sandbox(&client, ns, "agent", basic_sandbox("p")).await;
    let api: Api<AgentSandbox> = Api::namespaced(client.clone(), ns);
    let s = wait_for("the refusal in the status", WAIT, || {
        let api = api.clone();
        async move {
            let s = api.get("agent").await.ok()?;
            (condition(&s, "Stalled") == Some(("True".into(), "QuotaExceeded".into()))).then_some(s)
        }
    })
    .await;
    let message = s.status.and_then(|st| st.message).unwrap_or_default();
    assert!(message.contains("exceeded quota"), "{message}");
    wait_warning(
        &client,
        ns,
        ("AgentSandbox", "agent"),
        "QuotaExceeded",
        WAIT,
    )
    .await;
    quotas
        .delete("no-pods", &DeleteParams::default())
        .await
        .expect("lift the quota");
    // Retried with backoff (at most a few tens of seconds after this many failures).
    wait_for(
        "Running once the quota is lifted",
        Duration::from_secs(150),
        || {
            let api = api.clone();
            async move {
                let s = api.get("agent").await.ok()?;
                (s.status?.phase == Some(SandboxPhase::Running)).then_some(())
            }
        },
    )
    .await;
}
