//! Cluster facts read from the API: RuntimeClasses (from a reflector store) and which optional
//! CRDs are installed (checked at start and re-checked when a CRD appears).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

use crate::render::facts::{ClusterFacts, RuntimeClasses};

use super::Context;

pub const SECCOMP_PROFILE_CRD: &str = "seccompprofiles.security-profiles-operator.x-k8s.io";
pub const CILIUM_POLICY_CRD: &str = "ciliumnetworkpolicies.cilium.io";

/// Optional CRDs, as last seen: each counts only when it is installed **and** the operator may
/// create and patch its objects. A backend the operator cannot use is the same as no backend:
/// the sandboxes that need it are blocked, never started without it.
#[derive(Clone, Debug, Default)]
pub struct OptionalCrds {
    pub seccomp_profile: Arc<AtomicBool>,
    pub cilium: Arc<AtomicBool>,
}

impl OptionalCrds {
    /// Looks the CRDs up, and asks the API server (SelfSubjectAccessReview) whether the operator
    /// may write their objects in `namespace` (`None`: every namespace). Returns whether anything
    /// changed.
    pub async fn refresh(
        &self,
        client: &Client,
        namespace: Option<&str>,
    ) -> Result<bool, kube::Error> {
        let mut changed = false;
        for (crd, group, resource, flag) in [
            (
                SECCOMP_PROFILE_CRD,
                "security-profiles-operator.x-k8s.io",
                "seccompprofiles",
                &self.seccomp_profile,
            ),
            (
                CILIUM_POLICY_CRD,
                "cilium.io",
                "ciliumnetworkpolicies",
                &self.cilium,
            ),
        ] {
            let usable = usable(client, crd, group, resource, namespace).await?;
            changed |= flag.swap(usable, Ordering::SeqCst) != usable;
        }
        Ok(changed)
    }
}

async fn usable(
    client: &Client,
    crd: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
) -> Result<bool, kube::Error> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    if crds.get_opt(crd).await?.is_none() {
        return Ok(false);
    }
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    for verb in ["create", "patch"] {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    verb: Some(verb.into()),
                    namespace: namespace.map(String::from),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = reviews.create(&PostParams::default(), &review).await?;
        if !answer.status.is_some_and(|s| s.allowed) {
            tracing::warn!(
                crd,
                verb,
                "the CRD is installed but the operator may not {verb} {resource}: sandboxes that need it stay blocked (grant it, e.g. the Helm chart's rbac values)"
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
        facts
    }
}
