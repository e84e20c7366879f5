//! The gateway in-process against real TLS and HTTP servers and a real DNS server, all on
//! loopback. Upstream addresses are documentation addresses that the test connector maps to
//! loopback servers (nothing is ever dialled elsewhere); sandbox pods are loopback addresses
//! (127.0.0.1 is sandbox s1, 127.0.0.2 is s2, 127.0.0.3 nobody).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use palisade::api::{AgentPolicy, AgentSandbox};
use palisade::gateway::audit::{AuditSink, Auditor, GatewayMetrics};
use palisade::gateway::credential::CredentialKey;
use palisade::gateway::denials::DenialLog;
use palisade::gateway::directory::{Directory, RulesCache, build};
use palisade::gateway::proxy::{Gateway, Limits, Timeouts, serve, serve_workers};
use palisade::gateway::resolve::DnsResolver;
use palisade::gateway::testing::{MapConnector, dns_server};
use palisade::policy::egress::ClusterRanges;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

const KEY: [u8; 32] = [42; 32];

// ---- the outside world: DNS, TLS and HTTP servers on loopback -------------------------------

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

/// What the upstream servers saw: connections that carried bytes, by server.
#[derive(Default)]
struct Seen {
    with_data: usize,
    requests: Vec<String>,
}

fn crypto() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

struct Certs {
    cert: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
}

fn certs() -> Certs {
    let names = vec![
        "api.example.com".to_string(),
        "a.pkg.example.com".to_string(),
        "rebind.example.com".to_string(),
        "192.0.2.99".to_string(),
    ];
    let ck = rcgen::generate_simple_self_signed(names).unwrap();
    Certs {
        cert: ck.cert.der().clone(),
        key: rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into()),
    }
}

/// A TLS server answering one line with `hello <what it read>`.
async fn tls_server(certs: &Certs, seen: Arc<Mutex<Seen>>) -> SocketAddr {
    let config = rustls::ServerConfig::builder_with_provider(crypto())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certs.cert.clone()], certs.key.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut one = [0u8; 1];
                if stream.peek(&mut one).await.unwrap_or(0) == 0 {
                    return;
                }
                seen.lock().unwrap().with_data += 1;
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut lines = BufReader::new(tls);
                let mut line = String::new();
                if lines.read_line(&mut line).await.is_ok() {
                    let _ = lines
                        .get_mut()
                        .write_all(format!("hello {line}").as_bytes())
                        .await;
                    let _ = lines.get_mut().flush().await;
                }
                // Stay open until the client goes.
                let mut rest = Vec::new();
                let _ = lines.read_to_end(&mut rest).await;
            });
        }
    });
    addr
}

/// A plain HTTP server that answers every request with its request line and headers.
async fn http_server(seen: Arc<Mutex<Seen>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(stream);
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push_str(&line);
                    if line == "\r\n" {
                        break;
                    }
                }
                seen.lock().unwrap().requests.push(head.clone());
                let body = format!("seen:\n{head}");
                let _ = r
                    .get_mut()
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    addr
}

// ---- the cluster: sandboxes, policies, pods ------------------------------------------------

fn sandbox(name: &str, uid: &str, policy: &str) -> Arc<AgentSandbox> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox",
            "metadata": {"namespace": "team", "name": name, "uid": uid},
            "spec": {"policyRef": {"name": policy}, "image": "registry.example.com/agent:1"},
            "status": {"enforcedPolicy": {"uid": format!("uid-{policy}"), "generation": 1}}
        }))
        .unwrap(),
    )
}

fn policy(name: &str, rv: &str, egress: Value) -> Arc<AgentPolicy> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "palisade.dev/v1alpha1", "kind": "AgentPolicy",
            "metadata": {"namespace": "team", "name": name, "uid": format!("uid-{name}"), "resourceVersion": rv, "generation": 1},
            "spec": {"network": {"egress": egress}}
        }))
        .unwrap(),
    )
}

fn pod(name: &str, owner: &str, ip: &str) -> Arc<k8s_openapi::api::core::v1::Pod> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"namespace": "team", "name": name,
                "labels": {"palisade.dev/sandbox": name},
                "ownerReferences": [{"apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox",
                    "name": name, "uid": owner, "controller": true}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
        }))
        .unwrap(),
    )
}

fn s1_egress(with_api: bool) -> Value {
    let mut names = vec![
        json!({"fqdn": "*.pkg.example.com"}),
        json!({"fqdn": "rebind.example.com"}),
        json!({"fqdn": "local.example.com"}),
        json!({"fqdn": "ten.example.com"}),
        json!({"fqdn": "mapped.example.com"}),
        json!({"fqdn": "denied.example.com"}),
        json!({"fqdn": "mixed.example.com"}),
    ];
    let mut plain = vec![json!({"fqdn": "plain.example.com"})];
    if with_api {
        names.push(json!({"fqdn": "api.example.com"}));
        plain.push(json!({"fqdn": "slow.example.com"}));
    }
    json!({
        "allow": [
            {"to": names, "ports": [{"port": 443}]},
            {"to": plain, "ports": [{"port": 80}]},
            {"to": [{"cidr": "192.0.2.99/32"}], "ports": [{"port": 443}]}
        ],
        "deny": [{"to": [{"cidr": "198.51.100.0/24"}]}]
    })
}

fn directory(with_api: bool, cache: &mut RulesCache) -> Directory {
    build(
        &[pod("s1", "u1", "127.0.0.1"), pod("s2", "u2", "127.0.0.2")],
        &[sandbox("s1", "u1", "p1"), sandbox("s2", "u2", "p2")],
        &[
            policy("p1", if with_api { "1" } else { "2" }, s1_egress(with_api)),
            policy(
                "p2",
                "1",
                json!({"allow": [{"to": [{"fqdn": "other.example.com"}], "ports": [{"port": 443}]}]}),
            ),
        ],
        ClusterRanges::default(),
        cache,
    )
}

struct World {
    proxy: SocketAddr,
    directory: watch::Sender<Arc<Directory>>,
    cache: RulesCache,
    audit: Arc<Mutex<Vec<Value>>>,
    tls_seen: Arc<Mutex<Seen>>,
    http_seen: Arc<Mutex<Seen>>,
    connector: Arc<MapConnector>,
    roots: rustls::RootCertStore,
    key: CredentialKey,
    metrics: GatewayMetrics,
    denials: Arc<Mutex<DenialLog>>,
    stop: CancellationToken,
    served: tokio::task::JoinHandle<()>,
}

/// How long a dial to slow.example.com (192.0.2.21:80) takes here.
const SLOW_DIAL: Duration = Duration::from_millis(600);

/// How long a request the gateway cannot attribute yet waits for the pod watch, here.
const SOURCE_WAIT: Duration = Duration::from_millis(400);
/// The same for the address of a sandbox pod not reported Running yet.
const STARTING_WAIT: Duration = Duration::from_millis(1500);

async fn world() -> World {
    world_with(Limits::default()).await
}

async fn world_with(limits: Limits) -> World {
    world_served(limits, None).await
}

/// `workers`: served as `palisade gateway` serves (threads with listeners of their own).
async fn world_served(limits: Limits, workers: Option<usize>) -> World {
    let certs = certs();
    let tls_seen = Arc::new(Mutex::new(Seen::default()));
    let http_seen = Arc::new(Mutex::new(Seen::default()));
    let tls = tls_server(&certs, tls_seen.clone()).await;
    let http = http_server(http_seen.clone()).await;
    let table: HashMap<&str, Vec<Vec<IpAddr>>> = HashMap::from([
        ("api.example.com", vec![ips(&["192.0.2.10"])]),
        ("a.pkg.example.com", vec![ips(&["192.0.2.10"])]),
        ("other.example.com", vec![ips(&["192.0.2.10"])]),
        ("plain.example.com", vec![ips(&["192.0.2.20"])]),
        ("slow.example.com", vec![ips(&["192.0.2.21"])]),
        (
            "rebind.example.com",
            vec![ips(&["192.0.2.10"]), ips(&["169.254.169.254"])],
        ),
        ("local.example.com", vec![ips(&["127.0.0.1"])]),
        ("ten.example.com", vec![ips(&["10.0.0.5"])]),
        ("mapped.example.com", vec![ips(&["::ffff:169.254.169.254"])]),
        ("denied.example.com", vec![ips(&["198.51.100.7"])]),
        (
            "mixed.example.com",
            vec![ips(&["192.0.2.10", "169.254.169.254"])],
        ),
    ]);
    let dns = dns_server(
        table.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        0,
    )
    .await
    .unwrap();
    let connector = Arc::new(
        MapConnector::new(HashMap::from([
            ("192.0.2.10:443".parse().unwrap(), tls),
            ("192.0.2.99:443".parse().unwrap(), tls),
            ("192.0.2.20:80".parse().unwrap(), http),
            ("192.0.2.21:80".parse().unwrap(), http),
        ]))
        .slow("192.0.2.21:80".parse().unwrap(), SLOW_DIAL),
    );
    let mut cache = RulesCache::default();
    let (tx, rx) = watch::channel(Arc::new(directory(true, &mut cache)));
    let audit = Arc::new(Mutex::new(Vec::new()));
    let metrics = GatewayMetrics::new();
    let denials = Arc::new(Mutex::new(DenialLog::default()));
    let key = CredentialKey::from_bytes(&KEY).unwrap();
    let gw = Arc::new(Gateway::new(
        rx,
        Arc::new(DnsResolver::new(&[dns]).unwrap()),
        connector.clone(),
        key.clone(),
        Auditor {
            sink: AuditSink::Memory(audit.clone()),
            metrics: metrics.clone(),
            denials: Some(denials.clone()),
        },
        Timeouts {
            hello: Duration::from_secs(3),
            drain: Duration::from_secs(1),
            source: SOURCE_WAIT,
            starting: STARTING_WAIT,
            ..Timeouts::default()
        },
        limits,
    ));
    let stop = CancellationToken::new();
    let (proxy, served) = match workers {
        None => {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let proxy = listener.local_addr().unwrap();
            (proxy, tokio::spawn(serve(listener, gw, stop.clone())))
        }
        Some(n) => {
            let (ready, bound) = std::sync::mpsc::channel();
            let stop = stop.clone();
            let served = tokio::task::spawn_blocking(move || {
                serve_workers("127.0.0.1:0".parse().unwrap(), n, gw, stop, ready).unwrap();
            });
            (bound.recv().unwrap(), served)
        }
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certs.cert.clone()).unwrap();
    World {
        proxy,
        directory: tx,
        cache,
        audit,
        tls_seen,
        http_seen,
        connector,
        roots,
        key,
        metrics,
        denials,
        stop,
        served,
    }
}

// ---- clients ---------------------------------------------------------------------------

enum Cred<'a> {
    None,
    Of(&'a str),
    Raw(&'a str),
}

impl World {
    fn auth(&self, cred: &Cred<'_>) -> String {
        match cred {
            Cred::None => String::new(),
            Cred::Of(uid) => format!(
                "Proxy-Authorization: Basic {}\r\n",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{uid}:{}", self.key.password(uid)))
            ),
            Cred::Raw(h) => format!("Proxy-Authorization: {h}\r\n"),
        }
    }

    async fn dial_from(&self, from: &str) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        socket.connect(self.proxy).await.unwrap()
    }

    /// Sends a request head and returns the status code and the head, with the stream.
    async fn request(&self, from: &str, head: String) -> (u16, String, TcpStream) {
        let mut s = self.dial_from(from).await;
        s.write_all(head.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
                .await
                .expect("the gateway answers")
                .unwrap();
            if n == 0 {
                break;
            }
            got.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&got).to_string();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, head, s)
    }

    async fn connect(&self, from: &str, target: &str, cred: Cred<'_>) -> (u16, String, TcpStream) {
        let auth = self.auth(&cred);
        self.request(
            from,
            format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n"),
        )
        .await
    }

    /// TLS through an open tunnel, naming `sni` (or an IP: no SNI); the server's answer.
    async fn tls_ping(&self, stream: TcpStream, sni: &str) -> Result<String, String> {
        let config = rustls::ClientConfig::builder_with_provider(crypto())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
        let mut tls =
            tokio::time::timeout(Duration::from_secs(10), connector.connect(name, stream))
                .await
                .map_err(|_| "timeout".to_string())?
                .map_err(|e| e.to_string())?;
        tls.write_all(b"ping\n").await.map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(&mut tls)
            .read_line(&mut line)
            .await
            .map_err(|e| e.to_string())?;
        Ok(line)
    }

    fn denials(&self) -> Vec<String> {
        self.audit
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l["action"] == "Denied")
            .map(|l| l["status_detail"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    async fn wait_for_denial(&self, reason: &str) {
        for _ in 0..100 {
            if self.denials().iter().any(|d| d == reason) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        panic!("no {reason} in the audit: {:?}", self.denials());
    }

    fn dialled(&self) -> Vec<SocketAddr> {
        self.connector.asked()
    }
}

fn denial_header(head: &str) -> &str {
    head.lines()
        .find_map(|l| l.strip_prefix("x-palisade-denial: "))
        .unwrap_or("")
}

// ---- tests ---------------------------------------------------------------------------

#[tokio::test]
async fn an_allowed_name_is_tunnelled_with_its_sni_and_audited() {
    let w = world().await;
    let (status, _, s) = w
        .connect("127.0.0.1", "api.example.com:443", Cred::Of("u1"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        w.tls_ping(s, "api.example.com").await,
        Ok("hello ping\n".into())
    );
    // The wildcard allows one label.
    let (status, _, s) = w
        .connect("127.0.0.1", "a.pkg.example.com:443", Cred::Of("u1"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        w.tls_ping(s, "a.pkg.example.com").await,
        Ok("hello ping\n".into())
    );
    let lines = w.audit.lock().unwrap().clone();
    let open = lines
        .iter()
        .find(|l| {
            l["activity_name"] == "Open" && l["dst_endpoint"]["hostname"] == "api.example.com"
        })
        .expect("an Open line");
    assert_eq!(open["action"], "Allowed");
    assert_eq!(open["dst_endpoint"]["ip"], "192.0.2.10");
    assert_eq!(open["unmapped"]["sandbox"], "s1");
    assert!(
        w.dialled()
            .iter()
            .all(|a| a.ip().to_string() == "192.0.2.10")
    );
    assert!(
        w.metrics
            .render()
            .contains("palisade_gateway_decisions_total{outcome=\"allowed\",reason=\"Allowed\"} 2")
    );
}

#[tokio::test]
async fn names_the_policy_does_not_allow_are_refused_before_any_lookup() {
    let w = world().await;
    for (target, reason) in [
        ("evil.example.com:443", "NoMatchingRule"),
        ("pkg.example.com:443", "NoMatchingRule"),
        ("a.b.pkg.example.com:443", "NoMatchingRule"),
        ("api.example.com:8443", "PortNotAllowed"),
        ("other.example.com:443", "NoMatchingRule"),
    ] {
        let (status, head, _) = w.connect("127.0.0.1", target, Cred::Of("u1")).await;
        assert_eq!((status, denial_header(&head)), (403, reason), "{target}");
    }
    assert!(w.dialled().is_empty());
    // Counted for the sandbox's status, and announced once per host.
    let (pending, events) = w.denials.lock().unwrap().take(std::time::Instant::now());
    assert_eq!(pending["u1"].total, 5);
    assert_eq!(pending["u1"].hosts.len(), 5);
    assert_eq!(events.len(), 1, "one event per interval: {events:?}");
    assert!(events[0].note.contains("evil.example.com:443"));
}

#[tokio::test]
async fn a_rebinding_answer_is_refused_and_never_dialled() {
    let w = world().await;
    let (status, _, s) = w
        .connect("127.0.0.1", "rebind.example.com:443", Cred::Of("u1"))
        .await;
    assert_eq!(status, 200, "the first answer is a public address");
    assert!(w.tls_ping(s, "rebind.example.com").await.is_ok());
    let (status, head, _) = w
        .connect("127.0.0.1", "rebind.example.com:443", Cred::Of("u1"))
        .await;
    assert_eq!((status, denial_header(&head)), (403, "FloorAddress"));
    assert!(
        w.dialled()
            .iter()
            .all(|a| a.ip().to_string() == "192.0.2.10"),
        "{:?}",
        w.dialled()
    );
}

#[tokio::test]
async fn names_resolving_into_the_floor_private_ranges_or_deny_rules_are_refused() {
    let w = world().await;
    for (target, reason) in [
        ("local.example.com:443", "SpecialAddress"),
        ("ten.example.com:443", "PrivateAddress"),
        ("mapped.example.com:443", "FloorAddress"),
        ("denied.example.com:443", "DeniedAddress"),
        ("mixed.example.com:443", "FloorAddress"),
    ] {
        let (status, head, _) = w.connect("127.0.0.1", target, Cred::Of("u1")).await;
        assert_eq!((status, denial_header(&head)), (403, reason), "{target}");
    }
    assert!(w.dialled().is_empty(), "{:?}", w.dialled());
}

#[tokio::test]
async fn ip_literals_pass_only_through_cidr_rules() {
    let w = world().await;
    let (status, _, s) = w
        .connect("127.0.0.1", "192.0.2.99:443", Cred::Of("u1"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(w.tls_ping(s, "192.0.2.99").await, Ok("hello ping\n".into()));
    for target in ["192.0.2.10:443", "[::ffff:192.0.2.99]:443", "192.0.2.99:80"] {
        let (status, head, _) = w.connect("127.0.0.1", target, Cred::Of("u1")).await;
        assert_eq!(
            (status, denial_header(&head)),
            (403, "AddressNotAllowed"),
            "{target}"
        );
    }
    let (status, head, _) = w
        .connect("127.0.0.1", "169.254.169.254:443", Cred::Of("u1"))
        .await;
    assert_eq!((status, denial_header(&head)), (403, "FloorAddress"));
}

#[tokio::test]
async fn a_tunnel_whose_client_hello_does_not_name_the_target_sends_nothing_upstream() {
    let w = world().await;
    // Another name in the SNI.
    let (status, _, s) = w
        .connect("127.0.0.1", "api.example.com:443", Cred::Of("u1"))
        .await;
    assert_eq!(status, 200);
    assert!(w.tls_ping(s, "a.pkg.example.com").await.is_err());
    w.wait_for_denial("SniMismatch").await;
    // No SNI at all (a client naming an IP address sends none).
    let (_, _, s) = w
        .connect("127.0.0.1", "api.example.com:443", Cred::Of("u1"))
        .await;
    assert!(w.tls_ping(s, "192.0.2.10").await.is_err());
    w.wait_for_denial("SniMissing").await;
    // Encrypted Client Hello offered.
    let (_, _, mut s) = w
        .connect("127.0.0.1", "api.example.com:443", Cred::Of("u1"))
        .await;
    s.write_all(&ech_hello("api.example.com", true))
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok() && rest.is_empty(),
        "the tunnel was not closed"
    );
    w.wait_for_denial("EchOffered").await;
    // Not TLS at all.
    let (_, _, mut s) = w
        .connect("127.0.0.1", "api.example.com:443", Cred::Of("u1"))
        .await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(rest.is_empty());
    w.wait_for_denial("NotTls").await;
    assert_eq!(
        w.tls_seen.lock().unwrap().with_data,
        0,
        "bytes reached the upstream server"
    );
}

/// A ClientHello naming `name`, offering Encrypted Client Hello if `ech`.
fn ech_hello(name: &str, ech: bool) -> Vec<u8> {
    let mut sni = vec![0];
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name.as_bytes());
    let mut sni_body = (sni.len() as u16).to_be_bytes().to_vec();
    sni_body.extend_from_slice(&sni);
    let mut ext = Vec::new();
    let mut extensions = vec![(0u16, sni_body)];
    if ech {
        extensions.push((0xfe0d, vec![0, 0, 1, 0, 1, 7]));
    }
    for (t, body) in extensions {
        ext.extend_from_slice(&t.to_be_bytes());
        ext.extend_from_slice(&(body.len() as u16).to_be_bytes());
        ext.extend_from_slice(&body);
    }
    let mut body = vec![3, 3];
    body.extend_from_slice(&[9; 32]);
    body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![22, 3, 1];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

#[tokio::test]
async fn credentials_and_source_addresses_must_agree() {
    let w = world().await;
    let cases = [
        ("127.0.0.1", Cred::None, 407, "Unauthenticated"),
        (
            "127.0.0.1",
            Cred::Raw("Basic dTE6d3Jvbmc="),
            407,
            "Unauthenticated",
        ),
        ("127.0.0.1", Cred::Raw("Bearer x"), 407, "Unauthenticated"),
        // Sandbox s1's credential from s2's address, and the other way round.
        ("127.0.0.2", Cred::Of("u1"), 403, "WrongSandbox"),
        ("127.0.0.1", Cred::Of("u2"), 403, "WrongSandbox"),
        ("127.0.0.3", Cred::Of("u1"), 403, "UnknownSource"),
    ];
    for (from, cred, status, reason) in cases {
        let (got, head, _) = w.connect(from, "api.example.com:443", cred).await;
        assert_eq!((got, denial_header(&head)), (status, reason), "from {from}");
        if status == 407 {
            assert!(head.contains("proxy-authenticate: Basic"), "{head}");
        }
    }
    assert!(w.dialled().is_empty());
}

#[tokio::test]
async fn a_pod_seen_running_while_its_first_request_waits_is_served_and_never_before() {
    let w = world().await;
    // s3 starts: its first CONNECT comes before the pod watch has told the gateway.
    let mut cache = RulesCache::default();
    let with_s3 = build(
        &[
            pod("s1", "u1", "127.0.0.1"),
            pod("s2", "u2", "127.0.0.2"),
            pod("s3", "u3", "127.0.0.3"),
        ],
        &[
            sandbox("s1", "u1", "p1"),
            sandbox("s2", "u2", "p2"),
            sandbox("s3", "u3", "p1"),
        ],
        &[policy("p1", "1", s1_egress(true))],
        ClusterRanges::default(),
        &mut cache,
    );
    let tx = w.directory.clone();
    let started = std::time::Instant::now();
    let publish = tokio::spawn(async move {
        tokio::time::sleep(SOURCE_WAIT / 4).await;
        tx.send_replace(Arc::new(with_s3));
    });
    let (status, head, s) = w
        .connect("127.0.0.3", "api.example.com:443", Cred::Of("u3"))
        .await;
    publish.await.unwrap();
    assert_eq!(status, 200, "{head}");
    assert!(started.elapsed() >= SOURCE_WAIT / 4);
    assert!(w.tls_ping(s, "api.example.com").await.is_ok());
    // A source that never shows up is refused once the wait is over, and nothing is dialled
    // for it; the same for a credential of another sandbox than the address's.
    for (from, uid, reason) in [
        ("127.0.0.4", "u1", "UnknownSource"),
        ("127.0.0.2", "u3", "WrongSandbox"),
    ] {
        let started = std::time::Instant::now();
        let before = w.dialled().len();
        let (status, head, _) = w.connect(from, "api.example.com:443", Cred::Of(uid)).await;
        assert_eq!((status, denial_header(&head)), (403, reason));
        assert!(
            started.elapsed() >= SOURCE_WAIT,
            "refused before the wait ended"
        );
        assert_eq!(w.dialled().len(), before);
    }
    // A pod the gateway knows as Pending (the kubelet has not reported its agent running):
    // its requests are never attributed to it, but wait longer for it to be Running.
    let s4 = |phase: &str| {
        let mut p = (*pod("s4", "u4", "127.0.0.4")).clone();
        p.status.as_mut().unwrap().phase = Some(phase.into());
        let mut cache = RulesCache::default();
        Arc::new(build(
            &[pod("s1", "u1", "127.0.0.1"), Arc::new(p)],
            &[sandbox("s1", "u1", "p1"), sandbox("s4", "u4", "p1")],
            &[policy("p1", "1", s1_egress(true))],
            ClusterRanges::default(),
            &mut cache,
        ))
    };
    w.directory.send_replace(s4("Pending"));
    let tx = w.directory.clone();
    let running = s4("Running");
    let started = std::time::Instant::now();
    let publish = tokio::spawn(async move {
        tokio::time::sleep(SOURCE_WAIT * 2).await;
        tx.send_replace(running);
    });
    let (status, head, _) = w
        .connect("127.0.0.4", "api.example.com:443", Cred::Of("u4"))
        .await;
    publish.await.unwrap();
    assert_eq!(status, 200, "{head}");
    assert!(started.elapsed() >= SOURCE_WAIT * 2);
    // One that stays Pending is refused once the longer wait is over.
    w.directory.send_replace(s4("Pending"));
    let started = std::time::Instant::now();
    let (status, head, _) = w
        .connect("127.0.0.4", "api.example.com:443", Cred::Of("u4"))
        .await;
    assert_eq!((status, denial_header(&head)), (403, "UnknownSource"));
    assert!(started.elapsed() >= STARTING_WAIT);
    // A missing credential is answered at once: nothing a newer view could change.
    let started = std::time::Instant::now();
    let (status, _, _) = w
        .connect("127.0.0.4", "api.example.com:443", Cred::None)
        .await;
    assert_eq!(status, 407);
    assert!(started.elapsed() < SOURCE_WAIT);
}

#[tokio::test]
async fn nothing_is_decided_before_the_caches_have_listed() {
    let w = world().await;
    w.directory.send_replace(Arc::new(Directory::default()));
    let (status, head, _) = w
        .connect("127.0.0.1", "api.example.com:443", Cred::Of("u1"))
        .await;
    assert_eq!((status, denial_header(&head)), (503, "NotSynced"));
}

#[tokio::test]
async fn a_narrowed_policy_closes_an_open_tunnel() {
    let mut w = world().await;
    let (status, _, s) = w
        .connect("127.0.0.1", "api.example.com:443", Cred::Of("u1"))
        .await;
    assert_eq!(status, 200);
    let config = rustls::ClientConfig::builder_with_provider(crypto())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(w.roots.clone())
        .with_no_client_auth();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("api.example.com".try_into().unwrap(), s)
        .await
        .unwrap();
    tls.write_all(b"ping\n").await.unwrap();
    let mut line = String::new();
    let mut reader = BufReader::new(tls);
    reader.read_line(&mut line).await.unwrap();
    assert_eq!(line, "hello ping\n");
    // The policy loses api.example.com: the tunnel is cut, and new tunnels are refused.
    let narrowed = directory(false, &mut w.cache);
    w.directory.send_replace(Arc::new(narrowed));
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the tunnel stayed open");
    w.wait_for_denial("PolicyChanged").await;
    let (status, head, _) = w
        .connect("127.0.0.1", "api.example.com:443", Cred::Of("u1"))
        .await;
    assert_eq!((status, denial_header(&head)), (403, "NoMatchingRule"));
    assert!(
        w.metrics
            .render()
            .contains("palisade_gateway_tunnels_closed_by_policy_total 1")
    );
}

#[tokio::test]
async fn plain_http_only_on_port_80_with_a_matching_host_and_no_credential_upstream() {
    let w = world().await;
    let auth = w.auth(&Cred::Of("u1"));
    let (status, _, mut s) = w
        .request(
            "127.0.0.1",
            format!("GET http://plain.example.com/simple?x=1 HTTP/1.1\r\nHost: plain.example.com\r\n{auth}\r\n"),
        )
        .await;
    assert_eq!(status, 200);
    let mut body = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut body)).await;
    let seen = w.http_seen.lock().unwrap().requests.clone();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].starts_with("GET /simple?x=1 HTTP/1.1\r\n"),
        "{}",
        seen[0]
    );
    assert!(
        !seen[0].to_ascii_lowercase().contains("proxy-authorization"),
        "{}",
        seen[0]
    );
    for (request, status, reason) in [
        (
            "GET http://plain.example.com/ HTTP/1.1\r\nHost: api.example.com\r\n",
            403,
            "HostMismatch",
        ),
        (
            "GET http://plain.example.com:8080/ HTTP/1.1\r\nHost: plain.example.com:8080\r\n",
            403,
            "PortNotAllowed",
        ),
        (
            "GET http://api.example.com/ HTTP/1.1\r\nHost: api.example.com\r\n",
            403,
            "PortNotAllowed",
        ),
        (
            "GET / HTTP/1.1\r\nHost: plain.example.com\r\n",
            400,
            "BadRequest",
        ),
        (
            "GET https://api.example.com/ HTTP/1.1\r\nHost: api.example.com\r\n",
            400,
            "BadRequest",
        ),
    ] {
        let (got, head, _) = w.request("127.0.0.1", format!("{request}{auth}\r\n")).await;
        assert_eq!((got, denial_header(&head)), (status, reason), "{request}");
    }
    assert_eq!(w.http_seen.lock().unwrap().requests.len(), 1);
}

#[tokio::test]
async fn a_plain_request_whose_rule_goes_while_it_is_dialled_sends_nothing_upstream() {
    // Admitted, then the policy loses slow.example.com while the gateway dials it (600 ms):
    // the request is checked again before anything is sent, and refused.
    let mut w = world().await;
    let auth = w.auth(&Cred::Of("u1"));
    let proxy = w.proxy;
    let sent = tokio::spawn(async move {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        let head = format!(
            "GET http://slow.example.com/secret HTTP/1.1\r\nHost: slow.example.com\r\n{auth}\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut response)).await;
        String::from_utf8_lossy(&response).to_string()
    });
    // The dial has started (the connector was asked) before the policy narrows.
    for _ in 0..100 {
        if w.dialled().iter().any(|a| a.port() == 80) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(w.dialled().contains(&"192.0.2.21:80".parse().unwrap()));
    let narrowed = directory(false, &mut w.cache);
    w.directory.send_replace(Arc::new(narrowed));
    let response = sent.await.unwrap();
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    assert_eq!(denial_header(&response), "PolicyChanged", "{response}");
    assert!(
        w.http_seen.lock().unwrap().requests.is_empty(),
        "a request went upstream: {:?}",
        w.http_seen.lock().unwrap().requests
    );
}

#[tokio::test]
async fn bytes_that_are_not_http_get_400_and_a_close() {
    let w = world().await;
    for garbage in [
        &b"SSH-2.0-OpenSSH_9.6\r\n\r\n"[..],
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\r\n\r\n"[..],
    ] {
        let mut s = w.dial_from("127.0.0.1").await;
        s.write_all(garbage).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 400"), "{text:?}");
    }
    w.wait_for_denial("BadRequest").await;
    assert!(w.dialled().is_empty());
}

#[tokio::test]
async fn a_connect_and_its_client_hello_in_one_write_are_served() {
    let w = world().await;
    let auth = w.auth(&Cred::Of("u1"));
    let mut s = w.dial_from("127.0.0.1").await;
    let mut bytes =
        format!("CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n{auth}\r\n")
            .into_bytes();
    bytes.extend_from_slice(&ech_hello("api.example.com", false));
    s.write_all(&bytes).await.unwrap();
    for _ in 0..100 {
        if w.tls_seen.lock().unwrap().with_data == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(
        w.tls_seen.lock().unwrap().with_data,
        1,
        "the hello did not reach upstream"
    );
}

#[tokio::test]
async fn a_connection_header_cannot_remove_the_checked_host() {
    let w = world().await;
    let auth = w.auth(&Cred::Of("u1"));
    let (status, _, mut s) = w
        .request(
            "127.0.0.1",
            format!("GET http://plain.example.com/x HTTP/1.1\r\nHost: plain.example.com\r\nConnection: host, x-foo\r\nX-Foo: 1\r\n{auth}\r\n"),
        )
        .await;
    assert_eq!(status, 200);
    let mut body = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut body)).await;
    let seen = w.http_seen.lock().unwrap().requests.clone();
    assert_eq!(seen.len(), 1);
    let lower = seen[0].to_ascii_lowercase();
    assert!(
        lower.contains("\r\nhost: plain.example.com\r\n"),
        "{}",
        seen[0]
    );
    assert!(!lower.contains("x-foo"), "{}", seen[0]);
}

#[tokio::test]
async fn one_source_cannot_take_every_connection() {
    let w = world_with(Limits {
        per_source: 2,
        ..Limits::default()
    })
    .await;
    let (a, _, _s1) = w
        .connect("127.0.0.1", "api.example.com:443", Cred::Of("u1"))
        .await;
    let (b, _, _s2) = w
        .connect("127.0.0.1", "api.example.com:443", Cred::Of("u1"))
        .await;
    assert_eq!((a, b), (200, 200));
    // The third from the same pod is closed at once; another pod is still served.
    let mut third = w.dial_from("127.0.0.1").await;
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut out)).await;
    assert!(closed.is_ok() && out.is_empty());
    w.wait_for_denial("Overloaded").await;
    let (status, head, _) = w
        .connect("127.0.0.2", "api.example.com:443", Cred::Of("u2"))
        .await;
    assert_eq!((status, denial_header(&head)), (403, "NoMatchingRule"));
}

#[tokio::test]
async fn on_shutdown_open_tunnels_drain_then_close() {
    let w = world().await;
    let (status, _, s) = w
        .connect("127.0.0.1", "api.example.com:443", Cred::Of("u1"))
        .await;
    assert_eq!(status, 200);
    let config = rustls::ClientConfig::builder_with_provider(crypto())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(w.roots.clone())
        .with_no_client_auth();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("api.example.com".try_into().unwrap(), s)
        .await
        .unwrap();
    w.stop.cancel();
    // New connections are refused at once; the open tunnel still carries bytes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        TcpStream::connect(w.proxy).await.is_err(),
        "still accepting"
    );
    tls.write_all(b"ping\n").await.unwrap();
    let mut reader = BufReader::new(tls);
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    assert_eq!(line, "hello ping\n");
    // After the drain time (1 s here) it is closed, and said so.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the tunnel outlived the drain");
    w.wait_for_denial("Shutdown").await;
    assert!(!w.denials().iter().any(|d| d == "PolicyChanged"));
    tokio::time::timeout(Duration::from_secs(5), w.served)
        .await
        .expect("serve returned")
        .unwrap();
}

/// s1's policy replaced by `spec` (an AgentPolicy spec), s2 as in `directory`.
fn directory_with(spec: Value, cache: &mut RulesCache, s1_terminating: bool) -> Directory {
    let mut s1 = (*pod("s1", "u1", "127.0.0.1")).clone();
    if s1_terminating {
        s1.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
        );
    }
    let p1: Arc<AgentPolicy> = Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "palisade.dev/v1alpha1", "kind": "AgentPolicy",
            "metadata": {"namespace": "team", "name": "p1", "uid": "uid-p1", "resourceVersion": "9", "generation": 1},
            "spec": spec
        }))
        .unwrap(),
    );
    build(
        &[Arc::new(s1), pod("s2", "u2", "127.0.0.2")],
        &[sandbox("s1", "u1", "p1"), sandbox("s2", "u2", "p2")],
        &[p1],
        ClusterRanges::default(),
        cache,
    )
}

#[tokio::test]
async fn blocked_names_under_allow_all_hold_for_names_and_for_ip_literals() {
    let mut w = world().await;
    let blocked = directory_with(
        json!({"network": {"allowOutbound": true, "blockedHosts": ["api.example.com"]}}),
        &mut w.cache,
        false,
    );
    w.directory.send_replace(Arc::new(blocked));
    // A name both allowed (every name) and blocked, and a name under it: refused.
    for target in ["api.example.com:443", "x.api.example.com:443"] {
        let (status, head, _) = w.connect("127.0.0.1", target, Cred::Of("u1")).await;
        assert_eq!(
            (status, denial_header(&head)),
            (403, "NameDenied"),
            "{target}"
        );
    }
    // Another name passes.
    let (status, head, s) = w
        .connect("127.0.0.1", "a.pkg.example.com:443", Cred::Of("u1"))
        .await;
    assert_eq!(status, 200, "{head}");
    assert!(w.tls_ping(s, "a.pkg.example.com").await.is_ok());
    // The blocked host's address, asked for as an IP literal, with its name in the SNI.
    let (status, _, mut s) = w
        .connect("127.0.0.1", "192.0.2.10:443", Cred::Of("u1"))
        .await;
    assert_eq!(status, 200);
    let before = w.tls_seen.lock().unwrap().with_data;
    s.write_all(&ech_hello("API.example.com.", false))
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok() && rest.is_empty(), "the tunnel stayed open");
    w.wait_for_denial("NameDenied").await;
    // ...and with Encrypted Client Hello, which could hide it.
    let (_, _, mut s) = w
        .connect("127.0.0.1", "192.0.2.10:443", Cred::Of("u1"))
        .await;
    s.write_all(&ech_hello("a.pkg.example.com", true))
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok() && rest.is_empty(), "the tunnel stayed open");
    w.wait_for_denial("EchOffered").await;
    assert_eq!(
        w.tls_seen.lock().unwrap().with_data,
        before,
        "bytes reached the blocked host"
    );
    // Another name in the SNI of the same address goes through.
    let (status, _, s) = w
        .connect("127.0.0.1", "192.0.2.10:443", Cred::Of("u1"))
        .await;
    assert_eq!(status, 200);
    assert!(w.tls_ping(s, "a.pkg.example.com").await.is_ok());

    // An address in plain HTTP: its Host must not be blocked (review finding: CONNECT to the
    // blocked host's address with `Host: api.example.com` reached it).
    let http_before = w.http_seen.lock().unwrap().requests.len();
    for (head, reason) in [
        (
            "GET / HTTP/1.1\r\nHost: API.example.com:80\r\n\r\n",
            "NameDenied",
        ),
        (
            "GET / HTTP/1.1\r\nHost: x.api.example.com\r\n\r\n",
            "NameDenied",
        ),
        // No Host, or two: nothing that can be checked.
        ("GET / HTTP/1.0\r\n\r\n", "NotTls"),
        (
            "GET / HTTP/1.1\r\nHost: a.pkg.example.com\r\nHost: api.example.com\r\n\r\n",
            "NotTls",
        ),
        // Neither TLS nor HTTP: another protocol names no host.
        ("SSH-2.0-OpenSSH_9.6\r\n", "NotTls"),
    ] {
        let (status, _, mut s) = w
            .connect("127.0.0.1", "192.0.2.20:80", Cred::Of("u1"))
            .await;
        assert_eq!(status, 200, "{head:?}");
        s.write_all(head.as_bytes()).await.unwrap();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        assert!(
            closed.is_ok() && rest.is_empty(),
            "the tunnel stayed open: {head:?}"
        );
        w.wait_for_denial(reason).await;
    }
    assert_eq!(
        w.http_seen.lock().unwrap().requests.len(),
        http_before,
        "a request reached the address"
    );
    // TLS without a server name to an address: refused too.
    let (_, _, s) = w
        .connect("127.0.0.1", "192.0.2.10:443", Cred::Of("u1"))
        .await;
    assert!(w.tls_ping(s, "192.0.2.10").await.is_err());
    w.wait_for_denial("SniMissing").await;
    // An allowed Host at an address goes through.
    let (status, _, mut s) = w
        .connect("127.0.0.1", "192.0.2.20:80", Cred::Of("u1"))
        .await;
    assert_eq!(status, 200);
    s.write_all(b"GET /simple HTTP/1.1\r\nHost: plain.example.com\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut body)).await;
    assert!(
        String::from_utf8_lossy(&body).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[tokio::test]
async fn a_policy_that_does_not_compile_refuses_everything_for_its_sandboxes() {
    let mut w = world().await;
    let broken = directory_with(
        json!({"network": {"egress": {"allow": [{"to": [{"cidr": "300.1.2.3/8"}]}]}}}),
        &mut w.cache,
        false,
    );
    w.directory.send_replace(Arc::new(broken));
    for target in ["api.example.com:443", "192.0.2.99:443"] {
        let (status, head, _) = w.connect("127.0.0.1", target, Cred::Of("u1")).await;
        assert_eq!(
            (status, denial_header(&head)),
            (403, "PolicyUnavailable"),
            "{target}"
        );
    }
    assert!(w.dialled().is_empty());
}

#[tokio::test]
async fn a_terminating_pod_loses_its_open_tunnel_and_its_address() {
    let mut w = world().await;
    let (status, _, s) = w
        .connect("127.0.0.1", "api.example.com:443", Cred::Of("u1"))
        .await;
    assert_eq!(status, 200);
    let config = rustls::ClientConfig::builder_with_provider(crypto())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(w.roots.clone())
        .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("api.example.com".try_into().unwrap(), s)
        .await
        .unwrap();
    let mut reader = BufReader::new(tls);
    reader.get_mut().write_all(b"ping\n").await.unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    assert_eq!(line, "hello ping\n");
    let ending = directory_with(
        json!({"network": {"egress": s1_egress(true)}}),
        &mut w.cache,
        true,
    );
    w.directory.send_replace(Arc::new(ending));
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the tunnel stayed open");
    w.wait_for_denial("PolicyChanged").await;
    let (status, head, _) = w
        .connect("127.0.0.1", "api.example.com:443", Cred::Of("u1"))
        .await;
    assert_eq!((status, denial_header(&head)), (403, "UnknownSource"));
}

#[tokio::test]
async fn served_by_worker_threads_it_tunnels_then_drains() {
    let w = world_served(Limits::default(), Some(2)).await;
    for _ in 0..4 {
        let (status, head, s) = w
            .connect("127.0.0.1", "api.example.com:443", Cred::Of("u1"))
            .await;
        assert_eq!(status, 200, "{head}");
        assert!(w.tls_ping(s, "api.example.com").await.is_ok());
    }
    let (status, head, _) = w
        .connect("127.0.0.1", "other.example.com:443", Cred::Of("u1"))
        .await;
    assert_eq!((status, denial_header(&head)), (403, "NoMatchingRule"));
    w.stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), w.served)
        .await
        .expect("every worker stopped")
        .unwrap();
}

#[tokio::test]
async fn answers_are_kept_for_their_ttl_and_never_beyond() {
    use palisade::gateway::resolve::Resolve;
    let answers = || {
        HashMap::from([(
            "twice.example.com".to_string(),
            vec![ips(&["192.0.2.1"]), ips(&["192.0.2.2"])],
        )])
    };
    // TTL 300: the second request is answered from the cache (the server would say .2).
    let kept = DnsResolver::new(&[dns_server(answers(), 300).await.unwrap()]).unwrap();
    assert_eq!(
        kept.lookup("twice.example.com").await.unwrap(),
        ips(&["192.0.2.1"])
    );
    assert_eq!(
        kept.lookup("twice.example.com").await.unwrap(),
        ips(&["192.0.2.1"])
    );
    // TTL 1: kept for that second, never beyond.
    let brief = DnsResolver::new(&[dns_server(answers(), 1).await.unwrap()]).unwrap();
    assert_eq!(
        brief.lookup("twice.example.com").await.unwrap(),
        ips(&["192.0.2.1"])
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        brief.lookup("twice.example.com").await.unwrap(),
        ips(&["192.0.2.2"]),
        "an answer was kept past its TTL"
    );
    // TTL 0: asked again each time.
    let fresh = DnsResolver::new(&[dns_server(answers(), 0).await.unwrap()]).unwrap();
    assert_eq!(
        fresh.lookup("twice.example.com").await.unwrap(),
        ips(&["192.0.2.1"])
    );
    assert_eq!(
        fresh.lookup("twice.example.com").await.unwrap(),
        ips(&["192.0.2.2"])
    );
}
