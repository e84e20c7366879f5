//! A checker for the Kubernetes Pod Security Standards, level `restricted` (which includes every
//! `baseline` control), for use in tests: [`restricted_violations`] lists every way a Pod breaks
//! the standard, and an empty list means the Pod would be admitted into a namespace labelled
//! `pod-security.kubernetes.io/enforce: restricted`.
//!
//! Source: <https://kubernetes.io/docs/concepts/security/pod-security-standards/> (the policy as of
//! Kubernetes v1.36), cross-checked against its reference implementation, the built-in Pod
//! Security Admission controller (`k8s.io/pod-security-admission/policy`, `latest` version).
//! Where the two differ this file follows the published table and says so at the check.
//!
//! Every violation is one string, `"<level>: <rule> (<offending field path>)"`, for instance
//! `restricted: allowPrivilegeEscalation must be false
//! (spec.containers[0].securityContext.allowPrivilegeEscalation)`. Container-level controls are
//! checked on `spec.containers`, `spec.initContainers` and `spec.ephemeralContainers`, in that order.
//!
//! Where a restricted control tightens a baseline one over the same field (capabilities, seccomp,
//! hostPath), each offending value is reported once, by the weakest level that forbids it: adding
//! `SYS_ADMIN` is a baseline violation, adding `CHOWN` (in the baseline set) a restricted one. The set
//! of rejected Pods is exactly the standard's; only duplicate messages are avoided. Likewise a value
//! set at pod level and inherited by containers is reported once, at the pod-level field.
//!
//! Rules that depend on the Pod, as the standard defines them:
//! - `spec.os.name: windows` exempts a Pod from the Linux-only restricted controls (privilege
//!   escalation, seccomp, capabilities).
//! - `spec.hostUsers: false` (a user-namespaced Pod) exempts it from "Running as Non-root" and
//!   "Running as Non-root user" (v1.35+); `/proc` mount type stays enforced, since the restricted
//!   profile keeps that control unconditional.

use std::fmt::Display;

use k8s_openapi::api::core::v1::{
    ContainerPort, Lifecycle, LifecycleHandler, Pod, PodSecurityContext, PodSpec, Probe,
    SecurityContext, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Baseline "Capabilities": the only values `capabilities.add` may hold.
pub const BASELINE_ALLOWED_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Restricted "Capabilities": the only value `capabilities.add` may hold.
pub const RESTRICTED_ALLOWED_CAPABILITY: &str = "NET_BIND_SERVICE";

/// Baseline "Sysctls": the safe set, as of Kubernetes v1.32 (the latest addition,
/// `net.ipv4.tcp_rmem` and `net.ipv4.tcp_wmem`).
pub const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

/// Baseline "SELinux": the values `seLinuxOptions.type` may take besides unset or `""`.
pub const ALLOWED_SELINUX_TYPES: &[&str] = &[
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

/// Restricted "Volume Types": every volume must use one of these sources.
pub const RESTRICTED_ALLOWED_VOLUME_TYPES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// Baseline "AppArmor": the legacy per-container annotation prefix.
pub const APPARMOR_ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";

const PROFILE_RUNTIME_DEFAULT: &str = "RuntimeDefault";
const PROFILE_LOCALHOST: &str = "Localhost";

/// Every violation of the Pod Security Standards, level `restricted` (baseline included), in
/// the standard's order of controls. Empty when the Pod complies.
pub fn restricted_violations(pod: &Pod) -> Vec<String> {
    let mut out = Violations::default();
    let empty = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&empty);
    let pod = PodView::new(&pod.metadata, spec);

    // Baseline.
    check_host_process(&pod, &mut out);
    check_host_namespaces(&pod, &mut out);
    check_privileged_containers(&pod, &mut out);
    check_capabilities_baseline(&pod, &mut out);
    check_host_path_volumes(&pod, &mut out);
    check_host_ports(&pod, &mut out);
    check_host_probes_and_lifecycle_hooks(&pod, &mut out);
    check_apparmor(&pod, &mut out);
    check_selinux(&pod, &mut out);
    check_proc_mount(&pod, &mut out);
    check_seccomp_baseline(&pod, &mut out);
    check_sysctls(&pod, &mut out);

    // Restricted.
    check_volume_types(&pod, &mut out);
    check_privilege_escalation(&pod, &mut out);
    check_run_as_non_root(&pod, &mut out);
    check_run_as_user(&pod, &mut out);
    check_seccomp_restricted(&pod, &mut out);
    check_capabilities_restricted(&pod, &mut out);

    out.0
}

#[derive(Default)]
struct Violations(Vec<String>);

impl Violations {
    fn baseline(&mut self, rule: impl Display, field: impl Display) {
        self.0.push(format!("baseline: {rule} ({field})"));
    }

    fn restricted(&mut self, rule: impl Display, field: impl Display) {
        self.0.push(format!("restricted: {rule} ({field})"));
    }
}

/// The parts of a Pod the checks read, with containers of all three kinds in one list.
struct PodView<'a> {
    metadata: &'a ObjectMeta,
    spec: &'a PodSpec,
    containers: Vec<ContainerView<'a>>,
}

/// One entry of `spec.containers`, `spec.initContainers` or `spec.ephemeralContainers`.
struct ContainerView<'a> {
    /// Path of the container, e.g. `spec.initContainers[0]`.
    path: String,
    security_context: Option<&'a SecurityContext>,
    ports: &'a [ContainerPort],
    liveness_probe: Option<&'a Probe>,
    readiness_probe: Option<&'a Probe>,
    startup_probe: Option<&'a Probe>,
    lifecycle: Option<&'a Lifecycle>,
}

impl<'a> PodView<'a> {
    fn new(metadata: &'a ObjectMeta, spec: &'a PodSpec) -> Self {
        let mut containers = Vec::new();
        for (i, c) in spec.containers.iter().enumerate() {
            containers.push(ContainerView {
                path: format!("spec.containers[{i}]"),
                security_context: c.security_context.as_ref(),
                ports: c.ports.as_deref().unwrap_or_default(),
                liveness_probe: c.liveness_probe.as_ref(),
                readiness_probe: c.readiness_probe.as_ref(),
                startup_probe: c.startup_probe.as_ref(),
                lifecycle: c.lifecycle.as_ref(),
            });
        }
        for (i, c) in spec.init_containers.iter().flatten().enumerate() {
            containers.push(ContainerView {
                path: format!("spec.initContainers[{i}]"),
                security_context: c.security_context.as_ref(),
                ports: c.ports.as_deref().unwrap_or_default(),
                liveness_probe: c.liveness_probe.as_ref(),
                readiness_probe: c.readiness_probe.as_ref(),
                startup_probe: c.startup_probe.as_ref(),
                lifecycle: c.lifecycle.as_ref(),
            });
        }
        for (i, c) in spec.ephemeral_containers.iter().flatten().enumerate() {
            containers.push(ContainerView {
                path: format!("spec.ephemeralContainers[{i}]"),
                security_context: c.security_context.as_ref(),
                ports: c.ports.as_deref().unwrap_or_default(),
                liveness_probe: c.liveness_probe.as_ref(),
                readiness_probe: c.readiness_probe.as_ref(),
                startup_probe: c.startup_probe.as_ref(),
                lifecycle: c.lifecycle.as_ref(),
            });
        }
        PodView {
            metadata,
            spec,
            containers,
        }
    }

    fn security_context(&self) -> Option<&'a PodSecurityContext> {
        self.spec.security_context.as_ref()
    }

    /// `spec.os.name: windows`: the Linux-only restricted controls do not apply.
    fn is_windows(&self) -> bool {
        self.spec.os.as_ref().is_some_and(|os| os.name == "windows")
    }

    /// `spec.hostUsers: false`: the Pod runs in its own user namespace.
    fn in_user_namespace(&self) -> bool {
        self.spec.host_users == Some(false)
    }

    fn volumes(&self) -> impl Iterator<Item = (usize, &'a Volume)> {
        self.spec.volumes.iter().flatten().enumerate()
    }
}

impl ContainerView<'_> {
    fn field(&self, rest: &str) -> String {
        format!("{}.securityContext.{rest}", self.path)
    }
}

/// Whether a string field counts as set: the standard treats `""` like unset.
fn non_empty(value: Option<&String>) -> Option<&str> {
    value.map(String::as_str).filter(|s| !s.is_empty())
}

// ---------------------------------------------------------------------------------------------
// Baseline
// ---------------------------------------------------------------------------------------------

/// Baseline "HostProcess": `windowsOptions.hostProcess` must be unset or false, at pod level and
/// on every container.
fn check_host_process(pod: &PodView<'_>, out: &mut Violations) {
    const RULE: &str = "windowsOptions.hostProcess must not be true";
    let pod_level = pod
        .security_context()
        .and_then(|sc| sc.windows_options.as_ref())
        .and_then(|w| w.host_process);
    if pod_level == Some(true) {
        out.baseline(RULE, "spec.securityContext.windowsOptions.hostProcess");
    }
    for c in &pod.containers {
        let value = c
            .security_context
            .and_then(|sc| sc.windows_options.as_ref())
            .and_then(|w| w.host_process);
        if value == Some(true) {
            out.baseline(RULE, c.field("windowsOptions.hostProcess"));
        }
    }
}

/// Baseline "Host Namespaces": `hostNetwork`, `hostPID` and `hostIPC` must be unset or false.
fn check_host_namespaces(pod: &PodView<'_>, out: &mut Violations) {
    let fields = [
        ("hostNetwork", pod.spec.host_network),
        ("hostPID", pod.spec.host_pid),
        ("hostIPC", pod.spec.host_ipc),
    ];
    for (name, value) in fields {
        if value == Some(true) {
            out.baseline(format!("{name} must not be true"), format!("spec.{name}"));
        }
    }
}

/// Baseline "Privileged Containers": `privileged` must be unset or false on every container.
fn check_privileged_containers(pod: &PodView<'_>, out: &mut Violations) {
    for c in &pod.containers {
        if c.security_context.and_then(|sc| sc.privileged) == Some(true) {
            out.baseline("privileged must not be true", c.field("privileged"));
        }
    }
}

/// Baseline "Capabilities": `capabilities.add` may only hold [`BASELINE_ALLOWED_CAPABILITIES`].
fn check_capabilities_baseline(pod: &PodView<'_>, out: &mut Violations) {
    for c in &pod.containers {
        let added = c
            .security_context
            .and_then(|sc| sc.capabilities.as_ref())
            .and_then(|caps| caps.add.as_deref())
            .unwrap_or_default();
        for (i, cap) in added.iter().enumerate() {
            if !BASELINE_ALLOWED_CAPABILITIES.contains(&cap.as_str()) {
                out.baseline(
                    format!("capabilities.add must stay within the baseline set, found {cap}"),
                    c.field(&format!("capabilities.add[{i}]")),
                );
            }
        }
    }
}

/// Baseline "HostPath Volumes": no volume may set `hostPath`.
fn check_host_path_volumes(pod: &PodView<'_>, out: &mut Violations) {
    for (i, volume) in pod.volumes() {
        if volume.host_path.is_some() {
            out.baseline(
                "hostPath volumes are forbidden",
                format!("spec.volumes[{i}].hostPath"),
            );
        }
    }
}

/// Baseline "Host Ports": every `ports[*].hostPort` must be unset or 0. (The standard allows a
/// cluster-specific known list; like the built-in admission controller, none is allowed here.)
fn check_host_ports(pod: &PodView<'_>, out: &mut Violations) {
    for c in &pod.containers {
        for (i, port) in c.ports.iter().enumerate() {
            if let Some(host_port) = port.host_port.filter(|p| *p != 0) {
                out.baseline(
                    format!("hostPort must be unset or 0, found {host_port}"),
                    format!("{}.ports[{i}].hostPort", c.path),
                );
            }
        }
    }
}

/// Baseline "Host Probes / Lifecycle Hooks" (v1.34+): `host` must be unset or `""` in the
/// `httpGet` and `tcpSocket` actions of the liveness, readiness and startup probes and of the
/// postStart and preStop hooks. The published table lists containers and initContainers; like
/// the admission controller this also checks ephemeral containers (which the API server already
/// forbids to carry probes or hooks).
fn check_host_probes_and_lifecycle_hooks(pod: &PodView<'_>, out: &mut Violations) {
    fn check_action(host: Option<&String>, field: impl FnOnce() -> String, out: &mut Violations) {
        if let Some(host) = non_empty(host) {
            out.baseline(
                format!("probe and lifecycle hook host must be unset, found {host:?}"),
                field(),
            );
        }
    }
    for c in &pod.containers {
        let probes = [
            ("livenessProbe", c.liveness_probe),
            ("readinessProbe", c.readiness_probe),
            ("startupProbe", c.startup_probe),
        ];
        for (name, probe) in probes {
            let Some(probe) = probe else { continue };
            let http = probe.http_get.as_ref().and_then(|a| a.host.as_ref());
            check_action(http, || format!("{}.{name}.httpGet.host", c.path), out);
            let tcp = probe.tcp_socket.as_ref().and_then(|a| a.host.as_ref());
            check_action(tcp, || format!("{}.{name}.tcpSocket.host", c.path), out);
        }
        let Some(lifecycle) = c.lifecycle else {
            continue;
        };
        let hooks: [(&str, Option<&LifecycleHandler>); 2] = [
            ("postStart", lifecycle.post_start.as_ref()),
            ("preStop", lifecycle.pre_stop.as_ref()),
        ];
        for (name, hook) in hooks {
            let Some(hook) = hook else { continue };
            let http = hook.http_get.as_ref().and_then(|a| a.host.as_ref());
            check_action(
                http,
                || format!("{}.lifecycle.{name}.httpGet.host", c.path),
                out,
            );
            let tcp = hook.tcp_socket.as_ref().and_then(|a| a.host.as_ref());
            check_action(
                tcp,
                || format!("{}.lifecycle.{name}.tcpSocket.host", c.path),
                out,
            );
        }
    }
}

/// Baseline "AppArmor": `appArmorProfile.type`, at pod level and on every container, must be
/// unset, `RuntimeDefault` or `Localhost`; every `container.apparmor.security.beta.kubernetes.io/*`
/// annotation must be `runtime/default` or `localhost/*` (or empty, which means unset).
fn check_apparmor(pod: &PodView<'_>, out: &mut Violations) {
    const RULE: &str = "appArmorProfile.type must be RuntimeDefault or Localhost";
    let allowed = |t: &str| t == PROFILE_RUNTIME_DEFAULT || t == PROFILE_LOCALHOST;
    if let Some(profile) = pod
        .security_context()
        .and_then(|sc| sc.app_armor_profile.as_ref())
        .filter(|p| !allowed(&p.type_))
    {
        out.baseline(
            format!("{RULE}, found {}", profile.type_),
            "spec.securityContext.appArmorProfile.type",
        );
    }
    for c in &pod.containers {
        if let Some(profile) = c
            .security_context
            .and_then(|sc| sc.app_armor_profile.as_ref())
            .filter(|p| !allowed(&p.type_))
        {
            out.baseline(
                format!("{RULE}, found {}", profile.type_),
                c.field("appArmorProfile.type"),
            );
        }
    }
    for (key, value) in pod.metadata.annotations.iter().flatten() {
        if !key.starts_with(APPARMOR_ANNOTATION_PREFIX) {
            continue;
        }
        let ok = value.is_empty() || value == "runtime/default" || value.starts_with("localhost/");
        if !ok {
            out.baseline(
                format!(
                    "AppArmor annotation must be runtime/default or localhost/*, found {value:?}"
                ),
                format!("metadata.annotations[{key:?}]"),
            );
        }
    }
}

/// Baseline "SELinux": `seLinuxOptions.type`, at pod level and on every container, must be unset,
/// `""` or one of [`ALLOWED_SELINUX_TYPES`]; `seLinuxOptions.user` and `.role` must be unset.
fn check_selinux(pod: &PodView<'_>, out: &mut Violations) {
    let mut settings = Vec::new();
    if let Some(opts) = pod
        .security_context()
        .and_then(|sc| sc.se_linux_options.as_ref())
    {
        settings.push(("spec.securityContext.seLinuxOptions".to_owned(), opts));
    }
    for c in &pod.containers {
        if let Some(opts) = c
            .security_context
            .and_then(|sc| sc.se_linux_options.as_ref())
        {
            settings.push((c.field("seLinuxOptions"), opts));
        }
    }
    for (path, opts) in settings {
        if let Some(t) = non_empty(opts.type_.as_ref())
            && !ALLOWED_SELINUX_TYPES.contains(&t)
        {
            out.baseline(
                format!(
                    "seLinuxOptions.type must be unset or one of {}, found {t}",
                    ALLOWED_SELINUX_TYPES.join(", ")
                ),
                format!("{path}.type"),
            );
        }
        if non_empty(opts.user.as_ref()).is_some() {
            out.baseline(
                "seLinuxOptions.user must not be set",
                format!("{path}.user"),
            );
        }
        if non_empty(opts.role.as_ref()).is_some() {
            out.baseline(
                "seLinuxOptions.role must not be set",
                format!("{path}.role"),
            );
        }
    }
}

/// Baseline "/proc Mount Type": `procMount` must be unset or `Default` on every container. The
/// baseline profile waives this for user-namespaced Pods (v1.35+), but the restricted profile
/// keeps it unconditional, so it is enforced here whatever `hostUsers` says.
fn check_proc_mount(pod: &PodView<'_>, out: &mut Violations) {
    for c in &pod.containers {
        if let Some(mount) = c
            .security_context
            .and_then(|sc| sc.proc_mount.as_ref())
            .filter(|m| m.as_str() != "Default")
        {
            out.baseline(
                format!("procMount must be Default, found {mount}"),
                c.field("procMount"),
            );
        }
    }
}

/// Baseline "Seccomp": where `seccompProfile.type` is set (pod level or any container) it must be
/// `RuntimeDefault` or `Localhost`, never `Unconfined`.
fn check_seccomp_baseline(pod: &PodView<'_>, out: &mut Violations) {
    const RULE: &str = "seccompProfile.type must be RuntimeDefault or Localhost when set";
    if let Some(profile) = pod
        .security_context()
        .and_then(|sc| sc.seccomp_profile.as_ref())
        .filter(|p| !valid_seccomp(&p.type_))
    {
        out.baseline(
            format!("{RULE}, found {}", profile.type_),
            "spec.securityContext.seccompProfile.type",
        );
    }
    for c in &pod.containers {
        if let Some(profile) = c
            .security_context
            .and_then(|sc| sc.seccomp_profile.as_ref())
            .filter(|p| !valid_seccomp(&p.type_))
        {
            out.baseline(
                format!("{RULE}, found {}", profile.type_),
                c.field("seccompProfile.type"),
            );
        }
    }
}

fn valid_seccomp(profile_type: &str) -> bool {
    profile_type == PROFILE_RUNTIME_DEFAULT || profile_type == PROFILE_LOCALHOST
}

/// Baseline "Sysctls": every `spec.securityContext.sysctls[*].name` must be in [`SAFE_SYSCTLS`].
fn check_sysctls(pod: &PodView<'_>, out: &mut Violations) {
    let sysctls = pod
        .security_context()
        .and_then(|sc| sc.sysctls.as_deref())
        .unwrap_or_default();
    for (i, sysctl) in sysctls.iter().enumerate() {
        if !SAFE_SYSCTLS.contains(&sysctl.name.as_str()) {
            out.baseline(
                format!("sysctl {} is not in the safe set", sysctl.name),
                format!("spec.securityContext.sysctls[{i}].name"),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Restricted
// ---------------------------------------------------------------------------------------------

/// Restricted "Volume Types": every volume must use one of [`RESTRICTED_ALLOWED_VOLUME_TYPES`].
/// A hostPath volume is left to the baseline hostPath check. A volume with no source at all is
/// defaulted to `emptyDir` by the API server, so it passes.
///
/// The image volume source is not in the published list, so it is reported; note that the
/// built-in admission controller admits it from v1.33 on.
fn check_volume_types(pod: &PodView<'_>, out: &mut Violations) {
    for (i, volume) in pod.volumes() {
        let Some(source) = volume_source(volume) else {
            continue;
        };
        if source == "hostPath" || RESTRICTED_ALLOWED_VOLUME_TYPES.contains(&source) {
            continue;
        }
        out.restricted(
            format!("volume type {source} is not allowed"),
            format!("spec.volumes[{i}].{source}"),
        );
    }
}

/// The JSON name of the source a volume sets, if any.
fn volume_source(v: &Volume) -> Option<&'static str> {
    let sources = [
        ("awsElasticBlockStore", v.aws_elastic_block_store.is_some()),
        ("azureDisk", v.azure_disk.is_some()),
        ("azureFile", v.azure_file.is_some()),
        ("cephfs", v.cephfs.is_some()),
        ("cinder", v.cinder.is_some()),
        ("configMap", v.config_map.is_some()),
        ("csi", v.csi.is_some()),
        ("downwardAPI", v.downward_api.is_some()),
        ("emptyDir", v.empty_dir.is_some()),
        ("ephemeral", v.ephemeral.is_some()),
        ("fc", v.fc.is_some()),
        ("flexVolume", v.flex_volume.is_some()),
        ("flocker", v.flocker.is_some()),
        ("gcePersistentDisk", v.gce_persistent_disk.is_some()),
        ("gitRepo", v.git_repo.is_some()),
        ("glusterfs", v.glusterfs.is_some()),
        ("hostPath", v.host_path.is_some()),
        ("image", v.image.is_some()),
        ("iscsi", v.iscsi.is_some()),
        ("nfs", v.nfs.is_some()),
        ("persistentVolumeClaim", v.persistent_volume_claim.is_some()),
        ("photonPersistentDisk", v.photon_persistent_disk.is_some()),
        ("portworxVolume", v.portworx_volume.is_some()),
        ("projected", v.projected.is_some()),
        ("quobyte", v.quobyte.is_some()),
        ("rbd", v.rbd.is_some()),
        ("scaleIO", v.scale_io.is_some()),
        ("secret", v.secret.is_some()),
        ("storageos", v.storageos.is_some()),
        ("vsphereVolume", v.vsphere_volume.is_some()),
    ];
    sources
        .into_iter()
        .find_map(|(name, set)| set.then_some(name))
}

/// Restricted "Privilege Escalation": `allowPrivilegeEscalation` must be explicitly false on every
/// container (unset counts as allowed). Linux only: skipped for `spec.os.name: windows`.
fn check_privilege_escalation(pod: &PodView<'_>, out: &mut Violations) {
    if pod.is_windows() {
        return;
    }
    for c in &pod.containers {
        if c.security_context
            .and_then(|sc| sc.allow_privilege_escalation)
            != Some(false)
        {
            out.restricted(
                "allowPrivilegeEscalation must be false",
                c.field("allowPrivilegeEscalation"),
            );
        }
    }
}

/// Restricted "Running as Non-root": `runAsNonRoot` must be true at pod level or on every
/// container, and false nowhere. A container that leaves it unset inherits the pod-level value, so
/// with a pod-level `false` only the pod-level field is reported. Waived for `hostUsers: false`.
fn check_run_as_non_root(pod: &PodView<'_>, out: &mut Violations) {
    if pod.in_user_namespace() {
        return;
    }
    let pod_level = pod.security_context().and_then(|sc| sc.run_as_non_root);
    if pod_level == Some(false) {
        out.restricted(
            "runAsNonRoot must not be false",
            "spec.securityContext.runAsNonRoot",
        );
    }
    for c in &pod.containers {
        match c.security_context.and_then(|sc| sc.run_as_non_root) {
            Some(true) => {}
            Some(false) => {
                out.restricted("runAsNonRoot must not be false", c.field("runAsNonRoot"));
            }
            None if pod_level.is_none() => out.restricted(
                "runAsNonRoot must be true at pod level or on every container",
                c.field("runAsNonRoot"),
            ),
            None => {}
        }
    }
}

/// Restricted "Running as Non-root user": `runAsUser` must not be 0, at pod level or on any
/// container. Waived for `hostUsers: false`.
fn check_run_as_user(pod: &PodView<'_>, out: &mut Violations) {
    if pod.in_user_namespace() {
        return;
    }
    if pod.security_context().and_then(|sc| sc.run_as_user) == Some(0) {
        out.restricted("runAsUser must not be 0", "spec.securityContext.runAsUser");
    }
    for c in &pod.containers {
        if c.security_context.and_then(|sc| sc.run_as_user) == Some(0) {
            out.restricted("runAsUser must not be 0", c.field("runAsUser"));
        }
    }
}

/// Restricted "Seccomp": `seccompProfile.type` must be `RuntimeDefault` or `Localhost`, set at pod
/// level or on every container; unset is not allowed. Explicit bad values are reported by the
/// baseline seccomp check, so this reports the containers left without any profile. Linux only:
/// skipped for `spec.os.name: windows`.
fn check_seccomp_restricted(pod: &PodView<'_>, out: &mut Violations) {
    if pod.is_windows() {
        return;
    }
    let pod_level_set = pod
        .security_context()
        .is_some_and(|sc| sc.seccomp_profile.is_some());
    if pod_level_set {
        return;
    }
    for c in &pod.containers {
        if c.security_context
            .and_then(|sc| sc.seccomp_profile.as_ref())
            .is_none()
        {
            out.restricted(
                "seccompProfile.type must be set to RuntimeDefault or Localhost at pod level or on every container",
                c.field("seccompProfile.type"),
            );
        }
    }
}

/// Restricted "Capabilities": every container must drop `ALL`, and may add back only
/// `NET_BIND_SERVICE`. Added capabilities outside the baseline set are reported by the baseline
/// check. Linux only: skipped for `spec.os.name: windows`.
fn check_capabilities_restricted(pod: &PodView<'_>, out: &mut Violations) {
    if pod.is_windows() {
        return;
    }
    for c in &pod.containers {
        let caps = c.security_context.and_then(|sc| sc.capabilities.as_ref());
        let drops_all = caps
            .and_then(|caps| caps.drop.as_deref())
            .unwrap_or_default()
            .iter()
            .any(|cap| cap == "ALL");
        if !drops_all {
            out.restricted(
                "capabilities.drop must include ALL",
                c.field("capabilities.drop"),
            );
        }
        let added = caps
            .and_then(|caps| caps.add.as_deref())
            .unwrap_or_default();
        for (i, cap) in added.iter().enumerate() {
            if cap != RESTRICTED_ALLOWED_CAPABILITY
                && BASELINE_ALLOWED_CAPABILITIES.contains(&cap.as_str())
            {
                out.restricted(
                    format!("capabilities.add may only contain NET_BIND_SERVICE, found {cap}"),
                    c.field(&format!("capabilities.add[{i}]")),
                );
            }
        }
    }
}
