//! `make bench-compare`: Palisade beside kubernetes-sigs/agent-sandbox v0.5.6 on the cluster in
//! `KUBECONFIG` (the local control plane with kwok's simulated nodes), driven by one harness
//! that does the same work for each system in turn. See docs/performance.md.
//!
//! Cases: cold sandboxes, for each N of `--counts`, created as a burst (`--creators` concurrent
//! creators) and at `--rate` per second; warm claims from a pool of `--pool-size`, a burst of
//! `--claim-burst` and `--claim-count` at `--rate`. Each sandbox (claim) is timed from its own
//! create call to the watch event that shows it Ready (Palisade: phase Running; agent-sandbox:
//! condition Ready=True on the Sandbox or SandboxClaim). Bare mode (cold cases): no
//! controller; the harness makes each controller's writes itself, the ceiling the API server
//! allows. The systems alternate, each case `--repeats` times; medians and min–max.
//!
//! Output: a Markdown table (stdout and `<out>/compare.md`) and the raw runs
//! (`<out>/compare.json`, which e2e/compare/plot.py draws into `<out>/compare.png`).
//!
//! ```text
//! bench-compare [--counts 100,500,2000] [--rate 45] [--creators 16] [--repeats 3]
//!               [--pool-size 300] [--claim-burst 300] [--claim-count 300] [--no-claims]
//!               [--no-cold] [--no-bare] [--no-rate] [--rest-seconds S (0)]
//!               [--systems palisade,agent-sandbox] [--timeout SECS (600)] [--out DIR (target/bench)]
//! ```
//!
//! Scale (`--rest-seconds S`): after the largest cold burst is Ready, every run (controller or
//! bare) waits S seconds and counts the API server's requests meanwhile (at rest: the
//! controller's minus what the cluster does anyway, the bare run's); every run records how long
//! deleting its namespace takes (Palisade's NetworkPolicy finalizer against the bare run's
//! same objects without one); the report gives CPU per sandbox for each N (linear when flat).
//!
//! ```text
//! make bench-scale    # --counts 1000,10000 --no-rate --no-claims --repeats 1 --rest-seconds 60
//! ```

mod measure;
mod systems;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use kube::{Client, ResourceExt};
use palisade_e2e::operator;
use palisade_e2e::{client, install_crds, restricted_namespace};
use serde_json::{Value, json};

use measure::{median, percentile, spread};
use systems::{Controller, System};

struct Args {
    counts: Vec<usize>,
    rate: f64,
    creators: usize,
    repeats: usize,
    pool_size: i32,
    claim_burst: usize,
    claim_count: usize,
    claims: bool,
    cold: bool,
    rate_cases: bool,
    bare: bool,
    rest_seconds: u64,
    systems: Vec<System>,
    timeout: Duration,
    out: std::path::PathBuf,
}

fn usage() -> ! {
    eprintln!(
        "usage: bench-compare [--counts 100,500,2000] [--rate 45] [--creators 16] [--repeats 3] \
         [--pool-size 300] [--claim-burst 300] [--claim-count 300] [--no-claims] [--no-cold] [--no-bare] \
         [--no-rate] [--rest-seconds S (0)] [--systems palisade,agent-sandbox] [--timeout SECS (600)] \
         [--out DIR (target/bench)]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        counts: vec![100, 500, 2000],
        rate: 45.0,
        creators: 16,
        repeats: 3,
        pool_size: 300,
        claim_burst: 300,
        claim_count: 300,
        claims: true,
        cold: true,
        rate_cases: true,
        bare: true,
        rest_seconds: 0,
        systems: vec![System::Palisade, System::AgentSandbox],
        timeout: Duration::from_secs(600),
        out: palisade_e2e::root().join("target/bench"),
    };
    let mut it = std::env::args().skip(1);
    fn num<T: std::str::FromStr>(s: String) -> T {
        s.parse().unwrap_or_else(|_| usage())
    }
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--counts" => a.counts = value().split(',').map(|s| num(s.to_string())).collect(),
            "--rate" => a.rate = num(value()),
            "--creators" => a.creators = num(value()),
            "--repeats" => a.repeats = num(value()),
            "--pool-size" => a.pool_size = num(value()),
            "--claim-burst" => a.claim_burst = num(value()),
            "--claim-count" => a.claim_count = num(value()),
            "--no-claims" => a.claims = false,
            "--no-cold" => a.cold = false,
            "--no-bare" => a.bare = false,
            "--no-rate" => a.rate_cases = false,
            "--rest-seconds" => a.rest_seconds = num(value()),
            "--systems" => {
                a.systems = value()
                    .split(',')
                    .map(|s| System::parse(s).unwrap_or_else(|| usage()))
                    .collect()
            }
            "--timeout" => a.timeout = Duration::from_secs(num(value())),
            "--out" => a.out = value().into(),
            _ => usage(),
        }
    }
    if a.counts.contains(&0)
        || a.creators == 0
        || a.repeats == 0
        || a.rate.is_nan()
        || a.rate <= 0.0
        || a.pool_size <= 0
        || a.systems.is_empty()
    {
        usage();
    }
    a
}

/// How the sandboxes of a run are created.
#[derive(Clone, Copy, PartialEq)]
enum Case {
    /// N cold sandboxes, as fast as `--creators` concurrent creators go.
    ColdBurst(usize),
    /// N cold sandboxes at `--rate` per second.
    ColdRate(usize),
    /// N claims of warm sandboxes at once (`--creators` concurrent creators).
    ClaimBurst(usize),
    /// N claims at `--rate` per second.
    ClaimRate(usize),
}

impl Case {
    fn n(self) -> usize {
        match self {
            Case::ColdBurst(n) | Case::ColdRate(n) | Case::ClaimBurst(n) | Case::ClaimRate(n) => n,
        }
    }
    fn claims(self) -> bool {
        matches!(self, Case::ClaimBurst(_) | Case::ClaimRate(_))
    }
    fn burst(self) -> bool {
        matches!(self, Case::ColdBurst(_) | Case::ClaimBurst(_))
    }
    fn label(self, rate: f64) -> String {
        match self {
            Case::ColdBurst(n) => format!("cold, {n} burst"),
            Case::ColdRate(n) => format!("cold, {n} at {rate}/s"),
            Case::ClaimBurst(n) => format!("warm claims, {n} burst"),
            Case::ClaimRate(n) => format!("warm claims, {n} at {rate}/s"),
        }
    }
    fn tag(self) -> String {
        match self {
            Case::ColdBurst(n) => format!("cb{n}"),
            Case::ColdRate(n) => format!("cr{n}"),
            Case::ClaimBurst(n) => format!("wb{n}"),
            Case::ClaimRate(n) => format!("wr{n}"),
        }
    }
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let client = client().await;
    install_crds(&client).await;
    systems::install_agent_sandbox_crds(
        &client,
        &systems::agent_sandbox_dir().join("crds-conversion-none"),
    )
    .await;
    std::fs::create_dir_all(&args.out).expect("output directory");

    let mut cases = Vec::new();
    for &n in args.counts.iter().filter(|_| args.cold) {
        cases.push(Case::ColdBurst(n));
        if args.rate_cases {
            cases.push(Case::ColdRate(n));
        }
    }
    if args.claims {
        cases.push(Case::ClaimBurst(args.claim_burst));
        cases.push(Case::ClaimRate(args.claim_count));
    }
    println!(
        "bench-compare: {} cases x {} systems x {} repeats{}; logs in {}",
        cases.len(),
        args.systems.len(),
        args.repeats,
        if args.bare {
            " (+ bare ceilings of the cold cases)"
        } else {
            ""
        },
        operator::log_dir().display()
    );

    let mut runs: Vec<Value> = Vec::new();
    let mut failed = false;
    for &case in &cases {
        for rep in 0..args.repeats {
            // Alternate which system goes first.
            let mut order = args.systems.clone();
            if rep % 2 == 1 {
                order.reverse();
            }
            let mut modes: Vec<(System, bool)> = order.iter().map(|&s| (s, false)).collect();
            if args.bare && !case.claims() {
                modes.extend(order.iter().map(|&s| (s, true)));
            }
            for (system, bare) in modes {
                let r = run(&client, &args, case, system, bare, rep).await;
                failed |= r["ready"].as_u64() != Some(case.n() as u64);
                runs.push(r);
                // Write as we go: a failure later keeps what was measured.
                write_json(&args, &runs);
            }
        }
    }

    let md = report(&args, &cases, &runs);
    println!("\n{md}");
    std::fs::write(args.out.join("compare.md"), &md).expect("write compare.md");
    write_json(&args, &runs);
    println!(
        "wrote {0}/compare.md and {0}/compare.json",
        args.out.display()
    );
    if failed {
        eprintln!("bench-compare: some runs did not reach Ready for every sandbox");
        std::process::exit(1);
    }
}

fn write_json(args: &Args, runs: &[Value]) {
    let doc = json!({
        "config": {"counts": args.counts, "rate": args.rate, "creators": args.creators,
                   "repeats": args.repeats, "pool_size": args.pool_size,
                   "claim_burst": args.claim_burst, "claim_count": args.claim_count,
                   "agent_sandbox": "v0.5.6",
                   "agent_sandbox_args": systems::agent_sandbox_args("<kubeconfig>", 0)},
        "runs": runs,
    });
    let path = args.out.join("compare.json");
    std::fs::write(&path, serde_json::to_string_pretty(&doc).expect("json"))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// One run: `case` for `system` (its controller, or `bare`: the harness's own writes) in a
/// fresh namespace. Returns its figures as JSON.
async fn run(
    client: &Client,
    args: &Args,
    case: Case,
    system: System,
    bare: bool,
    rep: usize,
) -> Value {
    let n = case.n();
    let mode = if bare { "bare" } else { "controller" };
    let ns = format!(
        "cmp-{}-{}-{}{rep}",
        if system == System::Palisade {
            "p"
        } else {
            "as"
        },
        case.tag(),
        if bare { "b" } else { "" }
    );
    println!(
        "\n== {} | {} | {mode} | repeat {} (namespace {ns})",
        case.label(args.rate),
        system.name(),
        rep + 1
    );
    operator::delete_namespace_and_wait(client, &ns, args.timeout).await;
    restricted_namespace(client, &ns).await;
    let pool = case.claims().then_some(args.pool_size);
    let largest = args.counts.iter().max().copied();
    let rest = (case == Case::ColdBurst(largest.unwrap_or(0)) && args.rest_seconds > 0)
        .then(|| Duration::from_secs(args.rest_seconds));
    system.setup(client, &ns, pool).await;

    let mut result = json!({"case": case.label(args.rate), "tag": case.tag(), "n": n,
        "system": system.name(), "mode": mode, "repeat": rep + 1, "ready": 0});
    let mut controller = None;
    if !bare {
        let c = Controller::start(system, &ns, &format!("{}-{rep}", case.tag())).await;
        println!(
            "controller pid {} (log {})",
            c.pid(),
            c.log_path().display()
        );
        // Its informers sync (same wait for both).
        tokio::time::sleep(Duration::from_secs(2)).await;
        controller = Some(c);
    }
    if let Some(size) = pool {
        let t0 = Instant::now();
        while system.pool_ready(client, &ns).await < i64::from(size) {
            if t0.elapsed() > args.timeout {
                eprintln!("bench-compare: the pool never had {size} ready");
                return finish(client, args, &ns, controller, result).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let s = t0.elapsed().as_secs_f64();
        println!("pool of {size} ready after {s:.1} s");
        result["pool_fill_s"] = json!(s);
    }

    let ar: ApiResource = system.resource(case.claims());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let seen = measure::watch_ready(api.clone(), system.ready()).await;
    // Bare mode: a watch of the pods (Ready) and a wake-up for the writers waiting on them.
    let pods_notify = Arc::new(tokio::sync::Notify::new());
    let pods_ready = if bare {
        let pods: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &ns, &ApiResource::erase::<Pod>(&()));
        let seen = measure::watch_ready(pods, |o| measure::condition_true(o, "Ready")).await;
        let (seen2, notify) = (seen.clone(), pods_notify.clone());
        // Wake the writers whenever the set of Ready pods grows.
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                let len = seen2.lock().unwrap_or_else(|e| e.into_inner()).len();
                if len != last {
                    last = len;
                    notify.notify_waiters();
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        Some(seen)
    } else {
        None
    };

    let pid = controller.as_ref().map(Controller::pid);
    let cpu0 = pid.and_then(measure::cpu_seconds);
    let api0 = measure::apiserver_requests(client).await;

    // Create: a burst (`creators` at a time) or `rate` per second; each stamped when its own
    // create call starts.
    let names: Vec<String> = (0..n).map(|i| format!("s{i:05}")).collect();
    let writers = Arc::new(tokio::sync::Semaphore::new(100));
    let (bare_tx, mut bare_rx) = tokio::sync::mpsc::unbounded_channel::<Result<u32, String>>();
    let create = |name: String| {
        let (api, client, ns) = (api.clone(), client.clone(), ns.clone());
        let (pods_ready, notify, writers, bare_tx) = (
            pods_ready.clone(),
            pods_notify.clone(),
            writers.clone(),
            bare_tx.clone(),
        );
        let body = system.object(&name, case.claims());
        let timeout = args.timeout;
        async move {
            let obj: DynamicObject = serde_json::from_value(body).expect("object");
            let sent = Instant::now();
            let r = api.create(&PostParams::default(), &obj).await;
            if let Err(e) = &r {
                eprintln!("bench-compare: create {name}: {e}");
            }
            if let (Some(pods_ready), true) = (pods_ready, r.is_ok()) {
                let name = name.clone();
                tokio::spawn(async move {
                    let _permit = writers.acquire().await;
                    let r = systems::bare_writes(
                        system,
                        &client,
                        &ns,
                        &name,
                        &pods_ready,
                        &notify,
                        timeout,
                    )
                    .await;
                    let _ = bare_tx.send(r);
                });
            }
            (name, sent, r.is_ok())
        }
    };
    let t0 = Instant::now();
    let stamps: Vec<(String, Instant, bool)> = if case.burst() {
        futures::stream::iter(names.iter().cloned())
            .map(create)
            .buffer_unordered(args.creators)
            .collect()
            .await
    } else {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
        let mut tasks = Vec::new();
        for name in names.iter().cloned() {
            tick.tick().await;
            tasks.push(tokio::spawn(create(name)));
        }
        futures::future::join_all(tasks)
            .await
            .into_iter()
            .map(|r| r.expect("create task"))
            .collect()
    };
    drop(bare_tx);
    let created_s = t0.elapsed().as_secs_f64();
    let sent: HashMap<String, Instant> = stamps
        .iter()
        .filter(|s| s.2)
        .map(|(n, at, _)| (n.clone(), *at))
        .collect();
    println!(
        "{} of {n} created in {created_s:.2} s ({:.1}/s)",
        sent.len(),
        sent.len() as f64 / created_s
    );

    // Wait until every one is Ready.
    let mut alive = true;
    loop {
        let done = {
            let m = seen.lock().unwrap_or_else(|e| e.into_inner());
            sent.keys().filter(|k| m.contains_key(*k)).count()
        };
        if done == sent.len() {
            break;
        }
        if let Some(c) = controller.as_mut()
            && !c.running()
        {
            eprintln!("bench-compare: {} exited:\n{}", system.name(), c.tail());
            alive = false;
            break;
        }
        if t0.elapsed() > args.timeout {
            eprintln!(
                "bench-compare: {done} of {} Ready after {:?}",
                sent.len(),
                args.timeout
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu1 = pid.and_then(measure::cpu_seconds);
    let rss = pid.and_then(measure::peak_rss_mib);
    let api1 = measure::apiserver_requests(client).await;
    if case.claims() && system == System::Palisade {
        // How each claim started (agent-sandbox's claims do not say).
        if let Ok(list) = api.list(&Default::default()).await {
            // The pool's own members live in the namespace too: only the run's claims.
            let warm = list
                .items
                .iter()
                .filter(|o| sent.contains_key(&o.name_any()))
                .filter(|o| o.data["status"]["pool"]["start"] == "Warm")
                .count();
            println!("{warm} of {} claims took a warm sandbox", sent.len());
            result["warm"] = json!(warm);
        }
    }
    let mut bare_errors = 0;
    while let Ok(r) = bare_rx.try_recv() {
        if let Err(e) = r {
            if bare_errors == 0 {
                eprintln!("bench-compare: bare write: {e}");
            }
            bare_errors += 1;
        }
    }

    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut lat: Vec<f64> = sent
        .iter()
        .filter_map(|(k, at)| Some(seen.get(k)?.saturating_duration_since(*at).as_secs_f64() * 1e3))
        .collect();
    lat.sort_by(f64::total_cmp);
    let first = sent.values().min().copied();
    let last = sent.keys().filter_map(|k| seen.get(k)).max().copied();
    let wall = match (first, last) {
        (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
        _ => f64::NAN,
    };
    let ready = lat.len();
    result["ready"] = json!(ready);
    result["created_s"] = json!(created_s);
    result["wall_s"] = json!(wall);
    result["throughput"] = json!(ready as f64 / wall);
    result["p50_ms"] = json!(percentile(&lat, 50.0));
    result["p90_ms"] = json!(percentile(&lat, 90.0));
    result["p99_ms"] = json!(percentile(&lat, 99.0));
    result["max_ms"] = json!(lat.last().copied().unwrap_or(f64::NAN));
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        result["cpu_s"] = json!(b - a);
    }
    if let Some(r) = rss {
        result["peak_rss_mib"] = json!(r);
    }
    if let (Some(a), Some(b)) = (&api0, &api1) {
        // Minus the harness's creates (the rest: the controller's, or in bare mode the
        // harness's stand-in writes, plus kube-scheduler's and kwok's for each pod).
        result["api_requests_per_sandbox"] =
            json!((b.total() - a.total() - sent.len() as f64) / n as f64);
        // The API server's time, all clients, per sandbox; and the breakdown by verb and
        // resource (count and server milliseconds per sandbox), the evidence of where it went.
        result["api_server_ms_per_sandbox"] = json!((b.seconds() - a.seconds()) * 1e3 / n as f64);
        let by: Vec<Value> = b
            .since(a)
            .into_iter()
            .map(|(k, count, secs)| {
                json!({"request": k, "per_sandbox": count / n as f64,
                    "server_ms_per_sandbox": secs * 1e3 / n as f64})
            })
            .collect();
        for e in by.iter().take(8) {
            println!(
                "  {:<40} {:>6.2}/sandbox {:>7.2} ms/sandbox",
                e["request"].as_str().unwrap_or(""),
                e["per_sandbox"].as_f64().unwrap_or(0.0),
                e["server_ms_per_sandbox"].as_f64().unwrap_or(0.0)
            );
        }
        result["api_requests"] = json!(by);
    }
    if bare_errors > 0 {
        result["bare_errors"] = json!(bare_errors);
    }
    result["latencies_ms"] = json!(lat);
    println!(
        "{ready}/{n} Ready; throughput {:.1}/s; p50 {:.0} ms p90 {:.0} ms p99 {:.0} ms; cpu {} s; peak RSS {} MiB; API requests/sandbox {} ({} server ms)",
        ready as f64 / wall,
        percentile(&lat, 50.0),
        percentile(&lat, 90.0),
        percentile(&lat, 99.0),
        result["cpu_s"]
            .as_f64()
            .map_or("-".into(), |v| format!("{v:.2}")),
        result["peak_rss_mib"]
            .as_f64()
            .map_or("-".into(), |v| format!("{v:.1}")),
        result["api_requests_per_sandbox"]
            .as_f64()
            .map_or("-".into(), |v| format!("{v:.1}")),
        result["api_server_ms_per_sandbox"]
            .as_f64()
            .map_or("-".into(), |v| format!("{v:.0}")),
    );
    if !alive {
        result["error"] = json!("controller exited");
    }
    if let (Some(window), true) = (rest, alive) {
        // At rest: every sandbox Ready; a settling second, then the window.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = measure::apiserver_requests(client).await;
        tokio::time::sleep(window).await;
        let after = measure::apiserver_requests(client).await;
        if let (Some(a), Some(b)) = (before, after) {
            let per_s = (b.total() - a.total()) / window.as_secs_f64();
            println!(
                "at rest: {per_s:.2} API requests/s over {} s (all clients)",
                window.as_secs()
            );
            for (k, count, _) in b.since(&a).into_iter().take(6) {
                println!("  {k:<40} {:.2}/s", count / window.as_secs_f64());
            }
            result["rest_requests_per_s"] = json!(per_s);
        }
    }
    finish(client, args, &ns, controller, result).await
}

/// Deletes the namespace while the controller runs (Palisade removes each pod before releasing
/// its NetworkPolicy's finalizer), then stops the controller.
async fn finish(
    client: &Client,
    args: &Args,
    ns: &str,
    controller: Option<Controller>,
    mut result: Value,
) -> Value {
    let t0 = Instant::now();
    operator::delete_namespace_and_wait(client, ns, args.timeout).await;
    let s = t0.elapsed().as_secs_f64();
    println!("deleted namespace {ns} in {s:.1} s");
    result["delete_s"] = json!(s);
    if let Some(c) = controller {
        c.stop().await;
    }
    result
}

// --- the report -------------------------------------------------------------------------------

fn field(runs: &[&Value], k: &str) -> Vec<f64> {
    runs.iter().filter_map(|r| r[k].as_f64()).collect()
}

/// "median (min–max)" with `prec` decimals, or "–".
fn cell(values: &[f64], prec: usize) -> String {
    let m = median(values);
    if m.is_nan() {
        return "–".into();
    }
    let (lo, hi) = spread(values);
    if values.len() > 1 {
        format!("{m:.prec$} ({lo:.prec$}–{hi:.prec$})")
    } else {
        format!("{m:.prec$}")
    }
}

fn report(args: &Args, cases: &[Case], runs: &[Value]) -> String {
    let pick = |case: Case, system: System, mode: &str| -> Vec<&Value> {
        runs.iter()
            .filter(|r| r["tag"] == case.tag() && r["system"] == system.name() && r["mode"] == mode)
            .collect()
    };
    let mut md = String::new();
    md.push_str(&format!(
        "## Palisade vs agent-sandbox v0.5.6 (median (min–max) of {} repeats)\n\n",
        args.repeats
    ));
    md.push_str("| case | system | Ready | throughput /s | % of ceiling | p50 ms | p90 ms | p99 ms | CPU s | peak RSS MiB | API req/sandbox |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    let mut goals = Vec::new();
    for &case in cases {
        for &system in &args.systems {
            for mode in ["controller", "bare"] {
                let rs = pick(case, system, mode);
                if rs.is_empty() {
                    continue;
                }
                let tp = field(&rs, "throughput");
                let ceiling = median(&field(&pick(case, system, "bare"), "throughput"));
                let pct = if mode == "controller" && ceiling.is_finite() {
                    format!("{:.0}", 100.0 * median(&tp) / ceiling)
                } else {
                    "–".into()
                };
                let ready: Vec<f64> = field(&rs, "ready");
                md.push_str(&format!(
                    "| {} | {}{} | {}/{} | {} | {pct} | {} | {} | {} | {} | {} | {} |\n",
                    case.label(args.rate),
                    system.name(),
                    if mode == "bare" {
                        " (bare ceiling)"
                    } else {
                        ""
                    },
                    ready.iter().copied().fold(f64::INFINITY, f64::min) as usize,
                    case.n(),
                    cell(&tp, 1),
                    cell(&field(&rs, "p50_ms"), 0),
                    cell(&field(&rs, "p90_ms"), 0),
                    cell(&field(&rs, "p99_ms"), 0),
                    cell(&field(&rs, "cpu_s"), 2),
                    cell(&field(&rs, "peak_rss_mib"), 1),
                    cell(&field(&rs, "api_requests_per_sandbox"), 1),
                ));
            }
        }
        let m = |system: System, mode: &str, k: &str| median(&field(&pick(case, system, mode), k));
        let (p, a) = (System::Palisade, System::AgentSandbox);
        let p99 = m(p, "controller", "p99_ms") / m(a, "controller", "p99_ms");
        let tp = m(p, "controller", "throughput") / m(a, "controller", "throughput");
        let ceil = m(p, "controller", "throughput") / m(p, "bare", "throughput");
        let label = case.label(args.rate);
        goals.push(format!(
            "| {label} | {} | {} | {} |",
            goal(p99, |x| x <= 0.5, 2),
            goal(tp, |x| x >= 2.0, 2),
            if case.claims() {
                "–".into()
            } else {
                goal(ceil * 100.0, |x| x >= 80.0, 0).replacen(' ', " % ", 1)
            },
        ));
    }
    md.push_str("\n### Goals (Palisade against agent-sandbox, medians)\n\n");
    md.push_str("| case | p99 ratio (goal ≤ 0.5) | throughput ratio (goal ≥ 2) | Palisade % of its bare ceiling (goal ≥ 80 %) |\n|---|---|---|---|\n");
    for g in goals {
        md.push_str(&g);
        md.push('\n');
    }
    // Peak RSS at the largest N (its cold burst).
    if let Some(&n) = args.counts.iter().filter(|_| args.cold).max() {
        let case = Case::ColdBurst(n);
        let rss = |s: System| median(&field(&pick(case, s, "controller"), "peak_rss_mib"));
        let ratio = rss(System::Palisade) / rss(System::AgentSandbox);
        md.push_str(&format!(
            "\nPeak RSS ratio at N={n} (cold burst): {} (goal ≤ 0.25; Palisade {:.1} MiB, agent-sandbox {:.1} MiB)\n",
            goal(ratio, |x| x <= 0.25, 2),
            rss(System::Palisade),
            rss(System::AgentSandbox)
        ));
    }
    md.push_str(&scale(args, &pick));
    md.push_str(
        "\nLatency: each sandbox (claim) from its own create call to the watch event showing it \
         Ready (Palisade phase Running; agent-sandbox condition Ready=True). Throughput: Ready \
         sandboxes / (first create → last Ready). API req/sandbox: the API server's non-WATCH \
         apiserver_request_total delta over the run, minus the harness's creates, per sandbox \
         (includes kube-scheduler's and kwok's requests for each pod: compare with the bare \
         row). % of ceiling: throughput / the bare client's on the same case.\n",
    );
    md
}

/// The scale figures: controller CPU per sandbox for each N of the cold bursts (flat when CPU
/// grows linearly), requests per second at rest beyond the cluster's own, and how long deleting
/// the namespace took against the same objects without a controller.
fn scale<'a>(args: &Args, pick: &dyn Fn(Case, System, &str) -> Vec<&'a Value>) -> String {
    let mut counts: Vec<usize> = args.counts.clone();
    counts.sort_unstable();
    if !args.cold || counts.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\n### Scale (cold bursts)\n\n| system | N | CPU ms per sandbox | peak RSS MiB | at rest, API req/s beyond the cluster's own | namespace deletion s (bare: same objects, no controller) |\n|---|---|---|---|---|---|\n",
    );
    for &system in &args.systems {
        for &n in &counts {
            let case = Case::ColdBurst(n);
            let c = pick(case, system, "controller");
            let b = pick(case, system, "bare");
            if c.is_empty() {
                continue;
            }
            let per = |rs: &[&Value], k: &str| median(&field(rs, k));
            let cpu_ms = per(&c, "cpu_s") * 1e3 / n as f64;
            let rest = per(&c, "rest_requests_per_s") - per(&b, "rest_requests_per_s");
            let rest = if rest.is_finite() {
                format!("{rest:.2}")
            } else if per(&c, "rest_requests_per_s").is_finite() {
                format!("{:.2} (all clients)", per(&c, "rest_requests_per_s"))
            } else {
                "–".into()
            };
            let (del, bare_del) = (per(&c, "delete_s"), per(&b, "delete_s"));
            let deletion = if bare_del.is_finite() {
                format!("{del:.0} (bare {bare_del:.0}: {:.1}×)", del / bare_del)
            } else {
                format!("{del:.0}")
            };
            md.push_str(&format!(
                "| {} | {n} | {cpu_ms:.2} | {:.1} | {rest} | {deletion} |\n",
                system.name(),
                per(&c, "peak_rss_mib"),
            ));
        }
        if let (Some(&lo), Some(&hi)) = (counts.first(), counts.last())
            && lo != hi
        {
            let cpu = |n: usize| {
                median(&field(
                    &pick(Case::ColdBurst(n), system, "controller"),
                    "cpu_s",
                )) / n as f64
            };
            md.push_str(&format!(
                "| {} | {lo}→{hi} | CPU per sandbox ×{:.2} (linear: about 1) | | | |\n",
                system.name(),
                cpu(hi) / cpu(lo)
            ));
        }
    }
    md
}

fn goal(x: f64, ok: impl Fn(f64) -> bool, prec: usize) -> String {
    if x.is_nan() {
        return "–".into();
    }
    format!("{x:.prec$} {}", if ok(x) { "met" } else { "NOT met" })
}
