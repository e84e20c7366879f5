//! Cluster facts read from the API: RuntimeClasses (from a reflector store) and which optional
//! CRDs are installed (checked at start and re-checked when a CRD appears).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::{Client, ResourceExt};

use crate::render::facts::{ClusterFacts, RuntimeClasses};

use super::Context;

pub const SECCOMP_PROFILE_CRD: &str = "seccompprofiles.security-profiles-operator.x-k8s.io";
pub const CILIUM_POLICY_CRD: &str = "ciliumnetworkpolicies.cilium.io";

/// Optional CRDs, as last seen.
#[derive(Clone, Debug, Default)]
pub struct OptionalCrds {
    pub seccomp_profile: Arc<AtomicBool>,
    pub cilium: Arc<AtomicBool>,
}

impl OptionalCrds {
    /// Looks the CRDs up; returns whether anything changed.
    pub async fn refresh(&self, client: &Client) -> Result<bool, kube::Error> {
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        let mut changed = false;
        for (name, flag) in [
            (SECCOMP_PROFILE_CRD, &self.seccomp_profile),
            (CILIUM_POLICY_CRD, &self.cilium),
        ] {
            let present = api.get_opt(name).await?.is_some();
            changed |= flag.swap(present, Ordering::SeqCst) != present;
        }
        Ok(changed)
    }
}

impl Context {
    /// The facts for compiling now.
    pub fn facts(&self) -> ClusterFacts {
        let mut facts = self.config.facts.clone();
        let known: BTreeMap<String, String> = self
            .runtime_classes
            .state()
            .iter()
            .map(|rc| (rc.name_any(), rc.handler.clone()))
            .collect();
        facts.runtime_classes = RuntimeClasses::Known(known);
        facts.seccomp_profile_crd = self.optional_crds.seccomp_profile.load(Ordering::SeqCst);
        facts.cilium = self.optional_crds.cilium.load(Ordering::SeqCst);
        facts
    }
}
