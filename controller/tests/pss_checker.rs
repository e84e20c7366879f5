//! Tests of the Pod Security Standards checker in `support::pss`: a fully compliant Pod passes,
//! one mutation per control yields exactly the expected violation, and the variants the standard
//! allows (container-level instead of pod-level settings, Windows and user-namespace exemptions)
//! stay compliant.

mod support;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EphemeralContainer, HTTPGetAction, Lifecycle, LifecycleHandler, Pod,
    PodOS, PodSecurityContext, PodSpec, SELinuxOptions, SeccompProfile, SecurityContext, Sysctl,
    TCPSocketAction, Volume, WindowsSecurityContextOptions,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;
use support::pss::restricted_violations;

/// The security context every container of the compliant Pod carries.
fn restricted_container_security_context() -> serde_json::Value {
    json!({
        "allowPrivilegeEscalation": false,
        "capabilities": { "drop": ["ALL"] },
        "readOnlyRootFilesystem": true
    })
}

/// A Pod that meets every baseline and restricted control while touching as many of the
/// restricted fields as possible with allowed values.
fn compliant_pod() -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "agent",
            "annotations": {
                "container.apparmor.security.beta.kubernetes.io/agent": "runtime/default"
            }
        },
        "spec": {
            "os": { "name": "linux" },
            "hostNetwork": false,
            "hostPID": false,
            "hostIPC": false,
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "fsGroup": 65532,
                "supplementalGroups": [65532],
                "seccompProfile": { "type": "RuntimeDefault" },
                "appArmorProfile": { "type": "RuntimeDefault" },
                "seLinuxOptions": { "level": "s0:c123,c456" },
                "windowsOptions": { "hostProcess": false },
                "sysctls": [
                    { "name": "net.ipv4.ip_unprivileged_port_start", "value": "80" },
                    { "name": "net.ipv4.tcp_keepalive_time", "value": "600" }
                ]
            },
            "containers": [{
                "name": "agent",
                "image": "registry.example/agent:1",
                "ports": [{ "containerPort": 8080 }],
                "livenessProbe": { "httpGet": { "path": "/healthz", "port": 8080 } },
                "readinessProbe": { "tcpSocket": { "port": 8080 } },
                "startupProbe": { "exec": { "command": ["true"] } },
                "lifecycle": {
                    "preStop": { "httpGet": { "path": "/drain", "port": 8080 } }
                },
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "privileged": false,
                    "capabilities": { "drop": ["ALL"], "add": ["NET_BIND_SERVICE"] },
                    "readOnlyRootFilesystem": true,
                    "procMount": "Default",
                    "runAsNonRoot": true,
                    "runAsUser": 10001,
                    "seccompProfile": { "type": "RuntimeDefault" },
                    "appArmorProfile": { "type": "RuntimeDefault" },
                    "seLinuxOptions": { "type": "container_t" },
                    "windowsOptions": { "hostProcess": false }
                }
            }],
            "initContainers": [{
                "name": "init",
                "image": "registry.example/init:1",
                "securityContext": restricted_container_security_context()
            }],
            "ephemeralContainers": [{
                "name": "debug",
                "image": "registry.example/debug:1",
                "securityContext": restricted_container_security_context()
            }],
            "volumes": [
                { "name": "config", "configMap": { "name": "agent" } },
                { "name": "csi", "csi": { "driver": "secrets-store.csi.k8s.io" } },
                { "name": "podinfo", "downwardAPI": { "items": [] } },
                { "name": "scratch", "emptyDir": {} },
                { "name": "work", "ephemeral": { "volumeClaimTemplate": { "spec": {} } } },
                { "name": "state", "persistentVolumeClaim": { "claimName": "state" } },
                { "name": "token", "projected": { "sources": [] } },
                { "name": "creds", "secret": { "secretName": "creds" } }
            ]
        }
    }))
    .expect("the compliant pod deserializes")
}

// ---- mutation helpers ------------------------------------------------------------------------

fn spec(p: &mut Pod) -> &mut PodSpec {
    p.spec.as_mut().expect("pod has a spec")
}

fn pod_sc(p: &mut Pod) -> &mut PodSecurityContext {
    spec(p)
        .security_context
        .get_or_insert_with(Default::default)
}

fn agent(p: &mut Pod) -> &mut Container {
    &mut spec(p).containers[0]
}

fn init(p: &mut Pod) -> &mut Container {
    &mut spec(p).init_containers.as_mut().expect("init containers")[0]
}

fn debug(p: &mut Pod) -> &mut EphemeralContainer {
    &mut spec(p)
        .ephemeral_containers
        .as_mut()
        .expect("ephemeral containers")[0]
}

fn agent_sc(p: &mut Pod) -> &mut SecurityContext {
    agent(p)
        .security_context
        .get_or_insert_with(Default::default)
}

fn init_sc(p: &mut Pod) -> &mut SecurityContext {
    init(p)
        .security_context
        .get_or_insert_with(Default::default)
}

fn debug_sc(p: &mut Pod) -> &mut SecurityContext {
    debug(p)
        .security_context
        .get_or_insert_with(Default::default)
}

/// Every container's security context, for mutations that must reach all of them.
fn all_sc(p: &mut Pod) -> [&mut SecurityContext; 3] {
    let spec = spec(p);
    let [agent] = spec.containers.as_mut_slice() else {
        panic!("one container")
    };
    let [init] = spec.init_containers.as_deref_mut().expect("init") else {
        panic!("one init container")
    };
    let [debug] = spec.ephemeral_containers.as_deref_mut().expect("eph") else {
        panic!("one ephemeral container")
    };
    [
        agent.security_context.get_or_insert_with(Default::default),
        init.security_context.get_or_insert_with(Default::default),
        debug.security_context.get_or_insert_with(Default::default),
    ]
}

fn add_volume(p: &mut Pod, volume: serde_json::Value) {
    let volume: Volume = serde_json::from_value(volume).expect("volume deserializes");
    spec(p).volumes.get_or_insert_with(Vec::new).push(volume);
}

fn host_process(value: bool) -> Option<WindowsSecurityContextOptions> {
    Some(WindowsSecurityContextOptions {
        host_process: Some(value),
        ..Default::default()
    })
}

fn seccomp(profile_type: &str) -> Option<SeccompProfile> {
    Some(SeccompProfile {
        type_: profile_type.to_owned(),
        localhost_profile: (profile_type == "Localhost").then(|| "agent.json".to_owned()),
    })
}

fn selinux(type_: Option<&str>, user: Option<&str>, role: Option<&str>) -> Option<SELinuxOptions> {
    Some(SELinuxOptions {
        type_: type_.map(str::to_owned),
        user: user.map(str::to_owned),
        role: role.map(str::to_owned),
        level: None,
    })
}

fn caps(add: &[&str], drop: &[&str]) -> Option<Capabilities> {
    let list = |l: &[&str]| Some(l.iter().map(|c| (*c).to_owned()).collect());
    Some(Capabilities {
        add: list(add),
        drop: list(drop),
    })
}

fn annotate(p: &mut Pod, key: &str, value: &str) {
    p.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(key.to_owned(), value.to_owned());
}

// ---- tables ----------------------------------------------------------------------------------

struct Case {
    name: &'static str,
    mutate: fn(&mut Pod),
    expected: &'static [&'static str],
}

/// One mutation of the compliant Pod per control (several for controls with several rules or
/// levels), each with the exact violations it must produce.
const VIOLATIONS: &[Case] = &[
    // Baseline: HostProcess.
    Case {
        name: "hostProcess at pod level",
        mutate: |p| pod_sc(p).windows_options = host_process(true),
        expected: &[
            "baseline: windowsOptions.hostProcess must not be true (spec.securityContext.windowsOptions.hostProcess)",
        ],
    },
    Case {
        name: "hostProcess on an ephemeral container",
        mutate: |p| debug_sc(p).windows_options = host_process(true),
        expected: &[
            "baseline: windowsOptions.hostProcess must not be true (spec.ephemeralContainers[0].securityContext.windowsOptions.hostProcess)",
        ],
    },
    // Baseline: Host Namespaces.
    Case {
        name: "hostNetwork",
        mutate: |p| spec(p).host_network = Some(true),
        expected: &["baseline: hostNetwork must not be true (spec.hostNetwork)"],
    },
    Case {
        name: "hostPID",
        mutate: |p| spec(p).host_pid = Some(true),
        expected: &["baseline: hostPID must not be true (spec.hostPID)"],
    },
    Case {
        name: "hostIPC",
        mutate: |p| spec(p).host_ipc = Some(true),
        expected: &["baseline: hostIPC must not be true (spec.hostIPC)"],
    },
    // Baseline: Privileged Containers.
    Case {
        name: "privileged init container",
        mutate: |p| init_sc(p).privileged = Some(true),
        expected: &[
            "baseline: privileged must not be true (spec.initContainers[0].securityContext.privileged)",
        ],
    },
    // Baseline: Capabilities.
    Case {
        name: "capability outside the baseline set",
        mutate: |p| agent_sc(p).capabilities = caps(&["NET_BIND_SERVICE", "SYS_ADMIN"], &["ALL"]),
        expected: &[
            "baseline: capabilities.add must stay within the baseline set, found SYS_ADMIN (spec.containers[0].securityContext.capabilities.add[1])",
        ],
    },
    // Baseline: HostPath Volumes.
    Case {
        name: "hostPath volume",
        mutate: |p| {
            add_volume(
                p,
                json!({ "name": "host", "hostPath": { "path": "/var/run" } }),
            )
        },
        expected: &["baseline: hostPath volumes are forbidden (spec.volumes[8].hostPath)"],
    },
    // Baseline: Host Ports.
    Case {
        name: "hostPort",
        mutate: |p| agent(p).ports.as_mut().expect("ports")[0].host_port = Some(8080),
        expected: &[
            "baseline: hostPort must be unset or 0, found 8080 (spec.containers[0].ports[0].hostPort)",
        ],
    },
    Case {
        name: "hostPort on an ephemeral container",
        mutate: |p| {
            debug(p).ports = Some(vec![
                serde_json::from_value(json!({ "containerPort": 9000, "hostPort": 9000 }))
                    .expect("port"),
            ])
        },
        expected: &[
            "baseline: hostPort must be unset or 0, found 9000 (spec.ephemeralContainers[0].ports[0].hostPort)",
        ],
    },
    // Baseline: Host Probes / Lifecycle Hooks.
    Case {
        name: "liveness probe host",
        mutate: |p| {
            let probe = agent(p).liveness_probe.as_mut().expect("liveness probe");
            probe.http_get.as_mut().expect("httpGet").host = Some("10.0.0.1".to_owned());
        },
        expected: &[
            "baseline: probe and lifecycle hook host must be unset, found \"10.0.0.1\" (spec.containers[0].livenessProbe.httpGet.host)",
        ],
    },
    Case {
        name: "readiness probe tcpSocket host",
        mutate: |p| {
            let probe = agent(p).readiness_probe.as_mut().expect("readiness probe");
            probe.tcp_socket.as_mut().expect("tcpSocket").host = Some("node.local".to_owned());
        },
        expected: &[
            "baseline: probe and lifecycle hook host must be unset, found \"node.local\" (spec.containers[0].readinessProbe.tcpSocket.host)",
        ],
    },
    Case {
        name: "preStop hook tcpSocket host on an init container",
        mutate: |p| {
            init(p).lifecycle = Some(Lifecycle {
                pre_stop: Some(LifecycleHandler {
                    tcp_socket: Some(TCPSocketAction {
                        host: Some("169.254.169.254".to_owned()),
                        port: IntOrString::Int(80),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
        },
        expected: &[
            "baseline: probe and lifecycle hook host must be unset, found \"169.254.169.254\" (spec.initContainers[0].lifecycle.preStop.tcpSocket.host)",
        ],
    },
    Case {
        name: "postStart hook httpGet host",
        mutate: |p| {
            let lifecycle = agent(p).lifecycle.as_mut().expect("lifecycle");
            lifecycle.post_start = Some(LifecycleHandler {
                http_get: Some(HTTPGetAction {
                    host: Some("kubernetes.default".to_owned()),
                    port: IntOrString::Int(443),
                    ..Default::default()
                }),
                ..Default::default()
            });
        },
        expected: &[
            "baseline: probe and lifecycle hook host must be unset, found \"kubernetes.default\" (spec.containers[0].lifecycle.postStart.httpGet.host)",
        ],
    },
    // Baseline: AppArmor.
    Case {
        name: "AppArmor annotation unconfined",
        mutate: |p| {
            annotate(
                p,
                "container.apparmor.security.beta.kubernetes.io/agent",
                "unconfined",
            )
        },
        expected: &[
            "baseline: AppArmor annotation must be runtime/default or localhost/*, found \"unconfined\" (metadata.annotations[\"container.apparmor.security.beta.kubernetes.io/agent\"])",
        ],
    },
    Case {
        name: "AppArmor profile Unconfined on a container",
        mutate: |p| {
            agent_sc(p)
                .app_armor_profile
                .as_mut()
                .expect("apparmor")
                .type_ = "Unconfined".to_owned()
        },
        expected: &[
            "baseline: appArmorProfile.type must be RuntimeDefault or Localhost, found Unconfined (spec.containers[0].securityContext.appArmorProfile.type)",
        ],
    },
    Case {
        name: "AppArmor profile Unconfined at pod level",
        mutate: |p| {
            pod_sc(p)
                .app_armor_profile
                .as_mut()
                .expect("apparmor")
                .type_ = "Unconfined".to_owned()
        },
        expected: &[
            "baseline: appArmorProfile.type must be RuntimeDefault or Localhost, found Unconfined (spec.securityContext.appArmorProfile.type)",
        ],
    },
    // Baseline: SELinux.
    Case {
        name: "SELinux type outside the allowed set",
        mutate: |p| pod_sc(p).se_linux_options = selinux(Some("spc_t"), None, None),
        expected: &[
            "baseline: seLinuxOptions.type must be unset or one of container_t, container_init_t, container_kvm_t, container_engine_t, found spc_t (spec.securityContext.seLinuxOptions.type)",
        ],
    },
    Case {
        name: "SELinux user",
        mutate: |p| {
            agent_sc(p).se_linux_options = selinux(Some("container_t"), Some("system_u"), None)
        },
        expected: &[
            "baseline: seLinuxOptions.user must not be set (spec.containers[0].securityContext.seLinuxOptions.user)",
        ],
    },
    Case {
        name: "SELinux role",
        mutate: |p| init_sc(p).se_linux_options = selinux(None, None, Some("system_r")),
        expected: &[
            "baseline: seLinuxOptions.role must not be set (spec.initContainers[0].securityContext.seLinuxOptions.role)",
        ],
    },
    // Baseline: /proc Mount Type.
    Case {
        name: "procMount Unmasked",
        mutate: |p| agent_sc(p).proc_mount = Some("Unmasked".to_owned()),
        expected: &[
            "baseline: procMount must be Default, found Unmasked (spec.containers[0].securityContext.procMount)",
        ],
    },
    Case {
        name: "procMount Unmasked stays forbidden in a user namespace under restricted",
        mutate: |p| {
            spec(p).host_users = Some(false);
            agent_sc(p).proc_mount = Some("Unmasked".to_owned());
        },
        expected: &[
            "baseline: procMount must be Default, found Unmasked (spec.containers[0].securityContext.procMount)",
        ],
    },
    // Baseline: Seccomp.
    Case {
        name: "seccomp Unconfined on a container",
        mutate: |p| agent_sc(p).seccomp_profile = seccomp("Unconfined"),
        expected: &[
            "baseline: seccompProfile.type must be RuntimeDefault or Localhost when set, found Unconfined (spec.containers[0].securityContext.seccompProfile.type)",
        ],
    },
    Case {
        name: "seccomp Unconfined at pod level is reported once, where it is set",
        mutate: |p| pod_sc(p).seccomp_profile = seccomp("Unconfined"),
        expected: &[
            "baseline: seccompProfile.type must be RuntimeDefault or Localhost when set, found Unconfined (spec.securityContext.seccompProfile.type)",
        ],
    },
    // Baseline: Sysctls.
    Case {
        name: "unsafe sysctl",
        mutate: |p| {
            pod_sc(p).sysctls.as_mut().expect("sysctls").push(Sysctl {
                name: "kernel.msgmax".to_owned(),
                value: "65536".to_owned(),
            })
        },
        expected: &[
            "baseline: sysctl kernel.msgmax is not in the safe set (spec.securityContext.sysctls[2].name)",
        ],
    },
    // Restricted: Volume Types.
    Case {
        name: "nfs volume",
        mutate: |p| {
            add_volume(
                p,
                json!({ "name": "nfs", "nfs": { "server": "nfs.example", "path": "/" } }),
            )
        },
        expected: &["restricted: volume type nfs is not allowed (spec.volumes[8].nfs)"],
    },
    Case {
        name: "gitRepo volume",
        mutate: |p| {
            add_volume(
                p,
                json!({ "name": "src", "gitRepo": { "repository": "https://example/x.git" } }),
            )
        },
        expected: &["restricted: volume type gitRepo is not allowed (spec.volumes[8].gitRepo)"],
    },
    Case {
        name: "image volume (not in the published list)",
        mutate: |p| {
            add_volume(
                p,
                json!({ "name": "model", "image": { "reference": "registry.example/model:1" } }),
            )
        },
        expected: &["restricted: volume type image is not allowed (spec.volumes[8].image)"],
    },
    // Restricted: Privilege Escalation.
    Case {
        name: "allowPrivilegeEscalation true",
        mutate: |p| agent_sc(p).allow_privilege_escalation = Some(true),
        expected: &[
            "restricted: allowPrivilegeEscalation must be false (spec.containers[0].securityContext.allowPrivilegeEscalation)",
        ],
    },
    Case {
        name: "allowPrivilegeEscalation unset",
        mutate: |p| init_sc(p).allow_privilege_escalation = None,
        expected: &[
            "restricted: allowPrivilegeEscalation must be false (spec.initContainers[0].securityContext.allowPrivilegeEscalation)",
        ],
    },
    // Restricted: Running as Non-root.
    Case {
        name: "runAsNonRoot false on a container",
        mutate: |p| debug_sc(p).run_as_non_root = Some(false),
        expected: &[
            "restricted: runAsNonRoot must not be false (spec.ephemeralContainers[0].securityContext.runAsNonRoot)",
        ],
    },
    Case {
        name: "runAsNonRoot false at pod level",
        mutate: |p| pod_sc(p).run_as_non_root = Some(false),
        expected: &[
            "restricted: runAsNonRoot must not be false (spec.securityContext.runAsNonRoot)",
        ],
    },
    Case {
        name: "runAsNonRoot unset at pod level and on some containers",
        mutate: |p| pod_sc(p).run_as_non_root = None,
        expected: &[
            "restricted: runAsNonRoot must be true at pod level or on every container (spec.initContainers[0].securityContext.runAsNonRoot)",
            "restricted: runAsNonRoot must be true at pod level or on every container (spec.ephemeralContainers[0].securityContext.runAsNonRoot)",
        ],
    },
    // Restricted: Running as Non-root user.
    Case {
        name: "runAsUser 0 at pod level",
        mutate: |p| pod_sc(p).run_as_user = Some(0),
        expected: &["restricted: runAsUser must not be 0 (spec.securityContext.runAsUser)"],
    },
    Case {
        name: "runAsUser 0 on a container",
        mutate: |p| init_sc(p).run_as_user = Some(0),
        expected: &[
            "restricted: runAsUser must not be 0 (spec.initContainers[0].securityContext.runAsUser)",
        ],
    },
    // Restricted: Seccomp.
    Case {
        name: "seccomp unset at pod level and on some containers",
        mutate: |p| pod_sc(p).seccomp_profile = None,
        expected: &[
            "restricted: seccompProfile.type must be set to RuntimeDefault or Localhost at pod level or on every container (spec.initContainers[0].securityContext.seccompProfile.type)",
            "restricted: seccompProfile.type must be set to RuntimeDefault or Localhost at pod level or on every container (spec.ephemeralContainers[0].securityContext.seccompProfile.type)",
        ],
    },
    // Restricted: Capabilities.
    Case {
        name: "capabilities.drop without ALL",
        mutate: |p| agent_sc(p).capabilities = caps(&["NET_BIND_SERVICE"], &["NET_RAW"]),
        expected: &[
            "restricted: capabilities.drop must include ALL (spec.containers[0].securityContext.capabilities.drop)",
        ],
    },
    Case {
        name: "capabilities unset",
        mutate: |p| debug_sc(p).capabilities = None,
        expected: &[
            "restricted: capabilities.drop must include ALL (spec.ephemeralContainers[0].securityContext.capabilities.drop)",
        ],
    },
    Case {
        name: "baseline capability other than NET_BIND_SERVICE",
        mutate: |p| init_sc(p).capabilities = caps(&["CHOWN"], &["ALL"]),
        expected: &[
            "restricted: capabilities.add may only contain NET_BIND_SERVICE, found CHOWN (spec.initContainers[0].securityContext.capabilities.add[0])",
        ],
    },
];

/// Variants the standard explicitly allows: each must leave the compliant Pod compliant.
const ALLOWED: &[Case] = &[
    Case {
        name: "seccomp set on every container instead of the pod",
        mutate: |p| {
            pod_sc(p).seccomp_profile = None;
            for sc in all_sc(p) {
                sc.seccomp_profile = seccomp("Localhost");
            }
        },
        expected: &[],
    },
    Case {
        name: "runAsNonRoot set on every container instead of the pod",
        mutate: |p| {
            pod_sc(p).run_as_non_root = None;
            for sc in all_sc(p) {
                sc.run_as_non_root = Some(true);
            }
        },
        expected: &[],
    },
    Case {
        name: "Windows pod is exempt from the Linux-only controls",
        mutate: |p| {
            spec(p).os = Some(PodOS {
                name: "windows".to_owned(),
            });
            pod_sc(p).seccomp_profile = None;
            for sc in all_sc(p) {
                sc.allow_privilege_escalation = None;
                sc.capabilities = None;
                sc.seccomp_profile = None;
            }
        },
        expected: &[],
    },
    Case {
        name: "user-namespaced pod may run as root",
        mutate: |p| {
            spec(p).host_users = Some(false);
            pod_sc(p).run_as_non_root = Some(false);
            pod_sc(p).run_as_user = Some(0);
            agent_sc(p).run_as_non_root = None;
            agent_sc(p).run_as_user = Some(0);
        },
        expected: &[],
    },
    Case {
        name: "explicit zero and empty values count as unset",
        mutate: |p| {
            agent(p).ports.as_mut().expect("ports")[0].host_port = Some(0);
            let probe = agent(p).liveness_probe.as_mut().expect("liveness probe");
            probe.http_get.as_mut().expect("httpGet").host = Some(String::new());
            init_sc(p).se_linux_options = selinux(Some(""), Some(""), Some(""));
            annotate(p, "container.apparmor.security.beta.kubernetes.io/init", "");
        },
        expected: &[],
    },
    Case {
        name: "every safe sysctl",
        mutate: |p| {
            pod_sc(p).sysctls = Some(
                [
                    // The safe set as published (spelled out, not taken from the checker).
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
                ]
                .iter()
                .map(|name| Sysctl {
                    name: (*name).to_owned(),
                    value: "1".to_owned(),
                })
                .collect(),
            )
        },
        expected: &[],
    },
    Case {
        name: "other allowed SELinux types and AppArmor Localhost",
        mutate: |p| {
            pod_sc(p).se_linux_options = selinux(Some("container_engine_t"), None, None);
            init_sc(p).se_linux_options = selinux(Some("container_init_t"), None, None);
            agent_sc(p)
                .app_armor_profile
                .as_mut()
                .expect("apparmor")
                .type_ = "Localhost".to_owned();
            annotate(
                p,
                "container.apparmor.security.beta.kubernetes.io/agent",
                "localhost/agent-profile",
            );
        },
        expected: &[],
    },
    Case {
        name: "volume without a source (the API server defaults it to emptyDir)",
        mutate: |p| add_volume(p, json!({ "name": "defaulted" })),
        expected: &[],
    },
];

fn run(cases: &[Case]) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        let mut pod = compliant_pod();
        (case.mutate)(&mut pod);
        let got = restricted_violations(&pod);
        if got != case.expected {
            failures.push(format!(
                "{}:\n  expected {:#?}\n  got      {:#?}",
                case.name, case.expected, got
            ));
        }
    }
    failures
}

#[test]
fn compliant_pod_has_no_violations() {
    assert_eq!(
        restricted_violations(&compliant_pod()),
        Vec::<String>::new()
    );
}

#[test]
fn each_mutation_yields_exactly_the_expected_violation() {
    let failures = run(VIOLATIONS);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn allowed_variants_stay_compliant() {
    let failures = run(ALLOWED);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn violations_name_their_level_and_field() {
    for case in VIOLATIONS {
        assert!(
            !case.expected.is_empty(),
            "{} expects a violation",
            case.name
        );
        for message in case.expected {
            assert!(
                (message.starts_with("baseline: ") || message.starts_with("restricted: "))
                    && message.ends_with(')')
                    && message.contains(" ("),
                "{}: malformed message {message:?}",
                case.name
            );
        }
    }
}

#[test]
fn pod_without_spec_only_checks_metadata() {
    let mut pod = Pod::default();
    assert!(restricted_violations(&pod).is_empty());
    annotate(
        &mut pod,
        "container.apparmor.security.beta.kubernetes.io/x",
        "unconfined",
    );
    assert_eq!(restricted_violations(&pod).len(), 1);
}
