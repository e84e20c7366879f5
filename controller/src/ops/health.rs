//! The operator's own HTTP endpoint: Prometheus scrapes `/metrics`, the kubelet probes
//! `/healthz` (liveness) and `/readyz` (readiness).
//!
//! Liveness answers 200 for as long as the process can serve at all: restarting a replica that
//! is merely waiting for leadership would only churn. Readiness follows a flag that `run` sets
//! once its caches are synced, so a rollout waits for the new replica before removing the old.

use crate::ops::metrics::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;

/// Content type of the Prometheus text exposition format, version 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the handlers read: the metrics to render and the readiness flag.
#[derive(Clone)]
struct Probes {
    metrics: Metrics,
    ready: Arc<AtomicBool>,
}

/// Binds `addr` and serves until `shutdown` completes, then finishes in-flight requests.
///
/// # Errors
/// When `addr` cannot be bound, or the listener fails.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    serve_on(listener, metrics, ready, shutdown).await
}

/// Like [`serve`] on a listener that is already bound (port 0 in tests, or a socket handed over
/// by the caller), so the caller knows the address before serving starts.
///
/// # Errors
/// When the listener fails.
pub async fn serve_on(
    listener: TcpListener,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, ready))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The three routes; any other path answers 404.
pub fn router(metrics: Metrics, ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readiness))
        .with_state(Probes { metrics, ready })
}

async fn metrics_text(State(probes): State<Probes>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        probes.metrics.encode(),
    )
}

async fn readiness(State(probes): State<Probes>) -> (StatusCode, &'static str) {
    if probes.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;
    use tokio::sync::oneshot;

    /// Status code, lower-cased head and body of one `GET path` over a fresh connection, with a
    /// blocking std client (off the runtime's threads) so no HTTP client crate is needed.
    async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        let response = tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(addr).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("read timeout");
            stream.write_all(request.as_bytes()).expect("write");
            let mut response = String::new();
            stream.read_to_string(&mut response).expect("read");
            response
        })
        .await
        .expect("client task");
        let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("status code");
        (status, head.to_ascii_lowercase(), body.to_owned())
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let metrics = Metrics::new();
        metrics.reconcile_error("sandbox", "Kube");
        let ready = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve_on(listener, metrics, ready.clone(), async {
            let _ = stopped.await;
        }));

        let (status, head, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            head.contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(
            body.contains(
                r#"palisade_reconcile_errors_total{controller="sandbox",reason="Kube"} 1"#
            )
        );

        assert_eq!(get(addr, "/healthz").await.0, 200);
        assert_eq!(get(addr, "/readyz").await.0, 503);
        ready.store(true, Ordering::Release);
        assert_eq!(get(addr, "/readyz").await.0, 200);
        assert_eq!(get(addr, "/nope").await.0, 404);

        stop.send(()).expect("server still running");
        let served = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("server stops on shutdown")
            .expect("server task");
        assert!(served.is_ok(), "{served:?}");
    }

    #[tokio::test]
    async fn serve_reports_a_taken_address() {
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = taken.local_addr().expect("address");
        let result = serve(
            addr,
            Metrics::new(),
            Arc::new(AtomicBool::new(true)),
            async {},
        )
        .await;
        assert!(result.is_err());
    }
}
