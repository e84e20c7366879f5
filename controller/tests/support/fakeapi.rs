//! A fake API server for tests of the whole operator loop (watches, caches, controllers): it
//! answers every list from fixtures (a list can be held back until the test releases it),
//! keeps every watch open without events, and answers other requests with a handler the test
//! gives, recording them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot};

use super::apimock::{Handle, Seen};

/// What a handler answers: status code and body.
pub type Answer = (u16, Value);

/// Lists by resource (the path's last segment, e.g. `pods`), and which are held back.
#[derive(Default)]
pub struct Lists {
    pub items: BTreeMap<String, Vec<Value>>,
    pub held: Vec<String>,
}

/// The fake server's shared state, for the test to look at and steer.
#[derive(Default)]
pub struct Fake {
    /// Requests other than lists and watches, in order.
    pub seen: Mutex<Vec<Seen>>,
    /// Lists answered so far, by resource.
    pub listed: Mutex<Vec<String>>,
    released: Notify,
    released_all: Mutex<bool>,
    /// Responses held by the handler until the test lets them go.
    pub parked: Mutex<Vec<(Seen, oneshot::Sender<Answer>)>>,
    pub parked_changed: Notify,
}

impl Fake {
    /// Answers the held lists.
    pub fn release_lists(&self) {
        *self.released_all.lock().unwrap() = true;
        self.released.notify_waiters();
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn listed(&self) -> Vec<String> {
        self.listed.lock().unwrap().clone()
    }
}

/// How the handler answers one request.
pub enum Reply {
    Now(Answer),
    /// Wait until the test answers (through `Fake::parked`).
    Park,
}

fn resource_of(path: &str) -> String {
    path.rsplit('/').next().unwrap_or_default().to_string()
}

fn is_collection(path: &str) -> bool {
    // /api/v1/<res>, /api/v1/namespaces/<ns>/<res>, /apis/<g>/<v>/<res>, /apis/<g>/<v>/namespaces/<ns>/<res>
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.first() {
        Some(&"api") => parts.len() == 3 || (parts.len() == 5 && parts[2] == "namespaces"),
        Some(&"apis") => parts.len() == 4 || (parts.len() == 6 && parts[3] == "namespaces"),
        _ => false,
    }
}

/// Serves `handle` until every client is gone.
pub async fn serve(
    mut handle: Handle,
    fake: Arc<Fake>,
    lists: Lists,
    handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
) {
    let lists = Arc::new(lists);
    let handler = Arc::new(handler);
    let mut watches = Vec::new();
    while let Some((request, send)) = handle.next_request().await {
        let seen = read(request).await;
        let watch = seen.query_value("watch") == Some("true");
        if seen.method == Method::GET && is_collection(&seen.path) {
            if watch {
                // Kept open, without events, until the client goes away.
                watches.push(send);
                continue;
            }
            let resource = resource_of(&seen.path);
            let fake = fake.clone();
            let lists = lists.clone();
            tokio::spawn(async move {
                if lists.held.contains(&resource) {
                    loop {
                        let released = fake.released.notified();
                        if *fake.released_all.lock().unwrap() {
                            break;
                        }
                        released.await;
                    }
                }
                let items = lists.items.get(&resource).cloned().unwrap_or_default();
                fake.listed.lock().unwrap().push(resource);
                respond(
                    send,
                    (
                        200,
                        json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "100"}, "items": items}),
                    ),
                );
            });
            continue;
        }
        fake.seen.lock().unwrap().push(seen.clone());
        match handler(&seen) {
            Reply::Now(answer) => respond(send, answer),
            Reply::Park => {
                let (tx, rx) = oneshot::channel();
                fake.parked.lock().unwrap().push((seen, tx));
                fake.parked_changed.notify_waiters();
                tokio::spawn(async move {
                    if let Ok(answer) = rx.await {
                        respond(send, answer);
                    }
                });
            }
        }
    }
    drop(watches);
}

fn respond(send: tower_test::mock::SendResponse<Response<Body>>, (code, body): Answer) {
    let response = Response::builder()
        .status(StatusCode::from_u16(code).expect("status code"))
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&body).expect("body")))
        .expect("response");
    send.send_response(response);
}

async fn read(request: Request<Body>) -> Seen {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    let bytes = request.into_body().collect_bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Seen {
        method,
        path,
        query,
        body,
    }
}
