//! `palisade run`: the operator. Checks the CRDs, then runs the AgentSandbox and AgentPolicy
//! controllers (only while holding the leader Lease, when enabled) until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Args;
use futures::FutureExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::Api;
use tokio_util::sync::CancellationToken;

use crate::api::policy::Runtime;
use crate::ops::leader::{LeaderConfig, default_identity, run_with_leadership};
use crate::ops::metrics::Metrics;
use crate::reconcile::controllers::{self, Settings};
use crate::reconcile::{GatewaySettings, OperatorConfig};
use crate::render::facts::KeyBytes;

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
    /// The egress gateway's Service (in --gateway-namespace): sandboxes reach domain names
    /// through its ClusterIP. Unset: no gateway.
    #[arg(
        long,
        env = "PALISADE_GATEWAY_SERVICE",
        value_name = "NAME",
        requires = "gateway_key_file"
    )]
    pub gateway_service: Option<String>,
    /// File holding the key of the sandboxes' proxy credentials (the gateway reads the same).
    #[arg(long, env = "PALISADE_GATEWAY_KEY_FILE", value_name = "PATH")]
    pub gateway_key_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub facts: FactsArgs,
}

/// The namespace this process runs in (its ServiceAccount's), if it runs in a pod.
fn own_namespace() -> Option<String> {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
}

fn gateway_settings(args: &RunArgs) -> Result<Option<GatewaySettings>, String> {
    let Some(service) = args.gateway_service.clone().filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let Some(path) = &args.gateway_key_file else {
        return Err("--gateway-service needs --gateway-key-file".into());
    };
    let raw = std::fs::read(path).map_err(|e| {
        format!(
            "cannot read the gateway credential key {}: {e}",
            path.display()
        )
    })?;
    // The same checks the gateway makes.
    crate::gateway::credential::CredentialKey::from_bytes(&raw)?;
    let raw = crate::gateway::credential::key_bytes(&raw).to_vec();
    Ok(Some(GatewaySettings {
        placement: args
            .facts
            .gateway_placement(&own_namespace().unwrap_or_else(|| "palisade-system".into())),
        service,
        key: KeyBytes(Arc::new(raw)),
    }))
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

pub(crate) async fn shutdown_signal() {
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

/// The controllers' settings from the command line.
fn settings(args: &RunArgs) -> Result<Settings, String> {
    let mut facts = args.facts.facts();
    facts.seccomp_applied.insert(Runtime::Runc);
    Ok(Settings {
        namespace: args.namespace.clone(),
        concurrency: args.concurrency,
        config: OperatorConfig {
            facts,
            namespace: args.namespace.clone(),
            gateway: gateway_settings(args)?,
        },
        instance: default_identity(),
    })
}

pub async fn run(args: RunArgs) -> Result<(), String> {
    crate::ops::telemetry::init(args.log_json);
    let settings = settings(&args)?;
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
    tracing::info!(
        namespace = args.namespace.as_deref().unwrap_or("(all)"),
        leader_elect = args.leader_elect,
        "palisade operator starting"
    );
    if args.leader_elect {
        let lease_namespace = args
            .lease_namespace
            .clone()
            .or_else(own_namespace)
            .unwrap_or_else(|| "default".into());
        let config = LeaderConfig {
            namespace: lease_namespace.trim().to_string(),
            lease_name: args.lease_name.clone(),
            identity: default_identity(),
            lease_duration: std::time::Duration::from_secs(15),
        };
        // A standby is ready (it serves metrics and waits); a leader is ready once its caches
        // of this term have synced.
        ready.store(true, Ordering::SeqCst);
        let client2 = client.clone();
        let metrics2 = metrics.clone();
        let ready2 = ready.clone();
        run_with_leadership(client.clone(), config, stop.clone(), move |lead| {
            let client = client2.clone();
            let metrics = metrics2.clone();
            let settings = settings.clone();
            let ready = ready2.clone();
            ready.store(false, Ordering::SeqCst);
            async move {
                let synced = ready.clone();
                controllers::run(
                    client,
                    settings,
                    metrics,
                    move || synced.store(true, Ordering::SeqCst),
                    lead,
                )
                .await;
                ready.store(true, Ordering::SeqCst);
            }
        })
        .await
        .map_err(|e| e.to_string())?;
    } else {
        let synced = ready.clone();
        controllers::run(
            client,
            settings,
            metrics,
            move || synced.store(true, Ordering::SeqCst),
            stop.clone(),
        )
        .await;
    }
    stop.cancel();
    if let Ok(Err(e)) = server.await {
        tracing::warn!(error = %e, "metrics server stopped with an error");
    }
    tracing::info!("stopped");
    Ok(())
}
