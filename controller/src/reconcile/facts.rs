//! Cluster facts read from the API: RuntimeClasses (from a reflector store) and which optional
//! CRDs are installed (checked at start and re-checked when a CRD appears).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

use crate::render::facts::{ClusterFacts, RuntimeClasses};

use super::Context;

pub const SECCOMP_PROFILE_CRD: &str = "seccompprofiles.security-profiles-operator.x-k8s.io";
pub const CILIUM_POLICY_CRD: &str = "ciliumnetworkpolicies.cilium.io";
pub const CILIUM_CLUSTERWIDE_POLICY_CRD: &str = "ciliumclusterwidenetworkpolicies.cilium.io";
pub const ADMIN_NETWORK_POLICY_CRD: &str = "adminnetworkpolicies.policy.networking.k8s.io";
pub const CLUSTER_NETWORK_POLICY_CRD: &str = "clusternetworkpolicies.policy.networking.k8s.io";

/// Every optional CRD whose coming or going the operator looks at.
pub const OPTIONAL_CRDS: [&str; 5] = [
    SECCOMP_PROFILE_CRD,
    CILIUM_POLICY_CRD,
    CILIUM_CLUSTERWIDE_POLICY_CRD,
    ADMIN_NETWORK_POLICY_CRD,
    CLUSTER_NETWORK_POLICY_CRD,
];

/// Optional CRDs, as last seen: each counts only when it is installed **and** the operator may
/// create and patch its objects. A backend the operator cannot use is the same as no backend:
/// the sandboxes that need it are blocked, never started without it.
#[derive(Clone, Debug, Default)]
pub struct OptionalCrds {
    pub seccomp_profile: Arc<AtomicBool>,
    pub cilium: Arc<AtomicBool>,
    /// CiliumNetworkPolicies, read (list, watch) to find others' that could widen a sandbox:
    /// while Cilium is installed and they cannot be read, sandboxes are blocked.
    pub cilium_policies: ReadOnly,
    /// Cluster-scoped policies of others that may allow a sandbox more (read only).
    pub cilium_clusterwide: ReadOnly,
    pub admin_network_policy: ReadOnly,
    pub cluster_network_policy: ReadOnly,
    /// Namespaces are watched (their labels, which Cilium and admin policies select by) while
    /// one of the read kinds is readable and the operator may list and watch namespaces (the
    /// watched one, with `--namespace`).
    pub namespaces: Arc<AtomicBool>,
    /// The egress gateway's Service (namespace, name), when one is configured.
    pub gateway_service: Option<Arc<(String, String)>>,
    /// Its ClusterIP and port, as last read; `None` while it is missing or has no ClusterIP.
    pub gateway_address: Arc<std::sync::RwLock<Option<std::net::SocketAddr>>>,
}

/// A kind the operator only reads: whether its CRD is installed, and whether the operator may
/// list and watch it.
#[derive(Clone, Debug, Default)]
pub struct ReadOnly {
    pub installed: Arc<AtomicBool>,
    pub readable: Arc<AtomicBool>,
}

impl OptionalCrds {
    /// What is known of one kind of cluster-scoped policy.
    pub fn admin(&self, kind: super::admin::AdminKind) -> &ReadOnly {
        use super::admin::AdminKind;
        match kind {
            AdminKind::CiliumClusterwide => &self.cilium_clusterwide,
            AdminKind::AdminNetworkPolicy => &self.admin_network_policy,
            AdminKind::ClusterNetworkPolicy => &self.cluster_network_policy,
        }
    }
}

impl ReadOnly {
    fn set(&self, installed: bool, readable: bool) -> bool {
        let a = self.installed.swap(installed, Ordering::SeqCst) != installed;
        let b = self.readable.swap(readable, Ordering::SeqCst) != readable;
        a || b
    }
}

impl OptionalCrds {
    /// Looks the CRDs up, and asks the API server (SelfSubjectAccessReview) whether the operator
    /// may write their objects in `namespace` (`None`: every namespace), or, for the kinds it
    /// only reads, list and watch them. Returns whether anything changed.
    pub async fn refresh(
        &self,
        client: &Client,
        namespace: Option<&str>,
    ) -> Result<bool, kube::Error> {
        // Both are looked at even when one fails, so no change is lost.
        let backends = self.refresh_backends(client, namespace).await;
        let read_only = self.refresh_read_only(client, namespace).await;
        Ok(backends? | read_only?)
    }

    /// Only the backends the operator writes (what blocks a sandbox when missing).
    pub async fn refresh_backends(
        &self,
        client: &Client,
        namespace: Option<&str>,
    ) -> Result<bool, kube::Error> {
        let mut changed = false;
        let spo = installed(client, SECCOMP_PROFILE_CRD).await?;
        let usable = spo
            && allowed(
                client,
                "security-profiles-operator.x-k8s.io",
                "seccompprofiles",
                &["create", "patch"],
                namespace,
                None,
            )
            .await?;
        changed |= self.seccomp_profile.swap(usable, Ordering::SeqCst) != usable;
        let cilium = installed(client, CILIUM_POLICY_CRD).await?;
        let cnp = |verbs| {
            allowed(
                client,
                "cilium.io",
                "ciliumnetworkpolicies",
                verbs,
                namespace,
                None,
            )
        };
        let usable = cilium && cnp(&["create", "patch"]).await?;
        changed |= self.cilium.swap(usable, Ordering::SeqCst) != usable;
        let readable = cilium && cnp(&["list", "watch"]).await?;
        changed |= self.cilium_policies.set(cilium, readable);
        if let Some(service) = &self.gateway_service {
            let (ns, name) = service.as_ref();
            let found = Api::<Service>::namespaced(client.clone(), ns)
                .get_opt(name)
                .await?
                .as_ref()
                .and_then(gateway_address);
            if found.is_none() {
                tracing::warn!(service = %format!("{ns}/{name}"), "the egress gateway's Service is missing or has no ClusterIP: sandboxes that reach domain names through it are blocked");
            }
            if let Ok(mut known) = self.gateway_address.write() {
                changed |= *known != found;
                *known = found;
            }
        }
        Ok(changed)
    }

    /// Only the kinds the operator reads (reported, never blocking).
    async fn refresh_read_only(
        &self,
        client: &Client,
        namespace: Option<&str>,
    ) -> Result<bool, kube::Error> {
        let mut changed = false;
        for (crd, group, resource, flag) in [
            (
                CILIUM_CLUSTERWIDE_POLICY_CRD,
                "cilium.io",
                "ciliumclusterwidenetworkpolicies",
                &self.cilium_clusterwide,
            ),
            (
                ADMIN_NETWORK_POLICY_CRD,
                "policy.networking.k8s.io",
                "adminnetworkpolicies",
                &self.admin_network_policy,
            ),
            (
                CLUSTER_NETWORK_POLICY_CRD,
                "policy.networking.k8s.io",
                "clusternetworkpolicies",
                &self.cluster_network_policy,
            ),
        ] {
            let is_installed = installed(client, crd).await?;
            let readable = is_installed
                && allowed(client, group, resource, &["list", "watch"], None, None).await?;
            changed |= flag.set(is_installed, readable);
        }
        let any_readable = [
            &self.cilium_policies,
            &self.cilium_clusterwide,
            &self.admin_network_policy,
            &self.cluster_network_policy,
        ]
        .iter()
        .any(|k| k.readable.load(Ordering::SeqCst));
        // Watching one namespace, only that one is read (a field selector on its name).
        let namespaces = any_readable
            && allowed(
                client,
                "",
                "namespaces",
                &["list", "watch"],
                None,
                namespace,
            )
            .await?;
        changed |= self.namespaces.swap(namespaces, Ordering::SeqCst) != namespaces;
        Ok(changed)
    }
}

/// The ClusterIP and proxy port (the port named `proxy`, else the first) of the gateway's
/// Service.
pub fn gateway_address(service: &Service) -> Option<std::net::SocketAddr> {
    let spec = service.spec.as_ref()?;
    let ip: std::net::IpAddr = spec.cluster_ip.as_deref()?.parse().ok()?;
    let ports = spec.ports.as_ref()?;
    let port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("proxy"))
        .or(ports.first())?;
    u16::try_from(port.port)
        .ok()
        .map(|p| std::net::SocketAddr::new(ip, p))
}

async fn installed(client: &Client, crd: &str) -> Result<bool, kube::Error> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    Ok(crds.get_opt(crd).await?.is_some())
}

/// Whether the operator may do each of `verbs` on `resource` (in `namespace`, or everywhere;
/// the one called `name`, or all).
async fn allowed(
    client: &Client,
    group: &str,
    resource: &str,
    verbs: &[&str],
    namespace: Option<&str>,
    name: Option<&str>,
) -> Result<bool, kube::Error> {
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    for verb in verbs {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    verb: Some((*verb).into()),
                    namespace: namespace.map(String::from),
                    name: name.map(String::from),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = reviews.create(&PostParams::default(), &review).await?;
        if !answer.status.is_some_and(|s| s.allowed) {
            tracing::warn!(
                group,
                resource,
                verb,
                "the operator may not {verb} {resource}: sandboxes that need them stay blocked, or say in their status that what these may allow is not known (grant it, e.g. the Helm chart's rbac values)"
            );
            return Ok(false);
        }
    }
    Ok(true)
}

impl Context {
    /// The facts for compiling now, from the caches.
    pub fn facts(&self) -> ClusterFacts {
        let known: BTreeMap<String, String> = self
            .caches
            .runtime_classes
            .state()
            .iter()
            .map(|rc| (rc.name_any(), rc.handler.clone()))
            .collect();
        self.facts_with(known)
    }

    /// The facts with the given RuntimeClasses (name → handler).
    pub fn facts_with(&self, runtime_classes: BTreeMap<String, String>) -> ClusterFacts {
        let mut facts = self.config.facts.clone();
        facts.runtime_classes = RuntimeClasses::Known(runtime_classes);
        facts.seccomp_profile_crd = self.optional_crds.seccomp_profile.load(Ordering::SeqCst);
        facts.cilium = self.optional_crds.cilium.load(Ordering::SeqCst);
        let address = self
            .optional_crds
            .gateway_address
            .read()
            .ok()
            .and_then(|a| *a);
        facts.gateway = match (&self.config.gateway, address) {
            (Some(g), Some(address)) => Some(g.placement.at(address, Some(g.key.clone()))),
            _ => None,
        };
        facts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": "gw"}, "spec": spec})).unwrap()
    }

    #[test]
    fn the_gateway_is_reached_at_its_cluster_ip_and_proxy_port() {
        let s = service(json!({"clusterIP": "10.96.0.50", "ports": [
            {"name": "metrics", "port": 9090}, {"name": "proxy", "port": 3128}]}));
        assert_eq!(
            gateway_address(&s),
            Some("10.96.0.50:3128".parse().unwrap())
        );
        let s = service(json!({"clusterIP": "10.96.0.50", "ports": [{"port": 8080}]}));
        assert_eq!(
            gateway_address(&s),
            Some("10.96.0.50:8080".parse().unwrap())
        );
        // Headless, not yet allocated, or without ports: no address, so no gateway.
        for spec in [
            json!({"clusterIP": "None", "ports": [{"port": 3128}]}),
            json!({"ports": [{"port": 3128}]}),
            json!({"clusterIP": "10.96.0.50"}),
        ] {
            assert_eq!(gateway_address(&service(spec.clone())), None, "{spec}");
        }
    }
}
