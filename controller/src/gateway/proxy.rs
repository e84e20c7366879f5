//! The gateway's proxy: HTTP/1.1 `CONNECT host:port` tunnels and absolute-form plain HTTP.
//! Every request is attributed, decided, resolved, checked and dialled here, in that order;
//! anything that cannot be decided is refused.

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
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header: Duration::from_secs(10),
            resolve: Duration::from_secs(5),
            connect: Duration::from_secs(10),
            hello: Duration::from_secs(10),
            drain: Duration::from_secs(20),
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

/// Everything a connection needs.
pub struct Gateway {
    pub directory: watch::Receiver<Arc<Directory>>,
    pub resolver: Arc<dyn Resolve>,
    pub connector: Arc<dyn Connect>,
    pub key: CredentialKey,
    pub auditor: Auditor,
    pub timeouts: Timeouts,
}

/// Accepts connections until `shutdown`, then lets open tunnels drain for a while.
pub async fn serve(listener: TcpListener, gw: Arc<Gateway>, shutdown: CancellationToken) {
    let tunnels = tokio_util::task::TaskTracker::new();
    let hard_stop = CancellationToken::new();
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
        let _ = stream.set_nodelay(true);
        let gw = gw.clone();
        let stop = hard_stop.clone();
        tunnels.spawn(async move {
            tokio::select! {
                () = connection(gw, stream, peer) => {}
                () = stop.cancelled() => {}
            }
        });
    }
    tunnels.close();
    if tokio::time::timeout(gw.timeouts.drain, tunnels.wait())
        .await
        .is_err()
    {
        hard_stop.cancel();
        tunnels.wait().await;
    }
}

async fn connection(gw: Arc<Gateway>, stream: TcpStream, peer: SocketAddr) {
    let service = {
        let gw = gw.clone();
        service_fn(move |req| {
            let gw = gw.clone();
            async move { Ok::<_, Infallible>(handle(gw, peer, req).await) }
        })
    };
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(gw.timeouts.header)
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

async fn handle(gw: Arc<Gateway>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    if req.method() == Method::CONNECT {
        connect(gw, peer, req, started).await
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
    let snapshot = gw.directory.borrow().clone();
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
    for ip in ips {
        let address = SocketAddr::new(dial_form(ip), port);
        d.address = Some(address);
        if let Ok(Ok(upstream)) =
            tokio::time::timeout(gw.timeouts.connect, gw.connector.connect(address)).await
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
) -> Response<Body> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    let Some((host, port)) = parse_target(&authority, None) else {
        let mut d = Decision::new(Activity::Open, peer, authority.clone(), 0);
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
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => tunnel(gw, TokioIo::new(upgraded), admitted, d, started).await,
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

/// Reads the ClientHello (for names), forwards it, then carries bytes both ways until either
/// side closes or the policy stops allowing the tunnel.
async fn tunnel<S>(gw: Arc<Gateway>, mut client: S, a: Admitted, mut d: Decision, started: Instant)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Admitted { grant, upstream } = a;
    let mut first = Vec::new();
    if let Host::Name(name) = &grant.host {
        let outcome =
            tokio::time::timeout(gw.timeouts.hello, read_hello(&mut client, &mut first)).await;
        let denial = match outcome {
            Ok(Ok(sni)) if parse_host(&sni) == Ok(Host::Name(name.clone())) => None,
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
    gw.metrics_decided(started);
    d.duration = started.elapsed();
    gw.auditor.record(&d);
    gw.auditor.metrics.open_tunnels.inc();
    let out = Arc::new(AtomicU64::new(0));
    let inn = Arc::new(AtomicU64::new(0));
    let mut upstream = Counting::new(upstream, inn.clone());
    let mut client = Counting::new(client, out.clone());
    let mut closed_by_policy = false;
    if upstream.inner.write_all(&first).await.is_ok() {
        out.fetch_add(first.len() as u64, Ordering::Relaxed);
        let mut changes = gw.directory.clone();
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
            () = revoked(&gw, &mut changes, d.source, &grant) => { closed_by_policy = true; }
        }
    }
    gw.auditor.metrics.open_tunnels.dec();
    let mut close = d;
    close.activity = Activity::Close;
    close.denial = closed_by_policy.then_some(Denial::PolicyChanged);
    close.bytes_out = out.load(Ordering::Relaxed);
    close.bytes_in = inn.load(Ordering::Relaxed);
    close.duration = started.elapsed();
    gw.auditor.record(&close);
}

/// Resolves once the directory no longer allows the grant (it is checked at every change).
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
            // The directory's writer is gone: nothing can be decided any more.
            return;
        }
    }
}

/// Reads until the bytes make a whole ClientHello; returns its server name.
async fn read_hello<S: AsyncRead + Unpin>(
    client: &mut S,
    buf: &mut Vec<u8>,
) -> Result<String, Denial> {
    let mut chunk = [0u8; 4096];
    loop {
        match client_hello(buf) {
            Hello::Server { name, consumed } if consumed == buf.len() => return Ok(name),
            // Bytes after the hello before the server answered: not a TLS client.
            Hello::Server { .. } => return Err(Denial::NotTls),
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

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
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
    let mut d = Decision::new(Activity::Http, peer, authority.clone(), 80);
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
    let response = async {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(admitted.upstream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender.send_request(upstream_req).await
    }
    .await;
    match response {
        Ok(resp) => {
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
        Err(_) => refuse(d, Denial::UpstreamFailed),
    }
}
