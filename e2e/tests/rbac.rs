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

    let cluster_roles = Api::<ClusterRole>::all(client.clone())
        .list(&selector(&release))
        .await
        .expect("list ClusterRoles");
    assert_eq!(
        cluster_roles.items.len(),
        1,
        "expected one ClusterRole of release {release}"
    );
    let rules = cluster_roles.items[0].rules.clone().unwrap_or_default();
    let diff = differences(&grants(&rules, "the ClusterRole"), &allow["clusterRole"]);
    assert!(diff.is_empty(), "ClusterRole:\n{}", diff.join("\n"));

    let roles = Api::<Role>::namespaced(client.clone(), &ns)
        .list(&selector(&release))
        .await
        .expect("list Roles");
    assert_eq!(
        roles.items.len(),
        1,
        "expected the leader-election Role only"
    );
    let rules = roles.items[0].rules.clone().unwrap_or_default();
    let diff = differences(&grants(&rules, "the Role"), &allow["leaderElectionRole"]);
    assert!(
        diff.is_empty(),
        "leader-election Role:\n{}",
        diff.join("\n")
    );

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
            "delete",
            "networking.k8s.io",
            "networkpolicies",
            None,
            "any-namespace",
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

/// A client that acts as the chart's ServiceAccount (the admin impersonates it).
async fn as_operator(ns: &str, release: &str) -> Client {
    let mut config = kube::Config::infer().await.expect("kubeconfig");
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{ns}:{release}"));
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{ns}"),
        "system:authenticated".into(),
    ]);
    Client::try_from(config).expect("impersonating client")
}

/// A pod as the operator would create it, then changed by `edit`.
fn pod(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> k8s_openapi::api::core::v1::Pod {
    let mut v = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "palisade"}},
        "spec": {"serviceAccountName": name, "containers": [{
            "name": "agent", "image": "ghcr.io/palisade-dev/examples/agent:0.1.0",
            "securityContext": {"allowPrivilegeEscalation": false, "runAsNonRoot": true,
                                "capabilities": {"drop": ["ALL"]}}}]}
    });
    edit(&mut v);
    serde_json::from_value(v).expect("pod")
}

#[tokio::test]
async fn the_admission_policy_lets_the_operator_create_only_sandbox_like_pods() {
    use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
    let admin = client().await;
    let (release_ns, release) = release();
    let operator = as_operator(&release_ns, &release).await;
    // A namespace without Pod Security enforcement: only the admission policy stands in the way.
    let ns = &palisade_e2e::unique("vap");
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).expect("ns"),
        )
        .await
        .expect("create namespace");
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    // Every pod below names an existing ServiceAccount: ServiceAccount admission runs first.
    for name in [
        "fine",
        "other",
        "privileged",
        "fine2",
        "hostnet",
        "hostpath",
    ] {
        accounts
            .create(
                &PostParams::default(),
                &serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))
                    .expect("sa"),
            )
            .await
            .expect("create ServiceAccount");
    }
    let pods: Api<Pod> = Api::namespaced(operator, ns);

    // The sandbox-like pod is admitted (so the refusals below are the policy's doing).
    pods.create(&PostParams::default(), &pod("fine", |_| {}))
        .await
        .expect("the operator may create a sandbox-like pod");

    let refused: Vec<(&str, Pod, &str)> = vec![
        (
            "privileged",
            pod("fine", |v| {
                v["metadata"]["name"] = "privileged".into();
                v["spec"]["serviceAccountName"] = "privileged".into();
                let sc = &mut v["spec"]["containers"][0]["securityContext"];
                sc["privileged"] = true.into();
                sc["allowPrivilegeEscalation"] = true.into();
            }),
            "unprivileged",
        ),
        (
            "another account",
            pod("fine", |v| {
                v["metadata"]["name"] = "borrower".into();
                v["spec"]["serviceAccountName"] = "other".into();
            }),
            "own ServiceAccount",
        ),
        (
            "unlabelled",
            pod("fine", |v| {
                v["metadata"]["name"] = "fine2".into();
                v["spec"]["serviceAccountName"] = "fine2".into();
                v["metadata"]["labels"] = serde_json::json!({});
            }),
            "only create sandbox pods",
        ),
        (
            "host network",
            pod("fine", |v| {
                v["metadata"]["name"] = "hostnet".into();
                v["spec"]["serviceAccountName"] = "hostnet".into();
                v["spec"]["hostNetwork"] = true.into();
            }),
            "no host namespace",
        ),
        (
            "host path",
            pod("fine", |v| {
                v["metadata"]["name"] = "hostpath".into();
                v["spec"]["serviceAccountName"] = "hostpath".into();
                v["spec"]["volumes"] =
                    serde_json::json!([{"name": "root", "hostPath": {"path": "/"}}]);
            }),
            "no host path",
        ),
    ];
    // The policy takes effect a moment after it is installed: wait until it refuses (dry run).
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    palisade_e2e::wait_for(
        "the admission policy to refuse a privileged pod",
        std::time::Duration::from_secs(30),
        // Only the policy refuses this one (another ServiceAccount): the API server's own
        // validation would refuse an invalid pod at once.
        || async { pods.create(&dry, &refused[1].1).await.err().map(|_| ()) },
    )
    .await;
    for (what, pod, expected) in refused {
        match pods.create(&PostParams::default(), &pod).await {
            Ok(_) => panic!("{what}: the admission policy admitted it"),
            Err(kube::Error::Api(status)) => assert!(
                status.message.contains(expected),
                "{what}: refused for another reason: {}",
                status.message
            ),
            Err(e) => panic!("{what}: {e}"),
        }
    }
    namespaces
        .delete(ns, &Default::default())
        .await
        .expect("delete namespace");
}
