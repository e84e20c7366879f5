//! Which Secrets a sandbox may read into its environment: only those its policy lists.

use crate::api::policy::SecretGrant;
use crate::api::sandbox::AgentSandboxSpec;

use super::{BlockReason, Blocked};

/// Whether `grants` let a sandbox reference `key` of Secret `name`.
pub fn granted(grants: &[SecretGrant], name: &str, key: &str) -> bool {
    grants.iter().any(|g| {
        g.name == name
            && g.keys
                .as_ref()
                .is_none_or(|keys| keys.iter().any(|k| k == key))
    })
}

/// Blocks a sandbox whose `env` references a Secret key its policy does not list.
pub fn check(grants: &[SecretGrant], sandbox: &AgentSandboxSpec) -> Result<(), Blocked> {
    let refused: Vec<String> = sandbox
        .env
        .iter()
        .filter_map(|v| {
            let r = v.value_from.as_ref()?.secret_key_ref.as_ref()?;
            (!granted(grants, &r.name, &r.key))
                .then(|| format!("{} ({}/{})", v.name, r.name, r.key))
        })
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    Err(Blocked::new(
        BlockReason::SecretRefused,
        format!(
            "env {} references a Secret key the policy does not grant; list it under the policy's secrets (name, keys)",
            refused.join(", ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::sandbox::{EnvVar, EnvVarSource, KeyRef};

    fn env(secret: &str, key: &str) -> AgentSandboxSpec {
        AgentSandboxSpec {
            env: vec![
                EnvVar {
                    name: "PLAIN".into(),
                    value: Some("x".into()),
                    value_from: None,
                },
                EnvVar {
                    name: "TOKEN".into(),
                    value: None,
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(KeyRef {
                            name: secret.into(),
                            key: key.into(),
                            optional: None,
                        }),
                        config_map_key_ref: None,
                    }),
                },
            ],
            ..Default::default()
        }
    }

    fn grant(name: &str, keys: Option<&[&str]>) -> SecretGrant {
        SecretGrant {
            name: name.into(),
            keys: keys.map(|k| k.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn no_grant_refuses_every_secret() {
        let b = check(&[], &env("db", "password")).expect_err("refused");
        assert_eq!(b.reason, BlockReason::SecretRefused);
        assert!(b.message.contains("TOKEN (db/password)"), "{}", b.message);
    }

    #[test]
    fn a_grant_names_the_secret_and_optionally_its_keys() {
        assert!(check(&[grant("db", None)], &env("db", "password")).is_ok());
        assert!(check(&[grant("db", Some(&["password"]))], &env("db", "password")).is_ok());
        assert!(check(&[grant("db", Some(&["user"]))], &env("db", "password")).is_err());
        assert!(check(&[grant("other", None)], &env("db", "password")).is_err());
        // Literal values and ConfigMaps need no grant.
        let mut plain = env("db", "password");
        plain.env.pop();
        assert!(check(&[], &plain).is_ok());
    }
}
