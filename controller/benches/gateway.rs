//! `make bench-gateway`: the egress gateway beside Squid (Debian's), both on loopback with the
//! same allowlist (one name on one port) and the same upstream server. Prints CONNECT setups
//! per second, the latency a proxy adds over a direct connection (p50/p99), throughput through
//! one tunnel, and the proxy's memory with 1,000 tunnels open. Figures, not pass/fail.
//!
//! The gateway runs in a child process (this benchmark re-executed), with a stub DNS server and
//! a connector that maps the checked documentation address to the loopback upstream: every
//! check the gateway makes in a cluster is made. Squid resolves the name from a hosts file.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use palisade::gateway::audit::{AuditSink, Auditor, GatewayMetrics};
use palisade::gateway::credential::CredentialKey;
use palisade::gateway::directory::{RulesCache, build};
use palisade::gateway::proxy::{Gateway, Limits, Timeouts, serve, serve_workers};
use palisade::gateway::resolve::DnsResolver;
use palisade::gateway::testing::{MapConnector, dns_server};
use palisade::policy::egress::ClusterRanges;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const NAME: &str = "bench.example.com";
const PORT: u16 = 8443;
const KEY: &[u8] = b"bench-key-bench-key-bench-key-bench-key";
const UID: &str = "bench-sandbox-uid";
const STREAM_BYTES: u64 = 256 << 20;
/// Sequential setups per proxy for the latency columns.
const LATENCY_ROUNDS: usize = 5000;

/// A ClientHello naming NAME (what a TLS client sends first).
fn hello() -> Vec<u8> {
    let mut sni = vec![0];
    sni.extend_from_slice(&(NAME.len() as u16).to_be_bytes());
    sni.extend_from_slice(NAME.as_bytes());
    let mut body = (sni.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(&sni);
    let mut ext = vec![0, 0];
    ext.extend_from_slice(&(body.len() as u16).to_be_bytes());
    ext.extend_from_slice(&body);
    let mut ch = vec![3, 3];
    ch.extend_from_slice(&[7; 32]);
    ch.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
    ch.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    ch.extend_from_slice(&ext);
    let mut hs = vec![1];
    hs.extend_from_slice(&(ch.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&ch);
    let mut record = vec![22, 3, 1];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

/// The upstream: reads the hello, answers `OK`, then on `S` streams STREAM_BYTES, on `H` holds
/// until the client goes, on anything else closes.
async fn upstream(listener: TcpListener) {
    let hello_len = hello().len();
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = vec![0u8; hello_len];
            if s.read_exact(&mut buf).await.is_err() || s.write_all(b"OK").await.is_err() {
                return;
            }
            let mut cmd = [0u8; 1];
            if s.read_exact(&mut cmd).await.is_err() {
                return;
            }
            match cmd[0] {
                b'S' => {
                    let chunk = vec![0x5a; 64 * 1024];
                    let mut left = STREAM_BYTES;
                    while left > 0 {
                        let n = left.min(chunk.len() as u64) as usize;
                        if s.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                        left -= n as u64;
                    }
                }
                b'H' => {
                    let mut rest = [0u8; 64];
                    while s.read(&mut rest).await.unwrap_or(0) > 0 {}
                }
                _ => {}
            }
        });
    }
}

/// The gateway, in this (child) process: prints its port, serves until stdin closes.
fn child() {
    let upstream: SocketAddr = std::env::var("BENCH_UPSTREAM")
        .expect("BENCH_UPSTREAM")
        .parse()
        .expect("address");
    let rt = match std::env::var("BENCH_RUNTIME").as_deref() {
        Ok("current") => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime"),
        _ => tokio::runtime::Runtime::new().expect("runtime"),
    };
    rt.block_on(async move {
        let dns = dns_server(
            HashMap::from([(NAME.to_string(), vec![vec!["192.0.2.10".parse().unwrap()]])]),
            300,
        )
        .await
        .expect("dns");
        let sandbox = Arc::new(serde_json::from_value(json!({
            "apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox",
            "metadata": {"namespace": "bench", "name": "s", "uid": UID},
            "spec": {"policyRef": {"name": "p"}, "image": "registry.example.com/agent:1"},
            "status": {"enforcedPolicy": {"uid": "p", "generation": 1}}})).unwrap());
        let policy = Arc::new(serde_json::from_value(json!({
            "apiVersion": "palisade.dev/v1alpha1", "kind": "AgentPolicy",
            "metadata": {"namespace": "bench", "name": "p", "uid": "p", "resourceVersion": "1", "generation": 1},
            "spec": {"network": {"egress": {"allow": [{"to": [{"fqdn": NAME}], "ports": [{"port": PORT}]}]}}}})).unwrap());
        let pod = Arc::new(serde_json::from_value(json!({
            "metadata": {"namespace": "bench", "name": "s", "labels": {"palisade.dev/sandbox": "s"},
                "ownerReferences": [{"apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox",
                    "name": "s", "uid": UID, "controller": true}]},
            "status": {"phase": "Running", "podIP": "127.0.0.1"}})).unwrap());
        let directory = build(&[pod], &[sandbox], &[policy], ClusterRanges::default(), &mut RulesCache::default());
        let (_tx, rx) = tokio::sync::watch::channel(Arc::new(directory));
        let connector = MapConnector::new(HashMap::from([(
            SocketAddr::new("192.0.2.10".parse().unwrap(), PORT),
            upstream,
        )]));
        let gw = Arc::new(Gateway::new(
            rx,
            Arc::new(DnsResolver::new(&[dns]).expect("resolver")),
            Arc::new(connector),
            CredentialKey::from_bytes(KEY).expect("key"),
            Auditor {
                // Audit lines go to standard output, as in a cluster (here /dev/null).
                sink: if std::env::var_os("BENCH_NO_AUDIT").is_some() {
                    AuditSink::Discard
                } else {
                    AuditSink::Stdout
                },
                metrics: GatewayMetrics::new(),
                denials: None,
            },
            Timeouts::default(),
            Limits {
                per_source: 100_000,
                ..Limits::default()
            },
        ));
        let stop = tokio_util::sync::CancellationToken::new();
        let stopper = stop.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            stopper.cancel();
        });
        // As `palisade gateway` serves: one single-threaded runtime per CPU, each with its own
        // listener (BENCH_WORKERS=N to choose; 0: one multi-threaded runtime, the old way).
        let workers: usize = std::env::var("BENCH_WORKERS")
            .ok()
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(usize::from)
                    .unwrap_or(1)
            });
        if workers > 0 {
            let (ready, bound) = std::sync::mpsc::channel();
            let served = std::thread::spawn(move || {
                serve_workers("127.0.0.1:0".parse().expect("addr"), workers, gw, stop, ready)
            });
            let port = bound.recv().expect("bound").port();
            eprintln!("{port}");
            std::io::stderr().flush().ok();
            let _ = tokio::task::spawn_blocking(move || served.join()).await;
            return;
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        eprintln!("{}", listener.local_addr().expect("addr").port());
        std::io::stderr().flush().ok();
        serve(listener, gw, stop).await;
    });
}

#[derive(Clone)]
struct Proxy {
    name: &'static str,
    /// `None`: a direct connection (the baseline).
    addr: Option<SocketAddr>,
    auth: String,
    pid: Option<u32>,
}

async fn setup(p: &Proxy, upstream: SocketAddr, hello: &[u8]) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(p.addr.unwrap_or(upstream)).await?;
    s.set_nodelay(true)?;
    if p.addr.is_some() {
        let req = format!(
            "CONNECT {NAME}:{PORT} HTTP/1.1\r\nHost: {NAME}:{PORT}\r\n{}\r\n",
            p.auth
        );
        s.write_all(req.as_bytes()).await?;
        // The response head comes alone (upstream answers only after the hello).
        let mut head = Vec::new();
        let mut chunk = [0u8; 512];
        while !head.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::other("closed"));
            }
            head.extend_from_slice(&chunk[..n]);
        }
        if !head.starts_with(b"HTTP/1.1 200") && !head.starts_with(b"HTTP/1.0 200") {
            return Err(std::io::Error::other(
                String::from_utf8_lossy(&head).to_string(),
            ));
        }
    }
    s.write_all(hello).await?;
    let mut ok = [0u8; 2];
    s.read_exact(&mut ok).await?;
    Ok(s)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User and system CPU seconds a process has used so far (`/proc/<pid>/stat`, clock ticks).
fn cpu_s(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at state (field 3).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = 100.0; // USER_HZ on Linux
    let user: f64 = fields.get(11)?.parse().ok()?;
    let sys: f64 = fields.get(12)?.parse().ok()?;
    Some((user / tick, sys / tick))
}

struct Figures {
    /// The proxy's CPU per setup during the rate phase, user and system, in microseconds.
    cpu_us: Option<(f64, f64)>,
    p50: Duration,
    p99: Duration,
    setups_per_s: f64,
    mb_per_s: f64,
    rss: Option<(u64, u64)>,
}

async fn measure(p: &Proxy, upstream: SocketAddr) -> Figures {
    let hello = hello();
    // Warm up.
    for _ in 0..200 {
        let mut s = setup(p, upstream, &hello).await.expect("setup");
        let _ = s.write_all(b"C").await;
    }
    // Rate: 32 concurrent clients for 10 s.
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(10);
    let cpu_before = p.pid.and_then(cpu_s);
    let mut workers = Vec::new();
    for _ in 0..32 {
        let (p, hello, done) = (p.clone(), hello.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                if let Ok(mut s) = setup(&p, upstream, &hello).await {
                    let _ = s.write_all(b"C").await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let setups = done.load(Ordering::Relaxed) as f64;
    let setups_per_s = setups / 10.0;
    let cpu_us = match (cpu_before, p.pid.and_then(cpu_s)) {
        (Some((u0, s0)), Some((u1, s1))) if setups > 0.0 => {
            Some(((u1 - u0) * 1e6 / setups, (s1 - s0) * 1e6 / setups))
        }
        _ => None,
    };
    // Throughput through one tunnel.
    let mut s = setup(p, upstream, &hello).await.expect("setup");
    s.write_all(b"S").await.expect("stream");
    let t = Instant::now();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    while got < STREAM_BYTES {
        let n = s.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let mb_per_s = got as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64();
    // Memory with 1,000 tunnels open.
    let rss = match p.pid {
        Some(pid) => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let before = rss_kib(pid).unwrap_or(0);
            let mut open = Vec::new();
            for _ in 0..1000 {
                let mut s = setup(p, upstream, &hello).await.expect("setup");
                s.write_all(b"H").await.expect("hold");
                open.push(s);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let after = rss_kib(pid).unwrap_or(0);
            drop(open);
            Some((before, after))
        }
        None => None,
    };
    Figures {
        cpu_us,
        p50: Duration::ZERO,
        p99: Duration::ZERO,
        setups_per_s,
        mb_per_s,
        rss,
    }
}

fn start_gateway(upstream: SocketAddr) -> (Child, u16) {
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .env("PALISADE_BENCH_GATEWAY_CHILD", "1")
        .env("BENCH_UPSTREAM", upstream.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the gateway child");
    let mut line = String::new();
    std::io::BufReader::new(child.stderr.take().expect("stderr"))
        .read_line(&mut line)
        .expect("port");
    (child, line.trim().parse().expect("port number"))
}

fn start_squid(dir: &std::path::Path) -> Option<(Child, u16)> {
    let squid = std::env::var("SQUID").unwrap_or_else(|_| "/usr/sbin/squid".into());
    if !std::path::Path::new(&squid).exists() {
        eprintln!(
            "bench-gateway: {squid} not found (apt-get install squid): Squid's column is left out"
        );
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    std::fs::write(dir.join("hosts"), format!("127.0.0.1 {NAME}\n")).ok()?;
    let d = dir.display();
    let conf = format!(
        "http_port 127.0.0.1:{port}\npid_filename {d}/squid.pid\ncache_log {d}/cache.log\n\
access_log none\ncache deny all\ncache_mem 8 MB\nhosts_file {d}/hosts\ncoredump_dir {d}\n\
max_filedescriptors 16384\nworkers 1\ndns_v4_first on\n\
acl bench_ports port {PORT}\nacl CONNECT method CONNECT\nacl allowed dstdomain {NAME}\n\
http_access deny CONNECT !bench_ports\nhttp_access allow CONNECT allowed\nhttp_access deny all\n\
shutdown_lifetime 0 seconds\n"
    );
    std::fs::write(dir.join("squid.conf"), conf).ok()?;
    let conf_path = dir.join("squid.conf");
    let _ = std::process::Command::new("chown")
        .arg("-R")
        .arg("proxy")
        .arg(dir)
        .status();
    let child = Command::new(&squid)
        .arg("-N")
        .arg("-f")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((child, port));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("bench-gateway: Squid did not start (see {d}/cache.log)");
    None
}

fn main() {
    if std::env::var_os("PALISADE_BENCH_GATEWAY_CHILD").is_some() {
        child();
        return;
    }
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let listener = TcpListener::bind(("127.0.0.1", PORT))
            .await
            .expect("the upstream needs 127.0.0.1:8443 (Squid dials the name's port)");
        let upstream = listener.local_addr().expect("addr");
        tokio::spawn(upstream_task(listener));
        let (mut gw_child, gw_port) = start_gateway(upstream);
        let dir = std::env::temp_dir().join(format!("palisade-bench-squid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let squid = start_squid(&dir);
        let auth = format!(
            "Proxy-Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(format!(
                "{UID}:{}",
                CredentialKey::from_bytes(KEY).expect("key").password(UID)
            ))
        );
        let mut proxies = vec![
            Proxy { name: "direct", addr: None, auth: String::new(), pid: None },
            Proxy {
                name: "palisade gateway",
                addr: Some(SocketAddr::from(([127, 0, 0, 1], gw_port))),
                auth,
                pid: Some(gw_child.id()),
            },
        ];
        if let Some((child, port)) = &squid {
            proxies.push(Proxy {
                name: "squid 5 (Debian)",
                addr: Some(SocketAddr::from(([127, 0, 0, 1], *port))),
                auth: String::new(),
                pid: Some(child.id()),
            });
        }
        let mut rows = Vec::new();
        for p in &proxies {
            eprintln!("bench-gateway: measuring {}", p.name);
            rows.push((p.name, measure(p, upstream).await));
        }
        // Latency: sequential setups, the proxies taking turns (direct, gateway, Squid, ...)
        // so that whatever else the machine does weighs on each alike.
        eprintln!("bench-gateway: latency, {LATENCY_ROUNDS} rounds");
        let hello = hello();
        let mut times: Vec<Vec<Duration>> = vec![Vec::new(); proxies.len()];
        for _ in 0..LATENCY_ROUNDS {
            for (i, p) in proxies.iter().enumerate() {
                let t = Instant::now();
                let mut s = setup(p, upstream, &hello).await.expect("setup");
                times[i].push(t.elapsed());
                let _ = s.write_all(b"C").await;
            }
        }
        for (row, mut t) in rows.iter_mut().zip(times) {
            t.sort();
            row.1.p50 = percentile(&t, 0.5);
            row.1.p99 = percentile(&t, 0.99);
        }
        let direct = (rows[0].1.p50, rows[0].1.p99);
        println!("\nbench-gateway: one CONNECT setup = CONNECT, 200, a ClientHello forwarded, 2 bytes back");
        println!("{:<18} {:>10} {:>18} {:>13} {:>13} {:>8} {:>22}", "", "setups/s", "CPU us/setup u+s", "added p50 ms", "added p99 ms", "MB/s", "RSS MiB idle/1000 open");
        for (name, f) in &rows {
            let (a50, a99) = if *name == "direct" {
                ("-".to_string(), "-".to_string())
            } else {
                (
                    format!("{:.3}", f.p50.saturating_sub(direct.0).as_secs_f64() * 1e3),
                    format!("{:.3}", f.p99.saturating_sub(direct.1).as_secs_f64() * 1e3),
                )
            };
            let rss = f
                .rss
                .map(|(b, a)| format!("{:.1} / {:.1}", b as f64 / 1024.0, a as f64 / 1024.0))
                .unwrap_or_else(|| "-".into());
            let cpu = f
                .cpu_us
                .map(|(u, s)| format!("{u:.0}+{s:.0}={:.0}", u + s))
                .unwrap_or_else(|| "-".into());
            println!("{:<18} {:>10.0} {:>18} {:>13} {:>13} {:>8.0} {:>22}", name, f.setups_per_s, cpu, a50, a99, f.mb_per_s, rss);
        }
        if let Some(g) = rows.iter().find(|r| r.0 == "palisade gateway")
            && let Some(s) = rows.iter().find(|r| r.0.starts_with("squid"))
        {
            println!(
                "\ngateway/squid: CONNECT rate x{:.2}; added p99 {:.0}% of squid's",
                g.1.setups_per_s / s.1.setups_per_s,
                100.0 * g.1.p99.saturating_sub(direct.1).as_secs_f64()
                    / s.1.p99.saturating_sub(direct.1).as_secs_f64().max(1e-9)
            );
            if let (Some((gu, gs)), Some((su, ss))) = (g.1.cpu_us, s.1.cpu_us) {
                println!(
                    "gateway/squid: CPU per setup {:.0}% of squid's (user {:.0}%, system {:.0}%)",
                    100.0 * (gu + gs) / (su + ss).max(1e-9),
                    100.0 * gu / su.max(1e-9),
                    100.0 * gs / ss.max(1e-9)
                );
            }
        }
        let _ = gw_child.kill();
        if let Some((mut child, _)) = squid {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
}

async fn upstream_task(listener: TcpListener) {
    upstream(listener).await
}
