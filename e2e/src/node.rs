//! Helpers for the isolation suite (`tests/isolation.rs`): sandboxes that run for real on the
//! e2e cluster's node (`PALISADE_E2E_NODE=1`), the probe image inside them, and reading what it
//! printed. The probe's interface is documented in `e2e/cluster/README.md`.

use std::time::Duration;

use futures::{AsyncBufReadExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Client;
use kube::api::{Api, LogParams, Patch, PatchParams, PostParams};
use palisade::api::AgentSandbox;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{sandboxes, wait_for};

/// The real node's name.
pub const NODE_NAME: &str = "palisade-node";

/// The probe image, pulled through containerd's mirror of ghcr.io (the node's local registry).
pub const PROBE_IMAGE: &str = "ghcr.io/palisade-e2e/probe:1";
/// Its repository prefix, for a policy's `images.allowedRegistries`.
pub const PROBE_IMAGE_REPOSITORY: &str = "ghcr.io/palisade-e2e";

/// The tools image (e2e/cluster/node.sh, `node_tools_image`): Debian's curl, python3 and pip,
/// the probe, and the world's certificate authority in [`WORLD_CA`]; entrypoint python3.
pub const TOOLS_IMAGE: &str = "ghcr.io/palisade-e2e/tools:1";
/// The world's certificate authority inside the tools image.
pub const WORLD_CA: &str = "/etc/palisade-e2e/world-ca.crt";
/// The world's package index (HTTP on 80, HTTPS on 443): `packages.example.com`.
pub const PACKAGES_ADDRESS: &str = "192.0.2.30";

/// The e2e state directory (`PALISADE_E2E_STATE`, else `<repo>/target/e2e`), which holds the
/// cluster's logs (`logs/<component>.log`).
pub fn state_dir() -> std::path::PathBuf {
    std::env::var_os("PALISADE_E2E_STATE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::root().join("target/e2e"))
}

/// How long a pod on the real node may take to start or finish.
pub const POD_WAIT: Duration = Duration::from_secs(120);

/// The cluster ranges of the e2e cluster with the node (pods, Services, the node's links),
/// which `e2e/run.sh` passes to the operator as `cluster.cidrs` and `cluster.nodeCidrs`.
pub const CLUSTER_RANGES: [&str; 3] = ["10.244.0.0/14", "10.96.0.0/16", "10.250.0.0/16"];

/// The outside world's test servers (e2e/cluster/node.sh).
pub const WORLD_ADDRESSES: [&str; 5] = [
    "192.0.2.10",
    "192.0.2.20",
    "198.51.100.10",
    "198.51.100.13",
    "203.0.113.10",
];
pub const WORLD_TCP_PORTS: [u16; 3] = [80, 443, 8080];
pub const WORLD_UDP_PORTS: [u16; 2] = [53, 5353];
/// The fake metadata service (HTTP on port 80).
pub const METADATA_ADDRESS: &str = "169.254.169.254";
/// The `kubernetes` Service, the API server's forwarder on the host, the node's kubelet, and
/// the cluster DNS Service.
pub const API_SERVICE: &str = "10.96.0.1:443";
pub const API_FORWARDER: &str = "10.250.0.1:16443";
pub const KUBELET: &str = "10.250.0.2:10250";
pub const CLUSTER_DNS: &str = "10.96.0.10";

/// One line the probe printed.
#[derive(Clone, Debug, Deserialize)]
pub struct Line {
    pub check: String,
    pub result: String,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub ms: i64,
    /// Unix milliseconds (loop mode).
    #[serde(default)]
    pub at: i64,
}

/// The probe's JSON lines in `log` (other lines are ignored).
pub fn parse_lines(log: &str) -> Vec<Line> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Line>(l.trim()).ok())
        .collect()
}

/// A `restricted` namespace whose pods run on the real node (PodNodeSelector), with the
/// RuntimeClasses of `sandboxes::setup` (`gvisor`: handler runsc). Sandboxes of `runc` policies
/// run only where a cluster admin allowed it (the chart's admission policy).
pub async fn namespace(name: &str, allow_runc: bool) -> Client {
    let client = sandboxes::setup(name).await;
    let ns: Api<Namespace> = Api::all(client.clone());
    let mut body = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "annotations": {
            "scheduler.alpha.kubernetes.io/node-selector": "palisade.dev/node=real"
        }}
    });
    if allow_runc {
        body["metadata"]["labels"] = json!({"palisade.dev/allow-runc": "true"});
    }
    ns.patch(
        name,
        &PatchParams::apply("palisade-e2e-node").force(),
        &Patch::Apply(body),
    )
    .await
    .expect("annotate the namespace for the real node");
    client
}

/// The RuntimeClass `gvisor-seccomp` (handler runsc-seccomp: gVisor applying the pod's seccomp
/// profile) on the real node.
pub async fn gvisor_seccomp_runtime_class(client: &Client) {
    let rc = json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
        "metadata": {"name": "gvisor-seccomp"}, "handler": "runsc-seccomp",
        "scheduling": {"nodeSelector": {"palisade.dev/node": "real"}}});
    crate::apply_cluster::<k8s_openapi::api::node::v1::RuntimeClass>(client, "gvisor-seccomp", rc)
        .await;
}

/// A pod of the probe image that is not a sandbox (Pod Security `restricted`), with `labels`,
/// running `args`.
pub async fn plain_pod(client: &Client, ns: &str, name: &str, labels: Value, args: &[&str]) {
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "probe", "image": PROBE_IMAGE, "command": ["probe"], "args": args,
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"]}}}]
        }
    }))
    .expect("pod");
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .expect("create the pod");
}

/// The IP of pod `name` once it is Running.
pub async fn running_pod_ip(client: &Client, ns: &str, name: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("pod {ns}/{name} Running"), POD_WAIT, || {
        let pods = pods.clone();
        async move {
            let p = pods.get_opt(name).await.ok()??;
            let st = p.status?;
            (st.phase.as_deref() == Some("Running")).then_some(st.pod_ip?)
        }
    })
    .await
}

/// The phase of pod `name` once it has ended (Succeeded or Failed).
pub async fn finished_pod(client: &Client, ns: &str, name: &str) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("pod {ns}/{name} to finish"), POD_WAIT, || {
        let pods = pods.clone();
        async move {
            let p = pods.get_opt(name).await.ok()??;
            let phase = p.status.as_ref()?.phase.clone()?;
            matches!(phase.as_str(), "Succeeded" | "Failed").then_some(p)
        }
    })
    .await
}

/// The log of pod `name` (its only container).
pub async fn pod_log(client: &Client, ns: &str, name: &str) -> String {
    Api::<Pod>::namespaced(client.clone(), ns)
        .logs(name, &LogParams::default())
        .await
        .unwrap_or_else(|e| panic!("log of pod {ns}/{name}: {e}"))
}

/// The log of a pod as [`follow_log`] saw it: every line parsed, or why the stream broke.
pub type FollowedLog = Result<Vec<Line>, String>;

/// Follows the log of pod `name` until the container ends or the pod is removed, in a task.
/// The handle's result is the lines parsed, or an error when the stream could not be opened or
/// broke before its end: a log cut short must fail the test that reads it, not pass for a
/// complete one.
pub fn follow_log(client: &Client, ns: &str, name: &str) -> tokio::task::JoinHandle<FollowedLog> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let (ns, name) = (ns.to_string(), name.to_string());
    tokio::spawn(async move {
        let params = LogParams {
            follow: true,
            ..LogParams::default()
        };
        let stream = pods
            .log_stream(&name, &params)
            .await
            .map_err(|e| format!("log of pod {ns}/{name}: {e}"))?;
        let mut out = Vec::new();
        let mut lines = stream.lines();
        loop {
            match lines.try_next().await {
                Ok(Some(line)) => out.extend(parse_lines(&line)),
                Ok(None) => return Ok(out),
                Err(e) => {
                    return Err(format!(
                        "log of pod {ns}/{name} broke off after {} lines: {e}",
                        out.len()
                    ));
                }
            }
        }
    })
}

/// The name of the pod of sandbox `name`, once the operator has created it.
pub async fn sandbox_pod(client: &Client, ns: &str, name: &str) -> String {
    let api: Api<AgentSandbox> = Api::namespaced(client.clone(), ns);
    wait_for(
        &format!("sandbox {ns}/{name} to have a pod"),
        POD_WAIT,
        || {
            let api = api.clone();
            async move {
                let s = api.get(name).await.ok()?;
                s.status?.pod_name
            }
        },
    )
    .await
}

/// The check that waits until the network plugin enforces a new sandbox's NetworkPolicy: the
/// `kubernetes` Service, which every test policy denies (the Service range is removed from every
/// allow) and an unfiltered pod reaches, stops answering (see the start-window test).
pub const WAIT_ISOLATED: &str = "isolated:10.96.0.1:443";

/// Runs the probe's `checks` in a sandbox of `policy` (an AgentPolicy spec; `sandbox_extra` is
/// merged into the sandbox spec) and returns what it printed. The checks start once the
/// network plugin enforces the pod's NetworkPolicy (`WAIT_ISOLATED`, asserted).
pub async fn run_checks(
    client: &Client,
    ns: &str,
    name: &str,
    policy: Value,
    sandbox_extra: Value,
    checks: &[String],
) -> Vec<Line> {
    let mut args = vec![
        "check".to_string(),
        "--timeout=1s".to_string(),
        WAIT_ISOLATED.to_string(),
    ];
    args.extend(checks.iter().cloned());
    let mut extra = json!({"args": args, "restartPolicy": "Never"});
    if let (Some(e), Some(more)) = (extra.as_object_mut(), sandbox_extra.as_object()) {
        e.extend(more.clone());
    }
    sandboxes_apply(client, ns, name, policy, extra).await;
    let pod = sandbox_pod(client, ns, name).await;
    let done = finished_pod(client, ns, &pod).await;
    let log = pod_log(client, ns, &pod).await;
    let lines = parse_lines(&log);
    let waited = result_of(&lines, WAIT_ISOLATED).unwrap_or_else(|| {
        panic!(
            "the probe in {ns}/{pod} printed nothing it was asked (phase {:?}):\n{log}",
            done.status.and_then(|s| s.phase)
        )
    });
    assert_eq!(
        waited.result, "ok",
        "the sandbox {ns}/{name} was never isolated: {waited:?}"
    );
    assert_eq!(
        lines.len(),
        checks.len() + 1,
        "the probe in {ns}/{pod} did not print every check:\n{log}"
    );
    lines
}

/// Applies AgentPolicy `name` (spec `policy`) and AgentSandbox `name` of the probe image under
/// it, with `sandbox_extra` merged into the sandbox spec.
pub async fn sandboxes_apply(
    client: &Client,
    ns: &str,
    name: &str,
    policy: Value,
    sandbox_extra: Value,
) {
    sandboxes::apply_policy(client, ns, name, policy).await;
    // Small requests: the node has two CPUs, and a sandbox otherwise requests its policy's caps.
    let mut spec = json!({"policyRef": {"name": name}, "image": PROBE_IMAGE, "command": ["probe"],
        "resources": {"requests": {"cpu": "20m", "memory": "32Mi"},
                      "limits": {"cpu": "500m", "memory": "256Mi"}}});
    if let (Some(s), Some(extra)) = (spec.as_object_mut(), sandbox_extra.as_object()) {
        s.extend(extra.clone());
    }
    sandboxes::apply_sandbox(client, ns, name, spec).await;
}

/// How long ingress clients wait before they connect: the network plugin admits a new peer
/// only once it has seen the pod (and the server's own rules take as long).
pub const SETTLE: Duration = Duration::from_millis(3000);

/// The result of `check` in `lines` (the last one printed).
pub fn result_of<'a>(lines: &'a [Line], check: &str) -> Option<&'a Line> {
    lines.iter().rev().find(|l| l.check == check)
}

/// The UID of pod `name` (which must exist).
pub async fn pod_uid(client: &Client, ns: &str, name: &str) -> String {
    Api::<Pod>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .ok()
        .and_then(|p| p.metadata.uid)
        .unwrap_or_else(|| panic!("pod {ns}/{name} has no UID"))
}

/// Waits until the pod `name` of UID `uid` is removed (a new pod of the same name may exist).
pub async fn pod_gone(client: &Client, ns: &str, name: &str, uid: &str, timeout: Duration) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for(
        &format!("pod {ns}/{name} ({uid}) to be removed"),
        timeout,
        || {
            let pods = pods.clone();
            async move {
                match pods.get_opt(name).await {
                    Ok(None) => Some(()),
                    Ok(Some(p)) if p.metadata.uid.as_deref() != Some(uid) => Some(()),
                    _ => None,
                }
            }
        },
    )
    .await
}

/// The IP of the cluster DNS pod (CoreDNS on the node).
pub async fn cluster_dns_pod_ip(client: &Client) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let list = pods
        .list(&kube::api::ListParams::default().labels("k8s-app=kube-dns"))
        .await
        .expect("list the cluster DNS pods");
    list.items
        .iter()
        .find_map(|p| p.status.as_ref()?.pod_ip.clone())
        .expect("a cluster DNS pod with an IP")
}

/// Deletes the test namespace (its sandboxes with it) once a test has passed, so that runs
/// against a long-lived cluster do not fill the node.
pub async fn cleanup(client: &Client, ns: &str) {
    let _ = Api::<Namespace>::all(client.clone())
        .delete(ns, &kube::api::DeleteParams::default())
        .await;
}

/// The AgentSandbox, for status checks.
pub async fn sandbox(client: &Client, ns: &str, name: &str) -> AgentSandbox {
    Api::<AgentSandbox>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect("sandbox")
}

/// A policy whose `syscalls.block` lists personality(2), through the node's Localhost profile
/// `palisade-e2e/deny-personality.json` (which returns EPERM for it), on `runtime`.
pub fn deny_personality_policy(runtime: &str) -> Value {
    json!({
        "network": {"egress": {"default": "deny"}, "dns": "none"},
        "isolation": {"runtime": runtime},
        "syscalls": {"profile": "Localhost",
            "localhostProfile": "palisade-e2e/deny-personality.json", "block": ["personality"]}
    })
}
