//! What each field of a policy becomes on Kubernetes, for `palisade policy check` and status.

use crate::api::policy::{DefaultAction, DnsMode, SeccompKind};
use crate::api::report::EnforcementReport;
use crate::api::{AgentSandbox, AgentSandboxSpec};
use crate::policy::Invalid;

use super::facts::ClusterFacts;
use super::{CheckedPolicy, check_policy, network, runtime_name};

/// One line of the field mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub field: String,
    pub becomes: String,
}

fn line(out: &mut Vec<Mapping>, field: impl Into<String>, becomes: impl Into<String>) {
    out.push(Mapping {
        field: field.into(),
        becomes: becomes.into(),
    });
}

/// The policy's field mapping and its enforcement report offline (as it would be for any
/// sandbox; domain names are assumed to have a backend and the Security Profiles Operator to be
/// installed, which is said in the mapping).
pub fn explain(
    spec: &crate::api::AgentPolicySpec,
) -> Result<(Vec<Mapping>, EnforcementReport), Invalid> {
    let facts = ClusterFacts {
        cilium: true,
        seccomp_profile_crd: true,
        ..ClusterFacts::default()
    };
    explain_with(spec, &facts)
}

/// The policy's field mapping and its enforcement report on a cluster with `facts` (what the
/// operator reports in the policy's status). What would block every sandbox under the policy
/// there is reported under `notEnforced`.
pub fn explain_with(
    spec: &crate::api::AgentPolicySpec,
    facts: &ClusterFacts,
) -> Result<(Vec<Mapping>, EnforcementReport), Invalid> {
    let checked = check_policy(spec)?;
    let mut report = checked.report.clone();
    let mut sandbox = AgentSandbox::new(
        "sandbox",
        AgentSandboxSpec {
            image: "agent".into(),
            ..Default::default()
        },
    );
    sandbox.metadata.namespace = Some("default".into());
    // Only the report matters here; what compiles for one sandbox compiles for all.
    let blocked = [
        network::compile_network(&checked, &sandbox, facts, &mut report).err(),
        super::children::seccomp(&checked, &sandbox, facts, &mut report).err(),
    ];
    for b in blocked.into_iter().flatten() {
        report.not_enforced(
            "(sandboxes)",
            format!(
                "sandboxes under this policy are blocked here ({}): {}",
                b.reason.as_str(),
                b.message
            ),
        );
    }
    Ok((mappings(&checked), report))
}

fn mappings(c: &CheckedPolicy) -> Vec<Mapping> {
    let mut out = Vec::new();
    let s = &c.spec;
    line(
        &mut out,
        "(always)",
        "non-root, no privilege escalation, read-only root filesystem, capabilities drop ALL, no host namespaces or paths, seccomp never Unconfined, Pod Security Standard restricted",
    );
    if let Some(fs) = &s.filesystem {
        for (i, p) in fs.readwrite_paths.iter().enumerate() {
            line(
                &mut out,
                format!("filesystem.readwritePaths[{i}]"),
                format!(
                    "{}: empty size-limited emptyDir mounted read-write (hides the image's content there)",
                    p.0
                ),
            );
        }
        for (i, p) in fs.readonly_paths.iter().enumerate() {
            line(
                &mut out,
                format!("filesystem.readonlyPaths[{i}]"),
                format!(
                    "{}: readable from the read-only root filesystem (an empty read-only mount when nested under a writable path)",
                    p.0
                ),
            );
        }
        for (i, p) in fs.denied_paths.iter().enumerate() {
            line(
                &mut out,
                format!("filesystem.deniedPaths[{i}]"),
                format!(
                    "{}: masked by an empty read-only emptyDir (a file there makes the pod fail to start)",
                    p.0
                ),
            );
        }
    }
    let n = &c.network;
    let default = if !n.blocked_names.is_empty() {
        "deny except to the egress gateway, which carries all egress (needs the gateway; blocked without it)"
    } else if n.egress.default == Some(DefaultAction::Allow) {
        "allow (minus metadata and cluster ranges)"
    } else {
        "deny"
    };
    line(
        &mut out,
        "network.egress.default",
        format!(
            "NetworkPolicy <sandbox>-isolation, policyTypes Ingress+Egress; egress default {default}"
        ),
    );
    if !n.blocked_names.is_empty() {
        line(
            &mut out,
            "network.blockedHosts",
            format!(
                "all egress goes through the egress gateway, which refuses {} and the names under them (and the blocked addresses), and allows every other name over TLS or plain HTTP; no direct egress, no DNS",
                n.blocked_names.join(", ")
            ),
        );
    }
    for (i, r) in n.egress.allow.iter().enumerate() {
        let names = r.to.iter().flatten().any(|p| p.fqdn.is_some());
        let what = if names {
            "CiliumNetworkPolicy toFQDNs rule (needs Cilium; blocked without it)"
        } else {
            "NetworkPolicy egress rule(s) (ipBlock/selector x ports)"
        };
        line(&mut out, format!("network.egress.allow[{i}]"), what);
    }
    for (i, _) in n.egress.deny.iter().enumerate() {
        line(
            &mut out,
            format!("network.egress.deny[{i}]"),
            "subtracted from every allow (ipBlock.except, port ranges); Cilium egressDeny with FQDN rules",
        );
    }
    let ingress = match &n.ingress {
        Some(i) if i.default == Some(DefaultAction::Allow) => {
            "one rule admitting every source".to_string()
        }
        Some(i) => format!(
            "{} NetworkPolicy ingress rule(s), default deny",
            i.allow.len()
        ),
        None => "default deny: no ingress rules".into(),
    };
    line(&mut out, "network.ingress", ingress);
    let dns = match n.dns {
        DnsMode::Auto => "cluster DNS allowed when some egress is allowed",
        DnsMode::Cluster => "cluster DNS always allowed",
        DnsMode::None => "no DNS",
    };
    line(&mut out, "network.dns", dns);
    if n.proxy.is_some() {
        line(
            &mut out,
            "runtimeConfig.networkProxy",
            "HTTP(S)_PROXY set; direct egress only to the proxy (none for a loopback proxy)",
        );
    }
    if let Some(t) = s.timeout_ms {
        line(
            &mut out,
            "timeoutMs",
            format!(
                "{t} ms of total run time: pod activeDeadlineSeconds = time left; the operator expires the sandbox"
            ),
        );
    }
    let class = match c.runtime {
        crate::api::policy::Runtime::Runc => {
            "no RuntimeClass (the node's default runtime)".to_string()
        }
        r => format!(
            "RuntimeClass for {} (must exist with a matching handler, or the sandbox is blocked)",
            runtime_name(r)
        ),
    };
    line(&mut out, "isolation.runtime", class);
    let p = s.privileges.clone().unwrap_or_default();
    line(
        &mut out,
        "privileges",
        format!(
            "runAsUser {}, runAsGroup {}, fsGroup {}, capabilities drop ALL{}",
            p.run_as_user.unwrap_or(65532),
            p.run_as_group.unwrap_or(65532),
            p.fs_group.unwrap_or(65532),
            if p.capabilities.is_some_and(|c| !c.add.is_empty()) {
                " add NET_BIND_SERVICE"
            } else {
                ""
            }
        ),
    );
    let sc = s.syscalls.clone().unwrap_or_default();
    let sec = match sc.profile.unwrap_or_default() {
        SeccompKind::RuntimeDefault => "seccompProfile RuntimeDefault".to_string(),
        SeccompKind::Localhost => format!(
            "seccompProfile Localhost {}",
            sc.localhost_profile.unwrap_or_default()
        ),
        SeccompKind::Generated => format!(
            "SeccompProfile <sandbox>-seccomp blocking {} (needs the Security Profiles Operator)",
            sc.block.join(", ")
        ),
    };
    line(&mut out, "syscalls", sec);
    let r = s.resources.clone().unwrap_or_default();
    line(
        &mut out,
        "resources",
        format!(
            "container limits cpu {}, memory {}, ephemeral-storage {}; a sandbox asking for more is blocked",
            r.cpu
                .map_or(super::resources::DEFAULT_CPU.to_string(), |q| q.0),
            r.memory
                .map_or(super::resources::DEFAULT_MEMORY.to_string(), |q| q.0),
            r.ephemeral_storage.map_or(
                super::resources::DEFAULT_EPHEMERAL_STORAGE.to_string(),
                |q| q.0
            )
        ),
    );
    if let Some(w) = &s.workspace {
        let kind = if w.persistent == Some(true) {
            "PersistentVolumeClaim <sandbox>-workspace (kept across pause)"
        } else {
            "emptyDir"
        };
        line(
            &mut out,
            "workspace",
            format!(
                "{} at {}",
                kind,
                w.path.as_ref().map_or("/workspace", |p| p.0.as_str())
            ),
        );
    }
    let id = s.identity.clone().unwrap_or_default();
    line(
        &mut out,
        "identity",
        format!(
            "ServiceAccount <sandbox>, token {}{}",
            if id.automount_token == Some(true) {
                "mounted"
            } else {
                "not mounted"
            },
            id.token_audience.map_or(String::new(), |a| format!(
                ", projected token for audience {a} at /var/run/secrets/tokens/token"
            ))
        ),
    );
    if let Some(img) = &s.images {
        line(
            &mut out,
            "images",
            format!(
                "image must come from {}{}",
                if img.allowed_registries.is_empty() {
                    "any registry".into()
                } else {
                    img.allowed_registries.join(", ")
                },
                if img.require_digest == Some(true) {
                    " and be pinned by digest"
                } else {
                    ""
                }
            ),
        );
    }
    line(
        &mut out,
        "secrets",
        if s.secrets.is_empty() {
            "env may reference no Secret (a sandbox that does is blocked: SecretRefused)".into()
        } else {
            format!(
                "env may reference only {}",
                s.secrets
                    .iter()
                    .map(|g| match &g.keys {
                        Some(keys) => format!("{} (keys {})", g.name, keys.join(", ")),
                        None => format!("{} (every key)", g.name),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AgentPolicySpec;

    fn spec(v: serde_json::Value) -> AgentPolicySpec {
        serde_json::from_value(v).expect("spec")
    }

    #[test]
    fn the_report_follows_the_cluster_it_is_computed_for() {
        let p = spec(serde_json::json!({
            "network": {"egress": {"allow": [{"to": [{"fqdn": "api.example.com"}]}]}},
            "isolation": {"runtime": "gvisor"}
        }));
        // Offline: a backend for names is assumed; gVisor's seccomp is not applied.
        let (_, offline) = explain(&p).expect("valid");
        assert!(offline.not_enforced.iter().any(|e| e.field == "syscalls"));
        assert!(
            !offline
                .not_enforced
                .iter()
                .any(|e| e.field == "(sandboxes)")
        );
        // A cluster without Cilium: every sandbox under it is blocked, and the report says so.
        let (_, live) = explain_with(&p, &ClusterFacts::default()).expect("valid");
        let blocked: Vec<_> = live
            .not_enforced
            .iter()
            .filter(|e| e.field == "(sandboxes)")
            .collect();
        assert_eq!(blocked.len(), 1, "{live:?}");
        assert!(blocked[0].message.contains("FqdnBackendMissing"));
        // A cluster whose gVisor nodes apply pod seccomp: nothing to report there.
        let mut facts = ClusterFacts {
            cilium: true,
            ..ClusterFacts::default()
        };
        facts
            .seccomp_applied
            .insert(crate::api::policy::Runtime::Gvisor);
        let (_, applied) = explain_with(&p, &facts).expect("valid");
        assert!(
            !applied.not_enforced.iter().any(|e| e.field == "syscalls"),
            "{applied:?}"
        );
    }
}
