//! A sandbox of a pool: the spec it runs with is the pool's template with the sandbox's own
//! fields on top. A field the sandbox sets to something else than the template (say `env` or
//! `args`) makes a warm sandbox unfit, so the sandbox starts cold; lifecycle fields (`paused`,
//! `expiresAt`, `ttlSecondsAfterFinished`) do not change the pod and never do.

use serde_json::Value;

use crate::api::AgentSandboxSpec;

use super::hash::short_hash;

/// Fields that apply on top of a warm sandbox without changing its pod.
const LIFECYCLE: &[&str] = &["paused", "expiresAt", "ttlSecondsAfterFinished"];
/// Fields about the pool itself, never part of the result.
const POOL_FIELDS: &[&str] = &["poolRef", "pool"];

/// The spec a sandbox of a pool runs with, and the fields it sets beyond the template.
#[derive(Clone, Debug, PartialEq)]
pub struct Merged {
    pub spec: AgentSandboxSpec,
    /// Fields (camelCase) the sandbox sets to another value than the template's.
    pub custom: Vec<String>,
}

/// The template with the sandbox's own fields on top.
pub fn merge(template: &AgentSandboxSpec, own: &AgentSandboxSpec) -> Result<Merged, String> {
    let to_map = |spec: &AgentSandboxSpec| match serde_json::to_value(spec) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("a spec serializes as an object".to_string()),
        Err(e) => Err(e.to_string()),
    };
    let mut merged = to_map(template)?;
    for field in POOL_FIELDS {
        merged.remove(*field);
    }
    let mut custom = Vec::new();
    for (field, value) in to_map(own)? {
        if POOL_FIELDS.contains(&field.as_str()) {
            continue;
        }
        if merged.get(&field) != Some(&value) && !LIFECYCLE.contains(&field.as_str()) {
            custom.push(field.clone());
        }
        merged.insert(field, value);
    }
    let spec = serde_json::from_value(Value::Object(merged)).map_err(|e| e.to_string())?;
    Ok(Merged { spec, custom })
}

/// The hash of a template: warm sandboxes carry it, and one of another hash is stale.
pub fn template_hash(template: &AgentSandboxSpec) -> String {
    short_hash(template)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::sandbox::{EnvVar, PolicyRef, PoolRef};

    fn template() -> AgentSandboxSpec {
        AgentSandboxSpec {
            policy_ref: PolicyRef { name: "p".into() },
            image: "registry.example.com/agent:1".into(),
            args: vec!["serve".into()],
            ..Default::default()
        }
    }

    fn own() -> AgentSandboxSpec {
        AgentSandboxSpec {
            pool_ref: Some(PoolRef {
                name: "pool".into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_sandbox_naming_only_the_pool_runs_the_template_and_is_fit_for_a_warm_one() {
        let m = merge(&template(), &own()).unwrap();
        assert_eq!(m.spec, template());
        assert!(m.custom.is_empty());
        // Repeating the template's values is no change either.
        let mut same = own();
        same.image = template().image;
        same.policy_ref = template().policy_ref;
        same.args = template().args;
        assert!(merge(&template(), &same).unwrap().custom.is_empty());
    }

    #[test]
    fn fields_beyond_the_template_are_applied_and_named() {
        let mut o = own();
        o.env = vec![EnvVar {
            name: "TASK".into(),
            value: Some("1".into()),
            value_from: None,
        }];
        o.args = vec!["run".into()];
        o.image = "registry.example.com/agent:2".into();
        let m = merge(&template(), &o).unwrap();
        assert_eq!(m.custom, vec!["args", "env", "image"]);
        assert_eq!(m.spec.args, vec!["run"]);
        assert_eq!(m.spec.image, "registry.example.com/agent:2");
        assert_eq!(m.spec.policy_ref.name, "p");
        assert!(m.spec.pool_ref.is_none());
    }

    #[test]
    fn lifecycle_fields_apply_without_a_cold_start() {
        let mut o = own();
        o.paused = Some(true);
        o.ttl_seconds_after_finished = Some(60);
        let m = merge(&template(), &o).unwrap();
        assert!(m.custom.is_empty());
        assert_eq!(m.spec.paused, Some(true));
        assert_eq!(m.spec.ttl_seconds_after_finished, Some(60));
    }

    #[test]
    fn the_hash_follows_the_template() {
        let mut other = template();
        assert_eq!(template_hash(&template()), template_hash(&other));
        other.args.push("--fast".into());
        assert_ne!(template_hash(&template()), template_hash(&other));
    }
}
