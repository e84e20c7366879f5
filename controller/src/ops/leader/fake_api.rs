//! A minimal in-memory stand-in for the Kubernetes API serving one namespace's Leases, so the
//! election can be tested against real HTTP without a cluster.
//!
//! Each replica gets its own endpoint onto the shared store, so one replica can be cut off
//! ("partitioned": its requests hang, as behind a dead network) while the others go on.
//! Server-side apply is reduced to the one rule the election relies on: applying a holder over
//! a different, current holder is a conflict.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The store shared by every replica's endpoint: lease name → object.
#[derive(Clone, Default)]
pub struct FakeApi {
    leases: Arc<Mutex<BTreeMap<String, Value>>>,
}

/// One replica's endpoint.
pub struct Endpoint {
    pub client: kube::Client,
    partitioned: Arc<AtomicBool>,
}

impl Endpoint {
    /// Cuts this replica off (`true`) or reconnects it.
    pub fn partition(&self, cut: bool) {
        self.partitioned.store(cut, Ordering::SeqCst);
    }
}

#[derive(Clone)]
struct Replica {
    api: FakeApi,
    partitioned: Arc<AtomicBool>,
}

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}";

impl FakeApi {
    /// Serves a new endpoint on a free loopback port and returns a client for it.
    pub async fn endpoint(&self) -> Endpoint {
        let partitioned = Arc::new(AtomicBool::new(false));
        let replica = Replica {
            api: self.clone(),
            partitioned: partitioned.clone(),
        };
        let router = Router::new()
            .route(LEASES, post(create))
            .route(LEASE, get(read).patch(patch))
            .with_state(replica);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let address = listener.local_addr().expect("local address");
        tokio::spawn(async move { axum::serve(listener, router).await });
        let uri = format!("http://{address}").parse().expect("uri");
        let client = kube::Client::try_from(kube::Config::new(uri)).expect("client");
        Endpoint {
            client,
            partitioned,
        }
    }

    /// The `spec.holderIdentity` of lease `name`, if it exists and has one.
    pub fn holder(&self, name: &str) -> Option<String> {
        let leases = self.leases.lock().expect("store lock");
        leases
            .get(name)?
            .pointer("/spec/holderIdentity")?
            .as_str()
            .map(str::to_owned)
    }
}

impl Replica {
    /// Hangs forever when partitioned: a cut-off client sees timeouts, not answers.
    async fn reachable(&self) {
        if self.partitioned.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }
}

fn status(code: StatusCode, reason: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": reason, "reason": reason, "code": code.as_u16(),
    });
    json_response(code, &body)
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    let content_type = [(header::CONTENT_TYPE, "application/json")];
    (code, content_type, body.to_string()).into_response()
}

async fn read(
    State(replica): State<Replica>,
    Path((_namespace, name)): Path<(String, String)>,
) -> Response {
    replica.reachable().await;
    let leases = replica.api.leases.lock().expect("store lock");
    match leases.get(&name) {
        Some(lease) => json_response(StatusCode::OK, lease),
        None => status(StatusCode::NOT_FOUND, "NotFound"),
    }
}

async fn create(
    State(replica): State<Replica>,
    Path(namespace): Path<String>,
    body: String,
) -> Response {
    replica.reachable().await;
    let Ok(mut lease) = serde_json::from_str::<Value>(&body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest");
    };
    let Some(name) = lease.pointer("/metadata/name").and_then(Value::as_str) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest");
    };
    let name = name.to_owned();
    let mut leases = replica.api.leases.lock().expect("store lock");
    if leases.contains_key(&name) {
        return status(StatusCode::CONFLICT, "AlreadyExists");
    }
    lease["apiVersion"] = json!("coordination.k8s.io/v1");
    lease["kind"] = json!("Lease");
    lease["metadata"]["namespace"] = json!(namespace);
    lease["metadata"]["resourceVersion"] = json!("1");
    leases.insert(name, lease.clone());
    json_response(StatusCode::CREATED, &lease)
}

async fn patch(
    State(replica): State<Replica>,
    Path((_namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    replica.reachable().await;
    let Ok(change) = serde_json::from_str::<Value>(&body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest");
    };
    let apply = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/apply-patch"));
    let mut leases = replica.api.leases.lock().expect("store lock");
    let Some(lease) = leases.get_mut(&name) else {
        return status(StatusCode::NOT_FOUND, "NotFound");
    };
    let current = lease
        .pointer("/spec/holderIdentity")
        .and_then(Value::as_str);
    let wanted = change
        .pointer("/spec/holderIdentity")
        .and_then(Value::as_str);
    if apply && current.is_some() && current != wanted {
        return status(StatusCode::CONFLICT, "Conflict");
    }
    merge(lease, &change);
    let version = lease["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|version| version.parse::<u64>().ok())
        .unwrap_or(0);
    lease["metadata"]["resourceVersion"] = json!((version + 1).to_string());
    json_response(StatusCode::OK, lease)
}

/// JSON merge patch (RFC 7386), which is what a strategic merge amounts to on a Lease.
fn merge(target: &mut Value, change: &Value) {
    let Value::Object(fields) = change else {
        *target = change.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(existing) = target {
        for (key, value) in fields {
            if value.is_null() {
                existing.remove(key);
            } else {
                merge(existing.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}
