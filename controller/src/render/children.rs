//! The sandbox's ServiceAccount, workspace claim, headless Service and generated seccomp profile.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, SeccompProfile, Service, ServiceAccount,
    ServicePort, ServiceSpec, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use crate::api::policy::{AgentPolicySpec, Runtime, SeccompKind};
use crate::api::report::EnforcementReport;
use crate::api::{AgentSandbox, MANAGED_BY_LABEL, MANAGER, SANDBOX_LABEL, SERVICE_ACCOUNT_PREFIX};

use super::facts::ClusterFacts;
use super::{BlockReason, Blocked, CheckedPolicy, runtime_name};

/// Default workspace size.
pub const DEFAULT_WORKSPACE_SIZE: &str = "1Gi";

/// The labels every child carries.
pub fn child_labels(sandbox: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGER.to_string()),
        (SANDBOX_LABEL.to_string(), sandbox.to_string()),
    ])
}

/// Name, namespace and labels of a child object.
pub fn object_meta(sandbox: &AgentSandbox, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(
            sandbox
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
        ),
        labels: Some(child_labels(&base_name(sandbox))),
        ..Default::default()
    }
}

fn sandbox_name(sandbox: &AgentSandbox) -> String {
    base_name(sandbox)
}

/// The name the sandbox's children carry (and their `palisade.dev/sandbox` label): the
/// sandbox's own, or, for a sandbox that took a warm sandbox of a pool, the warm sandbox's
/// (objects cannot be renamed; their owner reference moved to this sandbox).
pub fn base_name(sandbox: &AgentSandbox) -> String {
    taken_from(sandbox)
        .and_then(|p| p.instance.clone())
        .unwrap_or_else(|| sandbox.metadata.name.clone().unwrap_or_default())
}

/// What the sandbox's proxy credential names: its UID, or, for a sandbox that took a warm
/// sandbox, the warm sandbox's UID (the pod's environment was written for it, and a running
/// pod's environment cannot change).
pub fn credential_id(sandbox: &AgentSandbox) -> Option<&str> {
    taken_from(sandbox)
        .and_then(|p| p.instance_uid.as_deref())
        .or(sandbox.metadata.uid.as_deref())
}

/// `status.pool` of a sandbox of a pool (read only with `spec.poolRef`).
fn taken_from(sandbox: &AgentSandbox) -> Option<&crate::api::sandbox::SandboxPoolStatus> {
    sandbox.spec.pool_ref.as_ref()?;
    sandbox.status.as_ref()?.pool.as_ref()
}

/// The sandbox's own ServiceAccount: `palisade-<sandbox>`.
pub fn service_account_name(sandbox: &str) -> String {
    format!("{SERVICE_ACCOUNT_PREFIX}{sandbox}")
}

pub fn service_account(spec: &AgentPolicySpec, sandbox: &AgentSandbox) -> ServiceAccount {
    let identity = spec.identity.clone().unwrap_or_default();
    let mut meta = object_meta(sandbox, service_account_name(&sandbox_name(sandbox)));
    if !identity.service_account_annotations.is_empty() {
        meta.annotations = Some(identity.service_account_annotations.clone());
    }
    ServiceAccount {
        metadata: meta,
        automount_service_account_token: Some(identity.automount_token == Some(true)),
        ..Default::default()
    }
}

pub fn workspace_claim_name(sandbox: &str) -> String {
    format!("{sandbox}-workspace")
}

pub fn workspace_claim(
    spec: &AgentPolicySpec,
    sandbox: &AgentSandbox,
) -> Option<PersistentVolumeClaim> {
    let ws = spec
        .workspace
        .as_ref()
        .filter(|w| w.persistent == Some(true))?;
    let size = ws
        .size
        .clone()
        .unwrap_or_else(|| Quantity(DEFAULT_WORKSPACE_SIZE.into()));
    Some(PersistentVolumeClaim {
        metadata: object_meta(sandbox, workspace_claim_name(&sandbox_name(sandbox))),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: ws.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".into(), size)])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

pub fn service(sandbox: &AgentSandbox) -> Option<Service> {
    if sandbox.spec.service != Some(true) {
        return None;
    }
    let name = sandbox_name(sandbox);
    let ports = sandbox
        .spec
        .ports
        .iter()
        .map(|p| {
            let proto = p.protocol.unwrap_or_default();
            ServicePort {
                name: Some(p.name.clone().unwrap_or_else(|| {
                    format!(
                        "{}-{}",
                        format!("{proto:?}").to_lowercase(),
                        p.container_port
                    )
                })),
                port: p.container_port,
                protocol: Some(format!("{proto:?}")),
                ..Default::default()
            }
        })
        .collect::<Vec<_>>();
    Some(Service {
        metadata: object_meta(sandbox, name.clone()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(BTreeMap::from([(SANDBOX_LABEL.to_string(), name)])),
            ports: (!ports.is_empty()).then_some(ports),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The pod's seccomp profile and, for `Generated`, the SeccompProfile object.
pub struct CompiledSeccomp {
    pub pod_profile: SeccompProfile,
    pub object: Option<Value>,
}

pub fn seccomp(
    checked: &CheckedPolicy,
    sandbox: &AgentSandbox,
    facts: &ClusterFacts,
    report: &mut EnforcementReport,
) -> Result<CompiledSeccomp, Blocked> {
    let policy = checked.spec.syscalls.clone().unwrap_or_default();
    let kind = policy.profile.unwrap_or_default();
    let name = sandbox_name(sandbox);
    let namespace = sandbox
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let (pod_profile, object) = match kind {
        SeccompKind::RuntimeDefault => (
            SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            },
            None,
        ),
        SeccompKind::Localhost => {
            if !policy.block.is_empty() {
                report.not_enforced(
                    "syscalls.block",
                    "the operator cannot read the node's profile file: that it blocks these syscalls is up to the localhost profile",
                );
            }
            (
                SeccompProfile {
                    type_: "Localhost".into(),
                    localhost_profile: policy.localhost_profile.clone(),
                },
                None,
            )
        }
        SeccompKind::Generated => {
            if !facts.seccomp_profile_crd {
                return Err(Blocked::new(
                    BlockReason::SeccompProfileCrdMissing,
                    "syscalls.profile Generated needs the Security Profiles Operator the operator can use: the SeccompProfile CRD is not installed, or the operator may not create those objects",
                ));
            }
            let spec = json!({
                "baseProfileName": "runtime/default",
                "defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [{"action": "SCMP_ACT_ERRNO", "names": policy.block}],
            });
            // The content's hash is in the name, so a changed profile is a new file on the
            // node: a container cannot start on the old one while the operator of the
            // profiles is still writing the new one.
            let profile_name = format!("{name}-seccomp-{}", &super::hash::short_hash(&spec)[..8]);
            let object = json!({
                "apiVersion": "security-profiles-operator.x-k8s.io/v1beta1",
                "kind": "SeccompProfile",
                "metadata": object_meta(sandbox, profile_name.clone()),
                "spec": spec,
            });
            let path = format!("operator/{namespace}/{profile_name}.json");
            (
                SeccompProfile {
                    type_: "Localhost".into(),
                    localhost_profile: Some(path),
                },
                Some(object),
            )
        }
    };
    let runtime = checked.runtime;
    if runtime != Runtime::Runc && !facts.seccomp_applied.contains(&runtime) {
        let what = match runtime {
            Runtime::Gvisor => {
                "gVisor does not apply the pod's seccomp profile unless runsc runs with --oci-seccomp"
            }
            _ => "Kata Containers disables seccomp inside the guest by default",
        };
        if policy.require_enforcement == Some(true) {
            return Err(Blocked::new(
                BlockReason::SeccompNotEnforced,
                format!(
                    "{what}, and syscalls.requireEnforcement is true; declare that the {} nodes apply it (operator configuration) or use runtime runc",
                    runtime_name(runtime)
                ),
            ));
        }
        report.not_enforced(
            "syscalls",
            format!(
                "{what}: the sandbox's own kernel boundary applies instead of the {} profile",
                pod_profile.type_
            ),
        );
    }
    Ok(CompiledSeccomp {
        pod_profile,
        object,
    })
}
