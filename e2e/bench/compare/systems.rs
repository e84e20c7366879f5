//! The two systems `bench-compare` drives: Palisade (its operator, `PALISADE_BIN`, scoped to
//! the run's namespace) and kubernetes-sigs/agent-sandbox v0.5.6 (its controller built by
//! e2e/compare/build.sh, run out of cluster). Their objects, their notion of Ready, their
//! controller processes, and the writes each controller makes per sandbox (for bare mode).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use palisade_e2e::MANAGER;
use palisade_e2e::operator::{self, Operator, Options};
use serde_json::{Value, json};

use crate::measure;

/// The image every sandbox runs (never pulled: the nodes are simulated).
pub const IMAGE: &str = "ghcr.io/palisade-dev/examples/agent:0.1.0";
/// Name of the policy, pool, template and warm pool of a run.
pub const POOL: &str = "bench";
/// Label that selects a bare-mode sandbox's pod.
const BARE_LABEL: &str = "bench.palisade.dev/sandbox";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum System {
    Palisade,
    AgentSandbox,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Palisade => "palisade",
            System::AgentSandbox => "agent-sandbox",
        }
    }

    pub fn parse(s: &str) -> Option<System> {
        match s {
            "palisade" => Some(System::Palisade),
            "agent-sandbox" => Some(System::AgentSandbox),
            _ => None,
        }
    }

    /// The kind the harness creates and watches: a sandbox, or for claims a claim.
    pub fn resource(self, claims: bool) -> ApiResource {
        let (g, v, k, plural) = match (self, claims) {
            (System::Palisade, _) => ("palisade.dev", "v1alpha1", "AgentSandbox", "agentsandboxes"),
            (System::AgentSandbox, false) => ("agents.x-k8s.io", "v1beta1", "Sandbox", "sandboxes"),
            (System::AgentSandbox, true) => (
                "extensions.agents.x-k8s.io",
                "v1beta1",
                "SandboxClaim",
                "sandboxclaims",
            ),
        };
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(g, v, k), plural)
    }

    /// Ready: Palisade's phase Running; agent-sandbox's condition Ready=True (on the Sandbox,
    /// or for claims on the SandboxClaim).
    pub fn ready(self) -> fn(&Value) -> bool {
        match self {
            System::Palisade => |o| o["status"]["phase"] == "Running",
            System::AgentSandbox => |o| measure::condition_true(o, "Ready"),
        }
    }

    /// The object the harness creates for sandbox (or claim) `name`.
    pub fn object(self, name: &str, claims: bool) -> Value {
        match (self, claims) {
            (System::Palisade, false) => operator::small_sandbox(name, POOL),
            (System::Palisade, true) => json!({"apiVersion": "palisade.dev/v1alpha1",
                "kind": "AgentSandbox", "metadata": {"name": name},
                "spec": {"poolRef": {"name": POOL}}}),
            (System::AgentSandbox, false) => json!({"apiVersion": "agents.x-k8s.io/v1beta1",
                "kind": "Sandbox", "metadata": {"name": name},
                "spec": {"podTemplate": {"spec": agent_sandbox_pod_spec()}}}),
            (System::AgentSandbox, true) => {
                json!({"apiVersion": "extensions.agents.x-k8s.io/v1beta1",
                "kind": "SandboxClaim", "metadata": {"name": name},
                "spec": {"warmPoolRef": {"name": POOL}}})
            }
        }
    }

    /// What a run needs before its controller starts: Palisade's policy (and pool), or
    /// agent-sandbox's SandboxTemplate and SandboxWarmPool.
    pub async fn setup(self, client: &Client, ns: &str, pool_size: Option<i32>) {
        let mut objects = Vec::new();
        match self {
            System::Palisade => {
                // The basics only: no gateway, no DNS, the node's default runtime (runc: no
                // RuntimeClass, so pods spread over all three simulated nodes).
                objects.push(
                    json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "AgentPolicy",
                    "metadata": {"name": POOL},
                    "spec": {"network": {"dns": "none"}, "isolation": {"runtime": "runc"}}}),
                );
                if let Some(n) = pool_size {
                    objects.push(json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandboxPool",
                        "metadata": {"name": POOL},
                        "spec": {"replicas": n, "template": {"policyRef": {"name": POOL}, "image": IMAGE,
                            "resources": {"requests": small(), "limits": small()}}}}));
                }
            }
            System::AgentSandbox => {
                if let Some(n) = pool_size {
                    objects.push(json!({"apiVersion": "extensions.agents.x-k8s.io/v1beta1",
                        "kind": "SandboxTemplate", "metadata": {"name": POOL},
                        "spec": {"podTemplate": {"spec": agent_sandbox_pod_spec()}}}));
                    objects.push(json!({"apiVersion": "extensions.agents.x-k8s.io/v1beta1",
                        "kind": "SandboxWarmPool", "metadata": {"name": POOL},
                        "spec": {"replicas": n, "sandboxTemplateRef": {"name": POOL}}}));
                }
            }
        }
        for obj in objects {
            let (group, version) = obj["apiVersion"]
                .as_str()
                .unwrap_or_default()
                .split_once('/')
                .unwrap_or_default();
            let kind = obj["kind"].as_str().unwrap_or_default();
            let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
            Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar)
                .patch(
                    POOL,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&obj),
                )
                .await
                .unwrap_or_else(|e| panic!("apply {kind} {ns}/{POOL}: {e}"));
        }
    }

    /// `status.readyReplicas` of the run's pool (AgentSandboxPool or SandboxWarmPool).
    pub async fn pool_ready(self, client: &Client, ns: &str) -> i64 {
        let ar = match self {
            System::Palisade => ApiResource::from_gvk(&GroupVersionKind::gvk(
                "palisade.dev",
                "v1alpha1",
                "AgentSandboxPool",
            )),
            System::AgentSandbox => ApiResource::from_gvk(&GroupVersionKind::gvk(
                "extensions.agents.x-k8s.io",
                "v1beta1",
                "SandboxWarmPool",
            )),
        };
        Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar)
            .get_opt(POOL)
            .await
            .ok()
            .flatten()
            .and_then(|p| p.data["status"]["readyReplicas"].as_i64())
            .unwrap_or(0)
    }
}

/// Small requests and limits (as e2e's `small_sandbox`), so thousands fit on the fake nodes.
fn small() -> Value {
    json!({"cpu": "50m", "memory": "64Mi", "ephemeral-storage": "1500Mi"})
}

/// The pod of an agent-sandbox Sandbox: one container, the same image, requests and
/// `restricted` security context as Palisade's pods (the namespaces enforce `restricted`).
/// Scheduling: none given, as Palisade's runc pods: the cluster's default node selector
/// (palisade.dev/node=simulated, PodNodeSelector admission) puts both on the kwok nodes.
pub fn agent_sandbox_pod_spec() -> Value {
    json!({
        "automountServiceAccountToken": false,
        "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "agent", "image": IMAGE,
            "resources": {"requests": small(), "limits": small()},
            "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                "capabilities": {"drop": ["ALL"]}}
        }]
    })
}

// --- bare mode: the controllers' writes, issued by the harness --------------------------------

/// The writes `system`'s controller makes for a cold sandbox `name`, in its order, with the
/// wait for the pod to be Ready (kube-scheduler and kwok) before the status write that makes
/// the sandbox Ready. Palisade: ServiceAccount, NetworkPolicy, Pod, one pod patch, the status
/// patch. agent-sandbox: Pod, the status patch. Returns the number of requests made.
pub async fn bare_writes(
    system: System,
    client: &Client,
    ns: &str,
    name: &str,
    pods_ready: &measure::Seen,
    notify: &tokio::sync::Notify,
    timeout: Duration,
) -> Result<u32, String> {
    let pp = PostParams::default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut spec = agent_sandbox_pod_spec();
    let mut requests = 0;
    if system == System::Palisade {
        let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name},
            "automountServiceAccountToken": false}))
        .map_err(|e| e.to_string())?;
        Api::<ServiceAccount>::namespaced(client.clone(), ns)
            .create(&pp, &sa)
            .await
            .map_err(|e| format!("ServiceAccount: {e}"))?;
        let np: NetworkPolicy = serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"podSelector": {"matchLabels": {BARE_LABEL: name}},
                     "policyTypes": ["Ingress", "Egress"]}}))
        .map_err(|e| e.to_string())?;
        Api::<NetworkPolicy>::namespaced(client.clone(), ns)
            .create(&pp, &np)
            .await
            .map_err(|e| format!("NetworkPolicy: {e}"))?;
        spec["serviceAccountName"] = json!(name);
        requests += 2;
    }
    let pod: Pod = serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {BARE_LABEL: name}},
        "spec": spec}),
    )
    .map_err(|e| e.to_string())?;
    pods.create(&pp, &pod)
        .await
        .map_err(|e| format!("Pod: {e}"))?;
    requests += 1;
    if system == System::Palisade {
        pods.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"bench.palisade.dev/observed": "1"}}}),
            ),
        )
        .await
        .map_err(|e| format!("pod patch: {e}"))?;
        requests += 1;
    }
    // The pod Ready (scheduled, then Running and Ready by kwok).
    let deadline = Instant::now() + timeout;
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if pods_ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(name)
        {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("pod {name} not Ready after {timeout:?}"));
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
    }
    let status = match system {
        System::Palisade => json!({"status": {"phase": "Running"}}),
        System::AgentSandbox => {
            let now = jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            json!({"status": {"conditions": [{"type": "Ready", "status": "True",
                "reason": "DependenciesReady", "message": "bare client", "lastTransitionTime": now}]}})
        }
    };
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, &system.resource(false))
        .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .map_err(|e| format!("status patch: {e}"))?;
    Ok(requests + 1)
}

// --- controllers ------------------------------------------------------------------------------

/// Where build.sh puts agent-sandbox: `AGENT_SANDBOX_DIR`, else
/// ~/.cache/palisade/tools/agent-sandbox-v0.5.6.
pub fn agent_sandbox_dir() -> PathBuf {
    std::env::var_os("AGENT_SANDBOX_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/palisade/tools/agent-sandbox-v0.5.6")
        })
}

/// Installs agent-sandbox's four CRDs (conversion None, from build.sh) and waits until they are
/// Established.
pub async fn install_agent_sandbox_crds(client: &Client, dir: &Path) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e} (run e2e/compare/build.sh)", dir.display()))
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 4, "expected 4 CRDs in {}", dir.display());
    for f in &files {
        palisade_e2e::install_crd_file(client, f).await;
    }
}

/// A running controller of either system.
pub enum Controller {
    Palisade(Operator),
    AgentSandbox {
        child: Child,
        log: PathBuf,
        port: u16,
    },
}

/// Flags of agent-sandbox's controller, out of cluster. Client-side rate limit off
/// (`--kube-api-qps=-1`, its default, stated) as Palisade's kube-rs client has none; workers at
/// their defaults (Sandbox 100, SandboxClaim 50, SandboxWarmPool 1, SandboxTemplate 1);
/// webhook, its certificates and leader election off; the extensions controllers (templates,
/// warm pools, claims) on.
pub fn agent_sandbox_args(kubeconfig: &str, port: u16) -> Vec<String> {
    vec![
        format!("--kubeconfig={kubeconfig}"),
        "--enable-webhook=false".into(),
        "--manage-webhook-certs=false".into(),
        "--leader-elect=false".into(),
        format!("--metrics-bind-address=127.0.0.1:{port}"),
        "--health-probe-bind-address=0".into(),
        "--extensions".into(),
        "--kube-api-qps=-1".into(),
    ]
}

impl Controller {
    /// Starts `system`'s controller for namespace `ns` and waits for its metrics endpoint.
    pub async fn start(system: System, ns: &str, tag: &str) -> Controller {
        let mut c = match system {
            System::Palisade => Controller::Palisade(Operator::start(&Options {
                name: format!("compare-palisade-{tag}"),
                namespace: Some(ns.to_string()),
                ..Options::default()
            })),
            System::AgentSandbox => {
                let bin = agent_sandbox_dir().join("agent-sandbox-controller");
                assert!(
                    bin.is_file(),
                    "{} missing: run e2e/compare/build.sh",
                    bin.display()
                );
                let port = operator::free_port();
                let log = operator::log_dir().join(format!("compare-agent-sandbox-{tag}.log"));
                let out = std::fs::File::create(&log).expect("log file");
                let err = out.try_clone().expect("log file");
                let kubeconfig = std::env::var("KUBECONFIG").expect("KUBECONFIG");
                let child = Command::new(&bin)
                    .args(agent_sandbox_args(&kubeconfig, port))
                    .stdin(Stdio::null())
                    .stdout(Stdio::from(out))
                    .stderr(Stdio::from(err))
                    .spawn()
                    .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
                Controller::AgentSandbox { child, log, port }
            }
        };
        let port = c.port();
        let up = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(c.running(), "{} exited:\n{}", system.name(), c.tail());
            assert!(
                up.elapsed() < Duration::from_secs(60),
                "{} did not start",
                system.name()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        c
    }

    fn port(&self) -> u16 {
        match self {
            Controller::Palisade(op) => op.metrics_port(),
            Controller::AgentSandbox { port, .. } => *port,
        }
    }

    pub fn pid(&self) -> u32 {
        match self {
            Controller::Palisade(op) => op.pid(),
            Controller::AgentSandbox { child, .. } => child.id(),
        }
    }

    pub fn running(&mut self) -> bool {
        match self {
            Controller::Palisade(op) => op.running(),
            Controller::AgentSandbox { child, .. } => matches!(child.try_wait(), Ok(None)),
        }
    }

    pub fn log_path(&self) -> PathBuf {
        match self {
            Controller::Palisade(op) => op.log_path().to_path_buf(),
            Controller::AgentSandbox { log, .. } => log.clone(),
        }
    }

    pub fn tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGTERM, then SIGKILL after 30 s.
    pub async fn stop(mut self) {
        if let Controller::Palisade(op) = &mut self {
            op.terminate(Duration::from_secs(30)).await;
            return;
        }
        let pid = self.pid();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let t0 = Instant::now();
        while self.running() && t0.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Controller::AgentSandbox { child, .. } = &mut self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Controller::AgentSandbox { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
