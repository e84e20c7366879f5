//! Cilium policies of others that could widen a sandbox: Cilium adds up every policy selecting
//! an endpoint, CiliumNetworkPolicies and NetworkPolicies alike, so another policy with allow
//! rules that selects the sandbox's pod can only widen what it may reach.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::ResourceExt;
use kube::api::DynamicObject;
use serde_json::Value;

use super::decide::selects;
use super::ownership::controlled_by;

/// Cilium's label for each of the namespace's labels on an endpoint.
pub const NAMESPACE_LABELS: &str = "io.cilium.k8s.namespace.labels.";
/// Cilium's label for the cluster's name (a Cilium setting the operator does not know).
const CLUSTER_LABEL: &str = "io.cilium.k8s.policy.cluster";
/// Marks a selector key of a source other than the pod's labels (`reserved:`, `cidr:`, ...): no
/// pod carries it (a label key cannot contain this character).
const NOT_A_POD_LABEL: char = '\u{1}';

/// What Cilium sees on the sandbox's endpoint.
pub struct Endpoint {
    /// The pod's Kubernetes labels, its namespace, its ServiceAccount and (when known) its
    /// namespace's labels.
    pub labels: BTreeMap<String, String>,
    /// Whether the namespace's labels are known.
    pub namespace_known: bool,
}

/// Whether a selector selects the endpoint: surely, or only possibly (it reads labels the
/// operator does not know).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Match {
    No,
    Maybe,
    Yes,
}

impl Endpoint {
    pub fn new(
        pod_labels: &BTreeMap<String, String>,
        namespace: &str,
        service_account: &str,
        namespace_labels: Option<&BTreeMap<String, String>>,
    ) -> Self {
        let mut labels = pod_labels.clone();
        labels.insert("io.kubernetes.pod.namespace".into(), namespace.into());
        labels.insert(
            "io.cilium.k8s.policy.serviceaccount".into(),
            service_account.into(),
        );
        for (k, v) in namespace_labels.into_iter().flatten() {
            labels.insert(format!("{NAMESPACE_LABELS}{k}"), v.clone());
        }
        // Set by the API server on every namespace.
        labels.insert(
            format!("{NAMESPACE_LABELS}kubernetes.io/metadata.name"),
            namespace.into(),
        );
        Self {
            labels,
            namespace_known: namespace_labels.is_some(),
        }
    }

    fn unknown(&self, key: &str) -> bool {
        key == CLUSTER_LABEL
            || (!self.namespace_known
                && key.starts_with(NAMESPACE_LABELS)
                && !self.labels.contains_key(key))
    }

    /// How a Cilium endpoint selector selects the endpoint.
    pub fn matched_by(&self, selector: &Value) -> Match {
        let Some(sel) = as_label_selector(selector) else {
            return Match::No;
        };
        if selects(&sel, &self.labels) {
            return Match::Yes;
        }
        let keys = sel
            .match_labels
            .iter()
            .flatten()
            .map(|(k, _)| k)
            .chain(sel.match_expressions.iter().flatten().map(|e| &e.key));
        let mut keys = keys;
        if keys.any(|k| self.unknown(k)) {
            Match::Maybe
        } else {
            Match::No
        }
    }
}

/// A label key of an endpoint selector as a Kubernetes label key: `k8s:` and `any:` sources
/// (and keys without a source) are the endpoint's labels; a key of another source (`reserved:`,
/// `cidr:`, ...) is one no pod carries, so `NotIn` and `DoesNotExist` on it hold for every pod.
fn pod_key(key: &str) -> String {
    match key.split_once(':') {
        Some(("k8s" | "any", rest)) => rest.to_string(),
        Some((source, _)) if !source.contains('/') && !source.contains('.') => {
            format!("{NOT_A_POD_LABEL}{key}")
        }
        _ => key.to_string(),
    }
}

/// An endpoint selector as a label selector over the endpoint's labels (`None`: it is not a
/// selector, e.g. a host policy's `nodeSelector` leaves it out).
fn as_label_selector(v: &Value) -> Option<LabelSelector> {
    if !v.is_object() {
        return None;
    }
    let mut sel = LabelSelector::default();
    if let Some(m) = v.get("matchLabels").and_then(Value::as_object) {
        let mut labels = BTreeMap::new();
        for (k, val) in m {
            labels.insert(pod_key(k), val.as_str().unwrap_or_default().to_string());
        }
        sel.match_labels = Some(labels);
    }
    if let Some(exprs) = v.get("matchExpressions").and_then(Value::as_array) {
        let mut out = Vec::new();
        for e in exprs {
            out.push(LabelSelectorRequirement {
                key: pod_key(e.get("key")?.as_str()?),
                operator: e.get("operator")?.as_str()?.to_string(),
                values: e.get("values").and_then(Value::as_array).map(|vs| {
                    vs.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                }),
            });
        }
        sel.match_expressions = Some(out);
    }
    Some(sel)
}

fn has_rules(rule: &Value, direction: &str) -> bool {
    rule.get(direction)
        .and_then(Value::as_array)
        .is_some_and(|r| !r.is_empty())
}

/// The directions in which a Cilium rule allows traffic (`None`: it allows nothing that could
/// widen: deny-only, or ingress only while ingress is open anyway).
pub(super) fn rule_widens(rule: &Value, ingress_open: bool) -> Option<Vec<&'static str>> {
    let mut directions = Vec::new();
    if has_rules(rule, "egress") {
        directions.push("egress");
    }
    if has_rules(rule, "ingress") && !ingress_open {
        directions.push("ingress");
    }
    (!directions.is_empty()).then_some(directions)
}

/// The rules of a Cilium policy (`spec` and every one of `specs`).
pub(super) fn rules(p: &DynamicObject) -> Vec<&Value> {
    let mut rules: Vec<&Value> = vec![&p.data["spec"]];
    if let Some(specs) = p.data["specs"].as_array() {
        rules.extend(specs.iter());
    }
    rules.retain(|r| !r.is_null());
    rules
}

/// How a Cilium policy's allow rules select the endpoint, and in which directions.
pub(super) fn allows(
    p: &DynamicObject,
    endpoint: &Endpoint,
    ingress_open: bool,
) -> Option<(Match, Vec<&'static str>)> {
    let mut best = Match::No;
    let mut directions = Vec::new();
    for r in rules(p) {
        let Some(widens) = rule_widens(r, ingress_open) else {
            continue;
        };
        let m = r
            .get("endpointSelector")
            .map_or(Match::No, |sel| endpoint.matched_by(sel));
        if m != Match::No {
            best = best.max(m);
            for d in widens {
                if !directions.contains(&d) {
                    directions.push(d);
                }
            }
        }
    }
    (best != Match::No).then_some((best, directions))
}

/// The CiliumNetworkPolicy of `policies` (those of the sandbox's namespace) other than the
/// sandbox's own `own_name` that has egress allow rules (or, unless ingress is open anyway,
/// ingress allow rules) and selects the endpoint: one that surely does first, else one that may
/// (it reads labels the operator does not know).
pub fn widening_cilium_policy(
    policies: &[Arc<DynamicObject>],
    own_name: &str,
    sandbox_uid: &str,
    endpoint: &Endpoint,
    ingress_open: bool,
) -> Option<(String, Match)> {
    let mut found: Vec<(Match, String)> = policies
        .iter()
        .filter(|p| !(p.name_any() == own_name && controlled_by(&p.metadata, sandbox_uid)))
        .filter_map(|p| allows(p, endpoint, ingress_open).map(|(m, _)| (m, p.name_any())))
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    found.into_iter().next().map(|(m, name)| (name, m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cnp(name: &str, owner: Option<&str>, spec: Value) -> Arc<DynamicObject> {
        let mut v = json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": spec
        });
        if let Some(uid) = owner {
            v["metadata"]["ownerReferences"] = json!([{"apiVersion": "palisade.dev/v1alpha1",
                "kind": "AgentSandbox", "name": "a", "uid": uid, "controller": true}]);
        }
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn endpoint(namespace_labels: Option<&BTreeMap<String, String>>) -> Endpoint {
        Endpoint::new(
            &BTreeMap::from([("palisade.dev/sandbox".into(), "a".into())]),
            "ns",
            "palisade-a",
            namespace_labels,
        )
    }

    fn w(p: Vec<Arc<DynamicObject>>) -> Option<String> {
        let ns = BTreeMap::from([("tenant".to_string(), "blue".to_string())]);
        widening_cilium_policy(&p, "a-fqdn", "sb", &endpoint(Some(&ns)), false).map(|(name, m)| {
            assert_eq!(m, Match::Yes);
            name
        })
    }

    #[test]
    fn another_cilium_policy_with_allow_rules_for_the_pod_widens_it() {
        let allow_world = json!({"endpointSelector": {}, "egress": [{"toEntities": ["world"]}]});
        assert_eq!(
            w(vec![cnp("open", None, allow_world.clone())]),
            Some("open".into())
        );
        // Ours, by name and owner; an owner reference elsewhere proves nothing.
        assert_eq!(
            w(vec![cnp("a-fqdn", Some("sb"), allow_world.clone())]),
            None
        );
        assert_eq!(
            w(vec![cnp("copied-owner", Some("sb"), allow_world.clone())]),
            Some("copied-owner".into())
        );
        // Selected through Cilium's label sources, the namespace, its labels and the
        // ServiceAccount; and by requirements on labels no pod carries (reserved:, cidr:).
        for sel in [
            json!({"matchLabels": {"k8s:palisade.dev/sandbox": "a"}}),
            json!({"matchLabels": {"any:io.kubernetes.pod.namespace": "ns"}}),
            json!({"matchLabels": {"io.cilium.k8s.policy.serviceaccount": "palisade-a"}}),
            json!({"matchLabels": {"k8s:io.cilium.k8s.namespace.labels.tenant": "blue"}}),
            json!({"matchLabels": {"io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name": "ns"}}),
            json!({"matchExpressions": [{"key": "k8s:palisade.dev/sandbox", "operator": "Exists"}]}),
            json!({"matchExpressions": [{"key": "reserved:host", "operator": "DoesNotExist"}]}),
            json!({"matchExpressions": [{"key": "reserved:world", "operator": "NotIn", "values": [""]}]}),
        ] {
            let spec = json!({"endpointSelector": sel, "egress": [{"toCIDR": ["0.0.0.0/0"]}]});
            assert!(w(vec![cnp("x", None, spec)]).is_some(), "{sel}");
        }
        // Deny-only, other pods, other namespaces' labels, and host selectors do not widen;
        // ingress only unless open.
        for spec in [
            json!({"endpointSelector": {}, "egressDeny": [{"toEntities": ["world"]}]}),
            json!({"endpointSelector": {"matchLabels": {"app": "db"}}, "egress": [{}]}),
            json!({"endpointSelector": {"matchLabels": {"reserved:host": ""}}, "egress": [{}]}),
            json!({"endpointSelector": {"matchExpressions": [{"key": "reserved:host", "operator": "Exists"}]}, "egress": [{}]}),
            json!({"endpointSelector": {"matchLabels": {"io.cilium.k8s.namespace.labels.tenant": "red"}}, "egress": [{}]}),
            json!({"nodeSelector": {}, "egress": [{}]}),
        ] {
            assert_eq!(w(vec![cnp("x", None, spec.clone())]), None, "{spec}");
        }
        let ingress = cnp(
            "in",
            None,
            json!({"endpointSelector": {}, "ingress": [{"fromEntities": ["world"]}]}),
        );
        assert!(w(vec![ingress.clone()]).is_some());
        assert_eq!(
            widening_cilium_policy(&[ingress], "a-fqdn", "sb", &endpoint(None), true),
            None
        );
        // A rule among `specs` counts too.
        let specs = cnp("many", None, json!(null));
        let mut v = (*specs).clone();
        v.data["specs"] = json!([{"endpointSelector": {}, "egress": [{}]}]);
        assert!(w(vec![Arc::new(v)]).is_some());
    }

    #[test]
    fn a_selector_on_labels_the_operator_does_not_know_may_select() {
        // The namespace's labels unread, or the Cilium cluster name.
        let tenant = cnp(
            "tenant",
            None,
            json!({"endpointSelector": {"matchLabels": {"k8s:io.cilium.k8s.namespace.labels.tenant": "blue"}},
                   "egress": [{}]}),
        );
        let cluster = cnp(
            "cluster",
            None,
            json!({"endpointSelector": {"matchLabels": {"io.cilium.k8s.policy.cluster": "default"}},
                   "egress": [{}]}),
        );
        let unknown = endpoint(None);
        assert_eq!(
            widening_cilium_policy(
                std::slice::from_ref(&tenant),
                "a-fqdn",
                "sb",
                &unknown,
                false
            ),
            Some(("tenant".into(), Match::Maybe))
        );
        let known = BTreeMap::from([("tenant".to_string(), "red".to_string())]);
        assert_eq!(
            widening_cilium_policy(
                std::slice::from_ref(&tenant),
                "a-fqdn",
                "sb",
                &endpoint(Some(&known)),
                false
            ),
            None
        );
        assert_eq!(
            widening_cilium_policy(
                std::slice::from_ref(&cluster),
                "a-fqdn",
                "sb",
                &endpoint(Some(&known)),
                false
            ),
            Some(("cluster".into(), Match::Maybe))
        );
        // One that surely selects is named first.
        let open = cnp(
            "zz-open",
            None,
            json!({"endpointSelector": {}, "egress": [{}]}),
        );
        assert_eq!(
            widening_cilium_policy(&[tenant, cluster, open], "a-fqdn", "sb", &unknown, false),
            Some(("zz-open".into(), Match::Yes))
        );
    }
}
