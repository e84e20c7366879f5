//! `palisade render` on arbitrary bytes: the bytes are one input file of AgentPolicy and
//! AgentSandbox documents, read, classified and validated as `render_cmd::load_into` does, and
//! every sandbox whose policy is among them is compiled, once with the facts `palisade render`
//! assumes by default and once with a richer cluster (Cilium, the SeccompProfile CRD, known pod,
//! service and node CIDRs, RuntimeClasses read from the cluster).
//!
//! Oracle: no panic, no hang, and for every plan that compiles, invariants that hold whatever
//! the policy says (see `check_plan`). A violated invariant panics, so libFuzzer reports it.

#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use palisade::api::policy::Runtime;
use palisade::api::{AgentPolicy, AgentSandbox, ISOLATION_GATE, POLICY_HASH_ANNOTATION};
use palisade::cli::documents::{Document, classify, parse_values};
use palisade::policy::legacy::Proxy;
use palisade::policy::net::Cidr;
use palisade::policy::validate::validate_sandbox;
use palisade::render::facts::RuntimeClasses;
use palisade::render::{ClusterFacts, Plan, check_policy, compile};
use serde_json::Value;

/// The Pod Security Standards checker of the integration tests, used as it is.
#[allow(dead_code)]
#[path = "../../controller/tests/support/pss.rs"]
mod pss;

/// Pod and service CIDRs of the rich cluster.
const CLUSTER_CIDRS: &[&str] = &["10.96.0.0/12", "10.244.0.0/16", "fd00:10:96::/112"];
/// Node ranges of the rich cluster.
const NODE_CIDRS: &[&str] = &["172.18.0.0/16", "fd00:172:18::/64"];

fn cidrs(list: &[&str]) -> Vec<Cidr> {
    list.iter()
        .map(|c| Cidr::parse(c).expect("fuzz facts: valid CIDR"))
        .collect()
}

fn rich_facts() -> ClusterFacts {
    let d = ClusterFacts::default();
    ClusterFacts {
        runtime_classes: RuntimeClasses::Known(BTreeMap::from([
            ("gvisor".to_string(), "runsc".to_string()),
            ("kata-qemu".to_string(), "kata-qemu".to_string()),
        ])),
        seccomp_applied: BTreeSet::from([Runtime::Gvisor, Runtime::Kata, Runtime::Runc]),
        cluster_cidrs: cidrs(CLUSTER_CIDRS),
        node_cidrs: cidrs(NODE_CIDRS),
        seccomp_profile_crd: true,
        cilium: true,
        api_audiences: d
            .api_audiences
            .iter()
            .cloned()
            .chain(["https://oidc.example.com/id/fuzz".to_string()])
            .collect(),
        ..d
    }
}

/// The documents of one file, as `render_cmd::load_into` reads them (namespace `default` for
/// documents that name none); `None` when `palisade render` would refuse the file.
fn load(file: &Path, text: &str) -> Option<Vec<Document>> {
    let values = parse_values(file, text).ok()?;
    let mut documents = Vec::new();
    let mut refused = false;
    for (origin, mut value) in values {
        if let Some(meta) = value
            .get_mut("metadata")
            .and_then(|m| m.as_object_mut())
            .filter(|m| !m.contains_key("namespace"))
        {
            meta.insert("namespace".into(), "default".into());
        }
        match classify(origin, value) {
            Ok(Ok(doc)) => {
                let ok = match &doc {
                    Document::Policy(_, p) => check_policy(&p.spec).is_ok(),
                    Document::Sandbox(_, s) => validate_sandbox(&s.spec).is_ok(),
                    Document::Pool(_, p) => validate_sandbox(&p.spec.template).is_ok(),
                };
                if ok {
                    documents.push(doc);
                } else {
                    refused = true;
                }
            }
            Ok(Err(_skipped)) => {}
            Err(_) => refused = true,
        }
    }
    (!refused).then_some(documents)
}

/// The pairs `palisade render` compiles: each sandbox with the policy of its name and namespace.
fn pairs(documents: &[Document]) -> Vec<(&AgentPolicy, &AgentSandbox)> {
    documents
        .iter()
        .filter_map(|d| match d {
            Document::Sandbox(_, s) => Some(s),
            Document::Policy(..) | Document::Pool(..) => None,
        })
        .filter_map(|s| {
            let ns = s.metadata.namespace.as_deref();
            documents.iter().find_map(|d| match d {
                Document::Policy(_, p)
                    if p.metadata.name.as_deref() == Some(s.spec.policy_ref.name.as_str())
                        && p.metadata.namespace.as_deref() == ns =>
                {
                    Some((&**p, &**s))
                }
                _ => None,
            })
        })
        .collect()
}

// ---- addresses, independent of palisade's set arithmetic --------------------------------------

/// A CIDR as an inclusive range of addresses of one family (false = IPv4).
type Range = (bool, u128, u128);

fn range(cidr: &str) -> Range {
    let (ip, len) = cidr
        .split_once('/')
        .unwrap_or_else(|| panic!("ipBlock `{cidr}` is not a CIDR"));
    let ip: IpAddr = ip
        .parse()
        .unwrap_or_else(|_| panic!("ipBlock `{cidr}` has no valid address"));
    let len: u32 = len
        .parse()
        .unwrap_or_else(|_| panic!("ipBlock `{cidr}` has no valid prefix"));
    let (v6, bits, width) = match ip {
        IpAddr::V4(a) => (false, u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (true, u128::from(a), 128),
    };
    assert!(
        len <= width,
        "ipBlock `{cidr}`: prefix longer than the address"
    );
    let host = if len == 0 {
        if width == 128 {
            u128::MAX
        } else {
            (1u128 << width) - 1
        }
    } else {
        (1u128 << (width - len)).wrapping_sub(1)
    };
    assert!(bits & host == 0, "ipBlock `{cidr}` has host bits set");
    (v6, bits, bits | host)
}

/// The addresses an ipBlock admits: its CIDR minus its excepts, as disjoint ranges.
fn admitted(cidr: &str, except: &[String]) -> Vec<Range> {
    let mut out = vec![range(cidr)];
    for e in except {
        let (f, lo, hi) = range(e);
        assert!(
            f == out[0].0 && lo >= range(cidr).1 && hi <= range(cidr).2,
            "ipBlock `{cidr}`: except `{e}` is not inside it (the API server refuses it)"
        );
        out = out
            .into_iter()
            .flat_map(|(fam, a, b)| {
                let mut keep = Vec::new();
                if hi < a || lo > b {
                    keep.push((fam, a, b));
                } else {
                    if lo > a {
                        keep.push((fam, a, lo - 1));
                    }
                    if hi < b {
                        keep.push((fam, hi + 1, b));
                    }
                }
                keep
            })
            .collect();
    }
    out
}

fn overlaps(a: Range, b: Range) -> bool {
    a.0 == b.0 && a.1 <= b.2 && b.1 <= a.2
}

// ---- the invariants ----------------------------------------------------------------------------

/// What must hold for every plan, whatever its policy.
fn check_plan(plan: &Plan, policy: &AgentPolicy, facts: &ClusterFacts, label: &str) {
    let pod = &plan.pod;
    let violations = pss::restricted_violations(pod);
    assert!(
        violations.is_empty(),
        "{label}: the pod breaks Pod Security `restricted`: {violations:?}"
    );
    let spec = pod.spec.as_ref().expect("pod spec");
    assert_eq!(spec.host_network, Some(false), "{label}: hostNetwork");
    assert_eq!(
        spec.enable_service_links,
        Some(false),
        "{label}: service links"
    );
    assert!(
        spec.volumes.iter().flatten().all(|v| v.host_path.is_none()),
        "{label}: a hostPath volume"
    );
    let ps = spec
        .security_context
        .as_ref()
        .expect("pod security context");
    assert_eq!(ps.run_as_non_root, Some(true), "{label}: pod runAsNonRoot");
    assert_ne!(ps.run_as_user, Some(0), "{label}: pod runs as root");
    assert_ne!(ps.run_as_group, Some(0), "{label}: pod group root");
    assert_ne!(ps.fs_group, Some(0), "{label}: fsGroup root");
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in containers {
        let sc = c
            .security_context
            .as_ref()
            .expect("container security context");
        assert_ne!(
            sc.run_as_non_root,
            Some(false),
            "{label}: {} may run as root",
            c.name
        );
        assert_ne!(sc.run_as_user, Some(0), "{label}: {} runs as root", c.name);
        assert_eq!(sc.privileged, Some(false), "{label}: {} privileged", c.name);
        assert_eq!(
            sc.allow_privilege_escalation,
            Some(false),
            "{label}: {} may escalate",
            c.name
        );
        assert_eq!(
            sc.read_only_root_filesystem,
            Some(true),
            "{label}: {} rw root",
            c.name
        );
        let drop = sc.capabilities.as_ref().and_then(|c| c.drop.as_ref());
        assert!(
            drop.is_some_and(|d| d.iter().any(|x| x == "ALL")),
            "{label}: {} does not drop ALL capabilities",
            c.name
        );
        assert!(
            c.ports.iter().flatten().all(|p| p.host_port.is_none()),
            "{label}: {} has a hostPort",
            c.name
        );
    }
    assert!(
        spec.ephemeral_containers.is_none(),
        "{label}: ephemeral containers"
    );

    // The pod starts behind the isolation gate, and its hash leaves the gate and the deadline out.
    let gates: Vec<&str> = spec
        .scheduling_gates
        .iter()
        .flatten()
        .map(|g| g.name.as_str())
        .collect();
    assert!(
        gates.contains(&ISOLATION_GATE),
        "{label}: no isolation gate: {gates:?}"
    );
    // The only init container is the isolation check, which stays out of the hash too (it
    // matters only while a pod starts).
    for c in spec.init_containers.iter().flatten() {
        assert_eq!(c.name, "isolation-check", "{label}: unexpected init container");
    }
    let mut hashed = spec.clone();
    hashed.scheduling_gates = None;
    hashed.active_deadline_seconds = None;
    hashed.init_containers = None;
    let labels = pod.metadata.labels.clone().expect("pod labels");
    let mut annotations = pod.metadata.annotations.clone().unwrap_or_default();
    annotations.remove(POLICY_HASH_ANNOTATION);
    assert_eq!(
        palisade::render::hash::short_hash(&(&labels, &annotations, &hashed)),
        plan.pod_hash,
        "{label}: pod hash is not the hash of the pod"
    );

    // The isolation NetworkPolicy: both directions, selecting exactly this pod.
    let np = plan
        .network_policy
        .spec
        .as_ref()
        .expect("NetworkPolicy spec");
    assert_eq!(
        np.policy_types.as_deref(),
        Some(&["Ingress".to_string(), "Egress".to_string()][..]),
        "{label}: policyTypes"
    );
    let selector = np
        .pod_selector
        .as_ref()
        .and_then(|s| s.match_labels.as_ref())
        .expect("NetworkPolicy pod selector");
    assert!(
        !selector.is_empty(),
        "{label}: the NetworkPolicy selects every pod"
    );
    for (k, v) in selector {
        assert_eq!(
            labels.get(k),
            Some(v),
            "{label}: selector label {k} not on the pod"
        );
    }

    // No ipBlock reaches the cluster's pods and services; none reaches metadata addresses unless
    // the policy allows it; none reaches the nodes except the policy's own proxy.
    let checked = check_policy(&policy.spec).expect("a compiled policy checks");
    let metadata_ok = checked.network.egress.allow_metadata_access == Some(true);
    let proxy = match &checked.network.proxy {
        Some(Proxy::At(a)) => Some(a.ip),
        _ => None,
    };
    let mut forbidden: Vec<(String, Range)> = facts
        .cluster_cidrs
        .iter()
        .map(|c| (format!("cluster {c}"), range(&c.to_string())))
        .collect();
    if !metadata_ok {
        forbidden.extend(
            palisade::policy::egress::METADATA_CIDRS
                .iter()
                .map(|c| (format!("metadata {c}"), range(c))),
        );
    }
    for rule in np.egress.iter().flatten() {
        for peer in rule.to.iter().flatten() {
            let Some(block) = &peer.ip_block else {
                continue;
            };
            let except = block.except.clone().unwrap_or_default();
            let set = admitted(&block.cidr, &except);
            let is_proxy = proxy.is_some_and(|ip| {
                except.is_empty()
                    && (block.cidr == format!("{ip}/32") || block.cidr == format!("{ip}/128"))
            });
            let nodes = facts
                .node_cidrs
                .iter()
                .filter(|_| !is_proxy)
                .map(|c| (format!("node {c}"), range(&c.to_string())));
            for (what, f) in forbidden.iter().cloned().chain(nodes) {
                assert!(
                    !set.iter().any(|r| overlaps(*r, f)),
                    "{label}: egress ipBlock {} except {except:?} reaches {what}",
                    block.cidr
                );
            }
        }
    }

    // The objects print as `palisade render` prints them, and read back the same.
    for obj in plan.objects() {
        assert!(!obj.is_null(), "{label}: an object does not serialize");
        let yaml = serde_yaml::to_string(&obj)
            .unwrap_or_else(|e| panic!("{label}: an object does not print as YAML: {e}"));
        let back: Value = serde_yaml::from_str(&yaml)
            .unwrap_or_else(|e| panic!("{label}: printed YAML does not parse: {e}\n{yaml}"));
        assert_eq!(
            back, obj,
            "{label}: printed YAML reads back differently\n{yaml}"
        );
    }
}

fn render(file: &Path, text: &str, facts: &[(&str, ClusterFacts)]) {
    let Some(documents) = load(file, text) else {
        return;
    };
    for (policy, sandbox) in pairs(&documents) {
        for (name, f) in facts {
            if let Ok(plan) = compile(policy, sandbox, f, 0) {
                check_plan(&plan, policy, f, name);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // `palisade render` reads files as UTF-8 and refuses anything else.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    thread_local! {
        static FACTS: Vec<(&'static str, ClusterFacts)> =
            vec![("default facts", ClusterFacts::default()), ("rich facts", rich_facts())];
    }
    FACTS.with(|facts| {
        render(Path::new("fuzz.yaml"), text, facts);
        // A `.json` file goes through the JSON reader instead.
        if text.trim_start().starts_with(['{', '[']) {
            render(Path::new("fuzz.json"), text, facts);
        }
    });
});
