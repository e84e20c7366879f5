//! The egress gateway on the real node: the chart's `palisade gateway` pods run there (e2e/run.sh),
//! and sandboxes under gVisor reach the outside world's package index by name through them with
//! the tools agents use (curl, pip), while everything else is refused: names the policy does not
//! list, names whose addresses include the metadata service (a rebinding attempt), IP literals,
//! a wrong, missing or borrowed credential, and any packet around the gateway (the NetworkPolicy
//! lets the sandbox reach the gateway only; no DNS).
//!
//! The world (e2e/cluster/node.sh): `packages.example.com` is the package index at 192.0.2.30
//! (HTTP and HTTPS with a certificate of the world's own authority, which the tools image
//! trusts); `rebind.example.com` answers both 192.0.2.30 and 169.254.169.254;
//! `metadata.google.internal` answers 169.254.169.254, the fake metadata service, which logs
//! every request it gets. No packet leaves the machine.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, LogParams};
use palisade_e2e::node::{self, Line, PACKAGES_ADDRESS, TOOLS_IMAGE, WORLD_CA, result_of};
use palisade_e2e::{unique, wait_for, wait_warning};
use serde_json::{Value, json};

/// What runs in the sandbox (python3 -c): each step prints one JSON line as the probe does
/// (`check`, `result`, `detail`). curl's result is `exit=<code> <http_code> <http_connect>`
/// (the status of the request, and of the proxy's answer to CONNECT). First argument: the mode
/// (`agent`, or `borrowed` with a proxy URL to use instead of the sandbox's own); second: a
/// marker to put in the metadata service's path.
const AGENT: &str = r#"
import json, os, subprocess, sys, urllib.parse
CA = os.environ["WORLD_CA"]
mode, arg = sys.argv[1], sys.argv[2]

def say(check, result, detail=""):
    print(json.dumps({"check": check, "result": result, "detail": detail[-400:]}), flush=True)

def run(argv, timeout=90):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired:
        return -1, "", "timed out"

def probe(*checks):
    rc, out, err = run(["probe", "check", "--timeout=2s", *checks])
    print(out.strip() or json.dumps({"check": "probe", "result": "error", "detail": err}), flush=True)

def curl(check, url, *extra):
    rc, out, err = run(["curl", "-sS", "--max-time", "20", "--cacert", CA, "-o", "/tmp/body",
                        "-w", "%{http_code} %{http_connect}", *extra, url])
    body = ""
    try:
        with open("/tmp/body") as f:
            body = f.read().strip()
        os.remove("/tmp/body")
    except OSError:
        pass
    say(check, f"exit={rc} {out.strip()}", body or err.strip())

probe("isolated:10.96.0.1:443")
proxy = urllib.parse.urlsplit(os.environ.get("HTTPS_PROXY", ""))
say("proxy-env", "set" if proxy.hostname and proxy.password else "missing",
    f"{proxy.hostname}:{proxy.port} user={proxy.username} NO_PROXY={os.environ.get('NO_PROXY')}")
if mode == "borrowed":
    curl("https-borrowed-credential", "https://packages.example.com/hello", "--proxy", arg)
    sys.exit(0)

curl("https-allowed", "https://packages.example.com/hello")
curl("http-allowed", "http://packages.example.com/hello")
curl("https-name-not-allowed", "https://api.example.com/")
curl("https-rebind", "https://rebind.example.com/hello")
curl("http-name-of-metadata", f"http://metadata.google.internal/{arg}")
curl("https-ip-literal", "https://192.0.2.30/hello")
curl("https-around-the-gateway", "https://packages.example.com/hello", "--noproxy", "*")
wrong = f"http://{proxy.username}:{'0' * 43}@{proxy.hostname}:{proxy.port}"
curl("https-wrong-credential", "https://packages.example.com/hello", "--proxy", wrong)
curl("https-no-credential", "https://packages.example.com/hello", "--proxy",
     f"http://{proxy.hostname}:{proxy.port}")

pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-cache-dir"]
rc, out, err = run(pip + ["download", "--no-deps", "--index-url",
                          "https://packages.example.com/simple/", "--cert", CA, "-d", "/tmp/dl",
                          "palisade-hello"])
say("pip-download", f"exit={rc}", (out + err).strip())
rc, out, err = run(pip + ["install", "--no-deps", "--no-index", "--target", "/tmp/site",
                          "/tmp/dl/palisade_hello-1.0-py3-none-any.whl"])
rc2, out2, err2 = run([sys.executable, "-c",
                       "import sys; sys.path.insert(0, '/tmp/site'); import palisade_hello; "
                       "print(palisade_hello.GREETING)"])
say("pip-install", f"exit={rc} import={rc2}", (out2 + err2 + err).strip())

probe(f"tcp:192.0.2.30:443", f"tcp:192.0.2.30:80", "tcp:192.0.2.10:443",
      "dns:packages.example.com")
"#;

/// Names and ports the test policy allows: the package index over HTTPS and HTTP, the
/// rebinding name and the metadata service's name (which the gateway must still refuse).
fn policy() -> Value {
    json!({
        "filesystem": {"readwritePaths": ["/tmp"]},
        "network": {"egress": {"default": "deny", "allow": [
            {"to": [{"fqdn": "packages.example.com"}],
             "ports": [{"protocol": "tcp", "port": 443}, {"protocol": "tcp", "port": 80}]},
            {"to": [{"fqdn": "rebind.example.com"}], "ports": [{"protocol": "tcp", "port": 443}]},
            {"to": [{"fqdn": "metadata.google.internal"}],
             "ports": [{"protocol": "tcp", "port": 80}]}
        ]}},
        "isolation": {"runtime": "gvisor"}
    })
}

/// Runs the agent script in sandbox `name` (the tools image) and returns what it printed.
async fn run_agent(client: &kube::Client, ns: &str, name: &str, args: &[&str]) -> Vec<Line> {
    let mut argv = vec!["-c".to_string(), AGENT.to_string()];
    argv.extend(args.iter().map(|a| a.to_string()));
    let extra = json!({
        "image": TOOLS_IMAGE, "command": ["python3"], "args": argv, "restartPolicy": "Never",
        "env": [{"name": "WORLD_CA", "value": WORLD_CA}],
        // Python and pip under gVisor want more than the probe.
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"},
                      "limits": {"cpu": "1", "memory": "512Mi"}}
    });
    node::sandboxes_apply(client, ns, name, policy(), extra).await;
    let pod = node::sandbox_pod(client, ns, name).await;
    let done = node::finished_pod(client, ns, &pod).await;
    let log = node::pod_log(client, ns, &pod).await;
    let lines = node::parse_lines(&log);
    let isolated = result_of(&lines, node::WAIT_ISOLATED).unwrap_or_else(|| {
        panic!(
            "the agent in {ns}/{pod} printed nothing (phase {:?}):\n{log}",
            done.status.and_then(|s| s.phase)
        )
    });
    assert_eq!(isolated.result, "ok", "{ns}/{name} was never isolated");
    let env = expect(&lines, "proxy-env", &log);
    assert_eq!(
        env.result, "set",
        "the operator gave the sandbox no credentialed proxy URL (is Cilium, or a stand-in of its CRDs, installed? Then --fqdn-backend=auto picks Cilium): {}",
        env.detail
    );
    lines
}

fn expect<'a>(lines: &'a [Line], check: &str, log: &str) -> &'a Line {
    result_of(lines, check).unwrap_or_else(|| panic!("no result for {check}:\n{log}"))
}

/// curl's exit code, HTTP status and status of the proxy's CONNECT answer, from a result.
fn curl_result(l: &Line) -> (i32, u16, u16) {
    let mut parts = l.result.split_whitespace();
    let exit = parts
        .next()
        .and_then(|e| e.strip_prefix("exit="))
        .and_then(|e| e.parse().ok());
    let code = parts.next().and_then(|c| c.parse().ok());
    let connect = parts.next().and_then(|c| c.parse().ok());
    match (exit, code, connect) {
        (Some(e), Some(c), Some(k)) => (e, c, k),
        _ => panic!("not a curl result: {l:?}"),
    }
}

/// The gateway pods' log lines about sandbox `sandbox` of namespace `ns` (their audit lines).
async fn audit_lines(client: &kube::Client, ns: &str, sandbox: &str) -> Vec<Value> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "palisade-system");
    let list = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=palisade-gateway"))
        .await
        .expect("list the gateway pods");
    assert!(!list.items.is_empty(), "no gateway pod");
    let mut out = Vec::new();
    for p in list.items {
        let name = p.metadata.name.unwrap_or_default();
        let log = pods
            .logs(&name, &LogParams::default())
            .await
            .unwrap_or_else(|e| panic!("log of gateway pod {name}: {e}"));
        out.extend(
            log.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| {
                    v["unmapped"]["namespace"] == ns && v["unmapped"]["sandbox"] == sandbox
                }),
        );
    }
    out
}

#[tokio::test]
async fn curl_and_pip_reach_a_name_through_the_gateway_and_nothing_else_gets_out() {
    let ns = unique("gw");
    let client = node::namespace(&ns, false).await;
    let marker = unique("palisade-gateway-e2e");
    let lines = run_agent(&client, &ns, "agent", &["agent", &marker]).await;
    let all = format!("{lines:#?}");
    let line = |check: &str| expect(&lines, check, &all).clone();

    // Allowed names, over TLS (CONNECT, the server name checked) and plain HTTP.
    let https = line("https-allowed");
    assert_eq!(curl_result(&https), (0, 200, 200), "{https:?}");
    assert!(
        https.detail.contains("server name packages.example.com"),
        "{https:?}"
    );
    let http = line("http-allowed");
    assert_eq!(curl_result(&http), (0, 200, 0), "{http:?}");
    assert!(http.detail.contains("over http"), "{http:?}");
    // pip installs a package from the index by name.
    let pip = line("pip-download");
    assert_eq!(pip.result, "exit=0", "pip download: {}", pip.detail);
    let install = line("pip-install");
    assert_eq!(install.result, "exit=0 import=0", "{install:?}");
    assert!(
        install
            .detail
            .contains("hello from the package index of the e2e world"),
        "{install:?}"
    );

    // Refused by the gateway: a name the policy does not list, a name whose answers include
    // the metadata address (the rebinding attempt), the metadata service by name, an IP
    // literal without a CIDR rule (403); a wrong or missing credential (407).
    for (check, status) in [
        ("https-name-not-allowed", 403),
        ("https-rebind", 403),
        ("https-ip-literal", 403),
        ("https-wrong-credential", 407),
        ("https-no-credential", 407),
    ] {
        let l = line(check);
        let (exit, _, connect) = curl_result(&l);
        assert!(
            exit != 0 && connect == status,
            "{check}: expected the gateway's {status} to CONNECT: {l:?}"
        );
    }
    let metadata = line("http-name-of-metadata");
    assert_eq!(curl_result(&metadata).1, 403, "{metadata:?}");
    let world_log = std::fs::read_to_string(node::state_dir().join("logs/world-servers.log"))
        .expect("the world servers' log");
    assert!(
        !world_log.contains(&marker),
        "the metadata service got the sandbox's request"
    );

    // Around the gateway: no DNS, no packet to the index's or any other world address.
    let around = line("https-around-the-gateway");
    assert_ne!(curl_result(&around).0, 0, "{around:?}");
    assert_eq!(curl_result(&around).1, 0, "{around:?}");
    for check in [
        format!("tcp:{PACKAGES_ADDRESS}:443"),
        format!("tcp:{PACKAGES_ADDRESS}:80"),
        "tcp:192.0.2.10:443".to_string(),
    ] {
        let l = line(&check);
        assert!(
            matches!(l.result.as_str(), "timeout" | "refused" | "unreachable"),
            "{check}: the sandbox got around the gateway: {l:?}"
        );
    }
    let dns = line("dns:packages.example.com");
    assert_ne!(
        dns.result, "resolved",
        "the sandbox resolved a name: {dns:?}"
    );

    // The gateway's audit: one line per decision, attributed to this sandbox.
    let audit = wait_for(
        "the gateway's audit lines for the sandbox",
        Duration::from_secs(30),
        || async {
            let lines = audit_lines(&client, &ns, "agent").await;
            let allowed = lines.iter().any(|v| {
                v["dst_endpoint"]["hostname"] == "packages.example.com"
                    && v["action"] == "Allowed"
                    && v["traffic"]["bytes_in"].as_u64().unwrap_or(0) > 0
            });
            allowed.then_some(lines)
        },
    )
    .await;
    let reasons: BTreeMap<String, String> = audit
        .iter()
        .filter(|v| v["action"] == "Denied")
        .map(|v| {
            (
                v["dst_endpoint"]["hostname"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                v["status_detail"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        reasons.get("api.example.com").map(String::as_str),
        Some("NoMatchingRule"),
        "{reasons:?}"
    );
    assert_eq!(
        reasons.get("rebind.example.com").map(String::as_str),
        Some("FloorAddress"),
        "{reasons:?}"
    );
    assert_eq!(
        reasons.get("metadata.google.internal").map(String::as_str),
        Some("FloorAddress"),
        "{reasons:?}"
    );

    // The sandbox's status sums up the denials (each gateway replica adds its own every 30 s),
    // and a Warning event names a denied host.
    let api: Api<palisade::api::AgentSandbox> = Api::namespaced(client.clone(), &ns);
    let refused = [
        "api.example.com",
        "rebind.example.com",
        "metadata.google.internal",
        PACKAGES_ADDRESS,
    ];
    let denials = wait_for(
        "status.egressDenials of the sandbox to list the four refused hosts",
        Duration::from_secs(90),
        || async {
            let s = api.get("agent").await.ok()?;
            let d = serde_json::to_value(s.status?.egress_denials?).ok()?;
            let hosts: Vec<String> = d["hosts"]
                .as_array()?
                .iter()
                .filter_map(|h| h["host"].as_str().map(String::from))
                .collect();
            refused
                .iter()
                .all(|r| hosts.iter().any(|h| h == r))
                .then_some(d)
        },
    )
    .await;
    assert!(denials["total"].as_u64().unwrap_or(0) >= 4, "{denials}");
    wait_warning(
        &client,
        &ns,
        ("AgentSandbox", "agent"),
        "EgressDenied",
        Duration::from_secs(30),
    )
    .await;

    // Another sandbox with the first one's proxy URL (its credential): refused (403), as the
    // credential belongs to another pod's address.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let agent_pod = node::sandbox_pod(&client, &ns, "agent").await;
    let spec = pods.get(&agent_pod).await.expect("the agent's pod");
    let borrowed = spec
        .spec
        .and_then(|s| s.containers.into_iter().find(|c| c.name == "agent"))
        .and_then(|c| c.env)
        .and_then(|env| env.into_iter().find(|e| e.name == "HTTPS_PROXY"))
        .and_then(|e| e.value)
        .expect("HTTPS_PROXY in the agent's pod");
    let other = run_agent(&client, &ns, "other", &["borrowed", &borrowed]).await;
    let l = expect(&other, "https-borrowed-credential", &format!("{other:#?}"));
    let (exit, _, connect) = curl_result(l);
    assert!(
        exit != 0 && connect == 403,
        "a borrowed credential was not refused: {l:?}"
    );
    node::cleanup(&client, &ns).await;
}
