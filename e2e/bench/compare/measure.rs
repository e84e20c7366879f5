//! What `bench-compare` measures besides latency: a controller process's CPU time and peak RSS
//! (/proc), the API server's request counter (its /metrics), percentiles, and a watch that
//! stamps the instant each object is first seen Ready.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::Value;

/// CPU seconds (utime + stime of /proc/<pid>/stat, in clock ticks of `getconf CLK_TCK`) of a
/// process, while it runs.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: the fields after it follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) are utime and stime; `rest` starts at field 3.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Peak resident set size in MiB (`VmHWM` of /proc/<pid>/status), while the process runs.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// The API server's request counters by verb and resource (`POST pods`,
/// `APPLY agentsandboxes/status`, ...): the count (`apiserver_request_total`) and the seconds
/// the server spent (`apiserver_request_duration_seconds_sum`), watches excluded, from its
/// /metrics. The metrics have no user-agent label: a run's delta counts every client (the
/// harness, the controller, kube-scheduler's bindings, kwok's pod status updates, ...).
pub async fn apiserver_requests(client: &Client) -> Option<Requests> {
    let req = http::Request::get("/metrics").body(Vec::new()).ok()?;
    let body = client.request_text(req).await.ok()?;
    let mut out = Requests::default();
    for line in body.lines() {
        let (counter, labels) = if let Some(l) = line.strip_prefix("apiserver_request_total{") {
            (true, l)
        } else if let Some(l) = line.strip_prefix("apiserver_request_duration_seconds_sum{") {
            (false, l)
        } else {
            continue;
        };
        let Some((labels, value)) = labels.rsplit_once("} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let label = |k: &str| {
            let start = labels.find(&format!("{k}=\""))? + k.len() + 2;
            let end = start + labels[start..].find('"')?;
            Some(&labels[start..end])
        };
        let verb = label("verb").unwrap_or("");
        if verb == "WATCH" {
            continue;
        }
        let mut key = format!("{verb} {}", label("resource").unwrap_or(""));
        if let Some(sub) = label("subresource").filter(|s| !s.is_empty()) {
            key = format!("{key}/{sub}");
        }
        let e = out.by_key.entry(key).or_default();
        if counter {
            e.0 += value;
        } else {
            e.1 += value;
        }
    }
    Some(out)
}

/// Requests and server seconds by "VERB resource[/subresource]".
#[derive(Clone, Debug, Default)]
pub struct Requests {
    pub by_key: HashMap<String, (f64, f64)>,
}

impl Requests {
    /// Every request counted.
    pub fn total(&self) -> f64 {
        self.by_key.values().map(|v| v.0).sum()
    }

    /// Seconds the API server spent on them.
    pub fn seconds(&self) -> f64 {
        self.by_key.values().map(|v| v.1).sum()
    }

    /// What happened between `before` and `self`, largest counts first.
    pub fn since(&self, before: &Requests) -> Vec<(String, f64, f64)> {
        let mut out: Vec<(String, f64, f64)> = self
            .by_key
            .iter()
            .map(|(k, v)| {
                let b = before.by_key.get(k).copied().unwrap_or_default();
                (k.clone(), v.0 - b.0, v.1 - b.1)
            })
            .filter(|e| e.1 > 0.0)
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median of unsorted values (the lower middle one for an even count: a value that was
/// measured).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1) / 2]
}

/// (min, max) of the finite values.
pub fn spread(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .fold((f64::NAN, f64::NAN), |(lo, hi), x| {
            (
                if lo.is_nan() { x } else { lo.min(x) },
                if hi.is_nan() { x } else { hi.max(x) },
            )
        })
}

/// Instants at which each object (by name) was first seen ready.
pub type Seen = Arc<Mutex<HashMap<String, Instant>>>;

/// Watches `api` and stamps the first event in which `ready` holds for each object. Returns
/// once the watch's initial list is done (so no create of the run can be missed).
pub async fn watch_ready(api: Api<DynamicObject>, ready: fn(&Value) -> bool) -> Seen {
    let seen: Seen = Arc::default();
    let out = seen.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        let mut events = watcher::watcher(api, watcher::Config::default()).boxed();
        while let Some(ev) = events.next().await {
            let obj = match ev {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => o,
                Ok(watcher::Event::InitDone) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                    continue;
                }
                Ok(_) => continue,
                Err(e) => {
                    eprintln!("bench-compare: watch: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue;
                }
            };
            if ready(&obj.data) {
                let now = Instant::now();
                out.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(obj.name_any())
                    .or_insert(now);
            }
        }
    });
    let _ = rx.await;
    seen
}

/// Whether `status.conditions` holds `type_`=True.
pub fn condition_true(obj: &Value, type_: &str) -> bool {
    obj["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == type_ && c["status"] == "True")
    })
}
