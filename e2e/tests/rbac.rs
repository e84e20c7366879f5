//! The operator's RBAC as installed by the Helm chart (e2e/run.sh installs it before the suite):
//! it grants exactly the checked-in `e2e/rbac-allowlist.yaml`, nothing broad or sensitive, and
//! the API server's own authorizer agrees. That it is also enough is shown by the rest of the
//! suite, whose operators run with the chart ServiceAccount's token.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use palisade_e2e::{client, root};

/// Release namespace and name of the chart install (set by e2e/run.sh).
fn release() -> (String, String) {
    let ns = std::env::var("E2E_RELEASE_NAMESPACE").expect(
        "E2E_RELEASE_NAMESPACE is not set: run the suite through e2e/run.sh, which installs the chart",
    );
    let name = std::env::var("E2E_RELEASE").unwrap_or_else(|_| "palisade".into());
    (ns, name)
}

type Grants = BTreeMap<String, BTreeSet<String>>;

/// `<group>/<resource>` (with `#<name>` for a rule limited to resourceNames) → verbs, from RBAC
/// rules; panics on wildcards and non-resource URLs, which the operator never needs.
fn grants(rules: &[PolicyRule], what: &str) -> Grants {
    let mut out = Grants::new();
    for rule in rules {
        assert!(
            rule.non_resource_urls
                .as_deref()
                .unwrap_or_default()
                .is_empty(),
            "{what} grants non-resource URLs: {rule:?}"
        );
        let names = rule.resource_names.clone().unwrap_or_default();
        let suffixes: Vec<String> = if names.is_empty() {
            vec![String::new()]
        } else {
            names.iter().map(|n| format!("#{n}")).collect()
        };
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                for verb in &rule.verbs {
                    for field in [group, resource, verb] {
                        assert!(!field.contains('*'), "{what} grants a wildcard: {rule:?}");
                    }
                    let group = if group.is_empty() { "core" } else { group };
                    for suffix in &suffixes {
                        out.entry(format!("{group}/{resource}{suffix}"))
                            .or_default()
                            .insert(verb.clone());
                    }
                }
            }
        }
    }
    out
}

fn allowlist() -> BTreeMap<String, Grants> {
    let path = root().join("e2e/rbac-allowlist.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let raw: BTreeMap<String, BTreeMap<String, Vec<String>>> =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    raw.into_iter()
        .map(|(role, rules)| {
            let grants = rules
                .into_iter()
                .map(|(res, verbs)| (res, verbs.into_iter().collect()))
                .collect();
            (role, grants)
        })
        .collect()
}

/// Every difference between what is granted and what the allowlist says.
fn differences(granted: &Grants, allowed: &Grants) -> Vec<String> {
    let mut out = Vec::new();
    for (res, verbs) in granted {
        let allowed_verbs = allowed.get(res).cloned().unwrap_or_default();
        for verb in verbs.difference(&allowed_verbs) {
            out.push(format!("granted but not in the allowlist: {verb} {res}"));
        }
    }
    for (res, verbs) in allowed {
        let granted_verbs = granted.get(res).cloned().unwrap_or_default();
        for verb in verbs.difference(&granted_verbs) {
            out.push(format!(
                "in the allowlist but no longer granted: {verb} {res}"
            ));
        }
    }
    out
}

fn selector(release: &str) -> ListParams {
    ListParams::default().labels(&format!("app.kubernetes.io/instance={release}"))
}

#[tokio::test]
async fn the_chart_grants_exactly_the_allowlist() {
    let client = client().await;
    let (ns, release) = release();
    let allow = allowlist();

    // The operator's ClusterRole and the gateway's (`<release>-gateway`).
    let cluster_roles = Api::<ClusterRole>::all(client.clone())
        .list(&selector(&release))
        .await
        .expect("list ClusterRoles");
    let mut names: Vec<String> = cluster_roles
        .items
        .iter()
        .filter_map(|r| r.metadata.name.clone())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![release.clone(), format!("{release}-gateway")],
        "expected the operator's and the gateway's ClusterRoles of release {release}"
    );
    for role in &cluster_roles.items {
        let gateway = role.metadata.name.as_deref() != Some(release.as_str());
        let key = if gateway {
            "gatewayClusterRole"
        } else {
            "clusterRole"
        };
        let rules = role.rules.clone().unwrap_or_default();
        let diff = differences(&grants(&rules, key), &allow[key]);
        assert!(diff.is_empty(), "{key}:\n{}", diff.join("\n"));
    }

    // In the release namespace: the leader-election Role, and the Role that lets the operator
    // read the gateway's Service.
    let roles = Api::<Role>::namespaced(client.clone(), &ns)
        .list(&selector(&release))
        .await
        .expect("list Roles");
    let mut names: Vec<String> = roles
        .items
        .iter()
        .filter_map(|r| r.metadata.name.clone())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            format!("{release}-gateway-service-reader"),
            format!("{release}-leader-election"),
        ],
        "expected the leader-election and gateway-service-reader Roles"
    );
    for role in &roles.items {
        let key = if role
            .metadata
            .name
            .as_deref()
            .is_some_and(|n| n.ends_with("-service-reader"))
        {
            "gatewayServiceReaderRole"
        } else {
            "leaderElectionRole"
        };
        let rules = role.rules.clone().unwrap_or_default();
        let diff = differences(&grants(&rules, key), &allow[key]);
        assert!(diff.is_empty(), "{key}:\n{}", diff.join("\n"));
    }

    // Nothing that reads credentials, runs commands in pods, or grants more rights.
    for (res, verbs) in allow.values().flatten() {
        let resource = res
            .split('#')
            .next()
            .and_then(|r| r.rsplit('/').next())
            .unwrap_or_default();
        assert!(
            !matches!(
                resource,
                "secrets" | "exec" | "attach" | "portforward" | "proxy" | "token"
            ),
            "the allowlist grants {res}"
        );
        for verb in verbs {
            assert!(
                !matches!(verb.as_str(), "escalate" | "bind" | "impersonate" | "*"),
                "the allowlist grants {verb} on {res}"
            );
        }
    }
}

/// What the API server's authorizer answers for the chart's ServiceAccount.
async fn allowed(client: &Client, user: &str, attrs: ResourceAttributes) -> bool {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_string()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(attrs),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview");
    answer.status.is_some_and(|s| s.allowed)
}

fn attrs(
    verb: &str,
    group: &str,
    resource: &str,
    sub: Option<&str>,
    ns: &str,
) -> ResourceAttributes {
    // `leases#name`: a request about that one object.
    let (resource, name) = match resource.split_once('#') {
        Some((resource, name)) => (resource, Some(name.to_string())),
        None => (resource, None),
    };
    ResourceAttributes {
        name,
        verb: Some(verb.into()),
        group: Some(group.into()),
        resource: Some(resource.into()),
        subresource: sub.map(String::from),
        namespace: (!ns.is_empty()).then(|| ns.to_string()),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_api_server_denies_the_operator_what_it_must_not_do() {
    let client = client().await;
    let (ns, release) = release();
    let user = format!("system:serviceaccount:{ns}:{release}");
    // The chart's Lease is named after the release.
    let lease = format!("leases#{release}");

    // Positive controls: the review works, and the operator can do its job anywhere.
    for (verb, group, resource, sub, in_ns) in [
        ("create", "", "pods", None, "any-namespace"),
        (
            "patch",
            "networking.k8s.io",
            "networkpolicies",
            None,
            "any-namespace",
        ),
        (
            "patch",
            "palisade.dev",
            "agentsandboxes",
            Some("status"),
            "any-namespace",
        ),
        ("create", "coordination.k8s.io", "leases", None, ns.as_str()),
        ("patch", "coordination.k8s.io", &lease, None, ns.as_str()),
    ] {
        assert!(
            allowed(&client, &user, attrs(verb, group, resource, sub, in_ns)).await,
            "{user} may not {verb} {resource}: the chart's RBAC is not installed as expected"
        );
    }
    // Never: secrets, commands in pods, tokens for other accounts, RBAC changes, Leases outside
    // its namespace, nodes, its own CRDs.
    for (verb, group, resource, sub, in_ns) in [
        ("get", "", "secrets", None, "kube-system"),
        ("list", "", "secrets", None, ""),
        ("watch", "", "secrets", None, ns.as_str()),
        ("create", "", "pods", Some("exec"), "any-namespace"),
        ("create", "", "pods", Some("attach"), "any-namespace"),
        ("create", "", "pods", Some("portforward"), "any-namespace"),
        (
            "create",
            "",
            "serviceaccounts",
            Some("token"),
            "any-namespace",
        ),
        ("update", "", "pods", None, "any-namespace"),
        (
            "create",
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            None,
            "",
        ),
        (
            "escalate",
            "rbac.authorization.k8s.io",
            "clusterroles",
            None,
            "",
        ),
        (
            "bind",
            "rbac.authorization.k8s.io",
            "roles",
            None,
            "any-namespace",
        ),
        ("impersonate", "", "users", None, ""),
        (
            "create",
            "coordination.k8s.io",
            "leases",
            None,
            "kube-system",
        ),
        (
            "patch",
            "coordination.k8s.io",
            "leases#kube-scheduler",
            None,
            ns.as_str(),
        ),
        (
            "get",
            "coordination.k8s.io",
            "leases#kube-scheduler",
            None,
            ns.as_str(),
        ),
        ("get", "", "nodes", None, ""),
        ("get", "", "nodes", Some("proxy"), ""),
        (
            "update",
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            None,
            "",
        ),
        (
            "update",
            "palisade.dev",
            "agentpolicies",
            None,
            "any-namespace",
        ),
        ("create", "node.k8s.io", "runtimeclasses", None, ""),
    ] {
        assert!(
            !allowed(&client, &user, attrs(verb, group, resource, sub, in_ns)).await,
            "{user} may {verb} {resource}{} in {in_ns:?}",
            sub.map(|s| format!("/{s}")).unwrap_or_default()
        );
    }
}

/// A client holding a token of the chart's ServiceAccount (e2e/run.sh writes its kubeconfig).
async fn as_operator() -> Client {
    let path = std::env::var("E2E_OPERATOR_KUBECONFIG").expect(
        "E2E_OPERATOR_KUBECONFIG is not set: run the suite through e2e/run.sh, which writes it",
    );
    let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("operator kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("operator config");
    Client::try_from(config).expect("operator client")
}

/// A pod as the operator creates one for sandbox `name`, then changed by `edit`.
fn pod(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> k8s_openapi::api::core::v1::Pod {
    let mut v = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "palisade"}},
        "spec": {
            "serviceAccountName": format!("palisade-{name}"),
            "automountServiceAccountToken": false,
            "runtimeClassName": "gvisor",
            "schedulingGates": [{"name": "palisade.dev/isolation"}],
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": [{"name": "tmp", "emptyDir": {}},
                        {"name": "workspace", "persistentVolumeClaim": {"claimName": format!("{name}-workspace")}}],
            "containers": [{
                "name": "agent", "image": "ghcr.io/palisade-dev/examples/agent:0.1.0",
                "securityContext": {"allowPrivilegeEscalation": false, "runAsNonRoot": true,
                                    "capabilities": {"drop": ["ALL"]}}}]}
    });
    edit(&mut v);
    serde_json::from_value(v).expect("pod")
}

async fn namespace(admin: &Client, name: &str, labels: serde_json::Value) {
    use k8s_openapi::api::core::v1::Namespace;
    Api::<Namespace>::all(admin.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                serde_json::json!({"metadata": {"name": name, "labels": labels}}),
            )
            .expect("ns"),
        )
        .await
        .expect("create namespace");
}

/// Creates ServiceAccount `name` in `ns` unless it exists (ServiceAccount admission, which runs
/// before the policy, refuses a pod whose account is missing).
async fn account(admin: &Client, ns: &str, name: &str) {
    use k8s_openapi::api::core::v1::ServiceAccount;
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    if accounts
        .get_opt(name)
        .await
        .expect("get ServiceAccount")
        .is_none()
    {
        accounts
            .create(
                &PostParams::default(),
                &serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))
                    .expect("sa"),
            )
            .await
            .expect("create ServiceAccount");
    }
}

const DRY: PostParams = PostParams {
    dry_run: true,
    field_manager: None,
};

#[tokio::test]
async fn the_admission_policy_lets_the_operator_create_only_sandbox_like_pods() {
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use serde_json::json;
    let admin = client().await;
    let (release_ns, _) = release();
    let operator = as_operator().await;
    palisade_e2e::operator::gvisor_runtime_class(&admin).await;
    // A class the chart does not name (on GPU clusters, `nvidia` is often runc underneath).
    palisade_e2e::apply_cluster::<k8s_openapi::api::node::v1::RuntimeClass>(
        &admin,
        "nvidia",
        json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "nvidia"}, "handler": "runc"}),
    )
    .await;
    // Namespaces without Pod Security enforcement (`privileged`, as the cluster may default to
    // `baseline`): only the admission policy stands in the way. The second one is labelled by an
    // admin for Secrets in env and runc.
    let ns = &palisade_e2e::unique("vap");
    let trusted = &palisade_e2e::unique("vap-trusted");
    let unenforced = "pod-security.kubernetes.io/enforce";
    namespace(&admin, ns, json!({unenforced: "privileged"})).await;
    namespace(
        &admin,
        trusted,
        json!({unenforced: "privileged", "palisade.dev/allow-secret-env": "true", "palisade.dev/allow-runc": "true"}),
    )
    .await;
    for (in_ns, sa) in [
        (ns.as_str(), "palisade-fine"),
        (ns.as_str(), "generic-garbage-collector"),
        (trusted.as_str(), "palisade-fine"),
        ("kube-system", "generic-garbage-collector"),
        ("kube-system", "palisade-fine"),
        (release_ns.as_str(), "palisade-fine"),
    ] {
        account(&admin, in_ns, sa).await;
    }
    let pods = |in_ns: &str| -> Api<Pod> { Api::namespaced(operator.clone(), in_ns) };

    // The policy takes effect a moment after it is installed: wait until it refuses (dry run).
    // Only the policy refuses this one (another ServiceAccount): the API server's own
    // validation would refuse an invalid pod at once.
    let borrower = pod("fine", |v| {
        v["spec"]["serviceAccountName"] = "generic-garbage-collector".into();
    });
    palisade_e2e::wait_for(
        "the admission policy to refuse a borrowed ServiceAccount",
        std::time::Duration::from_secs(30),
        || async { pods(ns).create(&DRY, &borrower).await.err().map(|_| ()) },
    )
    .await;

    // Sandbox-like pods are admitted (so the refusals below are the policy's doing): plain, with
    // the API token ServiceAccount admission projects, and, where an admin allowed them,
    // Secrets in env and runc.
    let admitted: Vec<(&str, &str, Pod)> = vec![
        ("sandbox-like", ns, pod("fine", |_| {})),
        (
            "with a projected API token",
            ns,
            pod("fine", |v| {
                v["spec"]["automountServiceAccountToken"] = true.into()
            }),
        ),
        (
            "with a projected token for an audience",
            ns,
            pod("fine", |v| {
                v["spec"]["volumes"][1] = json!({"name": "token", "projected": {"sources": [
                    {"serviceAccountToken": {"audience": "vault", "path": "token"}}]}});
            }),
        ),
        (
            "Secret in env, allowed namespace",
            trusted,
            pod("fine", |v| {
                v["spec"]["containers"][0]["env"] = json!([{"name": "T", "valueFrom":
                    {"secretKeyRef": {"name": "s", "key": "k"}}}]);
            }),
        ),
        (
            "runc, allowed namespace",
            trusted,
            pod("fine", |v| {
                v["spec"]
                    .as_object_mut()
                    .unwrap()
                    .remove("runtimeClassName");
            }),
        ),
    ];
    for (what, in_ns, p) in admitted {
        if let Err(e) = pods(in_ns).create(&DRY, &p).await {
            panic!("{what}: refused: {e}");
        }
    }

    let refused: Vec<(&str, &str, Pod, &str)> = vec![
        (
            "a controller's pod in kube-system",
            "kube-system",
            pod("generic-garbage-collector", |v| {
                v["spec"]["serviceAccountName"] = "generic-garbage-collector".into();
            }),
            "no pod in kube-system",
        ),
        (
            "a sandbox-like pod in kube-system",
            "kube-system",
            pod("fine", |_| {}),
            "no pod in kube-system",
        ),
        (
            "a sandbox-like pod in the operator's namespace",
            &release_ns,
            pod("fine", |_| {}),
            "its own namespace",
        ),
        (
            "another account",
            ns,
            borrower.clone(),
            "palisade-<pod name>",
        ),
        (
            "unlabelled",
            ns,
            pod("fine", |v| v["metadata"]["labels"] = json!({})),
            "only create sandbox pods",
        ),
        (
            "privileged",
            ns,
            pod("fine", |v| {
                let sc = &mut v["spec"]["containers"][0]["securityContext"];
                sc["privileged"] = true.into();
                sc["allowPrivilegeEscalation"] = true.into();
            }),
            "unprivileged",
        ),
        (
            "a capability",
            ns,
            pod("fine", |v| {
                v["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] =
                    json!(["SYS_ADMIN"]);
            }),
            "unprivileged",
        ),
        (
            "host network",
            ns,
            pod("fine", |v| v["spec"]["hostNetwork"] = true.into()),
            "no host namespace",
        ),
        (
            "host path",
            ns,
            pod("fine", |v| {
                v["spec"]["volumes"] = json!([{"name": "root", "hostPath": {"path": "/"}}]);
            }),
            "no host path",
        ),
        (
            "a Secret volume",
            ns,
            pod("fine", |v| {
                v["spec"]["volumes"][0] = json!({"name": "s", "secret": {"secretName": "s"}});
            }),
            "mounts only",
        ),
        (
            "another claim",
            ns,
            pod("fine", |v| {
                v["spec"]["volumes"][1]["persistentVolumeClaim"]["claimName"] = "data".into();
            }),
            "mounts only",
        ),
        (
            "a projected ConfigMap",
            ns,
            pod("fine", |v| {
                v["spec"]["volumes"][1] = json!({"name": "c", "projected": {"sources": [
                    {"configMap": {"name": "app-config"}}]}});
            }),
            "mounts only",
        ),
        (
            "a projected Secret",
            ns,
            pod("fine", |v| {
                v["spec"]["volumes"][1] = json!({"name": "c", "projected": {"sources": [
                    {"secret": {"name": "s"}}]}});
            }),
            "mounts only",
        ),
        (
            "a Secret in env",
            ns,
            pod("fine", |v| {
                v["spec"]["containers"][0]["env"] = json!([{"name": "T", "valueFrom":
                    {"secretKeyRef": {"name": "s", "key": "k"}}}]);
            }),
            "reads no Secret",
        ),
        (
            "a Secret as envFrom",
            ns,
            pod("fine", |v| {
                v["spec"]["containers"][0]["envFrom"] = json!([{"secretRef": {"name": "s"}}]);
            }),
            "reads no Secret",
        ),
        (
            "no RuntimeClass",
            ns,
            pod("fine", |v| {
                v["spec"]
                    .as_object_mut()
                    .unwrap()
                    .remove("runtimeClassName");
            }),
            "without a RuntimeClass",
        ),
        (
            "no isolation gate",
            ns,
            pod("fine", |v| {
                v["spec"].as_object_mut().unwrap().remove("schedulingGates");
            }),
            "scheduling gate",
        ),
        (
            "root allowed",
            ns,
            pod("fine", |v| {
                v["spec"]["securityContext"]["runAsNonRoot"] = false.into();
                v["spec"]["containers"][0]["securityContext"]
                    .as_object_mut()
                    .unwrap()
                    .remove("runAsNonRoot");
            }),
            "non-root",
        ),
        (
            "user 0",
            ns,
            pod("fine", |v| {
                v["spec"]["containers"][0]["securityContext"]["runAsUser"] = 0.into();
            }),
            "non-root",
        ),
        (
            "a host port",
            ns,
            pod("fine", |v| {
                v["spec"]["containers"][0]["ports"] =
                    json!([{"containerPort": 8080, "hostPort": 8080}]);
            }),
            "no host port",
        ),
        (
            "seccomp unconfined",
            ns,
            pod("fine", |v| {
                v["spec"]["securityContext"]["seccompProfile"]["type"] = "Unconfined".into();
            }),
            "without seccomp",
        ),
        (
            "no seccomp profile at all",
            ns,
            pod("fine", |v| {
                v["spec"]["securityContext"]
                    .as_object_mut()
                    .unwrap()
                    .remove("seccompProfile");
            }),
            "without seccomp",
        ),
        (
            "AppArmor unconfined",
            ns,
            pod("fine", |v| {
                v["spec"]["securityContext"]["appArmorProfile"] = json!({"type": "Unconfined"});
            }),
            "without AppArmor",
        ),
        (
            "SELinux options",
            ns,
            pod("fine", |v| {
                v["spec"]["containers"][0]["securityContext"]["seLinuxOptions"] =
                    json!({"type": "spc_t"});
            }),
            "SELinux",
        ),
        (
            "a privileged init container",
            ns,
            pod("fine", |v| {
                v["spec"]["initContainers"] = json!([{"name": "init", "image": "busybox",
                    "securityContext": {"privileged": true, "allowPrivilegeEscalation": true,
                                        "capabilities": {"drop": ["ALL"]}}}]);
            }),
            "unprivileged",
        ),
        (
            "a Multus network",
            ns,
            pod("fine", |v| {
                v["metadata"]["annotations"] = json!({"k8s.v1.cni.cncf.io/networks": "macvlan"});
            }),
            "no annotation that network plugins or runtimes act on",
        ),
        (
            "a runc-backed RuntimeClass the chart does not name",
            ns,
            pod("fine", |v| v["spec"]["runtimeClassName"] = "nvidia".into()),
            "RuntimeClasses the chart names",
        ),
    ];
    for (what, in_ns, p, expected) in refused {
        match pods(in_ns).create(&DRY, &p).await {
            Ok(_) => panic!("{what}: the admission policy admitted it"),
            Err(kube::Error::Api(status)) => assert!(
                status.message.contains(expected),
                "{what}: refused for another reason: {}",
                status.message
            ),
            Err(e) => panic!("{what}: {e}"),
        }
    }
    // UPDATE: an admitted pod may not be given what CREATE refuses (a Multus annotation).
    let created = pods(ns)
        .create(&PostParams::default(), &pod("fine", |_| {}))
        .await
        .expect("the operator creates a sandbox-like pod");
    let patch = json!({"metadata": {"annotations": {"k8s.v1.cni.cncf.io/networks": "macvlan"}}});
    let dry_patch = kube::api::PatchParams {
        dry_run: true,
        ..Default::default()
    };
    match pods(ns)
        .patch(
            created.metadata.name.as_deref().unwrap_or("fine"),
            &dry_patch,
            &kube::api::Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => panic!("the admission policy admitted a Multus annotation on update"),
        Err(kube::Error::Api(status)) => assert!(
            status
                .message
                .contains("no annotation that network plugins"),
            "refused for another reason: {}",
            status.message
        ),
        Err(e) => panic!("update: {e}"),
    }
    for n in [ns, trusted] {
        Api::<Namespace>::all(admin.clone())
            .delete(n, &Default::default())
            .await
            .expect("delete namespace");
    }
}

/// `kind` object `name` labelled as sandbox `sandbox`'s child, with `spec`.
fn child(kind: &str, name: &str, sandbox: &str, spec: serde_json::Value) -> serde_json::Value {
    let mut v = serde_json::json!({
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "palisade",
                                              "palisade.dev/sandbox": sandbox}},
    });
    if kind != "ServiceAccount" {
        v["spec"] = spec;
    }
    v
}

/// Creates `obj` (dry run) with the operator's token; `Ok` or the refusal's message.
async fn try_create<K>(client: &Client, ns: &str, obj: serde_json::Value) -> Result<(), String>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    <K as kube::Resource>::DynamicType: Default,
{
    let obj: K = serde_json::from_value(obj).expect("object");
    match Api::<K>::namespaced(client.clone(), ns)
        .create(&DRY, &obj)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) => Err(status.message),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn the_admission_policy_lets_the_operator_create_only_sandbox_children() {
    use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Service, ServiceAccount};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use serde_json::json;
    let admin = client().await;
    let (release_ns, _) = release();
    let operator = as_operator().await;
    let ns = &palisade_e2e::unique("vap-children");
    namespace(&admin, ns, json!({})).await;

    let headless = json!({"clusterIP": "None", "selector": {"palisade.dev/sandbox": "a"},
                          "ports": [{"port": 8080}]});
    let claim =
        json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}});
    let isolation = json!({"podSelector": {"matchLabels": {"palisade.dev/sandbox": "a"}},
                           "policyTypes": ["Ingress", "Egress"]});
    // The policy takes effect a moment after it is installed.
    palisade_e2e::wait_for(
        "the children admission policy to refuse a load balancer",
        std::time::Duration::from_secs(30),
        || async {
            let lb = child(
                "Service",
                "a",
                "a",
                json!({"type": "LoadBalancer",
                "selector": {"palisade.dev/sandbox": "a"}, "ports": [{"port": 80}]}),
            );
            try_create::<Service>(&operator, ns, lb)
                .await
                .err()
                .map(|_| ())
        },
    )
    .await;

    // What the operator creates is admitted.
    try_create::<Service>(&operator, ns, child("Service", "a", "a", headless.clone()))
        .await
        .expect("a headless sandbox Service");
    try_create::<PersistentVolumeClaim>(
        &operator,
        ns,
        child("PersistentVolumeClaim", "a-workspace", "a", claim.clone()),
    )
    .await
    .expect("a workspace claim");
    try_create::<ServiceAccount>(
        &operator,
        ns,
        child("ServiceAccount", "palisade-a", "a", json!({})),
    )
    .await
    .expect("the sandbox's ServiceAccount");
    try_create::<NetworkPolicy>(
        &operator,
        ns,
        child("NetworkPolicy", "a-isolation", "a", isolation.clone()),
    )
    .await
    .expect("the isolation NetworkPolicy");

    let mut unlabelled_np = child("NetworkPolicy", "x", "a", isolation.clone());
    unlabelled_np["metadata"]["labels"] = json!({});
    let refused: Vec<(&str, Result<(), String>, &str)> = vec![
        (
            "a Service with external IPs",
            try_create::<Service>(&operator, ns, child("Service", "a", "a", json!({"clusterIP": "None",
                "externalIPs": ["203.0.113.7"], "selector": {"palisade.dev/sandbox": "a"}, "ports": [{"port": 80}]}))).await,
            "headless",
        ),
        (
            "a NodePort Service",
            try_create::<Service>(&operator, ns, child("Service", "a", "a", json!({"type": "NodePort",
                "selector": {"palisade.dev/sandbox": "a"}, "ports": [{"port": 80}]}))).await,
            "headless",
        ),
        (
            "a Service selecting another app's pods",
            try_create::<Service>(&operator, ns, child("Service", "a", "a", json!({"clusterIP": "None",
                "selector": {"app": "payments"}, "ports": [{"port": 80}]}))).await,
            "selects only its sandbox's pod",
        ),
        (
            "a claim cloned from another",
            try_create::<PersistentVolumeClaim>(&operator, ns, child("PersistentVolumeClaim", "a-workspace", "a",
                json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                       "dataSource": {"kind": "PersistentVolumeClaim", "name": "db-data"}}))).await,
            "from no other data",
        ),
        (
            "a claim bound to a chosen volume",
            try_create::<PersistentVolumeClaim>(&operator, ns, child("PersistentVolumeClaim", "a-workspace", "a",
                json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                       "volumeName": "pv-of-someone-else"}))).await,
            "from no other data",
        ),
        (
            "a ServiceAccount of another name",
            try_create::<ServiceAccount>(&operator, ns, child("ServiceAccount", "deployer", "a", json!({}))).await,
            "palisade-<sandbox>",
        ),
        (
            "an unlabelled NetworkPolicy",
            try_create::<NetworkPolicy>(&operator, ns, unlabelled_np).await,
            "only its own objects",
        ),
        (
            "a NetworkPolicy opening every pod",
            try_create::<NetworkPolicy>(&operator, ns, child("NetworkPolicy", "x", "a",
                json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}))).await,
            "selects only its sandbox's pod",
        ),
        (
            "a NetworkPolicy in kube-system",
            try_create::<NetworkPolicy>(&operator, "kube-system", child("NetworkPolicy", "a-isolation", "a", isolation.clone())).await,
            "nothing in kube-system",
        ),
        (
            "a NetworkPolicy in the operator's namespace",
            try_create::<NetworkPolicy>(&operator, &release_ns, child("NetworkPolicy", "a-isolation", "a", isolation.clone())).await,
            "its own namespace",
        ),
    ];
    for (what, result, expected) in refused {
        match result {
            Ok(()) => panic!("{what}: the admission policy admitted it"),
            Err(message) => assert!(
                message.contains(expected),
                "{what}: refused for another reason: {message}"
            ),
        }
    }
    // RBAC lets the operator delete these (only so that it may move a warm sandbox's children
    // to the sandbox that took it); admission refuses every deletion (dry run, on real objects
    // the suite creates).
    let kept = |kind: &str, name: &str, spec: serde_json::Value| {
        let mut v = child(kind, name, "a", spec);
        v["apiVersion"] = json!(if kind == "NetworkPolicy" {
            "networking.k8s.io/v1"
        } else {
            "v1"
        });
        v["kind"] = json!(kind);
        v
    };
    let pp = kube::api::PostParams::default();
    let np: NetworkPolicy =
        serde_json::from_value(kept("NetworkPolicy", "a-isolation", isolation)).expect("np");
    Api::<NetworkPolicy>::namespaced(admin.clone(), ns)
        .create(&pp, &np)
        .await
        .expect("np");
    let sa: ServiceAccount =
        serde_json::from_value(kept("ServiceAccount", "palisade-a", json!({}))).expect("sa");
    Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create(&pp, &sa)
        .await
        .expect("sa");
    let pvc: PersistentVolumeClaim =
        serde_json::from_value(kept("PersistentVolumeClaim", "a-workspace", claim)).expect("pvc");
    Api::<PersistentVolumeClaim>::namespaced(admin.clone(), ns)
        .create(&pp, &pvc)
        .await
        .expect("pvc");
    let dry = kube::api::DeleteParams {
        dry_run: true,
        ..Default::default()
    };
    let deleted = [
        (
            "the isolation NetworkPolicy",
            Api::<NetworkPolicy>::namespaced(operator.clone(), ns)
                .delete("a-isolation", &dry)
                .await
                .map(|_| ()),
        ),
        (
            "the ServiceAccount",
            Api::<ServiceAccount>::namespaced(operator.clone(), ns)
                .delete("palisade-a", &dry)
                .await
                .map(|_| ()),
        ),
        (
            "the workspace claim",
            Api::<PersistentVolumeClaim>::namespaced(operator.clone(), ns)
                .delete("a-workspace", &dry)
                .await
                .map(|_| ()),
        ),
    ];
    for (what, result) in deleted {
        match result {
            Ok(()) => panic!("the operator deleted {what}"),
            Err(e) => assert!(
                e.to_string()
                    .contains("deletes no ServiceAccount, claim or NetworkPolicy"),
                "{what}: refused for another reason: {e}"
            ),
        }
    }
    Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone())
        .delete(ns, &Default::default())
        .await
        .expect("delete namespace");
}
