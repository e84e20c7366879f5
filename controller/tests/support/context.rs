//! A reconcile context over stores filled from fixtures (and marked synced, as after a list),
//! for tests that drive one reconcile against a mocked API server.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use palisade::api::{AgentPolicy, AgentSandbox};
use palisade::ops::metrics::Metrics;
use palisade::reconcile::caches::{Caches, Gate};
use palisade::reconcile::facts::OptionalCrds;
use palisade::reconcile::{Context, OperatorConfig};

/// A store holding `objects`, synced (as after its first list).
pub fn ready_store<K>(objects: Vec<K>) -> Store<K>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    let (reader, mut writer) = reflector::store::<K>();
    writer.apply_watcher_event(&watcher::Event::Init);
    for o in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(o));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    // The writer goes away: a synced store stays readable and ready.
    reader
}

/// What the caches hold.
#[derive(Clone, Default)]
pub struct Cached {
    pub policies: Vec<AgentPolicy>,
    pub sandboxes: Vec<AgentSandbox>,
    pub pools: Vec<palisade::api::AgentSandboxPool>,
    pub runtime_classes: Vec<RuntimeClass>,
    pub network_policies: Vec<NetworkPolicy>,
    pub pods: Vec<Pod>,
    pub service_accounts: Vec<ServiceAccount>,
    pub services: Vec<Service>,
    pub claims: Vec<PersistentVolumeClaim>,
}

pub fn caches(c: Cached) -> Caches {
    Caches {
        policies: ready_store(c.policies),
        sandboxes_by_policy: Arc::new(palisade::reconcile::policy_index::SandboxesByPolicy::of(
            &c.sandboxes,
        )),
        sandboxes: ready_store(c.sandboxes),
        pools: ready_store(c.pools),
        runtime_classes: ready_store(c.runtime_classes),
        other_network_policies: Arc::new(palisade::reconcile::np_index::OtherNetworkPolicies::of(
            &c.network_policies,
        )),
        network_policies: ready_store(c.network_policies),
        pods: ready_store(c.pods),
        service_accounts: ready_store(c.service_accounts),
        services: ready_store(c.services),
        claims: ready_store(c.claims),
        cilium_policies: Default::default(),
        seccomp_profiles: Default::default(),
        cilium_clusterwide_policies: Default::default(),
        admin_network_policies: Default::default(),
        cluster_network_policies: Default::default(),
        namespaces: Default::default(),
        gates: Arc::new(vec![Gate::opened()]),
    }
}

pub fn context(client: kube::Client, c: Cached, crds: OptionalCrds) -> Arc<Context> {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "palisade".into(),
            instance: None,
        },
    );
    Arc::new(Context {
        client,
        config: OperatorConfig::default(),
        caches: caches(c),
        optional_crds: crds,
        recorder,
        metrics: Metrics::new(),
        backoff: Default::default(),
        written: Default::default(),
        pool_expectations: Default::default(),
        moved: Default::default(),
        count_writes: Default::default(),
        checked_policies: Default::default(),
        stop: Default::default(),
    })
}
