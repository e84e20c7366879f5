//! Against a real API server: the CRDs install and become Established, the examples are
//! accepted, invalid documents are rejected by the schema and CEL rules with the expected
//! message, rendered pods pass Pod Security admission, land on the right fake node through
//! their RuntimeClass and reach Running, and a pod naming a missing RuntimeClass is refused.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::discovery::Discovery;
use palisade::api::{AgentPolicy, AgentSandbox};
use palisade::render::{ClusterFacts, compile};
use palisade_e2e::{
    apply, client, install_crds, restricted_namespace, root, wait_for, yaml_documents,
};
use serde_json::{Value, json};

async fn discovery(client: &Client) -> Discovery {
    Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery")
}

async fn setup() -> (Client, Discovery) {
    let client = client().await;
    install_crds(&client).await;
    let d = discovery(&client).await;
    for rc in yaml_documents(&root().join("examples/runtimeclasses.yaml")) {
        apply(&client, &d, None, &rc)
            .await
            .expect("example RuntimeClass");
    }
    (client, d)
}

fn example_documents() -> Vec<Value> {
    let mut docs = Vec::new();
    for f in ["no-network.yaml", "coding-agent.yaml", "kata-agent.yaml"] {
        docs.extend(yaml_documents(&root().join("examples").join(f)));
    }
    docs
}

#[tokio::test]
async fn crds_install_and_every_example_is_accepted() {
    let (client, d) = setup().await;
    let ns = restricted_namespace(&client, "e2e-examples").await;
    let docs = example_documents();
    assert_eq!(docs.len(), 6);
    for doc in docs {
        let name = doc["metadata"]["name"].clone();
        apply(&client, &d, Some(&ns), &doc)
            .await
            .unwrap_or_else(|e| panic!("example {name} rejected: {e}"));
    }
}

fn policy(spec: Value) -> Value {
    json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "AgentPolicy", "metadata": {"name": "bad"}, "spec": spec})
}

fn sandbox(spec: Value) -> Value {
    json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox", "metadata": {"name": "bad"}, "spec": spec})
}

/// The invalid documents of the core bad-input table that the schema or CEL can catch.
fn invalid_documents() -> Vec<(&'static str, Value, &'static str)> {
    let egress = |rule: Value| policy(json!({"network": {"egress": {"allow": [rule]}}}));
    vec![
        (
            "malformed cidr",
            egress(json!({"to": [{"cidr": "10.0.0/8"}]})),
            "cidr must be a canonical CIDR",
        ),
        (
            "cidr with host bits",
            egress(json!({"to": [{"cidr": "10.1.2.3/8"}]})),
            "cidr must be a canonical CIDR",
        ),
        (
            "port 0",
            egress(json!({"ports": [{"protocol": "tcp", "port": 0}]})),
            "should be greater than or equal to 1",
        ),
        (
            "port too large",
            egress(json!({"ports": [{"protocol": "tcp", "port": 70000}]})),
            "should be less than or equal to 65535",
        ),
        (
            "endPort below port",
            egress(json!({"ports": [{"protocol": "tcp", "port": 100, "endPort": 90}]})),
            "endPort needs port and must be >= port",
        ),
        (
            "icmp with port",
            egress(json!({"ports": [{"protocol": "icmp", "port": 8}]})),
            "icmp takes no port",
        ),
        (
            "unknown protocol",
            egress(json!({"ports": [{"protocol": "sctp"}]})),
            "Unsupported value: \"sctp\"",
        ),
        (
            "empty to",
            egress(json!({"to": []})),
            "should have at least 1 items",
        ),
        (
            "empty ports",
            egress(json!({"ports": []})),
            "should have at least 1 items",
        ),
        (
            "except outside cidr",
            egress(json!({"to": [{"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]}]})),
            "except entries must be CIDRs strictly inside cidr",
        ),
        (
            "peer with cidr and fqdn",
            egress(json!({"to": [{"cidr": "10.0.0.0/8", "fqdn": "a.example.com"}]})),
            "a peer sets exactly one of cidr, fqdn",
        ),
        (
            "bad fqdn",
            egress(json!({"to": [{"fqdn": "Bad_Name.com"}]})),
            "should match",
        ),
        (
            "deny with selector",
            policy(json!({"network": {"egress": {"deny": [{"to": [{"podSelector": {}}]}]}}})),
            "deny rules take cidr peers only",
        ),
        (
            "mixed legacy and directional",
            policy(json!({"network": {"allowOutbound": true, "egress": {"default": "deny"}}})),
            "cannot be mixed with egress/ingress",
        ),
        (
            "root user",
            policy(json!({"privileges": {"runAsUser": 0}})),
            "should be greater than or equal to 1",
        ),
        (
            "root group",
            policy(json!({"privileges": {"runAsGroup": 0}})),
            "should be greater than or equal to 1",
        ),
        (
            "root fsGroup",
            policy(json!({"privileges": {"fsGroup": 0}})),
            "should be greater than or equal to 1",
        ),
        (
            "capability other than NET_BIND_SERVICE",
            policy(json!({"privileges": {"capabilities": {"add": ["SYS_ADMIN"]}}})),
            "Unsupported value: \"SYS_ADMIN\"",
        ),
        (
            "unknown runtime",
            policy(json!({"isolation": {"runtime": "firecracker"}})),
            "Unsupported value: \"firecracker\"",
        ),
        (
            "runc with a runtime class",
            policy(json!({"isolation": {"runtime": "runc", "runtimeClassName": "gvisor"}})),
            "runtime runc takes no runtimeClassName",
        ),
        (
            "relative path",
            policy(json!({"filesystem": {"readwritePaths": ["workspace"]}})),
            "should match '^/'",
        ),
        (
            "dot-dot path",
            policy(json!({"filesystem": {"readonlyPaths": ["/opt/../etc"]}})),
            "path must not contain '.' or '..' segments",
        ),
        (
            "Unconfined seccomp",
            policy(json!({"syscalls": {"profile": "Unconfined"}})),
            "Unsupported value: \"Unconfined\"",
        ),
        (
            "localhost profile missing",
            policy(json!({"syscalls": {"profile": "Localhost"}})),
            "localhostProfile is required with profile Localhost",
        ),
        (
            "block without a profile",
            policy(json!({"syscalls": {"block": ["ptrace"]}})),
            "block needs profile Localhost or Generated",
        ),
        (
            "timeout too short",
            policy(json!({"timeoutMs": 10})),
            "should be greater than or equal to 1000",
        ),
        (
            "token expiry too short",
            policy(json!({"identity": {"tokenExpirySeconds": 60}})),
            "should be greater than or equal to 600",
        ),
        (
            "storage class without persistence",
            policy(json!({"workspace": {"storageClassName": "fast"}})),
            "storageClassName needs persistent: true",
        ),
        (
            "two proxy forms",
            policy(
                json!({"network": {"proxy": {"localhost": 8080, "url": "http://192.0.2.1:3128"}}}),
            ),
            "set exactly one of localhost, builtinTestServer or url",
        ),
        (
            "palisade.dev label",
            sandbox(
                json!({"policyRef": {"name": "p"}, "image": "a:1", "podLabels": {"palisade.dev/sandbox": "other"}}),
            ),
            "pod labels of Kubernetes, Palisade",
        ),
        (
            "a Calico address annotation",
            sandbox(
                json!({"policyRef": {"name": "p"}, "image": "a:1", "podAnnotations": {"cni.projectcalico.org/ipAddrs": "[\"10.0.0.5\"]"}}),
            ),
            "pod annotations of Kubernetes, Palisade, network plugins",
        ),
        (
            "a Multus network annotation",
            sandbox(
                json!({"policyRef": {"name": "p"}, "image": "a:1", "podAnnotations": {"k8s.v1.cni.cncf.io/networks": "macvlan"}}),
            ),
            "pod annotations of Kubernetes, Palisade, network plugins",
        ),
        (
            "a Kubernetes label",
            sandbox(
                json!({"policyRef": {"name": "p"}, "image": "a:1", "podLabels": {"app.kubernetes.io/name": "db"}}),
            ),
            "pod labels of Kubernetes, Palisade",
        ),
        (
            "runtime annotation",
            sandbox(
                json!({"policyRef": {"name": "p"}, "image": "a:1", "podAnnotations": {"dev.gvisor.internal.nvproxy": "true"}}),
            ),
            "pod annotations of Kubernetes, Palisade, network plugins",
        ),
        (
            "missing policyRef",
            sandbox(json!({"image": "a:1"})),
            "spec.policyRef: Required value",
        ),
        (
            "missing image",
            sandbox(json!({"policyRef": {"name": "p"}})),
            "spec.image: Required value",
        ),
        (
            "empty policy name",
            sandbox(json!({"policyRef": {"name": ""}, "image": "a:1"})),
            "should be at least 1 chars long",
        ),
        (
            "env value and valueFrom",
            sandbox(
                json!({"policyRef": {"name": "p"}, "image": "a:1", "env": [{"name": "A", "value": "x", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}),
            ),
            "set value or valueFrom, not both",
        ),
        (
            "resources other than cpu, memory, storage",
            sandbox(
                json!({"policyRef": {"name": "p"}, "image": "a:1", "resources": {"limits": {"nvidia.com/gpu": "1"}}}),
            ),
            "only cpu, memory and ephemeral-storage",
        ),
        (
            "misspelt readwritePath",
            policy(json!({"filesystem": {"readwritePath": ["/tmp"]}})),
            ".spec.filesystem.readwritePath: field not declared in schema",
        ),
        (
            "free-form pod spec",
            sandbox(json!({"policyRef": {"name": "p"}, "image": "a:1", "hostNetwork": true})),
            ".spec.hostNetwork: field not declared in schema",
        ),
        (
            "pool options without a pool",
            sandbox(
                json!({"policyRef": {"name": "p"}, "image": "a:1", "pool": {"whenEmpty": "Wait"}}),
            ),
            "pool applies only with poolRef",
        ),
        (
            "a pool's template naming a pool",
            pool(
                json!({"template": {"policyRef": {"name": "p"}, "image": "a:1", "poolRef": {"name": "x"}}}),
            ),
            "a template cannot name a pool",
        ),
        (
            "a pool's template without an image",
            pool(json!({"template": {"policyRef": {"name": "p"}}})),
            "spec.template.image: Required value",
        ),
        (
            "a paused template",
            pool(json!({"template": {"policyRef": {"name": "p"}, "image": "a:1", "paused": true}})),
            "a template cannot be paused",
        ),
        (
            "negative replicas",
            pool(json!({"replicas": -1, "template": {"policyRef": {"name": "p"}, "image": "a:1"}})),
            "spec.replicas: Invalid value",
        ),
    ]
}

fn pool(spec: Value) -> Value {
    json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandboxPool", "metadata": {"name": "bad"}, "spec": spec})
}

#[tokio::test]
async fn the_api_server_rejects_invalid_documents_with_the_expected_message() {
    let (client, d) = setup().await;
    let ns = restricted_namespace(&client, "e2e-invalid").await;
    let cases = invalid_documents();
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for (name, doc, expected) in cases {
        match apply(&client, &d, Some(&ns), &doc).await {
            Ok(_) => failures.push(format!("{name}: accepted")),
            Err(msg) if !msg.contains(expected) => {
                failures.push(format!("{name}: expected `{expected}` in: {msg}"))
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> T {
    serde_json::from_value(v.clone()).expect("example document")
}

/// Static volumes for PVC-backed sandboxes: the cluster has no provisioner.
async fn static_volumes(client: &Client, d: &Discovery, count: usize) {
    for i in 0..count {
        let pv = json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": format!("e2e-static-{i}")},
            "spec": {
                "capacity": {"storage": "20Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": format!("/var/lib/palisade-e2e/{i}")}
            }
        });
        apply(client, d, None, &pv)
            .await
            .expect("static PersistentVolume");
    }
}

#[tokio::test]
async fn rendered_pods_are_admitted_scheduled_by_runtime_class_and_run() {
    let (client, d) = setup().await;
    let ns = restricted_namespace(&client, "e2e-render").await;
    static_volumes(&client, &d, 2).await;
    let docs = example_documents();
    let policies: Vec<AgentPolicy> = docs
        .iter()
        .filter(|v| v["kind"] == "AgentPolicy")
        .map(typed)
        .collect();
    let sandboxes: Vec<AgentSandbox> = docs
        .iter()
        .filter(|v| v["kind"] == "AgentSandbox")
        .map(typed)
        .collect();
    let expected_node =
        |policy: &AgentPolicy| match policy.spec.isolation.as_ref().and_then(|i| i.runtime) {
            Some(palisade::api::policy::Runtime::Kata) => "palisade-kata",
            _ => "palisade-gvisor",
        };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for sb in &sandboxes {
        let policy = policies
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(sb.spec.policy_ref.name.as_str()))
            .expect("policy");
        let plan = compile(policy, sb, &ClusterFacts::default(), 0).expect("example compiles");
        for obj in plan.objects() {
            let kind = obj["kind"].clone();
            apply(&client, &d, Some(&ns), &obj)
                .await
                .unwrap_or_else(|e| panic!("{kind} of {:?} rejected: {e}", sb.metadata.name));
        }
        let name = sb.metadata.name.clone().expect("name");
        // A rendered pod waits behind the isolation gate, unscheduled, until the operator has
        // confirmed its NetworkPolicy; here the suite plays that part.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let gated = pods.get(&name).await.expect("pod");
        assert_eq!(
            gated.spec.as_ref().and_then(|s| s.node_name.clone()),
            None,
            "pod {name} was scheduled behind its gate"
        );
        pods.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"schedulingGates": null}})),
        )
        .await
        .expect("remove the gate");
        let pod = wait_for(
            &format!("pod {name} Running"),
            Duration::from_secs(90),
            || {
                let pods = pods.clone();
                let name = name.clone();
                async move {
                    let p = pods.get(&name).await.ok()?;
                    (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
                }
            },
        )
        .await;
        let spec = pod.spec.expect("spec");
        assert_eq!(
            spec.node_name.as_deref(),
            Some(expected_node(policy)),
            "pod {name} on the wrong node"
        );
        assert_eq!(spec.runtime_class_name, plan.runtime_class_name);
    }
}

#[tokio::test]
async fn a_pod_whose_runtime_class_does_not_exist_is_rejected() {
    let (client, d) = setup().await;
    let ns = restricted_namespace(&client, "e2e-missing-rc").await;
    let docs = yaml_documents(&root().join("examples/no-network.yaml"));
    let policy: AgentPolicy = typed(&docs[0]);
    let sb: AgentSandbox = typed(&docs[1]);
    // Offline the compiler assumes the mapped class exists; the API server knows better.
    let mut facts = ClusterFacts::default();
    facts.runtime_class_names.insert(
        palisade::api::policy::Runtime::Gvisor,
        "gvisor-does-not-exist".into(),
    );
    let plan = compile(&policy, &sb, &facts, 0).expect("compiles offline");
    let objects = plan.objects();
    for obj in &objects[..objects.len() - 1] {
        apply(&client, &d, Some(&ns), obj)
            .await
            .expect("children before the pod");
    }
    let err = apply(&client, &d, Some(&ns), objects.last().expect("pod"))
        .await
        .expect_err("pod must be rejected");
    assert!(
        err.contains("RuntimeClass \"gvisor-does-not-exist\" not found"),
        "{err}"
    );
}

#[tokio::test]
async fn pod_security_admission_rejects_what_palisade_never_renders() {
    let (client, d) = setup().await;
    let ns = restricted_namespace(&client, "e2e-pss").await;
    let docs = yaml_documents(&root().join("examples/no-network.yaml"));
    let plan = compile(
        &typed(&docs[0]),
        &typed(&docs[1]),
        &ClusterFacts::default(),
        0,
    )
    .expect("compiles");
    let mut objects = plan.objects();
    let mut pod = objects.pop().expect("pod");
    for obj in &objects {
        apply(&client, &d, Some(&ns), obj).await.expect("children");
    }
    // The same pod with privilege escalation allowed is refused: the namespace really enforces.
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = json!(true);
    let err = apply(&client, &d, Some(&ns), &pod)
        .await
        .expect_err("PodSecurity must refuse");
    assert!(
        err.contains("violates PodSecurity \"restricted:latest\""),
        "{err}"
    );
}
