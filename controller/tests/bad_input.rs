//! Invalid input: each document of the table is refused by `palisade render` with a specific,
//! readable message naming the file, the document and the field; and no input makes it panic.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use proptest::prelude::*;

const POLICY_HEAD: &str =
    "apiVersion: palisade.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: p\nspec:\n";
const GOOD_SANDBOX: &str = "---\napiVersion: palisade.dev/v1alpha1\nkind: AgentSandbox\nmetadata:\n  name: s\nspec:\n  policyRef:\n    name: p\n  image: ghcr.io/acme/agent:1\n";

fn policy(spec: &str) -> String {
    format!("{POLICY_HEAD}{spec}")
}

fn sandbox_with(spec: &str) -> String {
    format!(
        "{}\n---\napiVersion: palisade.dev/v1alpha1\nkind: AgentSandbox\nmetadata:\n  name: s\nspec:\n{spec}",
        policy("  {}")
    )
}

/// (name, document, expected fragments of the error)
fn table() -> Vec<(&'static str, String, Vec<&'static str>)> {
    vec![
        ("malformed cidr", policy("  network:\n    egress:\n      allow:\n        - to: [{cidr: 10.0.0/8}]\n"), vec!["network.egress.allow[0].to[0].cidr", "not a CIDR"]),
        ("cidr with host bits", policy("  network:\n    egress:\n      allow:\n        - to: [{cidr: 10.1.2.3/8}]\n"), vec!["host bits", "10.0.0.0/8"]),
        ("port 0", policy("  network:\n    egress:\n      allow:\n        - ports: [{protocol: tcp, port: 0}]\n"), vec!["ports[0].port", "outside 1-65535"]),
        ("port too large", policy("  network:\n    egress:\n      allow:\n        - ports: [{protocol: tcp, port: 70000}]\n"), vec!["outside 1-65535"]),
        ("endPort below port", policy("  network:\n    egress:\n      allow:\n        - ports: [{protocol: tcp, port: 100, endPort: 90}]\n"), vec!["endPort 90 is smaller than port 100"]),
        ("endPort without port", policy("  network:\n    egress:\n      allow:\n        - ports: [{protocol: tcp, endPort: 90}]\n"), vec!["endPort needs port"]),
        ("icmp with port", policy("  network:\n    egress:\n      allow:\n        - ports: [{protocol: icmp, port: 8}]\n"), vec!["icmp takes no port"]),
        ("unknown protocol", policy("  network:\n    egress:\n      allow:\n        - ports: [{protocol: sctp}]\n"), vec!["spec.network.egress.allow[0].ports[0].protocol", "unknown variant `sctp`"]),
        ("empty to", policy("  network:\n    egress:\n      allow:\n        - to: []\n"), vec!["to must not be empty"]),
        ("empty ports", policy("  network:\n    egress:\n      allow:\n        - ports: []\n"), vec!["ports must not be empty"]),
        ("except outside cidr", policy("  network:\n    egress:\n      allow:\n        - to: [{cidr: 10.0.0.0/8, except: [192.168.0.0/16]}]\n"), vec!["strictly inside 10.0.0.0/8"]),
        ("except of the other family", policy("  network:\n    egress:\n      allow:\n        - to: [{cidr: 10.0.0.0/8, except: ['fd00::/8']}]\n"), vec!["same address family"]),
        ("peer with cidr and fqdn", policy("  network:\n    egress:\n      allow:\n        - to: [{cidr: 10.0.0.0/8, fqdn: a.example.com}]\n"), vec!["exactly one of cidr, fqdn"]),
        ("deny with selector", policy("  network:\n    egress:\n      deny:\n        - to: [{podSelector: {}}]\n"), vec!["deny rules take cidr peers only"]),
        ("bad fqdn", policy("  network:\n    egress:\n      allow:\n        - to: [{fqdn: 'Bad_Name.com'}]\n"), vec!["not a lower-case domain"]),
        ("mixed legacy and directional", policy("  network:\n    allowOutbound: true\n    egress:\n      default: deny\n"), vec!["cannot be mixed"]),
        ("proxy host name", policy("  runtimeConfig:\n    networkProxy: http://proxy.corp:3128\n"), vec!["runtimeConfig.networkProxy", "IP address"]),
        ("proxy with egress rules", policy("  runtimeConfig:\n    networkProxy: http://192.0.2.10:3128\n  network:\n    egress:\n      default: allow\n"), vec!["different connectivity models"]),
        ("root user", policy("  privileges:\n    runAsUser: 0\n"), vec!["privileges.runAsUser", "0 (root) is not allowed"]),
        ("root group", policy("  privileges:\n    runAsGroup: 0\n"), vec!["privileges.runAsGroup"]),
        ("root fsGroup", policy("  privileges:\n    fsGroup: 0\n"), vec!["privileges.fsGroup"]),
        ("capability other than NET_BIND_SERVICE", policy("  privileges:\n    capabilities:\n      add: [SYS_ADMIN]\n"), vec!["capabilities.add[0]", "unknown variant `SYS_ADMIN`"]),
        ("unknown runtime", policy("  isolation:\n    runtime: firecracker\n"), vec!["isolation.runtime", "unknown variant `firecracker`"]),
        ("runc with a runtime class", policy("  isolation:\n    runtime: runc\n    runtimeClassName: gvisor\n"), vec!["runc takes no runtimeClassName"]),
        ("relative path", policy("  filesystem:\n    readwritePaths: [workspace]\n"), vec!["filesystem.readwritePaths[0]", "not an absolute POSIX path"]),
        ("dot-dot path", policy("  filesystem:\n    readonlyPaths: [/opt/../etc]\n"), vec!["'..' segment"]),
        ("writable root", policy("  filesystem:\n    readwritePaths: [/]\n"), vec!["root filesystem cannot be made writable"]),
        ("writable under denied", policy("  filesystem:\n    readwritePaths: [/home/a/b]\n    deniedPaths: [/home/a]\n"), vec!["lies under denied path"]),
        ("workspace that is read-only", policy("  filesystem:\n    readonlyPaths: [/workspace]\n  workspace:\n    size: 1Gi\n"), vec!["workspace.path", "also a read-only path"]),
        ("mask over /proc", policy("  filesystem:\n    deniedPaths: [/proc/kcore]\n"), vec!["under /proc, /sys or /dev"]),
        ("misspelt readwritePath", policy("  filesystem:\n    readwritePath: [/tmp]\n"), vec!["spec.filesystem", "unknown field `readwritePath`"]),
        ("unknown top-level spec field", policy("  timeout: 5\n"), vec!["unknown field `timeout`"]),
        ("timeout too short", policy("  timeoutMs: 10\n"), vec!["timeoutMs"]),
        ("localhost profile missing", policy("  syscalls:\n    profile: Localhost\n"), vec!["localhostProfile is required"]),
        ("block without a profile", policy("  syscalls:\n    block: [ptrace]\n"), vec!["block needs profile Localhost or Generated"]),
        ("Unconfined seccomp", policy("  syscalls:\n    profile: Unconfined\n"), vec!["unknown variant `Unconfined`"]),
        ("bad quantity", policy("  resources:\n    memory: 4GB\n"), vec!["resources.memory", "not a resource quantity"]),
        ("bad default request", policy("  resources:\n    defaultRequests:\n      cpu: lots\n"), vec!["resources.defaultRequests.cpu", "not a resource quantity"]),
        ("token expiry too short", policy("  identity:\n    tokenExpirySeconds: 60\n"), vec!["identity.tokenExpirySeconds"]),
        ("sandbox over its caps", format!("{}\n---\napiVersion: palisade.dev/v1alpha1\nkind: AgentSandbox\nmetadata:\n  name: s\nspec:\n  policyRef:\n    name: p\n  image: ghcr.io/acme/agent:1\n  resources:\n    limits:\n      memory: 64Gi\n", policy("  resources:\n    memory: 1Gi\n")), vec!["blocked", "OverCaps", "above the policy's cap of 1Gi"]),
        ("palisade.dev label", sandbox_with("  policyRef:\n    name: p\n  image: a:1\n  podLabels:\n    palisade.dev/sandbox: other\n"), vec!["podLabels[palisade.dev/sandbox]", "refused"]),
        ("runtime annotation", sandbox_with("  policyRef:\n    name: p\n  image: a:1\n  podAnnotations:\n    dev.gvisor.internal.nvproxy: 'true'\n"), vec!["refused"]),
        ("Multus annotation", sandbox_with("  policyRef:\n    name: p\n  image: a:1\n  podAnnotations:\n    k8s.v1.cni.cncf.io/networks: macvlan\n"), vec!["podAnnotations[k8s.v1.cni.cncf.io/networks]", "refused"]),
        ("label not allowed by the operator", sandbox_with("  policyRef:\n    name: p\n  image: a:1\n  podLabels:\n    team: ml\n"), vec!["PodMetadataRefused", "--pod-label-allow"]),
        ("missing policy", "apiVersion: palisade.dev/v1alpha1\nkind: AgentSandbox\nmetadata:\n  name: s\nspec:\n  policyRef:\n    name: nowhere\n  image: a:1\n".to_string(), vec!["AgentPolicy default/nowhere is not among the inputs"]),
        ("missing policyRef", sandbox_with("  image: a:1\n"), vec!["policyRef.name is required", "poolRef"]),
        ("missing image", sandbox_with("  policyRef:\n    name: p\n"), vec!["image is required"]),
        ("free-form pod spec", sandbox_with("  policyRef:\n    name: p\n  image: a:1\n  hostNetwork: true\n"), vec!["unknown field `hostNetwork`"]),
        ("wrong kind", "apiVersion: palisade.dev/v1alpha1\nkind: AgentPolicies\nmetadata:\n  name: p\nspec: {}\n".into(), vec!["unknown kind AgentPolicies"]),
        ("wrong version", "apiVersion: palisade.dev/v1\nkind: AgentPolicy\nmetadata:\n  name: p\nspec: {}\n".into(), vec!["unknown version palisade.dev/v1"]),
        ("not a kubernetes document", "just: a map\n".into(), vec!["not a Kubernetes object"]),
        ("a bare list", "- 1\n- 2\n".into(), vec!["not a Kubernetes object"]),
        ("truncated yaml", format!("{POLICY_HEAD}  network:\n    egress: {{default: [deny\n"), vec!["invalid YAML"]),
        ("missing name", "apiVersion: palisade.dev/v1alpha1\nkind: AgentPolicy\nspec: {}\n".into(), vec!["metadata.name is required"]),
        ("wrong type", policy("  timeoutMs: soon\n"), vec!["spec.timeoutMs", "invalid type"]),
    ]
}

fn scratch(test: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("palisade-bad-input-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[test]
fn each_invalid_document_is_refused_with_a_specific_message() {
    let dir = scratch("table");
    let cases = table();
    assert!(cases.len() >= 30);
    for (i, (name, doc, expected)) in cases.iter().enumerate() {
        let file = dir.join(format!("case-{i}.yaml"));
        let mut f = std::fs::File::create(&file).expect("write case");
        f.write_all(doc.as_bytes()).expect("write case");
        let extra = if doc.contains("kind: AgentSandbox") {
            String::new()
        } else {
            GOOD_SANDBOX.to_string()
        };
        f.write_all(extra.as_bytes()).expect("write case");
        let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(["render", "-f"])
            .arg(&file)
            .output()
            .expect("run palisade");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{name}: accepted\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            stderr.contains(&format!("case-{i}.yaml")),
            "{name}: the message does not name the file: {stderr}"
        );
        assert!(
            stderr.contains("document "),
            "{name}: the message does not name the document: {stderr}"
        );
        for e in expected {
            assert!(stderr.contains(e), "{name}: expected `{e}` in: {stderr}");
        }
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        assert!(
            out.stdout.is_empty() || name.contains("missing policy") || name.contains("caps"),
            "{name}: printed objects for invalid input"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_file_with_only_a_broken_policy_is_an_error() {
    let dir = scratch("only-policy");
    let file = dir.join("only-policy.yaml");
    std::fs::write(&file, policy("  privileges:\n    runAsUser: 0\n")).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["render", "-f"])
        .arg(&file)
        .output()
        .expect("run");
    assert!(!out.status.success());
    std::fs::write(&file, policy("  privileges:\n    runAsUser: 1000\n")).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["render", "-f"])
        .arg(&file)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "a policy alone creates nothing");
    std::fs::remove_dir_all(&dir).ok();
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        prop::sample::select(vec![
            "10.0.0.0/8",
            "/tmp",
            "deny",
            "allow",
            "tcp",
            "icmp",
            "gvisor",
            "0",
            "::/0",
            "a b",
            ""
        ])
        .prop_map(serde_json::Value::from),
        "[a-zA-Z/.:*0-9-]{0,12}".prop_map(serde_json::Value::from),
    ];
    let keys = prop::sample::select(vec![
        "filesystem",
        "readwritePaths",
        "deniedPaths",
        "network",
        "egress",
        "ingress",
        "allow",
        "deny",
        "to",
        "cidr",
        "except",
        "ports",
        "protocol",
        "port",
        "endPort",
        "default",
        "fqdn",
        "allowedHosts",
        "blockedHosts",
        "allowOutbound",
        "proxy",
        "runtimeConfig",
        "networkProxy",
        "privileges",
        "runAsUser",
        "isolation",
        "runtime",
        "resources",
        "memory",
        "timeoutMs",
        "workspace",
        "path",
    ]);
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(keys.clone(), inner, 0..5).prop_map(|m| {
                serde_json::Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
    /// Random specs (shaped like policies) and random text never panic the loader or compiler.
    #[test]
    fn no_input_panics(spec in arb_json(), text in "(?s).{0,200}") {
        let doc = serde_json::json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "AgentPolicy", "metadata": {"name": "p"}, "spec": spec});
        let origin = palisade::cli::documents::Origin { file: "fuzz.yaml".into(), index: 1 };
        if let Ok(Ok(palisade::cli::documents::Document::Policy(_, p))) = palisade::cli::documents::classify(origin, doc)
            && palisade::render::check_policy(&p.spec).is_ok()
        {
            {
                let sb = palisade::api::AgentSandbox::new("s", palisade::api::AgentSandboxSpec { image: "a:1".into(), policy_ref: palisade::api::sandbox::PolicyRef { name: "p".into() }, ..Default::default() });
                let _ = palisade::render::compile(&p, &sb, &palisade::render::ClusterFacts::default(), 0);
                let _ = palisade::render::explain::explain(&p.spec);
            }
        }
        let _ = palisade::cli::documents::parse_values(std::path::Path::new("fuzz.yaml"), &text);
        let _ = palisade::cli::documents::parse_values(std::path::Path::new("fuzz.json"), &text);
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            let _ = palisade::mxc::import(&v);
        }
        let _ = palisade::mxc::import(&spec);
    }
}
