//! `palisade run`: the operator. Checks the CRDs, then runs the AgentSandbox and AgentPolicy
//! controllers (only while holding the leader Lease, when enabled) until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Args;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::api::policy::Runtime;
use crate::api::{AgentPolicy, AgentSandbox, SandboxPhase};
use crate::ops::leader::{LeaderConfig, default_identity, run_with_leadership};
use crate::ops::metrics::Metrics;
use crate::reconcile::facts::OptionalCrds;
use crate::reconcile::{Context, OperatorConfig, lenient, policy, sandbox};

use super::facts_args::FactsArgs;

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Sandboxes reconciled at once.
    #[arg(long, env = "PALISADE_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "PALISADE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Watch only this namespace (default: all).
    #[arg(long, env = "PALISADE_NAMESPACE")]
    pub namespace: Option<String>,
    /// Hold a coordination.k8s.io Lease and reconcile only while leader.
    #[arg(long, env = "PALISADE_LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,
    /// Namespace of the leader Lease (default: the pod's namespace, else `default`).
    #[arg(long, env = "PALISADE_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Name of the leader Lease. Replicas that share it elect one leader.
    #[arg(long, env = "PALISADE_LEASE_NAME", default_value = "palisade-operator")]
    pub lease_name: String,
    /// Log as JSON lines.
    #[arg(long, env = "PALISADE_LOG_JSON", default_value_t = false)]
    pub log_json: bool,
    #[command(flatten)]
    pub facts: FactsArgs,
}

async fn check_crds(client: &Client) -> Result<(), String> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in ["agentpolicies.palisade.dev", "agentsandboxes.palisade.dev"] {
        match api.get_opt(name).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(format!(
                    "CRD {name} is not installed: kubectl apply -f crds/ (or install the Helm chart) first"
                ));
            }
            Err(e) => return Err(format!("cannot read CRD {name}: {e}")),
        }
    }
    Ok(())
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c().map(|_| ());
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
            }
            Err(_) => ctrl_c.await,
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}

/// Runs both controllers until `stop` is cancelled; in-flight reconciles finish first.
async fn run_controllers(
    client: Client,
    args: &RunArgs,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let ns = args.namespace.as_deref();
    let wc = watcher::Config::default();
    let (policies, policy_writer) = reflector::store();
    let (sandboxes, sandbox_writer) = reflector::store();
    let (runtime_classes, rc_writer) = reflector::store::<RuntimeClass>();
    let (network_policies, np_writer) = reflector::store::<NetworkPolicy>();

    let mut facts = args.facts.facts();
    facts.seccomp_applied.insert(Runtime::Runc);
    let optional_crds = OptionalCrds::default();
    if let Err(e) = optional_crds.refresh(&client, ns).await {
        tracing::warn!(error = %e, "could not check optional CRDs; assuming they are absent");
    }
    let reporter = Reporter {
        controller: "palisade".into(),
        instance: Some(default_identity()),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        config: OperatorConfig { facts },
        policies: policies.clone(),
        sandboxes: sandboxes.clone(),
        runtime_classes: runtime_classes.clone(),
        network_policies: network_policies.clone(),
        optional_crds: optional_crds.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        metrics: metrics.clone(),
    });

    let policy_stream = reflector::reflector(
        policy_writer,
        lenient::watch::<AgentPolicy>(client.clone(), ns, wc.clone()),
    )
    .touched_objects();
    let sandbox_stream = reflector::reflector(
        sandbox_writer,
        lenient::watch::<AgentSandbox>(client.clone(), ns, wc.clone()),
    )
    .touched_objects();
    let rc_stream = reflector::reflector(
        rc_writer,
        watcher::watcher(Api::<RuntimeClass>::all(client.clone()), wc.clone()).default_backoff(),
    )
    .touched_objects();
    let np_stream = reflector::reflector(
        np_writer,
        watcher::watcher(api::<NetworkPolicy>(&client, ns), wc.clone()).default_backoff(),
    )
    .touched_objects();
    let crd_stream = watcher::watcher(
        Api::<CustomResourceDefinition>::all(client.clone()),
        wc.clone(),
    )
    .default_backoff()
    .touched_objects();

    // Re-queued: the sandboxes of a changed policy; on a RuntimeClass change, the blocked ones
    // (it may have appeared) and those running on that class (it may be gone or its handler
    // changed); all of them when an optional CRD comes or goes; every sandbox of a namespace
    // whose NetworkPolicies changed.
    let ctx_p = ctx.clone();
    let ctx_rc = ctx.clone();
    let ctx_np = ctx.clone();
    let (crd_trigger_tx, crd_trigger_rx) = futures::channel::mpsc::unbounded::<()>();
    let affected_by_class =
        move |ctx: &Arc<Context>, class: &str| -> Vec<ObjectRef<AgentSandbox>> {
            ctx.sandboxes
                .state()
                .iter()
                .filter(|s| {
                    let st = s.status.as_ref();
                    st.and_then(|st| st.phase) == Some(SandboxPhase::Blocked)
                        || st.and_then(|st| st.runtime_class_name.as_deref()) == Some(class)
                })
                .map(|s| ObjectRef::from_obj(&**s))
                .collect()
        };
    let crd_client = client.clone();
    let crds = optional_crds.clone();
    let watched = args.namespace.clone();
    let crd_watch = crd_stream.for_each(move |crd| {
        let crds = crds.clone();
        let client = crd_client.clone();
        let tx = crd_trigger_tx.clone();
        let watched = watched.clone();
        async move {
            if crd.is_ok()
                && crds
                    .refresh(&client, watched.as_deref())
                    .await
                    .unwrap_or(false)
            {
                let _ = tx.unbounded_send(());
            }
        }
    });
    let sandbox_controller = Controller::for_stream(sandbox_stream, sandboxes.clone())
        .owns(api::<Pod>(&client, ns), wc.clone())
        .owns(api::<NetworkPolicy>(&client, ns), wc.clone())
        .owns(
            api::<k8s_openapi::api::core::v1::ServiceAccount>(&client, ns),
            wc.clone(),
        )
        .owns(
            api::<k8s_openapi::api::core::v1::Service>(&client, ns),
            wc.clone(),
        )
        .owns(
            api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>(&client, ns),
            wc.clone(),
        )
        .watches_stream(policy_stream, move |p: AgentPolicy| {
            policy::sandboxes_of(&ctx_p, &ObjectRef::from_obj(&p))
        })
        .watches_stream(rc_stream, move |rc: RuntimeClass| {
            affected_by_class(&ctx_rc, &rc.name_any())
        })
        .watches_stream(np_stream, move |np: NetworkPolicy| {
            sandbox::affected_by_network_policy(&ctx_np, &np)
        })
        .reconcile_all_on(crd_trigger_rx)
        .with_config(kube::runtime::controller::Config::default().concurrency(args.concurrency))
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(sandbox::reconcile, sandbox::error_policy, ctx.clone())
        .for_each(|_| async {});
    // The policy controller keeps its own store, and counts sandboxes as they come and go.
    let (own_policies, own_policy_writer) = reflector::store::<AgentPolicy>();
    let own_policy_stream = reflector::reflector(
        own_policy_writer,
        lenient::watch::<AgentPolicy>(client.clone(), ns, wc.clone()),
    )
    .touched_objects();
    let sandbox_to_policy =
        lenient::watch::<AgentSandbox>(client.clone(), ns, wc.clone()).touched_objects();
    // Isolation NetworkPolicies being deleted are released once their pod is gone.
    let isolation_controller = Controller::new(
        api::<NetworkPolicy>(&client, ns),
        wc.clone().labels(&format!(
            "{}={}",
            crate::api::MANAGED_BY_LABEL,
            crate::api::MANAGER
        )),
    )
    .graceful_shutdown_on(stop.clone().cancelled_owned())
    .run(
        crate::reconcile::isolation::reconcile,
        crate::reconcile::isolation::error_policy,
        ctx.clone(),
    )
    .for_each(|_| async {});
    let policy_controller = Controller::for_stream(own_policy_stream, own_policies)
        .watches_stream(sandbox_to_policy, |s: AgentSandbox| {
            s.namespace()
                .map(|ns| ObjectRef::<AgentPolicy>::new(&s.spec.policy_ref.name).within(&ns))
        })
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(policy::reconcile, policy::error_policy, ctx.clone())
        .for_each(|_| async {});
    let phase_gauge = {
        let ctx = ctx.clone();
        let stop = stop.clone();
        async move {
            while !stop.is_cancelled() {
                let mut counts = std::collections::BTreeMap::new();
                for s in ctx.sandboxes.state() {
                    let phase = s
                        .status
                        .as_ref()
                        .and_then(|st| st.phase)
                        .unwrap_or_default();
                    *counts.entry(format!("{phase:?}")).or_insert(0) += 1;
                }
                ctx.metrics.set_phase_counts(&counts);
                tokio::select! { _ = stop.cancelled() => {}, _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {} }
            }
        }
    };
    metrics.leader.set(1);
    tokio::select! {
        _ = async { tokio::join!(sandbox_controller, policy_controller, isolation_controller) } => {}
        _ = async { tokio::join!(crd_watch, phase_gauge) } => {}
        _ = stop.cancelled() => {}
    }
    // A replica that stopped leading no longer speaks for the sandboxes: its census goes to zero
    // so that dashboards summing over replicas count each sandbox once.
    metrics.leader.set(0);
    metrics.set_phase_counts(&std::collections::BTreeMap::new());
}

pub async fn run(args: RunArgs) -> Result<(), String> {
    crate::ops::telemetry::init(args.log_json);
    let client = Client::try_default()
        .await
        .map_err(|e| format!("cannot reach the cluster (in-cluster config or KUBECONFIG): {e}"))?;
    check_crds(&client).await?;
    let metrics = Metrics::new();
    let ready = Arc::new(AtomicBool::new(false));
    let stop = CancellationToken::new();
    let server = tokio::spawn(crate::ops::health::serve(
        args.metrics_addr,
        metrics.clone(),
        ready.clone(),
        stop.clone().cancelled_owned(),
    ));
    let signal_stop = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight reconciles");
        signal_stop.cancel();
    });
    ready.store(true, Ordering::SeqCst);
    tracing::info!(
        namespace = args.namespace.as_deref().unwrap_or("(all)"),
        leader_elect = args.leader_elect,
        "palisade operator starting"
    );
    if args.leader_elect {
        let lease_namespace = args
            .lease_namespace
            .clone()
            .or_else(|| {
                std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                    .ok()
            })
            .unwrap_or_else(|| "default".into());
        let config = LeaderConfig {
            namespace: lease_namespace.trim().to_string(),
            lease_name: args.lease_name.clone(),
            identity: default_identity(),
            lease_duration: std::time::Duration::from_secs(15),
        };
        let shared = Arc::new(args.clone());
        let client2 = client.clone();
        let metrics2 = metrics.clone();
        run_with_leadership(client.clone(), config, stop.clone(), move |lead| {
            let client = client2.clone();
            let metrics = metrics2.clone();
            let args = shared.clone();
            async move { run_controllers(client, &args, metrics, lead).await }
        })
        .await
        .map_err(|e| e.to_string())?;
    } else {
        run_controllers(client, &args, metrics, stop.clone()).await;
    }
    stop.cancel();
    if let Ok(Err(e)) = server.await {
        tracing::warn!(error = %e, "metrics server stopped with an error");
    }
    tracing::info!("stopped");
    Ok(())
}
