//! The gateway's proxy: HTTP/1.1 `CONNECT host:port` tunnels and absolute-form plain HTTP.
//! Every request is attributed, decided, resolved, checked and dialled here, in that order;
//! anything that cannot be decided is refused.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::addr::dial_form;
use super::audit::{Activity, Auditor, Decision};
use super::credential::CredentialKey;
use super::directory::{Directory, Source};
use super::host::{Host, parse_host, split_authority};
use super::resolve::Resolve;
use super::rules::Denial;
use super::tls::{Hello, MAX_HELLO, client_hello};

type Body = BoxBody<Bytes, hyper::Error>;

/// How long each step may take.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Reading a request's headers.
    pub header: Duration,
    /// Resolving a name.
    pub resolve: Duration,
    /// Connecting to one upstream address.
    pub connect: Duration,
    /// Reading the tunnel's ClientHello.
    pub hello: Duration,
    /// Open tunnels get this long to finish once the gateway shuts down.
    pub drain: Duration,
    /// A plain HTTP request's upstream connection and response head.
    pub response: Duration,
    /// How long a request that the current view cannot attribute (unknown source address,
    /// another sandbox's address, caches not listed yet) waits for the pod watch to catch up
    /// before it is refused: a pod's first connections can come before the gateway has seen
    /// it Running. The decision is only taken later, never made looser.
    pub source: Duration,
    /// The same wait for a request from the address of a sandbox pod that exists but has not
    /// been reported Running yet.
    pub starting: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header: Duration::from_secs(10),
            resolve: Duration::from_secs(5),
            connect: Duration::from_secs(10),
            hello: Duration::from_secs(10),
            drain: Duration::from_secs(20),
            response: Duration::from_secs(60),
            source: Duration::from_secs(5),
            starting: Duration::from_secs(30),
        }
    }
}

pub type Dial<'a> = Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send + 'a>>;

/// Opens upstream connections to checked addresses.
pub trait Connect: Send + Sync {
    fn connect(&self, address: SocketAddr) -> Dial<'_>;
}

/// Connects to the address itself.
pub struct Direct;

impl Connect for Direct {
    fn connect(&self, address: SocketAddr) -> Dial<'_> {
        Box::pin(TcpStream::connect(address))
    }
}

/// How much one gateway takes on.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once, from everyone. A busy tunnel holds 64 KiB of buffers, so the
    /// default (4,096) needs up to 256 MiB besides the caches.
    pub connections: usize,
    /// Connections open at once from one source address (one sandbox pod).
    pub per_source: usize,
    /// A tunnel that carries no byte either way for this long is closed.
    pub idle: Duration,
    /// Request headers, in bytes and in number.
    pub header_bytes: usize,
    pub headers: usize,
    /// Addresses of one name tried when connecting.
    pub addresses: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: 4096,
            per_source: 256,
            idle: Duration::from_secs(900),
            header_bytes: 32 * 1024,
            headers: 64,
            addresses: 4,
        }
    }
}

/// Everything a connection needs.
pub struct Gateway {
    pub directory: watch::Receiver<Arc<Directory>>,
    pub resolver: Arc<dyn Resolve>,
    pub connector: Arc<dyn Connect>,
    pub key: CredentialKey,
    pub auditor: Auditor,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// Open connections and tunnels: `serve` waits for them on shutdown.
    tasks: tokio_util::task::TaskTracker,
    /// Cancelled when the drain time is over: open tunnels close then.
    hard_stop: CancellationToken,
    connections: Arc<tokio::sync::Semaphore>,
    per_source: std::sync::Mutex<HashMap<IpAddr, usize>>,
}

impl Gateway {
    pub fn new(
        directory: watch::Receiver<Arc<Directory>>,
        resolver: Arc<dyn Resolve>,
        connector: Arc<dyn Connect>,
        key: CredentialKey,
        auditor: Auditor,
        timeouts: Timeouts,
        limits: Limits,
    ) -> Self {
        Gateway {
            directory,
            resolver,
            connector,
            key,
            auditor,
            timeouts,
            limits,
            tasks: tokio_util::task::TaskTracker::new(),
            hard_stop: CancellationToken::new(),
            connections: Arc::new(tokio::sync::Semaphore::new(limits.connections)),
            per_source: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// A slot for a connection from `source`, if the limits allow one.
    fn admit_connection(self: &Arc<Self>, source: IpAddr) -> Option<Slot> {
        let permit = self.connections.clone().try_acquire_owned().ok()?;
        let mut counts = self.per_source.lock().ok()?;
        let n = counts.entry(source).or_insert(0);
        if *n >= self.limits.per_source {
            return None;
        }
        *n += 1;
        Some(Slot {
            gw: self.clone(),
            source,
            _permit: permit,
        })
    }
}

/// A connection's place in the limits, given back when it ends.
struct Slot {
    gw: Arc<Gateway>,
    source: IpAddr,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.gw.per_source.lock()
            && let Some(n) = counts.get_mut(&self.source)
        {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.source);
            }
        }
    }
}

/// Serves on `addr` with `workers` threads, each a single-threaded runtime with a listener of
/// its own on the same address (`SO_REUSEPORT`: the kernel spreads connections over them), so
/// that a connection and its tunnel stay on one thread. Returns once every worker has drained
/// (see [`serve`]); `ready` gets the bound address (port 0 picks one) once all listen.
pub fn serve_workers(
    addr: SocketAddr,
    workers: usize,
    gw: Arc<Gateway>,
    shutdown: CancellationToken,
    ready: std::sync::mpsc::Sender<SocketAddr>,
) -> std::io::Result<()> {
    let bind = |addr: SocketAddr| -> std::io::Result<std::net::TcpListener> {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseport(true)?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(1024)?.into_std()
    };
    // Sockets are made outside any runtime (std listeners, non-blocking), then handed over.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let first = rt.block_on(async { bind(addr) })?;
    let bound = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..workers.max(1) {
        listeners.push(rt.block_on(async { bind(bound) })?);
    }
    drop(rt);
    let _ = ready.send(bound);
    let threads: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(i, listener)| {
            let (gw, shutdown) = (gw.clone(), shutdown.clone());
            std::thread::Builder::new()
                .name(format!("gateway-{i}"))
                .spawn(move || -> std::io::Result<()> {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(async move {
                        let listener = TcpListener::from_std(listener)?;
                        serve(listener, gw, shutdown).await;
                        Ok(())
                    })
                })
        })
        .collect::<std::io::Result<_>>()?;
    for t in threads {
        match t.join() {
            Ok(result) => result?,
            Err(_) => return Err(std::io::Error::other("a gateway worker panicked")),
        }
    }
    Ok(())
}

/// Accepts connections until `shutdown`, then lets open connections and tunnels drain for
/// `timeouts.drain`, then closes what is left.
pub async fn serve(listener: TcpListener, gw: Arc<Gateway>, shutdown: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = gw.admit_connection(peer.ip()) else {
            let mut d = Decision::new(Activity::Http, peer, String::new(), 0);
            d.denial = Some(Denial::Overloaded);
            gw.auditor.record(&d);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let gw2 = gw.clone();
        gw.tasks.spawn(async move {
            let stop = gw2.hard_stop.clone();
            tokio::select! {
                () = connection(gw2, stream, peer, Arc::new(slot)) => {}
                () = stop.cancelled() => {}
            }
        });
    }
    drop(listener);
    gw.tasks.close();
    if tokio::time::timeout(gw.timeouts.drain, gw.tasks.wait())
        .await
        .is_err()
    {
        gw.hard_stop.cancel();
        gw.tasks.wait().await;
    }
}

/// Serves one client connection. `slot` is its place in the connection limits, held by the
/// connection and by a tunnel it turns into.
async fn connection(gw: Arc<Gateway>, stream: TcpStream, peer: SocketAddr, slot: Arc<Slot>) {
    let service = {
        let gw = gw.clone();
        service_fn(move |req| {
            let gw = gw.clone();
            let slot = slot.clone();
            async move { Ok::<_, Infallible>(handle(gw, peer, req, slot).await) }
        })
    };
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(gw.timeouts.header)
        .max_buf_size(gw.limits.header_bytes.max(8192))
        .max_headers(gw.limits.headers)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    if let Err(e) = result
        && (e.is_parse() || e.is_parse_too_large())
    {
        let mut d = Decision::new(Activity::Http, peer, String::new(), 0);
        d.denial = Some(Denial::BadRequest);
        gw.auditor.record(&d);
    }
}

fn text(status: StatusCode, message: String) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(message))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The response for a refusal: 407 asks for the credential, 503 says the gateway is not ready,
/// 502 that upstream failed, 400 a malformed request, 403 everything the policy refuses.
fn refusal(denial: Denial, target: &str) -> Response<Body> {
    let status = match denial {
        Denial::Unauthenticated => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        Denial::NotSynced => StatusCode::SERVICE_UNAVAILABLE,
        Denial::ResolveFailed | Denial::UpstreamFailed => StatusCode::BAD_GATEWAY,
        Denial::BadRequest => StatusCode::BAD_REQUEST,
        _ => StatusCode::FORBIDDEN,
    };
    let mut r = text(
        status,
        format!("palisade gateway: {target} refused ({denial})\n"),
    );
    r.headers_mut().insert(
        HeaderName::from_static("x-palisade-denial"),
        HeaderValue::from_static(denial.as_str()),
    );
    if denial == Denial::Unauthenticated {
        r.headers_mut().insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"palisade-gateway\""),
        );
    }
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

async fn handle(
    gw: Arc<Gateway>,
    peer: SocketAddr,
    req: Request<Incoming>,
    slot: Arc<Slot>,
) -> Response<Body> {
    let started = Instant::now();
    if req.method() == Method::CONNECT {
        connect(gw, peer, req, started, slot).await
    } else if req.uri().scheme_str() == Some("http") && req.uri().authority().is_some() {
        forward(gw, peer, req, started).await
    } else {
        let mut d = Decision::new(Activity::Http, peer, String::new(), 0);
        d.method = Some(req.method().to_string());
        d.denial = Some(Denial::BadRequest);
        gw.auditor.record(&d);
        refusal(Denial::BadRequest, &req.uri().to_string())
    }
}

/// What a request was granted: re-checked while a tunnel stays open.
struct Grant {
    source: Source,
    uid: String,
    host: Host,
    address: SocketAddr,
}

/// A request that passed every check, with its upstream connection open.
struct Admitted {
    grant: Grant,
    upstream: TcpStream,
}

/// The newest view of pods, sandboxes and policies, waiting up to `Timeouts::source` (or
/// `Timeouts::starting`, for the address of a pod not reported Running yet) for one that
/// attributes a request from `peer` with credential `uid` while the current one cannot for a
/// reason a newer view may change (a pod just started, an address just reused, caches not
/// listed). A missing or wrong credential is not waited on.
async fn attributable(gw: &Gateway, peer: SocketAddr, uid: Option<&str>) -> Arc<Directory> {
    let mut changes = gw.directory.clone();
    let started = tokio::time::Instant::now();
    loop {
        let snapshot = changes.borrow_and_update().clone();
        match snapshot.attribute(peer.ip(), uid) {
            Err(Denial::UnknownSource | Denial::WrongSandbox | Denial::NotSynced) => {}
            _ => return snapshot,
        }
        let wait = if snapshot.is_starting(peer.ip()) {
            gw.timeouts.starting
        } else {
            gw.timeouts.source
        };
        match tokio::time::timeout_at(started + wait, changes.changed()).await {
            Ok(Ok(())) => {}
            _ => return snapshot,
        }
    }
}

/// Attributes, decides, resolves, checks and dials. On refusal, the decision is filled in.
async fn admit(
    gw: &Gateway,
    peer: SocketAddr,
    headers: &HeaderMap,
    host: &Host,
    port: u16,
    d: &mut Decision,
) -> Result<Admitted, Denial> {
    let uid = gw.key.verify(
        headers
            .get(header::PROXY_AUTHORIZATION)
            .map(HeaderValue::as_bytes),
    );
    let snapshot = attributable(gw, peer, uid.as_deref()).await;
    let (source, rules) = snapshot.attribute(peer.ip(), uid.as_deref())?;
    d.sandbox = Some(source.clone());
    rules.check_host(host, port)?;
    let ips: Vec<IpAddr> = match host {
        Host::Ip(ip) => vec![*ip],
        Host::Name(name) => {
            match tokio::time::timeout(gw.timeouts.resolve, gw.resolver.lookup(name)).await {
                Ok(Ok(ips)) => ips,
                _ => return Err(Denial::ResolveFailed),
            }
        }
    };
    rules.check_addresses(&ips, port)?;
    // Every answer was checked; a few are tried, within one connect budget.
    let deadline = tokio::time::Instant::now() + gw.timeouts.connect;
    for ip in ips.into_iter().take(gw.limits.addresses) {
        let address = SocketAddr::new(dial_form(ip), port);
        d.address = Some(address);
        if let Ok(Ok(upstream)) =
            tokio::time::timeout_at(deadline, gw.connector.connect(address)).await
        {
            let _ = upstream.set_nodelay(true);
            return Ok(Admitted {
                grant: Grant {
                    source: source.clone(),
                    uid: uid.unwrap_or_default(),
                    host: host.clone(),
                    address,
                },
                upstream,
            });
        }
    }
    Err(Denial::UpstreamFailed)
}

fn parse_target(authority: &str, default_port: Option<u16>) -> Option<(Host, u16)> {
    let (host, port) = split_authority(authority)?;
    let port = port.or(default_port)?;
    Some((parse_host(host).ok()?, port))
}

async fn connect(
    gw: Arc<Gateway>,
    peer: SocketAddr,
    req: Request<Incoming>,
    started: Instant,
    slot: Arc<Slot>,
) -> Response<Body> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    let Some((host, port)) = parse_target(&authority, None) else {
        let mut d = Decision::new(Activity::Open, peer, without_userinfo(&authority), 0);
        d.denial = Some(Denial::BadRequest);
        gw.auditor.record(&d);
        return refusal(Denial::BadRequest, &authority);
    };
    let mut d = Decision::new(Activity::Open, peer, host.to_string(), port);
    let admitted = match admit(&gw, peer, req.headers(), &host, port, &mut d).await {
        Ok(a) => a,
        Err(denial) => {
            d.denial = Some(denial);
            d.duration = started.elapsed();
            gw.metrics_decided(started);
            gw.auditor.record(&d);
            return refusal(denial, &authority);
        }
    };
    let tasks = gw.tasks.clone();
    tasks.spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                tunnel(gw, TokioIo::new(upgraded), admitted, d, started).await;
                drop(slot);
            }
            Err(e) => tracing::debug!(error = %e, "the CONNECT upgrade failed"),
        }
    });
    let mut ok = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    );
    *ok.status_mut() = StatusCode::OK;
    ok
}

impl Gateway {
    fn metrics_decided(&self, started: Instant) {
        self.auditor
            .metrics
            .decision_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    /// Whether an open tunnel is still allowed by the current directory.
    fn still_allowed(&self, peer: SocketAddr, a: &Grant) -> bool {
        let snapshot = self.directory.borrow().clone();
        let Ok((source, rules)) = snapshot.attribute(peer.ip(), Some(&a.uid)) else {
            return false;
        };
        source.sandbox_uid == a.source.sandbox_uid
            && rules.check_host(&a.host, a.address.port()).is_ok()
            && rules
                .check_address(a.address.ip(), a.address.port())
                .is_ok()
    }
}

/// Whether the server name a ClientHello carries is `host`: the same ASCII letters, digits,
/// hyphens and dots (case and one final dot aside). No IDNA mapping: the server sees the bytes
/// as sent.
pub fn sni_is(sni: &str, host: &str) -> bool {
    let sni = sni.strip_suffix('.').unwrap_or(sni);
    !sni.is_empty()
        && sni
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && sni.eq_ignore_ascii_case(host)
}

/// An authority as the audit line may show it: userinfo (`user:password@`, which a refused
/// request may carry) is replaced by `***@`.
fn without_userinfo(authority: &str) -> String {
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_string(),
    }
}

/// Buffer of each direction of a tunnel: tokio's default of 8 KiB costs a system call per
/// 8 KiB (half the throughput); a busy tunnel holds two, 64 KiB, which the connection limits
/// are sized against (`Limits`).
const COPY_BUFFER: usize = 32 * 1024;

/// Why a tunnel ended.
enum End {
    Done,
    Revoked,
    Idle,
    Shutdown,
}

/// Reads the ClientHello (for names), forwards it, then carries bytes both ways until either
/// side closes, the policy stops allowing the tunnel, it stays idle, or the gateway stops.
async fn tunnel<S>(gw: Arc<Gateway>, mut client: S, a: Admitted, mut d: Decision, started: Instant)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Admitted { grant, upstream } = a;
    let mut first = Vec::new();
    if let Host::Ip(_) = &grant.host
        && let Some(denial) =
            literal_names_a_blocked_host(&gw, &mut client, &mut first, &d, &grant).await
    {
        d.denial = Some(denial);
        d.duration = started.elapsed();
        gw.metrics_decided(started);
        gw.auditor.record(&d);
        let _ = client.shutdown().await;
        return;
    }
    if let Host::Name(name) = &grant.host {
        let outcome =
            tokio::time::timeout(gw.timeouts.hello, read_hello(&mut client, &mut first)).await;
        let denial = match outcome {
            Ok(Ok(sni)) if sni_is(&sni, name) => None,
            Ok(Ok(_)) => Some(Denial::SniMismatch),
            Ok(Err(denial)) => Some(denial),
            Err(_) => Some(Denial::NotTls),
        };
        if let Some(denial) = denial {
            d.denial = Some(denial);
            d.duration = started.elapsed();
            gw.metrics_decided(started);
            gw.auditor.record(&d);
            let _ = client.shutdown().await;
            return;
        }
    }
    // The directory may have changed while the hello was read.
    if !gw.still_allowed(d.source, &grant) {
        d.denial = Some(Denial::PolicyChanged);
        d.duration = started.elapsed();
        gw.metrics_decided(started);
        gw.auditor.record(&d);
        let _ = client.shutdown().await;
        return;
    }
    gw.metrics_decided(started);
    d.duration = started.elapsed();
    gw.auditor.metrics.open_tunnels.inc();
    let out = Arc::new(AtomicU64::new(0));
    let inn = Arc::new(AtomicU64::new(0));
    let mut upstream = Counting::new(upstream, inn.clone());
    let mut client = Counting::new(client, out.clone());
    let mut end = End::Done;
    // The checked hello goes upstream first; the Open line is written while it travels.
    let sent = upstream.inner.write_all(&first).await.is_ok();
    gw.auditor.record(&d);
    if sent {
        out.fetch_add(first.len() as u64, Ordering::Relaxed);
        let mut changes = gw.directory.clone();
        end = tokio::select! {
            _ = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, COPY_BUFFER, COPY_BUFFER) => End::Done,
            () = revoked(&gw, &mut changes, d.source, &grant) => End::Revoked,
            () = idle(gw.limits.idle, &out, &inn) => End::Idle,
            () = gw.hard_stop.cancelled() => End::Shutdown,
        };
    }
    gw.auditor.metrics.open_tunnels.dec();
    let mut close = d;
    close.activity = Activity::Close;
    close.denial = match end {
        End::Done => None,
        End::Revoked => Some(Denial::PolicyChanged),
        End::Idle => Some(Denial::Idle),
        End::Shutdown => Some(Denial::Shutdown),
    };
    close.bytes_out = out.load(Ordering::Relaxed);
    close.bytes_in = inn.load(Ordering::Relaxed);
    close.duration = started.elapsed();
    gw.auditor.record(&close);
}

/// Under host names blocked by the policy (`blockedHosts` under allow-all egress), a tunnel to
/// an IP literal could still reach a blocked host by its address: the client's first bytes are
/// read before anything goes upstream, and they must name a host that is not blocked: a TLS
/// ClientHello whose server name is not a blocked name (nor under one) and that offers no
/// Encrypted Client Hello, or an HTTP/1 request whose `Host` is not a blocked name. Anything
/// else (TLS without a server name, other protocols, a client that sends nothing first, as
/// in protocols where the server speaks first) names no host that could be checked and is
/// refused. Without blocked names, nothing is read (a CIDR rule allows the address whatever it
/// serves).
async fn literal_names_a_blocked_host<S: AsyncRead + Unpin>(
    gw: &Gateway,
    client: &mut S,
    first: &mut Vec<u8>,
    d: &Decision,
    grant: &Grant,
) -> Option<Denial> {
    let snapshot = gw.directory.borrow().clone();
    let rules = match snapshot.attribute(d.source.ip(), Some(&grant.uid)) {
        Ok((_, rules)) if rules.blocks_names() => rules,
        Ok(_) => return None,
        Err(denial) => return Some(denial),
    };
    let denied = |name: &str| {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        let plain = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        (!plain || rules.name_denied(&name)).then_some(Denial::NameDenied)
    };
    let hello = tokio::time::timeout(gw.timeouts.hello, async {
        match read_hello(client, first).await {
            Ok(sni) => denied(&sni),
            Err(Denial::NotTls) => match read_http_host(client, first).await {
                Some(host) => denied(&host),
                None => Some(Denial::NotTls),
            },
            Err(denial) => Some(denial),
        }
    })
    .await;
    hello.unwrap_or(Some(Denial::NotTls))
}

/// The `Host` of an HTTP/1 request whose first bytes are in `buf` (reading the rest of its
/// head from `client`, up to 16 KiB), without a port; `None` when the bytes are not an HTTP/1
/// request head or it has no single `Host`.
async fn read_http_host<S: AsyncRead + Unpin>(client: &mut S, buf: &mut Vec<u8>) -> Option<String> {
    const MAX_HEAD: usize = 16 * 1024;
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(_)) => {
                let mut hosts = req
                    .headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("host"));
                let host = std::str::from_utf8(hosts.next()?.value).ok()?.trim();
                if hosts.next().is_some() {
                    return None;
                }
                let name = match host.rsplit_once(':') {
                    Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
                    _ => host,
                };
                return Some(name.to_string());
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            _ => return None,
        }
        let n = client.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Resolves once no byte has moved either way for `limit`.
async fn idle(limit: Duration, out: &AtomicU64, inn: &AtomicU64) {
    let mut last = (out.load(Ordering::Relaxed), inn.load(Ordering::Relaxed));
    loop {
        tokio::time::sleep(limit).await;
        let now = (out.load(Ordering::Relaxed), inn.load(Ordering::Relaxed));
        if now == last {
            return;
        }
        last = now;
    }
}

/// Resolves once the directory no longer allows the grant (it is checked at every change). If
/// the directory's writer is gone (the gateway is stopping), it never resolves: the drain and
/// the hard stop end the tunnel.
async fn revoked(
    gw: &Gateway,
    changes: &mut watch::Receiver<Arc<Directory>>,
    peer: SocketAddr,
    grant: &Grant,
) {
    loop {
        if !gw.still_allowed(peer, grant) {
            return;
        }
        if changes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Reads until the bytes hold a whole ClientHello; returns its server name. Bytes after it in
/// the same reads (early data) stay in `buf` and are forwarded with it.
async fn read_hello<S: AsyncRead + Unpin>(
    client: &mut S,
    buf: &mut Vec<u8>,
) -> Result<String, Denial> {
    let mut chunk = [0u8; 4096];
    loop {
        match client_hello(buf) {
            Hello::Server { name, .. } => return Ok(name),
            Hello::Refused(denial) => return Err(denial),
            Hello::NeedMore => {}
        }
        if buf.len() > MAX_HELLO + 64 {
            return Err(Denial::NotTls);
        }
        let n = client.read(&mut chunk).await.map_err(|_| Denial::NotTls)?;
        if n == 0 {
            return Err(Denial::NotTls);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Counts the bytes read through a stream.
struct Counting<S> {
    inner: S,
    read: Arc<AtomicU64>,
}

impl<S> Counting<S> {
    fn new(inner: S, read: Arc<AtomicU64>) -> Self {
        Counting { inner, read }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counting<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counting<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Hop-by-hop headers (RFC 9110 7.6.1) and the proxy's own, never passed on.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// End-to-end headers a `Connection` header may not remove: the request's target and framing.
const PROTECTED: [HeaderName; 4] = [
    header::HOST,
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !PROTECTED.contains(n))
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(n);
    }
}

/// Plain HTTP in absolute form (`GET http://host/path`): only on port 80, only when the Host
/// header names the same host, one upstream connection per request.
async fn forward(
    gw: Arc<Gateway>,
    peer: SocketAddr,
    req: Request<Incoming>,
    started: Instant,
) -> Response<Body> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    let mut d = Decision::new(Activity::Http, peer, without_userinfo(&authority), 80);
    d.method = Some(req.method().to_string());
    let refuse = |mut d: Decision, denial: Denial| {
        d.denial = Some(denial);
        d.duration = started.elapsed();
        gw.metrics_decided(started);
        gw.auditor.record(&d);
        refusal(denial, &authority)
    };
    let Some((host, port)) = parse_target(&authority, Some(80)) else {
        return refuse(d, Denial::BadRequest);
    };
    d.host = host.to_string();
    d.port = port;
    if port != 80 {
        return refuse(d, Denial::PortNotAllowed);
    }
    let header_host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| parse_target(h, Some(80)));
    if header_host != Some((host.clone(), port))
        || req.headers().get_all(header::HOST).iter().count() != 1
    {
        return refuse(d, Denial::HostMismatch);
    }
    let admitted = match admit(&gw, peer, req.headers(), &host, port, &mut d).await {
        Ok(a) => a,
        Err(denial) => return refuse(d, denial),
    };
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // The Host the checks were made on, whatever the headers said after them.
    if let Ok(v) = HeaderValue::from_str(&host.to_string()) {
        parts.headers.insert(header::HOST, v);
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    parts.uri = match path.parse::<Uri>() {
        Ok(u) => u,
        Err(_) => return refuse(d, Denial::BadRequest),
    };
    let upstream_req = Request::from_parts(parts, body);
    let Admitted { grant, upstream } = admitted;
    // The directory may have changed while the name was resolved and dialled: nothing goes
    // upstream under a rule that no longer holds.
    if !gw.still_allowed(peer, &grant) {
        return refuse(d, Denial::PolicyChanged);
    }
    let response = tokio::time::timeout(gw.timeouts.response, async {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await?;
        // The upstream connection lives while the response streams, and dies when the policy
        // stops allowing it or the gateway stops.
        let watch_gw = gw.clone();
        let tasks = gw.tasks.clone();
        tasks.spawn(async move {
            let mut changes = watch_gw.directory.clone();
            tokio::select! {
                biased;
                () = revoked(&watch_gw, &mut changes, peer, &grant) => {}
                () = watch_gw.hard_stop.cancelled() => {}
                _ = conn => {}
            }
        });
        sender.send_request(upstream_req).await
    })
    .await;
    match response {
        Ok(Ok(resp)) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            d.bytes_in = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            d.duration = started.elapsed();
            gw.metrics_decided(started);
            gw.auditor.record(&d);
            Response::from_parts(parts, body.boxed())
        }
        _ => refuse(d, Denial::UpstreamFailed),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn userinfo_never_reaches_the_audit_line() {
        assert_eq!(
            without_userinfo("u:secret@a.example.com:80"),
            "***@a.example.com:80"
        );
        assert_eq!(without_userinfo("a:b@c@d.example.com"), "***@d.example.com");
        assert_eq!(without_userinfo("a.example.com:443"), "a.example.com:443");
    }

    use super::*;

    #[test]
    fn the_server_name_must_be_the_host_byte_for_byte() {
        assert!(sni_is("api.example.com", "api.example.com"));
        assert!(sni_is("API.Example.com.", "api.example.com"));
        for other in [
            "api\u{AD}.example.com",
            "\u{FF41}pi.example.com",
            "api\u{200B}.example.com",
            "api.example.com..",
            "api.example.com:443",
            "api_example.com",
            "",
            "x.api.example.com",
        ] {
            assert!(!sni_is(other, "api.example.com"), "{other:?}");
        }
    }

    #[test]
    fn a_connection_header_cannot_name_the_target_or_framing() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a.example.com"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("host, content-length, x-foo"),
        );
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic x"),
        );
        strip_hop_by_hop(&mut h);
        assert!(h.contains_key(header::HOST) && h.contains_key(header::CONTENT_LENGTH));
        assert!(!h.contains_key("x-foo") && !h.contains_key(header::PROXY_AUTHORIZATION));
        assert!(!h.contains_key(header::CONNECTION));
    }
}
