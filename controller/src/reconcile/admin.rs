//! Cluster-scoped policies of a cluster administrator that may allow a sandbox more than its
//! policy: Cilium's CiliumClusterwideNetworkPolicies (Cilium adds up every policy selecting an
//! endpoint) and AdminNetworkPolicies / Admin-tier ClusterNetworkPolicies (their `Allow` /
//! `Accept` rules are decided before any NetworkPolicy is looked at). They are an
//! administrator's decision for the whole cluster, so the sandbox is not blocked: each sandbox
//! they concern says so in `status.enforcement.notEnforced`.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::Value;

use crate::api::ReportEntry;

use super::cilium::{Endpoint, Match};
use super::decide::selects;

/// Kinds of cluster-scoped policy that may widen a sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminKind {
    CiliumClusterwide,
    /// `policy.networking.k8s.io/v1alpha1` AdminNetworkPolicy.
    AdminNetworkPolicy,
    /// `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy (its Admin tier).
    ClusterNetworkPolicy,
}

impl AdminKind {
    pub const ALL: [AdminKind; 3] = [
        AdminKind::CiliumClusterwide,
        AdminKind::AdminNetworkPolicy,
        AdminKind::ClusterNetworkPolicy,
    ];

    pub fn kind(self) -> &'static str {
        match self {
            AdminKind::CiliumClusterwide => "CiliumClusterwideNetworkPolicy",
            AdminKind::AdminNetworkPolicy => "AdminNetworkPolicy",
            AdminKind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            AdminKind::CiliumClusterwide => "CiliumClusterwideNetworkPolicies",
            AdminKind::AdminNetworkPolicy => "AdminNetworkPolicies",
            AdminKind::ClusterNetworkPolicy => "ClusterNetworkPolicies",
        }
    }

    /// The served version the operator reads.
    pub fn resource(self) -> ApiResource {
        let (group, version, plural) = match self {
            AdminKind::CiliumClusterwide => ("cilium.io", "v2", "ciliumclusterwidenetworkpolicies"),
            AdminKind::AdminNetworkPolicy => (
                "policy.networking.k8s.io",
                "v1alpha1",
                "adminnetworkpolicies",
            ),
            AdminKind::ClusterNetworkPolicy => (
                "policy.networking.k8s.io",
                "v1alpha2",
                "clusternetworkpolicies",
            ),
        };
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, version, self.kind()),
            plural,
        )
    }

    /// The action of a rule that allows traffic, overriding NetworkPolicies.
    fn allow_action(self) -> &'static str {
        match self {
            AdminKind::ClusterNetworkPolicy => "Accept",
            _ => "Allow",
        }
    }

    /// The chart value that grants the operator read access to this kind.
    pub fn rbac_value(self) -> &'static str {
        match self {
            AdminKind::CiliumClusterwide => "rbac.cilium",
            _ => "rbac.adminNetworkPolicies",
        }
    }
}

/// What the operator knows of one kind of cluster-scoped policy.
#[derive(Clone, Copy, Debug, Default)]
pub enum Known<'a> {
    /// Its CRD is not installed.
    #[default]
    Absent,
    /// Its CRD is installed but the operator may not list and watch it.
    Unreadable,
    /// Installed and readable, but not listed yet.
    Listing,
    /// Every object of the kind.
    Listed(&'a [Arc<DynamicObject>]),
}

/// What the operator holds of one kind of cluster-scoped policy, owned (see [`Known`]).
#[derive(Clone, Debug, Default)]
pub enum Read {
    #[default]
    Absent,
    Unreadable,
    Listing,
    Listed(Vec<Arc<DynamicObject>>),
}

impl Read {
    pub fn known(&self) -> Known<'_> {
        match self {
            Read::Absent => Known::Absent,
            Read::Unreadable => Known::Unreadable,
            Read::Listing => Known::Listing,
            Read::Listed(objects) => Known::Listed(objects),
        }
    }
}

/// The cluster-scoped policies as observed for one decision.
#[derive(Clone, Copy, Debug, Default)]
pub struct AdminPolicies<'a> {
    pub cilium_clusterwide: Known<'a>,
    pub admin_network_policies: Known<'a>,
    pub cluster_network_policies: Known<'a>,
    /// The labels of the sandbox's namespace (`None`: unknown).
    pub namespace_labels: Option<&'a BTreeMap<String, String>>,
}

/// The pod as the cluster-scoped policies select it.
pub struct Subject<'a> {
    pub namespace: &'a str,
    /// The pod's labels (live pod's with the plan's).
    pub pod_labels: &'a BTreeMap<String, String>,
    pub service_account: &'a str,
    /// The sandbox's policy lets any ingress in anyway (ingress allow rules widen nothing).
    pub ingress_open: bool,
}

impl<'a> AdminPolicies<'a> {
    fn of(&self, kind: AdminKind) -> Known<'a> {
        match kind {
            AdminKind::CiliumClusterwide => self.cilium_clusterwide,
            AdminKind::AdminNetworkPolicy => self.admin_network_policies,
            AdminKind::ClusterNetworkPolicy => self.cluster_network_policies,
        }
    }

    /// Whether a kind is installed and readable but not listed yet.
    pub fn listing(&self) -> bool {
        AdminKind::ALL
            .iter()
            .any(|k| matches!(self.of(*k), Known::Listing))
    }

    /// The `notEnforced` entries: per kind, one naming the policies that allow the pod more,
    /// one naming those that may (they read labels the operator does not know), or one saying
    /// the kind cannot be read (yet).
    pub fn report(&self, subject: &Subject) -> Vec<ReportEntry> {
        let endpoint = Endpoint::new(
            subject.pod_labels,
            subject.namespace,
            subject.service_account,
            self.namespace_labels,
        );
        let mut namespace_labels = self.namespace_labels.cloned().unwrap_or_default();
        namespace_labels.insert(
            "kubernetes.io/metadata.name".into(),
            subject.namespace.into(),
        );
        let mut out = Vec::new();
        for kind in AdminKind::ALL {
            match self.of(kind) {
                Known::Absent => {}
                Known::Unreadable => out.push(ReportEntry::new(
                    "network",
                    format!(
                        "the operator may not list {}: one could let this pod reach more than its policy allows (grant list and watch, e.g. the chart's {})",
                        kind.plural(),
                        kind.rbac_value()
                    ),
                )),
                Known::Listing => out.push(ReportEntry::new(
                    "network",
                    format!(
                        "{} are not read yet: one could let this pod reach more than its policy allows",
                        kind.plural()
                    ),
                )),
                Known::Listed(policies) => {
                    let mut found: Vec<(Match, String, Vec<&'static str>)> = policies
                        .iter()
                        .filter_map(|p| {
                            let (m, directions) = match kind {
                                AdminKind::CiliumClusterwide => {
                                    super::cilium::allows(p, &endpoint, subject.ingress_open)?
                                }
                                _ => admin_allows(
                                    kind,
                                    p,
                                    subject,
                                    &namespace_labels,
                                    self.namespace_labels.is_some(),
                                )?,
                            };
                            Some((m, p.name_any(), directions))
                        })
                        .collect();
                    found.sort();
                    for m in [Match::Yes, Match::Maybe] {
                        let these: Vec<_> = found.iter().filter(|f| f.0 == m).collect();
                        if !these.is_empty() {
                            out.push(entry(kind, m, &these));
                        }
                    }
                }
            }
        }
        out
    }
}

/// An AdminNetworkPolicy's (or Admin-tier ClusterNetworkPolicy's) allowing rules, if its
/// subject is the pod.
fn admin_allows(
    kind: AdminKind,
    p: &DynamicObject,
    s: &Subject,
    namespace_labels: &BTreeMap<String, String>,
    namespace_known: bool,
) -> Option<(Match, Vec<&'static str>)> {
    let spec = &p.data["spec"];
    if kind == AdminKind::ClusterNetworkPolicy && spec["tier"].as_str() != Some("Admin") {
        // The Baseline tier is decided after NetworkPolicies: the sandbox's own NetworkPolicy
        // selects the pod, so it decides first.
        return None;
    }
    let allows = |direction: &str| {
        spec[direction].as_array().is_some_and(|rules| {
            rules
                .iter()
                .any(|r| r["action"].as_str() == Some(kind.allow_action()))
        })
    };
    let mut directions = Vec::new();
    if allows("egress") {
        directions.push("egress");
    }
    if allows("ingress") && !s.ingress_open {
        directions.push("ingress");
    }
    if directions.is_empty() {
        return None;
    }
    let by_namespace = |sel: &Value| -> Match {
        let Some(sel) = label_selector(sel) else {
            return Match::No;
        };
        if selects(&sel, namespace_labels) {
            Match::Yes
        } else if namespace_known {
            Match::No
        } else {
            Match::Maybe
        }
    };
    let subject = &spec["subject"];
    let m = if !subject["namespaces"].is_null() {
        by_namespace(&subject["namespaces"])
    } else if !subject["pods"].is_null() {
        let pods = &subject["pods"];
        let by_pod =
            label_selector(&pods["podSelector"]).is_some_and(|sel| selects(&sel, s.pod_labels));
        if by_pod {
            by_namespace(&pods["namespaceSelector"])
        } else {
            Match::No
        }
    } else {
        Match::No
    };
    (m != Match::No).then_some((m, directions))
}

/// A Kubernetes label selector; a missing one selects nothing (the API requires it).
fn label_selector(v: &Value) -> Option<LabelSelector> {
    if v.is_null() {
        return None;
    }
    serde_json::from_value(v.clone()).ok()
}

/// One entry for the policies of a kind that select the pod (`m`): their names (the first
/// three), and what they allow.
fn entry(kind: AdminKind, m: Match, found: &[&(Match, String, Vec<&'static str>)]) -> ReportEntry {
    let mut directions: Vec<&str> = found.iter().flat_map(|f| f.2.iter().copied()).collect();
    directions.sort();
    directions.dedup();
    let names: Vec<&str> = found.iter().take(3).map(|f| f.1.as_str()).collect();
    let mut names = names.join(", ");
    if found.len() > 3 {
        names.push_str(&format!(" (+{} more)", found.len() - 3));
    }
    let how = match m {
        Match::Yes => "allow",
        _ => "may allow (by labels the operator cannot read)",
    };
    let precedence = match kind {
        AdminKind::CiliumClusterwide => "Cilium adds them to the sandbox's policies",
        _ => "decided before its NetworkPolicy",
    };
    ReportEntry::new(
        format!("network.{}", directions.join("+")),
        format!(
            "{} {}: {how} this pod more {} ({precedence}; an administrator's: reported, not blocked)",
            kind.plural(),
            names,
            directions.join(" and "),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(kind: &str, name: &str, spec: Value) -> Arc<DynamicObject> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "x/v1", "kind": kind, "metadata": {"name": name}, "spec": spec
            }))
            .unwrap(),
        )
    }

    fn pod() -> BTreeMap<String, String> {
        BTreeMap::from([("palisade.dev/sandbox".into(), "a".into())])
    }

    fn subject<'a>(labels: &'a BTreeMap<String, String>, ingress_open: bool) -> Subject<'a> {
        Subject {
            namespace: "team",
            pod_labels: labels,
            service_account: "palisade-a",
            ingress_open,
        }
    }

    /// The report's entries as (field, message).
    fn lines(view: &AdminPolicies, ingress_open: bool) -> Vec<(String, String)> {
        let labels = pod();
        view.report(&subject(&labels, ingress_open))
            .into_iter()
            .map(|e| (e.field, e.message))
            .collect()
    }

    #[test]
    fn admin_network_policy_allow_rules_for_the_pod_are_reported() {
        let ns = BTreeMap::from([("tenant".to_string(), "blue".to_string())]);
        let anps = vec![
            obj(
                "AdminNetworkPolicy",
                "open-egress",
                json!({"priority": 1, "subject": {"namespaces": {"matchLabels": {"tenant": "blue"}}},
                       "egress": [{"action": "Allow", "to": [{"networks": ["0.0.0.0/0"]}]}]}),
            ),
            // Deny and Pass rules narrow or defer: nothing to report.
            obj(
                "AdminNetworkPolicy",
                "deny",
                json!({"subject": {"namespaces": {}},
                       "egress": [{"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]},
                                  {"action": "Pass", "to": [{"networks": ["10.0.0.0/8"]}]}]}),
            ),
            // Another tenant's namespace, other pods, and pods here in another namespace.
            obj(
                "AdminNetworkPolicy",
                "red",
                json!({"subject": {"namespaces": {"matchLabels": {"tenant": "red"}}},
                       "egress": [{"action": "Allow", "to": []}]}),
            ),
            obj(
                "AdminNetworkPolicy",
                "db-pods",
                json!({"subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "db"}}}},
                       "egress": [{"action": "Allow", "to": []}]}),
            ),
            obj(
                "AdminNetworkPolicy",
                "sandboxes-of-red",
                json!({"subject": {"pods": {"namespaceSelector": {"matchLabels": {"tenant": "red"}}, "podSelector": {}}},
                       "egress": [{"action": "Allow", "to": []}]}),
            ),
            // Pods of any namespace by the sandbox label, ingress only.
            obj(
                "AdminNetworkPolicy",
                "monitoring-in",
                json!({"subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchExpressions": [{"key": "palisade.dev/sandbox", "operator": "Exists"}]}}},
                       "ingress": [{"action": "Allow", "from": [{"namespaces": {}}]}]}),
            ),
        ];
        let view = AdminPolicies {
            admin_network_policies: Known::Listed(&anps),
            namespace_labels: Some(&ns),
            ..Default::default()
        };
        assert_eq!(
            lines(&view, false),
            [(
                "network.egress+ingress".to_string(),
                "AdminNetworkPolicies monitoring-in, open-egress: allow this pod more egress and ingress (decided before its NetworkPolicy; an administrator's: reported, not blocked)".to_string()
            )]
        );
        // Ingress rules widen nothing when the sandbox's ingress is open anyway.
        let open = lines(&view, true);
        assert_eq!(open.len(), 1);
        assert!(
            open[0]
                .1
                .starts_with("AdminNetworkPolicies open-egress: allow this pod more egress ("),
            "{open:?}"
        );
        // The namespace's name label is known without reading the namespace.
        let by_name = vec![obj(
            "AdminNetworkPolicy",
            "by-name",
            json!({"subject": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "team"}}},
                   "egress": [{"action": "Allow"}]}),
        )];
        let view = AdminPolicies {
            admin_network_policies: Known::Listed(&by_name),
            ..Default::default()
        };
        assert!(
            lines(&view, false)[0]
                .1
                .starts_with("AdminNetworkPolicies by-name: allow")
        );
        // Unknown namespace labels: reported as possible.
        let view = AdminPolicies {
            admin_network_policies: Known::Listed(&anps[..1]),
            ..Default::default()
        };
        assert!(
            lines(&view, false)[0]
                .1
                .starts_with("AdminNetworkPolicies open-egress: may allow")
        );
    }

    #[test]
    fn many_policies_make_one_bounded_entry_per_kind_in_name_order() {
        let anps: Vec<_> = ["e", "d", "c", "b", "a"]
            .iter()
            .map(|n| {
                obj(
                    "AdminNetworkPolicy",
                    n,
                    json!({"subject": {"namespaces": {}}, "egress": [{"action": "Allow"}]}),
                )
            })
            .collect();
        let ns = BTreeMap::new();
        let view = AdminPolicies {
            admin_network_policies: Known::Listed(&anps),
            namespace_labels: Some(&ns),
            ..Default::default()
        };
        let report = lines(&view, false);
        assert_eq!(report.len(), 1);
        assert!(
            report[0]
                .1
                .starts_with("AdminNetworkPolicies a, b, c (+2 more): allow"),
            "{report:?}"
        );
    }

    #[test]
    fn cluster_network_policy_admin_tier_accept_rules_are_reported() {
        let cnps = vec![
            obj(
                "ClusterNetworkPolicy",
                "admin",
                json!({"tier": "Admin", "priority": 5, "subject": {"namespaces": {}},
                       "egress": [{"action": "Accept", "to": [{"networks": ["0.0.0.0/0"]}]}]}),
            ),
            obj(
                "ClusterNetworkPolicy",
                "admin-in",
                json!({"tier": "Admin", "priority": 6, "subject": {"pods": {"namespaceSelector": {}, "podSelector": {}}},
                       "ingress": [{"action": "Accept", "from": [{"namespaces": {}}]}]}),
            ),
            obj(
                "ClusterNetworkPolicy",
                "baseline",
                json!({"tier": "Baseline", "priority": 5, "subject": {"namespaces": {}},
                       "egress": [{"action": "Accept", "to": [{"networks": ["0.0.0.0/0"]}]}]}),
            ),
            obj(
                "ClusterNetworkPolicy",
                "v1alpha1-word",
                json!({"tier": "Admin", "subject": {"namespaces": {}},
                       "egress": [{"action": "Allow"}]}),
            ),
        ];
        let ns = BTreeMap::new();
        let view = AdminPolicies {
            cluster_network_policies: Known::Listed(&cnps),
            namespace_labels: Some(&ns),
            ..Default::default()
        };
        let report = lines(&view, false);
        assert_eq!(report.len(), 1, "{report:#?}");
        assert!(
            report[0].1.starts_with(
                "ClusterNetworkPolicies admin, admin-in: allow this pod more egress and ingress"
            ),
            "{report:?}"
        );
    }

    #[test]
    fn cilium_clusterwide_allow_rules_for_the_pod_are_reported() {
        let ns = BTreeMap::from([("tenant".to_string(), "blue".to_string())]);
        let mut specs = (*obj("CiliumClusterwideNetworkPolicy", "in-specs", json!(null))).clone();
        specs.data["specs"] = json!([{"endpointSelector": {"matchExpressions": [{"key": "reserved:host", "operator": "DoesNotExist"}]},
                                      "egress": [{"toEntities": ["world"]}]}]);
        let ccnps = vec![
            obj(
                "CiliumClusterwideNetworkPolicy",
                "world",
                json!({"endpointSelector": {"matchLabels": {"io.cilium.k8s.namespace.labels.tenant": "blue"}},
                       "egress": [{"toEntities": ["world"]}]}),
            ),
            Arc::new(specs),
            obj(
                "CiliumClusterwideNetworkPolicy",
                "deny-only",
                json!({"endpointSelector": {}, "egressDeny": [{"toEntities": ["world"]}]}),
            ),
            obj(
                "CiliumClusterwideNetworkPolicy",
                "hosts",
                json!({"nodeSelector": {}, "egress": [{"toEntities": ["world"]}]}),
            ),
            obj(
                "CiliumClusterwideNetworkPolicy",
                "other-namespace",
                json!({"endpointSelector": {"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system"}},
                       "egress": [{"toEntities": ["world"]}]}),
            ),
        ];
        let view = AdminPolicies {
            cilium_clusterwide: Known::Listed(&ccnps),
            namespace_labels: Some(&ns),
            ..Default::default()
        };
        let report = lines(&view, false);
        assert_eq!(report.len(), 1, "{report:#?}");
        assert!(
            report[0].1.starts_with(
                "CiliumClusterwideNetworkPolicies in-specs, world: allow this pod more egress"
            ),
            "{report:?}"
        );
        // Namespace labels unknown: the one that reads them may select.
        let unknown = AdminPolicies {
            cilium_clusterwide: Known::Listed(&ccnps),
            ..Default::default()
        };
        let report = lines(&unknown, false);
        assert_eq!(report.len(), 2, "{report:#?}");
        assert!(
            report[1]
                .1
                .starts_with("CiliumClusterwideNetworkPolicies world: may allow"),
            "{report:?}"
        );
    }

    #[test]
    fn kinds_the_operator_cannot_read_are_reported_on_every_sandbox() {
        let view = AdminPolicies {
            cilium_clusterwide: Known::Unreadable,
            admin_network_policies: Known::Listing,
            cluster_network_policies: Known::Absent,
            namespace_labels: None,
        };
        let report = lines(&view, false);
        assert_eq!(report.len(), 2, "{report:#?}");
        assert!(
            report[0]
                .1
                .contains("may not list CiliumClusterwideNetworkPolicies")
        );
        assert!(report[0].1.contains("rbac.cilium"));
        assert!(
            report[1]
                .1
                .contains("AdminNetworkPolicies are not read yet")
        );
        assert!(view.listing());
    }
}
