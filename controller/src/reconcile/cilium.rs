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

/// The labels Cilium sees on the pod: its Kubernetes labels, its namespace and its
/// ServiceAccount.
pub fn endpoint_labels(
    pod_labels: &BTreeMap<String, String>,
    namespace: &str,
    service_account: &str,
) -> BTreeMap<String, String> {
    let mut labels = pod_labels.clone();
    labels.insert("io.kubernetes.pod.namespace".into(), namespace.into());
    labels.insert(
        "io.cilium.k8s.policy.serviceaccount".into(),
        service_account.into(),
    );
    labels
}

/// A label key of an endpoint selector as a Kubernetes label key: `k8s:` and `any:` sources are
/// the pod's labels; other sources (`reserved:`, `cidr:`, ...) never select a pod.
fn pod_key(key: &str) -> Option<String> {
    match key.split_once(':') {
        Some(("k8s" | "any", rest)) => Some(rest.to_string()),
        Some((source, _)) if !source.contains('/') && !source.contains('.') => None,
        _ => Some(key.to_string()),
    }
}

/// An endpoint selector as a label selector over the pod's labels (`None`: it cannot select a
/// pod).
pub(super) fn as_label_selector(v: &Value) -> Option<LabelSelector> {
    let mut sel = LabelSelector::default();
    if let Some(m) = v.get("matchLabels").and_then(Value::as_object) {
        let mut labels = BTreeMap::new();
        for (k, val) in m {
            labels.insert(pod_key(k)?, val.as_str().unwrap_or_default().to_string());
        }
        sel.match_labels = Some(labels);
    }
    if let Some(exprs) = v.get("matchExpressions").and_then(Value::as_array) {
        let mut out = Vec::new();
        for e in exprs {
            out.push(LabelSelectorRequirement {
                key: pod_key(e.get("key")?.as_str()?)?,
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

/// The first CiliumNetworkPolicy of `policies` (those of the sandbox's namespace) other than the
/// sandbox's own `own_name` that has egress allow rules (or, unless ingress is open anyway,
/// ingress allow rules) and selects an endpoint with `labels`.
pub fn widening_cilium_policy(
    policies: &[Arc<DynamicObject>],
    own_name: &str,
    sandbox_uid: &str,
    labels: &BTreeMap<String, String>,
    ingress_open: bool,
) -> Option<String> {
    policies.iter().find_map(|p| {
        if p.name_any() == own_name && controlled_by(&p.metadata, sandbox_uid) {
            return None;
        }
        let spec = &p.data["spec"];
        let mut rules: Vec<&Value> = vec![spec];
        if let Some(specs) = p.data["specs"].as_array() {
            rules.extend(specs.iter());
        }
        rules
            .into_iter()
            .filter(|r| !r.is_null())
            .any(|r| {
                rule_widens(r, ingress_open).is_some()
                    && r.get("endpointSelector")
                        .and_then(as_label_selector)
                        .is_some_and(|sel| selects(&sel, labels))
            })
            .then(|| p.name_any())
    })
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

    fn labels() -> BTreeMap<String, String> {
        endpoint_labels(
            &BTreeMap::from([("palisade.dev/sandbox".into(), "a".into())]),
            "ns",
            "palisade-a",
        )
    }

    #[test]
    fn another_cilium_policy_with_allow_rules_for_the_pod_widens_it() {
        let allow_world = json!({"endpointSelector": {}, "egress": [{"toEntities": ["world"]}]});
        let w = |p: Vec<Arc<DynamicObject>>| {
            widening_cilium_policy(&p, "a-fqdn", "sb", &labels(), false)
        };
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
        // Selected through Cilium's label sources, the namespace and the ServiceAccount.
        for sel in [
            json!({"matchLabels": {"k8s:palisade.dev/sandbox": "a"}}),
            json!({"matchLabels": {"any:io.kubernetes.pod.namespace": "ns"}}),
            json!({"matchLabels": {"io.cilium.k8s.policy.serviceaccount": "palisade-a"}}),
            json!({"matchExpressions": [{"key": "k8s:palisade.dev/sandbox", "operator": "Exists"}]}),
        ] {
            let spec = json!({"endpointSelector": sel, "egress": [{"toCIDR": ["0.0.0.0/0"]}]});
            assert!(w(vec![cnp("x", None, spec)]).is_some(), "{sel}");
        }
        // Deny-only, other pods, and host selectors do not widen; ingress only unless open.
        for spec in [
            json!({"endpointSelector": {}, "egressDeny": [{"toEntities": ["world"]}]}),
            json!({"endpointSelector": {"matchLabels": {"app": "db"}}, "egress": [{}]}),
            json!({"endpointSelector": {"matchLabels": {"reserved:host": ""}}, "egress": [{}]}),
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
            widening_cilium_policy(&[ingress], "a-fqdn", "sb", &labels(), true),
            None
        );
        // A rule among `specs` counts too.
        let specs = cnp("many", None, json!(null));
        let mut v = (*specs).clone();
        v.data["specs"] = json!([{"endpointSelector": {}, "egress": [{}]}]);
        assert!(w(vec![Arc::new(v)]).is_some());
    }
}
