//! Ingress compilation: allow rules map one to one onto NetworkPolicy rules (there are no deny
//! rules); ICMP cannot be named and is dropped.

use k8s_openapi::api::networking::v1::{IPBlock, NetworkPolicyIngressRule, NetworkPolicyPeer};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::api::policy::{DefaultAction, IngressPolicy};
use crate::api::report::EnforcementReport;

use super::peers::np_ports;
use super::services::Services;

pub fn compile_ingress(
    ingress: Option<&IngressPolicy>,
    report: &mut EnforcementReport,
) -> Vec<NetworkPolicyIngressRule> {
    let Some(ingress) = ingress else {
        return Vec::new();
    };
    if ingress.host_loopback.is_some() {
        report.not_applicable(
            "network.ingress.hostLoopback",
            "loopback traffic stays inside the pod; there is no host loopback to allow or deny",
        );
    }
    if ingress.default.unwrap_or_default() == DefaultAction::Allow {
        return vec![NetworkPolicyIngressRule::default()];
    }
    let mut rules = Vec::new();
    for (i, rule) in ingress.allow.iter().enumerate() {
        let services = Services::from_rules(rule.ports.as_deref());
        let emitted = services.expressible();
        if services.icmp && !emitted.icmp {
            report.narrowed(format!("network.ingress.allow[{i}]"), "a NetworkPolicy cannot allow ICMP on its own: the ICMP part of this rule is dropped");
        }
        if emitted.is_empty() {
            continue;
        }
        let from = rule.from.as_ref().map(|peers| {
            peers
                .iter()
                .map(|p| match &p.cidr {
                    Some(cidr) => NetworkPolicyPeer {
                        ip_block: Some(IPBlock {
                            cidr: cidr.clone(),
                            except: p.except.clone(),
                        }),
                        ..Default::default()
                    },
                    None => NetworkPolicyPeer {
                        pod_selector: p.pod_selector.clone().or_else(|| {
                            p.namespace_selector
                                .as_ref()
                                .map(|_| LabelSelector::default())
                        }),
                        namespace_selector: p.namespace_selector.clone(),
                        ip_block: None,
                    },
                })
                .collect()
        });
        rules.push(NetworkPolicyIngressRule {
            from,
            ports: np_ports(&emitted),
        });
    }
    rules
}
