//! Shared helpers of the end-to-end suite: a client for the cluster named by `KUBECONFIG`
//! (required: the suite fails, never skips, without a cluster), namespaces, and waiting.

pub mod node;
pub mod operator;
pub mod sandboxes;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Namespace};
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiResource, Discovery, Scope};
use serde_json::{Value, json};

/// `prefix` with a suffix unique to this run, so a suite can run again on the same cluster.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{:05x}", (nanos ^ std::process::id()) & 0xfffff)
}

/// Field manager of everything the suite applies.
pub const MANAGER: &str = "palisade-e2e";

/// A client for the cluster in `KUBECONFIG`. Panics (fails the test) when there is none.
pub async fn client() -> Client {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "KUBECONFIG is not set: run the suite with `make e2e` (which starts a local control plane) or point KUBECONFIG at a cluster"
    );
    Client::try_default()
        .await
        .expect("connect to the cluster in KUBECONFIG")
}

/// The repository root.
pub fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Creates (or reuses) a namespace with the Pod Security `restricted` level enforced.
pub async fn restricted_namespace(client: &Client, name: &str) -> String {
    let ns: Api<Namespace> = Api::all(client.clone());
    let body = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest"
        }}
    });
    ns.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .expect("namespace");
    name.to_string()
}

/// Applies any object (server-side apply, strict field validation) in `namespace` when it is
/// namespaced. Returns the API error text on failure.
pub async fn apply(
    client: &Client,
    discovery: &Discovery,
    namespace: Option<&str>,
    obj: &Value,
) -> Result<DynamicObject, String> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (ar, caps): (ApiResource, _) = discovery
        .resolve_gvk(&gvk)
        .ok_or_else(|| format!("{api_version} {kind} is not served"))?;
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let api: Api<DynamicObject> = match (
        &caps.scope,
        namespace.or(obj["metadata"]["namespace"].as_str()),
    ) {
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
        (Scope::Namespaced, None) => Api::default_namespaced_with(client.clone(), &ar),
        (Scope::Cluster, _) => Api::all_with(client.clone(), &ar),
    };
    let mut obj = obj.clone();
    if let (Scope::Namespaced, Some(ns)) = (&caps.scope, namespace) {
        obj["metadata"]["namespace"] = json!(ns);
    }
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force().validation_strict(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|e| match e {
        kube::Error::Api(s) => s.message,
        other => other.to_string(),
    })
}

/// Polls `check` every 200 ms until it returns Some, or fails after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the namespace holds a Warning event with this reason about the object of this
/// kind and name (events are read as core/v1 Events, whichever API published them).
pub async fn wait_warning(
    client: &Client,
    ns: &str,
    about: (&str, &str),
    reason: &str,
    timeout: Duration,
) {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let (kind, name) = about;
    let what = format!("a Warning event {reason} about {kind} {ns}/{name}");
    wait_for(&what, timeout, || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.type_.as_deref() == Some("Warning")
                    && e.involved_object.kind.as_deref() == Some(kind)
                    && e.involved_object.name.as_deref() == Some(name)
            })
            .then_some(())
    })
    .await
}

/// Reads every YAML document of a file as JSON values.
pub fn yaml_documents(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            serde_json::to_value(
                <serde_yaml::Value as serde::Deserialize>::deserialize(d).expect("yaml"),
            )
            .expect("json")
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// Installs the CRDs of `crds/` and waits until both are Established.
pub async fn install_crds(client: &Client) {
    install_crd_file(client, &root().join("crds/palisade.dev_crds.yaml")).await;
}

/// Server-side applies every CRD of the YAML file `path` and waits until each is Established.
pub async fn install_crd_file(client: &Client, path: &std::path::Path) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for doc in yaml_documents(path) {
        let name = doc["metadata"]["name"]
            .as_str()
            .expect("crd name")
            .to_string();
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(doc),
        )
        .await
        .unwrap_or_else(|e| panic!("apply CRD {name}: {e}"));
        wait_for(
            &format!("CRD {name} Established"),
            Duration::from_secs(30),
            || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let crd = api.get(&name).await.ok()?;
                    let established = crd
                        .status?
                        .conditions?
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    established.then_some(())
                }
            },
        )
        .await;
    }
}

/// Server-side applies a Palisade object (AgentPolicy, AgentSandbox) of `name` with `spec` in
/// `ns`. Panics on failure.
pub async fn apply_palisade<K>(client: &Client, ns: &str, name: &str, spec: Value)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let body = json!({"apiVersion": "palisade.dev/v1alpha1", "kind": K::kind(&()), "metadata": {"name": name}, "spec": spec});
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {} {name}: {e}", K::kind(&())));
}

/// Server-side applies a cluster-scoped object (a RuntimeClass, a PersistentVolume) of `name`
/// under the suite's field manager. Panics on failure.
pub async fn apply_cluster<K>(client: &Client, name: &str, body: Value)
where
    K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::all(client.clone())
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {} {name}: {e}", K::kind(&())));
}
