//! `palisade gateway`: the egress proxy for domain-name egress on any network plugin. Watches
//! sandbox pods, AgentSandboxes and AgentPolicies, and serves CONNECT and plain HTTP on
//! `--listen` until SIGTERM/SIGINT, then lets open tunnels drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::get;
use clap::Args;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::api::{AgentPolicy, AgentSandbox, SANDBOX_LABEL};
use crate::gateway::audit::{AuditSink, Auditor, GatewayMetrics};
use crate::gateway::credential::CredentialKey;
use crate::gateway::denials::{DenialLog, merge};
use crate::gateway::directory::{Directory, RulesCache, build};
use crate::gateway::proxy::{Direct, Gateway, Limits, Timeouts, serve_workers};
use crate::gateway::resolve::DnsResolver;
use crate::ops::health::METRICS_CONTENT_TYPE;
use crate::policy::egress::ClusterRanges;
use crate::policy::net::Cidr;
use crate::reconcile::lenient;

use super::facts_args::parse_cidr;

#[derive(Args, Debug, Clone)]
pub struct GatewayArgs {
    /// Address the proxy listens on (sandboxes' HTTP_PROXY/HTTPS_PROXY point here).
    #[arg(long, env = "PALISADE_GATEWAY_LISTEN", default_value = "0.0.0.0:3128")]
    pub listen: SocketAddr,
    /// Address of /metrics, /healthz and /readyz (ready once pods, sandboxes and policies are
    /// listed).
    #[arg(long, env = "PALISADE_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
    /// File holding the key of the sandboxes' proxy credentials (at least 32 bytes), the same
    /// one the operator reads.
    #[arg(long, env = "PALISADE_GATEWAY_KEY_FILE", value_name = "PATH")]
    pub credential_key_file: std::path::PathBuf,
    /// Serve only sandboxes of this namespace (default: all).
    #[arg(long, env = "PALISADE_NAMESPACE")]
    pub namespace: Option<String>,
    /// DNS server to resolve names with, IP:PORT (default: the system's resolvers). Repeatable.
    #[arg(
        long = "dns-server",
        env = "PALISADE_GATEWAY_DNS_SERVER",
        value_delimiter = ',',
        value_name = "IP:PORT"
    )]
    pub dns_server: Vec<SocketAddr>,
    /// A pod or service CIDR of the cluster: names never resolve into it. Repeatable.
    #[arg(long = "cluster-cidr", env = "PALISADE_CLUSTER_CIDR", value_delimiter = ',', value_name = "CIDR", value_parser = parse_cidr)]
    pub cluster_cidr: Vec<Cidr>,
    /// A range holding the nodes' addresses: names never resolve into it. Repeatable.
    #[arg(long = "node-cidr", env = "PALISADE_NODE_CIDR", value_delimiter = ',', value_name = "CIDR", value_parser = parse_cidr)]
    pub node_cidr: Vec<Cidr>,
    /// Seconds open tunnels get to finish after SIGTERM.
    #[arg(long, env = "PALISADE_GATEWAY_DRAIN_SECONDS", default_value_t = 20)]
    pub drain_seconds: u64,
    /// Connections open at once, in all. A busy tunnel holds 64 KiB of buffers: size the
    /// memory limit to this (4,096: up to 256 MiB, besides the caches).
    #[arg(long, env = "PALISADE_GATEWAY_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Connections open at once from one sandbox pod.
    #[arg(
        long,
        env = "PALISADE_GATEWAY_MAX_CONNECTIONS_PER_SOURCE",
        default_value_t = 256
    )]
    pub max_connections_per_source: usize,
    /// Seconds the gateway reports unready but still accepts after SIGTERM (so that the
    /// Service stops sending it connections first), before it drains.
    #[arg(long, env = "PALISADE_GATEWAY_UNREADY_SECONDS", default_value_t = 5)]
    pub unready_seconds: u64,
    /// Threads serving the proxy, each with its own listener on the address (SO_REUSEPORT)
    /// and a single-threaded runtime. Default: the CPUs available.
    #[arg(long, env = "PALISADE_GATEWAY_WORKERS")]
    pub workers: Option<usize>,
    /// Seconds a tunnel may carry nothing before it is closed.
    #[arg(long, env = "PALISADE_GATEWAY_IDLE_SECONDS", default_value_t = 900)]
    pub idle_seconds: u64,
    /// Log as JSON lines (audit lines are JSON on standard output either way).
    #[arg(long, env = "PALISADE_LOG_JSON", default_value_t = false)]
    pub log_json: bool,
}

fn read_key(path: &std::path::Path) -> Result<CredentialKey, String> {
    let raw = std::fs::read(path)
        .map_err(|e| format!("cannot read the credential key {}: {e}", path.display()))?;
    CredentialKey::from_bytes(&raw)
}

pub async fn run(args: GatewayArgs) -> Result<(), String> {
    crate::ops::telemetry::init(args.log_json);
    let key = read_key(&args.credential_key_file)?;
    let resolver = DnsResolver::new(&args.dns_server)?;
    let client = Client::try_default()
        .await
        .map_err(|e| format!("cannot reach the cluster (in-cluster config or KUBECONFIG): {e}"))?;
    let metrics = GatewayMetrics::new();
    let (tx, rx) = watch::channel(Arc::new(Directory::default()));
    let stop = CancellationToken::new();
    let signal_stop = stop.clone();
    // On SIGTERM the pod first reports unready and keeps accepting for a moment, so that the
    // Service stops sending it connections before it refuses them; then it drains.
    let stopping = CancellationToken::new();
    let signal_stopping = stopping.clone();
    let unready_for = Duration::from_secs(args.unready_seconds);
    tokio::spawn(async move {
        super::run_cmd::shutdown_signal().await;
        signal_stopping.cancel();
        tracing::info!(
            seconds = unready_for.as_secs(),
            "shutting down: unready, still accepting for a moment"
        );
        tokio::time::sleep(unready_for).await;
        tracing::info!("shutting down: refusing new connections, draining tunnels");
        signal_stop.cancel();
    });
    // The directory is kept current until the proxy has drained: tunnels are judged until
    // they end.
    let directory_stop = CancellationToken::new();
    let probes = tokio::spawn(serve_probes(
        args.metrics_addr,
        metrics.clone(),
        rx.clone(),
        stopping,
        directory_stop.clone(),
    ));
    if args.cluster_cidr.is_empty() || args.node_cidr.is_empty() {
        tracing::warn!(
            "the cluster's or the nodes' ranges are not given (--cluster-cidr, --node-cidr): names may resolve to in-cluster or node addresses outside the private ranges (which are refused unless a CIDR rule allows them)"
        );
    }
    let ranges = (args.cluster_cidr.clone(), args.node_cidr.clone());
    let directory = tokio::spawn(keep_directory(
        client.clone(),
        args.namespace.clone(),
        ranges,
        tx,
        directory_stop.clone(),
    ));
    let denials = Arc::new(std::sync::Mutex::new(DenialLog::default()));
    let reporter = tokio::spawn(report_denials(
        client.clone(),
        denials.clone(),
        directory_stop.clone(),
    ));
    let gateway = Arc::new(Gateway::new(
        rx,
        Arc::new(resolver),
        Arc::new(Direct),
        key,
        Auditor {
            sink: AuditSink::Stdout,
            metrics,
            denials: Some(denials),
        },
        Timeouts {
            drain: Duration::from_secs(args.drain_seconds),
            ..Timeouts::default()
        },
        Limits {
            connections: args.max_connections.max(1),
            per_source: args.max_connections_per_source.max(1),
            idle: Duration::from_secs(args.idle_seconds.max(1)),
            ..Limits::default()
        },
    ));
    let workers = args.workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1)
    });
    tracing::info!(listen = %args.listen, workers, namespace = args.namespace.as_deref().unwrap_or("(all)"), "palisade gateway starting");
    let (ready, _bound) = std::sync::mpsc::channel();
    let listen = args.listen;
    let proxy_stop = stop.clone();
    let served = tokio::task::spawn_blocking(move || {
        serve_workers(listen, workers, gateway, proxy_stop, ready)
    })
    .await;
    let failed = match served {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("cannot serve on {listen}: {e}")),
        Err(e) => Some(format!("the proxy stopped: {e}")),
    };
    directory_stop.cancel();
    let _ = directory.await;
    let _ = reporter.await;
    let _ = probes.await;
    if let Some(failed) = failed {
        return Err(failed);
    }
    tracing::info!("stopped");
    Ok(())
}

async fn serve_probes(
    addr: SocketAddr,
    metrics: GatewayMetrics,
    directory: watch::Receiver<Arc<Directory>>,
    stopping: CancellationToken,
    stop: CancellationToken,
) {
    let Ok(listener) = TcpListener::bind(addr).await else {
        tracing::error!(%addr, "cannot listen for probes and metrics");
        return;
    };
    let router = Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = metrics.render();
                async move { ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let synced = directory.borrow().synced;
                let stopping = stopping.is_cancelled();
                async move {
                    if stopping {
                        (StatusCode::SERVICE_UNAVAILABLE, "stopping\n")
                    } else if synced {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "listing pods, sandboxes and policies\n",
                        )
                    }
                }
            }),
        );
    let _ = axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
}

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Keeps the directory current: reflects pods (only Palisade's sandbox pods), sandboxes and
/// policies, and publishes a new directory after each burst of changes. Until all three have
/// listed, the published directory is unsynced and every request is refused.
async fn keep_directory(
    client: Client,
    namespace: Option<String>,
    ranges: (Vec<Cidr>, Vec<Cidr>),
    tx: watch::Sender<Arc<Directory>>,
    stop: CancellationToken,
) {
    let ns = namespace.as_deref();
    let changed = Arc::new(Notify::new());
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (sandboxes, sandbox_writer) = reflector::store::<AgentSandbox>();
    let (policies, policy_writer) = reflector::store::<AgentPolicy>();
    let pod_config = watcher::Config::default().labels(SANDBOX_LABEL);
    // A watch that keeps failing (API server unreachable, access revoked) leaves its cache
    // stale: after WATCH_FAILING_LIMIT of failures without a success, everything is refused.
    let failing_since: Arc<[std::sync::Mutex<Option<std::time::Instant>>; 3]> =
        Arc::new(Default::default());
    // Each stream yields Ok(whether the event can change a decision) or Err (a failed watch).
    let mut pod_seen = Relevance::new(pod_fingerprint);
    let mut sandbox_seen = Relevance::new(sandbox_fingerprint);
    let mut policy_seen = Relevance::new(spec_fingerprint::<AgentPolicy>);
    let streams =
        [
            reflector::reflector(
                pod_writer,
                watcher::watcher(api::<Pod>(&client, ns), pod_config)
                    .default_backoff()
                    .modify(slim_pod),
            )
            .map(move |e| e.map(|e| pod_seen.judge(&e)).map_err(drop))
            .boxed(),
            reflector::reflector(
                sandbox_writer,
                lenient::watch::<AgentSandbox>(client.clone(), ns, watcher::Config::default())
                    .modify(|s| {
                        s.metadata.managed_fields = None;
                        // Of the status, only the policy version the operator enforces.
                        s.status = s.status.take().map(|st| crate::api::AgentSandboxStatus {
                            enforced_policy: st.enforced_policy,
                            ..Default::default()
                        });
                    }),
            )
            .map(move |e| e.map(|e| sandbox_seen.judge(&e)).map_err(drop))
            .boxed(),
            reflector::reflector(
                policy_writer,
                lenient::watch::<AgentPolicy>(client.clone(), ns, watcher::Config::default())
                    .modify(|p| {
                        p.metadata.managed_fields = None;
                        p.status = None;
                    }),
            )
            .map(move |e| e.map(|e| policy_seen.judge(&e)).map_err(drop))
            .boxed(),
        ];
    for (i, stream) in streams.into_iter().enumerate() {
        let changed = changed.clone();
        let stop = stop.clone();
        let failing_since = failing_since.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    next = stream.next() => match next {
                        Some(result) => {
                            if let Ok(mut f) = failing_since[i].lock() {
                                match (result.is_ok(), *f) {
                                    (true, _) => *f = None,
                                    (false, None) => *f = Some(std::time::Instant::now()),
                                    (false, Some(_)) => {}
                                }
                            }
                            // A status write or a kubelet's condition update changes nothing
                            // the directory reads: no rebuild, no tunnel re-checked.
                            if result != Ok(false) {
                                changed.notify_one();
                            }
                        }
                        None => return,
                    },
                }
            }
        });
    }
    let ready = async {
        let _ = pods.wait_until_ready().await;
        let _ = sandboxes.wait_until_ready().await;
        let _ = policies.wait_until_ready().await;
    };
    tokio::select! {
        () = stop.cancelled() => return,
        () = ready => {}
    }
    tracing::info!("pods, sandboxes and policies listed: serving");
    let mut cache = RulesCache::default();
    let mut dirty = true;
    loop {
        let stale = failing_since.iter().any(|f| {
            f.lock()
                .ok()
                .and_then(|f| *f)
                .is_some_and(|since| since.elapsed() > WATCH_FAILING_LIMIT)
        });
        if stale {
            if tx.borrow().synced {
                tracing::error!(
                    "a watch has failed for over a minute: refusing every request until it recovers"
                );
                tx.send_replace(Arc::new(Directory::default()));
            }
            dirty = true;
        } else if dirty || !tx.borrow().synced {
            publish(&pods, &sandboxes, &policies, &ranges, &mut cache, &tx);
            dirty = false;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = changed.notified() => dirty = true,
            // Failing watches are looked at again even without events.
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        // Coalesce a burst of events into one rebuild.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Which watch events can change a decision: the fingerprint of what the directory reads of
/// each object, by UID. An event that leaves it as it was is not relevant; a deletion, a new
/// object and a relist always are.
struct Relevance<K> {
    seen: std::collections::HashMap<String, u64>,
    fingerprint: fn(&K) -> u64,
}

impl<K: Resource> Relevance<K> {
    fn new(fingerprint: fn(&K) -> u64) -> Self {
        Relevance {
            seen: Default::default(),
            fingerprint,
        }
    }

    fn judge(&mut self, event: &watcher::Event<K>) -> bool {
        match event {
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                let uid = o.meta().uid.clone().unwrap_or_default();
                let f = (self.fingerprint)(o);
                self.seen.insert(uid, f) != Some(f)
            }
            watcher::Event::Delete(o) => {
                self.seen
                    .remove(o.meta().uid.as_deref().unwrap_or_default());
                true
            }
            watcher::Event::Init => {
                self.seen.clear();
                true
            }
            watcher::Event::InitDone => true,
        }
    }
}

fn hash_of(value: impl std::hash::Hash) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(value)
}

/// What attribution reads of a (slimmed) pod: its name, labels, owners, deletion, phase and
/// addresses.
fn pod_fingerprint(pod: &Pod) -> u64 {
    let m = &pod.metadata;
    hash_of((
        (
            &m.namespace,
            &m.name,
            &m.labels,
            m.deletion_timestamp.is_some(),
        ),
        serde_json::to_string(&m.owner_references).unwrap_or_default(),
        serde_json::to_string(&pod.status).unwrap_or_default(),
    ))
}

/// What the directory reads of a sandbox or a policy changes its generation (the spec) or
/// starts its deletion.
fn spec_fingerprint<K: Resource>(o: &K) -> u64 {
    let m = o.meta();
    hash_of((
        &m.namespace,
        &m.name,
        m.generation,
        m.deletion_timestamp.is_some(),
    ))
}

/// What the directory reads of a sandbox: its spec (generation), deletion, and the policy
/// version the operator enforces for it.
fn sandbox_fingerprint(s: &AgentSandbox) -> u64 {
    hash_of((
        spec_fingerprint(s),
        s.status
            .as_ref()
            .and_then(|st| st.enforced_policy.as_ref())
            .map(|v| (&v.uid, v.generation)),
    ))
}

/// Keeps of a pod only what attribution reads (name, labels, owners, deletion, phase and
/// addresses): at 10,000 sandbox pods the cache is a few MiB, not a few hundred.
fn slim_pod(pod: &mut Pod) {
    pod.spec = None;
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    if let Some(status) = pod.status.as_mut() {
        *status = k8s_openapi::api::core::v1::PodStatus {
            phase: status.phase.take(),
            pod_ip: status.pod_ip.take(),
            pod_ips: status.pod_ips.take(),
            ..Default::default()
        };
    }
}

/// How long a watch may fail without a success before the gateway refuses everything.
const WATCH_FAILING_LIMIT: Duration = Duration::from_secs(60);

fn publish(
    pods: &Store<Pod>,
    sandboxes: &Store<AgentSandbox>,
    policies: &Store<AgentPolicy>,
    ranges: &(Vec<Cidr>, Vec<Cidr>),
    cache: &mut RulesCache,
    tx: &watch::Sender<Arc<Directory>>,
) {
    let directory = build(
        &pods.state(),
        &sandboxes.state(),
        &policies.state(),
        ClusterRanges {
            pods_and_services: &ranges.0,
            nodes: &ranges.1,
        },
        cache,
    );
    tx.send_replace(Arc::new(directory));
}

/// How often refusals are written to sandboxes' status.
const REPORT_EVERY: Duration = Duration::from_secs(30);

/// Every REPORT_EVERY, adds the refusals counted since to each sandbox's
/// `status.egressDenials` (a merge patch conditional on the resource version read, so
/// replicas add up; a conflict keeps them for the next round) and publishes the events due.
async fn report_denials(
    client: Client,
    log: Arc<std::sync::Mutex<DenialLog>>,
    stop: CancellationToken,
) {
    let recorder = kube::runtime::events::Recorder::new(
        client.clone(),
        kube::runtime::events::Reporter {
            controller: "palisade-gateway".into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    loop {
        let stopping = tokio::select! {
            () = stop.cancelled() => true,
            () = tokio::time::sleep(REPORT_EVERY) => false,
        };
        let (pending, events) = match log.lock() {
            Ok(mut l) => l.take(std::time::Instant::now()),
            Err(_) => return,
        };
        for e in events {
            let reference = k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some(crate::api::API_VERSION.into()),
                kind: Some("AgentSandbox".into()),
                name: Some(e.name.clone()),
                namespace: Some(e.namespace.clone()),
                uid: Some(e.uid.clone()),
                ..Default::default()
            };
            let event = kube::runtime::events::Event {
                type_: kube::runtime::events::EventType::Warning,
                reason: "EgressDenied".into(),
                note: Some(e.note),
                action: "Proxy".into(),
                secondary: None,
            };
            if let Err(err) = recorder.publish(&event, &reference).await {
                tracing::debug!(error = %err, "could not publish an event");
            }
        }
        for (uid, p) in pending {
            let api: Api<AgentSandbox> = Api::namespaced(client.clone(), &p.namespace);
            let current = match api.get_opt(&p.name).await {
                Ok(Some(s)) if s.metadata.uid.as_deref() == Some(uid.as_str()) => s,
                // Gone, or another sandbox of that name: nothing to write, nothing to keep.
                Ok(_) => {
                    if let Ok(mut l) = log.lock() {
                        l.forget(&uid);
                    }
                    continue;
                }
                Err(err) => {
                    tracing::debug!(error = %err, "could not read a sandbox for its egress denials");
                    if let Ok(mut l) = log.lock() {
                        l.restore(uid, p);
                    }
                    continue;
                }
            };
            let merged = merge(
                current
                    .status
                    .as_ref()
                    .and_then(|s| s.egress_denials.as_ref()),
                &p,
            );
            let patch = serde_json::json!({
                "metadata": {"resourceVersion": current.metadata.resource_version},
                "status": {"egressDenials": merged},
            });
            if let Err(err) = api
                .patch_status(
                    &p.name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await
            {
                tracing::debug!(error = %err, "could not write egress denials (kept for the next round)");
                if let Ok(mut l) = log.lock() {
                    l.restore(uid, p);
                }
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(phase: &str, ready: &str) -> Pod {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"namespace": "a", "name": "s1", "uid": "p1", "labels": {"palisade.dev/sandbox": "s1"},
                         "managedFields": [{"manager": "kubelet"}], "annotations": {"x": "y"}},
            "spec": {"containers": [{"name": "agent", "image": "i"}]},
            "status": {"phase": phase, "podIP": "10.0.0.1",
                       "conditions": [{"type": "Ready", "status": ready}]}
        }))
        .unwrap();
        slim_pod(&mut p);
        p
    }

    #[test]
    fn only_what_attribution_reads_is_kept_and_triggers_a_rebuild() {
        let p = pod("Running", "True");
        assert!(p.spec.is_none() && p.metadata.managed_fields.is_none());
        let status = p.status.as_ref().unwrap();
        assert_eq!(status.pod_ip.as_deref(), Some("10.0.0.1"));
        assert!(status.conditions.is_none());

        let mut seen = Relevance::new(pod_fingerprint);
        assert!(seen.judge(&watcher::Event::Apply(pod("Pending", "False"))));
        assert!(seen.judge(&watcher::Event::Apply(pod("Running", "False"))));
        // A condition the kubelet updates: nothing the directory reads.
        assert!(!seen.judge(&watcher::Event::Apply(pod("Running", "True"))));
        let mut ending = pod("Running", "True");
        ending.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
        );
        assert!(seen.judge(&watcher::Event::Apply(ending.clone())));
        assert!(seen.judge(&watcher::Event::Delete(ending)));
        assert!(seen.judge(&watcher::Event::Init));

        let sandbox = |generation: i64| {
            let mut s: AgentSandbox = serde_json::from_value(json!({
                "apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox",
                "metadata": {"namespace": "a", "name": "s1", "uid": "u1", "generation": generation},
                "spec": {"policyRef": {"name": "p"}, "image": "i"}
            }))
            .unwrap();
            s.metadata.resource_version = Some(format!("{generation}-{}", rand_rv()));
            s
        };
        let mut seen = Relevance::new(spec_fingerprint::<AgentSandbox>);
        assert!(seen.judge(&watcher::Event::Apply(sandbox(1))));
        // A status write: a new resource version, the same generation.
        assert!(!seen.judge(&watcher::Event::Apply(sandbox(1))));
        assert!(seen.judge(&watcher::Event::Apply(sandbox(2))));
    }

    fn rand_rv() -> u32 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    }
}
