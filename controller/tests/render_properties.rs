//! Properties of every rendered plan: each pod passes Pod Security `restricted` and carries the
//! always-on hardening, for the examples and for random policies; and every path where a
//! policy cannot be enforced exactly blocks the sandbox instead of weakening it.

mod support;

use std::path::Path;

use palisade::api::policy::*;
use palisade::api::sandbox::{AgentSandboxSpec, PolicyRef, SandboxResources};
use palisade::api::{AgentPolicy, AgentSandbox};
use palisade::render::facts::{ClusterFacts, RuntimeClasses};
use palisade::render::{BlockReason, Plan, compile};
use proptest::prelude::*;
use support::pss::restricted_violations;

fn sandbox(policy: &str) -> AgentSandbox {
    let mut s = AgentSandbox::new(
        "agent",
        AgentSandboxSpec {
            policy_ref: PolicyRef {
                name: policy.into(),
            },
            image: "ghcr.io/acme/agent:1".into(),
            ..Default::default()
        },
    );
    s.metadata.namespace = Some("team".into());
    s
}

fn policy(spec: AgentPolicySpec) -> AgentPolicy {
    let mut p = AgentPolicy::new("p", spec);
    p.metadata.namespace = Some("team".into());
    p
}

/// The hardening every pod gets whatever its policy says.
fn assert_hardened(plan: &Plan) {
    let pod = &plan.pod;
    let violations = restricted_violations(pod);
    assert!(violations.is_empty(), "{violations:?}");
    let spec = pod.spec.as_ref().expect("pod spec");
    assert_eq!(spec.enable_service_links, Some(false));
    assert_eq!(spec.host_network, Some(false));
    assert!(spec.volumes.iter().flatten().all(|v| v.host_path.is_none()));
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let sc = c
            .security_context
            .as_ref()
            .expect("container security context");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.privileged, Some(false));
        assert!(c.ports.iter().flatten().all(|p| p.host_port.is_none()));
    }
    let ps = spec
        .security_context
        .as_ref()
        .expect("pod security context");
    assert!(
        ps.sysctls.is_none() && ps.se_linux_options.is_none() && ps.app_armor_profile.is_none()
    );
    assert_ne!(ps.run_as_user, Some(0));
    assert_ne!(ps.run_as_group, Some(0));
    assert_ne!(ps.fs_group, Some(0));
    // The isolating NetworkPolicy selects exactly this pod, both directions.
    let np = plan.network_policy.spec.as_ref().expect("np spec");
    assert_eq!(
        np.policy_types.as_deref(),
        Some(&["Ingress".to_string(), "Egress".to_string()][..])
    );
    let labels = pod.metadata.labels.as_ref().expect("labels");
    for (k, v) in np
        .pod_selector
        .as_ref()
        .and_then(|s| s.match_labels.as_ref())
        .expect("selector")
    {
        assert_eq!(labels.get(k), Some(v));
    }
}

#[test]
fn every_example_pod_is_restricted() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let loaded = palisade::cli::render_cmd::load(&[root], false).expect("examples load");
    let mut rendered = 0;
    // Sandboxes, those of a pool with its template, and a warm sandbox of each pool.
    for item in palisade::cli::render_cmd::renderable(&loaded.documents) {
        let (_, s, _) = item.expect("renderable");
        let s = &s;
        let p = loaded
            .documents
            .iter()
            .find_map(|d| match d {
                palisade::cli::documents::Document::Policy(_, p)
                    if p.metadata.name.as_deref() == Some(s.spec.policy_ref.name.as_str()) =>
                {
                    Some(p)
                }
                _ => None,
            })
            .expect("policy of example sandbox");
        // Domain names go through the egress gateway (examples/package-registry.yaml).
        let facts = ClusterFacts {
            gateway: Some(palisade::render::facts::GatewayFacts {
                address: "10.96.0.50:3128".parse().expect("address"),
                namespace_labels: [(
                    "kubernetes.io/metadata.name".to_string(),
                    "palisade-system".to_string(),
                )]
                .into(),
                pod_labels: [(
                    "app.kubernetes.io/name".to_string(),
                    "palisade-gateway".to_string(),
                )]
                .into(),
                target_port: 3128,
                key: None,
            }),
            ..ClusterFacts::default()
        };
        let plan = compile(p, s, &facts, 0).expect("example compiles");
        assert_hardened(&plan);
        rendered += 1;
    }
    assert_eq!(rendered, 7);
}

fn blocked(spec: AgentPolicySpec, sb: AgentSandbox, facts: &ClusterFacts) -> BlockReason {
    match compile(&policy(spec), &sb, facts, 0) {
        Ok(plan) => panic!(
            "expected a blocked sandbox, got a plan with pod {:?}",
            plan.pod.spec.map(|s| s.runtime_class_name)
        ),
        Err(b) => {
            assert!(!b.message.is_empty());
            b.reason
        }
    }
}

#[test]
fn missing_runtime_class_blocks() {
    let facts = ClusterFacts {
        runtime_classes: RuntimeClasses::AssumeMapped {
            missing: ["gvisor".to_string()].into(),
        },
        ..Default::default()
    };
    assert_eq!(
        blocked(AgentPolicySpec::default(), sandbox("p"), &facts),
        BlockReason::RuntimeClassMissing
    );
}

#[test]
fn runtime_class_with_a_runc_handler_blocks() {
    let facts = ClusterFacts {
        runtime_classes: RuntimeClasses::Known([("gvisor".to_string(), "runc".to_string())].into()),
        ..Default::default()
    };
    assert_eq!(
        blocked(AgentPolicySpec::default(), sandbox("p"), &facts),
        BlockReason::RuntimeHandlerMismatch
    );
    let kata = AgentPolicySpec {
        isolation: Some(IsolationPolicy {
            runtime: Some(Runtime::Kata),
            runtime_class_name: None,
        }),
        ..Default::default()
    };
    assert_eq!(
        blocked(kata, sandbox("p"), &facts),
        BlockReason::RuntimeClassMissing
    );
}

#[test]
fn sandbox_over_its_caps_is_refused_and_one_asking_nothing_gets_the_caps() {
    let caps = AgentPolicySpec {
        resources: Some(ResourceCaps {
            cpu: Some(q("1")),
            memory: Some(q("1Gi")),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut sb = sandbox("p");
    sb.spec.resources = Some(SandboxResources {
        limits: [("memory".to_string(), q("2Gi"))].into(),
        ..Default::default()
    });
    assert_eq!(
        blocked(caps.clone(), sb, &ClusterFacts::default()),
        BlockReason::OverCaps
    );
    let plan =
        compile(&policy(caps), &sandbox("p"), &ClusterFacts::default(), 0).expect("compiles");
    let resources = plan.pod.spec.unwrap().containers[0]
        .resources
        .clone()
        .unwrap();
    let limits = resources.limits.unwrap();
    assert_eq!(limits["cpu"].0, "1");
    assert_eq!(limits["memory"].0, "1Gi");
    // The caps are limits, not requests: an idle sandbox reserves only the small defaults.
    let requests = resources.requests.unwrap();
    assert_eq!(requests["cpu"].0, "100m");
    assert_eq!(requests["memory"].0, "256Mi");
}

fn q(s: &str) -> k8s_openapi::apimachinery::pkg::api::resource::Quantity {
    k8s_openapi::apimachinery::pkg::api::resource::Quantity(s.into())
}

#[test]
fn fqdn_egress_without_a_backend_blocks() {
    let spec = AgentPolicySpec {
        network: Some(NetworkRules {
            egress: Some(EgressPolicy {
                allow: vec![EgressRule {
                    to: Some(vec![EgressPeer {
                        fqdn: Some("api.example.com".into()),
                        ..Default::default()
                    }]),
                    ports: None,
                }],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        blocked(spec.clone(), sandbox("p"), &ClusterFacts::default()),
        BlockReason::FqdnBackendMissing
    );
    let plan = compile(
        &policy(spec),
        &sandbox("p"),
        &ClusterFacts {
            cilium: true,
            ..Default::default()
        },
        0,
    )
    .expect("with cilium");
    let cnp = plan.fqdn_policy.expect("cilium policy");
    assert_eq!(
        cnp["spec"]["egress"][0]["toFQDNs"][0]["matchName"],
        "api.example.com"
    );
}

#[test]
fn seccomp_that_the_runtime_ignores_blocks_when_required_and_is_reported_otherwise() {
    let mut spec = AgentPolicySpec {
        syscalls: Some(SyscallPolicy {
            require_enforcement: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        blocked(spec.clone(), sandbox("p"), &ClusterFacts::default()),
        BlockReason::SeccompNotEnforced
    );
    let facts = ClusterFacts {
        seccomp_applied: [Runtime::Gvisor, Runtime::Runc].into(),
        ..Default::default()
    };
    assert!(compile(&policy(spec.clone()), &sandbox("p"), &facts, 0).is_ok());
    spec.syscalls = None;
    let plan =
        compile(&policy(spec), &sandbox("p"), &ClusterFacts::default(), 0).expect("compiles");
    assert!(
        plan.report
            .not_enforced
            .iter()
            .any(|e| e.field == "syscalls")
    );
}

#[test]
fn generated_seccomp_needs_the_operator() {
    let spec = AgentPolicySpec {
        syscalls: Some(SyscallPolicy {
            profile: Some(SeccompKind::Generated),
            block: vec!["ptrace".into()],
            ..Default::default()
        }),
        isolation: Some(IsolationPolicy {
            runtime: Some(Runtime::Runc),
            runtime_class_name: None,
        }),
        ..Default::default()
    };
    assert_eq!(
        blocked(spec.clone(), sandbox("p"), &ClusterFacts::default()),
        BlockReason::SeccompProfileCrdMissing
    );
    let plan = compile(
        &policy(spec),
        &sandbox("p"),
        &ClusterFacts {
            seccomp_profile_crd: true,
            ..Default::default()
        },
        0,
    )
    .expect("compiles");
    assert_eq!(
        plan.seccomp_profile.as_ref().expect("profile")["spec"]["syscalls"][0]["names"][0],
        "ptrace"
    );
    assert_hardened_pod_only(&plan);
}

#[test]
fn a_new_syscall_filter_needs_a_new_pod() {
    // A seccomp filter is installed when the container starts: a change of its content, not
    // only of its path, must change the pod's hash (so the pod is replaced).
    let with_block = |block: &[&str]| AgentPolicySpec {
        syscalls: Some(SyscallPolicy {
            profile: Some(SeccompKind::Generated),
            block: block.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
        isolation: Some(IsolationPolicy {
            runtime: Some(Runtime::Runc),
            runtime_class_name: None,
        }),
        ..Default::default()
    };
    let facts = ClusterFacts {
        seccomp_profile_crd: true,
        ..Default::default()
    };
    let hash = |block: &[&str]| {
        let plan = compile(&policy(with_block(block)), &sandbox("p"), &facts, 0).expect("compiles");
        (plan.pod_hash, plan.pod)
    };
    let (ptrace, pod_a) = hash(&["ptrace"]);
    let (ptrace_mount, pod_b) = hash(&["ptrace", "mount"]);
    let path = |pod: &k8s_openapi::api::core::v1::Pod| {
        pod.spec
            .as_ref()
            .and_then(|s| s.security_context.as_ref())
            .and_then(|c| c.seccomp_profile.as_ref())
            .and_then(|p| p.localhost_profile.clone())
            .expect("a localhost profile")
    };
    // The profile's content is in its name: a new filter is a new file, so no container can
    // start on the old one while the new one is being written to the node.
    assert_ne!(path(&pod_a), path(&pod_b));
    assert!(
        path(&pod_a).starts_with("operator/team/agent-seccomp-"),
        "{}",
        path(&pod_a)
    );
    assert_ne!(ptrace, ptrace_mount);
    assert_eq!(hash(&["ptrace"]).0, ptrace, "the hash is stable");
}

#[test]
fn the_agent_starts_after_the_isolation_check_which_is_outside_the_hash() {
    let facts = ClusterFacts::default();
    let plan = compile(
        &policy(AgentPolicySpec::default()),
        &sandbox("p"),
        &facts,
        0,
    )
    .expect("compiles");
    let spec = plan.pod.spec.as_ref().expect("spec");
    let init = spec.init_containers.as_deref().unwrap_or_default();
    assert_eq!(init.len(), 1, "{init:?}");
    let check = &init[0];
    assert_eq!(check.name, "isolation-check");
    assert_eq!(check.image, facts.isolation_check_image);
    assert_eq!(
        check.command.as_deref(),
        Some(&["palisade".to_string(), "wait-isolated".to_string()][..])
    );
    let sc = check.security_context.as_ref().expect("security context");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()])
    );
    assert!(
        plan.report
            .not_enforced
            .iter()
            .all(|e| e.field != "network")
    );

    // Another image (an operator upgrade) or no check at all leaves running pods alone.
    let other = ClusterFacts {
        isolation_check_image: Some("registry.example/palisade:9".into()),
        ..ClusterFacts::default()
    };
    let off = ClusterFacts {
        isolation_check_image: None,
        ..ClusterFacts::default()
    };
    for facts in [other, off] {
        let p = compile(
            &policy(AgentPolicySpec::default()),
            &sandbox("p"),
            &facts,
            0,
        )
        .expect("compiles");
        assert_eq!(p.pod_hash, plan.pod_hash);
    }
    // In transition mode the check needs the canary to answer first.
    let transition = ClusterFacts {
        isolation_check_open_first: true,
        ..ClusterFacts::default()
    };
    let p = compile(
        &policy(AgentPolicySpec::default()),
        &sandbox("p"),
        &transition,
        0,
    )
    .expect("compiles");
    let spec = p.pod.spec.as_ref().expect("spec");
    assert_eq!(
        spec.init_containers.as_ref().expect("init")[0]
            .command
            .as_deref(),
        Some(
            &[
                "palisade".to_string(),
                "wait-isolated".to_string(),
                "--require-open-first".to_string()
            ][..]
        )
    );
    assert_eq!(p.pod_hash, plan.pod_hash);
    // Off, the pod has no check, and the report says the NetworkPolicy may lag the agent.
    let off = ClusterFacts {
        isolation_check_image: None,
        ..ClusterFacts::default()
    };
    let p = compile(&policy(AgentPolicySpec::default()), &sandbox("p"), &off, 0).expect("compiles");
    assert!(p.pod.spec.as_ref().expect("spec").init_containers.is_none());
    assert!(
        p.report
            .not_enforced
            .iter()
            .any(|e| e.field == "network" && e.message.contains("isolation check is off")),
        "{:?}",
        p.report
    );
}

#[test]
fn the_isolation_check_never_asks_for_more_than_the_agents_limits() {
    let spec = AgentPolicySpec {
        resources: Some(ResourceCaps {
            cpu: Some(q("50m")),
            memory: Some(q("16Mi")),
            ..Default::default()
        }),
        ..Default::default()
    };
    let plan =
        compile(&policy(spec), &sandbox("p"), &ClusterFacts::default(), 0).expect("compiles");
    let pod = plan.pod.spec.as_ref().expect("spec");
    let check = &pod.init_containers.as_ref().expect("init containers")[0];
    let limits = check
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .expect("limits");
    assert_eq!(limits.get("cpu"), Some(&q("50m")));
    assert_eq!(limits.get("memory"), Some(&q("16Mi")));
}

#[test]
fn every_pod_starts_behind_the_isolation_gate_outside_its_hash() {
    let plan = compile(
        &policy(AgentPolicySpec::default()),
        &sandbox("p"),
        &ClusterFacts::default(),
        0,
    )
    .expect("compiles");
    let gates = plan
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.clone());
    assert_eq!(
        gates.map(|g| g.into_iter().map(|g| g.name).collect::<Vec<_>>()),
        Some(vec![palisade::api::ISOLATION_GATE.to_string()])
    );
    // The hash is of the pod without the gate (removed once the NetworkPolicy is confirmed)
    // and without the deadline (which shrinks): neither makes a pod stale.
    let mut spec = plan.pod.spec.clone().expect("spec");
    spec.scheduling_gates = None;
    spec.active_deadline_seconds = None;
    spec.init_containers = None;
    let labels = plan.pod.metadata.labels.clone().expect("labels");
    let mut annotations = plan.pod.metadata.annotations.clone().expect("annotations");
    annotations.remove(palisade::api::POLICY_HASH_ANNOTATION);
    assert_eq!(
        palisade::render::hash::short_hash(&(&labels, &annotations, &spec)),
        plan.pod_hash
    );
}

#[test]
fn a_token_for_the_api_server_is_refused_as_a_projected_audience() {
    let with_audience = |a: &str| AgentPolicySpec {
        identity: Some(palisade::api::policy::IdentityPolicy {
            token_audience: Some(a.into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    for api in [
        "https://kubernetes.default.svc",
        "https://kubernetes.default.svc.cluster.local",
    ] {
        assert_eq!(
            blocked(with_audience(api), sandbox("p"), &ClusterFacts::default()),
            BlockReason::TokenAudienceRefused,
            "{api}"
        );
    }
    // The cluster's own issuer, from operator configuration.
    let issuer = "https://oidc.eks.example.com/id/ABC";
    let mut facts = ClusterFacts::default();
    facts.api_audiences.push(issuer.into());
    assert_eq!(
        blocked(with_audience(issuer), sandbox("p"), &facts),
        BlockReason::TokenAudienceRefused
    );
    let plan = compile(&policy(with_audience("vault")), &sandbox("p"), &facts, 0)
        .expect("another audience compiles");
    assert_hardened_pod_only(&plan);
}

fn assert_hardened_pod_only(plan: &Plan) {
    assert!(restricted_violations(&plan.pod).is_empty());
}

#[test]
fn image_rules_refuse() {
    let spec = AgentPolicySpec {
        images: Some(ImagePolicy {
            allowed_registries: vec!["registry.internal".into()],
            require_digest: Some(true),
        }),
        ..Default::default()
    };
    assert_eq!(
        blocked(spec, sandbox("p"), &ClusterFacts::default()),
        BlockReason::ImageRefused
    );
}

#[test]
fn timeout_counts_run_time_and_expires() {
    let spec = AgentPolicySpec {
        timeout_ms: Some(10_000),
        ..Default::default()
    };
    let plan = compile(
        &policy(spec.clone()),
        &sandbox("p"),
        &ClusterFacts::default(),
        4_500,
    )
    .expect("compiles");
    assert_eq!(plan.pod.spec.unwrap().active_deadline_seconds, Some(6));
    assert_eq!(
        compile(
            &policy(spec),
            &sandbox("p"),
            &ClusterFacts::default(),
            10_000
        )
        .unwrap_err()
        .reason,
        BlockReason::Expired
    );
}

#[test]
fn pod_labels_and_annotations_are_an_allowlist() {
    use palisade::policy::pod_keys::parse_pattern;
    // The review's reproduction: Multus and Calico annotations were accepted and ran.
    let mut sb = sandbox("p");
    sb.spec
        .pod_annotations
        .insert("k8s.v1.cni.cncf.io/networks".into(), "macvlan-conf".into());
    sb.spec.pod_annotations.insert(
        "cni.projectcalico.org/ipAddrs".into(),
        "[\"10.0.0.5\"]".into(),
    );
    assert_eq!(
        blocked(AgentPolicySpec::default(), sb, &ClusterFacts::default()),
        BlockReason::SandboxInvalid
    );
    // A key nobody configured: blocked by the operator, with what is allowed.
    let mut sb = sandbox("p");
    sb.spec.pod_labels.insert("team".into(), "ml".into());
    sb.spec
        .pod_annotations
        .insert("prometheus.io/scrape".into(), "true".into());
    let err = compile(
        &policy(AgentPolicySpec::default()),
        &sb,
        &ClusterFacts::default(),
        0,
    )
    .expect_err("team is not allowed by default");
    assert_eq!(err.reason, BlockReason::PodMetadataRefused);
    assert!(err.message.contains("--pod-label-allow"), "{}", err.message);
    let mut facts = ClusterFacts::default();
    facts.pod_keys.labels.push(parse_pattern("team").unwrap());
    let plan = compile(&policy(AgentPolicySpec::default()), &sb, &facts, 0).expect("allowed");
    let meta = plan.pod.metadata;
    assert_eq!(meta.labels.unwrap()["team"], "ml");
    assert_eq!(meta.annotations.unwrap()["prometheus.io/scrape"], "true");
}

#[test]
fn reserved_pod_annotation_is_refused() {
    let mut sb = sandbox("p");
    sb.spec.pod_annotations.insert(
        "io.katacontainers.config.hypervisor.kernel_params".into(),
        "x".into(),
    );
    assert_eq!(
        blocked(AgentPolicySpec::default(), sb, &ClusterFacts::default()),
        BlockReason::SandboxInvalid
    );
}

#[test]
fn emptydir_size_limits_fit_in_ephemeral_storage() {
    let spec = AgentPolicySpec {
        filesystem: Some(FilesystemPolicy {
            readwrite_paths: ["/tmp", "/home/agent", "/var/cache"]
                .iter()
                .map(|p| SandboxPath(p.to_string()))
                .collect(),
            denied_paths: vec![SandboxPath("/home/agent/.ssh".into())],
            ..Default::default()
        }),
        workspace: Some(WorkspacePolicy {
            size: Some(q("1Gi")),
            ..Default::default()
        }),
        resources: Some(ResourceCaps {
            ephemeral_storage: Some(q("3Gi")),
            ..Default::default()
        }),
        ..Default::default()
    };
    let plan =
        compile(&policy(spec), &sandbox("p"), &ClusterFacts::default(), 0).expect("compiles");
    let total: i128 = plan
        .pod
        .spec
        .unwrap()
        .volumes
        .unwrap()
        .iter()
        .filter_map(|v| v.empty_dir.as_ref()?.size_limit.as_ref())
        .map(|q| palisade::policy::quantity::nanos(q).unwrap() / 1_000_000_000)
        .sum();
    assert!(total <= 3 << 30, "{total}");
    assert!(total > 2 << 30, "most of the budget is handed out: {total}");
}

fn arb_policy() -> impl Strategy<Value = AgentPolicySpec> {
    let paths = prop::collection::vec(
        prop::sample::select(vec![
            "/tmp",
            "/workspace",
            "/home/agent",
            "/var/cache",
            "/opt/data",
            "/srv",
        ]),
        0..4,
    );
    (
        paths.clone(),
        paths,
        prop::option::of(1i64..100_000),
        prop::option::of(prop::sample::select(vec![
            Runtime::Gvisor,
            Runtime::Kata,
            Runtime::Runc,
        ])),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(prop::sample::select(vec![
            DnsMode::Auto,
            DnsMode::Cluster,
            DnsMode::None,
        ])),
        any::<bool>(),
    )
        .prop_map(
            |(rw, denied, uid, runtime, bind, persistent, dns, allow_all)| {
                let mut rw: Vec<&str> = rw;
                rw.sort();
                rw.dedup();
                let denied: Vec<SandboxPath> = denied
                    .into_iter()
                    .filter(|d| !rw.iter().any(|w| w.starts_with(d)))
                    .map(|d| SandboxPath(format!("{d}/secret")))
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                AgentPolicySpec {
                    filesystem: Some(FilesystemPolicy {
                        readwrite_paths: rw.iter().map(|p| SandboxPath(p.to_string())).collect(),
                        denied_paths: denied,
                        ..Default::default()
                    }),
                    network: Some(NetworkRules {
                        egress: Some(EgressPolicy {
                            default: Some(if allow_all {
                                DefaultAction::Allow
                            } else {
                                DefaultAction::Deny
                            }),
                            ..Default::default()
                        }),
                        dns,
                        ..Default::default()
                    }),
                    privileges: Some(PrivilegesPolicy {
                        run_as_user: uid,
                        capabilities: bind.then(|| CapabilitiesPolicy {
                            add: vec![Capability::NetBindService],
                        }),
                        ..Default::default()
                    }),
                    isolation: Some(IsolationPolicy {
                        runtime,
                        runtime_class_name: None,
                    }),
                    workspace: persistent.then(|| WorkspacePolicy {
                        persistent: Some(true),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn random_policies_render_restricted_pods(spec in arb_policy()) {
        let plan = compile(&policy(spec), &sandbox("p"), &ClusterFacts::default(), 0).expect("valid random policy compiles");
        assert_hardened(&plan);
    }
}

#[test]
fn a_secret_the_policy_does_not_grant_blocks_the_sandbox() {
    use palisade::api::sandbox::{EnvVar, EnvVarSource, KeyRef};
    let mut sb = sandbox("p");
    sb.spec.env = vec![EnvVar {
        name: "TOKEN".into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(KeyRef {
                name: "db".into(),
                key: "password".into(),
                optional: None,
            }),
            config_map_key_ref: None,
        }),
    }];
    // Default: no Secret at all.
    assert_eq!(
        blocked(
            AgentPolicySpec::default(),
            sb.clone(),
            &ClusterFacts::default()
        ),
        BlockReason::SecretRefused
    );
    // Another key of the granted Secret.
    let only_user = AgentPolicySpec {
        secrets: vec![SecretGrant {
            name: "db".into(),
            keys: Some(vec!["user".into()]),
        }],
        ..Default::default()
    };
    assert_eq!(
        blocked(only_user, sb.clone(), &ClusterFacts::default()),
        BlockReason::SecretRefused
    );
    let granted = AgentPolicySpec {
        secrets: vec![SecretGrant {
            name: "db".into(),
            keys: Some(vec!["password".into()]),
        }],
        ..Default::default()
    };
    let plan = compile(&policy(granted), &sb, &ClusterFacts::default(), 0).expect("granted");
    let env = plan.pod.spec.unwrap().containers[0].env.clone().unwrap();
    assert_eq!(
        env[0]
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap()
            .name,
        "db"
    );
}

#[test]
fn no_api_token_unless_the_policy_asks() {
    let plan = compile(
        &policy(AgentPolicySpec::default()),
        &sandbox("p"),
        &ClusterFacts::default(),
        0,
    )
    .expect("compiles");
    let spec = plan.pod.spec.expect("spec");
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(
        plan.service_account.automount_service_account_token,
        Some(false)
    );
    assert!(
        spec.volumes
            .iter()
            .flatten()
            .all(|v| v.projected.is_none() && v.secret.is_none()),
        "no token volume"
    );
    let asks = AgentPolicySpec {
        identity: Some(IdentityPolicy {
            automount_token: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    let plan =
        compile(&policy(asks), &sandbox("p"), &ClusterFacts::default(), 0).expect("compiles");
    assert_eq!(
        plan.pod.spec.expect("spec").automount_service_account_token,
        Some(true)
    );
}

#[test]
fn a_proxy_on_a_node_address_is_unreachable_not_a_way_to_the_kubelet() {
    // Found by reading the code beside the fuzz target: node ranges were not checked.
    let spec = AgentPolicySpec {
        runtime_config: Some(RuntimeConfig {
            network_proxy: Some("http://192.168.10.5:3128".into()),
        }),
        network: Some(NetworkRules::default()),
        ..Default::default()
    };
    let mut facts = ClusterFacts::default();
    let plan = compile(&policy(spec.clone()), &sandbox("p"), &facts, 0).expect("compiles");
    assert!(
        plan.report
            .added
            .iter()
            .any(|a| a.field == "runtimeConfig.networkProxy"),
        "{:?}",
        plan.report
    );
    facts.node_cidrs = vec![palisade::policy::net::Cidr::parse("192.168.10.0/24").unwrap()];
    assert_eq!(
        blocked(spec, sandbox("p"), &facts),
        BlockReason::ProxyUnreachable
    );
}
