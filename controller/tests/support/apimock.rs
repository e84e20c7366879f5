//! A scripted, mocked Kubernetes API server for reconcile tests, in the style of
//! kube-rs/controller-rs `src/fixtures.rs`: a `tower_test` mock service behind a real
//! `kube::Client`, and a verifier task that answers each expected request in order, asserting
//! its method, path and query, and fails on any unexpected request or on a timeout.

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// How long the verifier waits for the next expected request.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// A client talking to a mock API server, and the handle that answers for the server.
pub fn mock_client() -> (kube::Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

/// One request as the mock server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub body: Value,
}

impl Seen {
    pub fn describe(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    pub fn query_value(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

type Check = Box<dyn FnOnce(&Seen) + Send>;
type Reply = Box<dyn FnOnce(&Seen) -> (u16, Value) + Send>;

/// One expected request and its answer.
pub struct Step {
    method: Method,
    path: String,
    /// `path` is a prefix: any path under it matches (requests whose order depends on a hash).
    prefix: bool,
    query: Vec<(String, String)>,
    check: Option<Check>,
    reply: Reply,
}

impl Step {
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        Self {
            method,
            path: path.into(),
            prefix: false,
            query: Vec::new(),
            check: None,
            reply: Box::new(|_| (200, json!({}))),
        }
    }

    pub fn get(path: impl Into<String>) -> Self {
        Self::new(Method::GET, path)
    }

    /// A server-side apply PATCH under the `palisade` field manager, forced.
    pub fn apply(path: impl Into<String>) -> Self {
        Self::new(Method::PATCH, path)
            .query("fieldManager", "palisade")
            .query("force", "true")
            .check(|s| {
                assert!(
                    s.body.is_object(),
                    "{}: apply body is not a JSON object",
                    s.describe()
                )
            })
    }

    pub fn delete(path: impl Into<String>) -> Self {
        Self::new(Method::DELETE, path)
    }

    pub fn post(path: impl Into<String>) -> Self {
        Self::new(Method::POST, path)
    }

    /// Requires this query parameter with this value.
    pub fn query(mut self, key: &str, value: &str) -> Self {
        self.query.push((key.into(), value.into()));
        self
    }

    /// Matches any path under this step's path.
    pub fn any_under(mut self) -> Self {
        self.prefix = true;
        self
    }

    /// Runs assertions on the request (chained after any earlier check).
    pub fn check(mut self, f: impl FnOnce(&Seen) + Send + 'static) -> Self {
        let previous = self.check.take();
        self.check = Some(Box::new(move |s: &Seen| {
            if let Some(p) = previous {
                p(s);
            }
            f(s);
        }));
        self
    }

    /// Answers with a fixed status code and body.
    pub fn respond(mut self, code: u16, body: Value) -> Self {
        self.reply = Box::new(move |_| (code, body));
        self
    }

    /// Answers 200 with the request body (what an apply of an unchanged object returns).
    pub fn echo(mut self) -> Self {
        self.reply = Box::new(|s: &Seen| (200, s.body.clone()));
        self
    }

    /// Answers with a body computed from the request.
    pub fn reply_with(mut self, f: impl FnOnce(&Seen) -> (u16, Value) + Send + 'static) -> Self {
        self.reply = Box::new(f);
        self
    }

    /// Answers with a Kubernetes `Status` failure.
    pub fn fail(self, code: u16, reason: &str) -> Self {
        self.respond(code, status_failure(code, reason))
    }

    /// Answers 404 NotFound.
    pub fn not_found(self) -> Self {
        self.fail(404, "NotFound")
    }
}

/// A `Status` failure body as the API server sends it.
pub fn status_failure(code: u16, reason: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("mock: {reason}"),
        "reason": reason,
        "code": code,
    })
}

fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

async fn next(
    handle: &mut Handle,
) -> Option<(Seen, tower_test::mock::SendResponse<Response<Body>>)> {
    let (request, send) = handle.next_request().await?;
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = parse_query(request.uri().query());
    let bytes = request
        .into_body()
        .collect_bytes()
        .await
        .expect("request body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            // Server-side apply bodies are sent as YAML content type but JSON text; anything
            // else is kept as a string for the assertions to look at.
            Value::String(String::from_utf8_lossy(&bytes).into_owned())
        })
    };
    Some((
        Seen {
            method,
            path,
            query,
            body,
        },
        send,
    ))
}

/// Answers `steps` in order, then requires that no other request arrives before every client
/// is dropped. Panics (failing the test when joined) on a mismatch, an extra request or a
/// timeout. Returns every request seen, in order.
pub async fn serve(mut handle: Handle, steps: Vec<Step>) -> Vec<Seen> {
    let mut seen: Vec<Seen> = Vec::new();
    let total = steps.len();
    for (i, step) in steps.into_iter().enumerate() {
        let got = tokio::time::timeout(STEP_TIMEOUT, next(&mut handle))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "step {}/{total}: timed out waiting for {} {}; seen so far: {:?}",
                    i + 1,
                    step.method,
                    step.path,
                    seen.iter().map(Seen::describe).collect::<Vec<_>>()
                )
            });
        let Some((request, send)) = got else {
            panic!(
                "step {}/{total}: the client went away before {} {}; seen so far: {:?}",
                i + 1,
                step.method,
                step.path,
                seen.iter().map(Seen::describe).collect::<Vec<_>>()
            );
        };
        let path = if step.prefix && request.path.starts_with(&step.path) {
            step.path.as_str()
        } else {
            request.path.as_str()
        };
        assert_eq!(
            (&request.method, path),
            (&step.method, step.path.as_str()),
            "step {}/{total}: unexpected request {} (query {:?}); seen before: {:?}",
            i + 1,
            request.describe(),
            request.query,
            seen.iter().map(Seen::describe).collect::<Vec<_>>()
        );
        for (k, v) in &step.query {
            assert_eq!(
                request.query_value(k),
                Some(v.as_str()),
                "step {}/{total}: {} query {k}; full query {:?}",
                i + 1,
                request.describe(),
                request.query
            );
        }
        if let Some(check) = step.check {
            check(&request);
        }
        let (code, body) = (step.reply)(&request);
        let response = Response::builder()
            .status(StatusCode::from_u16(code).expect("status code"))
            .header("content-type", "application/json")
            .body(Body::from(
                serde_json::to_vec(&body).expect("response body"),
            ))
            .expect("response");
        send.send_response(response);
        seen.push(request);
    }
    // Nothing else: the next thing the server sees must be every client going away.
    match tokio::time::timeout(STEP_TIMEOUT, next(&mut handle)).await {
        Ok(None) => {}
        Ok(Some((request, _))) => panic!(
            "unexpected request after the script: {} (query {:?}, body {}); seen before: {:?}",
            request.describe(),
            request.query,
            request.body,
            seen.iter().map(Seen::describe).collect::<Vec<_>>()
        ),
        Err(_) => panic!("the clients were not dropped after the script ended"),
    }
    seen
}

/// Joins the verifier task, re-raising its panic with its own message.
pub async fn join(task: tokio::task::JoinHandle<Vec<Seen>>) -> Vec<Seen> {
    match tokio::time::timeout(STEP_TIMEOUT * 4, task).await {
        Ok(Ok(seen)) => seen,
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => panic!("verifier task failed: {e}"),
        Err(_) => panic!("verifier task did not finish"),
    }
}
