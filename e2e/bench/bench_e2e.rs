//! `make bench-e2e`: end-to-end throughput and latency of the operator against the cluster in
//! `KUBECONFIG`. Starts its own operator (`PALISADE_BIN`, default target/debug/palisade) scoped
//! to a fresh namespace, creates N sandboxes, waits until all are Running, prints throughput,
//! created→Ready latency percentiles and the operator's peak RSS, then deletes the namespace.
//! No other operator should watch that namespace (e.g. the shared one of e2e/run.sh).
//!
//! On the simulated (kwok) nodes pods become Running at once, so the figures are the control
//! plane's and the operator's. When the cluster has the e2e real node (`palisade-node`), it then
//! runs `--node-count` sandboxes (20) for real, under gVisor and under runc, and prints the same
//! figures for each: image pull (from the node's registry), sandbox start, NetworkPolicy and
//! readiness included.
//!
//! Claim mode (`--claims`, see `claims.rs`): sandboxes of a pool, a burst and a sustained rate,
//! timed to the millisecond from each create to its own watch.
//!
//! ```text
//! bench-e2e [--count N] [--node-count N] [--concurrency C] [--creators K] [--namespace NS]
//!           [--timeout SECS] [--keep]
//!           [--claims] [--pool-size N] [--burst N] [--claim-rate R] [--claim-seconds S]
//! ```

mod claims;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use palisade::api::{AgentPolicy, AgentSandbox, SandboxPhase};
use palisade_e2e::node;
use palisade_e2e::operator::{self, Operator, Options};
use palisade_e2e::{MANAGER, client, install_crds, restricted_namespace};
use serde_json::json;

struct Args {
    count: usize,
    node_count: usize,
    concurrency: Option<u16>,
    creators: usize,
    namespace: String,
    timeout: Duration,
    keep: bool,
    /// Claim mode only (sandboxes of a pool) instead of the cold runs.
    claims: bool,
    pool_size: i32,
    burst: usize,
    claim_rate: f64,
    claim_seconds: u64,
}

fn usage() -> ! {
    eprintln!(
        "usage: bench-e2e [--count N (500)] [--node-count N (20; 0: no real-node runs)] \
         [--concurrency C (operator default)] [--creators K (16)] \
         [--namespace NS (palisade-bench)] [--timeout SECS (600)] [--keep] \
         [--claims [--pool-size N (300)] [--burst N (300)] [--claim-rate R (45)] [--claim-seconds S (60)]]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        count: 500,
        node_count: 20,
        concurrency: None,
        creators: 16,
        namespace: "palisade-bench".into(),
        timeout: Duration::from_secs(600),
        keep: false,
        claims: false,
        pool_size: 300,
        burst: 300,
        claim_rate: 45.0,
        claim_seconds: 60,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--count" => args.count = value().parse().unwrap_or_else(|_| usage()),
            "--node-count" => args.node_count = value().parse().unwrap_or_else(|_| usage()),
            "--concurrency" => args.concurrency = Some(value().parse().unwrap_or_else(|_| usage())),
            "--creators" => args.creators = value().parse().unwrap_or_else(|_| usage()),
            "--namespace" => args.namespace = value(),
            "--timeout" => {
                args.timeout = Duration::from_secs(value().parse().unwrap_or_else(|_| usage()))
            }
            "--keep" => args.keep = true,
            "--claims" => args.claims = true,
            "--pool-size" => args.pool_size = value().parse().unwrap_or_else(|_| usage()),
            "--burst" => args.burst = value().parse().unwrap_or_else(|_| usage()),
            "--claim-rate" => args.claim_rate = value().parse().unwrap_or_else(|_| usage()),
            "--claim-seconds" => args.claim_seconds = value().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if args.count == 0
        || args.creators == 0
        || args.claim_rate.is_nan()
        || args.claim_rate <= 0.0
        || args.pool_size < 0
    {
        usage();
    }
    args
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(name: &str, mut values: Vec<f64>) {
    values.sort_by(f64::total_cmp);
    println!(
        "{name:<44} p50 {:>7.2} s   p90 {:>7.2} s   p99 {:>7.2} s   max {:>7.2} s   (n={})",
        percentile(&values, 50.0),
        percentile(&values, 90.0),
        percentile(&values, 99.0),
        values.last().copied().unwrap_or(f64::NAN),
        values.len()
    );
}

fn is_running(s: &AgentSandbox) -> bool {
    s.status.as_ref().and_then(|st| st.phase) == Some(SandboxPhase::Running)
}

/// Where the sandboxes of a run go.
#[derive(Clone, Copy, PartialEq)]
enum Target {
    /// kwok's fake nodes.
    Simulated,
    /// The real node, under gVisor (RuntimeClass `gvisor`, handler runsc).
    Gvisor,
    /// The real node, under runc (no RuntimeClass).
    Runc,
    /// Sandboxes of a pool on kwok's fake nodes (claim mode).
    Claims,
}

impl Target {
    fn label(self) -> &'static str {
        match self {
            Target::Simulated => "simulated nodes (kwok)",
            Target::Gvisor => "real node, gVisor",
            Target::Runc => "real node, runc",
            Target::Claims => "claims from a pool, simulated nodes (kwok)",
        }
    }
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let client = client().await;
    install_crds(&client).await;
    if args.claims {
        let ns = format!("{}-claims", args.namespace);
        if !run(&client, &args, Target::Claims, 0, &ns).await {
            std::process::exit(1);
        }
        return;
    }
    let mut ok = run(
        &client,
        &args,
        Target::Simulated,
        args.count,
        &args.namespace,
    )
    .await;
    let node = Api::<Node>::all(client.clone())
        .get_opt(node::NODE_NAME)
        .await
        .ok()
        .flatten()
        .is_some();
    if args.node_count > 0 && node {
        for (target, suffix) in [(Target::Gvisor, "gvisor"), (Target::Runc, "runc")] {
            let ns = format!("{}-{suffix}", args.namespace);
            ok &= run(&client, &args, target, args.node_count, &ns).await;
        }
    } else if args.node_count > 0 {
        println!(
            "\nno real node ({}) in this cluster: no gVisor and runc figures (PALISADE_E2E_NODE=1 make cluster-up)",
            node::NODE_NAME
        );
    }
    if !ok {
        std::process::exit(1);
    }
}

/// One run: `count` sandboxes on `target` in namespace `ns`; false when it failed.
async fn run(client: &Client, args: &Args, target: Target, count: usize, ns: &str) -> bool {
    let ns = ns.to_string();
    let client = client.clone();
    println!("\n== {}: {count} sandboxes", target.label());
    operator::gvisor_runtime_class(&client).await;
    operator::delete_namespace_and_wait(&client, &ns, Duration::from_secs(300)).await;
    let runtime = match target {
        Target::Simulated | Target::Claims => {
            restricted_namespace(&client, &ns).await;
            "gvisor"
        }
        Target::Gvisor => {
            node::namespace(&ns, false).await;
            "gvisor"
        }
        Target::Runc => {
            node::namespace(&ns, true).await;
            "runc"
        }
    };
    let policy = json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "AgentPolicy", "metadata": {"name": "p"},
                        "spec": {"network": {"dns": "none"}, "isolation": {"runtime": runtime}}});
    Api::<AgentPolicy>::namespaced(client.clone(), &ns)
        .patch(
            "p",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(policy),
        )
        .await
        .expect("apply policy");

    let mut op = Operator::start(&Options {
        name: "bench-e2e".into(),
        namespace: Some(ns.clone()),
        lease_namespace: None,
        lease_name: None,
        identity: None,
        concurrency: args.concurrency,
        ..Options::default()
    });
    // Wait for its HTTP endpoint: the CRDs are checked and the controllers are starting.
    let port = op.metrics_port();
    let up = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(op.running(), "the operator exited:\n{}", op.tail(30));
        assert!(
            up.elapsed() < Duration::from_secs(30),
            "the operator did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "bench-e2e: {count} sandboxes in namespace {ns}, operator pid {} (log {}), {} creators",
        op.pid(),
        op.log_path().display(),
        args.creators
    );

    if target == Target::Claims {
        let ok = claims::run(
            &client,
            &ns,
            &claims::ClaimArgs {
                pool_size: args.pool_size,
                burst: args.burst,
                rate: args.claim_rate,
                seconds: args.claim_seconds,
                timeout: args.timeout,
            },
        )
        .await;
        if let Some(kib) = op.peak_rss_kib() {
            println!(
                "operator peak RSS (VmHWM)      {:.1} MiB",
                kib as f64 / 1024.0
            );
        }
        return finish(&client, args, &ns, op, ok).await;
    }
    let sandboxes: Api<AgentSandbox> = Api::namespaced(client.clone(), &ns);
    let t0 = Instant::now();
    let mut creators = Vec::new();
    for k in 0..args.creators {
        let api = sandboxes.clone();
        let step = args.creators;
        creators.push(tokio::spawn(async move {
            let mut created = Vec::new();
            for i in (k..count).step_by(step) {
                let name = format!("b{i:05}");
                let sandbox = match target {
                    Target::Simulated | Target::Claims => operator::small_sandbox(&name, "p"),
                    // The probe waiting for its stop signal, with small requests (the node has
                    // two CPUs).
                    Target::Gvisor | Target::Runc => {
                        let r =
                            json!({"cpu": "20m", "memory": "48Mi", "ephemeral-storage": "64Mi"});
                        json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox",
                            "metadata": {"name": name},
                            "spec": {"policyRef": {"name": "p"}, "image": node::PROBE_IMAGE,
                                "command": ["probe"], "args": ["pause"],
                                "resources": {"requests": r, "limits": r}}})
                    }
                };
                api.patch(
                    &name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(sandbox),
                )
                .await
                .unwrap_or_else(|e| panic!("create sandbox {name}: {e}"));
                created.push((name, t0.elapsed()));
            }
            created
        }));
    }
    let mut created_at: BTreeMap<String, Duration> = BTreeMap::new();
    for c in creators {
        created_at.extend(c.await.expect("creator task"));
    }
    let created_all = t0.elapsed();

    // Poll once a second (cheap next to a watch per sandbox; the client-side latency is thus
    // rounded up to the next second).
    let mut running_at: BTreeMap<String, Duration> = BTreeMap::new();
    let mut last: Vec<AgentSandbox> = Vec::new();
    while running_at.len() < count {
        if t0.elapsed() > args.timeout {
            eprintln!(
                "bench-e2e: timed out after {:?} with {} of {} Running",
                args.timeout,
                running_at.len(),
                count
            );
            break;
        }
        if !op.running() {
            eprintln!("bench-e2e: the operator exited:\n{}", op.tail(30));
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Ok(list) = sandboxes.list(&ListParams::default()).await {
            let now = t0.elapsed();
            for s in list.items.iter().filter(|s| is_running(s)) {
                running_at.entry(s.name_any()).or_insert(now);
            }
            last = list.items;
        }
    }
    let all_running = t0.elapsed();
    let peak_rss = op.peak_rss_kib();
    let done = running_at.len();

    // Server-side latency: creationTimestamp → lastTransitionTime of Ready=True (whole seconds).
    let mut server = Vec::new();
    let (mut first_created, mut last_ready) = (i64::MAX, i64::MIN);
    for s in &last {
        let Some(created) = s.metadata.creation_timestamp.as_ref() else {
            continue;
        };
        first_created = first_created.min(created.0.as_millisecond());
        let ready = s.status.as_ref().and_then(|st| {
            st.conditions
                .iter()
                .find(|c| c.type_ == "Ready" && c.status == "True")
        });
        if let Some(ready) = ready {
            let ms = ready.last_transition_time.0.as_millisecond();
            last_ready = last_ready.max(ms);
            server.push((ms - created.0.as_millisecond()) as f64 / 1000.0);
        }
    }
    let client_side: Vec<f64> = running_at
        .iter()
        .filter_map(|(name, at)| Some(at.saturating_sub(*created_at.get(name)?).as_secs_f64()))
        .collect();

    println!("sandboxes Running              {done} / {count}");
    println!(
        "all created after              {:.2} s ({:.1} creates/s)",
        created_all.as_secs_f64(),
        count as f64 / created_all.as_secs_f64()
    );
    println!(
        "all Running after              {:.2} s (observed, 1 s polls)",
        all_running.as_secs_f64()
    );
    println!(
        "throughput                     {:.1} sandboxes Running/s (observed)",
        done as f64 / all_running.as_secs_f64()
    );
    if last_ready > first_created {
        println!(
            "throughput (server clocks)     {:.1} sandboxes Running/s (first creationTimestamp → last Ready)",
            server.len() as f64 / ((last_ready - first_created) as f64 / 1000.0).max(1.0)
        );
    }
    summary("created→Ready (server timestamps, 1 s res.)", server);
    summary("create returned→Running observed (1 s polls)", client_side);
    match peak_rss {
        Some(kib) => println!(
            "operator peak RSS (VmHWM)      {:.1} MiB",
            kib as f64 / 1024.0
        ),
        None => println!("operator peak RSS (VmHWM)      unavailable (no /proc/<pid>/status)"),
    }

    let ok = done == count;
    finish(&client, args, &ns, op, ok).await
}

/// Polls `check` every 100 ms until it holds (true) or `timeout` passes (false).
pub async fn wait_for_operator<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Deletes the namespace (unless `--keep`) while the operator runs, then stops it.
async fn finish(client: &Client, args: &Args, ns: &str, mut op: Operator, ok: bool) -> bool {
    // The namespace goes while the operator runs: it removes each pod before releasing the
    // finalizer of the NetworkPolicy that isolates it.
    if !args.keep {
        let deleting = Instant::now();
        operator::delete_namespace_and_wait(client, ns, args.timeout).await;
        println!(
            "deleted namespace {ns} in {:.1} s",
            deleting.elapsed().as_secs_f64()
        );
    }
    let status = op.terminate(Duration::from_secs(30)).await;
    let panicked = op.log().contains("panicked");
    println!("operator exit                  {status}");
    if panicked {
        eprintln!(
            "bench-e2e: the operator panicked (log {})",
            op.log_path().display()
        );
    }
    !panicked && ok && status.success()
}
