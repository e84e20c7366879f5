//! Compilation with the egress gateway as the domain-name backend: what the sandbox's
//! NetworkPolicy admits (the gateway and the policy's own CIDR/selector rules, no DNS for the
//! names), the proxy variables and their credential, the backend choice, and the refusals.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use palisade::api::{AgentPolicy, AgentSandbox};
use palisade::gateway::credential::CredentialKey;
use palisade::render::facts::{ClusterFacts, FqdnBackend, GatewayFacts, KeyBytes};
use palisade::render::{BlockReason, Plan, compile};
use serde_json::{Value, json};

const KEY: [u8; 32] = [b'k'; 32];

fn gateway() -> GatewayFacts {
    GatewayFacts {
        address: "10.96.0.50:3128".parse().unwrap(),
        namespace_labels: BTreeMap::from([(
            "kubernetes.io/metadata.name".into(),
            "palisade-system".into(),
        )]),
        pod_labels: BTreeMap::from([("app.kubernetes.io/component".into(), "gateway".into())]),
        target_port: 3128,
        key: Some(KeyBytes(Arc::new(KEY.to_vec()))),
    }
}

fn facts(backend: FqdnBackend, cilium: bool, gw: bool) -> ClusterFacts {
    ClusterFacts {
        fqdn_backend: backend,
        cilium,
        gateway: gw.then(gateway),
        cluster_cidrs: vec![
            palisade::policy::net::Cidr::parse("10.96.0.0/12").unwrap(),
            palisade::policy::net::Cidr::parse("10.244.0.0/16").unwrap(),
        ],
        ..ClusterFacts::default()
    }
}

fn policy(network: Value) -> AgentPolicy {
    serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "AgentPolicy",
        "metadata": {"namespace": "team", "name": "p"},
        "spec": {"network": network}
    }))
    .unwrap()
}

fn sandbox(env: Value) -> AgentSandbox {
    serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "AgentSandbox",
        "metadata": {"namespace": "team", "name": "s", "uid": "6b1c1a3e-0000-4000-8000-000000000001"},
        "spec": {"policyRef": {"name": "p"}, "image": "registry.example.com/agent:1", "env": env}
    }))
    .unwrap()
}

fn names_only() -> Value {
    json!({"egress": {"allow": [{"to": [{"fqdn": "pypi.org"}, {"fqdn": "*.pythonhosted.org"}], "ports": [{"port": 443}]}]}})
}

fn egress(plan: &Plan) -> Value {
    serde_json::to_value(&plan.network_policy).unwrap()["spec"]["egress"].clone()
}

fn env(plan: &Plan) -> BTreeMap<String, String> {
    plan.pod.spec.as_ref().unwrap().containers[0]
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect()
}

#[test]
fn names_only_reach_the_gateway_and_get_no_dns() {
    let plan = compile(
        &policy(names_only()),
        &sandbox(json!([])),
        &facts(FqdnBackend::Gateway, false, true),
        0,
    )
    .expect("compiles");
    assert_eq!(plan.fqdn_policy, None);
    assert_eq!(
        egress(&plan),
        json!([
            {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "palisade-system"}},
                     "podSelector": {"matchLabels": {"app.kubernetes.io/component": "gateway"}}}],
             "ports": [{"port": 3128, "protocol": "TCP"}]},
            {"to": [{"ipBlock": {"cidr": "10.96.0.50/32"}}],
             "ports": [{"port": 3128, "protocol": "TCP"}]}
        ])
    );
    let report = serde_json::to_string(&plan.report).unwrap();
    assert!(report.contains("gets no DNS"), "{report}");
    assert!(report.contains("through the egress gateway"), "{report}");
}

#[test]
fn the_proxy_variables_carry_a_credential_for_this_sandbox_only() {
    let plan = compile(
        &policy(names_only()),
        &sandbox(json!([])),
        &facts(FqdnBackend::Gateway, false, true),
        0,
    )
    .unwrap();
    let env = env(&plan);
    let url = &env["HTTPS_PROXY"];
    for var in ["HTTP_PROXY", "http_proxy", "https_proxy"] {
        assert_eq!(&env[var], url, "{var}");
    }
    let userinfo = url
        .strip_prefix("http://")
        .and_then(|u| u.strip_suffix("@10.96.0.50:3128"))
        .expect(url);
    let header = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(userinfo)
    );
    let key = CredentialKey::from_bytes(&KEY).unwrap();
    assert_eq!(
        key.verify(Some(header.as_bytes())).as_deref(),
        Some("6b1c1a3e-0000-4000-8000-000000000001")
    );
    assert!(env["NO_PROXY"].contains(".svc.cluster.local"));
    assert_eq!(env["NO_PROXY"], env["no_proxy"]);
}

#[test]
fn cidr_rules_stay_direct_and_are_listed_in_no_proxy() {
    let network = json!({"egress": {"allow": [
        {"to": [{"fqdn": "pypi.org"}], "ports": [{"port": 443}]},
        {"to": [{"cidr": "192.0.2.0/24"}], "ports": [{"port": 5432}]}
    ]}});
    let plan = compile(
        &policy(network),
        &sandbox(json!([])),
        &facts(FqdnBackend::Auto, false, true),
        0,
    )
    .unwrap();
    let rules = egress(&plan);
    assert!(
        rules
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["to"][0]["ipBlock"]["cidr"] == "192.0.2.0/24")
    );
    // The CIDR rule needs names (dns: auto): DNS is opened for it, and said so.
    assert!(
        rules
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["ports"][0]["port"] == 53)
    );
    assert!(
        env(&plan)["NO_PROXY"]
            .split(',')
            .any(|e| e == "192.0.2.0/24")
    );
}

#[test]
fn the_backend_follows_configuration_and_what_the_cluster_has() {
    let p = policy(names_only());
    let s = sandbox(json!([]));
    let cases = [
        (FqdnBackend::Auto, true, true, Ok("cilium")),
        (FqdnBackend::Auto, false, true, Ok("gateway")),
        (FqdnBackend::Gateway, true, true, Ok("gateway")),
        (FqdnBackend::Cilium, true, true, Ok("cilium")),
        (
            FqdnBackend::Cilium,
            false,
            true,
            Err("Cilium, the configured backend"),
        ),
        (
            FqdnBackend::Gateway,
            true,
            false,
            Err("the egress gateway, the configured backend"),
        ),
        (
            FqdnBackend::Auto,
            false,
            false,
            Err("the egress gateway (palisade gateway"),
        ),
    ];
    for (backend, cilium, gw, expected) in cases {
        let got = compile(&p, &s, &facts(backend, cilium, gw), 0);
        match (got, expected) {
            (Ok(plan), Ok(which)) => {
                let is_cilium = plan.fqdn_policy.is_some();
                assert_eq!(is_cilium, which == "cilium", "{backend:?} {cilium} {gw}");
                assert_eq!(env(&plan).contains_key("HTTPS_PROXY"), which == "gateway");
            }
            (Err(b), Err(text)) => {
                assert_eq!(b.reason, BlockReason::FqdnBackendMissing);
                assert!(b.message.contains(text), "{}", b.message);
            }
            (got, expected) => panic!("{backend:?} {cilium} {gw}: {got:?} vs {expected:?}"),
        }
    }
}

#[test]
fn what_would_bypass_or_block_the_gateway_is_refused() {
    let f = facts(FqdnBackend::Gateway, false, true);
    // A deny rule over the gateway's address or port.
    let network = json!({"egress": {
        "allow": [{"to": [{"fqdn": "pypi.org"}], "ports": [{"port": 443}]}],
        "deny": [{"to": [{"cidr": "10.0.0.0/8"}]}]}});
    let b = compile(&policy(network), &sandbox(json!([])), &f, 0).unwrap_err();
    assert_eq!(b.reason, BlockReason::PolicyInvalid);
    assert!(
        b.message.contains("deny rules cover the egress gateway"),
        "{}",
        b.message
    );
    // The sandbox setting its own proxy.
    let b = compile(
        &policy(names_only()),
        &sandbox(json!([{"name": "HTTPS_PROXY", "value": "http://192.0.2.1:3128"}])),
        &f,
        0,
    )
    .unwrap_err();
    assert_eq!(b.reason, BlockReason::SandboxInvalid);
}

#[test]
fn offline_the_url_has_placeholders_not_a_credential() {
    let mut f = facts(FqdnBackend::Gateway, false, true);
    if let Some(g) = f.gateway.as_mut() {
        g.key = None;
    }
    let plan = compile(&policy(names_only()), &sandbox(json!([])), &f, 0).unwrap();
    assert_eq!(
        env(&plan)["HTTPS_PROXY"],
        "http://SANDBOX-UID:CREDENTIAL@10.96.0.50:3128"
    );
}

#[test]
fn host_names_blocked_under_allow_all_send_all_egress_through_the_gateway() {
    let network =
        json!({"allowOutbound": true, "blockedHosts": ["evil.example.com", "203.0.113.0/24"]});
    let plan = compile(
        &policy(network.clone()),
        &sandbox(json!([])),
        &facts(FqdnBackend::Auto, false, true),
        0,
    )
    .expect("compiles with the gateway");
    // Only the gateway: no direct egress, no DNS.
    let rules = egress(&plan);
    assert_eq!(rules.as_array().unwrap().len(), 2, "{rules}");
    assert!(rules.to_string().contains("10.96.0.50/32"));
    let env = env(&plan);
    assert!(env["HTTPS_PROXY"].ends_with("@10.96.0.50:3128"));
    assert!(
        !env["NO_PROXY"].contains('/'),
        "no CIDR goes around the gateway: {}",
        env["NO_PROXY"]
    );
    let report = serde_json::to_string(&plan.report).unwrap();
    assert!(
        report.contains("blockedHosts[0]")
            && report.contains("all egress goes through the egress gateway"),
        "{report}"
    );
    // What the gateway enforces for the same policy.
    let checked = palisade::render::check_policy(&policy(network.clone()).spec).unwrap();
    let rules = palisade::gateway::rules::GatewayRules::for_network(
        &checked.network,
        palisade::policy::egress::ClusterRanges::default(),
    )
    .unwrap();
    use palisade::gateway::host::Host;
    use palisade::gateway::rules::Denial;
    assert_eq!(
        rules.check_host(&Host::Name("pypi.org".into()), 443),
        Ok(())
    );
    assert_eq!(
        rules.check_host(&Host::Name("evil.example.com".into()), 443),
        Err(Denial::NameDenied)
    );
    assert_eq!(
        rules.check_host(&Host::Name("x.evil.example.com".into()), 443),
        Err(Denial::NameDenied)
    );
    assert_eq!(
        rules.check_addresses(&["203.0.113.9".parse().unwrap()], 443),
        Err(Denial::DeniedAddress)
    );
    // Without the gateway (Cilium alone cannot deny a name), the sandbox is blocked.
    for f in [
        facts(FqdnBackend::Auto, true, false),
        facts(FqdnBackend::Cilium, true, true),
    ] {
        let b = compile(&policy(network.clone()), &sandbox(json!([])), &f, 0).unwrap_err();
        assert_eq!(b.reason, BlockReason::FqdnBackendMissing);
        assert!(b.message.contains("evil.example.com"), "{}", b.message);
    }
}
