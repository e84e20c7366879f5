//! The optional backends, live: once the CiliumNetworkPolicy and SeccompProfile CRDs appear, a
//! sandbox whose policy needs them (egress to a domain name, a generated seccomp profile) runs
//! with both objects in place — under the chart's RBAC (`rbac.cilium`,
//! `rbac.securityProfilesOperator`), as e2e/run.sh runs the operator.
//!
//! Neither Cilium nor the Security Profiles Operator runs here: the CRDs are stand-ins that
//! accept any object (created only when absent, so a real installation is never touched).

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::{Client, ResourceExt};
use palisade::api::{AgentPolicy, AgentSandbox, SandboxPhase};
use palisade_e2e::operator::{gvisor_runtime_class, small_sandbox};
use palisade_e2e::{apply_palisade, client, install_crds, restricted_namespace, unique, wait_for};
use serde_json::json;

/// Creates a permissive stand-in CRD unless one of that name exists, and waits until it is
/// served.
async fn stand_in_crd(client: &Client, group: &str, version: &str, kind: &str, plural: &str) {
    stand_in_crd_scoped(client, group, version, kind, plural, "Namespaced").await
}

async fn stand_in_crd_scoped(
    client: &Client,
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    scope: &str,
) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = format!("{plural}.{group}");
    // Groups under k8s.io need an API review's address (the project's own CRDs carry one).
    let annotations = if group.ends_with(".k8s.io") {
        json!({"api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/network-policy-api/pull/30"})
    } else {
        json!({})
    };
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"group": group, "scope": scope,
                 "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "listKind": format!("{kind}List")},
                 "versions": [{"name": version, "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
    }))
    .expect("stand-in CRD");
    match api.create(&PostParams::default(), &crd).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => panic!("create CRD {name}: {e}"),
    }
    wait_for(
        &format!("CRD {name} Established"),
        Duration::from_secs(30),
        || async {
            let crd = api.get(&name).await.ok()?;
            crd.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        },
    )
    .await;
}

fn dynamic(
    client: &Client,
    ns: &str,
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
) -> Api<DynamicObject> {
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    Api::namespaced_with(client.clone(), ns, &ar)
}

#[tokio::test]
async fn domain_name_egress_and_generated_seccomp_run_once_their_backends_exist() {
    let client = client().await;
    install_crds(&client).await;
    gvisor_runtime_class(&client).await;
    stand_in_crd(
        &client,
        "cilium.io",
        "v2",
        "CiliumNetworkPolicy",
        "ciliumnetworkpolicies",
    )
    .await;
    stand_in_crd(
        &client,
        "security-profiles-operator.x-k8s.io",
        "v1beta1",
        "SeccompProfile",
        "seccompprofiles",
    )
    .await;
    let ns = &unique("backends");
    restricted_namespace(&client, ns).await;

    apply_palisade::<AgentPolicy>(
        &client,
        ns,
        "p",
        json!({"network": {"egress": {"allow": [{"to": [{"fqdn": "api.example.com"}],
                                                  "ports": [{"protocol": "tcp", "port": 443}]}]}},
               "syscalls": {"profile": "Generated", "block": ["ptrace"]}}),
    )
    .await;
    let sandbox = small_sandbox("agent", "p");
    apply_palisade::<AgentSandbox>(&client, ns, "agent", sandbox["spec"].clone()).await;

    let sandboxes: Api<AgentSandbox> = Api::namespaced(client.clone(), ns);
    wait_for("sandbox agent Running", Duration::from_secs(90), || async {
        let s = sandboxes.get("agent").await.ok()?;
        (s.status.as_ref()?.phase == Some(SandboxPhase::Running)).then_some(())
    })
    .await;
    let uid = sandboxes
        .get("agent")
        .await
        .expect("sandbox")
        .uid()
        .expect("uid");

    let cnp = dynamic(
        &client,
        ns,
        "cilium.io",
        "v2",
        "CiliumNetworkPolicy",
        "ciliumnetworkpolicies",
    )
    .get("agent-fqdn")
    .await
    .expect("CiliumNetworkPolicy agent-fqdn");
    assert_eq!(
        cnp.data["spec"]["egress"][0]["toFQDNs"][0]["matchName"], "api.example.com",
        "{:?}",
        cnp.data
    );
    // The name may not resolve into the metadata floor, and DNS answers only that name.
    let floor = cnp.data["spec"]["egressDeny"][0]["toCIDRSet"].to_string();
    assert!(floor.contains("169.254.0.0/16"), "{floor}");
    let dns = cnp.data["spec"]["egress"][1]["toPorts"][0]["rules"]["dns"].to_string();
    assert!(
        dns.contains("\"api.example.com\"") && !dns.contains("\"*\""),
        "{dns}"
    );
    let profiles = dynamic(
        &client,
        ns,
        "security-profiles-operator.x-k8s.io",
        "v1beta1",
        "SeccompProfile",
        "seccompprofiles",
    );
    let profile_names = || async {
        profiles
            .list(&kube::api::ListParams::default().labels("palisade.dev/sandbox=agent"))
            .await
            .expect("SeccompProfiles")
            .items
            .iter()
            .map(|p| p.name_any())
            .collect::<Vec<_>>()
    };
    let names = profile_names().await;
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].starts_with("agent-seccomp-"), "{names:?}");
    let profile = profiles.get(&names[0]).await.expect("the SeccompProfile");
    for obj in [&cnp, &profile] {
        assert!(
            obj.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && o.uid == uid),
            "{} is not controlled by the sandbox",
            obj.name_any()
        );
    }
    let pod = Api::<Pod>::namespaced(client.clone(), ns)
        .get("agent")
        .await
        .expect("pod");
    let seccomp = pod
        .spec
        .and_then(|s| s.security_context)
        .and_then(|c| c.seccomp_profile)
        .expect("pod seccomp profile");
    assert_eq!(seccomp.type_, "Localhost");
    assert_eq!(
        seccomp.localhost_profile.as_deref(),
        Some(format!("operator/{ns}/{}.json", names[0]).as_str())
    );

    // A new syscall in `block` is a new filter, which only a new container gets: a new profile
    // (a new file on the node, so no container starts on the old one) and a new pod; the old
    // profile goes. Then the domain allow goes: the CiliumNetworkPolicy that carried it is
    // removed (it would keep allowing the domain otherwise), and the pod stays.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let first_pod = pods.get("agent").await.expect("pod").uid();
    apply_palisade::<AgentPolicy>(
        &client,
        ns,
        "p",
        json!({"network": {"egress": {"allow": [{"to": [{"fqdn": "api.example.com"}],
                                                  "ports": [{"protocol": "tcp", "port": 443}]}]}},
               "syscalls": {"profile": "Generated", "block": ["ptrace", "mount"]}}),
    )
    .await;
    wait_for(
        "the pod replaced for the new filter",
        Duration::from_secs(90),
        || {
            let (pods, first_pod) = (pods.clone(), first_pod.clone());
            async move {
                let pod = pods.get_opt("agent").await.ok()??;
                (pod.uid() != first_pod && pod.metadata.deletion_timestamp.is_none()).then_some(())
            }
        },
    )
    .await;
    wait_for(
        "sandbox agent Running again",
        Duration::from_secs(90),
        || async {
            let s = sandboxes.get("agent").await.ok()?;
            (s.status.as_ref()?.phase == Some(SandboxPhase::Running)).then_some(())
        },
    )
    .await;
    wait_for("only the new profile left", Duration::from_secs(60), || {
        let profile_names = &profile_names;
        let old = names[0].clone();
        async move {
            let now = profile_names().await;
            (now.len() == 1 && now[0] != old).then_some(())
        }
    })
    .await;
    let second_pod = pods.get("agent").await.expect("pod").uid();
    apply_palisade::<AgentPolicy>(
        &client,
        ns,
        "p",
        json!({"network": {"dns": "none"},
               "syscalls": {"profile": "Generated", "block": ["ptrace", "mount"]}}),
    )
    .await;
    let cnps = dynamic(
        &client,
        ns,
        "cilium.io",
        "v2",
        "CiliumNetworkPolicy",
        "ciliumnetworkpolicies",
    );
    wait_for(
        "the CiliumNetworkPolicy removed",
        Duration::from_secs(60),
        || {
            let cnps = cnps.clone();
            async move {
                cnps.get_opt("agent-fqdn")
                    .await
                    .ok()?
                    .is_none()
                    .then_some(())
            }
        },
    )
    .await;
    assert_eq!(pods.get("agent").await.expect("pod").uid(), second_pod);

    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .delete(ns, &Default::default())
        .await
        .expect("delete namespace");
}

#[tokio::test]
async fn another_cilium_policy_selecting_the_pod_blocks_the_sandbox() {
    // Cilium adds up every policy that selects an endpoint: another CiliumNetworkPolicy with
    // allow rules for the sandbox's pod could only widen it (review finding 6).
    let client = client().await;
    install_crds(&client).await;
    gvisor_runtime_class(&client).await;
    stand_in_crd(
        &client,
        "cilium.io",
        "v2",
        "CiliumNetworkPolicy",
        "ciliumnetworkpolicies",
    )
    .await;
    let ns = &unique("cilium-extra");
    restricted_namespace(&client, ns).await;
    apply_palisade::<AgentPolicy>(&client, ns, "p", json!({"network": {"dns": "none"}})).await;
    apply_palisade::<AgentSandbox>(
        &client,
        ns,
        "agent",
        small_sandbox("agent", "p")["spec"].clone(),
    )
    .await;
    let sandboxes: Api<AgentSandbox> = Api::namespaced(client.clone(), ns);
    let phase = |want: SandboxPhase| {
        let sandboxes = sandboxes.clone();
        async move {
            wait_for(
                &format!("sandbox agent {want:?}"),
                Duration::from_secs(90),
                || async {
                    let s = sandboxes.get("agent").await.ok()?;
                    (s.status.as_ref()?.phase == Some(want)).then_some(s)
                },
            )
            .await
        }
    };
    phase(SandboxPhase::Running).await;
    let cnps = dynamic(
        &client,
        ns,
        "cilium.io",
        "v2",
        "CiliumNetworkPolicy",
        "ciliumnetworkpolicies",
    );
    // A deny-only policy widens nothing.
    let deny_only: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "deny-only"},
        "spec": {"endpointSelector": {}, "egressDeny": [{"toEntities": ["world"]}]}
    }))
    .expect("cnp");
    cnps.create(&PostParams::default(), &deny_only)
        .await
        .expect("create");
    let open: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "open"},
        "spec": {"endpointSelector": {"matchLabels": {"k8s:palisade.dev/sandbox": "agent"}},
                 "egress": [{"toEntities": ["world"]}]}
    }))
    .expect("cnp");
    cnps.create(&PostParams::default(), &open)
        .await
        .expect("create");
    let s = phase(SandboxPhase::Blocked).await;
    let message = s.status.and_then(|st| st.message).unwrap_or_default();
    assert!(message.contains("CiliumNetworkPolicy open"), "{message}");
    cnps.delete("open", &Default::default())
        .await
        .expect("delete");
    phase(SandboxPhase::Running).await;
}

#[tokio::test]
async fn cluster_scoped_admin_policies_that_allow_the_pod_more_are_reported() {
    // An AdminNetworkPolicy's Allow rules are decided before NetworkPolicies, and Cilium adds a
    // CiliumClusterwideNetworkPolicy to the sandbox's own: a cluster administrator's policies
    // that may widen a sandbox are reported in its status, not blocked (review finding 6). Both
    // select by a namespace label here, so the namespace watch and its trigger are exercised.
    let client = client().await;
    install_crds(&client).await;
    gvisor_runtime_class(&client).await;
    stand_in_crd_scoped(
        &client,
        "policy.networking.k8s.io",
        "v1alpha1",
        "AdminNetworkPolicy",
        "adminnetworkpolicies",
        "Cluster",
    )
    .await;
    stand_in_crd_scoped(
        &client,
        "cilium.io",
        "v2",
        "CiliumClusterwideNetworkPolicy",
        "ciliumclusterwidenetworkpolicies",
        "Cluster",
    )
    .await;
    let ns = &unique("admin-policies");
    restricted_namespace(&client, ns).await;
    let cluster = |group: &str, version: &str, kind: &str, plural: &str| {
        let ar =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
        Api::<DynamicObject>::all_with(client.clone(), &ar)
    };
    let anps = cluster(
        "policy.networking.k8s.io",
        "v1alpha1",
        "AdminNetworkPolicy",
        "adminnetworkpolicies",
    );
    let ccnps = cluster(
        "cilium.io",
        "v2",
        "CiliumClusterwideNetworkPolicy",
        "ciliumclusterwidenetworkpolicies",
    );
    let tenant_label = "palisade-e2e/tenant";
    let anp_name = format!("{ns}-allow-world");
    let anp: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
        "metadata": {"name": anp_name},
        "spec": {"priority": 10,
                 "subject": {"namespaces": {"matchLabels": {tenant_label: ns}}},
                 "egress": [{"name": "world", "action": "Allow", "to": [{"networks": ["0.0.0.0/0"]}]}]}
    }))
    .expect("anp");
    anps.create(&PostParams::default(), &anp)
        .await
        .expect("create");
    let ccnp_name = format!("{ns}-open");
    let ccnp: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": {"name": ccnp_name},
        "spec": {"endpointSelector": {"matchLabels": {format!("k8s:io.cilium.k8s.namespace.labels.{tenant_label}"): ns}},
                 "egress": [{"toEntities": ["world"]}]}
    }))
    .expect("ccnp");
    ccnps
        .create(&PostParams::default(), &ccnp)
        .await
        .expect("create");

    apply_palisade::<AgentPolicy>(&client, ns, "p", json!({"network": {"dns": "none"}})).await;
    apply_palisade::<AgentSandbox>(
        &client,
        ns,
        "agent",
        small_sandbox("agent", "p")["spec"].clone(),
    )
    .await;
    let sandboxes: Api<AgentSandbox> = Api::namespaced(client.clone(), ns);
    // Waits until the sandbox runs and its report names exactly `want` among the
    // administrator's policies, every kind read; none is ever reported unreadable.
    let reported = |want: Vec<String>| {
        let sandboxes = sandboxes.clone();
        async move {
            wait_for(
                &format!("sandbox agent Running, reporting {want:?}"),
                Duration::from_secs(90),
                || async {
                    let st = sandboxes.get("agent").await.ok()?.status?;
                    let found: Vec<String> = st
                        .enforcement
                        .map(|r| r.not_enforced.into_iter().map(|e| e.message).collect())
                        .unwrap_or_default();
                    for m in &found {
                        assert!(!m.contains("may not list"), "{m}");
                    }
                    // Just after a CRD appears its objects are being read: wait for them.
                    if found.iter().any(|m| m.contains("not read yet")) {
                        return None;
                    }
                    let admin: Vec<&String> = found
                        .iter()
                        .filter(|m| m.contains("an administrator's: reported, not blocked"))
                        .collect();
                    let matches = want.len() == admin.len()
                        && want
                            .iter()
                            .all(|w| admin.iter().any(|m| m.starts_with(w.as_str())));
                    (st.phase == Some(SandboxPhase::Running) && matches).then_some(())
                },
            )
            .await
        }
    };
    reported(vec![]).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let label = |value: Option<&str>| {
        let namespaces = namespaces.clone();
        let patch = json!({"metadata": {"labels": {tenant_label: value}}});
        async move {
            namespaces
                .patch(ns, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect("label the namespace");
        }
    };
    // The namespace gets the label both select by: both are reported.
    label(Some(ns.as_str())).await;
    reported(vec![
        format!("AdminNetworkPolicies {anp_name}: allow this pod more egress"),
        format!("CiliumClusterwideNetworkPolicies {ccnp_name}: allow this pod more egress"),
    ])
    .await;
    // The label goes: neither selects the pod any more.
    label(None).await;
    reported(vec![]).await;
    label(Some(ns.as_str())).await;
    reported(vec![
        format!("AdminNetworkPolicies {anp_name}: allow"),
        format!("CiliumClusterwideNetworkPolicies {ccnp_name}: allow"),
    ])
    .await;
    for (api, name) in [(&anps, &anp_name), (&ccnps, &ccnp_name)] {
        api.delete(name, &Default::default()).await.expect("delete");
    }
    reported(vec![]).await;
}
