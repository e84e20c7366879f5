//! GitOps readiness: what the real kstatus library (sigs.k8s.io/cli-utils, as used by Flux)
//! and the Argo CD health scripts of docs/gitops/ (run by gopher-lua, the Lua Argo CD embeds)
//! make of live Palisade objects, with the operator running beside the suite.
//!
//! Both run through the tool in e2e/cluster/tools/kstatus, whose path is `KSTATUS_BIN`
//! (`e2e/cluster/tools/kstatus/build.sh` builds it and prints the path).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use kube::{Client, Resource};
use palisade::api::{AgentPolicy, AgentSandbox, SandboxPhase};
use palisade_e2e::{
    apply_palisade, client, install_crds, restricted_namespace, root, unique, wait_for,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// The kstatus tool. Panics when `KSTATUS_BIN` is not set: the suite fails, never skips.
fn tool() -> PathBuf {
    let bin = std::env::var_os("KSTATUS_BIN").unwrap_or_else(|| {
        panic!(
            "KSTATUS_BIN is not set: build the kstatus tool with `e2e/cluster/tools/kstatus/build.sh` \
             (it prints the binary's path) and export KSTATUS_BIN=<that path>"
        )
    });
    let bin = PathBuf::from(bin);
    assert!(
        bin.is_file(),
        "KSTATUS_BIN={} does not exist",
        bin.display()
    );
    bin
}

/// Runs the tool with `args` and `input` on stdin; returns (status, message).
fn run_tool(args: &[&str], input: &Value) -> (String, String) {
    let mut child = Command::new(tool())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run KSTATUS_BIN");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.to_string().as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("KSTATUS_BIN output");
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}\ninput: {input}",
        tool().display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("KSTATUS_BIN prints JSON");
    (
        v["status"].as_str().unwrap_or_default().to_string(),
        v["message"].as_str().unwrap_or_default().to_string(),
    )
}

/// kstatus' verdict (`status.Compute`) on an object.
fn kstatus(obj: &Value) -> (String, String) {
    run_tool(&[], obj)
}

/// The Argo CD health script of `kind` on an object.
fn argo(kind: &str, obj: &Value) -> (String, String) {
    let script = root().join(format!("docs/gitops/{}-health.lua", kind.to_lowercase()));
    run_tool(&["lua", script.to_str().expect("utf-8 path")], obj)
}

/// The live object as the API server returns it (untyped: nothing dropped or defaulted).
async fn live<K: Resource<DynamicType = ()>>(client: &Client, ns: &str, name: &str) -> Value {
    let ar = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    serde_json::to_value(api.get(name).await.expect("get live object")).expect("json")
}

/// Asserts what kstatus and Argo CD say about a live object, and that the two agree.
fn assert_reads(obj: &Value, kind: &str, want_kstatus: &str, want_argo: &str) {
    let (ks, ks_message) = kstatus(obj);
    let (health, health_message) = argo(kind, obj);
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    assert_eq!(
        (ks.as_str(), health.as_str()),
        (want_kstatus, want_argo),
        "{kind} {name}: kstatus says {ks} ({ks_message}), Argo CD says {health} ({health_message})\nstatus: {}",
        obj["status"]
    );
    let agrees = match ks.as_str() {
        "Current" => ["Healthy", "Suspended"].contains(&health.as_str()),
        "InProgress" => health == "Progressing",
        "Failed" => health == "Degraded",
        _ => false,
    };
    assert!(
        agrees,
        "{kind} {name}: kstatus {ks} and Argo CD {health} disagree"
    );
    if ks != "Current" {
        assert!(
            !ks_message.is_empty() && !health_message.is_empty(),
            "{kind} {name}: a {ks} object says why (kstatus: {ks_message:?}, Argo CD: {health_message:?})"
        );
    }
}

async fn setup(ns: &str) -> Client {
    let client = client().await;
    tool();
    install_crds(&client).await;
    palisade_e2e::operator::gvisor_runtime_class(&client).await;
    restricted_namespace(&client, ns).await;
    client
}

fn sandbox(policy: &str) -> Value {
    json!({"policyRef": {"name": policy}, "image": "ghcr.io/palisade-dev/examples/agent:0.1.0", "restartPolicy": "Never"})
}

/// Waits for a sandbox's phase, with its status written for the current generation.
async fn wait_phase(client: &Client, ns: &str, name: &str, phase: SandboxPhase) -> Value {
    let api: Api<AgentSandbox> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("sandbox {ns}/{name} {phase:?}"), WAIT, || {
        let api = api.clone();
        let name = name.to_string();
        async move {
            let s = api.get(&name).await.ok()?;
            let st = s.status.as_ref()?;
            (st.phase == Some(phase) && st.observed_generation == s.metadata.generation)
                .then_some(())
        }
    })
    .await;
    live::<AgentSandbox>(client, ns, name).await
}

/// Sets the phase of a sandbox's pod, as a kubelet would when the agent exits.
async fn finish_pod(client: &Client, ns: &str, name: &str, phase: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let status = json!({"status": {"phase": phase, "conditions": [{"type": "Ready", "status": "False"}],
                                   "message": format!("the agent exited ({phase})")}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .expect("pod status");
}

#[tokio::test]
async fn a_running_sandbox_is_current_and_a_finished_one_stays_so() {
    let ns = &unique("gitops-run");
    let client = setup(ns).await;
    apply_palisade::<AgentPolicy>(&client, ns, "p", json!({"network": {"dns": "none"}})).await;
    apply_palisade::<AgentSandbox>(&client, ns, "agent", sandbox("p")).await;
    let obj = wait_phase(&client, ns, "agent", SandboxPhase::Running).await;
    assert_reads(&obj, "AgentSandbox", "Current", "Healthy");

    // A spec change the operator has not seen yet: in progress, whatever the conditions say.
    let mut unobserved = obj.clone();
    unobserved["metadata"]["generation"] =
        json!(obj["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
    assert_reads(&unobserved, "AgentSandbox", "InProgress", "Progressing");

    // The agent finishes: done, not in progress for ever.
    finish_pod(&client, ns, "agent", "Succeeded").await;
    let obj = wait_phase(&client, ns, "agent", SandboxPhase::Succeeded).await;
    assert_reads(&obj, "AgentSandbox", "Current", "Healthy");

    let policy = live::<AgentPolicy>(&client, ns, "p").await;
    assert_reads(&policy, "AgentPolicy", "Current", "Healthy");
}

#[tokio::test]
async fn a_failed_agent_is_failed() {
    let ns = &unique("gitops-fail");
    let client = setup(ns).await;
    apply_palisade::<AgentPolicy>(&client, ns, "p", json!({"network": {"dns": "none"}})).await;
    apply_palisade::<AgentSandbox>(&client, ns, "agent", sandbox("p")).await;
    wait_phase(&client, ns, "agent", SandboxPhase::Running).await;
    finish_pod(&client, ns, "agent", "Failed").await;
    let obj = wait_phase(&client, ns, "agent", SandboxPhase::Failed).await;
    assert_reads(&obj, "AgentSandbox", "Failed", "Degraded");
}

#[tokio::test]
async fn a_starting_sandbox_is_in_progress_and_a_paused_one_suspended() {
    let ns = &unique("gitops-start");
    let client = setup(ns).await;
    apply_palisade::<AgentPolicy>(&client, ns, "p", json!({"network": {"dns": "none"}})).await;
    // No node carries this label: the pod stays Pending, the sandbox Starting.
    let mut spec = sandbox("p");
    spec["nodeSelector"] = json!({"example.com/nowhere": "true"});
    apply_palisade::<AgentSandbox>(&client, ns, "agent", spec.clone()).await;
    let obj = wait_phase(&client, ns, "agent", SandboxPhase::Starting).await;
    assert_reads(&obj, "AgentSandbox", "InProgress", "Progressing");

    spec["paused"] = json!(true);
    apply_palisade::<AgentSandbox>(&client, ns, "agent", spec).await;
    let obj = wait_phase(&client, ns, "agent", SandboxPhase::Paused).await;
    assert_reads(&obj, "AgentSandbox", "Current", "Suspended");
}

#[tokio::test]
async fn a_blocked_sandbox_is_stalled_until_someone_fixes_it() {
    let ns = &unique("gitops-block");
    let client = setup(ns).await;
    let class = unique("gvisor-missing");

    // A policy that does not exist (yet).
    apply_palisade::<AgentSandbox>(&client, ns, "orphan", sandbox("later")).await;
    let obj = wait_phase(&client, ns, "orphan", SandboxPhase::Blocked).await;
    assert_reads(&obj, "AgentSandbox", "Failed", "Degraded");
    assert!(
        kstatus(&obj).1.contains("later"),
        "the message names the missing policy: {}",
        kstatus(&obj).1
    );

    // A RuntimeClass that does not exist.
    apply_palisade::<AgentPolicy>(
        &client,
        ns,
        "no-runtime",
        json!({"isolation": {"runtime": "gvisor", "runtimeClassName": class}, "network": {"dns": "none"}}),
    )
    .await;
    apply_palisade::<AgentSandbox>(&client, ns, "no-runtime", sandbox("no-runtime")).await;
    let obj = wait_phase(&client, ns, "no-runtime", SandboxPhase::Blocked).await;
    assert_reads(&obj, "AgentSandbox", "Failed", "Degraded");
    assert!(
        argo("AgentSandbox", &obj)
            .1
            .starts_with("RuntimeClassMissing"),
        "Argo CD shows the reason: {}",
        argo("AgentSandbox", &obj).1
    );

    // The missing policy arrives: the stalled sandbox recovers on its own.
    apply_palisade::<AgentPolicy>(&client, ns, "later", json!({"network": {"dns": "none"}})).await;
    let obj = wait_phase(&client, ns, "orphan", SandboxPhase::Running).await;
    assert_reads(&obj, "AgentSandbox", "Current", "Healthy");
}

#[tokio::test]
async fn an_expired_sandbox_is_failed() {
    let ns = &unique("gitops-expire");
    let client = setup(ns).await;
    apply_palisade::<AgentPolicy>(&client, ns, "p", json!({"network": {"dns": "none"}})).await;
    let mut spec = sandbox("p");
    let soon = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(3))
        .expect("time");
    spec["expiresAt"] = json!(soon.to_string());
    apply_palisade::<AgentSandbox>(&client, ns, "agent", spec).await;
    let obj = wait_phase(&client, ns, "agent", SandboxPhase::Expired).await;
    assert_reads(&obj, "AgentSandbox", "Failed", "Degraded");
}

/// States that are hard to reach on a live cluster, as the operator writes them: the live
/// objects with their status replaced.
#[tokio::test]
async fn status_fixtures_read_as_documented() {
    let ns = &unique("gitops-fixture");
    let client = setup(ns).await;
    apply_palisade::<AgentPolicy>(&client, ns, "p", json!({"network": {"dns": "none"}})).await;
    apply_palisade::<AgentSandbox>(&client, ns, "agent", sandbox("p")).await;
    wait_phase(&client, ns, "agent", SandboxPhase::Running).await;
    let policy = live::<AgentPolicy>(&client, ns, "p").await;
    let sandbox_obj = live::<AgentSandbox>(&client, ns, "agent").await;
    let generation = policy["metadata"]["generation"].clone();

    // Nothing written yet: the API server serves the CRD's status default,
    // observedGeneration 0, so kstatus and the Argo CD scripts wait (docs/gitops.md).
    for (kind, obj) in [("AgentSandbox", &sandbox_obj), ("AgentPolicy", &policy)] {
        let mut fresh = obj.clone();
        fresh["status"] = json!({"observedGeneration": 0});
        assert_reads(&fresh, kind, "InProgress", "Progressing");
        // Without the default (a CRD from before it), kstatus cannot tell "no status yet"
        // from "nothing to report"; the Argo CD scripts still wait.
        fresh.as_object_mut().expect("object").remove("status");
        assert_eq!(kstatus(&fresh).0, "Current");
        assert_eq!(argo(kind, &fresh).0, "Progressing");
    }

    // An invalid policy, as the operator reports it.
    let message = "spec.network: legacy and directional fields are mixed";
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "observedGeneration": generation, "lastTransitionTime": "2026-01-01T00:00:00Z"})
    };
    let mut invalid = policy.clone();
    invalid["status"] = json!({
        "observedGeneration": generation,
        "sandboxCount": 1,
        "conditions": [
            condition("Accepted", "False", "Invalid", message),
            condition("Ready", "False", "Invalid", message),
            condition("Reconciling", "False", "Invalid", ""),
            condition("Stalled", "True", "Invalid", message),
        ],
    });
    assert_reads(&invalid, "AgentPolicy", "Failed", "Degraded");
    assert!(argo("AgentPolicy", &invalid).1.contains(message));

    // A policy status from an operator that predates Stalled: Argo CD still sees it.
    let mut old = invalid.clone();
    old["status"]["conditions"] = json!([
        condition("Accepted", "False", "Invalid", message),
        condition("Ready", "False", "Invalid", message),
    ]);
    assert_eq!(argo("AgentPolicy", &old).0, "Degraded");
}

/// docs/gitops.md shows the scripts this suite runs, verbatim.
#[test]
fn the_documented_scripts_are_the_tested_ones() {
    let doc = std::fs::read_to_string(root().join("docs/gitops.md")).expect("docs/gitops.md");
    for kind in ["agentsandbox", "agentpolicy"] {
        let script = std::fs::read_to_string(root().join(format!("docs/gitops/{kind}-health.lua")))
            .expect("script");
        assert!(
            doc.contains(&format!("```lua\n{script}```")),
            "docs/gitops.md does not show docs/gitops/{kind}-health.lua as it is"
        );
        assert!(doc.contains(&format!(
            "resource.customizations.health.palisade.dev_{}",
            if kind == "agentsandbox" {
                "AgentSandbox"
            } else {
                "AgentPolicy"
            }
        )));
    }
}
