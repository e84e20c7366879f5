//! Optional backends (Cilium for FQDN egress, the Security Profiles Operator for generated
//! seccomp profiles) count only when their CRD is installed and the operator may create and
//! patch their objects: a backend it cannot use must block the sandboxes that need it, never
//! leave them half-enforced. The cluster-scoped policies of an administrator that may allow a
//! sandbox more (CiliumClusterwideNetworkPolicy, AdminNetworkPolicy, ClusterNetworkPolicy) are
//! only read: installed, and readable or not (reported in each sandbox's status either way).
//! Checked against a scripted API server.

mod support;

use std::sync::atomic::Ordering;

use palisade::reconcile::facts::OptionalCrds;
use serde_json::{Value, json};
use support::apimock::{Seen, Step, join, mock_client, serve};

const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
const REVIEWS: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
const SPO: &str = "seccompprofiles.security-profiles-operator.x-k8s.io";
const CILIUM: &str = "ciliumnetworkpolicies.cilium.io";
const CCNP: &str = "ciliumclusterwidenetworkpolicies.cilium.io";
const ANP: &str = "adminnetworkpolicies.policy.networking.k8s.io";
const CNP: &str = "clusternetworkpolicies.policy.networking.k8s.io";

/// The read-only kinds, none installed.
fn no_admin_policies() -> Vec<Step> {
    [CCNP, ANP, CNP]
        .map(|c| Step::get(format!("{CRDS}/{c}")).not_found())
        .into()
}

fn crd(name: &str) -> Step {
    let body = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                      "metadata": {"name": name}, "spec": {"group": "x", "names": {"kind": "X", "plural": "xs"},
                      "scope": "Namespaced", "versions": []}});
    Step::get(format!("{CRDS}/{name}")).respond(200, body)
}

/// A SelfSubjectAccessReview for `verb` on `resource`, answered `allowed`.
fn review(
    resource: &'static str,
    verb: &'static str,
    namespace: Option<&'static str>,
    allowed: bool,
) -> Step {
    Step::post(REVIEWS)
        .check(move |s: &Seen| {
            let attrs = &s.body["spec"]["resourceAttributes"];
            assert_eq!(attrs["resource"], resource, "{}", s.body);
            assert_eq!(attrs["verb"], verb, "{}", s.body);
            assert_eq!(
                attrs["namespace"].as_str(),
                namespace,
                "review namespace: {}",
                s.body
            );
        })
        .reply_with(move |s: &Seen| {
            let mut answer: Value = s.body.clone();
            answer["status"] = json!({"allowed": allowed});
            (201, answer)
        })
}

/// A SelfSubjectAccessReview for `verb` on the one object `name` of a cluster-scoped `resource`,
/// answered allowed.
fn named_review(resource: &'static str, verb: &'static str, name: &'static str) -> Step {
    Step::post(REVIEWS)
        .check(move |s: &Seen| {
            let attrs = &s.body["spec"]["resourceAttributes"];
            assert_eq!(attrs["resource"], resource, "{}", s.body);
            assert_eq!(attrs["verb"], verb, "{}", s.body);
            assert_eq!(attrs["name"], name, "{}", s.body);
            assert!(attrs["namespace"].is_null(), "{}", s.body);
        })
        .reply_with(|s: &Seen| {
            let mut answer: Value = s.body.clone();
            answer["status"] = json!({"allowed": true});
            (201, answer)
        })
}

async fn refresh_crds(steps: Vec<Step>, namespace: Option<&str>) -> (OptionalCrds, bool) {
    let (client, handle) = mock_client();
    let verifier = tokio::spawn(serve(handle, steps));
    let crds = OptionalCrds::default();
    let changed = crds
        .refresh(&client, namespace)
        .await
        .expect("refresh succeeds");
    drop(client);
    join(verifier).await;
    (crds, changed)
}

async fn refresh(mut steps: Vec<Step>, namespace: Option<&str>) -> (bool, bool, bool) {
    steps.extend(no_admin_policies());
    let (crds, changed) = refresh_crds(steps, namespace).await;
    (
        crds.seccomp_profile.load(Ordering::SeqCst),
        crds.cilium.load(Ordering::SeqCst),
        changed,
    )
}

#[tokio::test]
async fn absent_crds_are_absent_without_asking_for_permissions() {
    let steps = vec![
        Step::get(format!("{CRDS}/{SPO}")).not_found(),
        Step::get(format!("{CRDS}/{CILIUM}")).not_found(),
    ];
    assert_eq!(refresh(steps, None).await, (false, false, false));
}

#[tokio::test]
async fn an_installed_backend_the_operator_may_not_write_counts_as_absent() {
    let steps = vec![
        crd(SPO),
        review("seccompprofiles", "create", None, true),
        review("seccompprofiles", "patch", None, false),
        crd(CILIUM),
        review("ciliumnetworkpolicies", "create", None, false),
        // Read only: others' CiliumNetworkPolicies are still looked at.
        review("ciliumnetworkpolicies", "list", None, false),
    ];
    assert_eq!(refresh(steps, None).await, (false, false, true));
}

#[tokio::test]
async fn an_installed_backend_the_operator_may_write_is_used_in_its_namespace() {
    let steps = vec![
        Step::get(format!("{CRDS}/{SPO}")).not_found(),
        crd(CILIUM),
        review("ciliumnetworkpolicies", "create", Some("agents"), true),
        review("ciliumnetworkpolicies", "patch", Some("agents"), true),
        review("ciliumnetworkpolicies", "list", Some("agents"), true),
        review("ciliumnetworkpolicies", "watch", Some("agents"), true),
    ];
    let mut namespaces = vec![
        named_review("namespaces", "list", "agents"),
        named_review("namespaces", "watch", "agents"),
    ];
    let mut steps = steps;
    steps.extend(no_admin_policies());
    steps.append(&mut namespaces);
    let (crds, changed) = refresh_crds(steps, Some("agents")).await;
    assert!(changed);
    assert!(crds.cilium.load(Ordering::SeqCst));
    assert!(crds.cilium_policies.readable.load(Ordering::SeqCst));
    // Only the watched namespace's labels are read.
    assert!(crds.namespaces.load(Ordering::SeqCst));
}

#[tokio::test]
async fn cluster_scoped_admin_policies_are_read_when_the_operator_may_list_them() {
    // Installed and readable (list, watch: cluster-wide, whatever namespace is watched);
    // installed and unreadable; absent. Namespaces (their labels) are watched because one kind
    // is readable.
    let steps = vec![
        Step::get(format!("{CRDS}/{SPO}")).not_found(),
        Step::get(format!("{CRDS}/{CILIUM}")).not_found(),
        crd(CCNP),
        review("ciliumclusterwidenetworkpolicies", "list", None, false),
        crd(ANP),
        review("adminnetworkpolicies", "list", None, true),
        review("adminnetworkpolicies", "watch", None, true),
        Step::get(format!("{CRDS}/{CNP}")).not_found(),
        named_review("namespaces", "list", "agents"),
        named_review("namespaces", "watch", "agents"),
    ];
    let (crds, changed) = refresh_crds(steps, Some("agents")).await;
    assert!(changed);
    let state = |k: &palisade::reconcile::facts::ReadOnly| {
        (
            k.installed.load(Ordering::SeqCst),
            k.readable.load(Ordering::SeqCst),
        )
    };
    assert_eq!(state(&crds.cilium_clusterwide), (true, false));
    assert_eq!(state(&crds.admin_network_policy), (true, true));
    assert_eq!(state(&crds.cluster_network_policy), (false, false));
    assert!(crds.namespaces.load(Ordering::SeqCst));
}
