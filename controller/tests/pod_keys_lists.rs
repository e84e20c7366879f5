//! The keys no configuration may allow are written three times: in the operator
//! (`policy::pod_keys`), in the CRD's validation rules (the API server refuses them at once) and
//! in the chart's values schema (an allowlist naming them does not install). They must agree.

use palisade::policy::pod_keys::{REFUSED_DOMAINS, REFUSED_NAME_PREFIXES};

fn escaped(s: &str) -> String {
    s.replace('.', "\\.")
}

fn assert_lists_all(what: &str, text: &str) {
    for d in REFUSED_DOMAINS {
        assert!(
            text.contains(&format!("{}|", escaped(d)))
                || text.contains(&format!("{})", escaped(d))),
            "{what} does not refuse the domain {d}"
        );
    }
    for p in REFUSED_NAME_PREFIXES {
        assert!(
            text.contains(&escaped(p)),
            "{what} does not refuse keys beginning {p}"
        );
    }
}

/// The rule whose message begins with `message`, with CEL's string escapes undone.
fn rule(v: &serde_json::Value, message: &str) -> Option<String> {
    match v {
        serde_json::Value::Object(m) => {
            if m.get("message")
                .and_then(|x| x.as_str())
                .is_some_and(|x| x.starts_with(message))
            {
                return m["rule"].as_str().map(|r| r.replace("\\\\", "\\"));
            }
            m.values().find_map(|x| rule(x, message))
        }
        serde_json::Value::Array(a) => a.iter().find_map(|x| rule(x, message)),
        _ => None,
    }
}

#[test]
fn the_crd_rules_refuse_every_refused_key() {
    let crds = serde_json::to_value(palisade::api::crd::crds()).expect("crds");
    for (what, message) in [
        ("the podLabels rule", "pod labels of Kubernetes"),
        ("the podAnnotations rule", "pod annotations of Kubernetes"),
    ] {
        let rule = rule(&crds, message).unwrap_or_else(|| panic!("no {what}"));
        assert_lists_all(what, &rule);
    }
}

#[test]
fn the_chart_schema_refuses_every_refused_key() {
    let schema = include_str!("../../charts/palisade/values.schema.json").replace("\\\\", "\\");
    let items: serde_json::Value =
        serde_json::from_str(include_str!("../../charts/palisade/values.schema.json")).unwrap();
    for list in ["labelAllow", "annotationAllow"] {
        let pattern =
            items["properties"]["sandboxPods"]["properties"][list]["items"]["not"]["pattern"]
                .as_str()
                .unwrap_or_else(|| panic!("sandboxPods.{list} has no refusal pattern"));
        assert_lists_all(&format!("sandboxPods.{list}"), pattern);
    }
    assert!(schema.contains("sandboxPods"));
}
