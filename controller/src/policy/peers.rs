//! NetworkPolicy peers and ports from address and service sets.

use k8s_openapi::api::networking::v1::{IPBlock, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::net::{AddrSet, to_blocks};
use super::services::{L4, MAX_PORT, MIN_PORT, Services};

/// `ipBlock` peers covering exactly `addrs`.
pub fn ip_block_peers(addrs: &AddrSet) -> Vec<NetworkPolicyPeer> {
    to_blocks(addrs)
        .into_iter()
        .map(|b| NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: b.cidr.to_string(),
                except: (!b.except.is_empty())
                    .then(|| b.except.iter().map(|c| c.to_string()).collect()),
            }),
            ..Default::default()
        })
        .collect()
}

/// The `ports` list of a rule: `None` (every protocol and port) when `services` is everything,
/// otherwise one entry per TCP/UDP/SCTP port range. ICMP and other protocols cannot be named
/// and must already have been removed (see [`Services::expressible`]).
pub fn np_ports(services: &Services) -> Option<Vec<NetworkPolicyPort>> {
    if services.is_all() {
        return None;
    }
    let mut ports = Vec::new();
    for proto in L4::ALL {
        for &(lo, hi) in services.l4(proto).ranges() {
            let protocol = Some(proto.as_k8s().to_string());
            if lo == MIN_PORT && hi == MAX_PORT {
                ports.push(NetworkPolicyPort {
                    protocol,
                    port: None,
                    end_port: None,
                });
            } else {
                ports.push(NetworkPolicyPort {
                    protocol,
                    port: Some(IntOrString::Int(lo as i32)),
                    end_port: (hi > lo).then_some(hi as i32),
                });
            }
        }
    }
    Some(ports)
}
