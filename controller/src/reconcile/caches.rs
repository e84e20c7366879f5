//! The operator's caches (reflector stores), and the rule that no reconcile reads one before
//! every one has listed: a decision on a half-filled cache would take a missing entry for an
//! absent object.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::DynamicObject;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use tokio::sync::Notify;

use crate::api::{AgentPolicy, AgentSandbox, AgentSandboxPool};

/// Every store a reconcile reads.
#[derive(Clone)]
pub struct Caches {
    pub policies: Store<AgentPolicy>,
    pub sandboxes: Store<AgentSandbox>,
    pub pools: Store<AgentSandboxPool>,
    pub runtime_classes: Store<RuntimeClass>,
    /// Every NetworkPolicy (the operator's and others', which may widen a sandbox).
    pub network_policies: Store<NetworkPolicy>,
    /// The same, without the sandboxes' isolating ones, by namespace (kept from the same watch).
    pub other_network_policies: Arc<super::np_index::OtherNetworkPolicies>,
    /// The sandboxes of each policy (kept from the sandbox watch).
    pub sandboxes_by_policy: Arc<super::policy_index::SandboxesByPolicy>,
    /// The operator's children, by their `app.kubernetes.io/managed-by: palisade` label.
    pub pods: Store<Pod>,
    pub service_accounts: Store<ServiceAccount>,
    pub services: Store<Service>,
    pub claims: Store<PersistentVolumeClaim>,
    /// Every CiliumNetworkPolicy (the operator's and others', which may widen a sandbox) and the
    /// operator's SeccompProfiles, while those CRDs are usable and their watch has listed.
    pub cilium_policies: OptionalStore,
    pub seccomp_profiles: OptionalStore,
    /// Cluster-scoped policies of a cluster administrator that may allow a sandbox more
    /// (reported, not blocked), and the namespaces (their labels select pods for those), while
    /// their CRDs are installed and readable and their watch has listed.
    pub cilium_clusterwide_policies: OptionalStore,
    pub admin_network_policies: OptionalStore,
    pub cluster_network_policies: OptionalStore,
    pub namespaces: OptionalStore,
    /// One gate per store, opened when its first list is in (`synced`), and one opened once
    /// the optional CRDs were checked. (The stores' own `wait_until_ready` wakes only one
    /// waiter at a time, and the controllers already wait on it.)
    pub gates: Arc<Vec<Gate>>,
}

/// A cache of an optional kind (its CRD may come and go): set while its watch has listed.
#[derive(Clone, Default)]
pub struct OptionalStore {
    slot: Arc<RwLock<Option<Store<DynamicObject>>>>,
}

impl OptionalStore {
    pub fn set(&self, store: Option<Store<DynamicObject>>) {
        *self.slot.write().unwrap_or_else(|e| e.into_inner()) = store;
    }

    /// The cache, if it is known to be complete now.
    pub fn get(&self) -> Option<Store<DynamicObject>> {
        self.slot.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Raised once, awaited by many.
#[derive(Clone, Default)]
pub struct Gate {
    open: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl Gate {
    /// A gate that is open already.
    pub fn opened() -> Self {
        let gate = Self::default();
        gate.open();
        gate
    }

    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst)
    }

    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_open() {
                return;
            }
            notified.await;
        }
    }
}

/// Passes a reflector's events on, opening `gate` once the first list has been applied to
/// the store (`InitDone`).
pub fn synced<S, K>(events: S, gate: Gate) -> impl Stream<Item = S::Item>
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    events.inspect(move |event| {
        if matches!(event, Ok(watcher::Event::InitDone)) {
            gate.open();
        }
    })
}

impl Caches {
    /// The cache of one kind of cluster-scoped policy.
    pub fn admin(&self, kind: super::admin::AdminKind) -> &OptionalStore {
        use super::admin::AdminKind;
        match kind {
            AdminKind::CiliumClusterwide => &self.cilium_clusterwide_policies,
            AdminKind::AdminNetworkPolicy => &self.admin_network_policies,
            AdminKind::ClusterNetworkPolicy => &self.cluster_network_policies,
        }
    }

    /// Resolves once every store has listed its objects and the cluster facts were read.
    pub async fn ready(&self) {
        for gate in self.gates.iter() {
            gate.wait().await;
        }
    }

    /// Whether every store has listed.
    pub fn is_ready(&self) -> bool {
        self.gates.iter().all(Gate::is_open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn many_waiters_are_released_together() {
        let gate = Gate::default();
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let g = gate.clone();
                tokio::spawn(async move { g.wait().await })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(waiters.iter().all(|w| !w.is_finished()));
        gate.open();
        for w in waiters {
            tokio::time::timeout(std::time::Duration::from_secs(2), w)
                .await
                .expect("released")
                .expect("no panic");
        }
        // An open gate lets a later waiter through at once.
        gate.wait().await;
    }
}
