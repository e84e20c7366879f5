//! The sandbox's pod: the hardened security contexts every pod gets, the filesystem mapping,
//! and the agent container.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapKeySelector, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, PersistentVolumeClaimVolumeSource, Pod, PodSchedulingGate, PodSecurityContext,
    PodSpec, ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecretKeySelector,
    SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::api::policy::{AgentPolicySpec, Capability};
use crate::api::{AgentSandbox, ISOLATION_GATE, POLICY_HASH_ANNOTATION};
use crate::policy::paths::under;
use crate::policy::quantity;

use super::children::{
    DEFAULT_WORKSPACE_SIZE, child_labels, object_meta, service_account_name, workspace_claim_name,
};
use super::resources::CompiledResources;
use super::{BlockReason, Blocked, hash::short_hash};

/// Default user, group and fsGroup: the conventional non-root "nonroot" id.
pub const DEFAULT_ID: i64 = 65532;
/// Size limit of a masking or empty read-only volume.
const MASK_BYTES: i128 = 1 << 20;
/// Where a projected token for `identity.tokenAudience` is mounted.
pub const TOKEN_DIR: &str = "/var/run/secrets/tokens";

pub struct PodInput<'a> {
    pub sandbox: &'a AgentSandbox,
    pub spec: &'a AgentPolicySpec,
    pub runtime_class_name: Option<String>,
    pub resources: &'a CompiledResources,
    pub seccomp: &'a SeccompProfile,
    pub proxy_env: Vec<EnvVar>,
    pub active_deadline_seconds: Option<i64>,
    /// Image of the `isolation-check` init container; none when the check is off.
    pub isolation_check_image: Option<&'a str>,
    /// The check waits for the canary to answer before it counts refusals.
    pub isolation_check_open_first: bool,
}

/// Name of the init container that holds the agent back until the NetworkPolicy is enforced.
pub const ISOLATION_CHECK: &str = "isolation-check";

/// The `isolation-check` init container: `palisade wait-isolated`, as unprivileged as the agent,
/// with small resources (capped by the agent's own limits).
fn isolation_check(image: &str, open_first: bool, agent: &Container) -> Container {
    let limits = agent.resources.as_ref().and_then(|r| r.limits.as_ref());
    let capped = |key: &str, own: &str| {
        let own = Quantity(own.into());
        match limits.and_then(|l| l.get(key)) {
            Some(agent) => match (quantity::nanos(agent), quantity::nanos(&own)) {
                (Some(a), Some(o)) if a < o => agent.clone(),
                _ => own,
            },
            None => own,
        }
    };
    let limits = BTreeMap::from([
        ("cpu".to_string(), capped("cpu", "100m")),
        ("memory".to_string(), capped("memory", "32Mi")),
    ]);
    let requests = BTreeMap::from([
        ("cpu".to_string(), capped("cpu", "10m")),
        ("memory".to_string(), capped("memory", "16Mi")),
    ]);
    Container {
        name: ISOLATION_CHECK.into(),
        image: Some(image.into()),
        command: Some(
            ["palisade", "wait-isolated"]
                .into_iter()
                .chain(open_first.then_some("--require-open-first"))
                .map(String::from)
                .collect(),
        ),
        resources: Some(ResourceRequirements {
            limits: Some(limits),
            requests: Some(requests),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            // The policy's seccomp profile is for the agent; the check needs only sockets.
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

/// A byte count as a readable quantity (`512Mi`, `2Gi`).
pub fn bytes_quantity(bytes: i128) -> Quantity {
    const GI: i128 = 1 << 30;
    const MI: i128 = 1 << 20;
    Quantity(match bytes {
        b if b > 0 && b % GI == 0 => format!("{}Gi", b / GI),
        b if b > 0 && b % MI == 0 => format!("{}Mi", b / MI),
        b => b.to_string(),
    })
}

fn empty_dir(name: String, bytes: i128) -> Volume {
    Volume {
        name,
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(bytes_quantity(bytes)),
            medium: None,
        }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..Default::default()
    }
}

/// Volumes and mounts for the filesystem policy and workspace, with the emptyDir size limits
/// adding up to at most the ephemeral-storage limit.
fn filesystem(
    spec: &AgentPolicySpec,
    sandbox: &str,
    ephemeral_bytes: i128,
) -> Result<(Vec<Volume>, Vec<VolumeMount>), Blocked> {
    let fs = spec.filesystem.clone().unwrap_or_default();
    let ws = spec.workspace.as_ref();
    let ws_path = ws.map(|w| {
        w.path
            .as_ref()
            .map_or("/workspace".to_string(), |p| p.0.clone())
    });
    let ws_persistent = ws.is_some_and(|w| w.persistent == Some(true));
    let ws_bytes = ws
        .map(|w| {
            w.size
                .clone()
                .unwrap_or_else(|| Quantity(DEFAULT_WORKSPACE_SIZE.into()))
        })
        .map_or(0, |q| quantity::nanos(&q).unwrap_or(0) / 1_000_000_000);

    let mut writable: Vec<String> = fs
        .readwrite_paths
        .iter()
        .map(|p| p.0.clone())
        .filter(|p| Some(p) != ws_path.as_ref())
        .collect();
    writable.sort();
    let empty_ro: Vec<String> = {
        let mut v: Vec<String> = fs
            .readonly_paths
            .iter()
            .map(|p| p.0.clone())
            .filter(|p| {
                writable
                    .iter()
                    .chain(ws_path.iter())
                    .any(|w| under(p, w) && p != w)
            })
            .collect();
        v.extend(fs.denied_paths.iter().map(|p| p.0.clone()));
        v.sort();
        v.dedup();
        v
    };

    let mut budget = ephemeral_bytes - MASK_BYTES * empty_ro.len() as i128;
    if ws_path.is_some() && !ws_persistent {
        budget -= ws_bytes;
    }
    if budget < 0 || (budget == 0 && !writable.is_empty()) {
        return Err(Blocked::new(
            BlockReason::OverCaps,
            "the workspace and writable paths do not fit in the ephemeral-storage cap; raise resources.ephemeralStorage or shrink workspace.size",
        ));
    }
    let per_path = if writable.is_empty() {
        0
    } else {
        (budget / writable.len() as i128) >> 20 << 20
    };
    if !writable.is_empty() && per_path == 0 {
        return Err(Blocked::new(
            BlockReason::OverCaps,
            "the ephemeral-storage cap leaves less than 1Mi per writable path",
        ));
    }

    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    if let Some(path) = &ws_path {
        if ws_persistent {
            volumes.push(Volume {
                name: "workspace".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: workspace_claim_name(sandbox),
                    read_only: Some(false),
                }),
                ..Default::default()
            });
        } else {
            volumes.push(empty_dir("workspace".into(), ws_bytes));
        }
        mounts.push(mount("workspace", path, false));
    }
    for (i, path) in writable.iter().enumerate() {
        volumes.push(empty_dir(format!("rw-{i}"), per_path));
        mounts.push(mount(&format!("rw-{i}"), path, false));
    }
    for (i, path) in empty_ro.iter().enumerate() {
        volumes.push(empty_dir(format!("ro-{i}"), MASK_BYTES));
        mounts.push(mount(&format!("ro-{i}"), path, true));
    }
    // Parents before children, so nested mounts land inside their parent.
    mounts.sort_by(|a, b| a.mount_path.cmp(&b.mount_path));
    Ok((volumes, mounts))
}

fn env(input: &PodInput) -> Vec<EnvVar> {
    let mut out: Vec<EnvVar> = input
        .sandbox
        .spec
        .env
        .iter()
        .map(|v| EnvVar {
            name: v.name.clone(),
            value: v.value.clone(),
            value_from: v.value_from.as_ref().map(|src| EnvVarSource {
                secret_key_ref: src.secret_key_ref.as_ref().map(|r| SecretKeySelector {
                    name: r.name.clone(),
                    key: r.key.clone(),
                    optional: r.optional,
                }),
                config_map_key_ref: src
                    .config_map_key_ref
                    .as_ref()
                    .map(|r| ConfigMapKeySelector {
                        name: r.name.clone(),
                        key: r.key.clone(),
                        optional: r.optional,
                    }),
                ..Default::default()
            }),
        })
        .collect();
    out.extend(input.proxy_env.iter().cloned());
    out
}

/// Builds the pod and the hash of everything in it that only a new pod can change.
/// The pod, its hash, and the hash the same pod had as planned before default requests (a
/// pod of that hash is not recreated for them), when they apply.
pub fn build_pod(input: &PodInput) -> Result<(Pod, String, Option<String>), Blocked> {
    let sandbox = input.sandbox;
    let name = crate::render::children::base_name(sandbox);
    let privileges = input.spec.privileges.clone().unwrap_or_default();
    let identity = input.spec.identity.clone().unwrap_or_default();
    let (mut volumes, mut mounts) = filesystem(input.spec, &name, input.resources.ephemeral_bytes)?;

    if let Some(audience) = &identity.token_audience {
        volumes.push(Volume {
            name: "token".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(audience.clone()),
                        expiration_seconds: Some(identity.token_expiry_seconds.unwrap_or(3600)),
                        path: "token".into(),
                    }),
                    ..Default::default()
                }]),
                default_mode: Some(0o440),
            }),
            ..Default::default()
        });
        mounts.push(mount("token", TOKEN_DIR, true));
    }

    let add: Vec<String> = privileges
        .capabilities
        .iter()
        .flat_map(|c| &c.add)
        .map(|c| match c {
            Capability::NetBindService => "NET_BIND_SERVICE".to_string(),
        })
        .collect();
    let container = Container {
        name: "agent".into(),
        image: Some(sandbox.spec.image.clone()),
        command: (!sandbox.spec.command.is_empty()).then(|| sandbox.spec.command.clone()),
        args: (!sandbox.spec.args.is_empty()).then(|| sandbox.spec.args.clone()),
        env: Some(env(input)).filter(|e| !e.is_empty()),
        working_dir: sandbox.spec.working_dir.clone(),
        ports: Some(
            sandbox
                .spec
                .ports
                .iter()
                .map(|p| ContainerPort {
                    name: p.name.clone(),
                    container_port: p.container_port,
                    protocol: Some(format!("{:?}", p.protocol.unwrap_or_default())),
                    ..Default::default()
                })
                .collect(),
        )
        .filter(|p: &Vec<ContainerPort>| !p.is_empty()),
        resources: Some(input.resources.requirements.clone()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: (!add.is_empty()).then_some(add),
            }),
            seccomp_profile: Some(input.seccomp.clone()),
            ..Default::default()
        }),
        volume_mounts: Some(mounts).filter(|m| !m.is_empty()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };

    let spec = PodSpec {
        containers: vec![container],
        volumes: Some(volumes).filter(|v| !v.is_empty()),
        service_account_name: Some(service_account_name(&name)),
        automount_service_account_token: Some(identity.automount_token == Some(true)),
        enable_service_links: Some(false),
        host_network: Some(false),
        host_pid: Some(false),
        host_ipc: Some(false),
        host_users: None,
        runtime_class_name: input.runtime_class_name.clone(),
        restart_policy: Some(format!(
            "{:?}",
            sandbox.spec.restart_policy.unwrap_or_default()
        )),
        node_selector: Some(sandbox.spec.node_selector.clone()).filter(|m| !m.is_empty()),
        tolerations: Some(sandbox.spec.tolerations.clone()).filter(|t| !t.is_empty()),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(privileges.run_as_user.unwrap_or(DEFAULT_ID)),
            run_as_group: Some(privileges.run_as_group.unwrap_or(DEFAULT_ID)),
            fs_group: Some(privileges.fs_group.unwrap_or(DEFAULT_ID)),
            seccomp_profile: Some(input.seccomp.clone()),
            ..Default::default()
        }),
        active_deadline_seconds: None,
        ..Default::default()
    };

    let mut labels = sandbox.spec.pod_labels.clone();
    labels.extend(child_labels(&name));
    let annotations: BTreeMap<String, String> = sandbox.spec.pod_annotations.clone();
    // The deadline shrinks as the sandbox runs and is mutable in place, and the scheduling gate
    // is removed once the pod's NetworkPolicy is confirmed: both stay out of the hash. (A
    // generated seccomp profile's content is in its name, and so in the spec.)
    let pod_hash = short_hash(&(&labels, &annotations, &spec));
    let hash_before_default_requests =
        (!input.resources.defaulted_requests.is_empty()).then(|| {
            let mut earlier = spec.clone();
            if let Some(r) = earlier
                .containers
                .first_mut()
                .and_then(|c| c.resources.as_mut())
            {
                let limits = r.limits.clone().unwrap_or_default();
                let requests = r.requests.get_or_insert_with(Default::default);
                for name in &input.resources.defaulted_requests {
                    if let Some(limit) = limits.get(name) {
                        requests.insert(name.clone(), limit.clone());
                    }
                }
            }
            short_hash(&(&labels, &annotations, &earlier))
        });

    let mut meta = object_meta(sandbox, name);
    let mut annotations = annotations;
    annotations.insert(POLICY_HASH_ANNOTATION.into(), pod_hash.clone());
    meta.labels = Some(labels);
    meta.annotations = Some(annotations);
    // The isolation check stays out of the hash too: it matters only while a pod starts, so
    // turning it on or off, or a new operator image, does not recreate running sandboxes.
    let init_containers = input.isolation_check_image.map(|image| {
        vec![isolation_check(
            image,
            input.isolation_check_open_first,
            &spec.containers[0],
        )]
    });
    let spec = PodSpec {
        init_containers,
        active_deadline_seconds: input.active_deadline_seconds,
        scheduling_gates: Some(vec![PodSchedulingGate {
            name: ISOLATION_GATE.into(),
        }]),
        ..spec
    };
    Ok((
        Pod {
            metadata: meta,
            spec: Some(spec),
            status: None,
        },
        pod_hash,
        hash_before_default_requests,
    ))
}
