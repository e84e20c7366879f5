//! The election against the in-memory API: hand-over on shutdown, fencing of a cut-off leader,
//! and the failure paths. Runs on real time with the shortest lease (3 s), a few seconds each.

use super::fake_api::FakeApi;
use super::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const LEASE: &str = "palisade-leader";

/// `(replica, started?, when)` for every start and stop of a replica's leader work.
type Log = Arc<Mutex<Vec<(&'static str, bool, Instant)>>>;

/// Shows the election's log lines in the output of a failing test.
fn capture_logs() {
    let filter = tracing_subscriber::EnvFilter::new("palisade=debug,kube_lease_manager=info");
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(filter)
        .try_init();
}

fn config(identity: &str) -> LeaderConfig {
    LeaderConfig {
        namespace: "palisade-system".to_owned(),
        lease_name: LEASE.to_owned(),
        identity: identity.to_owned(),
        lease_duration: Timing::MIN_DURATION,
    }
}

/// Leader work that only records when it starts and when it is told to stop.
async fn record(who: &'static str, log: Log, token: CancellationToken) {
    log.lock().expect("log").push((who, true, Instant::now()));
    token.cancelled().await;
    log.lock().expect("log").push((who, false, Instant::now()));
}

fn spawn_replica(
    client: kube::Client,
    who: &'static str,
    log: &Log,
    shutdown: &CancellationToken,
) -> JoinHandle<Result<(), LeaderError>> {
    let log = log.clone();
    tokio::spawn(run_with_leadership(
        client,
        config(who),
        shutdown.clone(),
        move |token| record(who, log.clone(), token),
    ))
}

/// When `who` last started (`true`) or stopped (`false`) leading.
fn last(log: &Log, who: &str, started: bool) -> Option<Instant> {
    let log = log.lock().expect("log");
    log.iter()
        .rev()
        .find(|(name, start, _)| *name == who && *start == started)
        .map(|(_, _, at)| *at)
}

fn leading(log: &Log, who: &str) -> bool {
    match (last(log, who, true), last(log, who, false)) {
        (Some(start), Some(stop)) => start > stop,
        (Some(_), None) => true,
        _ => false,
    }
}

async fn eventually(within: Duration, condition: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition()
}

async fn finish(replica: JoinHandle<Result<(), LeaderError>>) -> Result<(), LeaderError> {
    tokio::time::timeout(Duration::from_secs(10), replica)
        .await
        .expect("replica stops")
        .expect("replica task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_the_lease_to_a_standby() {
    capture_logs();
    let api = FakeApi::default();
    let log = Log::default();
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let a = spawn_replica(api.endpoint().await.client, "a", &log, &stop_a);
    assert!(eventually(Duration::from_secs(5), || leading(&log, "a")).await);

    let b = spawn_replica(api.endpoint().await.client, "b", &log, &stop_b);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(leading(&log, "a") && !leading(&log, "b"), "one leader");

    stop_a.cancel();
    assert!(finish(a).await.is_ok());
    assert!(!leading(&log, "a"));
    assert_ne!(api.holder(LEASE).as_deref(), Some("a"), "released");

    // The standby looks again when the hold it saw would have expired: within one duration.
    assert!(eventually(Duration::from_secs(5), || leading(&log, "b")).await);
    stop_b.cancel();
    assert!(finish(b).await.is_ok());
    assert!(!leading(&log, "b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_off_leader_stops_before_a_standby_takes_over() {
    capture_logs();
    let api = FakeApi::default();
    let log = Log::default();
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let endpoint_a = api.endpoint().await;
    let a = spawn_replica(endpoint_a.client.clone(), "a", &log, &stop_a);
    assert!(eventually(Duration::from_secs(5), || leading(&log, "a")).await);
    let b = spawn_replica(api.endpoint().await.client, "b", &log, &stop_b);
    tokio::time::sleep(Duration::from_millis(500)).await;

    endpoint_a.partition(true);
    assert!(eventually(Duration::from_secs(10), || leading(&log, "b")).await);
    let a_stopped = last(&log, "a", false).expect("a stopped");
    let b_started = last(&log, "b", true).expect("b started");
    assert!(a_stopped < b_started, "a stopped before b started");
    assert_eq!(api.holder(LEASE).as_deref(), Some("b"));

    // Reconnected, the old leader sees the new holder and stays a standby.
    endpoint_a.partition(false);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!leading(&log, "a") && leading(&log, "b"));

    stop_a.cancel();
    stop_b.cancel();
    assert!(finish(a).await.is_ok());
    assert!(finish(b).await.is_ok());
}

#[tokio::test]
async fn leader_work_ending_by_itself_is_an_error_and_releases() {
    capture_logs();
    let api = FakeApi::default();
    let outcome = run_with_leadership(
        api.endpoint().await.client,
        config("a"),
        CancellationToken::new(),
        |_token| async {},
    );
    let outcome = tokio::time::timeout(Duration::from_secs(10), outcome)
        .await
        .expect("returns");
    assert!(
        matches!(outcome, Err(LeaderError::LeadEnded { .. })),
        "{outcome:?}"
    );
    assert_eq!(api.holder(LEASE), None);
}

#[tokio::test]
async fn rejects_bad_settings_before_touching_the_cluster() {
    let uri = "http://127.0.0.1:9".parse().expect("uri");
    let client = kube::Client::try_from(kube::Config::new(uri)).expect("client");
    for config in [
        LeaderConfig {
            lease_duration: Duration::from_secs(2),
            ..config("a")
        },
        LeaderConfig {
            identity: String::new(),
            ..config("a")
        },
    ] {
        let outcome = run_with_leadership(
            client.clone(),
            config,
            CancellationToken::new(),
            |_| async {},
        )
        .await;
        assert!(
            matches!(outcome, Err(LeaderError::Config(_))),
            "{outcome:?}"
        );
    }
}

#[test]
fn default_identity_is_never_empty() {
    let identity = default_identity();
    assert!(!identity.is_empty());
    if std::env::var_os("POD_NAME").is_none() {
        assert!(identity.ends_with(&format!("-{}", std::process::id())));
    }
}
