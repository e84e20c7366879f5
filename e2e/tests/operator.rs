//! The operator against a real API server (e2e/run.sh runs `palisade run` beside the suite):
//! sandboxes converge, children are garbage-collected, and every path that cannot be enforced
//! blocks the sandbox until a person fixes it.

use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use palisade::api::{AgentSandbox, SandboxPhase};
use palisade_e2e::sandboxes::{
    WAIT, apply_policy, apply_sandbox, basic_sandbox, condition, setup, wait_phase,
};
use palisade_e2e::{apply_cluster, unique, wait_for};
use serde_json::json;

#[tokio::test]
async fn a_sandbox_runs_with_its_children_and_they_are_collected_on_delete() {
    let ns = &unique("op-basic");
    let client = setup(ns).await;
    apply_policy(&client, ns, "p", json!({"network": {"dns": "none"}})).await;
    apply_sandbox(&client, ns, "agent", basic_sandbox("p")).await;
    let s = wait_phase(&client, ns, "agent", SandboxPhase::Running).await;
    assert_eq!(condition(&s, "Ready").map(|c| c.0).as_deref(), Some("True"));
    assert_eq!(
        condition(&s, "NetworkIsolated").map(|c| c.0).as_deref(),
        Some("True")
    );
    assert_eq!(
        condition(&s, "Stalled").map(|c| c.0).as_deref(),
        Some("False")
    );
    let status = s.status.clone().expect("status");
    assert_eq!(status.runtime_class_name.as_deref(), Some("gvisor"));
    assert_eq!(status.observed_generation, s.metadata.generation);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = pods.get("agent").await.expect("pod");
    assert_eq!(
        pod.spec.as_ref().and_then(|p| p.node_name.as_deref()),
        Some("palisade-gvisor")
    );
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .get("palisade-agent")
        .await
        .expect("service account");
    Api::<NetworkPolicy>::namespaced(client.clone(), ns)
        .get("agent-isolation")
        .await
        .expect("network policy");

    // Converged means quiet: nothing is rewritten while nothing changes.
    let versions = || async {
        let np = Api::<NetworkPolicy>::namespaced(client.clone(), ns)
            .get("agent-isolation")
            .await
            .expect("np")
            .resource_version();
        let sa = Api::<ServiceAccount>::namespaced(client.clone(), ns)
            .get("palisade-agent")
            .await
            .expect("sa")
            .resource_version();
        let sb = Api::<AgentSandbox>::namespaced(client.clone(), ns)
            .get("agent")
            .await
            .expect("sandbox")
            .resource_version();
        (np, sa, sb)
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = versions().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        versions().await,
        before,
        "children or status keep being rewritten while nothing changes"
    );

    Api::<AgentSandbox>::namespaced(client.clone(), ns)
        .delete("agent", &DeleteParams::foreground())
        .await
        .expect("delete");
    wait_for("children garbage-collected", WAIT, || {
        let client = client.clone();
        async move {
            let np = Api::<NetworkPolicy>::namespaced(client.clone(), ns)
                .get_opt("agent-isolation")
                .await
                .ok()?;
            let sa = Api::<ServiceAccount>::namespaced(client.clone(), ns)
                .get_opt("palisade-agent")
                .await
                .ok()?;
            let pod = Api::<Pod>::namespaced(client.clone(), ns)
                .get_opt("agent")
                .await
                .ok()?;
            (np.is_none() && sa.is_none() && pod.is_none()).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn a_missing_runtime_class_blocks_until_it_appears() {
    let ns = &unique("op-runtime");
    let class = unique("gvisor-late");
    let client = setup(ns).await;
    apply_policy(&client, ns, "p", json!({"isolation": {"runtime": "gvisor", "runtimeClassName": class}, "network": {"dns": "none"}})).await;
    apply_sandbox(&client, ns, "agent", basic_sandbox("p")).await;
    let s = wait_phase(&client, ns, "agent", SandboxPhase::Blocked).await;
    assert_eq!(
        condition(&s, "Stalled"),
        Some(("True".into(), "RuntimeClassMissing".into()))
    );
    assert!(
        Api::<Pod>::namespaced(client.clone(), ns)
            .get_opt("agent")
            .await
            .expect("get")
            .is_none(),
        "no pod while blocked"
    );
    let rc = json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": class}, "handler": "runsc",
                    "scheduling": {"nodeSelector": {"palisade.dev/runtime": "gvisor"}}});
    apply_cluster::<k8s_openapi::api::node::v1::RuntimeClass>(&client, &class, rc).await;
    wait_phase(&client, ns, "agent", SandboxPhase::Running).await;
    // The class goes away again: the running sandbox is blocked and its pod removed.
    Api::<k8s_openapi::api::node::v1::RuntimeClass>::all(client.clone())
        .delete(&class, &DeleteParams::default())
        .await
        .expect("delete RuntimeClass");
    let s = wait_phase(&client, ns, "agent", SandboxPhase::Blocked).await;
    assert_eq!(
        condition(&s, "Stalled"),
        Some(("True".into(), "RuntimeClassMissing".into()))
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for("pod removed when its RuntimeClass is gone", WAIT, || {
        let pods = pods.clone();
        async move { pods.get_opt("agent").await.ok()?.is_none().then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn a_runtime_class_with_the_wrong_handler_blocks() {
    let ns = &unique("op-handler");
    let client = setup(ns).await;
    let rc = json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "gvisor-but-runc"}, "handler": "runc"});
    apply_cluster::<k8s_openapi::api::node::v1::RuntimeClass>(&client, "gvisor-but-runc", rc).await;
    apply_policy(
        &client,
        ns,
        "p",
        json!({"isolation": {"runtime": "gvisor", "runtimeClassName": "gvisor-but-runc"}}),
    )
    .await;
    apply_sandbox(&client, ns, "agent", basic_sandbox("p")).await;
    let s = wait_phase(&client, ns, "agent", SandboxPhase::Blocked).await;
    assert_eq!(
        condition(&s, "Stalled"),
        Some(("True".into(), "RuntimeHandlerMismatch".into()))
    );
}

#[tokio::test]
async fn network_policy_drift_is_put_back() {
    let ns = &unique("op-drift");
    let client = setup(ns).await;
    apply_policy(&client, ns, "p", json!({"network": {"dns": "none"}})).await;
    apply_sandbox(&client, ns, "agent", basic_sandbox("p")).await;
    wait_phase(&client, ns, "agent", SandboxPhase::Running).await;
    let nps: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    // Someone adds a matchLabels key that would make the policy select nothing.
    let edit = json!({"spec": {"podSelector": {"matchLabels": {"nothing": "here"}}}});
    nps.patch(
        "agent-isolation",
        &PatchParams::default(),
        &Patch::Merge(edit),
    )
    .await
    .expect("edit");
    wait_for("extra matchLabels key removed", WAIT, || {
        let nps = nps.clone();
        async move {
            let np = nps.get("agent-isolation").await.ok()?;
            let labels = np.spec?.pod_selector?.match_labels?;
            (!labels.contains_key("nothing")).then_some(())
        }
    })
    .await;
    // Someone deletes it: it comes back.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let first_uid = pods.get("agent").await.expect("the pod").metadata.uid;
    nps.delete("agent-isolation", &DeleteParams::default())
        .await
        .expect("delete");
    // Until it is back and the pod runs again, a live pod never exists without it (a NetworkPolicy
    // being deleted is still there, and still enforced, until its finalizer is released).
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut pod_went_away = false;
    loop {
        let pod = pods.get_opt("agent").await.expect("get pod");
        let np = nps.get_opt("agent-isolation").await.expect("get np");
        let live_pod = pod
            .as_ref()
            .is_some_and(|p| p.metadata.deletion_timestamp.is_none());
        assert!(
            !live_pod || np.is_some(),
            "a live pod without its NetworkPolicy"
        );
        // Gone, or already replaced between two looks (a new UID).
        pod_went_away |= pod.as_ref().is_none_or(|p| p.metadata.uid != first_uid);
        let restored = np
            .as_ref()
            .is_some_and(|n| n.metadata.deletion_timestamp.is_none());
        let running = pod
            .as_ref()
            .and_then(|p| p.status.as_ref()?.phase.clone())
            .as_deref()
            == Some("Running");
        if pod_went_away && restored && running && live_pod {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "NetworkPolicy and pod not restored in {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn another_network_policy_selecting_the_pod_blocks_the_sandbox() {
    let ns = &unique("op-extra-np");
    let client = setup(ns).await;
    // A namespace baseline that denies everything (no rules) narrows nothing: it must not
    // block sandboxes (review finding 6).
    let baseline: NetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "default-deny-all"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    }))
    .expect("np");
    Api::<NetworkPolicy>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &baseline)
        .await
        .expect("create the baseline");
    apply_policy(&client, ns, "p", json!({"network": {"dns": "none"}})).await;
    apply_sandbox(&client, ns, "agent", basic_sandbox("p")).await;
    wait_phase(&client, ns, "agent", SandboxPhase::Running).await;
    let permissive: NetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "allow-all"},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}
    }))
    .expect("np");
    let nps: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    nps.create(&PostParams::default(), &permissive)
        .await
        .expect("create");
    let s = wait_phase(&client, ns, "agent", SandboxPhase::Blocked).await;
    assert_eq!(
        condition(&s, "NetworkIsolated"),
        Some(("False".into(), "AdditionalNetworkPolicy".into()))
    );
    nps.delete("allow-all", &DeleteParams::default())
        .await
        .expect("delete");
    wait_phase(&client, ns, "agent", SandboxPhase::Running).await;
}

#[tokio::test]
async fn a_pod_that_is_not_ours_is_never_adopted() {
    let ns = &unique("op-conflict");
    let client = setup(ns).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let squatter: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "agent"},
        "spec": {"containers": [{"name": "x", "image": "busybox", "securityContext": {
            "allowPrivilegeEscalation": false, "runAsNonRoot": true, "runAsUser": 1000,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}}]}
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &squatter)
        .await
        .expect("squatter");
    apply_policy(&client, ns, "p", json!({"network": {"dns": "none"}})).await;
    apply_sandbox(&client, ns, "agent", basic_sandbox("p")).await;
    let s = wait_phase(&client, ns, "agent", SandboxPhase::Blocked).await;
    assert_eq!(
        condition(&s, "Stalled"),
        Some(("True".into(), "NameConflict".into()))
    );
    let pod = pods.get("agent").await.expect("squatter still there");
    assert!(
        pod.owner_references().is_empty(),
        "the squatter was adopted"
    );
}

#[tokio::test]
async fn policy_edits_narrow_egress_in_place_and_recreate_the_pod_on_process_changes() {
    let ns = &unique("op-edits");
    let client = setup(ns).await;
    let egress = |cidr: &str| json!({"network": {"dns": "none", "egress": {"allow": [{"to": [{"cidr": cidr}], "ports": [{"protocol": "tcp", "port": 443}]}]}}});
    apply_policy(&client, ns, "p", egress("192.0.2.0/24")).await;
    apply_sandbox(&client, ns, "agent", basic_sandbox("p")).await;
    wait_phase(&client, ns, "agent", SandboxPhase::Running).await;
    let nps: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let np_uid = nps.get("agent-isolation").await.expect("np").uid();
    let pod_uid = pods.get("agent").await.expect("pod").uid();

    apply_policy(&client, ns, "p", egress("192.0.2.0/25")).await;
    wait_for("egress narrowed in place", WAIT, || {
        let nps = nps.clone();
        async move {
            let np = nps.get("agent-isolation").await.ok()?;
            let text = serde_json::to_string(&np.spec).ok()?;
            text.contains("192.0.2.0/25").then_some(np.uid())
        }
    })
    .await
    .eq(&np_uid)
    .then_some(())
    .expect("the NetworkPolicy was replaced instead of updated in place");
    assert_eq!(
        pods.get("agent").await.expect("pod").uid(),
        pod_uid,
        "a network change must not recreate the pod"
    );

    let mut with_user = egress("192.0.2.0/25");
    with_user["privileges"] = json!({"runAsUser": 4242});
    apply_policy(&client, ns, "p", with_user).await;
    wait_for("pod recreated with the new identity", WAIT, || {
        let pods = pods.clone();
        let old = pod_uid.clone();
        async move {
            let p = pods.get("agent").await.ok()?;
            let user = p.spec.as_ref()?.security_context.as_ref()?.run_as_user?;
            (p.uid() != old && user == 4242).then_some(())
        }
    })
    .await;
    wait_phase(&client, ns, "agent", SandboxPhase::Running).await;
}

#[tokio::test]
async fn pause_keeps_the_workspace_and_expiry_stops_the_sandbox() {
    let ns = &unique("op-lifecycle");
    let pv_name = unique("op-lifecycle-pv");
    let client = setup(ns).await;
    let pv = json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv_name},
        "spec": {"capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteOnce"], "persistentVolumeReclaimPolicy": "Retain",
                 "hostPath": {"path": format!("/var/lib/palisade-e2e/{pv_name}")}}});
    apply_cluster::<k8s_openapi::api::core::v1::PersistentVolume>(&client, &pv_name, pv).await;
    apply_policy(
        &client,
        ns,
        "p",
        json!({"network": {"dns": "none"}, "workspace": {"persistent": true, "size": "1Gi"}}),
    )
    .await;
    apply_sandbox(&client, ns, "agent", basic_sandbox("p")).await;
    wait_phase(&client, ns, "agent", SandboxPhase::Running).await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let claim_uid = claims.get("agent-workspace").await.expect("claim").uid();

    let mut paused = basic_sandbox("p");
    paused["paused"] = json!(true);
    apply_sandbox(&client, ns, "agent", paused).await;
    wait_phase(&client, ns, "agent", SandboxPhase::Paused).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for("pod removed while paused", WAIT, || {
        let pods = pods.clone();
        async move { pods.get_opt("agent").await.ok()?.is_none().then_some(()) }
    })
    .await;
    assert_eq!(
        claims
            .get("agent-workspace")
            .await
            .expect("claim kept")
            .uid(),
        claim_uid
    );
    apply_sandbox(&client, ns, "agent", basic_sandbox("p")).await;
    wait_phase(&client, ns, "agent", SandboxPhase::Running).await;
    assert_eq!(
        claims
            .get("agent-workspace")
            .await
            .expect("claim kept")
            .uid(),
        claim_uid
    );

    let in_five = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(5))
        .expect("time");
    let mut expiring = basic_sandbox("p");
    expiring["expiresAt"] = json!(in_five.to_string());
    apply_sandbox(&client, ns, "agent", expiring).await;
    wait_phase(&client, ns, "agent", SandboxPhase::Expired).await;
    wait_for("pod removed on expiry", WAIT, || {
        let pods = pods.clone();
        async move { pods.get_opt("agent").await.ok()?.is_none().then_some(()) }
    })
    .await;
}
