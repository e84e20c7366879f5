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

use super::cilium::{as_label_selector, rule_widens};
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

/// Whether a selector selects: surely, or only possibly (it reads labels not known).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Match {
    No,
    Maybe,
    Yes,
}

impl<'a> AdminPolicies<'a> {
    fn of(&self, kind: AdminKind) -> Known<'a> {
        match kind {
            AdminKind::CiliumClusterwide => self.cilium_clusterwide,
            AdminKind::AdminNetworkPolicy => self.admin_network_policies,
            AdminKind::ClusterNetworkPolicy => self.cluster_network_policies,
        }
    }

    /// The namespace's labels, with the one the API server always sets.
    fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        let mut labels = self.namespace_labels.cloned().unwrap_or_default();
        labels.insert("kubernetes.io/metadata.name".into(), namespace.into());
        labels
    }

    /// One `notEnforced` entry for each cluster-scoped policy that allows the pod more (or may),
    /// and for each kind the operator cannot read.
    pub fn report(&self, subject: &Subject) -> Vec<ReportEntry> {
        let mut out = Vec::new();
        for kind in AdminKind::ALL {
            match self.of(kind) {
                Known::Absent => {}
                Known::Unreadable => out.push(ReportEntry::new(
                    "network",
                    format!(
                        "{k}s are installed but the operator may not list them: one could let this pod reach more than its policy allows (grant list and watch, e.g. the chart's {v})",
                        k = kind.kind(),
                        v = kind.rbac_value()
                    ),
                )),
                Known::Listing => out.push(ReportEntry::new(
                    "network",
                    format!(
                        "{}s are installed and not read yet: one could let this pod reach more than its policy allows",
                        kind.kind()
                    ),
                )),
                Known::Listed(policies) => {
                    for p in policies.iter() {
                        let found = match kind {
                            AdminKind::CiliumClusterwide => self.cilium_match(p, subject),
                            _ => self.admin_match(kind, p, subject),
                        };
                        if let Some((m, directions)) = found {
                            out.push(entry(kind, &p.name_any(), m, &directions));
                        }
                    }
                }
            }
        }
        out
    }

    /// A CiliumClusterwideNetworkPolicy's allow rules that select the pod, if any. Cilium sees
    /// the namespace's labels on the endpoint as `io.cilium.k8s.namespace.labels.<key>`.
    fn cilium_match(&self, p: &DynamicObject, s: &Subject) -> Option<(Match, Vec<&'static str>)> {
        let mut labels =
            super::cilium::endpoint_labels(s.pod_labels, s.namespace, s.service_account);
        let namespace_known = self.namespace_labels.is_some();
        for (k, v) in self.namespace_labels(s.namespace) {
            labels.insert(format!("io.cilium.k8s.namespace.labels.{k}"), v);
        }
        let mut rules: Vec<&Value> = vec![&p.data["spec"]];
        if let Some(specs) = p.data["specs"].as_array() {
            rules.extend(specs.iter());
        }
        let mut best = Match::No;
        let mut directions = Vec::new();
        for r in rules.into_iter().filter(|r| !r.is_null()) {
            let Some(widens) = rule_widens(r, s.ingress_open) else {
                continue;
            };
            let Some(sel) = r.get("endpointSelector").and_then(as_label_selector) else {
                continue;
            };
            let m = if selects(&sel, &labels) {
                Match::Yes
            } else if !namespace_known && reads_namespace_labels(&sel) {
                Match::Maybe
            } else {
                Match::No
            };
            if m != Match::No {
                best = best.max_by(m);
                for d in widens {
                    if !directions.contains(&d) {
                        directions.push(d);
                    }
                }
            }
        }
        (best != Match::No).then_some((best, directions))
    }

    /// An AdminNetworkPolicy's (or Admin-tier ClusterNetworkPolicy's) allowing rules, if its
    /// subject is the pod.
    fn admin_match(
        &self,
        kind: AdminKind,
        p: &DynamicObject,
        s: &Subject,
    ) -> Option<(Match, Vec<&'static str>)> {
        let spec = &p.data["spec"];
        if kind == AdminKind::ClusterNetworkPolicy && spec["tier"].as_str() != Some("Admin") {
            // The Baseline tier is decided after NetworkPolicies: the sandbox's own
            // NetworkPolicy selects the pod, so it decides first.
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
        let namespace_labels = self.namespace_labels(s.namespace);
        let by_namespace = |sel: &Value| -> Match {
            let Some(sel) = label_selector(sel) else {
                return Match::No;
            };
            if selects(&sel, &namespace_labels) {
                Match::Yes
            } else if self.namespace_labels.is_none() {
                Match::Maybe
            } else {
                Match::No
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
}

impl Match {
    fn max_by(self, other: Match) -> Match {
        match (self, other) {
            (Match::Yes, _) | (_, Match::Yes) => Match::Yes,
            (Match::Maybe, _) | (_, Match::Maybe) => Match::Maybe,
            _ => Match::No,
        }
    }
}

/// A Kubernetes label selector; a missing one selects nothing (the API requires it).
fn label_selector(v: &Value) -> Option<LabelSelector> {
    if v.is_null() {
        return None;
    }
    serde_json::from_value(v.clone()).ok()
}

/// Whether a Cilium endpoint selector reads namespace labels.
fn reads_namespace_labels(sel: &LabelSelector) -> bool {
    let keys = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, _)| k)
        .chain(sel.match_expressions.iter().flatten().map(|e| &e.key));
    keys.into_iter()
        .any(|k| k.starts_with("io.cilium.k8s.namespace.labels."))
}

fn entry(kind: AdminKind, name: &str, m: Match, directions: &[&str]) -> ReportEntry {
    let how = match m {
        Match::Yes => "selects this pod",
        _ => "may select this pod (the operator cannot read its namespace's labels)",
    };
    let rules = directions.join(" and ");
    let precedence = match kind {
        AdminKind::CiliumClusterwide => "Cilium adds it to the sandbox's own policies",
        _ => "it is decided before the sandbox's NetworkPolicy",
    };
    ReportEntry::new(
        format!(
            "network.{}",
            directions.first().copied().unwrap_or("egress")
        ),
        format!(
            "{} {name} {how} with {rules} allow rules; {precedence}, so the sandbox may reach more than its policy allows (a cluster administrator's policy: reported, not blocked)",
            kind.kind()
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

    #[test]
    fn admin_network_policy_allow_rules_for_the_pod_are_reported() {
        let labels = pod();
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
            // Another tenant's namespace, and other pods.
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
        let report = view.report(&subject(&labels, false));
        let names: Vec<&str> = report
            .iter()
            .map(|e| e.message.split_whitespace().nth(1).unwrap_or_default())
            .collect();
        assert_eq!(names, ["open-egress", "monitoring-in"], "{report:#?}");
        assert_eq!(report[0].field, "network.egress");
        assert!(
            report[0]
                .message
                .contains("selects this pod with egress allow rules")
        );
        assert_eq!(report[1].field, "network.ingress");
        // Ingress rules widen nothing when the sandbox's ingress is open anyway.
        let report = view.report(&subject(&labels, true));
        assert_eq!(report.len(), 1, "{report:#?}");
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
            view.report(&subject(&labels, false))[0]
                .message
                .contains("selects this pod")
        );
        // Unknown namespace labels: reported as possible.
        let view = AdminPolicies {
            admin_network_policies: Known::Listed(&anps[..1]),
            ..Default::default()
        };
        assert!(
            view.report(&subject(&labels, false))[0]
                .message
                .contains("may select")
        );
    }

    #[test]
    fn cluster_network_policy_admin_tier_accept_rules_are_reported() {
        let labels = pod();
        let cnps = vec![
            obj(
                "ClusterNetworkPolicy",
                "admin",
                json!({"tier": "Admin", "priority": 5, "subject": {"namespaces": {}},
                       "egress": [{"action": "Accept", "to": [{"networks": ["0.0.0.0/0"]}]}]}),
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
        let report = view.report(&subject(&labels, false));
        assert_eq!(report.len(), 1, "{report:#?}");
        assert!(
            report[0]
                .message
                .starts_with("ClusterNetworkPolicy admin selects")
        );
    }

    #[test]
    fn cilium_clusterwide_allow_rules_for_the_pod_are_reported() {
        let labels = pod();
        let ns = BTreeMap::from([("tenant".to_string(), "blue".to_string())]);
        let ccnps = vec![
            obj(
                "CiliumClusterwideNetworkPolicy",
                "world",
                json!({"endpointSelector": {"matchLabels": {"io.cilium.k8s.namespace.labels.tenant": "blue"}},
                       "egress": [{"toEntities": ["world"]}]}),
            ),
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
        let report = view.report(&subject(&labels, false));
        assert_eq!(report.len(), 1, "{report:#?}");
        assert!(
            report[0]
                .message
                .starts_with("CiliumClusterwideNetworkPolicy world selects this pod with egress")
        );
        let unknown = AdminPolicies {
            cilium_clusterwide: Known::Listed(&ccnps),
            ..Default::default()
        };
        assert!(
            unknown.report(&subject(&labels, false))[0]
                .message
                .contains("may select")
        );
    }

    #[test]
    fn kinds_the_operator_cannot_read_are_reported_on_every_sandbox() {
        let labels = pod();
        let view = AdminPolicies {
            cilium_clusterwide: Known::Unreadable,
            admin_network_policies: Known::Listing,
            cluster_network_policies: Known::Absent,
            namespace_labels: None,
        };
        let report = view.report(&subject(&labels, false));
        assert_eq!(report.len(), 2, "{report:#?}");
        assert!(report[0].message.contains("may not list them"));
        assert!(report[0].message.contains("rbac.cilium"));
        assert!(report[1].message.contains("not read yet"));
    }
}
