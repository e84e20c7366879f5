//! Claim mode of `bench-e2e`: sandboxes of a pool, against a pool sized for them. A burst of
//! `--burst` sandboxes created at once, then `--claim-rate` per second for `--claim-seconds`,
//! each timed from its own create call returning to its own watch seeing it Running
//! (milliseconds), split by how it started (warm or cold); the pool's refill rate after the
//! burst. On the simulated nodes: the figures are the control plane's and the operator's.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use palisade::api::sandbox::PoolStart;
use palisade::api::{AgentSandbox, AgentSandboxPool, SandboxPhase};
use palisade_e2e::MANAGER;
use serde_json::json;

use super::{percentile, wait_for_operator};

/// What claim mode is asked for.
pub struct ClaimArgs {
    pub pool_size: i32,
    pub burst: usize,
    pub rate: f64,
    pub seconds: u64,
    pub timeout: Duration,
}

/// When each sandbox was first seen Running, and how it started.
type Seen = Arc<Mutex<BTreeMap<String, (Instant, Option<PoolStart>)>>>;

fn watch_running(api: Api<AgentSandbox>) -> Seen {
    let seen: Seen = Arc::default();
    let out = seen.clone();
    tokio::spawn(async move {
        let mut events = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(Ok(s)) = events.next().await {
            let st = s.status.as_ref();
            if st.and_then(|st| st.phase) == Some(SandboxPhase::Running) {
                let start = st.and_then(|st| st.pool.as_ref()).map(|p| p.start);
                let mut m = out.lock().unwrap_or_else(|e| e.into_inner());
                m.entry(s.name_any()).or_insert((Instant::now(), start));
            }
        }
    });
    seen
}

fn ms_summary(name: &str, mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let p99 = percentile(&values, 99.0);
    println!(
        "{name:<40} p50 {:>8.0} ms   p90 {:>8.0} ms   p99 {:>8.0} ms   max {:>8.0} ms   (n={})",
        percentile(&values, 50.0) * 1e3,
        percentile(&values, 90.0) * 1e3,
        p99 * 1e3,
        values.last().copied().unwrap_or(f64::NAN) * 1e3,
        values.len()
    );
    p99
}

async fn ready_replicas(pools: &Api<AgentSandboxPool>) -> i32 {
    pools
        .get_opt("bench")
        .await
        .ok()
        .flatten()
        .and_then(|p| p.status)
        .map_or(0, |s| s.ready_replicas)
}

async fn create(api: &Api<AgentSandbox>, name: &str) {
    let body = json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox",
        "metadata": {"name": name}, "spec": {"poolRef": {"name": "bench"}}});
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .unwrap_or_else(|e| panic!("create sandbox {name}: {e}"));
}

/// Waits until every name in `created` is seen Running; prints the latencies. Returns the
/// percentiles (p90, p99) of all of them, or None on a timeout.
async fn report(
    what: &str,
    created: &BTreeMap<String, Instant>,
    seen: &Seen,
    timeout: Duration,
) -> Option<(f64, f64)> {
    let t0 = Instant::now();
    loop {
        let done = {
            let m = seen.lock().unwrap_or_else(|e| e.into_inner());
            created.keys().filter(|n| m.contains_key(*n)).count()
        };
        if done == created.len() {
            break;
        }
        if t0.elapsed() > timeout {
            eprintln!(
                "bench-e2e: {what}: {done} of {} Running after {timeout:?}",
                created.len()
            );
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let (mut all, mut warm, mut cold) = (Vec::new(), Vec::new(), Vec::new());
    for (name, at) in created {
        let Some((running, start)) = m.get(name) else {
            continue;
        };
        let s = running.saturating_duration_since(*at).as_secs_f64();
        all.push(s);
        match start {
            Some(PoolStart::Warm) => warm.push(s),
            _ => cold.push(s),
        }
    }
    println!("-- {what}: {} warm, {} cold", warm.len(), cold.len());
    ms_summary("created→Running, warm", warm);
    ms_summary("created→Running, cold", cold);
    let mut sorted = all.clone();
    sorted.sort_by(f64::total_cmp);
    let p99 = ms_summary("created→Running, all", all);
    Some((percentile(&sorted, 90.0), p99))
}

/// Runs claim mode in namespace `ns` (a restricted namespace with policy `p`, served by an
/// operator scoped to it). False when it failed.
pub async fn run(client: &Client, ns: &str, a: &ClaimArgs) -> bool {
    let pools: Api<AgentSandboxPool> = Api::namespaced(client.clone(), ns);
    let sandboxes: Api<AgentSandbox> = Api::namespaced(client.clone(), ns);
    let pool = json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandboxPool",
        "metadata": {"name": "bench"},
        "spec": {"replicas": a.pool_size, "template": {"policyRef": {"name": "p"},
            "image": "ghcr.io/palisade-dev/examples/agent:0.1.0",
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}}});
    pools
        .patch(
            "bench",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(pool),
        )
        .await
        .expect("apply pool");
    let filled = Instant::now();
    if !wait_for_operator(a.timeout, || async {
        ready_replicas(&pools).await >= a.pool_size
    })
    .await
    {
        eprintln!("bench-e2e: the pool never had {} ready", a.pool_size);
        return false;
    }
    println!(
        "pool of {} warm sandboxes ready after {:.1} s ({:.1} warm sandboxes/s)",
        a.pool_size,
        filled.elapsed().as_secs_f64(),
        a.pool_size as f64 / filled.elapsed().as_secs_f64()
    );
    let seen = watch_running(sandboxes.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The burst: every create at once (16 at a time).
    let mut created = BTreeMap::new();
    let names: Vec<String> = (0..a.burst).map(|i| format!("burst-{i:04}")).collect();
    let t0 = Instant::now();
    let stamps = futures::stream::iter(names.iter().cloned())
        .map(|n| {
            let api = sandboxes.clone();
            async move {
                create(&api, &n).await;
                (n, Instant::now())
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    created.extend(stamps);
    println!(
        "\nburst: {} sandboxes created in {:.2} s",
        a.burst,
        t0.elapsed().as_secs_f64()
    );
    let burst = report("burst", &created, &seen, a.timeout).await;
    // Refill: how soon the pool is full again.
    let refill = Instant::now();
    let refilled = wait_for_operator(a.timeout, || async {
        ready_replicas(&pools).await >= a.pool_size
    })
    .await;
    let refill_s = refill.elapsed().as_secs_f64();
    if refilled {
        println!(
            "pool full again {refill_s:.1} s after the burst was Running ({:.1} warm sandboxes/s)",
            a.pool_size.min(a.burst as i32) as f64 / refill_s.max(0.001)
        );
    }

    // Sustained: `rate` creates a second.
    let mut created = BTreeMap::new();
    let total = (a.rate * a.seconds as f64).round() as usize;
    let interval = Duration::from_secs_f64(1.0 / a.rate);
    let mut tick = tokio::time::interval(interval);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let t0 = Instant::now();
    for i in 0..total {
        tick.tick().await;
        let (api, tx) = (sandboxes.clone(), tx.clone());
        tokio::spawn(async move {
            let n = format!("steady-{i:05}");
            create(&api, &n).await;
            let _ = tx.send((n, Instant::now()));
        });
    }
    drop(tx);
    while let Some((n, at)) = rx.recv().await {
        created.insert(n, at);
    }
    println!(
        "\nsustained: {total} sandboxes created over {:.1} s ({:.1}/s)",
        t0.elapsed().as_secs_f64(),
        total as f64 / t0.elapsed().as_secs_f64()
    );
    let sustained = report("sustained", &created, &seen, a.timeout).await;
    if let (Some((burst_p90, _)), Some((_, steady_p99))) = (burst, sustained) {
        println!(
            "\ngoals: sustained p99 {:.0} ms (goal < 100 ms), burst p90 {:.0} ms (goal < 500 ms)",
            steady_p99 * 1e3,
            burst_p90 * 1e3
        );
    }
    burst.is_some() && sustained.is_some() && refilled
}
