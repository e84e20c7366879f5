//! Time to compile one sandbox: the coding-agent example, and a policy with many overlapping
//! allow and deny rules. Goal: under 50 µs for a typical sandbox.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use palisade::api::{AgentPolicy, AgentSandbox};
use palisade::render::{ClusterFacts, check_policy, compile, compile_checked};

fn example() -> (AgentPolicy, AgentSandbox) {
    let text = include_str!("../../examples/coding-agent.yaml");
    let mut docs = serde_yaml::Deserializer::from_str(text);
    let policy: AgentPolicy =
        serde::Deserialize::deserialize(docs.next().expect("policy")).expect("policy parses");
    let sandbox: AgentSandbox =
        serde::Deserialize::deserialize(docs.next().expect("sandbox")).expect("sandbox parses");
    (policy, sandbox)
}

fn busy_policy() -> AgentPolicy {
    let mut allow = Vec::new();
    let mut deny = Vec::new();
    for i in 0..16 {
        allow.push(serde_json::json!({"to": [{"cidr": format!("{}.0.0.0/8", 11 + i)}], "ports": [{"protocol": "tcp", "port": 443}, {"protocol": "udp", "port": 1000 + i, "endPort": 2000 + i}]}));
        deny.push(serde_json::json!({"to": [{"cidr": format!("{}.{}.0.0/16", 11 + i, i)}], "ports": [{"protocol": "tcp", "port": 443}]}));
    }
    allow.push(
        serde_json::json!({"to": [{"cidr": "2001:db8::/32", "except": ["2001:db8:1::/48"]}]}),
    );
    serde_json::from_value(serde_json::json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "AgentPolicy", "metadata": {"name": "busy", "namespace": "default"},
        "spec": {"network": {"egress": {"allow": allow, "deny": deny}}, "filesystem": {"readwritePaths": ["/tmp", "/workspace", "/home/agent"]}, "secrets": [{"name": "coder-credentials"}]}
    }))
    .expect("busy policy")
}

fn bench(c: &mut Criterion) {
    let facts = ClusterFacts::default();
    let (policy, sandbox) = example();
    c.bench_function(
        "compile coding-agent sandbox (policy checked each time)",
        |b| {
            b.iter(|| {
                compile(black_box(&policy), black_box(&sandbox), &facts, 0).expect("compiles")
            })
        },
    );
    // The operator checks a policy once and compiles each of its sandboxes against the result.
    let checked = check_policy(&policy.spec).expect("valid policy");
    c.bench_function("compile coding-agent sandbox (policy checked once)", |b| {
        b.iter(|| {
            compile_checked(black_box(&checked), black_box(&sandbox), &facts, 0).expect("compiles")
        })
    });
    c.bench_function("check coding-agent policy", |b| {
        b.iter(|| check_policy(black_box(&policy.spec)).expect("valid"))
    });
    let mut report = palisade::api::EnforcementReport::default();
    c.bench_function("compile coding-agent egress", |b| {
        b.iter(|| {
            palisade::policy::egress::compile_egress(
                black_box(&checked.network.egress),
                Default::default(),
                &mut report,
            )
            .expect("egress")
        })
    });
    let busy = busy_policy();
    let mut sb = sandbox.clone();
    sb.spec.policy_ref.name = "busy".into();
    c.bench_function("compile sandbox with 16 allow x 16 deny rules", |b| {
        b.iter(|| compile(black_box(&busy), black_box(&sb), &facts, 0).expect("compiles"))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
