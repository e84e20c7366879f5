//! The running operator: the watches that fill the caches and trigger reconciles, and the three
//! controllers (AgentSandbox, AgentPolicy, isolation release). Started once per leader term, so
//! every term lists its caches afresh and no reconcile reads them before they are full.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::api::{
    AgentPolicy, AgentSandbox, AgentSandboxPool, MANAGED_BY_LABEL, MANAGER, SandboxPhase,
};
use crate::ops::metrics::Metrics;

use super::caches::{Caches, Gate, OptionalStore, synced};
use super::facts::{OPTIONAL_CRDS, OptionalCrds};
use super::ownership::controlling_sandbox;
use super::{Context, OperatorConfig, isolation, lenient, policy, pool, sandbox};

/// How the controllers run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Watch only this namespace (default: all).
    pub namespace: Option<String>,
    /// Sandboxes reconciled at once.
    pub concurrency: u16,
    pub config: OperatorConfig,
    /// Identity for events.
    pub instance: String,
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Drops what no decision reads and costs memory in every cached object.
fn slim<K: kube::Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// How often access to the optional kinds is checked again (RBAC may be granted or revoked
/// without any CRD changing).
const RECHECK_ACCESS: Duration = Duration::from_secs(300);
/// The longest the first reconcile waits for the kinds found readable to be listed.
const FIRST_LIST_WAIT: Duration = Duration::from_secs(60);

/// Checks the optional CRDs until a check succeeds, waits (bounded) until the kinds it may read
/// are listed, then opens `checked`: no sandbox is decided on a kind still being read. Then
/// checks again every few minutes, and asks for every sandbox to be reconciled on a change.
async fn first_facts(
    client: Client,
    crds: OptionalCrds,
    caches: Caches,
    namespace: Option<String>,
    checked: Gate,
    changed: futures::channel::mpsc::UnboundedSender<()>,
    stop: CancellationToken,
) {
    let mut wait = Duration::from_millis(500);
    loop {
        match crds.refresh(&client, namespace.as_deref()).await {
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(error = %e, "could not check the optional CRDs; retrying (no sandbox is reconciled until they are known)");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
    let mut read: Vec<(&std::sync::atomic::AtomicBool, &OptionalStore)> =
        super::admin::AdminKind::ALL
            .into_iter()
            .map(|k| (&*crds.admin(k).readable, caches.admin(k)))
            .collect();
    read.push((&crds.cilium_policies.readable, &caches.cilium_policies));
    read.push((&crds.namespaces, &caches.namespaces));
    let deadline = tokio::time::Instant::now() + FIRST_LIST_WAIT;
    while read
        .iter()
        .any(|(readable, store)| readable.load(Ordering::SeqCst) && store.get().is_none())
        && tokio::time::Instant::now() < deadline
    {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    checked.open();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RECHECK_ACCESS) => {}
        }
        match crds.refresh(&client, namespace.as_deref()).await {
            Ok(true) => {
                tracing::info!("access to the optional kinds changed: reconciling every sandbox");
                let _ = changed.unbounded_send(());
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not check the optional CRDs again"),
        }
    }
}

/// Passes on at most one signal per `period`, however many arrive: many changes to cluster-scoped
/// policies (a GitOps sync) reconcile every sandbox once, not once per change.
fn coalesced(
    mut signals: futures::channel::mpsc::UnboundedReceiver<()>,
    period: Duration,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tokio::spawn(async move {
        while signals.next().await.is_some() {
            tokio::time::sleep(period).await;
            while signals.try_recv().is_ok() {}
            if tx.unbounded_send(()).is_err() {
                return;
            }
        }
    });
    rx
}

/// Which objects of an optional kind are watched, and which sandboxes a change triggers.
#[derive(Clone)]
enum Watched {
    /// The operator's children: a change triggers the sandbox that owns it.
    Children,
    /// Every object of a namespaced kind: one without a sandbox owner triggers every sandbox of
    /// its namespace (it may widen them).
    All(Store<AgentSandbox>),
    /// Every object of a cluster-scoped kind: a change of its spec (generation), and the first
    /// list, ask for every sandbox to be reconciled (coalesced).
    Cluster(futures::channel::mpsc::UnboundedSender<()>),
    /// Namespaces: a change of labels triggers the sandboxes in it; the first list, every
    /// sandbox (coalesced).
    Namespaces(
        Store<AgentSandbox>,
        futures::channel::mpsc::UnboundedSender<()>,
    ),
}

/// The objects of an optional kind (`ar`, usable while `usable` says so): cached in `cache`
/// once listed (emptied while the CRD is gone), and the sandboxes a change concerns
/// (`watched`): those whose child of that kind changed, so they put it back (drift) or remove
/// it (no longer planned), or those another's object may widen.
fn optional_children(
    client: Client,
    namespace: Option<String>,
    ar: ApiResource,
    usable: Arc<std::sync::atomic::AtomicBool>,
    cache: OptionalStore,
    watched: Watched,
    stop: CancellationToken,
) -> impl futures::Stream<Item = ObjectRef<AgentSandbox>> + Send + 'static {
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            cache.set(None);
            if !usable.load(Ordering::SeqCst) {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                }
            }
            let api: Api<DynamicObject> = match (&namespace, &watched) {
                (Some(ns), Watched::Children | Watched::All(_)) => {
                    Api::namespaced_with(client.clone(), ns, &ar)
                }
                _ => Api::all_with(client.clone(), &ar),
            };
            let wc = match (&watched, &namespace) {
                (Watched::Children, _) => {
                    watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"))
                }
                // Only the watched namespace's labels matter.
                (Watched::Namespaces(..), Some(ns)) => {
                    watcher::Config::default().fields(&format!("metadata.name={ns}"))
                }
                _ => watcher::Config::default(),
            };
            // What was last seen of each cluster-scoped object (its generation, or a
            // namespace's labels): status-only updates trigger nothing.
            let mut seen: std::collections::HashMap<String, String> = Default::default();
            let writer = reflector::store::Writer::new(ar.clone());
            let reader = writer.as_reader();
            let mut events = reflector::reflector(
                writer,
                watcher::watcher(api, wc).default_backoff().modify(slim),
            )
            .boxed();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    event = events.next() => match event {
                        Some(Ok(event)) => {
                            if matches!(event, watcher::Event::InitDone) {
                                cache.set(Some(reader.clone()));
                                if let Watched::Cluster(all) | Watched::Namespaces(_, all) = &watched {
                                    let _ = all.unbounded_send(());
                                }
                            }
                            // Listed objects trigger their sandboxes too: what was decided
                            // without this cache (pruning) is done once it is complete.
                            let obj = match &event {
                                watcher::Event::Apply(o)
                                | watcher::Event::Delete(o)
                                | watcher::Event::InitApply(o) => Some(o),
                                _ => None,
                            };
                            let initial = matches!(event, watcher::Event::InitApply(_));
                            let in_namespace = |sandboxes: &Store<AgentSandbox>, ns: &str| {
                                for s in sandboxes.state().iter().filter(|s| s.namespace().as_deref() == Some(ns)) {
                                    let _ = tx.unbounded_send(ObjectRef::from_obj(&**s));
                                }
                            };
                            match (obj, &watched) {
                                (None, _) => {}
                                (Some(obj), Watched::Children | Watched::All(_)) => {
                                    let Some(ns) = obj.namespace() else { continue };
                                    match (controlling_sandbox(&obj.metadata), &watched) {
                                        (Some(owner), _) => {
                                            let _ = tx.unbounded_send(ObjectRef::new(&owner.name).within(&ns));
                                        }
                                        (None, Watched::All(sandboxes)) => in_namespace(sandboxes, &ns),
                                        _ => {}
                                    }
                                }
                                // The first list triggers every sandbox once, at InitDone.
                                (Some(_), Watched::Cluster(_) | Watched::Namespaces(..)) if initial => {
                                    if let Some(obj) = obj {
                                        seen.insert(obj.name_any(), fingerprint(obj, &watched));
                                    }
                                }
                                (Some(obj), Watched::Cluster(all)) => {
                                    if changed(&mut seen, obj, &event, &watched) {
                                        let _ = all.unbounded_send(());
                                    }
                                }
                                (Some(obj), Watched::Namespaces(sandboxes, _)) => {
                                    if changed(&mut seen, obj, &event, &watched) {
                                        in_namespace(sandboxes, &obj.name_any());
                                    }
                                }
                            }
                        }
                        Some(Err(_)) if !usable.load(Ordering::SeqCst) => break,
                        Some(Err(e)) => tracing::debug!(kind = %ar.kind, error = %e, "watch error"),
                        None => break,
                    }
                }
            }
        }
    });
    rx
}

/// What a change of a cluster-scoped object must differ in to concern sandboxes: a policy's
/// spec (its generation), a namespace's labels.
fn fingerprint(obj: &DynamicObject, watched: &Watched) -> String {
    match watched {
        Watched::Namespaces(..) => format!("{:?}", obj.labels()),
        _ => format!(
            "{}/{}",
            obj.uid().unwrap_or_default(),
            obj.metadata.generation.unwrap_or_default()
        ),
    }
}

/// Whether `event` about `obj` changed what sandboxes depend on (remembered in `seen`).
fn changed(
    seen: &mut std::collections::HashMap<String, String>,
    obj: &DynamicObject,
    event: &watcher::Event<DynamicObject>,
    watched: &Watched,
) -> bool {
    if matches!(event, watcher::Event::Delete(_)) {
        seen.remove(&obj.name_any());
        return true;
    }
    let now = fingerprint(obj, watched);
    seen.insert(obj.name_any(), now.clone()).as_ref() != Some(&now)
}

/// What of an optional CRD the cluster facts depend on: which object it is, its spec, whether
/// it is being deleted, and its conditions (Established). Status writes of anything else and
/// relists of unchanged CRDs re-read nothing.
fn crd_fingerprint(crd: &CustomResourceDefinition) -> String {
    let conditions: Vec<(String, String)> = crd
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .map(|c| (c.type_.clone(), c.status.clone()))
        .collect();
    format!(
        "{}/{}/{}/{conditions:?}",
        crd.uid().unwrap_or_default(),
        crd.metadata.generation.unwrap_or_default(),
        crd.metadata.deletion_timestamp.is_some()
    )
}

/// What the CRD watch has seen of the optional CRDs: their fingerprints, and the names a relist
/// in progress has shown.
#[derive(Default)]
struct SeenCrds {
    fingerprints: std::collections::HashMap<String, String>,
    relisted: Option<std::collections::HashSet<String>>,
}

/// Whether an event changed an optional CRD in a way the cluster facts depend on: one appears,
/// changes its fingerprint or goes, including one that a relist no longer shows (deleted while
/// the watch was down, so no deletion event came).
fn crd_changed(seen: &mut SeenCrds, event: watcher::Event<CustomResourceDefinition>) -> bool {
    let (crd, deleted) = match event {
        watcher::Event::Apply(c) => (c, false),
        watcher::Event::InitApply(c) => {
            if let Some(names) = seen.relisted.as_mut() {
                names.insert(c.name_any());
            }
            (c, false)
        }
        watcher::Event::Delete(c) => (c, true),
        watcher::Event::Init => {
            seen.relisted = Some(Default::default());
            return false;
        }
        watcher::Event::InitDone => {
            let Some(names) = seen.relisted.take() else {
                return false;
            };
            let before = seen.fingerprints.len();
            seen.fingerprints.retain(|name, _| names.contains(name));
            return seen.fingerprints.len() != before;
        }
    };
    let name = crd.name_any();
    if !OPTIONAL_CRDS.contains(&name.as_str()) {
        return false;
    }
    if deleted {
        seen.fingerprints.remove(&name);
        return true;
    }
    let now = crd_fingerprint(&crd);
    seen.fingerprints.insert(name, now.clone()).as_ref() != Some(&now)
}

/// Runs the controllers until `stop` is cancelled, then lets in-flight reconciles finish.
/// `ready` is called once every cache has listed.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Metrics,
    ready: impl FnOnce() + Send + 'static,
    stop: CancellationToken,
) {
    let ns = settings.namespace.as_deref();
    let wc = watcher::Config::default();
    let ours = wc.clone().labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"));
    let (policies, policy_writer) = reflector::store_shared::<AgentPolicy>(256);
    let policy_events = policy_writer.subscribe();
    let (sandboxes, sandbox_writer) = reflector::store_shared::<AgentSandbox>(1024);
    let sandbox_events = sandbox_writer.subscribe();
    let sandbox_policy_events = sandbox_writer.subscribe();
    let (pools, pool_writer) = reflector::store_shared::<AgentSandboxPool>(256);
    let pool_events = pool_writer.subscribe();
    let (runtime_classes, rc_writer) = reflector::store::<RuntimeClass>();
    let (network_policies, np_writer) = reflector::store_shared::<NetworkPolicy>(1024);
    let isolation_events = np_writer.subscribe();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (service_accounts, sa_writer) = reflector::store::<ServiceAccount>();
    let (services, service_writer) = reflector::store::<Service>();
    let (claims, claim_writer) = reflector::store::<PersistentVolumeClaim>();

    let optional_crds = OptionalCrds {
        gateway_service: settings
            .config
            .gateway
            .as_ref()
            .map(|g| Arc::new((g.placement.namespace.clone(), g.service.clone()))),
        ..OptionalCrds::default()
    };
    let facts_checked = Gate::default();
    let gate = |_: &str| Gate::default();
    let (g_policies, g_sandboxes, g_rcs, g_nps) = (gate("p"), gate("s"), gate("rc"), gate("np"));
    let g_pools = gate("pool");
    let (g_pods, g_sas, g_services, g_claims) = (gate("pod"), gate("sa"), gate("svc"), gate("pvc"));
    let caches = Caches {
        policies,
        sandboxes: sandboxes.clone(),
        pools: pools.clone(),
        runtime_classes,
        network_policies: network_policies.clone(),
        other_network_policies: Default::default(),
        sandboxes_by_policy: Default::default(),
        pods,
        service_accounts,
        services,
        claims,
        cilium_policies: OptionalStore::default(),
        seccomp_profiles: OptionalStore::default(),
        cilium_clusterwide_policies: OptionalStore::default(),
        admin_network_policies: OptionalStore::default(),
        cluster_network_policies: OptionalStore::default(),
        namespaces: OptionalStore::default(),
        gates: Arc::new(vec![
            g_policies.clone(),
            g_sandboxes.clone(),
            g_pools.clone(),
            g_rcs.clone(),
            g_nps.clone(),
            g_pods.clone(),
            g_sas.clone(),
            g_services.clone(),
            g_claims.clone(),
            facts_checked.clone(),
        ]),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        config: settings.config.clone(),
        caches: caches.clone(),
        optional_crds: optional_crds.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "palisade".into(),
                instance: Some(settings.instance.clone()),
            },
        ),
        metrics: metrics.clone(),
        backoff: Default::default(),
        written: Default::default(),
        pool_expectations: Default::default(),
        moved: Default::default(),
        count_writes: Default::default(),
        checked_policies: Default::default(),
        stop: stop.clone(),
    });

    let policy_stream = synced(
        reflector::reflector(
            policy_writer,
            lenient::watch::<AgentPolicy>(client.clone(), ns, wc.clone()),
        ),
        g_policies,
    )
    // Its sandboxes care about the spec, not the status (the sandbox count is written up to
    // once a second while sandboxes come and go; each write used to re-run every sandbox of
    // the policy, quadratic work in a burst).
    .filter({
        let mut seen = std::collections::HashMap::new();
        move |event| {
            let starts = policy::starts_sandbox_passes(&mut seen, event);
            async move { starts }
        }
    })
    .touched_objects();
    // A sandbox deleted or moved changes its policy's count.
    let (sandbox_gone_tx, sandbox_gone_rx) = futures::channel::mpsc::unbounded();
    // The index of sandboxes by policy follows each event before the store does, so a pass
    // woken by the store reads a count at least as new. A policy that lost a sandbox (deleted,
    // moved to another policy, gone in a relist) is woken: the shared store tells its
    // subscribers of changes, not of deletions, and only the sandbox's new policy sees those.
    let by_policy = caches.sandboxes_by_policy.clone();
    // A warm sandbox deleted by someone else wakes its pool, and a relist every pool (the store
    // tells its subscribers of changes only). Sent once the store holds the event, so the
    // woken pass never counts the deleted sandbox.
    let (warm_gone_tx, warm_gone_rx) = futures::channel::mpsc::unbounded();
    let (relisted_tx, relisted_rx) = futures::channel::mpsc::unbounded();
    let ctx_wake = ctx.clone();
    let sandbox_stream = synced(
        reflector::reflector(
            sandbox_writer,
            lenient::watch::<AgentSandbox>(client.clone(), ns, wc.clone()).inspect(move |event| {
                if let Ok(event) = event {
                    for (ns, name) in by_policy.apply_event(event) {
                        let _ = sandbox_gone_tx
                            .unbounded_send(ObjectRef::<AgentPolicy>::new(&name).within(&ns));
                    }
                }
            }),
        )
        .inspect(move |event| {
            let Ok(event) = event else { return };
            match pool::on_sandbox_event(event, &ctx_wake.pool_expectations) {
                Some(pool::Wake::Pool(p)) => {
                    let _ = warm_gone_tx.unbounded_send(p);
                }
                Some(pool::Wake::Every) => {
                    let _ = relisted_tx.unbounded_send(());
                }
                None => {}
            }
        }),
        g_sandboxes,
    )
    // The operator's own status writes start no pass.
    .filter({
        let ctx = ctx.clone();
        let mut seen = sandbox::SeenSandboxes::default();
        move |event| {
            let starts = sandbox::starts_pass(&mut seen, &ctx.written, event);
            async move { starts }
        }
    })
    .touched_objects();
    let pool_stream = synced(
        reflector::reflector(
            pool_writer,
            lenient::watch::<AgentSandboxPool>(client.clone(), ns, wc.clone()),
        ),
        g_pools,
    )
    .touched_objects();
    let rc_stream = synced(
        reflector::reflector(
            rc_writer,
            watcher::watcher(Api::<RuntimeClass>::all(client.clone()), wc.clone())
                .default_backoff()
                .modify(slim),
        ),
        g_rcs,
    )
    .touched_objects();
    let other_nps = caches.other_network_policies.clone();
    let np_stream = synced(
        reflector::reflector(
            np_writer,
            watcher::watcher(api::<NetworkPolicy>(&client, ns), wc.clone())
                .default_backoff()
                .modify(slim),
        )
        .inspect(move |event| {
            if let Ok(event) = event {
                other_nps.apply_event(event);
            }
        }),
        g_nps,
    )
    .touched_objects();
    macro_rules! owned {
        ($kind:ty, $writer:expr, $gate:expr) => {
            synced(
                reflector::reflector(
                    $writer,
                    watcher::watcher(api::<$kind>(&client, ns), ours.clone())
                        .default_backoff()
                        .modify(slim),
                ),
                $gate,
            )
            .touched_objects()
        };
    }
    // A pod deleted wakes the isolating NetworkPolicy that waits for it (if any).
    let (pod_gone_tx, pod_gone_rx) = futures::channel::mpsc::unbounded();
    let (pod_relist_tx, pod_relist_rx) = futures::channel::mpsc::unbounded();
    let pod_stream = synced(
        reflector::reflector(
            pod_writer,
            watcher::watcher(api::<Pod>(&client, ns), ours.clone())
                .default_backoff()
                .modify(super::live::keep_what_is_read),
        )
        .inspect({
            // Pods deleted while the watch was down wake their sandbox and the NetworkPolicy
            // that waits for them when the relist ends, not at the next resync.
            let mut relisted = super::relist::RelistGone::default();
            move |event| {
                let Ok(event) = event else { return };
                if let watcher::Event::Delete(pod) = event
                    && let Some(np) = isolation::pod_gone(pod)
                {
                    let _ = pod_gone_tx.unbounded_send(np);
                }
                for gone in relisted.apply(event) {
                    let _ = pod_gone_tx.unbounded_send(
                        ObjectRef::new(&crate::render::network::isolation_name(&gone.name))
                            .within(&gone.namespace),
                    );
                    if let Some(sandbox) = gone.sandbox {
                        let _ = pod_relist_tx
                            .unbounded_send(ObjectRef::new(&sandbox).within(&gone.namespace));
                    }
                }
            }
        }),
        g_pods,
    )
    .touched_objects();
    let sa_stream = owned!(ServiceAccount, sa_writer, g_sas);
    let service_stream = owned!(Service, service_writer, g_services);
    let claim_stream = owned!(PersistentVolumeClaim, claim_writer, g_claims);

    // Optional CRDs: known before the first reconcile, re-checked when one of them changes and
    // every few minutes.
    let (crd_trigger_tx, crd_trigger_rx) = futures::channel::mpsc::unbounded::<()>();
    let facts_task = tokio::spawn(first_facts(
        client.clone(),
        optional_crds.clone(),
        caches.clone(),
        settings.namespace.clone(),
        facts_checked,
        crd_trigger_tx.clone(),
        stop.clone(),
    ));
    // Changes to cluster-scoped policies and namespaces' first lists: every sandbox, coalesced.
    let (all_tx, all_rx) = futures::channel::mpsc::unbounded::<()>();
    let crd_watch = {
        let crds = optional_crds.clone();
        let client = client.clone();
        let watched = settings.namespace.clone();
        let stop = stop.clone();
        watcher::watcher(
            Api::<CustomResourceDefinition>::all(client.clone()),
            wc.clone(),
        )
        .default_backoff()
        .filter_map({
            let mut seen = SeenCrds::default();
            move |event| {
                let relevant = event.is_ok_and(|e| crd_changed(&mut seen, e));
                async move { relevant.then_some(()) }
            }
        })
        .take_until(stop.cancelled_owned())
        .for_each(move |_| {
            let crds = crds.clone();
            let client = client.clone();
            let tx = crd_trigger_tx.clone();
            let watched = watched.clone();
            async move {
                if crds
                    .refresh(&client, watched.as_deref())
                    .await
                    .unwrap_or(false)
                {
                    let _ = tx.unbounded_send(());
                }
            }
        })
    };
    let cilium_triggers = optional_children(
        client.clone(),
        settings.namespace.clone(),
        super::act::cilium_resource(),
        optional_crds.cilium_policies.readable.clone(),
        caches.cilium_policies.clone(),
        // Others' Cilium policies may widen a sandbox: all of them are watched.
        Watched::All(caches.sandboxes.clone()),
        stop.clone(),
    );
    let mut admin_watches: Vec<_> = super::admin::AdminKind::ALL
        .into_iter()
        .map(|kind| {
            optional_children(
                client.clone(),
                None,
                kind.resource(),
                optional_crds.admin(kind).readable.clone(),
                caches.admin(kind).clone(),
                Watched::Cluster(all_tx.clone()),
                stop.clone(),
            )
            .boxed()
        })
        .collect();
    admin_watches.push(
        optional_children(
            client.clone(),
            settings.namespace.clone(),
            ApiResource::erase::<k8s_openapi::api::core::v1::Namespace>(&()),
            optional_crds.namespaces.clone(),
            caches.namespaces.clone(),
            Watched::Namespaces(caches.sandboxes.clone(), all_tx.clone()),
            stop.clone(),
        )
        .boxed(),
    );
    let admin_triggers = futures::stream::select_all(admin_watches);
    let seccomp_triggers = optional_children(
        client.clone(),
        settings.namespace.clone(),
        super::act::seccomp_resource(),
        optional_crds.seccomp_profile.clone(),
        caches.seccomp_profiles.clone(),
        Watched::Children,
        stop.clone(),
    );

    // Re-queued: the sandboxes of a changed policy; on a RuntimeClass change, the blocked ones
    // (it may have appeared) and those running on that class (it may be gone or its handler
    // changed); all of them when an optional CRD comes or goes; for a NetworkPolicy, its
    // sandbox, or the sandboxes it may widen.
    let ctx_p = ctx.clone();
    let ctx_rc = ctx.clone();
    let ctx_np = ctx.clone();
    let affected_by_class = move |class: &str| -> Vec<ObjectRef<AgentSandbox>> {
        ctx_rc
            .caches
            .sandboxes
            .state()
            .iter()
            .filter(|s| {
                let st = s.status.as_ref();
                st.and_then(|st| st.phase) == Some(SandboxPhase::Blocked)
                    || st.and_then(|st| st.runtime_class_name.as_deref()) == Some(class)
            })
            .map(|s| ObjectRef::from_obj(&**s))
            .collect()
    };
    let ctx_pool = ctx.clone();
    let sandbox_controller = Controller::for_stream(sandbox_stream, sandboxes.clone())
        .watches_stream(pool_stream, move |p: AgentSandboxPool| {
            sandbox::waiting_for_pool(&ctx_pool, &p)
        })
        .owns_stream(pod_stream)
        .owns_stream(sa_stream)
        .owns_stream(service_stream)
        .owns_stream(claim_stream)
        .watches_stream(policy_stream, move |p: AgentPolicy| {
            policy::sandboxes_of(&ctx_p, &ObjectRef::from_obj(&p))
        })
        .watches_stream(rc_stream, move |rc: RuntimeClass| {
            affected_by_class(&rc.name_any())
        })
        .watches_stream(np_stream, move |np: NetworkPolicy| {
            sandbox::affected_by_network_policy(&ctx_np, &np)
        })
        .reconcile_on(cilium_triggers)
        .reconcile_on(seccomp_triggers)
        .reconcile_on(admin_triggers)
        .reconcile_on(pod_relist_rx)
        .reconcile_all_on(futures::stream::select(
            crd_trigger_rx,
            coalesced(all_rx, Duration::from_secs(1)),
        ))
        .with_config(kube::runtime::controller::Config::default().concurrency(settings.concurrency))
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(sandbox::reconcile, sandbox::error_policy, ctx.clone())
        .for_each(|_| async {});

    // Pools: driven by their own changes and their warm sandboxes', as the sandbox cache
    // sees them (a pass reads that cache, so it never runs on an older view than its trigger).
    // Sandboxes waiting for a pool that did not exist are re-queued when it appears.
    let pool_controller = match (pool_events, sandbox_events) {
        (Some(events), Some(sandbox_events)) => {
            let warm = sandbox_events.filter_map(|s| async move { pool::pool_of(&s) });
            Controller::for_shared_stream(events, pools.clone())
                .reconcile_on(warm)
                .reconcile_on(warm_gone_rx)
                .reconcile_all_on(relisted_rx)
                .with_config(
                    kube::runtime::controller::Config::default().concurrency(settings.concurrency),
                )
                .graceful_shutdown_on(stop.clone().cancelled_owned())
                .run(pool::reconcile, pool::error_policy, ctx.clone())
                .for_each(|_| async {})
                .boxed()
        }
        _ => {
            tracing::error!("the pool or sandbox store cannot be shared; pools are off");
            drop((warm_gone_rx, relisted_rx));
            futures::future::ready(()).boxed()
        }
    };

    // Policies: driven by the same watches (shared stores), and by their sandboxes as they
    // come and go (counted from the sandbox cache).
    let policy_controller = match (policy_events, sandbox_policy_events) {
        (Some(events), Some(sandbox_events)) => {
            let users = sandbox_events.filter_map(|s| async move {
                let ns = s.namespace()?;
                Some(ObjectRef::<AgentPolicy>::new(&s.policy_name()).within(&ns))
            });
            Controller::for_shared_stream(events, caches.policies.clone())
                .reconcile_on(users)
                .reconcile_on(sandbox_gone_rx)
                .graceful_shutdown_on(stop.clone().cancelled_owned())
                .run(policy::reconcile, policy::error_policy, ctx.clone())
                .for_each(|_| async {})
                .boxed()
        }
        _ => {
            tracing::error!("the policy or sandbox store cannot be shared; policy status is off");
            futures::future::ready(()).boxed()
        }
    };

    // Isolating NetworkPolicies being deleted are released once their pod is gone. They are
    // found in the one NetworkPolicy watch (every NetworkPolicy: a label can be removed).
    let isolation_controller = match isolation_events {
        Some(events) => Controller::for_shared_stream(events, network_policies)
            .reconcile_on(pod_gone_rx)
            .graceful_shutdown_on(stop.clone().cancelled_owned())
            .run(isolation::reconcile, isolation::error_policy, ctx.clone())
            .for_each(|_| async {})
            .boxed(),
        None => {
            tracing::error!("the NetworkPolicy store cannot be shared; isolation release is off");
            futures::future::ready(()).boxed()
        }
    };

    let readiness = {
        let caches = caches.clone();
        let stop = stop.clone();
        async move {
            tokio::select! {
                () = caches.ready() => {
                    tracing::info!("caches synced: reconciling");
                    ready();
                }
                _ = stop.cancelled() => {}
            }
        }
    };
    let phase_gauge = {
        let ctx = ctx.clone();
        let stop = stop.clone();
        async move {
            tokio::select! {
                _ = stop.cancelled() => return,
                () = ctx.caches.ready() => {}
            }
            while !stop.is_cancelled() {
                {
                    // Failure counts of sandboxes that are gone are forgotten.
                    let live: std::collections::HashSet<String> = ctx
                        .caches
                        .sandboxes
                        .state()
                        .iter()
                        .filter_map(|s| s.uid())
                        .collect();
                    ctx.backoff.retain(|k| live.contains(k));
                    ctx.written.retain(&live);
                    ctx.moved.retain(&live);
                    let policies: std::collections::HashSet<String> = ctx
                        .caches
                        .policies
                        .state()
                        .iter()
                        .filter_map(|p| p.uid())
                        .collect();
                    ctx.checked_policies.retain(&policies);
                    let mut counts = std::collections::BTreeMap::new();
                    for s in ctx.caches.sandboxes.state() {
                        let phase = s
                            .status
                            .as_ref()
                            .and_then(|st| st.phase)
                            .unwrap_or_default();
                        *counts.entry(format!("{phase:?}")).or_insert(0) += 1;
                    }
                    ctx.metrics.set_phase_counts(&counts);
                    // Pools as their status says (a deleted pool's series goes).
                    ctx.metrics.pool_replicas.reset();
                    ctx.metrics.pool_ready.reset();
                    for p in ctx.caches.pools.state() {
                        let key = format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any());
                        let st = p.status.clone().unwrap_or_default();
                        ctx.metrics
                            .pool_replicas
                            .with_label_values(&[&key])
                            .set(st.replicas as i64);
                        ctx.metrics
                            .pool_ready
                            .with_label_values(&[&key])
                            .set(st.ready_replicas as i64);
                    }
                }
                tokio::select! { _ = stop.cancelled() => {}, _ = tokio::time::sleep(Duration::from_secs(5)) => {} }
            }
        }
    };
    metrics.leader.set(1);
    // The controllers end after a graceful shutdown, once their in-flight reconciles finished.
    tokio::join!(
        sandbox_controller,
        pool_controller,
        policy_controller,
        isolation_controller,
        crd_watch,
        readiness,
        phase_gauge
    );
    facts_task.abort();
    // A replica that stopped leading no longer speaks for the sandboxes: its census goes to zero
    // so that dashboards summing over replicas count each sandbox once.
    metrics.leader.set(0);
    metrics.set_phase_counts(&std::collections::BTreeMap::new());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd(name: &str, generation: i64, established: &str) -> CustomResourceDefinition {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "uid": "u", "generation": generation},
            "spec": {"group": "g", "names": {"kind": "K", "plural": "ks"}, "scope": "Namespaced",
                "versions": []},
            "status": {"conditions": [{"type": "Established", "status": established}]}
        }))
        .expect("crd")
    }

    #[test]
    fn only_changes_the_facts_depend_on_re_read_them() {
        let name = OPTIONAL_CRDS[0];
        let mut seen = SeenCrds::default();
        let apply = |seen: &mut _, c| crd_changed(seen, watcher::Event::Apply(c));
        assert!(apply(&mut seen, crd(name, 1, "False")), "first seen");
        assert!(!apply(&mut seen, crd(name, 1, "False")), "a status write");
        assert!(apply(&mut seen, crd(name, 1, "True")), "established");
        assert!(apply(&mut seen, crd(name, 2, "True")), "its spec");
        // A relist that shows it unchanged: nothing to re-read.
        assert!(!crd_changed(&mut seen, watcher::Event::Init));
        assert!(!crd_changed(
            &mut seen,
            watcher::Event::InitApply(crd(name, 2, "True"))
        ));
        assert!(!crd_changed(&mut seen, watcher::Event::InitDone));
        // A relist without it: it was deleted while the watch was down.
        assert!(!crd_changed(&mut seen, watcher::Event::Init));
        assert!(crd_changed(&mut seen, watcher::Event::InitDone));
        assert!(apply(&mut seen, crd(name, 2, "True")), "back again");
        assert!(crd_changed(
            &mut seen,
            watcher::Event::Delete(crd(name, 2, "True"))
        ));
        assert!(
            !apply(&mut seen, crd("other.example.com", 1, "True")),
            "not an optional CRD"
        );
    }
}
