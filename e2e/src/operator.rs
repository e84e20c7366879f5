//! Operator processes started by a test or the bench itself (rather than the shared operator of
//! e2e/run.sh): the binary of `PALISADE_BIN` (default `target/debug/palisade`), its output
//! captured to a file under `target/e2e/`, killed when its guard is dropped (also on panic).

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::Client;
use kube::api::Api;
use serde_json::json;

/// Name of the operator's leader Lease (controller/src/cli/run_cmd.rs).
pub const LEASE_NAME: &str = "palisade-operator";

/// The operator binary: `PALISADE_BIN`, else `<repo>/target/debug/palisade`. Panics when it
/// does not exist.
pub fn binary() -> PathBuf {
    let path = std::env::var_os("PALISADE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::root().join("target/debug/palisade"));
    assert!(
        path.is_file(),
        "operator binary {} does not exist: `cargo build -p palisade` or set PALISADE_BIN",
        path.display()
    );
    path
}

/// Directory of the operators' logs: `<repo>/target/e2e/operators`.
pub fn log_dir() -> PathBuf {
    let dir = crate::root().join("target/e2e/operators");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// A free TCP port on 127.0.0.1 (bound, then released: good enough for a metrics address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// How to start an operator.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Name of the log file (`<name>.log`) and, when `identity` is unset, nothing else.
    pub name: String,
    /// `--namespace`: the only namespace watched.
    pub namespace: Option<String>,
    /// `--leader-elect --lease-namespace <this>`.
    pub lease_namespace: Option<String>,
    /// `--lease-name` (default: the operator's own).
    pub lease_name: Option<String>,
    /// `POD_NAME`, the Lease holder identity.
    pub identity: Option<String>,
    /// `--concurrency`.
    pub concurrency: Option<u16>,
    /// More arguments of `palisade run`.
    pub args: Vec<String>,
}

/// A running operator process; killed (SIGKILL) and reaped when dropped.
pub struct Operator {
    child: Child,
    name: String,
    log: PathBuf,
    metrics_port: u16,
    exit: Option<ExitStatus>,
}

impl Operator {
    /// Starts `palisade run` with a fresh metrics port, inheriting `KUBECONFIG`.
    pub fn start(opts: &Options) -> Operator {
        let metrics_port = free_port();
        let log = log_dir().join(format!("{}.log", opts.name));
        let out = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let err = out.try_clone().expect("clone log file");
        let mut cmd = Command::new(binary());
        cmd.arg("run")
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{metrics_port}"));
        if let Some(ns) = &opts.namespace {
            cmd.arg("--namespace").arg(ns);
        }
        if let Some(ns) = &opts.lease_namespace {
            cmd.arg("--leader-elect").arg("--lease-namespace").arg(ns);
        }
        if let Some(name) = &opts.lease_name {
            cmd.arg("--lease-name").arg(name);
        }
        // Under the chart's RBAC (e2e/run.sh), operators use its ServiceAccount's credentials
        // while the tests keep the admin's.
        if let Some(kubeconfig) = std::env::var_os("E2E_OPERATOR_KUBECONFIG") {
            cmd.env("KUBECONFIG", kubeconfig);
        }
        if let Some(c) = opts.concurrency {
            cmd.arg("--concurrency").arg(c.to_string());
        }
        cmd.args(&opts.args);
        match &opts.identity {
            Some(id) => cmd.env("POD_NAME", id),
            None => cmd.env_remove("POD_NAME"),
        };
        cmd.env_remove("PALISADE_NAMESPACE")
            .env_remove("PALISADE_LEADER_ELECT")
            .env_remove("PALISADE_LEASE_NAMESPACE")
            .env_remove("PALISADE_LEASE_NAME")
            .env_remove("PALISADE_METRICS_ADDR")
            .env_remove("PALISADE_CONCURRENCY")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary().display()));
        Operator {
            child,
            name: opts.name.clone(),
            log,
            metrics_port,
            exit: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Port of /metrics, /healthz, /readyz.
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    /// The log file (stdout and stderr).
    pub fn log_path(&self) -> &std::path::Path {
        &self.log
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exit = Some(status);
                false
            }
            _ => true,
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        let _ = self.child.kill();
        let status = self.child.wait().expect("wait for the operator");
        self.exit = Some(status);
        status
    }

    /// SIGTERM (a graceful shutdown), then wait up to `timeout` for the exit; SIGKILL after that
    /// and panic.
    pub async fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill -TERM");
        assert!(sent.success(), "kill -TERM {} failed", self.pid());
        let deadline = tokio::time::Instant::now() + timeout;
        while self.running() {
            if tokio::time::Instant::now() >= deadline {
                self.kill();
                panic!(
                    "operator {} did not stop within {timeout:?} of SIGTERM",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.exit.expect("exit status")
    }

    /// Peak resident set size in KiB (`VmHWM` of /proc/<pid>/status), while the process runs.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Panics when the log mentions "panicked".
    pub fn assert_no_panic(&self) {
        let log = self.log();
        let panics: Vec<&str> = log.lines().filter(|l| l.contains("panicked")).collect();
        assert!(
            panics.is_empty(),
            "operator {} panicked (log {}):\n{}",
            self.name,
            self.log.display(),
            panics.join("\n")
        );
    }

    /// The last `n` lines of the log.
    pub fn tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- last lines of operator {} ({}):\n{}\n---",
                self.name,
                self.log.display(),
                self.tail(30)
            );
        }
    }
}

/// Where the operators of the test namespace `test_ns` hold their Lease: (namespace, name).
/// Under the chart's RBAC, Leases may only be written in the release namespace,
/// `E2E_LEASE_NAMESPACE`, so each test gets its own Lease there; otherwise the Lease is the
/// operator's default one, in the test namespace.
///
/// With `E2E_LEASE_NAME` too (the chart's Role lets its ServiceAccount read and renew only the
/// release's Lease), every test uses that one Lease: such tests must not run at once.
pub fn lease_of(test_ns: &str) -> (String, String) {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (var("E2E_LEASE_NAMESPACE"), var("E2E_LEASE_NAME")) {
        (Some(ns), Some(name)) => (ns, name),
        (Some(ns), None) => (ns, format!("{LEASE_NAME}-{test_ns}")),
        _ => (test_ns.to_string(), LEASE_NAME.to_string()),
    }
}

/// Deletes the Lease of `test_ns`'s operators, left over from an earlier run on the same cluster.
pub async fn reset_lease(client: &Client, test_ns: &str) {
    let (ns, name) = lease_of(test_ns);
    match Api::<Lease>::namespaced(client.clone(), &ns)
        .delete(&name, &Default::default())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.is_not_found() => {}
        Err(e) => panic!("delete Lease {ns}/{name}: {e}"),
    }
}

/// The holder identity of the Lease of `test_ns`'s operators, if any.
pub async fn lease_holder(client: &Client, test_ns: &str) -> Option<String> {
    let (namespace, name) = lease_of(test_ns);
    Api::<Lease>::namespaced(client.clone(), &namespace)
        .get_opt(&name)
        .await
        .ok()??
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

/// Applies the RuntimeClass `gvisor` the fake `palisade-gvisor` node serves (as
/// tests/operator.rs does).
pub async fn gvisor_runtime_class(client: &Client) {
    let rc = json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "gvisor"},
                    "handler": "runsc", "scheduling": {"nodeSelector": {"palisade.dev/runtime": "gvisor"}}});
    crate::apply_cluster::<RuntimeClass>(client, "gvisor", rc).await;
}

/// Deletes `name` if it exists and waits until it is gone, so that a test starts from an empty
/// namespace even on a cluster reused between runs.
pub async fn delete_namespace_and_wait(client: &Client, name: &str, timeout: Duration) {
    use k8s_openapi::api::core::v1::Namespace;
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(name).await.expect("get namespace").is_none() {
        return;
    }
    let _ = api.delete(name, &Default::default()).await;
    crate::wait_for(&format!("namespace {name} deleted"), timeout, || {
        let api = api.clone();
        async move { matches!(api.get_opt(name).await, Ok(None)).then_some(()) }
    })
    .await;
}

/// Deletes a namespace without waiting.
pub async fn delete_namespace(client: &Client, name: &str) {
    use k8s_openapi::api::core::v1::Namespace;
    let _ = Api::<Namespace>::all(client.clone())
        .delete(name, &Default::default())
        .await;
}

/// An AgentSandbox of policy `policy` with small requests (50m CPU, 64Mi memory, 1500Mi
/// ephemeral storage), so that hundreds fit on the fake gvisor node (64 CPU, 256Gi, 1Ti); the
/// default (the policy's caps: 2 CPU, 4Gi, 8Gi) fits 32.
pub fn small_sandbox(name: &str, policy: &str) -> serde_json::Value {
    let r = json!({"cpu": "50m", "memory": "64Mi", "ephemeral-storage": "1500Mi"});
    json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox", "metadata": {"name": name},
           "spec": {"policyRef": {"name": policy}, "image": "ghcr.io/palisade-dev/examples/agent:0.1.0",
                    "resources": {"requests": r, "limits": r}}})
}

/// `GET path` on the operator's metrics port: (status code, body), or None when it does not
/// answer.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: operator\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let code = head.split(' ').nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// The sum of every sample of metric `name` whose labels contain `labels` (e.g.
/// `controller="agentsandbox"`), from the operator's /metrics.
pub fn metric(port: u16, name: &str, labels: &str) -> Option<f64> {
    let (code, body) = http_get(port, "/metrics")?;
    (code == 200).then_some(())?;
    Some(
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.split([' ', '{']).next() == Some(name)
                    && (labels.is_empty() || l.contains(labels))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}
