//! The CustomResourceDefinitions as installed: generated from the Rust types, then cleaned of
//! what the API server would reject in a structural schema.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value;

use super::{AgentPolicy, AgentSandbox, AgentSandboxPool};

/// Integer and number formats the API server knows; schemars also emits `uint32`, `uint16`...
const KNOWN_FORMATS: &[&str] = &[
    "int32",
    "int64",
    "float",
    "double",
    "byte",
    "binary",
    "date",
    "date-time",
    "password",
    "int-or-string",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uuid",
    "duration",
    "quantity",
];

/// The CRDs, ready to apply.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        clean(AgentPolicy::crd()),
        clean(AgentSandbox::crd()),
        clean(AgentSandboxPool::crd()),
    ]
}

/// Both CRDs as one multi-document YAML stream (what `palisade crd` prints and `crds/` holds).
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

fn clean(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let mut value = serde_json::to_value(&crd).expect("a CRD always serializes");
    strip_unknown_formats(&mut value);
    default_status_to_unobserved(&mut value);
    serde_json::from_value(value).expect("cleaning keeps the CRD shape")
}

/// An object the operator has not seen yet reads `status.observedGeneration: 0` (defaults apply
/// when the API server reads from storage), so kstatus and GitOps tools call it InProgress
/// rather than Current before the operator's first status write.
fn default_status_to_unobserved(crd: &mut Value) {
    let Some(versions) = crd["spec"]["versions"].as_array_mut() else {
        return;
    };
    for version in versions {
        if let Some(status) =
            version["schema"]["openAPIV3Schema"]["properties"]["status"].as_object_mut()
        {
            status.insert(
                "default".into(),
                serde_json::json!({"observedGeneration": 0}),
            );
        }
    }
}

fn strip_unknown_formats(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let unknown = matches!(map.get("format"), Some(Value::String(f)) if !KNOWN_FORMATS.contains(&f.as_str()));
            if unknown && map.contains_key("type") {
                map.remove("format");
            }
            map.values_mut().for_each(strip_unknown_formats);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_unknown_formats),
        _ => {}
    }
}
